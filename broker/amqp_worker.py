"""One queue's worker: batches deliveries, publishes what the handler returns with
pipelined confirms, and acks a batch only when all its publishes are confirmed.

The outcomes it applies are listed in :mod:`broker.amqp`; the connection and
reconnects are :class:`broker.amqp.ConsumerService`'s.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import operator
import queue
import re
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pika import data as pika_data
from pika.adapters.select_connection import SelectConnection
from pika.channel import Channel
from pika.exceptions import (
    ChannelClosedByBroker,
    ShortStringTooLong,
    UnsupportedAMQPFieldException,
)
from pika.spec import Basic, BasicProperties

from broker import threads
from broker.envelope import Outbound, as_text, portable_headers
from broker.errors import HandlerFault, TransientError, without_values
from broker.messages import shown_message_id
from broker.topology import DELIVERY_LIMIT

if TYPE_CHECKING:
    from broker.amqp import ConsumerService

log = logging.getLogger("broker.amqp")
_T = TypeVar("_T")

REASON_HEADER = "x-casebroker-reason"
DETAIL_HEADER = "x-casebroker-detail"
SOURCE_HEADER = "x-casebroker-source"
#: where an unroutable message was going, on its dead-letter copy (replay sends it there)
ORIGINAL_EXCHANGE_HEADER = "x-original-exchange"
ORIGINAL_KEY_HEADER = "x-original-routing-key"
#: the RabbitMQ login a message was first published by (its user_id, which RabbitMQ
#: checks), kept on the router's dead-letter and triage copies and on an operator's
#: republished ones, which are published under another login
SENT_BY_HEADER = "x-casebroker-sent-by"
#: on a replayed dead letter: the message id it was first dead-lettered under
REPLAY_OF_HEADER = "x-casebroker-replay-of"
#: on a replayed dead letter: when it was set aside at the latest (ISO 8601), as RabbitMQ's
#: ``x-death`` or casebroker's own dead letter dated it; a desk's supplement set aside
#: before the supplement request now waiting was made answers an earlier one (stale)
DEAD_SINCE_HEADER = "x-casebroker-dead-since"
#: the reason of a delivery dead-lettered because casebroker's own code failed on it
#: alone (:meth:`BatchHandler.internal_error`): a bug, which an alert pages for
INTERNAL_ERROR = "internal_error"
#: conflicts between competing routers are retried this often before one-by-one handling
MAX_BOUNDED_RETRIES = 5
#: the longest pause after refused publishes: short, since the whole queue waits, and a
#: message RabbitMQ keeps refusing then reaches the delivery limit (20) in under a minute
REFUSAL_MAX_PAUSE_S = 2.0
#: batches nacked in a row on one channel before it is closed and opened afresh: RabbitMQ
#: 3.10 keeps a channel refusing a quorum queue it has once told to refuse (reject-publish
#: overflow over a length cap) after the queue accepts again (the cap lifted), and a
#: channel was refused for minutes after a node of a cluster stopped in a fault test; a
#: new channel publishes at once (docs/RELIABILITY.md, "Publishes RabbitMQ keeps refusing")
NACKED_BEFORE_REOPEN = 5
#: at most one such reopen this often: closing a channel gives back every delivery in
#: its prefetch window, and RabbitMQ counts that towards each one's delivery limit (20),
#: so a queue that really goes on refusing must not send good dossiers to dead.intake
NACK_REOPEN_INTERVAL_S = 60.0
#: after a ledger outage, the longest wait between two tries of a delivery taken alone
#: while the ledger answers its probe yet fails each try, in holds (8 x 600 s: each try a
#: step nearer the delivery's limit, 20, so that one delivery reaches it after a day)
TRIAL_WAIT_MAX_HOLDS = 8


@dataclass(slots=True)
class Delivery:
    """One received message, unacked until its batch's publishes are confirmed."""

    tag: int
    body: bytes
    properties: BasicProperties
    redelivered: bool
    routing_key: str

    @property
    def message_id(self) -> str | None:
        """The sender's message id; one that is not UTF-8, which pika hands over as
        bytes, as text with its bytes escaped (the same text on every delivery)."""
        mid = self.properties.message_id
        return None if mid is None else as_text(mid)


class BatchHandler(Protocol):
    """Turns a batch of deliveries into messages to publish, after committing the ledger."""

    source: str

    def handle(self, deliveries: Sequence[Delivery]) -> list[Outbound]: ...

    def internal_error(self, delivery: Delivery, error: BaseException) -> list[Outbound]: ...

    def check_writable(self) -> None:
        """Return once the ledger takes writes; raise TransientError while it does not."""


_DESTINATION = operator.attrgetter("exchange", "routing_key")


def by_destination(outbound: list[Outbound]) -> list[Outbound]:
    """A batch's messages grouped by exchange and routing key, in their order within each.

    Every agency and desk has a quorum queue of its own, and a batch's messages, in
    dossier order, hop from queue to queue. Published grouped, each queue takes its
    messages of the batch in one run: RabbitMQ spends about a fifth less CPU per
    dossier (docs/BENCHMARKS.md). The sort is stable, so messages for one queue keep
    their order; between queues AMQP promises no order anyway.
    """
    outbound.sort(key=_DESTINATION)
    return outbound


class CoalescingConnection(SelectConnection):  # type: ignore[misc]
    """A pika ``SelectConnection`` whose frames emitted inside :meth:`coalesced` leave
    in few socket writes.

    pika hands each frame to the socket on its own: a publish is three ``send`` calls
    (method, header, body), so a batch of 250 dossiers (500 publishes) is 1,500 TCP
    segments on loopback, and RabbitMQ's reader wakes for each. Joined, the batch goes
    out in writes of up to :attr:`max_write_bytes`: RabbitMQ spends about a fifth less
    CPU per routed dossier (docs/BENCHMARKS.md). Frame order is unchanged; only the
    number of writes drops. The cap keeps large bodies from being copied into one
    huge buffer: past it, what is held is written and holding starts again.
    """

    max_write_bytes = 256 * 1024
    _held: list[bytes] | None = None
    _held_bytes = 0

    def _create_channel(self, channel_number: int,
                        on_open_callback: Callable[[Channel], Any] | None) -> Channel:
        return KeepingChannel(self, channel_number, on_open_callback)  # pika's factory

    def _adapter_emit_data(self, data: bytes) -> None:  # pika's adapter hook for output
        if self._held is None:
            super()._adapter_emit_data(data)
            return
        self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes >= self.max_write_bytes:
            self._write_held()

    def _write_held(self) -> None:
        assert self._held is not None
        if self._held:
            super()._adapter_emit_data(b"".join(self._held))
        self._held.clear()
        self._held_bytes = 0

    @contextmanager
    def coalesced(self) -> Iterator[None]:
        """Hold the frames emitted in the block; write them together when it ends."""
        if self._held is not None:  # nested: the outer block writes
            yield
            return
        self._held = []
        try:
            yield
        finally:
            self._write_held()
            self._held = None


class KeepingChannel(Channel):  # type: ignore[misc]
    """A pika channel that hands a consumer the deliveries that arrive after its
    ``basic.cancel`` went out and before RabbitMQ's cancel-ok, where pika rejects them
    back to the queue. RabbitMQ sent them before it read the cancel: at a stop, those
    were much of a window of large dossiers (read from the socket after the cancel), and
    each rejection counted toward the queue's delivery limit. Handed over, they are
    handled within the stop's grace like the rest, or left unacked to go back at the
    close. After cancel-ok no delivery comes for the consumer (AMQP 0-9-1)."""

    def _on_deliver(self, method_frame: Any, header_frame: Any, body: bytes) -> None:
        tag = method_frame.method.consumer_tag
        consumer = self._consumers.get(tag)
        if tag in self._cancelled and consumer is not None:
            consumer(self, method_frame.method, header_frame.properties, body)
            return
        super()._on_deliver(method_frame, header_frame, body)


#: what pika raises when a message cannot be marshalled (a header name over 255 bytes, an
#: int beyond 64 bits, a value of a type it has no encoding for)
UNENCODABLE = (ShortStringTooLong, UnsupportedAMQPFieldException, struct.error, TypeError,
               ValueError)


def _read_any_timestamp() -> None:
    """Have pika read a header's timestamp past the year 9999 as its number of seconds.

    pika decodes a timestamp in a header table (AMQP 'T': 64-bit seconds since 1970) as a
    datetime, which raises for a year past 9999 (a Java client's ``Long.MAX_VALUE`` date,
    say). It raises in pika's frame reader, where it ends the connection: the router
    reconnected, met the same delivery again, and so on until the delivery limit
    dead-lettered it with every delivery of both prefetch windows given back; the
    operator tools could then not read the dead-letter queue at all (found by a review).
    Read as an int, the value is kept (made portable as any other) and the message
    handled as any. Applied once, at import: pika has no hook for it."""
    decode = pika_data.decode_value
    if getattr(decode, "reads_any_timestamp", False):
        return

    def decode_value(encoded: bytes, offset: int) -> tuple[Any, int]:
        if encoded[offset:offset + 1] == b"T":
            seconds = struct.unpack_from(">Q", encoded, offset + 1)[0]
            try:
                return datetime.fromtimestamp(seconds, UTC), offset + 9
            except (ValueError, OverflowError, OSError):
                return seconds, offset + 9
        value, end = decode(encoded, offset)
        return value, int(end)

    decode_value.reads_any_timestamp = True  # type: ignore[attr-defined]
    pika_data.decode_value = decode_value


_read_any_timestamp()


def header_time(value: Any) -> datetime | None:
    """A time a header holds (an AMQP timestamp, or ISO 8601 text with its offset), or
    None for anything else: a sender may put anything in a header."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str) and len(value) <= 64:
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, datetime) and value.utcoffset() is not None:
        return value
    return None


def properties_for(out: Outbound, user_id: str | None) -> BasicProperties:
    """Persistent AMQP properties for an outbound message."""
    return BasicProperties(
        content_type="application/json", delivery_mode=2, message_id=out.message_id,
        correlation_id=out.correlation_id, type=out.type, headers=out.headers,
        user_id=user_id, timestamp=int(time.time()))


class _HandlerThread:
    """Runs one batch at a time off the I/O loop, so receiving, publishing and acking go on
    while the ledger commits (SQLite and PostgreSQL calls release the GIL)."""

    def __init__(self, name: str) -> None:
        self.jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        #: when the job it runs now began (monotonic clock); None between jobs. Its own,
        #: not the worker's: a batch left running by a closed channel still holds it
        self.job_started: float | None = None
        self.os_thread = threads.start(self._loop, name)

    @property
    def name(self) -> str:
        return self.os_thread.name

    def submit(self, job: Callable[[], None]) -> None:
        self.jobs.put(job)

    def _loop(self) -> None:
        while True:
            job = self.jobs.get()
            self.job_started = time.monotonic()
            try:
                job()
            except Exception as e:  # a job reports its own failures; this is the last guard
                log.error("handler thread: a job failed: %s", without_values(e))
            finally:
                self.job_started = None


@dataclass(slots=True)
class _InFlight:
    """A handled batch whose messages are published: acked once ``outstanding`` is 0."""

    last_tag: int
    outstanding: int
    batch: list[Delivery]
    failed: bool = False  # a publish was nacked, or returned and not dead-lettered
    #: where the nacked publishes were going (exchange/routing key), for the log
    refused_to: set[str] | None = None
    #: when its messages were published (time.monotonic), for readiness
    published_at: float = 0.0


class _Refusals:
    """After the broker refused a batch's publish: how long to pause, doubling while
    refusals keep coming and starting afresh after a quiet spell, and which messages
    were in refused batches (``suspects``). While refusals come, each suspect is handled
    in a batch of its own, so a message the broker keeps refusing holds back only
    itself; the others are batched as usual."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial_s, self.max_s = initial_s, max_s
        self.delay_s = 0.0
        self.at = -1e9
        self.suspects: set[str] = set()

    @staticmethod
    def key(delivery: Delivery) -> str:
        """What identifies a delivery across redeliveries: its message id, else its body."""
        return delivery.message_id or hashlib.sha256(delivery.body).hexdigest()

    def _recent(self) -> bool:
        return time.monotonic() - self.at < max(10.0, 4 * self.delay_s)

    def refused(self, batch: list[Delivery]) -> float:
        """Note a refused batch; return the pause before its deliveries are redone."""
        if not self._recent():
            self.delay_s = 0.0
            self.suspects.clear()
        self.delay_s = min(self.max_s, max(self.initial_s, self.delay_s * 2))
        self.at = time.monotonic()
        self.suspects.update(self.key(d) for d in batch)
        return self.delay_s

    def next_batch(self, pending: list[Delivery], size: int) -> list[Delivery]:
        """The next batch: a suspect alone, else up to ``size`` deliveries before one."""
        if self.suspects and not self._recent():
            self.suspects.clear()
        if not self.suspects:
            return pending[:size]
        if self.key(pending[0]) in self.suspects:
            return pending[:1]
        n = 1
        while n < min(size, len(pending)) and self.key(pending[n]) not in self.suspects:
            n += 1
        return pending[:n]


#: RabbitMQ's words when a publish names an exchange that does not exist (404)
_NO_EXCHANGE = re.compile(r"no exchange '(.*)' in vhost")


def _missing_exchange(reason: Exception) -> str | None:
    """The exchange a channel was closed for not finding, if that is why it was closed."""
    if not isinstance(reason, ChannelClosedByBroker) or reason.reply_code != 404:
        return None
    found = _NO_EXCHANGE.search(reason.reply_text)
    return None if found is None else found.group(1)


class QueueWorker:
    """Consumes one queue on its own channel and publishes what its handler returns."""

    def __init__(self, service: ConsumerService, queue: str, handler: BatchHandler,
                 dead_source_of: Callable[[str], str | None]) -> None:
        self.service = service
        self.queue = queue
        self.handler = handler
        self.dead_source_of = dead_source_of
        self.settings = service.settings
        self.channel: Channel | None = None
        self.consumer_tag: str | None = None
        self.thread = _HandlerThread(f"handler-{handler.source}")
        self.generation = 0
        self.refusals = _Refusals(self.settings.retry_initial_s,
                                  min(REFUSAL_MAX_PAUSE_S, self.settings.retry_max_s))
        self.reopen_delay_s = 1.0
        #: when RabbitMQ said consume-ok on the channel (None: not on the one opened last)
        self.consumed_at: float | None = None
        #: an exchange a publish found gone (the channel closed, 404): checked on each new
        #: channel before consuming again (None: none missing)
        self.missing_exchange: str | None = None
        #: RabbitMQ's words when it last closed this queue's channel, until it consumes
        #: again (readiness says why a queue is not consumed: access refused, no queue)
        self.closed_by_broker: str | None = None
        #: when a channel was last closed for nacks (NACK_REOPEN_INTERVAL_S)
        self.nack_reopened_at = -1e9
        #: the unacked deliveries a channel closed on purpose gave back (_close_channel),
        #: until _on_channel_closed says it
        self.given_back: int | None = None
        #: readiness (broker/health.py): since when this queue has been held up, paused
        #: after a failure with no batch acked since, and the last failure in words (no
        #: dossier's data or code). Kept across channels, which a refusal can close;
        #: cleared by an acked batch, or by :meth:`settle` once nothing waits
        self.trouble_since: float | None = None
        self.trouble = ""
        #: since when every try of the handler has failed with the ledger away (None: a
        #: batch went through since); kept while parked, cleared by a new channel otherwise
        self.failing_since: float | None = None
        #: the window was given back after ``hold_s`` of such failures: nothing is consumed
        #: until a delivery taken alone goes through (:meth:`_probe`, :meth:`_try_one`)
        self.parked = False
        #: parked: since when the one delivery taken to try the ledger has been held
        self.trial_since: float | None = None
        #: consumed again after its window was given back, on trial, with no failure since
        #: this (None: not on trial). A hold of failures is a failed try, as for a
        #: delivery taken alone; the trial is over when a batch goes through a hold after
        #: its last failure. Not at once: what goes through may need none of the writes
        #: that fail (a malformed message dead-lettered, a dossier held in triage, a copy
        #: answered from the ledger: two reviews). Not when a hold passes with nothing
        #: consumed: another router's try may hold the one delivery (a review)
        self.trial_clean_since: float | None = None
        #: failed tries in a row since the window was given back (each doubles the wait
        #: before the next, from a hold up to TRIAL_WAIT_MAX_HOLDS of them); cleared with
        #: the trial
        self.trials_failed = 0
        #: parked: not tried again before this (monotonic), a new channel included (a
        #: review: a reconnect tried again at once, however long the wait)
        self.next_try_at = 0.0
        #: the last basic.get sent (its empty answer is told apart from an older one's)
        self.get_token = 0
        self._reset()

    def _reset(self) -> None:
        # a batch still with the handler thread belongs to the old channel: its result is
        # dropped (the deliveries come back, and the inbox republishes what it committed)
        self.generation += 1
        self.busy = False
        #: parked: a probe of the ledger for this channel is on the handler's thread (one
        #: for the channel before may be too: its answer is dropped, as a batch's is)
        self.probing = False
        #: deliveries received on this channel and neither acked nor rejected yet
        self.unacked = 0
        self.pending: list[Delivery] = []
        self.inflight: deque[_InFlight] = deque()
        #: publish sequence number -> (its batch, the message), in publish order
        self.unconfirmed: dict[int, tuple[_InFlight, Outbound]] = {}
        #: the last publish the broker returned (returns come in publish order)
        self.returned_upto = 0
        self.next_seq = 1
        self.flush_timer: Any = None
        self.retry_timer: Any = None
        self.paused_until = 0.0
        self.retry_delay_s = 0.0
        self.retries = 0
        #: batches nacked in a row on this channel (NACKED_BEFORE_REOPEN)
        self.nacked_in_a_row = 0
        #: the broker said consume-ok on this channel (readiness, broker/health.py)
        self.consuming = False
        #: stopping: False from the cancel until RabbitMQ's cancel-ok, while deliveries it
        #: sent before reading the cancel may still come (KeepingChannel)
        self.cancel_confirmed = True
        #: stopping while paused after failures: what comes is not handed over
        self.held_back = False
        #: between the cancel of a consumer giving its window back and RabbitMQ's
        #: cancel-ok: what it holds is nacked then, so none of it is handed over meanwhile
        self.giving_back = False

    @property
    def idle(self) -> bool:
        return not self.inflight and not self.busy

    def confirms_awaited_s(self, now: float) -> float | None:
        """How long the oldest batch still waiting for RabbitMQ's confirms has waited
        (None: none waits); read from the probes' thread."""
        try:
            first = self.inflight[0]  # a batch leaves once all of its are confirmed
        except IndexError:
            return None
        return now - first.published_at

    # channel setup -----------------------------------------------------------------
    def open(self, connection: SelectConnection) -> None:
        self._reset()
        self.consumed_at = None
        self.consumer_tag = None  # a consumer of the channel before: not on the new one
        self.trial_since = None  # a delivery held on the channel before went back with it
        if not self.parked:
            # what failed here went back with the channel before: an outage met on this
            # one holds its window from its own first failure
            self.failing_since = None
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_channel_open(self, channel: Channel) -> None:
        self.channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.add_on_cancel_callback(self._on_cancelled)
        channel.confirm_delivery(self._on_confirm, callback=lambda _f: channel.basic_qos(
            prefetch_count=self.settings.prefetch_count, callback=self._on_qos_ok))

    def _on_qos_ok(self, _frame: Any) -> None:
        if self.channel is None or not self.channel.is_open or self.service.stopping:
            return
        if self.missing_exchange is not None:
            # consumed again while it is gone, every delivery in the window would be
            # handed over, fail its publish and close the channel, a step nearer its
            # delivery limit each time (dead.<queue> in a few minutes): look first. Still
            # gone, RabbitMQ closes this channel (404), and the look is made again later
            self.channel.exchange_declare(self.missing_exchange, passive=True,
                                          callback=self._on_exchange_back)
            return
        if self.parked:  # a new channel while the ledger is still away: ask it first
            self._pause(max(self.settings.retry_initial_s,
                            self.next_try_at - time.monotonic()), self.trouble)
            return
        self.consumer_tag = self.channel.basic_consume(
            self.queue, self._on_message, callback=self._on_consume_ok)

    def _on_exchange_back(self, _frame: Any) -> None:
        log.info("exchange %s is back; consuming %s again", self.missing_exchange, self.queue)
        self.missing_exchange = None
        self._on_qos_ok(_frame)

    def _on_consume_ok(self, _frame: Any) -> None:
        self.consumed_at, self.closed_by_broker = time.monotonic(), None
        self.consuming = True
        log.info("consuming %s", self.queue)

    def _on_cancelled(self, _frame: Any) -> None:
        """The broker cancelled the consumer (its queue was deleted, or its node left):
        nothing would arrive on this channel again. Close it; it is reopened, and
        consumes again once the queue is back."""
        log.warning("RabbitMQ cancelled the consumer of %s (queue deleted?); reopening",
                    self.queue)
        self._close_channel()

    def _close_channel(self) -> None:
        """Close the channel for it to be reopened, dropping what it holds (a batch with
        the handler thread belongs to it); the unacked deliveries it gives back are
        counted first, for :meth:`_on_channel_closed` to say."""
        channel = self.channel
        self._cancel_timers()
        self.given_back = self.unacked
        self._reset()
        if channel is not None and channel.is_open:
            channel.close()

    def _on_channel_closed(self, _channel: Channel, reason: Exception) -> None:
        self.channel = None
        self._cancel_timers()
        # counted before _close_channel reset them, when it closed the channel (said "0")
        given_back = self.unacked if self.given_back is None else self.given_back
        self.given_back = None
        self._reset()
        if self.service.stopping or not self.service.connection_open:
            if self.service.stopping:  # not counted at the close: reset here
                self.said_given_back(given_back)
            return
        # a channel that consumed for a while (as long as the longest pause) starts the
        # backoff afresh; one closed as soon as it consumes (each redelivery published to
        # an exchange that is gone: 404) does not: reopened every second, each close would
        # give back every unacked delivery a step nearer its delivery limit
        if (self.consumed_at is not None
                and time.monotonic() - self.consumed_at >= self.settings.reconnect_max_s):
            self.reopen_delay_s = 1.0
        delay_s, self.reopen_delay_s = self.reopen_delay_s, min(
            self.settings.reconnect_max_s, self.reopen_delay_s * 2)
        if isinstance(reason, ChannelClosedByBroker):
            self.closed_by_broker = f"{reason.reply_code} {reason.reply_text}"[:300]
        gone = _missing_exchange(reason)
        if gone is not None:
            if self.missing_exchange is None:
                log.error("exchange %s is gone (deleted?): %s is not consumed until it is "
                          "back (`casebroker topology declare`)", gone, self.queue)
            self.missing_exchange = gone
        log.warning("channel for %s closed (%s); its %d unacked deliveries go back to the "
                    "queue (each a step nearer its delivery limit, %d); reopening in %.0fs",
                    self.queue, reason, given_back, DELIVERY_LIMIT, delay_s)
        self.service.call_later(delay_s, self.service.reopen_worker, self)

    def cancel(self) -> None:
        """Stop receiving. What was received is still handled within the shutdown's grace
        (:meth:`ConsumerService.draining`): given back, each delivery would be a step
        nearer its delivery limit, and a router restarted during a backlog gave back its
        whole prefetch window each time. A worker paused after failures (the ledger away)
        hands nothing more over: what it holds goes back to the queue, unacked. Deliveries
        still on their way when the cancel goes out are received as the others
        (:class:`KeepingChannel`), where pika rejected them back."""
        paused = self.retry_timer is not None
        self._cancel_timers()
        if self.channel is not None and self.channel.is_open and self.consumer_tag:
            # with a callback, not nowait: pika keeps the consumer until the cancel-ok,
            # and KeepingChannel hands it what comes meanwhile; the stop waits for it
            channel, self.cancel_confirmed = self.channel, False

            def confirmed(_frame: Any) -> None:
                if channel is self.channel:
                    self.cancel_confirmed = True

            self.channel.basic_cancel(self.consumer_tag, callback=confirmed)
        if paused:
            self.held_back = True
            self.pending.clear()
        elif not self.busy:
            self._flush()

    def said_given_back(self, count: int) -> None:
        """Log, at a stop, the deliveries left unacked that go back to the queue."""
        if count > 0:  # not handled, not confirmed in time, or to be retried
            log.info("%s: %d deliveries not acked at close go back to the queue, to be "
                     "redone (what a batch of them committed is republished from the "
                     "ledger)", self.queue, count)

    @property
    def drained(self) -> bool:
        """Nothing with the handler or awaiting confirms, and nothing received left to hand
        over but what a pause after failures holds back, or what the drain's end leaves
        (shutdown)."""
        return self.idle and (
            (not self.pending and self.cancel_confirmed) or self.held_back
            or self.retry_timer is not None or not self.service.draining())

    def _cancel_timers(self) -> None:
        for timer in (self.flush_timer, self.retry_timer):
            if timer is not None:
                self.service.remove_timeout(timer)
        self.flush_timer = self.retry_timer = None

    # consuming ---------------------------------------------------------------------
    def _on_message(self, ch: Channel, method: Basic.Deliver, props: BasicProperties,
                    body: bytes) -> None:
        channel = self.channel
        if channel is None or ch is not channel or not channel.is_open:
            return  # a channel being closed: unacked, the delivery goes back to the queue
        self.unacked += 1
        if self.held_back:
            return  # unacked: back to the queue at the close, as the rest of the window
        self.pending.append(Delivery(method.delivery_tag, body, props, method.redelivered,
                                     method.routing_key))
        if self.retry_timer is not None:
            return
        if len(self.pending) >= self.settings.batch_size:
            self._flush()
        elif self.flush_timer is None:
            self.flush_timer = self.service.call_later(
                self.settings.flush_interval_ms / 1000, self._flush)

    def _flush(self) -> None:
        """Hand the next batch to the handler thread (one batch there at a time)."""
        self.flush_timer = None
        # stopping, a batch is handed over only while the drain lasts and the one before
        # is confirmed: publishes piling up unconfirmed (a window of large dossiers, a
        # blocked connection) would be committed, then redone all the same at the close
        if self.busy or not self.pending or self.retry_timer is not None or self.giving_back \
                or (self.service.stopping and (not self.service.draining() or self.inflight)) \
                or self.channel is None or not self.channel.is_open:
            return
        batch = self.refusals.next_batch(self.pending, self.settings.batch_size)
        # left behind a full batch: a backlog (not behind one cut short before a delivery
        # RabbitMQ refused, handed over alone while refusals go on)
        waiting = (len(self.pending) - len(batch)
                   if len(batch) == self.settings.batch_size else 0)
        singly = self.retries >= MAX_BOUNDED_RETRIES
        generation, started = self.generation, time.perf_counter()
        self.busy = True

        self._off_loop(lambda: by_destination(self._handle(batch, singly=singly)),
                       "handling a batch from", lambda outbound, error: self._handled(
                           generation, batch, outbound or [], error, started, waiting))

    def _off_loop(self, call: Callable[[], _T], what: str,
                  then: Callable[[_T | None, TransientError | None], None]) -> None:
        """Run ``call`` on the handler's thread, then ``then(result, error)`` back in the
        I/O loop: a TransientError as it came, any other failure (a fault of casebroker's
        own, retried with backoff) logged without its values as a HandlerFault."""
        def job() -> None:
            result: _T | None = None
            error: TransientError | None = None
            try:
                result = call()
            except TransientError as e:
                error = e
            except Exception as e:
                log.error("%s %s failed: %s", what, self.queue, without_values(e))
                error = HandlerFault(f"internal fault ({type(e).__name__})")
            self.service.call_threadsafe(lambda: then(result, error))

        self.thread.submit(job)

    def _handled(self, generation: int, batch: list[Delivery], outbound: list[Outbound],
                 error: TransientError | None, started: float, waiting: int) -> None:
        """Back in the I/O loop: publish the batch's messages, or schedule its retry."""
        if generation != self.generation:
            return
        self.busy = False
        if self.channel is None or not self.channel.is_open:
            # closing (the stop's close came while the handler worked): the deliveries go
            # back to the queue, and a redelivery republishes what the batch committed
            return
        if error is not None:
            self.retries += 1 if error.bounded else 0
            # the try began when the batch was handed over (a lock waited 5 s, say)
            self._schedule_retry(error, time.monotonic() - (time.perf_counter() - started))
            return
        if self.retry_delay_s:  # the pause's warning said "retrying in"; now it is over
            log.info("%s resumed: a batch went through after the pause", self.queue)
        self.retries = 0
        self.failing_since = None
        self.retry_delay_s = 0.0
        if self.pending and self.pending[0] is batch[0]:  # cancel() may have cleared it
            del self.pending[: len(batch)]
        self._publish(batch, outbound)
        self.service.hooks.batch_done(self.handler.source, len(batch), len(outbound),
                                      time.perf_counter() - started, waiting)
        if self.parked:
            # the delivery taken alone went through. It may not have needed what fails
            # (a malformed one is dead-lettered; a review: consuming again on its word
            # alone brought back the window given back after each hold): consumed again,
            # on trial
            log.info("%s: a delivery went through the ledger; consuming the queue again",
                     self.queue)
            self.trial_since = None
            self._unpark()
            self._consume_on_trial()
        elif (self.trial_clean_since is not None
              and time.monotonic() - self.trial_clean_since >= self._trial_hold_s):
            log.info("%s: batches have gone through the ledger for a hold; the outage is "
                     "over", self.queue)
            self.trial_clean_since, self.trials_failed = None, 0
        self._flush()

    def _handle(self, batch: list[Delivery], *, singly: bool) -> list[Outbound]:
        if not singly:
            try:
                return self.handler.handle(batch)
            except TransientError:
                raise
            except Exception as e:
                log.error("handler failed on a batch of %d from %s (%s); retrying one by one",
                          len(batch), self.queue, without_values(e))
        outbound: list[Outbound] = []
        for delivery in batch:
            try:
                outbound += self.handler.handle([delivery])
            except TransientError as e:
                if not e.bounded or not singly:
                    # the ledger is away, or a conflict not yet retried: the batch waits
                    raise
                log.error("delivery %s from %s still conflicts after %d retries; dead-lettering",
                          delivery.tag, self.queue, self.retries)
                outbound += self.handler.internal_error(delivery, e)
            except Exception as e:
                log.error("handler failed on one delivery of %s (%s); dead-lettering it",
                          self.queue, without_values(e))
                outbound += self.handler.internal_error(delivery, e)
        return outbound

    def _schedule_retry(self, error: TransientError, began: float | None = None) -> None:
        """Pause after a failure (``began``: when the failed try started), giving the
        window back once the ledger has been away for ``hold_s``."""
        s = self.settings
        self.retry_delay_s = min(s.retry_max_s, max(s.retry_initial_s, self.retry_delay_s * 2))
        delay_s = self.retry_delay_s
        if not error.bounded:
            now = time.monotonic()
            if self.failing_since is None:
                self.failing_since = now if began is None else began
            if self.trial_clean_since is not None:
                self.trial_clean_since = now
            if not self.parked and now - self.failing_since >= s.hold_s:
                if self.trial_clean_since is not None:  # on trial, a hold of failures
                    delay_s = max(delay_s, self._trial_failed(
                        now - self.failing_since, "the deliveries consumed since"))
                self._give_back()
            elif self.trial_since is not None and now - self.trial_since >= s.hold_s:
                # the ledger answers a probe, yet a delivery fails (a disk full, a
                # privilege on one table): the one taken to try it goes back, a step nearer
                # its delivery limit; the window takes none
                delay_s = max(delay_s, self._trial_failed(
                    now - self.trial_since, "the delivery taken to try it"))
                self.trial_since = None
                if self.channel is not None:
                    self._release(self.channel)
        log.warning("%s paused: %s; retrying in %.1fs", self.queue, error, delay_s)
        self.service.hooks.retry(self.handler.source, error.kind)
        self._pause(delay_s, error.summary + (
            " (its deliveries given back to the queue until the ledger takes writes)"
            if self.parked else ""))

    def _trial_failed(self, failed_s: float, what: str) -> float:
        """A try of the ledger failed for a hold: how long to wait before the next, a
        hold, then two, four, up to TRIAL_WAIT_MAX_HOLDS (a ledger that takes the probe
        yet no batch costs a step per try, not one per hold)."""
        self.trials_failed += 1
        wait_s = self._trial_hold_s * min(1 << min(self.trials_failed - 1, 16),
                                          TRIAL_WAIT_MAX_HOLDS)
        self.next_try_at = time.monotonic() + wait_s
        log.warning("%s: the ledger answers, yet %s failed for %.0f s; given back to the "
                    "queue, the ledger is tried again in %.0f s", self.queue, what,
                    failed_s, wait_s)
        return wait_s

    @property
    def _trial_hold_s(self) -> float:
        """The hold of the trials: a wait between tries is a number of them, and a trial
        ends a hold after its last failure. With no hold (--hold-s 0), the longest retry
        pause, not at once (a review: tries 0 s apart)."""
        return max(self.settings.hold_s, self.settings.retry_max_s)

    def _unpark(self) -> None:
        self.parked = False
        self.service.hooks.given_back(self.handler.source, False)

    def _consume_on_trial(self) -> None:
        """Consume again after the window was given back, on trial: the hold runs from the
        first failure from now on (one before is over, and was about other deliveries),
        and a hold of failures is a failed try."""
        self.trial_clean_since, self.failing_since = time.monotonic(), None
        self._on_qos_ok(None)

    def _give_back(self) -> None:
        """Stop consuming, and give the deliveries held here back to the queue, until the
        ledger takes writes again (:meth:`_probe`).

        Held on through a long outage, they would be given back all the same: RabbitMQ
        closes a channel whose oldest unacked delivery is older than its
        ``consumer_timeout`` (30 minutes by default), each close a step nearer every held
        delivery's delivery limit (20), and an outage of about 10 hours dead-lettered a
        router's whole window, valid dossiers included. Given back once, they cost at
        most one step, however long the outage. Not at the first failure: a ledger away
        for seconds (a restart, a failover) costs none."""
        self.parked, self.trial_clean_since = True, None
        self.service.hooks.given_back(self.handler.source, True)
        channel = self.channel
        log.warning("%s: the ledger has been away for %.0f s; the %d deliveries held here "
                    "go back to the queue, and it is not consumed until the ledger takes "
                    "writes again", self.queue, time.monotonic() - (self.failing_since or 0),
                    len(self.pending))
        if channel is None or not channel.is_open:
            return  # closed: what it held went back with it, and a new one will not consume
        tag, self.consumer_tag = self.consumer_tag, None
        self.consuming = False
        if tag is None:
            self._release(channel)
        else:  # what RabbitMQ sends before it reads the cancel joins pending meanwhile
            self.giving_back = True
            channel.basic_cancel(tag, callback=lambda _frame: self._on_give_back_cancel_ok(channel))

    def _on_give_back_cancel_ok(self, channel: Channel) -> None:
        """RabbitMQ's cancel-ok: nothing more comes; what is held goes back. Handed over
        in between (a pause after failures shorter than the cancel's way), a batch would
        be nacked while the handler has it, and its acks close the channel (a review)."""
        if channel is not self.channel:
            return  # closed meanwhile: what it held went back with it
        self.giving_back = False
        self._release(channel)
        if self.parked and self.retry_timer is None and not self.probing:
            self._pause(self.settings.retry_initial_s, self.trouble)  # its end found it held

    def _release(self, channel: Channel) -> None:
        """Give the deliveries not handed to the handler back to the queue (a batch awaiting
        its confirms is acked as they come)."""
        current = self.channel
        if current is None or current is not channel or not current.is_open:
            return
        assert self.service.connection is not None  # the I/O loop runs on it
        with self.service.connection.coalesced():
            for delivery in self.pending:
                current.basic_nack(delivery.tag, multiple=False, requeue=True)
        self.unacked -= len(self.pending)
        self.pending.clear()

    def _probe(self) -> None:
        """Ask, on the handler's thread, whether the ledger takes writes again."""
        if self.probing:
            return
        self.probing = True
        generation = self.generation
        self._off_loop(self.handler.check_writable, "asking the ledger for",
                       lambda _none, error: self._probed(generation, error))

    def _probed(self, generation: int, error: TransientError | None) -> None:
        if generation != self.generation:
            return  # the channel it was asked for is gone: the new one asks afresh
        self.probing = False
        if self.service.stopping or not self.parked:
            return  # a stop consumes nothing
        if error is not None:
            self._schedule_retry(error)
            return
        self._try_one()

    def _try_one(self) -> None:
        """The ledger answers a probe: take one delivery (``basic.get``) and hand it over
        alone. A probe writes nothing, and a ledger may take it yet refuse every batch (a
        disk full, a privilege revoked on one table): consuming again on its word alone,
        the window was given back again after each hold, a step nearer its delivery limit
        each time (a review: dead-lettered within minutes with a short hold). Consuming
        starts again, on trial (:meth:`_consume_on_trial`), once that one goes through, or
        at once if the queue is empty: another router may have emptied it (a review:
        waiting for one to try, the second of two routers stayed parked, not ready, while
        the first took everything)."""
        channel = self.channel
        if channel is None or not channel.is_open:
            return  # a new channel starts over (_on_qos_ok)
        self.get_token += 1
        token = self.get_token

        def got_none(_frame: Any) -> None:
            # nothing to try it with: another router emptied the queue (its ledger took
            # the writes), or holds the one it tries, or nothing came. Consumed again on
            # trial: what comes is held a hold from its first failure (given back at once,
            # the hold being long over, another router's try cost a step more each time:
            # a review), and a hold of failures waits as a failed try does
            if token == self.get_token and channel is self.channel and self.parked:
                log.info("%s: the ledger answers and the queue is empty; consuming it again",
                         self.queue)
                self._unpark()
                self._consume_on_trial()

        def got_one(ch: Channel, method: Basic.GetOk, props: BasicProperties,
                    body: bytes) -> None:
            channel.callbacks.remove(channel.channel_number, Basic.GetEmpty, got_none)
            current = self.channel
            if current is None or ch is not current or not current.is_open:
                return  # unacked on a channel closed: back to the queue with it
            self.unacked += 1
            self.trial_since = time.monotonic()
            log.info("%s: the ledger answers; trying one delivery before consuming again",
                     self.queue)
            self.pending.append(Delivery(method.delivery_tag, body, props, method.redelivered,
                                         method.routing_key))
            self._flush()

        channel.add_callback(got_none, [Basic.GetEmpty], one_shot=True)
        channel.basic_get(self.queue, got_one)

    def _pause(self, delay_s: float, reason: str) -> None:
        """Hand no batch to the handler for ``delay_s``, or longer if a pause already runs
        longer (a ledger outage's backoff is not cut short by a refusal, nor the reverse)."""
        now = time.monotonic()
        if self.trouble_since is None:
            self.trouble_since = now
        self.trouble = reason
        until = now + delay_s
        if self.retry_timer is not None:
            if self.paused_until >= until:
                return
            self.service.remove_timeout(self.retry_timer)
        self.paused_until = until
        self.retry_timer = self.service.call_later(delay_s, self._retry)

    def settle(self) -> None:
        """In the I/O loop, now and then: no longer held up once nothing waits here (no
        pause, no batch with the handler, nothing unacked) while consuming: the failed
        deliveries went to another consumer or to their dead-letter queue."""
        if (self.trouble_since is not None and self.consuming and not self.busy
                and self.unacked == 0 and self.retry_timer is None):
            self.trouble_since = None

    def _retry(self) -> None:
        self.retry_timer = None
        if self.parked and not self.pending:
            self._probe()
        else:  # a batch to redo (parked: the delivery taken to try the ledger)
            self._flush()

    # publishing and confirms ---------------------------------------------------------
    def _publish(self, batch: list[Delivery], outbound: list[Outbound]) -> None:
        entry = _InFlight(batch[-1].tag, len(outbound), batch, published_at=time.monotonic())
        self.inflight.append(entry)
        assert self.service.connection is not None  # the I/O loop runs on it
        with self.service.connection.coalesced():
            for out in outbound:
                self._send(out, entry)
        self._ack_ready()

    def _send(self, out: Outbound, entry: _InFlight) -> None:
        assert self.channel is not None
        try:
            self.channel.basic_publish(out.exchange, out.routing_key, out.body,
                                       properties_for(out, self.service.user_id),
                                       mandatory=True)
        except UNENCODABLE as e:
            # pika marshals a message whole before writing any of it: nothing was sent.
            # Only a sender's headers copied onto a dead letter can do this, from an outbox
            # row written before they were made portable: send them made portable now
            log.warning("message %s to %s could not be encoded (%s); publishing it with "
                        "its headers made portable", shown_message_id(out.message_id),
                        out.exchange, type(e).__name__)
            self.channel.basic_publish(
                out.exchange, out.routing_key, out.body, properties_for(
                    replace(out, headers=portable_headers(out.headers or {})),
                    self.service.user_id), mandatory=True)
        self.unconfirmed[self.next_seq] = (entry, out)
        self.next_seq += 1

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tag, multiple = method.delivery_tag, method.multiple
        if multiple:  # publish sequence numbers were inserted in order: stop at the first > tag
            seqs = list(itertools.takewhile(lambda s: s <= tag, self.unconfirmed))
        else:
            seqs = [tag]
        nacked = isinstance(method, Basic.Nack)
        for seq in seqs:
            found = self.unconfirmed.pop(seq, None)
            if found is not None:
                entry, out = found
                entry.outstanding -= 1
                if nacked:
                    entry.failed = True
                    if entry.refused_to is None:
                        entry.refused_to = set()
                    entry.refused_to.add(f"{out.exchange}/{out.routing_key}")
        self._ack_ready()

    def _returned_entry(self, message_id: str | None) -> _InFlight | None:
        """The batch a returned publish belongs to. RabbitMQ returns a mandatory publish
        before confirming it, in publish order, so it is the first unconfirmed publish of
        that message id after the one returned last (a redelivery can have two in
        flight). Looked for from there: a storm of returns (a queue gone during a burst)
        reads each publish about once, not the whole window per return."""
        oldest = next(iter(self.unconfirmed), self.next_seq)
        for seq in range(max(self.returned_upto + 1, oldest), self.next_seq):
            found = self.unconfirmed.get(seq)
            if found is not None and found[1].message_id == message_id:
                self.returned_upto = seq
                return found[0]
        return None

    def _on_return(self, ch: Channel, method: Basic.Return, props: BasicProperties,
                   body: bytes) -> None:
        channel = self.channel
        if channel is None or ch is not channel or not channel.is_open:
            return  # its batch belonged to a channel being closed: it is redone anyway
        entry = self._returned_entry(props.message_id)
        self.service.hooks.returned(self.handler.source, method.exchange)
        source = self.dead_source_of(method.exchange)
        if entry is None or source is None:
            # a dead letter itself unroutable: its dead-letter queue is missing
            log.error("unroutable publish to %s/%s could not be dead-lettered (%s); its "
                      "batch goes back to its queue to be redone",
                      method.exchange, method.routing_key,
                      "a dead letter: its queue is missing" if source is None
                      else "its batch is gone")
            if entry is not None:
                entry.failed = True
            return
        headers = dict(props.headers or {})
        headers.update({REASON_HEADER: "unroutable", SOURCE_HEADER: self.handler.source,
                        DETAIL_HEADER: f"no queue for {method.routing_key} on {method.exchange}",
                        ORIGINAL_EXCHANGE_HEADER: method.exchange,
                        ORIGINAL_KEY_HEADER: method.routing_key})
        log.warning("publish to %s/%s unroutable; dead-lettering it to dead.%s",
                    method.exchange, method.routing_key, source)
        entry.outstanding += 1
        self._send(Outbound(self.service.dead_letter_exchange, source, props.message_id,
                            props.type or "", props.correlation_id, headers, body), entry)

    def _ack_ready(self) -> None:
        """Ack, in order, the batches whose publishes are all confirmed; give a refused
        batch's deliveries back to the queue to be redone."""
        if self.channel is None or not self.channel.is_open:
            return
        last = None
        while self.inflight and self.inflight[0].outstanding <= 0:
            entry = self.inflight.popleft()
            self.unacked -= len(entry.batch)  # acked below, or rejected by _refused
            if entry.failed:
                if last is not None:
                    self.channel.basic_ack(last, multiple=True)
                    self.service.hooks.acked(self.handler.source, 1)
                    last = None
                self._refused(entry)
                if self.channel is None or not self.channel.is_open:
                    return  # closed to be opened afresh: what is left comes back
                continue
            self.nacked_in_a_row = 0
            self.trouble_since = None  # a batch through: not held up
            last = entry.last_tag
        if last is not None:
            self.channel.basic_ack(last, multiple=True)
            self.service.hooks.acked(self.handler.source, 1)
        if self.service.stopping and not self.inflight:  # the drain's next batch (_flush)
            self._flush()

    def _refused(self, entry: _InFlight) -> None:
        """A publish of this batch was nacked, or returned and not dead-lettered.

        Its deliveries, and nothing else, go back to the queue: each is rejected with
        requeue (``basic.reject``, which RabbitMQ counts towards the quorum queue's
        delivery limit on every version; from 4.3 ``basic.nack`` does not). The channel
        stays open, so the deliveries behind it, handled or not, are not redelivered.
        They come back first; the worker pauses (doubling up to
        :data:`REFUSAL_MAX_PAUSE_S` while refusals go on) and hands them over one at a
        time, so a message the broker keeps refusing holds back only itself until the
        delivery limit dead-letters it. The inbox republishes what was committed.
        """
        assert self.channel is not None
        delay_s = self.refusals.refused(entry.batch)
        # nacked: its queue had no leader (a quorum lost) or refused it (reject-publish);
        # otherwise returned and not dead-lettered (logged where it was returned)
        to = (f" (nacked: {', '.join(sorted(entry.refused_to))})" if entry.refused_to
              else "")
        log.error("a publish from %s was refused by RabbitMQ%s; its %d deliveries go back "
                  "to the queue, redone one at a time after %.1fs", self.queue, to,
                  len(entry.batch), delay_s)
        self.service.hooks.retry(self.handler.source, "refused")
        for delivery in entry.batch:
            self.channel.basic_reject(delivery.tag, requeue=True)
        if entry.refused_to:
            self.nacked_in_a_row += 1
            now = time.monotonic()
            if (self.nacked_in_a_row >= NACKED_BEFORE_REOPEN
                    and now - self.nack_reopened_at >= NACK_REOPEN_INTERVAL_S):
                log.warning("%d batches from %s nacked in a row on one channel; closing it "
                            "to publish on a new one (a channel can go on refusing a queue "
                            "that accepts again; at most once in %.0fs)",
                            self.nacked_in_a_row, self.queue, NACK_REOPEN_INTERVAL_S)
                self.nack_reopened_at = now
                # as when the broker cancels: a batch still with the handler thread
                # belongs to this channel, and must not be published on it as it closes
                self._close_channel()  # _on_channel_closed opens another
                return
        self._pause(delay_s, f"RabbitMQ refused a publish{to}")
