"""When RabbitMQ refuses what the router does: a publish with nowhere to go, a consumer
cancelled because its queue was deleted. Nothing is lost or doubled, the process keeps
running, and work resumes once the topology is back."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from broker.amqp import amqp_url
from broker.ledger import Ledger
from broker.rules.catalog import Catalog
from broker.security import Management
from broker.service import declare_topology
from broker.topology import Topology
from tests.conftest import RunningBroker, queue_depth, wait_for
from tests.helpers import Amqp, dossier, length_cap

pytestmark = pytest.mark.integration




def _receipt_ids(amqp: Amqp, queue: str) -> list[str]:
    return [p.message_id for p, _ in amqp.get_all(queue)]


def test_a_refused_publish_holds_back_only_its_own_dossier(
        declared: Topology, mini_catalog: Catalog, ledger: Ledger,
        run_broker: Callable[..., RunningBroker], amqp: Amqp) -> None:
    running = run_broker(batch_size=50, retry_initial_s=0.2, retry_max_s=2.0)
    amqp.submit(declared, dossier(desk_id="T.MC.A"))  # the router has declared and consumes
    wait_for(lambda: queue_depth(declared.desk_queue("T.MC.A")), what="the first receipt")
    # desk B's queue is gone, and so is dead.desk, where an unroutable notice would go:
    # RabbitMQ returns desk B's receipts and their dead-letter copies
    amqp.delete_queues(declared.desk_queue("T.MC.B"), declared.dead_queue("desk"))
    good = [dossier(desk_id="T.MC.A") for _ in range(12)]
    stuck = [dossier(desk_id="T.MC.B") for _ in range(3)]
    for i, d in enumerate(good):
        amqp.submit(declared, d)
        if i % 4 == 0:
            amqp.submit(declared, stuck[i // 4])

    desk_a: set[str] = set()
    wait_for(lambda: desk_a.update(_receipt_ids(amqp, declared.desk_queue("T.MC.A")))
             or len(desk_a) == len(good) + 1, what="every good dossier's receipt")
    refused = running.broker.metrics.registry.get_sample_value(
        "casebroker_retries_total", {"source": "intake", "kind": "refused"})
    assert refused and refused >= 1
    # a refused batch's good dossiers are redone once, each on its own, and then left
    # alone: once each of desk B's dossiers has been refused, desk A receives nothing
    # more while they keep being refused (without that, every round re-sent them all)
    def quiet_for_3s() -> bool:
        amqp.get_all(declared.desk_queue("T.MC.A"))
        time.sleep(3)
        return not _receipt_ids(amqp, declared.desk_queue("T.MC.A"))

    wait_for(quiet_for_3s, timeout_s=20, what="desk A left alone")
    refused_later = running.broker.metrics.registry.get_sample_value(
        "casebroker_retries_total", {"source": "intake", "kind": "refused"})
    assert refused_later and refused_later > refused  # desk B's still going round
    assert running.thread.is_alive()

    declare_topology(amqp_url(), declared, mini_catalog)  # desk B's queues are back
    # a retry during the declaration may find dead.desk back before desk B's queue: its
    # receipt is then dead-lettered there (reason "unroutable"), to be replayed; on a slow
    # machine one may even have reached the delivery limit first (then it is in
    # dead.intake, whence a replay republishes its receipt)
    desk_b: set[str] = set()
    wait_for(lambda: desk_b.update(_receipt_ids(amqp, declared.desk_queue("T.MC.B")),
                                   _receipt_ids(amqp, declared.dead_queue("desk")),
                                   _receipt_ids(amqp, declared.dead_queue("intake")))
             or len(desk_b) == len(stuck), timeout_s=30, what="the held-back receipts")
    wait_for(lambda: ledger.count_by_state() == {2: 1 + len(good) + len(stuck)},
             what="every dossier once in the ledger")
    wait_for(lambda: queue_depth(declared.intake_queue) == 0, what="every delivery acked")
    assert running.thread.is_alive()


def test_a_consumer_the_broker_cancels_consumes_again_once_its_queue_is_back(
        declared: Topology, mini_catalog: Catalog, ledger: Ledger,
        run_broker: Callable[..., RunningBroker], amqp: Amqp) -> None:
    run_broker()
    amqp.submit(declared, dossier())
    wait_for(lambda: ledger.count_by_state() == {2: 1}, what="the first dossier")
    amqp.delete_queues(declared.intake_queue)  # RabbitMQ cancels the router's consumer
    time.sleep(1.5)  # the router's first try to consume again finds no queue
    declare_topology(amqp_url(), declared, mini_catalog)
    amqp.submit(declared, dossier())
    wait_for(lambda: ledger.count_by_state() == {2: 2}, timeout_s=30,
             what="a dossier sent after the queue came back")


@pytest.mark.parametrize("ledger", ["sqlite"], indirect=True)  # 20 rounds: one ledger will do
def test_a_message_rabbitmq_keeps_refusing_reaches_the_delivery_limit_alone(
        declared: Topology, ledger: Ledger, run_broker: Callable[..., RunningBroker],
        amqp: Amqp) -> None:
    # each refusal sends the delivery back with basic.reject, which the quorum queue
    # counts; after DELIVERY_LIMIT tries RabbitMQ moves it to dead.intake, where it can be
    # replayed once desk B's queue is back (the inbox republishes its receipt)
    run_broker(batch_size=50, retry_initial_s=0.2, retry_max_s=0.2)
    amqp.submit(declared, dossier(desk_id="T.MC.A"))
    wait_for(lambda: queue_depth(declared.desk_queue("T.MC.A")), what="the first receipt")
    amqp.delete_queues(declared.desk_queue("T.MC.B"), declared.dead_queue("desk"))
    stuck = dossier(desk_id="T.MC.B")
    amqp.submit(declared, stuck)
    for _ in range(5):
        amqp.submit(declared, dossier(desk_id="T.MC.A"))
    dead = wait_for(lambda: amqp.get_all(declared.dead_queue("intake")), timeout_s=60,
                    what="the refused dossier in dead.intake")
    assert [p.message_id for p, _ in dead] == [f"submit:{stuck.submission_id}"]
    assert dead[0][0].headers["x-first-death-reason"] == "delivery_limit"
    wait_for(lambda: queue_depth(declared.intake_queue) == 0, what="intake drained")
    assert ledger.count_by_state() == {2: 7}  # committed once; only its receipt is missing


@contextlib.contextmanager
def _capped_desk_queue(declared: Topology, amqp: Amqp, desk: str) -> Iterator[Management]:
    """A desk queue capped at 1 message by a policy, and holding one: with the topology's
    reject-publish overflow RabbitMQ nacks publishes to it, as it does when a quorum queue
    has no leader. The policy is deleted on leaving."""
    amqp.publish(declared.desk_exchange, desk, b"{}", message_id="filler")
    with length_cap(declared.desk_queue(desk), f"{declared.prefix}-full") as cap:
        yield cap.api


def _feed_until_refused(amqp: Amqp, declared: Topology, dossiers: list[Any],
                        caplog: pytest.LogCaptureFixture) -> int:
    """Submit the dossiers one by one until the router logs a refusal (a quorum queue
    tells a channel to refuse once it is over its cap, so the first may still go in);
    return how many were sent."""
    sent = 0

    def refused() -> bool:
        nonlocal sent
        if sent < min(10, len(dossiers)):
            amqp.submit(declared, dossiers[sent])
            sent += 1
            time.sleep(0.5)
        return any("was refused by RabbitMQ" in r.getMessage() for r in caplog.records)

    wait_for(refused, timeout_s=30, what="a refusal")
    return sent


@pytest.mark.parametrize("ledger", ["sqlite"], indirect=True)  # the worker's doing: one will do
def test_publishes_rabbitmq_keeps_nacking_go_out_on_a_new_channel_and_the_log_names_the_queue(
        declared: Topology, ledger: Ledger, run_broker: Callable[..., RunningBroker],
        amqp: Amqp, caplog: pytest.LogCaptureFixture) -> None:
    # desk B's queue over its cap: the log says which queue refused, so an operator knows
    # where to look
    queue = declared.desk_queue("T.MC.B")
    with _capped_desk_queue(declared, amqp, "T.MC.B") as api:
        run_broker(retry_initial_s=0.2, retry_max_s=1.0)
        with caplog.at_level(logging.ERROR, logger="broker.amqp"):
            sent = _feed_until_refused(
                amqp, declared, [dossier(desk_id="T.MC.B") for _ in range(10)], caplog)
        (line, *_) = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert f"(nacked: {declared.desk_exchange}/T.MC.B)" in line, line
    # the cap gone, RabbitMQ 3.10 still refuses on the channel it told to refuse, and
    # would for ever: after a few refused batches in a row the router publishes on a new
    # channel, and the receipts go out, redone from the intake queue, none doubled
    ids: list[str] = []
    with caplog.at_level(logging.WARNING, logger="broker.amqp"):
        wait_for(lambda: ids.extend(p.message_id for p, _ in amqp.get_all(queue))
                 or len(ids) >= 1 + sent, timeout_s=30, what="every receipt")
    assert any("nacked in a row on one channel; closing it" in r.getMessage()
               for r in caplog.records)
    wait_for(lambda: api._call("GET", f"/api/queues/%2F/{declared.intake_queue}")[
        "messages"] == 0, what="every delivery acked")  # unacked ones too
    ids += [p.message_id for p, _ in amqp.get_all(queue)]
    assert ids.count("filler") == 1 and len(ids) == len(set(ids)) == 1 + sent
    assert ledger.count_by_state() == {2: sent}


@pytest.mark.parametrize("ledger", ["sqlite"], indirect=True)  # the worker's doing: one will do
def test_a_queue_that_goes_on_refusing_gets_one_new_channel_and_others_go_through(
        declared: Topology, ledger: Ledger, run_broker: Callable[..., RunningBroker],
        amqp: Amqp, caplog: pytest.LogCaptureFixture) -> None:
    # desk B's queue stays over its cap: a new channel does not help, and closing channel
    # after channel would give back the whole prefetch window each time, every delivery a
    # step nearer its delivery limit (found by a review: desk A's good dossiers ended in
    # dead.intake in 24 s, and a batch with the handler thread was published on the
    # closing channel, which took the connection down)
    with _capped_desk_queue(declared, amqp, "T.MC.B"):
        caplog.set_level(logging.INFO, logger="broker.amqp")
        run_broker(retry_initial_s=0.05, retry_max_s=0.1)
        stuck = [dossier(desk_id="T.MC.B") for _ in range(100)]
        good = [dossier(desk_id="T.MC.A") for _ in range(20)]
        fed = _feed_until_refused(amqp, declared, stuck, caplog)
        for d in stuck[fed:] + good:
            amqp.submit(declared, d)
        receipts: set[str] = set()
        wait_for(lambda: receipts.update(p.message_id for p, _ in amqp.get_all(
            declared.desk_queue("T.MC.A"))) or len(receipts) == len(good), timeout_s=90,
            what="desk A's receipts")
        time.sleep(8)  # desk B's alone now, refused batch after batch
        said = [r.getMessage() for r in caplog.records]
        assert sum("nacked in a row on one channel" in m for m in said) == 1
        assert not [m for m in said if "connection to RabbitMQ lost" in m
                    or "fault in the I/O loop" in m]
        dead = {p.message_id for p, _ in amqp.get_all(declared.dead_queue("intake"))}
        assert not dead & {f"submit:{d.submission_id}" for d in good}
