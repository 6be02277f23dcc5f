"""The ledger's tables: dossiers, events, and the idempotency and sequence tables.

Definitions only; reading and writing them is :mod:`broker.ledger`'s job.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    and_,
    bindparam,
)

from broker.lifecycle import OPEN_STATES


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes stored as UTC; SQLite keeps no offset, so restore it on read."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

#: the longest message id the ledger keeps (AMQP allows 255 characters: consumers shorten
#: longer ones, broker.consumers.common.delivery_id)
MESSAGE_ID_MAX = 128
#: the longest type and correlation id an outbox row keeps (a dead letter's, copied from
#: what its sender set, is shortened: broker.consumers.common.dead_letter)
OUTBOX_TYPE_MAX = 32
CORRELATION_MAX = 96

dossiers = Table(
    "dossiers", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("code", String(96), nullable=False, unique=True),
    Column("submission_id", String(36), nullable=False, unique=True),
    # procedure_code and agency_id have no index: no query looks a dossier up by either
    # (the per-agency overdue count goes through the state index), and each index took a
    # page of the SQLite log per dossier of a small batch (docs/BENCHMARKS.md, "What the
    # ledger writes per dossier"). A ledger made before keeps them (harmless, but slower)
    # until `casebroker ledger upgrade` drops them (ledger.RETIRED_INDEXES)
    Column("procedure_code", String(16), nullable=False),
    Column("intake_desk_id", String(64), nullable=False),
    Column("return_desk_id", String(64), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("state", Integer, nullable=False, index=True),
    Column("agency_id", String(64), nullable=False),
    Column("step", Integer, nullable=False),
    Column("steps", JSON, nullable=False),
    Column("rule_id", String(96), nullable=False),
    Column("catalog_hash", String(32), nullable=False),
    Column("boundary_free", Boolean, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("due_at", UTCDateTime, nullable=False),
    Column("step_due_at", UTCDateTime, nullable=False),
    Column("paused_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
    Column("satisfaction", Integer),
    Column("flags", JSON, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("submission", JSON, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    #: deadline watch: 0 nothing sent, 1 at-risk notices sent, 2 overdue notices sent
    Column("watch_level", Integer, nullable=False, server_default="0"),
    #: the same for the current chain step's own due date, while it is before the
    #: dossier's (a step due with its dossier is watched as the dossier, by
    #: ``watch_level``); 0 again at each hand-off
    Column("step_watch_level", Integer, nullable=False, server_default="0"),
    #: sent_at of the current agency's last applied status update (capped a few minutes
    #: ahead of the broker's clock); an older one from it is stale. None after a hand-off
    Column("status_sent_at", UTCDateTime),
)
#: open states as literals, in queries as in the index: SQLite uses a partial index only
#: when the query's WHERE spells out the index's, and ``state IN (?, ?, ...)`` with bound
#: values does not, so the deadline watch's query read every open dossier by the state index
_OPEN = dossiers.c.state.in_(bindparam("open_states", sorted(int(s) for s in OPEN_STATES),
                                       expanding=True, literal_execute=True))
#: the deadline watch's query: open dossiers not yet flagged, by due date
Index("ix_dossiers_watch", dossiers.c.watch_level, dossiers.c.due_at,
      postgresql_where=_OPEN, sqlite_where=_OPEN)
#: a chain step due before its dossier: only such dossiers have an entry in the step
#: watch's index, so a dossier of one agency (most of them) writes nothing to it
STEP_AHEAD = dossiers.c.step_due_at < dossiers.c.due_at
Index("ix_dossiers_step_watch", dossiers.c.step_watch_level, dossiers.c.step_due_at,
      postgresql_where=and_(_OPEN, STEP_AHEAD), sqlite_where=and_(_OPEN, STEP_AHEAD))

#: the process-control sheet: every hand-off and state change, append-only
events = Table(
    "events", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    # no index of its own: the unique (dossier_code, seq) below serves lookups by code
    Column("dossier_code", String(96), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("state_from", Integer),
    Column("state_to", Integer, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("from_agency", String(64)),
    Column("to_agency", String(64)),
    Column("message_id", String(MESSAGE_ID_MAX)),
    Column("detail", JSON, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    UniqueConstraint("dossier_code", "seq"),
)

#: one row per processed delivery: the idempotency key of every consumer
inbox = Table(
    "inbox", metadata,
    Column("message_id", String(MESSAGE_ID_MAX), primary_key=True),
    Column("source", String(16), nullable=False),
    Column("outcome", String(32), nullable=False, index=True),
    Column("dossier_code", String(96)),
    Column("processed_at", UTCDateTime, nullable=False),
    #: the delivery's fingerprint (Consumer.fingerprint_of): a copy under the same message
    #: id with another one is not a redelivery (None: recorded by an earlier version, or
    #: an internal error)
    Column("fingerprint", LargeBinary(16)),
)

#: what each processed delivery published, to re-publish identically on redelivery
outbox = Table(
    "outbox", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("inbox_message_id", String(MESSAGE_ID_MAX), nullable=False, index=True),
    Column("exchange", String(255), nullable=False),
    Column("routing_key", String(255), nullable=False),
    Column("message_id", String(MESSAGE_ID_MAX), nullable=False),
    Column("type", String(OUTBOX_TYPE_MAX), nullable=False),
    Column("correlation_id", String(CORRELATION_MAX)),
    Column("headers", JSON),
    Column("body", LargeBinary, nullable=False),
)

#: deadline-watch notices: written with the flag that caused them, published after the
#: commit, marked confirmed once RabbitMQ confirms; unconfirmed rows are published again
watch_outbox = Table(
    "watch_outbox", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("dossier_code", String(96), nullable=False),
    Column("exchange", String(255), nullable=False),
    Column("routing_key", String(255), nullable=False),
    Column("message_id", String(MESSAGE_ID_MAX), nullable=False, unique=True),
    Column("type", String(OUTBOX_TYPE_MAX), nullable=False),
    Column("correlation_id", String(CORRELATION_MAX)),
    Column("body", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("confirmed_at", UTCDateTime, index=True),
)

#: submissions closed at intake while held in triage, which opened no dossier and get none
#: (nothing was received, so there is no code to give): refused (state 3) by an operator,
#: valid dossiers no rule routes and none will (a procedure the province does not handle);
#: or withdrawn (state 7) by the citizen through the intake desk (a ``dossier.withdrawn``
#: by submission id). The router answers a copy sent again with the same notice
#: (``notice``, under ``notice_id``), as it answers a dossier's copy with its first receipt
refusals = Table(
    "refusals", metadata,
    Column("submission_id", String(36), primary_key=True),
    #: the triaged delivery that was closed (its copy waited in triage under this id)
    Column("message_id", String(MESSAGE_ID_MAX), nullable=False),
    #: the intake desk, which was told
    Column("desk_id", String(64), nullable=False),
    Column("procedure_code", String(16), nullable=False),
    #: 3 refused by an operator, 7 withdrawn by the desk (rows made before this column: 3)
    Column("state", Integer, nullable=False, server_default="3"),
    Column("reason", Text, nullable=False),
    #: who closed it: the operator's name as given to ``dead-letters refuse``, or the desk
    Column("refused_by", String(64), nullable=False),
    Column("refused_at", UTCDateTime, nullable=False),
    #: the submission as the desk sent it, to tell a copy sent again from another dossier
    Column("submission", JSON, nullable=False),
    Column("notice_id", String(MESSAGE_ID_MAX), nullable=False),
    Column("notice", LargeBinary, nullable=False),
)

#: withdrawals by submission id of a submission the ledger did not have yet: its desk
#: withdrew it before the router had taken it (at once, or while intake had a backlog).
#: The router closes the submission at intake when it comes (a ``refusals`` row in state
#: 7, the desk told ``withdrawn``) and deletes the row; no personal data but the reason
#: the desk gave, which `ledger prune` erases with the row once past the cutoff.
#: Keyed by submission id *and* desk: which desk sent the submission is known only when
#: it comes, so a withdrawal from another desk must not take the place of its own desk's
#: (the router keeps the one from the submission's desk and voids the others). Ledgers
#: made before were keyed by submission id alone: `ledger upgrade` re-keys them
early_withdrawals = Table(
    "early_withdrawals", metadata,
    Column("submission_id", String(36), primary_key=True),
    Column("desk_id", String(64), primary_key=True),
    #: the withdrawal's delivery (its inbox row)
    Column("message_id", String(MESSAGE_ID_MAX), nullable=False),
    Column("reason", Text),
    Column("withdrawn_at", UTCDateTime, nullable=False),
)

#: each valid dossier the router held in triage (no rule routed it): no dossier was opened,
#: and the desk was told ``held``, with the submission id and no code. A withdrawal by that
#: submission id finds it here (its intake desk, and the triage copy kept in ``outbox``
#: under ``message_id``'s inbox row); no personal data. A submission triaged more than
#: once (replayed, or corrected and sent again) has a row per delivery
held = Table(
    "held", metadata,
    Column("submission_id", String(36), primary_key=True),
    #: the inbox id of the triaged delivery (its outbox rows hold the triage copy)
    Column("message_id", String(MESSAGE_ID_MAX), primary_key=True),
    Column("desk_id", String(64), nullable=False),
    Column("procedure_code", String(16), nullable=False),
    Column("held_at", UTCDateTime, nullable=False),
)

#: each completed `casebroker ledger prune`: personal data erased from what closed before
#: ``cutoff`` (the next run starts there), by whom, and how many rows it erased
prunes = Table(
    "prunes", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
           autoincrement=True),
    Column("cutoff", UTCDateTime, nullable=False),
    Column("ran_at", UTCDateTime, nullable=False),
    Column("pruned_by", String(64), nullable=False),
    Column("dossiers", Integer, nullable=False),
    Column("bodies", Integer, nullable=False),
    Column("refusals", Integer, nullable=False),
)

#: the first key of what `casebroker ledger prune` leaves in place of a submission or a
#: message body holding personal data: ``{"pruned_at": ..., "sha256": ..., ...}`` (see
#: :func:`pruned_stub`); no message of the contract has it (each starts with "schema")
PRUNED_KEY = "pruned_at"
_PRUNED_PREFIX = b'{"' + PRUNED_KEY.encode() + b'":'


#: in the stub of a submission's message body (a dead letter's, a triage copy's): the
#: digest of its values as the router compares them, beside ``sha256``, its bytes'
VALUES_DIGEST = "values_sha256"
#: a submission's list of documents; in the stub of a dossier's pruned submission, how
#: many there were (the report's digitized share reads either)
DOCUMENTS = "documents"
#: in a desk's receipt and result_ready: who the dossier is for (personal data), which
#: `ledger prune` erases from the copy the ledger keeps
APPLICANT = "applicant"
#: in a dossier's ``flags``: the documents the citizen brought at an agency's request
#: (``dossier.supplemented``); once `ledger prune` erased them, how many there were
SUPPLEMENTS = "supplements"
#: in a dossier's ``flags``: the result documents its agencies sent (by reference), for
#: the desk and the next step; once `ledger prune` erased them, how many there were
RESULTS = "results"
#: in a dossier's ``flags``: when its current step's own time runs out, where that is
#: after the dossier's due date, which then caps the step's ``step_due_at`` (a step
#: handed a dossier late keeps its own time: the report judges the step by it)
STEP_OWN_DUE = "step_own_due_at"
#: in a dossier's ``flags``: the unit its procedure's time was counted in at receipt
#: (kept since 2026-12-01): a pause moves the due date counted so, whatever a catalog
#: reloaded since says
PROCESSING_UNIT = "processing_unit"
#: in a dossier's ``flags``: the sent_at of the last update applied from each agency that
#: finished a chain step, by agency id, so that one holding a later step again (a chain
#: that comes back to it) still has its earlier updates judged stale against its own clock
AGENCY_SENT_AT = "agency_sent_at"
#: in a dossier's ``flags``, from its first hand-off on: when the step it is at began (its
#: hand-off), where a pause of that step counts from
STEP_STARTED = "step_started_at"
#: in a dossier's ``flags``: when casebroker recorded the hand-off that began its current
#: step (its own clock, as a dead letter's time is): an update from the step's agency set
#: aside before it was sent before that agency had the dossier
STEP_RECORDED = "step_recorded_at"
#: in a dossier's ``flags``: of its due dates counted in calendar days (``due_at``,
#: ``step_due_at``, ``step_own_due_at``), the end each reached before it was moved off a
#: day off onto a working day (``WorkingCalendar.calendar_days_end``), where a pause or a
#: hand-off recorded it: the next pause extends that end, not the moved one
CALENDAR_ENDS = "calendar_ends"
#: in a dossier's ``flags`` while it waits for a supplement: the state the request found
#: it in (2 or 4), where the supplement brings it back (``lifecycle.apply``)
PAUSED_FROM = "paused_from"
#: in a dossier's ``flags`` while it waits for a supplement: when casebroker recorded the
#: request (its own clock; ``paused_at`` is when the agency says it asked): a supplement
#: set aside before then, replayed, answers an earlier request
PAUSE_RECORDED = "pause_recorded_at"
#: in a dossier's ``flags``: when the last update applied to it happened, as its sender
#: dated it (``sent_at``, ``returned_at``), within what the ledger knows (the status
#: router's :func:`~broker.consumers.status.happened_at`): no later update of the dossier
#: is dated before it
EVENT_AT = "event_at"


def pruned_stub(at: datetime, sha256: str | None, **kept: str | int) -> dict[str, Any]:
    """What stands in for pruned personal data: when, a digest of what was there (None
    where it could not be taken), and what else is ``kept`` (a submission id, a count of
    documents)."""
    return {PRUNED_KEY: at.astimezone(UTC).isoformat(), "sha256": sha256, **kept}


def is_pruned(value: Any) -> bool:
    """Whether a stored submission (a JSON column's value) or a message body (bytes) is
    a :func:`pruned_stub`."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value[:len(_PRUNED_PREFIX)]) == _PRUNED_PREFIX
    return isinstance(value, dict) and PRUNED_KEY in value


def pruned_body(stub: dict[str, Any]) -> bytes:
    """A stub as a message body (its first key first: :func:`is_pruned` reads it)."""
    return json.dumps(stub, ensure_ascii=False, separators=(",", ":")).encode()


#: per competent unit and receipt day: the last dossier number handed out
code_sequences = Table(
    "code_sequences", metadata,
    Column("agency_id", String(64), primary_key=True),
    Column("day", String(6), primary_key=True),
    Column("last", Integer, nullable=False),
)


class RawJSON(str):
    """JSON text already serialized (a validated message body): stored as it is."""

    __slots__ = ()


_ENCODER = json.JSONEncoder(ensure_ascii=False)


def _json_dumps(value: Any) -> str:
    """JSON text of a column value: a RawJSON as it is, ``None`` as ``null`` (as
    SQLAlchemy's JSON type stores it), an empty dict without the encoder's set-up."""
    if isinstance(value, RawJSON):
        return value
    if value is None:
        return "null"
    if type(value) is dict and not value:
        return "{}"
    return _ENCODER.encode(value)
