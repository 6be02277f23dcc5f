"""Format and semantic catalog problems reported together, in one round."""
# ruff: noqa: E501 - catalog YAML in flow style reads best one entry per line

from __future__ import annotations

from datetime import time

import pytest

from broker.errors import CatalogError
from broker.rules.catalog import parse_catalog
from broker.rules.engine import Engine


def _problems(text: str, name: str = "c.yaml") -> list[str]:
    with pytest.raises(CatalogError) as e:
        parse_catalog(text.encode(), name)
    return [str(p) for p in e.value.problems]


MIXED = """\
catalog: mixed
agencies:
  - {id: A, name: a, serves: ["10001"]}
  - {id: X, name: x, serves: ["1000x"]}
  - {id: B, name: b, serves: ["10001"]}
desks:
  - {id: D, name: d, area: "10001", unit: A}
  - {id: E, name: e, channel: fax}
  - {id: D, name: d again}
  - {id: E, name: e again}
procedures:
  - {code: "1.000001", name: p, processing: {amount: -1}, competence: at_intake}
  - {code: "1.000002", name: q, processing: {amount: 1}, competence: {agency: GHOST}}
rules:
  - {id: r1, when: {channel: online}, route: {agency: A}}
  - {id: r-bad, when: {channel: online}, route: {agency: A}, colour: red}
  - {id: r2, when: {channel: online, desk_id: D}, route: {agency: A}}
"""


def test_format_and_semantic_problems_are_reported_together_at_their_lines() -> None:
    # each semantic problem comes right after an entry dropped for a format problem, so a
    # line counted among the checked entries only would be one too early; the second E
    # repeats a dropped desk, which is left unsaid
    assert _problems(MIXED, "m.yaml") == [
        r"m.yaml:4: agencies.1.serves.0: String should match pattern '^\d{2}(\d{3})?$'",
        "m.yaml:5: area 10001 is served by both A and B",
        "m.yaml:8: desks.1.channel: Input should be 'in_person', 'online', 'postal' or 'agent'",
        "m.yaml:9: duplicate desk id 'D' (first at line 7)",
        "m.yaml:12: procedures.0.processing.amount: Input should be greater than or equal to 1",
        "m.yaml:13: procedure 1.000002: unknown agency GHOST",
        "m.yaml:16: rules.1.colour: Extra inputs are not permitted",
        "m.yaml:17: rule r2: can never match: rule r1 matches everything it matches and comes first"]


NAMED_WHILE_DROPPED = """\
catalog: named
agencies:
  - {id: A, name: a, serves: ["10001"]}
  - {id: X, name: x, serves: ["10"], colour: blue}
desks:
  - {id: D, name: d, area: "10001", unit: [A, X]}
  - {id: P, name: portal, area: 10, unit: X}
procedures:
  - {code: "1.000001", name: p, processing: {amount: 1}, competence: {agency: X}}
  - {code: "1.000002", name: q, processing: {amount: 1}, competence: {chain: [{agency: A}, {agency: X}]}}
  - {code: "1.000003", name: r, processing: {amount: 1, unit: fortnights}, competence: {agency: A}}
  - {code: "1.000004", name: s, processing: {amount: 1}, competence: {agency: GHOST}}
rules:
  - {id: to-x, when: {procedure_code: "1.000003", desk_id: P, desk.area: "10"}, route: {agency: X}}
"""


def test_what_names_an_entry_dropped_for_a_format_problem_is_not_reported_unknown() -> None:
    # agency X, desk P (an unquoted area) and procedure 1.000003 are dropped; the desk
    # units, competences, chain step, rule route and rule values naming them are fine,
    # and GHOST, which nothing defines, is still reported
    assert _problems(NAMED_WHILE_DROPPED) == [
        "c.yaml:4: agencies.1.colour: Extra inputs are not permitted",
        "c.yaml:7: desks.1.area: Input should be a valid string",
        "c.yaml:11: procedures.2.processing.unit: Input should be 'working_days', "
        "'calendar_days' or 'working_hours'",
        "c.yaml:12: procedure 1.000004: unknown agency GHOST"]


NAMELESS = """\
catalog: nameless
agencies:
  - {id: P, name: province, serves: ["10"]}
  - {name: commune without an id, serves: ["10001"]}
desks: [{id: D, name: d, area: "10", unit: CA}]
procedures:
  - {code: "1.000001", name: p, processing: {amount: 1}, competence: {by_area: applicant}}
  - {code: "1.000002", name: q, processing: {amount: 1}, competence: {agency: CA}}
  - {code: "1.000002", name: q twice, processing: {amount: 1}, competence: {agency: P}}
"""


def test_a_dropped_entry_without_a_readable_name_may_be_what_any_reference_means() -> None:
    # the nameless agency may be CA, and it may serve a ward: neither is reported, but the
    # problems that do not depend on it are
    assert _problems(NAMELESS) == [
        "c.yaml:4: agencies.1.id: Field required",
        "c.yaml:9: duplicate procedure code '1.000002' (first at line 8)"]


TOP_LEVEL = """\
catalog: top
timezone: 7
agencies: [{id: A, name: a, serves: ["10001"]}]
desks: [{id: D, name: d, area: "10001", unit: NOPE}]
procedures: [{code: "1.000001", name: p, processing: {amount: 1}, competence: {agency: A}}]
"""


def test_a_top_level_format_problem_is_reported_clearly() -> None:
    # an optional field that is wrong is left to its default while the rest is checked
    assert _problems(TOP_LEVEL) == [
        "c.yaml:2: timezone: Input should be a valid string",
        "c.yaml:4: desk D: unknown unit agency NOPE"]
    assert _problems(TOP_LEVEL.replace("timezone: 7\n", "extra_holidays: [soon]\n")) == [
        "c.yaml:2: extra_holidays.0: Input should be a valid date or datetime, "
        "input is too short",
        "c.yaml:4: desk D: unknown unit agency NOPE"]
    # a required field or a whole list that is wrong leaves nothing sound to check: the
    # format problems alone, not one "unknown agency" for every reference to the list
    sound = TOP_LEVEL.replace("timezone: 7", "timezone: Asia/Ho_Chi_Minh")
    no_name = sound.replace("catalog: top\n", "catalogue: top\n")
    assert _problems(no_name) == ["c.yaml:1: catalog: Field required",
                                  "c.yaml:1: catalogue: Extra inputs are not permitted"]
    not_a_list = sound.replace('agencies: [{id: A, name: a, serves: ["10001"]}]',
                                   "agencies: {id: A, name: a}")
    assert _problems(not_a_list) == ["c.yaml:3: agencies: Input should be a valid list"]



def test_top_level_settings_nothing_can_run_on_are_problems_at_their_lines() -> None:
    # each stopped `casebroker run` with a traceback (a reload: "failed", not "refused")
    # where `rules check` said ok, or gave no line
    sound = TOP_LEVEL.replace("timezone: 7", "timezone: Asia/Ho_Chi_Minh").replace(
        "unit: NOPE", "unit: A")
    assert parse_catalog(sound.encode(), "c.yaml").spec.timezone == "Asia/Ho_Chi_Minh"
    wrong = sound.replace("catalog: top\n", 'catalog: top\ncalendar: ZZ\noffice_hours: '
                          '["11:00-09:00"]\n').replace("Asia/Ho_Chi_Minh", "Mars/Olympus")
    assert _problems(wrong) == [
        "c.yaml:2: calendar: no holiday calendar for country 'ZZ' (a two-letter country "
        "code the holidays package knows, such as VN)",
        "c.yaml:3: office_hours: office period 11:00:00-09:00:00: start must be before end",
        "c.yaml:4: timezone: unknown time zone 'Mars/Olympus'"]
    # a folder of zones (the city left off) raised IsADirectoryError out of the check
    assert _problems(sound.replace("Asia/Ho_Chi_Minh", "Asia")) == [
        "c.yaml:2: timezone: unknown time zone 'Asia'"]


def test_a_date_that_does_not_exist_is_a_problem_at_its_line_beside_the_others() -> None:
    # PyYAML raised a bare ValueError: a traceback from `rules check`, `run` and a reload;
    # then a problem of its own that hid every other one (the unknown unit here)
    impossible = TOP_LEVEL.replace("timezone: 7\n", "extra_holidays: [2026-01-01, 2026-02-30]\n")
    assert _problems(impossible) == [
        "c.yaml:2: extra_holidays.1: Input should be a valid date or datetime, day value is "
        "outside expected range",
        "c.yaml:4: desk D: unknown unit agency NOPE"]


def test_a_day_both_off_and_worked_and_a_time_of_nothing_are_problems() -> None:
    # both were taken silently: the working day won, and a dossier due the moment it
    # came was late a second later, its desk told to apologise (found by a review)
    sound = TOP_LEVEL.replace("timezone: 7", "timezone: Asia/Ho_Chi_Minh").replace(
        "unit: NOPE", "unit: A")
    both = sound.replace("catalog: top\n", "catalog: top\nextra_holidays: [2027-02-06, "
                         "2027-02-12]\nextra_workdays: [2027-02-06]\n")
    assert _problems(both) == [
        "c.yaml:3: extra_workdays: 2027-02-06 also in extra_holidays: a day is one or the "
        "other (a decree that moves a working day names it in one list, the day it moves "
        "to in the other)"]
    assert _problems(sound.replace("amount: 1", "amount: 0")) == [
        "c.yaml:5: procedures.0.processing.amount: Input should be greater than or equal "
        "to 1"]


def test_a_cut_off_for_next_morning_is_a_time_within_office_hours() -> None:
    sound = TOP_LEVEL.replace("timezone: 7", "timezone: Asia/Ho_Chi_Minh").replace(
        "unit: NOPE", "unit: A")
    taken = sound.replace("catalog: top\n", 'catalog: top\nnext_day_after: "15:00"\n')
    assert Engine(parse_catalog(taken.encode(), "c.yaml")).calendar.next_day_after == time(15)
    for cutoff, said in (("3pm", "invalid time '3pm', expected HH:MM"),
                         ("18:00", "18:00 is not within office hours (07:00-17:00): a "
                          "dossier received after closing starts the next morning anyway")):
        assert _problems(sound.replace("catalog: top\n", f'catalog: top\nnext_day_after: '
                                       f'"{cutoff}"\n')) == [f"c.yaml:2: next_day_after: {said}"]


KINDS = """\
catalog: kinds
agencies: [{id: A, name: a, serves: ["1", "2"]}]
desks: [{id: D, name: d, unit: "A B"}]
procedures:
  - {code: "1.000001", name: p, processing: {amount: x, unit: weeks}, competence: {agency: A}}
  - {code: "1.000002", name: q, processing: {amount: 1}, competence: {by_area: applicantt}}
  - {code: "1.000003", name: r, processing: {amount: 1}, competence: {chain: [{agency: A}, {agency: "A B"}]}}
  - {code: "1.000004", name: s, processing: {amount: 1}, competence: {chain: [{agency: A}, {chain: []}]}}
  - {code: "1.000005", name: t, processing: {amount: 1}, competence: {nobody: 1}}
rules:
  - {id: r, when: {channel: {colour: 1}}, route: {agency: A}}
"""


def test_every_problem_of_an_entry_is_reported_for_the_kind_it_is() -> None:
    # before: one problem per entry's field (amount hid unit, serves.0 hid serves.1), and
    # a bad competence reported as another kind's missing field ("agency: Field required")
    assert _problems(KINDS) == [
        r"c.yaml:2: agencies.0.serves.0: String should match pattern '^\d{2}(\d{3})?$'",
        r"c.yaml:2: agencies.0.serves.1: String should match pattern '^\d{2}(\d{3})?$'",
        # one unit may be written without its list: the problem is the unit, not a letter
        "c.yaml:3: desks.0.unit: String should match pattern '^[A-Za-z0-9._-]+$'",
        "c.yaml:5: procedures.0.processing.amount: Input should be a valid integer, unable "
        "to parse string as an integer",
        "c.yaml:5: procedures.0.processing.unit: Input should be 'working_days', "
        "'calendar_days' or 'working_hours'",
        "c.yaml:6: procedures.1.competence.by_area: Input should be 'applicant' or 'subject'",
        "c.yaml:7: procedures.2.competence.chain.1.agency: String should match pattern "
        "'^[A-Za-z0-9._-]+$'",
        "c.yaml:8: procedures.3.competence.chain.1: a chain step is {agency: ID}, "
        "{by_area: applicant|subject} or at_intake (chains do not nest)",
        "c.yaml:9: procedures.4.competence: a competence is {agency: ID}, "
        "{by_area: applicant|subject}, at_intake or {chain: [...]}",
        # a mapping is a range: what is wrong is said of the range, once (not once per
        # form, nor as the first form's "should be a valid string")
        "c.yaml:11: rules.0.when.channel.colour: Extra inputs are not permitted"]


def test_a_list_item_that_is_no_mapping_is_reported_at_its_own_line() -> None:
    # it was reported at its list's key, which may be hundreds of lines above
    text = TOP_LEVEL.replace("timezone: 7", "timezone: Asia/Ho_Chi_Minh").replace(
        "unit: NOPE", "unit: A") + "rules:\n  - {id: r, route: {agency: A}}\n  - 42\n"
    assert _problems(text) == [
        "c.yaml:8: rules.1: Input should be a valid dictionary or instance of Rule"]
