"""Integration fixtures for the dossier lifecycle: a clock the test moves, a broker using it."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pika
import pytest

from broker.amqp import amqp_url
from broker.consumers.deadlines import DeadlineWatch, WatchSettings
from broker.ledger import Ledger
from broker.rules.catalog import load_catalog
from broker.rules.engine import Engine
from broker.security import Grant, Management, ManagementError
from broker.topology import Topology
from monitoring.metrics import Metrics
from tests.conftest import MINI_CATALOG, RunningBroker
from tests.helpers import Amqp
from tests.integration.test_client import AGENCIES, DESKS, Live

VN = ZoneInfo("Asia/Ho_Chi_Minh")


def vn(text: str) -> datetime:
    """Local Vietnam time from 'YYYY-MM-DD HH:MM'."""
    return datetime.fromisoformat(text).replace(tzinfo=VN)


class FakeClock:
    """'Now' for the broker under test; starts when tests.helpers.dossier() was submitted."""

    def __init__(self, start: str = "2026-11-25 09:00") -> None:
        self.now = vn(start)

    def __call__(self) -> datetime:
        return self.now

    def set(self, text: str) -> None:
        self.now = vn(text)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def amqp() -> Iterator[Amqp]:
    a = Amqp()
    yield a
    a.close()


@pytest.fixture
def start_broker(run_broker: Callable[..., RunningBroker], clock: FakeClock
                 ) -> Callable[..., RunningBroker]:
    """`casebroker run` on the mini catalog with the test's clock; no deadline watch
    unless ``watch`` settings are given."""

    def start(watch: WatchSettings | None = None, **settings: Any) -> RunningBroker:
        return run_broker(watch=watch, clock=clock, **settings)

    return start


@pytest.fixture
def make_watch(ledger: Ledger, declared: Topology, clock: FakeClock
               ) -> Iterator[Callable[[], DeadlineWatch]]:
    """Deadline watches as separate `casebroker run` processes would have, on the test's
    clock; closed after."""
    engine = Engine(load_catalog(MINI_CATALOG))
    made: list[DeadlineWatch] = []

    def make() -> DeadlineWatch:
        made.append(DeadlineWatch(lambda: engine, ledger, declared, WatchSettings(),
                                  clock=clock, metrics=Metrics()))
        return made[-1]

    yield make
    for w in made:
        w.close()


@pytest.fixture
def live() -> Iterator[Live]:
    """The client tests' RabbitMQ: a whole topology (quorum queues) under a fresh prefix,
    deleted afterwards."""
    topology = Topology(f"t{uuid.uuid4().hex[:8]}")
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url()))
    channel = conn.channel()
    try:
        topology.declare(channel, AGENCIES, DESKS)
        yield Live(topology, channel)
    finally:
        cleanup = conn.channel() if conn.is_open else None
        if cleanup is None:
            conn = pika.BlockingConnection(pika.URLParameters(amqp_url()))
            cleanup = conn.channel()
        for queue in topology.queues(AGENCIES, DESKS):
            cleanup.queue_delete(queue)
        for exchange in topology.exchanges:
            cleanup.exchange_delete(exchange)
        conn.close()


@pytest.fixture
def operator_url() -> Iterator[str]:
    """The URL of a RabbitMQ login of its own for the operator, with every permission."""
    api = Management()
    try:
        api.user_exists("guest")
    except ManagementError as e:
        pytest.skip(f"RabbitMQ management plugin not reachable: {e}")
    user, password = f"op-{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(16)
    api.put_user(user, password)
    api.put_permissions(Grant(user, "", "operator", ".*", ".*", ".*"))
    yield f"amqp://{user}:{password}@127.0.0.1:5672/%2F"
    api.delete_user(user)
