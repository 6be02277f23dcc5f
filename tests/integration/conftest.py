"""Integration fixtures for the dossier lifecycle: a clock the test moves, a broker using it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from broker.amqp import ConsumerSettings
from broker.consumers.deadlines import WatchSettings
from broker.ledger import Ledger
from broker.service import Broker
from broker.topology import Topology
from tests.conftest import MINI_CATALOG, RunningBroker
from tests.helpers import Amqp

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
def start_broker(declared: Topology, ledger: Ledger, clock: FakeClock
                 ) -> Iterator[Callable[..., RunningBroker]]:
    """Start `casebroker run` on the mini catalog with the test's clock; stop it afterwards.

    No deadline watch unless ``watch`` settings are given.
    """
    started: list[RunningBroker] = []

    def start(watch: WatchSettings | None = None, **settings: Any) -> RunningBroker:
        broker = Broker(str(MINI_CATALOG), declared, ledger,
                        ConsumerSettings(flush_interval_ms=2, **settings),
                        watch_settings=watch, clock=clock)
        running = RunningBroker(broker).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
