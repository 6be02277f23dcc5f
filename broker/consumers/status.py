"""STATUS ROUTER: agency status updates and desk events, checked against the ledger.

Each update is checked against its dossier's current state (the lifecycle table)
and its sender (the current assignee for agency updates, the dossier's desks for
desk events). A refused update changes nothing and tells the sender why; one from a
stranger to the dossier (never one of its agencies, neither of its desks) is
dead-lettered as ``not_a_party``, and its sender answered ``not_yours`` in the same
words as for a code the ledger does not have. One changed under an id already
applied is dead-lettered as ``message_id_reused``, and its sender told. Accepted
ones are applied in arrival order within the batch, written once per dossier with
an optimistic check on the dossier's event sequence, and announced: to the return
desk, to the agency, or, for a finished chain step, to the next agency (with the
supplements and every earlier step's results). An agency update sent before the last
one applied from that agency is refused as stale: competing status routers or a
redelivery may hand them over in another order than they were sent. A supplement
moves the due dates by the working time the dossier was paused; a result later than
its due date, not yet apologized for by the deadline watch, brings the desk an apology.

A withdrawal may name its dossier by submission id instead of code: a dossier held in
triage (its desk was told ``held``, with no code) is withdrawn at intake (state 7, a
``refusals`` row, like an operator's refusal), so that a later copy or replay of it is
answered with the withdrawal and opens nothing. A submission id that has opened a
dossier is answered with that dossier's code, to withdraw it by; see
:meth:`StatusRouter._by_submission`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import Any
from uuid import UUID

from broker.amqp import DEAD_SINCE_HEADER, Delivery, header_time
from broker.calendar import DurationUnit
from broker.consumers.common import (
    Consumer,
    delivery_id,
    in_zone,
    kept_id,
    readable_fields,
    to_agency,
    to_desk,
    unread_sender,
    withdraw_at_intake,
)
from broker.consumers.deadlines import (
    AT_RISK,
    NOTHING_SENT,
    OVERDUE,
    apology,
    handed_on,
    to_the_minute,
)
from broker.envelope import Outbound
from broker.errors import TransitionRefused
from broker.ledger import Batch
from broker.lifecycle import (
    STEP_ENDS,
    TRANSITIONS,
    Event,
    State,
    apply,
    late_from,
    paused_in_time,
)
from broker.messages import (
    DOSSIER_CODE_MAX,
    MAX_BROKER_BODY_BYTES,
    NOT_YOURS,
    AgencyNotice,
    AgencyStatus,
    Applicant,
    DeskNotice,
    Document,
    DossierAssigned,
    DossierReturned,
    DossierStatus,
    DossierSupplemented,
    DossierWithdrawn,
    NoticeKind,
    as_received,
    shown_id,
)
from broker.rules.engine import Engine, StepPlan
from broker.tables import (
    AGENCY_SENT_AT,
    CALENDAR_ENDS,
    EVENT_AT,
    PAUSE_RECORDED,
    PAUSED_FROM,
    PROCESSING_UNIT,
    PRUNED_KEY,
    RESULTS,
    STEP_OWN_DUE,
    STEP_RECORDED,
    STEP_STARTED,
    SUPPLEMENTS,
    VALUES_DIGEST,
    is_pruned,
    pruned_stub,
)

log = logging.getLogger(__name__)

ACCEPTED_KINDS = frozenset({"dossier.status", "dossier.returned", "dossier.supplemented",
                            "dossier.withdrawn"})
DeskEvent = DossierReturned | DossierSupplemented | DossierWithdrawn
Update = DossierStatus | DeskEvent

STATUS_EVENTS = {
    AgencyStatus.ACCEPTED: Event.ACCEPT,
    AgencyStatus.PROCESSING: Event.PROCESS,
    AgencyStatus.SUPPLEMENT_REQUESTED: Event.REQUEST_SUPPLEMENT,
    AgencyStatus.FINANCIAL_OBLIGATION: Event.REQUIRE_PAYMENT,
    AgencyStatus.REJECTED: Event.REFUSE,
    AgencyStatus.STOPPED: Event.STOP,
    AgencyStatus.RESOLVED: Event.RESOLVE,
}
#: the desk notice each new state earns (None: the desk is not told)
DESK_NOTICE_FOR = {
    State.RECEIVED: NoticeKind.STATUS_CHANGED,  # back from a supplement asked on receipt
    State.PROCESSING: NoticeKind.STATUS_CHANGED,
    State.SUPPLEMENT_REQUESTED: NoticeKind.SUPPLEMENT_REQUESTED,
    State.FINANCIAL_OBLIGATION: NoticeKind.FINANCIAL_OBLIGATION,
    State.REFUSED: NoticeKind.REFUSED,
    State.STOPPED: NoticeKind.STOPPED,
    State.RESOLVED: NoticeKind.RESULT_READY,
    State.WITHDRAWN: NoticeKind.WITHDRAWN,
    State.RETURNED: NoticeKind.CLOSED,  # the return desk's `returned` took effect
}
_DESK_KINDS = frozenset(DESK_NOTICE_FOR.values())
FINISHED = frozenset({State.REFUSED, State.STOPPED, State.RESOLVED, State.WITHDRAWN})
#: the metric reason of an agency update sent before the last one applied
STALE = "stale"
#: the metric reason of an update whose messages would be too large to send
TOO_LARGE = "too_large"
#: how far ahead of the broker's clock an agency's sent_at is believed: one update from
#: a clock set wrong (a local time labelled UTC) must not make every later one stale
SENT_AT_AHEAD_MAX = timedelta(minutes=5)


@dataclass(slots=True)
class _Dossier:
    """A dossier row being changed by this batch."""

    row: dict[str, Any]
    loaded_seq: int
    changes: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.changes.get(key, self.row[key])

    def set(self, **values: Any) -> None:
        self.changes.update(values)


def happened_at(dossier: _Dossier, msg: Update, now: datetime,
                max_back: timedelta | None = None) -> datetime:
    """When an update's event happened, by which the dossier's clocks go: the time its
    sender wrote (an agency's or a desk's ``sent_at``, a desk's ``returned_at``), never
    later than ``now``, and never before
    - the dossier's receipt, its pause, or its last event (:data:`~broker.tables.EVENT_AT`);
    - the end of its due day (or its step's, :func:`~broker.lifecycle.late_from`), once
      the citizen or the agency was told it is late (the watch decides that only when no
      update sent before is left unapplied, so one dated before it comes too late to be
      believed: a result backdated into the due day would count on time in the report
      after the citizen had an apology);
    - ``max_back`` before now (the catalog's ``max_backdate_days``, as for a desk's
      ``submitted_at``).

    Applied late (casebroker was stopped, the ledger away, a backlog waited), a result an
    agency gave in time is on time and gets no apology, a pause starts when it was asked
    for, and the next step's time starts at its hand-off. The sender's clock is believed
    as a desk's ``submitted_at`` is for the legal clock's start, within those bounds; the
    process-control sheet keeps when each update was recorded (``recorded_at``)."""
    said = msg.returned_at if isinstance(msg, DossierReturned) else msg.sent_at
    floor: datetime = dossier["received_at"]
    if dossier["paused_at"] is not None:
        floor = max(floor, dossier["paused_at"])
    if (last := dossier["flags"].get(EVENT_AT)) is not None:
        floor = max(floor, datetime.fromisoformat(last))
    if dossier["watch_level"] >= OVERDUE:
        floor = max(floor, late_from(dossier["due_at"]))
    if dossier["step_watch_level"] >= OVERDUE:
        floor = max(floor, late_from(dossier["step_due_at"]))
    if max_back is not None:
        floor = max(floor, now - max_back)
    # never later than now, floors included: a due date a pause moved to today, after
    # the lateness was told, has its day's end still ahead (found by a review)
    return min(now, max(floor, min(said, now)))


#: the header's times are whole seconds (an AMQP timestamp): a supplement set aside within
#: one of the request is not judged older than it
_DEAD_SINCE_GRAIN = timedelta(seconds=1)


def _dead_since(delivery: Delivery, msg: Update) -> datetime | None:
    """When a replayed desk supplement or agency update was set aside
    (``x-casebroker-dead-since``, which ``dead-letters replay`` sets): no later than the
    broker first had it. Only ever to refuse one: a sender that sets the header on its own
    message harms nobody but itself."""
    if not isinstance(msg, DossierSupplemented | DossierStatus):
        return None
    return header_time((delivery.properties.headers or {}).get(DEAD_SINCE_HEADER))


def _answers_earlier(dossier: _Dossier, msg: Update, dead_since: datetime | None
                     ) -> str | None:
    """Why an update answers what is no longer there, refused as stale:

    * a supplement sent (its desk's ``sent_at``) more than SENT_AT_AHEAD_MAX before the
      agency sent the request now waiting (a review: one delayed behind it answered it
      with other documents), or replayed from a dead-letter queue, set aside before that
      request was recorded: it was sent for an earlier one;
    * an agency's update replayed from a dead-letter queue, set aside (as from no party)
      before the dossier was handed to that agency: it was sent before it had the
      dossier (a review: replayed, it ended the step the moment it began)."""
    if isinstance(msg, DossierStatus):
        return _before_its_step(dossier, msg, dead_since)
    if not isinstance(msg, DossierSupplemented) or (
            dossier["state"] != State.SUPPLEMENT_REQUESTED):
        return None
    # the request's: no update is taken in state 5. Two parties' clocks: only one sent
    # more than SENT_AT_AHEAD_MAX before is judged (a review: a desk's clock a minute
    # behind the agency's had its supplement to the only request refused)
    requested = dossier["status_sent_at"]
    if requested is not None and msg.sent_at + SENT_AT_AHEAD_MAX < requested:
        asked_at = requested.astimezone(msg.sent_at.tzinfo).isoformat()
        return (f"stale: this supplement was sent at {msg.sent_at.isoformat()}, before the "
                f"supplement request now waiting ({asked_at}): it answers an earlier "
                "request; send the documents asked for now as a new supplement")
    if dead_since is None:
        return None
    recorded = dossier["flags"].get(PAUSE_RECORDED)
    # a request recorded before the flag was kept: when the agency said it asked, no
    # later than its record
    asked = datetime.fromisoformat(recorded) if recorded else dossier["paused_at"]
    if asked is None or dead_since + _DEAD_SINCE_GRAIN > asked:
        return None
    return (f"stale: this supplement was set aside at {dead_since.isoformat()}, before the "
            f"supplement request now waiting was made ({asked.isoformat()}): it answers an "
            "earlier request; send the documents asked for now as a new supplement")


def _before_its_step(dossier: _Dossier, msg: DossierStatus, dead_since: datetime | None
                     ) -> str | None:
    """:func:`_answers_earlier` for an agency's replayed update."""
    flags = dossier["flags"]
    # when the hand-off was recorded, on the broker's clock as the header's time is (its
    # event's time is the sender's word: a review); before that was kept, the event's
    handed = (flags.get(STEP_RECORDED) or flags.get(STEP_STARTED)
              if dossier["step"] > 1 else None)
    if (dead_since is None or handed is None or msg.agency_id != dossier["agency_id"]
            or dead_since + _DEAD_SINCE_GRAIN > datetime.fromisoformat(handed)):
        return None
    return (f"stale: this update was set aside at {dead_since.isoformat()}, before the "
            f"dossier was handed to {msg.agency_id} ({handed}): it was sent before the "
            "agency had the dossier; send it again if it still holds")


def _calendar_end(engine: Engine, dossier: _Dossier, recorded: dict[str, str], key: str,
                  due: datetime) -> datetime:
    """Where the calendar days of the due date ``key`` (now ``due``) ended before they
    were moved off a day off onto a working day: as a pause or hand-off recorded it
    (CALENDAR_ENDS), else as the plan gives it from the receipt, checked against ``due``.
    ``due`` itself where neither tells (a chain step handed on before ends were recorded,
    a procedure whose time the catalog has changed since): that end, extended, may give a
    second time the days off it was moved over, as it did before ends were recorded."""
    if key in recorded:
        return datetime.fromisoformat(recorded[key])
    if key == "step_due_at" and due == dossier["due_at"]:
        return _calendar_end(engine, dossier, recorded, "due_at", due)  # the dossier's end
    amounts: list[float] = []
    if key == "due_at" and (procedure := engine.procedures.get(dossier["procedure_code"])):
        amounts.append(procedure.processing.amount)
    if dossier["step"] == 1 and key != "due_at" or len(dossier["steps"]) == 1:
        amounts.append(float(dossier["steps"][0]["amount"]))
    cal = engine.calendar
    for amount in amounts:
        end = cal.calendar_days_end(dossier["received_at"], amount)
        if cal.on_a_working_day(end) == due:
            return end
    return due


def _processing_unit(engine: Engine, dossier: _Dossier) -> DurationUnit:
    """The unit a dossier's procedure time was counted in when it was received: as kept
    (PROCESSING_UNIT), else (received before it was kept) the catalog's now. The
    catalog's alone made a dossier paused across a reload that changed the unit move by
    the new one (a review)."""
    if (kept := dossier["flags"].get(PROCESSING_UNIT)) is not None:
        return DurationUnit(kept)
    procedure = engine.procedures.get(dossier["procedure_code"])
    return (DurationUnit(procedure.processing.unit) if procedure is not None
            else DurationUnit.WORKING_DAYS)


def _moved_words(due: datetime, step_due: datetime, own: datetime | None,
                 said: tuple[str, str]) -> str:
    """The due dates a supplement's return leaves, and how each moved (``said``: the
    dossier's, the step's own): one way said once; the step's own when it differs (a
    review: a step in calendar days moved by a pause after hours was said unchanged with
    its dossier's), and its own date named where it is capped by the dossier's (``own``:
    the words are about it, not the date shown, a review)."""
    dossier_words = f"legal due date {due.isoformat(timespec='minutes')}"
    step_words = f"this step's {step_due.isoformat(timespec='minutes')}"
    if own is not None:
        return (f"{dossier_words} ({said[0]}), {step_words} (the dossier's; its own "
                f"{own.isoformat(timespec='minutes')}, {said[1]})")
    if said[0] == said[1]:
        return f"{dossier_words}, {step_words} ({said[0]})"
    return f"{dossier_words} ({said[0]}), {step_words} ({said[1]})"


def _how_moved(paused_at: datetime, due: datetime, unit: DurationUnit,
               by: tuple[float, timedelta]) -> str:
    """How a supplement's return moved a due date paused at ``paused_at`` by ``by``
    (working seconds, whole time), in words for the agency."""
    seconds, days = by
    if not paused_in_time(paused_at, due):
        return "unchanged: the supplement was asked for after its due day"
    if unit is DurationUnit.CALENDAR_DAYS:
        if days <= timedelta(0):
            return "unchanged: no time was paused"
        return (f"moved by the {days / timedelta(days=1):.1f} days paused"
                if days >= timedelta(days=1)
                else f"moved by the {days / timedelta(hours=1):.1f} hours paused")
    return (f"moved by the {seconds / 3600:.1f} working hours paused" if seconds > 0
            else "unchanged: no working time was paused")


class StatusRouter(Consumer):
    """The status consumer: applies updates the table allows, refuses the rest."""

    source = "status"
    accepted_kinds = ACCEPTED_KINDS
    # a corrected update under the id of one refused earlier in the same batch is judged
    # as it would be in a batch of its own: after that one, applied unless it was
    judges_in_order = True

    def sender_of(self, message: Any) -> str:
        return _sender(message)

    def judges_changed_copy(self, before: str | None) -> bool:
        # an update changed under an id already applied would be applied twice (a second
        # supplement, another status): dead-lettered. One refused or dead-lettered before
        # changed nothing; corrected, it is judged afresh
        return before is not None and before != "applied"

    def answer_reused(self, batch: Batch, message: Any, own_id: str, detail: str,
                      now: datetime) -> list[Outbound]:
        """An update or desk event changed under an id already applied is dead-lettered
        (applying it would apply that id twice); its sender is told, as for any update
        refused, when it has a part in the dossier. A stranger is not answered (see
        :func:`_stranger`), nor is anyone about a code the ledger does not have. Rare (a
        sender's bug), so the dossier is read for it alone."""
        # a withdrawal by submission id has no code: one applied closed a held submission,
        # which has no dossier (one whose id opened a dossier was refused, not applied)
        if message.dossier_code is None:
            return []
        # under the copy's own id: the first message under that id may have had a refusal
        return self._answer_party(batch, message.dossier_code, _sender(message),
                                  isinstance(message, DossierStatus),
                                  f"message_id_reused: {detail}", now, own_id)

    def answer_unread(self, batch: Batch, key: str, delivery: Delivery, reason: str,
                      detail: str, now: datetime) -> list[Outbound]:
        """An update or desk event dead-lettered unread (outside the contract, or not sent
        by the party it names) is answered ``update_refused``, as one refused for what it
        asks, when its body still names a dossier its sender has a part in: an agency or
        desk integrating without the SDK (which checks first) waited for an answer that
        never came. The sender is the party the body names, or, with per-party users,
        the one whose login sent it. Not answered: a stranger to the dossier, a code the
        ledger does not have (the answer would tell whether it exists), a withdrawal by
        submission id. Rare (a sender's bug), so the dossier is read for it alone."""
        said = readable_fields(delivery.body)
        code = said.get("dossier_code")
        if not (isinstance(code, str) and 0 < len(code) <= DOSSIER_CODE_MAX
                and code.isprintable()):  # what the ledger can be asked about
            return []
        engine = self.engine()
        # an agency's status, by its schema (or, that unreadable, by naming no desk)
        is_agency = str(said.get("schema", "")).startswith(
            "casebroker.dossier.status/") or "desk_id" not in said
        sender = unread_sender(self, delivery, said.get("agency_id" if is_agency
                                                        else "desk_id"))
        if self.screen.party_users:  # the login's party, whatever the body says
            is_agency = sender in engine.agencies
        if not isinstance(sender, str) or sender not in (engine.agencies if is_agency
                                                         else engine.desks):
            return []
        return self._answer_party(batch, code, sender, is_agency,
                                  f"{reason}: {detail}: {_UNREAD_FOR_SENDER}", now, key)

    def _answer_party(self, batch: Batch, code: str, sender: str, is_agency: bool,
                      reason: str, now: datetime, answered: str) -> list[Outbound]:
        """The ``update_refused`` notice to ``sender`` of a message dead-lettered before it
        was judged, if the ledger has the dossier ``code`` and ``sender`` has a part in it
        (a stranger is told nothing, not even whether the code exists); else none. The
        dossier is read for it alone: rare (a sender's bug)."""
        row = self._load(batch, [code], self.engine().calendar.tz).get(code)
        if row is None:
            return []
        dossier = _Dossier(row, row["seq"])
        if _no_part(dossier, sender, is_agency) is not None:
            return []
        return [self._refusal(dossier, sender, is_agency, reason, now, answered)]

    def _load(self, batch: Batch, codes: Iterable[str], tz: tzinfo
              ) -> dict[str, dict[str, Any]]:
        """Dossier rows by code, their times in the catalog's zone (see :func:`in_zone`):
        that of the engine the caller judges them by (asking the provider again could
        give another, after a reload in between)."""
        return {code: in_zone(row, tz) for code, row in batch.load_dossiers(codes).items()}

    def handle(self, deliveries: Sequence[Delivery]) -> list[Outbound]:
        """Process one batch in one transaction; return every message to publish."""
        engine = self.engine()
        now = self.clock()
        out: list[Outbound] = []
        with self._batch() as batch:
            screened = self.screen(batch, deliveries, now)
            out += screened.out
            decoded: list[tuple[str, Delivery, Update]] = screened.fresh  # type: ignore[assignment]
            by_sid = [(mid, d, m) for mid, d, m in decoded
                      if isinstance(m, DossierWithdrawn) and m.dossier_code is None]
            if by_sid:
                decoded = [x for x in decoded if x[2].dossier_code is not None]
                out += self._by_submission(batch, by_sid, now, engine.calendar.tz)
            loaded = self._load(batch, (str(m.dossier_code) for _, _, m in decoded),
                                engine.calendar.tz)
            dossiers = {code: _Dossier(row, row["seq"]) for code, row in loaded.items()}
            applied: set[str] = set()  # message ids a copy under which was applied
            for mid, d, msg in decoded:
                if (first := screened.after.get(mid)) is not None and first in applied:
                    out += self.screen.reused(batch, mid, d, msg, "applied", now)
                    continue
                dossier = dossiers.get(str(msg.dossier_code))
                stranger = None if dossier is None else _stranger(dossier, msg)
                if dossier is None or stranger is not None:
                    reason, detail = (("not_a_party", stranger) if stranger is not None
                                      else ("unknown_dossier", "no dossier with this code"))
                    answer = self._not_yours(engine, msg, now)
                    out.append(self.screen.dead(batch, mid, d, reason, detail, now,
                                                also=answer))
                    out += answer
                    continue
                published, outcome, reason = self._apply(engine, dossier, mid, msg, batch, now,
                                                         changed=mid != delivery_id(d),
                                                         dead_since=_dead_since(d, msg))
                batch.record(mid, self.source, outcome, msg.dossier_code, published, now)
                self._count(outcome, reason)
                out += published
                if outcome == "applied":
                    applied.add(delivery_id(d))
            for code, dossier in dossiers.items():
                if dossier.changes:
                    batch.update_dossier(code, dossier.loaded_seq, dossier.changes)
        return out

    def _by_submission(self, batch: Batch,
                       withdrawals: list[tuple[str, Delivery, DossierWithdrawn]],
                       now: datetime, tz: tzinfo) -> list[Outbound]:
        """Withdrawals by submission id. One whose submission opened a dossier withdraws
        nothing: it is refused (``update_refused``) naming the dossier's code, to withdraw
        it by. The submission id need not be the held dossier's: a desk that reused it
        for another dossier (dead-lettered as ``submission_id_reused``, its desk told
        ``held``) would otherwise withdraw the first dossier, another citizen's. Its
        intake desk already has the code (its receipt); a stranger to it is
        dead-lettered as ``not_a_party``, as for any update. The others go on to
        :meth:`_withdraw_unopened`.

        The batch holds :data:`~broker.ledger.SUBMISSION_GATE` alone from here to its
        commit, as an operator's refusal does: a router opening a dossier for the same
        submission (a replay from triage) at the same moment either committed it before
        (the withdrawal is refused with its code) or waits and then finds the withdrawal
        (it answers the copy with it and opens nothing). Rare, so the lock costs the
        router nothing to speak of."""
        known = batch.existing_submissions((str(m.submission_id) for _, _, m in withdrawals),
                                           alone=True)
        codes = {sid: code for sid, code in known.items() if code is not None}
        rows = self._load(batch, codes.values(), tz)
        out: list[Outbound] = []
        unopened: list[tuple[str, Delivery, DossierWithdrawn]] = []
        for mid, d, msg in withdrawals:
            code = codes.get(str(msg.submission_id))
            if code is None:
                unopened.append((mid, d, msg))
                continue
            dossier = _Dossier(rows[code], rows[code]["seq"])
            if (stranger := _stranger(dossier, msg)) is not None:
                # not answered: see _withdraw_unopened
                out.append(self.screen.dead(batch, mid, d, "not_a_party", stranger, now))
                continue
            refusal = self._refuse(dossier, msg, (
                f"this submission id opened dossier {code}: to withdraw that dossier, name "
                "it by its code (dossier_code); a submission id names only a dossier held "
                "without one"), now)
            batch.record(mid, self.source, "refused_update", code, [refusal], now)
            self._count("refused_update", "")
            out.append(refusal)
        return out + self._withdraw_unopened(batch, unopened, now)

    def _withdraw_unopened(self, batch: Batch,
                           withdrawals: list[tuple[str, Delivery, DossierWithdrawn]],
                           now: datetime) -> list[Outbound]:
        """Withdraw submissions held in triage (no dossier): each gets a ``refusals`` row
        in state 7 and its intake desk a ``withdrawn`` notice without a code; the copy
        waiting in triage is answered with that notice when replayed, or refused
        (``dead-letters refuse`` finds it closed and sends the notice again). Only the
        intake desk may withdraw by submission id (the id is its own key; another desk
        has no part in a dossier never received: dead-lettered as ``not_a_party``, and
        not answered, unlike a code that is not its own: an id the ledger does not have
        yet is kept, unanswered, so an answer here would tell the stranger that another
        desk sent that id). A submission closed already is answered ``update_refused``; one the
        ledger does not have yet (not yet routed, or never sent) is kept as an early
        withdrawal (:data:`~broker.tables.early_withdrawals`): the router closes it at
        intake when it comes, and the desk is told then."""
        out: list[Outbound] = []
        sids = [str(m.submission_id) for _, _, m in withdrawals]
        closed = batch.closed_at_intake(sids)
        copies = batch.held_copies(sids)
        early = batch.early_withdrawals(sids)
        for mid, d, msg in withdrawals:
            sid = str(msg.submission_id)
            intake_desks = ({closed[sid]["desk_id"]} if sid in closed
                            else {h["desk_id"] for h in copies.get(sid, [])})
            if not intake_desks:
                # not come yet (sent at once, or intake has a backlog): the router closes
                # it at intake when it comes, if this desk sent it, and the desk is told
                # then; a withdrawal sent again meanwhile changes nothing. Kept per desk:
                # another desk's (void when the submission comes) takes nothing from it
                if msg.desk_id not in early.setdefault(sid, {}):
                    early[sid][msg.desk_id] = pending = {
                        "submission_id": sid, "desk_id": msg.desk_id, "message_id": mid,
                        "reason": msg.reason, "withdrawn_at": now}
                    batch.withdraw_early(pending)
                batch.record(mid, self.source, "withdrawn_early", None, [], now)
                self._count("withdrawn_early", "")
                continue
            if msg.desk_id not in intake_desks:
                out.append(self.screen.dead(
                    batch, mid, d, "not_a_party", f"desk {shown_id(msg.desk_id)} is not the intake "
                    "desk of the submission held under this id", now))
                continue
            if sid in closed:
                row = closed[sid]
                state = State(row["state"])
                notice = self._unopened_notice(
                    NoticeKind.UPDATE_REFUSED, msg, row["procedure_code"], state,
                    f"withdraw is not allowed: the submission is {state.name.lower()} at "
                    "intake (no dossier was opened)", now,
                    kept_id(f"{sid}:update_refused:{msg.event_id}"))
                batch.record(mid, self.source, "refused_update", None, [notice], now)
                self._count("refused_update", "")
                out.append(notice)
                continue
            copy = next(h for h in copies[sid] if h["desk_id"] == msg.desk_id)  # latest
            closed[sid], notice = withdraw_at_intake(
                batch, self.topology, submission_id=UUID(sid), desk_id=msg.desk_id,
                procedure_code=copy["procedure_code"], reason=msg.reason,
                submission=_as_kept(copy["submission"], sid), closed_id=copy["copy_id"],
                now=now)
            batch.record(mid, self.source, "applied", None, [notice], now)
            self._count("applied", "")
            out.append(notice)
        return out

    def _unopened_notice(self, kind: NoticeKind, msg: DossierWithdrawn, procedure_code: str,
                         state: State, reason: str | None, now: datetime,
                         message_id: str) -> Outbound:
        """A notice to the intake desk about a submission that opened no dossier (no
        code)."""
        assert msg.submission_id is not None
        return to_desk(self.topology, DeskNotice(
            notice=kind, dossier_code=None, submission_id=msg.submission_id,
            desk_id=msg.desk_id, procedure_code=procedure_code, state=int(state),
            reason=reason, issued_at=now), message_id)

    def _apply(self, engine: Engine, dossier: _Dossier, mid: str, msg: Update, batch: Batch,
               now: datetime, changed: bool = False, dead_since: datetime | None = None
               ) -> tuple[list[Outbound], str, str]:
        """Apply one update, or refuse it; (messages, inbox outcome, metric reason).
        ``changed``: a copy that differs from the first under its message id, ``mid`` its
        own id: refused, it is answered under that id (the first copy's refusal went out
        under the update's, with other words, which a receiver would drop as a repeat).
        ``dead_since``: a replayed supplement's time of being set aside (:func:`_dead_since`)."""
        # stale first: an agency's update that crossed its own hand-off is stale, not
        # from an agency that is not the current one (a review)
        refusal, reason = (self._stale(dossier, msg)
                           or _answers_earlier(dossier, msg, dead_since)), STALE
        if refusal is None:
            refusal, reason = self._sender_problem(dossier, msg), ""
        if refusal is None and isinstance(msg, DossierStatus):
            refusal = msg.unsaid()  # a refusal or a stop without its reason: answered
        event = self._event_for(dossier, msg)
        if refusal is None:
            try:
                new_state = apply(dossier["state"], event,
                                  paused_from=dossier["flags"].get(PAUSED_FROM))
            except TransitionRefused:
                refusal = _not_allowed(dossier, msg)
        if refusal is not None:
            return [self._refuse(dossier, msg, refusal, now, answered=mid if changed else None)
                    ], "refused_update", reason
        old_state, old_agency = State(dossier["state"]), dossier["agency_id"]
        before = dict(dossier.changes)  # what this batch changed before this update
        finishing = {"step": dossier["step"], "step_due_at": dossier["step_due_at"].isoformat()}
        if STEP_OWN_DUE in dossier["flags"]:
            finishing[STEP_OWN_DUE] = dossier["flags"][STEP_OWN_DUE]
        seq = dossier["seq"] + 1
        at = happened_at(dossier, msg, now, engine.max_backdate)
        dossier.set(state=int(new_state), seq=seq, updated_at=now,
                    flags={**dossier["flags"], EVENT_AT: at.isoformat()})
        if isinstance(msg, DossierStatus):
            dossier.set(status_sent_at=min(msg.sent_at, now + SENT_AT_AHEAD_MAX))
        noted = len(self._notices)
        out = self._effects(engine, batch, dossier, msg, event, old_state, seq, at, now)
        # a supplement is measured by the hand-off it leads to: accepted, and that too large,
        # no agency could hand the dossier on
        later = self._next_assignment(dossier) if event == Event.SUPPLEMENT else []
        if (too_large := _too_large(out + later)) is not None:  # nothing applied: told
            dossier.changes.clear()
            dossier.changes.update(before)
            del self._notices[noted:]  # nor sent
            return [self._refuse(dossier, msg, too_large, now,
                                 answered=mid if changed else None)], "refused_update", TOO_LARGE
        hand_off = event == Event.HAND_OFF
        detail = _detail(msg)
        if at != now:  # the process-control sheet: when it happened, and when recorded
            detail["recorded_at"] = now.isoformat()
        if event in STEP_ENDS:  # the step's own due date, for the report's steps by agency
            detail.update(finishing)
        if event == Event.SUPPLEMENT:  # the due date as the pause moved it
            detail["due_at"] = dossier["due_at"].isoformat()
        batch.add_event({
            "dossier_code": dossier["code"], "seq": seq, "kind": event.value,
            "state_from": int(old_state), "state_to": int(new_state), "actor": _sender(msg),
            "from_agency": old_agency if hand_off else None,
            "to_agency": dossier["agency_id"] if hand_off else None,
            "message_id": mid, "detail": detail, "at": at,
        })
        return out, "applied", ""

    @staticmethod
    def _stale(dossier: _Dossier, msg: Update) -> str | None:
        """Why an agency update sent before the last one applied from it is refused: the
        current agency's, or one that held an earlier step (AGENCY_SENT_AT)."""
        if not isinstance(msg, DossierStatus):
            return None
        if msg.agency_id == dossier["agency_id"]:
            last = dossier["status_sent_at"]
        else:
            held = dossier["flags"].get(AGENCY_SENT_AT, {}).get(msg.agency_id)
            last = None if held is None else datetime.fromisoformat(held)
        if last is None or msg.sent_at >= last:
            return None
        # both in the offset the agency wrote: the last one may come from this batch or
        # from the ledger (in the catalog's zone), and the text must not depend on which
        last = last.astimezone(msg.sent_at.tzinfo)
        return (f"stale: sent {msg.sent_at.isoformat()}, before the update applied last "
                f"(sent {last.isoformat()})")

    @staticmethod
    def _event_for(dossier: _Dossier, msg: Update) -> Event:
        if isinstance(msg, DossierStatus):
            return _status_event(dossier, msg.status)
        if isinstance(msg, DossierReturned):
            return Event.RETURN
        if isinstance(msg, DossierSupplemented):
            return Event.SUPPLEMENT
        return Event.WITHDRAW

    @staticmethod
    def _sender_problem(dossier: _Dossier, msg: Update) -> str | None:
        if isinstance(msg, DossierStatus):
            if msg.agency_id != dossier["agency_id"]:
                return f"{msg.agency_id} is not the dossier's current agency"
            return None
        # a stranger never gets here (_stranger): this is the intake or the return desk
        if isinstance(msg, DossierReturned) and msg.desk_id != dossier["return_desk_id"]:
            return (f"desk {msg.desk_id} is not the return desk: only "
                    f"{dossier['return_desk_id']} hands the result over")
        return None

    def _effects(self, engine: Engine, batch: Batch, dossier: _Dossier, msg: Update,
                 event: Event, old_state: State, seq: int, at: datetime, now: datetime
                 ) -> list[Outbound]:
        """What applying ``msg`` changes and publishes: ``at`` is when its event happened
        (:func:`happened_at`), by which the clocks go; ``now`` dates the notices."""
        state = State(dossier["state"])
        out: list[Outbound] = []
        results: list[dict[str, Any]] = list(dossier["flags"].get(RESULTS, []))
        if isinstance(msg, DossierStatus) and msg.documents and event in (Event.HAND_OFF,
                                                                          Event.RESOLVE):
            results += [doc.model_dump(mode="json") for doc in msg.documents]
            dossier.set(flags={**dossier["flags"], RESULTS: results})
        if state in FINISHED:
            dossier.set(finished_at=at)
        if event == Event.REQUEST_SUPPLEMENT:
            # where the supplement brings it back: received, if asked for on receipt
            dossier.set(paused_at=at, flags={**dossier["flags"], PAUSED_FROM: int(old_state),
                                             PAUSE_RECORDED: now.isoformat()})
        elif event == Event.SUPPLEMENT:
            out.append(self._resume(engine, dossier, msg, seq, at, now))
        elif event == Event.HAND_OFF:
            # the next agency gets the dossier as it stands: supplements and earlier results
            out.append(self._hand_off(engine, dossier, _gathered(dossier), at, now))
            if dossier["watch_level"] >= AT_RISK:  # the watch told the agency before
                promised = (batch.appointment(dossier["code"])
                            if dossier["watch_level"] >= OVERDUE else None)
                out.append(handed_on(
                    self.topology, dossier["code"], dossier["agency_id"], dossier["step"],
                    int(state), dossier["watch_level"], dossier["due_at"], now, engine.calendar,
                    promised))
        elif event == Event.WITHDRAW:
            out.append(self._agency_notice(dossier, NoticeKind.WITHDRAWN, seq, now,
                                           reason=getattr(msg, "reason", None)))
        elif event == Event.RETURN:
            assert isinstance(msg, DossierReturned)
            dossier.set(satisfaction=msg.satisfaction)
            # the agency that gave the result learns the citizen has it: its case is closed
            out.append(self._agency_notice(dossier, NoticeKind.CLOSED, seq, now,
                                           reason="the result was handed to the citizen"))
        kind = DESK_NOTICE_FOR.get(state)
        if kind is not None and state != old_state:  # hand-offs stay 4 → 4: desk not told
            shown = results if state == State.RESOLVED else []
            out.append(self._desk_notice(dossier, kind, state, seq, now, msg, shown))
            sender = None if isinstance(msg, DossierStatus) else msg.desk_id
            if sender is not None and sender != dossier["return_desk_id"]:
                # the intake desk's own event (a withdrawal, a supplement) took effect: it
                # is told so, as the return desk is, else it would never know
                out.append(self._desk_notice(dossier, kind, state, seq, now, msg, shown,
                                             to=sender))
        if state == State.RESOLVED and at >= late_from(dossier["due_at"]) and (
                dossier["watch_level"] < OVERDUE):
            out.append(apologized := self._late_apology(engine, dossier, now))
            self._count_notice(str(apologized.message_id))
        return out

    def _late_apology(self, engine: Engine, dossier: _Dossier, now: datetime) -> Outbound:
        """A result later than the due date, not yet apologized for by the deadline watch."""
        dossier.set(watch_level=OVERDUE)
        due = dossier["due_at"].astimezone(engine.calendar.tz).isoformat(timespec="minutes")
        row = {k: dossier[k] for k in ("code", "return_desk_id", "procedure_code", "state",
                                       "agency_id", "received_at", "due_at",
                                       "submission_id")}
        ready = to_the_minute(now.astimezone(engine.calendar.tz))
        return apology(self.topology, row, now, ready,
                       f"the result is late: legal due date {due}; it is ready now")

    def _resume(self, engine: Engine, dossier: _Dossier, msg: Update, seq: int,
                at: datetime, now: datetime) -> Outbound:
        """The supplement is in: move the due dates by the time paused, counted as each
        one's time is (DOMAIN.md: "the due date moves by the paused time"): the working
        time paused for one in working days or hours; the whole time paused for one in
        calendar days, whose count stopped on days off too (then, as any, onto a working
        day)."""
        cal = engine.calendar
        paused_at = dossier["paused_at"] or at

        def paused(start: datetime) -> tuple[float, timedelta]:
            """(working seconds, whole time) paused of a time that began at ``start``:
            each counted from when its clock ran (a working time from ``clock_start``,
            calendar days from ``calendar_start``), since a pause asked for before (a
            receipt after closing, on a day off, past ``next_day_after``) stopped nothing
            then."""
            since = max(paused_at, cal.clock_start(start))
            since_days = max(paused_at, cal.calendar_start(start))
            return (cal.working_seconds_between(since, at),
                    max(at - since_days, timedelta(0)))

        assert isinstance(msg, DossierSupplemented)
        supplements = [d.model_dump(mode="json") for d in msg.documents]
        flags = {k: v for k, v in dossier["flags"].items()
                 if k not in (PAUSED_FROM, PAUSE_RECORDED)}
        dossier.set(paused_at=None, flags={
            **flags, SUPPLEMENTS: flags.get(SUPPLEMENTS, []) + supplements})
        whole_unit = _processing_unit(engine, dossier)
        step_unit = DurationUnit(dossier["steps"][dossier["step"] - 1]["unit"])
        recorded: dict[str, str] = flags.get(CALENDAR_ENDS, {})
        ends = dict(recorded)
        whole = paused(dossier["received_at"])
        # a later step's time began at its hand-off (recorded since STEP_STARTED was kept)
        started = flags.get(STEP_STARTED) if dossier["step"] > 1 else None
        step = paused(datetime.fromisoformat(started)) if started else whole

        def moved(key: str, due: datetime, unit: DurationUnit,
                  by: tuple[float, timedelta]) -> datetime:
            seconds, days = by
            if not paused_in_time(paused_at, due):
                # asked for once it was late (a review: the time paused since made a late
                # dossier on time, after its apology): its lateness stands
                return due
            if unit is DurationUnit.CALENDAR_DAYS:
                if days <= timedelta(0):
                    return due
                end = _calendar_end(engine, dossier, recorded, key, due) + days
                ends[key] = end.isoformat()
                return cal.on_a_working_day(end)
            # adding 0 s would still move a 17:00 due date to 07:00 next day
            return due if seconds <= 0 else cal.add_working_seconds(due, seconds)

        due_at = moved("due_at", dossier["due_at"], whole_unit, whole)
        # the step's own due date, which its due date is unless that falls after the
        # dossier's (then the dossier's, its own kept in STEP_OWN_DUE for the report and
        # `dossier show`): moved by its own unit, it may land on either side of it
        own_key = STEP_OWN_DUE if STEP_OWN_DUE in flags else "step_due_at"
        own_before = (datetime.fromisoformat(flags[STEP_OWN_DUE])
                      if own_key == STEP_OWN_DUE else dossier["step_due_at"])
        said = (_how_moved(paused_at, dossier["due_at"], whole_unit, whole),
                _how_moved(paused_at, own_before, step_unit, step))
        own = moved(own_key, own_before, step_unit, step)
        step_due_at = min(own, due_at)
        kept = {k: v for k, v in dossier["flags"].items() if k != STEP_OWN_DUE}
        if own > step_due_at:
            kept[STEP_OWN_DUE] = own.isoformat()
        if own_key in ends and (key := STEP_OWN_DUE if own > step_due_at else "step_due_at"
                                ) != own_key:
            ends[key] = ends.pop(own_key)  # its calendar end, under the name it now has
        dossier.set(flags=kept)
        # a due date moved to a day not over yet (late_from, as the watch and the report
        # judge lateness) is judged afresh by the watch; one not moved keeps what it was
        # told (a review: a pause that moved only the step's had the dossier told at risk
        # twice)
        for key, level_key, new_due in (("due_at", "watch_level", due_at),
                                        ("step_due_at", "step_watch_level", step_due_at)):
            if new_due != dossier[key]:
                dossier.set(**{key: new_due})
                if late_from(new_due) > now:
                    dossier.set(**{level_key: NOTHING_SENT})
        if ends != recorded:
            dossier.set(flags={**dossier["flags"], CALENDAR_ENDS: ends})
        # the agency's assignment carries the due dates the pause has moved: it is told
        # the new ones, as fields and in words
        due, step_due = (dossier[k].astimezone(cal.tz) for k in ("due_at", "step_due_at"))
        words = _moved_words(due, step_due, own.astimezone(cal.tz) if own > step_due_at
                             else None, said)
        return self._agency_notice(
            dossier, NoticeKind.SUPPLEMENTED, seq, now, documents=list(msg.documents),
            reason=f"the clock runs again: {words}", due_at=due, step_due_at=step_due)

    def _hand_off(self, engine: Engine, dossier: _Dossier, results: list[Document],
                  at: datetime, now: datetime) -> Outbound:
        """One chain step done at ``at`` (recorded ``now``): assign the dossier to the
        next step's agency, whose step's time starts then."""
        step = dossier["step"] + 1
        plan = dossier["steps"][step - 1]
        step_plan = StepPlan(plan["agency_id"], plan["amount"], DurationUnit(plan["unit"]))
        own_due = engine.step_end(step_plan, at)
        step_due = min(own_due, dossier["due_at"])
        flags = {k: v for k, v in dossier["flags"].items() if k != STEP_OWN_DUE}
        flags[STEP_STARTED] = at.isoformat()  # where a pause of this step counts from
        flags[STEP_RECORDED] = now.isoformat()  # from when its agency could answer
        if own_due > step_due:  # told the dossier's due date; judged by its own time
            flags[STEP_OWN_DUE] = own_due.isoformat()
        # the step's own end in calendar days, before it was moved onto a working day,
        # for a pause to extend (CALENDAR_ENDS); a step due with its dossier takes the
        # dossier's end
        ends = {k: v for k, v in flags.get(CALENDAR_ENDS, {}).items()
                if k not in ("step_due_at", STEP_OWN_DUE)}
        if step_plan.unit is DurationUnit.CALENDAR_DAYS:
            end = engine.calendar.calendar_days_end(at, step_plan.amount).isoformat()
            ends[STEP_OWN_DUE if own_due > step_due else "step_due_at"] = end
        flags.pop(CALENDAR_ENDS, None)
        if ends:
            flags[CALENDAR_ENDS] = ends
        # the next agency's updates are not compared with this one's clock, only with its
        # own: an update it sent for an earlier step of a chain that comes back to it
        # (delayed, redelivered) is stale, not applied to this step
        sent_at = dict(flags.get(AGENCY_SENT_AT, {}))
        if dossier["status_sent_at"] is not None:
            sent_at[dossier["agency_id"]] = dossier["status_sent_at"].isoformat()
            flags[AGENCY_SENT_AT] = sent_at
        last = sent_at.get(step_plan.agency_id)
        dossier.set(step=step, agency_id=step_plan.agency_id, step_due_at=step_due,
                    status_sent_at=None if last is None else datetime.fromisoformat(last),
                    step_watch_level=NOTHING_SENT, flags=flags)
        return self._assignment(dossier, step, step_due, results)

    def _assignment(self, dossier: _Dossier, step: int, step_due: datetime,
                    results: list[Document]) -> Outbound:
        """The dossier's assignment to its ``step``'s agency, with ``results`` (the
        supplements, every earlier step's results) after its own documents."""
        sub = as_received(dossier["submission"])
        agency_id = dossier["steps"][step - 1]["agency_id"]
        assigned = DossierAssigned(
            dossier_code=dossier["code"], submission_id=sub.submission_id,
            procedure_code=sub.procedure_code, agency_id=agency_id, step=step,
            steps=len(dossier["steps"]), desk_id=sub.desk_id, return_desk_id=sub.collect_at,
            channel=sub.channel, received_at=dossier["received_at"], due_at=dossier["due_at"],
            step_due_at=step_due, applicant=sub.applicant, subject=sub.subject,
            documents=list(sub.documents) + results, attributes=sub.attributes,
            rule_id=dossier["rule_id"], catalog_hash=dossier["catalog_hash"])
        return to_agency(self.topology, assigned, f"{dossier['code']}:assigned:{step}")

    def _next_assignment(self, dossier: _Dossier) -> list[Outbound]:
        """The assignment the chain's next step would get now (none at its last step):
        what a supplement must leave room for, or no agency could ever hand it on."""
        if dossier["step"] >= len(dossier["steps"]):
            return []
        return [self._assignment(dossier, dossier["step"] + 1, dossier["step_due_at"],
                                 _gathered(dossier))]

    def _agency_notice(self, dossier: _Dossier, kind: NoticeKind, seq: int, now: datetime,
                       reason: str | None = None, documents: list[Document] | None = None,
                       due_at: datetime | None = None,
                       step_due_at: datetime | None = None) -> Outbound:
        notice = AgencyNotice(notice=kind, dossier_code=dossier["code"],
                              agency_id=dossier["agency_id"], state=dossier["state"],
                              reason=reason, documents=documents or [], due_at=due_at,
                              step_due_at=step_due_at, issued_at=now)
        # one id per message: a kind the desk is told too (withdrawn) would otherwise give
        # both notices one id, and dead-letter show/replay --id would take one for the other
        party = ":agency" if kind in _DESK_KINDS else ""
        return to_agency(self.topology, notice, f"{dossier['code']}:{kind.value}:{seq}{party}")

    def _desk_notice(self, dossier: _Dossier, kind: NoticeKind, state: State, seq: int,
                     now: datetime, msg: Update, results: list[dict[str, Any]],
                     to: str | None = None) -> Outbound:
        """The return desk's notice; ``to``: the same for the intake desk, under its own id
        (``...:intake``)."""
        # the return desk hands the result to the applicant the submission names (a
        # submission `ledger prune` erased has none: only closed dossiers are pruned)
        applicant = (dossier["submission"].get("applicant")
                     if kind == NoticeKind.RESULT_READY else None)
        # from the row's columns: a pruned submission's stub (`ledger prune`) keeps neither
        notice = DeskNotice(
            notice=kind, dossier_code=dossier["code"], submission_id=dossier["submission_id"],
            desk_id=to or dossier["return_desk_id"], procedure_code=dossier["procedure_code"],
            state=int(state), agency_id=dossier["agency_id"],
            received_at=dossier["received_at"], due_at=dossier["due_at"],
            reason=getattr(msg, "reason", None),
            documents=[Document(**r) for r in results],
            requested_documents=getattr(msg, "requested_documents", []),
            amount_vnd=getattr(msg, "amount_vnd", None), issued_at=now,
            applicant=None if applicant is None else Applicant.model_construct(**applicant))
        party = "" if to is None else ":intake"
        return to_desk(self.topology, notice, f"{dossier['code']}:{kind.value}:{seq}{party}")

    def _not_yours(self, engine: Engine, msg: Update, now: datetime) -> list[Outbound]:
        """What a party of the catalog is told of an update about a dossier it has no part
        in, whether the code exists or not (``not_yours``): the same words either way, so
        that it learns nothing of a dossier that is not its own, but a mistyped code does
        not go unanswered. The notice carries only what the sender sent; a sender the
        catalog does not name is not answered: it has no queue."""
        if isinstance(msg, DossierStatus):
            if msg.agency_id not in engine.agencies:
                return []
            refusal = AgencyNotice(
                notice=NoticeKind.UPDATE_REFUSED, dossier_code=msg.dossier_code,
                agency_id=msg.agency_id, reason=(
                    f"{NOT_YOURS}: no dossier {msg.dossier_code} was ever assigned to "
                    f"{msg.agency_id}; check the code (the update is set aside for the "
                    "operators)"), issued_at=now)
            return [to_agency(self.topology, refusal,
                              kept_id(f"{msg.dossier_code}:update_refused:{msg.update_id}"))]
        if msg.desk_id not in engine.desks or msg.dossier_code is None:
            return []  # by submission id: see _withdraw_unopened
        notice = DeskNotice(
            notice=NoticeKind.UPDATE_REFUSED, dossier_code=msg.dossier_code,
            desk_id=msg.desk_id, reason=(
                f"{NOT_YOURS}: no dossier {msg.dossier_code} has desk {msg.desk_id} as its "
                "intake or return desk; check the code (the event is set aside for the "
                "operators)"), issued_at=now)
        return [to_desk(self.topology, notice,
                        kept_id(f"{msg.dossier_code}:update_refused:{msg.event_id}"))]

    def _refuse(self, dossier: _Dossier, msg: Update, reason: str, now: datetime,
                answered: str | None = None) -> Outbound:
        """Tell the sender its update changed nothing, and why; ``answered``: the id the
        notice answers (default: the update's ``update_id`` or ``event_id``)."""
        if answered is None:
            answered = str(getattr(msg, "update_id", None) or getattr(msg, "event_id", ""))
        return self._refusal(dossier, _sender(msg), isinstance(msg, DossierStatus), reason,
                             now, answered)

    def _refusal(self, dossier: _Dossier, sender: str, is_agency: bool, reason: str,
                 now: datetime, answered: str) -> Outbound:
        """The ``update_refused`` notice to ``sender`` (an agency, or a desk), answering
        the message id ``answered``."""
        # a 64-character agency id and a five-digit daily number would overflow 128
        message_id = kept_id(f"{dossier['code']}:update_refused:{answered}")
        if is_agency:
            notice = AgencyNotice(notice=NoticeKind.UPDATE_REFUSED,
                                  dossier_code=dossier["code"], agency_id=sender,
                                  state=dossier["state"], reason=reason, issued_at=now)
            return to_agency(self.topology, notice, message_id)
        desk_notice = DeskNotice(  # the ids from the row: a pruned submission has neither
            notice=NoticeKind.UPDATE_REFUSED, dossier_code=dossier["code"],
            submission_id=dossier["submission_id"], desk_id=sender,
            procedure_code=dossier["procedure_code"], state=dossier["state"],
            agency_id=dossier["agency_id"], reason=reason, issued_at=now)
        return to_desk(self.topology, desk_notice, message_id)


def _too_large(out: Sequence[Outbound]) -> str | None:
    """Why messages applying an update would announce cannot be sent, or None: one over
    :data:`MAX_BROKER_BODY_BYTES` (the documents a chain's assignment gathers: the
    dossier's own, every supplement, every step's results) would be refused by RabbitMQ
    after the ledger had recorded the change, and go round until its delivery limit."""
    for o in out:
        if len(o.body) > MAX_BROKER_BODY_BYTES:
            return (f"{TOO_LARGE}: applied, it would send a {o.type} of {len(o.body):,} "
                    f"bytes, over the {MAX_BROKER_BODY_BYTES:,} casebroker sends: the "
                    "dossier's documents (its own, supplements, results) are too many; "
                    "send fewer, or combine them")
    return None


def _status_event(dossier: _Dossier, status: AgencyStatus) -> Event:
    """What an agency's status does to the dossier: ``resolved`` before the chain's last
    step hands it on."""
    event = STATUS_EVENTS[status]
    if event == Event.RESOLVE and dossier["step"] < len(dossier["steps"]):
        return Event.HAND_OFF
    return event


def _said(msg: Update) -> str:
    """An update as its sender wrote it: the agency's status, or the desk event's kind."""
    if isinstance(msg, DossierStatus):
        return f"status {msg.status.value}"
    if isinstance(msg, DossierReturned):
        return "returned"
    return "supplemented" if isinstance(msg, DossierSupplemented) else "withdrawn"


def _not_allowed(dossier: _Dossier, msg: Update) -> str:
    """Why the lifecycle table refuses an update, in the sender's words, with what its
    sender may send now (integrators do not see the table's internal events)."""
    state = State(dossier["state"])
    text = f"{_said(msg)} is not allowed: dossier is {state.name.lower()} ({int(state)})"
    if isinstance(msg, DossierStatus):
        allowed = [s.value for s in AgencyStatus
                   if (state, _status_event(dossier, s)) in TRANSITIONS]
        return f"{text}; allowed now: {', '.join(allowed) or 'none'}"
    return text


def _stranger(dossier: _Dossier, msg: Update) -> str | None:
    """Why the sender has no part in the dossier at all (None: it has): never one of its
    agencies (the agencies of its steps reached so far: a later step's has no part in it
    yet), or neither its intake nor its return desk. Such an update is dead-lettered
    and not answered as a party's is: that answer would tell a stranger the dossier's
    state, agency, procedure and submission id, and codes are sequential, so any desk
    could read them all. The sender is told only what it would be told of a code the
    ledger does not have (:meth:`StatusRouter._not_yours`)."""
    return _no_part(dossier, _sender(msg), isinstance(msg, DossierStatus))


def _gathered(dossier: _Dossier) -> list[Document]:
    """What the chain's next agency gets beside the dossier's own documents: the
    supplements the citizen brought and every earlier step's results (this update's
    too, once :meth:`StatusRouter._effects` has added them)."""
    flags = dossier["flags"]
    return [Document(**d) for d in flags.get(SUPPLEMENTS, []) + flags.get(RESULTS, [])]


def _no_part(dossier: _Dossier, sender: str, is_agency: bool) -> str | None:
    """Why ``sender`` (an agency, or a desk) has no part in the dossier (None: it has):
    see :func:`_stranger`."""
    if is_agency:
        # the agencies of the steps reached so far: a later step's agency has had nothing
        # of the dossier yet (and may never have: withdrawn, refused, stopped before it)
        reached = dossier["steps"][:max(dossier["step"], 1)]
        if all(step["agency_id"] != sender for step in reached):
            return f"agency {shown_id(sender)} is not an agency of this dossier"
        return None
    if sender not in (dossier["intake_desk_id"], dossier["return_desk_id"]):
        return (f"desk {shown_id(sender)} is neither this dossier's intake nor its "
                "return desk")
    return None


#: what the sender of an update dead-lettered unread is told, after the reason and detail
_UNREAD_FOR_SENDER = "this one changed nothing: correct it and send it again"


def _as_kept(copy: Any, submission_id: str) -> Any:
    """A triage copy's body as a closure at intake keeps it (``refusals.submission``):
    the dossier, or, erased by `ledger prune`, a stub with the digest of its values (what
    the router compares a copy sent again with; None, from a prune before stubs kept it:
    then any copy counts as the same dossier)."""
    if not is_pruned(copy):
        return copy
    return pruned_stub(datetime.fromisoformat(copy[PRUNED_KEY]), copy.get(VALUES_DIGEST),
                       submission_id=submission_id)


def _sender(msg: Update) -> str:
    return msg.agency_id if isinstance(msg, DossierStatus) else msg.desk_id


def _detail(msg: Update) -> dict[str, Any]:
    """What the process-control sheet keeps of an update (no personal data)."""
    detail: dict[str, Any] = {"kind": type(msg).__name__}
    if isinstance(msg, DossierStatus):
        detail.update(status=msg.status.value, reason=msg.reason,
                      documents=[d.name for d in msg.documents],
                      requested_documents=msg.requested_documents, amount_vnd=msg.amount_vnd)
    elif isinstance(msg, DossierReturned):
        detail.update(satisfaction=msg.satisfaction)
    elif isinstance(msg, DossierSupplemented):
        detail.update(documents=[d.name for d in msg.documents])
    elif isinstance(msg, DossierWithdrawn):
        detail.update(reason=msg.reason)
    return detail
