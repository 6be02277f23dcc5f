"""`casebroker rules coverage`, `rules diff` and `rules calendar`: registered through
``broker.cli.COMMAND_MODULES``.

Kept out of ``broker/rules/`` because the diff reads the ledger (SQLAlchemy) and the
rules package stays pure; the reports themselves are in ``broker/rules/tools.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from typing import Any

from pydantic import ValidationError

from broker.cli import DB_URL_HELP, catalog_option, day, year
from broker.messages import DossierSubmitted
from broker.rules.catalog import load_catalog
from broker.rules.engine import Engine
from broker.rules.tools import Diff, coverage, format_coverage, format_diff

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2
CHUNK_ROWS = 1000


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add `rules coverage`, `rules diff` and `rules calendar` to the `rules` group."""
    rules = groups["rules"]
    cov = rules.add_parser("coverage", help="share of procedures open to boundary-free "
                           "receipt on a date")
    catalog_option(cov)
    cov.add_argument("--on", type=day, help="the date (YYYY-MM-DD; default: today in the "
                     "catalog's time zone)")
    cov.add_argument("--json", action="store_true", help="print one JSON object")
    cov.set_defaults(handler=run_coverage)

    diff = rules.add_parser("diff", help="re-decide the ledger's dossiers under two catalogs "
                            "and report those that would go elsewhere")
    diff.add_argument("old", help="the catalog in force (YAML)")
    diff.add_argument("new", help="the changed catalog (YAML)")
    diff.add_argument("--db-url", help=DB_URL_HELP)
    diff.add_argument("--since", type=day,
                      help="only dossiers received on or after this local date (YYYY-MM-DD)")
    diff.add_argument("--json", action="store_true", help="print one JSON object")
    diff.set_defaults(handler=run_diff)

    cal = rules.add_parser("calendar", help="the days off and worked weekend days a catalog's "
                           "calendar counts in a year, to hold against the year's decree")
    catalog_option(cal)
    cal.add_argument("--year", type=year, help="the year (default: this year in the "
                     "catalog's time zone)")
    cal.add_argument("--json", action="store_true", help="print one JSON object")
    cal.set_defaults(handler=run_calendar)



def run_coverage(args: argparse.Namespace) -> int:
    """Print the boundary-free coverage of a catalog on a date."""
    catalog = load_catalog(args.catalog)
    on = args.on
    if on is None:
        on = datetime.now(Engine(catalog).calendar.tz).date()
    report = coverage(catalog, on)
    print(json.dumps(report) if args.json else format_coverage(report))
    return EXIT_OK


def run_calendar(args: argparse.Namespace) -> int:
    """Print one year of a catalog's working calendar, and whether a decree is known."""
    from broker.calendar import decrees_known_until, unconfirmed_note, unconfirmed_years, year_plan

    catalog = load_catalog(args.catalog)
    calendar = Engine(catalog).calendar
    y = args.year or datetime.now(calendar.tz).year
    days = year_plan(calendar, y)
    working = sum(calendar.is_working_day(date(y, 1, 1) + timedelta(days=n))
                  for n in range((date(y + 1, 1, 1) - date(y, 1, 1)).days))
    last = decrees_known_until(calendar.country)
    unconfirmed = bool(unconfirmed_years(calendar, [y]))
    if args.json:
        print(json.dumps({
            "catalog": catalog.spec.catalog, "country": calendar.country, "year": y,
            "working_days": working, "decrees_known_until": last,
            "unconfirmed": unconfirmed,
            "days": [{"date": d.day.isoformat(), "working": d.working, "name": d.name,
                      "source": d.source} for d in days]}, ensure_ascii=False))
        return EXIT_OK
    print(f"{catalog.spec.catalog}: calendar {calendar.country}, {y}: {working} working days")
    for d in days:
        kind = "worked" if d.working else "off"
        print(f"  {d.day.isoformat()} {d.day:%a}  {kind:<6}  {d.name}  ({d.source})")
    if unconfirmed:
        print(f"note: {unconfirmed_note(calendar, y)}.")
    return EXIT_OK


def run_diff(args: argparse.Namespace) -> int:
    """Re-decide recorded dossiers under OLD and NEW; print what would change."""
    old, new = Engine(load_catalog(args.old)), Engine(load_catalog(args.new))
    since = (datetime.combine(args.since, time(), tzinfo=old.calendar.tz)
             if args.since else None)
    from sqlalchemy.exc import SQLAlchemyError

    try:
        diff = Diff(old, new).add_all(ledger_submissions(args.db_url, since))
    except SQLAlchemyError as e:
        print(f"error: cannot read the ledger: {type(e).__name__}: "
              f"{str(e).splitlines()[0]}", file=sys.stderr)
        return EXIT_PROBLEM
    report = diff.report()
    report["since"] = args.since.isoformat() if args.since else None
    print(json.dumps(report, ensure_ascii=False) if args.json else format_diff(report))
    return EXIT_OK


def ledger_submissions(db_url: str | None, since: datetime | None = None,
                       chunk_rows: int = CHUNK_ROWS
                       ) -> Iterator[tuple[DossierSubmitted | None, datetime]]:
    """(original dossier, received_at) of every dossier in the ledger, streamed in chunks.

    A row whose ``submission`` no longer validates yields None in place of the dossier.
    """
    from sqlalchemy import select

    from broker.ledger import Ledger, dossiers

    ledger = Ledger(db_url, create=False)
    c = dossiers.c
    query = select(c.submission, c.received_at).order_by(c.id)
    if since is not None:
        query = query.where(c.received_at >= since)
    try:
        with ledger.read() as conn:
            result = conn.execution_options(yield_per=chunk_rows).execute(query)
            for row in result:
                try:
                    dossier: DossierSubmitted | None = DossierSubmitted.model_validate(
                        row.submission)
                except ValidationError:
                    dossier = None
                yield dossier, row.received_at
    finally:
        ledger.dispose()
