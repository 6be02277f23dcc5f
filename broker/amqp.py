"""pika transport: batched consuming, pipelined publisher confirms, on-confirm acks.

No case logic lives here. A :class:`BatchHandler` turns a batch of deliveries into
the messages to publish (it commits the ledger before returning); the worker
publishes them with confirms pipelined and acks the batch's deliveries only when
every one of its publishes is confirmed, like RabbitMQ's shovel in on-confirm mode.

Outcomes, decided here once:

* handler returns            → publish, ack on confirm
* handler raises TransientError → keep the batch, retry with capped backoff (pauses work)
* handler raises anything else → retry one delivery at a time; one that still fails is
  dead-lettered with ``internal_error`` (a failing message never stops the queue)
* a publish is returned unroutable → republished to ``dead.<source>`` with the reason
* broker nacks a publish, or a dead-letter publish is unroutable → that batch alone is
  rejected back to the queue (the channel stays open), the worker pauses with capped
  backoff, and its deliveries are redone one at a time while refusals go on: the
  inbox republishes the same messages, and one the broker keeps refusing reaches the
  quorum queue's delivery limit alone
* the broker cancels the consumer (its queue deleted) → close the channel and reopen it
  with capped backoff until the queue is back
* the broker closes the channel (a publish to an exchange that is gone) → its unacked
  deliveries go back; reopened with capped backoff, started afresh only after a channel
  that consumed for a while (each close counts towards every delivery's limit); while
  the exchange is gone, each new channel looks for it before it consumes again
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pika
from pika.adapters.select_connection import SelectConnection

from broker.amqp_worker import (
    DEAD_SINCE_HEADER,
    DETAIL_HEADER,
    INTERNAL_ERROR,
    MAX_BOUNDED_RETRIES,
    ORIGINAL_EXCHANGE_HEADER,
    ORIGINAL_KEY_HEADER,
    REASON_HEADER,
    REPLAY_OF_HEADER,
    SENT_BY_HEADER,
    SOURCE_HEADER,
    BatchHandler,
    CoalescingConnection,
    Delivery,
    QueueWorker,
    header_time,
    properties_for,
)
from broker.errors import SettingError, shown_url, without_values

__all__ = ["CONNECT_NARRATORS", "DEAD_SINCE_HEADER", "DEFAULT_AMQP_URL", "DETAIL_HEADER",
           "INTERNAL_ERROR", "MAX_BOUNDED_RETRIES",
           "ORIGINAL_EXCHANGE_HEADER", "ORIGINAL_KEY_HEADER", "REASON_HEADER", "REPLAY_OF_HEADER",
           "SENT_BY_HEADER", "SOURCE_HEADER", "BatchHandler", "ConsumerService",
           "ConsumerSettings", "Delivery", "Hooks", "amqp_url", "amqp_urls",
           "connection_error_text", "header_time", "properties_for", "shown_url"]

log = logging.getLogger(__name__)

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
#: at a stop, no batch is handed over this close to the end of the grace: one cut off by
#: the close has its deliveries redone (what it committed republished), and counted twice
#: towards their delivery limit for nothing
DRAIN_MARGIN_S = 3.0
#: how long a closing connection waits for RabbitMQ's close-ok before the loop stops anyway
CLOSE_TIMEOUT_S = 5.0
#: how often the I/O loop notes that it turns (ConsumerService.turned_at)
TURN_EVERY_S = 1.0


def amqp_urls() -> list[str]:
    """Every URL in ``CASEBROKER_AMQP_URL``: several name cluster nodes, separated by
    commas, semicolons or blanks before each ``amqp://`` (a password may hold a comma),
    all under one login and virtual host (:class:`~broker.errors.SettingError` if not,
    or if one is not an AMQP URL; the error never quotes a URL's text)."""
    raw = os.environ.get("CASEBROKER_AMQP_URL", DEFAULT_AMQP_URL).strip().rstrip(",;")
    urls = [u for u in re.split(r"[\s,;]+(?=amqps?://)", raw) if u] or [DEFAULT_AMQP_URL]
    logins = {_login(u, i) for i, u in enumerate(urls, 1)}
    if len(logins) > 1:
        # a publish carries user_id = the first URL's login, and RabbitMQ refuses it on a
        # connection under another one; the topology lives in one virtual host
        raise SettingError(
            "CASEBROKER_AMQP_URL names its nodes under different logins or virtual hosts ("
            + ", ".join(sorted(f"{user} on {vhost!r}" for user, vhost in logins))
            + "): the nodes of one cluster share their users and virtual hosts, so give "
            "every URL the same login and virtual host; RabbitMQ checks each message's "
            "user_id against the login it came in on")
    return urls


def _login(url: str, number: int) -> tuple[str, str]:
    """The login and virtual host the ``number``-th URL of ``CASEBROKER_AMQP_URL`` connects
    with, as pika reads it (``casebroker run`` connects with pika);
    :class:`~broker.errors.SettingError` for one that is no AMQP URL, or that pika and
    kombu would read apart. The error never quotes the URL: what precedes the host may be
    a password."""
    where = f"CASEBROKER_AMQP_URL: URL {number}"
    if not re.match(r"amqps?://", url):
        raise SettingError(f"{where} does not start with amqp:// or amqps://: "
                           f"{URL_FORM}")
    path = urlsplit(url).path
    if "@" in path:
        # an "@" in the vhost: another URL, its amqp:// left out, ran into this one
        raise SettingError(f"{where} has an '@' in its virtual host: start every URL with "
                           "amqp:// or amqps://, and write an '@' in a vhost as %40")
    if "/" in path[1:]:
        # pika and kombu read it apart: /prov/ is 'prov' to the router, 'prov/' to the
        # SDK; // is '' to one and '/' to the other
        raise SettingError(f"{where} has a '/' in its virtual host: write it as %2F (the "
                           "default virtual host '/' is /%2F or nothing after the port), "
                           "with no '/' at the end")
    try:
        params = pika.URLParameters(url)
    except ValueError as e:  # its text may quote part of a password
        raise SettingError(f"{where} cannot be read ({type(e).__name__}): {URL_FORM}, "
                           "with the password and vhost URL-encoded") from None
    return str(params.credentials.username), str(params.virtual_host)


#: how CASEBROKER_AMQP_URL is written, for the errors about a URL in it that is not
URL_FORM = "amqp://user:password@host:port/vhost, several separated by commas"


def connection_error_text(error: BaseException) -> str:
    """Why a connection could not be made, in a line: pika's errors often have an empty
    ``str`` (a bare ``AMQPConnectionError``) or wrap the socket's error in their args."""
    said = "; ".join(str(a) or repr(a) for a in getattr(error, "args", ()))
    if "Timeout during AMQP handshake" in said:
        # pika's text goes on with a repr of the socket's address tuple: the case, in words
        return HANDSHAKE_TIMED_OUT
    return said or str(error) or type(error).__name__


#: a node that takes the TCP connection and never answers the AMQP header: one out of file
#: handles does that (README, "RabbitMQ": quorum queues hold files open)
HANDSHAKE_TIMED_OUT = ("it took the TCP connection but did not answer the AMQP handshake; "
                       "a node out of file handles does that: `rabbitmqctl status` shows "
                       "them (File Descriptors), and deleting left-over topologies or a "
                       "higher open-file limit frees them")


#: pika's loggers that narrate each failed connection attempt (6 to 8 ERROR lines and a
#: traceback per attempt): casebroker says in one line that it could not connect and why,
#: and when it tries again
CONNECT_NARRATORS = ("pika.adapters.utils.connection_workflow",
                     "pika.adapters.utils.io_services_utils",
                     "pika.adapters.blocking_connection", "pika.adapters.base_connection")


class OpenGuesses(logging.Filter):
    """Drops pika's ERROR lines guessing why a connection closed before it opened (a login
    refused, a virtual host refused, another protocol): the exception pika raises says the
    same, and casebroker says that, in its own line, with where (`run` printed pika's
    guess first, then its own error)."""

    GUESSES = ("Probably incompatible Protocol Versions", "Connection closed while ")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "pika.connection"
                    and str(record.msg).startswith(self.GUESSES))


def amqp_url() -> str:
    """The first broker URL of ``CASEBROKER_AMQP_URL`` (default: guest on localhost)."""
    return amqp_urls()[0]


def _failover_urls() -> tuple[str, ...]:
    return tuple(amqp_urls()[1:])


#: AMQP's prefetch count is a 16-bit field: more could not be sent, and the worker's
#: connection failed at each attempt, for good (a review: `run --prefetch-count 70000`)
PREFETCH_MAX = 65_535


@dataclass(frozen=True)
class ConsumerSettings:
    """How a worker consumes: prefetch window, batch size and flush interval."""

    url: str = field(default_factory=amqp_url)
    #: other nodes of the same cluster, tried in turn after a lost or refused connection
    failover_urls: tuple[str, ...] = field(default_factory=_failover_urls)
    prefetch_count: int = 2000
    batch_size: int = 250
    #: 0: flush once the deliveries of the current network read are in (the next turn of
    #: the I/O loop), so a batch is whatever arrived together, never a timer's wait
    flush_interval_ms: int = 0
    retry_initial_s: float = 0.5
    retry_max_s: float = 15.0
    #: how long a queue's worker keeps its window of unacked deliveries while the ledger
    #: is away before it gives them back to the queue and consumes nothing more until the
    #: ledger takes writes again. Under RabbitMQ's consumer_timeout (30 minutes by
    #: default), which would otherwise close the channel each time, every delivery in the
    #: window a step nearer its delivery limit (docs/RELIABILITY.md)
    hold_s: float = 600.0
    reconnect_max_s: float = 10.0
    heartbeat_s: int = 30
    shutdown_grace_s: float = 10.0

    def __post_init__(self) -> None:
        if self.hold_s < 0:
            raise ValueError(f"hold_s must be at least 0, not {self.hold_s}")
        if (not 1 <= self.prefetch_count <= PREFETCH_MAX or self.batch_size < 1
                or self.flush_interval_ms < 0):
            raise ValueError(
                f"prefetch_count must be from 1 to {PREFETCH_MAX}, batch_size at least 1 and "
                f"flush_interval_ms at least 0, not {self.prefetch_count}, "
                f"{self.batch_size} and {self.flush_interval_ms}")


class Hooks:
    """Observation points for metrics; each does nothing by default and never raises."""

    def batch_done(self, source: str, size: int, published: int, seconds: float,
                   waiting: int = 0) -> None:
        """A batch of ``size`` deliveries was handled and its ``published`` messages sent,
        ``seconds`` after its hand-off to the handler; ``waiting`` deliveries were left
        waiting behind it at that hand-off (more than one batch had arrived)."""

    def acked(self, source: str, count: int) -> None: ...

    def retry(self, source: str, reason: str) -> None: ...

    def given_back(self, source: str, parked: bool) -> None:
        """``source``'s queue gave its window back for the ledger and is not consumed
        (``parked``), or is consumed again."""

    def returned(self, source: str, exchange: str) -> None: ...

    def connection(self, up: bool) -> None: ...


class ConsumerService:
    """Runs queue workers on one connection until stopped; reconnects with backoff."""

    def __init__(self, settings: ConsumerSettings, dead_letter_exchange: str,
                 dead_source_of: Callable[[str], str | None], hooks: Hooks | None = None,
                 user_id: str | None = None) -> None:
        self.settings = settings
        self.dead_letter_exchange = dead_letter_exchange
        self.dead_source_of = dead_source_of
        self.hooks = hooks or Hooks()
        if settings.prefetch_count <= settings.batch_size:
            log.warning("prefetch %d is not above the batch size %d: each batch waits for the "
                        "confirms of the one before, and a backlog cannot show as full "
                        "batches (casebroker_full_batches_total)", settings.prefetch_count,
                        settings.batch_size)
        urls = list(dict.fromkeys((settings.url, *settings.failover_urls)))
        self._all_params = [pika.URLParameters(u) for u in urls]
        # named in the management UI and `rabbitmqctl list_connections`: which process
        # holds a connection, for an operator who must close one (or a test)
        self.connection_name = f"casebroker run (pid {os.getpid()}, {id(self):x})"
        for p in self._all_params:
            p.heartbeat = settings.heartbeat_s
            p.client_properties = {"connection_name": self.connection_name}
        self._url_index = 0
        self._opened = False
        #: RabbitMQ's reason when the connection was last lost, until the log says it
        self.lost_because: str | None = None
        #: when the connection last opened, on the monotonic clock
        self._opened_at = 0.0
        self.params = self._all_params[0]
        self.user_id = user_id or self.params.credentials.username
        self.workers: list[QueueWorker] = []
        self.connection: CoalescingConnection | None = None
        self.stopping = False
        #: until when (monotonic) a stopping service still hands batches over (draining)
        self._drain_until: float | None = None
        self._stopped = threading.Event()
        self._on_connected: list[Callable[[], None]] = []
        #: RabbitMQ blocks the connection (a memory or disk alarm): readiness
        self.blocked = False
        #: the last turn of the I/O loop, or of the reconnect loop between connections,
        #: on the monotonic clock: liveness (broker/health.py)
        self.turned_at = time.monotonic()

    def add(self, queue: str, handler: BatchHandler) -> None:
        """Consume ``queue`` with ``handler`` (before :meth:`run`)."""
        self.workers.append(QueueWorker(self, queue, handler, self.dead_source_of))

    def on_connected(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` in the I/O loop each time the connection is (re)opened."""
        self._on_connected.append(callback)

    @property
    def connection_open(self) -> bool:
        return self.connection is not None and self.connection.is_open

    def call_later(self, delay_s: float, fn: Callable[..., None], *args: Any) -> Any:
        assert self.connection is not None
        return self.connection.ioloop.call_later(delay_s, lambda: fn(*args))

    def call_threadsafe(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the I/O loop soon, from any thread (dropped if disconnected)."""
        conn = self.connection
        if conn is not None and conn.is_open:
            conn.ioloop.add_callback_threadsafe(fn)

    def remove_timeout(self, timer: Any) -> None:
        if self.connection is not None:
            self.connection.ioloop.remove_timeout(timer)

    def reopen_worker(self, worker: QueueWorker) -> None:
        if self.connection_open and not self.stopping and worker.channel is None:
            assert self.connection is not None
            worker.open(self.connection)

    def run(self) -> None:
        """Block: connect, consume, reconnect after failures, until :meth:`stop`."""
        delay_s = 0.5
        while not self.stopping:
            # after a failure the next cluster node is tried (one URL: the same one again)
            self.params = self._all_params[self._url_index % len(self._all_params)]
            self.connection = CoalescingConnection(
                self.params, on_open_callback=self._on_open,
                on_open_error_callback=self._on_open_error, on_close_callback=self._on_closed)
            self.connection.add_on_connection_blocked_callback(self._on_blocked)
            self.connection.add_on_connection_unblocked_callback(self._on_unblocked)
            self._turn(self.connection)
            try:
                self.connection.ioloop.start()
            except Exception as e:  # the last guard of the I/O loop
                self._after_fault(self.connection, e)
            if self.stopping:
                break
            self.hooks.connection(False)
            self._url_index += 1
            lost = self._opened
            self._opened = False
            # a connection that worked for a while (up as long as the longest pause) starts
            # the backoff afresh; one lost as soon as it opened (a fault met again on each,
            # a node that drops it) does not: made again twice a second, each would give
            # back every unacked delivery a step nearer its delivery limit
            if lost and time.monotonic() - self._opened_at >= self.settings.reconnect_max_s:
                delay_s = 0.5
            why, self.lost_because = self.lost_because, None
            log.warning("%s; connecting to %s:%s in %.1fs",
                        (f"connection to RabbitMQ lost ({why})" if why else
                         "connection to RabbitMQ lost") if lost else "not connected",
                        *self._next_host(), delay_s)
            self.turned_at = time.monotonic()
            if self._stopped.wait(delay_s):
                break
            delay_s = min(self.settings.reconnect_max_s, delay_s * 2)
        self._stopped.set()

    def _after_fault(self, connection: SelectConnection, error: Exception) -> None:
        """A callback raised in the I/O loop: a fault of casebroker's own (RabbitMQ's
        errors arrive as callbacks, never as exceptions). Give the connection up as if it
        were lost, so that its unacked deliveries go back to the queue to be redone, and
        reconnect; a process that exited instead would take every consumer in it down
        and, restarted, meet the same delivery again."""
        log.error("fault in the I/O loop of the connection to RabbitMQ (%s); closing it and "
                  "reconnecting: its unacked deliveries go back to the queue",
                  without_values(error))
        for worker in self.workers:
            worker.channel = None
            worker._cancel_timers()
        # a close RabbitMQ answers; else (no answer in time) the socket dropped
        for give_up, when in ((connection.close, lambda: connection.is_open),
                              (connection._adapter_disconnect_stream,
                               lambda: not connection.is_closed)):
            if not when():
                continue
            try:
                give_up()
                connection.ioloop.call_later(CLOSE_TIMEOUT_S, connection.ioloop.stop)
                connection.ioloop.start()  # until _on_closed stops it, or the timeout
            except Exception as again:
                log.error("closing the connection after a fault failed too (%s)",
                          without_values(again))

    def _turn(self, connection: SelectConnection) -> None:
        """Note a turn of this connection's I/O loop, and again each second while it runs;
        let the workers settle what no longer holds them up."""
        self.turned_at = time.monotonic()
        for worker in self.workers:
            worker.settle()
        if not connection.is_closed:
            connection.ioloop.call_later(TURN_EVERY_S, lambda: self._turn(connection))

    def _next_host(self) -> tuple[str, int]:
        p = self._all_params[self._url_index % len(self._all_params)]
        return p.host, p.port

    def _on_open(self, connection: SelectConnection) -> None:
        if self.stopping:  # stop() came while this connection was being made
            connection.close()
            return
        log.info("connected to RabbitMQ at %s:%s", self.params.host, self.params.port)
        self._opened, self._opened_at = True, time.monotonic()
        self.blocked = False
        self.hooks.connection(True)
        for callback in self._on_connected:
            callback()
        for worker in self.workers:
            worker.open(connection)

    def _on_blocked(self, _connection: SelectConnection, _frame: Any) -> None:
        self.blocked = True
        log.warning("RabbitMQ blocked this connection (a memory or disk alarm): publishes "
                    "wait, and nothing is acked until it unblocks")

    def _on_unblocked(self, _connection: SelectConnection, _frame: Any) -> None:
        self.blocked = False
        log.info("RabbitMQ unblocked this connection")

    def _on_open_error(self, connection: SelectConnection, error: BaseException) -> None:
        log.warning("cannot connect to RabbitMQ at %s:%s: %s", self.params.host,
                    self.params.port, connection_error_text(error))
        connection.ioloop.stop()

    def _on_closed(self, connection: SelectConnection, reason: BaseException) -> None:
        if not self.stopping and not isinstance(reason, pika.exceptions.ConnectionClosedByClient):
            # why, in RabbitMQ's words (a node stopping, an operator's close, a missed
            # heartbeat): the reconnect line alone said the same of all. Not casebroker's
            # own close after a fault, which the fault's line says
            self.lost_because = connection_error_text(reason)[:300]
        for worker in self.workers:
            worker.channel = None
            worker._cancel_timers()
        connection.ioloop.stop()

    def stop(self) -> None:
        """Ask the service to stop (thread- and signal-safe); returns at once."""
        if self.stopping:
            return
        self.stopping = True
        self._stopped.set()
        conn = self.connection
        if conn is not None:
            conn.ioloop.add_callback_threadsafe(self._begin_shutdown)

    def _begin_shutdown(self) -> None:
        deadline = time.monotonic() + self.settings.shutdown_grace_s
        # batches are handed over while one can still finish before the deadline
        self._drain_until = deadline - min(DRAIN_MARGIN_S, self.settings.shutdown_grace_s / 2)
        for worker in self.workers:
            worker.cancel()
        self._wait_idle(deadline)

    def draining(self) -> bool:
        """Whether a stopping service still hands received deliveries to the handlers (the
        shutdown's grace, short of the time a batch takes)."""
        return self._drain_until is not None and time.monotonic() < self._drain_until

    def _wait_idle(self, deadline: float) -> None:
        """Let what was received be handled, and confirms for published batches arrive (and
        be acked), before closing, within the shutdown's grace."""
        conn = self.connection
        if conn is None:
            return
        if all(w.drained for w in self.workers) or time.monotonic() > deadline \
                or not conn.is_open:
            for w in self.workers:
                w.said_given_back(w.unacked)
                w.given_back = 0  # said: its channel's close does not say it again
            if conn.is_open:
                conn.close()
                # a blocked connection (resource alarm) is not read by RabbitMQ, whose
                # close-ok would never come: stop anyway; unacked deliveries go back
                conn.ioloop.call_later(CLOSE_TIMEOUT_S, conn.ioloop.stop)
            else:
                conn.ioloop.stop()
            return
        conn.ioloop.call_later(0.05, lambda: self._wait_idle(deadline))
