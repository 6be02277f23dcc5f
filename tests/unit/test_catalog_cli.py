"""`casebroker rules check|explain|coverage` through the real command line entry point."""
# ruff: noqa: E501 - catalog YAML in flow style reads best one entry per line

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from broker import cli
from broker.calendar import decrees_known_until
from broker.cli import main
from broker.rules.catalog import SHIPPED_CATALOG
from tests.helpers import dossier

MINI = Path(__file__).parents[1] / "fixtures" / "mini.yaml"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_shipped_catalog(capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    # in May of a year with a decree known, no year ahead is unconfirmed (no note)
    last = decrees_known_until("VN")
    assert last is not None
    monkeypatch.setattr(cli, "_now", lambda: datetime(last, 5, 4, tzinfo=UTC))
    monkeypatch.delenv("CASEBROKER_CATALOG", raising=False)
    assert _run(capsys, "rules", "check") == (
        0, "ok: the shipped catalog: 1408 procedures, 118 agencies, 108 desks, 11 rules\n", "")


def test_check_takes_the_catalog_in_force(capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    # the runbooks' `rules check`, in a shell where CASEBROKER_CATALOG names the catalog
    # the routers use, passed the shipped one while that one was broken (found by a review)
    broken = tmp_path / "broken.yaml"
    broken.write_text("catalog: [", encoding="utf-8")
    monkeypatch.setenv("CASEBROKER_CATALOG", str(broken))
    code, out, err = _run(capsys, "rules", "check")
    assert (code, out) == (1, "") and err.startswith("1 problem(s):")
    assert str(broken) in err


BLOCK = """\
catalog: broken-block
agencies:
  - id: A
    name: committee A
    serves: ["10001"]
  - id: B
    name: committee B
    serves: ["10001"]
  - id: A
    name: A again
desks:
  - id: D
    name: desk D
    area: "10001"
    unit: NOPE
procedures:
  - code: "1.000001"
    name: p
    processing: {amount: 1}
    competence: {agency: GHOST}
  - code: "1.000001"
    name: dup
    processing: {amount: 1}
    competence: at_intake
rules:
  - id: r1
    when: {applicant.kind: citizen}
    route: {agency: A}
  - id: r2
    when: {applicant.kind: citizen, channel: online}
    route: {agency: B}
  - id: r3
    when: {desk_id: D-TYPO}
    route: {agency: A}
"""

FLOW = """\
{catalog: broken-flow,
 agencies: [{id: A, name: a, serves: ["10001"]},
            {id: B, name: b, serves: ["10001"]}],
 desks: [{id: D, name: d, area: "10001", unit: A},
         {id: D, name: d twice}],
 procedures: [{code: "1.000001", name: p, processing: {amount: 1}, competence: {by_area: applicant}},
              {code: "1.000002", name: q, processing: {amount: 1}, competence: {agency: NOBODY}}],
 rules: [{id: x, when: {procedure_code: "1.000001"}, route: {agency: A}},
         {id: y, when: {procedure_code: "1.000001", desk_id: D}, route: {agency: B}},
         {id: z, when: {desk_id: GHOST}, route: {agency: A}}]}
"""

NO_WARDS = """\
catalog: no-wards
agencies: [{id: P, name: province, serves: ["10"]}]
desks: [{id: D, name: d, area: "10", unit: P}]
procedures:
  - {code: "1.000001", name: fine, processing: {amount: 1}, competence: {agency: P}}
  - {code: "1.000002", name: by area, processing: {amount: 1}, competence: {by_area: subject}}
  - {code: "1.2345", name: bad code, processing: {amount: 1}, competence: {agency: P}}
"""


@pytest.mark.parametrize(("text", "expected"), [
    (BLOCK, [":6: area 10001 is served by both A and B",
             ":9: duplicate agency id 'A' (first at line 3)",
             ":12: desk D: unknown unit agency NOPE",
             ":17: procedure 1.000001: unknown agency GHOST",
             ":21: duplicate procedure code '1.000001' (first at line 17)",
             ":29: rule r2: can never match: rule r1",
             ":32: rule r3: unknown desk 'D-TYPO' in when.desk_id"]),
    (FLOW, [":3: area 10001 is served by both A and B",
            ":5: duplicate desk id 'D' (first at line 4)",
            ":7: procedure 1.000002: unknown agency NOBODY",
            ":9: rule y: can never match: rule x",
            ":10: rule z: unknown desk 'GHOST' in when.desk_id"]),
    # the bad code leaves its procedure out; the others are checked all the same
    (NO_WARDS, [":6: procedure 1.000002: by_area subject: no agency serves any ward",
                ":7: procedures.2.code: String should match pattern"]),
])
def test_check_reports_every_planted_problem(capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path, text: str,
                                             expected: list[str]) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text, encoding="utf-8")
    code, out, err = _run(capsys, "rules", "check", str(path))
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert lines[0] == f"{len(expected)} problem(s):", err
    for want in expected:
        assert any(line.strip().startswith(f"{path}{want}") for line in lines[1:]), \
            f"missing {want!r} in:\n{err}"


def test_check_by_area_without_wards(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "no-wards.yaml"
    path.write_text(NO_WARDS.replace('"1.2345"', '"1.000003"'), encoding="utf-8")
    code, _, err = _run(capsys, "rules", "check", str(path))
    assert code == 1
    assert f"{path}:6: procedure 1.000002: by_area subject: no agency serves any ward" in err


def test_check_unreadable_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = _run(capsys, "rules", "check", str(tmp_path / "missing.yaml"))
    assert code == 1 and "cannot read" in err


def _dossier_file(tmp_path: Path, **kw: object) -> str:
    path = tmp_path / "dossier.json"
    path.write_text(dossier(**kw).model_dump_json(by_alias=True), encoding="utf-8")  # type: ignore[arg-type]
    return str(path)


def test_explain_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    file = _dossier_file(tmp_path, procedure_code="1.003000", desk_id="T.MC.B",
                         subject={"ward_code": "10002"}, attributes={"area_m2": 6000})
    code, out, _ = _run(capsys, "rules", "explain", file, "--catalog", str(MINI), "--json",
                        "--at", "2026-11-17T09:00:00+07:00")
    assert code == 0
    result = json.loads(out)
    assert result["agency_id"] == "T.SO.NNMT" and result["rule_id"] == "big-land-to-department"
    assert result["rules_considered"] == [
        {"rule_id": "land-org-to-department", "matched": False,
         "why": "applicant.kind == 'organization' is false"},
        {"rule_id": "big-land-to-department", "matched": True, "why": "all conditions hold"}]
    assert result["due_at"] == "2026-12-02T09:00:00+07:00"
    assert result["boundary_free"] is True and result["refusal"] is None


def test_explain_text_shows_refusal(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    file = _dossier_file(tmp_path, procedure_code="1.000002", desk_id="T.MC.A")
    code, out, _ = _run(capsys, "rules", "explain", file, "--catalog", str(MINI), "--at",
                        "2026-11-25T02:00:00Z")
    assert code == 0
    assert "REFUSED     procedure 1.000002 is not open to boundary-free receipt before 2099" in out
    # the receipt time in the catalog's zone (a Z time read as UTC); a dossier refused
    # at intake is closed at once: nothing is due (it showed the due date of a receipt)
    assert ("received    2026-11-25T09:00:00+07:00\n"
            "due         nothing: refused at intake, closed at once\n") in out
    code, out, _ = _run(capsys, "rules", "explain", file, "--catalog", str(MINI), "--at",
                        "2026-11-25T02:00:00Z", "--json")
    result = json.loads(out)
    assert code == 0 and result["due_at"] is None and result["step_plan"] == []
    assert result["refusal"].startswith("procedure 1.000002 is not open")


@pytest.mark.parametrize(("kw", "message"), [
    (dict(procedure_code="9.999999"), "procedure 9.999999 is not in the catalog"),
    (dict(desk_id="T.NOWHERE"), "desk T.NOWHERE is not in the catalog"),
    (dict(return_desk_id="T.NOWHERE"), "return desk T.NOWHERE is not in the catalog"),
    (dict(applicant_ward="99999"), "no agency serves area 99999"),
    (dict(applicant_ward=None), "applicant.ward_code is required"),
])
def test_explain_unroutable_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                    kw: dict[str, Any], message: str) -> None:
    code, out, err = _run(capsys, "rules", "explain", _dossier_file(tmp_path, **kw),
                          "--catalog", str(MINI), "--json")
    assert (code, out) == (2, "")
    assert err.startswith("error: ") and message in err


def test_explain_invalid_message_exits_2(capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"schema": "casebroker.dossier.submitted/v1"}', encoding="utf-8")
    code, _, err = _run(capsys, "rules", "explain", str(path), "--catalog", str(MINI))
    assert code == 2 and err.startswith("error: ")


@pytest.mark.parametrize(("on", "share", "open_"), [
    ("2025-08-31", 0.0, 0), ("2025-09-01", 720 / 1408, 720), ("2025-12-31", 1.0, 1408)])
def test_coverage_json(capsys: pytest.CaptureFixture[str], on: str, share: float,
                       open_: int) -> None:
    code, out, _ = _run(capsys, "rules", "coverage", "--on", on, "--json")
    assert code == 0
    report = json.loads(out)
    assert report["share"] == round(share, 4) and 0 <= report["share"] <= 1  # as the report
    assert (report["on"], report["open"], report["procedures"]) == (on, open_, 1408)


def test_coverage_text_and_custom_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "rules", "coverage", "--catalog", str(MINI), "--on",
                        "2026-01-01")
    assert code == 0
    # 7 procedures: 1.000002 opens in 2099, 1.000003 is never boundary-free
    assert out == ("mini on 2026-01-01: 5 of 7 procedures open to boundary-free receipt "
                   "(71.4%); 1 open later, 1 never\n")


def test_casebroker_catalog_is_every_commands_catalog_unless_one_is_named(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Set where `casebroker run` runs and in the operator's shell, the commands alerts
    name act on the catalog in force; before, they took the shipped one (a province with
    a catalog of its own was shown Đắk Lắk's calendar, declared Đắk Lắk's queues)."""
    monkeypatch.setenv("CASEBROKER_CATALOG", str(MINI))
    for argv in (["rules", "calendar", "--year", "2026", "--json"],
                 ["rules", "coverage", "--on", "2026-01-01", "--json"]):
        code, out, _ = _run(capsys, *argv)
        assert code == 0 and json.loads(out)["catalog"] == "mini", argv
    args = cli.build_parser().parse_args(["topology", "declare"])
    assert args.catalog == str(MINI)
    code, out, _ = _run(capsys, "rules", "calendar", "--year", "2026", "--json",
                        "--catalog", str(SHIPPED_CATALOG))
    assert code == 0 and json.loads(out)["catalog"] == "daklak"


def test_coverage_bad_date_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["rules", "coverage", "--on", "1 Sept"])
    assert e.value.code == 2
    assert "not a date" in capsys.readouterr().err
