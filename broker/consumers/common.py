"""What every consumer shares: delivery identity, dead-letter and triage envelopes, notices."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from typing import Any

from broker.amqp import DETAIL_HEADER, REASON_HEADER, SOURCE_HEADER, Delivery
from broker.envelope import Outbound
from broker.messages import DeskNotice, encode, kind_of
from broker.rules.engine import Engine
from broker.topology import TRIAGE_KEY, Topology

#: the engine in force now; swapped on catalog reload, read once per batch
EngineProvider = Callable[[], Engine]
Clock = Callable[[], datetime]


def delivery_id(delivery: Delivery) -> str:
    """The idempotency key of a delivery: its message id, else a hash of its body."""
    return delivery.message_id or "sha256:" + hashlib.sha256(delivery.body).hexdigest()


def _keep_headers(delivery: Delivery) -> dict[str, Any]:
    return dict(delivery.properties.headers or {})


def dead_letter(topology: Topology, source: str, delivery: Delivery, reason: str,
                detail: str) -> Outbound:
    """The original body to ``dead.<source>`` with the reason in headers."""
    headers = _keep_headers(delivery)
    headers.update({REASON_HEADER: reason, DETAIL_HEADER: detail[:500], SOURCE_HEADER: source,
                    "x-original-type": delivery.properties.type or "",
                    "x-original-content-type": delivery.properties.content_type or ""})
    return Outbound(topology.dead_letter_exchange, source, delivery_id(delivery),
                    delivery.properties.type or "", delivery.properties.correlation_id,
                    headers, delivery.body)


def triage(topology: Topology, source: str, delivery: Delivery, reason: str,
           detail: str) -> Outbound:
    """A valid message that cannot be routed, to the triage queue with the reason."""
    headers = _keep_headers(delivery)
    headers.update({REASON_HEADER: reason, DETAIL_HEADER: detail[:500], SOURCE_HEADER: source})
    return Outbound(topology.dead_letter_exchange, TRIAGE_KEY, delivery_id(delivery),
                    delivery.properties.type or "dossier.submitted",
                    delivery.properties.correlation_id, headers, delivery.body)


def to_desk(topology: Topology, notice: DeskNotice, message_id: str) -> Outbound:
    """A notice for a desk's queue."""
    return Outbound(topology.desk_exchange, notice.desk_id, message_id, kind_of(notice),
                    notice.dossier_code, None, encode(notice))


def to_agency(topology: Topology, message: Any, message_id: str) -> Outbound:
    """An assignment or a notice for an agency's queue."""
    return Outbound(topology.agency_exchange, message.agency_id, message_id, kind_of(message),
                    message.dossier_code, None, encode(message))

