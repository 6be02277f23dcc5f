"""The screen every consumer runs first (redelivery, duplicates, contract), called directly
on a real ledger (SQLite and PostgreSQL): what it publishes for repeats and for odd AMQP headers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pika.spec import BasicProperties

from broker.amqp import REASON_HEADER, Delivery
from broker.consumers.router import Router
from broker.envelope import Outbound
from broker.ledger import Ledger
from broker.messages import CONTENT_TYPE, encode
from broker.rules.catalog import load_catalog
from broker.rules.engine import Engine
from broker.topology import Topology
from tests.conftest import MINI_CATALOG
from tests.helpers import dossier

pytestmark = pytest.mark.integration


@pytest.fixture
def router(ledger: Ledger) -> Router:
    engine = Engine(load_catalog(MINI_CATALOG))
    return Router(lambda: engine, ledger, Topology("t"))


def _delivery(tag: int, body: bytes, message_id: str, **headers: object) -> Delivery:
    return Delivery(tag, body, BasicProperties(
        content_type=CONTENT_TYPE, message_id=message_id, type="dossier.submitted",
        headers=headers or None), True, "dossier")


def _sent(out: list[Outbound]) -> list[tuple[str, str, bytes]]:
    return [(o.routing_key, o.message_id, o.body) for o in out]


def test_two_copies_of_a_processed_message_in_one_batch_republish_it_once(
        router: Router) -> None:
    # a desk published twice; both copies came back together after a channel reset
    body = encode(dossier())
    first = router.handle([_delivery(1, body, "submit:1")])
    assert len(first) == 2  # the assignment and the receipt
    again = router.handle([_delivery(2, body, "submit:1"), _delivery(3, body, "submit:1")])
    assert _sent(again) == _sent(first)
    assert router.ledger.count_by_state() == {2: 1}


def test_headers_json_cannot_hold_are_kept_as_text_and_the_reason_stays(
        router: Router) -> None:
    # AMQP tables carry non-UTF-8 long strings (bytes), timestamps and decimals; the
    # outbox stores a dead letter's headers as JSON, so they must not fail its batch
    when = datetime(2026, 11, 28, 9, 30, tzinfo=UTC)
    bad = _delivery(1, b'{"schema": ', "bad:1", **{
        "x-raw": b"\xff\x00ok", "x-when": when, "x-amount": Decimal("1.50"),
        "x-nested": {"list": [b"\xfe", 3]}})
    good = _delivery(2, encode(dossier()), "submit:2")
    out = router.handle([bad, good])
    dead = [o for o in out if o.headers and REASON_HEADER in o.headers]
    assert len(dead) == 1 and len(out) == 3
    headers = dead[0].headers
    assert headers[REASON_HEADER] == "malformed_json"  # not internal_error
    assert headers["x-raw"] == "\\xff\x00ok"
    assert headers["x-when"] == when.isoformat()
    assert headers["x-amount"] == "1.50"
    assert headers["x-nested"] == {"list": ["\\xfe", 3]}
    json.dumps(headers)
    # a redelivery re-publishes the very same dead letter from the outbox
    assert _sent(router.handle([bad])) == _sent(dead)


def test_a_dead_letter_for_an_internal_error_is_kept_and_published_again(
        router: Router) -> None:
    # the handler failed on a delivery in a way it could not handle; it is dead-lettered.
    # If it comes again (its ack lost), the same dead letter goes out again: processing
    # it now would leave a dossier beside a dead letter a replay could route again
    d = _delivery(1, encode(dossier()), "submit:1")
    dead = router.internal_error(d, RuntimeError("a bug"))
    assert dead[0].headers is not None
    assert dead[0].headers[REASON_HEADER] == "internal_error"
    assert _sent(router.handle([d])) == _sent(dead)
    assert router.ledger.count_by_state() == {}
