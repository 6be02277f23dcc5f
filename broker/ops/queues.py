"""Reading a dead-letter or triage queue without wearing it out.

Every queue is a quorum queue with a delivery limit, and a dead-letter queue has no
dead-letter exchange of its own: a message returned to it (nack, or a channel
closed before the ack) more than ``DELIVERY_LIMIT`` times would be dropped. So an
operator's read never returns messages: it takes them, publishes each one back
(a fresh copy, same properties and body, delivery count zero) or to where it is
replayed, waits for that publish's confirm, and only then acks that message. A crash
in between leaves a duplicate (same message id), never a loss; a message that cannot
be sent where it should go is put back and reported without holding back the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import ChannelClosedByBroker, NackError, UnroutableError
from pika.spec import BasicProperties

from broker.amqp import REASON_HEADER, SENT_BY_HEADER, amqp_urls
from broker.amqp_worker import UNENCODABLE
from broker.envelope import portable_headers
from broker.errors import CasebrokerError
from broker.ops.progress import whole
from broker.topology import DEAD_SOURCES, TRIAGE_KEY, Topology

#: queue names an operator may give: a dead-letter source or "triage"
QUEUE_CHOICES = (*DEAD_SOURCES, "triage")


def login() -> str:
    """The RabbitMQ login the operator tools use: the first URL's (every node of one
    cluster has the same users)."""
    return str(pika.URLParameters(amqp_urls()[0]).credentials.username)


def copy_properties(props: BasicProperties, **changes: Any) -> BasicProperties:
    """The same AMQP properties with ``changes``; no user_id unless ``changes`` gives one.

    RabbitMQ refuses (406 PRECONDITION_FAILED, closing the channel) a publish whose
    user_id is not the publishing connection's login, and the operator's login is
    rarely the router's or a desk's.
    """
    fields = {k: getattr(props, k) for k in (
        "content_type", "content_encoding", "headers", "delivery_mode", "priority",
        "correlation_id", "reply_to", "expiration", "message_id", "timestamp", "type",
        "app_id")}
    fields.update(changes)
    return BasicProperties(**fields)


def sent_by(props: BasicProperties) -> str | None:
    """Who first published a message: the sender recorded in ``x-casebroker-sent-by`` on
    a copy made under the operator's own login (its copies put back, a replay that came
    back through a delivery limit), or by the router (its dead letters and triage copies:
    under its own login, which need not be the operator's), else its user_id."""
    value = props.user_id
    headers = props.headers or {}
    recorded = headers.get(SENT_BY_HEADER)
    # not on a copy without a user_id: RabbitMQ dead-letters a sender's message as it came,
    # a claimed x-casebroker-sent-by among its headers, and one replayed on that word went
    # to the router under its own login as the claimed party's (found by a review)
    if recorded and ((value and value == login()) or routers_own(headers)):
        value = recorded
    if not value:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def routers_own(headers: dict[str, Any]) -> bool:
    """Whether a message in an operator queue is one the router published there itself (a
    dead letter or triage copy it judged: its reason on it), whose x-casebroker-sent-by it
    wrote from the user_id RabbitMQ checked on the delivery (a sender's own is dropped).
    One RabbitMQ dead-lettered (``x-death``) is the sender's message with the sender's
    headers, a claimed x-casebroker-sent-by, reason or detail among them: not that."""
    return (REASON_HEADER in headers and "x-death" not in headers
            and "x-first-death-reason" not in headers)


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


class OperatorBusy(CasebrokerError):
    """Another operator command is taking and putting back the same topology's messages."""


def lock_queue(topology: Topology) -> str:
    """The exclusive queue an operator command holds while it works (see :func:`channel`)."""
    return topology.prefix + ".lock.operator-queues"


@contextmanager
def channel(lock: Topology | None = None) -> Iterator[BlockingChannel]:
    """A confirming channel on the first reachable node of ``CASEBROKER_AMQP_URL``.

    ``lock``: hold that topology's operator lock while the channel is open. Each command
    takes every message of a queue and publishes it back; a second one at the same time
    would find the queue short of what the first holds, or see a message it discarded
    come back as the first one puts its copy back. The lock is an exclusive queue: one
    connection at a time may have it, and RabbitMQ releases it when that connection
    closes, the process killed included.
    """
    conn = pika.BlockingConnection([pika.URLParameters(u) for u in amqp_urls()])
    try:
        if lock is not None:
            try:
                conn.channel().queue_declare(lock_queue(lock), exclusive=True,
                                             auto_delete=True)
            except ChannelClosedByBroker as e:
                if e.reply_code == 403:
                    raise CasebrokerError(
                        f"RabbitMQ login {login()!r} may not declare the operator lock "
                        f"{lock_queue(lock)!r}: operator commands (dead-letters, audit, "
                        "topology delete) need configure permission on it") from None
                if e.reply_code != 405:  # RESOURCE_LOCKED: another connection holds it
                    raise
                raise OperatorBusy(
                    f"another operator command (dead-letters, audit or topology delete) is "
                    f"working on the queues under {lock.prefix!r}; run this one when it has "
                    "ended (nothing was taken)") from None
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


def queue_state(ch: BlockingChannel, queue: str) -> tuple[int, int] | None:
    """(messages ready, consumers) of ``queue``, or None when it is not there. Asked on a
    channel of its own: RabbitMQ closes the channel that asks for a queue it does not
    have."""
    probe = ch.connection.channel()
    try:
        ok = probe.queue_declare(queue, passive=True).method
        return int(ok.message_count), int(ok.consumer_count)
    except ChannelClosedByBroker as e:
        if e.reply_code != 404:
            raise
        return None
    finally:
        if probe.is_open:
            probe.close()


def missing(ch: BlockingChannel, queue: str) -> str | None:
    """Why ``queue`` cannot be read (None: it is there)."""
    if queue_state(ch, queue) is not None:
        return None
    return (f"no queue {queue} (a wrong --prefix or CASEBROKER_PREFIX, or the topology "
            "not declared: casebroker topology declare)")


def depth(ch: BlockingChannel, queue: str) -> int:
    """Messages ready in a queue (passive declare)."""
    return int(ch.queue_declare(queue, passive=True).method.message_count)


#: the most deliveries one consumer may hold unacked (prefetch_count is a 16-bit field)
MAX_ROUND = 65535
#: how long a round waits for a delivery before it takes the queue to be read through
ROUND_IDLE_S = 5.0


@dataclass
class Settled:
    """What :func:`settle_queue` did with a queue: every message taken, the ones its
    action failed for (with why), and, when the queue gave fewer messages than it held
    at the start, why the reading stopped short."""

    taken: list[Taken]
    failed: list[tuple[Taken, str]]
    short: str | None


def settle_queue(ch: BlockingChannel, queue: str, action: Callable[[Taken], None],
                 keep: Callable[[Taken], None] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> Settled:
    """:func:`settle` every message ready in ``queue`` when called, in rounds of at most
    :data:`MAX_ROUND`: the prefetch window holds no more, and each round's acks make
    room for the next. What ``keep`` puts back goes to the end of the queue, behind every
    message counted at the start, so no message is taken twice. If another consumer takes
    some of them meanwhile, a later round may take a copy this reading put back (listed,
    or put back, twice; never lost). When nothing comes for :data:`ROUND_IDLE_S`, the
    reading ends and says it was short."""
    wanted = depth(ch, queue)
    taken: list[Taken] = []
    failed: list[tuple[Taken, str]] = []
    while len(taken) < wanted:
        got = _take(ch, queue, min(wanted - len(taken), MAX_ROUND))
        if not got:
            return Settled(taken, failed, (
                f"read {len(taken)} of the {wanted} messages {queue} held: none came for "
                f"{ROUND_IDLE_S:g} s (another consumer on it, or messages expired?); the "
                "rest is still in it"))
        failed += settle(ch, got, action, keep, progress=_counted_on(progress, len(taken),
                                                                     wanted))
        taken += got
    return Settled(taken, failed, None)


def _counted_on(progress: Callable[[int, int], None] | None, before: int, wanted: int
                ) -> Callable[[int, int], None] | None:
    """``progress`` told a round's count as the whole reading's."""
    if progress is None:
        return None
    return lambda n, _round: progress(before + n, wanted)


def _take(ch: BlockingChannel, queue: str, wanted: int) -> list[Taken]:
    """Take up to ``wanted`` of the messages ready in ``queue`` (unacked). The prefetch
    window is exactly ``wanted``, so none is delivered that this does not keep: one
    delivered and not yielded would be returned to the queue on cancel, a step towards
    its delivery limit."""
    ch.basic_qos(prefetch_count=wanted)
    taken: list[Taken] = []
    for method, props, body in ch.consume(queue, inactivity_timeout=ROUND_IDLE_S):
        if method is None:
            break
        taken.append(Taken(queue, method.delivery_tag, props, body))
        if len(taken) >= wanted:
            break
    ch.cancel()
    return taken


def read_back(ch: BlockingChannel, topology: Topology, which: str,
              progress: Callable[[int, int], None] | None = None) -> Settled:
    """Every message now in the operator queue ``which``, each put back as a fresh copy
    (never returned: see the module); those that could not be put back are left unacked
    (they return to the queue when the connection closes)."""

    def keep(msg: Taken) -> None:
        put_back(ch, topology, which, msg)

    return settle_queue(ch, queue_and_key(topology, which)[0], keep, progress=progress)


def put_back(ch: BlockingChannel, topology: Topology, which: str, msg: Taken) -> None:
    """Publish a fresh copy of ``msg`` to the queue it came from (confirmed), under the
    operator's login: its first sender (:func:`sent_by`) is kept in
    ``x-casebroker-sent-by``, the copy's user_id the operator's, which RabbitMQ checks."""
    _, key = queue_and_key(topology, which)
    props = msg.properties
    if (sender := sent_by(props)) is not None:  # always, where it has a user_id
        props = copy_properties(props, headers={**msg.headers, SENT_BY_HEADER: sender},
                                user_id=login())
    publish_copy(ch, topology.dead_letter_exchange, key, msg.body, props)


def publish_copy(ch: BlockingChannel, exchange: str, key: str, body: bytes,
                 props: BasicProperties) -> None:
    """Publish (mandatory, confirmed) a copy of a message a sender made. Headers pika read
    and cannot write again (a double too large for AMQP's integers, read as one) go made
    portable, as the routers' dead letters do: pika marshals a message whole before it
    writes any of it, so nothing was sent by the first try."""
    try:
        ch.basic_publish(exchange, key, body, props, mandatory=True)
    except UNENCODABLE:
        portable = copy_properties(props, headers=portable_headers(props.headers or {}),
                                   user_id=props.user_id)
        ch.basic_publish(exchange, key, body, portable, mandatory=True)


def settle(ch: BlockingChannel, taken: list[Taken], action: Callable[[Taken], None],
           keep: Callable[[Taken], None] | None = None,
           progress: Callable[[int, int], None] | None = None) -> list[tuple[Taken, str]]:
    """Run ``action`` (a confirmed publish) for each message and ack each one as soon as
    its own publish is confirmed; return the messages it failed for, with why.

    A message whose action fails (``ValueError``: nowhere to send it; returned
    unroutable; nacked) is given to ``keep`` (put back: a fresh copy, then acked); if
    there is no ``keep`` or that fails too, it is left unacked and RabbitMQ returns it
    to the queue when the connection closes. Either way the messages before and after
    it are settled on their own. A lost channel or connection propagates: what was
    acked is done, the rest goes back to the queue. ``progress`` is told (settled, all).
    """
    failed: list[tuple[Taken, str]] = []
    for n, msg in enumerate(taken):
        if progress is not None:
            progress(n, len(taken))
        with whole():  # a Ctrl-C comes between two messages, never between copy and ack
            if (why := _settle_one(ch, msg, action, keep)) is not None:
                failed.append((msg, why))
    return failed


def _settle_one(ch: BlockingChannel, msg: Taken, action: Callable[[Taken], None],
                keep: Callable[[Taken], None] | None) -> str | None:
    """:func:`settle` of one message: None if it was settled (acted on, or put back, and
    acked), else why not."""
    try:
        action(msg)
    except (ValueError, UnroutableError, NackError) as e:
        why = why_failed(e)
        if keep is None:
            return f"{why}; left in the queue"
        try:
            keep(msg)
        except (UnroutableError, NackError) as e2:
            return f"{why}; not put back ({why_failed(e2)}), left in the queue unacked"
        ch.basic_ack(msg.tag)
        return f"{why}; put back"
    ch.basic_ack(msg.tag)
    return None


def why_failed(e: Exception) -> str:
    """Why an action or a put-back failed, in words: what RabbitMQ did, or the error's."""
    if isinstance(e, UnroutableError):
        return "returned unroutable by RabbitMQ (no queue bound for it)"
    if isinstance(e, NackError):
        return "refused (nacked) by RabbitMQ"
    return str(e)
