"""The compiled rules engine: pure, dictionary lookups, one instance per catalog version.

``route`` answers, for one dossier: which agencies in which order, by which rule,
whether it crossed a boundary, and whether it may be received here at all. ``decide``
adds the due dates from the working calendar. ``explain`` answers why, rule by rule.

Compiled once per catalog: each procedure code maps to the few rules that can apply
to it and to a plan of its steps; each desk maps to the agencies it is "home" for; a
fixed route is a ready-made tuple. Deciding is a handful of dictionary lookups
whatever the size of the catalog.

``at_intake`` competence picks the unit that owns the intake desk; a desk owned by
no single unit (the portal, a bank agent point, the provincial centre) falls back to
the committee of the desk's area, then of the applicant's ward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

from broker.calendar import DurationUnit, OfficeHours, WorkingCalendar, parse_hhmm
from broker.errors import UNKNOWN_PROCEDURE, RoutingError, UnknownParty
from broker.messages import DossierSubmitted, shown_id
from broker.rules.catalog import (
    AtIntake,
    ByArea,
    Catalog,
    Competence,
    Desk,
    FixedAgency,
    Procedure,
    Rule,
    Step,
)
from broker.rules.predicates import Getter, getter, predicate
from broker.rules.validate import WARD_CODE_LENGTH, steps_of

#: desk channels that reach the competent agency wherever it sits: no receipt through
#: them is boundary-free (see ``Engine._home``)
REMOTE_CHANNELS = frozenset({"online", "postal"})


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
    #: how the procedure's time was counted (``due_at``'s unit)
    unit: DurationUnit = DurationUnit.WORKING_DAYS

    @property
    def agency_id(self) -> str:
        return self.steps[0].agency_id


@dataclass(frozen=True, slots=True)
class Route:
    """The routing part of a decision: who decides, by which rule, and whether it may be
    received at this desk; no dates."""

    procedure_code: str
    steps: tuple[StepPlan, ...]
    rule_id: str
    boundary_free: bool
    refusal: str | None

    @property
    def agency_id(self) -> str:
        return self.steps[0].agency_id


class _Plan:
    """A competence compiled: fixed steps are one ready tuple, others are memoized by the
    agencies they resolve to (a ward's committee, the intake desk's unit)."""

    __slots__ = ("_fixed", "_intern", "_memo", "_resolvers", "_single", "_times")

    def __init__(self, engine: Engine, times: tuple[tuple[float, DurationUnit], ...],
                 resolvers: tuple[str | Callable[[DossierSubmitted, Desk], str], ...]) -> None:
        self._times = times
        self._resolvers = resolvers
        self._intern = engine._interned
        # memo keys: the agency id for one step, the tuple of agency ids for a chain. The
        # result depends only on the agencies and the step times, so plans with the same
        # times share one memo: a few hundred small dicts, whatever the catalog's size
        self._memo = engine._memos.setdefault(self._times, {})
        self._fixed: tuple[StepPlan, ...] | None = None
        self._single: Callable[[DossierSubmitted, Desk], str] | None = None
        if all(isinstance(r, str) for r in self._resolvers):
            self._fixed = self._build(tuple(str(r) for r in self._resolvers))
        elif len(self._resolvers) == 1:
            resolver = self._resolvers[0]
            assert not isinstance(resolver, str)
            self._single = resolver

    def _build(self, agencies: tuple[str, ...]) -> tuple[StepPlan, ...]:
        # shared across procedures: equal plans are one object, which keeps memory small
        plan = tuple(StepPlan(a, amount, unit)
                     for a, (amount, unit) in zip(agencies, self._times, strict=True))
        return self._intern.setdefault(plan, plan)

    def steps(self, dossier: DossierSubmitted, desk: Desk) -> tuple[StepPlan, ...]:
        if self._fixed is not None:
            return self._fixed
        if self._single is not None:
            agency = self._single(dossier, desk)
            plan = self._memo.get(agency)
            if plan is None:
                plan = self._memo[agency] = self._build((agency,))  # one per agency
            return plan
        agencies = tuple(r if isinstance(r, str) else r(dossier, desk) for r in self._resolvers)
        plan = self._memo.get(agencies)
        if plan is None:
            # bounded by the catalog: one entry per combination of agencies
            plan = self._memo[agencies] = self._build(agencies)
        return plan


@dataclass(frozen=True, slots=True)
class _CompiledRule:
    rule: Rule
    checks: tuple[tuple[str, Getter, Callable[[Any], bool], str], ...]
    tests: tuple[tuple[Getter, Callable[[Any], bool]], ...]

    def first_failure(self, dossier: DossierSubmitted, desk: Desk) -> str | None:
        for key, get, ok, text in self.checks:
            value = get(dossier, desk)
            if not ok(value):
                return f"{key} {text} is false"
        return None


@dataclass(frozen=True, slots=True)
class _CompiledProcedure:
    code: str  # a copy, so routing never touches the pydantic model
    procedure: Procedure
    plan: _Plan
    #: the rules that can apply to this procedure, in file order, each with its plan
    rules: tuple[tuple[_CompiledRule, _Plan], ...]
    #: boundary-free receipt: never (False), always (True) or from this instant on
    open_from: bool | datetime
    default_rule_id: str
    #: the whole dossier's time, copied out of the model for the same reason as ``code``
    amount: int
    unit: DurationUnit


class Engine:
    """A catalog compiled to dictionaries; decisions need no I/O."""

    def __init__(self, catalog: Catalog) -> None:
        spec = catalog.spec
        self.catalog = catalog
        self.catalog_hash = catalog.content_hash
        self.calendar = WorkingCalendar(
            country=spec.calendar, timezone=spec.timezone,
            office_hours=OfficeHours.parse(spec.office_hours),
            extra_holidays=spec.extra_holidays, extra_workdays=spec.extra_workdays,
            decree_checked=spec.decree_checked,
            next_day_after=(None if spec.next_day_after is None
                            else parse_hhmm(spec.next_day_after)))
        self.max_backdate = (None if spec.max_backdate_days is None
                             else timedelta(days=spec.max_backdate_days))
        self.procedures: dict[str, Procedure] = {p.code: p for p in spec.procedures}
        self.desks: dict[str, Desk] = {d.id: d for d in spec.desks}
        self.agencies = {a.id: a for a in spec.agencies}
        self.committee_of: dict[str, str] = {}
        for agency in spec.agencies:
            for area in agency.serves:
                if len(area) == WARD_CODE_LENGTH:
                    self.committee_of.setdefault(area, agency.id)
        # the agencies a desk is "home" for: its units and every agency serving its area;
        # receipt for any other agency is boundary-free. The portal and the post are no
        # locality's desk: a citizen reaches the competent agency through them wherever
        # it sits, as every online or postal submission always could, so they are home
        # for every agency (compared by area, a province-wide desk was home for every
        # department and for no commune)
        everyone = frozenset(self.agencies)
        self._home: dict[str, frozenset[str]] = {
            d.id: everyone if d.channel in REMOTE_CHANNELS else frozenset(d.unit) | {
                a.id for a in spec.agencies if d.area in a.serves}
            for d in spec.desks}
        self.rules = [self._compile(r) for r in spec.rules]
        self._interned: dict[tuple[StepPlan, ...], tuple[StepPlan, ...]] = {}
        self._memos: dict[tuple[tuple[float, DurationUnit], ...],
                          dict[Any, tuple[StepPlan, ...]]] = {}
        self._plans: dict[tuple[Any, ...], _Plan] = {}
        self._compiled: dict[str, _CompiledProcedure] = {}
        for proc in spec.procedures:
            rules = tuple((r, self._plan(r.rule.route, proc)) for r in self.rules
                          if "procedure_code" not in r.rule.when or _names_code(r.rule, proc.code))
            self._compiled[proc.code] = _CompiledProcedure(
                proc.code, proc, self._plan(proc.competence, proc), rules, self._open_from(proc),
                f"procedure:{proc.code}", proc.processing.amount, proc.processing.unit)

    def _plan(self, competence: Competence, procedure: Procedure) -> _Plan:
        """The plan of a competence for one procedure's processing time.

        Plans are shared: procedures with the same kind of competence and the same times
        (most of a province's catalog: "the ward's committee, 5 working days") get one
        object, so deciding touches a few hundred plans whatever the catalog's size, and
        a large catalog stays in the CPU's caches.
        """
        steps = steps_of(competence)
        total = procedure.processing
        share = total.amount / len(steps)
        times = tuple((s.processing.amount, s.processing.unit) if s.processing is not None
                      else (share, total.unit) for s in steps)
        resolvers = tuple(self._resolver(s) for s in steps)
        # a fixed agency by its id, a resolver by its name, told apart: an agency may be
        # named like one (the id pattern allows "_at_intake"), and shared the other's plan
        key = (times, tuple(("agency", r) if isinstance(r, str) else ("resolver", r.__name__)
                            for r in resolvers))
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = _Plan(self, times, resolvers)
        return plan

    def _open_from(self, procedure: Procedure) -> bool | datetime:
        if not procedure.boundary_free:
            return False
        if procedure.boundary_free_from is None:
            return True
        # "on or after that local date" is "at or after that local midnight"
        midnight = datetime.combine(procedure.boundary_free_from, time(), tzinfo=self.calendar.tz)
        return midnight.astimezone(UTC)

    @staticmethod
    def _compile(rule: Rule) -> _CompiledRule:
        checks = []
        for key, matcher in rule.when.items():
            ok, text = predicate(matcher)
            checks.append((key, getter(key), ok, text))
        return _CompiledRule(rule, tuple(checks), tuple((c[1], c[2]) for c in checks))

    def route(self, dossier: DossierSubmitted, received_at: datetime) -> Route:
        """Who decides one dossier and whether this desk may receive it; no due dates.

        Raises RoutingError (→ triage) when it cannot be routed.
        """
        compiled, desk = self._lookup(dossier)
        return self._route(compiled, desk, dossier, received_at)

    def _route(self, compiled: _CompiledProcedure, desk: Desk, dossier: DossierSubmitted,
               received_at: datetime) -> Route:
        plan, rule_id = compiled.plan, ""
        for rule, rule_plan in compiled.rules:
            for get, ok in rule.tests:
                if not ok(get(dossier, desk)):
                    break
            else:
                plan, rule_id = rule_plan, rule.rule.id
                break
        steps = plan.steps(dossier, desk)
        boundary_free = steps[0].agency_id not in self._home[desk.id]
        refusal = None
        if boundary_free:
            open_from = compiled.open_from
            if open_from is False or (open_from is not True and received_at < open_from):
                refusal = self._refusal(compiled.procedure, steps[0].agency_id)
        return Route(compiled.code, steps, rule_id or compiled.default_rule_id,
                     boundary_free, refusal)

    @staticmethod
    def _refusal(procedure: Procedure, agency_id: str) -> str:
        since = procedure.boundary_free_from if procedure.boundary_free else None
        return (f"procedure {procedure.code} is not open to boundary-free receipt"
                + (f" before {since.isoformat()}" if since else "")
                + f"; submit it at a desk of {agency_id}")

    def received_at(self, dossier: DossierSubmitted, now: datetime) -> datetime:
        """When the legal clock starts: the desk's ``submitted_at``, never later than now
        (a desk clock ahead gains nothing). One further back than the catalog's
        ``max_backdate_days`` raises RoutingError (→ triage): a desk clock gone wrong, or
        a dossier held somewhere too long to be dated by the desk's word alone. ``now``
        is when the broker first had the dossier: for a replay, its first delivery's
        processing time (the router's ``_first_arrivals``). Given in the catalog's zone,
        whatever offset the desk wrote: the receipt and the assignment say it as every
        later notice of the dossier does (:func:`~broker.consumers.common.in_zone`)."""
        submitted = dossier.submitted_at
        if self.max_backdate is not None and now - submitted > self.max_backdate:
            days = (now - submitted) / timedelta(days=1)
            raise RoutingError(
                "submitted_long_ago",
                f"submitted_at is {days:,.1f} days before the broker's clock, more than the "
                f"catalog's max_backdate_days ({self.max_backdate.days}); check the desk's "
                "clock, then have the desk send it again or raise the limit and replay")
        return min(submitted, now).astimezone(self.calendar.tz)

    def decide(self, dossier: DossierSubmitted, received_at: datetime) -> Decision:
        """Route one dossier and compute its due dates; raise RoutingError (→ triage)."""
        compiled, desk = self._lookup(dossier)
        r = self._route(compiled, desk, dossier, received_at)
        due_at = self.calendar.due_at(received_at, compiled.amount, compiled.unit)
        first = r.steps[0]
        if len(r.steps) == 1 and first.amount == compiled.amount and first.unit == compiled.unit:
            first_step_due_at = due_at  # one step with the whole time: the same instant
        else:
            first_step_due_at = self.step_due_at(first, received_at, due_at)
        return Decision(
            procedure_code=r.procedure_code, steps=r.steps, rule_id=r.rule_id,
            boundary_free=r.boundary_free, refusal=r.refusal, received_at=received_at,
            due_at=due_at, first_step_due_at=first_step_due_at, catalog_hash=self.catalog_hash,
            unit=compiled.unit)

    def step_end(self, step: StepPlan, start: datetime) -> datetime:
        """When one step's own time, started at ``start``, runs out."""
        cal = self.calendar
        if step.unit == DurationUnit.CALENDAR_DAYS:
            # a share of a procedure's calendar days may be a fraction (5 over 2 steps):
            # rounded, a step of 2.5 days had 2, and one of half a day none at all
            return cal.on_a_working_day(cal.calendar_days_end(start, step.amount))
        per_unit = (cal.office_hours.seconds_per_day
                    if step.unit == DurationUnit.WORKING_DAYS else 3600)
        return cal.add_working_seconds(cal.clock_start(start), step.amount * per_unit)

    def step_due_at(self, step: StepPlan, start: datetime, due_at: datetime) -> datetime:
        """When one step is due if it starts at ``start``: at the end of its own time
        (:meth:`step_end`), never after the whole dossier (``due_at``)."""
        return min(self.step_end(step, start), due_at)

    def explain(self, dossier: DossierSubmitted, received_at: datetime) -> dict[str, Any]:
        """The decision with every rule considered and why it did or did not match.

        The rules considered are those that can apply to the dossier's procedure (rules
        naming other procedures are never tried), in file order.
        """
        compiled, desk = self._lookup(dossier)
        considered = []
        winner = None
        for rule, _ in compiled.rules:
            if winner is not None:
                considered.append({"rule_id": rule.rule.id, "matched": False,
                                   "why": f"not evaluated: {winner} matched first"})
                continue
            failure = rule.first_failure(dossier, desk)
            considered.append({"rule_id": rule.rule.id, "matched": failure is None,
                               "why": failure or "all conditions hold"})
            if failure is None:
                winner = rule.rule.id
        decision = self.decide(dossier, received_at)
        # each step's due date if every step before it takes all its time (the status
        # router dates a step from its hand-off); none later than the dossier's
        plan: list[dict[str, Any]] = []
        start = decision.received_at
        # refused at intake: the dossier is closed at once and nothing is ever due (the
        # desk's notice has no due date); the steps it would have taken stay in "steps"
        for i, step in enumerate(() if decision.refusal else decision.steps):
            due = decision.first_step_due_at if i == 0 else self.step_due_at(
                step, start, decision.due_at)
            plan.append({"agency_id": step.agency_id, "amount": step.amount,
                         "unit": step.unit.value, "due_at": due.isoformat()})
            start = due
        return {
            "procedure_code": compiled.procedure.code,
            "procedure_name": compiled.procedure.name,
            "agency_id": decision.agency_id,
            "steps": [s.agency_id for s in decision.steps],
            "step_plan": plan,
            "rule_id": decision.rule_id,
            "rules_considered": considered,
            "rules_not_applicable": len(self.rules) - len(considered),
            "boundary_free": decision.boundary_free,
            "refusal": decision.refusal,
            "received_at": decision.received_at.astimezone(self.calendar.tz).isoformat(),
            "due_at": None if decision.refusal else decision.due_at.isoformat(),
            "catalog_hash": decision.catalog_hash,
        }

    def _lookup(self, dossier: DossierSubmitted) -> tuple[_CompiledProcedure, Desk]:
        compiled = self._compiled.get(dossier.procedure_code)
        if compiled is None:
            raise UnknownParty(UNKNOWN_PROCEDURE,
                               f"procedure {dossier.procedure_code} is not in the catalog")
        desk = self.desks.get(dossier.desk_id)
        if desk is None:
            raise UnknownParty("unknown_desk",
                               f"desk {shown_id(dossier.desk_id)} is not in the catalog")
        if dossier.return_desk_id is not None and dossier.return_desk_id not in self.desks:
            raise UnknownParty("unknown_desk",
                               f"return desk {shown_id(dossier.return_desk_id)} is not in "
                               "the catalog")
        return compiled, desk

    def _resolver(self, step: Step) -> str | Callable[[DossierSubmitted, Desk], str]:
        """A fixed agency id, or the function that finds the step's agency for a dossier."""
        if isinstance(step, FixedAgency):
            return step.agency
        if isinstance(step, ByArea):
            return self._by_applicant if step.by_area == "applicant" else self._by_subject
        assert isinstance(step, AtIntake)
        return self._at_intake

    def _by_applicant(self, dossier: DossierSubmitted, _desk: Desk) -> str:
        area = dossier.applicant.ward_code
        if area is None:
            raise RoutingError("no_area", "applicant.ward_code is required to route"
                               f" procedure {dossier.procedure_code}")
        return self._committee(area)

    def _by_subject(self, dossier: DossierSubmitted, _desk: Desk) -> str:
        area = dossier.subject.ward_code if dossier.subject else None
        if area is None:
            raise RoutingError("no_area", "subject.ward_code is required to route"
                               f" procedure {dossier.procedure_code}")
        return self._committee(area)

    def _at_intake(self, dossier: DossierSubmitted, desk: Desk) -> str:
        if len(desk.unit) == 1:
            return desk.unit[0]
        for area in (desk.area, dossier.applicant.ward_code):
            if area and area in self.committee_of:
                return self.committee_of[area]
        # what is missing, each part of it: a desk with several units was said to have none
        units = f"several ({', '.join(desk.unit)})" if desk.unit else "none"
        area = (f"no commune committee serves its area {desk.area}" if desk.area
                else "it has no area")
        ward = dossier.applicant.ward_code
        applicant = (f"none serves applicant.ward_code {ward}" if ward
                     else "the dossier has no applicant.ward_code")
        raise RoutingError("no_intake_unit", f"procedure {dossier.procedure_code} is decided "
                           f"by the intake desk's unit: desk {desk.id} has {units}, {area}, "
                           f"and {applicant}")

    def _committee(self, area: str) -> str:
        agency = self.committee_of.get(area)
        if agency is None and len(area) != WARD_CODE_LENGTH:
            # a province's code (2 digits) is served by its departments: "no agency serves
            # area 66" contradicted the catalog
            raise UnknownParty("area_not_served", (
                f"area {area} is no ward (a ward code has {WARD_CODE_LENGTH} digits): by "
                "area, the committee of the ward decides; send the ward's code"))
        if agency is None:
            raise UnknownParty("area_not_served", f"no agency serves area {area}")
        return agency


def _names_code(rule: Rule, code: str) -> bool:
    matcher = rule.when["procedure_code"]
    if isinstance(matcher, list):
        return any(str(m) == code for m in matcher)
    return str(matcher) == code
