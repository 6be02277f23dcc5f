"""Who first published a message, as the router and the operator tools tell it: the
user_id RabbitMQ checked, or the sender recorded on a trusted copy, never a claimed one."""

from __future__ import annotations

import pytest
from pika.spec import BasicProperties

from broker.amqp import REASON_HEADER, SENT_BY_HEADER, Delivery
from broker.consumers.common import dead_letter
from broker.consumers.common import sent_by as router_sent_by
from broker.ops.queues import sent_by as tool_sent_by
from broker.topology import Topology


def _props(user_id: str | None, recorded: str | None) -> BasicProperties:
    return BasicProperties(user_id=user_id, message_id="m1",
                           headers={SENT_BY_HEADER: recorded} if recorded else None)


@pytest.mark.parametrize(("user_id", "recorded", "router_sees", "tools_see"), [
    ("desk-a", None, "desk-a", "desk-a"),          # a desk's own publish
    ("desk-a", "desk-b", "desk-a", "desk-a"),      # a desk claiming another sender: ignored
    ("guest", "desk-a", "desk-a", "desk-a"),       # a replay under the router's own login
    # no user_id RabbitMQ checked: a sender's message RabbitMQ dead-lettered as it came,
    # its claim among its own headers (a replay took it for checked: found by a review)
    (None, "desk-a", None, None),
    (None, None, None, None),
])
def test_the_first_sender_is_taken_only_from_a_trusted_copy(
        user_id: str | None, recorded: str | None, router_sees: str | None,
        tools_see: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASEBROKER_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
    delivery = Delivery(1, b"{}", _props(user_id, recorded), False, "k")
    assert router_sent_by(delivery, trusted="guest") == router_sees
    assert tool_sent_by(_props(user_id, recorded)) == tools_see


def test_the_tools_take_the_sender_the_router_recorded_on_its_own_dead_letters(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # whatever login the router ran under, its judged dead letter (its reason on it, no
    # x-death) says who sent the delivery; RabbitMQ's own dead letter of it does not
    monkeypatch.setenv("CASEBROKER_AMQP_URL", "amqp://operator:x@127.0.0.1:5672/%2F")
    judged = {SENT_BY_HEADER: "desk-a", REASON_HEADER: "malformed_json"}
    assert tool_sent_by(BasicProperties(user_id="router", headers=judged)) == "desk-a"
    worn = {**judged, "x-first-death-reason": "delivery_limit"}
    assert tool_sent_by(BasicProperties(user_id=None, headers=worn)) is None


def test_a_dead_letter_records_the_checked_sender_and_drops_a_claimed_one() -> None:
    claimed = Delivery(1, b"{}", _props("desk-a", "desk-b"), False, "k")
    dl = dead_letter(Topology("t"), "intake", claimed, "sender_mismatch", "x", "guest")
    assert dl.headers is not None and dl.headers[SENT_BY_HEADER] == "desk-a"
    anonymous = Delivery(2, b"{}", _props(None, "desk-b"), False, "k")
    dl = dead_letter(Topology("t"), "intake", anonymous, "malformed_json", "x", "guest")
    assert dl.headers is not None and SENT_BY_HEADER not in dl.headers
