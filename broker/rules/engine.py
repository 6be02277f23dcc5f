"""The compiled rules engine: pure, dictionary lookups, one instance per catalog version.

``decide`` answers, for one dossier: which agencies in which order, by which rule,
whether it crossed a boundary, whether it may be received here at all, and when
it is due. ``explain`` answers why, rule by rule.

``at_intake`` competence picks the unit that owns the intake desk; a desk owned by
no single unit (the portal, a bank agent point, the provincial centre) falls back to
the committee of the desk's area, then of the applicant's ward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from broker.calendar import DurationUnit, OfficeHours, WorkingCalendar
from broker.errors import RoutingError, UnknownParty
from broker.messages import DossierSubmitted
from broker.rules.catalog import (
    AtIntake,
    ByArea,
    Catalog,
    Competence,
    Desk,
    FixedAgency,
    Matcher,
    Procedure,
    Range,
    Rule,
    Step,
)
from broker.rules.validate import WARD_CODE_LENGTH, steps_of


@dataclass(frozen=True, slots=True)
class StepPlan:
    """One agency's part of a dossier and the time it has for it."""

    agency_id: str
    amount: float
    unit: DurationUnit


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a dossier goes and why; everything the ledger records about routing."""

    procedure_code: str
    steps: tuple[StepPlan, ...]
    rule_id: str
    boundary_free: bool
    refusal: str | None
    received_at: datetime
    due_at: datetime
    first_step_due_at: datetime
    catalog_hash: str

    @property
    def agency_id(self) -> str:
        return self.steps[0].agency_id


Getter = Callable[[DossierSubmitted, Desk], Any]
_GETTERS: dict[str, Getter] = {
    "procedure_code": lambda d, _: d.procedure_code,
    "applicant.kind": lambda d, _: d.applicant.kind,
    "applicant.ward_code": lambda d, _: d.applicant.ward_code,
    "subject.ward_code": lambda d, _: d.subject.ward_code if d.subject else None,
    "channel": lambda d, _: d.channel.value,
    "desk_id": lambda d, _: d.desk_id,
    "desk.area": lambda _, desk: desk.area,
}


def _getter(key: str) -> Getter:
    if key.startswith("attributes."):
        name = key.removeprefix("attributes.")
        return lambda d, _: d.attributes.get(name)
    return _GETTERS[key]


def _same(a: Any, b: Any) -> bool:
    # True == 1 in Python; a catalog saying `true` must not match the number 1
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def _predicate(matcher: Matcher) -> tuple[Callable[[Any], bool], str]:
    if isinstance(matcher, Range):
        lo, hi = matcher.min, matcher.max

        def in_range(v: Any) -> bool:
            if isinstance(v, bool) or not isinstance(v, int | float):
                return False
            return (lo is None or v >= lo) and (hi is None or v <= hi)

        return in_range, f"in [{lo}, {hi}]"
    if isinstance(matcher, list):
        options = list(matcher)
        return (lambda v: any(_same(v, o) for o in options)), f"in {options}"
    return (lambda v: _same(v, matcher)), f"== {matcher!r}"


@dataclass(frozen=True, slots=True)
class _CompiledRule:
    rule: Rule
    checks: tuple[tuple[str, Getter, Callable[[Any], bool], str], ...]

    def first_failure(self, dossier: DossierSubmitted, desk: Desk) -> str | None:
        for key, get, ok, text in self.checks:
            value = get(dossier, desk)
            if not ok(value):
                return f"{key} {text} is false"
        return None


class Engine:
    """A catalog compiled to dictionaries; decisions need no I/O."""

    def __init__(self, catalog: Catalog) -> None:
        spec = catalog.spec
        self.catalog = catalog
        self.catalog_hash = catalog.content_hash
        self.calendar = WorkingCalendar(
            country=spec.calendar, timezone=spec.timezone,
            office_hours=OfficeHours.parse(spec.office_hours),
            extra_holidays=spec.extra_holidays, extra_workdays=spec.extra_workdays)
        self.procedures: dict[str, Procedure] = {p.code: p for p in spec.procedures}
        self.desks: dict[str, Desk] = {d.id: d for d in spec.desks}
        self.agencies = {a.id: a for a in spec.agencies}
        self.committee_of: dict[str, str] = {}
        for agency in spec.agencies:
            for area in agency.serves:
                if len(area) == WARD_CODE_LENGTH:
                    self.committee_of.setdefault(area, agency.id)
        self.rules = [self._compile(r) for r in spec.rules]
        self._rules_for: dict[str, tuple[_CompiledRule, ...]] = {}
        for code in self.procedures:
            self._rules_for[code] = tuple(
                r for r in self.rules
                if "procedure_code" not in r.rule.when or _names_code(r.rule, code))

    @staticmethod
    def _compile(rule: Rule) -> _CompiledRule:
        checks = []
        for key, matcher in rule.when.items():
            ok, text = _predicate(matcher)
            checks.append((key, _getter(key), ok, text))
        return _CompiledRule(rule, tuple(checks))

    def decide(self, dossier: DossierSubmitted, received_at: datetime) -> Decision:
        """Route one dossier; raise RoutingError (→ triage) when it cannot be routed."""
        procedure, desk = self._lookup(dossier)
        competence: Competence = procedure.competence
        rule_id = f"procedure:{procedure.code}"
        for compiled in self._rules_for[procedure.code]:
            if compiled.first_failure(dossier, desk) is None:
                competence, rule_id = compiled.rule.route, compiled.rule.id
                break
        steps = self._plan(competence, procedure, dossier, desk)
        first = self.agencies[steps[0].agency_id]
        boundary_free = first.id not in desk.unit and (desk.area not in first.serves)
        local_day = received_at.astimezone(self.calendar.tz).date()
        refusal = None
        if boundary_free and not procedure.open_for_boundary_free(local_day):
            since = procedure.boundary_free_from
            refusal = (f"procedure {procedure.code} is not open to boundary-free receipt"
                       + (f" before {since.isoformat()}" if since else "")
                       + f"; submit it at a desk of {first.id}")
        due_at = self.calendar.due_at(received_at, procedure.processing.amount,
                                      procedure.processing.unit)
        return Decision(
            procedure_code=procedure.code, steps=steps, rule_id=rule_id,
            boundary_free=boundary_free, refusal=refusal, received_at=received_at,
            due_at=due_at, first_step_due_at=self.step_due_at(steps[0], received_at, due_at),
            catalog_hash=self.catalog_hash)

    def step_due_at(self, step: StepPlan, start: datetime, due_at: datetime) -> datetime:
        """When one step is due if it starts at ``start`` (never after the whole dossier)."""
        cal = self.calendar
        if step.unit == DurationUnit.CALENDAR_DAYS:
            end = cal.due_at(start, round(step.amount), DurationUnit.CALENDAR_DAYS)
        else:
            per_unit = (cal.office_hours.seconds_per_day
                        if step.unit == DurationUnit.WORKING_DAYS else 3600)
            end = cal.add_working_seconds(cal.clock_start(start), step.amount * per_unit)
        return min(end, due_at)

    def explain(self, dossier: DossierSubmitted, received_at: datetime) -> dict[str, Any]:
        """The decision with every rule considered and why it did or did not match."""
        procedure, desk = self._lookup(dossier)
        considered = []
        winner = None
        for compiled in self.rules:
            rule = compiled.rule
            if winner is not None:
                considered.append({"rule_id": rule.id, "matched": False,
                                   "why": f"not evaluated: {winner} matched first"})
                continue
            failure = compiled.first_failure(dossier, desk)
            considered.append({"rule_id": rule.id, "matched": failure is None,
                               "why": failure or "all conditions hold"})
            if failure is None:
                winner = rule.id
        decision = self.decide(dossier, received_at)
        return {
            "procedure_code": procedure.code,
            "procedure_name": procedure.name,
            "agency_id": decision.agency_id,
            "steps": [s.agency_id for s in decision.steps],
            "rule_id": decision.rule_id,
            "rules_considered": considered,
            "boundary_free": decision.boundary_free,
            "refusal": decision.refusal,
            "received_at": decision.received_at.isoformat(),
            "due_at": decision.due_at.isoformat(),
            "catalog_hash": decision.catalog_hash,
        }

    def _lookup(self, dossier: DossierSubmitted) -> tuple[Procedure, Desk]:
        procedure = self.procedures.get(dossier.procedure_code)
        if procedure is None:
            raise UnknownParty("unknown_procedure",
                               f"procedure {dossier.procedure_code} is not in the catalog")
        desk = self.desks.get(dossier.desk_id)
        if desk is None:
            raise UnknownParty("unknown_desk", f"desk {dossier.desk_id} is not in the catalog")
        if dossier.collect_at not in self.desks:
            raise UnknownParty("unknown_desk",
                               f"return desk {dossier.collect_at} is not in the catalog")
        return procedure, desk

    def _plan(self, competence: Competence, procedure: Procedure, dossier: DossierSubmitted,
              desk: Desk) -> tuple[StepPlan, ...]:
        steps = steps_of(competence)
        total = procedure.processing
        share = total.amount / len(steps)
        plans = []
        for step in steps:
            agency = self._agency_for(step, dossier, desk)
            if step.processing is not None:
                plans.append(StepPlan(agency, step.processing.amount, step.processing.unit))
            else:
                plans.append(StepPlan(agency, share, total.unit))
        return tuple(plans)

    def _agency_for(self, step: Step, dossier: DossierSubmitted, desk: Desk) -> str:
        if isinstance(step, FixedAgency):
            return step.agency
        if isinstance(step, ByArea):
            area = (dossier.applicant.ward_code if step.by_area == "applicant"
                    else dossier.subject.ward_code if dossier.subject else None)
            if area is None:
                raise RoutingError("no_area", f"{step.by_area}.ward_code is required to route"
                                   f" procedure {dossier.procedure_code}")
            return self._committee(area)
        assert isinstance(step, AtIntake)
        if len(desk.unit) == 1:
            return desk.unit[0]
        for area in (desk.area, dossier.applicant.ward_code):
            if area and area in self.committee_of:
                return self.committee_of[area]
        raise RoutingError("no_intake_unit", f"desk {desk.id} has no unit of its own and the"
                           " applicant's ward is unknown")

    def _committee(self, area: str) -> str:
        agency = self.committee_of.get(area)
        if agency is None:
            raise UnknownParty("area_not_served", f"no agency serves area {area}")
        return agency


def _names_code(rule: Rule, code: str) -> bool:
    matcher = rule.when["procedure_code"]
    if isinstance(matcher, list):
        return any(str(m) == code for m in matcher)
    return str(matcher) == code
