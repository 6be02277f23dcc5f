"""Log settings from the environment, and the JSON lines format."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from broker import logs


def _record(message: str, *args: object, exc_info: bool = False) -> logging.LogRecord:
    info = None
    if exc_info:
        try:
            raise ValueError("the cause")
        except ValueError:
            info = sys.exc_info()
    record = logging.LogRecord("broker.amqp", logging.WARNING, __file__, 1, message, args,
                               info)
    record.created = 1_764_478_800.25  # 2025-11-30 05:00:00.250 UTC
    record.threadName = "handler-intake"
    return record


def test_json_lines_give_one_object_per_record_on_one_line() -> None:
    line = logs.JsonLines().format(_record("%s paused: %s", "cb.intake", "ledger \"away\"\nnow"))
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2025-11-30T05:00:00.250+00:00", "level": "WARNING", "logger": "broker.amqp",
        "thread": "handler-intake", "message": "cb.intake paused: ledger \"away\"\nnow"}


def test_json_lines_carry_the_exception_text_as_the_text_format_does() -> None:
    record = _record("a job failed", exc_info=True)
    entry = json.loads(logs.JsonLines().format(record))
    text = logging.Formatter(logs.TEXT_FORMAT).format(_record("a job failed", exc_info=True))
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert entry["exception"].endswith("ValueError: the cause")
    assert text.endswith(entry["exception"])


@pytest.mark.parametrize(("name", "value", "said"), [
    ("CASEBROKER_LOG_LEVEL", "loud",
     "CASEBROKER_LOG_LEVEL='loud' is no log level: use DEBUG, INFO, WARNING, ERROR or "
     "CRITICAL"),
    ("CASEBROKER_LOG_FORMAT", "xml",
     "CASEBROKER_LOG_FORMAT='xml' is no log format: use text or json"),
])
def test_a_value_the_settings_do_not_take_is_named_with_those_they_do(
        monkeypatch: pytest.MonkeyPatch, name: str, value: str, said: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(logs.LogSettingError) as e:
        logs.configure()
    assert str(e.value) == said


@pytest.mark.parametrize(("level", "form", "verbose", "taken"), [
    ("debug", "JSON", False, ("DEBUG", "json")),
    (" Warning ", "text", False, ("WARNING", "text")),
    ("ERROR", " json", True, ("DEBUG", "json")),  # -v wins
])
def test_settings_are_taken_in_any_case(monkeypatch: pytest.MonkeyPatch, level: str,
                                        form: str, verbose: bool,
                                        taken: tuple[str, str]) -> None:
    monkeypatch.setenv("CASEBROKER_LOG_LEVEL", level)
    monkeypatch.setenv("CASEBROKER_LOG_FORMAT", form)
    assert logs.settings(verbose=verbose) == taken


def test_without_settings_it_is_info_in_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CASEBROKER_LOG_LEVEL", raising=False)
    monkeypatch.delenv("CASEBROKER_LOG_FORMAT", raising=False)
    assert logs.settings() == ("INFO", "text")
