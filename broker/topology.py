"""Every exchange, queue and routing-key name, and their declaration.

No other module spells a name: ask :class:`Topology`. All names carry a prefix
(``CASEBROKER_PREFIX``, default ``cb``) so several provinces or test runs share one
RabbitMQ.

    desk ─▶ [x intake] ─"dossier"─▶ q intake ─▶ router
    router ─▶ [x agency] ─<agency id>─▶ q agency.<id>
    router ─▶ [x desk] ─<desk id>─▶ q desk.<id>
    agency, desk ─▶ [x status] ─"status"─▶ q status ─▶ status router
    anyone ─▶ [x dlx] ─"triage"─▶ q triage;  ─<source>─▶ q dead.<source>
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

from broker.errors import SettingError

DEFAULT_PREFIX = "cb"
#: the quorum queue's last guard against a redelivery loop
DELIVERY_LIMIT = 20
INTAKE_KEY = "dossier"
STATUS_KEY = "status"
TRIAGE_KEY = "triage"
DEAD_SOURCES = ("intake", "status", "agency", "desk")


#: what a topology prefix may be
PREFIX = re.compile(r"[A-Za-z0-9_-]{1,64}")


class TopologyError(SettingError, ValueError):
    """A topology prefix that cannot name a topology of its own."""


class DeclaringChannel(Protocol):
    """The part of a pika channel that declaration needs."""

    def exchange_declare(self, exchange: str, exchange_type: str, *, durable: bool) -> Any: ...

    def queue_declare(self, queue: str, *, durable: bool, arguments: dict[str, Any]) -> Any: ...

    def queue_bind(self, queue: str, exchange: str, routing_key: str) -> Any: ...


@dataclass(frozen=True)
class Topology:
    """Names of every exchange and queue under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        # no dot: every name is `<prefix>.<kind>...`, and a prefix with a dot would put
        # one topology's names under another's (`cb.x.intake` under `cb`), for
        # `topology delete` and `users apply --retire` to take for their own
        if not PREFIX.fullmatch(self.prefix):
            raise TopologyError(
                f"topology prefix {self.prefix!r} is not 1 to 64 ASCII letters, digits, '_' or "
                "'-' (--prefix, CASEBROKER_PREFIX)")

    @classmethod
    def from_env(cls) -> Topology:
        """The topology named by ``CASEBROKER_PREFIX`` (default ``cb``)."""
        return cls(os.environ.get("CASEBROKER_PREFIX", DEFAULT_PREFIX))

    @classmethod
    def named(cls, prefix: str | None) -> Topology:
        """The topology a command's ``--prefix`` names; not given (None), the one
        ``CASEBROKER_PREFIX`` names. An empty one is refused like any other bad prefix:
        taken as not given (``--prefix "$P"`` with P unset), it put `topology delete
        --force` onto the province's working topology."""
        return cls.from_env() if prefix is None else cls(prefix)

    def _n(self, *parts: str) -> str:
        return ".".join((self.prefix, *parts))

    # exchanges
    @cached_property
    def intake_exchange(self) -> str:
        return self._n("intake")

    @cached_property
    def agency_exchange(self) -> str:
        return self._n("agency")

    @cached_property
    def status_exchange(self) -> str:
        return self._n("status")

    @cached_property
    def desk_exchange(self) -> str:
        return self._n("desk")

    @cached_property
    def dead_letter_exchange(self) -> str:
        return self._n("dlx")

    @cached_property
    def exchanges(self) -> tuple[str, ...]:
        return (self.intake_exchange, self.agency_exchange, self.status_exchange,
                self.desk_exchange, self.dead_letter_exchange)

    # queues
    @cached_property
    def intake_queue(self) -> str:
        return self._n("intake")

    @cached_property
    def status_queue(self) -> str:
        return self._n("status")

    @cached_property
    def triage_queue(self) -> str:
        return self._n("triage")

    def agency_queue(self, agency_id: str) -> str:
        return self._n("agency", agency_id)

    def desk_queue(self, desk_id: str) -> str:
        return self._n("desk", desk_id)

    def dead_queue(self, source: str) -> str:
        return self._n("dead", source)

    def queues(self, agency_ids: Iterable[str], desk_ids: Iterable[str]) -> list[str]:
        """Every queue of a catalog's topology."""
        fixed = [self.intake_queue, self.status_queue, self.triage_queue]
        fixed += [self.dead_queue(s) for s in DEAD_SOURCES]
        return (fixed + [self.agency_queue(a) for a in agency_ids]
                + [self.desk_queue(d) for d in desk_ids])

    def bindings(
        self, agency_ids: Iterable[str], desk_ids: Iterable[str]
    ) -> list[tuple[str, str, str, str]]:
        """(queue, exchange, routing key, dead-letter source) for every queue."""
        x = self
        rows = [
            (x.intake_queue, x.intake_exchange, INTAKE_KEY, "intake"),
            (x.status_queue, x.status_exchange, STATUS_KEY, "status"),
            (x.triage_queue, x.dead_letter_exchange, TRIAGE_KEY, ""),
        ]
        rows += [(x.dead_queue(s), x.dead_letter_exchange, s, "") for s in DEAD_SOURCES]
        rows += [(x.agency_queue(a), x.agency_exchange, a, "agency") for a in agency_ids]
        rows += [(x.desk_queue(d), x.desk_exchange, d, "desk") for d in desk_ids]
        return rows

    def queue_arguments(self, dead_letter_source: str) -> dict[str, Any]:
        """Quorum queue arguments; poison past the delivery limit goes to dead.<source>.

        The dead-letter and triage queues themselves have no delivery limit: with
        nowhere further to go, a limit would silently drop a message an operator's
        tool returned to the queue too often.
        """
        args: dict[str, Any] = {"x-queue-type": "quorum"}
        if dead_letter_source:
            args["x-delivery-limit"] = DELIVERY_LIMIT
            args["x-dead-letter-exchange"] = self.dead_letter_exchange
            args["x-dead-letter-routing-key"] = dead_letter_source
            # quorum queues dead-letter at most once by default: a message could vanish
            # between the queues; at-least-once needs reject-publish overflow
            args["x-dead-letter-strategy"] = "at-least-once"
            args["x-overflow"] = "reject-publish"
        return args

    def declare(
        self, channel: DeclaringChannel, agency_ids: Iterable[str], desk_ids: Iterable[str]
    ) -> int:
        """Declare every exchange, queue and binding (idempotent); return the queue count."""
        for exchange in self.exchanges:
            channel.exchange_declare(exchange, "direct", durable=True)
        rows = self.bindings(list(agency_ids), list(desk_ids))
        for queue, exchange, key, dl_source in rows:
            channel.queue_declare(queue, durable=True, arguments=self.queue_arguments(dl_source))
            channel.queue_bind(queue, exchange, key)
        return len(rows)
