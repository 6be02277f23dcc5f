"""The message contract at its edges: bodies decode() raised past itself on, a
JSON-parse reason said in no words, codes the published schema refuses and decode()
took, error details quoting a phone or id number a sender put in a key, and a dossier
code longer than the ledger holds, which failed a status batch on PostgreSQL. Pure
decoding is tested as such; what a long code did to the status router, on the real
ledger (SQLite and PostgreSQL) and through the real RabbitMQ."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from pika.spec import BasicProperties

from broker.amqp import DETAIL_HEADER, REASON_HEADER, Delivery
from broker.consumers.status import StatusRouter
from broker.errors import DecodeError
from broker.ledger import Ledger
from broker.messages import (
    CONTENT_TYPE,
    DossierReturned,
    DossierStatus,
    DossierSubmitted,
    DossierSupplemented,
    DossierWithdrawn,
    decode,
    encode,
    json_schemas,
)
from broker.rules.catalog import load_catalog
from broker.rules.engine import Engine
from broker.topology import DELIVERY_LIMIT, STATUS_KEY, Topology
from tests.conftest import MINI_CATALOG, RunningBroker, queue_depth, wait_for
from tests.helpers import Amqp, dossier

SENT = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)
DOC = {"name": "ban-sao.pdf", "uri": "s3://docs/2", "sha256": "b" * 64, "size": 10,
       "media_type": "application/pdf"}


def _refused(body: bytes) -> DecodeError:
    with pytest.raises(DecodeError) as e:
        decode(body)
    return e.value


# -- bodies Python's json cannot read: decode() raised ValueError / RecursionError -------

_WITH_X = encode(dossier(attributes={"x": 7}))


@pytest.mark.parametrize(("what", "body"), [
    ("a number of 5,000 digits", _WITH_X.replace(b'"x":7', b'"x":' + b"9" * 5000)),
    ("arrays nested 3,000 deep", _WITH_X.replace(b'"x":7',
                                                  b'"x":' + b"[" * 3000 + b"]" * 3000)),
    ("an unclosed nest 5,000 deep", b"[" * 5000),
], ids=["long_number", "deep_arrays", "unclosed_nest"])
def test_a_body_pythons_json_cannot_read_is_malformed_json_not_a_crash(
        what: str, body: bytes) -> None:
    # a few kB a desk's bug can send: decode() raised ValueError ("Exceeds the limit
    # (4300 digits)") or RecursionError out of its error path, and the router dead-lettered
    # the delivery as its own internal_error instead of the sender's malformed_json
    assert len(body) < 10_000
    e = _refused(body)
    assert e.reason == "malformed_json", what
    assert " at line 1 column " in e.detail, what
    assert ("number out of range" in e.detail or "recursion limit exceeded" in e.detail), what


@pytest.mark.parametrize("escape", [b"\\ud800", b"\\udc00", b"\\udfff\\ud800"])
def test_a_lone_surrogate_is_named_not_just_not_valid_json(escape: bytes) -> None:
    # a lone surrogate is no character: refused (PostgreSQL's json refuses it too), but
    # the detail said only "body is not valid JSON", where the parser says what and where
    body = encode(dossier()).replace('"Nguyễn'.encode(), b'"' + escape + b"Nguy")
    assert body.count(escape) == 1
    e = _refused(body)
    assert e.reason == "malformed_json"
    assert "hex escape at line 1 column " in e.detail, e.detail
    assert "Nguy" not in e.detail


def test_the_usual_malformed_bodies_still_say_where() -> None:
    for body in (b"{", encode(dossier()) + b"x", b'{"schema": }'):
        e = _refused(body)
        assert e.reason == "malformed_json" and " at line 1 column " in e.detail


# -- digits: the schema's \d is ASCII; pydantic's regex took any Unicode digit -----------

@pytest.mark.parametrize(("field", "value"), [
    ("procedure_code", "١.٠٠١١٩٣"),        # Arabic-Indic digits
    ("procedure_code", "1.００１１９３"),     # full-width digits
    ("applicant.ward_code", "２４１３３"),
    ("subject.ward_code", "٢٤١٣٣"),
])
def test_codes_take_the_ascii_digits_the_published_schema_says(field: str,
                                                                  value: str) -> None:
    # the JSON Schema's patterns are ECMA-262 regexes, whose \d is 0-9: an integrator
    # validating by the schema refused what decode() took (to be triaged as unknown)
    data = json.loads(encode(dossier(subject={"ward_code": "10002"})))
    head, _, leaf = field.rpartition(".")
    (data[head] if head else data)[leaf] = value
    e = _refused(json.dumps(data, ensure_ascii=False).encode())
    assert e.reason == "invalid_fields" and field in e.detail
    assert value not in e.detail
    # ASCII codes as before; the published patterns say [0-9], which both engines read
    # alike (ECMA-262's \d was already 0-9)
    back = decode(encode(dossier(subject={"ward_code": "10002"})))
    assert isinstance(back, DossierSubmitted) and back.subject is not None
    schema = json_schemas()["casebroker.dossier.submitted/v1"]
    assert schema["properties"]["procedure_code"]["pattern"] == r"^[0-9]\.[0-9]{6}$"
    ward = schema["$defs"]["Applicant"]["properties"]["ward_code"]["anyOf"][0]
    assert ward["pattern"] == r"^[0-9]{2,5}$"


# -- error details quote no phone or id number, even as a key -------------------------

@pytest.mark.parametrize(("place", "key"), [
    ("body", "0905123456"),                  # a field the contract does not have
    ("applicant", "Nguyen Van An 0905123456"),
    ("attributes", "cccd_066090001234"),     # a form field keyed by an id number
    ("attributes", "Nguyễn Văn An"),          # keyed by the citizen's name (a review)
    ("subject", "Zqxname Vwtest"),
])
def test_a_key_holding_a_name_phone_or_id_number_is_not_quoted(place: str, key: str) -> None:
    # DESIGN §9: no id number or phone in error headers; the detail (dead letters'
    # x-casebroker-detail, a held notice, the SDK's ValueError) quoted every key of the
    # error's path as the sender wrote it; then every one without nine digits (a name)
    data = json.loads(encode(dossier()))
    target = data if place == "body" else data.setdefault(place, {})
    target[key] = [1]  # wrong in any place: an unknown field, or no attribute value
    e = _refused(json.dumps(data).encode())
    assert e.reason == "invalid_fields"
    assert key not in e.detail and key.split()[0] not in e.detail
    where = "" if place == "body" else f"{place}."
    assert e.detail.startswith(f"{where}<a key of the sender's>")  # where, still


def test_a_key_that_reads_as_a_field_name_is_quoted() -> None:
    data = json.loads(encode(dossier()))
    data["attributes"] = {"area_m2": [1]}
    data["colour"] = "red"
    e = _refused(json.dumps(data).encode())
    assert e.detail.startswith("attributes.area_m2.str: ")
    assert "; colour: Extra inputs are not permitted" in e.detail


def test_a_nul_under_such_a_key_is_located_without_quoting_it() -> None:
    data = json.loads(encode(dossier()))
    data["attributes"] = {"so_dt_0905123456": "a\x00b", "ghi_chu": "ok"}
    e = _refused(json.dumps(data).encode())
    assert (e.reason, e.detail) == (
        "invalid_fields", "attributes.<a key of the sender's>: "
                          "a NUL character (\\u0000) in text")
    # a key that is only long, with no NUL anywhere, is no NUL
    back = decode(encode(dossier(attributes={"so_dt_0905123456": "x"})))
    assert isinstance(back, DossierSubmitted) and back.attributes == {"so_dt_0905123456": "x"}


# -- dossier codes: bounded by what the ledger holds ----------------------------------

def _desk_events(code: str) -> list[dict[str, Any]]:
    """A body of each kind that names a dossier by code, with ``code``."""
    ok = "T.UBND.A-261125-0001"
    messages = [
        DossierStatus(update_id=uuid.uuid4(), dossier_code=ok, agency_id="T.UBND.A",
                      status="accepted", sent_at=SENT),
        DossierReturned(event_id=uuid.uuid4(), dossier_code=ok, desk_id="T.MC.B",
                        returned_at=SENT),
        DossierSupplemented(event_id=uuid.uuid4(), dossier_code=ok, desk_id="T.MC.B",
                            documents=[DOC], sent_at=SENT),
        DossierWithdrawn(event_id=uuid.uuid4(), dossier_code=ok, desk_id="T.MC.B",
                         sent_at=SENT),
    ]
    return [json.loads(encode(m)) | {"dossier_code": code} for m in messages]


@pytest.mark.parametrize("code", ["", "T.UBND.A-261125-" + "0" * 81])
def test_a_dossier_code_is_one_the_ledger_can_hold(code: str) -> None:
    # 97 characters: no dossier has such a code (dossiers.code is String(96))
    for body in _desk_events(code):
        e = _refused(json.dumps(body).encode())
        assert e.reason == "invalid_fields" and e.detail.startswith("dossier_code: "), body
    longest = "T.UBND.A-261125-" + "0" * 80
    assert len(longest) == 96
    for body in _desk_events(longest):
        assert decode(json.dumps(body).encode()).dossier_code == longest  # type: ignore[union-attr]


def test_the_published_schema_bounds_every_dossier_code_as_decode_does() -> None:
    for kind, schema in json_schemas().items():
        field = schema["properties"].get("dossier_code")
        if field is None:
            continue
        text = field["anyOf"][0] if "anyOf" in field else field
        assert (text["type"], text["minLength"], text["maxLength"]) == ("string", 1, 96), kind


def _status_delivery(tag: int, body: bytes) -> Delivery:
    return Delivery(tag, body, BasicProperties(
        content_type=CONTENT_TYPE, message_id=f"m{tag}", type="dossier.status"), True,
        "status")


LONG = "T.UBND.A-261125-" + "0" * 100


@pytest.mark.integration
def test_a_status_with_a_code_longer_than_the_ledger_holds_is_dead_lettered_as_invalid(
        ledger: Ledger) -> None:
    # PostgreSQL: the refusal to the agency carried the code as its correlation id, which
    # outbox.correlation_id (String(96)) could not hold: StringDataRightTruncation failed
    # the whole batch (every update in it). SQLite took it: "unknown_dossier"
    engine = Engine(load_catalog(MINI_CATALOG))
    status = StatusRouter(lambda: engine, ledger, Topology("t"), clock=lambda: SENT)
    status_body, *_, withdrawal_body = _desk_events(LONG)
    out = status.handle([_status_delivery(1, json.dumps(status_body).encode()),
                         _status_delivery(2, json.dumps(withdrawal_body).encode())])
    assert [(o.exchange, o.routing_key) for o in out] == [("t.dlx", "status")] * 2
    for o in out:
        assert o.headers is not None
        assert o.headers[REASON_HEADER] == "invalid_fields"
        assert str(o.headers[DETAIL_HEADER]).startswith("dossier_code: String should have at "
                                                        "most 96 characters")
    assert ledger.count_inbox_outcomes() == {"dead:invalid_fields": 2}


@pytest.mark.integration
def test_the_broker_dead_letters_such_a_status_and_goes_on(
        declared: Topology, ledger: Ledger, run_broker: Callable[..., RunningBroker],
        amqp: Amqp) -> None:
    # through RabbitMQ: the long code is set aside with its reason, and the update sent
    # after it (a code the ledger does not have) is judged as ever
    t = declared
    run_broker()
    status_body = _desk_events(LONG)[0]
    amqp.publish(t.status_exchange, STATUS_KEY, json.dumps(status_body).encode(),
                 message_id="long-code", type="dossier.status")
    after = _desk_events("T.UBND.A-261125-9999")[0]
    amqp.publish(t.status_exchange, STATUS_KEY, json.dumps(after).encode(),
                 message_id="after", type="dossier.status")
    wait_for(lambda: queue_depth(t.dead_queue("status")) == 2, what="two dead letters")
    dead = amqp.get_all(t.dead_queue("status"))
    reasons = {props.message_id: props.headers[REASON_HEADER] for props, _ in dead}
    assert reasons == {"long-code": "invalid_fields", "after": "unknown_dossier"}
    (refusal,) = wait_for(lambda: amqp.json_all(t.agency_queue("T.UBND.A")),
                          what="not_yours to the agency")
    assert refusal["notice"] == "update_refused"
    assert refusal["dossier_code"] == "T.UBND.A-261125-9999"


def test_the_published_channels_are_where_rabbitmq_has_them(declared: Topology) -> None:
    # docs/asyncapi.yaml, read literally: a channel bound as a routing key is published to
    # its exchange under that key (it said the queue's name, which RabbitMQ returned as
    # unroutable); one bound as a queue is that queue, declared as it says
    import pika

    from broker.amqp import amqp_url
    from broker.contract import asyncapi

    channels = asyncapi(declared)["channels"]
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url()))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        keys = [k for k, c in channels.items() if c["bindings"]["amqp"]["is"] == "routingKey"]
        queues = [k for k, c in channels.items() if c["bindings"]["amqp"]["is"] == "queue"]
        assert sorted(keys) == ["dossier", "status"]
        for key in keys:
            binding = channels[key]["bindings"]["amqp"]
            assert channels[key]["publish"]["bindings"]["amqp"]["mandatory"] is True
            # an unroutable mandatory publish raises UnroutableError here
            ch.basic_publish(binding["exchange"]["name"], key, b"{}", mandatory=True)
        for name, party, some in ((queues[0], "agency", "T.UBND.A"),
                                  (queues[1], "desk", "T.MC.A")):
            assert name == f"{declared.prefix}.{party}.{{{party}_id}}"
            assert list(channels[name]["parameters"]) == [f"{party}_id"]
            queue = channels[name]["bindings"]["amqp"]["queue"]["name"]
            ch.queue_declare(queue.replace(f"{{{party}_id}}", some), passive=True)
            assert f"x-delivery-limit {DELIVERY_LIMIT}" in channels[name]["description"]
            assert declared.dead_queue(party) in channels[name]["description"]
        # what the two publishes left in the intake and status queues goes
        ch.queue_purge(declared.intake_queue)
        ch.queue_purge(declared.status_queue)
    finally:
        conn.close()
