"""The deadline watch on the real RabbitMQ and both ledgers: one notice per party and level."""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pika
import pytest
from pika.exceptions import AMQPConnectionError
from sqlalchemy import event, select, update

from broker.amqp import REASON_HEADER, amqp_url
from broker.cli import main
from broker.consumers.deadlines import (
    AT_RISK,
    NOTHING_SENT,
    OVERDUE,
    DeadlineWatch,
    WatchSettings,
    decide,
)
from broker.consumers.status import StatusRouter
from broker.ledger import Ledger, dossiers, watch_outbox
from broker.lifecycle import OPEN_STATES, State, is_overdue
from broker.messages import DossierReturned, DossierStatus, DossierSupplemented
from broker.ops.report import report as report_of
from broker.rules.catalog import load_catalog
from broker.rules.engine import Engine
from broker.topology import Topology
from monitoring.metrics import Metrics
from tests.conftest import MINI_CATALOG, wait_for
from tests.helpers import Amqp, dossier
from tests.integration.conftest import FakeClock, vn
from tests.integration.test_lifecycle_flow import doc, report, submit, take

pytestmark = pytest.mark.integration


def _route(amqp: Amqp, t: Topology, procedure: str, agency: str) -> str:
    amqp.submit(t, dossier(procedure))
    return str(take(amqp, t.agency_queue(agency), 1, "assignment")[0]["dossier_code"])


def _race(watches: list[DeadlineWatch]) -> None:
    """Two `casebroker run` processes ticking at the same moment."""
    barrier = threading.Barrier(len(watches))
    errors: list[BaseException] = []

    def tick(w: DeadlineWatch) -> None:
        barrier.wait()
        try:
            w.tick()
        except Exception as e:  # SQLite: the loser of the write lock retries next round
            errors.append(e)

    threads = [threading.Thread(target=tick, args=(w,)) for w in watches]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert len(errors) < len(watches), errors


def _notices(amqp: Amqp, queue: str) -> list[tuple[str, str]]:
    return sorted((n["notice"], n["dossier_code"]) for n in amqp.json_all(queue))


def test_at_risk_then_overdue_once_each_across_two_watches_and_a_restart(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp, clock: FakeClock,
        make_watch: Callable[[], DeadlineWatch], capsys: pytest.CaptureFixture[str]) -> None:
    start_broker()
    slow = _route(amqp, declared, "1.004227", "T.SO.TP")  # due Wed 9 Dec 09:00
    quick = _route(amqp, declared, "1.001193", "T.UBND.A")  # due Thu 26 Nov 09:00
    take(amqp, declared.desk_queue("T.MC.B"), 2, "receipts")
    a, b = make_watch(), make_watch()

    clock.set("2026-12-08 10:00")  # slow: 1.5 + 3.5 + 2 = 7 working hours left (< 8)
    for _ in range(2):
        _race([a, b])
        for w in (a, b):
            w.tick()  # a round that lost the race, or just the next round: nothing new
    assert _notices(amqp, declared.agency_queue("T.SO.TP")) == [("at_risk", slow)]
    assert _notices(amqp, declared.agency_queue("T.UBND.A")) == [("overdue", quick)]
    desk = {n["dossier_code"]: n for n in amqp.json_all(declared.desk_queue("T.MC.B"))}
    assert desk[slow]["notice"] == "at_risk" and "7.0 working hours left" in desk[slow]["reason"]
    apology = desk[quick]
    assert apology["notice"] == "overdue_apology" and apology["state"] == 2
    assert datetime.fromisoformat(apology["due_at"]) == vn("2026-12-09 10:00")  # new date
    assert "legal due date 2026-11-26T09:00+07:00 has passed" in apology["reason"]
    assert len(desk) == 2

    restarted = make_watch()
    assert restarted.tick() == 0
    clock.set("2026-12-09 16:00")  # past its due time, but not its due day: on time yet
    assert restarted.tick() == 0

    clock.set("2026-12-10 09:30")
    _race([a, restarted])
    b.tick()
    (told,) = amqp.json_all(declared.agency_queue("T.SO.TP"))
    assert (told["notice"], told["dossier_code"]) == ("overdue", slow)
    # the agency keeps the appointment the desk gave the citizen: it was told none
    assert told["reason"].endswith("; the citizen was given a new appointment "
                                   "2026-12-11T09:30+07:00: have the result ready by then")
    assert _notices(amqp, declared.desk_queue("T.MC.B")) == [("overdue_apology", slow)]
    assert _notices(amqp, declared.agency_queue("T.UBND.A")) == []

    gauge = b.metrics.overdue_dossiers
    assert gauge.labels("T.SO.TP")._value.get() == 1
    assert gauge.labels("T.UBND.A")._value.get() == 1
    assert gauge.labels("T.CA")._value.get() == 0
    kinds = [(e["kind"], e["actor"]) for e in ledger.history(slow)]
    assert kinds == [("received", "T.MC.B"), ("at_risk", "deadline-watch"),
                     ("overdue", "deadline-watch")]
    # the process-control sheet keeps what the apology promised (8 working hours on)
    overdue = ledger.history(slow)[-1]["detail"]
    assert datetime.fromisoformat(overdue["appointment"]) == vn("2026-12-11 09:30")
    assert main(["dossier", "show", slow, "--db-url", ledger.url]) == 0
    shown = [line for line in capsys.readouterr().out.splitlines() if " overdue " in line]
    assert len(shown) == 1 and shown[0].endswith(
        "(due 2026-12-09 09:00; apology: new appointment 2026-12-11 09:30)")
    assert ledger.unconfirmed_notices(vn("2027-01-01 00:00")) == []


@pytest.mark.parametrize("restart_at", ["2026-11-27 08:01", "2026-11-27 07:00"],
                         ids=["later", "clock_put_back"])
def test_notices_left_unconfirmed_by_a_dead_process_are_published_on_start(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp, clock: FakeClock,
        make_watch: Callable[[], DeadlineWatch], restart_at: str) -> None:
    # clock_put_back: the process that died had a clock ahead; its notices, dated after
    # the new one's now, waited until then (found by a review)
    start_broker()
    code = _route(amqp, declared, "1.001193", "T.UBND.A")
    clock.set("2026-11-27 08:00")
    flagged = make_watch().flag()  # committed, then the process died
    assert sorted(o.type for o in flagged) == ["agency.notice", "desk.notice"]
    assert _notices(amqp, declared.agency_queue("T.UBND.A")) == []
    assert len(ledger.unconfirmed_notices(vn("2027-01-01 00:00"))) == 2

    clock.set(restart_at)
    assert make_watch().tick() == 2
    got = amqp.get_all(declared.agency_queue("T.UBND.A"))
    assert [p.message_id for p, _ in got] == [flagged[0].message_id]
    assert _notices(amqp, declared.desk_queue("T.MC.B")) == [("overdue_apology", code),
                                                             ("receipt", code)]
    assert ledger.unconfirmed_notices(vn("2027-01-01 00:00")) == []


def test_a_round_after_an_idle_spell_longer_than_the_heartbeat_timeout_publishes(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp,
        clock: FakeClock) -> None:
    """Between rounds the watch does no I/O: a connection kept open would answer no
    heartbeat and RabbitMQ would drop it (after 60 s by default; 1 s here), failing the
    next round's first publish. Each round with notices connects afresh, to the first
    node that answers (the first URL here names no broker)."""
    start_broker()
    quick = _route(amqp, declared, "1.001193", "T.UBND.A")  # due Thu 26 Nov 09:00
    slow = _route(amqp, declared, "1.004227", "T.SO.TP")  # due Wed 9 Dec 09:00
    take(amqp, declared.desk_queue("T.MC.B"), 2, "receipts")
    engine = Engine(load_catalog(MINI_CATALOG))
    sep = "&" if "?" in amqp_url() else "?"
    watch = DeadlineWatch(lambda: engine, ledger, declared, WatchSettings(), clock=clock,
                          urls=["amqp://guest:guest@127.0.0.1:1/%2F",
                                f"{amqp_url()}{sep}heartbeat=1"])
    try:
        clock.set("2026-11-27 08:00")
        assert watch.tick() == 2
        time.sleep(4)  # four heartbeat intervals without a frame from the watch
        clock.set("2026-12-08 10:00")
        assert watch.tick() == 2
    finally:
        watch.close()
    assert _notices(amqp, declared.agency_queue("T.UBND.A")) == [("overdue", quick)]
    assert _notices(amqp, declared.agency_queue("T.SO.TP")) == [("at_risk", slow)]


def test_casebroker_run_sends_the_overdue_notice_and_counts_it(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp, clock: FakeClock) -> None:
    started = time.time()
    running = start_broker(watch=WatchSettings(interval_s=0.05))
    heartbeat = running.broker.metrics.watch_last_round
    # set at its start, then by each round
    wait_for(lambda: heartbeat._value.get() >= started, what="the watch's heartbeat")
    code = _route(amqp, declared, "1.001193", "T.UBND.A")
    take(amqp, declared.desk_queue("T.MC.B"), 1, "receipt")
    gauge = running.broker.metrics.overdue_dossiers
    clock.now = vn("2026-11-27 09:01") + timedelta(seconds=7, microseconds=123456)
    overdue = take(amqp, declared.agency_queue("T.UBND.A"), 1, "overdue notice")[0]
    assert (overdue["notice"], overdue["dossier_code"]) == ("overdue", code)
    apology = take(amqp, declared.desk_queue("T.MC.B"), 1, "apology")[0]
    assert apology["notice"] == "overdue_apology"
    # 8 working hours on, to the minute the citizen is given, in the catalog's zone
    assert apology["due_at"] == "2026-11-30T09:01:00+07:00"  # Fri + 8 h: Mon
    wait_for(lambda: gauge.labels("T.UBND.A")._value.get() == 1, what="gauge at 1")
    sent = running.broker.metrics.deadline_notices_total
    assert sent.labels("overdue", "agency")._value.get() == 1
    assert sent.labels("overdue_apology", "desk")._value.get() == 1

    amqp.status(declared, DossierStatus(update_id=uuid.uuid4(), dossier_code=code,
                                        agency_id="T.UBND.A", status="resolved",
                                        sent_at=clock.now))
    result = take(amqp, declared.desk_queue("T.MC.B"), 1, "result, no second apology")[0]
    assert result["notice"] == "result_ready"
    wait_for(lambda: gauge.labels("T.UBND.A")._value.get() == 0, what="gauge back to 0")
    assert amqp.json_all(declared.desk_queue("T.MC.B")) == []


def test_a_notice_no_queue_takes_is_counted_unroutable_not_sent(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp, clock: FakeClock,
        make_watch: Callable[[], DeadlineWatch]) -> None:
    # dead-lettered, it was counted in casebroker_deadline_notices_total as if the agency
    # had it, and CasebrokerUnroutable never heard of it
    start_broker()
    code = _route(amqp, declared, "1.001193", "T.UBND.A")
    take(amqp, declared.desk_queue("T.MC.B"), 1, "receipt")
    amqp.ch.queue_unbind(declared.agency_queue("T.UBND.A"), declared.agency_exchange,
                         "T.UBND.A")
    watch = make_watch()
    clock.set("2026-11-27 09:30")
    assert watch.tick() == 2  # both kept: the agency's in dead.agency, the desk's delivered
    (dead,) = amqp.get_all(declared.dead_queue("agency"))
    assert dead[0].headers[REASON_HEADER] == "unroutable"
    assert json.loads(dead[1])["dossier_code"] == code
    sent, unroutable = watch.metrics.deadline_notices_total, watch.metrics.returned_total
    assert sent.labels("overdue", "agency")._value.get() == 0
    assert sent.labels("overdue_apology", "desk")._value.get() == 1
    assert unroutable.labels("watch", declared.agency_exchange)._value.get() == 1
    assert ledger.unconfirmed_notices(vn("2027-01-01 00:00")) == []


def test_a_notice_neither_its_queue_nor_its_dead_letter_queue_takes_is_counted_refused(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp, clock: FakeClock,
        make_watch: Callable[[], DeadlineWatch]) -> None:
    """Kept and published again each round, it moved no metric while the round completed:
    apologies owed went nowhere, and no alert said so (CasebrokerDeadlineNoticesHeld)."""
    start_broker()
    _route(amqp, declared, "1.001193", "T.UBND.A")
    take(amqp, declared.desk_queue("T.MC.B"), 1, "receipt")
    queue, dead = declared.agency_queue("T.UBND.A"), declared.dead_queue("agency")
    amqp.ch.queue_unbind(queue, declared.agency_exchange, "T.UBND.A")
    amqp.ch.queue_unbind(dead, declared.dead_letter_exchange, "agency")
    watch = make_watch()
    refused = watch.metrics.retries_total.labels("watch", "refused")
    clock.set("2026-11-27 09:30")
    assert watch.tick() == 1  # the desk's apology; the agency's notice kept
    assert refused._value.get() == 1
    assert len(ledger.unconfirmed_notices(vn("2027-01-01 00:00"))) == 1
    amqp.ch.queue_bind(queue, declared.agency_exchange, "T.UBND.A")
    amqp.ch.queue_bind(dead, declared.dead_letter_exchange, "agency")
    clock.set("2026-11-27 09:40")
    assert watch.tick() == 1 and refused._value.get() == 1
    assert [n["notice"] for n in amqp.json_all(queue)] == ["overdue"]


# --- which dossiers the watch looks at: only those whose level can rise now -----------

def _row(code: str, state: State, due: str, level: int = NOTHING_SENT,
         paused: str | None = None, step_due: str | None = None,
         step_level: int = NOTHING_SENT, received: str = "2026-11-25 09:00",
         given: tuple[float, str] = (10, "working_days")) -> dict[str, Any]:
    """A dossier row as the router and status router leave it (no personal data needed);
    with ``step_due``, at step 1 of a chain due then; ``given``: its plan's time."""
    at, due_at = vn(received), vn(due)
    return {
        "code": code, "submission_id": str(uuid.uuid4()), "procedure_code": "1.004227",
        "intake_desk_id": "T.MC.B", "return_desk_id": "T.MC.B", "channel": "in_person",
        "state": int(state), "agency_id": "T.SO.TP", "step": 1,
        "steps": [{"agency_id": "T.SO.TP", "amount": given[0], "unit": given[1]}],
        "rule_id": "procedure:1.004227", "catalog_hash": "0" * 32, "boundary_free": True,
        "received_at": at, "due_at": due_at,
        "step_due_at": vn(step_due) if step_due else due_at,
        "paused_at": vn(paused) if paused else None, "finished_at": None,
        "satisfaction": None, "flags": {}, "seq": 1, "submission": {}, "updated_at": at,
        "watch_level": level, "step_watch_level": step_level,
    }


def _store(ledger: Ledger, rows: list[dict[str, Any]]) -> None:
    with ledger.batch() as batch:
        for row in rows:
            batch.add_dossier(row)


def _watch(ledger: Ledger, clock: FakeClock, limit: int) -> DeadlineWatch:
    engine = Engine(load_catalog(MINI_CATALOG))
    return DeadlineWatch(lambda: engine, ledger, Topology("unused"),
                         WatchSettings(limit=limit), clock=clock)


def test_dossiers_that_cannot_be_flagged_do_not_starve_the_watch(
        ledger: Ledger, clock: FakeClock) -> None:
    clock.set("2026-12-09 10:00")  # Wed
    stuck = [  # paused before their due date: no notice while the desk owes a supplement
        _row(f"PAUSED-{i}", State.SUPPLEMENT_REQUESTED, f"2026-12-0{i + 1} 09:00",
             paused=f"2026-12-0{i + 1} 08:00") for i in range(5)]
    stuck += [  # at-risk notices sent, not overdue yet
        _row(f"AT-RISK-{i}", State.PROCESSING, "2026-12-09 11:00", level=AT_RISK)
        for i in range(5)]
    late_pause = _row("PAUSED-LATE", State.SUPPLEMENT_REQUESTED, "2026-12-07 09:00",
                      paused="2026-12-08 09:00")  # late when paused: still overdue
    overdue = _row("OVERDUE", State.PROCESSING, "2026-12-08 09:00")
    at_risk = _row("SOON", State.RECEIVED, "2026-12-10 08:00")  # 6 working hours left
    # given 2 working hours, 1.5 of them left: not at risk yet, and due before SOON
    stuck += [_row(f"SHORT-{i}", State.RECEIVED, "2026-12-09 11:30", received="2026-12-09 "
                   "09:30", given=(2, "working_hours")) for i in range(7)]
    _store(ledger, [*stuck, late_pause, overdue, at_risk])

    watch = _watch(ledger, clock, limit=3)
    flagged = watch.flag()
    assert sorted((o.correlation_id, o.message_id.split(":")[1]) for o in flagged
                  if o.type == "agency.notice") == [
        ("OVERDUE", "overdue"), ("PAUSED-LATE", "overdue"), ("SOON", "at_risk")]
    assert [(r["code"], r["watch_level"]) for r in (ledger.dossier(s["code"]) for s in stuck)
            if r is not None] == [(s["code"], s["watch_level"]) for s in stuck]
    assert watch.flag() == []


@pytest.mark.parametrize("step", [False, True], ids=["dossier", "chain step"])
def test_watch_candidates_are_exactly_the_dossiers_whose_level_rises(
        ledger: Ledger, step: bool) -> None:
    """The SQL prefilter and :func:`decide` agree, over a grid of states and dates, in
    office hours and at night (where the at-risk margin ends at 17:00 the next day); for
    chain steps by the step's due date and level, and only for steps due before their
    dossier (a step due with it is the dossier's own due date)."""
    engine = Engine(load_catalog(MINI_CATALOG))
    cal, settings = engine.calendar, WatchSettings(limit=10_000)
    dues = ["2026-12-01 09:00", "2026-12-09 09:59", "2026-12-09 10:00", "2026-12-09 10:01",
            "2026-12-09 20:00", "2026-12-10 09:59", "2026-12-10 10:00", "2026-12-10 10:01",
            "2026-12-10 16:59", "2026-12-10 17:00", "2026-12-11 07:00", "2026-12-20 09:00"]
    pauses = [None, "2026-11-30 09:00", "2026-12-09 09:30", "2026-12-09 10:00"]
    grid = itertools.product(sorted(OPEN_STATES), dues, (NOTHING_SENT, AT_RISK, OVERDUE),
                             pauses)
    if step:  # the dossier is due later (or, in the last rows, with the step: not watched)
        rows = [_row(f"D-{n}", state, "2027-01-20 09:00" if n % 7 else due, paused=paused,
                     step_due=due, step_level=level)
                for n, (state, due, level, paused) in enumerate(grid)
                if paused is None or state == State.SUPPLEMENT_REQUESTED]
    else:
        rows = [_row(f"D-{n}", state, due, level, paused)
                for n, (state, due, level, paused) in enumerate(grid)
                if paused is None or state == State.SUPPLEMENT_REQUESTED]
    _store(ledger, rows)
    due_key = "step_due_at" if step else "due_at"
    watch = DeadlineWatch(lambda: engine, ledger, Topology("unused"), settings)
    for now in (vn("2026-12-09 10:00"), vn("2026-12-09 20:00")):
        expected = {r["code"] for r, _ in decide(rows, now, cal, settings, step=step)
                    if r["step_due_at"] < r["due_at"] or not step}
        with ledger.batch() as batch:
            found = [r for r, _ in watch._due(batch, now, cal, step=step)]
            ranges = [batch.watch_range(level, before, now, 10_000, step=step)
                      for level, before in ((AT_RISK, now), (NOTHING_SENT, vn("2027-02-01")))]
        assert expected and {r["code"] for r in found} == expected, now
        for rows_read in ranges:  # read in due-date order
            assert [r[due_key] for r in rows_read] == sorted(r[due_key] for r in rows_read)


def test_the_ledgers_overdue_count_is_the_report_and_the_watchs(ledger: Ledger) -> None:
    """The overdue gauge and `dossier list --overdue` count in SQL what the report and the
    watch decide in Python (is_overdue): by days in Vietnam, a pause asked for by the end
    of the due day stopping the clock in time; around the days' edges, in UTC storage."""
    dues = ["2026-12-08 16:59", "2026-12-09 00:00", "2026-12-09 09:00", "2026-12-09 23:59"]
    pauses = [None, "2026-12-08 09:00", "2026-12-09 09:30", "2026-12-09 23:59:59",
              "2026-12-10 00:00", "2026-12-10 09:00"]
    rows = [_row(f"D-{n}", state, due, paused=paused)
            for n, (state, due, paused) in enumerate(
                itertools.product(sorted(OPEN_STATES), dues, pauses))
            if paused is None or state == State.SUPPLEMENT_REQUESTED]
    _store(ledger, rows)
    for now in ("2026-12-09 23:59", "2026-12-10 00:00", "2026-12-10 07:00", "2026-12-11 10:00"):
        expected = sum(is_overdue(r["state"], r["due_at"], r["paused_at"], vn(now))
                       for r in rows)
        assert expected > 0
        assert sum(ledger.overdue_by_agency(vn(now)).values()) == expected, now
        listed = ledger.list_dossiers(overdue_at=vn(now), limit=1000)
        assert len(listed) == expected, now


def test_sqlite_reads_watch_candidates_through_the_watch_index(tmp_path: Path) -> None:
    """SQLite uses a partial index only when the query spells out its WHERE: the open
    states go to it as literals, not as bound values."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    statements: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        statements.append((statement, params))

    event.listen(ledger.engine, "before_cursor_execute", seen)
    now = vn("2026-12-09 10:00")
    with ledger.batch() as batch:
        for step in (False, True):  # a first page, and a page after one
            for after in (None, (now, 7)):
                batch.watch_range(NOTHING_SENT, vn("2026-12-10 10:00"), now, 10, step=step,
                                  after=after)
    event.remove(ledger.engine, "before_cursor_execute", seen)
    with ledger.read() as conn:
        plans = [" ".join(str(r[-1]) for r in conn.exec_driver_sql(
                 f"EXPLAIN QUERY PLAN {s}", p).all()) for s, p in statements]
    ledger.dispose()
    assert len(plans) == 4
    for plan in plans[:2]:
        assert "USING INDEX ix_dossiers_watch (watch_level=? AND " in plan, plan
    for plan in plans[2:]:
        assert "USING INDEX ix_dossiers_step_watch (step_watch_level=? AND " in plan, plan
    for plan in plans:
        assert "TEMP B-TREE" not in plan, plan  # read in due-date order, nothing sorted


def test_a_pause_shorter_than_a_second_gives_the_new_notices_new_ids(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp, clock: FakeClock,
        make_watch: Callable[[], DeadlineWatch]) -> None:
    """A supplement 0.4 s after the request moves the due date by 0.4 s and sends the
    dossier back to the watch: its at-risk notices are new messages, with new ids."""
    start_broker()
    agency, desk = declared.agency_queue("T.SO.TP"), declared.desk_queue("T.MC.B")
    code = _route(amqp, declared, "1.004227", "T.SO.TP")  # due Wed 9 Dec 09:00
    take(amqp, desk, 1, "receipt")
    watch = make_watch()
    clock.set("2026-12-08 10:00")
    assert watch.tick() == 2
    first = {p.message_id for p, _ in amqp.get_all(agency)}
    take(amqp, desk, 1, "first at-risk notice")

    clock.set("2026-12-08 10:30")
    report(amqp, declared, code, "T.SO.TP", "supplement_requested", reason="thiếu bản sao",
           sent_at=clock.now)
    take(amqp, desk, 1, "supplement request")
    clock.now += timedelta(milliseconds=400)
    amqp.status(declared, DossierSupplemented(
        event_id=uuid.uuid4(), dossier_code=code, desk_id="T.MC.B",
        documents=[doc("ban-sao.pdf")], sent_at=clock.now))
    take(amqp, agency, 1, "supplement to the agency")
    take(amqp, desk, 1, "back in processing")
    row = ledger.dossier(code)
    assert row is not None and row["watch_level"] == 0
    assert row["due_at"] == vn("2026-12-09 09:00") + timedelta(milliseconds=400)

    assert watch.tick() == 2  # before: the same ids again, the transaction rolled back
    again = amqp.get_all(agency)
    assert [json.loads(b)["notice"] for _, b in again] == ["at_risk"]
    assert again[0][0].message_id not in first
    assert [n["notice"] for n in amqp.json_all(desk)] == ["at_risk"]
    assert [e["kind"] for e in ledger.history(code)] == [
        "received", "at_risk", "request_supplement", "supplement", "at_risk"]


def test_a_notice_id_already_kept_does_not_roll_back_the_watch(
        ledger: Ledger, clock: FakeClock) -> None:
    """A notice whose id is already in watch_outbox is that very message: the watch
    keeps it once and flags the other dossiers of the round all the same."""
    clock.set("2026-12-09 10:00")
    _store(ledger, [_row("LATE-1", State.PROCESSING, "2026-12-08 09:00")])
    kept = _watch(ledger, clock, limit=10).flag()[0]
    _store(ledger, [_row("LATE-2", State.PROCESSING, "2026-12-08 10:00")])
    with ledger.batch() as batch:  # LATE-1 set back to level 0 with its due date unchanged
        batch.conn.execute(update(dossiers).where(dossiers.c.code == "LATE-1")
                           .values(watch_level=NOTHING_SENT))
    again = _watch(ledger, clock, limit=10).flag()  # before: IntegrityError, all rolled back
    assert sorted(o.correlation_id or "" for o in again) == ["LATE-2", "LATE-2"]
    assert kept.message_id not in {o.message_id for o in again}
    assert {r["code"]: r["watch_level"] for r in map(ledger.dossier, ("LATE-1", "LATE-2"))
            if r is not None} == {"LATE-1": OVERDUE, "LATE-2": OVERDUE}
    with ledger.read() as conn:
        ids = list(conn.scalars(select(watch_outbox.c.message_id)))
    assert len(ids) == len(set(ids)) == 4


# --- chain steps: each step's agency is told of its own due date -----------------------

def test_a_chain_step_due_before_its_dossier_is_watched_for_its_agency_alone(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp, clock: FakeClock,
        make_watch: Callable[[], DeadlineWatch], capsys: pytest.CaptureFixture[str]) -> None:
    """DOMAIN.md: each step has its own due date. Its agency hears when its step is at
    risk (a quarter of the step's two working days left) and when it is late, once each;
    the desk hears only of the dossier's due date; the next step is watched afresh from
    its hand-off."""
    start_broker()
    first = submit(amqp, declared, "T.UBND.A", procedure_code="1.000001",
                   return_desk_id="T.CENTRE")
    code = first["dossier_code"]
    assert first["step_due_at"] == vn("2026-11-27 09:00").isoformat()  # 2 of 6 working days
    take(amqp, declared.desk_queue("T.MC.B"), 1, "receipt")
    watch, other = make_watch(), make_watch()
    a, ca = declared.agency_queue("T.UBND.A"), declared.agency_queue("T.CA")

    clock.set("2026-11-26 13:30")  # 5.5 working hours left of 16: not at risk yet
    assert watch.tick() == 0
    clock.set("2026-11-27 07:30")  # 1.5 working hours left of 16
    _race([watch, other])
    assert watch.tick() == other.tick() == 0
    notices = amqp.json_all(a)
    assert [(n["notice"], n["dossier_code"]) for n in notices] == [("at_risk", code)]
    assert notices[0]["reason"] == ("step 1 of 3 due 2026-11-27T09:00+07:00: 1.5 working "
                                    "hours left; the dossier is due 2026-12-03T09:00+07:00")

    clock.set("2026-11-27 16:30")  # past its due time, not its due day: late tomorrow
    assert watch.tick() == other.tick() == 0
    clock.set("2026-11-28 09:30")
    assert watch.tick() == 1 and other.tick() == 0
    notices = amqp.json_all(a)
    assert [(n["notice"], n["dossier_code"]) for n in notices] == [("overdue", code)]
    assert notices[0]["reason"] == ("step 1 of 3 was due 2026-11-27T09:00+07:00 and has "
                                    "passed; the dossier is due 2026-12-03T09:00+07:00")
    # the citizen's due date stands: no apology, no at-risk notice at either desk
    assert amqp.json_all(declared.desk_queue("T.MC.B")) == []
    assert amqp.json_all(declared.desk_queue("T.CENTRE")) == []

    clock.set("2026-11-30 10:00")  # step 1 done late: step 2 has two working days
    report(amqp, declared, code, "T.UBND.A", "resolved", documents=[doc("khai-sinh.pdf")],
           sent_at=clock.now)
    second = take(amqp, ca, 1, "step 2")[0]
    assert second["step_due_at"] == vn("2026-12-02 10:00").isoformat()
    assert watch.tick() == 0

    clock.set("2026-12-01 14:00")  # 6 working hours left of 16
    assert watch.tick() == 0
    clock.set("2026-12-02 07:00")  # 3 left
    assert watch.tick() == 1
    notices = amqp.json_all(ca)
    assert [(n["notice"], n["dossier_code"]) for n in notices] == [("at_risk", code)]
    assert notices[0]["reason"].startswith("step 2 of 3 due 2026-12-02T10:00+07:00: 3.0 ")
    assert amqp.json_all(a) == []
    assert watch.tick() == 0

    def sent(kind: str, party: str) -> float:
        return sum(w.metrics.deadline_notices_total.labels(kind, party)._value.get()
                   for w in (watch, other))

    assert (sent("at_risk", "agency"), sent("overdue", "agency")) == (2, 1)
    assert sent("at_risk", "desk") == sent("overdue_apology", "desk") == 0
    steps = [(e["kind"], e["detail"]["step"], e["detail"]["agency_id"])
             for e in ledger.history(code) if e["kind"].startswith("step_")]
    assert steps == [("step_at_risk", 1, "T.UBND.A"), ("step_overdue", 1, "T.UBND.A"),
                     ("step_at_risk", 2, "T.CA")]
    assert main(["dossier", "show", code, "--db-url", ledger.url]) == 0
    shown = [line for line in capsys.readouterr().out.splitlines() if " step_" in line]
    assert [line.rsplit("  ", 1)[-1] for line in shown] == [
        "(step 1 due 2026-11-27 09:00)", "(step 1 due 2026-11-27 09:00)",
        "(step 2 due 2026-12-02 10:00)"]
    assert ledger.unconfirmed_notices(vn("2027-01-01 00:00")) == []


def test_a_step_late_on_its_dossiers_due_day_is_told_once_with_the_dossier(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp, clock: FakeClock,
        make_watch: Callable[[], DeadlineWatch], capsys: pytest.CaptureFixture[str]) -> None:
    """A step handed on late may be due earlier on the dossier's own due day: both are
    late from the same midnight, and its agency was told twice at once, by the step's
    notice and by the dossier's. The dossier's alone is sent; the step's level rises
    (it is read no more) and the process-control sheet says why no notice went."""
    start_broker()
    code = submit(amqp, declared, "T.UBND.A", procedure_code="1.000001",
                  return_desk_id="T.CENTRE")["dossier_code"]
    take(amqp, declared.desk_queue("T.MC.B"), 1, "receipt")
    ca = declared.agency_queue("T.CA")
    clock.set("2026-12-01 08:00")  # step 1 done late: step 2 gets two working days
    report(amqp, declared, code, "T.UBND.A", "resolved", documents=[doc("khai-sinh.pdf")],
           sent_at=clock.now)
    second = take(amqp, ca, 1, "step 2")[0]
    assert second["step_due_at"] == vn("2026-12-03 08:00").isoformat()  # before the
    assert second["due_at"] == vn("2026-12-03 09:00").isoformat()  # dossier's, same day
    watch = make_watch()
    clock.set("2026-12-03 17:30")  # past both due times, not their day
    watch.tick()
    amqp.json_all(ca)  # the at-risk notices, step's and dossier's
    amqp.json_all(declared.desk_queue("T.CENTRE"))
    clock.set("2026-12-04 07:30")
    watch.tick()
    assert [(n["notice"], n["reason"].split(";")[0]) for n in amqp.json_all(ca)] == [
        ("overdue", "legal due date 2026-12-03T09:00+07:00 has passed")]
    assert [n["notice"] for n in amqp.json_all(declared.desk_queue("T.CENTRE"))] == [
        "overdue_apology"]
    assert watch.tick() == 0 and amqp.json_all(ca) == []
    late = [(e["kind"], e["message_id"] is None, e["detail"].get("told"))
            for e in ledger.history(code) if e["kind"] in ("overdue", "step_overdue")]
    assert late == [("overdue", False, None),
                    ("step_overdue", True, "with the dossier's overdue notice")]
    assert main(["dossier", "show", code, "--db-url", ledger.url]) == 0
    shown, = (line for line in capsys.readouterr().out.splitlines() if " step_overdue" in line)
    assert shown.endswith("(step 2 due 2026-12-03 08:00; told with the dossier's overdue "
                          "notice)"), shown


def test_a_supplement_that_moves_a_step_due_date_has_it_watched_again(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp, clock: FakeClock,
        make_watch: Callable[[], DeadlineWatch]) -> None:
    start_broker()
    code = submit(amqp, declared, "T.UBND.A", procedure_code="1.000001",
                  return_desk_id="T.CENTRE")["dossier_code"]
    a = declared.agency_queue("T.UBND.A")
    watch = make_watch()
    clock.set("2026-11-27 07:30")  # 1.5 working hours left of step 1's 16
    assert watch.tick() == 1
    first = [p.message_id for p, _ in amqp.get_all(a)]
    report(amqp, declared, code, "T.UBND.A", "supplement_requested", reason="thiếu tờ khai",
           sent_at=clock.now)
    wait_for(lambda: (ledger.dossier(code) or {}).get("paused_at") is not None,
             what="the clock paused")
    clock.set("2026-11-27 10:30")  # 3 working hours paused
    amqp.status(declared, DossierSupplemented(
        event_id=uuid.uuid4(), dossier_code=code, desk_id="T.MC.B",
        documents=[doc("to-khai.pdf")], sent_at=clock.now))
    assert take(amqp, a, 1, "supplement to the agency")[0]["notice"] == "supplemented"
    row = ledger.dossier(code)
    assert row is not None and row["step_due_at"] == vn("2026-11-27 14:00")
    assert row["step_watch_level"] == NOTHING_SENT
    assert watch.tick() == 1  # 1 + 0.5 working hours left: at risk again, a new id
    again = amqp.get_all(a)
    assert [json.loads(b)["notice"] for _, b in again] == ["at_risk"]
    assert again[0][0].message_id not in first
    assert again[0][0].message_id.endswith(":step1")


def test_the_watch_heartbeat_moves_only_when_a_round_completes(
        declared: Topology, ledger: Ledger, clock: FakeClock) -> None:
    """What CasebrokerDeadlineWatchStalled watches: a round that fails (RabbitMQ cannot
    be reached here) leaves the gauge where the last complete round set it."""
    engine = Engine(load_catalog(MINI_CATALOG))
    metrics = Metrics()
    watch = DeadlineWatch(lambda: engine, ledger, declared, WatchSettings(),
                          clock=clock, metrics=metrics)
    heartbeat = metrics.watch_last_round
    assert heartbeat._value.get() == 0
    before = time.time()
    assert watch.tick() == 0  # nothing due: the round completes
    last = heartbeat._value.get()
    assert last >= before
    watch.params = [pika.URLParameters("amqp://guest:guest@127.0.0.1:1/%2F")]
    clock.set("2026-12-09 10:00")
    _store(ledger, [_row("LATE-1", State.PROCESSING, "2026-12-08 09:00")])
    time.sleep(0.01)
    with pytest.raises(AMQPConnectionError):
        watch.tick()
    assert heartbeat._value.get() == last


def test_the_watch_decides_nothing_an_update_waiting_in_the_status_queue_may_change(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp, clock: FakeClock,
        make_watch: Callable[[], DeadlineWatch]) -> None:
    """casebroker was stopped while the agency sent its result in time: on the start, the
    watch's first round comes before the status router has applied it. Deciding on the
    ledger alone, it told the agency of a lateness and the citizen an apology, both for
    good. It decides only up to when the status queue was last seen empty, and updates
    that keep waiting hold its heartbeat back (its alert tells ops)."""
    running = start_broker()
    amqp.submit(declared, dossier("1.001193"))  # received Wed 25 Nov 09:00, due Thu 09:00
    agency, desk = declared.agency_queue("T.UBND.A"), declared.desk_queue("T.MC.B")
    code = str(take(amqp, agency, 1, "assignment")[0]["dossier_code"])
    take(amqp, desk, 1, "receipt")
    running.stop()
    watch = make_watch()
    clock.set("2026-11-26 07:00")  # two working hours left of eight: not at risk yet
    assert watch.tick() == 0 and watch.caught_up_at == clock.now
    heartbeat = watch.metrics.watch_last_round._value.get()
    report(amqp, declared, code, "T.UBND.A", "resolved", documents=[doc("ket-qua.pdf")],
           sent_at=vn("2026-11-26 08:30"))  # in time; nobody applies it yet

    clock.set("2026-11-27 09:30")  # past its due day, by the ledger alone
    assert watch.tick() == 0  # decided as at 07:00 the day before: nothing rises
    assert make_watch().tick() == 0  # a watch just started: nothing decided at all
    row = ledger.dossier(code)
    assert row is not None and (row["state"], row["watch_level"]) == (State.RECEIVED, 0)
    assert watch.metrics.watch_last_round._value.get() == heartbeat  # 26.5 h behind

    start_broker()  # the status router applies the result: on time, no apology
    assert [n["notice"] for n in take(amqp, desk, 1, "the result")] == ["result_ready"]
    assert watch.tick() == 0 and watch.caught_up_at == clock.now
    assert watch.metrics.watch_last_round._value.get() > heartbeat
    assert amqp.json_all(agency) == amqp.json_all(desk) == []


def _assignment_and_notice(amqp: Amqp, queue: str, notice: str) -> list[tuple[Any, bytes]]:
    """The next step's assignment and the notice that comes with it, as they reach the
    agency's queue."""
    got: list[tuple[Any, bytes]] = []

    def both() -> bool:
        got.extend(amqp.get_all(queue))
        return len(got) >= 2

    wait_for(both, what=f"step 2's assignment and {notice}")
    return got


def test_the_agency_a_hand_off_gives_an_at_risk_dossier_is_told_it_is_at_risk(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp, clock: FakeClock,
        make_watch: Callable[[], DeadlineWatch]) -> None:
    """The watch tells each level once, to the agency that holds the dossier then: the
    next step's agency hears it with its assignment, or it would never hear it."""
    start_broker()
    code = submit(amqp, declared, "T.UBND.A", procedure_code="1.000001",
                  return_desk_id="T.CENTRE")["dossier_code"]  # due Thu 3 Dec 09:00
    a, ca = declared.agency_queue("T.UBND.A"), declared.agency_queue("T.CA")
    watch = make_watch()
    clock.set("2026-12-02 10:00")  # 7 working hours left of 48; step 1 long overdue
    assert watch.tick() == 3
    assert sorted(n["notice"] for n in amqp.json_all(a)) == ["at_risk", "overdue"]
    report(amqp, declared, code, "T.UBND.A", "resolved", documents=[doc("khai-sinh.pdf")],
           sent_at=clock.now)
    got = _assignment_and_notice(amqp, ca, "the at-risk notice")
    assert [p.type for p, _ in got] == ["dossier.assigned", "agency.notice"]
    notice_id, notice = got[1][0].message_id, json.loads(got[1][1])
    assert notice["notice"] == "at_risk"
    assert notice_id == f"{code}:at_risk:20261203T020000Z:agency2"
    assert (notice["agency_id"], notice["dossier_code"]) == ("T.CA", code)
    assert notice["reason"] == ("due 2026-12-03T09:00+07:00: 7.0 working hours left (told "
                                "to the agency before you)")
    assert watch.tick() == 0  # the dossier's level stands; no second notice
    assert amqp.json_all(ca) == []


def test_the_agency_a_hand_off_gives_an_overdue_dossier_is_told_the_appointment(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp, clock: FakeClock,
        make_watch: Callable[[], DeadlineWatch]) -> None:
    """The apology gave the citizen a new appointment; after a hand-off the next agency is
    the one to keep it, and it was told only that the due date had passed."""
    start_broker()
    code = submit(amqp, declared, "T.UBND.A", procedure_code="1.000001",
                  return_desk_id="T.CENTRE")["dossier_code"]  # due Thu 3 Dec 09:00
    ca = declared.agency_queue("T.CA")
    clock.set("2026-12-04 10:00")  # the day after the dossier's due date
    make_watch().tick()
    apologies = [n for n in amqp.json_all(declared.desk_queue("T.CENTRE"))
                 if n["notice"] == "overdue_apology"]
    assert [datetime.fromisoformat(n["due_at"]) for n in apologies] == [
        vn("2026-12-07 10:00")]  # Fri + 8 working hours
    report(amqp, declared, code, "T.UBND.A", "resolved", documents=[doc("khai-sinh.pdf")],
           sent_at=clock.now)
    got = _assignment_and_notice(amqp, ca, "the overdue notice")
    notice = json.loads(got[1][1])
    assert (notice["notice"], notice["agency_id"]) == ("overdue", "T.CA")
    assert notice["reason"].endswith(
        "(told to the agency before you); the citizen was given a new appointment "
        "2026-12-07T10:00+07:00: have the result ready by then"), notice["reason"]


class _OffsetClock:
    """The real time, moved by ``offset_s``: a clock an operator or a resumed virtual
    machine set wrong."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def __call__(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset_s)


def test_a_round_on_a_clock_that_jumped_ahead_or_is_off_the_databases_decides_nothing(
        ledger: Ledger, declared: Topology, amqp: Amqp,
        caplog: pytest.LogCaptureFixture) -> None:
    # a notice sent is sent for good: a clock a day ahead for one round told agencies
    # and desks of lateness that was not, and nothing at the real due time (found by a
    # review)
    # due two days ago: overdue by any clock near the real one (overdue from the start of
    # the day after the due day), so every round that decides flags it; and one due now:
    # late only by a clock a day ahead
    zone = vn("2026-01-01").tzinfo
    late = (datetime.now(UTC) - timedelta(days=2)).astimezone(zone)
    today = datetime.now(UTC).astimezone(zone)
    engine, clock = Engine(load_catalog(MINI_CATALOG)), _OffsetClock()
    watch = DeadlineWatch(lambda: engine, ledger, declared, WatchSettings(), clock=clock,
                          check_clock=True)

    def level(code: str = "LATE") -> int:
        row = ledger.dossier(code)
        assert row is not None
        return int(row["watch_level"])

    try:
        with caplog.at_level("WARNING", logger="broker.consumers.deadlines"):
            clock.offset_s = -100  # within the database's tolerance
            assert watch.tick() == 0 and "round skipped" not in caplog.text  # no dossier yet
            _store(ledger, [_row(code, State.PROCESSING, due.strftime("%Y-%m-%d %H:%M:%S"))
                            for code, due in (("LATE", late), ("TODAY", today))])
            before = level()
            assert before < OVERDUE
            clock.offset_s = 100  # 200 s ahead in no time
            assert watch.tick() == 0 and level() == before
            assert "round skipped: the clock jumped 200 s ahead" in caplog.text
            watch.tick()  # the clock stays where it was put: believed from now on
            assert level() == OVERDUE
            caplog.clear()
            clock.offset_s = 86_400  # a day ahead: a jump, then off the database's,
            assert watch.tick() == 0  # round after round while it lasts
            assert "round skipped: the clock jumped 86300 s ahead" in caplog.text
            for _ in range(2):
                assert watch.tick() == 0
            assert caplog.text.count("round skipped: this process's clock is +86400 s off "
                                     "the database's") == 2
            assert level() == OVERDUE
            assert level("TODAY") < OVERDUE  # a day ahead, it would be
    finally:
        watch.close()


def test_an_update_applied_late_goes_by_the_time_its_sender_sent_it(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp, clock: FakeClock,
        capsys: pytest.CaptureFixture[str]) -> None:
    """casebroker stopped overnight (or the ledger was away, or a backlog waited): the
    agency's request and result, sent in time, are applied the next morning. The pause
    starts when the agency asked, and the result, given before its due time, is on time:
    no apology, the report counts it so. The process-control sheet keeps both times."""
    start_broker()
    desk = declared.desk_queue("T.MC.B")
    amqp.submit(declared, dossier("1.001193", submitted_at="2026-11-25T07:00:00+07:00"))
    code = str(take(amqp, declared.agency_queue("T.UBND.A"), 1, "assignment")[0]
               ["dossier_code"])  # one working day: due Wed 25 Nov 17:00
    take(amqp, desk, 1, "receipt")

    clock.set("2026-11-26 07:30")  # the next morning: the request waited all night
    report(amqp, declared, code, "T.UBND.A", "supplement_requested", reason="thiếu tờ khai",
           sent_at=vn("2026-11-25 15:00"))
    take(amqp, desk, 1, "supplement request")
    row = ledger.dossier(code)
    assert row is not None and row["paused_at"] == vn("2026-11-25 15:00")
    amqp.status(declared, DossierSupplemented(
        event_id=uuid.uuid4(), dossier_code=code, desk_id="T.MC.B",
        documents=[doc("to-khai.pdf")], sent_at=vn("2026-11-26 07:00")))
    take(amqp, desk, 1, "back in processing")
    row = ledger.dossier(code)  # two working hours paused: Wed 15:00 to 17:00
    assert row is not None and row["due_at"] == vn("2026-11-26 09:00")

    clock.set("2026-11-26 10:00")  # the result, given at 08:45, applied at 10:00
    report(amqp, declared, code, "T.UBND.A", "resolved", documents=[doc("ket-qua.pdf")],
           sent_at=vn("2026-11-26 08:45"))
    assert [n["notice"] for n in take(amqp, desk, 1, "the result, no apology")] == [
        "result_ready"]
    row = ledger.dossier(code)
    assert row is not None and row["finished_at"] == vn("2026-11-26 08:45")
    assert row["watch_level"] == 0
    resolved = ledger.history(code)[-1]
    assert (resolved["kind"], resolved["at"]) == ("resolve", vn("2026-11-26 08:45"))
    assert resolved["detail"]["recorded_at"] == vn("2026-11-26 10:00").isoformat()
    capsys.readouterr()
    assert main(["dossier", "show", code, "--db-url", ledger.url]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if " resolve " in x)
    assert line.split()[1:3] == ["2026-11-26", "08:45:00"]  # when the agency gave it
    assert "recorded 2026-11-26 10:00" in line
    counted = report_of(ledger, date(2026, 11, 25), date(2026, 11, 25), None,
                        ZoneInfo("Asia/Ho_Chi_Minh"), clock.now)["total"]
    assert (counted["on_time"], counted["late"]) == (1, 0)

    # an update dated before what the ledger holds of its dossier goes at that time: the
    # citizen cannot have collected the result before it was ready
    amqp.status(declared, DossierReturned(event_id=uuid.uuid4(), dossier_code=code,
                                          desk_id="T.MC.B", returned_at=vn("2026-11-26 08:00")))
    take(amqp, desk, 1, "closed")
    assert ledger.history(code)[-1]["at"] == vn("2026-11-26 08:45")


def test_a_hand_off_applied_late_starts_the_next_step_when_it_was_sent(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp, clock: FakeClock
        ) -> None:
    """A chain step finished Wednesday and applied Friday: the next agency's two working
    days run from Wednesday, and a result sent later than casebroker's clock (an agency's
    clock ahead) counts from casebroker's now."""
    start_broker()
    code = submit(amqp, declared, "T.UBND.A", procedure_code="1.000001",
                  return_desk_id="T.CENTRE")["dossier_code"]  # received Wed 25 Nov 09:00
    take(amqp, declared.desk_queue("T.MC.B"), 1, "receipt")
    clock.set("2026-11-27 10:00")
    report(amqp, declared, code, "T.UBND.A", "resolved", documents=[doc("khai-sinh.pdf")],
           sent_at=vn("2026-11-25 10:00"))
    second = take(amqp, declared.agency_queue("T.CA"), 1, "step 2")[0]
    assert second["step_due_at"] == vn("2026-11-27 10:00").isoformat()
    report(amqp, declared, code, "T.CA", "resolved", documents=[doc("thuong-tru.pdf")],
           sent_at=vn("2026-11-27 11:00"))  # an hour ahead of casebroker's clock
    third = take(amqp, declared.agency_queue("T.BHXH"), 1, "step 3")[0]
    assert third["step_due_at"] == vn("2026-12-01 10:00").isoformat()


def test_the_watch_sees_updates_its_own_status_consumer_took_and_has_not_applied(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp, clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The queue's count is of what waits there; a backlog taken into the consumer's
    window (2,000 deliveries), being worked through or retried, is not in it: the watch
    found the queue empty and apologized for a result sent in time."""
    slow, release = threading.Event(), threading.Event()
    handle = StatusRouter.handle

    def held(self: StatusRouter, deliveries: Any) -> Any:
        if slow.is_set():
            release.wait(30)
        return handle(self, deliveries)

    monkeypatch.setattr(StatusRouter, "handle", held)
    running = start_broker()
    amqp.submit(declared, dossier("1.001193"))  # due Thu 26 Nov 09:00
    agency, desk = declared.agency_queue("T.UBND.A"), declared.desk_queue("T.MC.B")
    code = str(take(amqp, agency, 1, "assignment")[0]["dossier_code"])
    take(amqp, desk, 1, "receipt")
    status = next(w for w in running.broker.service.workers
                  if w.queue == declared.status_queue)
    engine = Engine(load_catalog(MINI_CATALOG))
    watch = DeadlineWatch(lambda: engine, ledger, declared, WatchSettings(), clock=clock,
                          metrics=Metrics(), holding=lambda: status.unacked,
                          consuming=lambda: status.consuming)
    try:
        slow.set()
        clock.set("2026-11-26 10:00")
        report(amqp, declared, code, "T.UBND.A", "resolved", sent_at=vn("2026-11-26 08:00"))
        wait_for(lambda: status.unacked == 1, what="the update taken, not applied")
        assert watch.tick() == 0 and watch.caught_up_at is None
        release.set()
        assert [n["notice"] for n in take(amqp, desk, 1, "the result")] == ["result_ready"]
        wait_for(lambda: status.unacked == 0, what="the update acked")
        assert watch.tick() == 0 and watch.caught_up_at == clock.now
        assert amqp.json_all(agency) == amqp.json_all(desk) == []
    finally:
        release.set()
        watch.close()


def test_without_a_status_queue_the_watch_still_sends_what_it_decided_and_decides_nothing(
        declared: Topology, ledger: Ledger, amqp: Amqp, clock: FakeClock,
        make_watch: Callable[[], DeadlineWatch], caplog: pytest.LogCaptureFixture) -> None:
    _store(ledger, [_row("LATE-1", State.PROCESSING, "2026-12-08 09:00")])
    watch = make_watch()
    clock.set("2026-12-09 10:00")
    kept = watch.flag()  # decided, then the process died before publishing them
    assert len(kept) == 2
    amqp.ch.queue_delete(declared.status_queue)
    heartbeat = watch.metrics.watch_last_round._value.get()
    with caplog.at_level("WARNING", logger="broker.consumers.deadlines"):
        assert watch.tick() == 2  # before: the round failed (404) before sending them
    assert f"no status queue {declared.status_queue}" in caplog.text
    assert watch.metrics.watch_last_round._value.get() == heartbeat


def test_while_another_process_consumes_the_status_queue_notices_wait_for_what_it_holds(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp,
        clock: FakeClock) -> None:
    """Another `casebroker run` took the agency's result, sent in time, and stopped
    answering (frozen, its host paused) before applying it: this process found the queue
    empty and its own consumer idle, and told the agency and the citizen of a lateness,
    for good (found by a review: 200 of 200). Its updates are not seen here: while it
    consumes, notices are decided PEER_HOLD_S earlier, time for RabbitMQ to give back
    what a process gone silent holds."""
    agency, desk = declared.agency_queue("T.UBND.A"), declared.desk_queue("T.MC.B")
    running = start_broker()
    amqp.submit(declared, dossier("1.001193"))  # received Wed 25 Nov 09:00, due Thu 09:00
    code = str(take(amqp, agency, 1, "assignment")[0]["dossier_code"])
    take(amqp, desk, 1, "receipt")
    running.stop()
    # the other process: it takes the result and holds it, unacked
    peer = pika.BlockingConnection(pika.URLParameters(amqp_url()))
    taken: list[int] = []
    try:
        channel = peer.channel()
        channel.basic_qos(prefetch_count=10)
        channel.basic_consume(declared.status_queue,
                              lambda ch, method, props, body: taken.append(method.delivery_tag))
        report(amqp, declared, code, "T.UBND.A", "resolved", documents=[doc("ket-qua.pdf")],
               sent_at=vn("2026-11-26 08:30"))  # half an hour before it is due
        wait_for(lambda: peer.process_data_events(0.1) or taken, what="the peer's delivery")
        running = start_broker()  # this process: consuming the status queue beside it
        status = next(w for w in running.broker.service.workers
                      if w.queue == declared.status_queue)
        wait_for(lambda: status.consuming, what="this process consuming")
        engine = Engine(load_catalog(MINI_CATALOG))
        watch = DeadlineWatch(lambda: engine, ledger, declared, WatchSettings(), clock=clock,
                              metrics=Metrics(), holding=lambda: status.unacked,
                              consuming=lambda: status.consuming)
        try:
            # a minute past its due day, the queue empty and all idle here: decided as of
            # two minutes before, when RabbitMQ had not yet found a silent peer gone
            clock.set("2026-11-27 00:01")
            assert watch.tick() == 2  # at risk as of 23:59 (its agency and desk), no more
            assert watch.caught_up_at == clock.now
            row = ledger.dossier(code)
            assert row is not None and (row["state"], row["watch_level"]) == (
                State.RECEIVED, AT_RISK)
            assert [n["notice"] for n in take(amqp, agency, 1, "at risk")] == ["at_risk"]
            assert [n["notice"] for n in take(amqp, desk, 1, "at risk")] == ["at_risk"]
        finally:
            watch.close()
    finally:
        peer.close()  # gone: RabbitMQ gives the result back, and this process applies it
    # on time: the citizen hears of the result, with no apology, and the agency of nothing
    assert [n["notice"] for n in take(amqp, desk, 1, "the result")] == ["result_ready"]
    row = ledger.dossier(code)
    assert row is not None and (row["state"], row["watch_level"]) == (
        State.RESOLVED, AT_RISK)
    assert row["finished_at"] < row["due_at"]
    assert amqp.json_all(agency) == []


def test_a_count_rabbitmq_could_not_take_is_not_read_as_an_empty_status_queue(
        declared: Topology, ledger: Ledger, clock: FakeClock) -> None:
    """RabbitMQ 3.10 answers a passive declare of a quorum queue whose leader it cannot
    ask (a majority of its nodes down) with 0 messages and 0 consumers: a watch that took
    it for an empty status queue told of lateness 2,831 of 3,000 results sent in time,
    while they waited there (found by a review). Where this process consumes the status
    queue, RabbitMQ counting no consumer on it says its count is no answer; and while
    this process's consumer is not consuming, nothing is decided either."""
    engine = Engine(load_catalog(MINI_CATALOG))
    consuming = [True]
    watch = DeadlineWatch(lambda: engine, ledger, declared, WatchSettings(), clock=clock,
                          metrics=Metrics(), holding=lambda: 0,
                          consuming=lambda: consuming[0])
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url()))
    try:
        channel = conn.channel()
        tag = channel.basic_consume(declared.status_queue, lambda *_: None)
        earlier = clock.now
        assert watch.status_caught_up(earlier) == earlier  # counted, and nothing waits
        channel.basic_cancel(tag)  # RabbitMQ now counts 0 and 0, as when it cannot ask
        clock.set("2026-11-26 10:00")
        assert watch.status_caught_up(clock.now) == earlier
        consuming[0] = False  # this process reconnecting: the same
        channel.basic_consume(declared.status_queue, lambda *_: None)
        assert watch.status_caught_up(clock.now) == earlier
        consuming[0] = True
        assert watch.status_caught_up(clock.now) == clock.now
    finally:
        watch.close()
        conn.close()


def test_after_a_failure_every_page_of_leftovers_goes_out_not_only_the_first(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp, clock: FakeClock,
        make_watch: Callable[[], DeadlineWatch]) -> None:
    """On a start (or after a failed round) every notice left unconfirmed is published
    again; past the first page (``limit``), the rest waited until they were
    ``stale_after_s`` old (found by a review: 460 of 960 held two minutes)."""
    start_broker()
    for _ in range(3):
        _route(amqp, declared, "1.001193", "T.UBND.A")
    clock.set("2026-11-27 08:00")
    assert len(make_watch().flag()) == 6  # committed, then the process died
    engine = Engine(load_catalog(MINI_CATALOG))
    watch = DeadlineWatch(lambda: engine, ledger, declared, WatchSettings(limit=2),
                          clock=clock, metrics=Metrics())
    try:
        assert [watch.tick() for _ in range(4)] == [2, 2, 2, 0]  # at the same minute
    finally:
        watch.close()
    assert ledger.unconfirmed_notices(vn("2027-01-01 00:00")) == []
    assert len(amqp.json_all(declared.agency_queue("T.UBND.A"))) == 3


@pytest.mark.parametrize("ledger", ["sqlite"], indirect=True)  # a lock held by the test
def test_notices_published_while_the_ledger_is_away_a_moment_are_marked_once_it_is_back(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp, clock: FakeClock,
        make_watch: Callable[[], DeadlineWatch]) -> None:
    """A round that published its notices and found the ledger away for a few seconds (a
    restart) failed to mark them confirmed, and every one was published again at the
    next round (found by a review: 1,000 after an 8-second outage); it waits a little."""
    import sqlite3

    start_broker()
    _route(amqp, declared, "1.001193", "T.UBND.A")
    take(amqp, declared.desk_queue("T.MC.B"), 1, "receipt")
    clock.set("2026-11-27 08:00")
    assert len(make_watch().flag()) == 2  # committed, then the process died
    holder = sqlite3.connect(ledger.url.removeprefix("sqlite:///"), isolation_level=None,
                             check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # a writer that lets go after 7 s (busy timeout: 5)
    letting_go = threading.Timer(7.0, lambda: holder.execute("ROLLBACK"))
    letting_go.start()
    try:
        assert make_watch().tick() == 2
    finally:
        letting_go.join()
        holder.close()
    assert ledger.unconfirmed_notices(vn("2027-01-01 00:00")) == []
    assert len(amqp.json_all(declared.agency_queue("T.UBND.A"))) == 1
    assert len(amqp.json_all(declared.desk_queue("T.MC.B"))) == 1
