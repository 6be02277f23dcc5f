"""A citizen withdraws a dossier that was held in triage (never received: its desk has a
``held`` notice and no code), by the submission id it was sent under; on SQLite and
PostgreSQL, through the real RabbitMQ, and against a router replaying the same
submission at the same moment."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from broker.amqp import DETAIL_HEADER, REASON_HEADER
from broker.cli import EXIT_PROBLEM, main
from broker.consumers.router import Router, submission_digest
from broker.consumers.status import StatusRouter
from broker.ledger import Batch, Ledger, early_withdrawals
from broker.messages import DossierSubmitted, DossierWithdrawn, encode
from broker.ops.audit import audit
from broker.ops.deadletters import closed_in_ledger
from broker.ops.prune import prune
from broker.rules.catalog import load_catalog
from broker.rules.engine import Engine
from broker.topology import Topology
from tests.conftest import MINI_CATALOG, RunningBroker, queue_depth, wait_for
from tests.helpers import (
    Amqp,
    assert_waits,
    cli,
    dossier,
    hold_router_past_duplicate_check,
    intake_delivery,
    status_delivery,
)

pytestmark = pytest.mark.integration

SENT = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)


def _withdrawal(d: DossierSubmitted, desk: str | None = None, *,
                submission_id: uuid.UUID | None = None) -> DossierWithdrawn:
    """The citizen's withdrawal of ``d`` by its submission id (or another one), from its
    intake desk (or another one)."""
    return DossierWithdrawn(event_id=uuid.uuid4(),
                            submission_id=submission_id or d.submission_id,
                            desk_id=desk or d.desk_id, reason="công dân rút hồ sơ",
                            sent_at=SENT)




def test_a_dossier_withdrawn_before_the_router_had_it_is_closed_at_intake_when_it_comes(
        declared: Topology, ledger: Ledger, run_broker: Callable[..., RunningBroker],
        amqp: Amqp) -> None:
    # the desk withdrew at once, and the withdrawal overtook the dossier (intake had a
    # backlog): the citizen's withdrawal stands, and the desk hears it when it comes
    t = declared
    run_broker()
    d, other = dossier(), dossier()
    amqp.status(t, _withdrawal(d))
    amqp.status(t, _withdrawal(other, "T.MC.A"))  # not other's desk: void
    wait_for(lambda: ledger.count_inbox_outcomes().get("withdrawn_early") == 2,
             what="both kept")
    desk = t.desk_queue("T.MC.B")
    assert queue_depth(desk) == 0  # nothing to tell yet
    amqp.submit(t, d, message_id="desk-own-1")  # a desk's own id, not submit:<id>
    amqp.submit(t, other)
    wait_for(lambda: queue_depth(desk) == 2, what="a withdrawal and a receipt")
    notices = {n["submission_id"]: n for n in amqp.json_all(desk)}
    withdrawn, receipt = notices[str(d.submission_id)], notices[str(other.submission_id)]
    assert (withdrawn["notice"], withdrawn["state"], withdrawn["reason"]) == (
        "withdrawn", 7, "công dân rút hồ sơ")
    assert "dossier_code" not in withdrawn and receipt["notice"] == "receipt"
    wait_for(lambda: queue_depth(t.agency_queue("T.UBND.A")) == 1, what="one assignment")
    assert [a["submission_id"] for a in amqp.json_all(t.agency_queue("T.UBND.A"))] == [
        str(other.submission_id)]
    refusal = ledger.refusal(str(d.submission_id))
    assert refusal is not None and (refusal["state"], refusal["refused_by"]) == (7, "T.MC.B")
    assert ledger.count_by_state() == {2: 1}
    # closed at intake is accounted for, by the refusals row (it was "not in the ledger")
    report = audit(ledger, t, [str(d.submission_id), str(other.submission_id)])
    assert (report["unaccounted_submissions"], report["withdrawn_while_held"]) == ([], 1)
    # the desk sends it again (a retry under a new message id): told the same
    amqp.submit(t, d, message_id="desk-retry")
    wait_for(lambda: queue_depth(desk) == 1, what="the withdrawal again")
    assert amqp.json_all(desk) == [withdrawn]
    assert ledger.count_inbox_outcomes() == {"withdrawn_early": 3, "routed": 1,
                                              "duplicate": 1}
    assert queue_depth(t.dead_queue("status")) == queue_depth(t.dead_queue("intake")) == 0


@pytest.mark.parametrize("stranger_first", [True, False], ids=["stranger_first",
                                                              "own_desk_first"])
def test_a_strangers_early_withdrawal_takes_nothing_from_the_own_desks(
        ledger: Ledger, stranger_first: bool) -> None:
    # keyed by submission id alone, a stranger's withdrawal kept first left no room for
    # the intake desk's own, and the router, finding only the stranger's, voided it and
    # opened the dossier the citizen had withdrawn
    router, status = _routers(ledger)
    d = dossier()  # from T.MC.B
    withdrawals = [_withdrawal(d, "T.MC.A"), _withdrawal(d)]
    for tag, withdrawal in enumerate(withdrawals if stranger_first else withdrawals[::-1]):
        assert status.handle([status_delivery(tag, withdrawal)]) == []  # nothing to tell yet
    with ledger.read() as conn:
        assert sorted(r.desk_id for r in conn.execute(select(early_withdrawals))) == [
            "T.MC.A", "T.MC.B"]
    published = router.handle([intake_delivery(5, encode(d), "submit:1")])
    assert [(o.routing_key, json.loads(o.body)["notice"]) for o in published] == [
        ("T.MC.B", "withdrawn")]
    assert ledger.count_by_state() == {}
    refusal = ledger.refusal(str(d.submission_id))
    assert refusal is not None and (refusal["state"], refusal["refused_by"]) == (7, "T.MC.B")
    with ledger.read() as conn:  # both done: the own desk's applied, the stranger's void
        assert conn.execute(select(early_withdrawals)).all() == []


def test_a_held_dossier_is_withdrawn_by_its_submission_id_and_never_opens(
        declared: Topology, ledger: Ledger, run_broker: Callable[..., RunningBroker],
        amqp: Amqp, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    t = declared
    run_broker()
    held = dossier(applicant_ward="99999")  # a ward no unit serves: triaged
    amqp.submit(t, held)
    desk = t.desk_queue("T.MC.B")
    wait_for(lambda: queue_depth(desk) == 1, what="the held notice")
    (first,) = amqp.json_all(desk)
    assert first["notice"] == "held" and "dossier_code" not in first
    sid, copy_id = str(held.submission_id), f"submit:{held.submission_id}"

    amqp.status(t, _withdrawal(held))
    wait_for(lambda: queue_depth(desk) == 1, what="the withdrawal's notice")
    ((props, body),) = amqp.get_all(desk)
    notice = json.loads(body)
    assert props.message_id == f"{copy_id}:withdrawn" and props.type == "desk.notice"
    assert (notice["notice"], notice["state"], notice["submission_id"]) == (
        "withdrawn", 7, sid)
    assert "dossier_code" not in notice and notice["reason"] == "công dân rút hồ sơ"
    refusal = ledger.refusal(sid)
    assert refusal is not None
    assert (refusal["state"], refusal["refused_by"], refusal["message_id"]) == (
        7, "T.MC.B", copy_id)

    # another desk has no part in a dossier never received: dead-lettered, not answered
    # (an id not come yet is kept unanswered: an answer would say another desk sent it);
    # the same desk again: refused (it is closed); a submission id the ledger does not
    # have: kept for when it comes (see the test below), not answered yet
    amqp.status(t, _withdrawal(held, "T.MC.A"))
    again = _withdrawal(held)
    amqp.status(t, again)
    amqp.status(t, _withdrawal(held, submission_id=uuid.uuid4()))
    wait_for(lambda: ledger.count_inbox_outcomes().get("withdrawn_early") == 1,
             what="the early withdrawal kept")
    wait_for(lambda: queue_depth(t.dead_queue("status")) == 1, what="a dead letter")
    wait_for(lambda: queue_depth(desk) == 1, what="the refused withdrawal")
    ((props, body),) = amqp.get_all(desk)
    refused = json.loads(body)
    assert props.message_id == f"{sid}:update_refused:{again.event_id}"
    assert (refused["notice"], refused["state"]) == ("update_refused", 7)
    assert "withdrawn at intake" in refused["reason"] and "dossier_code" not in refused
    reasons = sorted(p.headers[REASON_HEADER] for p, _ in amqp.get_all(t.dead_queue("status")))
    assert reasons == ["not_a_party"]
    assert queue_depth(t.desk_queue("T.MC.A")) == 0

    # the operator's list marks the copy closed (from the ledger)
    rc, out, err = cli(capsys, t, "dead-letters", "list", "--queue", "triage", "--db-url",
                       ledger.url, "--json")
    assert rc == 0, err
    assert [(f["message_id"], f["closed"]) for f in json.loads(out)] == [(copy_id, "withdrawn")]
    rc, out, err = cli(capsys, t, "dead-letters", "list", "--queue", "triage", "--db-url",
                       ledger.url)
    assert "[closed at intake: withdrawn; replay takes it out]" in out
    # the ledger every ledger command takes by default: list ignored it (found by a review)
    monkeypatch.setenv("CASEBROKER_DB_URL", ledger.engine.url.render_as_string(
        hide_password=False))
    rc, out, err = cli(capsys, t, "dead-letters", "list", "--queue", "triage")
    assert rc == 0 and "[closed at intake: withdrawn; replay takes it out]" in out
    others = [{"queue": "triage", "body": {"submission_id": str(uuid.uuid4())}},  # not closed
              {"queue": "intake", "body": {"submission_id": sid}}]  # not a triage copy
    closed_in_ledger(ledger, others)
    assert [(f["closed"], f["opened"]) for f in others] == [(None, None), (None, None)]
    # the operator replays triage (a catalog fix): the copy is answered with the
    # withdrawal, under the same id (the desk drops it), and opens nothing
    rc, out, err = cli(capsys, t, "dead-letters", "replay", "--all", "--queue", "triage")
    assert rc == 0, err
    wait_for(lambda: queue_depth(desk) == 1, what="the withdrawal sent again")
    ((props, body),) = amqp.get_all(desk)
    assert props.message_id == f"{copy_id}:withdrawn" and json.loads(body) == notice
    assert queue_depth(t.triage_queue) == 0
    assert ledger.count_by_state() == {}
    # a copy of it in triage again (the replay crashed before its ack): `refuse` finds it
    # withdrawn, sends the same notice, and takes the copy out; the withdrawal stands
    amqp.publish(t.dead_letter_exchange, "triage", encode(held), message_id=copy_id,
                 type="dossier.submitted")
    rc, out, err = cli(capsys, t, "dead-letters", "refuse", "--id", copy_id, "--reason",
                       "not taken here", "--catalog", str(MINI_CATALOG), "--db-url",
                       ledger.url)
    assert rc == 0, err
    assert (f"was withdrawn by desk T.MC.B while held: not refused; its withdrawal notice "
            f"{copy_id}:withdrawn sent again, the copy removed") in out, out
    assert out.splitlines()[-1] == "0 dossier(s) refused, 1 withdrawn before (taken out of " \
        "triage)"
    ((props, body),) = amqp.get_all(desk)
    assert props.message_id == f"{copy_id}:withdrawn" and json.loads(body) == notice
    assert queue_depth(t.triage_queue) == 0
    assert ledger.refusal(sid)["state"] == 7  # type: ignore[index]
    # after the withdrawal, another dossier under its id: dead-lettered as reused
    amqp.submit(t, held.model_copy(update={"procedure_code": "1.004227"}), "desk-reuse-1")
    wait_for(lambda: queue_depth(t.dead_queue("intake")) == 1, what="the reused id")

    report = audit(ledger, t, [sid])
    assert (report["withdrawn_while_held"], report["refused_from_triage"],
            report["unaccounted"]) == (1, 0, 0)
    assert main(["dossier", "show", sid, "--db-url", ledger.url]) == 0
    out = capsys.readouterr().out
    assert f"withdrawn at intake (7) by the citizen at desk T.MC.B: told as {copy_id}:withdrawn" \
        in out
    assert "066090001234" not in out
    # in the order they happened: held, withdrawn, then the reused id
    order = [x.split()[2] for x in out.splitlines() if x.startswith("  20")]
    assert order == ["triaged:area_not_served", "withdrawn", "dead:submission_id_reused"], out

    # once more, after the desk's queue was deleted: nobody can be told, and the line
    # says so (it said the withdrawal notice was sent again)
    amqp.delete_queues(desk)
    amqp.publish(t.dead_letter_exchange, "triage", encode(held), message_id=copy_id,
                 type="dossier.submitted")
    refuse = ("dead-letters", "refuse", "--id", copy_id, "--reason", "not taken here",
              "--catalog", str(MINI_CATALOG), "--db-url", ledger.url)
    rc, out, err = cli(capsys, t, *refuse)  # a desk of the catalog: RabbitMQ is asked
    assert rc == 1 and (f"desk T.MC.B has nobody to tell: no queue {desk} (a wrong --prefix"
                        in err), err
    assert queue_depth(t.triage_queue) == 1
    rc, out, err = cli(capsys, t, *refuse, "--without-notice")
    assert rc == 0, err
    assert ("was withdrawn by desk T.MC.B while held: not refused; desk T.MC.B has no "
            "queue, nobody told, the copy removed") in out, out
    assert "sent again" not in out and queue_depth(t.triage_queue) == 0


def test_a_submission_id_that_opened_a_dossier_withdraws_nothing_and_names_the_code(
        declared: Topology, ledger: Ledger, run_broker: Callable[..., RunningBroker],
        amqp: Amqp) -> None:
    # the desk reused a dossier's submission id for another one: that one is held (the id
    # is taken), and a withdrawal by the id must not withdraw the first, another citizen's
    t = declared
    run_broker()
    d = dossier(desk_id="T.MC.A")
    amqp.submit(t, d)
    wait_for(lambda: ledger.count_by_state() == {2: 1}, what="the dossier received")
    ((code, _, _),) = ledger.states_for_submissions([str(d.submission_id)]).values()
    other = d.model_copy(update={"procedure_code": "1.004227"})
    amqp.submit(t, other, message_id="submit:other")
    wait_for(lambda: queue_depth(t.dead_queue("intake")) == 1, what="the reused id")
    desk = t.desk_queue("T.MC.A")
    wait_for(lambda: queue_depth(desk) == 2, what="the receipt and the held notice")
    assert [n["notice"] for n in amqp.json_all(desk)] == ["receipt", "held"]
    withdrawal = _withdrawal(other)
    amqp.status(t, withdrawal)
    amqp.status(t, _withdrawal(d, "T.MC.B"))  # a stranger to the dossier
    wait_for(lambda: queue_depth(t.dead_queue("status")) == 1, what="the stranger's")
    ((props, body),) = wait_for(lambda: amqp.get_all(desk), what="the answer")
    notice = json.loads(body)
    assert props.message_id == f"{code}:update_refused:{withdrawal.event_id}"
    assert (notice["notice"], notice["dossier_code"], notice["state"]) == (
        "update_refused", code, 2)
    assert f"opened dossier {code}" in notice["reason"]
    assert ledger.count_by_state() == {2: 1} and ledger.refusal(str(d.submission_id)) is None
    assert [e["kind"] for e in ledger.history(code)] == ["received"]
    # the stranger learns neither the code nor that the id was ever sent
    assert queue_depth(t.desk_queue("T.MC.B")) == 0


def _routers(ledger: Ledger) -> tuple[Router, StatusRouter]:
    engine = Engine(load_catalog(MINI_CATALOG))
    return (Router(lambda: engine, ledger, Topology("t")),
            StatusRouter(lambda: engine, ledger, Topology("t")))


def _held_then_corrected(router: Router) -> tuple[DossierSubmitted, DossierSubmitted]:
    """A dossier held in triage (a ward no unit serves) and its corrected copy."""
    d = dossier(desk_id="T.MC.A", applicant_ward="99999")
    router.handle([intake_delivery(1, encode(d), "submit:first")])
    return d, d.model_copy(update={"applicant": d.applicant.model_copy(
        update={"ward_code": "10001"})})


def test_a_held_dossier_whose_desk_wrote_its_submission_id_in_capitals_is_found_by_it(
        ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    # the router reads the id as a UUID, whatever its case, and records the held copy
    # under it; the copy kept in triage says it as the desk wrote it, which the withdrawal
    # and `dossier show` compared as text: the citizen's withdrawal found nothing
    router, status = _routers(ledger)
    d = dossier(desk_id="T.MC.A", applicant_ward="99999")
    sid = str(d.submission_id)
    body = encode(d).replace(sid.encode(), sid.upper().encode())
    assert sid.upper().encode() in body
    (triaged, held) = router.handle([intake_delivery(1, body, "submit:first")])
    assert json.loads(held.body)["notice"] == "held"
    assert main(["dossier", "show", sid.upper(), "--db-url", ledger.url]) == 0
    shown = capsys.readouterr().out
    assert "submit:first" in shown and "triaged:area_not_served" in shown
    (answer,) = status.handle([status_delivery(2, _withdrawal(d))])
    told = json.loads(answer.body)
    assert (told["notice"], told["state"], told["submission_id"]) == ("withdrawn", 7, sid)
    refusal = ledger.refusal(sid)
    assert refusal is not None and refusal["state"] == 7


def test_a_withdrawal_waits_for_a_router_opening_the_dossier_then_names_its_code(
        ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    router, status = _routers(ledger)
    d, corrected = _held_then_corrected(router)
    # the router's batch for the corrected copy is held past its duplicate check
    checked, go = hold_router_past_duplicate_check(monkeypatch)
    published: list[Any] = []
    routing = threading.Thread(target=lambda: published.extend(router.handle(
        [intake_delivery(2, encode(corrected), "submit:corrected")])))
    routing.start()
    assert checked.wait(30)
    answered: list[Any] = []
    withdrawing = threading.Thread(target=lambda: answered.extend(status.handle(
        [status_delivery(3, _withdrawal(d))])))
    assert_waits(withdrawing, go.set, routing,
                 lambda: f"the withdrawal did not wait for the router: {answered}")
    assert ledger.count_by_state() == {2: 1}  # opened, and not closed at intake
    assert ledger.refusal(str(d.submission_id)) is None
    code = json.loads(published[-1].body)["dossier_code"]
    ((answer),) = answered
    assert (json.loads(answer.body)["notice"], json.loads(answer.body)["dossier_code"]) == (
        "update_refused", code)


def test_a_router_replay_waits_for_a_withdrawal_being_committed_then_answers_with_it(
        ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    router, status = _routers(ledger)
    d, corrected = _held_then_corrected(router)
    # the withdrawal is held between recording the closure and its commit
    closed, go = threading.Event(), threading.Event()
    close = Batch.close_at_intake

    def close_and_wait(self: Batch, row: dict[str, Any]) -> None:
        close(self, row)
        closed.set()
        assert go.wait(30)

    monkeypatch.setattr(Batch, "close_at_intake", close_and_wait)
    answered: list[Any] = []
    withdrawing = threading.Thread(target=lambda: answered.extend(status.handle(
        [status_delivery(3, _withdrawal(d))])))
    withdrawing.start()
    assert closed.wait(30)
    published: list[Any] = []
    routing = threading.Thread(target=lambda: published.extend(router.handle(
        [intake_delivery(2, encode(corrected), "submit:first#replay1")])))
    assert_waits(routing, go.set, withdrawing,
                 lambda: f"the router did not wait for the withdrawal: {published}")
    assert ledger.count_by_state() == {}
    ((withdrawn),) = answered
    # the corrected copy differs from the one held: another dossier under a taken id, so
    # it is dead-lettered, and its desk told it is held; a copy like the first would get
    # the withdrawal again
    assert [o.routing_key for o in published] == ["intake", "T.MC.A"]
    assert json.loads(published[1].body)["notice"] == "held"
    assert "a submission closed at intake" in published[0].headers[DETAIL_HEADER]
    again = router.handle([intake_delivery(4, encode(d), "submit:first#replay2")])
    assert [(o.message_id, o.body) for o in again] == [(withdrawn.message_id,
                                                        withdrawn.body)]


def test_a_dossier_held_before_the_upgrade_can_be_withdrawn_after_it(
        ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    router, _ = _routers(ledger)
    held, refused = (dossier(desk_id="T.MC.A", applicant_ward="99999") for _ in range(2))
    router.handle([intake_delivery(1, encode(held), "submit:held"),
                   intake_delivery(2, encode(refused), "submit:refused")])
    ledger.refuse({"submission_id": str(refused.submission_id), "message_id": "submit:refused",
                   "desk_id": "T.MC.A", "procedure_code": refused.procedure_code,
                   "reason": "not taken here", "refused_by": "operator-1", "refused_at": SENT,
                   "submission": json.loads(encode(refused)), "notice_id": "submit:refused:r",
                   "notice": b"{}"})
    # the ledger as the version before held and refusals.state left it
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE held")
        conn.exec_driver_sql("ALTER TABLE refusals DROP COLUMN state")
    ledger.dispose()
    assert ledger.refusal(str(refused.submission_id))["state"] == 3  # type: ignore[index]
    capsys.readouterr()
    assert main(["audit", "--db-url", ledger.url, "--prefix", "upgradecheck"]) == EXIT_PROBLEM
    err = capsys.readouterr().err  # in words, not as the ledger being away
    assert "refusals.state is missing" in err and "ledger upgrade" in err
    assert main(["ledger", "upgrade", "--dry-run", "--db-url", ledger.url]) == 0
    said = capsys.readouterr().out
    assert "CREATE TABLE held" in said and "fill held from the triage copies" in said
    assert "ADD COLUMN state" in said
    assert main(["ledger", "upgrade", "--db-url", ledger.url]) == 0
    upgraded = Ledger(ledger.url)
    _, status = _routers(upgraded)
    out = status.handle([status_delivery(3, _withdrawal(held)),
                         status_delivery(4, _withdrawal(refused))])
    assert [(json.loads(o.body)["notice"], json.loads(o.body)["state"]) for o in out] == [
        ("withdrawn", 7), ("update_refused", 3)]
    assert upgraded.refusal(str(refused.submission_id))["state"] == 3  # type: ignore[index]
    upgraded.dispose()


def test_casebroker_run_fills_a_held_table_it_makes_for_an_earlier_ledger(
        ledger: Ledger) -> None:
    held, _ = _held_then_corrected(_routers(ledger)[0])
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE held")
    ledger.dispose()
    again = Ledger(ledger.url)  # what `casebroker run` does at start: create what is missing
    _, status = _routers(again)
    (out,) = status.handle([status_delivery(2, _withdrawal(held))])
    assert json.loads(out.body)["notice"] == "withdrawn"
    again.dispose()


def test_a_held_dossier_pruned_while_it_waited_is_withdrawn_and_told_from_another(
        ledger: Ledger) -> None:
    router, status = _routers(ledger)
    held, _ = _held_then_corrected(router)
    # it waited in triage past the retention: the ledger's copy is a stub now
    done = prune(ledger, 30, "operator-1", now=datetime.now(UTC) + timedelta(days=60))
    assert done.bodies == 1  # the triage copy (its held notice holds no personal data)
    (notice,) = status.handle([status_delivery(2, _withdrawal(held))])
    assert (json.loads(notice.body)["notice"], json.loads(notice.body)["state"]) == (
        "withdrawn", 7)
    # the copy still in triage (prune does not reach RabbitMQ), replayed: the same
    # dossier, answered with its withdrawal; another under its submission id is not
    again = router.handle([intake_delivery(3, encode(held), "submit:first#replay1")])
    assert [(o.message_id, o.body) for o in again] == [(notice.message_id, notice.body)]
    other = held.model_copy(update={"procedure_code": "1.004227"})
    assert submission_digest(other) != submission_digest(held)
    reused = router.handle([intake_delivery(4, encode(other), "desk-retry")])
    assert [o.routing_key for o in reused] == ["intake", "T.MC.A"]
    assert "only their digest was kept" in reused[0].headers[DETAIL_HEADER]
    assert ledger.count_by_state() == {}


def test_prune_erases_the_reason_of_a_withdrawal_whose_submission_never_came(
        ledger: Ledger) -> None:
    engine = Engine(load_catalog(MINI_CATALOG))
    status = StatusRouter(lambda: engine, ledger, Topology("t"), clock=lambda: SENT)
    d = dossier()
    assert status.handle([status_delivery(1, _withdrawal(d))]) == []  # nothing to tell yet
    with ledger.read() as conn:
        kept = conn.execute(select(early_withdrawals)).mappings().one()
    assert (kept["submission_id"], kept["desk_id"], kept["reason"]) == (
        str(d.submission_id), "T.MC.B", "công dân rút hồ sơ")
    prune(ledger, 7, "ops-1", now=SENT + timedelta(days=30))
    with ledger.read() as conn:
        after = conn.execute(select(early_withdrawals)).mappings().one()
    assert after["reason"] is None and after["desk_id"] == "T.MC.B"  # still withdrawn
