"""`/livez` and `/readyz` of a running router, on the real RabbitMQ and ledger."""

from __future__ import annotations

import re
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import text

from broker.amqp import amqp_url
from broker.consumers.deadlines import WatchSettings
from broker.health import Probes, starting
from broker.ledger import Ledger
from broker.rules.catalog import Catalog
from broker.service import declare_topology
from broker.topology import Topology
from monitoring.metrics import Metrics
from tests.conftest import RunningBroker, ready_and_consumers, wait_for
from tests.helpers import (
    Amqp,
    dossier,
    free_port,
    hold_router_past_duplicate_check,
    length_cap,
    probe,
)
from tests.integration.test_client import SlowLink


@pytest.fixture
def served(run_broker: Callable[..., RunningBroker]
           ) -> Iterator[Callable[..., tuple[RunningBroker, int]]]:
    """A router and its metrics server with the probes; the server stopped afterwards."""
    stops: list[Callable[[], None]] = []

    def start(stuck_batch_s: float = 120.0, slow_batch_s: float = 30.0,
              **settings: Any) -> tuple[RunningBroker, int]:
        running = run_broker(**settings)
        port = free_port()
        probes = Probes(running.broker, stuck_batch_s=stuck_batch_s, slow_batch_s=slow_batch_s)
        stops.append(running.broker.metrics.serve(port, probes=probes.routes()))
        return running, port

    yield start
    for stop in stops:
        stop()


def _answer(port: int, path: str, status: int) -> dict[str, Any]:
    """Wait until ``path`` answers ``status``; its JSON then."""
    found: dict[str, Any] = {}

    def answered() -> bool:
        nonlocal found
        got, found = probe(port, path)
        return got == status

    wait_for(answered, timeout_s=20, what=f"{path} answering {status}")
    return found


@pytest.mark.parametrize("ledger", ["sqlite"], indirect=True)  # a lock held by a test
def test_ready_once_consuming_held_up_while_the_ledger_is_locked_then_ready_again(
        declared: Topology, ledger: Ledger, served: Callable[..., tuple[RunningBroker, int]],
        amqp: Amqp) -> None:
    running, port = served(stuck_batch_s=1.0, retry_initial_s=0.2, retry_max_s=0.5,
                           watch=WatchSettings())
    ready = _answer(port, "/readyz", 200)
    assert ready["status"] == "ready" and ready["problems"] == []
    assert ready["queues"] == {
        q: {"consuming": True, "held_up_s": None, "unacked": 0, "confirms_awaited_s": None}
        for q in (declared.intake_queue, declared.status_queue)}
    assert ready["deadline_watch_last_round_s_ago"] >= 0
    assert probe(port, "/livez")[0] == 200
    # /metrics is still there, with what the probes say, for CasebrokerNotRouting
    assert {"casebroker_ready 1.0", "casebroker_live 1.0"} <= _gauges(port)

    lock = sqlite3.connect(ledger.url.removeprefix("sqlite:///"), isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # the router's writes wait, 5 s each, then fail
    try:
        amqp.submit(declared, dossier())
        # the handler waits on the lock longer than this test's stuck_batch_s
        live = _answer(port, "/livez", 503)
        assert live["status"] == "not live"
        assert len(live["problems"]) == 1 and re.fullmatch(
            r"thread handler-intake has been on one batch for \d+ s \(a ledger call that "
            r"does not return\?\)", live["problems"][0]), live
        not_ready = _answer(port, "/readyz", 503)
        assert not_ready["status"] == "not ready"
        assert len(not_ready["problems"]) == 1 and re.fullmatch(
            rf"{re.escape(declared.intake_queue)}: held up for \d+ s: ledger unavailable: .+",
            not_ready["problems"][0]), not_ready
        held_up_s = not_ready["queues"][declared.intake_queue]["held_up_s"]
        assert isinstance(held_up_s, float) and held_up_s >= 0  # since its first failure
        assert not_ready["queues"][declared.intake_queue]["unacked"] == 1
        assert "casebroker_ready 0.0" in _gauges(port)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    wait_for(lambda: ledger.count_by_state() == {2: 1}, what="the dossier routed")
    again = _answer(port, "/readyz", 200)
    assert again["queues"][declared.intake_queue] == {
        "consuming": True, "held_up_s": None, "unacked": 0, "confirms_awaited_s": None}
    assert _answer(port, "/livez", 200)["problems"] == []
    assert running.thread.is_alive()


@pytest.mark.parametrize("ledger", ["sqlite"], indirect=True)  # a lock held by the test
def test_a_ledger_away_past_the_hold_gives_the_window_back_until_it_takes_writes(
        declared: Topology, ledger: Ledger, served: Callable[..., tuple[RunningBroker, int]],
        amqp: Amqp) -> None:
    """Held through a long outage, the window would be given back by RabbitMQ's
    consumer_timeout each half hour, a step nearer each delivery's limit every time: an
    outage of ten hours dead-lettered valid dossiers (a review). Past the hold, the
    router gives its deliveries back once and consumes nothing until the ledger answers;
    the status queue, whose worker has failed on nothing, goes on consuming."""
    running, port = served(hold_s=1.0, retry_initial_s=0.2, retry_max_s=0.5)
    _answer(port, "/readyz", 200)
    lock = sqlite3.connect(ledger.url.removeprefix("sqlite:///"), isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # every write of the router waits 5 s, then fails
    try:
        for _ in range(30):
            amqp.submit(declared, dossier())
        wait_for(lambda: ready_and_consumers(declared.intake_queue) == (30, 0),
                 timeout_s=40, what="the 30 deliveries given back and the consumer gone")
        parked = _answer(port, "/readyz", 503)
        given_back = running.broker.metrics.ledger_given_back
        assert (given_back.labels("intake")._value.get(),
                given_back.labels("status")._value.get()) == (1, 0)
        assert parked["queues"][declared.intake_queue]["consuming"] is False
        assert parked["queues"][declared.intake_queue]["unacked"] == 0
        assert parked["queues"][declared.status_queue]["consuming"] is True
        assert any(p == f"{declared.intake_queue}: not consuming until the ledger takes "
                        "writes again (its deliveries given back to the queue)"
                   for p in parked["problems"]), parked
        time.sleep(3)  # asked again and again meanwhile: still away, still not consumed
        assert ready_and_consumers(declared.intake_queue) == (30, 0)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    wait_for(lambda: ledger.count_by_state() == {2: 30}, timeout_s=30,
             what="the 30 dossiers routed once the ledger answers")
    # committed before published: ready, its last batch may still await its confirms
    wait_for(lambda: (got := probe(port, "/readyz"))[0] == 200
             and got[1]["queues"][declared.intake_queue]["unacked"] == 0,
             what="ready, every delivery acked")
    assert probe(port, "/readyz")[1]["queues"][declared.intake_queue] == {
        "consuming": True, "held_up_s": None, "unacked": 0, "confirms_awaited_s": None}
    assert given_back.labels("intake")._value.get() == 0
    receipts = amqp.json_all(declared.desk_queue("T.MC.B"))
    assert len(receipts) == 30 and len({r["dossier_code"] for r in receipts}) == 30
    assert ready_and_consumers(declared.intake_queue) == (0, 1)
    assert running.thread.is_alive()


@pytest.mark.parametrize("ledger", ["sqlite"], indirect=True)  # a lock held by the test
def test_a_parked_queue_whose_probe_a_lost_connection_cut_short_is_probed_again(
        declared: Topology, ledger: Ledger, served: Callable[..., tuple[RunningBroker, int]],
        amqp: Amqp) -> None:
    """A probe of the ledger on the handler's thread (waiting 5 s on the lock) when the
    connection was lost: the new channel's probe was not started (one was running), and
    the old one's answer was dropped with its channel. Nothing asked again, ever: the
    queue stayed unconsumed after the ledger came back (a review)."""
    running, port = served(hold_s=1.0, retry_initial_s=0.2, retry_max_s=0.5)
    _answer(port, "/readyz", 200)
    service = running.broker.service
    lock = sqlite3.connect(ledger.url.removeprefix("sqlite:///"), isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # a probe waits 5 s on it, then fails
    try:
        for _ in range(3):
            amqp.submit(declared, dossier())
        wait_for(lambda: ready_and_consumers(declared.intake_queue) == (3, 0),
                 timeout_s=40, what="the deliveries given back")
        time.sleep(1)  # probes follow each other 0.2-0.5 s apart: one is waiting now
        connection = service.connection
        assert connection is not None
        service.call_threadsafe(connection.close)
        wait_for(lambda: service.connection is not connection and service.connection_open,
                 what="connected again")
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    wait_for(lambda: ledger.count_by_state() == {2: 3}, timeout_s=30,
             what="the 3 dossiers routed once the ledger is back")
    assert _answer(port, "/readyz", 200)["queues"][declared.intake_queue]["consuming"]


@pytest.mark.parametrize("ledger", ["sqlite"], indirect=True)  # a lock held by the test
def test_a_parked_queue_another_consumer_emptied_is_consumed_once_the_ledger_answers(
        declared: Topology, ledger: Ledger, served: Callable[..., tuple[RunningBroker, int]],
        amqp: Amqp) -> None:
    """Parked, a worker takes one delivery to try the ledger before consuming again. With
    a second router that took everything (its ledger writes went through), there was
    none to take: it stayed parked, not ready, while the other routed (a review)."""
    running, port = served(hold_s=1.0, retry_initial_s=0.2, retry_max_s=0.5)
    _answer(port, "/readyz", 200)
    lock = sqlite3.connect(ledger.url.removeprefix("sqlite:///"), isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        amqp.submit(declared, dossier())
        wait_for(lambda: ready_and_consumers(declared.intake_queue) == (1, 0),
                 timeout_s=40, what="the delivery given back")
        # the other router: it takes it (and routes it, as far as this one can tell)
        wait_for(lambda: amqp.get_all(declared.intake_queue), what="the delivery taken")
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    wait_for(lambda: ready_and_consumers(declared.intake_queue) == (0, 1), timeout_s=30,
             what="the queue consumed again")
    amqp.submit(declared, dossier())
    wait_for(lambda: ledger.count_by_state() == {2: 1}, what="a new dossier routed")
    assert _answer(port, "/readyz", 200)["problems"] == []


@pytest.mark.parametrize("ledger", ["sqlite"], indirect=True)  # a lock held by the test
def test_a_window_being_given_back_is_not_handed_over_while_the_cancel_is_on_its_way(
        declared: Topology, ledger: Ledger, served: Callable[..., tuple[RunningBroker, int]],
        amqp: Amqp) -> None:
    """The window goes back at RabbitMQ's cancel-ok (what it sends before it reads the
    cancel joins it). With no hold and a cancel-ok slower than the pause after the
    failure, the pause's end handed the window to the handler again: nacked at the
    cancel-ok while the handler had it, its acks then closed the channel (unknown
    delivery tag), and its redelivery sent the desk a second receipt (a review)."""
    link = SlowLink()
    try:
        _, port = served(hold_s=0.0, retry_initial_s=0.2, retry_max_s=0.5, url=link.url)
        _answer(port, "/readyz", 200)
        queue = declared.intake_queue
        lock = sqlite3.connect(ledger.url.removeprefix("sqlite:///"), isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # a write waits 5 s on it, then fails
        try:
            amqp.submit(declared, dossier())
            wait_for(lambda: probe(port, "/readyz")[1]["queues"][queue]["unacked"] == 1,
                     what="the dossier with the handler")
            link.stall()  # the cancel-ok, when it comes, is held back
            wait_for(lambda: probe(port, "/readyz")[1]["queues"][queue]["held_up_s"]
                     is not None, timeout_s=15, what="the first failure")
            time.sleep(1)  # the pause after it (0.2 s) is over: the window is not handed
            link.release()
            time.sleep(1)  # the cancel-ok in: what was held is back in the queue
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        wait_for(lambda: ledger.count_by_state() == {2: 1}, timeout_s=30, what="routed")
        time.sleep(3)  # a channel closed by a wrong ack is reopened in 1 s, and redelivers
        assert len(amqp.json_all(declared.desk_queue("T.MC.B"))) == 1
        assert ledger.count_inbox_outcomes() == {"routed": 1}
        assert _answer(port, "/readyz", 200)["queues"][queue]["consuming"]
    finally:
        link.close()


@pytest.mark.parametrize("ledger", ["sqlite"], indirect=True)  # a lock held by the test
def test_an_outage_whose_deliveries_left_with_their_channel_does_not_shorten_the_next_hold(
        declared: Topology, ledger: Ledger, served: Callable[..., tuple[RunningBroker, int]],
        amqp: Amqp) -> None:
    """The hold ran from an outage's first failure until a batch went through here. When
    the deliveries that failed left with their channel (the connection lost, another
    router took them), it ran on: a later outage gave the window back at its first
    failure (a review). Each channel holds its window from its own first failure."""
    import pika

    running, port = served(hold_s=8.0, retry_initial_s=0.2, retry_max_s=0.5)
    _answer(port, "/readyz", 200)
    service = running.broker.service
    lock = sqlite3.connect(ledger.url.removeprefix("sqlite:///"), isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # every write of the router waits 5 s, then fails
    other = pika.BlockingConnection(pika.URLParameters(amqp_url()))
    try:
        amqp.submit(declared, dossier())
        _answer(port, "/readyz", 503)  # held up: a try failed
        # another consumer, there before the router is back, takes it when it returns
        taken: list[int] = []
        channel = other.channel()
        channel.basic_qos(prefetch_count=1)
        channel.basic_consume(declared.intake_queue,
                              lambda ch, method, _p, _b: taken.append(method.delivery_tag))
        connection = service.connection
        assert connection is not None
        service.call_threadsafe(connection.close)
        wait_for(lambda: other.process_data_events(0.1) or taken, what="the other's delivery")
        channel.basic_ack(taken[0])
    finally:
        lock.execute("ROLLBACK")
        other.close()
    time.sleep(4)  # the first failure is now over 8 s ago
    lock.execute("BEGIN EXCLUSIVE")
    try:
        amqp.submit(declared, dossier())
        # held up anew (a try failed), and the delivery still held: not given back
        wait_for(lambda: (got := probe(port, "/readyz")[1]["queues"][declared.intake_queue])
                 ["held_up_s"] is not None and got["unacked"] == 1, what="a failed try")
        time.sleep(1)
        assert ready_and_consumers(declared.intake_queue) == (0, 1)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    wait_for(lambda: ledger.count_by_state() == {2: 1}, what="the second dossier routed")


@pytest.mark.parametrize("ledger", ["sqlite"], indirect=True)  # no ledger at stake
def test_not_ready_while_rabbitmq_has_cancelled_a_consumer_yet_live(
        declared: Topology, mini_catalog: Catalog,
        served: Callable[..., tuple[RunningBroker, int]], amqp: Amqp) -> None:
    _, port = served()
    _answer(port, "/readyz", 200)
    amqp.delete_queues(declared.intake_queue)  # RabbitMQ cancels the router's consumer
    not_ready = _answer(port, "/readyz", 503)
    assert not_ready["problems"][0].startswith(f"{declared.intake_queue}: not consuming")
    assert not_ready["queues"][declared.intake_queue]["consuming"] is False
    # once a new channel tried it, the probe says what RabbitMQ said of it
    why = (f"{declared.intake_queue}: not consuming (RabbitMQ closed its channel: 404 "
           f"NOT_FOUND - no queue '{declared.intake_queue}' in vhost '/')")
    wait_for(lambda: probe(port, "/readyz")[1]["problems"] == [why], what="the reason")
    assert not_ready["queues"][declared.status_queue]["consuming"] is True
    # the process is well: a restart would not bring the queue back
    assert probe(port, "/livez")[0] == 200
    declare_topology(amqp_url(), declared, mini_catalog)
    assert _answer(port, "/readyz", 200)["problems"] == []


def _metrics(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return bytes(r.read())


def _gauges(port: int) -> set[str]:
    return set(_metrics(port).decode().splitlines())


_ON_ONE_BATCH = re.compile(r"thread handler-intake has been on one batch for (\d+) s \(a "
                           r"ledger call that does not return\?\)")


@pytest.mark.parametrize("ledger", ["postgresql"], indirect=True)  # a lock that never ends
def test_a_ledger_call_that_hangs_is_seen_by_both_probes_across_a_reconnect(
        declared: Topology, ledger: Ledger, served: Callable[..., tuple[RunningBroker, int]],
        amqp: Amqp) -> None:
    running, port = served(stuck_batch_s=1.0, slow_batch_s=1.0)
    _answer(port, "/readyz", 200)
    with ledger.engine.connect() as lock:
        lock.execute(text("LOCK TABLE dossiers IN ACCESS EXCLUSIVE MODE"))
        amqp.submit(declared, dossier())
        live = _answer(port, "/livez", 503)
        assert len(live["problems"]) == 1 and _ON_ONE_BATCH.fullmatch(live["problems"][0]), live
        assert any(_ON_ONE_BATCH.fullmatch(p) for p in _answer(port, "/readyz", 503)["problems"])

        def on_one_batch_s() -> int:
            found = _ON_ONE_BATCH.fullmatch(probe(port, "/livez")[1]["problems"][0])
            assert found
            return int(found[1])

        before = wait_for(lambda: (s := on_one_batch_s()) >= 4 and s, what="4 s on it")
        # the connection lost and made again: the batch goes back to the queue and comes
        # again, behind the one the handler thread is still on; that one is still seen
        service = running.broker.service
        connection = service.connection
        assert connection is not None
        service.call_threadsafe(connection.close)
        wait_for(lambda: service.connection is not connection and all(
            w.consuming for w in service.workers), what="connected and consuming again")
        time.sleep(1.1)
        # timed from when the thread took it, not from the batch handed over again
        assert on_one_batch_s() > before
        lock.rollback()
    wait_for(lambda: ledger.count_by_state() == {2: 1}, what="the dossier routed once")
    _answer(port, "/readyz", 200)
    assert _answer(port, "/livez", 200)["problems"] == []


@pytest.mark.parametrize("ledger", ["sqlite"], indirect=True)  # no ledger at stake
def test_held_up_grows_while_rabbitmq_goes_on_refusing_and_clears_once_it_takes_again(
        declared: Topology, served: Callable[..., tuple[RunningBroker, int]],
        amqp: Amqp) -> None:
    agency = declared.agency_queue("T.UBND.A")
    amqp.publish(declared.agency_exchange, "T.UBND.A", b"{}", message_id="filler")
    _, port = served(retry_initial_s=0.05, retry_max_s=0.2)
    _answer(port, "/readyz", 200)
    with length_cap(agency, f"{declared.prefix}-full") as cap:
        # a quorum queue starts refusing a channel only once over its cap: the first
        # dossiers may still go in
        first: dict[str, Any] = {}

        def refused() -> bool:
            nonlocal first
            amqp.submit(declared, dossier())
            time.sleep(0.3)
            status, first = probe(port, "/readyz")
            return status == 503

        wait_for(refused, timeout_s=30, what="a refusal")
        assert any(p.startswith(f"{declared.intake_queue}: held up for ") and p.endswith(
            f"RabbitMQ refused a publish (nacked: {declared.agency_exchange}/T.UBND.A)")
            for p in first["problems"]), first
        # refused batch after batch, pauses of 0.2 s and a new channel: never ready, and
        # held up since the first refusal, not since the last
        seen: list[tuple[int, Any]] = []
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            status, found = probe(port, "/readyz")
            seen.append((status, found["queues"][declared.intake_queue]["held_up_s"]))
            time.sleep(0.02)
        assert {status for status, _ in seen} == {503}, seen
        assert max(paused for _, paused in seen if paused is not None) > 3.5, seen
        cap.lift()
        amqp.ch.queue_purge(agency)  # the filler out: the queue takes again
        _answer(port, "/readyz", 200)


@pytest.mark.parametrize("ledger", ["sqlite"], indirect=True)  # no ledger at stake
def test_a_path_that_is_no_probe_answers_404_not_metrics(
        served: Callable[..., tuple[RunningBroker, int]]) -> None:
    _, port = served()
    _answer(port, "/readyz/", 200)  # a trailing slash is the same probe
    assert b"casebroker_intake_total" in _metrics(port)
    for path in ("/healthz", "/ready", "/", "/readyz/x"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5)
        assert e.value.code == 404
        assert e.value.read() == b"no such path: use /metrics, /livez, /readyz\n"


@pytest.mark.parametrize("ledger", ["sqlite"], indirect=True)  # no ledger at stake
def test_while_it_starts_live_not_ready_then_its_own_probes(
        run_broker: Callable[..., RunningBroker]) -> None:
    # `run` holds its metrics port before it opens the ledger: its probes, meanwhile
    metrics, port = Metrics(), free_port()
    stop = metrics.serve(port, probes=starting())
    try:
        status, ready = probe(port, "/readyz")
        assert (status, ready) == (503, {"status": "not ready",
                                         "problems": ["starting: opening the ledger"]})
        assert probe(port, "/livez") == (200, {"status": "live", "problems": [],
                                               "starting": True})
        assert re.search(rb"^casebroker_ready 0\.0$", _metrics(port), re.MULTILINE)
        running = run_broker(metrics=metrics)
        metrics.answer_probes(Probes(running.broker).routes())
        assert _answer(port, "/readyz", 200)["status"] == "ready"
        assert re.search(rb"^casebroker_ready 1\.0$", _metrics(port), re.MULTILINE)
        assert "starting" not in probe(port, "/livez")[1]
    finally:
        stop()


@pytest.mark.parametrize("ledger", ["sqlite"], indirect=True)  # no ledger at stake
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # wanted
def test_a_handler_thread_that_ended_fails_both_probes(
        served: Callable[..., tuple[RunningBroker, int]]) -> None:
    running, port = served()
    _answer(port, "/readyz", 200)
    intake = running.broker.service.workers[0]
    assert intake.thread.name == "handler-intake"

    def end_the_thread() -> None:
        raise SystemExit  # past the loop's guard, which catches Exception only

    intake.thread.submit(end_the_thread)
    intake.thread.os_thread.join(5)
    assert not intake.thread.os_thread.is_alive()
    for path in ("/livez", "/readyz"):
        assert "thread handler-intake has ended" in _answer(port, path, 503)["problems"]


def test_not_ready_while_rabbitmq_holds_a_batchs_confirms_back_and_ready_once_they_come(
        served: Callable[..., tuple[RunningBroker, int]], declared: Topology,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a quorum queue without a majority may hold confirms back rather than nack: every
    # later ack on the queue waits behind that batch, and /readyz said nothing of it
    # (found by a review). Here a relay holds back what RabbitMQ sends once the batch
    # is handled: its publishes go out, their confirms do not come until released
    link = SlowLink()
    try:
        checked, go = hold_router_past_duplicate_check(monkeypatch)
        _, port = served(slow_batch_s=1.0, url=link.url)
        _answer(port, "/readyz", 200)
        amqp = Amqp()
        amqp.submit(declared, dossier())
        assert checked.wait(30)
        link.stall()
        go.set()
        said = re.compile(rf"{re.escape(declared.intake_queue)}: RabbitMQ has not "
                          r"confirmed a batch's publishes for \d+ s \(a queue without a "
                          r"leader\?\); its deliveries and those after it stay unacked")
        not_ready: dict[str, Any] = {}

        def told() -> bool:  # a slow machine may first say the batch was slow
            nonlocal not_ready
            status, not_ready = probe(port, "/readyz")
            return status == 503 and any(said.fullmatch(p) for p in not_ready["problems"])

        wait_for(told, timeout_s=20, what="/readyz saying the confirms are awaited")
        assert not_ready["queues"][declared.intake_queue]["confirms_awaited_s"] >= 1.0
        link.release()
        ready = _answer(port, "/readyz", 200)
        assert ready["queues"][declared.intake_queue]["confirms_awaited_s"] is None
        wait_for(lambda: amqp.get_all(declared.agency_queue("T.UBND.A")), what="assigned")
        amqp.close()
    finally:
        link.close()
