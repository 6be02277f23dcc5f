"""A message ready to publish: exchange, routing key, AMQP properties and body.

Shared by the consumers (which build them), the ledger (which keeps them in its
outbox) and the transport (which publishes them); it knows nothing of any of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Outbound:
    """One message to publish persistently, with a deterministic ``message_id``."""

    exchange: str
    routing_key: str
    message_id: str
    type: str
    correlation_id: str | None
    headers: dict[str, Any] | None
    body: bytes
