"""Routing decisions on a hand-written catalog, and catalog validation."""
# ruff: noqa: E501 - catalog YAML in flow style reads best one entry per line

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
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
     ["T.UBND.A"], "procedure:2.000815", False),
    # the portal and the post reach the competent agency wherever it sits: never
    # boundary-free, even for a commune (compared by area, a province-wide desk was
    # home for every department and no commune, found by a review)
    ("never boundary-free, online", dict(procedure_code="1.000003", desk_id="T.PORTAL",
                                         applicant_ward="10002"),
     ["T.UBND.B"], "procedure:1.000003", False),
    ("never boundary-free, by post", dict(procedure_code="1.000003", desk_id="T.POST",
                                          applicant_ward="10001"),
     ["T.UBND.A"], "procedure:1.000003", False),
    # a bank agent point is a place: another commune's dossier there is boundary-free
    ("bank agent point, another commune", dict(procedure_code="1.001193", desk_id="T.BANK",
                                               applicant_ward="10001"),
     ["T.UBND.A"], "procedure:1.001193", True),
    ("fixed department from a commune desk", dict(procedure_code="1.004227", desk_id="T.MC.A"),
     ["T.SO.TP"], "procedure:1.004227", True),
    ("fixed department at the centre", dict(procedure_code="1.004227", desk_id="T.CENTRE"),
     ["T.SO.TP"], "procedure:1.004227", False),
    ("chain", dict(procedure_code="1.000001", desk_id="T.MC.A", applicant_ward="10002"),
     ["T.UBND.B", "T.CA", "T.BHXH"], "procedure:1.000001", True),
])
def test_routing(engine: Engine, case: str, kw: dict[str, Any], agencies: list[str], rule: str,
                 boundary_free: bool) -> None:
    d = dossier(**kw)
    decision = engine.decide(d, TUE_9AM)
    assert [s.agency_id for s in decision.steps] == agencies, case
    assert decision.rule_id == rule, case
    assert decision.boundary_free is boundary_free, case
    assert decision.refusal is None or boundary_free, case  # only receipt elsewhere is
    assert decision.catalog_hash == engine.catalog_hash


@pytest.mark.parametrize(("kw", "reason"), [
    (dict(procedure_code="9.999999"), "unknown_procedure"),
    (dict(desk_id="T.NOWHERE"), "unknown_desk"),
    (dict(return_desk_id="T.NOWHERE"), "unknown_desk"),
    (dict(applicant_ward="99999"), "area_not_served"),
    (dict(applicant_ward=None), "no_area"),
    (dict(procedure_code="1.003000"), "no_area"),  # by subject, no subject
])
def test_unroutable(engine: Engine, kw: dict[str, Any], reason: str) -> None:
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


def test_explain_gives_a_chains_steps_their_latest_due_dates(engine: Engine) -> None:
    # 6 working days over 3 agencies, received Wed 25 Nov 09:00: 2 days (16 office hours)
    # each, from the end of the step before when it takes all its time
    result = engine.explain(dossier("1.000001"), datetime(2026, 11, 25, 9, 0, tzinfo=ICT))
    assert [(s["agency_id"], s["amount"], s["unit"], s["due_at"])
            for s in result["step_plan"]] == [
        ("T.UBND.A", 2.0, "working_days", "2026-11-27T09:00:00+07:00"),
        ("T.CA", 2.0, "working_days", "2026-12-01T09:00:00+07:00"),
        ("T.BHXH", 2.0, "working_days", "2026-12-03T09:00:00+07:00")]
    assert result["due_at"] == "2026-12-03T09:00:00+07:00"


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


def test_a_field_problem_is_reported_at_the_fields_own_line() -> None:
    block = (b"catalog: x\n"                      # 1
             b"agencies:\n"                       # 2
             b"  - id: A\n"                       # 3
             b"    name: a\n"                     # 4
             b"    colour: blue\n"                # 5: not a field of an agency
             b"desks: []\n"                       # 6
             b"procedures: []\n"                  # 7
             b"unknown_key: 1\n")                 # 8: not a field of a catalog
    with pytest.raises(CatalogError) as e:
        parse_catalog(block, "b.yaml")
    text = "\n".join(str(p) for p in e.value.problems)
    assert "b.yaml:5: agencies.0.colour: Extra inputs are not permitted" in text, text
    assert "b.yaml:8: unknown_key: Extra inputs are not permitted" in text, text


def test_yaml_errors_and_duplicate_keys() -> None:
    with pytest.raises(CatalogError) as e:
        parse_catalog(b"catalog: x\nagencies: [\n", "x.yaml")
    assert "x.yaml:" in str(e.value.problems[0])
    with pytest.raises(CatalogError) as e:
        parse_catalog(b"catalog: x\ncatalog: y\nagencies: []\ndesks: []\nprocedures: []\n")
    assert "duplicate key 'catalog'" in str(e.value)


def test_same_bytes_same_hash() -> None:
    assert load_catalog(MINI).content_hash == parse_catalog(MINI.read_bytes()).content_hash


# --- conditional rules: every key, every matcher, first match wins -----------------------

RULES_CATALOG = MINI.read_text(encoding="utf-8").split("rules:")[0] + """\
rules:
  - {id: online-birth, when: {procedure_code: "1.001193", channel: online}, route: {agency: T.SO.TP}}
  - {id: bank-desk, when: {procedure_code: "1.001193", desk_id: T.BANK}, route: {agency: T.CA}}
  - {id: centre-area, when: {procedure_code: "1.001193", desk.area: "10"}, route: {agency: T.BHXH}}
  - {id: ward-a-land, when: {procedure_code: "1.003000", subject.ward_code: "10001", applicant.ward_code: ["10001"]}, route: {agency: T.SO.TP}}
  - {id: mid-size, when: {procedure_code: "1.003000", attributes.area_m2: {min: 100, max: 200}}, route: {agency: T.CA}}
  - {id: small, when: {procedure_code: "1.003000", attributes.area_m2: {max: 99.5}}, route: {agency: T.BHXH}}
  - {id: purpose, when: {procedure_code: "1.003000", attributes.purpose: [farm, forest]}, route: {agency: T.SO.NNMT}}
  - {id: flag-true, when: {procedure_code: "1.004227", attributes.urgent: true}, route: {agency: T.CA}}
  - {id: level-one, when: {procedure_code: "1.004227", attributes.level: 1}, route: {agency: T.BHXH}}
  - {id: any-org-postal, when: {applicant.kind: organization, channel: postal}, route: {agency: T.SO.NNMT}}
"""


@pytest.fixture(scope="module")
def rules_engine() -> Engine:
    return Engine(parse_catalog(RULES_CATALOG.encode(), "rules.yaml"))


ORG = {"kind": "organization", "name": "Công ty X", "id_number": "6000000000",
       "ward_code": "10001"}


@pytest.mark.parametrize(("case", "kw", "agency", "rule"), [
    ("channel equality", dict(channel="online", desk_id="T.PORTAL"), "T.SO.TP", "online-birth"),
    ("channel differs", dict(channel="postal", desk_id="T.MC.B"), "T.UBND.A",
     "procedure:1.001193"),
    ("desk_id equality", dict(desk_id="T.BANK"), "T.CA", "bank-desk"),
    ("desk.area of the centre", dict(desk_id="T.CENTRE"), "T.BHXH", "centre-area"),
    ("first match wins: online at the portal (area 10) is online-birth, not centre-area",
     dict(channel="online", desk_id="T.PORTAL"), "T.SO.TP", "online-birth"),
    ("two wards, list of one", dict(procedure_code="1.003000", subject={"ward_code": "10001"}),
     "T.SO.TP", "ward-a-land"),
    ("applicant ward not in the list", dict(procedure_code="1.003000", applicant_ward="10002",
                                            subject={"ward_code": "10001"}),
     "T.UBND.A", "procedure:1.003000"),
    ("range lower bound inclusive", dict(procedure_code="1.003000", subject={"ward_code": "10002"},
                                         attributes={"area_m2": 100}), "T.CA", "mid-size"),
    ("range upper bound inclusive", dict(procedure_code="1.003000", subject={"ward_code": "10002"},
                                         attributes={"area_m2": 200.0}), "T.CA", "mid-size"),
    ("just above the range", dict(procedure_code="1.003000", subject={"ward_code": "10002"},
                                  attributes={"area_m2": 200.01}), "T.UBND.B",
     "procedure:1.003000"),
    ("max-only range", dict(procedure_code="1.003000", subject={"ward_code": "10002"},
                            attributes={"area_m2": 99.5}), "T.BHXH", "small"),
    ("a numeric string is not a number", dict(procedure_code="1.003000",
                                              subject={"ward_code": "10002"},
                                              attributes={"area_m2": "150"}),
     "T.UBND.B", "procedure:1.003000"),
    ("membership on an attribute", dict(procedure_code="1.003000", subject={"ward_code": "10002"},
                                        attributes={"purpose": "forest"}), "T.SO.NNMT", "purpose"),
    ("membership is case-sensitive", dict(procedure_code="1.003000",
                                          subject={"ward_code": "10002"},
                                          attributes={"purpose": "Forest"}),
     "T.UBND.B", "procedure:1.003000"),
    ("missing attribute never matches", dict(procedure_code="1.003000",
                                             subject={"ward_code": "10002"}),
     "T.UBND.B", "procedure:1.003000"),
    ("true matches true", dict(procedure_code="1.004227", attributes={"urgent": True}), "T.CA",
     "flag-true"),
    ("1 does not match true", dict(procedure_code="1.004227", attributes={"urgent": 1}),
     "T.SO.TP", "procedure:1.004227"),
    ("true does not match 1", dict(procedure_code="1.004227", attributes={"level": True}),
     "T.SO.TP", "procedure:1.004227"),
    ("1.0 matches 1", dict(procedure_code="1.004227", attributes={"level": 1.0}), "T.BHXH",
     "level-one"),
    ("a rule without procedure_code applies to every procedure",
     dict(procedure_code="2.000815", channel="postal", applicant=ORG), "T.SO.NNMT",
     "any-org-postal"),
    ("... and to the others too", dict(procedure_code="1.004227", channel="postal",
                                       applicant=ORG), "T.SO.NNMT", "any-org-postal"),
])
def test_conditional_rules(rules_engine: Engine, case: str, kw: dict[str, Any], agency: str,
                           rule: str) -> None:
    decision = rules_engine.decide(dossier(**kw), TUE_9AM)
    assert (decision.agency_id, decision.rule_id) == (agency, rule), case
    route = rules_engine.route(dossier(**kw), TUE_9AM)
    assert (route.agency_id, route.rule_id, route.steps) == (agency, rule, decision.steps)


def test_explain_considers_only_rules_for_the_procedure(rules_engine: Engine) -> None:
    result = rules_engine.explain(dossier("1.004227", attributes={"level": 1}), TUE_9AM)
    considered = result["rules_considered"]
    assert [r["rule_id"] for r in considered] == ["flag-true", "level-one", "any-org-postal"]
    assert [r["matched"] for r in considered] == [False, True, False]
    assert considered[0]["why"] == "attributes.urgent == True is false"
    assert considered[2]["why"] == "not evaluated: level-one matched first"
    assert result["rules_not_applicable"] == 7
    assert result["rule_id"] == "level-one"


def test_rollout_boundary_is_the_local_midnight() -> None:
    text = MINI.read_text(encoding="utf-8").replace("2099-01-01", "2026-11-18")
    engine = Engine(parse_catalog(text.encode(), "rollout.yaml"))
    d = dossier("1.000002", desk_id="T.MC.A")
    before = datetime(2026, 11, 17, 23, 59, 59, tzinfo=ICT)
    at = datetime(2026, 11, 18, 0, 0, tzinfo=ICT)
    assert engine.route(d, before).refusal is not None
    assert engine.route(d, at).refusal is None
    # the same instants in UTC decide the same way
    assert engine.route(d, before.astimezone(ZoneInfo("UTC"))).refusal is not None
    assert engine.route(d, at.astimezone(ZoneInfo("UTC"))).refusal is None


VALUE_PROBLEMS = MINI.read_text(encoding="utf-8").split("rules:")[0] + """\
rules:
  - {id: ghost-desk, when: {desk_id: [T.MC.A, T.GHOST]}, route: {agency: T.CA}}
  - {id: ghost-area, when: {desk.area: "99999"}, route: {agency: T.CA}}
  - {id: fax, when: {channel: fax, applicant.kind: government}, route: {agency: T.CA}}
  - {id: range-on-text, when: {procedure_code: {min: 5}}, route: {agency: T.CA}}
  - {id: empty-range, when: {attributes.x: {min: 5, max: 1}}, route: {agency: T.CA}}
  - {id: unquoted-code, when: {procedure_code: 1.004227}, route: {agency: T.CA}}
  - {id: true-first, when: {attributes.flag: true}, route: {agency: T.CA}}
  - {id: one-later, when: {attributes.flag: 1}, route: {agency: T.BHXH}}
  - {id: empty-list, when: {procedure_code: "1.003000", applicant.kind: []}, route: {agency: T.CA}}
"""


def test_rules_naming_values_no_dossier_has_are_reported() -> None:
    with pytest.raises(CatalogError) as e:
        parse_catalog(VALUE_PROBLEMS.encode(), "v.yaml")
    text = "\n".join(str(p) for p in e.value.problems)
    first = len(VALUE_PROBLEMS.split("rules:")[0].splitlines()) + 2
    for expected in [f"v.yaml:{first}: rule ghost-desk: unknown desk 'T.GHOST' in when.desk_id",
                     f"v.yaml:{first + 1}: rule ghost-area: unknown desk area '99999'",
                     f"v.yaml:{first + 2}: rule fax: unknown channel 'fax'",
                     f"v.yaml:{first + 2}: rule fax: unknown applicant kind 'government'",
                     f"v.yaml:{first + 3}: rule range-on-text: procedure_code: a numeric range",
                     f"v.yaml:{first + 4}: rule empty-range: attributes.x: empty range",
                     f"v.yaml:{first + 5}: rule unquoted-code: procedure code 1.004227 must be",
                     f"v.yaml:{first + 8}: rule empty-list: applicant.kind: an empty list "
                     "never matches"]:
        assert expected in text, f"missing {expected!r} in:\n{text}"
    assert "T.MC.A" not in text
    # `true` never equals 1 in the engine, so one-later is reachable
    assert "one-later" not in text
    assert len(e.value.problems) == 8


def test_the_clock_starts_at_submission_never_later_than_now_nor_too_long_before(
        engine: Engine) -> None:
    now = TUE_9AM
    ahead = dossier(submitted_at=(now + timedelta(hours=7)).isoformat())  # local time as UTC
    assert engine.received_at(ahead, now) == now
    assert engine.max_backdate is None  # no bound unless the catalog sets one
    long_ago = dossier(submitted_at=datetime(2000, 1, 1, tzinfo=ICT).isoformat())
    assert engine.received_at(long_ago, now) == long_ago.submitted_at

    bounded = Engine(parse_catalog(
        MINI.read_bytes().replace(b"\nagencies:", b"\nmax_backdate_days: 30\nagencies:"),
        "mini.yaml"))
    month = dossier(submitted_at=(now - timedelta(days=30)).isoformat())
    assert bounded.received_at(month, now) == month.submitted_at
    with pytest.raises(RoutingError) as caught:
        bounded.received_at(long_ago, now)
    assert caught.value.reason == "submitted_long_ago"
    assert "9,817.4 days before the broker's clock" in caught.value.detail
    assert "max_backdate_days (30)" in caught.value.detail


def test_max_backdate_days_must_be_a_positive_whole_number() -> None:
    for bad in (b"0", b"-3", b"soon"):
        with pytest.raises(CatalogError, match="max_backdate_days"):
            parse_catalog(MINI.read_bytes().replace(
                b"\nagencies:", b"\nmax_backdate_days: " + bad + b"\nagencies:"), "mini.yaml")
