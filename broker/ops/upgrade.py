"""`casebroker ledger upgrade`: bring a ledger made by an earlier version up to this one."""

from __future__ import annotations

import argparse
from typing import Any

from broker.cli import DB_URL_HELP
from broker.ledger import Ledger, sole_runner


def _cmd_upgrade(args: argparse.Namespace) -> int:
    ledger = Ledger(args.db_url, create=False, current=False)
    try:
        if args.dry_run:
            statements = ledger.upgrade(dry_run=True)
        else:  # SQLite: not while a `casebroker run` uses it
            with sole_runner(ledger.url, "`ledger upgrade`"):
                statements = ledger.upgrade()
    finally:
        ledger.dispose()
    if not statements:
        print(f"the ledger at {ledger.where} is up to date")
        return 0
    for statement in statements:
        print(f"{statement};")
    verb = "would run" if args.dry_run else "ran"
    print(f"-- {verb} {len(statements)} statement{'s' * (len(statements) != 1)} on the "
          f"ledger at {ledger.where}")
    return 0


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add `casebroker ledger upgrade|prune`."""
    p = sub.add_parser("ledger", help="maintain the ledger's tables")
    actions = p.add_subparsers(dest="action", required=True)
    up = actions.add_parser(
        "upgrade", help="add the tables, columns and indexes this version needs and drop "
        "the indexes it retired; stop every `casebroker run` on the ledger first")
    up.add_argument("--dry-run", action="store_true",
                    help="print the statements without running them")
    up.add_argument("--db-url", help=DB_URL_HELP)
    up.set_defaults(handler=_cmd_upgrade)
    from broker.ops import prune

    prune.register(actions)
