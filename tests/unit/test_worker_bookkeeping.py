"""What the worker says when it closes a channel on purpose: its own bookkeeping, on a
stand-in for the channel (the live refusal tests, tests/integration/test_broker_refusals.py,
meet the close at a moment when nothing else is unacked)."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from broker.amqp import ConsumerSettings
from broker.amqp_worker import Delivery, QueueWorker


class _Channel:
    """Closes as pika's does: the worker hears it through its close callback."""

    def __init__(self, worker: QueueWorker) -> None:
        self.worker, self.is_open = worker, True

    def close(self) -> None:
        self.is_open = False
        self.worker._on_channel_closed(self, Exception("(0, 'Normal shutdown')"))  # type: ignore[arg-type]


def _worker() -> QueueWorker:
    worker = object.__new__(QueueWorker)
    worker.generation, worker.given_back = 0, None
    worker.queue, worker.consumed_at, worker.reopen_delay_s = "cb.intake", None, 1.0
    worker.missing_exchange = worker.closed_by_broker = None
    worker.settings = ConsumerSettings()
    later: list[Any] = []
    worker.service = SimpleNamespace(  # type: ignore[assignment]
        stopping=False, connection_open=True, remove_timeout=lambda _t: None,
        call_later=lambda *a: later.append(a), reopen_worker=lambda _w: None)
    worker._reset()
    worker.channel = _Channel(worker)  # type: ignore[assignment]
    return worker


def test_a_channel_closed_to_be_reopened_says_how_many_deliveries_it_gave_back(
        caplog: pytest.LogCaptureFixture) -> None:
    # the prefetch window's deliveries go back to the queue, each a step nearer its
    # delivery limit: the line said "0 waiting, 0 batches published", counted after the
    # worker had dropped them (found by a review)
    w = _worker()
    w.pending = [Delivery(tag, b"{}", None, False, "dossier")  # type: ignore[arg-type]
                 for tag in range(1, 1496)]
    w.unacked = 1500  # five more in the batches refused and rejected a moment ago
    with caplog.at_level(logging.WARNING, logger="broker.amqp"):
        w._close_channel()
    (said,) = [r.getMessage() for r in caplog.records]
    assert said.startswith("channel for cb.intake closed ((0, 'Normal shutdown')); its "
                           "1500 unacked deliveries go back to the queue"), said
    assert (w.unacked, w.pending, w.given_back) == (0, [], None)


@pytest.mark.parametrize(("hold_s", "waits"), [
    (600.0, [600, 1200, 2400, 4800, 4800]),
    # no hold: the tries are spaced as the retries at their longest (15 s), not at once
    # (a review: 0 s apart, a dossier dead-lettered within minutes)
    (0.0, [15, 30, 60, 120, 120]),
])
def test_failed_tries_of_the_ledger_wait_longer_each_time_up_to_eight_holds(
        hold_s: float, waits: list[float]) -> None:
    w = _worker()
    w.settings = ConsumerSettings(hold_s=hold_s)
    w.trials_failed = 0
    assert w.settings.retry_max_s == 15
    assert [w._trial_failed(1.0, "the delivery taken to try it") for _ in waits] == waits
