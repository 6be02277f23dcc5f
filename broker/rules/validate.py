"""Whole-catalog checks that a schema cannot express; every problem reported at once."""

from __future__ import annotations

import re
from collections.abc import Container, Iterable, Iterator, Mapping, Set
from typing import Any

from broker.errors import CatalogProblem
from broker.rules.catalog import (
    RULE_FIELDS,
    ByArea,
    CatalogFile,
    Chain,
    Competence,
    FixedAgency,
    Matcher,
    Range,
    Step,
)

WARD_CODE_LENGTH = 5
_SINGULAR = {"agencies": "agency", "desks": "desk", "procedures": "procedure", "rules": "rule"}


def steps_of(competence: Competence) -> list[Step]:
    """The steps of a competence: one for a single agency, several for a chain."""
    return list(competence.chain) if isinstance(competence, Chain) else [competence]


def check_catalog(spec: CatalogFile, raw: dict[str, Any], name: str,
                  dropped: Mapping[str, Set[int]] | None = None) -> list[CatalogProblem]:
    """Every semantic problem of a schema-valid catalog, with file and line.

    ``dropped`` names, by list and original index in ``raw``, the entries left out of
    ``spec`` for a format problem: what they are called still counts as known, so nothing
    naming them is reported, and lines are those of ``raw``.
    """
    dropped = dropped or {}
    lines = _Lines(raw, name, dropped)
    problems: list[CatalogProblem] = []
    problems += _duplicates("agencies", "id", (a.id for a in spec.agencies), lines)
    problems += _duplicates("desks", "id", (d.id for d in spec.desks), lines)
    problems += _duplicates("procedures", "code", (p.code for p in spec.procedures), lines)
    problems += _duplicates("rules", "id", (r.id for r in spec.rules), lines)
    agencies = _Known((a.id for a in spec.agencies), _left_out(raw, dropped, "agencies", "id"))
    problems += _areas_served_twice(spec, lines)
    # a left-out agency may serve a ward: its serves cannot be trusted either way
    wards_served = bool(dropped.get("agencies")) or any(
        len(c) == WARD_CODE_LENGTH for a in spec.agencies for c in a.serves)
    agency_ids = {a.id for a in spec.agencies}
    for i, desk in enumerate(spec.desks):
        problems += [lines.at("desks", i, f"desk {desk.id}: unknown unit agency {u}")
                     for u in desk.unit if u not in agencies]
        if desk.id in agency_ids:
            # each party is a RabbitMQ user named by its id (`casebroker users`), and its
            # messages are checked against that login: one user would be both
            problems.append(lines.at("desks", i, (
                f"desk {desk.id}: also an agency's id; a desk and an agency each need an id "
                "of their own")))
    for i, proc in enumerate(spec.procedures):
        where = f"procedure {proc.code}"
        if proc.boundary_free_from is not None and not proc.boundary_free:
            # the engine reads a date without the flag as never: refused for good
            problems.append(lines.at("procedures", i, (
                f"{where}: boundary_free_from {proc.boundary_free_from.isoformat()} without "
                "boundary_free: true never opens (add boundary_free: true, or drop the date)")))
        problems += _competence_problems(proc.competence, agencies, wards_served,
                                         lambda m, i=i, w=where: lines.at("procedures", i,
                                                                          f"{w}: {m}"))
    codes = _Known((p.code for p in spec.procedures),
                   _left_out(raw, dropped, "procedures", "code"))
    known = _known_values(spec, raw, dropped)
    for i, rule in enumerate(spec.rules):
        def report(m: str, i: int = i, w: str = f"rule {rule.id}") -> CatalogProblem:
            return lines.at("rules", i, f"{w}: {m}")

        problems += _competence_problems(rule.route, agencies, wards_served, report)
        problems += [report(m) for m in _rule_field_problems(rule.when, codes)]
        problems += [report(m) for m in _rule_value_problems(rule.when, known)]
        for j in range(i):
            if _covers(spec.rules[j].when, rule.when):
                problems.append(report(f"can never match: rule {spec.rules[j].id} "
                                       "matches everything it matches and comes first"))
                break
    problems += _calendar_problems(spec, lines)
    return sorted(problems, key=lambda p: p.line or 0)


def _calendar_problems(spec: CatalogFile, lines: _Lines) -> list[CatalogProblem]:
    """The top-level settings the working calendar is made of that nothing can run on."""
    found: list[CatalogProblem] = []
    try:
        from broker.calendar import OfficeHours

        hours = OfficeHours.parse(spec.office_hours)
    except ValueError as e:
        found.append(lines.top("office_hours", f"office_hours: {e}"))
        hours = None
    if spec.next_day_after is not None:
        from broker.calendar import parse_hhmm

        try:
            cutoff = parse_hhmm(spec.next_day_after)
        except ValueError as e:
            found.append(lines.top("next_day_after", f"next_day_after: {e}"))
        else:
            if hours is not None and not (
                    hours.periods[0][0] < cutoff <= hours.periods[-1][1]):
                found.append(lines.top("next_day_after", (
                    f"next_day_after: {spec.next_day_after} is not within office hours "
                    f"({hours.periods[0][0]:%H:%M}-{hours.periods[-1][1]:%H:%M}): a dossier "
                    "received after closing starts the next morning anyway")))
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(spec.timezone)
    except (KeyError, ValueError, OSError):  # OSError: "Asia", a folder of zones, not one
        found.append(lines.top("timezone", f"timezone: unknown time zone {spec.timezone!r}"))
    both = sorted(set(spec.extra_holidays) & set(spec.extra_workdays))
    if both:  # the calendar would take the day as worked, whichever was meant
        found.append(lines.top("extra_workdays", (
            f"extra_workdays: {', '.join(d.isoformat() for d in both)} also in "
            "extra_holidays: a day is one or the other (a decree that moves a working day "
            "names it in one list, the day it moves to in the other)")))
    try:
        import holidays

        holidays.country_holidays(spec.calendar)
    except NotImplementedError:  # `run` could not start on it, nor a reload take it
        found.append(lines.top(
            "calendar", f"calendar: no holiday calendar for country {spec.calendar!r} (a "
            "two-letter country code the holidays package knows, such as VN)"))
    return found


class _Lines:
    """Finds the line of the i-th entry of a top-level list in the raw YAML.

    ``i`` counts the checked entries; with entries dropped it is mapped back to the
    entry's index in the raw list.
    """

    def __init__(self, raw: dict[str, Any], name: str,
                 dropped: Mapping[str, Set[int]] | None = None) -> None:
        self.raw = raw
        self.name = name
        self.kept = {section: [i for i in range(len(raw.get(section) or []))
                               if i not in indexes]
                     for section, indexes in (dropped or {}).items()}

    def top(self, field: str, message: str) -> CatalogProblem:
        """A problem with a top-level field, at its key's line (none for a default)."""
        return CatalogProblem(self.name, self.raw.get("__keys__", {}).get(field), message)

    def at(self, section: str, index: int, message: str) -> CatalogProblem:
        entries = self.raw.get(section) or []
        if section in self.kept:
            index = self.kept[section][index]
        line = None
        if index < len(entries) and isinstance(entries[index], dict):
            line = entries[index].get("__line__")
        return CatalogProblem(self.name, line, message)


class _Known:
    """The names a reference may use: those of the checked entries and those read from
    the dropped ones. A dropped entry whose name cannot be read (missing, not a string)
    may be the one any reference means, so then every name counts as known."""

    def __init__(self, names: Iterable[str], dropped_names: Iterable[Any]) -> None:
        self.names = set(names)
        self.any_name = False
        for value in dropped_names:
            if isinstance(value, str):
                self.names.add(value)
            else:
                self.any_name = True

    def __contains__(self, name: object) -> bool:
        return self.any_name or name in self.names


#: what a dropped entry holds where its name cannot be read (any non-string will do)
_UNREADABLE = object()


def _left_out(raw: dict[str, Any], dropped: Mapping[str, Set[int]], section: str, key: str,
              optional: bool = False) -> list[Any]:
    """What the dropped entries of a section hold under ``key`` in the raw YAML; an entry
    that is not a mapping, or lacks a key that is not ``optional``, gives an unreadable
    value (an entry lacking an optional key gives nothing)."""
    entries = raw.get(section)
    values = []
    for i in sorted(dropped.get(section, ())):
        entry = entries[i] if isinstance(entries, list) and i < len(entries) else None
        if isinstance(entry, dict) and key in entry:
            values.append(entry[key])
        elif not (optional and isinstance(entry, dict)):
            values.append(_UNREADABLE)
    return values


def _duplicates(section: str, key: str, values: Iterable[str], lines: _Lines) -> Iterator[
        CatalogProblem]:
    first: dict[str, int] = {}
    for i, value in enumerate(values):
        if value in first:
            earlier = lines.at(section, first[value], "").line
            yield lines.at(section, i, f"duplicate {_SINGULAR[section]} {key} {value!r}"
                           f" (first at line {earlier})")
        else:
            first[value] = i


def _areas_served_twice(spec: CatalogFile, lines: _Lines) -> Iterator[CatalogProblem]:
    served_by: dict[str, str] = {}
    for i, agency in enumerate(spec.agencies):
        for area in agency.serves:
            if len(area) != WARD_CODE_LENGTH:
                continue  # a province code is served by every department at once
            if area in served_by and served_by[area] != agency.id:
                yield lines.at("agencies", i, f"area {area} is served by both "
                               f"{served_by[area]} and {agency.id}")
            else:
                served_by.setdefault(area, agency.id)


def _competence_problems(competence: Competence, agencies: Container[str], wards_served: bool,
                         report: Any) -> list[CatalogProblem]:
    problems = []
    for step in steps_of(competence):
        if isinstance(step, FixedAgency) and step.agency not in agencies:
            problems.append(report(f"unknown agency {step.agency}"))
        if isinstance(step, ByArea) and not wards_served:
            problems.append(report(f"by_area {step.by_area}: no agency serves any ward"))
    steps = steps_of(competence)
    for n, (step, after) in enumerate(zip(steps, steps[1:], strict=False), 1):
        if isinstance(step, FixedAgency) and isinstance(after, FixedAgency) and (
                step.agency == after.agency):
            # the agency would hand the dossier to itself: its result for step n opens
            # step n + 1 at the same agency, as a new assignment
            problems.append(report(f"chain steps {n} and {n + 1} are both {step.agency}: "
                                   "one agency's work is one step (a chain may come back "
                                   "to an agency after another)"))
    return problems


def _rule_field_problems(when: dict[str, Matcher], codes: Container[str]) -> list[str]:
    problems = []
    for key, matcher in when.items():
        if key not in RULE_FIELDS and not key.startswith("attributes."):
            problems.append(f"unknown field {key!r} in when")
        if key == "procedure_code":
            named = matcher if isinstance(matcher, list) else [matcher]
            for c in named:
                if isinstance(c, Range):
                    continue
                if not isinstance(c, str):
                    problems.append(f"procedure code {c!r} must be a quoted string")
                elif c not in codes:
                    problems.append(f"unknown procedure {c}")
    return problems


#: values the dossier contract allows for enumerated keys; any other value never matches
_ENUMERATED = {"channel": frozenset({"in_person", "online", "postal", "agent"}),
               "applicant.kind": frozenset({"citizen", "organization"})}
#: keys whose value is always a string: a numeric range on them never matches
_STRING_KEYS = RULE_FIELDS
#: keys whose value is a ward code, text of 2 to 5 digits in the contract (WardCode): YAML
#: reads an unquoted 24133 as a number, which no dossier's ward code ever equals
_WARD_KEYS = frozenset({"applicant.ward_code", "subject.ward_code"})
_WARD_CODE = re.compile(r"\d{2,5}")


def _known_values(spec: CatalogFile, raw: dict[str, Any], dropped: Mapping[str, Set[int]]
                  ) -> dict[str, Container[str]]:
    """The values a dossier can have for each enumerated key a rule may name."""
    known: dict[str, Container[str]] = dict(_ENUMERATED)
    known["desk_id"] = _Known((d.id for d in spec.desks), _left_out(raw, dropped, "desks", "id"))
    known["desk.area"] = _Known((d.area for d in spec.desks if d.area is not None),
                                _left_out(raw, dropped, "desks", "area", optional=True))
    return known


def _rule_value_problems(when: dict[str, Matcher], known: Mapping[str, Container[str]]
                         ) -> list[str]:
    """Values a rule names that no dossier can have: unknown desks, desk areas, channels,
    ward codes that are no ward code (an unquoted number)."""
    what = {"desk_id": "desk", "desk.area": "desk area", "channel": "channel",
            "applicant.kind": "applicant kind"}
    problems = []
    for key, matcher in when.items():
        if matcher == []:  # matches nothing: the rule would silently never apply
            problems.append(f"{key}: an empty list never matches")
            continue
        if isinstance(matcher, Range):
            if key in _STRING_KEYS:
                problems.append(f"{key}: a numeric range never matches a text value")
            elif matcher.min is not None and matcher.max is not None and matcher.min > matcher.max:
                problems.append(f"{key}: empty range (min {matcher.min} > max {matcher.max})")
            continue
        values = matcher if isinstance(matcher, list) else [matcher]
        if key in _WARD_KEYS:
            problems += [f"{key}: {v!r} never matches: a dossier's ward code is 2 to 5 digits, "
                         f"quoted (\"24133\")" for v in values
                         if not (isinstance(v, str) and _WARD_CODE.fullmatch(v))]
            continue
        if key not in known:
            continue
        problems += [f"unknown {what[key]} {v!r} in when.{key}" for v in values
                     if not isinstance(v, str) or v not in known[key]]
    return problems


def _covers(earlier: dict[str, Matcher], later: dict[str, Matcher]) -> bool:
    """Whether every input the later rule matches is matched by the earlier rule too."""
    return all(key in later and _matcher_covers(m, later[key]) for key, m in earlier.items())


def _matcher_covers(outer: Matcher, inner: Matcher) -> bool:
    if isinstance(outer, Range):
        if isinstance(inner, Range):
            lo_ok = outer.min is None or (inner.min is not None and inner.min >= outer.min)
            hi_ok = outer.max is None or (inner.max is not None and inner.max <= outer.max)
            return lo_ok and hi_ok
        values = inner if isinstance(inner, list) else [inner]
        return all(_in_range(outer, v) for v in values)
    if isinstance(inner, Range):
        return False
    # typed, because the engine never lets `true` equal 1
    outer_set = {_typed(v) for v in (outer if isinstance(outer, list) else [outer])}
    inner_set = {_typed(v) for v in (inner if isinstance(inner, list) else [inner])}
    return inner_set <= outer_set


def _typed(value: Any) -> tuple[bool, Any]:
    return isinstance(value, bool), value


def _in_range(r: Range, value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return (r.min is None or value >= r.min) and (r.max is None or value <= r.max)
