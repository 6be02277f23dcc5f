"""The ledger: dossiers, their append-only event log, and the idempotency tables.

SQLite file by default, PostgreSQL when ``CASEBROKER_DB_URL`` says so. Writes come
in batches: a consumer opens one :class:`Batch` per batch of deliveries and commits
once. Each processed delivery leaves an ``inbox`` row (its message id, unique) and
the messages it caused in ``outbox``; a redelivered message finds its inbox row and
re-publishes the very same outbox messages, so effects happen once and downstream
ids never change.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import operator
import os
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from sqlalchemy import (
    JSON,
    URL,
    Boolean,
    Column,
    Connection,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    and_,
    create_engine,
    event,
    func,
    inspect,
    literal,
    make_url,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import (
    ArgumentError,
    DatabaseError,
    DBAPIError,
    IntegrityError,
    OperationalError,
    SAWarning,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import CreateColumn, CreateIndex, CreateTable
from sqlalchemy.sql.functions import FunctionElement

from broker import threads
from broker.envelope import Outbound
from broker.errors import (
    CasebrokerError,
    LedgerSchemaError,
    SettingError,
    StartupError,
    TransientError,
    shown_url,
)
from broker.lifecycle import LEGAL_TIMEZONE, State, day_start
from broker.tables import (
    _OPEN,
    STEP_AHEAD,
    STEP_STARTED,
    RawJSON,
    UTCDateTime,
    _json_dumps,
    code_sequences,
    dossiers,
    early_withdrawals,
    events,
    held,
    inbox,
    is_pruned,
    metadata,
    outbox,
    prunes,
    refusals,
    watch_outbox,
)

#: the tables are defined in broker.tables; callers may take them from here
__all__ = ["DEFAULT_DB_URL", "Batch", "Checkpoints", "ConcurrentUpdate", "Ledger", "Prior",
           "RawJSON", "SubmissionOpened", "code_sequences", "dossiers", "early_withdrawals",
           "events", "held", "inbox",
           "is_transient", "metadata", "outbox", "prunes", "refusal_notice", "refusals",
           "touched_since", "watch_outbox"]

DEFAULT_DB_URL = "sqlite:///casebroker.sqlite3"
#: `casebroker run` on PostgreSQL: how long a statement waits for a lock another session
#: holds (an operator's open transaction, a `ledger upgrade` run beside it) before its
#: batch fails as the ledger being away, and is retried with backoff. Waiting for as
#: long as the lock lasts held the batch past the liveness probe's 120 s (a restart that
#: does not help) and past RabbitMQ's consumer_timeout (the window a step nearer its
#: delivery limit); failing, the worker gives its window back after --hold-s instead
RUN_LOCK_TIMEOUT_S = 60.0


def sqlite_file(url: str | URL) -> str | None:
    """The file of a SQLite ledger URL, as given (SQLite's URI form too:
    ``sqlite:///file:PATH?uri=true``); None for another database, one in memory, or what
    is no URL (:class:`Ledger` says so)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    name = parsed.database or ""
    if parsed.get_backend_name() != "sqlite":
        return None
    if str(parsed.query.get("uri", "")).lower() in ("true", "1"):
        name = name.removeprefix("file:")
        if parsed.query.get("mode") == "memory":
            return None
    return None if name in ("", ":memory:") else name


@contextmanager
def sole_runner(url: str | None, doing: str) -> Iterator[None]:
    """On a SQLite ledger, hold the lock that lets one `casebroker run` (or `ledger
    upgrade`) at a time use it: an ``flock`` on ``<file>.run-lock``, released at the
    end, and by the kernel when the process ends, however it ends. Nothing on
    PostgreSQL, where several run at once. Held by another process: a
    :class:`StartupError` saying so. Two routers on one SQLite file took turns at its
    write lock, each batch waiting up to 5 s for the other's and then paused as if the
    ledger were away."""
    import fcntl

    name = sqlite_file(url or os.environ.get("CASEBROKER_DB_URL") or DEFAULT_DB_URL)
    db = None if name is None else Path(os.path.realpath(name))  # whatever path names it
    if db is None or not db.parent.is_dir():
        yield  # nothing to hold, or the ledger says where it cannot be made
        return
    path = db.with_name(db.name + ".run-lock")
    try:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:  # made by another user (root's `ledger upgrade`): flock
            fd = os.open(path, os.O_RDONLY)  # needs no write access
    except OSError as e:
        raise StartupError(f"cannot open {path} to hold the SQLite ledger for {doing}: "
                           f"{e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StartupError(
            f"another process (pid {holder}) holds the SQLite ledger {db} for `casebroker "
            f"run` or `ledger upgrade` (its lock: {path.name}): one process at a time "
            f"routes on a SQLite ledger; several routers need PostgreSQL (--db-url, "
            f"CASEBROKER_DB_URL)") from None
    try:
        with suppress(OSError):  # the holder's pid, for the next one to name (not if
            os.ftruncate(fd, 0)  # opened read-only)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


#: indexes earlier versions made and this one dropped (no query used them; each cost the
#: writes a page per dossier): `casebroker ledger upgrade` removes them, table by table
RETIRED_INDEXES: dict[str, frozenset[str]] = {
    "dossiers": frozenset({"ix_dossiers_procedure_code", "ix_dossiers_agency_id"}),
    "events": frozenset({"ix_events_dossier_code"}),
}

log = logging.getLogger(__name__)


#: where :meth:`Batch._rows_in` puts the match of a column against the values
_IN = "{IN}"

#: SQLite: bound values per statement, well under SQLITE_MAX_VARIABLE_NUMBER (32,766
#: since SQLite 3.32; 999 before)
_SQLITE_CHUNK = 300

#: PostgreSQL's advisory lock that keeps the opening of a dossier and an operator's
#: refusal of the same submission from crossing: a router batch holds it shared from its
#: duplicate check to its commit, a refusal alone from its check of the dossiers to its
#: commit, so each sees what the other committed. Without it both checks could pass at
#: once and the desk get a receipt and a refusal. SQLite needs no key: both take its one
#: write lock first (``BEGIN IMMEDIATE``). Its two keys are this (ASCII "cbsg") and the
#: ledger's schema (``hashtext(current_schema())``): advisory locks are the database's,
#: and ledgers in other schemas of it (another province's, a test's) do not wait on this
#: one's gate.
SUBMISSION_GATE = 0x63627367
#: the advisory lock (PostgreSQL) a start holds while it creates what the ledger lacks:
#: two `casebroker run` starting at once on a new ledger both issued CREATE TABLE, and
#: the second died of a unique violation in PostgreSQL's own catalog
SCHEMA_GATE = 0x63627363
_GATE_KEYS = "%s, hashtext(current_schema())"
#: what :meth:`Batch.existing_submissions` gives for a submission withdrawn before the
#: router had it (no dossier code starts with "~")
WITHDRAWN_EARLY = "~withdrawn-early"


def _sqlite_datetime(value: datetime | None) -> str | None:
    # SQLAlchemy's SQLite DATETIME storage format, of the UTC instant (see UTCDateTime).
    # Remembered: a batch stores the same few instants (its clock reading, receipt
    # times) in several columns of several rows
    if value is None:
        return None
    text = _SQLITE_TEXT.get(value)
    if text is None:
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger")
        text = value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
        if len(_SQLITE_TEXT) >= 4096:
            _SQLITE_TEXT.clear()
        _SQLITE_TEXT[value] = text
    return text


_SQLITE_TEXT: dict[datetime, str] = {}


def _kept_dossier(body: bytes) -> dict[str, Any] | None:
    """A dossier's submission kept in the outbox (a dead letter's or a triage copy's
    body), parsed: whole, or the stub `ledger prune` left (which keeps the schema it had
    as "was", and the submission id); None: another kind, or a body outside the
    contract."""
    try:
        kept: dict[str, Any] | Any = json.loads(bytes(body))
    except ValueError:
        return None
    if not isinstance(kept, dict):
        return None
    kind = kept.get("was" if is_pruned(kept) else "schema")
    if not str(kind).startswith("casebroker.dossier.submitted/"):
        return None
    sid = kept.get("submission_id")
    if not isinstance(sid, str):
        return None
    # as the router read it, and recorded it everywhere else: a desk may write it in
    # capitals, and the held copy, a withdrawal or a replay by it must still match
    with suppress(ValueError):
        kept["submission_id"] = str(UUID(sid))
    return kept


def touched_since(since: datetime) -> Any:
    """Dossiers received since ``since`` (their desk's date), or changed since (recorded
    late: a desk that synced days later, a backlog; or updated): what an audit of the
    period checks."""
    return or_(dossiers.c.received_at >= since, dossiers.c.updated_at >= since)


def _closed_at_intake(conn: Connection, submission_ids: Iterable[str]
                      ) -> dict[str, dict[str, Any]]:
    """submission id → its ``refusals`` row (without the submission and the notice), for
    those closed at intake: refused by an operator or withdrawn while held (500 ids a
    query)."""
    wanted = sorted(set(submission_ids))
    c = refusals.c
    found: dict[str, dict[str, Any]] = {}
    for i in range(0, len(wanted), 500):
        rows = conn.execute(select(c.submission_id, c.message_id, c.desk_id,
                                   c.procedure_code, c.state, c.notice_id)
                            .where(c.submission_id.in_(wanted[i:i + 500])))
        found.update({r.submission_id: dict(r._mapping) for r in rows})
    return found


def _kept_submission(body: bytes) -> str | None:
    """The submission id of a dossier kept in the outbox (:func:`_kept_dossier`), or
    None."""
    kept = _kept_dossier(body)
    return None if kept is None else str(kept["submission_id"])


#: inbox outcomes of deliveries that opened nothing and kept their message (a dead letter,
#: a triage copy)
SET_ASIDE = or_(inbox.c.outcome.like("dead:%"), inbox.c.outcome.like("triaged:%"))


class legal_day(FunctionElement[Any]):  # noqa: N801 (an SQL function's name)
    """SQL: the day in Vietnam (:data:`~broker.lifecycle.LEGAL_TIMEZONE`) of an instant
    the ledger keeps in UTC, for comparing days in a query as
    :func:`~broker.lifecycle.late_from` compares them in Python. SQLite has no zones:
    Vietnam has kept UTC+7, without summer time, since 1975."""

    inherit_cache = True
    name = "legal_day"


@compiles(legal_day, "sqlite")
def _legal_day_sqlite(element: legal_day, compiler: Any, **kw: Any) -> str:
    return f"date({compiler.process(element.clauses, **kw)}, '+7 hours')"


@compiles(legal_day, "postgresql")
def _legal_day_postgresql(element: legal_day, compiler: Any, **kw: Any) -> str:
    return (f"(({compiler.process(element.clauses, **kw)}) AT TIME ZONE "
            f"'{LEGAL_TIMEZONE}')::date")


def _not_paused_in_time(due: Any) -> Any:
    """SQL: no pause recorded, or one asked for after the due day
    (:func:`~broker.lifecycle.paused_in_time`)."""
    c = dossiers.c
    return or_(c.paused_at.is_(None), legal_day(c.paused_at) > legal_day(due))


def _overdue(now: datetime) -> list[Any]:
    """Open and past the due day at ``now`` (:func:`~broker.lifecycle.is_overdue`: due
    before today began, in Vietnam), unless the clock was paused in time (a supplement
    requested by the end of the due day: the due date moves when it comes back)."""
    c = dossiers.c
    return [_OPEN, c.due_at < day_start(now), _not_paused_in_time(c.due_at)]


def _utc_datetime(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("naive datetime given to the ledger")
    return value.astimezone(UTC)


def _sqlite_bool(value: bool | None) -> int | None:
    return None if value is None else int(value)


def _column_converter(column: Any, dialect: str) -> Callable[[Any], Any] | None:
    """How one column's Python value goes to the driver; None: as it is."""
    kind = column.type
    if isinstance(kind, UTCDateTime):
        return _sqlite_datetime if dialect == "sqlite" else _utc_datetime
    if isinstance(kind, JSON):
        return _json_dumps  # None becomes JSON null, as SQLAlchemy's JSON type stores it
    if isinstance(kind, Boolean):
        return _sqlite_bool if dialect == "sqlite" else None
    if isinstance(kind, (Integer, String, LargeBinary)):
        return None
    raise TypeError(f"no bulk conversion for {column.table.name}.{column.name} ({kind!r})")


@functools.cache
def _bulk_insert(table: Table, keys: tuple[str, ...], dialect: str
                 ) -> tuple[str, Callable[[dict[str, Any]], tuple[Any, ...]]]:
    """The column list of these keys and the function making one row's parameters.

    ``flush`` hands over runs of rows with the same keys, so no value is left out.
    """
    columns = [table.c[k] for k in keys]  # KeyError: a key that is no column
    names = f"{table.name} ({', '.join(c.name for c in columns)})"
    getter: Callable[[dict[str, Any]], tuple[Any, ...]] = operator.itemgetter(*keys)
    if len(keys) == 1:
        single = operator.itemgetter(keys[0])
        getter = lambda row: (single(row),)  # noqa: E731 - itemgetter of one key: no tuple
    # only the columns that need it are converted; the rest come out of itemgetter (C)
    converted = [(i, conv) for i, conv in enumerate(_column_converter(c, dialect)
                                                     for c in columns) if conv is not None]
    if not converted:
        return names, getter

    def convert(row: dict[str, Any]) -> tuple[Any, ...]:
        values = list(getter(row))
        for i, conv in converted:
            values[i] = conv(values[i])
        return tuple(values)

    return names, convert


#: PostgreSQL: reserve blocks of numbers for many (agency, day) pairs, in sorted order
_PG_CODE_UPSERT = (
    "INSERT INTO code_sequences (agency_id, day, last)"
    " SELECT * FROM unnest(%s::varchar[], %s::varchar[], %s::integer[])"
    " ON CONFLICT (agency_id, day) DO UPDATE SET last = code_sequences.last + excluded.last"
    " RETURNING agency_id, day, last")


#: SQLite: the same upsert over a multi-row VALUES list (``{}``: its rows)
_SQLITE_CODE_UPSERT = (
    "INSERT INTO code_sequences (agency_id, day, last) VALUES {}"
    " ON CONFLICT (agency_id, day) DO UPDATE SET last = code_sequences.last + excluded.last"
    " RETURNING agency_id, day, last")


@contextmanager
def _outages_are_transient() -> Iterator[None]:
    """Turn 'the database is away' errors into TransientError (retried, never dropped)."""
    try:
        yield
    except IntegrityError:
        raise
    except DBAPIError as e:
        if is_transient(e):
            raise TransientError(f"ledger unavailable: {_driver_said(e)}") from e
        raise


def _driver_said(error: DBAPIError) -> str:
    """Why the database is away, for a log line: the driver's error type and, for an
    ``OperationalError``, the first line of its own message ("database is locked",
    "connection failed: ... Connection refused"): those speak of the connection, the
    server and locks, never of a row's values (SQLAlchemy's own text, which quotes the
    statement's parameters, is left out, as is any other kind's message)."""
    name = type(error.orig).__name__
    if (why := _PG_WHY.get(getattr(error.orig, "sqlstate", None) or "")) is not None:
        return f"{name} ({why})"
    said = str(error.orig).strip().splitlines() if isinstance(error, OperationalError) else []
    return f"{name} ({said[0][:200]})" if said and said[0] else name


#: what PostgreSQL's "not now" errors mean for an operator: a privilege or a read-only
#: server reads as an outage under its type's name alone (found by a review)
_PG_WHY = {
    "42501": "the database user lacks a privilege on the ledger's tables: grant it, or "
             "use the owner's URL",
    "25006": "the server takes no writes: a standby (after a failover?) or "
             "default_transaction_read_only",
}


#: PostgreSQL's errors (SQLSTATE) that say the server or the session takes no writes now,
#: whatever the rows: not OperationalErrors in psycopg, so read as 'wrong' they
#: dead-lettered every delivery as internal_error, one by one, until someone stepped in
#: (found by a review). A read-only transaction (25006: the URL reaches a standby after a
#: failover, or default_transaction_read_only), a session the server ended for idling in
#: a transaction (25P03), a privilege revoked (42501)
_PG_NOT_NOW = frozenset({"25006", "25P03", "42501"})
#: of those, the ones a new connection may cure (the pool reconnects; the URL's host may
#: lead to the new primary by now): the connection that met one is discarded, as on a
#: disconnect, instead of going back to the pool still on the standby
_PG_RECONNECT = frozenset({"25006", "25P03"})


def _sqlstate(driver_error: BaseException | None) -> str | None:
    """PostgreSQL's code for a driver's error (psycopg's ``sqlstate``); None for others."""
    code = getattr(driver_error, "sqlstate", None)
    return code if isinstance(code, str) else None


def is_transient(error: BaseException) -> bool:
    """Whether a database error means 'away for now' rather than 'wrong'."""
    if isinstance(error, OperationalError):
        return True
    return isinstance(error, DBAPIError) and (bool(error.connection_invalidated)
                                              or _sqlstate(error.orig) in _PG_NOT_NOW)


@dataclass(slots=True)
class Prior:
    """How a message id was processed before: its inbox row and what it published."""

    outcome: str
    dossier_code: str | None
    #: the fingerprint of the delivery processed (Consumer.fingerprint_of; None: not known)
    fingerprint: bytes | None
    published: list[Outbound] = field(default_factory=list)


class Batch:
    """One transaction over a batch of deliveries."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._inbox: list[dict[str, Any]] = []
        self._outbox: list[dict[str, Any]] = []
        self._events: list[dict[str, Any]] = []
        self._dossiers: list[dict[str, Any]] = []
        self._held: list[dict[str, Any]] = []
        #: message id → fingerprint of the delivery being processed under it, noted by the
        #: screen and written with its inbox row by :meth:`record`
        self.fingerprints: dict[str, bytes] = {}

    @contextmanager
    def _driver(self, statement: str) -> Iterator[Any]:
        """A cursor of the driver's own connection, in this batch's transaction.

        The hot statements (a few per batch: the reads, the code upsert, the inserts) go
        to the driver directly: SQLAlchemy's ``exec_driver_sql`` spends tens of µs per
        statement setting up its result, about a quarter of a one-dossier batch
        (docs/BENCHMARKS.md). Driver errors come out as SQLAlchemy's, as from ``execute``:
        a conflict is an IntegrityError, an outage an OperationalError.
        """
        driver = self.conn.connection.driver_connection
        assert driver is not None
        error_base = self.conn.dialect.loaded_dbapi.Error
        try:
            with closing(driver.cursor()) as cursor:
                yield cursor
        except error_base as e:
            gone = _sqlstate(e) in _PG_RECONNECT
            if gone:  # dropped, not back to the pool still on a standby, and its idle
                # peers with it (as the engine's handle_error hook has it for its own
                # statements): the retry connects afresh
                self.conn.invalidate()
                self.conn.engine.dispose(close=False)
            raise DBAPIError.instance(statement, None, e, error_base,
                                      connection_invalidated=gone,
                                      dialect=self.conn.dialect) from e

    def _fetch(self, statement: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._driver(statement) as cursor:
            cursor.execute(statement, params)
            rows: list[tuple[Any, ...]] = cursor.fetchall()
            return rows

    def _rows_in(self, query: str, values: list[str]) -> list[tuple[Any, ...]]:
        """Rows of ``query`` whose column is one of ``values``: ``query`` ends with
        ``WHERE <column>``, or says ``{IN}`` after each column to match (a UNION).
        Driver SQL, not SQLAlchemy's ``select``: the hot reads run once per batch, and
        building and caching a statement cost a small batch more than the database did
        (docs/BENCHMARKS.md)."""
        if _IN not in query:
            query += f" {_IN}"
        n = query.count(_IN)
        if self.conn.dialect.name == "postgresql":
            return self._fetch(query.replace(_IN, "= ANY(%s)"), (values,) * n)
        rows: list[tuple[Any, ...]] = []
        for i in range(0, len(values), _SQLITE_CHUNK):
            chunk = tuple(values[i:i + _SQLITE_CHUNK])
            rows += self._fetch(query.replace(_IN, f"IN ({', '.join('?' * len(chunk))})"),
                                chunk * n)
        return rows

    def seen(self, message_ids: Iterable[str]) -> dict[str, Prior]:
        """Message ids already processed: how, and the messages they published."""
        ids = list(set(message_ids))
        if not ids:
            return {}
        found = {mid: Prior(outcome, code, None if fp is None else bytes(fp)) for
                 mid, outcome, code, fp in self._rows_in(
                     "SELECT message_id, outcome, dossier_code, fingerprint FROM inbox "
                     "WHERE message_id", ids)}
        if found:  # redeliveries: rare, so SQLAlchemy's conveniences are worth their cost
            rows = self.conn.execute(
                select(outbox).where(outbox.c.inbox_message_id.in_(list(found)))
                .order_by(outbox.c.id))
            for r in rows:
                if is_pruned(r.body):
                    # erased by `ledger prune` once its dossier had closed: it was
                    # confirmed then, and its delivery acked; publishing the stub would
                    # send an agency something outside the contract
                    continue
                found[r.inbox_message_id].published.append(Outbound(
                    r.exchange, r.routing_key, r.message_id, r.type, r.correlation_id,
                    r.headers, bytes(r.body)))
        return found

    def applied_under(self, copies: Mapping[str, tuple[str, str]]) -> set[str]:
        """Of the message ids ``copies`` maps to (the start of their changed copies' inbox
        ids, the dossier they name), those under which a changed copy changed that
        dossier: its events name the message each change came from (an index read;
        none at all for a batch without changed copies, nearly every one)."""
        if not copies:
            return set()
        ids: dict[str, list[str]] = {}
        for code, mid in self.conn.execute(
                select(events.c.dossier_code, events.c.message_id).where(
                    events.c.dossier_code.in_({code for _, code in copies.values()}),
                    events.c.message_id.is_not(None))):
            ids.setdefault(code, []).append(mid)
        return {mid for mid, (prefix, code) in copies.items()
                if any(i.startswith(prefix) for i in ids.get(code, ()))}

    def existing_submissions(self, submission_ids: Iterable[str], *, alone: bool = False,
                             with_early: bool = False) -> dict[str, str | None]:
        """submission id → dossier code for those already in the ledger, or None for one
        closed at intake with no dossier (:meth:`refusals` has its notice), or, with
        ``with_early``, :data:`WITHDRAWN_EARLY` for one withdrawn before it came
        (:meth:`early_withdrawals`); the batch holds :data:`SUBMISSION_GATE` from here on
        (``alone``: see :meth:`enter_submission_gate`)."""
        ids = list(set(submission_ids))
        if not ids:
            return {}
        self.enter_submission_gate(alone=alone)
        # one statement: the refusals' probe of an index (of a few rows) costs nothing
        # beside a round trip of its own per batch; early withdrawals first, so that a
        # dossier or refusal of the same id (there is none) would win
        early = (f"SELECT submission_id, '{WITHDRAWN_EARLY}' FROM early_withdrawals "
                 f"WHERE submission_id {_IN} UNION ALL " if with_early else "")
        return dict(self._rows_in(
            early
            + f"SELECT submission_id, code FROM dossiers WHERE submission_id {_IN} UNION ALL "
            f"SELECT submission_id, NULL FROM refusals WHERE submission_id {_IN}", ids))

    def early_withdrawals(self, submission_ids: Iterable[str]
                          ) -> dict[str, dict[str, dict[str, Any]]]:
        """submission id → desk id → that desk's withdrawal of it, sent before the router
        had the submission (rare; more than one desk only if a desk named another's id)."""
        wanted = list(set(submission_ids))
        if not wanted:
            return {}
        rows = self.conn.execute(select(early_withdrawals).where(
            early_withdrawals.c.submission_id.in_(wanted)))
        found: dict[str, dict[str, dict[str, Any]]] = {}
        for r in rows:
            found.setdefault(r.submission_id, {})[r.desk_id] = dict(r._mapping)
        return found

    def withdraw_early(self, row: dict[str, Any]) -> None:
        """Keep a withdrawal of a submission the ledger does not have yet."""
        self.conn.execute(early_withdrawals.insert().values(row))

    def drop_early_withdrawals(self, submission_id: str) -> None:
        """The submission came: its early withdrawals are done (its desk's closed it at
        intake, any other desk's was void)."""
        self.conn.execute(early_withdrawals.delete().where(
            early_withdrawals.c.submission_id == submission_id))

    def enter_submission_gate(self, *, alone: bool = False) -> None:
        """Hold :data:`SUBMISSION_GATE` until this batch commits: shared (the router,
        about to open dossiers), or ``alone`` (closing a held submission at intake); on
        SQLite, take the write lock now (pysqlite begins a transaction only at the first
        write, so the reads before it would see the ledger as it was before a refusal
        committed)."""
        if self.conn.dialect.name == "postgresql":
            how = "" if alone else "_shared"
            self._fetch(f"SELECT pg_advisory_xact_lock{how}({_GATE_KEYS})", (SUBMISSION_GATE,))
            return
        driver = self.conn.connection.driver_connection
        assert driver is not None
        if not driver.in_transaction:  # in one: a write has taken the lock already
            with self._driver("BEGIN IMMEDIATE") as cursor:
                cursor.execute("BEGIN IMMEDIATE")

    def refusals(self, submission_ids: Iterable[str], desk_exchange: str
                 ) -> dict[str, tuple[Any, Outbound]]:
        """For submissions an operator refused at intake: the submission as stored and
        its refusal notice, to be sent again as it was first sent (rare: through
        SQLAlchemy)."""
        wanted = list(set(submission_ids))
        if not wanted:
            return {}
        rows = self.conn.execute(select(refusals).where(refusals.c.submission_id.in_(wanted)))
        return {r.submission_id: (r.submission, refusal_notice(r._mapping, desk_exchange))
                for r in rows}

    def openings(self, codes: Iterable[str]) -> dict[str, tuple[Any, list[Outbound]]]:
        """For dossiers in the ledger: the submission each was opened with (as stored) and
        what the delivery that opened it published. Rare (a submission sent again under a
        new message id), so through SQLAlchemy; both lookups go by an index."""
        wanted = list(set(codes))
        if not wanted:
            return {}
        rows = self.conn.execute(
            select(dossiers.c.code, dossiers.c.submission, events.c.message_id)
            .join(events, and_(events.c.dossier_code == dossiers.c.code, events.c.seq == 1))
            .where(dossiers.c.code.in_(wanted))).all()
        seen = self.seen(r.message_id for r in rows if r.message_id)
        return {r.code: (r.submission, seen[r.message_id].published
                         if r.message_id in seen else []) for r in rows}

    def first_arrivals(self, replays: Iterable[tuple[str, str]]
                       ) -> dict[tuple[str, str], tuple[datetime, bool]]:
        """For replays of dossiers set aside (each an original message id and the
        submission id the replay carries): when the original was processed, and whether
        it was triaged (else dead-lettered), for those whose delivery was set aside
        carrying that very submission. Rare (an operator's replay), so through
        SQLAlchemy, by the inbox's key."""
        wanted = set(replays)
        if not wanted:
            return {}
        rows = self.conn.execute(
            select(inbox.c.message_id, inbox.c.processed_at, inbox.c.outcome, outbox.c.body)
            .join(outbox, outbox.c.inbox_message_id == inbox.c.message_id)
            .where(inbox.c.message_id.in_({mid for mid, _ in wanted}), SET_ASIDE))
        return {(r.message_id, sid): (r.processed_at, r.outcome.startswith("triaged:"))
                for r in rows
                if (sid := _kept_submission(r.body)) is not None
                and (r.message_id, sid) in wanted}

    def appointment(self, code: str) -> datetime | None:
        """The new appointment the deadline watch's apology gave for a dossier overdue
        (its last ``overdue`` event's detail), or None. Rare (a hand-off of a dossier
        already overdue), so through SQLAlchemy."""
        detail = self.conn.execute(
            select(events.c.detail).where(events.c.dossier_code == code,
                                          events.c.kind == "overdue")
            .order_by(events.c.seq.desc()).limit(1)).scalar()
        said = detail.get("appointment") if isinstance(detail, dict) else None
        return datetime.fromisoformat(said) if isinstance(said, str) else None

    def closed_at_intake(self, submission_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """:func:`_closed_at_intake`, in this batch."""
        return _closed_at_intake(self.conn, submission_ids)

    def held_copies(self, submission_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """submission id → its deliveries held in triage (:data:`held`), latest first:
        ``message_id`` (the inbox id), ``desk_id``, ``procedure_code``, ``held_at``,
        ``copy_id`` (what its copy waits under in triage) and ``submission`` (the copy's
        body as the ledger keeps it: the dossier, or the stub `ledger prune` left)."""
        wanted = list(set(submission_ids))
        if not wanted:
            return {}
        found: dict[str, list[dict[str, Any]]] = {}
        rows = self.conn.execute(
            select(held, outbox.c.message_id.label("copy_id"), outbox.c.body)
            .join(outbox, outbox.c.inbox_message_id == held.c.message_id)
            .where(held.c.submission_id.in_(wanted))
            .order_by(held.c.held_at.desc(), outbox.c.id))
        for r in rows:
            # the delivery's outbox rows are its triage copy and its desk's held notice
            kept = _kept_dossier(r.body)
            if kept is None or kept["submission_id"] != r.submission_id:
                continue
            row = dict(r._mapping)
            del row["body"]
            row["submission"] = kept
            found.setdefault(r.submission_id, []).append(row)
        return found

    def close_at_intake(self, row: dict[str, Any]) -> None:
        """Record a held submission closed at intake (a ``refusals`` row) now, so that a
        later delivery of the same batch finds it."""
        self.conn.execute(refusals.insert().values(row))

    def allocate_codes(self, counts: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
        """Reserve ``n`` numbers per (agency, YYMMDD); return the first of each block.

        One upsert for the whole batch (PostgreSQL: over three arrays; SQLite: one
        multi-row VALUES per few hundred rows), rows in one order so routers never
        deadlock.
        """
        if not counts:
            return {}
        keys = sorted(counts)
        if self.conn.dialect.name == "postgresql":
            rows = self._fetch(_PG_CODE_UPSERT, (
                [a for a, _ in keys], [d for _, d in keys], [counts[k] for k in keys]))
        else:
            rows = []
            for i in range(0, len(keys), _SQLITE_CHUNK // 3):
                chunk = keys[i:i + _SQLITE_CHUNK // 3]
                params = tuple(v for a, d in chunk for v in (a, d, counts[(a, d)]))
                rows += self._fetch(
                    _SQLITE_CODE_UPSERT.format(", ".join(["(?, ?, ?)"] * len(chunk))), params)
        return {(a, d): last - counts[(a, d)] + 1 for a, d, last in rows}

    def load_dossiers(self, codes: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Current rows of the named dossiers, as dicts."""
        wanted = list(set(codes))
        if not wanted:
            return {}
        rows = self.conn.execute(select(dossiers).where(dossiers.c.code.in_(wanted)))
        return {r.code: dict(r._mapping) for r in rows}

    def add_dossier(self, row: dict[str, Any]) -> None:
        self._dossiers.append(row)

    def add_held(self, row: dict[str, Any]) -> None:
        """A delivery held in triage (a :data:`held` row), written with the batch."""
        self._held.append(row)

    def update_dossier(self, code: str, expected_seq: int, values: dict[str, Any]) -> None:
        """Write a dossier's new state; fail the batch if another writer got there first."""
        result = self.conn.execute(update(dossiers).where(
            dossiers.c.code == code, dossiers.c.seq == expected_seq).values(**values))
        if result.rowcount != 1:
            raise ConcurrentUpdate(code)

    def add_event(self, row: dict[str, Any]) -> None:
        self._events.append(row)

    def watch_range(self, level: int, due_before: datetime, now: datetime, limit: int, *,
                    step: bool = False, after: tuple[datetime, int] | None = None
                    ) -> list[dict[str, Any]]:
        """Open dossiers at deadline-watch ``level`` due before ``due_before``, at most
        ``limit`` in (due date, id) order after ``after``, with their plan (``steps``);
        with ``step``, chain steps due before their dossier, by the step's level and due
        date, with the step's number and level too.
        :func:`broker.consumers.deadlines.decide` picks those whose level rises.

        A dossier paused for a supplement only if it was already late when paused: its
        clock stands still, so until the desk brings the supplement it cannot be flagged.
        Selecting those too let ``limit`` of them (citizens who never come back) fill
        every round and starve every dossier due after them.

        One range of ``ix_dossiers_watch`` (watch level, due date), or of
        ``ix_dossiers_step_watch``, read in order: SQLite's index entries end with the
        rowid, so the id breaks ties among equal due dates without a sort. Both levels in
        one ``OR`` made SQLite pick the state index, read every open dossier and sort
        them.
        """
        c = dossiers.c
        level_col, due, where, more = (
            (c.step_watch_level, c.step_due_at, [STEP_AHEAD],
             [c.step, c.steps, c.step_due_at, c.step_watch_level,
              c.flags[STEP_STARTED].as_string().label("step_started")]) if step
            else (c.watch_level, c.due_at, [], [c.steps]))
        clock_runs = or_(c.state != int(State.SUPPLEMENT_REQUESTED),
                         and_(c.paused_at.is_not(None), _not_paused_in_time(due)),
                         and_(c.paused_at.is_(None), due < now))
        if after is not None:
            where.append(tuple_(due, c.id) > tuple_(*after))
        rows = self.conn.execute(
            select(c.id, c.code, c.state, c.agency_id, c.return_desk_id, c.procedure_code,
                   c.submission_id, c.received_at, c.due_at, c.paused_at, c.seq,
                   c.watch_level, *more)
            .where(_OPEN, *where, level_col == level, due < due_before, clock_runs)
            .order_by(due, c.id).limit(limit))
        return [dict(r._mapping) for r in rows]

    def raise_watch_level(self, code: str, expected_seq: int, expected_level: int,
                          level: int, at: datetime, *, step: bool = False) -> bool:
        """Set a dossier's watch level, or with ``step`` its step's (and bump its seq),
        unless someone changed it first."""
        c = dossiers.c
        column = c.step_watch_level if step else c.watch_level
        result = self.conn.execute(update(dossiers).where(
            c.code == code, c.seq == expected_seq, column == expected_level,
        ).values({column: level, c.seq: expected_seq + 1, c.updated_at: at}))
        return bool(result.rowcount == 1)

    def add_watch_notices(self, dossier_code: str, notices: Sequence[Outbound],
                          at: datetime) -> list[Outbound]:
        """Keep deadline notices until RabbitMQ confirms them; return those not kept before.

        A notice whose id is already kept is that same message (ids are deterministic),
        so it is not written twice, and one such row cannot fail the watch's whole
        transaction round after round.
        """
        if not notices:
            return []
        insert_ = pg_insert if self.conn.dialect.name == "postgresql" else sqlite_insert
        stmt = insert_(watch_outbox).on_conflict_do_nothing(index_elements=["message_id"])
        new = set(self.conn.scalars(stmt.returning(watch_outbox.c.message_id), [{
            "dossier_code": dossier_code, "exchange": o.exchange,
            "routing_key": o.routing_key, "message_id": o.message_id, "type": o.type,
            "correlation_id": o.correlation_id, "body": o.body, "created_at": at,
        } for o in notices]))
        for o in notices:
            if o.message_id not in new:
                log.warning("deadline notice %s was kept before; not written again",
                            o.message_id)
        return [o for o in notices if o.message_id in new]

    def record(self, message_id: str, source: str, outcome: str, dossier_code: str | None,
               published: Sequence[Outbound], at: datetime) -> None:
        """Mark a delivery processed, with what it published (and its fingerprint, if
        :attr:`fingerprints` has one for it)."""
        self._inbox.append({"message_id": message_id, "source": source, "outcome": outcome,
                            "dossier_code": dossier_code, "processed_at": at,
                            "fingerprint": self.fingerprints.get(message_id)})
        self._outbox.extend({
            "inbox_message_id": message_id, "exchange": o.exchange,
            "routing_key": o.routing_key, "message_id": o.message_id, "type": o.type,
            "correlation_id": o.correlation_id, "headers": o.headers, "body": o.body,
        } for o in published)

    def flush(self) -> None:
        """Write everything added, one statement per table.

        The rows go to the driver as tuples converted by :func:`_bulk_insert` (what
        SQLAlchemy's ``insert`` would bind, without its per-row, per-column processing:
        a third of the router's time before): SQLite's ``executemany``, one C loop in
        this process, or PostgreSQL's ``COPY``.
        """
        dialect = self.conn.dialect.name
        for table, rows in ((dossiers, self._dossiers), (events, self._events),
                            (inbox, self._inbox), (outbox, self._outbox),
                            (held, self._held)):
            # consecutive rows with the same keys go in one statement, in the order added
            # (ids follow it: outbox rows are re-published in id order)
            for keys, run in itertools.groupby(rows, key=tuple):
                names, convert = _bulk_insert(table, keys, dialect)
                params = [convert(r) for r in run]
                if dialect == "postgresql":  # COPY: a Bind/Execute per row cost twice as much
                    statement = f"COPY {names} FROM STDIN"
                    with self._driver(statement) as cursor, cursor.copy(statement) as copy:
                        for row in params:
                            copy.write_row(row)
                else:
                    statement = f"INSERT INTO {names} VALUES ({', '.join('?' * len(keys))})"
                    with self._driver(statement) as cursor:
                        cursor.executemany(statement, params)
            rows.clear()


def refusal_notice(row: Mapping[Any, Any], desk_exchange: str) -> Outbound:
    """The notice of a refusal at intake (a ``refusals`` row), as first published."""
    return Outbound(desk_exchange, row["desk_id"], row["notice_id"], "desk.notice", None,
                    None, bytes(row["notice"]))


class SubmissionOpened(CasebrokerError):
    """A submission to be refused has opened a dossier: there is nothing to refuse."""

    def __init__(self, submission_id: str, code: str) -> None:
        super().__init__(f"submission {submission_id} opened dossier {code}")
        self.code = code


class ConcurrentUpdate(TransientError):
    """Another writer (a competing router) changed the same rows; redo the batch."""

    bounded = True

    @property
    def summary(self) -> str:
        return "a write conflict with another writer of the ledger (a competing router?)"


def _pinned(conn: sqlite3.Connection, copied: int, wait_s: float = 0.02) -> bool:
    """Whether the WAL's copying stays at ``copied`` pages for ``wait_s``: a reader keeps
    a snapshot from before the rest (short transactions come and go, and it moves on)."""
    time.sleep(wait_s)
    _busy, _frames, now = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return bool(now == copied)


class Checkpoints:
    """The background WAL checkpoints of a SQLite ledger: call to stop them (and give
    SQLite its own back); counts what they did, and tells ``count`` (the metrics)."""

    def __init__(self, count: Callable[[str], None] | None = None) -> None:
        self.stopping = threading.Event()
        self.halt: Callable[[], None] = lambda: None
        self.count = count
        #: RESTART checkpoints run (the WAL started over, or tried to)
        self.restarts = 0
        #: turns a RESTART was due but left: a reader held pages of the WAL
        self.held_back = 0

    def turn(self, result: str) -> None:
        """A turn that found the WAL due to start over: ``restarted`` or ``held_back``."""
        if result == "restarted":
            self.restarts += 1
        else:
            self.held_back += 1
        if self.count is not None:
            self.count(result)

    def __call__(self) -> None:
        self.stopping.set()
        self.halt()


class Ledger:
    """Connection to the ledger database."""

    def __init__(self, url: str | None = None, *, create: bool = True,
                 current: bool = True, lock_timeout_s: float | None = None) -> None:
        """``create``: make what the ledger lacks (`casebroker run`), else require one
        there; ``current`` (without ``create``): and of this version (only `ledger
        upgrade` opens one of another). ``lock_timeout_s`` (PostgreSQL): a statement
        waiting longer for a lock another session holds fails as the ledger being away
        (:data:`RUN_LOCK_TIMEOUT_S`), instead of holding its batch for as long as the
        lock lasts; None: it waits (SQLite waits 5 s in any case)."""
        self.url = url or os.environ.get("CASEBROKER_DB_URL") or DEFAULT_DB_URL
        #: SQLite: whether committing connections checkpoint the WAL themselves
        self._sqlite = {"autocheckpoint": True}
        try:
            self.engine: Engine = _make_engine(self.url, self._sqlite, lock_timeout_s)
        except (ArgumentError, ImportError) as e:  # not a URL, or a driver not installed
            raise SettingError(
                f"not a ledger URL casebroker can use: {shown_url(self.url)} "
                f"({type(e).__name__}); give "
                "sqlite:///PATH or postgresql://USER@HOST/DB (--db-url, CASEBROKER_DB_URL)"
            ) from e
        if create:
            self.create_schema()
        else:
            self._require_existing(current=current)

    @property
    def where(self) -> str:
        """The ledger's URL with its password hidden, for messages."""
        return shown_url(make_url(self.url).render_as_string(hide_password=True))

    @contextmanager
    def _reached(self) -> Iterator[None]:
        """At start: a ledger out of reach is a :class:`StartupError` naming it and giving
        the driver's first line (no dossier is in play yet, so the driver's words cannot
        carry one's data)."""
        try:
            with _outages_are_transient():
                yield
        except TransientError as e:  # raised from the driver's error, which it wraps
            said = str(getattr(e.__cause__, "orig", "")).strip()
            raise StartupError(f"ledger unavailable at {self.where}: "
                               f"{said.splitlines()[0] if said else e}") from e
        except DatabaseError as e:  # reached, but no database of ours (a file of text)
            said = str(e.orig).strip()
            raise StartupError(f"no usable ledger at {self.where}: "
                               f"{said.splitlines()[0] if said else type(e.orig).__name__}"
                               ) from e

    def create_schema(self) -> None:
        """Check the tables that are there, then create the missing ones (idempotent). A
        ``held`` table made for a ledger that has dossiers is filled from its triage
        copies (:func:`_fill_held`), in the same transaction: on SQLite too, where
        pysqlite would commit the ``CREATE`` at once and a filling cut short would leave
        the table empty for good (the next start finds it there and fills nothing).

        A ledger an earlier version made, which `ledger upgrade` must bring up first, is
        refused before anything is created: a start that made and filled ``held`` and
        then refused left it filled as of then, and the upgrade, finding it, filled
        nothing of what the earlier version still running triaged meanwhile. On
        PostgreSQL, starts wait for each other here (:data:`SCHEMA_GATE`)."""
        with self._reached(), self.engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN")  # deferred: no write lock unless it creates
            else:
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_GATE_KEYS})",
                                     (SCHEMA_GATE,))
            found = inspect(conn)
            if problems := _schema_problems(found, missing_tables=False):
                raise LedgerSchemaError(self.where, problems)
            fill = found.has_table(dossiers.name) and not found.has_table(held.name)
            metadata.create_all(conn)
            if fill:
                _fill_held(conn)
        self.check_schema()

    def _require_existing(self, *, current: bool = True) -> None:
        """For the commands that only read: a URL with no ledger behind it is said so,
        and nothing is created (SQLite would make an empty file of a mistyped path); one
        whose tables lack columns of this version is a :class:`LedgerSchemaError`."""
        hint = "(--db-url, CASEBROKER_DB_URL)"
        if (path := sqlite_file(self.url)) is not None and not Path(path).exists():
            raise StartupError(f"no ledger at {self.where}: no such file {hint}")
        with self._reached(), self.engine.connect() as conn:
            found = inspect(conn)
            if not found.has_table(dossiers.name):
                raise StartupError(f"no casebroker ledger at {self.where}: it has no "
                                   f"{dossiers.name} table {hint}")
            # one an earlier version made is said so (`ledger upgrade`), where a query of
            # a column it lacks ended in a traceback, or read as the ledger being away; a
            # table it lacks is left to the commands, which read around it
            problems = _schema_problems(found, missing_tables=False) if current else []
        if problems:
            raise LedgerSchemaError(self.where, problems)

    def upgrade(self, *, dry_run: bool = False) -> list[str]:
        """Bring a ledger made by an earlier version up to this one; return the statements
        (run, or with ``dry_run`` only said). Idempotent: an up-to-date ledger gets none.

        What it does: creates missing tables and the indexes this version defines; adds
        missing columns that may be added to tables holding rows (nullable, or with a
        server default); re-keys a table whose primary key this version widened (in
        place on PostgreSQL, :func:`_key_in_place`; on SQLite by copying its rows into a
        table made as this version makes it, :func:`_rebuilt`); drops the indexes
        earlier versions made and this one retired (:data:`RETIRED_INDEXES`; any other
        index, one a DBA added, is left alone). A
        missing column that is required and has no default cannot be added to rows that
        exist, nor can rows be re-keyed by a key that is not wider than theirs: those
        are errors, raised before anything is changed. The steps run in one transaction,
        on SQLite too (:meth:`write` begins it: pysqlite would commit each DDL statement
        as it goes, and a ``held`` table made but not yet filled when the run was cut
        short would stay empty, a re-run finding it there and filling nothing).
        """
        if dry_run:
            with self._reached(), self.engine.connect() as conn:
                return [ddl for ddl, _ in self._upgrade_steps(conn)]
        with self._reached(), self.write() as conn:
            # planned in the transaction that runs it, behind the schema gate on
            # PostgreSQL (SQLite's write lock is the transaction's): a second upgrade at
            # once planned the same steps, ran them after the first, and said "no usable
            # ledger" of one just upgraded (a review); it now finds nothing left to do
            if conn.dialect.name != "sqlite":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_GATE_KEYS})",
                                     (SCHEMA_GATE,))
            steps = self._upgrade_steps(conn)
            for _, run in steps:
                run(conn)
        if steps:
            self.check_schema()
        return [ddl for ddl, _ in steps]

    def _upgrade_steps(self, conn: Connection) -> list[tuple[str, Callable[[Connection], Any]]]:
        """:meth:`upgrade`'s steps for the ledger ``conn`` reaches, as (DDL, its run);
        CasebrokerError, before anything is changed, if one cannot be done."""
        found = inspect(conn)
        steps: list[tuple[str, Callable[[Connection], Any]]] = []
        impossible: list[str] = []
        for table in metadata.sorted_tables:
            if not found.has_table(table.name):
                steps += _creation(table, conn.dialect, found.has_table(dossiers.name))
                continue
            more, problems = _changes(table, conn.dialect, found)
            steps += more
            impossible += problems
        if impossible:
            raise CasebrokerError(f"cannot upgrade the ledger at {self.where}:\n"
                                  + "\n".join(f"  {p}" for p in impossible)
                                  + "\nnothing was changed; point CASEBROKER_DB_URL "
                                  "(--db-url) at a new ledger")
        return steps

    def check_schema(self) -> None:
        """Refuse, in words, a ledger made by another version of casebroker.

        ``create_all`` adds missing tables but never changes existing ones. Without this
        check a column this version writes and an old ledger lacks would fail every
        batch: SQLite reports it as an OperationalError, which reads as "the ledger is
        away", so the router would wait forever; PostgreSQL as a programming error, so
        every dossier would be dead-lettered. Extra nullable columns (or ones with a
        default) and extra indexes do no harm and are left alone.
        """
        with _outages_are_transient(), self.engine.connect() as conn:
            problems = _schema_problems(inspect(conn))
        if problems:
            raise LedgerSchemaError(self.where, problems)

    @contextmanager
    def batch(self) -> Iterator[Batch]:
        """One transaction; database outages surface as TransientError."""
        try:
            with _outages_are_transient(), self.engine.begin() as conn:
                b = Batch(conn)
                yield b
                b.flush()
        except IntegrityError as e:
            # a competing router committed the same submission or dossier first; on the
            # retry this batch sees its row and treats the delivery as a duplicate
            raise ConcurrentUpdate(f"conflict: {type(e.orig).__name__}") from e

    @contextmanager
    def read(self, *, snapshot: bool = False) -> Iterator[Connection]:
        """A connection for queries. With ``snapshot``, every query on it sees the ledger
        as it was at the first one, whatever commits meanwhile: a report made of several
        queries (the audit) on a ledger routers are writing to would otherwise compare
        rows from different moments (a dossier committed between two queries, with its
        assignment missing from the first). Database outages surface as TransientError,
        as from a batch: a command says so in a line, a watch retries."""
        with _outages_are_transient(), self.engine.connect() as conn:
            if snapshot:
                if conn.dialect.name == "postgresql":
                    conn = conn.execution_options(isolation_level="REPEATABLE READ",
                                                  postgresql_readonly=True)
                else:  # pysqlite sends no BEGIN before a SELECT: each would see its own
                    conn.exec_driver_sql("BEGIN")
            yield conn

    @contextmanager
    def _reading(self, conn: Connection | None) -> Iterator[Connection]:
        if conn is not None:
            yield conn
            return
        with self.read() as own:
            yield own

    def dossier(self, code: str) -> dict[str, Any] | None:
        """One dossier's row, or None."""
        with self.read() as conn:
            row = conn.execute(select(dossiers).where(dossiers.c.code == code)).first()
            return dict(row._mapping) if row else None

    def history(self, code: str) -> list[dict[str, Any]]:
        """A dossier's events in order: its process-control sheet."""
        with self.read() as conn:
            rows = conn.execute(select(events).where(events.c.dossier_code == code)
                                .order_by(events.c.seq))
            return [dict(r._mapping) for r in rows]

    def count_by_state(self, conn: Connection | None = None,
                       since: datetime | None = None) -> dict[int, int]:
        """How many dossiers are in each state (of those :func:`touched_since` then)."""
        period = [] if since is None else [touched_since(since)]
        with self._reading(conn) as conn:
            rows = conn.execute(select(dossiers.c.state, func.count()).where(*period)
                                .group_by(dossiers.c.state))
            return {int(s): int(n) for s, n in rows}

    def is_empty(self) -> bool:
        """Whether no delivery was ever processed into this ledger (no inbox row, no
        dossier: ``ledger prune`` keeps both)."""
        with self.read() as conn:
            return all(conn.execute(select(column).limit(1)).first() is None
                       for column in (inbox.c.message_id, dossiers.c.code))

    def count_inbox_outcomes(self, conn: Connection | None = None) -> dict[str, int]:
        """How many processed deliveries ended in each outcome."""
        with self._reading(conn) as conn:
            rows = conn.execute(select(inbox.c.outcome, func.count()).group_by(inbox.c.outcome))
            return {str(o): int(n) for o, n in rows}

    def states_for_submissions(self, submission_ids: Sequence[str],
                               conn: Connection | None = None
                               ) -> dict[str, tuple[str, int, bool]]:
        """submission id → (dossier code, state, boundary-free) for those in the ledger."""
        found: dict[str, tuple[str, int, bool]] = {}
        with self._reading(conn) as conn:
            for i in range(0, len(submission_ids), 500):
                chunk = list(submission_ids[i:i + 500])
                rows = conn.execute(select(dossiers.c.submission_id, dossiers.c.code,
                                           dossiers.c.state, dossiers.c.boundary_free)
                                    .where(dossiers.c.submission_id.in_(chunk)))
                found.update({r.submission_id: (r.code, int(r.state), bool(r.boundary_free))
                              for r in rows})
        return found

    def intake_desks(self, codes: Sequence[str]) -> dict[str, str]:
        """dossier code → its intake desk, for those in the ledger."""
        found: dict[str, str] = {}
        with self.read() as conn:
            for i in range(0, len(codes), 500):
                rows = conn.execute(select(dossiers.c.code, dossiers.c.intake_desk_id)
                                    .where(dossiers.c.code.in_(list(codes[i:i + 500]))))
                found.update({r.code: r.intake_desk_id for r in rows})
        return found

    def unopened_submission(self, submission_id: str) -> list[dict[str, Any]]:
        """The deliveries of a submission that opened no dossier, oldest first: each one
        dead-lettered or triaged, as ``message_id`` (of the copy in the dead-letter or
        triage queue), ``outcome``, ``processed_at``. Found by the dossier each kept for
        its dead letter or triage copy (a scan of those rows only, read a chunk at a
        time: an operator's question, not the router's)."""
        # a quick test before the body is parsed: its first 8 digits, in any case
        needle = submission_id[:8].lower().encode()
        found: dict[str, dict[str, Any]] = {}
        with self.read() as conn:
            rows = conn.execution_options(yield_per=500).execute(
                select(inbox.c.message_id, inbox.c.outcome, inbox.c.processed_at,
                       outbox.c.message_id.label("sent_as"), outbox.c.body)
                .join(outbox, outbox.c.inbox_message_id == inbox.c.message_id)
                .where(SET_ASIDE)
                .order_by(inbox.c.processed_at, inbox.c.message_id))
            for r in rows:
                if needle not in bytes(r.body).lower():
                    continue
                if _kept_submission(r.body) == submission_id:
                    # under the id it waits under in its queue (a changed copy's own
                    # inbox id adds a fingerprint to it)
                    found.setdefault(r.message_id, {"message_id": r.sent_as,
                                                    "outcome": r.outcome,
                                                    "processed_at": r.processed_at})
        return list(found.values())

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction for an operator's command that reads, then writes; database
        outages surface as TransientError. SQLite: it takes the write lock first, so
        that a router committing between its reads and its writes makes it wait, not fail
        (a read snapshot cannot become a write once another writer has committed)."""
        with _outages_are_transient(), self.engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn

    def check_writable(self) -> None:
        """Return once the ledger takes a write again; raise :class:`TransientError`
        while it does not (a worker waiting out an outage asks this, not a batch).

        A write, not a ``SELECT 1``: SQLite's lock held by another writer and a
        PostgreSQL standby (or a user without the privilege) answer a read all the same.
        The update matches no row and changes nothing."""
        with self.write() as conn:
            conn.exec_driver_sql("UPDATE inbox SET outcome = outcome WHERE 1 = 0")

    @contextmanager
    def _refusing(self) -> Iterator[Connection]:
        """A :meth:`write` transaction holding :data:`SUBMISSION_GATE` alone (SQLite: the
        write lock) until it ends."""
        with self.write() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_GATE_KEYS})",
                                     (SUBMISSION_GATE,))
            yield conn

    def refuse(self, row: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Record an operator's refusal at intake (a ``refusals`` row), unless the
        submission has one already; return the refusal in force and whether it is new.
        A submission that opened a dossier has nothing to refuse: :class:`SubmissionOpened`.

        A router opening a dossier for the same submission at the same moment (a
        corrected copy) and the refusal exclude each other: the refusal holds
        :data:`SUBMISSION_GATE` alone (SQLite: the write lock) from its check to its
        commit, so it waits for a router batch past its duplicate check, and a router
        batch waits for it.
        """
        sid = row["submission_id"]
        with self._refusing() as conn:
            code = conn.execute(select(dossiers.c.code)
                                .where(dossiers.c.submission_id == sid)).scalar()
            if code is not None:
                raise SubmissionOpened(sid, str(code))
            prior = conn.execute(select(refusals)
                                 .where(refusals.c.submission_id == sid)).first()
            if prior is not None:
                return dict(prior._mapping), False
            conn.execute(refusals.insert().values(row))
            return row, True

    def closed_at_intake(self, submission_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """:func:`_closed_at_intake`, for an operator's command (a ledger of this
        version: :meth:`check_schema` first)."""
        with self.read() as conn:
            return _closed_at_intake(conn, submission_ids)

    def refusal(self, submission_id: str) -> dict[str, Any] | None:
        """How a submission that opened no dossier was closed at intake (refused by an
        operator, or withdrawn by its desk while held), without the submission and the
        notice's body; or None (also from a ledger made before refusals, not yet
        upgraded)."""
        c = refusals.c
        with self.read() as conn:
            found = inspect(conn)
            if not found.has_table(refusals.name):
                return None
            # state: added later (`ledger upgrade`); before it, every row was a refusal
            state = (c.state if any(col["name"] == "state" for col in
                                    found.get_columns(refusals.name))
                     else literal(int(State.REFUSED)).label("state"))
            row = conn.execute(select(c.submission_id, c.message_id, c.desk_id,
                                      c.procedure_code, state, c.reason, c.refused_by,
                                      c.refused_at, c.notice_id)
                               .where(c.submission_id == submission_id)).first()
            return dict(row._mapping) if row else None

    def database_now(self) -> datetime:
        """The database server's clock, for a check of this process's (on SQLite, this
        machine's own)."""
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                now: datetime = conn.exec_driver_sql("SELECT clock_timestamp()").scalar_one()
                return now
            stamp = conn.exec_driver_sql("SELECT strftime('%Y-%m-%dT%H:%M:%f', 'now')"
                                         ).scalar_one()
            return datetime.fromisoformat(stamp).replace(tzinfo=UTC)

    def unconfirmed_notices(self, created_before: datetime | None, limit: int = 500
                            ) -> list[Outbound]:
        """Deadline notices written before ``created_before`` (None: whenever) and not
        confirmed yet, the oldest ``limit``."""
        return self.unconfirmed_notice_page(created_before, limit)[0]

    def unconfirmed_notice_page(self, created_before: datetime | None, limit: int = 500,
                                after: int = 0) -> tuple[list[Outbound], int]:
        """Like :meth:`unconfirmed_notices`, from the one after the place ``after`` a page
        before returned; with the place to read on from (0: the end was reached, start
        again). Read from the oldest each time, ``limit`` notices refused for good would
        keep every later one from being tried again."""
        c = watch_outbox.c
        written = [] if created_before is None else [c.created_at < created_before]
        with self.read() as conn:
            rows = conn.execute(select(watch_outbox).where(
                c.confirmed_at.is_(None), c.id > after, *written,
            ).order_by(c.id).limit(limit)).all()
        page = [Outbound(r.exchange, r.routing_key, r.message_id, r.type, r.correlation_id,
                         None, bytes(r.body)) for r in rows]
        return page, (rows[-1].id if len(rows) == limit else 0)

    def confirm_notices(self, message_ids: Sequence[str], at: datetime) -> None:
        """Mark deadline notices confirmed by RabbitMQ."""
        if message_ids:
            with self.engine.begin() as conn:
                conn.execute(update(watch_outbox).where(
                    watch_outbox.c.message_id.in_(list(message_ids)),
                    watch_outbox.c.confirmed_at.is_(None)).values(confirmed_at=at))

    def last_prune(self) -> datetime | None:
        """When `casebroker ledger prune` last completed on this ledger, or None."""
        with self.read() as conn:
            at: datetime | None = conn.execute(select(func.max(prunes.c.ran_at))).scalar()
            return at

    def overdue_by_agency(self, now: datetime) -> dict[str, int]:
        """Open dossiers past their due date, per current agency (paused in time: not late)."""
        c = dossiers.c
        with self.read() as conn:
            rows = conn.execute(
                select(c.agency_id, func.count()).where(*_overdue(now)).group_by(c.agency_id))
            return {str(a): int(n) for a, n in rows}

    def list_dossiers(self, *, agency: str | None = None, desk: str | None = None,
                      states: Sequence[int] = (), overdue_at: datetime | None = None,
                      limit: int = 100) -> list[dict[str, Any]]:
        """Dossiers by due date, soonest first, at most ``limit``: with their current
        ``agency``, at ``desk`` (intake or return), in ``states``, open and overdue at
        ``overdue_at``. Codes, states, parties and times only (no submission)."""
        c = dossiers.c
        where: list[Any] = []
        if agency is not None:
            where.append(c.agency_id == agency)
        if desk is not None:
            where.append(or_(c.intake_desk_id == desk, c.return_desk_id == desk))
        if states:
            where.append(c.state.in_([int(s) for s in states]))
        if overdue_at is not None:
            where += _overdue(overdue_at)
        with self.read() as conn:
            rows = conn.execute(
                select(c.code, c.state, c.agency_id, c.step, c.procedure_code,
                       c.intake_desk_id, c.return_desk_id, c.received_at, c.due_at,
                       c.paused_at, c.finished_at, c.seq)
                .where(*where).order_by(c.due_at, c.code).limit(limit))
            return [dict(r._mapping) for r in rows]

    def ever_had(self, *, agency: str | None = None, desk: str | None = None) -> bool:
        """Whether any dossier in the ledger was ever with ``agency`` (received by it,
        handed to it, or updated by it), or any submission ever came to or was to be
        returned at ``desk``: what tells a mistyped id from a party with nothing now.
        Only asked when a listing came back empty (it may read a whole table)."""
        d, e = dossiers.c, events.c
        asks: list[Any] = []
        if agency is not None:
            asks += [select(d.id).where(d.agency_id == agency),
                     select(e.id).where(or_(e.to_agency == agency, e.actor == agency))]
        if desk is not None:
            asks += [select(d.id).where(or_(d.intake_desk_id == desk,
                                            d.return_desk_id == desk)),
                     select(refusals.c.submission_id).where(refusals.c.desk_id == desk),
                     select(held.c.desk_id).where(held.c.desk_id == desk)]
        with self.read() as conn:
            return any(conn.execute(ask.limit(1)).first() is not None for ask in asks)

    def background_checkpoints(self, every_s: float = 0.5, restart_frames: int = 4096,
                               count: Callable[[str], None] | None = None) -> Checkpoints:
        """SQLite: checkpoint the WAL in a thread of its own; return what stops it (and
        counts what it did). PostgreSQL: nothing to do.

        By default SQLite checkpoints inside a ``COMMIT`` once the WAL passes 1,000
        pages, and a router's batch dirties more than that (every random-keyed index
        takes a page per dossier), so nearly every commit also copied megabytes back
        into the database and synced them. Here the committing connections never
        checkpoint. Every ``every_s`` seconds a thread runs a PASSIVE checkpoint, which
        copies what the WAL holds without blocking the writer; then, once the WAL holds
        more than ``restart_frames`` pages, a RESTART checkpoint, which waits for the
        writer's transaction, copies the little written since and makes the next commit
        write the WAL from its start again. Without that second step a busy writer never
        lets the WAL start over and it grows without bound. ``journal_size_limit``
        truncates the file after a restart. Committed data is as durable either way:
        it is synced in the WAL before the commit returns.

        While a reader keeps a snapshot older than the WAL's last pages, the PASSIVE step
        cannot copy those pages. A transaction of the other consumer does so for
        milliseconds, and the RESTART waits it out; a CLI scan (``casebroker audit``)
        for seconds, and a RESTART would hold new writes back all its timeout, only to
        give up. So when the pages copied do not move in 20 ms, the RESTART is left for
        a later turn (:attr:`Checkpoints.held_back` counts them); the WAL grows
        meanwhile, as it must while the reader needs it. ``count`` (the metrics) hears
        of each due turn: ``restarted`` or ``held_back``.
        """
        done = Checkpoints(count)
        database = sqlite_file(self.engine.url)
        if database is None:
            return done  # PostgreSQL checkpoints itself; in memory, no WAL
        self._sqlite["autocheckpoint"] = False
        self.engine.dispose()  # pooled connections made before keep checkpointing

        def loop() -> None:
            # a connection of its own, outside the pool: no page cache to fill, and the
            # writer's pooled connection is never lent to the checkpoints. A short busy
            # timeout: a RESTART holds new writers back while it waits for the writer's
            # transaction, so it gives up after 0.2 s and tries again next turn rather
            # than stall the router
            conn = sqlite3.connect(database, timeout=0.2, isolation_level=None)
            try:
                while not done.stopping.wait(every_s):
                    try:
                        _busy, frames, copied = conn.execute(
                            "PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                        if frames <= restart_frames:
                            continue
                        if copied < frames and _pinned(conn, copied):
                            done.turn("held_back")  # a long reader holds the rest
                            continue
                        conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
                        done.turn("restarted")
                    except sqlite3.Error as e:  # busy or away: the next turn tries again
                        log.warning("WAL checkpoint failed: %s", e)
            finally:
                conn.close()

        thread = threads.start(loop, "wal-checkpoint")

        def halt() -> None:
            thread.join(timeout=30)
            self._sqlite["autocheckpoint"] = True
            self.engine.dispose()

        done.halt = halt
        return done

    def dispose(self) -> None:
        self.engine.dispose()


def _creation(table: Table, dialect: Any, has_rows: bool
              ) -> list[tuple[str, Callable[[Connection], Any]]]:
    """`ledger upgrade`'s steps for a missing table: create it and its indexes (and fill
    ``held`` for a ledger that has rows to fill it from)."""
    steps: list[tuple[str, Callable[[Connection], Any]]] = [
        (str(CreateTable(table).compile(dialect=dialect)).strip(),
         functools.partial(table.create, checkfirst=True))]
    steps += _index_steps(table, dialect)
    if table is held and has_rows:
        steps.append((FILL_HELD, _fill_held))
    return steps


def _changes(table: Table, dialect: Any, found: Any
             ) -> tuple[list[tuple[str, Callable[[Connection], Any]]], list[str]]:
    """`ledger upgrade`'s steps for a table the ledger has, and what cannot be done."""
    have = {c["name"] for c in found.get_columns(table.name)}
    rekey: list[tuple[str, Callable[[Connection], Any]]] = []
    if (keyed_by := _keyed_otherwise(found, table)) is not None:
        problem = _rekey_problem(table, keyed_by, have)
        if problem is not None:
            return [], [problem]
        if dialect.name != "postgresql":
            return _rebuilt(table, dialect, found, have), []
        rekey = [_key_in_place(table, dialect, found)]  # after the columns it may need
    steps: list[tuple[str, Callable[[Connection], Any]]] = []
    impossible: list[str] = []
    for column in table.columns:
        if column.name in have:
            continue
        if not column.nullable and column.server_default is None:
            impossible.append(f"{table.name}.{column.name} is missing and required "
                              "(NOT NULL, no default): it cannot be added to the "
                              "rows there are")
            continue
        ddl = (f"ALTER TABLE {dialect.identifier_preparer.format_table(table)} "
               f"ADD COLUMN {CreateColumn(column).compile(dialect=dialect)}")
        steps.append((ddl, functools.partial(_execute_ddl, ddl)))
    with warnings.catch_warnings():
        # a DBA's index on an expression: SQLAlchemy skips it, and says so; none of the
        # indexes looked for here (this version's, the retired ones) is one
        warnings.filterwarnings("ignore", "Skipped unsupported reflection",
                                category=SAWarning)
        indexes = {ix["name"] for ix in found.get_indexes(table.name)}
    steps += _index_steps(table, dialect, made=indexes)
    for name in sorted(RETIRED_INDEXES.get(table.name, frozenset()) & indexes):
        ddl = f"DROP INDEX {dialect.identifier_preparer.quote(name)}"
        steps.append((ddl, functools.partial(_execute_ddl, ddl)))
    return steps + rekey, impossible


def _key(table: Table) -> tuple[str, ...]:
    """The primary key's columns as this version defines them, in the table's order."""
    return tuple(c.name for c in table.columns if c.primary_key)


def _schema_problems(found: Any, *, missing_tables: bool = True) -> list[str]:
    """What keeps this version from working on the ledger ``found`` (an inspector)
    describes (:meth:`Ledger.check_schema`); without ``missing_tables``, only in the
    tables it has (a start creates the others)."""
    problems: list[str] = []
    for table in metadata.sorted_tables:
        if not found.has_table(table.name):
            if missing_tables:
                problems.append(f"table {table.name} is missing")
            continue
        have = {c["name"]: c for c in found.get_columns(table.name)}
        problems += [f"{table.name}.{c.name} is missing" for c in table.columns
                     if c.name not in have]
        if (keyed_by := _keyed_otherwise(found, table)) is not None:
            problems.append(f"{table.name} is keyed by ({', '.join(keyed_by)}); this "
                            f"version keys it by ({', '.join(_key(table))})")
        problems += [f"{table.name}.{name} is required (NOT NULL, no default) but "
                     "this version does not know it"
                     for name, c in have.items() if name not in table.c
                     and not c["nullable"] and c.get("default") is None
                     and c.get("autoincrement") is not True]
    return problems


def _keyed_otherwise(found: Any, table: Table) -> tuple[str, ...] | None:
    """The table's primary key in the database, when its columns are not this
    version's (``()``: no key at all)."""
    keyed_by = tuple(found.get_pk_constraint(table.name).get("constrained_columns") or ())
    return keyed_by if set(keyed_by) != set(_key(table)) else None


def _rekey_problem(table: Table, keyed_by: tuple[str, ...], have: set[str]) -> str | None:
    """Why a table whose primary key this version changed cannot be re-keyed, if it
    cannot: only a wider key is safe (rows unique by the old key are unique by the new
    one; a table with no key at all promises nothing), and the rows must have every
    column of the new key."""
    new_key = _key(table)
    if not keyed_by or not set(keyed_by) <= set(new_key):
        return (f"{table.name} is keyed by ({', '.join(keyed_by) or 'nothing'}) and this "
                f"version keys it by ({', '.join(new_key)}): its rows cannot be re-keyed")
    lacking = [c.name for c in table.columns
               if c.name not in have and not c.nullable and c.server_default is None]
    if lacking:
        return (f"{table.name} must be re-keyed but lacks the required column(s) "
                f"{', '.join(lacking)}: its rows cannot be copied")
    return None


def _key_in_place(table: Table, dialect: Any, found: Any
                  ) -> tuple[str, Callable[[Connection], Any]]:
    """PostgreSQL changes a primary key in place: the table keeps what a DBA gave it
    (columns, indexes, grants), and the key's index its usual name."""
    quote = dialect.identifier_preparer
    old = found.get_pk_constraint(table.name).get("name") or f"{table.name}_pkey"
    ddl = (f"ALTER TABLE {quote.format_table(table)} DROP CONSTRAINT {quote.quote(old)}, "
           f"ADD PRIMARY KEY ({', '.join(quote.quote(c) for c in _key(table))})")
    return ddl, functools.partial(_execute_ddl, ddl)


def _rebuilt(table: Table, dialect: Any, found: Any, have: set[str]
             ) -> list[tuple[str, Callable[[Connection], Any]]]:
    """SQLite cannot change a primary key: `ledger upgrade` makes the table as this
    version does under a passing name (dropping one an interrupted run left), copies the
    rows, drops the old table and gives the new one its name and indexes. Columns and
    indexes a DBA added come along: such a column (nullable now, its default not kept)
    with its values, such an index made again by the statement SQLite kept of it."""
    quote = dialect.identifier_preparer
    passing = table.to_metadata(MetaData(), name=f"{table.name}_rekeyed")
    for ix in list(passing.indexes):  # made under the final name, after the rename
        passing.indexes.discard(ix)
    extra = [c for c in found.get_columns(table.name) if c["name"] not in table.c]
    for c in extra:
        passing.append_column(Column(c["name"], c["type"]))
    columns = ", ".join(quote.quote(name) for name in
                        [c.name for c in table.columns if c.name in have]
                        + [c["name"] for c in extra])
    ours = {str(ix.name) for ix in table.indexes} | RETIRED_INDEXES.get(table.name, frozenset())
    # a DBA's indexes as SQLite keeps their statements (reflection skips one on an
    # expression): made again as they were, on the table under its name again
    theirs = [str(sql) for name, sql in found.bind.exec_driver_sql(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
        "AND sql IS NOT NULL ORDER BY name", (table.name,)) if name not in ours]
    # a passing table there already is one an interrupted run of an earlier version left,
    # empty (it committed its CREATE at once, the copy only with the drop and the rename)
    ddl = [f"DROP TABLE IF EXISTS {quote.format_table(passing)}",
           str(CreateTable(passing).compile(dialect=dialect)).strip(),
           f"INSERT INTO {quote.format_table(passing)} ({columns}) "
           f"SELECT {columns} FROM {quote.format_table(table)}",
           f"DROP TABLE {quote.format_table(table)}",
           f"ALTER TABLE {quote.format_table(passing)} RENAME TO {quote.format_table(table)}"]
    steps: list[tuple[str, Callable[[Connection], Any]]] = [
        (statement, functools.partial(_execute_ddl, statement)) for statement in ddl]
    steps += _index_steps(table, dialect)
    steps += [(sql, functools.partial(_execute_ddl, sql)) for sql in theirs]
    return steps


def _index_steps(table: Table, dialect: Any, made: frozenset[str] | set[str] = frozenset()
                 ) -> list[tuple[str, Callable[[Connection], Any]]]:
    """`ledger upgrade`'s steps making this version's indexes of a table, but those
    ``made`` already."""
    return [(str(CreateIndex(ix).compile(dialect=dialect)),
             functools.partial(ix.create, checkfirst=True))
            for ix in sorted(table.indexes, key=lambda i: str(i.name)) if ix.name not in made]


#: what `ledger upgrade` says it does after making the ``held`` table
FILL_HELD = "-- fill held from the triage copies kept in outbox"


def _fill_held(conn: Connection) -> None:
    """Fill a ``held`` table just made for a ledger made before it: a row for each
    triaged delivery whose copy the outbox keeps whole, so that a dossier held before
    the upgrade can be withdrawn by its submission id too. A copy `ledger prune` erased
    names no desk to check a withdrawal's sender against, and is left out (read a chunk
    at a time; kept in memory as a few ids per delivery)."""
    rows: list[dict[str, Any]] = []
    # yield_per on the statement: on the connection it would stay for the inserts, and
    # psycopg's server-side cursors take no executemany
    found = conn.execute(
        select(inbox.c.message_id, inbox.c.processed_at, outbox.c.body)
        .join(outbox, outbox.c.inbox_message_id == inbox.c.message_id)
        .where(inbox.c.outcome.like("triaged:%")).execution_options(yield_per=500))
    for r in found:
        kept = _kept_dossier(r.body)  # None: the desk's held notice
        if kept is None or is_pruned(kept):
            continue
        desk, procedure = kept.get("desk_id"), kept.get("procedure_code")
        if isinstance(desk, str) and isinstance(procedure, str):
            rows.append({"submission_id": kept["submission_id"], "message_id": r.message_id,
                         "desk_id": desk, "procedure_code": procedure,
                         "held_at": r.processed_at})
    for i in range(0, len(rows), 500):
        conn.execute(held.insert(), rows[i:i + 500])


def _execute_ddl(ddl: str, conn: Connection) -> None:
    conn.exec_driver_sql(ddl)


def _make_engine(url: str, sqlite: dict[str, bool], lock_timeout_s: float | None) -> Engine:
    if url.startswith("sqlite"):
        # short busy timeout: the consumer's I/O loop waits on it, then retries later
        engine = create_engine(url, connect_args={"timeout": 5}, json_serializer=_json_dumps)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
            # WAL lets readers (CLI, demo) run beside the router; FULL syncs every commit,
            # because a delivery is acked on the strength of that commit
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            # 8 MB of page cache instead of 2: the indexes whose new entries land anywhere
            # (dossier code; inbox, outbox and submission id when a desk sends random
            # ids) stay in memory longer; about 15% more dossiers/s, measured with random
            # ids, for a bounded few MB per connection (docs/BENCHMARKS.md)
            cur.execute("PRAGMA cache_size=-8192")
            if not sqlite["autocheckpoint"]:
                cur.execute("PRAGMA wal_autocheckpoint=0")  # Ledger.background_checkpoints
            cur.execute("PRAGMA journal_size_limit=67108864")  # the WAL file after a reset
            cur.close()

        return engine
    # postgres:// is the spelling libpq, Heroku and many a DATABASE_URL use; SQLAlchemy
    # knows the dialect only as postgresql
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            url = "postgresql+psycopg://" + url.removeprefix(scheme)
    # a ledger that does not answer within seconds is "away": fail fast, retry with backoff.
    # No server-side prepared statements: psycopg prepares a statement after its fifth
    # run, and PostgreSQL may then keep one generic plan for it. A plan made while the
    # ledger was nearly empty (a sequential scan of inbox for `message_id = ANY(...)`)
    # stayed as the tables grew: PostgreSQL's CPU per dossier tripled over 20,000
    # dossiers (docs/BENCHMARKS.md). Planning each run of these few statements is cheap.
    engine = create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2,
                           connect_args={"connect_timeout": 5, "prepare_threshold": None},
                           json_serializer=_json_dumps)

    if lock_timeout_s is not None:
        @event.listens_for(engine, "connect")
        def _lock_timeout(dbapi_conn: Any, _: Any) -> None:
            # a SET of the session, not libpq's options=: a URL may carry options of its own
            with dbapi_conn.cursor() as cur:
                cur.execute(f"SET lock_timeout = {int(lock_timeout_s * 1000)}")
            dbapi_conn.commit()

    @event.listens_for(engine, "handle_error")
    def _reconnect_after(context: Any) -> None:
        if _sqlstate(context.original_exception) in _PG_RECONNECT:
            context.is_disconnect = True  # the pool drops it (and its idle peers)

    return engine
