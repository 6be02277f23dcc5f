"""`casebroker demo`: real traffic through the real RabbitMQ, and an honest count of it.

It declares a topology under a prefix of its own, starts `casebroker run` as a
separate process, and then plays the province: desks everywhere submit dossiers
(a share of them for agencies outside the desk's area), simulated agencies take
up and resolve what they are assigned, and return desks hand results back. Every
figure of the summary is counted from what actually arrived at the simulated
desks and agencies, and from what the ledger holds.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pika

from adapters.client import BrokerClient, Inbox, Received
from adapters.simulate import DossierFactory
from bench.common import percentile
from broker.amqp import amqp_url
from broker.errors import StartupError
from broker.ledger import Ledger
from broker.messages import (
    AgencyStatus,
    DeskNotice,
    Document,
    DossierAssigned,
    DossierReturned,
    DossierStatus,
    DossierSubmitted,
    NoticeKind,
    new_id,
)
from broker.rules.catalog import SHIPPED_CATALOG, load_catalog
from broker.service import declare_topology, delete_topology
from broker.topology import DEAD_SOURCES, INTAKE_KEY, STATUS_KEY, Topology


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 60.0) -> int:
    """SIGTERM (``casebroker run`` finishes its confirmed batches and exits), SIGKILL if
    it has not exited within ``timeout_s``; its exit status, once reaped."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


@dataclass
class DemoSettings:
    """What the demo does."""

    dossiers: int = 500
    seed: int = 66
    rate: float = 0.0
    catalog: str | None = None
    db_url: str | None = None
    stall_timeout_s: float = 600.0
    keep: bool = False
    progress: bool = True
    #: how many agency systems, desk systems and submitting desks work at once, each
    #: with its own connection. The province's 118 agencies and 108 desks are separate
    #: systems; one thread playing them all, waiting for each publish's confirm, measured
    #: the simulator instead of the broker (about 130 dossiers/s whatever the router did)
    parallel: int = 4
    #: the topology's prefix (default: demo<8 hex>); the benchmark gives its own, so that
    #: `casebroker bench --cleanup` finds what an interrupted lifecycle stage left
    prefix: str | None = None


@dataclass
class _Tally:
    """What arrived where; shared by the simulator threads (guarded by ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    submitted_at: dict[str, float] = field(default_factory=dict)
    receipt_latency_ms: list[float] = field(default_factory=list)
    seen: Counter[tuple[str, str]] = field(default_factory=Counter)
    receipts: set[str] = field(default_factory=set)
    results: set[str] = field(default_factory=set)
    returned_sent: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)
    assigned_steps: int = 0
    notices: Counter[str] = field(default_factory=Counter)

    def first_time(self, queue: str, message_id: str | None) -> bool:
        """Count an arrival; False when the same message already arrived on that queue."""
        key = (queue, message_id or "")
        with self.lock:
            self.seen[key] += 1
            return self.seen[key] == 1

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.seen.values() if n > 1)


def _share(items: list[str], parts: int) -> list[list[str]]:
    """Deal items round-robin into at most ``parts`` non-empty lists."""
    return [items[i::parts] for i in range(min(parts, len(items)))]


class _Agencies:
    """A share of the province's agencies: takes up each assignment and resolves it."""

    def __init__(self, topology: Topology, agency_ids: list[str], tally: _Tally) -> None:
        self.topology, self.tally = topology, tally
        self.client = BrokerClient(topology=topology)
        self.inbox = Inbox(BrokerClient(topology=topology),
                           [topology.agency_queue(a) for a in agency_ids])

    def handle(self, received: Received) -> None:
        if not self.tally.first_time(received.queue, received.message_id):
            return  # a redelivery: a real agency drops it by message id, so do we
        msg = received.message
        if not isinstance(msg, DossierAssigned):
            with self.tally.lock:
                self.tally.notices[f"agency:{getattr(msg, 'notice', '?')}"] += 1
            return
        with self.tally.lock:
            self.tally.assigned_steps += 1
        now = datetime.now(UTC)
        result = Document(name=f"ket-qua-buoc-{msg.step}.pdf",
                          uri=f"https://docs.example.invalid/{msg.dossier_code}/{msg.step}",
                          sha256=uuid.uuid5(uuid.NAMESPACE_URL, msg.dossier_code).hex * 2,
                          size=120_000, media_type="application/pdf")
        for status, docs in ((AgencyStatus.ACCEPTED, []), (AgencyStatus.RESOLVED, [result])):
            update = DossierStatus(update_id=new_id(), dossier_code=msg.dossier_code,
                                   agency_id=msg.agency_id, status=status, documents=docs,
                                   sent_at=now)
            self.client.publish(update, exchange=self.topology.status_exchange,
                                routing_key=STATUS_KEY, message_id=f"status:{update.update_id}")


class _Desks:
    """A share of the desks: notes receipts, hands results to citizens and says so."""

    def __init__(self, topology: Topology, desk_ids: list[str], tally: _Tally,
                 rng: random.Random) -> None:
        self.topology, self.tally, self.rng = topology, tally, rng
        self.client = BrokerClient(topology=topology)
        self.inbox = Inbox(BrokerClient(topology=topology),
                           [topology.desk_queue(d) for d in desk_ids])

    def handle(self, received: Received) -> None:
        if not self.tally.first_time(received.queue, received.message_id):
            return
        notice = received.message
        if not isinstance(notice, DeskNotice):
            return
        tally, code = self.tally, notice.dossier_code
        with tally.lock:
            tally.notices[f"desk:{notice.notice.value}"] += 1
        if code is None:
            return  # held, or refused from triage: no dossier was opened (the summary
            # counts the triaged)
        with tally.lock:
            if notice.notice == NoticeKind.RECEIPT:
                sent = tally.submitted_at.get(str(notice.submission_id))
                if sent is not None:
                    tally.receipt_latency_ms.append((time.monotonic() - sent) * 1000)
                tally.receipts.add(code)
            elif notice.notice == NoticeKind.REFUSED:
                tally.refused.add(code)
        if notice.notice != NoticeKind.RESULT_READY:
            return
        with tally.lock:
            tally.results.add(code)
            satisfaction = self.rng.choice((3, 4, 4, 5, 5, 5))
        event = DossierReturned(event_id=new_id(), dossier_code=code,
                                desk_id=notice.desk_id, returned_at=datetime.now(UTC),
                                satisfaction=satisfaction)
        self.client.publish(event, exchange=self.topology.status_exchange,
                            routing_key=STATUS_KEY, message_id=f"event:{event.event_id}")
        with tally.lock:
            tally.returned_sent.add(code)


def _start_router(topology: Topology, db_url: str, catalog: str | None,
                  log_path: Path) -> subprocess.Popen[bytes]:
    # the catalog named always: the router's default would be $CASEBROKER_CATALOG
    cmd = [sys.executable, "-m", "broker.cli", "run", "--prefix", topology.prefix,
           "--db-url", db_url, "--metrics-port", "0",
           "--catalog", str(catalog or SHIPPED_CATALOG)]
    log = log_path.open("wb")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())


def _queue_info(channel: Any, queue: str) -> tuple[int, int]:
    ok = channel.queue_declare(queue, passive=True).method
    return int(ok.message_count), int(ok.consumer_count)


def _wait_for_consumer(topology: Topology, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url()))
    try:
        channel = conn.channel()
        deadline = time.monotonic() + 120
        while _queue_info(channel, topology.status_queue)[1] < 1:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"casebroker run did not start consuming:\n{tail}")
            time.sleep(0.1)
    finally:
        conn.close()


class _Progress:
    """A one-line progress bar on stderr; where stderr is no terminal (a log file, CI), a
    line every few seconds instead: the bar's carriage returns ran its frames into one
    long line there."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self.last = 0.0
        self.bar = sys.stderr.isatty()

    def show(self, counts: dict[str, int], *, final: bool = False) -> None:
        every = 0.25 if self.bar else 3.0
        if not self.enabled or (not final and time.monotonic() - self.last < every):
            return
        self.last = time.monotonic()
        done = counts["returned"]
        width = 30
        filled = int(width * done / max(1, self.total))
        line = (f"[{'#' * filled}{'.' * (width - filled)}] "
                + "  ".join(f"{k} {v}" for k, v in counts.items()) + f" / {self.total} ")
        sys.stderr.write(f"\r{line}" + ("\n" if final else "") if self.bar
                         else f"{line.rstrip()}\n")
        sys.stderr.flush()


def _percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank quantile the benchmark reports too (p99 of 100 receipts is the
    99th, not the slowest), to 0.01 ms; None without values."""
    return round(percentile(values, q), 2) if values else None


def _require_empty(db_url: str) -> None:
    """The demo's router numbers its dossiers in the ledger it is given, and its deadline
    watch would take the notices of any open dossier there and send them to the demo's
    queues, deleted afterwards: a ledger that holds anything is refused, before anything
    is written to it. (``CASEBROKER_DB_URL`` is not read for the same reason: it names
    the working ledger on a host that runs casebroker.)"""
    try:
        ledger = Ledger(db_url, create=False)
    except StartupError:
        return  # no ledger there yet (out of reach: the demo's own Ledger says so)
    try:
        if not ledger.is_empty():
            raise StartupError(
                f"the ledger at {ledger.where} already holds dossiers or deliveries: the "
                "demo's router would number its dossiers among them and send their deadline "
                "notices to the demo's queues, deleted afterwards; give --db-url an empty "
                "ledger (a new database or schema), or leave it out for a throw-away one")
    finally:
        ledger.dispose()


def run_demo(settings: DemoSettings) -> dict[str, Any]:
    """Run the demo end to end and return its summary (see the module docstring)."""
    catalog = load_catalog(settings.catalog)
    topology = Topology(settings.prefix or f"demo{uuid.uuid4().hex[:8]}")
    if settings.db_url is not None:
        _require_empty(settings.db_url)
    workdir = Path(tempfile.mkdtemp(prefix="casebroker-demo-"))
    db_url = settings.db_url or f"sqlite:///{workdir / 'ledger.sqlite3'}"
    try:
        ledger = Ledger(db_url)
    except BaseException:  # a ledger out of reach: leave no working directory behind
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    rng = random.Random(settings.seed)
    factory = DossierFactory(catalog, rng)
    tally = _Tally()
    declare_topology(amqp_url(), topology, catalog)
    proc = _start_router(topology, db_url, settings.catalog, workdir / "router.log")
    parts: list[_Agencies | _Desks] = []
    threads: list[threading.Thread] = []
    try:
        _wait_for_consumer(topology, proc, workdir / "router.log")
        n = max(1, settings.parallel)
        parts = [_Agencies(topology, share, tally)
                 for share in _share(list(catalog.agency_ids), n)]
        parts += [_Desks(topology, share, tally, random.Random(settings.seed + 1 + i))
                  for i, share in enumerate(_share(list(catalog.desk_ids), n))]
        for part in parts:
            t = threading.Thread(target=part.inbox.drain, args=(part.handle,),
                                 kwargs={"timeout_s": None}, daemon=True)
            t.start()
            threads.append(t)
        summary = _drive(settings, topology, ledger, factory, tally, proc)
    finally:
        for part in parts:
            part.inbox.stop()
        for t in threads:
            t.join(timeout=10)
        for part in parts:
            part.client.close()
        stop_process(proc)
        # a failed demo too: its throw-away ledger and log are nobody's afterwards
        ledger.dispose()
        if not settings.keep:
            shutil.rmtree(workdir, ignore_errors=True)
            delete_topology(amqp_url(), topology, catalog)
    summary["router_exit_code"] = proc.returncode
    if settings.keep:
        summary["workdir"] = str(workdir)
        summary["prefix"] = topology.prefix
    return summary


class _Submitters:
    """Desks submitting the demo's dossiers, ``count`` at once, each on its own connection.

    One factory behind a lock makes the dossiers, so a seed gives the same dossiers
    however many desks submit them; a paced run (``rate``) has one submitter, so the
    offered rate is exact.
    """

    def __init__(self, settings: DemoSettings, topology: Topology, factory: DossierFactory,
                 tally: _Tally) -> None:
        self.topology, self.factory, self.tally = topology, factory, tally
        self.total = settings.dossiers
        self.interval = 1.0 / settings.rate if settings.rate > 0 else 0.0
        self.count = 1 if self.interval else max(1, settings.parallel)
        self.lock = threading.Lock()
        self.made: list[str] = []  # submission ids in the order made
        self.confirmed = 0
        self.failures: list[BaseException] = []
        self.started = time.monotonic()

    def _next(self) -> DossierSubmitted | None:
        with self.lock:
            if len(self.made) >= self.total:
                return None
            dossier = self.factory.make()
            self.made.append(str(dossier.submission_id))
            return dossier

    def _submit(self) -> None:
        try:
            with BrokerClient(topology=self.topology) as publisher:
                sent = 0
                while (dossier := self._next()) is not None:
                    sid = str(dossier.submission_id)
                    # paced: from when it was due, so that a slow confirm, which holds the
                    # next submissions back, shows in their receipt latency instead of
                    # moving their clock (coordinated omission)
                    at = self.started + sent * self.interval if self.interval \
                        else time.monotonic()
                    with self.tally.lock:
                        self.tally.submitted_at[sid] = at
                    publisher.publish(dossier, exchange=self.topology.intake_exchange,
                                      routing_key=INTAKE_KEY, message_id=f"submit:{sid}")
                    sent += 1
                    with self.lock:
                        self.confirmed += 1
                    if self.interval:
                        time.sleep(max(0.0, self.started + sent * self.interval
                                       - time.monotonic()))
        except BaseException as e:  # raised again by run(), not lost in this thread
            self.failures.append(e)

    def run(self, show: Callable[[], None]) -> None:
        """Submit everything, calling ``show`` a few times a second; raise what failed."""
        self.started = time.monotonic()
        threads = [threading.Thread(target=self._submit, name=f"demo-submit-{i}", daemon=True)
                   for i in range(self.count)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            show()
            for t in threads:
                t.join(timeout=0.2 / len(threads))
        if self.failures:
            raise self.failures[0]


def _drive(settings: DemoSettings, topology: Topology, ledger: Ledger,
           factory: DossierFactory, tally: _Tally, proc: subprocess.Popen[bytes]
           ) -> dict[str, Any]:
    progress = _Progress(settings.dossiers, settings.progress)
    desks = _Submitters(settings, topology, factory, tally)

    def counts() -> dict[str, int]:
        states = ledger.states_for_submissions(list(desks.made))
        with tally.lock:
            return {"submitted": desks.confirmed,
                    "routed": sum(1 for s in states.values() if s[1] != 3),
                    "resolved": len(tally.results),
                    "returned": sum(1 for s in states.values() if s[1] == 10)}

    desks.run(lambda: progress.show(counts()) if progress.enabled else None)
    last_change, last_counts = time.monotonic(), counts()
    while True:
        now_counts = counts()
        progress.show(now_counts)
        if now_counts != last_counts:
            last_change, last_counts = time.monotonic(), now_counts
        done = now_counts["returned"] + len(tally.refused) >= settings.dossiers
        if done or time.monotonic() - last_change > settings.stall_timeout_s \
                or proc.poll() is not None:
            break
        time.sleep(0.1)
    elapsed = time.monotonic() - desks.started
    progress.show(counts(), final=True)
    return _summarize(topology, ledger, tally, desks.made, elapsed, settings.rate)


def _summarize(topology: Topology, ledger: Ledger, tally: _Tally, submission_ids: list[str],
               elapsed: float, rate: float) -> dict[str, Any]:
    states = ledger.states_for_submissions(submission_ids)
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url()))
    try:
        channel = conn.channel()
        dead = {s: _queue_info(channel, topology.dead_queue(s))[0] for s in DEAD_SOURCES}
        triaged = _queue_info(channel, topology.triage_queue)[0]
    finally:
        conn.close()
    routed = [s for s in states.values() if s[1] != 3]
    with tally.lock:
        latencies = list(tally.receipt_latency_ms)
        returned = sum(1 for s in states.values() if s[1] == 10)
        summary: dict[str, Any] = {
            "submitted": len(submission_ids),
            "routed": len(routed),
            "refused": len(states) - len(routed),
            "assigned_steps": tally.assigned_steps,
            "receipts": len(tally.receipts),
            "resolved": len(tally.results),
            "returned": returned,
            # a submission the ledger lacks is accounted for by a dead letter of intake or
            # a triage copy (only intake triages); a dead-lettered status update or notice
            # is not one, and must not cancel a lost submission out
            "lost": len(submission_ids) - len(states) - dead["intake"] - triaged,
            "duplicates": tally.duplicates,
            "dead_lettered": sum(dead.values()),
            "triaged": triaged,
            "boundary_free_share": round(sum(1 for s in routed if s[2]) / len(routed), 4)
            if routed else 0.0,
            "receipt_latency_ms": {"p50": _percentile(latencies, 0.50),
                                   "p99": _percentile(latencies, 0.99)},
            "elapsed_s": round(elapsed, 2),
            # 0: every dossier submitted as fast as confirms allow (--rate)
            "offered_per_s": rate,
            "notices": dict(sorted(tally.notices.items())),
        }
        summary["dossiers_per_s"] = round(returned / elapsed, 1) if elapsed else 0.0
    return summary


def format_summary(s: dict[str, Any]) -> str:
    """The summary as a few readable lines."""
    lat = s["receipt_latency_ms"]
    load = (f" at {s['offered_per_s']:g}/s" if s["offered_per_s"] else
            " (submitted as fast as confirms allow: mostly the wait behind the others; "
            "--rate R for a steady load)")
    return "\n".join([
        f"submitted {s['submitted']}  routed {s['routed']}  resolved {s['resolved']}  "
        f"returned {s['returned']}  in {s['elapsed_s']} s ({s['dossiers_per_s']} dossiers/s)",
        f"lost {s['lost']}  duplicates {s['duplicates']}  dead-lettered {s['dead_lettered']}  "
        f"triaged {s['triaged']}  refused {s['refused']}",
        f"boundary-free share {s['boundary_free_share']:.1%}  "
        f"receipt latency p50 {lat['p50']} ms, p99 {lat['p99']} ms" + load,
    ])
