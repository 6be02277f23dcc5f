"""What every benchmark stage shares: names, progress, dossier bodies, queue depths.

Every name a stage creates starts with :data:`PREFIX_ROOT` and a random suffix, so a
benchmark never touches another run's queues, and :func:`cleanup` finds leftovers.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pika
from pika.spec import BasicProperties

from adapters.simulate import DossierFactory
from broker.amqp import Delivery, amqp_url
from broker.messages import CONTENT_TYPE, encode
from broker.rules.catalog import Catalog

PREFIX_ROOT = "bench"
QUORUM = {"x-queue-type": "quorum"}


def unique_prefix(stage: str) -> str:
    """A topology / queue prefix no other run uses."""
    return f"{PREFIX_ROOT}{uuid.uuid4().hex[:8]}{stage}"


class Progress:
    """Stage and counts on stderr, at most a few lines a second."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.last = 0.0
        self.stage = ""

    def begin(self, stage: str) -> None:
        self.stage = stage
        self.note("starting")

    def note(self, text: str, *, every_s: float = 0.0) -> None:
        if not self.enabled or time.monotonic() - self.last < every_s:
            return
        self.last = time.monotonic()
        sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {self.stage}: {text}\n")
        sys.stderr.flush()


@dataclass(frozen=True)
class Dossier:
    """One preloaded submission: its id and its encoded ``dossier.submitted`` body."""

    submission_id: str
    body: bytes


def dossier_stream(catalog: Catalog, count: int, *, body_kb: float = 0.0,
                   seed: int = 6) -> Iterator[Dossier]:
    """Real dossiers from the simulator; ``body_kb`` pads ``attributes`` up to that size."""
    factory = DossierFactory(catalog, random.Random(seed))
    target = int(body_kb * 1024)
    for _ in range(count):
        dossier = factory.make()
        body = encode(dossier)
        if target > len(body):
            raw = json.loads(body)
            # a string attribute: valid under the contract, carried into the assignment
            raw["attributes"]["bench_padding"] = ""
            base = len(json.dumps(raw, ensure_ascii=False, separators=(",", ":")).encode())
            raw["attributes"]["bench_padding"] = "x" * max(0, target - base)
            body = json.dumps(raw, ensure_ascii=False, separators=(",", ":")).encode()
        yield Dossier(str(dossier.submission_id), body)


def submit_properties(submission_id: str) -> BasicProperties:
    """The properties a desk gives a submission (persistent, JSON, its message id)."""
    return BasicProperties(content_type=CONTENT_TYPE, delivery_mode=2,
                           message_id=f"submit:{submission_id}", type="dossier.submitted")


def intake_deliveries(catalog: Catalog, count: int, *, start: int = 1, seed: int = 6
                      ) -> list[Delivery]:
    """Dossiers as the router's worker hands them over (delivery tags from ``start``),
    for benchmarks that call the handler directly, without RabbitMQ."""
    return [Delivery(start + i, d.body, submit_properties(d.submission_id), False, "intake")
            for i, d in enumerate(dossier_stream(catalog, count, seed=seed))]


def blocking(url: str | None = None) -> pika.BlockingConnection:
    """A blocking connection for declarations and depth polls."""
    return pika.BlockingConnection(pika.URLParameters(url or amqp_url()))


def depth(channel: Any, queue: str) -> int:
    """Ready messages in a queue (passive declare: cheap, unlike rabbitmqctl)."""
    return int(channel.queue_declare(queue, passive=True).method.message_count)


def consumers(channel: Any, queue: str) -> int:
    """Consumers attached to a queue."""
    return int(channel.queue_declare(queue, passive=True).method.consumer_count)


def wait_until(predicate: Callable[[], bool], *, timeout_s: float, interval_s: float,
               what: str, on_poll: Callable[[], None] | None = None) -> float:
    """Poll until true; return the monotonic time it first held; raise on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return time.monotonic()
        if on_poll is not None:
            on_poll()
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark gave up after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` quantile: the smallest value with at least ``q`` of them at
    or below it (p99 of 100 values is the 99th, not the largest; p50 of an even count is
    the lower middle one). ``q * n`` is rounded first: in floating point it may miss the
    whole rank it should be by a hair."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(round(q * len(ordered), 9)) - 1)]


def rate(count: int, seconds: float) -> float:
    """count / seconds, rounded for reports."""
    return round(count / seconds, 1) if seconds > 0 else 0.0
