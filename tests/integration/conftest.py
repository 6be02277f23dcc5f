"""Integration fixtures for the dossier lifecycle: a clock the test moves, a broker using it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from broker.consumers.deadlines import DeadlineWatch, WatchSettings
from broker.ledger import Ledger
from broker.rules.catalog import load_catalog
from broker.rules.engine import Engine
from broker.topology import Topology
from monitoring.metrics import Metrics
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
