"""A message ready to publish: exchange, routing key, AMQP properties and body.

Shared by the consumers (which build them), the ledger (which keeps them in its
outbox) and the transport (which publishes them); it knows nothing of any of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

#: the most bytes of UTF-8 an AMQP short string holds: a message id, type or correlation
#: id, a header's name
SHORT_STRING_MAX = 255
#: the longest header name AMQP carries (a short string)
HEADER_NAME_MAX = SHORT_STRING_MAX
#: AMQP's widest integer (pika decodes a double as an int, of a subclass of int)
_INT64_MIN, _INT64_END = -2**63, 2**63


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


def portable_headers(headers: Mapping[Any, Any]) -> dict[str, Any]:
    """Headers as both an AMQP table and JSON can hold them: a copy of what a sender
    sent, kept in the ledger and published again on its dead letter. pika hands over what
    AMQP can carry and neither can take back: a name that is not UTF-8 (as bytes), a
    double decoded as an int beyond 64 bits, bytes, timestamps, decimals. Names become
    text of at most 255 bytes (a longer one: its start and a digest of the whole); values
    strings, 64-bit integers, booleans, None, lists and tables of them."""
    return {_header_name(k): _header_value(v) for k, v in headers.items()}


def as_text(value: Any) -> str:
    """What pika hands over as text: bytes (not UTF-8) with their bytes escaped, and a
    NUL character as ``\\x00`` (PostgreSQL's text cannot hold one: a message id with a
    NUL failed every batch it came in there, the delivery ending as internal_error)."""
    if isinstance(value, bytes | bytearray):
        text = bytes(value).decode("utf-8", "backslashreplace")
    else:
        text = str(value)
    return text.replace("\x00", "\\x00")


def _header_name(name: Any) -> str:
    text = as_text(name)
    raw = text.encode()
    if len(raw) <= HEADER_NAME_MAX:
        return text
    digest = "~" + hashlib.sha256(raw).hexdigest()[:16]
    return raw[:HEADER_NAME_MAX - len(digest)].decode("utf-8", "ignore") + digest


def _header_value(value: Any) -> Any:
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int):
        return int(value) if _INT64_MIN <= value < _INT64_END else str(int(value))
    if isinstance(value, float):  # pika sends no floats; JSON takes no NaN
        return str(value)
    if isinstance(value, Mapping):
        return portable_headers(value)
    if isinstance(value, list | tuple):
        return [_header_value(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return as_text(value)  # bytes, Decimal and whatever else pika decodes


def short_text(value: Any, limit: int) -> str:
    """A property a sender set (bytes where it is not UTF-8) as text of at most ``limit``
    characters and :data:`SHORT_STRING_MAX` bytes of UTF-8: itself, or its start and a
    digest of the whole. Both bounds: the ledger's columns count characters, and AMQP's
    short strings (a message id, a type) bytes. An id of 85 "ệ" is 85 characters and 255
    bytes; with ``:held`` after it pika could not encode it, and the fault in the I/O
    loop reconnected, gave back every unacked delivery and came back to it, round after
    round."""
    text = as_text(value)
    if len(text) <= limit and (text.isascii() or len(text.encode()) <= SHORT_STRING_MAX):
        return text
    digest = "~sha256:" + hashlib.sha256(text.encode()).hexdigest()
    if len(digest) >= limit:
        return digest[-limit:]
    start = text[:limit - len(digest)].encode()[:SHORT_STRING_MAX - len(digest)]
    return start.decode("utf-8", "ignore") + digest
