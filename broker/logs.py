"""How every `casebroker` command logs: level and format from the environment.

``CASEBROKER_LOG_LEVEL`` (any case; ``-v`` means ``DEBUG``) and ``CASEBROKER_LOG_FORMAT``:
``text``, one line per record as people read it, or ``json``, one JSON object per line
for a log shipper (Loki, Elasticsearch, journald's JSON output): ``time`` (UTC, ISO 8601,
milliseconds), ``level``, ``logger``, ``thread`` (the names ``top -H`` shows, README
"Monitoring"), ``message``, and ``exception`` when there is one. The format changes the
layout only: what is said, and what is never said (personal data), is the same.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime

from broker.errors import SettingError

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class LogSettingError(SettingError):
    """``CASEBROKER_LOG_LEVEL`` or ``CASEBROKER_LOG_FORMAT`` holds no value they take."""


class JsonLines(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "thread": record.threadName,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(*, verbose: bool = False) -> None:
    """Log to stderr at the level and in the format the environment asks for."""
    level, form = settings(verbose=verbose)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines() if form == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])


def settings(*, verbose: bool = False) -> tuple[str, str]:
    """The level and format the environment asks for; a value they do not take is a
    :class:`LogSettingError` naming the ones they do."""
    level = _chosen("CASEBROKER_LOG_LEVEL", "INFO", LEVELS, "log level")
    form = _chosen("CASEBROKER_LOG_FORMAT", "text", FORMATS, "log format")
    return ("DEBUG" if verbose else level), form


def _chosen(name: str, default: str, allowed: tuple[str, ...], what: str) -> str:
    """The environment's ``name``, in the case ``allowed`` is written in (all upper or all
    lower), or ``default`` if unset."""
    raw = os.environ.get(name, default)
    value = raw.strip().upper() if allowed[0].isupper() else raw.strip().lower()
    if value not in allowed:
        raise LogSettingError(f"{name}={raw!r} is no {what}: use "
                              f"{', '.join(allowed[:-1])} or {allowed[-1]}")
    return value
