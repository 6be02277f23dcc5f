"""A pipelined-confirm publisher on pika's SelectConnection, optionally paced.

Up to ``window`` publishes are unconfirmed at once (never one confirm per message),
which is how the benchmark preloads queues and how the receipt stage offers a
fixed load.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pika
from pika.adapters.select_connection import SelectConnection
from pika.channel import Channel
from pika.spec import Basic, BasicProperties

from broker.amqp import amqp_url

#: exchange, routing key, body, properties
Message = tuple[str, str, bytes, BasicProperties]
#: called just before each publish with the message and the monotonic time it was due:
#: its place in the schedule of a paced run, so that a publish held up (a full window
#: while confirms are slow, a late timer) still counts from when it should have gone
#: (no coordinated omission); the moment itself when not paced
OnSent = Callable[[Message, float], None]


class PublishFailed(RuntimeError):
    """The broker nacked or the connection failed while publishing."""


@dataclass
class PublishResult:
    """What was published and how long until the last confirm."""

    sent: int
    seconds: float
    nacked: int


class _Pipeline:
    def __init__(self, messages: Iterable[Message], window: int, rate_per_s: float,
                 on_sent: OnSent | None) -> None:
        self.messages: Iterator[Message] = iter(messages)
        self.window, self.rate_per_s, self.on_sent = window, rate_per_s, on_sent
        self.channel: Channel | None = None
        self.connection: SelectConnection | None = None
        self.pending: dict[int, None] = {}
        self.seq = self.sent = self.nacked = 0
        self.exhausted = False
        self.started = 0.0
        self.timer: Any = None
        self.error: BaseException | None = None

    def on_open(self, connection: SelectConnection) -> None:
        connection.channel(on_open_callback=self.on_channel)

    def on_open_error(self, connection: SelectConnection, error: BaseException) -> None:
        self.error = error
        connection.ioloop.stop()

    def on_closed(self, connection: SelectConnection, reason: BaseException) -> None:
        if not (self.exhausted and not self.pending):
            self.error = reason
        connection.ioloop.stop()

    def on_channel(self, channel: Channel) -> None:
        self.channel = channel
        channel.confirm_delivery(self.on_confirm, callback=lambda _f: self.start())

    def start(self) -> None:
        self.started = time.monotonic()
        self.pump()

    def pump(self) -> None:
        self.timer = None
        assert self.channel is not None and self.connection is not None
        while len(self.pending) < self.window and not self.exhausted:
            now = due = time.monotonic()
            if self.rate_per_s > 0:
                due = self.started + self.sent / self.rate_per_s
                if due > now:
                    self.timer = self.connection.ioloop.call_later(due - now, self.pump)
                    return
            message = next(self.messages, None)
            if message is None:
                self.exhausted = True
                break
            exchange, key, body, props = message
            if self.on_sent is not None:
                self.on_sent(message, due)
            self.channel.basic_publish(exchange, key, body, props)
            self.seq += 1
            self.sent += 1
            self.pending[self.seq] = None
        self._maybe_done()

    def on_confirm(self, frame: Any) -> None:
        method = frame.method
        if isinstance(method, Basic.Nack):
            self.nacked += 1
        if method.multiple:
            done = [s for s in self.pending if s <= method.delivery_tag]
            for s in done:
                del self.pending[s]
        else:
            self.pending.pop(method.delivery_tag, None)
        if self.timer is None:
            self.pump()

    def _maybe_done(self) -> None:
        if self.exhausted and not self.pending and self.connection is not None:
            self.connection.close()


def publish(messages: Iterable[Message], *, window: int = 2000, rate_per_s: float = 0.0,
            on_sent: OnSent | None = None,
            url: str | None = None) -> PublishResult:
    """Publish every message with pipelined confirms; block until all are confirmed."""
    pipe = _Pipeline(messages, window, rate_per_s, on_sent)
    conn = SelectConnection(pika.URLParameters(url or amqp_url()), on_open_callback=pipe.on_open,
                            on_open_error_callback=pipe.on_open_error,
                            on_close_callback=pipe.on_closed)
    pipe.connection = conn
    conn.ioloop.start()
    if pipe.error is not None:
        raise PublishFailed(f"publishing stopped after {pipe.sent}: {pipe.error}")
    if pipe.nacked:
        raise PublishFailed(f"{pipe.nacked} publishes nacked by the broker")
    return PublishResult(pipe.sent, time.monotonic() - pipe.started, pipe.nacked)
