"""A submission dead-lettered unread (outside the contract, or sent by another desk than
it names) tells its desk so, with a ``held`` notice, when its body still says which desk,
submission and procedure it is; an update or desk event dead-lettered so is answered
``update_refused`` when its body names a dossier its sender has a part in. Before, an
agency or desk integrating without the SDK waited for an answer that never came. The
handlers on the real ledger (SQLite and PostgreSQL), then through the real RabbitMQ."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from pika.spec import BasicProperties

from broker.amqp import REASON_HEADER, SENT_BY_HEADER, Delivery
from broker.consumers.router import Router
from broker.consumers.status import StatusRouter
from broker.ledger import Ledger
from broker.messages import CONTENT_TYPE, DeskNotice, decode, encode
from broker.rules.catalog import load_catalog
from broker.rules.engine import Engine
from broker.topology import INTAKE_KEY, Topology
from tests.conftest import MINI_CATALOG, queue_depth, wait_for
from tests.helpers import Amqp, dossier, intake_delivery

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)


def _router(ledger: Ledger, party_users: bool = False) -> Router:
    engine = Engine(load_catalog(MINI_CATALOG))
    return Router(lambda: engine, ledger, Topology("t"), clock=lambda: NOW,
                  party_users=party_users, trusted_user="t.router")


def _bad_kind(**over: Any) -> dict[str, Any]:
    """A dossier whose applicant is of no kind the contract knows: ``invalid_fields``."""
    body = json.loads(encode(dossier(**over)))
    body["applicant"]["kind"] = "robot"
    return body


def _notices(out: list[Any], topology: Topology) -> list[tuple[str, str, dict[str, Any]]]:
    return [(o.routing_key, o.message_id, json.loads(o.body)) for o in out
            if o.exchange == topology.desk_exchange]


def test_an_invalid_submission_tells_its_desk_it_was_not_received(ledger: Ledger) -> None:
    router = _router(ledger)
    body = _bad_kind()
    raw = json.dumps(body).encode()
    out = router.handle([intake_delivery(1, raw, "submit:1")])
    assert [o.exchange for o in out] == ["t.dlx", "t.desk"]
    assert out[0].headers[REASON_HEADER] == "invalid_fields"
    [(desk, mid, notice)] = _notices(out, router.topology)
    assert (desk, mid) == ("T.MC.B", "submit:1:held")
    assert decode(out[1].body) == DeskNotice.model_validate(notice)  # within the contract
    assert {k: notice.get(k) for k in ("notice", "dossier_code", "submission_id",
                                       "procedure_code", "state", "desk_id")} == {
        "notice": "held", "dossier_code": None, "submission_id": body["submission_id"],
        "procedure_code": "1.001193", "state": 1, "desk_id": "T.MC.B"}
    assert notice["reason"].startswith("invalid_fields: applicant.kind: ")
    assert notice["reason"].endswith("correct it and send it again (under the same "
                                     "submission id if you wish; no dossier was opened)")
    assert "robot" not in notice["reason"]  # what the desk sent is not quoted
    # redelivered: the same two messages again, no new ones
    again = router.handle([intake_delivery(2, raw, "submit:1")])
    assert [(o.exchange, o.message_id, o.body) for o in again] == [
        (o.exchange, o.message_id, o.body) for o in out]
    assert ledger.count_by_state() == {}
    # corrected and sent again under the same submission id (and message id): received
    body["applicant"]["kind"] = "citizen"
    routed = router.handle([intake_delivery(3, json.dumps(body).encode(), "submit:1")])
    [(_, _, receipt)] = _notices(routed, router.topology)
    assert (receipt["notice"], receipt["submission_id"]) == ("receipt", body["submission_id"])
    assert ledger.count_by_state() == {2: 1}


@pytest.mark.parametrize(("what", "raw"), [
    ("no JSON", b"submission: yes"),
    ("a JSON array", json.dumps([_bad_kind()]).encode()),
    ("a desk the catalog does not have", json.dumps(_bad_kind(desk_id="T.NOWHERE")).encode()),
    ("no procedure code", json.dumps({k: v for k, v in _bad_kind().items()
                                      if k != "procedure_code"}).encode()),
    ("a submission id that is no UUID", json.dumps({**_bad_kind(),
                                                    "submission_id": "42"}).encode()),
], ids=["not_json", "array", "unknown_desk", "no_procedure", "id_not_uuid"])
def test_a_body_that_says_too_little_to_be_matched_tells_no_desk(
        ledger: Ledger, what: str, raw: bytes) -> None:
    router = _router(ledger)
    out = router.handle([intake_delivery(1, raw, "submit:1")])
    assert [o.exchange for o in out] == ["t.dlx"], what


def _from(user: str | None, body: bytes, mid: str, **headers: Any) -> Delivery:
    return Delivery(1, body, BasicProperties(
        content_type=CONTENT_TYPE, message_id=mid, type="dossier.submitted", user_id=user,
        headers=headers or None), False, "dossier")


def test_with_party_users_the_sender_is_told_never_the_desk_it_named(ledger: Ledger) -> None:
    router = _router(ledger, party_users=True)
    # desk A names desk B: desk A's own queue hears of it, desk B's does not
    claimed = encode(dossier(desk_id="T.MC.B"))
    out = router.handle([_from("t.T.MC.A", claimed, "m1")])
    [(desk, _, notice)] = _notices(out, router.topology)
    assert (desk, notice["desk_id"], notice["notice"]) == ("T.MC.A", "T.MC.A", "held")
    assert notice["reason"].startswith("sender_mismatch: published by 't.T.MC.A', not by ")
    # desk A sends an invalid body naming desk B: told to desk A alone too
    bad = json.dumps(_bad_kind(desk_id="T.MC.B")).encode()
    out = router.handle([_from("t.T.MC.A", bad, "m2")])
    [(desk, _, notice)] = _notices(out, router.topology)
    assert (desk, notice["reason"].split(":")[0]) == ("T.MC.A", "invalid_fields")
    # replayed by an operator (the router's login), the first sender is told again
    out = router.handle([_from("t.router", bad, "m3", **{SENT_BY_HEADER: "t.T.MC.A"})])
    assert [d for d, _, _ in _notices(out, router.topology)] == ["T.MC.A"]
    # a login that is no desk's (an agency's, or none): nobody is told
    assert _notices(router.handle([_from("t.T.SO.TP", bad, "m4")]), router.topology) == []
    assert _notices(router.handle([_from(None, bad, "m5")]), router.topology) == []


def test_through_rabbitmq_the_desk_hears_and_its_correction_is_received(
        declared: Topology, run_broker: Any, ledger: Ledger) -> None:
    run_broker()
    amqp = Amqp()
    try:
        body = _bad_kind(desk_id="T.MC.A")
        amqp.publish(declared.intake_exchange, INTAKE_KEY, json.dumps(body).encode(),
                     message_id="raw-1", type="dossier.submitted")
        [held] = wait_for(lambda: amqp.json_all(declared.desk_queue("T.MC.A")), what="held")
        assert (held["notice"], held["submission_id"]) == ("held", body["submission_id"])
        assert queue_depth(declared.dead_queue("intake")) == 1
        body["applicant"]["kind"] = "citizen"
        amqp.publish(declared.intake_exchange, INTAKE_KEY, json.dumps(body).encode(),
                     message_id=f"raw-{uuid.uuid4()}", type="dossier.submitted")
        [receipt] = wait_for(lambda: amqp.json_all(declared.desk_queue("T.MC.A")),
                             what="receipt")
        assert (receipt["notice"], receipt["submission_id"]) == ("receipt",
                                                                 body["submission_id"])
    finally:
        amqp.close()


def _status_router(ledger: Ledger, party_users: bool = False) -> StatusRouter:
    engine = Engine(load_catalog(MINI_CATALOG))
    return StatusRouter(lambda: engine, ledger, Topology("t"), clock=lambda: NOW,
                        party_users=party_users, trusted_user="t.router")


def _received(ledger: Ledger) -> tuple[str, str]:
    """A dossier routed (desk T.MC.B): its code and its agency."""
    out = _router(ledger).handle([intake_delivery(1, encode(dossier()), "submit:1")])
    assigned = next(json.loads(o.body) for o in out if o.type == "dossier.assigned")
    return assigned["dossier_code"], assigned["agency_id"]


def _update(body: dict[str, Any], mid: str, user: str | None = None) -> Delivery:
    return Delivery(1, json.dumps(body).encode(), BasicProperties(
        content_type=CONTENT_TYPE, message_id=mid, type="dossier.status", user_id=user),
        False, "status")


def _status_body(code: str, agency: str, status: str = "finished") -> dict[str, Any]:
    """An agency's status of no kind the contract knows: ``invalid_fields``."""
    return {"schema": "casebroker.dossier.status/v1", "update_id": str(uuid.uuid4()),
            "dossier_code": code, "agency_id": agency, "status": status,
            "sent_at": "2026-11-25T10:00:00+07:00"}


def test_an_invalid_update_is_answered_to_its_agency_with_the_dossiers_state(
        ledger: Ledger) -> None:
    code, agency = _received(ledger)
    status = _status_router(ledger)
    update = _update(_status_body(code, agency), "u1")
    out = status.handle([update])
    assert [o.exchange for o in out] == ["t.dlx", "t.agency"]
    assert out[0].headers[REASON_HEADER] == "invalid_fields"
    refused = json.loads(out[1].body)
    assert (out[1].routing_key, out[1].message_id) == (agency, f"{code}:update_refused:u1")
    assert {k: refused[k] for k in ("notice", "dossier_code", "agency_id", "state")} == {
        "notice": "update_refused", "dossier_code": code, "agency_id": agency, "state": 2}
    assert refused["reason"].startswith("invalid_fields: status: ")
    assert refused["reason"].endswith("this one changed nothing: correct it and send it again")
    assert "finished" not in refused["reason"]
    # redelivered: the same again; corrected under the same id: applied
    assert [(o.message_id, o.body) for o in status.handle([update])] == [
        (o.message_id, o.body) for o in out]
    fixed = _update(_status_body(code, agency, "accepted"), "u1")
    assert [json.loads(o.body)["notice"] for o in status.handle([fixed])
            if o.exchange == "t.desk"] == ["status_changed"]


def test_an_invalid_desk_event_is_answered_to_its_desk_as_a_refusal_of_its_own(
        ledger: Ledger) -> None:
    code, _ = _received(ledger)
    event = {"schema": "casebroker.dossier.returned/v1", "event_id": str(uuid.uuid4()),
             "dossier_code": code, "desk_id": "T.MC.B", "satisfaction": "5",
             "returned_at": "2026-11-25T10:00:00+07:00"}
    out = _status_router(ledger).handle([_update(event, "e1")])
    [(desk, _, refused)] = _notices(out, Topology("t"))
    assert desk == "T.MC.B" and refused["notice"] == "update_refused"
    assert refused["reason"].startswith("invalid_fields: satisfaction: ")
    assert (refused["state"], refused["procedure_code"]) == (2, "1.001193")


def test_a_stranger_or_a_code_nobody_has_gets_no_answer(ledger: Ledger) -> None:
    # an answer would say whether the code exists, and the dossier's state
    code, agency = _received(ledger)
    status = _status_router(ledger)
    for body in (_status_body(code, "T.SO.TP"),              # not this dossier's agency
                 _status_body("T.UBND.A-261125-9999", agency),  # no such dossier
                 _status_body(code, "T.NOWHERE"),            # no such agency
                 {**_status_body(code, agency), "dossier_code": "X\u0000"},  # no code
                 {**_status_body(code, agency), "dossier_code": "\ud800"}):  # a lone half
        out = status.handle([_update(body, f"s{uuid.uuid4()}")])
        assert [o.exchange for o in out] == ["t.dlx"], body


def test_with_party_users_the_agency_whose_login_sent_it_is_answered(ledger: Ledger) -> None:
    code, agency = _received(ledger)
    status = _status_router(ledger, party_users=True)
    # its own dossier, naming another agency (sender_mismatch): answered to itself
    out = status.handle([_update(_status_body(code, "T.SO.TP", "accepted"), "p1",
                                 user=f"t.{agency}")])
    assert [(o.exchange, o.routing_key) for o in out] == [("t.dlx", "status"),
                                                          ("t.agency", agency)]
    assert json.loads(out[1].body)["reason"].startswith("sender_mismatch: published by ")
    # another agency's login about this dossier: not its own, not answered
    out = status.handle([_update(_status_body(code, agency), "p2", user="t.T.SO.TP")])
    assert [o.exchange for o in out] == ["t.dlx"]
