"""A dossier's whole life on the real RabbitMQ, with SQLite and PostgreSQL ledgers.

Supplements, financial obligation, stop, withdrawal mid-chain, a three-agency chain with
its process-control sheet, a postal return desk, refused updates, a late result, and
codes from two competing routers. The broker runs on a clock the test moves.
"""

from __future__ import annotations

import contextlib
import io
import json
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from broker.amqp import DETAIL_HEADER, REASON_HEADER
from broker.cli import main
from broker.consumers.deadlines import DeadlineWatch, WatchSettings
from broker.consumers.router import Router
from broker.consumers.status import StatusRouter
from broker.ledger import Ledger, dossiers, events
from broker.lifecycle import LEGAL_TIMEZONE, timeliness
from broker.messages import (
    DeskNotice,
    Document,
    DossierReturned,
    DossierStatus,
    DossierSupplemented,
    DossierWithdrawn,
    encode,
)
from broker.ops.report import report as period_report
from broker.rules.catalog import parse_catalog
from broker.rules.engine import Engine
from broker.topology import Topology
from tests.conftest import MINI_CATALOG, queue_depth, wait_for
from tests.helpers import Amqp, dossier, intake_delivery, status_delivery
from tests.integration.conftest import FakeClock, vn

pytestmark = pytest.mark.integration


def doc(name: str) -> Document:
    return Document(name=name, uri=f"s3://docs/{name}", sha256="b" * 64, size=10,
                    media_type="application/pdf")


def report(amqp: Amqp, t: Topology, code: str, agency: str, status: str, **kw: Any) -> None:
    """An agency's update, sent now (or at ``sent_at``: the broker's clock, if it is a
    test's: the event's time is the one its sender wrote, up to the broker's now)."""
    kw.setdefault("sent_at", datetime.now(UTC))
    amqp.status(t, DossierStatus(update_id=uuid.uuid4(), dossier_code=code, agency_id=agency,
                                 status=status, **kw))


def take(amqp: Amqp, queue: str, n: int, what: str = "") -> list[dict[str, Any]]:
    """Exactly the next ``n`` messages of a queue (fails on timeout, or if more arrived)."""
    got: list[dict[str, Any]] = []

    def enough() -> bool:
        got.extend(amqp.json_all(queue))
        return len(got) >= n

    wait_for(enough, what=what or f"{n} message(s) on {queue}")
    assert len(got) == n, got
    return got


def submit(amqp: Amqp, t: Topology, agency: str, **kw: Any) -> dict[str, Any]:
    """Submit one dossier; return its assignment to ``agency``."""
    amqp.submit(t, dossier(**kw))
    return take(amqp, t.agency_queue(agency), 1, "assignment")[0]


def test_forbidden_update_changes_nothing_and_tells_the_sender(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp) -> None:
    start_broker()
    code = submit(amqp, declared, "T.UBND.A")["dossier_code"]
    take(amqp, declared.desk_queue("T.MC.B"), 1, "receipt")
    amqp.status(declared, DossierWithdrawn(event_id=uuid.uuid4(), dossier_code=code,
                                           desk_id="T.MC.B", reason="citizen moved",
                                           sent_at=datetime.now(UTC)))
    withdrawn = take(amqp, declared.agency_queue("T.UBND.A"), 1, "withdrawal notice")[0]
    assert withdrawn["notice"] == "withdrawn" and withdrawn["reason"] == "citizen moved"
    assert take(amqp, declared.desk_queue("T.MC.B"), 1)[0]["notice"] == "withdrawn"
    before = ledger.dossier(code)
    assert before is not None and before["state"] == 7

    report(amqp, declared, code, "T.UBND.A", "resolved", documents=[doc("kq.pdf")])
    report(amqp, declared, code, "T.UBND.B", "processing")  # not the dossier's agency
    refused = take(amqp, declared.agency_queue("T.UBND.A"), 1, "refusal")[0]
    assert refused["notice"] == "update_refused" and refused["state"] == 7
    assert refused["reason"] == ("status resolved is not allowed: dossier is withdrawn (7); "
                                 "allowed now: none")
    # T.UBND.B never had the dossier: it is told nothing of it (its state, agency, ids),
    # only what it is told of a code that does not exist; its update is dead-lettered
    # for the operators
    missing = code[:-4] + ("9999" if not code.endswith("9999") else "9998")
    report(amqp, declared, missing, "T.UBND.B", "processing")
    dead: list[tuple[Any, bytes]] = []
    wait_for(lambda: dead.extend(amqp.get_all(declared.dead_queue("status")))
             or len(dead) >= 2, what="dead letters")
    assert sorted((p.headers[REASON_HEADER], p.headers[DETAIL_HEADER]) for p, _ in dead) == [
        ("not_a_party", "agency T.UBND.B is not an agency of this dossier"),
        ("unknown_dossier", "no dossier with this code")]
    answers = take(amqp, declared.agency_queue("T.UBND.B"), 2, "answers")
    for answer, asked in zip(sorted(answers, key=lambda a: a["dossier_code"] != code),
                             (code, missing), strict=True):
        assert {k: v for k, v in answer.items() if k not in ("issued_at", "schema")} == {
            "notice": "update_refused", "dossier_code": asked, "agency_id": "T.UBND.B",
            "documents": [], "reason": (  # no state: nothing of the dossier
                f"not_yours: no dossier {asked} was ever assigned to T.UBND.B; check the "
                "code (the update is set aside for the operators)")}
    wait_for(lambda: ledger.count_inbox_outcomes().get("refused_update") == 1, what="recorded")
    assert ledger.count_inbox_outcomes()["dead:not_a_party"] == 1
    assert ledger.dossier(code) == before  # not a column changed, not even updated_at
    assert [e["kind"] for e in ledger.history(code)] == ["received", "withdraw"]
    assert queue_depth(declared.desk_queue("T.MC.B")) == 0


def test_the_receipt_is_form_01_and_the_return_desk_knows_whose_result_it_holds(
        declared: Topology, start_broker, amqp: Amqp) -> None:
    """DOMAIN.md (Circular 03/2025, Form 01): the receipt carries the applicant, the
    channel, the documents received and where the result is collected; it carried none of
    them. A return desk other than the intake desk got a result for nobody it could
    name."""
    start_broker()
    sent = dossier(return_desk_id="T.CENTRE")
    amqp.submit(declared, sent)
    code = take(amqp, declared.agency_queue("T.UBND.A"), 1, "assignment")[0]["dossier_code"]
    receipt = take(amqp, declared.desk_queue("T.MC.B"), 1, "receipt")[0]
    assert receipt["notice"] == "receipt"
    assert receipt["applicant"] == sent.applicant.model_dump(mode="json", exclude_none=True)
    assert (receipt["channel"], receipt["return_desk_id"]) == ("in_person", "T.CENTRE")
    assert receipt["documents"] == [d.model_dump(mode="json") for d in sent.documents]
    report(amqp, declared, code, "T.UBND.A", "resolved", documents=[doc("khai-sinh.pdf")])
    ready = take(amqp, declared.desk_queue("T.CENTRE"), 1, "result ready")[0]
    assert ready["notice"] == "result_ready"
    assert ready["applicant"]["name"] == "Nguyễn Văn An"
    assert ready["applicant"]["id_number"] == "066090001234"
    assert [d["name"] for d in ready["documents"]] == ["khai-sinh.pdf"]


def test_supplement_round_trip_moves_due_date_by_paused_working_time(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp, clock: FakeClock,
        capsys: pytest.CaptureFixture[str]) -> None:
    start_broker()
    desk, agency = declared.desk_queue("T.MC.B"), declared.agency_queue("T.SO.TP")
    code = submit(amqp, declared, "T.SO.TP", procedure_code="1.004227")["dossier_code"]
    take(amqp, desk, 1, "receipt")
    row = ledger.dossier(code)
    assert row is not None and row["due_at"] == vn("2026-12-09 09:00")  # 10 working days

    clock.set("2026-11-26 09:00")
    report(amqp, declared, code, "T.SO.TP", "supplement_requested", reason="bản sao mờ",
           requested_documents=["CCCD bản sao chứng thực", "Giấy khai sinh"])
    request = take(amqp, desk, 1, "supplement request")[0]
    assert request["notice"] == "supplement_requested" and request["state"] == 5
    assert request["reason"] == "bản sao mờ"
    assert request["requested_documents"] == ["CCCD bản sao chứng thực", "Giấy khai sinh"]
    assert main(["dossier", "show", code, "--db-url", ledger.url]) == 0
    assert "; clock stopped since 2026-11-26 09:00 for a supplement: the due dates move by " \
        "the time it stays stopped)" in capsys.readouterr().out
    # while it waits for the citizen, the agency may only stop it, and the desk may not
    # say it returned a result: each is told so in the words it used
    report(amqp, declared, code, "T.SO.TP", "resolved")
    assert take(amqp, agency, 1, "the refusal")[0]["reason"] == (
        "status resolved is not allowed: dossier is supplement_requested (5); allowed now: "
        "stopped")
    amqp.status(declared, DossierReturned(event_id=uuid.uuid4(), dossier_code=code,
                                          desk_id="T.MC.B", returned_at=datetime.now(UTC)))
    assert take(amqp, desk, 1, "the desk's refusal")[0]["reason"] == (
        "returned is not allowed: dossier is supplement_requested (5)")

    clock.set("2026-11-27 10:00")  # paused Thu 09:00-17:00 (6 h) + Fri 07:00-10:00 (3 h)
    amqp.status(declared, DossierSupplemented(
        event_id=uuid.uuid4(), dossier_code=code, desk_id="T.MC.B",
        documents=[doc("cccd.pdf"), doc("khai-sinh.pdf")], sent_at=datetime.now(UTC)))
    supplemented = take(amqp, agency, 1, "supplement to agency")[0]
    # asked for on receipt, before the agency took the dossier up: back to received (2)
    assert supplemented["notice"] == "supplemented" and supplemented["state"] == 2
    assert [d["name"] for d in supplemented["documents"]] == ["cccd.pdf", "khai-sinh.pdf"]
    assert supplemented["reason"] == (  # its assignment's due dates have moved: the new ones
        "the clock runs again: legal due date 2026-12-10T10:00+07:00, this step's "
        "2026-12-10T10:00+07:00 (moved by the 9.0 working hours paused)")
    assert supplemented["due_at"] == supplemented["step_due_at"] == "2026-12-10T10:00:00+07:00"
    back = take(amqp, desk, 1)[0]
    assert (back["notice"], back["state"]) == ("status_changed", 2)
    row = ledger.dossier(code)
    assert row is not None and row["state"] == 2 and row["paused_at"] is None
    assert "paused_from" not in row["flags"]
    # 9 working hours after Wed 9 Dec 09:00: 09:00-11:30, 13:30-17:00, Thu 07:00-10:00
    assert row["due_at"] == vn("2026-12-10 10:00") == row["step_due_at"]
    assert [e["kind"] for e in ledger.history(code)] == [
        "received", "request_supplement", "supplement"]
    assert main(["dossier", "show", code, "--db-url", ledger.url]) == 0
    out = capsys.readouterr().out
    assert "(step 1 of 1: T.SO.TP; this step due 2026-12-10 10:00)" in out
    assert "  (2 document(s) requested)" in out
    assert "  (2 document(s) brought; due 2026-12-10 10:00)" in out  # moved from 9 Dec


def test_financial_obligation_and_stop_reach_the_desk_with_reasons(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp) -> None:
    start_broker()
    desk = declared.desk_queue("T.MC.B")
    code = submit(amqp, declared, "T.SO.TP", procedure_code="1.004227")["dossier_code"]
    report(amqp, declared, code, "T.SO.TP", "accepted")
    report(amqp, declared, code, "T.SO.TP", "financial_obligation", amount_vnd=200_000,
           reason="lệ phí cấp phiếu")
    notices = take(amqp, desk, 3, "receipt, processing, fee")
    assert [n["notice"] for n in notices] == ["receipt", "status_changed", "financial_obligation"]
    assert notices[2]["state"] == 6 and notices[2]["amount_vnd"] == 200_000
    assert notices[2]["reason"] == "lệ phí cấp phiếu"

    report(amqp, declared, code, "T.SO.TP", "processing")  # paid
    report(amqp, declared, code, "T.SO.TP", "stopped", reason="người yêu cầu đã mất")
    notices = take(amqp, desk, 2, "paid, stopped")
    assert [(n["notice"], n["state"]) for n in notices] == [("status_changed", 4), ("stopped", 8)]
    assert notices[1]["reason"] == "người yêu cầu đã mất"
    row = ledger.dossier(code)
    assert row is not None and row["state"] == 8 and row["finished_at"] is not None


def _chain(amqp: Amqp, t: Topology, clock: FakeClock) -> tuple[str, dict[str, Any]]:
    """A chain dossier received at B's desk, collected at the centre, step 1 at A."""
    first = submit(amqp, t, "T.UBND.A", procedure_code="1.000001", return_desk_id="T.CENTRE")
    assert first["step"] == 1 and first["steps"] == 3
    assert first["step_due_at"] == vn("2026-11-27 09:00").isoformat()  # 2 of 6 working days
    assert first["due_at"] == vn("2026-12-03 09:00").isoformat()
    return first["dossier_code"], first


def test_three_agency_chain_hands_off_with_results_and_shows_history(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp, clock: FakeClock) -> None:
    start_broker()
    code, first = _chain(amqp, declared, clock)
    centre = declared.desk_queue("T.CENTRE")

    clock.set("2026-11-26 10:00")
    report(amqp, declared, code, "T.UBND.A", "resolved", documents=[doc("khai-sinh.pdf")])
    second = take(amqp, declared.agency_queue("T.CA"), 1, "step 2")[0]
    assert (second["step"], second["agency_id"]) == (2, "T.CA")
    assert second["step_due_at"] == vn("2026-11-30 10:00").isoformat()
    # the dossier's due date as the first assignment and the receipt gave it: in the
    # catalog's zone, not as the ledger keeps it (UTC)
    assert second["due_at"] == first["due_at"] == "2026-12-03T09:00:00+07:00"
    assert [d["name"] for d in second["documents"]] == ["to-khai.pdf", "khai-sinh.pdf"]

    clock.set("2026-11-27 07:00")  # step 2 pauses for 2 working hours
    report(amqp, declared, code, "T.CA", "supplement_requested", reason="thiếu tờ khai",
           requested_documents=["Tờ khai thường trú"])
    take(amqp, centre, 2, "in progress, supplement request")
    clock.set("2026-11-27 09:00")
    amqp.status(declared, DossierSupplemented(
        event_id=uuid.uuid4(), dossier_code=code, desk_id="T.MC.B",
        documents=[doc("to-khai-thuong-tru.pdf")], sent_at=datetime.now(UTC)))
    supplemented = take(amqp, declared.agency_queue("T.CA"), 1)[0]
    assert supplemented["notice"] == "supplemented"
    row = ledger.dossier(code)
    assert row is not None and row["step_due_at"] == vn("2026-11-30 14:00")
    assert row["due_at"] == vn("2026-12-03 11:00")
    # the step's agency is told both moved dates, as its assignment gave them
    assert (supplemented["due_at"], supplemented["step_due_at"]) == (
        vn("2026-12-03 11:00").isoformat(), vn("2026-11-30 14:00").isoformat())

    clock.set("2026-11-30 08:00")
    report(amqp, declared, code, "T.CA", "resolved", documents=[doc("thuong-tru.pdf")])
    third = take(amqp, declared.agency_queue("T.BHXH"), 1, "step 3")[0]
    assert third["step"] == 3
    assert third["step_due_at"] == vn("2026-12-02 08:00").isoformat()
    # the next agency gets the dossier as it stands: supplements and earlier results
    assert [d["name"] for d in third["documents"]] == [
        "to-khai.pdf", "to-khai-thuong-tru.pdf", "khai-sinh.pdf", "thuong-tru.pdf"]
    # before the last step the return desk learns of progress, never of a result
    early = [(n["notice"], n["state"], n.get("documents", [])) for n in amqp.json_all(centre)]
    assert early == [("status_changed", 4, [])]

    clock.set("2026-12-01 15:00")
    report(amqp, declared, code, "T.BHXH", "resolved", documents=[doc("bhyt.pdf")])
    result = take(amqp, centre, 1, "result")[0]
    assert result["notice"] == "result_ready" and result["state"] == 9
    assert datetime.fromisoformat(result["due_at"]) == vn("2026-12-03 11:00")
    assert [d["name"] for d in result["documents"]] == [
        "khai-sinh.pdf", "thuong-tru.pdf", "bhyt.pdf"]
    # the intake desk: its receipt, and that the supplement it brought took effect (the
    # return desk's notice, under an id of its own), never the result
    intake = [(p.message_id, json.loads(b)["notice"])
              for p, b in amqp.get_all(declared.desk_queue("T.MC.B"))]
    assert intake == [(f"{code}:receipt", "receipt"),
                      (f"{code}:status_changed:4:intake", "status_changed")]

    history = ledger.history(code)
    hand_offs = [(e["actor"], e["from_agency"], e["to_agency"], e["at"]) for e in history
                 if e["kind"] == "hand_off"]
    assert hand_offs == [("T.UBND.A", "T.UBND.A", "T.CA", vn("2026-11-26 10:00")),
                         ("T.CA", "T.CA", "T.BHXH", vn("2026-11-30 08:00"))]
    assert history[1]["detail"]["documents"] == ["khai-sinh.pdf"]

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["dossier", "show", code, "--db-url", ledger.url]) == 0
    text = out.getvalue()
    assert f"{code}  resolved (9)" in text and "step 3 of 3" in text
    assert "T.UBND.A -> T.CA" in text and "T.CA -> T.BHXH" in text
    assert "066090001234" not in text and "Nguyễn" not in text  # no personal data
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["dossier", "show", code, "--db-url", ledger.url, "--json"]) == 0
    shown = json.loads(out.getvalue())
    assert [e["kind"] for e in shown["history"]] == [
        "received", "hand_off", "request_supplement", "supplement", "hand_off", "resolve"]
    # times in ISO 8601, as every message gives them (str() wrote a space for the T)
    assert datetime.fromisoformat(shown["dossier"]["received_at"]).utcoffset() is not None
    assert "T" in shown["dossier"]["received_at"] and all("T" in e["at"]
                                                          for e in shown["history"])


def test_withdrawal_mid_chain_tells_the_current_agency(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp, clock: FakeClock) -> None:
    start_broker()
    code, _ = _chain(amqp, declared, clock)
    report(amqp, declared, code, "T.UBND.A", "resolved", documents=[doc("khai-sinh.pdf")])
    take(amqp, declared.agency_queue("T.CA"), 1, "step 2")
    amqp.status(declared, DossierWithdrawn(event_id=uuid.uuid4(), dossier_code=code,
                                           desk_id="T.MC.B", reason="không cần nữa",
                                           sent_at=datetime.now(UTC)))
    told = take(amqp, declared.agency_queue("T.CA"), 1, "withdrawal to T.CA")[0]
    assert (told["notice"], told["agency_id"], told["state"]) == ("withdrawn", "T.CA", 7)
    assert told["reason"] == "không cần nữa"
    desk = take(amqp, declared.desk_queue("T.CENTRE"), 2, "in progress, withdrawn")
    assert [(n["notice"], n["state"]) for n in desk] == [("status_changed", 4), ("withdrawn", 7)]
    assert queue_depth(declared.agency_queue("T.UBND.A")) == 0  # its part was done
    assert queue_depth(declared.agency_queue("T.BHXH")) == 0  # never reached

    report(amqp, declared, code, "T.CA", "resolved")  # too late: refused, nothing moves
    refused = take(amqp, declared.agency_queue("T.CA"), 1, "refusal")[0]
    assert refused["notice"] == "update_refused"
    # the chain's first agency had the dossier once: it is a party, answered, not dead
    report(amqp, declared, code, "T.UBND.A", "processing")
    earlier = take(amqp, declared.agency_queue("T.UBND.A"), 1, "refusal to step 1")[0]
    assert earlier["reason"] == "T.UBND.A is not the dossier's current agency"
    assert queue_depth(declared.dead_queue("status")) == 0
    row = ledger.dossier(code)
    assert row is not None and (row["state"], row["agency_id"], row["step"]) == (7, "T.CA", 2)


def test_postal_return_desk_gets_the_result_and_keeps_the_rating(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp,
        capsys: pytest.CaptureFixture[str]) -> None:
    start_broker()
    code = submit(amqp, declared, "T.UBND.A", desk_id="T.MC.A",
                  return_desk_id="T.POST")["dossier_code"]
    report(amqp, declared, code, "T.UBND.A", "resolved", documents=[doc("trich-luc.pdf")])
    result = take(amqp, declared.desk_queue("T.POST"), 1, "result at the post")[0]
    assert result["notice"] == "result_ready" and result["desk_id"] == "T.POST"
    assert [n["notice"] for n in amqp.json_all(declared.desk_queue("T.MC.A"))] == ["receipt"]

    # only the return desk can say the result was handed over; the intake desk is told so,
    # a desk with no part in the dossier is told nothing about it: only what it is told of
    # a code that does not exist (it mistyped one, most likely), and the event is set aside
    amqp.status(declared, DossierReturned(event_id=uuid.uuid4(), dossier_code=code,
                                          desk_id="T.MC.A", returned_at=datetime.now(UTC)))
    refused = take(amqp, declared.desk_queue("T.MC.A"), 1)[0]
    assert refused["notice"] == "update_refused"
    assert refused["reason"] == "desk T.MC.A is not the return desk: only T.POST hands the " \
        "result over"
    missing = code[:-4] + ("9999" if not code.endswith("9999") else "9998")
    stray = [DossierReturned(event_id=uuid.uuid4(), dossier_code=asked, desk_id="T.MC.B",
                             returned_at=datetime.now(UTC)) for asked in (code, missing)]
    for event in stray:
        amqp.status(declared, event)
    dead: list[tuple[Any, bytes]] = []
    wait_for(lambda: dead.extend(amqp.get_all(declared.dead_queue("status")))
             or len(dead) >= 2, what="dead letters")
    assert sorted(p.headers[REASON_HEADER] for p, _ in dead) == ["not_a_party",
                                                                  "unknown_dossier"]
    answers = take(amqp, declared.desk_queue("T.MC.B"), 2, "answers")
    for answer, event in zip(sorted(answers, key=lambda a: a["dossier_code"] != code),
                             stray, strict=True):
        assert {k: v for k, v in answer.items() if k not in ("issued_at", "schema")} == {
            "notice": "update_refused", "dossier_code": event.dossier_code,
            "desk_id": "T.MC.B", "documents": [], "requested_documents": [], "reason": (
                f"not_yours: no dossier {event.dossier_code} has desk T.MC.B as its intake "
                "or return desk; check the code (the event is set aside for the operators)")}
        # the SDK's model reads it: nothing of the dossier, what the desk sent
        parsed = DeskNotice.model_validate(answer)
        assert parsed.not_yours and parsed.submission_id is None and parsed.state is None
    amqp.status(declared, DossierReturned(event_id=uuid.uuid4(), dossier_code=code,
                                          desk_id="T.POST", returned_at=datetime.now(UTC),
                                          satisfaction=4))
    wait_for(lambda: (ledger.dossier(code) or {}).get("state") == 10, what="returned")
    row = ledger.dossier(code)
    assert row is not None and row["satisfaction"] == 4 and row["return_desk_id"] == "T.POST"
    # the return desk learns its `returned` took effect, the agency that its case is closed
    closed = take(amqp, declared.desk_queue("T.POST"), 1, "the return desk's closed")[0]
    assert (closed["notice"], closed["state"], closed["dossier_code"]) == ("closed", 10, code)
    (props, body), = wait_for(lambda: amqp.get_all(declared.agency_queue("T.UBND.A")),
                              what="the agency's closed")
    assert props.message_id == f"{code}:closed:{row['seq']}:agency"
    assert json.loads(body) | {"issued_at": None} == {
        "schema": "casebroker.agency.notice/v1", "notice": "closed", "dossier_code": code,
        "agency_id": "T.UBND.A", "state": 10, "reason": "the result was handed to the citizen",
        "documents": [], "issued_at": None}
    assert queue_depth(declared.desk_queue("T.MC.A")) == 0  # the intake desk: not its event
    assert main(["dossier", "show", code, "--db-url", ledger.url]) == 0
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if x.startswith("    ") and " return " in x]
    assert line.endswith("9->10  by T.POST  (satisfaction 4)")
    assert "  agency T.UBND.A (step 1 of 1: T.UBND.A)\n" in out  # finished: no step due


def test_the_intake_desk_is_told_its_own_withdrawal_took_effect(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp) -> None:
    # the citizen withdraws where they submitted, to collect elsewhere: both desks told
    start_broker()
    code = submit(amqp, declared, "T.UBND.A", desk_id="T.MC.A",
                  return_desk_id="T.POST")["dossier_code"]
    take(amqp, declared.desk_queue("T.MC.A"), 1, "receipt")
    amqp.status(declared, DossierWithdrawn(event_id=uuid.uuid4(), dossier_code=code,
                                           desk_id="T.MC.A", reason="citizen moved",
                                           sent_at=datetime.now(UTC)))
    ret = take(amqp, declared.desk_queue("T.POST"), 1, "the return desk's notice")
    (props, body), = wait_for(lambda: amqp.get_all(declared.desk_queue("T.MC.A")),
                              what="the intake desk's notice")
    intake = json.loads(body)
    assert props.message_id == f"{code}:withdrawn:2:intake"
    assert (intake["notice"], intake["state"], intake["desk_id"]) == ("withdrawn", 7, "T.MC.A")
    assert {k: v for k, v in intake.items() if k != "desk_id"} == {
        k: v for k, v in ret[0].items() if k != "desk_id"}
    assert take(amqp, declared.agency_queue("T.UBND.A"), 1)[0]["notice"] == "withdrawn"


def test_late_result_carries_an_apology(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp, clock: FakeClock) -> None:
    running = start_broker()
    code = submit(amqp, declared, "T.UBND.A")["dossier_code"]  # 1 working day: Thu 09:00
    clock.set("2026-11-27 09:30")  # the day after its due day: late
    report(amqp, declared, code, "T.UBND.A", "resolved", documents=[doc("kq.pdf")])
    notices = take(amqp, declared.desk_queue("T.MC.B"), 3, "receipt, result, apology")
    assert [n["notice"] for n in notices] == ["receipt", "result_ready", "overdue_apology"]
    assert "legal due date 2026-11-26T09:00+07:00" in notices[2]["reason"]
    assert notices[2]["due_at"] == vn("2026-11-27 09:30").isoformat()  # ready now
    row = ledger.dossier(code)
    assert row is not None and row["watch_level"] == 2
    # counted with the watch's (a review: the status router's apologies never were)
    sent = running.broker.metrics.deadline_notices_total
    assert sent.labels("overdue_apology", "desk")._value.get() == 1


def test_a_result_on_its_due_day_after_its_due_time_is_on_time_without_an_apology(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp, clock: FakeClock) -> None:
    """DOMAIN.md compares dates: the report counts it on time, so the citizen is not told
    it is late (an apology for a result the province reports on time)."""
    start_broker()
    code = submit(amqp, declared, "T.UBND.A")["dossier_code"]  # 1 working day: Thu 09:00
    clock.set("2026-11-26 16:30")
    report(amqp, declared, code, "T.UBND.A", "resolved", documents=[doc("kq.pdf")])
    notices = take(amqp, declared.desk_queue("T.MC.B"), 2, "receipt, result")
    assert [n["notice"] for n in notices] == ["receipt", "result_ready"]
    # an apology would have been published with the result, in the same batch
    assert amqp.json_all(declared.desk_queue("T.MC.B")) == []
    row = ledger.dossier(code)
    assert row is not None and row["watch_level"] == 0
    assert timeliness(row["finished_at"], row["due_at"], ZoneInfo(LEGAL_TIMEZONE)) == "on_time"


def test_two_routers_number_1000_dossiers_uniquely_and_without_gaps(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp) -> None:
    first = start_broker(prefetch_count=40, batch_size=20)
    second = start_broker(prefetch_count=40, batch_size=20)
    wards = ("10001", "10002")
    for i in range(1000):
        amqp.submit(declared, dossier(applicant_ward=wards[i % 2]))
    wait_for(lambda: sum(ledger.count_by_state().values()) >= 1000, timeout_s=90,
             what="1000 dossiers")
    with ledger.read() as conn:
        codes = list(conn.scalars(select(dossiers.c.code)))
    assert len(codes) == len(set(codes)) == 1000
    by_unit: dict[str, list[int]] = {}
    for code in codes:
        unit_day, _, number = code.rpartition("-")
        by_unit.setdefault(unit_day, []).append(int(number))
    assert sorted(by_unit) == ["T.UBND.A-261125", "T.UBND.B-261125"]
    for numbers in by_unit.values():
        assert sorted(numbers) == list(range(1, 501))
    routed = [r.broker.metrics.intake_total.labels("routed", "")._value.get()
              for r in (first, second)]
    assert sum(routed) == 1000 and min(routed) > 0, f"both routers take part: {routed}"


def _status(code: str, agency: str, status: str, sent_at: datetime, **kw: Any) -> DossierStatus:
    return DossierStatus(update_id=uuid.uuid4(), dossier_code=code, agency_id=agency,
                         status=status, sent_at=sent_at, **kw)


def test_an_agency_update_older_than_the_last_applied_one_is_refused_as_stale(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp, clock: FakeClock) -> None:
    """DESIGN §10: sent_at decides, not arrival order (competing status routers, a
    redelivery). Fee due at t1, then paid at t2, arriving reversed: the dossier is in
    processing, and the fee notice is refused as stale, counted and told."""
    running = start_broker()
    desk, agency = declared.desk_queue("T.MC.B"), declared.agency_queue("T.SO.TP")
    code = submit(amqp, declared, "T.SO.TP", procedure_code="1.004227")["dossier_code"]
    take(amqp, desk, 1, "receipt")
    t1 = datetime(2026, 11, 25, 1, 59, 50, tzinfo=UTC)
    assert t1 == clock() - timedelta(seconds=10)
    t2 = t1 + timedelta(milliseconds=1)
    amqp.status(declared, _status(code, "T.SO.TP", "processing", t2))
    # applied first, so that the older one is judged against the ledger's row (whose
    # times are in the catalog's zone), not against one of its own batch
    assert [n["notice"] for n in take(amqp, desk, 1, "processing")] == ["status_changed"]
    amqp.status(declared, _status(code, "T.SO.TP", "financial_obligation", t1,
                                  amount_vnd=200_000))
    refused = take(amqp, agency, 1, "stale refusal")[0]
    assert refused["notice"] == "update_refused" and refused["state"] == 4
    # both times in the offset the agency wrote them in
    assert refused["reason"] == ("stale: sent 2026-11-25T01:59:50+00:00, before the update "
                                 "applied last (sent 2026-11-25T01:59:50.001000+00:00)")
    row = ledger.dossier(code)
    assert row is not None and row["state"] == 4 and row["status_sent_at"] == t2
    assert [e["kind"] for e in ledger.history(code)] == ["received", "process"]
    wait_for(lambda: running.broker.metrics.status_total.labels(
        "refused_update", "stale")._value.get() == 1, what="stale refusal counted")
    assert ledger.count_inbox_outcomes()["refused_update"] == 1

    amqp.status(declared, _status(code, "T.SO.TP", "financial_obligation", t2,
                                  amount_vnd=200_000))  # sent at the same instant: applied
    assert take(amqp, desk, 1, "fee")[0]["notice"] == "financial_obligation"
    # an agency clock far ahead is believed only a few minutes ahead of the broker's,
    # so one bad timestamp cannot make every later update of the dossier stale
    amqp.status(declared, _status(code, "T.SO.TP", "processing", t2 + timedelta(days=365)))
    take(amqp, desk, 1, "paid")
    amqp.status(declared, _status(code, "T.SO.TP", "resolved", t2 + timedelta(hours=1)))
    assert take(amqp, desk, 1, "result")[0]["notice"] == "result_ready"


def test_after_a_hand_off_the_next_agency_is_not_compared_with_the_previous_one(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp, clock: FakeClock) -> None:
    """Each agency's clock is its own: a hand-off forgets the last update's sent_at."""
    start_broker()
    code, _ = _chain(amqp, declared, clock)
    sent = datetime(2026, 11, 26, 2, 0, tzinfo=UTC)
    amqp.status(declared, _status(code, "T.UBND.A", "resolved", sent))
    take(amqp, declared.agency_queue("T.CA"), 1, "step 2")
    amqp.status(declared, _status(code, "T.CA", "accepted", sent - timedelta(minutes=2)))
    assert take(amqp, declared.desk_queue("T.CENTRE"), 1)[0]["notice"] == "status_changed"
    wait_for(lambda: [e["kind"] for e in ledger.history(code)] == [
        "received", "hand_off", "accept"], what="accepted by T.CA")


def _engine(procedure: str) -> Engine:
    """The mini catalog with one more procedure, 1.000009 (``procedure``: its fields
    after the code, boundary-free)."""
    text = MINI_CATALOG.read_text().replace(
        "procedures:\n", f'procedures:\n  - {{code: "1.000009", {procedure}, '
        "boundary_free: true}\n", 1)
    return Engine(parse_catalog(text.encode(), "mini.yaml"))


def _handlers(ledger: Ledger, clock: FakeClock, procedure: str
              ) -> tuple[Router, StatusRouter]:
    """A router and a status router on :func:`_engine`'s catalog and the test's clock."""
    engine = _engine(procedure)
    t = Topology("t")
    return (Router(lambda: engine, ledger, t, clock=clock),
            StatusRouter(lambda: engine, ledger, t, clock=clock))


def test_a_chain_that_comes_back_to_an_agency_judges_its_old_updates_stale(
        ledger: Ledger, clock: FakeClock) -> None:
    # a hand-off forgot the last update's sent_at; an agency holding a later step again
    # had an update it sent for its first step (delayed, redelivered) applied to the
    # later one: here a rejection sent before it resolved step 1 rejected the dossier
    router, status = _handlers(ledger, clock, (
        'name: "There and back", processing: {amount: 10, unit: working_days}, competence: '
        "{chain: [{agency: T.SO.TP}, {agency: T.CA}, {agency: T.SO.TP}]}"))
    code = json.loads(router.handle([intake_delivery(
        1, encode(dossier(procedure_code="1.000009")), "submit:1")])[0].body)["dossier_code"]
    sent = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)
    status.handle([status_delivery(2, _status(code, "T.SO.TP", "resolved", sent))])
    status.handle([status_delivery(3, _status(code, "T.CA", "resolved",
                                              sent + timedelta(hours=2)))])  # clock ahead
    row = ledger.dossier(code)
    assert row is not None and (row["step"], row["agency_id"]) == (3, "T.SO.TP")
    assert row["status_sent_at"] == sent  # its own last update, not T.CA's
    out = status.handle([status_delivery(4, _status(
        code, "T.SO.TP", "rejected", sent - timedelta(minutes=1), reason="thiếu giấy tờ"))])
    told = [json.loads(o.body) for o in out]
    assert [(n["notice"], n["state"]) for n in told] == [("update_refused", 4)]
    assert told[0]["reason"].startswith("stale: sent 2026-11-25T01:59:00+00:00")
    row = ledger.dossier(code)
    assert row is not None and row["state"] == 4  # processing, not refused
    # nor is T.CA's clock held against T.SO.TP: an update after its own last applies
    status.handle([status_delivery(5, _status(code, "T.SO.TP", "resolved",
                                              sent + timedelta(seconds=1)))])
    row = ledger.dossier(code)
    assert row is not None and row["state"] == 9


def test_a_withdrawal_tells_agency_and_desk_under_ids_of_their_own(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp) -> None:
    """One id per message: dead-letter show/replay --id and a dedupe store shared by a
    commune's desk and its committee must not take one notice for the other."""
    start_broker()
    code = submit(amqp, declared, "T.UBND.A")["dossier_code"]
    take(amqp, declared.desk_queue("T.MC.B"), 1, "receipt")
    amqp.status(declared, DossierWithdrawn(event_id=uuid.uuid4(), dossier_code=code,
                                           desk_id="T.MC.B", sent_at=datetime.now(UTC)))
    agency = wait_for(lambda: amqp.get_all(declared.agency_queue("T.UBND.A")), what="agency")
    desk = wait_for(lambda: amqp.get_all(declared.desk_queue("T.MC.B")), what="desk")
    assert [json.loads(b)["notice"] for _, b in agency + desk] == ["withdrawn", "withdrawn"]
    assert [p.message_id for p, _ in agency] == [f"{code}:withdrawn:2:agency"]
    assert [p.message_id for p, _ in desk] == [f"{code}:withdrawn:2"]


def test_a_pause_moves_a_calendar_days_due_date_by_the_whole_time_paused(
        ledger: Ledger, clock: FakeClock) -> None:
    # DOMAIN.md: "the due date moves by the paused time". A procedure counted in calendar
    # days stops its count on days off too: moved by the working time paused, a pause
    # over a weekend moved it by nothing (found by a review)
    router, status = _handlers(ledger, clock, (
        'name: "Calendar days", processing: {amount: 5, unit: calendar_days}, '
        "competence: {agency: T.SO.TP}"))
    clock.set("2026-11-25 09:00")  # Wed
    d = dossier(procedure_code="1.000009")
    code = json.loads(router.handle([intake_delivery(1, encode(d), "submit:1")])[0].body)[
        "dossier_code"]
    row = ledger.dossier(code)
    assert row is not None and row["due_at"] == vn("2026-11-30 09:00")  # Mon: 5 days
    clock.set("2026-11-27 16:00")  # Fri
    status.handle([status_delivery(2, DossierStatus(
        update_id=uuid.uuid4(), dossier_code=code, agency_id="T.SO.TP",
        status="supplement_requested", requested_documents=["CCCD"],
        sent_at=datetime.now(UTC)))])
    clock.set("2026-11-30 08:00")  # Mon: paused 2 days 16 hours, 1 working hour of them
    out = status.handle([status_delivery(3, DossierSupplemented(
        event_id=uuid.uuid4(), dossier_code=code, desk_id="T.MC.B",
        documents=[doc("cccd.pdf")], sent_at=datetime.now(UTC)))])
    row = ledger.dossier(code)
    assert row is not None and row["due_at"] == vn("2026-12-03 01:00") == row["step_due_at"]
    told = [json.loads(o.body) for o in out if o.type == "agency.notice"]
    assert told[0]["reason"] == (
        "the clock runs again: legal due date 2026-12-03T01:00+07:00, this step's "
        "2026-12-03T01:00+07:00 (moved by the 2.7 days paused)")


def _pause(status: StatusRouter, clock: FakeClock, code: str, agency: str, asked: str,
           back: str, tag: int) -> list[Any]:
    """The agency asks for a supplement at ``asked``; the desk brings it at ``back``."""
    clock.set(asked)
    status.handle([status_delivery(tag, _status(code, agency, "supplement_requested",
                                                clock().astimezone(UTC),
                                                requested_documents=["CCCD"]))])
    clock.set(back)
    return status.handle([status_delivery(tag + 1, DossierSupplemented(
        event_id=uuid.uuid4(), dossier_code=code, desk_id="T.MC.B",
        documents=[doc("cccd.pdf")], sent_at=clock().astimezone(UTC)))])


def _received(ledger: Ledger, clock: FakeClock, procedure: str, at: str
              ) -> tuple[StatusRouter, str]:
    """A dossier of ``procedure`` (1.000009, see :func:`_handlers`) submitted and
    received at ``at`` (Vietnam time): the status router and its code."""
    router, status = _handlers(ledger, clock, procedure)
    clock.set(at)
    d = dossier(procedure_code="1.000009", submitted_at=clock().isoformat())
    code = json.loads(router.handle([intake_delivery(1, encode(d), "submit:1")])[0].body)[
        "dossier_code"]
    return status, code


def _received_monday(ledger: Ledger, clock: FakeClock, procedure: str
                     ) -> tuple[StatusRouter, str]:
    """As :func:`_received`, on Monday 2026-11-23 at 09:00."""
    return _received(ledger, clock, procedure, "2026-11-23 09:00")


def test_a_pause_extends_the_calendar_days_end_not_the_working_day_it_was_moved_to(
        ledger: Ledger, clock: FakeClock) -> None:
    # 5 calendar days from Monday 09:00 end on Saturday, moved to Monday 30. Extended from
    # that Monday, a pause of a day gave the weekend a second time (found by a review):
    # 6 days from receipt end on Sunday, still Monday 30. The next pause extends the
    # recorded end again (Sunday 09:00 + 12 h), not Monday
    status, code = _received_monday(ledger, clock, (
        'name: "Calendar days", processing: {amount: 5, unit: calendar_days}, '
        "competence: {agency: T.SO.TP}"))
    row = ledger.dossier(code)
    assert row is not None and row["due_at"] == vn("2026-11-30 09:00")
    _pause(status, clock, code, "T.SO.TP", "2026-11-25 10:00", "2026-11-26 10:00", 2)
    row = ledger.dossier(code)
    assert row is not None and row["due_at"] == vn("2026-11-30 09:00") == row["step_due_at"]
    assert row["flags"]["calendar_ends"] == {"due_at": "2026-11-29T09:00:00+07:00",
                                             "step_due_at": "2026-11-29T09:00:00+07:00"}
    _pause(status, clock, code, "T.SO.TP", "2026-11-27 10:00", "2026-11-27 22:00", 4)
    row = ledger.dossier(code)
    assert row is not None and row["due_at"] == vn("2026-11-30 21:00") == row["step_due_at"]


def test_a_pause_extends_a_handed_on_calendar_days_step_from_its_own_end(
        ledger: Ledger, clock: FakeClock) -> None:
    # the hand-off records where the next step's calendar days end before they are moved
    # onto a working day: step 2 handed on at 10:00 the day of receipt ends Saturday,
    # moved to Monday; a day's pause leaves it there, and moves the dossier's Thursday by
    # the day
    status, code = _received_monday(ledger, clock, (
        'name: "Chain in calendar days", processing: {amount: 10, unit: calendar_days}, '
        "competence: {chain: [{agency: T.SO.TP}, {agency: T.CA}]}"))
    clock.set("2026-11-23 10:00")
    status.handle([status_delivery(2, _status(code, "T.SO.TP", "resolved",
                                              clock().astimezone(UTC)))])
    row = ledger.dossier(code)
    assert row is not None and (row["step"], row["agency_id"]) == (2, "T.CA")
    assert (row["step_due_at"], row["due_at"]) == (vn("2026-11-30 10:00"),
                                                   vn("2026-12-03 09:00"))
    _pause(status, clock, code, "T.CA", "2026-11-25 10:00", "2026-11-26 10:00", 3)
    row = ledger.dossier(code)
    assert row is not None
    assert (row["step_due_at"], row["due_at"]) == (vn("2026-11-30 10:00"),
                                                   vn("2026-12-04 09:00"))


@pytest.mark.parametrize(
    ("received", "due", "asked", "back", "moved_due", "moved_by"),
    [
        # received on Friday before opening, the clock starts at 07:00; asked for
        # documents at once, brought at 09:00: paused for the two hours its clock ran
        ("2026-11-27 06:00", "2026-12-02 07:00", "2026-11-27 06:15", "2026-11-27 09:00",
         "2026-12-02 09:00", "2.0 hours"),
        # received on Friday after closing, 5 calendar days count from Friday's closing,
        # the weekend among them (once the count began on Monday morning and lost the
        # weekend: due Mon 7 Dec 07:00, found by a review). Asked for documents that
        # evening and brought on Monday at 09:00, its days stood still for the whole
        # 2 days 15 h 15 min: Sat 5 Dec 08:15, a day off, so Mon 7 Dec 08:15
        ("2026-11-27 17:30", "2026-12-02 17:00", "2026-11-27 17:45", "2026-11-30 09:00",
         "2026-12-07 08:15", "2.6 days"),
    ], ids=["before_opening", "after_closing"])
def test_a_pause_of_calendar_days_counts_from_their_start(
        ledger: Ledger, clock: FakeClock, received: str, due: str, asked: str, back: str,
        moved_due: str, moved_by: str) -> None:
    status, code = _received(ledger, clock, (
        'name: "Calendar days", processing: {amount: 5, unit: calendar_days}, '
        "competence: {agency: T.SO.TP}"), received)
    row = ledger.dossier(code)
    assert row is not None and row["due_at"] == vn(due)
    out = _pause(status, clock, code, "T.SO.TP", asked, back, 2)
    row = ledger.dossier(code)
    assert row is not None and row["due_at"] == vn(moved_due) == row["step_due_at"]
    told = [json.loads(o.body) for o in out if o.type == "agency.notice"]
    assert told[0]["reason"].endswith(f"(moved by the {moved_by} paused)"), told[0]


def test_a_pause_of_a_later_step_counts_from_its_hand_off_s_clock(
        ledger: Ledger, clock: FakeClock) -> None:
    # step 2, handed on before opening, starts at 07:00; a pause asked for at once and
    # ended at 09:00 paused its step for the two hours since, and the dossier, whose
    # clock ran since its receipt, for the whole 2 h 45 min
    status, code = _received(ledger, clock, (
        'name: "Chain", processing: {amount: 10, unit: calendar_days}, '
        "competence: {chain: [{agency: T.SO.TP}, {agency: T.CA}]}"), "2026-11-30 16:00")  # Mon
    clock.set("2026-12-01 06:00")  # step 1 done before opening: step 2 starts Tue 07:00
    status.handle([status_delivery(2, _status(code, "T.SO.TP", "resolved",
                                              clock().astimezone(UTC)))])
    row = ledger.dossier(code)
    assert row is not None and (row["step"], row["step_due_at"], row["due_at"]) == (
        2, vn("2026-12-07 07:00"), vn("2026-12-10 16:00"))  # Sun 6 07:00 → Mon 7
    _pause(status, clock, code, "T.CA", "2026-12-01 06:15", "2026-12-01 09:00", 3)
    row = ledger.dossier(code)
    assert row is not None and (row["step_due_at"], row["due_at"]) == (
        vn("2026-12-07 09:00"), vn("2026-12-10 18:45"))


def test_a_pause_never_leaves_a_step_due_after_its_dossier(
        ledger: Ledger, clock: FakeClock) -> None:
    # a step counted in calendar days, in a dossier counted in working days: paused
    # overnight, the step moved by the 16 hours, the dossier by the 2 office hours among
    # them, and the step came due after its dossier (found by a review). The step is due
    # with its dossier, its own end kept for the report
    status, code = _received(ledger, clock, (
        'name: "Mixed units", processing: {amount: 2, unit: working_days}, competence: '
        "{chain: [{agency: T.SO.TP, processing: {amount: 2, unit: calendar_days}}, "
        "{agency: T.CA, processing: {amount: 1, unit: working_days}}]}"), "2026-11-30 09:00")  # Mon
    row = ledger.dossier(code)
    assert row is not None and (row["step_due_at"], row["due_at"]) == (
        vn("2026-12-02 09:00"), vn("2026-12-02 09:00"))
    _pause(status, clock, code, "T.SO.TP", "2026-11-30 16:00", "2026-12-01 08:00", 2)
    row = ledger.dossier(code)
    assert row is not None and (row["step_due_at"], row["due_at"]) == (
        vn("2026-12-02 11:00"), vn("2026-12-02 11:00"))
    assert row["flags"]["step_own_due_at"] == "2026-12-03T01:00:00+07:00"
    assert row["flags"]["calendar_ends"] == {"step_own_due_at": "2026-12-03T01:00:00+07:00"}


@pytest.mark.parametrize(("before", "back", "then", "ends"), [
    # asked for on receipt: the agency may still refuse the dossier once it is complete
    ([], 2, "rejected", 3),
    # asked for once it took the dossier up: back to processing, where refusing is not
    # allowed (stopping is)
    (["accepted"], 4, "stopped", 8),
])
def test_a_supplement_brings_the_dossier_back_where_the_request_found_it(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp, clock: FakeClock,
        before: list[str], back: int, then: str, ends: int) -> None:
    """DOMAIN.md: 5→4 (or 2) after the supplement. It went back to processing (4) always,
    where an agency that asked on receipt could no longer refuse the dossier (2→3)."""
    start_broker()
    desk, agency = declared.desk_queue("T.MC.B"), declared.agency_queue("T.SO.TP")
    code = submit(amqp, declared, "T.SO.TP", procedure_code="1.004227")["dossier_code"]
    take(amqp, desk, 1, "receipt")
    for status in before:
        report(amqp, declared, code, "T.SO.TP", status)
    take(amqp, desk, len(before), "status changes")
    clock.set("2026-11-26 09:00")
    report(amqp, declared, code, "T.SO.TP", "supplement_requested", reason="thiếu tờ khai",
           requested_documents=["Tờ khai"])
    take(amqp, desk, 1, "supplement request")
    clock.set("2026-11-26 10:00")
    amqp.status(declared, DossierSupplemented(
        event_id=uuid.uuid4(), dossier_code=code, desk_id="T.MC.B",
        documents=[doc("to-khai.pdf")], sent_at=datetime.now(UTC)))
    assert take(amqp, agency, 1, "supplement to agency")[0]["state"] == back
    assert take(amqp, desk, 1, "status change")[0]["state"] == back
    if back == 4:  # refusing is not among what processing allows
        report(amqp, declared, code, "T.SO.TP", "rejected", reason="không đủ điều kiện")
        assert take(amqp, agency, 1, "the refusal")[0]["reason"].startswith(
            "status rejected is not allowed: dossier is processing (4)")
    clock.set("2026-11-26 11:00")
    report(amqp, declared, code, "T.SO.TP", then, reason="không đủ điều kiện")
    assert take(amqp, desk, 1, "the end")[0]["state"] == ends
    row = ledger.dossier(code)
    assert row is not None and row["state"] == ends
    assert [e["state_to"] for e in ledger.history(code)] == [2, *[4] * len(before), 5, back,
                                                             ends]


@pytest.mark.parametrize(("status", "words", "said"), [
    ("rejected", "a rejected status says why, in reason", {"reason": "không đủ điều kiện"}),
    ("supplement_requested", "names what the citizen is to bring",
     {"requested_documents": ["Tờ khai"]}),
])
def test_a_status_that_does_not_say_why_is_answered_and_changes_nothing(
        declared: Topology, ledger: Ledger, start_broker, amqp: Amqp,
        status: str, words: str, said: dict[str, Any]) -> None:
    """DOMAIN.md: a refusal is final "with reason". Without one, the agency is told (not
    a dead letter it never hears of), and the dossier stays where it was."""
    start_broker()
    desk, agency = declared.desk_queue("T.MC.B"), declared.agency_queue("T.SO.TP")
    code = submit(amqp, declared, "T.SO.TP", procedure_code="1.004227")["dossier_code"]
    take(amqp, desk, 1, "receipt")
    report(amqp, declared, code, "T.SO.TP", status)
    answer = take(amqp, agency, 1, "the refusal")[0]
    assert answer["notice"] == "update_refused" and words in answer["reason"]
    row = ledger.dossier(code)
    assert row is not None and row["state"] == 2
    assert [e["kind"] for e in ledger.history(code)] == ["received"]
    report(amqp, declared, code, "T.SO.TP", status, **said)
    assert take(amqp, desk, 1, "the desk told")[0]["notice"] in ("refused",
                                                                 "supplement_requested")
    assert amqp.json_all(declared.dead_queue("status")) == []


def _watch(ledger: Ledger, clock: FakeClock, procedure: str) -> DeadlineWatch:
    """The deadline watch on :func:`_engine`'s catalog and the test's clock."""
    engine = _engine(procedure)
    return DeadlineWatch(lambda: engine, ledger, Topology("t"), WatchSettings(), clock=clock)


def _watched(ledger: Ledger, clock: FakeClock, procedure: str, at: str
             ) -> tuple[StatusRouter, str, DeadlineWatch]:
    """:func:`_received`, and the deadline watch on the same catalog."""
    status, code = _received(ledger, clock, procedure, at)
    return status, code, _watch(ledger, clock, procedure)


def _chained(days: int, *steps: str) -> str:
    """A procedure of ``days`` working days whose chain is ``steps``."""
    return (f'name: "Chain", processing: {{amount: {days}, unit: working_days}}, '
            f"competence: {{chain: [{', '.join(steps)}]}}")


def _kinds(ledger: Ledger, code: str) -> list[str]:
    """The kinds of a dossier's events, in order."""
    with ledger.read() as conn:
        return list(conn.execute(select(events.c.kind).where(events.c.dossier_code == code)
                                 .order_by(events.c.seq)).scalars())


_ONE_DAY = ('name: "One day", processing: {amount: 1, unit: working_days}, '
            "competence: {agency: T.SO.TP}")


def test_a_supplement_asked_for_once_the_dossier_is_late_leaves_its_due_date(
        ledger: Ledger, clock: FakeClock) -> None:
    # asked for the morning after its due day, when the watch had told the citizen it
    # was late, the pause still moved the due date by the time paused: onto the moment
    # the supplement came back, the watch level back to nothing sent, and the result an
    # hour later counted on time after the apology (found by a review). Its lateness
    # stands (lifecycle.paused_in_time)
    status, code, watch = _watched(ledger, clock, _ONE_DAY, "2026-11-30 09:00")  # Mon
    clock.set("2026-12-02 00:05")  # Wed: due Tue 09:00
    assert sorted(json.loads(o.body)["notice"] for o in watch.flag()) == [
        "overdue", "overdue_apology"]
    told = _pause(status, clock, code, "T.SO.TP", "2026-12-02 08:00", "2026-12-02 10:00", 2)
    row = ledger.dossier(code)
    assert row is not None and (row["due_at"], row["step_due_at"], row["watch_level"]) == (
        vn("2026-12-01 09:00"), vn("2026-12-01 09:00"), 2)
    assert json.loads(told[0].body)["reason"] == (
        "the clock runs again: legal due date 2026-12-01T09:00+07:00, this step's "
        "2026-12-01T09:00+07:00 (unchanged: the supplement was asked for after its due "
        "day)")
    clock.set("2026-12-02 10:01")
    assert watch.flag() == []  # told at risk after its apology, before
    clock.set("2026-12-02 11:00")
    out = status.handle([status_delivery(4, _status(code, "T.SO.TP", "resolved",
                                                    clock().astimezone(UTC)))])
    assert "overdue_apology" not in [json.loads(o.body).get("notice") for o in out]
    row = ledger.dossier(code)
    assert row is not None
    assert timeliness(row["finished_at"], row["due_at"], ZoneInfo(LEGAL_TIMEZONE)) == "late"
    assert _kinds(ledger, code).count("overdue") == 1


def test_a_supplement_asked_for_once_a_step_is_late_moves_only_its_dossier(
        ledger: Ledger, clock: FakeClock) -> None:
    # the same for a chain step told overdue: its own due date stays (the report judges
    # the step late), while the dossier's, still ahead, moves by the two hours paused
    status, code, watch = _watched(ledger, clock, _chained(
        5, "{agency: T.SO.TP, processing: {amount: 1, unit: working_days}}", "{agency: T.CA}"),
        "2026-11-30 09:00")  # Mon
    clock.set("2026-12-02 00:05")
    assert [json.loads(o.body)["notice"] for o in watch.flag()] == ["overdue"]
    assert _kinds(ledger, code)[-1] == "step_overdue"  # to its agency alone
    told = _pause(status, clock, code, "T.SO.TP", "2026-12-02 08:00", "2026-12-02 10:00", 2)
    row = ledger.dossier(code)
    assert row is not None and (row["step_due_at"], row["due_at"]) == (
        vn("2026-12-01 09:00"), vn("2026-12-07 11:00"))
    assert (row["watch_level"], row["step_watch_level"]) == (0, 2)
    assert json.loads(told[0].body)["reason"] == (
        "the clock runs again: legal due date 2026-12-07T11:00+07:00 (moved by the 2.0 "
        "working hours paused), this step's 2026-12-01T09:00+07:00 (unchanged: the "
        "supplement was asked for after its due day)")
    clock.set("2026-12-02 11:00")
    status.handle([status_delivery(4, _status(code, "T.SO.TP", "resolved",
                                              clock().astimezone(UTC)))])
    figures = period_report(ledger, date(2026, 11, 30), date(2026, 11, 30), "agency",
                            ZoneInfo(LEGAL_TIMEZONE), clock())["groups"]["T.SO.TP"]
    assert (figures["steps_finished"], figures["steps_late"]) == (1, 1)


def test_a_pause_that_moves_only_the_step_leaves_the_dossier_s_watch_level(
        ledger: Ledger, clock: FakeClock) -> None:
    # a pause after closing moves a step counted in calendar days by its half hour and
    # its dossier, in working days, by nothing: the dossier's watch level went back to
    # nothing sent all the same, and the next round recorded it at risk a second time
    # (found by a review)
    status, code, watch = _watched(ledger, clock, _chained(
        4, "{agency: T.SO.TP, processing: {amount: 3, unit: calendar_days}}", "{agency: T.CA}"),
        "2026-11-30 09:00")  # Mon
    row = ledger.dossier(code)
    assert row is not None and (row["step_due_at"], row["due_at"]) == (
        vn("2026-12-03 09:00"), vn("2026-12-04 09:00"))
    clock.set("2026-12-03 16:00")  # Thu: 3 working hours left of the dossier's 32
    watch.flag()
    assert _kinds(ledger, code).count("at_risk") == 1
    told = _pause(status, clock, code, "T.SO.TP", "2026-12-03 17:30", "2026-12-03 18:00", 2)
    row = ledger.dossier(code)
    assert row is not None and (row["step_due_at"], row["due_at"], row["watch_level"]) == (
        vn("2026-12-03 09:30"), vn("2026-12-04 09:00"), 1)
    assert json.loads(told[0].body)["reason"] == (
        "the clock runs again: legal due date 2026-12-04T09:00+07:00 (unchanged: no "
        "working time was paused), this step's 2026-12-03T09:30+07:00 (moved by the 0.5 "
        "hours paused)")
    clock.set("2026-12-03 18:01")
    watch.flag()
    assert _kinds(ledger, code).count("at_risk") == 1


def test_a_step_in_calendar_days_is_at_risk_by_the_working_time_it_was_given(
        ledger: Ledger, clock: FakeClock) -> None:
    # handed on Thursday 09:00, 2 calendar days end Saturday 09:00, moved to Monday: the
    # step was given Thu 6 h + Fri 8 h + Mon 2 h, so at risk for its last 4 h. Counted
    # back from Monday, it was given 2 h, and told at risk with half an hour left (found
    # by a review)
    status, code, watch = _watched(ledger, clock, _chained(
        10, "{agency: T.SO.TP, processing: {amount: 3, unit: working_days}}",
        "{agency: T.CA, processing: {amount: 2, unit: calendar_days}}"),
        "2026-12-07 09:00")  # Mon
    clock.set("2026-12-10 09:00")
    status.handle([status_delivery(2, _status(code, "T.SO.TP", "resolved",
                                              clock().astimezone(UTC)))])
    row = ledger.dossier(code)
    assert row is not None and (row["step"], row["step_due_at"]) == (
        2, vn("2026-12-14 09:00"))
    clock.set("2026-12-11 13:30")  # Fri: 5.5 h left
    assert watch.flag() == []
    clock.set("2026-12-11 15:30")  # 3.5 h left
    assert [json.loads(o.body)["notice"] for o in watch.flag()] == ["at_risk"]
    assert _kinds(ledger, code)[-1] == "step_at_risk"


def test_a_pause_across_a_reload_moves_the_due_date_as_it_was_counted_at_receipt(
        ledger: Ledger, clock: FakeClock) -> None:
    # received in working days, supplemented after a reload made the procedure calendar
    # days: its due date moved by the whole time paused, counted from an end in calendar
    # days it never had (found by a review). It is counted as at its receipt
    status, code = _received(ledger, clock, (
        'name: "Ten days", processing: {amount: 10, unit: working_days}, '
        "competence: {agency: T.SO.TP}"), "2026-11-30 09:00")  # Mon
    row = ledger.dossier(code)
    assert row is not None and row["due_at"] == vn("2026-12-14 09:00")
    assert row["flags"] == {"processing_unit": "working_days"}
    clock.set("2026-12-04 10:00")  # Fri
    status.handle([status_delivery(2, _status(code, "T.SO.TP", "supplement_requested",
                                              clock().astimezone(UTC),
                                              requested_documents=["CCCD"]))])
    _, reloaded = _handlers(ledger, clock, (
        'name: "Ten days", processing: {amount: 10, unit: calendar_days}, '
        "competence: {agency: T.SO.TP}"))
    clock.set("2026-12-07 10:00")  # Mon: 8 working hours paused, 3 days
    out = reloaded.handle([status_delivery(3, DossierSupplemented(
        event_id=uuid.uuid4(), dossier_code=code, desk_id="T.MC.B",
        documents=[doc("cccd.pdf")], sent_at=clock().astimezone(UTC)))])
    row = ledger.dossier(code)
    assert row is not None and (row["due_at"], row["step_due_at"]) == (
        vn("2026-12-15 09:00"), vn("2026-12-15 09:00"))
    assert json.loads(out[0].body)["reason"] == (
        "the clock runs again: legal due date 2026-12-15T09:00+07:00, this step's "
        "2026-12-15T09:00+07:00 (moved by the 8.0 working hours paused)")
