"""Prometheus metric definitions and the hooks that feed them.

Labels carry only bounded, non-personal values: sources, outcomes, reason codes,
agency ids. Never a dossier code, a name or an id number.
"""

from __future__ import annotations

import errno
import json
import math
import socket
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from broker.amqp import INTERNAL_ERROR, Hooks
from broker.errors import SettingError, StartupError

#: the consumers' sources (their handlers' ``source``) and what their retries are
SOURCES = ("intake", "status")
RETRY_KINDS = ("transient", "conflict", "refused", "fault")
RELOAD_RESULTS = ("applied", "refused", "failed")


class Metrics(Hooks):
    """Every casebroker metric, in its own registry (tests make as many as they like)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        #: what :meth:`serve` answers beside /metrics: one dict, replaced in place
        self._probes: dict[str, Probe] = {}
        r = self.registry
        self.intake_total = Counter(
            "casebroker_intake_total", "Submitted dossiers processed by the router, by outcome",
            ["outcome", "reason"], registry=r)
        self.status_total = Counter(
            "casebroker_status_updates_total",
            "Status updates and desk events processed, by outcome", ["outcome", "reason"],
            registry=r)
        self.batch_seconds = Histogram(
            "casebroker_batch_seconds", "Time to process one batch (decode, rules, ledger)",
            ["source"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.batch_size = Histogram(
            "casebroker_batch_size", "Deliveries per batch", ["source"], registry=r,
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000))
        self.full_batches_total = Counter(
            "casebroker_full_batches_total",
            "Batches handed to the handler with more deliveries left waiting behind them "
            "(the batch size was reached): the handler is behind its queue", ["source"],
            registry=r)
        self.published_total = Counter(
            "casebroker_published_total", "Messages published (confirmed or pending)",
            ["source"], registry=r)
        self.acks_total = Counter(
            "casebroker_ack_calls_total", "basic.ack calls (multiple=True) after confirms",
            ["source"], registry=r)
        self.retries_total = Counter(
            "casebroker_retries_total",
            "Batches put back for a retry, by kind: transient (ledger away), conflict "
            "(a competing writer), refused (RabbitMQ refused a publish), fault (a bug)",
            ["source", "kind"], registry=r)
        self.ledger_given_back = Gauge(
            "casebroker_ledger_given_back",
            "1 while the queue's window is given back and the queue not consumed, the "
            "ledger having failed for --hold-s: until a delivery taken alone goes through "
            "(between tries too), else 0", ["source"], registry=r)
        self.returned_total = Counter(
            "casebroker_unroutable_total", "Publishes returned unroutable and dead-lettered",
            ["source", "exchange"], registry=r)
        self.connected = Gauge(
            "casebroker_broker_connected", "1 while connected to RabbitMQ", registry=r)
        self.catalog_reloads_total = Counter(
            "casebroker_catalog_reloads_total", "Catalog reloads on SIGHUP, by result",
            ["result"], registry=r)
        self.overdue_dossiers = Gauge(
            "casebroker_overdue_dossiers", "Open dossiers past their due date, by current agency",
            ["agency"], registry=r)
        self.deadline_notices_total = Counter(
            "casebroker_deadline_notices_total",
            "Deadline notices sent, by kind (at_risk, overdue, overdue_apology) and party (a "
            "chain step's agency counts as agency): the watch's once confirmed, a late "
            "result's apology (the status router's) once its batch commits",
            ["kind", "party"], registry=r)
        self.wal_checkpoint_turns_total = Counter(
            "casebroker_wal_checkpoint_turns_total",
            "SQLite ledger: checkpoint turns that found the WAL due to start over, by result: "
            "restarted, or held_back (a reader keeps an older snapshot, a CLI scan or a "
            "forgotten open transaction; the WAL file grows until it ends)", ["result"],
            registry=r)
        self.last_prune = Gauge(
            "casebroker_ledger_last_prune_timestamp_seconds",
            "When `casebroker ledger prune` last completed on this ledger (Unix time; 0: "
            "never): a scheduled prune that stopped keeps personal data past its retention",
            registry=r)
        self.watch_last_round = Gauge(
            "casebroker_deadline_watch_last_round_timestamp_seconds",
            "When this process's deadline watch last completed a round (Unix time; its "
            "start until one has; 0: no watch here): while it fails, no at-risk or overdue "
            "notice goes out and the overdue gauge stands still", registry=r)
        self.calendar_unconfirmed_year = Gauge(
            "casebroker_calendar_unconfirmed_year",
            "The first year due dates may reach within 90 days whose government decree on "
            "days off (Tết, bridge days, swapped Saturdays) neither the holidays package nor "
            "the catalog has: due dates in it may come a few working days early (0: none; "
            "read at each scrape)", registry=r)
        self.office_open = Gauge(
            "casebroker_office_open",
            "1 from the opening to the closing of a working day on the catalog's calendar "
            "(its lunch break included), when desks and agencies are expected to take what "
            "waits in their queues; else 0 (read at each scrape)", registry=r)
        self.catalog_info = Gauge(
            "casebroker_catalog_info", "The catalog in force (value 1)", ["catalog", "hash"],
            registry=r)
        self.topology_info = Gauge(
            "casebroker_topology_info",
            "The topology prefix this process routes under (value 1): the alerts on "
            "RabbitMQ's per-queue metrics keep to the queues under a prefix a router serves "
            "(several provinces or test runs may share one RabbitMQ)", ["prefix"], registry=r)
        self.ready = Gauge(
            "casebroker_ready",
            "1 while /readyz answers 200 (routing: connected, unblocked, consuming every "
            "queue, none held up, no handler on one batch for 30 s), 0 while it answers 503 "
            "and says why; -1: no probes in this process", registry=r)
        self.live = Gauge(
            "casebroker_live",
            "1 while /livez answers 200, 0 while it answers 503 (stuck: a restart is the "
            "cure); -1: no probes in this process", registry=r)
        self.ready.set(-1)
        self.live.set(-1)
        # bounded label sets exported at 0 from the start: increase() over a series born
        # at 1 is 0, and an alert would miss the first event after a start
        for source in SOURCES:
            self.ledger_given_back.labels(source)
            for kind in RETRY_KINDS:
                self.retries_total.labels(source, kind)
        for result in RELOAD_RESULTS:
            self.catalog_reloads_total.labels(result)
        for result in ("restarted", "held_back"):
            self.wal_checkpoint_turns_total.labels(result)
        # a deadline notice RabbitMQ refused (nacked, or no queue, its dead-letter queue's
        # neither): kept, and published again each round
        self.retries_total.labels("watch", "refused")
        # a delivery casebroker's own code failed on, alone: dead-lettered (a bug)
        for counter in (self.intake_total, self.status_total):
            counter.labels("dead_lettered", INTERNAL_ERROR)

    # consumers
    def count(self, source: str, outcome: str, reason: str, n: int = 1) -> None:
        """``n`` processed deliveries of the intake or the status queue, by outcome."""
        counter = self.intake_total if source == "intake" else self.status_total
        counter.labels(outcome, reason).inc(n)

    # transport hooks
    def batch_done(self, source: str, size: int, published: int, seconds: float,
                   waiting: int = 0) -> None:
        self.batch_seconds.labels(source).observe(seconds)
        self.batch_size.labels(source).observe(size)
        if waiting:
            self.full_batches_total.labels(source).inc()
        self.published_total.labels(source).inc(published)

    def acked(self, source: str, count: int) -> None:
        self.acks_total.labels(source).inc(count)

    def retry(self, source: str, reason: str) -> None:
        self.retries_total.labels(source, reason).inc()

    def given_back(self, source: str, parked: bool) -> None:
        self.ledger_given_back.labels(source).set(1 if parked else 0)

    def returned(self, source: str, exchange: str) -> None:
        self.returned_total.labels(source, exchange).inc()

    def connection(self, up: bool) -> None:
        self.connected.set(1 if up else 0)

    def overdue(self, by_agency: dict[str, int]) -> None:
        """Replace the overdue gauge with a fresh count per agency."""
        self.overdue_dossiers.clear()
        for agency, n in by_agency.items():
            self.overdue_dossiers.labels(agency).set(n)

    def pruned(self, at: datetime | None) -> None:
        """The last completed `ledger prune` (None: never)."""
        self.last_prune.set(0 if at is None else at.timestamp())

    def watch_round(self) -> None:
        """The deadline watch completed a round (or started: it has not failed yet)."""
        self.watch_last_round.set_to_current_time()

    def wal_checkpoint_turn(self, result: str) -> None:
        """One turn of the ledger's checkpoint thread that was due to restart the WAL."""
        self.wal_checkpoint_turns_total.labels(result).inc()

    def calendar_watched(self, first_unconfirmed: Callable[[], int]) -> None:
        """Have each scrape ask ``first_unconfirmed`` for the calendar gauge."""
        self.calendar_unconfirmed_year.set_function(first_unconfirmed)

    def office_watched(self, open_now: Callable[[], bool]) -> None:
        """Have each scrape ask ``open_now`` for the office-day gauge."""
        self.office_open.set_function(lambda: float(open_now()))

    def topology_named(self, prefix: str) -> None:
        self.topology_info.clear()
        self.topology_info.labels(prefix).set(1)

    def catalog_loaded(self, name: str, content_hash: str) -> None:
        self.catalog_info.clear()
        self.catalog_info.labels(name, content_hash).set(1)

    def serve(self, port: int, addr: str = "127.0.0.1",
              probes: Mapping[str, Probe] | None = None) -> Callable[[], None]:
        """Expose /metrics over HTTP on ``addr:port`` (a daemon thread), and each of
        ``probes`` (path -> check) as a JSON answer, 200 or 503; return what stops it. A
        port that is taken (another router on this host?) is a :class:`StartupError`."""
        try:
            server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as e:
            if isinstance(e, socket.gaierror) or e.errno == errno.EADDRNOTAVAIL:
                # a setting, not a fault: started again, it fails again
                raise SettingError(f"cannot serve metrics on {addr}:{port}: "
                                   f"{e.strerror or e} (CASEBROKER_METRICS_ADDR: an address "
                                   "of this host)") from e
            raise StartupError(f"cannot serve metrics on {addr}:{port}: {e.strerror or e} "
                               "(--metrics-port, CASEBROKER_METRICS_PORT; 0: off)") from e
        if probes:
            self.answer_probes(probes)
            metrics_app = server.get_app()
            assert metrics_app is not None  # start_http_server gave it one
            server.set_app(_with_probes(metrics_app, self._probes))

        def stop() -> None:
            server.shutdown()
            server.server_close()

        return stop

    def answer_probes(self, probes: Mapping[str, Probe]) -> None:
        """From now on answer ``probes`` (path -> check) where :meth:`serve` was given
        probes (those a service answers while it starts, then its own), and judge the
        readiness and liveness gauges by them."""
        # the new ones first, then those gone: a probe asked meanwhile never gets a 404
        self._probes.update(probes)
        for path in [p for p in self._probes if p not in probes]:
            del self._probes[path]
        for gauge, path in ((self.ready, "/readyz"), (self.live, "/livez")):
            if path in probes:
                gauge.set_function(_judged_by(probes[path]))


#: a health check: whether all is well, and what it found (JSON-serializable)
Probe = Callable[[], tuple[bool, dict[str, Any]]]
_WSGI = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _judged_by(probe: Probe) -> Callable[[], float]:
    """A gauge's value at each scrape: 1 if the probe passes, else 0; NaN if the check
    itself fails (the scrape goes on; the probe's path answers 500 and says so)."""

    def value() -> float:
        try:
            return float(probe()[0])
        except Exception:
            return math.nan

    return value


def _with_probes(metrics_app: _WSGI, probes: dict[str, Probe]) -> _WSGI:
    """The metrics WSGI app at ``/metrics``, ``probes`` at their paths (a trailing ``/``
    either way), and 404 elsewhere."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "").rstrip("/")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        probe = probes.get(path)
        if probe is None:  # a probe's path mistyped must fail, not answer with metrics
            body = f"no such path: use /metrics, {', '.join(probes)}\n".encode()
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8"),
                                             ("Content-Length", str(len(body)))])
            return [body]
        try:
            ok, found = probe()
            status = "200 OK" if ok else "503 Service Unavailable"
        except Exception as e:  # a fault of the check itself: said, and not "ok"
            status, found = "500 Internal Server Error", {
                "status": "error", "problems": [f"the check failed ({type(e).__name__})"]}
        body = json.dumps(found).encode()
        start_response(status, [("Content-Type", "application/json"),
                                ("Content-Length", str(len(body))),
                                ("Cache-Control", "no-store")])
        return [body]

    return app
