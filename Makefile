# make demo  — real traffic through the RabbitMQ on localhost, then a summary
# make test  — the whole suite (unit, integration against RabbitMQ and PostgreSQL)
VENV ?= .venv
PY := $(VENV)/bin/python
DOSSIERS ?= 2000
# test workers (pytest-xdist): the suite waits on RabbitMQ and PostgreSQL more than it computes
TEST_JOBS ?= 2

.PHONY: demo test lint compat services install clean

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

services:
	@bash scripts/services.sh

demo: install services
	$(VENV)/bin/casebroker demo --dossiers $(DOSSIERS)

test: install services
	$(PY) -m pytest -q -n $(TEST_JOBS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy broker adapters monitoring

# the unit tests on each newer Python this machine has (scripts/compat.sh)
compat:
	@TEST_JOBS=$(TEST_JOBS) bash scripts/compat.sh

clean:
	rm -rf $(VENV) .venv-python3.* .pytest_cache .mypy_cache .ruff_cache *.egg-info
