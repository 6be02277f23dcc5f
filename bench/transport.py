"""Transport-only baselines: RabbitMQ's shovel, and our ConsumerService forwarding.

Both move N preloaded dossier bodies from a quorum queue to two quorum queues with
on-confirm acknowledgement: the broker work the router does per dossier (an
assignment to the agency and a receipt to the desk), minus every bit of case logic.
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pika

from bench.common import (
    QUORUM,
    Progress,
    blocking,
    depth,
    dossier_stream,
    rate,
    submit_properties,
    unique_prefix,
    wait_until,
)
from bench.cpu import CpuMeter
from bench.publisher import publish
from broker.amqp import ConsumerService, ConsumerSettings, Delivery, amqp_url
from broker.envelope import Outbound
from broker.rules.catalog import Catalog

PLUGINS = ("rabbitmq_shovel", "rabbitmq_management")


@dataclass
class StageResult:
    """One measured move: N in, 2N out, in ``seconds``."""

    dossiers: int
    seconds: float
    body_bytes: int
    #: CPU microseconds per input message, by process group (bench.cpu)
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def msgs_per_s(self) -> float:
        """Input deliveries per second (each also makes two confirmed publishes)."""
        return rate(self.dossiers, self.seconds)


class Management:
    """The few management-API calls the shovel stage needs."""

    def __init__(self, url: str | None = None) -> None:
        params = pika.URLParameters(url or amqp_url())
        creds = params.credentials
        self.base = f"http://{params.host}:15672/api"
        self.vhost = urllib.parse.quote(params.virtual_host, safe="")
        token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "content-type": "application/json"}

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers=self.headers)
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def running_plugins(self) -> set[str]:
        try:
            nodes = self.call("GET", "/nodes")
        except (urllib.error.URLError, OSError):
            return set()
        return {a["name"] for n in nodes for a in n.get("applications", [])}

    def ensure_plugins(self, progress: Progress) -> None:
        """Enable the shovel and management plugins on the running node if needed."""
        if set(PLUGINS) <= self.running_plugins():
            return
        progress.note("enabling " + " ".join(PLUGINS))
        subprocess.run(["rabbitmq-plugins", "enable", *PLUGINS], check=True,
                       capture_output=True)
        wait_until(lambda: set(PLUGINS) <= self.running_plugins(), timeout_s=60,
                   interval_s=0.5, what="the shovel and management plugins")

    def start_shovel(self, name: str, source_queue: str, exchange: str,
                     prefetch_count: int) -> None:
        """A dynamic shovel on this node, queue → exchange, acking each source message
        once its publish is confirmed (the router's own rule)."""
        self.call("PUT", f"/parameters/shovel/{self.vhost}/{name}", {"value": {
            "src-protocol": "amqp091", "src-uri": "amqp://", "src-queue": source_queue,
            "dest-protocol": "amqp091", "dest-uri": "amqp://", "dest-exchange": exchange,
            "ack-mode": "on-confirm", "src-prefetch-count": prefetch_count}})

    def delete_prefixed(self, prefix: str) -> int:
        """Delete every queue, exchange and shovel whose name starts with ``prefix``.

        Over HTTP, so it still works when RabbitMQ stops accepting AMQP connections
        (it does when its file-handle budget is spent on quorum queues).
        """
        deleted = 0
        for path in ("/queues", "/exchanges"):
            for item in self.call("GET", f"{path}/{self.vhost}?columns=name"):
                if item["name"].startswith(prefix):
                    name = urllib.parse.quote(item["name"], safe="")
                    self.call("DELETE", f"{path}/{self.vhost}/{name}")
                    deleted += 1
        for param in self.call("GET", f"/parameters/shovel/{self.vhost}"):
            if param["name"].startswith(prefix):
                self.clear_shovel(param["name"])
                deleted += 1
        return deleted

    def clear_shovel(self, name: str) -> None:
        try:
            self.call("DELETE", f"/parameters/shovel/{self.vhost}/{name}")
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise


class _Queues:
    """A source queue and two destinations behind one exchange, all quorum."""

    def __init__(self, stage: str, exchange_type: str) -> None:
        p = unique_prefix(stage)
        self.source, self.exchange = f"{p}.src", f"{p}.x"
        self.destinations = (f"{p}.dst.a", f"{p}.dst.b")
        self.exchange_type = exchange_type

    def declare(self) -> None:
        conn = blocking()
        try:
            ch = conn.channel()
            ch.exchange_declare(self.exchange, self.exchange_type, durable=True)
            for q in (self.source, *self.destinations):
                ch.queue_declare(q, durable=True, arguments=QUORUM)
            for q, key in zip(self.destinations, ("a", "b"), strict=True):
                ch.queue_bind(q, self.exchange, key)
        finally:
            conn.close()

    def delete(self) -> None:
        try:
            conn = blocking()
            try:
                ch = conn.channel()
                for q in (self.source, *self.destinations):
                    ch.queue_delete(q)
                ch.exchange_delete(self.exchange)
            finally:
                conn.close()
        except Exception:  # AMQP refused or stuck: HTTP still deletes
            Management().delete_prefixed(self.source.removesuffix(".src") + ".")

    def preload(self, catalog: Catalog, n: int, body_kb: float, progress: Progress) -> int:
        """Fill the source with N dossier bodies; return the mean body size."""
        total = 0

        def messages() -> Any:
            nonlocal total
            for i, d in enumerate(dossier_stream(catalog, n, body_kb=body_kb)):
                total += len(d.body)
                if i % 5000 == 0:
                    progress.note(f"preloading {i}/{n}", every_s=1.0)
                yield "", self.source, d.body, submit_properties(d.submission_id)

        publish(messages())
        return total // max(1, n)

    def wait_full(self, n: int, started: float, progress: Progress, timeout_s: float) -> float:
        conn = blocking()
        try:
            ch = conn.channel()

            def full() -> bool:
                counts = [depth(ch, q) for q in self.destinations]
                progress.note(f"{min(counts)}/{n} moved ({time.monotonic() - started:.1f} s)",
                              every_s=1.0)
                return min(counts) >= n

            return wait_until(full, timeout_s=timeout_s, interval_s=0.02,
                              what=f"{n} messages in {self.destinations}")
        finally:
            conn.close()


def shovel(catalog: Catalog, n: int, progress: Progress, *, body_kb: float = 0.0,
           prefetch_count: int = 1000, timeout_s: float = 900.0) -> StageResult:
    """The shovel plugin, on-confirm, source queue → fanout exchange of two queues."""
    mgmt = Management()
    mgmt.ensure_plugins(progress)
    queues = _Queues("sh", "fanout")
    name = queues.source.removesuffix(".src") + ".shovel"
    queues.declare()
    try:
        size = queues.preload(catalog, n, body_kb, progress)
        progress.note(f"{n} preloaded ({size} B each); starting the shovel")
        started, cpu = time.monotonic(), CpuMeter()
        mgmt.start_shovel(name, queues.source, queues.exchange, prefetch_count)
        done = queues.wait_full(n, started, progress, timeout_s)
        cpu.stop()
        return StageResult(n, done - started, size, cpu.per_message(n))
    finally:
        mgmt.clear_shovel(name)
        queues.delete()


class _Forward:
    """A BatchHandler with no logic: every delivery becomes the same two messages."""

    source = "bench"

    def __init__(self, exchange: str) -> None:
        self.exchange = exchange

    def handle(self, deliveries: Sequence[Delivery]) -> list[Outbound]:
        out: list[Outbound] = []
        for d in deliveries:
            mid = d.message_id or str(d.tag)
            for key in ("a", "b"):
                out.append(Outbound(self.exchange, key, f"{mid}:{key}", "dossier.submitted",
                                    None, None, d.body))
        return out

    def internal_error(self, delivery: Delivery, error: BaseException) -> list[Outbound]:
        return []


def forwarder(catalog: Catalog, n: int, progress: Progress, *, body_kb: float = 0.0,
              prefetch_count: int = 1000, timeout_s: float = 900.0) -> StageResult:
    """broker.amqp.ConsumerService with a do-nothing handler: our transport alone."""
    queues = _Queues("fw", "direct")
    queues.declare()
    service: ConsumerService | None = None
    thread: threading.Thread | None = None
    try:
        size = queues.preload(catalog, n, body_kb, progress)
        progress.note(f"{n} preloaded ({size} B each); starting the forwarder")
        service = ConsumerService(ConsumerSettings(prefetch_count=prefetch_count), "",
                                  lambda _exchange: None)
        service.add(queues.source, _Forward(queues.exchange))
        started, cpu = time.monotonic(), CpuMeter()
        thread = threading.Thread(target=service.run, name="bench-forwarder", daemon=True)
        thread.start()
        done = queues.wait_full(n, started, progress, timeout_s)
        cpu.stop()
        return StageResult(n, done - started, size, cpu.per_message(n))
    finally:
        if service is not None:
            service.stop()
        if thread is not None:
            thread.join(timeout=30)
        queues.delete()
