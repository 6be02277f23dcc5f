"""The deadline watch when RabbitMQ refuses a notice for good (its queue and its
dead-letter queue both gone): the other notices still go out, in this round and later
ones. Real RabbitMQ, both ledgers."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from broker.consumers.deadlines import DeadlineWatch, WatchSettings
from broker.ledger import Ledger
from broker.topology import Topology
from tests.helpers import Amqp
from tests.integration.conftest import FakeClock
from tests.integration.test_deadlines import _notices, _route
from tests.integration.test_lifecycle_flow import take

pytestmark = pytest.mark.integration


def test_a_notice_neither_its_queue_nor_its_dead_letter_queue_takes_holds_up_no_other(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp, clock: FakeClock,
        make_watch: Callable[[], DeadlineWatch]) -> None:
    """An agency's queue gone and ``dead.agency`` gone too (deleted by mistake, being
    declared again): its notice is kept to publish again. Before, the dead-letter publish
    raised out of the round: nothing after it in the round was published, no dossier was
    flagged in any round after, and every other agency and desk went without its notices
    until an operator brought both queues back."""
    start_broker()
    quick = _route(amqp, declared, "1.001193", "T.UBND.A")  # due Thu 26 Nov 09:00
    slow = _route(amqp, declared, "1.004227", "T.SO.TP")  # due Wed 9 Dec 09:00
    desk = declared.desk_queue("T.MC.B")
    take(amqp, desk, 2, "receipts")
    lost, dead = declared.agency_queue("T.UBND.A"), declared.dead_queue("agency")
    amqp.ch.queue_unbind(lost, declared.agency_exchange, "T.UBND.A")
    amqp.ch.queue_unbind(dead, declared.dead_letter_exchange, "agency")
    watch = make_watch()

    clock.set("2026-12-08 10:00")  # quick long overdue (flagged first), slow at risk
    assert watch.tick() == 3
    assert _notices(amqp, declared.agency_queue("T.SO.TP")) == [("at_risk", slow)]
    assert _notices(amqp, desk) == [("at_risk", slow), ("overdue_apology", quick)]
    assert amqp.get_all(lost) == [] and amqp.get_all(dead) == []
    (left,) = ledger.unconfirmed_notices(None)
    assert (left.correlation_id, left.routing_key) == (quick, "T.UBND.A")
    sent = watch.metrics.deadline_notices_total
    assert sent.labels("overdue", "agency")._value.get() == 0
    assert watch.metrics.returned_total.labels("watch", declared.agency_exchange
                                               )._value.get() == 0

    amqp.ch.queue_bind(lost, declared.agency_exchange, "T.UBND.A")
    amqp.ch.queue_bind(dead, declared.dead_letter_exchange, "agency")
    assert watch.tick() == 1  # the queues back: the same notice, under its id, once
    got = amqp.get_all(lost)
    assert [(p.message_id, json.loads(b)["notice"]) for p, b in got] == [
        (left.message_id, "overdue")]
    assert sent.labels("overdue", "agency")._value.get() == 1
    assert ledger.unconfirmed_notices(None) == []
    assert watch.tick() == 0
    assert amqp.get_all(lost) == [] and _notices(amqp, desk) == []


def test_leftovers_refused_for_good_do_not_keep_later_ones_from_being_tried(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp, clock: FakeClock,
        make_watch: Callable[[], DeadlineWatch]) -> None:
    """Leftovers were read oldest first, ``limit`` a round: as many notices refused for
    good (a queue and its dead-letter queue both gone) as the limit kept every later
    leftover from being published again, though its own queue was back. Here the limit
    is 1, and one notice is refused for good."""
    start_broker()
    quick = _route(amqp, declared, "1.001193", "T.UBND.A")  # due Thu 26 Nov 09:00
    slow = _route(amqp, declared, "1.004227", "T.SO.TP")  # due Wed 9 Dec 09:00
    take(amqp, declared.desk_queue("T.MC.B"), 2, "receipts")
    gone, back = declared.agency_queue("T.UBND.A"), declared.agency_queue("T.SO.TP")
    dead = declared.dead_queue("agency")
    amqp.ch.queue_unbind(gone, declared.agency_exchange, "T.UBND.A")
    amqp.ch.queue_unbind(back, declared.agency_exchange, "T.SO.TP")
    amqp.ch.queue_unbind(dead, declared.dead_letter_exchange, "agency")
    watch = make_watch()
    watch.settings = WatchSettings(limit=1)

    clock.set("2026-12-08 10:00")  # quick overdue (flagged first), then slow at risk
    watch.tick()
    watch.tick()
    left = ledger.unconfirmed_notices(None)
    assert [(n.routing_key, n.correlation_id) for n in left] == [("T.UBND.A", quick),
                                                                 ("T.SO.TP", slow)]
    amqp.ch.queue_bind(back, declared.agency_exchange, "T.SO.TP")
    for minutes in (10, 20, 30):  # past stale_after_s each round
        clock.set(f"2026-12-08 10:{minutes}")
        watch.tick()
    assert _notices(amqp, back) == [("at_risk", slow)]
    assert [n.correlation_id for n in ledger.unconfirmed_notices(None)] == [quick]
    assert amqp.get_all(gone) == [] and amqp.get_all(dead) == []
