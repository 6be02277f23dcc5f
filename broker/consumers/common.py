"""What every consumer shares: delivery identity, dead-letter and triage envelopes, notices."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any
from uuid import UUID

import pika.data

from broker.amqp import (
    DETAIL_HEADER,
    INTERNAL_ERROR,
    REASON_HEADER,
    SENT_BY_HEADER,
    SOURCE_HEADER,
    Delivery,
)
from broker.envelope import Outbound, portable_headers, short_text
from broker.errors import DecodeError, SettingError
from broker.ledger import Batch, Ledger
from broker.lifecycle import State
from broker.messages import (
    MAX_BODY_BYTES,
    MAX_BROKER_BODY_BYTES,
    DeskNotice,
    Message,
    NoticeKind,
    body_fingerprint,
    decode,
    encode,
    fingerprint,
    kind_of,
    shown_id,
    utc_now,
)
from broker.rules.engine import Engine
from broker.security import party_of, user_for
from broker.tables import CORRELATION_MAX, MESSAGE_ID_MAX, OUTBOX_TYPE_MAX
from broker.topology import TRIAGE_KEY, Topology

log = logging.getLogger(__name__)

#: the engine in force now; swapped on catalog reload, read once per batch
EngineProvider = Callable[[], Engine]
Clock = Callable[[], datetime]

#: on a dead letter whose body was over the size limit: its size (the copy keeps the
#: first MAX_BODY_BYTES bytes)
ORIGINAL_SIZE_HEADER = "x-casebroker-original-size"
#: on a dead-letter or triage copy whose sender's headers were too large to keep: how
#: many there were and their size as the copy would have carried them
HEADERS_DROPPED_HEADER = "x-casebroker-headers-dropped"
#: the most of a sender's headers a copy keeps, encoded as AMQP carries them. RabbitMQ
#: takes a header table of up to its frame size (131,072 bytes); made portable (a byte
#: that is no UTF-8 becomes "\xNN") and with casebroker's own headers added, a sender's
#: headers near that size made a copy RabbitMQ refused by closing the connection, again
#: at each redelivery, until the delivery limit dead-lettered every dossier the router
#: held (found by a review: 300 valid dossiers in dead.intake, 43 never announced)
KEPT_HEADERS_MAX = 16 * 1024


def delivery_id(delivery: Delivery) -> str:
    """The idempotency key of a delivery: its message id, else a hash of its body. An id
    longer than the inbox keeps is shortened to its start and a digest of the whole."""
    mid = delivery.message_id
    if not mid:
        return "sha256:" + hashlib.sha256(delivery.body).hexdigest()
    return kept_id(mid)


def kept_id(message_id: str) -> str:
    """A message id as the ledger keeps it: itself, or, longer than its columns hold
    (AMQP allows 255 characters), its start and a SHA-256 of the whole."""
    return short_text(message_id, MESSAGE_ID_MAX)


def sent_by(delivery: Delivery, trusted: str | None) -> str | None:
    """The RabbitMQ login that published a delivery first, as RabbitMQ vouched for it.

    That is its ``user_id`` (RabbitMQ refuses a publish whose user_id is not the
    connection's login), except on a copy published under ``trusted``, the router's own
    login, which the operator tools use to replay dead letters: such a copy carries the
    first sender in ``x-casebroker-sent-by``, recorded from a user_id RabbitMQ checked.
    Whoever holds that login can already publish to every agency and desk, so its word
    about the sender gives it nothing; anyone else's ``x-casebroker-sent-by`` is ignored.
    """
    uid = delivery.properties.user_id
    if uid is not None and uid == trusted:
        recorded = (delivery.properties.headers or {}).get(SENT_BY_HEADER)
        if isinstance(recorded, bytes):
            recorded = recorded.decode(errors="replace")
        if recorded:
            return str(recorded)
    return str(uid) if uid is not None else None


def _keep_headers(delivery: Delivery, trusted: str | None) -> dict[str, Any]:
    """The delivery's own headers, kept on its dead-letter or triage copy (which is stored
    in the outbox as JSON, to be re-published identically on a redelivery), with its
    first sender in ``x-casebroker-sent-by`` for a replay (none: a claimed one is dropped)."""
    headers = portable_headers(delivery.properties.headers or {})
    headers.pop(SENT_BY_HEADER, None)
    # RabbitMQ's dead-lettering marks, which a sender may have put on its message: kept,
    # they made the router's own copy read as dead-lettered by RabbitMQ, its reason not
    # casebroker's (broker.ops.queues.routers_own)
    for name in [h for h in headers if h == "x-death" or h.startswith(
            ("x-first-death-", "x-last-death-"))]:
        del headers[name]
    if headers and (size := _encoded_size(headers)) > KEPT_HEADERS_MAX:
        headers = {HEADERS_DROPPED_HEADER: f"{len(headers)} header(s), {size} bytes"}
    sender = sent_by(delivery, trusted)
    if sender is not None:
        headers[SENT_BY_HEADER] = sender
    return headers


def _encoded_size(headers: dict[str, Any]) -> int:
    """Bytes a header table takes in an AMQP frame."""
    pieces: list[bytes] = []
    return int(pika.data.encode_table(pieces, headers))


def dead_letter(topology: Topology, source: str, delivery: Delivery, reason: str,
                detail: str, trusted: str | None = None) -> Outbound:
    """The original body to ``dead.<source>`` with the reason in headers; ``trusted``: the
    router's own login (see :func:`sent_by`).

    A body over the size limit keeps only its first :data:`MAX_BODY_BYTES` bytes, its
    size in ``x-casebroker-original-size``: the dead letter is kept in the ledger's outbox
    (a redelivery publishes it again), and no delivery may cost the ledger more than the
    largest message the contract allows. Refused for its size, it is never replayable."""
    headers = _keep_headers(delivery, trusted)
    headers.update({REASON_HEADER: reason, DETAIL_HEADER: detail[:500], SOURCE_HEADER: source,
                    "x-original-type": short_text(delivery.properties.type or "", 255),
                    "x-original-content-type": short_text(
                        delivery.properties.content_type or "", 255)})
    body = delivery.body
    if len(body) > MAX_BODY_BYTES:
        headers[ORIGINAL_SIZE_HEADER] = len(body)
        body = body[:MAX_BODY_BYTES]
    # the outbox's columns hold a type of 32 characters and a correlation id of 96; the
    # sender's own, whatever their length or encoding, are in the headers above
    correlation = delivery.properties.correlation_id
    return Outbound(topology.dead_letter_exchange, source, delivery_id(delivery),
                    short_text(delivery.properties.type or "", OUTBOX_TYPE_MAX),
                    None if correlation is None else short_text(correlation, CORRELATION_MAX),
                    headers, body)


def triage(topology: Topology, source: str, delivery: Delivery, reason: str,
           detail: str, trusted: str | None = None) -> Outbound:
    """A valid message that cannot be routed, to the triage queue with the reason.

    Its type and correlation id are the sender's, shortened as a dead letter's are to what
    the outbox's columns hold: a valid dossier whose sender set longer ones would otherwise
    fail its batch's commit (PostgreSQL) and be dead-lettered as ``internal_error``."""
    headers = _keep_headers(delivery, trusted)
    headers.update({REASON_HEADER: reason, DETAIL_HEADER: detail[:500], SOURCE_HEADER: source})
    correlation = delivery.properties.correlation_id
    return Outbound(topology.dead_letter_exchange, TRIAGE_KEY, delivery_id(delivery),
                    short_text(delivery.properties.type or "dossier.submitted",
                               OUTBOX_TYPE_MAX),
                    None if correlation is None else short_text(correlation, CORRELATION_MAX),
                    headers, delivery.body)


def readable_fields(body: bytes) -> dict[str, Any]:
    """What a body the contract refused still says, as a JSON object: its fields, or none
    when it is no JSON object (or larger than casebroker sends a message itself). For an
    answer to its sender (``Consumer.answer_unread``): every value is unchecked."""
    if len(body) > MAX_BROKER_BODY_BYTES:
        return {}
    try:
        said = json.loads(body)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, too deep
        return {}
    return said if isinstance(said, dict) else {}


def unread_sender(consumer: Consumer, delivery: Delivery, named: Any) -> Any:
    """Who sent a delivery dead-lettered unread, to be answered: with per-party users the
    party whose login sent it (RabbitMQ vouches for it; never the one the body names,
    which may be another's, not to be told of a bug not its own), else the party its
    body ``named`` (unchecked: an id the catalog lacks has no queue to be told in)."""
    if consumer.screen.party_users:
        return party_of(consumer.topology, sent_by(delivery, consumer.screen.trusted))
    return named


def in_zone(row: dict[str, Any], tz: tzinfo) -> dict[str, Any]:
    """A ledger row with its times in ``tz`` (the ledger gives them in UTC), so that the
    notices made from it give times as the receipt did: in the catalog's zone."""
    return {k: v.astimezone(tz) if isinstance(v, datetime) else v for k, v in row.items()}


def to_desk(topology: Topology, notice: DeskNotice, message_id: str) -> Outbound:
    """A notice for a desk's queue."""
    return Outbound(topology.desk_exchange, notice.desk_id, message_id, kind_of(notice),
                    notice.dossier_code, None, encode(notice))


def withdraw_at_intake(batch: Batch, topology: Topology, *, submission_id: UUID, desk_id: str,
                       procedure_code: str, reason: str | None, submission: Any,
                       closed_id: str, now: datetime) -> tuple[dict[str, Any], Outbound]:
    """Close at intake a submission its intake desk withdrew before it opened a dossier
    (held in triage, or not come yet when the withdrawal came): a ``refusals`` row in
    state 7 for ``closed_id`` (the delivery closed), and the desk's ``withdrawn`` notice
    with no code under ``<closed_id>:withdrawn``, which a copy sent again gets again.
    Returns the row and the notice."""
    notice = to_desk(topology, DeskNotice(
        notice=NoticeKind.WITHDRAWN, dossier_code=None, submission_id=submission_id,
        desk_id=desk_id, procedure_code=procedure_code, state=int(State.WITHDRAWN),
        reason=reason, issued_at=now), kept_id(f"{closed_id}:withdrawn"))
    row = {"submission_id": str(submission_id), "message_id": closed_id, "desk_id": desk_id,
           "procedure_code": procedure_code, "state": int(State.WITHDRAWN),
           "reason": reason or "withdrawn by the citizen", "refused_by": desk_id,
           "refused_at": now, "submission": submission, "notice_id": notice.message_id,
           "notice": notice.body}
    batch.close_at_intake(row)
    return row, notice


def notice_labels(message_id: str) -> tuple[str, str]:
    """(kind, party) of a deadline notice's id for the metric: a step's agency, or the
    one a hand-off told, counts as ``agency`` (a label per step says nothing more)."""
    _, kind, _, party = message_id.rsplit(":", 3)
    return kind, "agency" if party.startswith(("step", "agency")) else party


def to_agency(topology: Topology, message: Any, message_id: str) -> Outbound:
    """An assignment or a notice for an agency's queue."""
    return Outbound(topology.agency_exchange, message.agency_id, message_id, kind_of(message),
                    message.dossier_code, None, encode(message))



#: what ``CASEBROKER_PARTY_USERS`` takes, in any case (unset: off)
PARTY_USERS_ON = ("1", "true", "yes", "on")
PARTY_USERS_OFF = ("", "0", "false", "no", "off")


def party_users_enabled(explicit: bool | None) -> bool:
    """Whether each desk and agency has its own RabbitMQ user (``CASEBROKER_PARTY_USERS=1``).

    Another value is a :class:`SettingError`: read as off, an ``enabled`` meant as on would
    let any login send in any desk's or agency's name."""
    if explicit is not None:
        return explicit
    raw = os.environ.get("CASEBROKER_PARTY_USERS", "")
    value = raw.strip().lower()
    if value in PARTY_USERS_ON:
        return True
    if value in PARTY_USERS_OFF:
        return False
    raise SettingError(f"CASEBROKER_PARTY_USERS={raw!r} is neither on "
                       f"({', '.join(PARTY_USERS_ON)}) nor off "
                       f"({', '.join(PARTY_USERS_OFF[1:])}, or unset)")


def changed_copy_id(mid: str, fingerprint: bytes) -> str:
    """The inbox id of a copy that differs from the message first processed under ``mid``."""
    return kept_id(f"{mid}#{fingerprint.hex()}")


def changed_copies_prefix(mid: str, own_id: str) -> str:
    """What the inbox id of every changed copy under ``mid`` starts with, given one of
    them: ``<mid>#``, or the start :func:`kept_id` keeps of an id too long to keep whole
    (there, other long ids with the same start match too: taken for this one's, a copy
    is dead-lettered rather than applied twice)."""
    literal = f"{mid}#"
    if own_id.startswith(literal):
        return literal
    return own_id[:own_id.rindex("~sha256:")]


@dataclass(slots=True)
class _Copy:
    """One delivery as the screen sees it: its id, its message (or why it has none) and
    its fingerprint."""

    delivery: Delivery
    mid: str
    message: Any
    error: DecodeError | None
    fingerprint: bytes
    #: it differs from the message first processed under its id
    changed: bool = False
    #: that message's outcome (None: it came earlier in this batch)
    before: str | None = None

    @classmethod
    def of(cls, d: Delivery, expected: frozenset[str],
           fingerprint_of: Callable[[Any, bytes], bytes]) -> _Copy:
        try:
            msg = decode(d.body, content_type=d.properties.content_type, expected=expected)
        except DecodeError as e:
            return cls(d, delivery_id(d), None, e, body_fingerprint(d.body))
        return cls(d, delivery_id(d), msg, None, fingerprint_of(msg, d.body))

    @property
    def own_id(self) -> str:
        return changed_copy_id(self.mid, self.fingerprint)


@dataclass
class Screened:
    """A batch after the checks every consumer makes before its own logic."""

    out: list[Outbound] = field(default_factory=list)
    fresh: list[tuple[str, Delivery, Message]] = field(default_factory=list)
    #: changed copies in ``fresh`` (by their own id) whose judgement waits for an earlier
    #: copy under the same message id in this batch (:attr:`Screen.in_order`): that id
    after: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Screen:
    """Redelivery, duplicate, contract and sender checks, one place for every consumer.

    A message id already processed, from a message with the same fingerprint (the
    consumer's ``fingerprint_of``: by default of the values, blind to what a retry
    stamps afresh), re-publishes what it published, and a second such copy in the same
    batch is dropped. A body outside the contract, or (with per-party users) a message whose
    claimed desk or agency is not its RabbitMQ sender, is dead-lettered and recorded.
    What is left is ``fresh``.

    A copy with another fingerprint under a message id already taken is no redelivery:
    the sender changed the message and kept its id. ``afresh`` says, from how the id
    was processed before (its inbox outcome; None: by a copy earlier in this batch),
    whether the consumer judges the changed copy as a message of its own, recorded under
    :func:`changed_copy_id`; if not, it is dead-lettered as ``message_id_reused`` (once
    it has passed the contract and sender checks: a reason of theirs says more).
    Either way it is not lost, and its own redeliveries find it by that id.

    With ``in_order``, a changed copy whose id an earlier copy in the same batch took is
    not judged here, before that copy's outcome is known: it goes to ``fresh``, named in
    ``after``, for the consumer to judge once the earlier ones are processed (dead-letter
    it with :meth:`reused` if one of them was applied), so that a batch decides as the
    same deliveries one by one would.
    """

    topology: Topology
    source: str
    expected: frozenset[str]
    sender_of: Callable[[Any], str]
    count: Callable[[str, str], None]
    #: the consumer's: Consumer.fingerprint_of, Consumer.judges_changed_copy
    fingerprint_of: Callable[[Any, bytes], bytes]
    afresh: Callable[[str | None], bool]
    #: the consumer's Consumer.answer_reused: what tells the sender of a changed copy that
    #: is dead-lettered as message_id_reused (given the batch, its message, its own id and
    #: the detail)
    answer_reused: Callable[[Batch, Any, str, str, datetime], list[Outbound]]
    #: the consumer's Consumer.answer_unread: what tells the sender of a delivery
    #: dead-lettered here for its contract or its sender (given the batch, its inbox id,
    #: the delivery, the reason and the detail)
    answer_unread: Callable[[Batch, str, Delivery, str, str, datetime], list[Outbound]]
    party_users: bool = False
    #: the router's own RabbitMQ login, whose replays carry their first sender (sent_by)
    trusted: str | None = None
    #: whether changed copies after another copy of their id in the batch wait (see above)
    in_order: bool = False

    def __call__(self, batch: Batch, deliveries: Sequence[Delivery],
                 now: datetime) -> Screened:
        result = Screened()
        copies = [_Copy.of(d, self.expected, self.fingerprint_of) for d in deliveries]
        seen = batch.seen(c.mid for c in copies)
        # copies that differ from the first message under their id: the message ids of
        # their own, looked up too (their redeliveries are rare, so a second query)
        firsts: dict[str, bytes] = {}
        for c in copies:
            prior = seen.get(c.mid)
            if prior is not None:
                first = prior.fingerprint
            else:
                first = firsts.setdefault(c.mid, c.fingerprint)
            if first is not None and first != c.fingerprint:
                c.changed, c.before = True, prior.outcome if prior is not None else None
        seen.update(batch.seen(c.own_id for c in copies if c.changed))
        # a changed copy applied under the id since its first: the id is spent, whatever
        # that first one's outcome was
        spent = batch.applied_under({
            c.mid: (changed_copies_prefix(c.mid, c.own_id), code) for c in copies
            if c.changed and (code := getattr(c.message, "dossier_code", None)) is not None})
        judged: set[str] = set()  # ids a changed copy of went on to be judged in this batch
        taken: set[str] = set()
        for c in copies:
            key = c.own_id if c.changed else c.mid
            if key in taken:
                continue  # the same message twice in one batch: once is enough
            taken.add(key)
            if key in seen:
                result.out += seen[key].published  # redelivered: the very same messages again
                continue
            batch.fingerprints[key] = c.fingerprint
            if c.error is not None:
                result.out += self._unread(batch, key, c.delivery, c.error.reason,
                                           c.error.detail, now)
                continue
            claimed = self.sender_of(c.message)
            if self.party_users and (
                    sender := sent_by(c.delivery, self.trusted)) != user_for(self.topology,
                                                                            claimed):
                result.out += self._unread(
                    batch, key, c.delivery, "sender_mismatch",
                    f"published by {sender!r}, not by {shown_id(claimed)}", now)
                continue
            if c.changed and not self._goes_on(batch, c, key, spent, judged, result, now):
                continue
            result.fresh.append((key, c.delivery, c.message))
        return result

    def _unread(self, batch: Batch, key: str, d: Delivery, reason: str, detail: str,
                now: datetime) -> list[Outbound]:
        """Dead-letter a delivery refused before its consumer read it, and tell its
        sender as the consumer's ``answer_unread`` does: what it publishes."""
        answer = self.answer_unread(batch, key, d, reason, detail, now)
        return [self.dead(batch, key, d, reason, detail, now, also=answer), *answer]

    def _goes_on(self, batch: Batch, c: _Copy, key: str, spent: set[str], judged: set[str],
                 result: Screened, now: datetime) -> bool:
        """Whether a changed copy goes on to the consumer (``judged`` then has its id);
        if not, it is dead-lettered as ``message_id_reused`` into ``result``. ``spent``:
        ids a changed copy was applied under before this batch."""
        if c.mid in spent or c.mid in judged:
            c.before = "applied" if c.mid in spent else None
        if (c.before is None and c.mid not in spent and self.in_order
                and getattr(c.message, "dossier_code", None) is not None):
            result.after[key] = c.mid  # judged once the copies before it are
        elif not self.afresh(c.before):
            result.out += self.reused(batch, key, c.delivery, c.message, c.before, now)
            return False
        judged.add(c.mid)
        return True

    def reused(self, batch: Batch, key: str, d: Delivery, message: Any, before: str | None,
               now: datetime) -> list[Outbound]:
        """Dead-letter a changed copy (its own id ``key``) as ``message_id_reused``, given
        how its id was processed ``before`` (None: by a copy earlier in this batch), and
        tell its sender as the consumer's ``answer_reused`` does: what it publishes."""
        said = "by an earlier message in this batch" if before is None else f"as {before}"
        detail = (f"its message id was processed before, {said}, from a message that "
                  "differs from this one: this one was not applied (a changed message "
                  "needs a new message id)")
        answer = self.answer_reused(batch, message, key, detail, now)
        return [self.dead(batch, key, d, "message_id_reused", detail, now, also=answer),
                *answer]

    def recorded_id(self, batch: Batch, d: Delivery) -> str:
        """The inbox id a delivery alone in its batch is recorded under: its message id,
        or a changed copy's own (:func:`changed_copy_id`) when the inbox has another
        message under it (a row under the message id would collide with that one's and
        be lost, and a redelivery of the copy be judged afresh)."""
        try:
            copy = _Copy.of(d, self.expected, self.fingerprint_of)
        except Exception:  # what failed the handler may fail this too: as it came
            return delivery_id(d)
        prior = batch.seen([copy.mid]).get(copy.mid)
        if prior is None or prior.fingerprint in (None, copy.fingerprint):
            return copy.mid
        return copy.own_id

    def dead(self, batch: Batch, mid: str, d: Delivery, reason: str, detail: str,
             now: datetime, also: Sequence[Outbound] = ()) -> Outbound:
        """Dead-letter a delivery and record it as processed, with what is published
        ``also`` (a notice to its sender), which its redeliveries publish again too."""
        dl = dead_letter(self.topology, self.source, d, reason, detail, self.trusted)
        batch.record(mid, self.source, f"dead:{reason}", None, [dl, *also], now)
        self.count("dead_lettered", reason)
        return dl


class Consumer:
    """What the router and the status router share: wiring, the screen, failure handling."""

    source: str
    accepted_kinds: frozenset[str]
    #: whether a changed copy after another copy of its id in a batch is judged by the
    #: consumer once that one is processed (:attr:`Screen.in_order`)
    judges_in_order = False

    def __init__(self, engine: EngineProvider, ledger: Ledger, topology: Topology,
                 clock: Clock = utc_now, metrics: Any = None,
                 party_users: bool | None = None, trusted_user: str | None = None) -> None:
        self.engine = engine
        self.ledger = ledger
        self.topology = topology
        self.clock = clock
        self.metrics = metrics
        self._counts: dict[tuple[str, str], int] = {}
        #: message ids of the deadline notices the batch in hand sends (a late result's
        #: apology), for casebroker_deadline_notices_total once it commits
        self._notices: list[str] = []
        #: with one RabbitMQ user per desk and agency (`casebroker users apply`), a message
        #: must come from the party it names: RabbitMQ checks user_id is the sender's login
        self.screen = Screen(topology, self.source, self.accepted_kinds,
                             sender_of=self.sender_of, count=self._count,
                             fingerprint_of=self.fingerprint_of,
                             afresh=self.judges_changed_copy,
                             answer_reused=self.answer_reused,
                             answer_unread=self.answer_unread,
                             party_users=party_users_enabled(party_users),
                             trusted=trusted_user, in_order=self.judges_in_order)

    def sender_of(self, message: Any) -> str:
        """The desk or agency a message says it comes from."""
        raise NotImplementedError

    def fingerprint_of(self, message: Any, body: bytes) -> bytes:
        """What tells a message from a changed one under the same id (see :class:`Screen`):
        by default :func:`~broker.messages.fingerprint`, blind to what a retry stamps."""
        return fingerprint(message)

    def judges_changed_copy(self, before: str | None) -> bool:
        """Whether a changed copy under a message id already taken is judged as a message
        of its own (see :class:`Screen`), given how the id was processed ``before``."""
        return False

    def answer_reused(self, batch: Batch, message: Any, own_id: str, detail: str,
                      now: datetime) -> list[Outbound]:
        """What to tell the sender of a changed copy dead-lettered as ``message_id_reused``
        (see :class:`Screen`; ``own_id``: the copy's own inbox id): by default nothing."""
        return []

    def answer_unread(self, batch: Batch, key: str, delivery: Delivery, reason: str,
                      detail: str, now: datetime) -> list[Outbound]:
        """What to tell the sender of a delivery the screen dead-lettered (under the inbox
        id ``key``) before this consumer read it: outside the contract (``reason`` a
        decode reason), or, under per-party users, not sent by the party it names
        (``sender_mismatch``). By default nothing."""
        return []

    def _count(self, outcome: str, reason: str = "") -> None:
        """Note one outcome of the batch in hand; reported when it commits."""
        key = (outcome, reason)
        self._counts[key] = self._counts.get(key, 0) + 1

    def _count_notice(self, message_id: str) -> None:
        """Note one deadline notice of the batch in hand; counted when it commits, as the
        watch's are (a review: the status router's apologies were never counted)."""
        self._notices.append(message_id)

    @contextmanager
    def _batch(self) -> Iterator[Batch]:
        """One ledger transaction; the outcomes counted in it reach the metrics, once per
        label, only after it commits (a rolled-back try, retried later, counts nothing)."""
        self._counts, self._notices = {}, []
        with self.ledger.batch() as batch:
            yield batch
        counts, self._counts = self._counts, {}
        notices, self._notices = self._notices, []
        if self.metrics is not None:
            for (outcome, reason), n in counts.items():
                self.metrics.count(self.source, outcome, reason, n)
            for mid in notices:
                self.metrics.deadline_notices_total.labels(*notice_labels(mid)).inc()

    def check_writable(self) -> None:
        """Return once the ledger takes writes again (TransientError while it does not):
        asked by a worker that gave its deliveries back during an outage."""
        self.ledger.check_writable()

    def internal_error(self, delivery: Delivery, error: BaseException) -> list[Outbound]:
        """Dead-letter a delivery the handler could not process at all.

        Recorded in the inbox when the ledger takes it, like every other outcome: if the
        delivery comes again (its ack lost), the same dead letter is published again
        instead of the delivery being processed after all, which would leave both a
        result and a dead letter that a replay could apply a second time.
        """
        try:
            dl = dead_letter(self.topology, self.source, delivery, INTERNAL_ERROR,
                             type(error).__name__, self.screen.trusted)
        except Exception as e:  # what the sender set defeats even that: keep the body
            log.error("dead letter of a delivery from %s built without its properties (%s)",
                      self.source, type(e).__name__)
            dl = Outbound(self.topology.dead_letter_exchange, self.source,
                          "sha256:" + hashlib.sha256(delivery.body).hexdigest(), "", None,
                          {REASON_HEADER: INTERNAL_ERROR, SOURCE_HEADER: self.source,
                           DETAIL_HEADER: type(error).__name__},
                          delivery.body[:MAX_BODY_BYTES])
        try:
            with self._batch() as batch:
                batch.record(self.screen.recorded_id(batch, delivery), self.source,
                             f"dead:{INTERNAL_ERROR}", None, [dl], self.clock())
        except Exception as e:  # the ledger itself may be what fails: dead-letter anyway
            log.warning("dead letter of a delivery from %s not recorded (%s); a redelivery "
                        "would be dead-lettered again", self.source, type(e).__name__)
        if self.metrics is not None:
            self.metrics.count(self.source, "dead_lettered", INTERNAL_ERROR)
        return [dl]
