"""Found by a review of the operator tools: the audit of a period reads that period's
dossiers only; it finds a desk's submission dead-lettered under an id written in capitals;
it never quotes a line of a desk's list that may hold personal data; a long report or
resend says how far it is; the report counts no delay for a dossier ended while it
waited for a supplement asked for in time; and an agency's resend carries the supplements
brought since the assignment."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Connection, Row

from broker.cli import main
from broker.consumers.router import Router
from broker.consumers.status import StatusRouter
from broker.ledger import Ledger
from broker.messages import (
    Document,
    DossierStatus,
    DossierSupplemented,
    DossierWithdrawn,
    encode,
)
from broker.ops import audit as audit_module
from broker.ops.progress import Progress
from broker.ops.report import report
from broker.rules.catalog import load_catalog
from broker.rules.engine import Engine
from broker.topology import Topology
from tests.conftest import MINI_CATALOG, queue_depth
from tests.helpers import Amqp, dossier, intake_delivery, said, status_delivery
from tests.integration.conftest import FakeClock, vn

pytestmark = pytest.mark.integration


class _Reading:
    """The ledger's connection, keeping every row its queries returned."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.rows: list[Row[Any]] = []

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        frozen = self.conn.execute(*args, **kwargs).freeze()
        self.rows += frozen().all()
        return frozen()


def test_an_audit_of_a_period_reads_none_of_the_dossiers_received_before_it(
        ledger: Ledger) -> None:
    # T.UBND.B's October dossiers sort between T.UBND.A's November one and its own: a
    # round of the period's codes took in their events and messages too, as many as a
    # year of the ledger holds, and kept their message ids in memory
    engine = Engine(load_catalog(MINI_CATALOG))
    n = iter(range(1, 100))
    codes: dict[str, list[str]] = {"10": [], "11": []}
    for when, wards in (("2026-10-05 09:00", ["10002"] * 3),
                        ("2026-11-25 09:00", ["10001", "10002"])):
        clock = FakeClock(when)
        router = Router(lambda: engine, ledger, Topology("ho"), clock=clock)
        for ward in wards:
            d = dossier(applicant_ward=ward, submitted_at=clock.now.isoformat())
            out = router.handle([intake_delivery(next(n), encode(d), f"submit:{next(n)}")])
            codes[when[5:7]].append(json.loads(out[-1].body)["dossier_code"])
    october, november = set(codes["10"]), set(codes["11"])
    assert sorted(november)[0] < min(october) < max(october) < sorted(november)[1]
    with ledger.read(snapshot=True) as conn:
        reading = _Reading(conn)
        checked, problems = audit_module._ledger_problems(
            cast(Connection, reading), datetime(2026, 11, 1, tzinfo=UTC))
    assert (checked, problems) == (2, [])
    named = {str(r[0]).split(":")[0] for r in reading.rows if isinstance(r[0], str)}
    assert named == november  # the period's dossiers, their events and their messages


def test_a_submission_dead_lettered_under_its_id_in_capitals_is_accounted_for(
        ledger: Ledger) -> None:
    # the router reads the id as a UUID, whatever its case; the audit compared the text
    # kept in the dead letter with the desk's list, written as the contract writes ids
    clock = FakeClock("2026-11-24 09:00")
    engine = Engine(load_catalog(MINI_CATALOG))
    router = Router(lambda: engine, ledger, Topology("ho"), clock=clock)
    d = dossier()
    sid = str(d.submission_id)
    body = json.loads(encode(d))
    body["submission_id"], body["applicant"]["name"] = sid.upper(), ""  # invalid: dead
    out = router.handle([intake_delivery(1, json.dumps(body).encode(), "desk-1")])
    assert [(o.headers or {}).get("x-casebroker-reason") for o in out] == ["invalid_fields",
                                                                           None]
    # its desk is told it was not received, under the id as the contract writes it
    assert json.loads(out[1].body)["submission_id"] == sid
    never = str(uuid.uuid4())
    report = audit_module.audit(ledger, Topology("ho-nothing-declared"),
                                [sid, sid.upper(), never])
    assert report["unaccounted_submissions"] == [
        {"submission_id": never, "problem": "not in the ledger, dead letters or triage"}]


def test_the_audit_does_not_quote_a_line_of_the_desks_list_that_may_hold_personal_data(
        ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a desk's export with the applicant beside the id, and its header: every line is no
    # submission id, and each was printed as it was, name and id number included
    sid, other = str(uuid.uuid4()), str(uuid.uuid4())
    line = f"{sid},Nguyễn Văn An,066090001234,0905000000"
    listed = tmp_path / "submissions.csv"
    listed.write_text(f"submission_id,ho_ten,cccd,dien_thoai\n{line}\n{sid}{other}\n")
    for form in ("--json", None):
        capsys.readouterr()
        code = main(["audit", "--submissions", str(listed), "--db-url", ledger.url,
                     "--prefix", "ho-nothing-declared", *([form] if form else [])])
        out, err = capsys.readouterr()
        assert code == 1
        for private in ("Nguyễn Văn An", "066090001234", "0905000000", "ho_ten"):
            assert private not in out + err, form
        if form:
            withheld = [{"submission_id": f"<{n} characters withheld: not a submission id, "
                         "and it may hold personal data>",
                         "problem": "not a submission id (a UUID)"}
                        for n in (len("submission_id,ho_ten,cccd,dien_thoai"), len(line))]
            # ids run together hold nothing else: quoted, to be found in the list
            assert json.loads(out)["unaccounted_submissions"] == [*withheld, {
                "submission_id": f"{sid}{other}", "problem": "not a submission id (a UUID)"}]


def _routed(ledger: Ledger, topology: Topology, n: int) -> list[str]:
    """``n`` dossiers routed to T.UBND.A on 25 November (nothing published): their codes."""
    engine = Engine(load_catalog(MINI_CATALOG))
    router = Router(lambda: engine, ledger, topology, clock=FakeClock("2026-11-25 09:00"))
    out = router.handle([intake_delivery(i, encode(dossier()), f"submit:{i}")
                         for i in range(1, n + 1)])
    return sorted(json.loads(o.body)["dossier_code"] for o in out if o.type == "desk.notice")


def _told(err: str) -> list[str]:
    """Progress lines without their elapsed time."""
    return [line.rsplit(" (", 1)[0] for line in err.splitlines()]


def test_a_long_report_says_how_far_it_is_on_stderr(
        ledger: Ledger, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a year of a province (a million dossiers) takes half a minute and said nothing
    monkeypatch.setattr(Progress, "EVERY_S", 0.0)
    _routed(ledger, Topology("ho"), 2)
    capsys.readouterr()
    assert main(["report", "--from", "2026-11-25", "--to", "2026-11-25", "--json",
                 "--db-url", ledger.url]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["total"]["received"] == 2  # stdout stays one JSON object
    assert _told(err) == ["report: 1 of 2 dossiers read", "report: 2 of 2 dossiers read"]


def test_a_long_resend_says_how_far_it_is_on_stderr(
        declared: Topology, ledger: Ledger, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # each publish waits for its confirm: an agency's thousands of open dossiers take
    # seconds, and said nothing until the end
    monkeypatch.setattr(Progress, "EVERY_S", 0.0)
    codes = _routed(ledger, declared, 2)
    capsys.readouterr()
    assert main(["dossier", "resend", "--agency", "T.UBND.A", "--json",
                 "--db-url", ledger.url]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["assignments"] == [f"{c}:assigned:1" for c in codes]
    assert _told(err) == ["resend: 1 of 2 assignment(s) sent",
                          "resend: 2 of 2 assignment(s) sent"]
    assert queue_depth(declared.agency_queue("T.UBND.A")) == 2


def test_the_report_counts_no_delay_for_dossiers_ended_while_waiting_for_a_supplement(
        ledger: Ledger) -> None:
    # both asked for a supplement on their due day, before the due time; the citizens never
    # brought it: the agency stopped one two weeks on, the other citizen withdrew. Open,
    # waiting, neither was overdue; ended, both counted as delayed
    clock = FakeClock("2026-11-24 09:00")  # a Tuesday; 1.001193: one working day
    engine = Engine(load_catalog(MINI_CATALOG))
    router = Router(lambda: engine, ledger, Topology("ho"), clock=clock)
    status = StatusRouter(lambda: engine, ledger, Topology("ho"), clock=clock)
    out = router.handle([intake_delivery(i, encode(dossier()), f"submit:{i}")
                         for i in (1, 2)])
    stopped, withdrawn = sorted(json.loads(o.body)["dossier_code"] for o in out
                                if o.type == "desk.notice")
    n = iter(range(10, 100))

    def agency(code: str, what: str) -> None:
        status.handle([status_delivery(next(n), DossierStatus(
            update_id=uuid.uuid4(), dossier_code=code, agency_id="T.UBND.A", status=what,
            sent_at=clock.now, **said(what)))])

    clock.set("2026-11-25 08:00")  # due at 09:00
    for code in (stopped, withdrawn):
        agency(code, "supplement_requested")

    def totals(now: str) -> tuple[int, ...]:
        total = report(ledger, date(2026, 11, 24), date(2026, 11, 24), None,
                       ZoneInfo("Asia/Ho_Chi_Minh"), vn(now))["total"]
        return (total["open"], total["overdue"], total["stopped"], total["withdrawn"],
                total["satisfied"])

    assert totals("2026-12-09 09:00") == (2, 0, 0, 0, 2)
    clock.set("2026-12-09 10:00")
    agency(stopped, "stopped")
    status.handle([status_delivery(next(n), DossierWithdrawn(
        event_id=uuid.uuid4(), dossier_code=withdrawn, desk_id="T.MC.B",
        sent_at=clock.now))])
    assert totals("2026-12-09 11:00") == (0, 0, 1, 1, 2)


def test_an_agency_queue_lost_gets_the_supplements_brought_since_the_assignment_again(
        declared: Topology, ledger: Ledger, amqp: Amqp,
        capsys: pytest.CaptureFixture[str]) -> None:
    # the agency asked for a supplement, the citizen brought it: the documents and the
    # moved due date went out in a supplemented notice only, and the resend after the
    # queue was lost sent the assignment alone
    clock = FakeClock("2026-11-24 09:00")
    engine = Engine(load_catalog(MINI_CATALOG))
    router = Router(lambda: engine, ledger, declared, clock=clock)
    status = StatusRouter(lambda: engine, ledger, declared, clock=clock)
    out = router.handle([intake_delivery(i, encode(dossier()), f"submit:{i}")
                         for i in (1, 2)])
    first, second = sorted(json.loads(o.body)["dossier_code"] for o in out
                           if o.type == "desk.notice")
    clock.set("2026-11-24 10:00")
    status.handle([status_delivery(10, DossierStatus(
        update_id=uuid.uuid4(), dossier_code=first, agency_id="T.UBND.A",
        status="supplement_requested", sent_at=clock.now, **said("supplement_requested")))])
    clock.set("2026-11-24 14:00")
    brought = Document(name="ban-sao-cccd.pdf", uri="s3://docs/9", sha256="c" * 64,
                       size=10, media_type="application/pdf")
    sent = status.handle([status_delivery(11, DossierSupplemented(
        event_id=uuid.uuid4(), dossier_code=first, desk_id="T.MC.B", documents=[brought],
        sent_at=clock.now))])
    (notice,) = [o for o in sent if o.type == "agency.notice"]
    assert queue_depth(declared.agency_queue("T.UBND.A")) == 0  # nothing ever reached it

    capsys.readouterr()
    assert main(["dossier", "resend", "--agency", "T.UBND.A", "--json",
                 "--db-url", ledger.url]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["assignments"], report["supplements"], report["sent"]) == (
        [f"{first}:assigned:1", f"{second}:assigned:1"], [notice.message_id], 3)
    got = amqp.get_all(declared.agency_queue("T.UBND.A"))
    assert [(p.message_id, p.type) for p, _ in got] == [
        (f"{first}:assigned:1", "dossier.assigned"), (notice.message_id, "agency.notice"),
        (f"{second}:assigned:1", "dossier.assigned")]
    body = json.loads(got[1][1])
    assert body == json.loads(notice.body) and body["notice"] == "supplemented"
    assert body["documents"][0]["uri"] == "s3://docs/9"
    row = ledger.dossier(first)
    assert row is not None and datetime.fromisoformat(body["due_at"]) == row["due_at"]
