"""`/livez` and `/readyz` of a running router, on the real RabbitMQ and ledger."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from broker.amqp import amqp_url
from broker.health import Probes
from broker.ledger import Ledger
from broker.rules.catalog import Catalog
from broker.service import declare_topology
from broker.topology import Topology
from tests.conftest import RunningBroker, wait_for
from tests.helpers import Amqp, dossier, free_port, probe


@pytest.fixture
def served(run_broker: Callable[..., RunningBroker]
           ) -> Iterator[Callable[..., tuple[RunningBroker, int]]]:
    """A router and its metrics server with the probes; the server stopped afterwards."""
    stops: list[Callable[[], None]] = []

    def start(stuck_batch_s: float = 120.0, **settings: Any) -> tuple[RunningBroker, int]:
        running = run_broker(**settings)
        port = free_port()
        stops.append(running.broker.metrics.serve(
            port, probes=Probes(running.broker, stuck_batch_s=stuck_batch_s).routes()))
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
    running, port = served(stuck_batch_s=1.0, retry_initial_s=0.2, retry_max_s=0.5)
    ready = _answer(port, "/readyz", 200)
    assert ready["status"] == "ready" and ready["problems"] == []
    assert ready["queues"] == {
        q: {"consuming": True, "paused_s": None, "unacked": 0}
        for q in (declared.intake_queue, declared.status_queue)}
    assert ready["deadline_watch_last_round_s_ago"] >= 0
    assert probe(port, "/livez")[0] == 200
    assert b"casebroker_intake_total" in _metrics(port)  # /metrics is still there

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
        paused_s = not_ready["queues"][declared.intake_queue]["paused_s"]
        assert isinstance(paused_s, float) and paused_s >= 0  # since its first failure
        assert not_ready["queues"][declared.intake_queue]["unacked"] == 1
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    wait_for(lambda: ledger.count_by_state() == {2: 1}, what="the dossier routed")
    again = _answer(port, "/readyz", 200)
    assert again["queues"][declared.intake_queue] == {
        "consuming": True, "paused_s": None, "unacked": 0}
    assert _answer(port, "/livez", 200)["problems"] == []
    assert running.thread.is_alive()


def test_not_ready_while_rabbitmq_has_cancelled_a_consumer_yet_live(
        declared: Topology, mini_catalog: Catalog,
        served: Callable[..., tuple[RunningBroker, int]], amqp: Amqp) -> None:
    _, port = served()
    _answer(port, "/readyz", 200)
    amqp.delete_queues(declared.intake_queue)  # RabbitMQ cancels the router's consumer
    not_ready = _answer(port, "/readyz", 503)
    assert not_ready["problems"] == [f"{declared.intake_queue}: not consuming"]
    assert not_ready["queues"][declared.intake_queue]["consuming"] is False
    assert not_ready["queues"][declared.status_queue]["consuming"] is True
    # the process is well: a restart would not bring the queue back
    assert probe(port, "/livez")[0] == 200
    declare_topology(amqp_url(), declared, mini_catalog)
    assert _answer(port, "/readyz", 200)["problems"] == []


def _metrics(port: int) -> bytes:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return bytes(r.read())
