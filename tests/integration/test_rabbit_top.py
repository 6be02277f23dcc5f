"""`python -m bench.rabbit_top` against the real RabbitMQ: the shares of its work, with
quorum queues grouped, while messages go through one."""

from __future__ import annotations

import os
import shutil
import threading
import uuid

import pika
import pytest

from bench.rabbit_top import main
from broker.amqp import amqp_url

pytestmark = pytest.mark.skipif(
    shutil.which("rabbitmqctl") is None or os.geteuid() != 0,
    reason="needs rabbitmqctl on the broker's machine, as root")


def test_shares_name_quorum_queues_and_channels(capsys: pytest.CaptureFixture[str]) -> None:
    queue = f"t{uuid.uuid4().hex[:10]}.top"
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url()))
    ch = conn.channel()
    ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    stop = threading.Event()
    errors: list[BaseException] = []

    def traffic() -> None:  # keeps the queue busy for the whole window
        try:
            c = pika.BlockingConnection(pika.URLParameters(amqp_url()))
            chan = c.channel()
            chan.confirm_delivery()
            while not stop.is_set():
                chan.basic_publish("", queue, b"x" * 200)
            c.close()
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            errors.append(e)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        assert main(["--seconds", "2", "--top", "40", "--channels"]) == 0
    finally:
        stop.set()
        worker.join(30)
        ch.queue_delete(queue)
        conn.close()
    assert not errors
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("reductions ")
    shares = {line.split("%", 1)[1].strip().rsplit(" (", 1)[0]: float(line.split("%")[0])
              for line in lines[1:] if "%" in line and " channel " not in line}
    assert shares["quorum queues"] > 0
    assert shares["rabbit_channel"] > 0
    assert 0 < sum(shares.values()) <= 100.5
    assert any("channel 127.0.0.1:" in line and "confirm=true" in line for line in lines)
