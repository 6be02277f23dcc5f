"""`casebroker report`: what a province reports of a period, from the ledger.

DOMAIN.md ("What a province reports"): per agency and per period, dossiers received,
resolved early, on time and late, still open and overdue, the online and digitized
shares and satisfaction; for this reform also the boundary-free share, per desk and per
procedure. (The share of catalogue procedures open to boundary-free receipt is
`casebroker rules coverage`.)

The report follows the dossiers **received in the period** (a cohort), each as the
ledger stands now: a dossier received on the period's last day and resolved a week
later counts as resolved. The period's days are those of ``--tz`` (Vietnam by default);
a result is judged early, on time or late on Vietnam's days whatever ``--tz`` is.
Definitions:

* ``received``: dossiers given a receipt (state 2 at intake); ``refused_at_intake``:
  numbered but refused by the router (not open to boundary-free receipt here), not
  received. Submissions closed at intake opened no dossier: refused in triage by an
  operator (``refused_from_triage``) or withdrawn by the citizen at the intake desk,
  while held or before the router had it (``withdrawn_while_held``); they are counted
  by the day they were closed, in the total and per desk and per procedure (no unit
  numbered them: not per agency).
* ``resolved``: a result was produced (state 9 or 10), ``early`` / ``on_time`` / ``late``
  by the day it was produced against the due day (moved by supplement pauses, never by
  an apology's new appointment);
* ``rejected`` (refused by the agency after receipt), ``stopped``, ``withdrawn``;
* ``open``: still with an agency or the desk (states 2, 4, 5, 6), ``overdue`` among them
  when past the due day now (in Vietnam), unless the clock was paused by then (state 5);
* ``online``, ``boundary_free``: received online; received at a desk outside the
  competent unit's area;
* ``digitized``: received with its records digitized, at least one document by
  reference (the desk scanned what the citizen brought, or the portal took files);
  ``results_digitized``: resolved with a result the desk was sent as a document by
  reference (a chain's earlier agencies' results count). Contracts carry documents only
  by reference, so a dossier with none was kept on paper. ``ledger prune`` keeps the
  count of a dossier's documents; one pruned by a version before 2026-11-29 lost it and
  counts as not digitized;
* ``satisfied``: received dossiers without complaint, dissatisfaction or delay: resolved
  not late and not rated 1 or 2 by the citizen at return, open and not overdue, or
  rejected, stopped or withdrawn not after their due day (none paused in time: the
  supplement never came, its due date never moved); ``satisfaction_share`` is over all
  received (DOMAIN.md), ``rated`` have a rating.

A dossier belongs to the agency that numbered it (its code's prefix: the first
competent unit, also for a chain of agencies), its intake desk and its procedure. With
``--by agency`` each agency also gets the **steps** it handled of those dossiers (a
chain has a step per agency; a dossier of one agency, one step), so the later agencies
of a chain are judged on their own part:

* ``steps_finished``: steps it ended by handing the dossier on or resolving it,
  ``steps_early`` / ``steps_on_time`` / ``steps_late`` by that day against the step's own
  due day (recorded in the event since 2026-11-29; steps ended before are not counted);
* ``steps_open``: dossiers it holds now, ``steps_overdue`` among them when past the
  step's due day (unless paused by then).

A step's due date is the end of its own time from its hand-off. The agency is told the
dossier's due date when that comes first, but an agency handed a dossier late is judged
by its own time: the delay before it is the earlier agencies' (a step started before
casebroker kept its own time, on 2026-11-29, is judged by the earlier of the two).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import date, datetime, time, timedelta
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, func, select

from broker.cli import DB_URL_HELP, day, zone
from broker.ledger import Ledger, dossiers, events, refusals
from broker.lifecycle import (
    LEGAL_TIMEZONE,
    OPEN_STATES,
    STEP_ENDS,
    Event,
    State,
    is_overdue,
    paused_in_time,
    refused_at_intake,
    timeliness,
)
from broker.messages import shown_id
from broker.ops.progress import Progress
from broker.tables import DOCUMENTS, RESULTS, STEP_OWN_DUE

#: what a report may be grouped by (`--by`)
GROUPS = ("agency", "desk", "procedure")
_RESOLVED = frozenset({State.RESOLVED, State.RETURNED})
#: ratings at return that say the citizen was dissatisfied (1 to 5)
DISSATISFIED = frozenset({1, 2})


@dataclass
class Tally:
    """The counts of one group of dossiers."""

    received: int = 0
    refused_at_intake: int = 0
    resolved: int = 0
    early: int = 0
    on_time: int = 0
    late: int = 0
    rejected: int = 0
    stopped: int = 0
    withdrawn: int = 0
    open: int = 0
    overdue: int = 0
    online: int = 0
    boundary_free: int = 0
    digitized: int = 0
    results_digitized: int = 0
    rated: int = 0
    satisfied: int = 0

    def add(self, row: Any, tz: ZoneInfo, now: datetime) -> None:
        """Count one dossier (a row of the columns :func:`report` reads)."""
        state = State(row.state)
        if refused_at_intake(state, row.seq):  # refused by the router: not received
            self.refused_at_intake += 1
            return
        self.received += 1
        self.online += row.channel == "online"
        self.boundary_free += bool(row.boundary_free)
        self.digitized += _documents(row.documents) > 0
        if state in _RESOLVED:
            self.resolved += 1
            self.results_digitized += bool(row.results)
            when = timeliness(row.finished_at, row.due_at, tz)
            setattr(self, when, getattr(self, when) + 1)
            self.rated += row.satisfaction is not None
            self.satisfied += when != "late" and row.satisfaction not in DISSATISFIED
        elif state in OPEN_STATES:
            self.open += 1
            overdue = is_overdue(state, row.due_at, row.paused_at, now)
            self.overdue += overdue
            self.satisfied += not overdue  # no delay (yet); nobody has complained
        else:  # refused by the agency, stopped, withdrawn: delayed if ended late
            self.rejected += state == State.REFUSED
            self.stopped += state == State.STOPPED
            self.withdrawn += state == State.WITHDRAWN
            self.satisfied += not _ended_late(row, tz)

    def shares(self) -> dict[str, float | None]:
        """The shares a report gives (None where there is nothing to divide by)."""
        def share(part: int, whole: int) -> float | None:
            return round(part / whole, 4) if whole else None

        return {"on_time_share": share(self.early + self.on_time, self.resolved),
                "online_share": share(self.online, self.received),
                "boundary_free_share": share(self.boundary_free, self.received),
                "digitized_share": share(self.digitized, self.received),
                "results_digitized_share": share(self.results_digitized, self.resolved),
                # DOMAIN.md: dossiers without complaint, dissatisfaction or delay over
                # all dossiers (received), not over those resolved
                "satisfaction_share": share(self.satisfied, self.received)}

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), **self.shares()}


def _ended_late(row: Any, tz: ZoneInfo) -> bool:
    """Whether a dossier refused, stopped or withdrawn ended after its due day. Not one
    whose clock was paused in time (a supplement requested by the end of the due day,
    never brought): its due date moves by the time paused (DOMAIN.md), which the ledger records
    only when the supplement comes; open, it is not overdue, and stopping or withdrawing
    it is no delay either."""
    if row.finished_at is None or paused_in_time(row.paused_at, row.due_at):
        return False
    return timeliness(row.finished_at, row.due_at, tz) == "late"


def _documents(stored: Any) -> int:
    """How many documents a dossier was received with: ``stored`` is its submission's
    ``documents`` (a list), or a pruned submission's count of them (an int), or None (a
    submission pruned before prune kept the count)."""
    if isinstance(stored, list):
        return len(stored)
    return stored if isinstance(stored, int) else 0


@dataclass
class Steps:
    """One agency's steps of the dossiers in a report (a chain has a step per agency, a
    dossier of one agency one step): those it finished, handing the dossier on or
    resolving it, early, on time or late against the step's own due day; those it holds
    now, overdue among them when past the step's due day."""

    finished: int = 0
    early: int = 0
    on_time: int = 0
    late: int = 0
    open: int = 0
    overdue: int = 0

    def finish(self, at: datetime, due_at: datetime, tz: ZoneInfo) -> None:
        self.finished += 1
        when = timeliness(at, due_at, tz)
        setattr(self, when, getattr(self, when) + 1)

    def hold(self, row: Any, now: datetime) -> None:
        self.open += 1
        due = row.step_due_at if row.step_own_due is None else datetime.fromisoformat(
            row.step_own_due)
        self.overdue += is_overdue(State(row.state), due, row.paused_at, now)

    def __iadd__(self, other: Steps) -> Steps:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)
        return self

    def as_dict(self) -> dict[str, Any]:
        whole = self.finished
        return {**{f"steps_{k}": v for k, v in asdict(self).items()},
                "steps_in_time_share": round((self.early + self.on_time) / whole, 4)
                if whole else None}


def _group_of(by: str | None, row: Any) -> str | None:
    if by == "agency":
        return str(row.code).rsplit("-", 2)[0]
    if by == "desk":
        return str(row.intake_desk_id)
    if by == "procedure":
        return str(row.procedure_code)
    return None


def tally(rows: Iterable[Any], by: str | None, tz: ZoneInfo, now: datetime,
          steps: dict[str, Steps] | None = None) -> tuple[Tally, dict[str, Tally]]:
    """The total and, with ``by``, each group's tally of the dossiers in ``rows``; with
    ``steps``, each open dossier's step counted for its current agency there."""
    total, groups = Tally(), dict[str, Tally]()
    for row in rows:
        total.add(row, tz, now)
        key = _group_of(by, row)
        if key is not None:
            groups.setdefault(key, Tally()).add(row, tz, now)
        if steps is not None and State(row.state) in OPEN_STATES:
            steps.setdefault(str(row.agency_id), Steps()).hold(row, now)
    return total, dict(sorted(groups.items()))


def _finished_steps(conn: Any, start: datetime, end: datetime, tz: ZoneInfo,
                    steps: dict[str, Steps]) -> None:
    """Count the steps the dossiers received from ``start`` to ``end`` finished, for the
    agency whose step it was. A step finished before casebroker recorded a step's due
    date in its event (2026-11-29) has none, and is not counted."""
    e = events.c
    rows = conn.execution_options(yield_per=5000).execute(
        select(e.kind, e.actor, e.from_agency, e.detail, e.at)
        .select_from(events.join(dossiers, dossiers.c.code == e.dossier_code))
        .where(dossiers.c.received_at >= start, dossiers.c.received_at < end,
               e.kind.in_([str(k) for k in STEP_ENDS])))
    for r in rows:
        detail = r.detail if isinstance(r.detail, dict) else {}
        due = detail.get(STEP_OWN_DUE, detail.get("step_due_at"))
        if due is None:
            continue
        agency = r.from_agency if r.kind == str(Event.HAND_OFF) else r.actor
        steps.setdefault(str(agency), Steps()).finish(r.at, datetime.fromisoformat(due), tz)


def report(ledger: Ledger, first: date, last: date, by: str | None, tz: ZoneInfo,
           now: datetime, progress: Callable[[int, int], None] | None = None
           ) -> dict[str, Any]:
    """The report of dossiers received from ``first`` to ``last`` (local days, both
    included), read a chunk at a time in one snapshot of the ledger; ``progress`` is told
    (dossiers read, dossiers in the period) as it goes: a year's take half a minute."""
    start = datetime.combine(first, time(), tzinfo=tz)
    end = datetime.combine(last + timedelta(days=1), time(), tzinfo=tz)
    steps: dict[str, Steps] | None = {} if by == "agency" else None
    with ledger.read(snapshot=True) as conn:
        rows = _received(conn, start, end, progress)
        # the period in the zone asked for; each result judged on Vietnam's days, as the
        # law judges it: a report shown in UTC must not make a result early or late
        legal = ZoneInfo(LEGAL_TIMEZONE)
        total, groups = tally(rows, by, legal, now, steps)
        if steps is not None:
            _finished_steps(conn, start, end, legal, steps)
        closed = _closed_while_held(conn, by, start, end)
    out = {k: t.as_dict() for k, t in groups.items()}
    totals: dict[str, Any] = {}
    if steps is not None:  # an agency that only took over later steps numbered none
        for agency, counted in steps.items():
            out.setdefault(agency, Tally().as_dict()).update(counted.as_dict())
        for values in out.values():
            for key, value in Steps().as_dict().items():
                values.setdefault(key, value)
        all_steps = Steps()
        for counted in steps.values():
            all_steps += counted
        totals = all_steps.as_dict()
    if by in ("desk", "procedure"):
        for name, counts in closed.items():
            for key, n in counts.items():
                out.setdefault(key, Tally().as_dict())[name] = n
        for values in out.values():  # each row its count of both (after: rows added above)
            for name in closed:
                values.setdefault(name, 0)
    return {"from": first.isoformat(), "to": last.isoformat(), "tz": str(tz),
            "as_of": now.isoformat(timespec="seconds"), "by": by,
            "total": {**total.as_dict(),
                      **{name: sum(counts.values()) for name, counts in closed.items()},
                      **totals},
            "groups": dict(sorted(out.items()))}


def _received(conn: Connection, start: datetime, end: datetime,
              progress: Callable[[int, int], None] | None) -> Iterable[Any]:
    """The columns :meth:`Tally.add` reads of the dossiers received from ``start`` to
    ``end``, a chunk at a time; ``progress`` told (read, received then) as they are."""
    c = dossiers.c
    period = (c.received_at >= start, c.received_at < end)
    total = None if progress is None else conn.execute(
        select(func.count()).select_from(dossiers).where(*period)).scalar_one()
    rows = conn.execution_options(yield_per=5000).execute(
        select(c.code, c.procedure_code, c.intake_desk_id, c.channel, c.state, c.seq,
               c.boundary_free, c.due_at, c.finished_at, c.paused_at, c.satisfaction,
               c.agency_id, c.step_due_at,
               c.submission[DOCUMENTS].label("documents"),
               c.flags[STEP_OWN_DUE].as_string().label("step_own_due"),
               c.flags[RESULTS].label("results"))
        .where(*period))
    return rows if progress is None else _told(rows, int(total or 0), progress)


def _told(rows: Iterable[Any], total: int, progress: Callable[[int, int], None]
          ) -> Iterator[Any]:
    """``rows``, ``progress`` told of each once it is counted."""
    for done, row in enumerate(rows, 1):
        yield row
        progress(done, total)


#: submissions closed while held (a ``refusals`` row, no dossier), by state: the report's
#: count of each
UNOPENED = {int(State.REFUSED): "refused_from_triage",
            int(State.WITHDRAWN): "withdrawn_while_held"}


def _closed_while_held(conn: Connection, by: str | None, start: datetime, end: datetime
                       ) -> dict[str, dict[str, int]]:
    """Per :data:`UNOPENED` count, per desk or procedure (``by``; else per procedure, for
    the total): the submissions closed while held from ``start`` to ``end``. They opened
    no dossier: no unit numbered them, but they have a desk and a procedure."""
    column = refusals.c.desk_id if by == "desk" else refusals.c.procedure_code
    closed: dict[str, dict[str, int]] = {name: {} for name in UNOPENED.values()}
    for key, state, n in conn.execute(
            select(column, refusals.c.state, func.count()).select_from(refusals)
            .where(refusals.c.refused_at >= start, refusals.c.refused_at < end)
            .group_by(column, refusals.c.state)):
        # a desk id only refusals have (junk refused --without-notice) may be a phone
        # number: withheld, and ids withheld alike counted together
        name = shown_id(str(key)) if by == "desk" else str(key)
        counts = closed[UNOPENED[int(state)]]
        counts[name] = counts.get(name, 0) + int(n)
    return closed


def quarter_start(day: date) -> date:
    """The first day of ``day``'s quarter."""
    return date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)


_COLUMNS = (("received", "received", 8), ("resolved", "resolved", 8), ("early", "early", 6),
            ("on_time", "on time", 7), ("late", "late", 5), ("on_time_share", "in time%", 8),
            ("open", "open", 6), ("overdue", "overdue", 7),
            ("refused_at_intake", "refused", 7), ("rejected", "rejected", 8),
            ("withdrawn", "withdrawn", 9), ("stopped", "stopped", 7),
            ("online_share", "online%", 7), ("boundary_free_share", "bfree%", 6),
            ("digitized_share", "digit%", 6), ("results_digitized_share", "res.digit%", 10),
            ("satisfaction_share", "satisf%", 7), ("refused_from_triage", "triage-refused", 14),
            ("withdrawn_while_held", "held-withdrawn", 14))
#: with --by agency: the steps each agency handled
_STEP_COLUMNS = (("steps_finished", "steps done", 10),
                 ("steps_in_time_share", "steps in time%", 14), ("steps_open", "steps open", 10),
                 ("steps_overdue", "steps overdue", 13))


def format_report(data: dict[str, Any]) -> str:
    """The report as a text table: the total, then each group."""
    columns = _COLUMNS + (_STEP_COLUMNS if data["by"] == "agency" else ())

    def cells(values: dict[str, Any]) -> str:
        out = []
        for key, _, width in columns:
            v = values.get(key)  # a unit's row has no refusals from triage: "-"
            text = "-" if v is None else f"{100 * v:.1f}" if key.endswith("_share") else str(v)
            out.append(text.rjust(width))
        return " ".join(out)

    width = max([len("total"), *(len(k) for k in data["groups"])])
    lines = [f"dossiers received {data['from']} to {data['to']} ({data['tz']}), as the "
             f"ledger stands at {data['as_of']}",
             f"{'':<{width}} " + " ".join(title.rjust(w) for _, title, w in columns),
             f"{'total':<{width}} {cells(data['total'])}"]
    lines += [f"{k:<{width}} {cells(v)}" for k, v in data["groups"].items()]
    return "\n".join(lines)


def _cmd_report(args: argparse.Namespace) -> int:
    tz = ZoneInfo(args.tz)
    now = datetime.now(tz)
    last = args.to or now.date()
    first = args.from_ or quarter_start(last)
    if first > last:
        to = f"--to {last}" if args.to else f"today ({last}, in {args.tz}: --to's default)"
        print(f"error: --from {first} is after {to}", file=sys.stderr)
        return 2
    ledger = Ledger(args.db_url, create=False)
    try:
        ledger.check_schema()
        data = report(ledger, first, last, args.by, tz, now,
                      Progress("report: {done} of {total} dossiers read"))
    finally:
        ledger.dispose()
    if args.json:
        print(json.dumps(data))
    elif args.csv:
        write_csv(data, sys.stdout)
    else:
        print(format_report(data))
    return 0


def write_csv(data: dict[str, Any], out: TextIO) -> None:
    """The report as CSV, for a spreadsheet: a row for the total, then one per group, with
    every count and share (shares as fractions; empty where there is nothing to divide)."""
    fields = [*asdict(Tally()), *Tally().shares(), *UNOPENED.values(),
              *(Steps().as_dict() if data["by"] == "agency" else ())]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([data["by"] or "group", *fields])
    for name, values in [("total", data["total"]), *data["groups"].items()]:
        writer.writerow([name, *("" if values.get(f) is None else values[f] for f in fields)])


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add `casebroker report`."""
    p = sub.add_parser("report", help="what a province reports of a period: dossiers "
                       "received, resolved early/on time/late, open and overdue, online, "
                       "boundary-free, digitized and satisfaction shares, per agency, desk "
                       "or procedure")
    p.add_argument("--from", dest="from_", type=day, metavar="FROM",
                   help="first day received (default: the first day of --to's quarter)")
    p.add_argument("--to", type=day, help="last day received, included (default: today)")
    p.add_argument("--by", choices=GROUPS, help="a row per agency, desk or procedure")
    p.add_argument("--tz", type=zone, default=LEGAL_TIMEZONE,
                   help="whose days the period covers (default: Vietnam); results are "
                   "judged on Vietnam's days whatever it is")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print one JSON object")
    form.add_argument("--csv", action="store_true", help="print CSV, for a spreadsheet")
    p.add_argument("--db-url", help=DB_URL_HELP)
    p.set_defaults(handler=_cmd_report)
