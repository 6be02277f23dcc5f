"""Where the router's time goes: wall and CPU per dossier, phase by phase.

    python -m bench.phases                       # SQLite ledger, 20,000 dossiers
    python -m bench.phases --ledger postgresql --dossiers 50000

Runs the ``router_sqlite`` / ``router_postgres`` stage of ``casebroker bench`` with
timers around the handler's phases (the batch as a whole, the idempotency reads, the
code upsert, the ledger writes, the commit). Wall time is ``perf_counter``; CPU time
is ``thread_time`` of the handler thread, so the gap between them is time spent
waiting: for the disk, for the database, or for the GIL while the I/O thread runs.
The timers cost a few microseconds per batch, not per dossier.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy.engine.base

from bench.common import Progress
from bench.router import router
from broker import amqp_worker
from broker import ledger as ledger_module
from broker.amqp import ConsumerSettings
from broker.consumers.router import Router
from broker.rules.catalog import load_catalog

#: (label, class, method): nested phases are listed after the phase holding them
PHASES: tuple[tuple[str, type, str], ...] = (
    ("batch (all of the handler)", amqp_worker.QueueWorker, "_handle"),
    ("  idempotency read (seen)", ledger_module.Batch, "seen"),
    ("  route, number, build messages", Router, "_route"),
    ("    duplicate check", ledger_module.Batch, "existing_submissions"),
    ("    code upsert", ledger_module.Batch, "allocate_codes"),
    ("  ledger writes (flush)", ledger_module.Batch, "flush"),
    ("  commit", sqlalchemy.engine.base.Connection, "_commit_impl"),
)


def _timed(totals: dict[str, list[float]], label: str, owner: type, name: str
           ) -> Callable[[], None]:
    original = getattr(owner, name)
    acc = totals.setdefault(label, [0.0, 0.0])

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            acc[0] += time.perf_counter() - wall
            acc[1] += time.thread_time() - cpu

    setattr(owner, name, wrapper)
    return lambda: setattr(owner, name, original)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.phases", description=__doc__.split("\n")[0])
    p.add_argument("--ledger", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--dossiers", type=int, default=20_000)
    p.add_argument("--prefetch-count", type=int, default=1000)
    args = p.parse_args(argv)
    totals: dict[str, list[float]] = {}
    restore = [_timed(totals, label, owner, name) for label, owner, name in PHASES]
    try:
        result = router(load_catalog(), args.dossiers, Progress(), ledger_kind=args.ledger,
                        settings=ConsumerSettings(prefetch_count=args.prefetch_count))
    finally:
        for undo in restore:
            undo()
    n = result.dossiers
    print(f"router, {args.ledger} ledger: {n} dossiers, {result.msgs_per_s:,.0f} msg/s "
          f"over {result.seconds:.1f} s")
    print("| phase | wall µs/dossier | CPU µs/dossier |\n|---|---:|---:|")
    for label, _, _ in PHASES:
        wall, cpu = totals.get(label, [0.0, 0.0])
        print(f"| {label.strip()} | {wall / n * 1e6:,.0f} | {cpu / n * 1e6:,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
