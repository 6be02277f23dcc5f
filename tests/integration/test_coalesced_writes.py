"""CoalescingConnection against the real RabbitMQ: a batch's frames leave in one socket
write, and every message arrives, confirmed, in the order it was published."""

from __future__ import annotations

import uuid
from typing import Any

import pika
from pika.spec import BasicProperties

from broker.amqp import amqp_url
from broker.amqp_worker import CoalescingConnection


class _Publisher:
    """Publishes ``n`` messages once plainly and once coalesced, counting socket writes."""

    def __init__(self, queue: str, n: int) -> None:
        self.queue, self.n = queue, n
        self.writes: list[int] = []  # socket writes per round
        self.confirmed = 0
        self.error: BaseException | None = None
        self.conn = CoalescingConnection(pika.URLParameters(amqp_url()),
                                         on_open_callback=self._on_open,
                                         on_open_error_callback=self._fail)

    def _fail(self, _conn: Any, error: BaseException) -> None:
        self.error = error
        self.conn.ioloop.stop()

    def _on_open(self, conn: CoalescingConnection) -> None:
        transport = conn._transport  # the socket writer: wrapped to count its calls
        write = transport.write
        self.calls = 0

        def counting_write(data: bytes) -> None:
            self.calls += 1
            write(data)

        transport.write = counting_write
        conn.channel(on_open_callback=self._on_channel)

    def _on_channel(self, ch: Any) -> None:
        self.ch = ch
        ch.queue_declare(self.queue, durable=True, arguments={"x-queue-type": "quorum"},
                         callback=lambda _f: ch.confirm_delivery(
                             self._on_confirm, callback=lambda _f: self._rounds()))

    def _publish(self, label: str) -> None:
        for i in range(self.n):
            self.ch.basic_publish("", self.queue, f"{label}-{i}".encode(),
                                  BasicProperties(delivery_mode=2))

    def _rounds(self) -> None:
        before = self.calls
        self._publish("plain")
        self.writes.append(self.calls - before)
        before = self.calls
        with self.conn.coalesced():
            self._publish("coalesced")
        self.writes.append(self.calls - before)

    def _on_confirm(self, frame: Any) -> None:
        if isinstance(frame.method, pika.spec.Basic.Nack):
            self.error = RuntimeError("nacked")
        self.confirmed = frame.method.delivery_tag if frame.method.multiple \
            else self.confirmed + 1
        if self.confirmed >= 2 * self.n or self.error:
            self.conn.close()

    def run(self) -> None:
        self.conn.add_on_close_callback(lambda *_: self.conn.ioloop.stop())
        timer = self.conn.ioloop.call_later(30, self.conn.ioloop.stop)
        self.conn.ioloop.start()
        self.conn.ioloop.remove_timeout(timer)


def test_a_coalesced_batch_is_one_write_and_arrives_whole_and_in_order() -> None:
    queue = f"t{uuid.uuid4().hex[:10]}.coalesce"
    n = 40
    pub = _Publisher(queue, n)
    pub.run()
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url()))
    try:
        assert pub.error is None
        assert pub.confirmed == 2 * n
        # plain pika: method, header and body frames each written on their own
        assert pub.writes == [3 * n, 1]
        ch = conn.channel()
        bodies = []
        for _ in range(2 * n):
            method, _props, body = ch.basic_get(queue, auto_ack=True)
            assert method is not None
            bodies.append(body.decode())
        assert bodies == [f"plain-{i}" for i in range(n)] + [f"coalesced-{i}" for i in range(n)]
        assert ch.basic_get(queue, auto_ack=True)[0] is None
    finally:
        conn.channel().queue_delete(queue)
        conn.close()


class _RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)


def test_nested_blocks_write_once_at_the_outer_end_and_plain_frames_go_at_once() -> None:
    conn = CoalescingConnection.__new__(CoalescingConnection)  # no socket: the hold only
    conn._transport = transport = _RecordingTransport()
    conn._adapter_emit_data(b"a")
    with conn.coalesced():
        conn._adapter_emit_data(b"b")
        with conn.coalesced():
            conn._adapter_emit_data(b"c")
        assert transport.writes == [b"a"]
        conn._adapter_emit_data(b"d")
    conn._adapter_emit_data(b"e")
    assert transport.writes == [b"a", b"bcd", b"e"]


def test_held_frames_are_written_whenever_they_pass_the_cap() -> None:
    conn = CoalescingConnection.__new__(CoalescingConnection)
    conn._transport = transport = _RecordingTransport()
    conn.max_write_bytes = 10
    with conn.coalesced():
        for frame in (b"aaaa", b"bbbb", b"cccc", b"dd", b"ee"):
            conn._adapter_emit_data(frame)
    # 12 bytes passed the cap of 10: written; the last 4 when the block ended
    assert transport.writes == [b"aaaabbbbcccc", b"ddee"]
