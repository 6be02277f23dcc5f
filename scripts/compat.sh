#!/usr/bin/env bash
# The unit tests on each newer Python this machine has: pyproject says >= 3.11, and the
# whole suite runs on python3 (3.11 here). A version found neither on PATH nor under
# pyenv is skipped, and said so; one found whose install or tests fail fails the run.
# Each gets a venv of its own, .venv-python3.X, with the project installed as a wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="${TEST_JOBS:-2}"

find_python() {  # $1: 3.12 → a runnable interpreter's path, or nothing
  local py
  if py=$(command -v "python$1") && "$py" -c '' 2>/dev/null; then echo "$py"; return; fi
  # pyenv's shims run only the versions it has made global; its own installs run as is
  if command -v pyenv >/dev/null; then
    for py in "$(pyenv root)"/versions/"$1".*/bin/"python$1"; do
      if [ -x "$py" ] && "$py" -c '' 2>/dev/null; then echo "$py"; return; fi
    done
  fi
}

for version in ${COMPAT_VERSIONS:-3.12 3.13}; do
  py=$(find_python "$version")
  if [ -z "$py" ]; then
    echo "compat: no Python $version on this machine, skipped"
    continue
  fi
  venv=".venv-python$version"
  echo "compat: $("$py" --version) ($py) in $venv"
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -c constraints.txt '.[dev]'
  "$venv/bin/python" -m pytest -q -p no:cacheprovider -n "$jobs" tests/unit
done
