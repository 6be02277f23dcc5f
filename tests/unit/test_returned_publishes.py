"""Which batch a returned publish belongs to: the worker's lookup, on its own state."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from broker.amqp_worker import QueueWorker, _InFlight
from broker.envelope import Outbound


class _Counted(dict[int, Any]):
    """The unconfirmed publishes, counting how many the lookup examines."""

    examined = 0

    def get(self, key: int, default: Any = None) -> Any:
        self.examined += 1
        return super().get(key, default)

    def items(self) -> Iterator[tuple[int, Any]]:  # type: ignore[override]
        for item in super().items():
            self.examined += 1
            yield item


def _worker() -> QueueWorker:
    worker = object.__new__(QueueWorker)  # the lookup reads only the publish bookkeeping
    worker.generation = 0
    worker._reset()
    return worker


def _publish(worker: QueueWorker, entry: _InFlight, message_id: str) -> int:
    seq = worker.next_seq
    worker.unconfirmed[seq] = (entry, Outbound("x.desk", "T.MC.A", message_id, "desk.notice",
                                               None, None, b"{}"))
    worker.next_seq += 1
    return seq


def test_two_in_flight_under_one_id_are_returned_to_their_own_batches() -> None:
    # a redelivered batch republishes its notices while the first copies are unconfirmed
    w = _worker()
    first, second = _InFlight(1, 2, []), _InFlight(2, 2, [])
    _publish(w, first, "C-1:receipt")
    _publish(w, first, "C-1:assigned:1")
    _publish(w, second, "C-1:receipt")
    _publish(w, second, "C-1:assigned:1")
    assert w._returned_entry("C-1:receipt") is first
    assert w._returned_entry("C-1:receipt") is second
    assert w._returned_entry("C-1:receipt") is None  # no third in flight


def test_confirmed_publishes_are_skipped_and_a_storm_reads_each_publish_once() -> None:
    w = _worker()
    w.unconfirmed = _Counted()
    entries = [_InFlight(i, 1, []) for i in range(20_000)]
    for i, e in enumerate(entries):
        _publish(w, e, f"m{i}")
    for seq in range(1, 10_001):  # the first half confirmed (multiple=True)
        del w.unconfirmed[seq]
    # every other one of the rest returned, in publish order, as RabbitMQ sends them
    got = [w._returned_entry(f"m{i}") for i in range(10_000, 20_000, 2)]
    assert got == entries[10_000:20_000:2]
    assert w.returned_upto == 19_999
    # each publish after the confirmed ones looked at about once (scanning the window
    # from its start on every return, as before, examined 25 million)
    assert isinstance(w.unconfirmed, _Counted) and w.unconfirmed.examined <= 10_000
    assert w._returned_entry("m0") is None  # confirmed long ago
