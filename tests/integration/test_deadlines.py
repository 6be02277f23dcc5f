"""The deadline watch on the real RabbitMQ and both ledgers: one notice per party and level."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest

from broker.consumers.deadlines import DeadlineWatch, WatchSettings
from broker.ledger import Ledger
from broker.messages import DossierStatus
from broker.rules.catalog import load_catalog
from broker.rules.engine import Engine
from broker.topology import Topology
from monitoring.metrics import Metrics
from tests.conftest import MINI_CATALOG, wait_for
from tests.helpers import Amqp, dossier
from tests.integration.conftest import FakeClock, vn
from tests.integration.test_lifecycle_flow import take

pytestmark = pytest.mark.integration


@pytest.fixture
def make_watch(ledger: Ledger, declared: Topology, clock: FakeClock
               ) -> Iterator[Callable[[], DeadlineWatch]]:
    """Deadline watches as separate `casebroker run` processes would have; closed after."""
    engine = Engine(load_catalog(MINI_CATALOG))
    made: list[DeadlineWatch] = []

    def make() -> DeadlineWatch:
        made.append(DeadlineWatch(lambda: engine, ledger, declared, WatchSettings(),
                                  clock=clock, metrics=Metrics()))
        return made[-1]

    yield make
    for w in made:
        w.close()


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
        make_watch: Callable[[], DeadlineWatch]) -> None:
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

    clock.set("2026-12-09 09:30")
    _race([a, restarted])
    b.tick()
    assert _notices(amqp, declared.agency_queue("T.SO.TP")) == [("overdue", slow)]
    assert _notices(amqp, declared.desk_queue("T.MC.B")) == [("overdue_apology", slow)]
    assert _notices(amqp, declared.agency_queue("T.UBND.A")) == []

    gauge = b.metrics.overdue_dossiers
    assert gauge.labels("T.SO.TP")._value.get() == 1
    assert gauge.labels("T.UBND.A")._value.get() == 1
    assert gauge.labels("T.CA")._value.get() == 0
    kinds = [(e["kind"], e["actor"]) for e in ledger.history(slow)]
    assert kinds == [("received", "T.MC.B"), ("at_risk", "deadline-watch"),
                     ("overdue", "deadline-watch")]
    assert ledger.unconfirmed_notices(vn("2027-01-01 00:00")) == []


def test_notices_left_unconfirmed_by_a_dead_process_are_published_on_start(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp, clock: FakeClock,
        make_watch: Callable[[], DeadlineWatch]) -> None:
    start_broker()
    code = _route(amqp, declared, "1.001193", "T.UBND.A")
    clock.set("2026-11-27 08:00")
    flagged = make_watch().flag()  # committed, then the process died
    assert sorted(o.type for o in flagged) == ["agency.notice", "desk.notice"]
    assert _notices(amqp, declared.agency_queue("T.UBND.A")) == []
    assert len(ledger.unconfirmed_notices(vn("2027-01-01 00:00"))) == 2

    clock.set("2026-11-27 08:01")
    assert make_watch().tick() == 2
    got = amqp.get_all(declared.agency_queue("T.UBND.A"))
    assert [p.message_id for p, _ in got] == [flagged[0].message_id]
    assert _notices(amqp, declared.desk_queue("T.MC.B")) == [("overdue_apology", code),
                                                             ("receipt", code)]
    assert ledger.unconfirmed_notices(vn("2027-01-01 00:00")) == []


def test_casebroker_run_sends_the_overdue_notice_and_counts_it(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp, clock: FakeClock) -> None:
    running = start_broker(watch=WatchSettings(interval_s=0.05))
    code = _route(amqp, declared, "1.001193", "T.UBND.A")
    take(amqp, declared.desk_queue("T.MC.B"), 1, "receipt")
    gauge = running.broker.metrics.overdue_dossiers
    clock.set("2026-11-26 09:01")
    overdue = take(amqp, declared.agency_queue("T.UBND.A"), 1, "overdue notice")[0]
    assert (overdue["notice"], overdue["dossier_code"]) == ("overdue", code)
    apology = take(amqp, declared.desk_queue("T.MC.B"), 1, "apology")[0]
    assert apology["notice"] == "overdue_apology"
    wait_for(lambda: gauge.labels("T.UBND.A")._value.get() == 1, what="gauge at 1")
    sent = running.broker.metrics.deadline_notices_total
    assert sent.labels("overdue", "agency")._value.get() == 1
    assert sent.labels("overdue_apology", "desk")._value.get() == 1

    amqp.status(declared, DossierStatus(update_id=uuid.uuid4(), dossier_code=code,
                                        agency_id="T.UBND.A", status="resolved",
                                        sent_at=datetime.now(UTC)))
    result = take(amqp, declared.desk_queue("T.MC.B"), 1, "result, no second apology")[0]
    assert result["notice"] == "result_ready"
    wait_for(lambda: gauge.labels("T.UBND.A")._value.get() == 0, what="gauge back to 0")
    assert amqp.json_all(declared.desk_queue("T.MC.B")) == []
