"""Reading a dead-letter or triage queue without wearing it out.

Every queue is a quorum queue with a delivery limit, and a dead-letter queue has no
dead-letter exchange of its own: a message returned to it (nack, or a channel
closed before the ack) more than ``DELIVERY_LIMIT`` times would be dropped. So an
operator's read never returns messages: it takes them, publishes each one back
(a fresh copy, same properties and body, delivery count zero) or to where it is
replayed, waits for the confirms, and only then acks what it took. A crash in
between leaves a duplicate (same message id), never a loss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import BasicProperties

from broker.amqp import amqp_urls
from broker.topology import DEAD_SOURCES, TRIAGE_KEY, Topology

#: queue names an operator may give: a dead-letter source or "triage"
QUEUE_CHOICES = (*DEAD_SOURCES, "triage")


@dataclass(frozen=True, slots=True)
class Taken:
    """One message taken from an operator queue, not yet acked."""

    queue: str
    tag: int
    properties: BasicProperties
    body: bytes

    @property
    def message_id(self) -> str:
        return str(self.properties.message_id or "")

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.properties.headers or {})


@contextmanager
def channel() -> Iterator[BlockingChannel]:
    """A confirming channel on the first reachable node of ``CASEBROKER_AMQP_URL``."""
    conn = pika.BlockingConnection([pika.URLParameters(u) for u in amqp_urls()])
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        yield ch
    finally:
        if conn.is_open:
            conn.close()


def queue_and_key(topology: Topology, which: str) -> tuple[str, str]:
    """(queue, routing key on the dead-letter exchange) of ``which``."""
    if which == "triage":
        return topology.triage_queue, TRIAGE_KEY
    return topology.dead_queue(which), which


def depth(ch: BlockingChannel, queue: str) -> int:
    """Messages ready in a queue (passive declare)."""
    return int(ch.queue_declare(queue, passive=True).method.message_count)


def take_all(ch: BlockingChannel, queue: str, limit: int = 100_000) -> list[Taken]:
    """Take up to ``limit`` messages now ready in ``queue`` (unacked, prefetch-bounded)."""
    wanted = min(depth(ch, queue), limit)
    if wanted == 0:
        return []
    ch.basic_qos(prefetch_count=min(wanted, 65535))
    taken: list[Taken] = []
    for method, props, body in ch.consume(queue, inactivity_timeout=5.0):
        if method is None:
            break
        taken.append(Taken(queue, method.delivery_tag, props, body))
        if len(taken) >= wanted:
            break
    ch.cancel()
    return taken


def put_back(ch: BlockingChannel, topology: Topology, which: str, msg: Taken) -> None:
    """Publish a fresh copy of ``msg`` to the queue it came from (confirmed)."""
    _, key = queue_and_key(topology, which)
    ch.basic_publish(topology.dead_letter_exchange, key, msg.body, msg.properties,
                     mandatory=True)


def settle(ch: BlockingChannel, taken: list[Taken],
           action: Callable[[Taken], None]) -> None:
    """Run ``action`` (a confirmed publish) for each message, then ack them all."""
    for msg in taken:
        action(msg)
    if taken:
        ch.basic_ack(max(m.tag for m in taken), multiple=True)
