"""`casebroker run`: the router, the status router and the deadline watch, until stopped.

The consumers share one connection; the deadline watch (``WatchSettings``, from
``CASEBROKER_DEADLINE_*``) runs in a thread with its own.

SIGINT/SIGTERM stop it cleanly: consuming stops, published batches get their
confirms and acks, nothing unfinished is acked. SIGHUP reloads the catalog: the new
one is validated and its topology declared before it replaces the old; a batch
always sees one catalog version; an invalid catalog is refused and the old one
keeps serving. A SIGHUP during the start's declare is a reload too; one once stopping is
not done.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
from collections.abc import Iterable, Sequence
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import pika

from broker import threads
from broker.amqp import ConsumerService, ConsumerSettings
from broker.calendar import first_unconfirmed_ahead, unconfirmed_ahead
from broker.consumers.common import Clock, party_users_enabled
from broker.consumers.deadlines import DeadlineWatch, WatchSettings
from broker.consumers.router import Router
from broker.consumers.status import StatusRouter
from broker.errors import CatalogError
from broker.ledger import Ledger
from broker.messages import utc_now
from broker.rules.catalog import Catalog, load_catalog
from broker.rules.engine import Engine
from broker.topology import Topology
from monitoring.metrics import Metrics

log = logging.getLogger(__name__)


def _connect(urls: str | Sequence[str]) -> pika.BlockingConnection:
    """A connection to the first of the nodes that answers (pika tries them in turn)."""
    listed = [urls] if isinstance(urls, str) else list(urls)
    return pika.BlockingConnection([pika.URLParameters(u) for u in listed])


def declare_topology(urls: str | Sequence[str], topology: Topology, catalog: Catalog) -> int:
    """Declare every exchange, queue and binding of a catalog (idempotent), through the
    first of the cluster's nodes that answers."""
    connection = _connect(urls)
    try:
        return topology.declare(connection.channel(), catalog.agency_ids, catalog.desk_ids)
    finally:
        _close(connection)


def delete_topology(urls: str | Sequence[str], topology: Topology, catalog: Catalog) -> None:
    """Delete a catalog's queues and exchanges (tests and demos clean up after themselves)."""
    connection = _connect(urls)
    try:
        delete_names(connection.channel(), topology.queues(catalog.agency_ids,
                                                           catalog.desk_ids),
                     topology.exchanges)
    finally:
        _close(connection)


def _close(connection: pika.BlockingConnection) -> None:
    """Close a connection RabbitMQ has not closed already: closing one it closed (a node
    going down, a connection-level refusal) raises, and that error would replace RabbitMQ's
    own, saying "called on closed connection" where it should say what RabbitMQ did."""
    if connection.is_open:
        connection.close()


def delete_names(channel: Any, queues: Iterable[str], exchanges: Iterable[str]) -> None:
    """Delete these queues (with what they hold) and exchanges; one missing is no error."""
    for queue in queues:
        channel.queue_delete(queue)
    for exchange in exchanges:
        channel.exchange_delete(exchange)


@dataclass
class Broker:
    """The running service: one engine in force, the consumers, the ledger."""

    catalog_path: str | None
    topology: Topology
    ledger: Ledger
    settings: ConsumerSettings = field(default_factory=ConsumerSettings)
    metrics: Metrics = field(default_factory=Metrics)
    #: None: no deadline watch in this process
    watch_settings: WatchSettings | None = field(default_factory=WatchSettings.from_env)
    #: what the consumers and the watch take for "now" (tests move it)
    clock: Clock = utc_now
    #: the catalog at ``catalog_path`` if the caller loaded it already (`run`: before it
    #: opens the ledger)
    loaded: InitVar[Catalog | None] = None

    def __post_init__(self, loaded: Catalog | None) -> None:
        self.catalog = loaded if loaded is not None else load_catalog(self.catalog_path)
        self._engine = Engine(self.catalog)
        self.metrics.catalog_loaded(self.catalog.spec.catalog, self.catalog.content_hash)
        self.metrics.topology_named(self.topology.prefix)
        # a router runs for months: the year it warned of at start may come into view later
        self.metrics.calendar_watched(
            lambda: first_unconfirmed_ahead(self._engine.calendar, self.clock()))
        self.metrics.office_watched(lambda: self._engine.calendar.office_day_at(self.clock()))
        self._reload_lock = threading.Lock()
        self.service = ConsumerService(
            self.settings, self.topology.dead_letter_exchange, self._dead_source_of,
            hooks=self.metrics)
        # the router's own login: dead letters replayed under it keep their first sender
        own = self.service.user_id
        self.service.add(self.topology.intake_queue, Router(
            self.engine, self.ledger, self.topology, clock=self.clock, metrics=self.metrics,
            trusted_user=own))
        self.service.add(self.topology.status_queue, StatusRouter(
            self.engine, self.ledger, self.topology, clock=self.clock, metrics=self.metrics,
            trusted_user=own))
        status = next(w for w in self.service.workers
                      if w.queue == self.topology.status_queue)
        self.watch = None if self.watch_settings is None else DeadlineWatch(
            self.engine, self.ledger, self.topology, self.watch_settings, clock=self.clock,
            metrics=self.metrics, urls=self.urls, holding=lambda: status.unacked,
            consuming=lambda: status.consuming)

    @property
    def urls(self) -> tuple[str, ...]:
        """The cluster's nodes, in the order they are tried."""
        return (self.settings.url, *self.settings.failover_urls)

    def engine(self) -> Engine:
        """The engine in force now."""
        return self._engine

    def _dead_source_of(self, exchange: str) -> str | None:
        t = self.topology
        return {t.intake_exchange: "intake", t.status_exchange: "status",
                t.agency_exchange: "agency", t.desk_exchange: "desk"}.get(exchange)

    def declare(self) -> int:
        """Declare the topology of the catalog in force."""
        return declare_topology(self.urls, self.topology, self.catalog)

    def reload(self) -> bool:
        """Load the catalog file again; swap it in only if valid and its topology declared."""
        with self._reload_lock:
            if self.service.stopping:
                # stopping (SIGTERM came first): the process is on its way out, and an
                # operator may be taking its topology down (`topology delete`) as it
                # goes; declaring it again now would bring the queues back
                log.warning("catalog reload not done: stopping; keeping %s",
                            self.catalog.content_hash)
                return False
            try:
                catalog = load_catalog(self.catalog_path)
                engine = Engine(catalog)
                declare_topology(self.urls, self.topology, catalog)
            except CatalogError as e:
                log.error("catalog reload refused, %d problem(s); keeping %s:\n%s",
                          len(e.problems), self.catalog.content_hash, e)
                self.metrics.catalog_reloads_total.labels("refused").inc()
                return False
            except Exception:
                log.exception("catalog reload failed; keeping %s", self.catalog.content_hash)
                self.metrics.catalog_reloads_total.labels("failed").inc()
                return False
            old = self.catalog.content_hash
            self.catalog, self._engine = catalog, engine
            self.metrics.catalog_loaded(catalog.spec.catalog, catalog.content_hash)
            self.metrics.catalog_reloads_total.labels("applied").inc()
            if old == catalog.content_hash:
                log.info("catalog reloaded: unchanged (%s)", old)
            else:
                log.info("catalog reloaded: %s -> %s", old, catalog.content_hash)
            self._warn_unconfirmed_years()
            return True

    def _warn_unconfirmed_years(self) -> None:
        for note in unconfirmed_ahead(self._engine.calendar, self.clock()):
            log.warning("calendar: %s", note)

    def run(self, *, install_signals: bool = True) -> None:
        """Declare, consume until stopped; blocks."""
        if install_signals:
            # before the declare, which takes seconds on a large catalog or a slow node:
            # a SIGHUP meanwhile (a reload sent just after a start) would otherwise end
            # the process, by the signal's default action, without a word. SIGINT and
            # SIGTERM keep theirs until consuming starts: nothing is consumed yet, and a
            # declare that hangs on an unanswering node is cut short at once
            signal.signal(signal.SIGHUP, self._on_reload_signal)
        queues = self.declare()
        log.info("catalog %s (%s): %d procedures; %d queues under prefix %r",
                 self.catalog.spec.catalog, self.catalog.content_hash,
                 len(self.catalog.spec.procedures), queues, self.topology.prefix)
        self._warn_unconfirmed_years()
        log.info("senders %s", "must be the RabbitMQ user of the desk or agency they name "
                 "(CASEBROKER_PARTY_USERS=1)" if party_users_enabled(None) else "are not "
                 "checked against RabbitMQ users (CASEBROKER_PARTY_USERS is off)")
        self.serve(install_signals=install_signals)

    def serve(self, *, install_signals: bool = True) -> None:
        """Consume until stopped, the topology being declared already; blocks."""
        if install_signals:
            signal.signal(signal.SIGINT, self._on_stop_signal)
            signal.signal(signal.SIGTERM, self._on_stop_signal)
            signal.signal(signal.SIGHUP, self._on_reload_signal)
        # before anything uses the ledger: its connections are made without checkpoints
        stop_checkpoints = self.ledger.background_checkpoints(
            count=self.metrics.wal_checkpoint_turn)
        if self.watch is not None:
            self.watch.start()
        # the catalog, engine and libraries are long-lived: keep them out of the garbage
        # collector's full passes, which would otherwise stall batches for milliseconds
        gc.collect()
        gc.freeze()
        try:
            self.service.run()
        finally:
            if self.watch is not None:
                self.watch.stop()
            stop_checkpoints()
        log.info("stopped")

    def stop(self) -> None:
        """Stop consuming and close once published batches are confirmed (thread-safe)."""
        self.service.stop()
        if self.watch is not None:
            self.watch.stop(timeout_s=0)

    def _on_stop_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        # not here: the handler runs in the I/O thread between two of its steps, and the
        # wake-up stop() sends takes a lock that step may hold (pika's is not reentrant)
        threads.start(self.stop, "stop")

    def _on_reload_signal(self, _signum: int, _frame: FrameType | None) -> None:
        self.reload_soon()

    def reload_soon(self) -> None:
        """:meth:`reload` in a thread of its own (what SIGHUP does): it parses YAML and
        talks to RabbitMQ, which a signal handler must not."""
        threads.start(self.reload, "catalog-reload")


def catalog_path_arg(value: str | None) -> str | None:
    """A --catalog argument: None means the shipped catalog."""
    return str(Path(value)) if value else None


def describe(broker: Broker) -> dict[str, Any]:
    """A short description of the service for logs and `--json` outputs."""
    return {"catalog": broker.catalog.spec.catalog, "catalog_hash": broker.catalog.content_hash,
            "prefix": broker.topology.prefix, "db": broker.ledger.url.split("@")[-1]}
