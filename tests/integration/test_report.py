"""`casebroker report` on a ledger the router and the status router wrote (SQLite and
PostgreSQL), with the broker's clock moved day by day."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from broker.cli import main
from broker.consumers.router import Router
from broker.consumers.status import StatusRouter
from broker.ledger import Ledger, RawJSON
from broker.messages import (
    Document,
    DossierReturned,
    DossierStatus,
    DossierSubmitted,
    DossierSupplemented,
    DossierWithdrawn,
    encode,
)
from broker.ops.prune import prune
from broker.ops.report import format_report, report, write_csv
from broker.rules.catalog import load_catalog
from broker.rules.engine import Engine
from broker.tables import STEP_OWN_DUE, is_pruned
from broker.topology import Topology
from tests.conftest import MINI_CATALOG
from tests.helpers import dossier, intake_delivery, said, status_delivery
from tests.integration.conftest import FakeClock, vn

pytestmark = pytest.mark.integration


def test_the_report_counts_each_dossier_received_in_the_period_once_by_its_outcome(
        ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    clock = FakeClock("2026-11-24 09:00")  # a Tuesday; 1.001193 takes one working day
    engine = Engine(load_catalog(MINI_CATALOG))
    router = Router(lambda: engine, ledger, Topology("t"), clock=clock)
    status = StatusRouter(lambda: engine, ledger, Topology("t"), clock=clock)
    n = iter(range(1, 1000))
    codes: dict[str, str] = {}

    def submit(name: str, d: DossierSubmitted) -> None:
        out = router.handle([intake_delivery(next(n), encode(d), f"submit:{name}")])
        codes[name] = json.loads(out[-1].body)["dossier_code"]

    def agency(name: str, what: str, *result: Document) -> None:
        status.handle([status_delivery(next(n), DossierStatus(
            update_id=uuid.uuid4(), dossier_code=codes[name], agency_id="T.UBND.A",
            status=what, sent_at=clock.now, **said(what, documents=list(result))))])

    submit("before", dossier())                   # received the day before the period
    clock.set("2026-11-25 09:00")
    for name in ("early", "on_time", "late", "overdue", "paused", "rejected"):
        submit(name, dossier())                   # desk B, a ward of A: boundary-free
    # A's own desk, online, no document attached: not digitized
    submit("withdrawn", dossier(desk_id="T.MC.A", channel="online", documents=[]))
    submit("refused", dossier("1.000002", desk_id="T.MC.A"))  # not open here yet
    agency("early", "resolved")                   # due 26 Nov: done the day before
    agency("paused", "supplement_requested")      # paused before its due time
    agency("rejected", "rejected")
    agency("overdue", "accepted")
    status.handle([status_delivery(next(n), DossierWithdrawn(
        event_id=uuid.uuid4(), dossier_code=codes["withdrawn"], desk_id="T.MC.A",
        sent_at=clock.now))])
    clock.set("2026-11-26 16:30")
    agency("on_time", "resolved", Document(  # the only result sent as a document
        name="giay-chung-nhan.pdf", uri="s3://results/1", sha256="b" * 64, size=2000,
        media_type="application/pdf"))
    status.handle([status_delivery(next(n), DossierReturned(
        event_id=uuid.uuid4(), dossier_code=codes["on_time"], desk_id="T.MC.B",
        returned_at=clock.now, satisfaction=2))])  # resolved in time, the citizen unhappy
    clock.set("2026-11-27 07:30")                 # the next morning: a day late
    agency("late", "resolved")
    never = dossier("9.999999", desk_id="T.MC.A")  # triaged, then refused by an operator
    ledger.refuse({"submission_id": str(never.submission_id), "message_id": "submit:never",
                   "desk_id": "T.MC.A", "procedure_code": "9.999999", "reason": "not here",
                   "refused_by": "operator-1", "refused_at": clock.now,
                   "submission": RawJSON(encode(never).decode()),
                   "notice_id": "submit:never:refused", "notice": b"{}"})
    held = dossier(applicant_ward="99999")  # triaged, then withdrawn by the citizen at B
    router.handle([intake_delivery(next(n), encode(held), "submit:held")])
    status.handle([status_delivery(next(n), DossierWithdrawn(
        event_id=uuid.uuid4(), submission_id=held.submission_id, desk_id="T.MC.B",
        sent_at=clock.now))])

    assert main(["report", "--from", "2026-11-25", "--to", "2026-11-30", "--by", "agency",
                 "--json", "--db-url", ledger.url]) == 0
    data = json.loads(capsys.readouterr().out)
    total = data["total"]
    assert {k: total[k] for k in (
        "received", "refused_at_intake", "resolved", "early", "on_time", "late", "rejected",
        "withdrawn", "stopped", "open", "overdue", "online", "boundary_free", "rated",
        "satisfied", "refused_from_triage", "withdrawn_while_held")} == {
        "received": 7, "refused_at_intake": 1, "resolved": 3, "early": 1, "on_time": 1,
        "late": 1, "rejected": 1, "withdrawn": 1, "stopped": 0, "open": 2, "overdue": 1,
        "online": 1, "boundary_free": 6, "rated": 1, "satisfied": 4,
        "refused_from_triage": 1, "withdrawn_while_held": 1}
    assert total["on_time_share"] == round(2 / 3, 4)
    # over all 7 received: early, paused in time, rejected and withdrawn before the due
    # day; not the unhappy one, the late one nor the overdue one
    assert total["satisfaction_share"] == round(4 / 7, 4)
    assert total["boundary_free_share"] == round(6 / 7, 4)
    assert (total["digitized"], total["results_digitized"]) == (6, 1)
    assert (total["digitized_share"], total["results_digitized_share"]) == (
        round(6 / 7, 4), round(1 / 3, 4))
    refusing_unit = codes["refused"].rsplit("-", 2)[0]
    assert set(data["groups"]) == {"T.UBND.A", refusing_unit}
    assert data["groups"]["T.UBND.A"]["received"] == 7
    assert data["groups"][refusing_unit]["refused_at_intake"] == 1
    assert "refused_from_triage" not in data["groups"]["T.UBND.A"]  # no unit numbered it
    assert main(["report", "--from", "2026-11-25", "--to", "2026-11-30", "--by", "desk",
                 "--json", "--db-url", ledger.url]) == 0
    by_desk = json.loads(capsys.readouterr().out)["groups"]
    assert {k: (v["received"], v["refused_from_triage"], v["withdrawn_while_held"])
            for k, v in by_desk.items()} == {"T.MC.A": (1, 1, 0), "T.MC.B": (6, 0, 1)}
    # a desk that only withdrew a held dossier still has a count of refusals (0, not "-")
    assert main(["report", "--from", "2026-11-27", "--to", "2026-11-27", "--by", "desk",
                 "--json", "--db-url", ledger.url]) == 0
    groups = json.loads(capsys.readouterr().out)["groups"]
    assert {k: (v["received"], v["refused_from_triage"], v["withdrawn_while_held"])
            for k, v in groups.items()} == {"T.MC.A": (0, 1, 0), "T.MC.B": (0, 0, 1)}

    # the dossiers behind the figures, by due time: the overdue ones (the day before's
    # too, never taken up), and those resolved
    assert main(["dossier", "list", "--overdue", "--json", "--db-url", ledger.url]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [d["code"] for d in listed["dossiers"]] == [codes["before"], codes["overdue"]]
    assert "submission" not in listed["dossiers"][0]  # the applicant stays out of it
    assert main(["dossier", "list", "--agency", "T.UBND.A", "--state", "9", "--state", "10",
                 "--limit", "2", "--db-url", ledger.url]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()[1:-1]] == [
        codes["early"], codes["on_time"]]  # the same due time: in code order
    assert out.splitlines()[-1] == "2 dossier(s); more not shown (--limit 2)"
    # nothing listed: for a party the ledger knows, just that; for an id it never saw (a
    # typo, most likely), said so on stderr
    for args, unknown in ((["--agency", "T.UBND.A", "--state", "1"], []),
                          (["--desk", "T.MC.A", "--state", "1"], []),
                          (["--agency", "t.ubnd.a"], ["agency t.ubnd.a"]),
                          (["--agency", "T.UBND.A", "--desk", "T.MC.Z"], ["desk T.MC.Z"])):
        assert main(["dossier", "list", *args, "--db-url", ledger.url]) == 0
        out, err = capsys.readouterr()
        assert out.splitlines()[-1] == "0 dossier(s)"
        assert err.splitlines() == [
            f"note: no dossier in this ledger was ever with {party}; check the id (as the "
            "catalog spells it, case and dots included)" for party in unknown]

    # for a spreadsheet: the same figures, a row each
    assert main(["report", "--from", "2026-11-25", "--to", "2026-11-30", "--by", "agency",
                 "--csv", "--db-url", ledger.url]) == 0
    table = {r["agency"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert list(table) == ["total", *data["groups"]]
    assert table["total"]["late"] == "1" and table["total"]["on_time_share"] == "0.6667"
    assert table["T.UBND.A"]["refused_from_triage"] == ""  # no unit numbered those

    # a period of its own for the day before; the text report names what it counts
    assert main(["report", "--from", "2026-11-24", "--to", "2026-11-24", "--by", "desk",
                 "--db-url", ledger.url]) == 0
    out = capsys.readouterr().out
    assert "dossiers received 2026-11-24 to 2026-11-24 (Asia/Ho_Chi_Minh)" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert set(rows) == {"total", "T.MC.B"} and rows["T.MC.B"][1] == "1"
    assert "066090001234" not in out  # no personal data

    # a month on, prune erases the closed dossiers' submissions (the returned one with
    # the result, the withdrawn one without documents among them): the shares stay
    assert prune(ledger, 7, "ops-1", now=vn("2026-12-28 09:00")).dossiers == 4
    assert is_pruned(ledger.dossier(codes["on_time"])["submission"])
    again = report(ledger, date(2026, 11, 25), date(2026, 11, 30), None,
                   ZoneInfo("Asia/Ho_Chi_Minh"), vn("2026-12-28 09:00"))["total"]
    assert {k: again[k] for k in ("received", "digitized", "resolved", "results_digitized")
            } == {"received": 7, "digitized": 6, "resolved": 3, "results_digitized": 1}


def test_the_report_refuses_a_period_that_ends_before_it_starts(
        ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--from", "2026-12-01", "--to", "2026-11-01",
                 "--db-url", ledger.url]) == 2
    assert "--from 2026-12-01 is after --to 2026-11-01" in capsys.readouterr().err
    # --to not given: today, said as such (a --to the operator never wrote was named)
    assert main(["report", "--from", "2999-01-01", "--db-url", ledger.url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --from 2999-01-01 is after today (") and err.endswith(
        ", in Asia/Ho_Chi_Minh: --to's default)\n"), err


def test_an_empty_period_reports_zeros_and_no_shares(
        ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--from", "2020-01-01", "--to", "2020-03-31", "--json",
                 "--db-url", ledger.url]) == 0
    total = json.loads(capsys.readouterr().out)["total"]
    assert total["received"] == 0 and total["on_time_share"] is None


def test_with_by_agency_each_agency_gets_the_steps_it_handled_judged_by_the_steps_due_day(
        ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    clock = FakeClock("2026-11-24 09:00")  # a Tuesday
    engine = Engine(load_catalog(MINI_CATALOG))
    router = Router(lambda: engine, ledger, Topology("t"), clock=clock)
    status = StatusRouter(lambda: engine, ledger, Topology("t"), clock=clock)
    n = iter(range(1, 1000))
    codes: dict[str, str] = {}
    for name, procedure in (("x", "1.000001"), ("y", "1.000001"),  # chains of 3 agencies
                            ("z", "1.001193"), ("w", "1.001193")):  # one agency, 1 day
        out = router.handle([intake_delivery(next(n), encode(dossier(procedure)),
                                             f"submit:{name}")])
        codes[name] = json.loads(out[-1].body)["dossier_code"]

    def done(name: str, agency: str, at: str) -> None:
        clock.set(at)
        status.handle([status_delivery(next(n), DossierStatus(
            update_id=uuid.uuid4(), dossier_code=codes[name], agency_id=agency,
            status="resolved", sent_at=clock.now))])

    # step 1 of each chain is due Thu 26 Nov, 17:00; w and z are due Wed 25 Nov, 09:00
    done("w", "T.UBND.A", "2026-11-24 15:00")  # resolved, a day early
    done("x", "T.UBND.A", "2026-11-25 10:00")  # handed on a day early; T.CA's due Fri 27
    done("y", "T.UBND.A", "2026-11-26 16:00")  # on its due day; T.CA's due Mon 30, 16:00
    done("x", "T.CA", "2026-11-30 09:00")  # after its due day: late; T.BHXH's due Wed 2 Dec
    assert ledger.dossier(codes["y"])["agency_id"] == "T.CA"

    tz = ZoneInfo("Asia/Ho_Chi_Minh")
    data = report(ledger, date(2026, 11, 24), date(2026, 11, 24), "agency", tz,
                  vn("2026-12-01 08:00"))
    steps = {agency: {k.removeprefix("steps_"): v for k, v in values.items()
                      if k.startswith("steps_") and not k.endswith("_share")}
             for agency, values in data["groups"].items()}
    assert steps == {
        # w and x early, y on time; z (never taken up) still held, overdue since Wed
        "T.UBND.A": {"finished": 3, "early": 2, "on_time": 1, "late": 0, "open": 1,
                     "overdue": 1},
        # x late; y held past its step's due day (16:00 yesterday; the dossier's is Wed 2 Dec)
        "T.CA": {"finished": 1, "early": 0, "on_time": 0, "late": 1, "open": 1,
                 "overdue": 1},
        "T.BHXH": {"finished": 0, "early": 0, "on_time": 0, "late": 0, "open": 1,
                   "overdue": 0},
    }
    # the dossiers themselves stay with the unit that numbered them
    assert {a: v["received"] for a, v in data["groups"].items()} == {
        "T.UBND.A": 4, "T.CA": 0, "T.BHXH": 0}
    total = data["total"]
    assert (total["steps_finished"], total["steps_late"], total["steps_open"],
            total["steps_overdue"], total["steps_in_time_share"]) == (4, 1, 3, 2, 0.75)
    assert "steps done" in format_report(data)
    table = list(csv.DictReader(io.StringIO(_csv(data))))
    assert [(r["agency"], r["steps_late"]) for r in table] == [
        ("total", "1"), ("T.BHXH", "0"), ("T.CA", "1"), ("T.UBND.A", "0")]
    # the process-control sheet says the same of each step that ended
    assert main(["dossier", "show", codes["x"], "--db-url", ledger.url]) == 0
    ends = [line.split("  (")[1] for line in capsys.readouterr().out.splitlines()
            if "  (step" in line]
    assert ends == ["step 1 due 2026-11-26 17:00: early)", "step 2 due 2026-11-27 10:00: late)"]
    # grouped otherwise, or not at all, a report has no steps
    assert "steps_finished" not in report(ledger, date(2026, 11, 24), date(2026, 11, 24),
                                          "desk", tz, vn("2026-11-30 17:00"))["total"]


def test_a_result_is_judged_on_vietnams_days_whatever_zone_the_report_is_shown_in(
        ledger: Ledger) -> None:
    # found by a review: shown in UTC, every on-time result was early; here one finished
    # at 06:30 the day after its due day, in Vietnam (23:30 UTC on the due day): late
    clock = FakeClock("2026-11-24 09:00")
    engine = Engine(load_catalog(MINI_CATALOG))
    router = Router(lambda: engine, ledger, Topology("t"), clock=clock)
    status = StatusRouter(lambda: engine, ledger, Topology("t"), clock=clock)
    out = router.handle([intake_delivery(1, encode(dossier()), "submit:a")])
    code = json.loads(out[-1].body)["dossier_code"]
    row = ledger.dossier(code)
    assert row is not None
    due = row["due_at"].astimezone(ZoneInfo("Asia/Ho_Chi_Minh"))
    assert due.hour >= 7  # on the same date in UTC
    at = f"{(due.date() + timedelta(days=1)).isoformat()} 06:30"
    clock.set(at)
    status.handle([status_delivery(2, DossierStatus(
        update_id=uuid.uuid4(), dossier_code=code, agency_id="T.UBND.A", status="resolved",
        sent_at=vn(at)))])
    for zone, first, last in (("Asia/Ho_Chi_Minh", 24, 24), ("UTC", 24, 24),
                              ("America/Los_Angeles", 23, 23)):
        total = report(ledger, date(2026, 11, first), date(2026, 11, last), None,
                       ZoneInfo(zone), vn("2026-12-30 09:00"))["total"]
        assert (total["received"], total["early"], total["on_time"], total["late"]) == (
            1, 0, 0, 1), zone


def test_an_agency_handed_a_dossier_late_is_judged_by_its_own_time_and_told_the_dossiers(
        ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    clock = FakeClock("2026-11-24 09:00")  # a Tuesday; 1.000001: 3 agencies, 6 working days
    engine = Engine(load_catalog(MINI_CATALOG))
    router = Router(lambda: engine, ledger, Topology("t"), clock=clock)
    status = StatusRouter(lambda: engine, ledger, Topology("t"), clock=clock)
    n = iter(range(1, 1000))
    out = router.handle([intake_delivery(next(n), encode(dossier("1.000001")), "submit:v")])
    code = json.loads(out[-1].body)["dossier_code"]
    tz = ZoneInfo("Asia/Ho_Chi_Minh")

    def send(at: str, message: Any) -> list[Any]:
        clock.set(at)
        return status.handle([status_delivery(next(n), message)])

    def agency(at: str, agency_id: str, what: str) -> list[Any]:
        return send(at, DossierStatus(update_id=uuid.uuid4(), dossier_code=code,
                                      agency_id=agency_id, status=what, sent_at=vn(at),
                                      **said(what)))

    # step 1 was due Thu 26 Nov; handed on on the dossier's due day, Wed 2 Dec, T.CA's own
    # two working days run to Fri 4 Dec, 09:00: it is told the dossier's 17:00 today
    sent = agency("2026-12-02 09:00", "T.UBND.A", "resolved")
    assigned = next(json.loads(m.body) for m in sent if m.type == "dossier.assigned")
    row = ledger.dossier(code)
    assert row is not None and row["agency_id"] == "T.CA"
    assert (datetime.fromisoformat(assigned["step_due_at"]) == datetime.fromisoformat(
        assigned["due_at"]) == row["due_at"] == vn("2026-12-02 17:00"))
    assert row["flags"][STEP_OWN_DUE] == vn("2026-12-04 09:00").isoformat()
    # a supplement stops the clock a working day (Wed 13:30 to Thu 13:30): both move
    agency("2026-12-02 13:30", "T.CA", "supplement_requested")
    send("2026-12-03 13:30", DossierSupplemented(
        event_id=uuid.uuid4(), dossier_code=code, desk_id="T.MC.B",
        documents=[Document(name="ban-sao.pdf", uri="s3://docs/2", sha256="c" * 64,
                            size=10, media_type="application/pdf")],
        sent_at=vn("2026-12-03 13:30")))
    row = ledger.dossier(code)
    assert row is not None and row["step_due_at"] == row["due_at"] == vn("2026-12-03 17:00")
    assert row["flags"][STEP_OWN_DUE] == vn("2026-12-07 09:00").isoformat()

    def t_ca(now: str) -> dict[str, Any]:
        data = report(ledger, date(2026, 11, 24), date(2026, 11, 24), "agency", tz, vn(now))
        return {k: data["groups"]["T.CA"][f"steps_{k}"]
                for k in ("finished", "early", "on_time", "late", "open", "overdue")} | {
            "dossiers_overdue": data["total"]["overdue"]}

    # the next morning the dossier is overdue (not that evening: DOMAIN.md compares
    # dates), T.CA's step is not
    assert t_ca("2026-12-03 18:00")["dossiers_overdue"] == 0
    assert t_ca("2026-12-04 08:00") == {"finished": 0, "early": 0, "on_time": 0, "late": 0,
                                        "open": 1, "overdue": 0, "dossiers_overdue": 1}
    # handed on Fri 4 Dec, 10:00: a day after the dossier's due day, before its own
    agency("2026-12-04 10:00", "T.CA", "resolved")
    assert t_ca("2026-12-04 11:00") == {"finished": 1, "early": 1, "on_time": 0, "late": 0,
                                        "open": 0, "overdue": 0, "dossiers_overdue": 1}
    row = ledger.dossier(code)
    assert row is not None and row["agency_id"] == "T.BHXH"
    assert row["flags"][STEP_OWN_DUE] == vn("2026-12-08 10:00").isoformat()
    # the process-control sheet says both
    assert main(["dossier", "show", code, "--db-url", ledger.url]) == 0
    ends = [line.split("  (")[1] for line in capsys.readouterr().out.splitlines()
            if "  (step" in line]
    assert ends == ["step 1 due 2026-11-26 17:00: late)",
                    "step 2 due 2026-12-03 17:00, its own time to 2026-12-07 09:00: early)"]


def _csv(data: dict[str, Any]) -> str:
    out = io.StringIO()
    write_csv(data, out)
    return out.getvalue()
