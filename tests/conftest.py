"""Fixtures for tests against the real RabbitMQ and PostgreSQL on this machine.

Each test gets its own topology prefix and its own ledger (a SQLite file, or a
PostgreSQL schema), and removes what it declared. ``CASEBROKER_AMQP_URL`` and
``CASEBROKER_TEST_PG_URL`` point elsewhere (e.g. at testcontainers on a laptop).
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pika
import pytest
from sqlalchemy import Engine, create_engine, text

from broker.amqp import ConsumerSettings, amqp_url
from broker.ledger import Ledger
from broker.rules.catalog import Catalog, load_catalog
from broker.service import Broker, declare_topology, delete_topology
from broker.topology import Topology
from tests.faults.harness import FIGURES
from tests.sweep import sweep

FIXTURES = Path(__file__).parent / "fixtures"
MINI_CATALOG = FIXTURES / "mini.yaml"
PG_URL = os.environ.get("CASEBROKER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Delete what killed runs left on the shared RabbitMQ and PostgreSQL (tests/sweep.py)."""
    if hasattr(session.config, "workerinput"):
        return  # a pytest-xdist worker: the controller swept before starting it
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(sweep(PG_URL))


@pytest.fixture
def topology() -> Topology:
    """A topology under a prefix no other test uses."""
    return Topology(f"t{uuid.uuid4().hex[:10]}")


@pytest.fixture
def mini_catalog() -> Catalog:
    return load_catalog(MINI_CATALOG)


@pytest.fixture
def declared(topology: Topology, mini_catalog: Catalog) -> Iterator[Topology]:
    """The mini catalog's topology, declared on the real RabbitMQ and deleted afterwards."""
    declare_topology(amqp_url(), topology, mini_catalog)
    yield topology
    delete_topology(amqp_url(), topology, mini_catalog)


def _pg_schema_url(schema: str) -> str:
    return f"{PG_URL}?options=-csearch_path%3D{schema}"


@contextmanager
def pg_schema() -> Iterator[tuple[str, Engine]]:
    """A schema of its own in the real PostgreSQL, dropped afterwards: its name, and an
    AUTOCOMMIT engine of the database's owner for what else a test does there."""
    schema = f"t{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield schema, admin
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    """A fresh ledger: a SQLite file, or a schema of its own in the real PostgreSQL."""
    if request.param == "sqlite":
        led = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
        yield led
        led.dispose()
        return
    with pg_schema() as (schema, _):
        led = Ledger(_pg_schema_url(schema))
        yield led
        led.dispose()


class RunningBroker:
    """`casebroker run` in a thread of the test process, stopped at teardown."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.thread = threading.Thread(target=broker.run, kwargs={"install_signals": False},
                                       daemon=True)

    def start(self) -> RunningBroker:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.broker.stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "broker did not stop"


@pytest.fixture
def run_broker(declared: Topology, ledger: Ledger) -> Iterator[Callable[..., RunningBroker]]:
    """Start the router and status router on the mini catalog; stop them afterwards. No
    deadline watch unless ``watch`` settings are given: the tests' dossiers carry fixed
    dates, and a watch on the real clock sends notices for them (overdue since 2026-12-01
    in Vietnam) into the queues a test counts, whenever one of its rounds comes."""
    started: list[RunningBroker] = []

    def start(*, watch: Any = None, clock: Any = None, metrics: Any = None,
              **settings: Any) -> RunningBroker:
        options: dict[str, Any] = {"watch_settings": watch}
        if clock is not None:
            options["clock"] = clock
        if metrics is not None:
            options["metrics"] = metrics
        broker = Broker(str(MINI_CATALOG), declared, ledger,
                        ConsumerSettings(flush_interval_ms=2, **settings), **options)
        running = RunningBroker(broker).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def queue_depth(queue: str) -> int:
    """Messages ready in a queue (passive declare over AMQP)."""
    return ready_and_consumers(queue)[0]


def ready_and_consumers(queue: str) -> tuple[int, int]:
    """Messages ready in ``queue`` and its consumers, as RabbitMQ counts them."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url()))
    try:
        ok = conn.channel().queue_declare(queue, passive=True).method
        return int(ok.message_count), int(ok.consumer_count)
    finally:
        conn.close()


def wait_for(predicate: Callable[[], Any], timeout_s: float = 20.0, what: str = "") -> Any:
    """Poll until ``predicate`` returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what or predicate}")
        time.sleep(0.05)


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config,
                                  items: list[pytest.Item]) -> Iterator[None]:
    """With pytest-xdist (``-n``), the fault tests share one worker: they start RabbitMQ
    nodes and a PostgreSQL server of their own once per session, not once per worker.

    The fault tests fail at once if pytest-xdist spread them over its workers all the same,
    as it silently did under pytest 9.2 (pyproject.toml): each worker then started its own
    servers, and the scenarios slowed each other down past their timeouts."""
    for item in items:
        if item.get_closest_marker("faults") is not None:
            item.add_marker(pytest.mark.xdist_group("faults"))
    yield  # the other implementations, pytest-xdist's naming of the groups among them
    if hasattr(config, "workerinput") and config.getvalue("loadgroup"):
        for item in items:
            faults = item.get_closest_marker("faults") is not None
            if faults and not item.nodeid.endswith("@faults"):
                item.stash[_UNGROUPED] = True


_UNGROUPED = pytest.StashKey[bool]()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.stash.get(_UNGROUPED, False):
        pytest.fail("pytest-xdist did not put this fault test in group 'faults' with the "
                    "others (--dist loadgroup); install the versions in constraints.txt",
                    pytrace=False)


#: the fault scenarios' figures the pytest-xdist workers handed over (tests/faults/conftest.py)
_WORKERS_FIGURES: list[dict[str, Any]] = []


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook, called in the controller
def pytest_testnodedown(node: Any, error: Any) -> None:
    _WORKERS_FIGURES.extend(getattr(node, "workeroutput", {}).get("fault_figures", []))


def _fault_figures() -> list[dict[str, Any]]:
    """What the fault scenarios recorded, in this process or in the workers."""
    return [dataclasses.asdict(f) for f in FIGURES] + _WORKERS_FIGURES


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """``CASEBROKER_FAULTS_FIGURES=path.json``: the fault scenarios' figures, as JSON."""
    path = os.environ.get("CASEBROKER_FAULTS_FIGURES")
    figures = _fault_figures()
    if path and figures and not hasattr(session.config, "workeroutput"):
        Path(path).write_text(json.dumps(figures, indent=2))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    figures = _fault_figures()
    if not figures:
        return
    terminalreporter.section("fault figures")
    for f in figures:
        terminalreporter.write_line(
            f"{f['name']}: submitted {f['submitted']}, dossiers {f['dossiers']}, resolved "
            f"{f['resolved']}, bad {f['bad_inputs']}, triaged {f['triaged']}, lost "
            f"{f['lost']}, dup→agency {f['duplicate_deliveries_to_agencies']}, dup→desk "
            f"{f['duplicate_deliveries_to_desks']} {f['extra']}")
