"""The screen every consumer runs first (redelivery, duplicates, contract), called directly
on a real ledger (SQLite and PostgreSQL): what it publishes for repeats and for odd AMQP headers."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from pika.spec import BasicProperties
from sqlalchemy import func, select

from broker.amqp import DETAIL_HEADER, REASON_HEADER, REPLAY_OF_HEADER, Delivery
from broker.consumers.common import ORIGINAL_SIZE_HEADER
from broker.consumers.router import Router
from broker.consumers.status import StatusRouter
from broker.envelope import Outbound
from broker.ledger import Ledger, inbox, outbox
from broker.messages import (
    CONTENT_TYPE,
    MAX_BODY_BYTES,
    DossierStatus,
    DossierSubmitted,
    encode,
)
from broker.ops.deadletters import closed_in_ledger
from broker.rules.catalog import load_catalog, parse_catalog
from broker.rules.engine import Engine
from broker.tables import code_sequences
from broker.topology import Topology
from tests.conftest import MINI_CATALOG
from tests.helpers import dossier, said
from tests.helpers import intake_delivery as _delivery

pytestmark = pytest.mark.integration


@pytest.fixture
def router(ledger: Ledger) -> Router:
    engine = Engine(load_catalog(MINI_CATALOG))
    return Router(lambda: engine, ledger, Topology("t"))


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
    assert headers["x-raw"] == "\\xff\\x00ok"  # a NUL escaped too: PostgreSQL's text has none
    assert headers["x-when"] == when.isoformat()
    assert headers["x-amount"] == "1.50"
    assert headers["x-nested"] == {"list": ["\\xfe", 3]}
    json.dumps(headers)
    # a redelivery re-publishes the very same dead letter from the outbox
    assert _sent(router.handle([bad])) == _sent(dead)


def test_a_body_over_the_size_limit_costs_the_ledger_no_more_than_the_limit(
        router: Router) -> None:
    # RabbitMQ takes messages up to 128 MB; one refused for its size keeps its first
    # MAX_BODY_BYTES bytes in its dead letter, which the outbox stores whole
    huge = b'{"schema": "casebroker.dossier.submitted/v1", "pad": "' + b"x" * (3 << 20) + b'"}'
    out = router.handle([_delivery(1, huge, "big:1"), _delivery(2, encode(dossier()), "ok:2")])
    (dead,) = [o for o in out if o.headers and REASON_HEADER in o.headers]
    assert dead.headers is not None and dead.headers[REASON_HEADER] == "too_large"
    assert dead.body == huge[:MAX_BODY_BYTES]
    assert dead.headers[ORIGINAL_SIZE_HEADER] == len(huge)
    with router.ledger.read() as conn:
        stored = conn.execute(select(func.max(func.length(outbox.c.body)))).scalar()
    assert stored == MAX_BODY_BYTES
    assert _sent(router.handle([_delivery(1, huge, "big:1")])) == _sent([dead])
    assert router.ledger.count_inbox_outcomes() == {"dead:too_large": 1, "routed": 1}


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


def _receipts(out: list[Outbound]) -> list[tuple[str, str, bytes]]:
    """The intake desk's receipts and refusals (not its held notices)."""
    return [s for s in _sent(out) if s[0] == "T.MC.B" and not s[1].endswith(":held")]


def test_the_same_dossier_under_a_new_message_id_gets_its_first_notice_again(
        router: Router) -> None:
    # a desk retrying with a fresh message id (it lost the receipt, or its outbox did not
    # keep the id): no second dossier, and the very receipt it was sent the first time
    d = dossier()
    first = router.handle([_delivery(1, encode(d), "submit:1")])
    receipt = _receipts(first)
    assert len(receipt) == 1 and json.loads(receipt[0][2])["notice"] == "receipt"
    # the same values, serialized another way: other key order, another offset; and a
    # retry stamped with the time of the retry (the dossier keeps its first time)
    data = json.loads(encode(d))
    data["submitted_at"] = d.submitted_at.astimezone(ZoneInfo("Asia/Ho_Chi_Minh")).isoformat()
    reordered = json.dumps(dict(reversed(list(data.items())))).encode()
    restamped = d.model_copy(update={"submitted_at": datetime.now(UTC)})
    again = router.handle([_delivery(2, encode(d), "retry:1"),
                           _delivery(3, reordered, "retry:2"),
                           _delivery(5, encode(restamped), "retry:3")])
    assert _sent(again) == receipt * 3
    assert router.ledger.count_inbox_outcomes() == {"routed": 1, "duplicate": 3}
    assert router.ledger.count_by_state() == {2: 1}
    # the retry redelivered: its own outbox row, the same receipt
    assert _sent(router.handle([_delivery(4, encode(d), "retry:1")])) == receipt


def test_a_refused_dossier_sent_again_gets_its_refusal_again(router: Router) -> None:
    d = dossier("1.000002", desk_id="T.MC.B")  # not open to boundary-free receipt there
    refusal = _sent(router.handle([_delivery(1, encode(d), "submit:1")]))
    assert [json.loads(b)["notice"] for _, _, b in refusal] == ["refused"]
    assert _sent(router.handle([_delivery(2, encode(d), "retry:1")])) == refusal


def test_a_different_dossier_under_a_used_submission_id_is_dead_lettered(
        router: Router) -> None:
    # a desk reused a submission id for another citizen's dossier: treated as a duplicate
    # it would vanish without a word; it is dead-lettered, naming the fields that differ
    d = dossier()
    router.handle([_delivery(1, encode(d), "submit:1")])
    other = d.model_copy(update={
        "applicant": d.applicant.model_copy(update={"name": "Trần Thị Bình"}),
        "procedure_code": "1.004227"})
    out = router.handle([_delivery(2, encode(other), "submit:2")])
    assert len(out) == 2 and out[0].headers is not None  # the dead letter, the desk's notice
    assert out[0].routing_key == "intake" and out[0].body == encode(other)
    assert [n["notice"] for n in _held(out)] == ["held"]
    assert out[0].headers[REASON_HEADER] == "submission_id_reused"
    detail = out[0].headers[DETAIL_HEADER]
    assert "applicant" in detail and "procedure_code" in detail and "Bình" not in detail
    code = next(iter(router.ledger.states_for_submissions([str(d.submission_id)]).values()))[0]
    assert code in detail
    assert router.ledger.count_inbox_outcomes() == {"routed": 1,
                                                    "dead:submission_id_reused": 1}
    assert router.ledger.count_by_state() == {2: 1}
    # replayed, it is still another dossier: only a copy held in triage before a
    # corrected one opened the dossier is the same submission (answered with its receipt)
    out = router.handle([_delivery(3, encode(other), "submit:2#replay1",
                                   **{REPLAY_OF_HEADER: "submit:2"})])
    assert out[0].headers is not None and out[0].headers[REASON_HEADER] == \
        "submission_id_reused"
    assert [n["notice"] for n in _held(out)] == ["held"]


def test_a_stale_triage_copy_gets_the_receipt_of_its_own_desks_correction_only(
        router: Router) -> None:
    # held in triage (no such procedure), then sent again corrected: replayed, the stale
    # copy gets the dossier's receipt again; but if another desk's dossier took the free
    # id meanwhile, it is another citizen's, and this copy's desk is told to send it again
    def replay(tag: int, d: DossierSubmitted, original: str) -> list[Outbound]:
        return router.handle([_delivery(tag, encode(d), f"{original}#replay1",
                                        **{REPLAY_OF_HEADER: original})])

    stale = dossier("9.999999", desk_id="T.MC.B")
    router.handle([_delivery(1, encode(stale), "submit:1")])
    fixed = stale.model_copy(update={"procedure_code": "1.001193"})
    (receipt,) = _receipts(router.handle([_delivery(2, encode(fixed), "submit:2")]))
    assert receipt[1].endswith(":receipt")
    assert _sent(replay(3, stale, "submit:1")) == [receipt]

    theirs = dossier("9.999999", desk_id="T.MC.B")
    router.handle([_delivery(4, encode(theirs), "submit:4")])
    other = theirs.model_copy(update={"procedure_code": "1.001193", "desk_id": "T.MC.A"})
    router.handle([_delivery(5, encode(other), "submit:5")])  # desk A's, under B's id
    out = replay(6, theirs, "submit:4")
    assert out[0].headers is not None and out[0].headers[REASON_HEADER] == \
        "submission_id_reused"
    assert [(n["notice"], n["desk_id"]) for n in _held(out)] == [("held", "T.MC.B")]
    assert router.ledger.count_by_state() == {2: 2}
    # the operator's list says the same: only the first copy was received since
    copies = [{"queue": "triage", "body": json.loads(encode(d))} for d in (stale, theirs)]
    closed_in_ledger(router.ledger, copies)
    assert [f["opened"] for f in copies] == [receipt[1].removesuffix(":receipt"), None]


def test_a_phone_number_in_an_id_field_is_not_quoted_in_a_detail(router: Router) -> None:
    # the contract's pattern for desk ids lets digits through: a desk system that put the
    # citizen's phone there has its dossier triaged, and the detail does not repeat it
    out = router.handle([_delivery(1, encode(dossier(desk_id="0905123456789")), "submit:1")])
    (triaged,) = out
    assert triaged.headers is not None and triaged.headers[REASON_HEADER] == "unknown_desk"
    assert triaged.headers[DETAIL_HEADER] == \
        "desk <13 characters withheld: a phone or id number?> is not in the catalog"
    assert "0905123456789" not in json.dumps(triaged.headers)


def test_copies_of_a_submission_in_one_batch_are_told_apart_too(router: Router) -> None:
    d = dossier()
    other = d.model_copy(update={"attributes": {"copies": 2}})
    out = router.handle([_delivery(1, encode(d), "submit:1"),
                         _delivery(2, encode(d), "retry:1"),
                         _delivery(3, encode(other), "other:1")])
    receipt = _receipts(out)
    assert len(receipt) == 2 and receipt[0] == receipt[1]
    dead = [o for o in out if o.headers and REASON_HEADER in o.headers]
    assert [o.message_id for o in dead] == ["other:1"]
    assert dead[0].headers is not None and "attributes" in dead[0].headers[DETAIL_HEADER]
    assert router.ledger.count_inbox_outcomes() == {
        "routed": 1, "duplicate": 1, "dead:submission_id_reused": 1}


def _held(out: list[Outbound]) -> list[dict[str, object]]:
    return [json.loads(o.body) for o in out
            if json.loads(o.body).get("notice") == "held"]


def test_a_desk_is_told_its_dossier_was_held_and_why_but_not_whose_id_it_took(
        router: Router) -> None:
    # triaged: the desk would wait for a receipt that is not coming; it gets a held
    # notice (no dossier code, state 1, the reason), and a redelivery the same one again
    lost = dossier(applicant_ward="99999")  # a ward no unit serves
    out = router.handle([_delivery(1, encode(lost), "submit:1")])
    assert [o.routing_key for o in out] == ["triage", "T.MC.B"]
    (held,) = _held(out)
    assert "dossier_code" not in held and held["state"] == 1
    assert held["submission_id"] == str(lost.submission_id)
    assert str(held["reason"]).startswith("area_not_served: ")
    assert out[1].message_id == "submit:1:held" and out[1].correlation_id is None
    assert _sent(router.handle([_delivery(2, encode(lost), "submit:1")])) == _sent(out)
    # a desk the catalog does not know has no queue to be told in
    stray = dossier(desk_id="T.NOWHERE")
    out = router.handle([_delivery(3, encode(stray), "submit:3")])
    assert [o.routing_key for o in out] == ["triage"]
    # another dossier under a taken submission id: told it was not received and what to
    # do, never which dossier holds the id (the dead letter's detail, for operators, does)
    d = dossier()
    router.handle([_delivery(4, encode(d), "submit:4")])
    code = next(iter(router.ledger.states_for_submissions([str(d.submission_id)]).values()))[0]
    other = d.model_copy(update={"procedure_code": "1.004227"})
    out = router.handle([_delivery(5, encode(other), "submit:5")])
    assert [o.routing_key for o in out] == ["intake", "T.MC.B"]
    (held,) = _held(out)
    assert "dossier_code" not in held and str(held["reason"]).startswith(
        "submission_id_reused: ")
    assert code in str(out[0].headers) and code not in out[1].body.decode()
    assert _sent(router.handle([_delivery(6, encode(other), "submit:5")])) == _sent(out)
    # a body outside the contract that still names its desk, submission and procedure:
    # told it was not received, and what is wrong (never the value it sent)
    broken = json.loads(encode(dossier()))
    broken["applicant"]["ward_code"] = "ward 1"
    out = router.handle([_delivery(7, json.dumps(broken).encode(), "submit:7")])
    assert [o.routing_key for o in out] == ["intake", "T.MC.B"]
    (held,) = _held(out)
    assert str(held["reason"]).startswith("invalid_fields: applicant.ward_code: ")
    assert "ward 1" not in str(held["reason"])
    assert router.ledger.count_inbox_outcomes() == {
        "triaged:area_not_served": 1, "triaged:unknown_desk": 1, "routed": 1,
        "dead:submission_id_reused": 1, "dead:invalid_fields": 1}


def test_a_dossier_dated_before_the_catalogs_bound_is_triaged_and_can_come_again(
        ledger: Ledger) -> None:
    # a desk whose clock was reset to 2000: its dossier would be numbered and due in 2000,
    # overdue on arrival. Triaged; once the clock is fixed, the desk sends it again
    bounded = Engine(parse_catalog(MINI_CATALOG.read_bytes().replace(
        b"\nagencies:", b"\nmax_backdate_days: 30\nagencies:"), "mini.yaml"))
    router = Router(lambda: bounded, ledger, Topology("t"))
    wrong = dossier(submitted_at="2000-01-01T08:00:00+07:00")
    out = router.handle([_delivery(1, encode(wrong), "submit:1")])
    assert [o.routing_key for o in out] == ["triage", "T.MC.B"] and out[0].headers is not None
    assert out[0].headers[REASON_HEADER] == "submitted_long_ago"
    assert str(_held(out)[0]["reason"]).startswith("submitted_long_ago: ")
    assert ledger.count_by_state() == {}
    # sent again by the SDK, under the same message id (submit:<submission id>): a copy
    # that differs from the triaged one is no redelivery
    fixed = wrong.model_copy(update={"submitted_at": datetime.now(UTC)})
    out = router.handle([_delivery(2, encode(fixed), "submit:1")])
    assert [json.loads(o.body).get("notice") for o in out] == [None, "receipt"]
    assert ledger.count_by_state() == {2: 1}
    # the same within one batch: the triaged copy opened no dossier, so the corrected one
    # is decided afresh, not taken for a reuse of its submission id
    wrong, fixed = (d.model_copy(update={"submission_id": uuid.uuid4()}) for d in (wrong, fixed))
    out = router.handle([_delivery(3, encode(wrong), "submit:2"),
                         _delivery(4, encode(fixed), "submit:2")])
    assert [o.routing_key for o in out] == ["triage", "T.MC.B", "T.UBND.A", "T.MC.B"]
    assert ledger.count_by_state() == {2: 2}


def test_a_dossier_replayed_from_triage_long_after_is_dated_by_its_first_arrival(
        ledger: Ledger) -> None:
    # triaged because the catalog served no unit for its ward; the catalog is fixed 40
    # days later and the dossier replayed. Its desk sent it in time: the limit on
    # backdating is for desks' clocks, not for the broker's own triage, so it is routed
    # as it would have been, not triaged again as submitted long ago
    text = MINI_CATALOG.read_bytes().replace(b"\nagencies:", b"\nmax_backdate_days: 30\nagencies:")
    fixed = Engine(parse_catalog(text, "mini.yaml"))
    lacking = Engine(parse_catalog(text.replace(b'serves: ["10001"]', b'serves: ["19999"]'),
                                   "mini.yaml"))
    engine, now = [lacking], [datetime(2026, 11, 25, 3, 0, tzinfo=UTC)]
    router = Router(lambda: engine[0], ledger, Topology("t"), clock=lambda: now[0])
    d = dossier()  # submitted 2026-11-25 02:00 UTC, an hour before
    out = router.handle([_delivery(1, encode(d), "submit:1")])
    assert [o.routing_key for o in out] == ["triage", "T.MC.B"]
    engine[0], now[0] = fixed, now[0] + timedelta(days=40)
    replayed = _delivery(2, encode(d), "submit:1#replay1", **{REPLAY_OF_HEADER: "submit:1"})
    out = router.handle([replayed])
    assert [o.routing_key for o in out] == ["T.UBND.A", "T.MC.B"]
    assigned = json.loads(out[0].body)
    assert datetime.fromisoformat(assigned["received_at"]) == d.submitted_at
    # a header naming the delivery of another submission counts for nothing
    late = dossier()
    forged = _delivery(3, encode(late), "submit:3", **{REPLAY_OF_HEADER: "submit:1"})
    out = router.handle([forged])
    assert out[0].routing_key == "triage" and out[0].headers is not None
    assert out[0].headers[REASON_HEADER] == "submitted_long_ago"
    assert ledger.count_inbox_outcomes() == {"triaged:area_not_served": 1, "routed": 1,
                                             "triaged:submitted_long_ago": 1}


def test_a_changed_dossier_under_a_used_message_id_is_not_taken_for_a_redelivery(
        router: Router) -> None:
    # the SDK's message id is submit:<submission id>: a desk that changes a dossier and
    # submits it again under its submission id sends it under the same message id. That
    # is no redelivery (whose re-publish would drop the change without a word): it is
    # checked as a submission, so a different dossier under a taken id is dead-lettered
    d = dossier()
    first = router.handle([_delivery(1, encode(d), "submit:1")])
    other = d.model_copy(update={"procedure_code": "1.004227"})
    out = router.handle([_delivery(2, encode(other), "submit:1")])
    assert len(out) == 2 and out[0].headers is not None and out[0].body == encode(other)
    assert out[0].headers[REASON_HEADER] == "submission_id_reused"
    assert "procedure_code" in out[0].headers[DETAIL_HEADER]
    # its redelivery finds it: the same dead letter, not a second judgement
    assert _sent(router.handle([_delivery(3, encode(other), "submit:1")])) == _sent(out)
    # the SDK retrying the first dossier stamps a new submitted_at, which may decide
    # routing: judged again, the same dossier, so its receipt again and nothing more
    restamped = d.model_copy(update={"submitted_at": datetime.now(UTC)})
    assert _sent(router.handle([_delivery(4, encode(restamped), "submit:1")])) == \
        _receipts(first)
    # the same two within one batch: the changed copy is dead-lettered, nothing doubled
    d2 = dossier()
    other2 = d2.model_copy(update={"attributes": {"copies": 2}})
    out = router.handle([_delivery(5, encode(d2), "submit:2"),
                         _delivery(6, encode(other2), "submit:2"),
                         _delivery(7, encode(other2), "submit:2")])
    dead = [o for o in out if o.headers and REASON_HEADER in o.headers]
    assert len(out) == 4 and len(dead) == 1 and dead[0].body == encode(other2)
    assert len(_held(out)) == 1
    assert router.ledger.count_inbox_outcomes() == {
        "routed": 2, "duplicate": 1, "dead:submission_id_reused": 2}
    assert router.ledger.count_by_state() == {2: 2}


def test_a_dead_lettered_dossier_corrected_under_its_message_id_is_routed(
        router: Router) -> None:
    # the first copy broke the contract (a ward code of letters) and opened no dossier;
    # the desk corrects it and submits it again under the same id: decided afresh
    d = dossier()
    data = json.loads(encode(d))
    data["applicant"]["ward_code"] = "ward 1"
    told = router.handle([_delivery(1, json.dumps(data).encode(), "submit:1")])
    assert [o.headers[REASON_HEADER] for o in told if o.headers] == ["invalid_fields"]
    assert [json.loads(o.body)["notice"] for o in told if not o.headers] == ["held"]
    out = router.handle([_delivery(2, encode(d), "submit:1")])
    assert [json.loads(o.body)["schema"] for o in out] == [
        "casebroker.dossier.assigned/v1", "casebroker.desk.notice/v1"]
    assert router.ledger.count_by_state() == {2: 1}
    # and both, redelivered together, publish what each published
    again = router.handle([_delivery(3, json.dumps(data).encode(), "submit:1"),
                           _delivery(4, encode(d), "submit:1")])
    assert _sent(again) == _sent(told) + _sent(out)
    assert router.ledger.count_by_state() == {2: 1}


def test_a_message_recorded_without_a_fingerprint_is_redelivered_as_before(
        router: Router) -> None:
    # inbox rows written before fingerprints were kept (NULL after `ledger upgrade`):
    # any copy under such an id is taken for a redelivery, as that version did
    d = dossier()
    first = router.handle([_delivery(1, encode(d), "submit:1")])
    with router.ledger.engine.begin() as conn:
        conn.execute(inbox.update().values(fingerprint=None))
    other = d.model_copy(update={"procedure_code": "1.004227"})
    assert _sent(router.handle([_delivery(2, encode(other), "submit:1")])) == _sent(first)


def _status(agency: str, code: str, status: str, update_id: uuid.UUID,
            **fields: object) -> bytes:
    return encode(DossierStatus(update_id=update_id, dossier_code=code, agency_id=agency,
                                status=status, sent_at=datetime.now(UTC),
                                **said(status, **fields)))


def _status_delivery(tag: int, body: bytes, message_id: str,
                     user_id: str | None = None) -> Delivery:
    return Delivery(tag, body, BasicProperties(
        content_type=CONTENT_TYPE, message_id=message_id, type="dossier.status",
        user_id=user_id), True, "status")


def _one_routed(router: Router) -> tuple[str, str, StatusRouter]:
    """A dossier routed: its code, its agency, and a status router for its updates."""
    assigned = json.loads(router.handle([_delivery(1, encode(dossier()), "submit:1")])[0].body)
    return (assigned["dossier_code"], assigned["agency_id"],
            StatusRouter(router.engine, router.ledger, Topology("t")))


def test_a_status_update_changed_under_an_applied_id_is_dead_lettered(
        router: Router) -> None:
    code, agency, status = _one_routed(router)
    u1 = uuid.uuid4()
    applied = status.handle([_status_delivery(1, _status(agency, code, "accepted", u1),
                                              f"status:{u1}")])
    # the SDK retrying it stamps a new sent_at: the same update, its messages again
    assert _sent(status.handle([_status_delivery(
        2, _status(agency, code, "accepted", u1), f"status:{u1}")])) == _sent(applied)
    # another status under the same update id would apply a second change: refused, and
    # the agency told so (under an id of this copy's own: not the first update's)
    changed = _status(agency, code, "resolved", u1)
    out = status.handle([_status_delivery(3, changed, f"status:{u1}")])
    assert len(out) == 2 and out[0].headers is not None and out[0].body == changed
    assert out[0].headers[REASON_HEADER] == "message_id_reused"
    assert "as applied" in out[0].headers[DETAIL_HEADER]
    told = json.loads(out[1].body)
    assert (out[1].exchange, out[1].routing_key) == ("t.agency", agency)
    assert told["notice"] == "update_refused" and told["state"] == 4
    assert told["reason"].startswith("message_id_reused: its message id was processed")
    assert out[1].message_id.startswith(f"{code}:update_refused:status:{u1}#")
    assert _sent(status.handle([_status_delivery(4, changed, f"status:{u1}")])) == _sent(out)
    row = router.ledger.dossier(code)
    assert row is not None and row["state"] == 4  # processing, not resolved
    # an update refused before changed nothing: corrected, under its id, it is applied
    u2 = uuid.uuid4()
    refused = status.handle([_status_delivery(5, _status(agency, code, "rejected", u2),
                                              f"status:{u2}")])
    assert [json.loads(o.body)["notice"] for o in refused] == ["update_refused"]
    status.handle([_status_delivery(6, _status(agency, code, "resolved", u2), f"status:{u2}")])
    row = router.ledger.dossier(code)
    assert row is not None and row["state"] == 9
    assert router.ledger.count_inbox_outcomes() == {
        "routed": 1, "applied": 2, "refused_update": 1, "dead:message_id_reused": 1}


def _handled(status: StatusRouter, copies: list[Delivery], one_batch: bool) -> list[Outbound]:
    """What the status router publishes for ``copies``: in one batch, or one by one."""
    return (status.handle(copies) if one_batch
            else [o for c in copies for o in status.handle([c])])


@pytest.mark.parametrize("one_batch", [False, True], ids=["batch_by_batch", "one_batch"])
def test_a_message_id_spent_by_a_corrected_copy_is_not_applied_again(
        router: Router, one_batch: bool) -> None:
    # refused, then corrected and applied under the same id: a third copy, different
    # again, was judged against the first copy's refusal and applied too (found by a
    # review: 4 -> 5 -> 8 under one update id)
    code, agency, status = _one_routed(router)
    u0, u = uuid.uuid4(), uuid.uuid4()
    status.handle([_status_delivery(1, _status(agency, code, "processing", u0), f"status:{u0}")])
    status.handle([_status_delivery(2, _status(agency, code, "rejected", u), f"status:{u}")])
    corrected = _status_delivery(3, _status(agency, code, "supplement_requested", u,
                                            requested_documents=["CCCD"]), f"status:{u}")
    third = _status_delivery(4, _status(agency, code, "stopped", u, reason="khác"),
                             f"status:{u}")
    out = _handled(status, [corrected, third], one_batch)
    row = router.ledger.dossier(code)
    assert row is not None and row["state"] == 5  # supplement requested, not stopped
    assert [o.headers[REASON_HEADER] for o in out if o.headers] == ["message_id_reused"]
    assert router.ledger.count_inbox_outcomes() == {
        "routed": 1, "applied": 2, "refused_update": 1, "dead:message_id_reused": 1}


@pytest.mark.parametrize("one_batch", [False, True], ids=["batch_by_batch", "one_batch"])
def test_a_batch_judges_copies_under_one_id_as_the_same_copies_one_by_one(
        router: Router, one_batch: bool) -> None:
    # a corrected update right behind its refused first copy was dead-lettered as
    # message_id_reused when both came in one batch, and applied when they came apart
    code, agency, status = _one_routed(router)
    u, v = uuid.uuid4(), uuid.uuid4()
    copies = [
        _status_delivery(1, _status(agency, code, "financial_obligation", u), f"status:{u}"),
        _status_delivery(2, _status(agency, code, "stopped", u, reason="khác"), f"status:{u}"),
        _status_delivery(3, _status(agency, code, "accepted", u), f"status:{u}"),
        _status_delivery(4, _status(agency, code, "rejected", u, reason="khác"), f"status:{u}"),
        _status_delivery(5, _status(agency, code, "supplement_requested", v,
                                    requested_documents=["CCCD"]), f"status:{v}"),
        _status_delivery(6, _status(agency, code, "stopped", v, reason="khác"), f"status:{v}"),
    ]
    out = _handled(status, copies, one_batch)
    # refused, refused again (answered under its own id), applied; the fourth under a
    # spent id, the sixth under one applied first: dead-lettered, their senders told
    told = [(json.loads(o.body).get("notice"), o.headers.get(REASON_HEADER) if o.headers
             else None) for o in out]
    assert told == [("update_refused", None), ("update_refused", None),
                    ("status_changed", None), (None, "message_id_reused"),
                    ("update_refused", None), ("supplement_requested", None),
                    (None, "message_id_reused"), ("update_refused", None)]
    assert [o.headers[DETAIL_HEADER].split(",")[1] for o in out
            if o.headers and REASON_HEADER in o.headers] == [" as applied"] * 2
    row = router.ledger.dossier(code)
    assert row is not None and row["state"] == 5
    assert router.ledger.count_inbox_outcomes() == {
        "routed": 1, "applied": 2, "refused_update": 2, "dead:message_id_reused": 2}


def test_a_changed_copy_the_handler_failed_on_is_recorded_under_its_own_id(
        router: Router, caplog: pytest.LogCaptureFixture) -> None:
    # recorded under the message id, its row collided with the first copy's and was lost
    # ("not recorded"), and a redelivery of it was judged afresh after its dead letter
    code, agency, status = _one_routed(router)
    u = uuid.uuid4()
    status.handle([_status_delivery(1, _status(agency, code, "accepted", u), f"status:{u}")])
    changed = _status_delivery(2, _status(agency, code, "resolved", u), f"status:{u}")
    dead = status.internal_error(changed, RuntimeError("a bug"))
    assert "not recorded" not in caplog.text
    assert _sent(status.handle([changed])) == _sent(dead)  # its dead letter again, alone
    assert dead[0].headers is not None and dead[0].headers[REASON_HEADER] == "internal_error"
    assert router.ledger.count_inbox_outcomes() == {
        "routed": 1, "applied": 1, "dead:internal_error": 1}
    # the first copy's own redelivery is still its own
    first = status.handle([_status_delivery(3, _status(agency, code, "accepted", u),
                                            f"status:{u}")])
    assert [json.loads(o.body)["notice"] for o in first] == ["status_changed"]


def test_a_corrected_update_refused_again_is_answered_under_an_id_of_its_own(
        router: Router) -> None:
    # its refusal went out under the first refusal's id, with other words: a receiver
    # dropping repeats by id never read why the correction was refused (found by a review)
    code, agency, status = _one_routed(router)
    u = uuid.uuid4()
    first = status.handle([_status_delivery(1, _status(agency, code, "financial_obligation",
                                                       u), f"status:{u}")])
    again = status.handle([_status_delivery(2, _status(agency, code, "stopped", u,
                                                       reason="khác"), f"status:{u}")])
    told = [json.loads(o.body) for o in first + again]
    assert [t["notice"] for t in told] == ["update_refused", "update_refused"]
    assert "financial_obligation" in told[0]["reason"] and "stopped" in told[1]["reason"]
    assert first[0].message_id == f"{code}:update_refused:{u}"
    assert again[0].message_id.startswith(f"{code}:update_refused:status:{u}#")


def test_a_refusal_for_the_longest_dossier_code_keeps_its_id_within_the_outbox(
        ledger: Ledger) -> None:
    # a 64-character agency id and a five-digit daily number make a 77-character code;
    # "<code>:update_refused:<update id>" is then 129 characters, one over the column
    long_id = "T.UBND." + "A" * 57
    engine = Engine(parse_catalog(MINI_CATALOG.read_bytes().replace(
        b"T.UBND.A", long_id.encode()), "mini.yaml"))
    with ledger.engine.begin() as conn:  # the unit's 9,999th dossier of the day is behind it
        conn.execute(code_sequences.insert().values(agency_id=long_id, day="261125",
                                                    last=9999))
    router = Router(lambda: engine, ledger, Topology("t"))
    assigned = json.loads(router.handle([_delivery(1, encode(dossier()), "submit:1")])[0].body)
    code = assigned["dossier_code"]
    assert code == f"{long_id}-261125-10000"
    status = StatusRouter(lambda: engine, ledger, Topology("t"))
    u1, u2 = uuid.uuid4(), uuid.uuid4()
    status.handle([_status_delivery(1, _status(long_id, code, "accepted", u1), "s:1")])
    out = status.handle([_status_delivery(2, _status(long_id, code, "rejected", u2), "s:2")])
    assert [json.loads(o.body)["notice"] for o in out] == ["update_refused"]
    assert len(out[0].message_id) == 128 and out[0].message_id.startswith(code[:40])
    assert _sent(status.handle([_status_delivery(3, _status(long_id, code, "rejected", u2),
                                                 "s:2")])) == _sent(out)
    assert ledger.count_inbox_outcomes() == {"routed": 1, "applied": 1, "refused_update": 1}


def test_a_message_id_longer_than_the_inbox_holds_is_kept_by_a_digest(
        router: Router) -> None:
    # AMQP allows 255 characters, the ledger keeps 128: a longer id is shortened with a
    # digest of the whole, so it is routed on PostgreSQL as on SQLite, and once
    d1, d2 = dossier(), dossier()
    long_id, other_id = "x" * 200 + "-1", "x" * 200 + "-2"  # alike in what is kept
    first = router.handle([_delivery(1, encode(d1), long_id)])
    assert len(first) == 2
    assert len(router.handle([_delivery(2, encode(d2), other_id)])) == 2
    assert _sent(router.handle([_delivery(3, encode(d1), long_id)])) == _sent(first)
    assert router.ledger.count_by_state() == {2: 2}


def test_a_held_notice_for_a_message_id_the_inbox_only_just_holds_fits_the_outbox(
        router: Router) -> None:
    # the notice's id is the delivery's plus ":held": from an id of 128 characters that
    # would not fit the outbox's column, and PostgreSQL would fail the whole batch
    lost = dossier(applicant_ward="99999")
    out = router.handle([_delivery(1, encode(lost), "x" * 128)])
    assert [o.routing_key for o in out] == ["triage", "T.MC.B"]
    assert len(out[1].message_id) == 128 and out[1].message_id.startswith("x" * 40)
    assert _sent(router.handle([_delivery(2, encode(lost), "x" * 128)])) == _sent(out)
    assert router.ledger.count_inbox_outcomes() == {"triaged:area_not_served": 1}


def test_a_stranger_reusing_an_applied_update_id_is_named_a_stranger(router: Router) -> None:
    # with one RabbitMQ user per party, a changed copy under an applied update's id from
    # another login is a sender mismatch first: that reason says more than the reuse
    assigned = json.loads(router.handle([_delivery(1, encode(dossier()), "submit:1")])[0].body)
    code, agency = assigned["dossier_code"], assigned["agency_id"]
    status = StatusRouter(router.engine, router.ledger, Topology("t"), party_users=True)
    u1 = uuid.uuid4()
    status.handle([_status_delivery(1, _status(agency, code, "accepted", u1), f"status:{u1}",
                                    user_id=f"t.{agency}")])
    changed = _status(agency, code, "resolved", u1)
    out = status.handle([_status_delivery(2, changed, f"status:{u1}", user_id="t.T.MC.B")])
    assert [o.headers[REASON_HEADER] for o in out if o.headers] == ["sender_mismatch"]
    # the agency itself changing it: a reuse, and the agency is told
    changed = _status(agency, code, "rejected", u1)
    out = status.handle([_status_delivery(3, changed, f"status:{u1}", user_id=f"t.{agency}")])
    assert [o.headers[REASON_HEADER] for o in out if o.headers] == ["message_id_reused"]
    assert [o.routing_key for o in out if not o.headers] == [agency]


def test_a_reused_id_from_a_stranger_is_dead_lettered_unanswered(router: Router) -> None:
    # without per-party users nobody vouches for the sender: an update under an applied
    # id that names an agency with no part in the dossier gets no answer, which would
    # tell that agency the dossier's state
    code, agency, status = _one_routed(router)
    u1 = uuid.uuid4()
    status.handle([_status_delivery(1, _status(agency, code, "accepted", u1), f"status:{u1}")])
    out = status.handle([_status_delivery(2, _status("T.SO.TP", code, "accepted", u1),
                                          f"status:{u1}")])
    assert [(o.routing_key, o.headers[REASON_HEADER] if o.headers else None) for o in out] == [
        ("status", "message_id_reused")]
