"""Routing decisions on a hand-written catalog, and catalog validation."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from broker.errors import CatalogError, RoutingError, UnknownParty
from broker.rules.catalog import load_catalog, parse_catalog
from broker.rules.engine import Engine
from tests.helpers import dossier

MINI = Path(__file__).parents[1] / "fixtures" / "mini.yaml"
ICT = ZoneInfo("Asia/Ho_Chi_Minh")
TUE_9AM = datetime(2026, 11, 17, 9, 0, tzinfo=ICT)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(load_catalog(MINI))


@pytest.mark.parametrize(("case", "kw", "agencies", "rule", "boundary_free"), [
    ("by_area applicant, own desk", dict(procedure_code="1.001193", desk_id="T.MC.A",
                                         applicant_ward="10001"),
     ["T.UBND.A"], "procedure:1.001193", False),
    ("by_area applicant, other commune's desk", dict(procedure_code="1.001193",
                                                      desk_id="T.MC.B", applicant_ward="10001"),
     ["T.UBND.A"], "procedure:1.001193", True),
    ("by_area subject", dict(procedure_code="1.003000", desk_id="T.MC.A", applicant_ward="10001",
                             subject={"ward_code": "10002"}),
     ["T.UBND.B"], "procedure:1.003000", True),
    ("rule: organization's land", dict(procedure_code="1.003000", desk_id="T.MC.B",
                                        subject={"ward_code": "10002"},
                                        applicant={"kind": "organization", "name": "Công ty X",
                                                   "id_number": "6000000000"}),
     ["T.SO.NNMT"], "land-org-to-department", True),
    ("rule: range on attribute", dict(procedure_code="1.003000", desk_id="T.MC.B",
                                      subject={"ward_code": "10002"},
                                      attributes={"area_m2": 5000}),
     ["T.SO.NNMT"], "big-land-to-department", True),
    ("range not met", dict(procedure_code="1.003000", desk_id="T.MC.B",
                           subject={"ward_code": "10002"}, attributes={"area_m2": 4999.5}),
     ["T.UBND.B"], "procedure:1.003000", False),
    ("bool is not a number", dict(procedure_code="1.003000", desk_id="T.MC.B",
                                  subject={"ward_code": "10002"}, attributes={"area_m2": True}),
     ["T.UBND.B"], "procedure:1.003000", False),
    ("at_intake, commune desk", dict(procedure_code="2.000815", desk_id="T.MC.B",
                                     applicant_ward="10001"),
     ["T.UBND.B"], "procedure:2.000815", False),
    ("at_intake, bank desk falls back to its area", dict(procedure_code="2.000815",
                                                         desk_id="T.BANK", applicant_ward="10001"),
     ["T.UBND.B"], "procedure:2.000815", False),
    ("at_intake, portal falls back to applicant", dict(procedure_code="2.000815",
                                                       desk_id="T.PORTAL", applicant_ward="10001"),
     ["T.UBND.A"], "procedure:2.000815", True),
    ("fixed department from a commune desk", dict(procedure_code="1.004227", desk_id="T.MC.A"),
     ["T.SO.TP"], "procedure:1.004227", True),
    ("fixed department at the centre", dict(procedure_code="1.004227", desk_id="T.CENTRE"),
     ["T.SO.TP"], "procedure:1.004227", False),
    ("chain", dict(procedure_code="1.000001", desk_id="T.MC.A", applicant_ward="10002"),
     ["T.UBND.B", "T.CA", "T.BHXH"], "procedure:1.000001", True),
])
def test_routing(engine: Engine, case: str, kw: dict, agencies: list[str], rule: str,
                 boundary_free: bool) -> None:
    d = dossier(**kw)
    decision = engine.decide(d, TUE_9AM)
    assert [s.agency_id for s in decision.steps] == agencies, case
    assert decision.rule_id == rule, case
    assert decision.boundary_free is boundary_free, case
    assert decision.catalog_hash == engine.catalog_hash


@pytest.mark.parametrize(("kw", "reason"), [
    (dict(procedure_code="9.999999"), "unknown_procedure"),
    (dict(desk_id="T.NOWHERE"), "unknown_desk"),
    (dict(return_desk_id="T.NOWHERE"), "unknown_desk"),
    (dict(applicant_ward="99999"), "area_not_served"),
    (dict(applicant_ward=None), "no_area"),
    (dict(procedure_code="1.003000"), "no_area"),  # by subject, no subject
])
def test_unroutable(engine: Engine, kw: dict, reason: str) -> None:
    with pytest.raises(RoutingError) as e:
        engine.decide(dossier(**kw), TUE_9AM)
    assert e.value.reason == reason
    if reason.startswith("unknown") or reason == "area_not_served":
        assert isinstance(e.value, UnknownParty)


def test_rollout_refuses_boundary_free_before_the_date(engine: Engine) -> None:
    away = engine.decide(dossier("1.000002", desk_id="T.MC.A"), TUE_9AM)
    assert away.refusal is not None and "2099-01-01" in away.refusal
    home = engine.decide(dossier("1.000002", desk_id="T.CENTRE"), TUE_9AM)
    assert home.refusal is None
    never = engine.decide(dossier("1.000003", desk_id="T.MC.B", applicant_ward="10001"),
                          TUE_9AM)
    assert never.refusal is not None


def test_due_dates(engine: Engine) -> None:
    d = engine.decide(dossier("1.004227", desk_id="T.CENTRE"), TUE_9AM)
    # 10 working days: 18-20, 23, (24 Nov is Vietnam Cultural Day), 25-27, 30 Nov, 1-2 Dec
    assert d.due_at == datetime(2026, 12, 2, 9, 0, tzinfo=ICT)
    h = engine.decide(dossier("2.000815", desk_id="T.MC.A"), datetime(2026, 11, 17, 16, 0,
                                                                       tzinfo=ICT))
    assert h.due_at == datetime(2026, 11, 18, 8, 0, tzinfo=ICT)  # 1h today, 1h tomorrow
    chain = engine.decide(dossier("1.000001", desk_id="T.MC.A"), TUE_9AM)
    assert chain.first_step_due_at == datetime(2026, 11, 19, 9, 0, tzinfo=ICT)  # 6 / 3 steps


def test_explain_lists_every_rule(engine: Engine) -> None:
    d = dossier("1.003000", subject={"ward_code": "10002"}, attributes={"area_m2": 9000})
    result = engine.explain(d, TUE_9AM)
    assert [r["matched"] for r in result["rules_considered"]] == [False, True]
    assert "applicant.kind" in result["rules_considered"][0]["why"]


BROKEN = """\
catalog: broken
agencies:
  - {id: A, name: a, serves: ["10001"]}
  - {id: B, name: b, serves: ["10001"]}
  - {id: A, name: a again}
desks:
  - {id: D, name: d, unit: NOPE}
procedures:
  - {code: "1.000001", name: p, processing: {amount: 1}, competence: {agency: GHOST}}
  - {code: "1.000001", name: dup, processing: {amount: 1}, competence: at_intake}
  - {code: "12345", name: bad code, processing: {amount: 1}, competence: at_intake}
rules:
  - {id: r1, when: {applicant.kind: citizen}, route: {agency: A}}
  - {id: r2, when: {applicant.kind: citizen, channel: online}, route: {agency: B}}
  - {id: r1, when: {procedure_code: "7.777777", favourite_colour: blue}, route: {agency: A}}
"""


def test_broken_catalog_reports_every_problem_with_lines() -> None:
    with pytest.raises(CatalogError) as e:
        parse_catalog(BROKEN.replace('"12345"', '"1.000002"').encode(), "broken.yaml")
    text = "\n".join(str(p) for p in e.value.problems)
    for expected in ["broken.yaml:5: duplicate agency id 'A'",
                     "broken.yaml:4: area 10001 is served by both A and B",
                     "broken.yaml:7: desk D: unknown unit agency NOPE",
                     "broken.yaml:9: procedure 1.000001: unknown agency GHOST",
                     "broken.yaml:10: duplicate procedure code '1.000001'",
                     "broken.yaml:14: rule r2: can never match: rule r1",
                     "broken.yaml:15: duplicate rule id 'r1'",
                     "broken.yaml:15: rule r1: unknown field 'favourite_colour'",
                     "broken.yaml:15: rule r1: unknown procedure 7.777777"]:
        assert expected in text, f"missing {expected!r} in:\n{text}"


def test_schema_problems_are_reported_with_lines() -> None:
    with pytest.raises(CatalogError) as e:
        parse_catalog(BROKEN.encode(), "broken.yaml")
    text = "\n".join(str(p) for p in e.value.problems)
    assert "broken.yaml:11: procedures.2.code: String should match pattern" in text


def test_yaml_errors_and_duplicate_keys() -> None:
    with pytest.raises(CatalogError) as e:
        parse_catalog(b"catalog: x\nagencies: [\n", "x.yaml")
    assert "x.yaml:" in str(e.value.problems[0])
    with pytest.raises(CatalogError) as e:
        parse_catalog(b"catalog: x\ncatalog: y\nagencies: []\ndesks: []\nprocedures: []\n")
    assert "duplicate key 'catalog'" in str(e.value)


def test_same_bytes_same_hash() -> None:
    assert load_catalog(MINI).content_hash == parse_catalog(MINI.read_bytes()).content_hash
