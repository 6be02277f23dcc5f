"""Client SDK for desks and agencies, on kombu.

    BrokerClient        one connection, confirmed mandatory publishes, reconnect with backoff
    ├── DeskClient      submits dossiers and desk events, reads its desk queue
    └── AgencyClient    reports status updates, reads its agency queue
    Inbox               consumes one or more queues; acks only after the handler returns

A client is not thread-safe (neither is a kombu connection): use one per thread.
Each publish waits for its own confirm, so a publish that returns is durable in the
broker; at-least-once on reconnects, and receivers dedupe by the stable ``message_id``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar, cast
from uuid import UUID

from amqp.exceptions import (
    AccessRefused,
    AMQPError,
    ChannelError,
    ConsumerCancelled,
    MessageNacked,
    NotAllowed,
    NotFound,
)
from kombu import connection as _connection
from kombu import entity as _entity
from kombu import messaging as _messaging
from kombu.exceptions import KombuError
from pydantic import BaseModel, ValidationError

from broker.amqp import amqp_urls
from broker.errors import CasebrokerError, DecodeError, without_values
from broker.messages import (
    CONTENT_TYPE,
    MAX_BODY_BYTES,
    AgencyNotice,
    AgencyStatus,
    DeskNotice,
    Document,
    DossierAssigned,
    DossierReturned,
    DossierStatus,
    DossierSubmitted,
    DossierSupplemented,
    DossierWithdrawn,
    Message,
    decode_sent,
    describe_validation_error,
    encode,
    kind_of,
    new_id,
    nul_in_text,
    shown_id,
    shown_message_id,
    utc_now,
)
from broker.topology import DELIVERY_LIMIT, INTAKE_KEY, STATUS_KEY, Topology

__all__ = ["AgencyClient", "BrokerClient", "DeskClient", "Inbox", "InboxRefused",
           "MessageTooLarge", "NotInTopology", "PublishError", "QueueMissing", "Received",
           "RetryLater", "new_id"]

log = logging.getLogger(__name__)

# kombu is untyped: its classes are Any here rather than a type: ignore on every call
Connection: Any = _connection.Connection
Consumer: Any = _messaging.Consumer
Producer: Any = _messaging.Producer
Queue: Any = _entity.Queue

#: kinds an inbox accepts; anything else is poison and goes to the dead-letter queue
INBOX_KINDS = frozenset({"desk.notice", "agency.notice", "dossier.assigned"})
#: how often a draining inbox wakes up to notice stop() and its idle timeout
POLL_INTERVAL_S = 0.1
#: the least time between two calls of a handler with the same delivery (RetryLater(0)
#: must not spin: the inbox reads its socket and answers heartbeats in between)
RETRY_MIN_S = 0.05
#: heartbeats on an inbox's connection: a peer gone silently (a NAT or firewall dropping
#: the connection) is noticed within two of them, and the inbox reconnects; a handler
#: that runs longer than two of them loses the connection, and its message comes again
INBOX_HEARTBEAT_S = 60
#: deliveries an inbox may hold unacked per queue. Those it holds unhandled when a drain
#: ends go back to their queue, and RabbitMQ counts each return toward the queue's
#: delivery limit (20): with 200, a job that stops after each message made a waiting
#: message's 20th return within 20 stops, and RabbitMQ dead-lettered a notice nobody saw.
#: With 10, a delivery is held back at most 9 times by such stops. A handler works one
#: message at a time: more than a few ahead saves nothing but network round trips.
INBOX_PREFETCH = 10
#: how long closing a connection waits for each of RabbitMQ's answers (channel and
#: connection close-ok) before dropping it: a peer gone silently never answers, and the
#: close, left unbounded, held Inbox.stop() or BrokerClient.close() for as long as TCP
#: took to give up (a quarter of an hour); unacked deliveries go back all the same
CLOSE_TIMEOUT_S = 5.0
#: the longest message id AMQP can carry (a short string), in UTF-8 bytes
MESSAGE_ID_MAX_BYTES = 255
#: how long opening a connection (TCP, then RabbitMQ's handshake) may take, at most: a
#: node that takes the connection and never answers (stopped, swamped) costs this per
#: attempt, or ``confirm_timeout_s`` if shorter (a review: 5 s whatever it was)
CONNECT_TIMEOUT_S = 5.0

_M = TypeVar("_M", bound=BaseModel)


class PublishError(CasebrokerError):
    """A publish the broker refused (nack), could not route (basic.return) or never took.

    ``message_id`` is the id it was published under: the broker may have taken it even
    so (a confirm lost with the connection), so a retry must reuse it to be deduplicated.
    """

    def __init__(self, text: str, message_id: str) -> None:
        super().__init__(text)
        self.message_id = message_id


class MessageTooLarge(PublishError, ValueError):
    """A message over the size the router takes: nothing was sent, and a retry never helps.

    Documents go by reference; a ``PublishError`` of any other kind may pass with a retry.
    """


class NotInTopology(PublishError, ValueError):
    """The desk or agency has no queue: the catalog does not know it, or the topology is
    not declared. Nothing was sent: casebroker could not answer it."""


class QueueMissing(CasebrokerError):
    """A queue an inbox reads is not in RabbitMQ: deleted, or the topology not declared.
    ``queue`` names it. The drain ended; declare the topology and drain again."""

    def __init__(self, queue: str) -> None:
        super().__init__(f"inbox: RabbitMQ has no queue {queue!r} (deleted, or the topology "
                         "not declared): declare the topology (`casebroker topology "
                         "declare`), then drain again")
        self.queue = queue


class InboxUnreachable(CasebrokerError):
    """An inbox's drain that ran out its ``timeout_s`` without ever subscribing: RabbitMQ
    could not be reached, or did not answer, all that time. Nothing was taken; a drain run
    on a schedule can tell this from a quiet queue, which returns 0."""


class InboxRefused(CasebrokerError):
    """RabbitMQ refused an inbox its login, or the login may not read one of its queues.
    The drain ended; nothing was taken."""


class BrokerClient:
    """One kombu connection that publishes persistent, mandatory, confirmed messages."""

    #: the queue answers to this client's messages come to (set by DeskClient and
    #: AgencyClient); its first publish checks it exists
    own_queue: str | None = None

    def __init__(self, url: str | None = None, topology: Topology | None = None, *,
                 max_retries: int | None = 10, confirm_timeout_s: float = 30.0) -> None:
        if not confirm_timeout_s > 0:  # py-amqp would read 0 as "wait for ever"
            raise ValueError(f"confirm_timeout_s must be more than 0 seconds, not "
                             f"{confirm_timeout_s!r}")
        self.topology = topology or Topology.from_env()
        self.max_retries = max_retries
        self.confirm_timeout_s = confirm_timeout_s
        # confirm_publish makes py-amqp wait for basic.ack/nack after every basic.publish;
        # the other nodes of CASEBROKER_AMQP_URL are kombu's alternates, tried in turn
        # when a node cannot be reached
        if url:  # CASEBROKER_AMQP_URL is checked as it is read; an argument here
            _check_scheme(url)
        urls = [url] if url else amqp_urls()
        self.connection = Connection(
            urls[0], alternates=urls[1:],
            connect_timeout=min(CONNECT_TIMEOUT_S, confirm_timeout_s),
            transport_options=self._transport_options())
        self._producer: Any = None
        # message_id -> why it came back; filled by the basic.return callback
        self._returned: dict[str | None, str] = {}

    def _transport_options(self) -> dict[str, Any]:
        """py-amqp's, for every connection of this client (its inboxes' too): publisher
        confirms, and a bound on each wait for RabbitMQ's answer (``read_timeout``, the
        socket's SO_RCVTIMEO). Opening a channel, checking a queue, subscribing waited
        with none: on a link gone silent there (a NAT dropping the connection), the first
        publish and an inbox's subscription blocked for good, past ``confirm_timeout_s``,
        the drain's ``timeout_s``, heartbeats (read only between two waits) and stop().
        Silent that long, the link counts as lost: reconnected, or a PublishError."""
        return {"confirm_publish": True, "read_timeout": self.confirm_timeout_s}

    @property
    def retry_policy(self) -> dict[str, Any]:
        """Keyword arguments for kombu's ensure/ensure_connection (backoff up to 5 s)."""
        return {"max_retries": self.max_retries, "interval_start": 0.2,
                "interval_step": 0.5, "interval_max": 5.0, "errback": _log_retry}

    def close(self) -> None:
        """Close the connection (safe to call twice), waiting at most
        :data:`CLOSE_TIMEOUT_S` for each of RabbitMQ's answers."""
        self._producer = None
        _release(self.connection)

    def _drop(self) -> None:
        """Drop the connection without the close handshake, which a stalled peer would
        never answer; a confirm or return still on its way is dropped with it."""
        self._producer = None
        self.connection.collect()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def publish(self, message: Message, *, exchange: str, routing_key: str,
                message_id: str) -> None:
        """Publish one message and wait for its confirm; raise PublishError if not taken.

        A confirm that does not come within ``confirm_timeout_s`` raises PublishError at
        once (the connection is closed, nothing is published again): RabbitMQ may have
        the message, so send it again under the same ``message_id``."""
        shown = shown_message_id(message_id)  # it may hold a name or an id number
        if len(message_id.encode()) > MESSAGE_ID_MAX_BYTES:  # py-amqp: a struct.error
            raise ValueError(f"publish {shown}: a message id of {len(message_id.encode())} "
                             f"bytes, over AMQP's {MESSAGE_ID_MAX_BYTES}: nothing was sent")
        correlation_id = getattr(message, "dossier_code", None) or getattr(
            message, "submission_id", None)
        properties = {
            "message_id": message_id,
            "correlation_id": None if correlation_id is None else str(correlation_id),
            "type": kind_of(message),
            # RabbitMQ checks user_id against the login, so the status router can trust it
            "user_id": self.connection.userid,
        }
        body = encode(message)
        if (where := nul_in_text(body)) is not None:  # the broker would dead-letter it
            raise ValueError(f"publish {shown}: {where}: a NUL character (\\u0000) "
                             "in text, which the contract refuses: nothing was sent")
        if len(body) > MAX_BODY_BYTES:  # the router would dead-letter it as too_large
            raise MessageTooLarge(f"publish {shown}: {len(body)} bytes, over the "
                                  f"{MAX_BODY_BYTES}-byte limit (documents go by "
                                  "reference)", message_id)
        self._returned.pop(message_id, None)
        try:
            if self.own_queue is not None:
                self._check_own_queue(message_id)
            self._publish_confirmed(body, exchange, routing_key, message_id, properties)
        except (KombuError, AMQPError, MessageNacked, OSError) as e:
            if isinstance(e, TimeoutError):
                # RabbitMQ silent past confirm_timeout_s while a channel opened or a queue
                # was checked: the connection is as good as lost, and a late answer would
                # be read as the next wait's
                self._drop()
            raise PublishError(f"publish {shown} to {exchange}/{routing_key} failed: "
                               f"{self._failure(e)}", message_id) from e
        except BaseException:
            # interrupted mid-wait (a signal, a timeout around the call): this publish's
            # confirm or return may still come, and would be read as the next one's. The
            # peer may be why it was interrupted (stalled): no close handshake to wait for
            try:
                self._drop()
            except Exception:  # the interruption is what the caller must see
                log.debug("dropping after an interrupted publish failed", exc_info=True)
            raise
        # RabbitMQ sends basic.return before the basic.ack of the same publish, so the
        # return (if any) has been dispatched by the time the confirm wait ended
        reason = self._returned.pop(message_id, None)
        if reason is not None:
            raise PublishError(f"publish {shown} to {exchange}/{routing_key} was "
                               f"returned: {reason}", message_id)

    def _failure(self, error: BaseException) -> str:
        return _failure(error, self.confirm_timeout_s, self.connection.connect_timeout,
                        None if self.max_retries is None else self.max_retries + 1)

    def _publish_confirmed(self, body: bytes, exchange: str, routing_key: str,
                           message_id: str, properties: dict[str, Any]) -> None:
        """Publish and wait for the confirm, through lost connections (kombu's ensure), and
        through refusals (nacks: the queue is over its length cap, or has no leader for
        the moment): each is tried again after a pause growing as the retry policy's, up
        to ``max_retries`` times, then raised as a :class:`PublishError` that says so. A
        confirm later than ``confirm_timeout_s`` is raised at once as a
        :class:`PublishError` (kombu would take it for a lost connection and publish again).

        Left to kombu, a nack counts as a lost connection: every retry came at once, on a
        new connection each, and the error said nothing. The retry must still not use the
        same channel: RabbitMQ 3.10 goes on refusing, on a channel a quorum queue told to
        refuse over a length cap, every publish to that queue after the cap is lifted. A
        new channel would do; kombu's producer gets one with a new connection."""
        shown = shown_message_id(message_id)  # it may hold a name or an id number
        policy = self.retry_policy
        for refusals in itertools.count(1):
            publish = self.connection.ensure(self._ensure_producer(), self._publish_once,
                                             **policy)
            try:
                publish(body, exchange=exchange, routing_key=routing_key, mandatory=True,
                        delivery_mode=2, content_type=CONTENT_TYPE, content_encoding="utf-8",
                        confirm_timeout=self.confirm_timeout_s, **properties)
                return
            except _ConfirmTimeout:
                # its confirm may still come, and would be read as the next publish's: drop
                # the connection, without the close handshake a stalled peer would not answer
                self._drop()
                raise PublishError(
                    f"publish {shown} to {exchange}/{routing_key}: no confirm from "
                    f"RabbitMQ within {self.confirm_timeout_s:g} s; it may have the message: "
                    "send it again under the same message id (receivers drop repeats "
                    "by it)", message_id) from None
            except _Refused:
                self.close()  # the next try on a new connection, hence a new channel
                if self.max_retries is not None and refusals > self.max_retries:
                    tries = "once" if refusals == 1 else f"{refusals} times"
                    raise PublishError(
                        f"publish {shown} to {exchange}/{routing_key} was refused by "
                        f"RabbitMQ (nack), {tries}: the queue it goes to is over its "
                        "length limit, or has no leader for now; retry later under the "
                        "same message id", message_id) from None
            pause = _backoff_s(policy, refusals)
            log.warning("publish %s to %s/%s was refused by RabbitMQ (nack); retrying in "
                        "%.1fs", _logged_id(message_id), exchange, routing_key, pause)
            time.sleep(pause)

    def _publish_once(self, *args: Any, **kwargs: Any) -> Any:
        """The producer's publish (revived by kombu's ensure() after a reconnect), a nack
        raised as :class:`_Refused` and a confirm timeout as :class:`_ConfirmTimeout`:
        py-amqp counts both among the recoverable connection errors (the timeout is an
        OSError), which ensure() retries at once. A confirm's wait running out is a
        TimeoutError without an errno; one with ETIMEDOUT is the connection lost."""
        # a return recorded by an attempt whose connection was lost before its confirm
        # says nothing of this attempt: left, it failed a publish that got through
        self._returned.pop(kwargs.get("message_id"), None)
        try:
            return self._producer.publish(*args, **kwargs)
        except MessageNacked as e:
            raise _Refused() from e
        except TimeoutError as e:
            if e.errno is not None:
                # the kernel gave up on the peer (ETIMEDOUT: py-amqp sets TCP_USER_TIMEOUT,
                # and a link that acknowledges nothing for a second ends so): a lost
                # connection, which ensure() reconnects before publishing again
                raise
            raise _ConfirmTimeout() from e

    def _check_own_queue(self, message_id: str) -> None:
        """Once per client: a desk or agency id the catalog does not know has no queue, and
        what it sends would be dead-lettered with no answer to wait for."""
        shown = shown_message_id(message_id)  # it may hold a name or an id number
        queue, self.own_queue = self.own_queue, None
        assert queue is not None
        self.connection.ensure_connection(**self.retry_policy)
        channel = self.connection.channel()
        silent = False
        try:
            channel.queue_declare(queue=queue, passive=True)
        except NotFound:
            self.own_queue = queue  # checked again next time: the topology may be declared
            raise NotInTopology(
                f"publish {shown}: no queue {queue!r} to answer in: the catalog has no "
                f"such party, or the topology (prefix {self.topology.prefix!r}) is not "
                f"declared; nothing was sent", message_id) from None
        except BaseException as e:
            self.own_queue = queue
            silent = isinstance(e, TimeoutError)
            raise
        finally:
            try:
                if not silent:  # a close-ok would not come either
                    channel.close()
            except Exception:  # a 404 closed it already
                log.debug("closing the queue check's channel failed", exc_info=True)

    def _ensure_producer(self) -> Any:
        if self._producer is None:
            self.connection.ensure_connection(**self.retry_policy)
            # ensure() revives the producer on connection.default_channel after a reconnect,
            # re-registering on_return there, so start on that channel too
            self._producer = Producer(self.connection.default_channel, auto_declare=False,
                                      on_return=self._on_return)
        return self._producer

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        # without a basic_return handler py-amqp raises mid-wait and leaves the ack unread
        message_id = message.properties.get("message_id")
        self._returned[message_id] = f"{getattr(exc, 'reply_text', exc)} ({routing_key!r})"
        log.warning("publish %s to %s was returned unroutable", _logged_id(message_id),
                    exchange)


class DeskClient(BrokerClient):
    """A desk: submits dossiers and desk events; reads notices from its desk queue."""

    def __init__(self, desk_id: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.desk_id = desk_id
        self.own_queue = self.topology.desk_queue(desk_id)

    def submit(self, dossier: DossierSubmitted | Mapping[str, Any]) -> str:
        """Submit a dossier to intake; a retried submit keeps its id so it is deduplicated.

        The dossier is a :class:`DossierSubmitted`, or its fields as a mapping (as the
        contract names them), which the SDK checks: a ``ValueError`` naming each field the
        contract refuses and why, never its value (pydantic's own error, raised building a
        ``DossierSubmitted``, quotes the input: a phone, an id number).

        Give a new dossier a ``submission_id`` from :func:`new_id` (time-ordered, so the
        ledger's indexes grow at their end); any UUID is accepted. The dossier must name
        this desk as the one that received it.

        A dossier changed and submitted again under its ``submission_id`` goes under the
        same message id, but is no retry: the router checks it against the first. The
        same dossier (whatever its ``submitted_at``) gets its receipt again; a different
        one is dead-lettered as ``submission_id_reused`` and the desk gets a ``held``
        notice saying so, so a correction to a dossier already received needs a new
        ``submission_id``. One whose first copy was triaged or dead-lettered is routed.

        What comes back to the desk's :class:`Inbox`: a receipt (or a refusal, state 3)
        with the dossier's code; or a ``held`` notice with no code, matched by
        ``submission_id``, whose ``reason`` says why no dossier was opened (triaged for an
        operator, whose replay brings the receipt; the submission id reused; or, caught by
        the router rather than here, a dossier outside the contract or, with per-party
        users, naming another desk than the one whose login sent it). A held
        dossier that no rule will ever route (a procedure the province does not handle)
        may end in a refusal with no code, state 3, from the operator
        (``casebroker dead-letters refuse``): final, like any refusal at intake.
        """
        if isinstance(dossier, Mapping):
            dossier = _message(DossierSubmitted, **dossier)
        if dossier.desk_id != self.desk_id:
            raise ValueError(f"dossier names desk {shown_id(dossier.desk_id)}, this client "
                             f"is desk {self.desk_id}: nothing was sent")
        message_id = f"submit:{dossier.submission_id}"
        self.publish(dossier, exchange=self.topology.intake_exchange, routing_key=INTAKE_KEY,
                     message_id=message_id)
        return message_id

    # desk events: pass the same event_id when retrying the same event (after a
    # PublishError the broker may have taken it), so the status router applies it once

    def returned(self, dossier_code: str, *, satisfaction: int | None = None,
                 returned_at: datetime | None = None, event_id: UUID | None = None) -> str:
        """Report that the result was handed to the citizen."""
        event = _message(DossierReturned, event_id=event_id or new_id(),
                         dossier_code=dossier_code, desk_id=self.desk_id,
                         returned_at=returned_at or utc_now(), satisfaction=satisfaction)
        return self._event(event, event.event_id)

    def supplemented(self, dossier_code: str, documents: list[Document], *,
                     event_id: UUID | None = None) -> str:
        """Report that the citizen brought the requested documents."""
        event = _message(DossierSupplemented, event_id=event_id or new_id(),
                         dossier_code=dossier_code, desk_id=self.desk_id,
                         documents=_listed("documents", documents), sent_at=utc_now())
        return self._event(event, event.event_id)

    def withdrawn(self, dossier_code: str | None = None, reason: str | None = None, *,
                  submission_id: UUID | str | None = None,
                  event_id: UUID | None = None) -> str:
        """Report that the citizen withdrew the dossier: by its code, or, for one this
        desk was told is ``held`` (no code), by the ``submission_id`` it sent it under.
        Exactly one of the two (``ValueError`` otherwise). The answer comes to this
        desk's inbox: a ``withdrawn`` notice, or ``update_refused`` and why. By
        submission id before any answer about the dossier came (a receipt or ``held``),
        the ``withdrawn`` notice comes when casebroker has the dossier; if it has
        opened it meanwhile, ``update_refused`` gives its code to withdraw it by."""
        if (dossier_code is None) == (submission_id is None):
            raise ValueError("withdrawn() takes a dossier_code or, for a dossier held "
                             "without one, a submission_id: exactly one of the two")
        event = _message(DossierWithdrawn, event_id=event_id or new_id(),
                         dossier_code=dossier_code, submission_id=submission_id,
                         desk_id=self.desk_id, reason=reason, sent_at=utc_now())
        return self._event(event, event.event_id)

    def _event(self, event: Message, event_id: UUID) -> str:
        message_id = f"event:{event_id}"
        self.publish(event, exchange=self.topology.status_exchange, routing_key=STATUS_KEY,
                     message_id=message_id)
        return message_id

    def inbox(self, *, prefetch_count: int = INBOX_PREFETCH) -> Inbox:
        """An inbox on this desk's queue."""
        return Inbox(self, [self.topology.desk_queue(self.desk_id)], prefetch_count=prefetch_count)


class AgencyClient(BrokerClient):
    """An agency: reports status updates; reads assignments and notices from its queue."""

    def __init__(self, agency_id: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.agency_id = agency_id
        self.own_queue = self.topology.agency_queue(agency_id)

    def report(self, dossier_code: str, status: AgencyStatus | str, *,
               reason: str | None = None, documents: Iterable[Document] = (),
               requested_documents: Iterable[str] = (), amount_vnd: int | None = None,
               update_id: UUID | None = None) -> str:
        """Report a status update; pass the same update_id when retrying the same update.

        Arguments the contract refuses raise ``ValueError`` (``TypeError`` for one
        document, or one string, where a list of them goes), naming each field and why,
        never its value; nothing is sent."""
        update = _message(DossierStatus, update_id=update_id or new_id(),
                          dossier_code=dossier_code, agency_id=self.agency_id,
                          status=status, reason=reason,
                          documents=_listed("documents", documents),
                          requested_documents=_listed("requested_documents",
                                                      requested_documents),
                          amount_vnd=amount_vnd, sent_at=utc_now())
        if (unsaid := update.unsaid()) is not None:  # the status router would refuse it
            raise ValueError(f"dossier.status: {unsaid}; nothing was sent")
        message_id = f"status:{update.update_id}"
        self.publish(update, exchange=self.topology.status_exchange, routing_key=STATUS_KEY,
                     message_id=message_id)
        return message_id

    def inbox(self, *, prefetch_count: int = INBOX_PREFETCH) -> Inbox:
        """An inbox on this agency's queue."""
        return Inbox(self, [self.topology.agency_queue(self.agency_id)],
                     prefetch_count=prefetch_count)


class RetryLater(Exception):  # noqa: N818 (not an error: an outcome the handler chooses)
    """Raised by an inbox handler when the message is fine but cannot be handled now (the
    agency's own database is down, say): not a failure, which dead-letters the message,
    but a request to be handed it again ``after_s`` seconds from now (at least
    :data:`RETRY_MIN_S`).

    The inbox keeps the delivery (unacked: it stays the party's) and keeps every later one
    behind it, so that notices about one dossier are still handled in the order sent;
    it goes on answering RabbitMQ's heartbeats meanwhile, and tries again, as many times
    as the handler asks. Nothing goes back to the queue (where each return would count
    towards the queue's delivery limit) unless the drain ends first: by
    :meth:`Inbox.stop`, by its timeout (a retry counts as the handler's work, so a
    handler that keeps asking within the timeout keeps the drain going), or by a lost
    connection (then RabbitMQ redelivers, ``redelivered`` set). RabbitMQ closes a channel
    that holds a delivery unacked longer than its ``consumer_timeout`` (30 minutes by
    default): the inbox says so in a line and subscribes again, and RabbitMQ delivers the
    message anew (a return that counts towards the queue's delivery limit, 20: a handler
    that keeps asking past that sends it to the dead-letter queue, to be replayed)."""

    def __init__(self, after_s: float = 5.0) -> None:
        if not after_s >= 0:
            raise ValueError(f"after_s must be 0 or more seconds, not {after_s!r}")
        super().__init__(f"retry in {after_s:g} s")
        self.after_s = after_s


@dataclass(frozen=True)
class Received:
    """One decoded delivery handed to an inbox handler."""

    queue: str
    message_id: str | None
    kind: str | None
    redelivered: bool
    message: DeskNotice | AgencyNotice | DossierAssigned


class Inbox:
    """Receives messages from one or more queues and acks each only after the handler returns.

    Outcomes: handler returns → ack; handler raises :class:`RetryLater` → handed to it
    again after the delay it gives, later deliveries held back meanwhile; handler raises
    anything else, or the body is not a valid notice/assignment →
    ``reject(requeue=False)``, which the quorum queue dead-letters to ``dead.<source>``
    (requeueing would loop on the same poison message). A lost
    connection is re-established, for as long as it takes (see :meth:`drain`); deliveries
    not yet acked are redelivered, so a
    handler may see a message twice and must be idempotent: drop repeats by
    ``message_id`` (``redelivered`` is set only on the broker's redeliveries; a message
    the router published again after its own restart arrives as new, with the same id).
    The connection carries heartbeats (:data:`INBOX_HEARTBEAT_S`): a handler should
    return within a minute or two. ``prefetch_count`` is each queue's: an inbox on three
    queues may hold three times as many deliveries unacked. What it holds unhandled when
    a drain ends (a stop, the timeout) goes back to its queue, and each such return counts
    toward the queue's delivery limit (:data:`INBOX_PREFETCH` says why it is small).
    """

    def __init__(self, client: BrokerClient, queues: list[str], *,
                 prefetch_count: int = INBOX_PREFETCH) -> None:
        if isinstance(queues, str):  # list() would read it as one queue per character
            raise TypeError(f"Inbox takes a list of queue names, not one string: "
                            f"[{queues!r}]")
        self.client = client
        self.queues = list(queues)
        self.prefetch_count = prefetch_count
        self._stop = threading.Event()
        #: set while the drain's connection closes: deliveries the client had buffered
        #: are dispatched then, and go back to their queue unhandled (the caller may have
        #: released what its handler needs, and an ack could no longer be sent)
        self._closing = False
        self._handled = 0
        #: deliveries that reached the inbox and went back to their queue unhandled as
        #: the drain ended (counted toward the queue's delivery limit)
        self._given_back = 0
        self._last_delivery = 0.0
        #: the connection of the running drain (None when idle); tests cut it to force a reconnect
        self.connection: Any = None
        #: deliveries held back, in order, while the first of them waits for its retry
        #: (RetryLater), and when that retry is due (time.monotonic())
        self._held: deque[tuple[str, Any]] = deque()
        self._retry_at = 0.0

    def stop(self) -> None:
        """Make the running drain (or the next one) return soon; thread-safe."""
        self._stop.set()

    def drain(self, handler: Callable[[Received], None], *, timeout_s: float | None) -> int:
        """Handle messages until none arrives for ``timeout_s`` (None: until stop); return
        how many the handler took and were acked (an ack sent as the connection was lost
        is counted, and its message comes again: the count may exceed the messages).

        Idle time counts from the last handler's return, or from when consuming began:
        a slow handler or a slow connect does not end the drain with deliveries in hand
        (an attempt to connect runs its course, up to :data:`CONNECT_TIMEOUT_S`, past
        ``timeout_s`` if need be).
        A lost connection (or a consumer RabbitMQ cancelled) is re-made and every queue
        subscribed again, at once and then, while RabbitMQ cannot be reached, after a
        pause growing from 0.2 s to 5 s, for as long as it takes: ``max_retries`` is for
        publishes. Each failed attempt is logged in one line; :meth:`stop` (or the idle
        timeout) ends the wait between two attempts. Raises :class:`QueueMissing` for a
        queue RabbitMQ does not have, :class:`InboxRefused` for a login it refuses or a
        queue the login may not read."""
        if timeout_s is not None and not timeout_s > 0:  # 0 ended before the first delivery
            raise ValueError(f"timeout_s must be more than 0 seconds (None: until stop()), "
                             f"not {timeout_s!r}")
        self._handled = self._given_back = 0
        # its own connection: a handler that publishes through the client must not
        # read this inbox's frames while waiting for its confirm
        conn = self.connection = self.client.connection.clone(
            heartbeat=INBOX_HEARTBEAT_S, transport_options=self.client._transport_options())
        self._last_delivery = time.monotonic()
        subscribed = ever = False
        failures = 0  # attempts to subscribe that failed in a row
        try:
            while not self._stop.is_set() and not self._idle_past(timeout_s):
                # deliveries reach the handler while later queues are still subscribed:
                # a loss then is recovered like any other
                try:
                    if not subscribed:
                        self._consume(conn, handler)
                        subscribed = ever = True
                        failures = 0
                    self._step(conn, handler)
                except conn.recoverable_connection_errors as e:
                    failures = 0 if subscribed else failures + 1
                    subscribed = False
                    self._recover(conn, e, failures, timeout_s)
                except conn.channel_errors as e:
                    # RabbitMQ closed the channel: a delivery held unacked past its
                    # consumer_timeout (a handler retrying for half an hour), said in words;
                    # what it held is delivered again, as after a lost connection
                    # (QueueMissing and InboxRefused, raised while subscribing, are not
                    # these; another refusal while subscribing waits as a failed attempt)
                    failures = 0 if subscribed else failures + 1
                    subscribed = False
                    self._recover(conn, e, failures, timeout_s)
            if timeout_s is not None and not ever and failures and not self._stop.is_set():
                # returned 0, a drain that could reach nothing was a quiet queue's
                raise InboxUnreachable(
                    f"inbox: could not subscribe to {', '.join(self.queues)} within "
                    f"{timeout_s:g} s ({failures} attempt(s); the log says why): RabbitMQ "
                    "out of reach, or not answering; nothing was taken")
            return self._handled
        finally:
            self._stop.clear()
            self._given_back += len(self._held)
            self._held.clear()  # unacked: back to their queues as the channel closes
            self.connection = None
            # unacked prefetched deliveries go back to their queues when the channel closes
            self._closing = True
            try:
                _release(conn)
            finally:
                self._closing = False
            if self._given_back:
                log.info("inbox: %d deliveries received and not handled went back to "
                         "their queues as the drain ended (each return counts toward the "
                         "queue's delivery limit, %d)", self._given_back, DELIVERY_LIMIT)

    def _idle_past(self, timeout_s: float | None) -> bool:
        return (left_s := self._idle_left_s(timeout_s)) is not None and left_s <= 0

    def _idle_left_s(self, timeout_s: float | None) -> float | None:
        """How long the drain may still wait for a delivery (None: no timeout)."""
        if timeout_s is None:
            return None
        return timeout_s - (time.monotonic() - self._last_delivery)

    def _consume(self, conn: Any, handler: Callable[[Received], None]) -> None:
        """Connect (one try) and subscribe to every queue; deliveries of the queues
        subscribed first may reach the handler meanwhile. A recoverable connection error
        is for the caller to retry; a queue RabbitMQ does not have raises QueueMissing,
        a login or queue it refuses InboxRefused."""
        try:
            conn.ensure_connection(max_retries=0, reraise_as_library_errors=False)
        except (AccessRefused, NotAllowed) as e:
            raise InboxRefused(f"inbox: {_login_refused(e)}") from None
        channel = conn.channel()
        # py-amqp would turn bodies with a content_encoding into str; decode() wants the bytes
        channel.auto_decode = False
        for name in self.queues:
            # queues belong to the broker's topology: never declared here; the tag names
            # the queue, for the log line when RabbitMQ cancels its consumer
            consumer = Consumer(channel, queues=[Queue(name, no_declare=True)],
                                auto_declare=False, prefetch_count=self.prefetch_count,
                                on_message=self._on_message(name, handler),
                                tag_prefix=f"{name}:")
            try:
                consumer.consume()
            except NotFound:
                raise QueueMissing(name) from None
            except AccessRefused as e:  # the login may not read this queue
                raise InboxRefused(f"inbox: RabbitMQ refused to let this login read {name!r} "
                                   f"({e.reply_text}): see `casebroker users plan`") from None
        self._last_delivery = time.monotonic()

    def _step(self, conn: Any, handler: Callable[[Received], None]) -> None:
        """One turn of the drain: the first held delivery if its retry is due (one per
        turn, so that heartbeats are answered between two), then the socket, for at most
        POLL_INTERVAL_S (less when a retry comes due sooner)."""
        # a stop() since the loop's check (while subscribing, say) hands nothing more on
        if self._held and self._retry_at <= time.monotonic() and not self._stop.is_set():
            queue, delivery = self._held.popleft()
            try:
                self._handle(queue, delivery, handler)  # its ack may find the connection gone
            finally:
                self._last_delivery = time.monotonic()
        conn.heartbeat_check()
        wait_s = POLL_INTERVAL_S
        if self._held:
            # never 0: a socket timeout of 0 makes it non-blocking, and an empty read
            # would then look like a lost connection
            wait_s = min(wait_s, max(0.01, self._retry_at - time.monotonic()))
        with contextlib.suppress(TimeoutError):  # nothing came: the next turn
            conn.drain_events(timeout=wait_s)

    def _recover(self, conn: Any, error: BaseException, failures: int,
                 timeout_s: float | None) -> None:
        """After a lost connection (``failures`` 0) or a failed attempt to subscribe: say
        so in one line (the error's type, never the URL), drop what the connection held,
        and wait before the next attempt as the client's retry policy says (not at all
        after a loss), until stop() or the drain's idle timeout."""
        # what it held died with the channel: RabbitMQ delivers it again
        self._held.clear()
        conn.collect()
        if failures == 0:
            log.warning("%s; reconnecting", _loss(error))
            return
        conn.maybe_switch_next()  # the next node of CASEBROKER_AMQP_URL, if it has several
        pause = _backoff_s(self.client.retry_policy, failures)
        log.warning("inbox could not subscribe (%s); retrying in %.1fs",
                    type(error).__name__, pause)
        if (left_s := self._idle_left_s(timeout_s)) is not None:
            pause = min(pause, left_s)
        self._stop.wait(max(pause, 0.0))

    def _on_message(self, queue: str, handler: Callable[[Received], None]
                    ) -> Callable[[Any], None]:
        def on_message(delivery: Any) -> None:
            if self._closing or self._stop.is_set():
                self._given_back += 1
                return  # not acked: back to its queue as the channel closes
            if self._held:  # behind one waiting for its retry: in order, after it
                self._held.append((queue, delivery))
                return
            try:
                self._handle(queue, delivery, handler)
            finally:
                self._last_delivery = time.monotonic()

        return on_message

    def _handle(self, queue: str, delivery: Any, handler: Callable[[Received], None]
                ) -> None:
        """Decode one delivery and hand it to the handler: ack, dead-letter, or hold it
        first in line for a retry."""
        props = delivery.properties
        body = delivery.body
        try:
            message = decode_sent(body.encode() if isinstance(body, str) else body,
                                  content_type=delivery.content_type, expected=INBOX_KINDS)
        except DecodeError as e:
            # the reason code and detail never echo field values (no personal data)
            log.error("poison message %s on %s (%s); dead-lettering",
                      _logged_id(props.get("message_id")), queue, e)
            delivery.reject(requeue=False)
            return
        received = Received(queue, props.get("message_id"), props.get("type"),
                            bool(delivery.delivery_info.get("redelivered")),
                            cast(DeskNotice | AgencyNotice | DossierAssigned, message))
        try:
            handler(received)
        except RetryLater as e:
            # the message is fine: no reason to log more than its id
            log.info("handler asked to retry %s from %s in %g s",
                     _logged_id(received.message_id), queue, e.after_s)
            self._held.appendleft((queue, delivery))
            self._retry_at = time.monotonic() + max(e.after_s, RETRY_MIN_S)
            return
        except Exception as e:
            # the type and where it was raised, never the message: it may quote personal data
            log.error("handler failed on %s from %s (%s); dead-lettering",
                      _logged_id(received.message_id), queue, without_values(e))
            delivery.reject(requeue=False)
            return
        delivery.ack()
        self._handled += 1


class _Refused(Exception):  # noqa: N818 (kept from kombu's ensure(), which would retry it)
    """RabbitMQ nacked a publish."""


class _ConfirmTimeout(Exception):  # noqa: N818 (kept from kombu's ensure(), as _Refused)
    """No confirm came within the client's confirm_timeout_s."""


def _message(model: type[_M], **fields: Any) -> _M:
    """A message the SDK builds from its caller's arguments. One the contract refuses is a
    ``ValueError`` naming each field and why, never its value (pydantic's own error quotes
    the input: a citizen's name in a reason, an id number in a document's URI), with no
    pydantic error chained to it, so that a log of it quotes nothing either."""
    try:
        return model.model_validate(fields)
    except ValidationError as e:
        problems = describe_validation_error(e)
    kind = str(model.model_fields["schema_"].default).removeprefix("casebroker.")
    raise ValueError(f"{kind.split('/')[0]}: {problems}; nothing was sent")


def _logged_id(message_id: str | None) -> str | None:
    """A delivery's message id as the Inbox logs it: a notice's id may be made from the
    desk's own message id, which may hold a name or an id number (withheld, digested)."""
    return None if message_id is None else shown_message_id(message_id)


def _listed(name: str, values: Iterable[Any]) -> list[Any]:
    """``values`` as a list; one string or one document where a list of them goes is a
    ``TypeError`` (``list()`` would make a string one item per character)."""
    if isinstance(values, str | bytes | Mapping | BaseModel):
        raise TypeError(f"{name} takes a list, not one {type(values).__name__}: "
                        f"put it in a list; nothing was sent")
    return list(values)


def _check_scheme(url: str) -> None:
    """A ``url=`` argument that is no AMQP URL: said at once, never quoted (it may hold a
    password). kombu took "http://..." and said so at the first publish, as a KeyError
    naming a transport. Only the scheme is checked: kombu reads options pika does not
    (``?ssl=1``, ``login_method``) and nodes separated by ``;``, which callers use."""
    for part in url.split(";"):
        if not re.match(r"(amqps?|pyamqp)://", part.strip()):
            raise ValueError("url does not start with amqp:// or amqps:// (each node, "
                             "when ';' separates several): amqp://user:password@host:port/"
                             "vhost")


def _release(conn: Any) -> None:
    """Close a kombu connection, waiting at most :data:`CLOSE_TIMEOUT_S` for each answer
    from RabbitMQ, then dropping it: a peer gone silently (a NAT or firewall dropping the
    connection) answers nothing, and py-amqp waits for ever."""
    if conn.connected:
        sock = getattr(getattr(conn.connection, "transport", None), "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.settimeout(CLOSE_TIMEOUT_S)
    conn.release()


def _loss(error: BaseException) -> str:
    """What an inbox lost, as its log line says it."""
    if isinstance(error, ConsumerCancelled):
        queue = str(error.reply_text).rpartition(":")[0]  # the consumer tag names its queue
        return f"the consumer on {queue} was cancelled by RabbitMQ (queue deleted?)"
    if isinstance(error, ChannelError):  # RabbitMQ's own words: no message's values
        return (f"RabbitMQ closed the inbox's channel ({error.reply_code} "
                f"{str(error.reply_text)[:200]}); what it held is delivered again")
    return f"inbox connection lost ({type(error).__name__})"


def _backoff_s(policy: dict[str, Any], attempt: int) -> float:
    """The pause before try ``attempt + 1`` under a retry policy: ``interval_start``,
    growing by ``interval_step`` per try, to at most ``interval_max``."""
    return float(min(policy["interval_start"] + policy["interval_step"] * (attempt - 1),
                     policy["interval_max"]))


def _failure(error: BaseException, timeout_s: float, connect_s: float | None,
             attempts: int | None) -> str:
    """What failed a publish, in words: a wait for RabbitMQ that ran out says so (py-amqp's
    socket.timeout has no text of its own), and so does a connection that could not be
    opened ``attempts`` times in a row, each within ``connect_s`` (kombu gives it as an
    OperationalError of the last attempt's "timed out")."""
    if isinstance(error, KombuError) and isinstance(error.__cause__, TimeoutError):
        tries = f"at each of {attempts} attempts" if attempts else "at any attempt"
        return (f"RabbitMQ could not be reached, or did not answer, within {connect_s:g} s "
                f"{tries} to connect (the node stopped, overloaded, or out of reach); send "
                "it again later under the same message id")
    if isinstance(error, TimeoutError) and error.errno is None:
        return (f"RabbitMQ did not answer within {timeout_s:g} s (the link is lost, or the "
                "node overloaded); it may not have the message: send it again under the "
                "same message id")
    # the login: no retry under the same message id helps, the URL must change
    if isinstance(error, AccessRefused | NotAllowed):
        if _on_a_channel(error):  # logged in; this user may not write there
            return (f"RabbitMQ refused this user ({error.reply_text}): see its permissions "
                    "(`casebroker users plan`), and that the client's topology prefix is "
                    "the broker's; nothing was sent")
        return f"{_login_refused(error)}; nothing was sent"
    return str(error)


def _on_a_channel(error: AMQPError) -> bool:
    """Whether RabbitMQ refused a method on a channel (a publish, a queue's check), not
    the connection's login or virtual host (a review: a permission missing was told to
    check the password)."""
    class_id = (error.method_sig or (0, 0))[0]
    return class_id not in (0, 10)  # 10: the connection's own methods


def _login_refused(error: AccessRefused | NotAllowed) -> str:
    """A login RabbitMQ refused, in words: its user or password (AccessRefused), or a
    virtual host it may not use (NotAllowed)."""
    check = ("the user and password in the URL" if isinstance(error, AccessRefused) else
             "the virtual host in the URL, and that the user has permissions on it "
             "(`casebroker users plan`)")
    return f"RabbitMQ refused the login ({error.reply_text}): check {check}"


def _log_retry(exc: BaseException, interval_s: float) -> None:
    log.warning("RabbitMQ unavailable (%s); retrying in %.1fs", type(exc).__name__, interval_s)
