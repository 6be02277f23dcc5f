"""Poison input: 1,000+ malformed messages among valid traffic; a fuzz of the decoder."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.errors import DecodeError
from broker.messages import MAX_BODY_BYTES, DossierStatus, decode, encode
from broker.topology import INTAKE_KEY, STATUS_KEY
from tests.faults.harness import Load, Msg, Scenario, record, wait_until
from tests.faults.servers import RabbitNode
from tests.helpers import dossier

pytestmark = pytest.mark.faults

REASONS = {"malformed_json", "not_utf8", "wrong_content_type", "unknown_kind", "invalid_fields",
           "too_large", "unexpected_kind", "unknown_dossier"}


def _valid() -> dict[str, object]:
    data: dict[str, object] = json.loads(encode(dossier()))
    return data


def _bad_intake(i: int) -> tuple[bytes, str | None, str, bool]:
    """(body, content type, expected reason, whether its desk is told) of the i-th kind
    of poison: a desk hears of a dossier dead-lettered unread when the body still names
    it, the submission and the procedure."""
    d = _valid()
    kind = i % 9
    if kind == 0:
        return encode(dossier())[: 20 + i % 200], "application/json", "malformed_json", False
    if kind == 1:
        return (b'{"schema": "casebroker.dossier.submitted/v1", "x": "\xff\xfe"}', None,
                "not_utf8", False)
    if kind == 2:
        d["procedure_code"] = 1001193
        return json.dumps(d).encode(), "application/json", "invalid_fields", False
    if kind == 3:
        gone = random.Random(i).choice(["applicant", "desk_id", "submitted_at", "channel"])
        del d[gone]
        return json.dumps(d).encode(), "application/json", "invalid_fields", gone != "desk_id"
    if kind == 4:
        d["schema"] = random.Random(i).choice(["casebroker.dossier.submitted/v9", "x", 7, None])
        return json.dumps(d).encode(), "application/json", "unknown_kind", True
    if kind == 5:
        return b"[" * 10 + b" " * (MAX_BODY_BYTES + 1), "application/json", "too_large", False
    if kind == 6:
        return (encode(dossier()), random.Random(i).choice(["text/plain", "application/xml"]),
                "wrong_content_type", True)
    if kind == 7:
        return json.dumps([1, 2, 3]).encode(), "application/json", "malformed_json", False
    status = DossierStatus(update_id=uuid.UUID(int=i), dossier_code="X-261125-0001",
                           agency_id="T.CA", status="accepted", sent_at=datetime.now(UTC))
    return encode(status), "application/json", "unexpected_kind", False  # a status on intake


def test_poison_is_dead_lettered_valid_traffic_unaffected(
        rabbit: RabbitNode, scenario: Callable[..., Scenario]) -> None:
    s = scenario([rabbit.url], "poison")
    router = s.router().start()
    router.wait_consuming()
    t = s.topology
    good = s.dossiers(1000)
    bad: list[Msg] = []
    for i in range(1100):
        body, ct, reason, told = _bad_intake(i)
        if reason == "too_large" and i > 300:
            body, ct, reason = b"{", "application/json", "malformed_json"  # a few big ones do
        mid = f"bad:{i}"
        bad.append(Msg(t.intake_exchange, INTAKE_KEY, body, mid, "dossier.submitted", ct))
        s.expected_dead[mid] = ("intake", reason)
        if told:
            s.expected_held.add(mid)
    for i in range(100):  # and on the status queue: garbage and updates for no dossier
        mid = f"badstatus:{i}"
        if i % 2:
            body, reason = b"\x00\x01 not json", "malformed_json"
        else:
            body = json.dumps({"schema": "casebroker.dossier.status/v1",
                               "update_id": "6f1c1b1e-8a4e-4a53-9a5e-2d1c2b3a4f5e",
                               "dossier_code": f"NOPE-{i}", "agency_id": "T.CA",
                               "status": "accepted", "sent_at": "2026-11-28T09:00:00+07:00"}
                              ).encode()
            reason = "unknown_dossier"
        bad.append(Msg(t.status_exchange, STATUS_KEY, body, mid, "dossier.status"))
        s.expected_dead[mid] = ("status", reason)
    for i in range(50):  # valid but nobody can route them
        d = dossier("9.999999") if i % 2 else dossier(applicant_ward="99999")
        mid = f"unroutable:{i}"
        bad.append(Msg(t.intake_exchange, INTAKE_KEY, encode(d), mid, "dossier.submitted"))
        s.expected_triage[mid] = "unknown_procedure" if i % 2 else "area_not_served"
    mixed = [m for pair in zip(good, bad[:1000], strict=True) for m in pair] + bad[1000:]
    Load(s.urls, mixed).run()
    s.wait_routed(1000)
    wait_until(lambda: sum(n for o, n in s.ledger.count_inbox_outcomes().items()
                           if o.startswith(("dead:", "triaged:"))) >= len(bad), 60,
               "every bad message handled")
    s.resolve_all()
    f = s.check()  # dead.* and triage hold exactly the bad inputs, with their reasons
    assert router.alive() and router.starts == 1, "no consumer crashed"
    assert "internal_error" not in router.log() and "Traceback" not in router.log()
    outcomes = s.ledger.count_inbox_outcomes()
    assert sum(n for o, n in outcomes.items() if o.startswith("dead:")) == len(s.expected_dead)
    f.extra = {"malformed": len(s.expected_dead), "unroutable": len(s.expected_triage),
               "reasons": sorted({r for _, r in s.expected_dead.values()})}
    record(f)


# the decoder, fuzzed: whatever arrives, the answer is a message or a DecodeError with a
# known reason, and the error never repeats what the applicant wrote
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048), st.sampled_from([None, "", "application/json", "text/plain"]))
def test_decoder_never_crashes_on_bytes(body: bytes, content_type: str | None) -> None:
    try:
        decode(body, content_type=content_type)
    except DecodeError as e:
        assert e.reason in REASONS


def _nest(inner: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.one_of(st.lists(inner, max_size=4),
                     st.dictionaries(st.text(max_size=10), inner, max_size=4))


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                     | st.text(max_size=20), _nest, max_leaves=12)
SECRET = "066090001234"


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(_valid())), _json, st.booleans())
def test_decoder_on_mutated_dossiers(field: str, value: object, drop: bool) -> None:
    data = _valid()
    data["applicant"]["id_number"] = SECRET  # type: ignore[index]
    if drop:
        data.pop(field)
    else:
        data[field] = value
    try:
        msg = decode(json.dumps(data).encode(), expected=frozenset({"dossier.submitted"}))
    except DecodeError as e:
        assert e.reason in REASONS
        assert SECRET not in e.detail and SECRET not in str(e)
    else:
        assert msg.model_dump(mode="json", by_alias=True)["submission_id"]


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["name", "id_number", "kind", "phone", "ward_code"]),
                       _json, max_size=5))
def test_decoder_on_mutated_applicants(applicant: dict[str, object]) -> None:
    data = _valid()
    data["applicant"] = {**applicant, "id_number": [SECRET]}  # wrong type, carries the id
    with pytest.raises(DecodeError) as e:
        decode(json.dumps(data).encode())
    assert e.value.reason == "invalid_fields"
    assert SECRET not in e.value.detail
