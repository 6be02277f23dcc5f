"""The README and docs/ name commands, options, settings and metrics the code has.

An operator copies a command from the docs; an option renamed in the code and not in
the docs fails them at the worst moment. These checks read every `casebroker ...` line,
`python -m ...` module, `make` target, CASEBROKER_ setting and casebroker_ metric the
docs name, and hold each against the code."""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import io
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.cli import build_parser
from tests.helpers import metric_names

ROOT = Path(__file__).parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: a `casebroker` command line: in a code block, or quoted inline in prose
COMMAND = re.compile(r"(?:^\s*|`|\$ )(casebroker [^`\n#]*)")
#: the markup of a synopsis (optional parts, alternatives, placeholders) rather than a
#: command to run as it stands
SYNOPSIS = re.compile(r"[\[\]|<>…]|\.\.\.|(?<![\w-])[A-Z][A-Z_]*(?:\.\w+)?(?![\w-])")


def _lines() -> Iterator[tuple[str, str, bool]]:
    """(where, line, in a fenced code block) for every line of the docs."""
    for doc in DOCS:
        fenced = False
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            yield f"{doc.relative_to(ROOT)}:{number}", line, fenced


@functools.cache
def _parser() -> argparse.ArgumentParser:
    """`casebroker`'s parser, built once: parsing leaves it as it was."""
    return build_parser()


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _command(words: list[str]) -> tuple[list[str], argparse.ArgumentParser, list[str]]:
    """The subcommand path the words name, its parser, and the words after it."""
    parser, path = _parser(), ["casebroker"]
    while words and words[0] in _subcommands(parser):
        path.append(words[0])
        parser = _subcommands(parser)[words.pop(0)]
    return path, parser, words


def _commands() -> Iterator[tuple[str, str, bool]]:
    for where, line, fenced in _lines():
        for match in COMMAND.finditer(line):
            yield where, match.group(1).strip(), fenced


def test_every_option_the_docs_give_a_command_is_one_it_takes() -> None:
    wrong, checked = [], 0
    for where, text, _ in _commands():
        path, parser, rest = _command(text.split()[1:])
        if _subcommands(parser):
            continue  # a group named in prose ("`casebroker dossier` commands")
        options = {s for action in parser._actions for s in action.option_strings}
        for option in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", " ".join(rest)):
            checked += 1
            if option not in options:
                wrong.append(f"{where}: {' '.join(path)} has no {option}")
    assert checked > 150, f"only {checked} options found: is the pattern still right?"
    assert not wrong, "\n".join(wrong)


def test_every_command_the_docs_give_whole_parses() -> None:
    """A command with no synopsis markup parses as it stands. Quoted in prose it may name
    a command and leave out what it requires ("`casebroker users apply` makes them");
    in a code block it is meant to be run, whole."""
    wrong, checked = [], 0
    for where, text, fenced in _commands():
        if SYNOPSIS.search(text):
            continue
        checked += 1
        said = io.StringIO()
        try:
            with contextlib.redirect_stderr(said), contextlib.redirect_stdout(io.StringIO()):
                _parser().parse_args(shlex.split(text)[1:])
        except SystemExit as exit_:
            error = said.getvalue().strip().splitlines()[-1]
            left_out = re.search(r"(?:are|is) required|expected one argument", error)
            if exit_.code and (fenced or not left_out):
                wrong.append(f"{where}: {text!r}: {error}")
    assert checked > 100, f"only {checked} whole commands found: is the pattern still right?"
    assert not wrong, "\n".join(wrong)


def test_every_python_module_the_docs_run_exists() -> None:
    modules = {m for _, line, _ in _lines()
               for m in re.findall(r"python -m ((?:bench|broker|adapters|monitoring|tests)"
                                   r"(?:\.\w+)*)", line)}
    assert len(modules) > 5, modules
    missing = sorted(m for m in modules if importlib.util.find_spec(m) is None)
    assert not missing, f"the docs run modules that do not exist: {missing}"


def test_every_make_target_the_docs_run_exists() -> None:
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))
    named = {m for _, line, fenced in _lines() if fenced
             for m in re.findall(r"^\s*(?:\$ )?make ([a-z][\w-]*)", line)}
    assert {"demo", "test"} <= named, named  # the README's two commands
    assert named <= targets, f"not in the Makefile: {sorted(named - targets)}"


def test_every_setting_the_docs_name_is_read_by_the_code() -> None:
    code = "\n".join(p.read_text() for top in ("broker", "adapters", "monitoring", "bench",
                                                 "tests", "scripts", ".ci")
                     for p in sorted((ROOT / top).rglob("*"))
                     if p.is_file() and p.suffix in {".py", ".sh", ""})
    code += (ROOT / "Makefile").read_text()
    named = {s for _, line, _ in _lines() for s in re.findall(r"\bCASEBROKER_[A-Z0-9_]+", line)}
    assert len(named) > 10, named
    unread = sorted(s for s in named if not re.search(rf"\b{s}\b", code))
    assert not unread, f"the docs name settings nothing reads: {unread}"


def test_every_metric_the_docs_name_is_exported() -> None:
    named = {m for _, line, _ in _lines() for m in re.findall(r"\bcasebroker_[a-z_]+", line)}
    assert len(named) > 5, named
    assert named <= metric_names(), f"the docs name metrics no router exports: " \
                                    f"{sorted(named - metric_names())}"


@pytest.mark.parametrize("line, path, flags", [
    ("casebroker dossier list --overdue --agency SYT", ["casebroker", "dossier", "list"],
     ["--overdue", "--agency"]),
    ("casebroker users", ["casebroker", "users"], []),
])
def test_a_command_line_is_read_as_its_subcommand_and_the_rest(line: str, path: list[str],
                                                               flags: list[str]) -> None:
    found, _, rest = _command(line.split()[1:])
    assert found == path
    assert [w for w in rest if w.startswith("--")] == flags
