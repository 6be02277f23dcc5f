"""Operator reports on catalogs: rollout coverage and what-if diffs; pure, no I/O.

* :func:`coverage`: the share of a catalog's procedures open to boundary-free receipt
  on a date (the province's milestones: 50% on 2025-09-01, 100% on 2025-12-31).
* :class:`Diff`: fed the dossiers recorded in the ledger, it re-routes each under an old
  and a new catalog and counts those that would now go elsewhere, by procedure and by
  agency. The ledger reading lives in ``broker/rules_cli.py``; this module only decides.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from broker.errors import RoutingError
from broker.messages import DossierSubmitted
from broker.rules.catalog import Catalog
from broker.rules.engine import Engine

TRIAGE = "(triage)"
REFUSED = "(refused)"


def coverage(catalog: Catalog, on: date) -> dict[str, Any]:
    """How many of the catalog's procedures may be received boundary-free on ``on``."""
    procedures = catalog.spec.procedures
    open_now = sum(1 for p in procedures if p.open_for_boundary_free(on))
    never = sum(1 for p in procedures if not p.boundary_free)
    total = len(procedures)
    return {"catalog": catalog.spec.catalog, "catalog_hash": catalog.content_hash,
            "on": on.isoformat(), "procedures": total, "open": open_now,
            "opening_later": total - open_now - never, "never": never,
            "share": round(open_now / total, 4) if total else 0.0}  # as the report rounds


def format_coverage(report: dict[str, Any]) -> str:
    """One line for the terminal."""
    return (f"{report['catalog']} on {report['on']}: {report['open']} of {report['procedures']}"
            f" procedures open to boundary-free receipt ({report['share']:.1%});"
            f" {report['opening_later']} open later, {report['never']} never")


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where one dossier goes under one catalog."""

    agencies: tuple[str, ...]  # empty when it cannot be routed
    refused: bool = False
    triage: str | None = None

    @property
    def first(self) -> str:
        """The competent agency, or a marker when there is none."""
        if self.triage is not None:
            return TRIAGE
        return REFUSED if self.refused else self.agencies[0]

    def __str__(self) -> str:
        if self.triage is not None:
            return f"triage:{self.triage}"
        path = " > ".join(self.agencies)
        return f"refused:{path}" if self.refused else path


def outcome(engine: Engine, dossier: DossierSubmitted, received_at: datetime) -> Outcome:
    """Route a dossier under one catalog; a routing error is an outcome too."""
    try:
        route = engine.route(dossier, received_at)
    except RoutingError as e:
        return Outcome((), triage=e.reason)
    return Outcome(tuple(s.agency_id for s in route.steps), refused=route.refusal is not None)


@dataclass
class _ProcedureCount:
    dossiers: int = 0
    changed: int = 0
    moves: Counter[tuple[str, str]] = field(default_factory=Counter)


@dataclass
class Diff:
    """Dossiers re-decided under two catalogs, and what would change."""

    old: Engine
    new: Engine
    dossiers: int = 0
    changed: int = 0
    unreadable: int = 0
    processing_changed: int = 0
    _procedures: dict[str, _ProcedureCount] = field(
        default_factory=lambda: defaultdict(_ProcedureCount))
    _before: Counter[str] = field(default_factory=Counter)
    _after: Counter[str] = field(default_factory=Counter)
    _lost: Counter[str] = field(default_factory=Counter)
    _gained: Counter[str] = field(default_factory=Counter)

    def add(self, dossier: DossierSubmitted, received_at: datetime) -> None:
        """Re-decide one recorded dossier under both catalogs."""
        before = outcome(self.old, dossier, received_at)
        after = outcome(self.new, dossier, received_at)
        self.dossiers += 1
        counts = self._procedures[dossier.procedure_code]
        counts.dossiers += 1
        self._before[before.first] += 1
        self._after[after.first] += 1
        old_proc = self.old.procedures.get(dossier.procedure_code)
        new_proc = self.new.procedures.get(dossier.procedure_code)
        if old_proc and new_proc and old_proc.processing != new_proc.processing:
            self.processing_changed += 1
        if before == after:
            return
        self.changed += 1
        counts.changed += 1
        counts.moves[(str(before), str(after))] += 1
        if before.first != after.first:
            self._lost[before.first] += 1
            self._gained[after.first] += 1

    def add_all(self, rows: Iterable[tuple[DossierSubmitted | None, datetime]]) -> Diff:
        """Feed (dossier, received_at) pairs; None stands for a row that could not be read."""
        for dossier, received_at in rows:
            if dossier is None:
                self.unreadable += 1
            else:
                self.add(dossier, received_at)
        return self

    def report(self) -> dict[str, Any]:
        """The result as one JSON-ready object."""
        by_procedure = [
            {"procedure_code": code, "dossiers": c.dossiers, "changed": c.changed,
             "moves": [{"from": a, "to": b, "dossiers": n}
                       for (a, b), n in sorted(c.moves.items(), key=lambda m: (-m[1], m[0]))]}
            for code, c in sorted(self._procedures.items(), key=lambda i: (-i[1].changed, i[0]))
            if c.changed]
        agencies = sorted(set(self._lost) | set(self._gained),
                          key=lambda a: (-(self._lost[a] + self._gained[a]), a))
        by_agency = [{"agency_id": a, "before": self._before[a], "after": self._after[a],
                      "lost": self._lost[a], "gained": self._gained[a]} for a in agencies]
        return {
            "old": {"catalog": self.old.catalog.spec.catalog, "hash": self.old.catalog_hash},
            "new": {"catalog": self.new.catalog.spec.catalog, "hash": self.new.catalog_hash},
            "dossiers": self.dossiers, "changed": self.changed,
            "share_changed": self.changed / self.dossiers if self.dossiers else 0.0,
            "unreadable": self.unreadable, "processing_changed": self.processing_changed,
            "by_procedure": by_procedure, "by_agency": by_agency,
        }


def format_diff(report: dict[str, Any], limit: int = 20) -> str:
    """The report for the terminal; the longest lists are cut at ``limit`` entries."""
    lines = [f"re-decided {report['dossiers']} dossiers under {report['old']['hash']} and "
             f"{report['new']['hash']}: {report['changed']} would now go elsewhere "
             f"({report['share_changed']:.1%})"]
    if report["unreadable"]:
        lines.append(f"{report['unreadable']} ledger rows could not be read as a dossier")
    if report["processing_changed"]:
        lines.append(f"{report['processing_changed']} dossiers' procedures have a new "
                     "processing time (due dates would change)")
    if report["by_procedure"]:
        lines.append("by procedure:")
        for p in report["by_procedure"][:limit]:
            lines.append(f"  {p['procedure_code']}  {p['changed']} of {p['dossiers']}")
            lines += [f"      {m['dossiers']:>6}  {m['from']}  ->  {m['to']}"
                      for m in p["moves"][:5]]
    if report["by_agency"]:
        lines.append(f"by agency:  {'before':>8} {'after':>8} {'lost':>6} {'gained':>6}")
        lines += [f"  {a['agency_id']:<20} {a['before']:>8} {a['after']:>8} {a['lost']:>6}"
                  f" {a['gained']:>6}" for a in report["by_agency"][:limit]]
    return "\n".join(lines)
