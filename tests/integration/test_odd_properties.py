"""What any publisher can set on a message, through the real RabbitMQ: properties AMQP
carries but casebroker cannot store or send on as they came, and a fault in the I/O loop.
None of it may stop the routers, block the queue behind it, or lose what it carried."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import pika
import pytest

from broker.amqp import REASON_HEADER
from broker.amqp_worker import QueueWorker
from broker.envelope import HEADER_NAME_MAX, Outbound
from broker.ledger import Ledger
from broker.messages import encode
from broker.topology import INTAKE_KEY, Topology
from tests.conftest import queue_depth, wait_for
from tests.helpers import FAR_DATE, Amqp, as_other_clients_send, dossier

pytestmark = pytest.mark.integration


def _take(amqp: Amqp, queue: str, n: int) -> list[tuple[Any, bytes]]:
    got: list[tuple[Any, bytes]] = []
    wait_for(lambda: got.extend(amqp.get_all(queue)) or len(got) >= n,
             what=f"{n} message(s) on {queue}")
    assert len(got) == n
    return got


def test_properties_the_ledger_and_pika_cannot_take_back_are_dead_lettered_made_portable(
        declared: Topology, ledger: Ledger, start_broker: Any, amqp: Amqp,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    start_broker()
    odd = {b"\xff" * 100: 1,        # a name that is not UTF-8: 400 characters escaped
           "x-huge": 1e300,          # a double pika decodes as an int AMQP cannot carry
           "x-ok": "kept"}
    with as_other_clients_send(monkeypatch):  # doubles, which pika sends none of
        for message_id in (b"\xfe" * 200, b"\xfd" * 100):  # not UTF-8; over/under 128
            amqp.ch.basic_publish(
                declared.intake_exchange, INTAKE_KEY, b"{", pika.BasicProperties(
                    content_type="application/json", delivery_mode=2, message_id=message_id,
                    correlation_id="c" * 200, type="t" * 100, headers=odd), mandatory=True)
    good = dossier()
    amqp.submit(declared, good)

    # the dossier behind them is routed: the routers neither died nor stalled
    (_, assigned), = _take(amqp, declared.agency_queue("T.UBND.A"), 1)
    assert json.loads(assigned)["submission_id"] == str(good.submission_id)
    dead = _take(amqp, declared.dead_queue("intake"), 2)
    for props, body in dead:
        headers = props.headers
        assert headers[REASON_HEADER] == "malformed_json" and body == b"{"
        (name,) = [k for k in headers if k.startswith("\\xff")]
        assert len(name.encode()) == HEADER_NAME_MAX
        assert headers["x-huge"] == str(int(1e300)) and headers["x-ok"] == "kept"
        assert headers["x-original-type"] == "t" * 100
        assert len(props.type) == 32 and len(props.correlation_id) == 96
    # told apart by their ids, each kept as text the inbox holds
    ids = sorted(props.message_id for props, _ in dead)
    assert [(i[:4], len(i), "~sha256:" in i) for i in ids] == [
        ("\\xfd", 128, True), ("\\xfe", 128, True)]  # 400 and 800 characters escaped
    assert ledger.count_inbox_outcomes() == {"dead:malformed_json": 2, "routed": 1}
    assert "fault in the I/O loop" not in caplog.text


def test_a_fault_in_the_io_loop_reconnects_and_the_delivery_is_redone_once(
        declared: Topology, ledger: Ledger, start_broker: Any, amqp: Amqp,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    send = QueueWorker._send
    faults: list[str] = []

    def send_or_fail(self: QueueWorker, out: Any, entry: Any) -> None:
        if not faults:  # the first publish of all: its batch is committed, nothing sent
            faults.append(out.message_id)
            raise RuntimeError("a bug of casebroker's own")
        send(self, out, entry)

    monkeypatch.setattr(QueueWorker, "_send", send_or_fail)
    caplog.set_level(logging.INFO)
    start_broker()
    d = dossier()
    amqp.submit(declared, d)
    (_, assigned), = _take(amqp, declared.agency_queue("T.UBND.A"), 1)
    (_, receipt), = _take(amqp, declared.desk_queue("T.MC.B"), 1)
    assert json.loads(receipt)["notice"] == "receipt" and faults
    assert ("fault in the I/O loop of the connection to RabbitMQ (builtins.RuntimeError"
            in caplog.text)
    # the redelivery republished the batch from the ledger: one dossier, nothing twice,
    # and the delivery itself acked
    assert ledger.count_by_state() == {2: 1}
    wait_for(lambda: queue_depth(declared.intake_queue) == 0, what="intake drained")
    amqp.submit(declared, dossier())  # and the routers go on
    _take(amqp, declared.agency_queue("T.UBND.A"), 1)
    assert queue_depth(declared.agency_queue("T.UBND.A")) == 0


def test_a_dead_letter_stored_with_headers_pika_cannot_send_goes_out_made_portable(
        declared: Topology, ledger: Ledger, start_broker: Any, amqp: Amqp) -> None:
    # kept in the outbox by a version that copied a sender's headers as they came; its
    # delivery comes again (its ack was lost) and the dead letter is published again
    stored = Outbound(declared.dead_letter_exchange, "intake", "old:1", "dossier.submitted",
                      None, {"n" * 300: 1, "x-wide": 2**70, REASON_HEADER: "malformed_json"},
                      b"{")
    with ledger.batch() as batch:
        batch.record("old:1", "intake", "dead:malformed_json", None, [stored],
                     datetime.now(UTC))
    start_broker()
    amqp.publish(declared.intake_exchange, INTAKE_KEY, b"{", message_id="old:1")
    (props, body), = _take(amqp, declared.dead_queue("intake"), 1)
    assert body == b"{" and props.message_id == "old:1"
    (name,) = [k for k in props.headers if k.startswith("nnn")]
    assert len(name) == HEADER_NAME_MAX and "~" in name
    assert props.headers["x-wide"] == str(2**70)
    assert props.headers[REASON_HEADER] == "malformed_json"
    wait_for(lambda: queue_depth(declared.intake_queue) == 0, what="intake drained")


def test_an_id_of_many_bytes_is_answered_without_a_fault_in_the_io_loop(
        declared: Topology, ledger: Ledger, start_broker: Any, amqp: Amqp,
        caplog: pytest.LogCaptureFixture) -> None:
    # 85 "ệ" are 85 characters and 255 bytes, an id AMQP carries; the held notice's id
    # (the id, ":held") was 260 bytes, which pika could not encode: the I/O loop's fault
    # reconnected and the redelivery met it again, until the delivery limit dead-lettered
    # it with every good delivery given back with it (found by a review). The same for a
    # malformed body whose id grows past 255 bytes once its NULs are escaped
    start_broker()
    wide = "ệ" * 85
    amqp.ch.basic_publish(declared.intake_exchange, INTAKE_KEY,
                          dossier("9.999999").model_dump_json().encode(),  # no rule: triage
                          pika.BasicProperties(content_type="application/json",
                                               delivery_mode=2, message_id=wide,
                                               type="dossier.submitted"), mandatory=True)
    amqp.ch.basic_publish(declared.intake_exchange, INTAKE_KEY, b"{", pika.BasicProperties(
        content_type="application/json", delivery_mode=2,
        message_id="ệ" * 82 + "\x00" * 4), mandatory=True)
    good = dossier()
    amqp.submit(declared, good)
    (_, assigned), = _take(amqp, declared.agency_queue("T.UBND.A"), 1)
    assert json.loads(assigned)["submission_id"] == str(good.submission_id)
    (held, notice), = [m for m in _take(amqp, declared.desk_queue("T.MC.B"), 2)
                       if json.loads(m[1])["notice"] == "held"]
    assert len(held.message_id.encode()) <= 255 and held.message_id.startswith("ệ")
    (triaged, _), = _take(amqp, declared.triage_queue, 1)
    assert triaged.message_id == wide  # 255 bytes: kept whole
    (dead, body), = _take(amqp, declared.dead_queue("intake"), 1)
    assert body == b"{" and len(dead.message_id.encode()) <= 255
    assert "fault in the I/O loop" not in caplog.text
    assert ledger.count_inbox_outcomes() == {"dead:malformed_json": 1, "routed": 1,
                                             "triaged:unknown_procedure": 1}


def test_a_header_date_past_the_year_9999_is_routed_as_any_dossier(
        declared: Topology, ledger: Ledger, start_broker: Any, amqp: Amqp,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # pika read a header's timestamp as a datetime, which has no year past 9999: its frame
    # reader raised, the connection ended, and the redelivery met it again until the
    # delivery limit dead-lettered it with every unacked delivery (found by a review)
    start_broker()
    good = dossier()
    with as_other_clients_send(monkeypatch):
        amqp.ch.basic_publish(declared.intake_exchange, INTAKE_KEY, encode(good),
                              pika.BasicProperties(content_type="application/json",
                                                   delivery_mode=2, message_id="far",
                                                   headers={"x-valid-until": FAR_DATE}),
                              mandatory=True)
    (_, assigned), = _take(amqp, declared.agency_queue("T.UBND.A"), 1)
    assert json.loads(assigned)["submission_id"] == str(good.submission_id)
    assert "fault in the I/O loop" not in caplog.text
    assert ledger.count_inbox_outcomes() == {"routed": 1}
