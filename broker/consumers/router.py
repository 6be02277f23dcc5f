"""ROUTER: a batch of submitted dossiers in, assignments and receipts out, one commit.

For each delivery, in order: already processed (inbox) → re-publish what it published;
not a valid ``dossier.submitted`` → dead letter; a submission id already taken → the
same dossier again gets its first notice again, a different one is dead-lettered; not
routable → triage; not open for boundary-free receipt here → refused (state 3) with a
notice to the desk; otherwise → received (state 2), ``dossier.assigned`` to the first
agency and a receipt ``desk.notice`` to the intake desk.

A triaged dossier, and one dead-lettered for a taken submission id, gets its desk a
``held`` notice (no dossier code): the desk knows it was not received, and why. One
that no rule will route may be refused from triage by an operator (``casebroker
dead-letters refuse``): its submission id is then taken by that refusal, as by a dossier.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from pydantic import ValidationError

from broker.amqp import REPLAY_OF_HEADER, Delivery
from broker.consumers.common import (
    Consumer,
    kept_id,
    readable_fields,
    to_agency,
    to_desk,
    triage,
    unread_sender,
    withdraw_at_intake,
)
from broker.envelope import Outbound
from broker.errors import DecodeError, RoutingError
from broker.ledger import WITHDRAWN_EARLY, Batch, RawJSON
from broker.lifecycle import Event, State, apply
from broker.messages import (
    DeskNotice,
    DossierAssigned,
    DossierSubmitted,
    NoticeKind,
    body_fingerprint,
    decode,
    shown_id,
)
from broker.rules.engine import Decision, Engine
from broker.tables import PROCESSING_UNIT, is_pruned

log = logging.getLogger(__name__)
ACCEPTED_KINDS = frozenset({"dossier.submitted"})


@dataclass(slots=True)
class _Routed:
    mid: str
    body: bytes
    dossier: DossierSubmitted
    decision: Decision
    code: str = ""
    published: list[Outbound] = field(default_factory=list)


class Router(Consumer):
    """The intake consumer: validates, routes, numbers, records and announces dossiers."""

    source = "intake"
    accepted_kinds = ACCEPTED_KINDS

    def sender_of(self, message: Any) -> str:
        return str(message.desk_id)

    def fingerprint_of(self, message: Any, body: bytes) -> bytes:
        # the body's bytes: a fifth of the time of the values' fingerprint, serialized
        # (1.3 against 6-9 µs a dossier here), and as good for the router, which judges
        # any changed copy by its submission id: one serialized another way only costs
        # its desk a receipt sent again
        return body_fingerprint(body)

    def judges_changed_copy(self, before: str | None) -> bool:
        # always: a dossier is known by its submission id, which the changed copy is
        # checked against like any submission (the same dossier gets its first notice
        # again, a different one under a taken id is dead-lettered); one whose first copy
        # opened no dossier (triaged, dead-lettered), corrected, is decided afresh
        return True

    def handle(self, deliveries: Sequence[Delivery]) -> list[Outbound]:
        """Process one batch in one transaction; return every message to publish."""
        engine = self.engine()  # one catalog version for the whole batch
        now = self.clock()
        with self._batch() as batch:
            screened = self.screen(batch, deliveries, now)
            out = screened.out
            out += self._route(batch, engine, screened.fresh, now)  # type: ignore[arg-type]
        return out

    def _route(self, batch: Batch, engine: Engine,
               fresh: list[tuple[str, Delivery, DossierSubmitted]],
               now: datetime) -> list[Outbound]:
        out: list[Outbound] = []
        existing = batch.existing_submissions((str(m.submission_id) for _, _, m in fresh),
                                              with_early=True)
        if WITHDRAWN_EARLY in existing.values():
            fresh, closed = self._withdrawn_early(batch, fresh, existing, now)
            out += closed
        routed: list[_Routed] = []
        first: dict[str, _Routed] = {}  # submission id → its dossier routed in this batch
        again: list[tuple[str, Delivery, DossierSubmitted]] = []
        arrived = self._first_arrivals(batch, fresh)
        for mid, delivery, msg in fresh:
            sid = str(msg.submission_id)
            if sid in existing or sid in first:
                again.append((mid, delivery, msg))
                continue
            try:
                at = arrived[mid][0] if mid in arrived else now
                decision = engine.decide(msg, engine.received_at(msg, at))
            except RoutingError as e:
                sent = [triage(self.topology, self.source, delivery, e.reason, e.detail,
                               self.screen.trusted),
                        *self._held(engine, mid, msg, f"{e.reason}: {e.detail}", now)]
                batch.record(mid, self.source, f"triaged:{e.reason}", None, sent, now)
                # for a withdrawal by its submission id while it waits (status router)
                batch.add_held({"submission_id": sid, "message_id": mid,
                                "desk_id": msg.desk_id, "procedure_code": msg.procedure_code,
                                "held_at": now})
                out += sent
                self._count("triaged", e.reason)
                continue  # no dossier: a later copy, corrected or not, is decided afresh
            first[sid] = r = _Routed(mid, delivery.body, msg, decision)
            routed.append(r)
        self._number(batch, engine, routed)
        for r in routed:
            r.published = self._publish_for(r, now)
            self._record(batch, r, r.published, now)
            out += r.published
        if again:
            held_before = {mid for mid, (_, triaged) in arrived.items() if triaged}
            out += self._again(batch, engine, again, existing, first, held_before, now)
        return out

    @staticmethod
    def _first_arrivals(batch: Batch, fresh: list[tuple[str, Delivery, DossierSubmitted]]
                        ) -> dict[str, tuple[datetime, bool]]:
        """Replays (``casebroker dead-letters replay``) of dossiers triaged or
        dead-lettered before: when the broker first had each, and whether it was triaged.
        The time dates it as its first arrival would have, instead of the replay's time:
        a dossier left in triage for longer than the catalog's ``max_backdate_days``
        (waiting for a catalog fix) was not held back by its desk, and is not triaged
        again as submitted long ago.
        Only a delivery set aside with this same submission counts, so a header naming
        another one's delivery changes nothing."""
        replays: dict[str, tuple[str, str]] = {}
        for mid, delivery, msg in fresh:
            original = (delivery.properties.headers or {}).get(REPLAY_OF_HEADER)
            if isinstance(original, bytes):
                original = original.decode("utf-8", "replace")
            if isinstance(original, str) and original:
                replays[mid] = (kept_id(original), str(msg.submission_id))
        if not replays:
            return {}
        firsts = batch.first_arrivals(replays.values())
        return {mid: firsts[key] for mid, key in replays.items() if key in firsts}

    def _withdrawn_early(self, batch: Batch,
                         fresh: list[tuple[str, Delivery, DossierSubmitted]],
                         existing: dict[str, str | None], now: datetime
                         ) -> tuple[list[tuple[str, Delivery, DossierSubmitted]],
                                    list[Outbound]]:
        """Submissions their intake desk withdrew (by submission id) before the router
        had them: each is closed at intake as withdrawn, as if it had been held (a
        ``refusals`` row in state 7; its desk told ``withdrawn``, no code), and opens no
        dossier; later copies get that notice (``existing`` now says closed). A
        withdrawal from another desk is void, and takes nothing from the submission's own
        desk's: without one, the submission is routed. Returns the deliveries left to
        route, and what to publish."""
        early = batch.early_withdrawals(
            s for s, code in existing.items() if code == WITHDRAWN_EARLY)
        left: list[tuple[str, Delivery, DossierSubmitted]] = []
        out: list[Outbound] = []
        for mid, delivery, msg in fresh:
            sid = str(msg.submission_id)
            by_desk = early.pop(sid, None)
            if by_desk is None:  # no early withdrawal, or a copy of one done above
                left.append((mid, delivery, msg))
                continue
            batch.drop_early_withdrawals(sid)
            withdrawal = by_desk.pop(msg.desk_id, None)
            for stranger in by_desk:
                log.warning("a withdrawal by submission id from desk %s before its "
                            "submission came was void: the submission is desk %s's",
                            shown_id(stranger), shown_id(msg.desk_id))
            if withdrawal is None:
                del existing[sid]
                left.append((mid, delivery, msg))
                continue
            _, notice = withdraw_at_intake(
                batch, self.topology, submission_id=msg.submission_id, desk_id=msg.desk_id,
                procedure_code=msg.procedure_code, reason=withdrawal["reason"],
                submission=RawJSON(delivery.body.decode()), closed_id=mid, now=now)
            existing[sid] = None  # closed at intake: a copy later in the batch is a repeat
            batch.record(mid, self.source, "withdrawn_early", None, [notice], now)
            self._count("withdrawn_early", "")
            out.append(notice)
        return left, out

    def answer_unread(self, batch: Batch, key: str, delivery: Delivery, reason: str,
                      detail: str, now: datetime) -> list[Outbound]:
        """A ``held`` notice to the desk of a submission dead-lettered unread (outside the
        contract, or not sent by the desk it names), when its body still says which desk,
        submission and procedure it is: a desk integrating without the SDK (which checks
        first) waited for a receipt that never came. The desk is the one the body names,
        or, with per-party users, the sender's own (never another desk: one desk's bug
        is not told to another). None when the body says too little to be matched."""
        said = readable_fields(delivery.body)
        desk = unread_sender(self, delivery, said.get("desk_id"))
        if not isinstance(desk, str) or desk not in self.engine().desks:
            return []
        try:
            notice = DeskNotice(
                notice=NoticeKind.HELD, dossier_code=None, desk_id=desk,
                submission_id=said.get("submission_id"),
                procedure_code=said.get("procedure_code"), state=State.SUBMITTED,
                reason=f"{reason}: {detail}: {_UNREAD_FOR_DESK}", issued_at=now)
        except ValidationError:
            return []
        return [to_desk(self.topology, notice, kept_id(f"{key}:held"))]

    def _held(self, engine: Engine, mid: str, msg: DossierSubmitted, reason: str,
              now: datetime) -> list[Outbound]:
        """A ``held`` notice to the desk of a valid dossier that was not received (no
        dossier code), so that it does not wait for a receipt that will not come: what
        happened, and what it or an operator must do. None for a desk the catalog does
        not know: it has no queue to be told in."""
        if msg.desk_id not in engine.desks:
            return []
        notice = DeskNotice(notice=NoticeKind.HELD, dossier_code=None,
                            submission_id=msg.submission_id, desk_id=msg.desk_id,
                            procedure_code=msg.procedure_code, state=State.SUBMITTED,
                            reason=reason, issued_at=now)
        # the inbox id may take all the outbox's column holds: the suffix must not overflow
        return [to_desk(self.topology, notice, kept_id(f"{mid}:held"))]

    def _again(self, batch: Batch, engine: Engine,
               again: list[tuple[str, Delivery, DossierSubmitted]],
               existing: dict[str, str | None], first: dict[str, _Routed],
               held_before: set[str], now: datetime) -> list[Outbound]:
        """Submissions whose id is already taken, by a dossier in the ledger or earlier in
        this batch, or by a submission an operator refused at intake. The same dossier sent
        again (a desk retrying under a new message id) gets the notice its first copy got
        (receipt or refusal), under the same message id, so a desk that lost it has it
        again and one that did not drops the copy. A different dossier
        under a taken id is dead-lettered: the desk reused a key it must not reuse, and
        routing it as a duplicate would lose it without a word. A replayed copy that was
        held in triage under the id (``held_before``) is no other dossier, whatever it
        carries, when its desk sent the one under the id since: with no dossier opened,
        the id stayed free for a corrected copy, which has since been routed (or the
        submission closed at intake), and the stale copy gets that one's notice. Another
        desk's dossier under the id is another citizen's: the copy is dead-lettered as
        reused, and its desk told to send it under a new id."""
        out: list[Outbound] = []
        sids = [str(m.submission_id) for _, _, m in again]
        openings = batch.openings(code for s in sids if (code := existing.get(s)))
        refusals = batch.refusals((s for s in sids if s in existing and existing[s] is None),
                                  self.topology.desk_exchange)
        for mid, delivery, msg in again:
            sid = str(msg.submission_id)
            stored: Any
            if sid in refusals:  # refused at intake by an operator: no dossier, no code
                code, (stored, notice) = None, refusals[sid]
                published = [notice]
            elif sid in existing:
                code = existing[sid]
                stored, published = openings.get(str(code), (None, []))
            else:  # its dossier was opened earlier in this batch
                r = first[sid]
                code, stored, published = r.code, r.dossier, r.published
            differs = _differing_from_stored(stored, msg)
            # its own desk's stale copy, not another desk's dossier that took a free id:
            # the notice it would get again went to this copy's desk
            superseded = bool(differs) and mid in held_before and any(
                o.exchange == self.topology.desk_exchange and o.routing_key == msg.desk_id
                for o in published)
            if differs and not superseded:
                # the desk is told it was not received, never which dossier has the id
                held = self._held(engine, mid, msg, _REUSED_FOR_DESK, now)
                used_by = (f"dossier {code}" if code else "a submission closed at intake "
                           "(refused by an operator or withdrawn while held)")
                out.append(self.screen.dead(
                    batch, mid, delivery, "submission_id_reused",
                    f"submission id already used by {used_by}; this one differs in: "
                    f"{', '.join(differs)}", now, also=held))
                out += held
                continue
            notices = [o for o in published if o.exchange == self.topology.desk_exchange]
            batch.record(mid, self.source, "duplicate", code, notices, now)
            self._count("duplicate", "superseded" if superseded else "submission_id")
            out += notices
        return out

    def _number(self, batch: Batch, engine: Engine, routed: list[_Routed]) -> None:
        """Give each dossier its code: competent unit, receipt day, daily sequence."""
        tz = engine.calendar.tz
        keys = [(r.decision.agency_id, r.decision.received_at.astimezone(tz).strftime("%y%m%d"))
                for r in routed]
        counts: dict[tuple[str, str], int] = {}
        for key in keys:
            counts[key] = counts.get(key, 0) + 1
        next_number = batch.allocate_codes(counts)
        for r, key in zip(routed, keys, strict=True):
            r.code = f"{key[0]}-{key[1]}-{next_number[key]:04d}"
            next_number[key] += 1

    def _publish_for(self, r: _Routed, now: datetime) -> list[Outbound]:
        msg, dec, code = r.dossier, r.decision, r.code
        # a receipt as Form 01 has it: who, how, what was received, where it is collected
        form = {} if dec.refusal else {
            "applicant": msg.applicant, "channel": msg.channel,
            "return_desk_id": msg.collect_at, "documents": msg.documents}
        # plain construction: pydantic's model_construct is slower here (it inspects
        # signatures on each call) than validating already-validated values in Rust
        notice = DeskNotice(
            notice=NoticeKind.REFUSED if dec.refusal else NoticeKind.RECEIPT,
            dossier_code=code, submission_id=msg.submission_id, desk_id=msg.desk_id,
            procedure_code=msg.procedure_code,
            state=State.REFUSED if dec.refusal else State.RECEIVED,
            agency_id=dec.agency_id, received_at=dec.received_at,
            due_at=None if dec.refusal else dec.due_at, reason=dec.refusal, issued_at=now,
            **form)
        receipt = to_desk(self.topology, notice, f"{code}:{notice.notice.value}")
        if dec.refusal:
            return [receipt]
        assigned = DossierAssigned(
            dossier_code=code, submission_id=msg.submission_id,
            procedure_code=msg.procedure_code, agency_id=dec.agency_id, step=1,
            steps=len(dec.steps), desk_id=msg.desk_id, return_desk_id=msg.collect_at,
            channel=msg.channel, received_at=dec.received_at, due_at=dec.due_at,
            step_due_at=dec.first_step_due_at, applicant=msg.applicant, subject=msg.subject,
            documents=msg.documents, attributes=msg.attributes, rule_id=dec.rule_id,
            catalog_hash=dec.catalog_hash)
        return [to_agency(self.topology, assigned, f"{code}:assigned:1"), receipt]

    def _record(self, batch: Batch, r: _Routed, published: list[Outbound],
                now: datetime) -> None:
        msg, dec = r.dossier, r.decision
        state = apply(State.SUBMITTED, Event.REFUSE if dec.refusal else Event.RECEIVE)
        batch.add_dossier({
            "code": r.code, "submission_id": str(msg.submission_id),
            "procedure_code": msg.procedure_code, "intake_desk_id": msg.desk_id,
            "return_desk_id": msg.collect_at, "channel": msg.channel.value,
            "state": int(state), "agency_id": dec.agency_id, "step": 1,
            "steps": [{"agency_id": s.agency_id, "amount": s.amount, "unit": s.unit.value}
                      for s in dec.steps],
            "rule_id": dec.rule_id, "catalog_hash": dec.catalog_hash,
            "boundary_free": dec.boundary_free, "received_at": dec.received_at,
            "due_at": dec.due_at, "step_due_at": dec.first_step_due_at,
            "finished_at": now if dec.refusal else None, "seq": 1,
            # the procedure's unit: a pause counts its time so, whatever a catalog
            # reloaded since says (a review)
            "flags": {PROCESSING_UNIT: dec.unit.value},
            "submission": RawJSON(r.body.decode()), "updated_at": now,
        })
        detail = {"rule_id": dec.rule_id, "catalog_hash": dec.catalog_hash,
                  "boundary_free": dec.boundary_free, "reason": dec.refusal}
        if not dec.refusal and dec.received_at != now:
            detail["recorded_at"] = now.isoformat()
        batch.add_event({
            "dossier_code": r.code, "seq": 1, "kind": "refused" if dec.refusal else "received",
            "state_from": int(State.SUBMITTED), "state_to": int(state), "actor": msg.desk_id,
            "from_agency": None, "to_agency": dec.agency_id, "message_id": r.mid,
            "detail": detail,
            # the sheet dates a receipt when its desk received the dossier (a backdated
            # one's first line came after the later ones: a review), and says when it was
            # recorded, as an update's says
            "at": now if dec.refusal else dec.received_at,
        })
        outcome = "refused" if dec.refusal else "routed"
        batch.record(r.mid, self.source, outcome, r.code, published, now)
        self._count(outcome, "")


def stored_submission(stored: Any) -> DossierSubmitted | None:
    """The submission a dossier was opened with, from the ledger's JSON column; None if
    it no longer passes the contract (stored under an older one)."""
    if stored is None:
        return None
    try:
        msg = decode(json.dumps(stored).encode(), expected=ACCEPTED_KINDS)
    except DecodeError:
        return None
    return msg if isinstance(msg, DossierSubmitted) else None


def _differing_from_stored(stored: Any, again: DossierSubmitted) -> list[str]:
    """:func:`_differing_fields` of a submission sent again and the first one as the
    ledger has it: validated, as JSON, or pruned (`ledger prune`), when only a digest
    of its values is left to compare with (:func:`submission_digest`)."""
    if isinstance(stored, DossierSubmitted):
        return _differing_fields(stored, again)
    if is_pruned(stored):
        digest = stored.get("sha256")
        if digest is None or digest == submission_digest(again):
            return []
        return ["its values (the first copy's were erased by `ledger prune`: only their "
                "digest was kept, and it differs)"]
    return _differing_fields(stored_submission(stored), again)


def _canonical(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, Enum):
        return value.value
    return str(value)  # a UUID, a date, a Decimal


def submission_digest(msg: DossierSubmitted) -> str:
    """A digest of a submission's values as :func:`_differing_fields` compares them
    (``submitted_at`` left out, times in UTC, keys sorted): what `ledger prune` keeps of
    a submission it erases, so that a copy sent again is still told from another
    dossier under the same id."""
    values = msg.model_dump(by_alias=True, exclude=set(_KEPT_FROM_FIRST))
    text = json.dumps(values, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                      default=_canonical)
    return hashlib.sha256(text.encode()).hexdigest()


#: the reason a desk is given for a dossier dead-lettered as submission_id_reused
_REUSED_FOR_DESK = ("submission_id_reused: its submission id was given to another dossier "
                    "before; this one was not received: send it under a new submission id")

#: what a desk is told of a submission dead-lettered unread, after the reason and detail
_UNREAD_FOR_DESK = ("this one was not received: correct it and send it again (under the "
                    "same submission id if you wish; no dossier was opened)")


#: a retry may stamp its own time: the dossier is the same, and keeps its first one. (Under
#: the same message id it is still a changed copy, judged again: submitted_at may decide
#: routing, e.g. for a dossier triaged as submitted long ago and dated anew)
_KEPT_FROM_FIRST = frozenset({"submitted_at"})


def _differing_fields(original: DossierSubmitted | None, again: DossierSubmitted) -> list[str]:
    """The fields (by contract name, never their values: they hold personal data) in
    which a submission differs from the one first sent under its id. Compared as
    validated values, so key order, spacing and a timestamp's offset do not count, nor
    does ``submitted_at`` (a desk retrying may stamp the time of its retry)."""
    if original is None:
        return []
    return [info.alias or name for name, info in DossierSubmitted.model_fields.items()
            if name not in _KEPT_FROM_FIRST
            and getattr(original, name) != getattr(again, name)]
