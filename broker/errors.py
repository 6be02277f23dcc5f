"""The exception tree. Everything casebroker raises on purpose derives from CasebrokerError.

    CasebrokerError
    ├── DecodeError            a message body that is not a valid v1 message (→ dead letter)
    ├── CatalogError           a catalog file that cannot be loaded or fails validation
    ├── RoutingError           a valid dossier no rule can route (→ triage)
    │   └── UnknownParty       an unknown procedure, desk, agency or ward
    ├── TransitionRefused      a status update the lifecycle table forbids
    ├── LedgerSchemaError      a ledger whose tables this version cannot write (→ refuse to start)
    └── TransientError         the database or broker is away for now (→ retry with backoff)
        └── HandlerFault       casebroker's own code failed on a batch (→ retry with backoff)
"""

from __future__ import annotations

import re
import traceback
from pathlib import Path


class CasebrokerError(Exception):
    """Root of every error casebroker raises on purpose."""


class DecodeError(CasebrokerError):
    """A message body that is not a valid v1 message; ``reason`` is a stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class CatalogProblem:
    """One problem found in a catalog file, with where it is."""

    __slots__ = ("file", "line", "message")

    def __init__(self, file: str, line: int | None, message: str) -> None:
        self.file = file
        self.line = line
        self.message = message

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"

    def __repr__(self) -> str:
        return f"CatalogProblem({str(self)!r})"


class CatalogError(CasebrokerError):
    """A catalog that cannot be used; ``problems`` lists every problem found at once."""

    def __init__(self, problems: list[CatalogProblem]) -> None:
        self.problems = problems
        head = f"{len(problems)} problem(s) in catalog"
        super().__init__(head + "\n" + "\n".join(f"  {p}" for p in problems))


class RoutingError(CasebrokerError):
    """A valid dossier that no rule routes; ``reason`` is a stable code for triage."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class UnknownParty(RoutingError):
    """An unknown procedure, desk, agency or ward code."""


#: the triage reason of a procedure the catalog does not have: the one no fix but a
#: catalog change routes, and what `dead-letters refuse --procedure` refuses
UNKNOWN_PROCEDURE = "unknown_procedure"


class TransitionRefused(CasebrokerError):
    """A lifecycle transition the table forbids."""

    def __init__(self, state: int, event: str) -> None:
        super().__init__(f"{event} is not allowed in state {state}")
        self.state = state
        self.event = event


class LedgerSchemaError(CasebrokerError):
    """The ledger's tables lack columns this version writes or reads, or hold required
    columns it does not know; ``problems`` lists each one."""

    def __init__(self, where: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            f"the ledger at {where} does not match this version of casebroker:\n"
            + "\n".join(f"  {p}" for p in problems)
            + "\nit was made by another version: stop every `casebroker run` on it and "
            "run `casebroker ledger upgrade` (`--dry-run` prints the statements first), "
            "or point CASEBROKER_DB_URL (--db-url) at a new ledger")


class StartupError(CasebrokerError):
    """Something the process needs at its start is not there: a port is taken, the ledger
    cannot be reached. Said in words, with where, and the process exits."""


class SettingError(StartupError):
    """A setting (an option, or its ``CASEBROKER_*`` variable) holds what it cannot take.
    Exits 2, as any wrong argument does: started again as it is, it would fail the same
    way (a supervisor can be told not to restart on 2)."""


class TransientError(CasebrokerError):
    """A dependency is away for now; the work is retried, never dropped.

    ``bounded`` errors (a write conflict between competing routers) are retried a few
    times and then handled as failures; unbounded ones (the database is down) pause
    the work for as long as they last.
    """

    bounded = False

    @property
    def kind(self) -> str:
        """The retry's kind in ``casebroker_retries_total``."""
        return "conflict" if self.bounded else "transient"

    @property
    def summary(self) -> str:
        """The error as a health probe may show it, on a port anyone on the network may
        ask: no dossier's data, nor its code."""
        return str(self)


class HandlerFault(TransientError):
    """casebroker's own code failed on a batch where its handler catches nothing (a bug;
    the log says where). The batch is retried with backoff, never acked unprocessed."""

    @property
    def kind(self) -> str:
        return "fault"


def without_values(error: BaseException, frames: int = 6) -> str:
    """An exception as a log line may show it: its type and where it was raised, never its
    message.

    A message can quote the data that failed: pydantic quotes the input value, the
    database driver the statement's parameters, and a dossier's data holds names, id
    numbers and phones, which never go to a log (DESIGN.md, security rules). What is
    kept is enough to find the fault: the type, the innermost ``frames`` as
    ``file:line function``, and the type of the exception it came from.
    """
    where = [f"{Path(f.filename).name}:{f.lineno} {f.name}"
             for f in traceback.extract_tb(error.__traceback__)[-frames:]]
    line = f"{type(error).__module__}.{type(error).__qualname__}"
    if where:
        line += " at " + " < ".join(reversed(where))
    cause = error.__cause__ or error.__context__
    if cause is not None:
        line += f" (from {type(cause).__module__}.{type(cause).__qualname__})"
    return line


def shown_url(url: str) -> str:
    """A server URL (RabbitMQ's, the ledger's) fit for a message or a log: its password
    left out, up to the last ``@`` before the host (pika takes one not URL-encoded), and
    a ``password=`` in the query (libpq takes one there)."""
    url = re.sub(r"(//[^:/@,]*):(?:(?!//).)*?@(?=[^@/,]*(?:[/,?#]|$))", r"\1:***@", url)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", url, flags=re.IGNORECASE)
