"""The router and status router on the real RabbitMQ, with SQLite and PostgreSQL ledgers."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from broker.amqp import REASON_HEADER
from broker.cli import main
from broker.ledger import Ledger
from broker.messages import DossierReturned, DossierStatus
from broker.topology import INTAKE_KEY, Topology
from tests.conftest import queue_depth, wait_for
from tests.helpers import Amqp, dossier

pytestmark = pytest.mark.integration



def _wait_routed(ledger: Ledger, n: int) -> None:
    wait_for(lambda: sum(ledger.count_by_state().values()) >= n, what=f"{n} dossiers in ledger")


def test_dossier_goes_to_competent_agency_and_result_back_to_chosen_desk(
        declared: Topology, ledger: Ledger, run_broker, amqp: Amqp) -> None:
    run_broker()
    # received at commune B's desk, applicant lives in commune A: A's committee decides
    now = datetime.now(UTC)  # recent: the result is on time, no apology notice
    d = dossier("1.001193", desk_id="T.MC.B", applicant_ward="10001", return_desk_id="T.CENTRE",
                submitted_at=now.isoformat())
    amqp.submit(declared, d)
    _wait_routed(ledger, 1)

    assigned = wait_for(lambda: amqp.json_all(declared.agency_queue("T.UBND.A")), what="assign")
    assert len(assigned) == 1
    a = assigned[0]
    assert a["schema"] == "casebroker.dossier.assigned/v1"
    assert a["agency_id"] == "T.UBND.A" and a["step"] == 1 and a["steps"] == 1
    assert a["return_desk_id"] == "T.CENTRE" and a["rule_id"] == "procedure:1.001193"
    code = a["dossier_code"]
    day = now.astimezone(ZoneInfo("Asia/Ho_Chi_Minh")).strftime("%y%m%d")
    assert code.startswith(f"T.UBND.A-{day}-") and code.endswith("-0001")

    receipts = wait_for(lambda: amqp.json_all(declared.desk_queue("T.MC.B")), what="receipt")
    assert [r["notice"] for r in receipts] == ["receipt"]
    assert receipts[0]["dossier_code"] == code and receipts[0]["state"] == 2
    assert receipts[0]["due_at"] == a["due_at"]
    row = ledger.dossier(code)
    assert row is not None and row["state"] == 2 and row["boundary_free"] is True

    resolved = DossierStatus(update_id=uuid.uuid4(), dossier_code=code, agency_id="T.UBND.A",
                             status="resolved", sent_at=datetime.now(UTC),
                             documents=a["documents"])
    amqp.status(declared, resolved)
    results = wait_for(lambda: amqp.json_all(declared.desk_queue("T.CENTRE")), what="result")
    assert [r["notice"] for r in results] == ["result_ready"]
    assert results[0]["state"] == 9 and len(results[0]["documents"]) == 1
    assert amqp.json_all(declared.desk_queue("T.MC.B")) == []  # intake desk not the return desk

    amqp.status(declared, DossierReturned(event_id=uuid.uuid4(), dossier_code=code,
                                          desk_id="T.CENTRE", returned_at=datetime.now(UTC),
                                          satisfaction=5))
    wait_for(lambda: (ledger.dossier(code) or {}).get("state") == 10, what="returned")
    row = ledger.dossier(code)
    assert row is not None and row["satisfaction"] == 5
    assert [e["kind"] for e in ledger.history(code)] == ["received", "resolve", "return"]


def test_bad_input_is_dead_lettered_or_triaged_and_good_input_unaffected(
        declared: Topology, ledger: Ledger, run_broker, amqp: Amqp) -> None:
    run_broker()
    good = dossier()
    wrong_schema = json.loads(dossier().model_dump_json(by_alias=True))
    wrong_schema["schema"] = "casebroker.dossier.submitted/v9"
    missing = json.loads(dossier().model_dump_json(by_alias=True))
    del missing["applicant"]
    desk_event_here = DossierReturned(event_id=uuid.uuid4(), dossier_code="X", desk_id="T.MC.A",
                                      returned_at=datetime.now(UTC))
    bad = {
        "malformed_json": b'{"schema": "casebroker.dossier.submitted/v1", ',
        "unknown_kind": json.dumps(wrong_schema).encode(),
        "invalid_fields": json.dumps(missing).encode(),
        "unexpected_kind": desk_event_here.model_dump_json(by_alias=True).encode(),
        "not_utf8": b'{"schema": "\xff\xfe"}',
    }
    x = declared.intake_exchange
    for i, (_, body) in enumerate(bad.items()):
        amqp.publish(x, INTAKE_KEY, body, message_id=f"bad-{i}")
    amqp.publish(x, INTAKE_KEY, b"<xml/>", message_id="bad-ct", content_type="text/xml")
    amqp.submit(declared, good)
    unknown_proc = dossier("9.999999")
    no_area = dossier("1.001193", applicant_ward="99999")
    amqp.submit(declared, unknown_proc)
    amqp.submit(declared, no_area)

    wait_for(lambda: queue_depth(declared.dead_queue("intake")) >= 6, what="dead letters")
    wait_for(lambda: queue_depth(declared.triage_queue) >= 2, what="triage")
    dead = amqp.get_all(declared.dead_queue("intake"))
    reasons = sorted(p.headers[REASON_HEADER] for p, _ in dead)
    assert reasons == sorted([*bad, "wrong_content_type"])
    for props, _ in dead:  # no personal data in error headers
        assert "066090001234" not in json.dumps(props.headers, default=str)
    triaged = {p.headers[REASON_HEADER] for p, _ in amqp.get_all(declared.triage_queue)}
    assert triaged == {"unknown_procedure", "area_not_served"}

    _wait_routed(ledger, 1)
    assert ledger.count_by_state() == {2: 1}
    assert len(amqp.json_all(declared.agency_queue("T.UBND.A"))) == 1
    assert queue_depth(declared.intake_queue) == 0


def test_same_submission_twice_makes_one_dossier(
        declared: Topology, ledger: Ledger, run_broker, amqp: Amqp) -> None:
    run_broker()
    d = dossier()
    amqp.submit(declared, d)                           # the desk's first try
    amqp.submit(declared, d)                           # a retry with the same message id
    amqp.submit(declared, d, message_id="another-id")  # a retry with a new message id
    wait_for(lambda: ledger.count_inbox_outcomes().get("duplicate", 0) >= 1, what="dup seen")
    wait_for(lambda: queue_depth(declared.intake_queue) == 0, what="intake drained")
    assert ledger.count_by_state() == {2: 1}
    # committed before published: what the last batch sent may still be on its way
    assigned: list[Any] = []
    wait_for(lambda: assigned.extend(amqp.get_all(declared.agency_queue("T.UBND.A")))
             or assigned, what="the assignment")
    # at most the same assignment twice (a redelivery), never a second dossier
    assert len({p.message_id for p, _ in assigned}) == 1
    # the retry under a new id got the receipt again, the same notice under the same id
    receipts: list[Any] = []
    wait_for(lambda: receipts.extend(amqp.get_all(declared.desk_queue("T.MC.B")))
             or len(receipts) >= 2, what="the receipt and its copy")
    assert {p.message_id for p, _ in receipts} == {f"{assigned[0][0].correlation_id}:receipt"}


def test_a_dossier_corrected_under_its_first_message_id_is_routed_not_dropped(
        declared: Topology, ledger: Ledger, run_broker, amqp: Amqp) -> None:
    # the SDK's message id is submit:<submission id>: a desk that corrects a triaged
    # dossier and submits it again sends it under the same id. Through the real broker:
    # the correction is routed, and a different dossier under that id is dead-lettered
    run_broker()
    wrong = dossier(applicant_ward="99999")  # a ward no unit serves
    amqp.submit(declared, wrong)
    wait_for(lambda: queue_depth(declared.triage_queue) >= 1, what="the first copy triaged")
    fixed = wrong.model_copy(update={"applicant": wrong.applicant.model_copy(
        update={"ward_code": "10001"})})
    amqp.submit(declared, fixed)
    _wait_routed(ledger, 1)
    # the desk was told the first copy was held (not received, and why), then its receipt
    wait_for(lambda: queue_depth(declared.desk_queue("T.MC.B")) >= 2, what="two notices")
    notices = amqp.json_all(declared.desk_queue("T.MC.B"))
    assert [n["notice"] for n in notices] == ["held", "receipt"]
    assert "dossier_code" not in notices[0] and notices[0]["reason"].startswith(
        "area_not_served: ")
    other = fixed.model_copy(update={"procedure_code": "1.004227"})
    amqp.submit(declared, other)
    wait_for(lambda: queue_depth(declared.dead_queue("intake")) >= 1, what="the dead letter")
    wait_for(lambda: queue_depth(declared.desk_queue("T.MC.B")) >= 1, what="a held notice")
    (held,) = amqp.json_all(declared.desk_queue("T.MC.B"))
    assert held["notice"] == "held" and held["submission_id"] == str(wrong.submission_id)
    assert held["reason"].startswith("submission_id_reused: ")
    (props, body), = amqp.get_all(declared.dead_queue("intake"))
    assert props.headers[REASON_HEADER] == "submission_id_reused"
    assert props.message_id == f"submit:{wrong.submission_id}"
    assert json.loads(body)["procedure_code"] == "1.004227"
    wait_for(lambda: queue_depth(declared.intake_queue) == 0, what="intake drained")
    assert ledger.count_by_state() == {2: 1}
    assert ledger.count_inbox_outcomes() == {"triaged:area_not_served": 1, "routed": 1,
                                             "dead:submission_id_reused": 1}


def test_not_open_for_boundary_free_is_refused_with_notice(
        declared: Topology, ledger: Ledger, run_broker, amqp: Amqp,
        capsys: pytest.CaptureFixture[str]) -> None:
    run_broker()
    amqp.submit(declared, dossier("1.000002", desk_id="T.MC.A"))
    notices = wait_for(lambda: amqp.json_all(declared.desk_queue("T.MC.A")), what="refusal")
    assert notices[0]["notice"] == "refused" and notices[0]["state"] == 3
    assert "not open to boundary-free" in notices[0]["reason"]
    assert "due_at" not in notices[0]  # None fields are left out of the JSON
    assert ledger.count_by_state() == {3: 1}
    assert queue_depth(declared.agency_queue("T.SO.TP")) == 0
    # the operator's view says so too: nothing due (it showed a receipt's due date)
    code = notices[0]["dossier_code"]
    assert main(["dossier", "show", code, "--db-url", ledger.url]) == 0
    out = capsys.readouterr().out
    assert "refused (3)" in out and "due nothing: refused at intake" in out
    assert main(["dossier", "show", code, "--db-url", ledger.url, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["dossier"]
    assert shown["due_at"] is None and shown["step_due_at"] is None
    assert main(["dossier", "list", "--db-url", ledger.url]) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith(code)]
    assert line.endswith("nothing: refused at intake")


def test_a_senders_headers_too_large_to_copy_are_dropped_from_its_dead_letter(
        declared: Topology, ledger: Ledger, run_broker, amqp: Amqp) -> None:
    # RabbitMQ took a header of 40,000 bytes that are no UTF-8; copied onto the dead
    # letter as text ("\xff" each), it made a frame RabbitMQ refused by closing the
    # connection, at every redelivery, until the delivery limit dead-lettered the valid
    # dossiers the router held with it (found by a review)
    run_broker()
    amqp.publish(declared.intake_exchange, INTAKE_KEY, b"{not json", message_id="bad-1",
                 type="dossier.submitted", headers={"x-blob": b"\xff" * 40_000, "x-n": 7})
    good = dossier()
    amqp.submit(declared, good)
    _wait_routed(ledger, 1)
    wait_for(lambda: queue_depth(declared.dead_queue("intake")) >= 1, what="the dead letter")
    (props, body), = amqp.get_all(declared.dead_queue("intake"))
    assert (props.message_id, body) == ("bad-1", b"{not json")
    assert props.headers[REASON_HEADER] == "malformed_json"
    assert "x-blob" not in props.headers and "x-n" not in props.headers
    assert props.headers["x-casebroker-headers-dropped"].startswith("2 header(s), ")
    assert ledger.count_inbox_outcomes() == {"routed": 1, "dead:malformed_json": 1}
