"""The message contract: every kind round-trips; every bad body gets a reason code."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from broker.errors import DecodeError
from broker.messages import (
    KINDS,
    MAX_BODY_BYTES,
    AgencyStatus,
    DeskNotice,
    DossierReturned,
    DossierStatus,
    DossierWithdrawn,
    decode,
    encode,
    json_schemas,
    kind_of,
    new_id,
)
from tests.helpers import dossier


def test_submitted_round_trips() -> None:
    d = dossier(return_desk_id="T.CENTRE", attributes={"area_m2": 120.5, "foreign": True})
    back = decode(encode(d))
    assert back == d and kind_of(back) == "dossier.submitted" and back.collect_at == "T.CENTRE"


def test_a_message_dumped_with_pydantics_defaults_is_one_the_contract_takes() -> None:
    # an integrator serializing by hand: "schema", not the Python name "schema_"
    d = dossier()
    assert decode(d.model_dump_json().encode()) == d
    assert decode(json.dumps(d.model_dump(mode="json")).encode()) == d


def test_status_round_trips() -> None:
    s = DossierStatus(update_id=uuid.uuid4(), dossier_code="X-261128-0001", agency_id="A",
                      status=AgencyStatus.SUPPLEMENT_REQUESTED, reason="need ID copy",
                      requested_documents=["CCCD"], sent_at=datetime.now(UTC))
    assert decode(encode(s)) == s


def test_a_desk_notice_has_a_dossier_code_unless_no_dossier_was_opened() -> None:
    # held: the router opened no dossier; refused: with a code from the router, without
    # one from an operator refusing a triaged dossier; every other notice is about one
    common = {"submission_id": uuid.uuid4(), "desk_id": "T.MC.B",
              "procedure_code": "1.001193", "issued_at": datetime.now(UTC)}
    held = DeskNotice(notice="held", dossier_code=None, state=1, reason="no_area: ...",
                      **common)
    assert decode(encode(held)) == held and kind_of(held) == "desk.notice"
    # refused, withdrawn, update_refused: of a dossier, or of a submission held in triage
    for notice, state in (("refused", 3), ("withdrawn", 7), ("update_refused", 7)):
        for code in ("X-261128-0001", None):
            closed = DeskNotice(notice=notice, dossier_code=code, state=state, reason="...",
                                **common)
            assert decode(encode(closed)) == closed
    for notice, code in (("held", "X-261128-0001"), ("receipt", None), ("result_ready", None),
                         ("supplement_requested", None), ("at_risk", None)):
        body = json.loads(encode(held))
        body.update(notice=notice, dossier_code=code)
        with pytest.raises(DecodeError) as e:
            decode(json.dumps(body).encode())
        assert e.value.reason == "invalid_fields"


def test_only_a_not_yours_refusal_leaves_out_the_dossiers_own_fields() -> None:
    # a desk told that the code it sent is not its own learns nothing of the dossier: the
    # notice echoes the code, and nothing else
    now = datetime.now(UTC)
    reason = "not_yours: no dossier X-261128-0009 has desk T.MC.B as ...; check the code"
    notice = DeskNotice(notice="update_refused", desk_id="T.MC.B", reason=reason,
                        issued_at=now, dossier_code="X-261128-0009")
    assert decode(encode(notice)) == notice and notice.not_yours
    assert {"state", "procedure_code", "submission_id"}.isdisjoint(json.loads(encode(notice)))
    base = {"notice": "update_refused", "desk_id": "T.MC.B", "issued_at": now,
            "dossier_code": "X-261128-0009", "reason": reason}
    dossier_fields = {"submission_id": uuid.uuid4(), "procedure_code": "1.001193",
                      "state": 2}
    for wrong in ({"dossier_code": None},  # names nothing
                  {"dossier_code": None, "submission_id": uuid.uuid4()},
                  {"state": 2}, {"procedure_code": "1.001193"},  # tells of the dossier
                  {"submission_id": uuid.uuid4()},
                  {"reason": "withdraw is not allowed"},  # an ordinary refusal: all three
                  {"notice": "receipt", "reason": None},
                  {"reason": "withdraw ... not_yours:", **dossier_fields, "state": None}):
        with pytest.raises(ValidationError):
            DeskNotice(**(base | wrong))
    # an ordinary refusal with the dossier's fields is what it always was
    assert not DeskNotice(**(base | dossier_fields | {"reason": "too late"})).not_yours


def test_a_withdrawal_names_its_dossier_by_code_or_by_submission_id_never_both() -> None:
    common = {"event_id": uuid.uuid4(), "desk_id": "T.MC.B", "sent_at": datetime.now(UTC)}
    by_code = DossierWithdrawn(dossier_code="X-261128-0001", **common)
    by_submission = DossierWithdrawn(submission_id=uuid.uuid4(), reason="rút", **common)
    for withdrawal in (by_code, by_submission):
        assert decode(encode(withdrawal)) == withdrawal
    assert "dossier_code" not in json.loads(encode(by_submission))
    for keys in ({}, {"dossier_code": "X-261128-0001",
                      "submission_id": str(by_submission.submission_id)}):
        body = {**json.loads(encode(by_code)), **keys}
        if not keys:
            body.pop("dossier_code")
        with pytest.raises(DecodeError) as e:
            decode(json.dumps(body).encode())
        assert e.value.reason == "invalid_fields" and "exactly one" in e.value.detail


def _body(**changes: object) -> bytes:
    data = json.loads(encode(dossier()))
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    return json.dumps(data).encode()


@pytest.mark.parametrize(("body", "content_type", "reason"), [
    (b"{", "application/json", "malformed_json"),
    (b"[1, 2]", "application/json", "malformed_json"),
    (b"\xff\xfe{}", "application/json", "not_utf8"),
    (b"{}", "text/plain", "wrong_content_type"),
    (b"{}", "application/json", "unknown_kind"),
    (_body(schema="casebroker.dossier.submitted/v2"), None, "unknown_kind"),
    (_body(schema=7), None, "unknown_kind"),
    (_body(applicant=None), None, "invalid_fields"),
    (_body(procedure_code="1001193"), None, "invalid_fields"),
    (_body(submitted_at="2026-11-28T09:00:00"), None, "invalid_fields"),  # no offset
    (_body(channel="fax"), None, "invalid_fields"),
    (_body(surprise="extra field"), None, "invalid_fields"),
    (_body(submission_id="not-a-uuid"), None, "invalid_fields"),
    (b" " * (MAX_BODY_BYTES + 1), None, "too_large"),
], ids=["unclosed", "array", "latin1", "text_plain", "no_schema", "schema_v2", "schema_number",
        "no_applicant", "code_without_dot", "time_without_offset", "channel_fax", "extra_field",
        "id_not_uuid", "over_limit"])
def test_bad_bodies_get_a_reason(body: bytes, content_type: str | None, reason: str) -> None:
    with pytest.raises(DecodeError) as e:
        decode(body, content_type=content_type)
    assert e.value.reason == reason


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_a_number_json_does_not_have_is_refused(value: str) -> None:
    # Python's json reads NaN and Infinity; taken, PostgreSQL's json refused the batch
    # that carried one (dead-lettered as internal_error), and SQLite's assignment said null
    body = encode(dossier(attributes={"area_m2": 1.5}))
    assert decode(body).attributes == {"area_m2": 1.5}
    with pytest.raises(DecodeError) as e:
        decode(body.replace(b"1.5", value.encode()))
    assert e.value.reason == "invalid_fields"
    assert "attributes.area_m2.float: Input should be a finite number" in e.value.detail


@pytest.mark.parametrize(("where", "path"), [
    (("applicant", "name"), "applicant.name"),
    (("attributes", "ghi\x00chu"), "attributes.<a key of the sender's>"),
    (("attributes", "ghi_chu"), "attributes.ghi_chu"),
])
def test_a_nul_character_in_text_is_refused_and_not_quoted(where: tuple[str, str],
                                                            path: str) -> None:
    # JSON allows \\u0000; PostgreSQL's text and json operators do not (found by a review)
    data = json.loads(encode(dossier()))
    data[where[0]][where[1]] = "Nguyễn\x00An"
    with pytest.raises(DecodeError) as e:
        decode(json.dumps(data).encode())
    assert (e.value.reason, e.value.detail) == (
        "invalid_fields", f"{path}: a NUL character (\\u0000) in text")
    assert "\x00" not in e.value.detail and "Nguyễn" not in e.value.detail
    # the six characters \\u0000 as text are no NUL
    assert decode(encode(dossier(attributes={"ghi_chu": "\\u0000"}))).attributes == {
        "ghi_chu": "\\u0000"}


def test_unexpected_kind_on_a_queue() -> None:
    with pytest.raises(DecodeError) as e:
        decode(encode(dossier()), expected=frozenset({"dossier.status"}))
    assert e.value.reason == "unexpected_kind"
    # on the wrong queue first, whatever else is wrong with it; on its own, invalid
    event = {"schema": "casebroker.dossier.withdrawn/v1", "desk_id": "T.MC.B"}
    with pytest.raises(DecodeError) as e:
        decode(json.dumps(event).encode(), expected=frozenset({"dossier.submitted"}))
    assert (e.value.reason, e.value.detail) == (
        "unexpected_kind", "dossier.withdrawn is not accepted on this queue")
    with pytest.raises(DecodeError) as e:
        decode(json.dumps(event).encode(), expected=frozenset({"dossier.withdrawn"}))
    assert e.value.reason == "invalid_fields"


def test_errors_never_echo_personal_data() -> None:
    data = json.loads(encode(dossier()))
    data["applicant"]["id_number"] = ["066090001234"]  # wrong type, carries the id
    data["applicant"]["phone"] = {"n": "0905123456"}
    with pytest.raises(DecodeError) as e:
        decode(json.dumps(data).encode())
    assert "066090001234" not in str(e.value) and "0905123456" not in str(e.value)
    assert "applicant.id_number" in e.value.detail


def test_every_kind_has_a_json_schema() -> None:
    schemas = json_schemas()
    assert set(schemas) == {f"casebroker.{k}/v1" for k in KINDS}
    assert schemas["casebroker.dossier.submitted/v1"]["additionalProperties"] is False


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_decoder_never_crashes_on_bytes(body: bytes) -> None:
    try:
        decode(body)
    except DecodeError as e:
        assert e.reason in {"malformed_json", "not_utf8", "unknown_kind", "invalid_fields"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10),
                                                                       children, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["schema", "submission_id", "procedure_code", "desk_id",
                                        "channel", "submitted_at", "applicant", "x"]),
                       json_values, max_size=8))
def test_decoder_only_raises_decode_errors_on_json(obj: dict[str, object]) -> None:
    if "schema" in obj and obj["schema"] is not None:
        obj["schema"] = "casebroker.dossier.submitted/v1"
    try:
        decode(json.dumps(obj).encode())
    except DecodeError as e:
        assert e.reason in {"unknown_kind", "invalid_fields"}


def test_published_asyncapi_document_matches_the_models() -> None:
    from pathlib import Path

    import yaml

    from broker.contract import asyncapi

    published = Path(__file__).parents[2] / "docs" / "asyncapi.yaml"
    assert yaml.safe_load(published.read_text()) == asyncapi(), (
        "docs/asyncapi.yaml is stale: casebroker schema --asyncapi > docs/asyncapi.yaml")


def test_the_contract_reads_as_commonmark_not_as_a_python_docstring() -> None:
    # the published text carried the docstrings' indentation, ``literals`` and a
    # :meth:`unsaid` role, which mean nothing to an integrator
    from broker.contract import asyncapi

    texts: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("summary", "description") and isinstance(value, str):
                    texts.append(value)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    doc = asyncapi()
    walk(doc)
    assert len(texts) > 20
    for text in texts:
        assert "``" not in text and not re.search(r":\w+:`", text), text
        assert "\n " not in text, text  # no docstring indentation
    status = doc["components"]["messages"]["dossier_status"]
    assert status["summary"] == ("agency → broker: a status update from the dossier's "
                                 "current assignee.")
    assert status["description"].startswith("`rejected` and `stopped` carry a `reason`")
    allowed = doc["components"]["schemas"]["AgencyStatus"]["description"]
    assert "\n- received (2): accepted, processing, supplement_requested, rejected, " \
        "resolved\n- processing (4):" in allowed


def test_new_ids_are_version_7_and_sort_by_time() -> None:
    ids = [new_id(unix_ms=ms, random_bits=bits) for ms, bits in
           ((1_800_000_000_002, 0), (1_800_000_000_000, (1 << 74) - 1), (1_800_000_000_001, 5))]
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert sorted(ids) == [ids[1], ids[2], ids[0]]  # by time, whatever the random bits
    assert ids[0].int >> 80 == 1_800_000_000_002  # the first 48 bits are the time in ms
    assert str(new_id(unix_ms=0, random_bits=0)) == "00000000-0000-7000-8000-000000000000"
    # the random bits survive whole around the version and variant fields
    assert new_id(unix_ms=0, random_bits=(1 << 74) - 1).int == (
        (0x7 << 76) | (0xFFF << 64) | (0b10 << 62) | ((1 << 62) - 1))
    now = new_id()
    assert now != new_id() and now.version == 7
    assert abs((now.int >> 80) / 1000 - datetime.now(UTC).timestamp()) < 60
    # a dossier takes one as its submission id, through the contract's UUID field
    assert decode(encode(dossier(submission_id=now))).submission_id == now


@pytest.mark.parametrize("kw", [{"unix_ms": -1}, {"unix_ms": 1 << 48}, {"random_bits": -1},
                                {"random_bits": 1 << 74}])
def test_new_id_refuses_what_does_not_fit(kw: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        new_id(**kw)


@pytest.mark.parametrize("when", ["0912345678", "1764460800", 1764460800, 1764460800.5,
                                  "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00",
                                  "1899-12-31T23:59:59+07:00", "3000-01-01T00:00:00+07:00"])
def test_a_time_is_iso_8601_never_seconds_since_1970(when: object) -> None:
    # pydantic alone reads these as Unix times: a phone number became a dossier received
    # in 1998, overdue on arrival (found by a review)
    body = json.loads(dossier().model_dump_json(by_alias=True)) | {"submitted_at": when}
    with pytest.raises(DecodeError) as refused:
        decode(json.dumps(body).encode(), content_type="application/json")
    assert refused.value.reason == "invalid_fields" and "submitted_at" in str(refused.value)
    assert str(when) not in str(refused.value)
    status = {"schema": "casebroker.dossier.status/v1", "update_id": str(uuid.uuid4()),
              "dossier_code": "T.UBND.A-261125-0001", "agency_id": "T.UBND.A",
              "status": "accepted", "sent_at": when}
    with pytest.raises(DecodeError, match="sent_at"):
        decode(json.dumps(status).encode(), content_type="application/json")
    for fine in ("2026-11-25T09:00:00+07:00", "1970-01-01T00:00:00Z",
                 "2999-12-31T23:59:59+07:00"):  # a desk clock reset to 1970: triaged later
        status["sent_at"] = fine
        assert decode(json.dumps(status).encode(), content_type="application/json")


def _status_body(status: str, **fields: object) -> bytes:
    return json.dumps({"schema": "casebroker.dossier.status/v1",
                       "update_id": str(uuid.uuid4()), "dossier_code": "T.UBND.A-261125-0001",
                       "agency_id": "T.UBND.A", "status": status,
                       "sent_at": "2026-11-25T10:00:00+07:00", **fields}).encode()


@pytest.mark.parametrize(("status", "fields", "words"), [
    ("rejected", {}, "a rejected status says why, in reason"),
    ("rejected", {"reason": "  "}, "a rejected status says why, in reason"),
    ("stopped", {"reason": None}, "a stopped status says why, in reason"),
    ("supplement_requested", {}, "names what the citizen is to bring"),
    ("supplement_requested", {"requested_documents": []}, "names what the citizen is to bring"),
    ("supplement_requested", {"requested_documents": [" "]}, "names what the citizen is to"),
])
def test_a_status_that_ends_or_pauses_a_dossier_says_why(
        status: str, fields: dict[str, object], words: str) -> None:
    # DOMAIN.md: a refusal is final "with reason"; the citizen is told what to bring. Not a
    # decode error (the status router answers it, and a message taken before the rule,
    # redelivered, is still the one applied): the update says what it leaves out
    unsaid = decode(_status_body(status, **fields)).unsaid()
    assert unsaid is not None and words in unsaid


@pytest.mark.parametrize(("status", "fields"), [
    ("rejected", {"reason": "không thuộc thẩm quyền"}),
    ("stopped", {"reason": "công dân không bổ sung"}),
    ("supplement_requested", {"requested_documents": ["Tờ khai"]}),
    ("supplement_requested", {"reason": "bản sao mờ, nộp lại"}),
    ("accepted", {}), ("processing", {}), ("resolved", {}), ("financial_obligation", {}),
])
def test_a_status_that_says_what_it_must_leaves_nothing_out(
        status: str, fields: dict[str, object]) -> None:
    assert decode(_status_body(status, **fields)).unsaid() is None


def test_the_published_schema_requires_what_the_status_must_say() -> None:
    rules = DossierStatus.model_json_schema()["allOf"]
    by_status = {json.dumps(r["if"]["properties"]["status"], sort_keys=True): r["then"]
                 for r in rules}
    assert by_status[json.dumps({"enum": ["rejected", "stopped"]})]["required"] == ["reason"]
    supplement = by_status[json.dumps({"const": "supplement_requested"})]["anyOf"]
    assert [r["required"] for r in supplement] == [["reason"], ["requested_documents"]]


@pytest.mark.parametrize("field", ["amount_vnd", "size"])
def test_a_number_no_json_reader_keeps_exact_is_refused(field: str) -> None:
    # 2**53 and above reach a JavaScript or a double-reading system changed
    doc = {"name": "a.pdf", "uri": "s3://d/1", "sha256": "a" * 64, "size": 10,
           "media_type": "application/pdf"}
    ok, too_big = 2**53 - 1, 2**53
    for value, taken in ((ok, True), (too_big, False)):
        fields: dict[str, object] = (
            {"amount_vnd": value} if field == "amount_vnd"
            else {"documents": [{**doc, "size": value}]})
        body = _status_body("financial_obligation", **fields)
        if taken:
            decode(body)
        else:
            with pytest.raises(DecodeError, match=field):
                decode(body)


@pytest.mark.parametrize("when", ["1899-12-31T23:00:00+07:00", "1900-01-01T00:00:00+07:00",
                                  "2026-11-25T09:00:00+07:00", "2999-12-31T09:00:00+07:00",
                                  "3000-01-01T00:00:00+07:00"])
def test_the_published_schema_bounds_years_as_decode_does(when: str) -> None:
    import re

    pattern = DossierStatus.model_json_schema()["properties"]["sent_at"]["pattern"]
    try:
        decode(_status_body("accepted", sent_at=when))
        taken = True
    except DecodeError:
        taken = False
    expected = 1900 <= int(when[:4]) <= 2999
    assert taken == expected and (re.match(pattern, when) is not None) == expected


def _returned_body(**fields: object) -> bytes:
    return json.dumps({"schema": "casebroker.dossier.returned/v1",
                       "event_id": str(uuid.uuid4()), "dossier_code": "T.UBND.A-261125-0001",
                       "desk_id": "T.MC.B", "returned_at": "2026-11-26T10:00:00+07:00",
                       **fields}).encode()


@pytest.mark.parametrize(("body", "field"), [
    (_returned_body(satisfaction=True), "satisfaction"),  # was a rating of 1: dissatisfied
    (_returned_body(satisfaction="5"), "satisfaction"),
    (_returned_body(satisfaction=4.5), "satisfaction"),
    (_status_body("financial_obligation", amount_vnd=True), "amount_vnd"),
    (_body(documents=[{"name": "a.pdf", "uri": "s3://d/1", "sha256": "a" * 64,
                       "size": "1000", "media_type": "application/pdf"}]), "size"),
], ids=["satisfaction_true", "satisfaction_string", "satisfaction_fraction", "amount_true",
        "size_string"])
def test_a_whole_number_is_a_json_number_as_the_published_schema_says(body: bytes,
                                                                       field: str) -> None:
    with pytest.raises(DecodeError, match=field) as e:
        decode(body)
    assert e.value.reason == "invalid_fields"
    assert decode(_returned_body(satisfaction=5)).satisfaction == 5  # type: ignore[union-attr]


@pytest.mark.parametrize("written", ["5", "5.0", "5e0"])
def test_a_whole_number_written_with_a_fraction_is_taken_as_json_schema_takes_it(
        written: str) -> None:
    # JSON Schema's integer (the published contract's) takes 5.0, as Jackson writes it: a
    # message the contract allows was dead-lettered as invalid_fields
    body = _returned_body(satisfaction=0).replace(b'"satisfaction": 0', (
        f'"satisfaction": {written}').encode())
    returned = decode(body)
    assert isinstance(returned, DossierReturned)
    assert returned.satisfaction == 5 and type(returned.satisfaction) is int
    schema = DossierReturned.model_json_schema()["properties"]["satisfaction"]
    assert {"type": "integer", "minimum": 1, "maximum": 5} in schema["anyOf"]


@pytest.mark.parametrize("changes", [
    {"procedure_code": "1.001193\n"}, {"procedure_code": "١.٠٠١١٩٣"},
    {"applicant": {"kind": "citizen", "name": "Nguyễn Văn An", "id_number": "066090001234",
                   "ward_code": "10001\n"}},
    {"applicant": {"kind": "citizen", "name": " ", "id_number": "066090001234"}},
    {"applicant": {"kind": "citizen", "name": "\u200b", "id_number": "066090001234"}},
    {"applicant": {"kind": "citizen", "name": "Nguyễn Văn An", "id_number": " \ufeff"}},
])
def test_codes_and_names_the_published_schema_refuses_are_refused(
        changes: dict[str, object]) -> None:
    """A newline after a code passed Python's $ (the dossier was triaged as unknown, and
    its notice echoed it); a name or id number of spaces or zero-width characters passed
    as one: agencies got dossiers of nobody."""
    with pytest.raises(DecodeError) as e:
        decode(_body(**changes))
    assert e.value.reason == "invalid_fields"


def test_every_published_schema_requires_schema_as_decode_does() -> None:
    # optional in the schema, its absence was dead-lettered as unknown_kind
    for kind, schema in json_schemas().items():
        assert schema["required"][0] == "schema", kind
        assert schema["required"].count("schema") == 1, kind
    with pytest.raises(DecodeError) as e:
        decode(_body(schema=None))
    assert e.value.reason == "unknown_kind"


@pytest.mark.parametrize(("content_type", "taken"), [
    ("application/json", True), ("application/json; charset=utf-8", True),
    ("Application/JSON;charset=\"UTF-8\"", True), ("application/json; charset=utf8", True),
    ("application/json; charset=iso-8859-1", False), ("application/json; profile=x", False),
    ("application/jsonx", False), ("text/json", False)])
def test_json_with_its_utf8_charset_said_is_json(content_type: str, taken: bool) -> None:
    """Many clients send application/json; charset=utf-8: it was dead-lettered as not
    JSON, its desk never told."""
    if taken:
        decode(_body(), content_type=content_type)
    else:
        with pytest.raises(DecodeError) as e:
            decode(_body(), content_type=content_type)
        assert e.value.reason == "wrong_content_type"


def test_what_casebroker_sends_is_taken_loosely_only_in_the_applicant_and_subject() -> None:
    # an applicant an earlier version took (a name of spaces) is taken as it is, so that
    # the SDK's inbox hands the result over; anything else outside the contract is not
    import json as _json

    from broker.errors import DecodeError
    from broker.messages import DeskNotice, NoticeKind, decode_sent, encode

    notice = _json.loads(encode(DeskNotice(
        notice=NoticeKind.RESULT_READY, dossier_code="T.UBND.A-261125-0001",
        submission_id=uuid.uuid4(), desk_id="T.MC.A", procedure_code="1.001193", state=9,
        issued_at=datetime(2026, 11, 25, 3, 0, tzinfo=UTC))))
    kinds = frozenset({"desk.notice"})
    old = {**notice, "applicant": {"kind": "citizen", "name": "   ", "id_number": "1"}}
    taken = decode_sent(_json.dumps(old).encode(), content_type=None, expected=kinds)
    assert isinstance(taken, DeskNotice) and taken.applicant is not None
    assert taken.applicant.name == "   "
    applicant = old["applicant"]
    for broken in ({**old, "state": 11},                      # elsewhere: refused
                   {**old, "applicant": {**applicant, "name": "An\x00"}},  # a NUL
                   {**notice, "state": 11},                   # no applicant to blame
                   # its shape is the contract's all the same (a review: each of these
                   # reached the handler, whose applicant.kind then raised)
                   {**old, "applicant": {"phone": "0912345678"}},
                   {**old, "applicant": {k: v for k, v in applicant.items() if k != "kind"}},
                   {**old, "applicant": {**applicant, "kind": "robot"}},
                   {**old, "applicant": {**applicant, "name": ["x"], "phone": 912345678}},
                   {**old, "applicant": {**applicant, "birth_date": "1990-01-01"}}):
        with pytest.raises(DecodeError):
            decode_sent(_json.dumps(broken).encode(), content_type=None, expected=kinds)
    with pytest.raises(DecodeError, match="unexpected_kind|not accepted"):
        decode_sent(_json.dumps(old).encode(), content_type=None,
                    expected=frozenset({"agency.notice"}))


def test_the_ledger_s_copy_is_taken_loosely_only_in_its_people_s_text() -> None:
    from pydantic import ValidationError

    from broker.messages import as_received

    stored = dossier().model_dump(mode="json")
    taken = as_received({**stored, "applicant": {**stored["applicant"], "name": " "},
                         "subject": {"ward_code": "10001\n"}})
    assert taken.applicant.name == " " and taken.subject is not None
    assert taken.subject.ward_code == "10001\n"
    for broken in ({"subject": {"ward_code": 10001}}, {"subject": {"area": "x"}},
                   {"applicant": {**stored["applicant"], "kind": None}}):
        with pytest.raises(ValidationError):
            as_received({**stored, **broken})


_DOC = {"name": "a.pdf", "uri": "s3://d/1", "sha256": "a" * 64, "size": 10,
        "media_type": "application/pdf"}


@pytest.mark.parametrize("body", [
    _status_body("supplement_requested", requested_documents=[" "]),
    _status_body("supplement_requested", requested_documents=[" ", "Tờ khai"]),
    _status_body("supplement_requested", requested_documents=["Tờ khai"]),
    _status_body("supplement_requested", reason=" "),
    _status_body("rejected", reason="\t"),
    _status_body("rejected", reason="\x1c"),  # blank to Python, not to ECMA's \S
    _status_body("rejected", reason="\ufeff"),  # blank to ECMA, not to Python's \s
    _status_body("rejected", reason="không thuộc thẩm quyền"),
    _status_body("financial_obligation", amount_vnd=150000.0),
    _status_body("financial_obligation", amount_vnd=1.5),
    _status_body("resolved", documents=[{**_DOC, "size": 123.0}]),
    _status_body("resolved", documents=[{**_DOC, "size": -1}]),
    _returned_body(satisfaction=5.0), _returned_body(satisfaction=4.5),
    _returned_body(satisfaction=True), _returned_body(satisfaction="5"),
    _returned_body(satisfaction=6),
    _body(), _body(procedure_code="1.00119"), _body(desk_id="T MC"),
], ids=["blank-documents", "one-document-shows", "documents", "blank-reason",
        "tab-reason", "file-separator-reason", "bom-reason", "reason", "amount-150000.0",
        "amount-1.5", "size-123.0", "size--1",
        "rating-5.0", "rating-4.5", "rating-true", "rating-'5'", "rating-6", "dossier",
        "short-procedure-code", "desk-id-with-space"])
def test_the_published_contract_takes_what_casebroker_takes_and_no_more(body: bytes) -> None:
    # an integrator checks a message with a JSON Schema validator against the AsyncAPI
    # document before sending it; what passes must be taken (it was dead-lettered: 5.0 for
    # an integer) and answered as it would be, and what fails must not be (the schema took
    # [" "] as the documents to bring, which the status router refuses)
    from pathlib import Path

    import jsonschema
    import yaml

    doc = yaml.safe_load((Path(__file__).parents[2] / "docs" / "asyncapi.yaml").read_text())
    data = json.loads(body)
    name = data["schema"].removeprefix("casebroker.").split("/")[0].replace(".", "_")
    validator = jsonschema.Draft7Validator(
        {"$ref": f"#/components/schemas/{name}", "components": doc["components"]})
    published_takes = validator.is_valid(data)
    try:
        message = decode(body)
        taken = not isinstance(message, DossierStatus) or message.unsaid() is None
    except DecodeError:
        taken = False
    assert published_takes == taken
