"""Edges of the rules engine and catalog validation found by a review: ward codes a rule
can never match, a date that never opens a procedure, a fraction of a calendar day, what
a missing intake unit is said to lack, the receipt's zone (hand-written catalogs)."""
# ruff: noqa: E501 - catalog YAML in flow style reads best one entry per line

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from broker.calendar import DurationUnit
from broker.errors import CatalogError, RoutingError
from broker.rules.catalog import load_catalog, parse_catalog
from broker.rules.engine import Engine, StepPlan
from tests.helpers import dossier

MINI = Path(__file__).parents[1] / "fixtures" / "mini.yaml"
ICT = ZoneInfo("Asia/Ho_Chi_Minh")
WED_9AM = datetime(2026, 11, 25, 9, 0, tzinfo=ICT)  # tests.helpers.dossier's submitted_at


def _with(*lines: str, procedures: str = "") -> bytes:
    """The mini catalog with rules (and procedures) added."""
    text = MINI.read_text()
    if procedures:
        text = text.replace("\nrules:\n", f"\n{procedures}\nrules:\n")
    return (text + "".join(f"{line}\n" for line in lines)).encode()


def _problems(data: bytes) -> list[str]:
    with pytest.raises(CatalogError) as e:
        parse_catalog(data, "mini.yaml")
    return [p.message for p in e.value.problems]


def test_a_rule_naming_a_ward_code_unquoted_is_a_catalog_problem() -> None:
    # YAML reads 10002 as a number and a dossier's ward code is always text: the rule
    # could never match, and every dossier it was written for went to the procedure's
    # own agency (the applicant's committee) instead of the department, without a word
    rule = ('  - {id: ward-to-department, when: {procedure_code: "1.001193", '
            "applicant.ward_code: 10002}, route: {agency: T.SO.TP}}")
    listed = ('  - {id: subject-to-department, when: {procedure_code: "1.003000", '
              'subject.ward_code: ["10001", 10002]}, route: {agency: T.SO.TP}}')
    problems = _problems(_with(rule, listed))
    assert len(problems) == 2
    assert problems[0].startswith("rule ward-to-department: applicant.ward_code: 10002 ")
    assert problems[1].startswith("rule subject-to-department: subject.ward_code: 10002 ")
    assert all("quote" in p for p in problems)
    # quoted, the same rules load and route as written
    engine = Engine(parse_catalog(_with(rule.replace("10002}", '"10002"}'),
                                        listed.replace(", 10002]", ', "10002"]')), "mini.yaml"))
    d = dossier("1.001193", desk_id="T.MC.B", applicant_ward="10002")
    assert engine.route(d, WED_9AM).agency_id == "T.SO.TP"


def test_a_rule_naming_a_ward_code_no_dossier_can_have_is_a_catalog_problem() -> None:
    # a ward code is 2 to 5 digits in the contract: "1000x" never matches either
    rule = ('  - {id: typo, when: {procedure_code: "1.001193", applicant.ward_code: "1000x"}, '
            "route: {agency: T.SO.TP}}")
    (problem,) = _problems(_with(rule))
    assert problem.startswith("rule typo: applicant.ward_code: '1000x' ")


def test_a_boundary_free_date_without_boundary_free_is_a_catalog_problem() -> None:
    # the date says when it opens; without boundary_free: true it never does, and every
    # dossier received outside its agency's desks is refused for good, after that date too
    proc = ('  - {code: "1.000004", name: "Opens later", processing: {amount: 5, unit: working_days}, '
            "competence: {agency: T.SO.TP}, boundary_free_from: 2026-01-01}")
    (problem,) = _problems(_with(procedures=proc))
    assert problem.startswith("procedure 1.000004: boundary_free_from 2026-01-01 ")
    assert "boundary_free: true" in problem


_CAL_CHAIN = ('  - {code: "1.000004", name: "Liên thông theo ngày", processing: {amount: 5, unit: calendar_days}, '
              "competence: {chain: [{by_area: applicant}, {agency: T.CA}]}, boundary_free: true}")


def test_a_share_of_calendar_days_is_not_rounded_away() -> None:
    # 5 calendar days over 2 steps: 2.5 each. Rounded (half to even), the first agency
    # had 2 days; a share of half a day became 0, the step due the moment it was handed on
    engine = Engine(parse_catalog(_with(procedures=_CAL_CHAIN), "mini.yaml"))
    decision = engine.decide(dossier("1.000004", desk_id="T.MC.A"), WED_9AM)
    assert [s.amount for s in decision.steps] == [2.5, 2.5]
    assert decision.first_step_due_at == WED_9AM + timedelta(days=2, hours=12)  # Fri 21:00
    assert decision.due_at == datetime(2026, 11, 30, 9, 0, tzinfo=ICT)  # Mon 30 Nov
    half = StepPlan("T.CA", 0.5, DurationUnit.CALENDAR_DAYS)
    assert engine.step_end(half, WED_9AM) == WED_9AM + timedelta(hours=12)
    # a share that ends on a day off moves to the next working day, as a whole day does
    thu = datetime(2026, 11, 26, 9, 0, tzinfo=ICT)
    assert engine.step_end(StepPlan("T.CA", 2.5, DurationUnit.CALENDAR_DAYS), thu) == \
        datetime(2026, 11, 30, 21, 0, tzinfo=ICT)


def test_at_intake_without_a_unit_says_what_is_missing() -> None:
    # the provincial centre has two units; the error said it had none, and that the
    # applicant's ward was "unknown" whether it was missing or served by nobody
    engine = Engine(load_catalog(MINI))
    with pytest.raises(RoutingError) as e:
        engine.route(dossier("2.000815", desk_id="T.CENTRE", applicant_ward=None), WED_9AM)
    assert e.value.reason == "no_intake_unit"
    assert e.value.detail == (
        "procedure 2.000815 is decided by the intake desk's unit: desk T.CENTRE has "
        "several (T.SO.TP, T.SO.NNMT), no commune committee serves its area 10, and the "
        "dossier has no applicant.ward_code")
    with pytest.raises(RoutingError) as e:
        engine.route(dossier("2.000815", desk_id="T.POST", applicant_ward="10009"), WED_9AM)
    assert e.value.detail == (
        "procedure 2.000815 is decided by the intake desk's unit: desk T.POST has none, "
        "no commune committee serves its area 10, and none serves applicant.ward_code 10009")


def test_the_clock_starts_in_the_catalogs_zone_whatever_the_desks_offset() -> None:
    # a desk may send submitted_at in UTC; the receipt gives it as every later notice
    # does (in_zone): in the catalog's zone, the same instant
    engine = Engine(load_catalog(MINI))
    d = dossier()  # 2026-11-25T02:00:00+00:00
    now = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)
    received = engine.received_at(d, now)
    assert received == d.submitted_at and received.utcoffset() == timedelta(hours=7)
    ahead = dossier(submitted_at="2026-11-26T02:00:00+00:00")  # a desk clock a day ahead
    received = engine.received_at(ahead, now)
    assert received == now and received.utcoffset() == timedelta(hours=7)


def test_a_desk_under_an_agencys_id_is_a_catalog_problem() -> None:
    # each party is a RabbitMQ user named by its id: a desk and an agency under one id
    # would share one login, either able to send as the other (`users` refused it only)
    text = MINI.read_text().replace("  - {id: T.MC.B,", "  - {id: T.CA,", 1)
    (problem,) = _problems(text.encode())
    assert problem == "desk T.CA: also an agency's id; a desk and an agency each need an id of their own"


def test_an_agency_named_like_an_engine_resolver_gets_its_own_plan() -> None:
    # plans were shared by their resolvers' names: an agency "_at_intake" took the plan
    # of the at_intake competence of the same times, and its dossiers went to the desk's
    # unit (found by a review)
    text = MINI.read_text().replace(
        "  - {id: T.CA,", "  - {id: _at_intake, name: \"Odd id\", serves: [\"10\"]}\n  - {id: T.CA,", 1
    ).replace('competence: {agency: T.SO.TP}, boundary_free: true}',
              'competence: {agency: _at_intake}, boundary_free: true}', 1)
    text = text.replace('processing: {amount: 2, unit: working_hours}, competence: at_intake',
                        'processing: {amount: 10, unit: working_days}, competence: at_intake', 1)
    engine = Engine(parse_catalog(text.encode(), "mini.yaml"))
    fixed = engine.route(dossier("1.004227", desk_id="T.MC.B"), WED_9AM)
    at_intake = engine.route(dossier("2.000815", desk_id="T.MC.B"), WED_9AM)
    assert ([s.agency_id for s in fixed.steps], [s.agency_id for s in at_intake.steps]) == (
        ["_at_intake"], ["T.UBND.B"])


@pytest.mark.parametrize(("value", "said"), [
    ("{minimum: 500}", "rules.1.when.attributes.area_m2.minimum: Extra inputs are not permitted"),
    ("{min: 500, max: lots}", "rules.1.when.attributes.area_m2.max: Input should be a valid number"),
    ("{}", "rules.1.when.attributes.area_m2: Value error, a range needs min, max or both: {} "
           "would match every number"),
], ids=["misspelt_bound", "bound_not_a_number", "no_bound"])
def test_a_range_written_wrong_is_said_as_a_range(value: str, said: str) -> None:
    # every one was "Input should be a valid string" (the first form tried), and {} was
    # taken, matching every number (found by a review)
    text = MINI.read_text().replace("attributes.area_m2: {min: 5000}",
                                    f"attributes.area_m2: {value}", 1)
    (problem,) = _problems(text.encode())
    assert problem.startswith(said), problem


def test_a_chain_handing_an_agency_to_itself_is_a_catalog_problem() -> None:
    (problem,) = _problems(_with(procedures=(
        '  - {code: "1.000009", name: "Twice", processing: {amount: 4, unit: working_days}, '
        "competence: {chain: [{agency: T.CA}, {agency: T.CA}]}}")))
    assert problem == ("procedure 1.000009: chain steps 1 and 2 are both T.CA: one agency's "
                       "work is one step (a chain may come back to an agency after another)")
    # coming back after another is a chain's business
    parse_catalog(_with(procedures=(
        '  - {code: "1.000009", name: "Back", processing: {amount: 4, unit: working_days}, '
        "competence: {chain: [{agency: T.CA}, {agency: T.BHXH}, {agency: T.CA}]}}")), "mini.yaml")


def test_a_province_code_where_a_ward_goes_is_said_as_such() -> None:
    # "no agency serves area 10" contradicted the catalog, where departments serve 10
    engine = Engine(load_catalog(MINI))
    with pytest.raises(RoutingError) as e:
        engine.route(dossier("1.001193", applicant_ward="10"), WED_9AM)
    assert (e.value.reason, e.value.detail) == (
        "area_not_served", "area 10 is no ward (a ward code has 5 digits): by area, the "
        "committee of the ward decides; send the ward's code")
