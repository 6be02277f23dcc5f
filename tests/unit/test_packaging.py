"""The container image holds every package the project installs: `casebroker` imports all
of its command modules (bench included) before it parses a single argument. And
docker-compose.yml, which no test runs (there is no Docker engine here), names only
commands, settings and probes the code has."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).parents[2]


def _installed_packages() -> set[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    return {p.rstrip("*").rstrip(".") for p in patterns}


def test_the_dockerfile_copies_every_package_the_project_installs() -> None:
    packages = _installed_packages()
    copied = set(re.findall(r"^COPY (\S+) \1\s*$", (ROOT / "Dockerfile").read_text(), re.M))
    assert packages, "no packages found in pyproject.toml"
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"


def test_every_command_module_is_in_an_installed_package() -> None:
    from broker.cli import COMMAND_MODULES

    assert {m.split(".")[0] for m in COMMAND_MODULES} <= _installed_packages()


# docker-compose.yml, which nothing on this machine runs (no Docker engine): what it names
# must be what the code has

def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _command_text(service: dict[str, Any]) -> str:
    command = service.get("command") or ""
    return command if isinstance(command, str) else " ".join(command)


def _casebroker_commands() -> list[list[str]]:
    """Every `casebroker ...` command line of a compose service, as argv after the program
    name (a shell variable of the service's own given a plausible value)."""
    found = []
    for service in _compose()["services"].values():
        command = service.get("command")
        if isinstance(command, list) and command[0] == "casebroker":
            found.append(command[1:])
            continue
        for line in re.findall(r"\bcasebroker ([^;&|\n]+)", _command_text(service)):
            found.append(shlex.split(line.replace('"$$CASEBROKER_KEEP_DAYS"', "90")))
    return found


def test_every_casebroker_command_of_the_compose_file_is_one_the_cli_takes() -> None:
    from broker.cli import build_parser

    commands = _casebroker_commands()
    assert sorted(c[0] for c in commands) == ["ledger", "run"]  # broker and prune
    for argv in commands:
        build_parser().parse_args(argv)  # exits 2, failing the test, on what it refuses


def test_every_casebroker_setting_of_the_images_is_one_the_code_reads() -> None:
    source = "\n".join(p.read_text() for package in _installed_packages()
                       for p in (ROOT / package).rglob("*.py"))
    services = _compose()["services"]
    for name, service in services.items():
        own = _command_text(service)
        for key in service.get("environment", {}):
            if key.startswith("CASEBROKER_"):
                assert f'"{key}"' in source or f"${key}" in own, f"{name}: {key} unread"
    image = re.findall(r"^ENV (CASEBROKER_\w+)=", (ROOT / "Dockerfile").read_text(), re.M)
    assert image == ["CASEBROKER_METRICS_ADDR"]
    assert all(f'"{key}"' in source for key in image)


def test_the_broker_health_check_asks_a_probe_the_router_serves_on_its_metrics_port() -> None:
    from broker.health import Probes

    broker = _compose()["services"]["broker"]
    check = " ".join(broker["healthcheck"]["test"])
    asked = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", check)
    assert asked is not None, check
    port, path = asked.groups()
    assert port == broker["environment"]["CASEBROKER_METRICS_PORT"]
    assert f"{port}:{port}" in broker["ports"]
    assert path in Probes(None).routes()  # type: ignore[arg-type]
