"""Stages that run the router as `casebroker run` in a process of its own.

Receipt round trip at a fixed offered load, and the router's resident memory over a
long run (read from /proc/<pid>/status, so it is the router's alone).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from adapters.demo import stop_process
from bench.common import (
    Dossier,
    Progress,
    blocking,
    consumers,
    depth,
    dossier_stream,
    percentile,
    rate,
    submit_properties,
    wait_until,
)
from bench.cpu import CpuMeter, thread_ticks, thread_us_per_message
from bench.ledgers import sqlite_ledger_url
from bench.publisher import Message, OnSent, publish
from bench.router import fresh_topology
from broker.ledger import Ledger
from broker.messages import new_id
from broker.rules.catalog import SHIPPED_CATALOG, Catalog
from broker.topology import INTAKE_KEY, Topology

REPO_ROOT = Path(__file__).resolve().parent.parent


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process in MB: now (VmRSS), or its peak since it started
    (VmHWM, the kernel's high-water mark)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no {field} for pid {pid}")


@contextmanager
def router_process(topology: Topology, db_url: str, *, prefetch_count: int = 1000,
                   catalog_path: str | None = None, metrics_port: int = 0
                   ) -> Iterator[subprocess.Popen[bytes]]:
    """`casebroker run` on ``topology``, consuming, stopped (SIGTERM) afterwards; its
    /metrics on 127.0.0.1:``metrics_port`` when that is not 0."""
    workdir = Path(tempfile.mkdtemp(prefix="casebroker-bench-router-"))
    log_path = workdir / "router.log"
    cmd = [sys.executable, "-m", "broker.cli", "run", "--prefix", topology.prefix,
           "--db-url", db_url, "--metrics-port", str(metrics_port),
           "--prefetch-count", str(prefetch_count),
           # named always: the router's default would be $CASEBROKER_CATALOG, and the
           # benchmark's dossiers are made from the catalog it was given (or the shipped)
           "--catalog", str(Path(catalog_path or SHIPPED_CATALOG).resolve())]
    env = dict(os.environ, CASEBROKER_LOG_LEVEL="WARNING")
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                cwd=REPO_ROOT)
    try:
        _wait_consuming(topology, proc, log_path)
        yield proc
    finally:
        stop_process(proc)
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def router_with_metrics(topology: Topology, db_url: str, *, catalog_path: str | None = None,
                        attempts: int = 3) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """:func:`router_process` serving /metrics on a port free a moment before; if another
    process took that port in the meantime (the router then exits saying so), again on
    another. Yields the process and its metrics port."""
    with ExitStack() as stack:
        for attempt in range(1, attempts + 1):
            port = free_port()
            try:
                proc = stack.enter_context(router_process(
                    topology, db_url, catalog_path=catalog_path, metrics_port=port))
                break
            except RuntimeError as e:
                if "cannot serve metrics" not in str(e) or attempt == attempts:
                    raise
        yield proc, port


def _wait_consuming(topology: Topology, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    conn = blocking()
    try:
        ch = conn.channel()

        def consuming() -> bool:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"casebroker run exited {proc.returncode}:\n{tail}")
            return consumers(ch, topology.intake_queue) > 0

        wait_until(consuming, timeout_s=120, interval_s=0.1, what="casebroker run")
    finally:
        conn.close()


def _intake(topology: Topology, d: Dossier) -> Message:
    return topology.intake_exchange, INTAKE_KEY, d.body, submit_properties(d.submission_id)


class _DeskListener:
    """Consumes every desk queue (no-ack) and notes when each submission's receipt arrives,
    and when the router started the batch that made it (the receipt's ``issued_at``)."""

    def __init__(self, topology: Topology, catalog: Catalog) -> None:
        self.queues = [topology.desk_queue(d) for d in catalog.desk_ids]
        #: submission id → (arrival, monotonic clock; the router's batch start, wall clock)
        self.arrived: dict[str, tuple[float, str]] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name="bench-desks", daemon=True)

    def _on_message(self, _ch: Any, _method: Any, _props: Any, body: bytes) -> None:
        at = time.monotonic()
        notice = json.loads(body)
        with self.lock:
            self.arrived.setdefault(str(notice.get("submission_id")),
                                    (at, notice.get("issued_at") or ""))

    def _run(self) -> None:
        conn = blocking()
        try:
            ch = conn.channel()
            for q in self.queues:
                ch.basic_consume(q, self._on_message, auto_ack=True)
            self.ready.set()
            while not self.stop.is_set():
                conn.process_data_events(time_limit=0.1)
        finally:
            conn.close()

    def count(self) -> int:
        with self.lock:
            return len(self.arrived)


@dataclass
class LatencyResult:
    """Receipt round trip at an offered load."""

    dossiers: int
    offered_per_s: float
    achieved_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    #: CPU microseconds per offered dossier while the load was offered (bench.cpu)
    cpu: dict[str, float] = field(default_factory=dict)
    #: the round trip in two legs, split where the router starts the batch holding the
    #: dossier: "to_router" (the intake queue, then waiting for the batch before it) and
    #: "from_router" (handling, ledger commit, publishing, the desk queue): p50 and p99 of each
    legs: dict[str, float] = field(default_factory=dict)
    #: dossiers sent first, at the same rate, and left out of the figures above
    warmup: int = 0
    #: their own round trip: p50_ms, p99_ms, max_ms
    warmup_figures: dict[str, float] = field(default_factory=dict)
    #: the router's intake batches while the load was offered (its /metrics): how many,
    #: their mean size, their mean time from hand-off to result, and how many were full
    #: with deliveries waiting behind them (the router at its capacity; README, Monitoring)
    batches: dict[str, float] = field(default_factory=dict)
    #: the router's CPU per offered dossier by thread (bench.cpu.thread_ticks): ``main``
    #: (the AMQP I/O loop), ``handler-intake``, ``wal-checkpoint``...
    threads: dict[str, float] = field(default_factory=dict)


def _percentile(values: list[float], q: float) -> float:
    return round(percentile(values, q), 2)


def receipt_latency(catalog: Catalog, n: int, progress: Progress, *,
                    offered_per_s: float = 1000.0, warmup: int = 1000,
                    catalog_path: str | None = None, timeout_s: float = 300.0) -> LatencyResult:
    """Desk publishes → desk receives its receipt, at a paced load, through `casebroker run`.

    ``warmup`` dossiers go first, at the same rate and by the same path, and are
    reported apart: a fresh router's channel pays once for each destination queue
    (RabbitMQ registers it as that quorum queue's publisher on its first publish
    there), a start-up cost a long-running router has long paid (docs/BENCHMARKS.md).
    """
    dossiers = list(dossier_stream(catalog, warmup + n, seed=7))
    warm_sent: dict[str, tuple[float, float]] = {}  # when each was due: monotonic, wall
    sent: dict[str, tuple[float, float]] = {}

    def noting(into: dict[str, tuple[float, float]]) -> OnSent:
        # from when each dossier was due at the offered rate, not when it went: a publish
        # this process sent late (busy with receipts, or its window full while RabbitMQ
        # was slow to confirm) would otherwise leave that delay out of its own round trip
        def on_sent(message: Message, due: float) -> None:
            into[str(message[3].message_id).removeprefix("submit:")] = (
                due, time.time() - (time.monotonic() - due))
        return on_sent

    with fresh_topology(catalog, "rc") as topology, sqlite_ledger_url() as url, \
            router_with_metrics(topology, url, catalog_path=catalog_path) as (proc,
                                                                               metrics_port):
        listener = _DeskListener(topology, catalog)
        listener.thread.start()

        def receipts(expected: int) -> None:
            def all_arrived() -> bool:
                progress.note(f"{listener.count()}/{expected} receipts", every_s=1.0)
                return listener.count() >= expected

            wait_until(all_arrived, timeout_s=timeout_s, interval_s=0.05, what="every receipt")

        try:
            listener.ready.wait(60)
            if warmup:
                progress.note(f"warming up: {warmup} dossiers at {offered_per_s:.0f}/s, "
                              "reported apart")
                publish((_intake(topology, d) for d in dossiers[:warmup]), window=5000,
                        rate_per_s=offered_per_s, on_sent=noting(warm_sent))
                receipts(warmup)
            progress.note(f"offering {n} dossiers at {offered_per_s:.0f}/s")
            cpu = CpuMeter({proc.pid: "router"})
            batches_before = intake_batches(metrics_port)
            threads_before = thread_ticks(proc.pid)
            result = publish((_intake(topology, d) for d in dossiers[warmup:]), window=5000,
                             rate_per_s=offered_per_s, on_sent=noting(sent))
            cpu.stop()  # the offered load's span: the backlog after it is the router's alone
            threads_after = thread_ticks(proc.pid)
            batches = _batch_figures(batches_before, intake_batches(metrics_port))
            receipts(warmup + n)
        finally:
            listener.stop.set()
            listener.thread.join(timeout=30)
    with listener.lock:
        arrived = dict(listener.arrived)
    measured = _round_trips(sent, arrived)
    warm = _round_trips(warm_sent, arrived)
    return LatencyResult(n, offered_per_s, rate(result.sent, result.seconds),
                         measured["p50_ms"], measured["p99_ms"], measured["max_ms"],
                         cpu.per_message(result.sent), _legs(sent, arrived), warmup, warm,
                         batches, thread_us_per_message(threads_before, threads_after,
                                                        result.sent))


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: what the receipt stage reads of the router's intake batches, by metric sample name
BATCH_SAMPLES = {"casebroker_batch_size_count": "batches",
                 "casebroker_batch_size_sum": "deliveries",
                 "casebroker_batch_seconds_sum": "seconds",
                 "casebroker_full_batches_total": "full"}


def intake_batches(port: int) -> dict[str, float] | None:
    """Batches, deliveries, seconds and full batches the router's intake worker has
    handled so far, from its /metrics (:data:`BATCH_SAMPLES`); None if the scrape failed
    (the stage's other figures matter more)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    found = dict.fromkeys(BATCH_SAMPLES.values(), 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in BATCH_SAMPLES and sample.labels.get("source") == "intake":
                found[BATCH_SAMPLES[sample.name]] = sample.value
    return found


def _batch_figures(before: dict[str, float] | None,
                   after: dict[str, float] | None) -> dict[str, float]:
    if before is None or after is None:
        return {}
    delta = {key: after[key] - before[key] for key in before}
    batches = delta["batches"]
    if batches <= 0:
        return {}
    return {"count": int(batches), "mean_size": round(delta["deliveries"] / batches, 1),
            "mean_ms": round(delta["seconds"] / batches * 1000, 2),
            "full": int(delta["full"])}


def _round_trips(sent: dict[str, tuple[float, float]],
                 arrived: dict[str, tuple[float, str]]) -> dict[str, float]:
    """p50, p99 and max of the round trips of ``sent`` (empty if none arrived)."""
    ms = [(arrived[s][0] - at) * 1000 for s, (at, _) in sent.items() if s in arrived]
    if not ms:
        return {}
    return {"p50_ms": _percentile(ms, 0.50), "p99_ms": _percentile(ms, 0.99),
            "max_ms": round(max(ms), 2)}


def _legs(sent: dict[str, tuple[float, float]], arrived: dict[str, tuple[float, str]]
          ) -> dict[str, float]:
    """p50/p99 of each leg of the round trip, split at the router's batch start.

    The two legs compare wall clocks of two processes on one machine; the round trip
    itself uses the monotonic clock of this one.
    """
    to_router: list[float] = []
    from_router: list[float] = []
    for sid, (sent_mono, sent_wall) in sent.items():
        if sid not in arrived or not arrived[sid][1]:
            continue
        arrived_mono, issued_at = arrived[sid]
        issued = datetime.fromisoformat(issued_at).timestamp()
        to_router.append((issued - sent_wall) * 1000)
        from_router.append((arrived_mono - sent_mono) * 1000 - to_router[-1])
    if not to_router:
        return {}
    return {"to_router_p50_ms": _percentile(to_router, 0.50),
            "to_router_p99_ms": _percentile(to_router, 0.99),
            "from_router_p50_ms": _percentile(from_router, 0.50),
            "from_router_p99_ms": _percentile(from_router, 0.99)}


def _recycled(catalog: Catalog, n: int, *, pool: int) -> Iterator[Dossier]:
    """N dossiers from a pool of real ones, each with a fresh submission id.

    Making a million dossiers with the simulator would cost the benchmark process more
    CPU than the router it measures; swapping the id in the body costs almost nothing.
    """
    templates = list(dossier_stream(catalog, pool, seed=8))
    for i in range(n):
        t = templates[i % pool]
        sid = str(new_id())
        yield Dossier(sid, t.body.replace(t.submission_id.encode(), sid.encode(), 1))


@dataclass
class RssResult:
    """The router process's resident memory over a long run."""

    dossiers: int
    seconds: float
    start_mb: float
    warm_mb: float
    end_mb: float
    peak_mb: float

    @property
    def growth_mb(self) -> float:
        """From idle after start-up to the end of the run."""
        return round(self.end_mb - self.start_mb, 1)


def router_rss(catalog: Catalog, n: int, progress: Progress, *, chunk: int = 20_000,
               catalog_path: str | None = None, timeout_s: float = 7200.0) -> RssResult:
    """Feed N dossiers in chunks to `casebroker run`; VmRSS before, after warm-up, at the end."""
    chunk = max(1, min(chunk, n))
    stream = _recycled(catalog, n, pool=min(n, 5000))
    with fresh_topology(catalog, "rss") as topology, sqlite_ledger_url() as url, \
            router_process(topology, url, catalog_path=catalog_path) as proc:
        outputs = [topology.agency_queue(a) for a in catalog.agency_ids] + \
                  [topology.desk_queue(d) for d in catalog.desk_ids]
        start_mb = warm_mb = rss_mb(proc.pid)
        conn = blocking()
        started = time.monotonic()
        try:
            ch = conn.channel()
            fed = 0
            while fed < n:
                batch = list(itertools.islice(stream, chunk))
                publish(_intake(topology, d) for d in batch)
                fed += len(batch)
                # never let the queue hold everything: wait until this chunk is half done
                wait_until(lambda: depth(ch, topology.intake_queue) <= chunk // 2,
                           timeout_s=timeout_s, interval_s=0.1, what="the router to catch up")
                for q in outputs:  # nobody consumes them here; keep the broker small
                    ch.queue_purge(q)
                if fed == len(batch):
                    warm_mb = rss_mb(proc.pid)
                progress.note(f"fed {fed}/{n}; router RSS {rss_mb(proc.pid)} MB "
                              f"({time.monotonic() - started:.0f} s)")
            ledger = Ledger(url, create=False)
            try:
                wait_until(lambda: sum(ledger.count_inbox_outcomes().values()) >= n,
                           timeout_s=timeout_s, interval_s=1.0, what="the last dossiers")
            finally:
                ledger.dispose()
            seconds = time.monotonic() - started
            end_mb = rss_mb(proc.pid)
            # the kernel's peak: a sample at each chunk's end misses one inside a chunk
            peak_mb = rss_mb(proc.pid, "VmHWM")
        finally:
            conn.close()
    return RssResult(n, seconds, start_mb, warm_mb, end_mb, peak_mb)
