"""The status router around a supplement's return to the state its request found (2 or
4), and who counts as a party of a chain dossier: handlers called directly
on a real ledger (SQLite and PostgreSQL), on the test's clock."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update

from broker.amqp import DEAD_SINCE_HEADER, DETAIL_HEADER, REASON_HEADER
from broker.consumers.router import Router
from broker.consumers.status import StatusRouter
from broker.envelope import Outbound
from broker.ledger import Ledger, dossiers
from broker.lifecycle import LEGAL_TIMEZONE, timeliness
from broker.messages import (
    Document,
    DossierStatus,
    DossierSupplemented,
    DossierWithdrawn,
    encode,
)
from broker.rules.catalog import load_catalog
from broker.rules.engine import Engine
from broker.topology import Topology
from tests.conftest import MINI_CATALOG
from tests.helpers import dossier, intake_delivery, said, status_delivery
from tests.integration.conftest import FakeClock, vn

pytestmark = pytest.mark.integration


class Handlers:
    """A router and a status router on the mini catalog and the test's clock."""

    def __init__(self, ledger: Ledger, clock: FakeClock) -> None:
        engine = Engine(load_catalog(MINI_CATALOG))
        t = Topology("t")
        self.ledger = ledger
        self.router = Router(lambda: engine, ledger, t, clock=clock)
        self.status = StatusRouter(lambda: engine, ledger, t, clock=clock)
        self.tag = 0

    def route(self, **kw: Any) -> str:
        self.tag += 1
        out = self.router.handle([intake_delivery(
            self.tag, encode(dossier(**kw)), f"submit:{uuid.uuid4()}")])
        return str(json.loads(out[0].body)["dossier_code"])

    def handle(self, *messages: Any) -> list[Outbound]:
        """The messages in one batch."""
        deliveries = []
        for m in messages:
            self.tag += 1
            deliveries.append(status_delivery(self.tag, m))
        return self.status.handle(deliveries)

    def row(self, code: str) -> dict[str, Any]:
        row = self.ledger.dossier(code)
        assert row is not None
        return row


@pytest.fixture
def h(ledger: Ledger, clock: FakeClock) -> Handlers:
    return Handlers(ledger, clock)


def status(code: str, agency: str, state: str, **kw: Any) -> DossierStatus:
    return DossierStatus(update_id=uuid.uuid4(), dossier_code=code, agency_id=agency,
                         status=state, sent_at=datetime.now(UTC), **said(state, **kw))


def sent(code: str, agency: str, state: str, at: str) -> DossierStatus:
    """:func:`status`, sent at ``at`` in Vietnam by its agency's clock."""
    return status(code, agency, state).model_copy(update={"sent_at": vn(at)})


def doc(name: str) -> Document:
    return Document(name=name, uri=f"s3://docs/{name}", sha256="b" * 64, size=10,
                    media_type="application/pdf")


def supplemented(code: str, desk: str = "T.MC.B") -> DossierSupplemented:
    return DossierSupplemented(event_id=uuid.uuid4(), dossier_code=code, desk_id=desk,
                               documents=[doc("to-khai.pdf")], sent_at=datetime.now(UTC))


def withdrawn(code: str, desk: str = "T.MC.B") -> DossierWithdrawn:
    return DossierWithdrawn(event_id=uuid.uuid4(), dossier_code=code, desk_id=desk,
                            reason="không cần nữa", sent_at=datetime.now(UTC))


def told(out: list[Outbound]) -> list[tuple[str, str, str | None, int | None]]:
    """(routing key, message id, notice, state) of each message published; a dead
    letter's notice is its reason."""
    said_ = []
    for o in out:
        if o.headers and REASON_HEADER in o.headers:
            said_.append((o.routing_key, o.message_id, f"dead:{o.headers[REASON_HEADER]}",
                          None))
            continue
        body = json.loads(o.body)
        said_.append((o.routing_key, o.message_id, body.get("notice"), body.get("state")))
    return said_


def test_a_later_chain_step_agency_is_a_stranger_until_the_dossier_reaches_it(
        h: Handlers, clock: FakeClock) -> None:
    """A chain's third agency, for a dossier still at its first step, was answered as a
    party (update_refused with the dossier's state: "not the dossier's current agency"),
    so an agency could learn by guessing codes of dossiers it may never get (withdrawn,
    refused or stopped before its step). It is told only what a code the ledger does not
    have would tell it, and its update is set aside, until the dossier reaches it."""
    code = h.route(procedure_code="1.000001", return_desk_id="T.CENTRE")
    assert (h.row(code)["step"], h.row(code)["agency_id"]) == (1, "T.UBND.A")
    before = h.row(code)
    out = h.handle(status(code, "T.BHXH", "processing"))
    assert [(k, n, s) for k, _, n, s in told(out)] == [
        ("status", "dead:not_a_party", None), ("T.BHXH", "update_refused", None)]
    assert out[0].headers is not None and out[0].headers[DETAIL_HEADER] == (
        "agency T.BHXH is not an agency of this dossier")
    answer = json.loads(out[1].body)
    assert "state" not in answer and answer["reason"].startswith(
        f"not_yours: no dossier {code} was ever assigned to T.BHXH")
    assert h.row(code) == before

    # step 2 at T.CA: T.BHXH still has no part; the first agency has (it had the dossier)
    clock.set("2026-11-25 10:00")
    h.handle(status(code, "T.UBND.A", "resolved"))
    assert (h.row(code)["step"], h.row(code)["agency_id"]) == (2, "T.CA")
    assert [n for _, _, n, _ in told(h.handle(status(code, "T.BHXH", "accepted")))] == [
        "dead:not_a_party", "update_refused"]
    earlier = json.loads(h.handle(status(code, "T.UBND.A", "processing"))[0].body)
    assert (earlier["notice"], earlier["state"], earlier["reason"]) == (
        "update_refused", 4, "T.UBND.A is not the dossier's current agency")

    # step 3: the dossier reached T.BHXH, its updates apply
    h.handle(status(code, "T.CA", "resolved"))
    assert h.row(code)["agency_id"] == "T.BHXH"
    h.handle(status(code, "T.BHXH", "resolved", documents=[doc("bhyt.pdf")]))
    assert h.row(code)["state"] == 9
    assert h.ledger.count_inbox_outcomes() == {
        "routed": 1, "applied": 3, "refused_update": 1, "dead:not_a_party": 2}


def test_a_request_on_receipt_and_its_supplement_in_one_batch_come_back_to_received(
        h: Handlers, clock: FakeClock) -> None:
    """2 → 5 → 2 within one batch, as in two: the agency and both desks are told state 2,
    and the dossier may still be refused (2 → 3)."""
    code = h.route(procedure_code="1.004227", desk_id="T.MC.B", return_desk_id="T.POST")
    out = h.handle(status(code, "T.SO.TP", "supplement_requested"), supplemented(code))
    assert [(k, n, s) for k, _, n, s in told(out)] == [
        ("T.POST", "supplement_requested", 5), ("T.SO.TP", "supplemented", 2),
        ("T.POST", "status_changed", 2), ("T.MC.B", "status_changed", 2)]
    row = h.row(code)
    assert (row["state"], row["paused_at"]) == (2, None)
    assert "paused_from" not in row["flags"]
    out = h.handle(status(code, "T.SO.TP", "rejected", reason="không đủ điều kiện"))
    assert [(k, n, s) for k, _, n, s in told(out)] == [("T.POST", "refused", 3)]
    assert [(e["kind"], e["state_from"], e["state_to"]) for e in h.ledger.history(code)] == [
        ("received", 1, 2), ("request_supplement", 2, 5), ("supplement", 5, 2),
        ("refuse", 2, 3)]


def test_a_chain_step_asked_on_receipt_resumes_received_then_hands_on_processing(
        h: Handlers, clock: FakeClock) -> None:
    """The first step's agency asks on receipt (2 → 5 → 2) and hands on from 2; the next
    agency's request finds 4 and its supplement brings it back to 4."""
    code = h.route(procedure_code="1.000001", return_desk_id="T.CENTRE")
    clock.set("2026-11-25 10:00")
    h.handle(status(code, "T.UBND.A", "supplement_requested"))
    clock.set("2026-11-25 11:00")
    back = told(h.handle(supplemented(code)))
    assert [(k, n, s) for k, _, n, s in back] == [
        ("T.UBND.A", "supplemented", 2), ("T.CENTRE", "status_changed", 2),
        ("T.MC.B", "status_changed", 2)]
    h.handle(status(code, "T.UBND.A", "resolved", documents=[doc("khai-sinh.pdf")]))
    row = h.row(code)
    assert (row["state"], row["step"], row["agency_id"]) == (4, 2, "T.CA")
    h.handle(status(code, "T.CA", "supplement_requested"))
    assert h.row(code)["flags"]["paused_from"] == 4
    out = told(h.handle(supplemented(code, desk="T.CENTRE")))
    assert [(k, n, s) for k, _, n, s in out] == [
        ("T.CA", "supplemented", 4), ("T.CENTRE", "status_changed", 4)]
    assert [e["state_to"] for e in h.ledger.history(code)] == [2, 5, 2, 4, 5, 4]


@pytest.mark.parametrize("ending", ["withdrawn", "stopped"])
def test_a_dossier_ended_while_paused_refuses_the_supplement_and_its_replays(
        h: Handlers, clock: FakeClock, ending: str) -> None:
    """Withdrawn or stopped while waiting for a supplement asked on receipt: the
    supplement that comes after changes nothing, nor does a redelivery of the request."""
    code = h.route(procedure_code="1.004227")
    clock.set("2026-11-26 09:00")
    request = status(code, "T.SO.TP", "supplement_requested")
    first = h.status.handle([status_delivery(900, request)])
    end = (withdrawn(code) if ending == "withdrawn"
           else status(code, "T.SO.TP", "stopped", reason="quá hạn bổ sung"))
    h.handle(end)
    row = h.row(code)
    assert row["state"] == (7 if ending == "withdrawn" else 8)
    # the request again (its ack lost): its very messages again, nothing applied
    assert h.status.handle([status_delivery(900, request)]) == first
    refused = h.handle(supplemented(code))
    assert [(n, s) for _, _, n, s in told(refused)] == [("update_refused", row["state"])]
    assert json.loads(refused[0].body)["reason"] == (
        f"supplemented is not allowed: dossier is {ending} ({row['state']})")
    assert h.row(code) == row
    assert row["finished_at"] == vn("2026-11-26 09:00")


def _bulky(n: int, tag: str) -> list[Document]:
    """``n`` documents of about 2.8 KB each (a long, non-ASCII address)."""
    return [Document(name=f"{tag}-{i}.pdf", uri="s3://hồ-sơ/" + "ệ" * 900, sha256="c" * 64,
                     size=1, media_type="application/pdf") for i in range(n)]


def test_an_update_whose_messages_would_be_too_large_to_send_is_refused_unapplied(
        h: Handlers) -> None:
    """A chain's assignment carries every document the dossier gathered. Past RabbitMQ's
    limit (1 MiB, as docker-compose.yml sets it), the channel was closed after the ledger
    had recorded the hand-off: the update went round to its delivery limit, the status
    queue stalled behind it, and the next agency never got the dossier."""
    code = h.route(procedure_code="1.000001",
                   documents=[d.model_dump() for d in _bulky(50, "nop")])
    for n in range(5):  # five supplements of 50 documents: each message well within limits
        h.handle(status(code, "T.UBND.A", "supplement_requested"))
        h.handle(DossierSupplemented(event_id=uuid.uuid4(), dossier_code=code,
                                     desk_id="T.MC.B", documents=_bulky(50, f"bs{n}"),
                                     sent_at=datetime.now(UTC)))
    before, history = h.row(code), h.ledger.history(code)
    resolved = status(code, "T.UBND.A", "resolved", documents=_bulky(80, "kq"))
    assert len(encode(resolved)) < 256 * 1024
    out = h.handle(resolved)
    assert [(o.routing_key, json.loads(o.body)["notice"]) for o in out] == [
        ("T.UBND.A", "update_refused")]
    reason = json.loads(out[0].body)["reason"]
    assert reason.startswith("too_large: applied, it would send a dossier.assigned of ")
    assert "over the 1,048,576 casebroker sends" in reason
    assert h.row(code) == before and h.ledger.history(code) == history  # nothing applied

    out = h.handle(status(code, "T.UBND.A", "resolved"))  # the same result, fewer documents
    assigned = [o for o in out if o.type == "dossier.assigned"]
    assert [o.routing_key for o in assigned] == ["T.CA"]
    assert 1024 * 1024 * 0.75 < len(assigned[0].body) <= 1024 * 1024
    assert (h.row(code)["step"], h.row(code)["agency_id"]) == (2, "T.CA")


def test_a_dossier_received_under_looser_checks_still_moves(h: Handlers) -> None:
    """An applicant's name or id number of spaces passed the contract of the version
    before; validated afresh when the result was told or the chain handed on, it raised
    on every update, each dead-lettered as internal_error: the dossier could never end."""
    codes = [h.route(procedure_code=p) for p in ("1.001193", "1.000001")]
    with h.ledger.write() as conn:  # as the earlier version kept them
        for code in codes:
            kept = conn.execute(select(dossiers.c.submission)
                                .where(dossiers.c.code == code)).scalar_one()
            kept["applicant"].update(name="   ", id_number=" ")
            conn.execute(update(dossiers).where(dossiers.c.code == code)
                         .values(submission=kept))
    single, chain = codes
    ready = [json.loads(o.body) for o in h.handle(status(single, "T.UBND.A", "resolved"))
             if o.type == "desk.notice"]
    assert [(n["notice"], n["applicant"]["name"]) for n in ready] == [("result_ready", "   ")]
    out = h.handle(status(chain, "T.UBND.A", "resolved"))
    assert [o.routing_key for o in out if o.type == "dossier.assigned"] == ["T.CA"]
    assert (h.row(chain)["step"], h.row(chain)["agency_id"]) == (2, "T.CA")


def test_an_update_is_not_dated_before_the_lateness_already_told(
        h: Handlers, clock: FakeClock) -> None:
    """Once the watch told the agency and the citizen a dossier was late, a result dated
    before its due time (a late agency's clock, or its wish) erased the lateness: the
    report counted it early, after the apology. Dated no earlier than just after the due
    time, it still fell on the due day, which the report counts on time (found by a
    review): it is dated no earlier than the start of the next day."""
    code = h.route()  # due Thu 26 Nov 09:00
    with h.ledger.write() as conn:  # the watch's overdue round, as it leaves the row
        conn.execute(update(dossiers).where(dossiers.c.code == code).values(
            watch_level=2, seq=dossiers.c.seq + 1))
    clock.set("2026-12-10 10:00")
    h.handle(DossierStatus(update_id=uuid.uuid4(), dossier_code=code, agency_id="T.UBND.A",
                           status="resolved", sent_at=vn("2026-11-25 09:31")))
    row = h.row(code)
    assert row["finished_at"] == vn("2026-11-27 00:00")
    assert timeliness(row["finished_at"], row["due_at"], ZoneInfo(LEGAL_TIMEZONE)) == "late"


def test_a_supplement_asked_for_on_the_due_day_after_the_due_time_stops_the_clock_in_time(
        h: Handlers, clock: FakeClock) -> None:
    """Asked for after the due time but on the due day, when a result would still count
    on time, the pause did not count as in time: the watch told the citizen of lateness
    that night while the citizen owed the documents, the supplement moved the due date to
    a time already past, and the result that afternoon was dated the next midnight, after
    the clock, and counted late (found by a review)."""
    from broker.consumers.deadlines import DeadlineWatch, WatchSettings

    engine = Engine(load_catalog(MINI_CATALOG))
    watch = DeadlineWatch(lambda: engine, h.ledger, Topology("t"), WatchSettings(),
                          clock=clock)
    code = h.route()  # received Wed 25 Nov 09:00, due Thu 26 Nov 09:00
    clock.set("2026-11-26 10:00")
    h.handle(status(code, "T.UBND.A", "supplement_requested"))
    clock.set("2026-11-27 00:01")
    assert watch.flag() == []  # paused in time: its clock stands
    clock.set("2026-11-30 14:00")  # Mon: 18 working hours paused
    h.handle(supplemented(code))
    row = h.row(code)
    assert (row["due_at"], row["watch_level"]) == (vn("2026-11-30 11:00"), 0)
    clock.set("2026-11-30 15:00")
    out = h.handle(status(code, "T.UBND.A", "resolved"))
    assert [n for _, _, n, _ in told(out) if n == "overdue_apology"] == []
    row = h.row(code)
    assert row["finished_at"] == clock.now
    assert timeliness(row["finished_at"], row["due_at"], ZoneInfo(LEGAL_TIMEZONE)) == "on_time"


def test_an_update_is_never_dated_after_the_clock_whatever_its_floors() -> None:
    """Told late, a dossier whose due date a pause then moved to today has its floor (the
    end of that day) still ahead: the update is dated now, not then."""
    from broker.consumers.status import _Dossier, happened_at

    row = {"received_at": vn("2026-11-25 09:00"), "paused_at": None, "flags": {},
           "watch_level": 2, "step_watch_level": 2, "due_at": vn("2026-11-30 11:00"),
           "step_due_at": vn("2026-11-30 11:00")}
    now = vn("2026-11-30 15:00")
    msg = status("T.UBND.A-261125-0001", "T.UBND.A", "resolved")
    assert happened_at(_Dossier(row, 1), msg.model_copy(update={"sent_at": now}), now) == now


def test_an_update_is_not_dated_further_back_than_the_catalog_lets_a_desk_date_one() -> None:
    from broker.consumers.status import _Dossier, happened_at

    row = {"received_at": vn("2026-11-02 09:00"), "paused_at": None, "flags": {},
           "watch_level": 0, "step_watch_level": 0, "due_at": vn("2026-12-20 09:00"),
           "step_due_at": vn("2026-12-20 09:00")}
    msg = status("T.UBND.A-261102-0001", "T.UBND.A", "resolved")
    msg = msg.model_copy(update={"sent_at": vn("2026-11-03 09:00")})
    now = vn("2026-12-10 10:00")
    assert happened_at(_Dossier(row, 1), msg, now) == vn("2026-11-03 09:00")
    assert happened_at(_Dossier(row, 1), msg, now, timedelta(days=30)) == vn(
        "2026-11-10 10:00")


def test_a_supplement_that_would_make_the_next_hand_off_too_large_is_refused(
        h: Handlers) -> None:
    """Each supplement's own notice is small; the assignment that gathers them all was
    measured only when the agency resolved, which was then refused for good ("send
    fewer": the bulk was the citizen's). The supplement that would overflow it is
    refused instead, and the dossier goes on."""
    code = h.route(procedure_code="1.000001",
                   documents=[d.model_dump() for d in _bulky(50, "nop")])
    refused: list[str] = []
    for n in range(10):
        h.handle(status(code, "T.UBND.A", "supplement_requested"))
        out = h.handle(DossierSupplemented(event_id=uuid.uuid4(), dossier_code=code,
                                           desk_id="T.MC.B", documents=_bulky(50, f"bs{n}"),
                                           sent_at=datetime.now(UTC)))
        notices = [json.loads(o.body) for o in out]
        if notices[0]["notice"] == "update_refused":
            refused.append(notices[0]["reason"])
            break
    assert len(refused) == 1 and refused[0].startswith("too_large: applied, it would send "
                                                       "a dossier.assigned of ")
    assert h.row(code)["state"] == 5  # still waiting for a supplement it can take
    h.handle(DossierSupplemented(event_id=uuid.uuid4(), dossier_code=code, desk_id="T.MC.B",
                                 documents=[doc("to-khai.pdf")], sent_at=datetime.now(UTC)))
    out = h.handle(status(code, "T.UBND.A", "resolved"))
    assert [o.routing_key for o in out if o.type == "dossier.assigned"] == ["T.CA"]


def test_a_supplement_sent_before_the_request_now_waiting_is_stale(
        h: Handlers, clock: FakeClock) -> None:
    # across two routers, a supplement the desk sent before the agency's second request
    # was applied after it, and answered it with documents sent for nothing it asked
    # (found by a review); by its desk's sent_at it answers an earlier request
    code = h.route()  # received 09:00 in Vietnam, 02:00 UTC
    clock.set("2026-11-25 12:00")
    t0 = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)
    asked = status(code, "T.UBND.A", "supplement_requested")
    h.handle(asked.model_copy(update={"sent_at": t0}))
    first = supplemented(code).model_copy(update={"sent_at": t0 + timedelta(minutes=1)})
    early = supplemented(code).model_copy(update={"sent_at": t0 + timedelta(minutes=3)})
    h.handle(first)
    assert h.row(code)["state"] == 2
    h.handle(asked.model_copy(update={"update_id": uuid.uuid4(),
                                      "sent_at": t0 + timedelta(minutes=20)}))
    out = h.handle(early)
    assert [n for _, _, n, _ in told(out)] == ["update_refused"]
    reason = json.loads(out[0].body)["reason"]
    assert reason.startswith("stale: this supplement was sent at 2026-11-25T03:03:00+00:00, "
                             "before the supplement request now waiting "
                             "(2026-11-25T03:20:00+00:00)"), reason
    assert h.row(code)["state"] == 5  # still waiting for what it asked
    # two parties' clocks: one sent less than SENT_AT_AHEAD_MAX before the request may be
    # a desk's clock behind the agency's, and answers it (a second review)
    skewed = supplemented(code).model_copy(update={"sent_at": t0 + timedelta(minutes=16)})
    assert [n for _, _, n, _ in told(h.handle(skewed))] == ["supplemented", "status_changed"]


def test_an_update_that_crossed_its_agency_s_own_hand_off_is_stale(
        h: Handlers, clock: FakeClock) -> None:
    # an agency's update sent before the one that handed the dossier on, arriving after
    # it, was refused as from "not the dossier's current agency" (found by a review):
    # README says it is stale, by that agency's own last update
    code = h.route(procedure_code="1.000001")  # T.UBND.A, then T.CA, then T.BHXH
    clock.set("2026-11-25 12:00")
    t0 = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)
    h.handle(status(code, "T.UBND.A", "resolved").model_copy(
        update={"sent_at": t0 + timedelta(minutes=5)}))
    assert h.row(code)["agency_id"] == "T.CA"
    out = h.handle(status(code, "T.UBND.A", "accepted").model_copy(update={"sent_at": t0}))
    reason = json.loads(out[0].body)["reason"]
    assert reason == ("stale: sent 2026-11-25T03:00:00+00:00, before the update applied last "
                      "(sent 2026-11-25T03:05:00+00:00)"), reason
    # one sent since is from an agency that is no longer the dossier's
    out = h.handle(status(code, "T.UBND.A", "accepted").model_copy(
        update={"sent_at": t0 + timedelta(minutes=9)}))
    assert json.loads(out[0].body)["reason"] == "T.UBND.A is not the dossier's current agency"


def test_an_update_set_aside_before_its_agency_had_the_dossier_is_stale_when_replayed(
        h: Handlers, clock: FakeClock) -> None:
    # T.CA resolved the dossier before T.UBND.A handed it on: dead-lettered as from no
    # party, then replayed after the hand-off, it ended T.CA's step the moment it began
    # (found by a review)
    code = h.route(procedure_code="1.000001")
    # recorded at 11:00, the hand-off dated 10:00 by its sender: T.CA could answer from
    # 11:00 only (judged by the sender's time, a second review found one set aside at
    # 10:30 applied)
    clock.set("2026-11-25 11:00")
    h.handle(sent(code, "T.UBND.A", "resolved", "2026-11-25 10:00"))
    assert h.row(code)["agency_id"] == "T.CA"
    early = status(code, "T.CA", "resolved")

    def replayed(set_aside: str) -> Outbound:
        h.tag += 1
        delivery = status_delivery(h.tag, early)
        delivery.properties.headers = {DEAD_SINCE_HEADER: vn(set_aside).isoformat()}
        (out,) = h.status.handle([delivery])
        return out

    out = replayed("2026-11-25 10:30")
    assert json.loads(out.body)["reason"] == (
        "stale: this update was set aside at 2026-11-25T10:30:00+07:00, before the dossier "
        "was handed to T.CA (2026-11-25T11:00:00+07:00): it was sent before the agency had "
        "the dossier; send it again if it still holds")
    assert h.row(code)["step"] == 2
    # one set aside since is no earlier than its step: applied
    out = replayed("2026-11-25 11:30")
    assert h.row(code)["step"] == 3


def test_a_capped_step_s_own_date_is_named_where_the_notice_says_it_moved(
        h: Handlers, clock: FakeClock) -> None:
    # a step handed on late is due with its dossier, its own date after: a pause past the
    # dossier's due day moved the step's own date alone, and the agency was told "this
    # step's <the dossier's date> (moved by ...)", a date that had not moved (found by a
    # review)
    code = h.route(procedure_code="1.000001")
    clock.set("2026-12-02 09:00")
    h.handle(sent(code, "T.UBND.A", "resolved", "2026-12-02 09:00"))
    clock.set("2026-12-04 08:00")
    h.handle(sent(code, "T.CA", "supplement_requested", "2026-12-04 08:00"))
    clock.set("2026-12-04 10:00")
    (told_agency,) = [o for o in h.handle(supplemented(code).model_copy(
        update={"sent_at": vn("2026-12-04 10:00")})) if o.type == "agency.notice"]
    assert json.loads(told_agency.body)["reason"] == (
        "the clock runs again: legal due date 2026-12-03T09:00+07:00 (unchanged: the "
        "supplement was asked for after its due day), this step's 2026-12-03T09:00+07:00 "
        "(the dossier's; its own 2026-12-04T11:00+07:00, moved by the 2.0 working hours "
        "paused)")
