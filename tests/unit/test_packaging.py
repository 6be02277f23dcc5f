"""The container image holds every package the project installs: `casebroker` imports all
of its command modules (bench included) before it parses a single argument."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

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
