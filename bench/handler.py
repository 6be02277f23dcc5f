"""The router's handler alone, by batch size: no RabbitMQ, no other thread.

    python -m bench.handler                          # batches of 1, 13 and 250, SQLite
    python -m bench.handler --batches 1,250 --ledger postgresql --dossiers 5000

Calls ``Router.handle`` on batches of real deliveries (the bodies ``casebroker bench``
uses) against a fresh ledger, one batch after the other, in this thread, and reports
wall and CPU time per dossier and per batch. With nothing else in the process, what a
batch costs on its own shows: the per-dossier work at large batches, the fixed cost of
a batch (its reads, its code upsert, its commit) at small ones. Under a paced load the
router's batches are small (whatever arrived while the previous one was handled), so
the fixed cost is what receipt latency pays.
"""

from __future__ import annotations

import argparse
import time

from bench.common import intake_deliveries
from bench.ledgers import ledger_url
from broker.consumers.router import Router
from broker.ledger import Ledger
from broker.rules.catalog import load_catalog
from broker.rules.engine import Engine
from broker.topology import Topology


def measure(batch: int, dossiers: int, ledger_kind: str) -> tuple[float, float]:
    """(wall µs, CPU µs) per dossier for ``dossiers`` handled in batches of ``batch``."""
    catalog = load_catalog()
    engine = Engine(catalog)
    deliveries = intake_deliveries(catalog, dossiers)
    with ledger_url(ledger_kind) as url:
        ledger = Ledger(url)
        stop_checkpoints = ledger.background_checkpoints()  # as `casebroker run` has them
        try:
            router = Router(lambda: engine, ledger, Topology("benchhandler"))
            wall, cpu = time.perf_counter(), time.thread_time()
            for i in range(0, dossiers, batch):
                router.handle(deliveries[i:i + batch])
            wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
        finally:
            stop_checkpoints()
            ledger.dispose()
    return wall / dossiers * 1e6, cpu / dossiers * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.handler",
                                description=__doc__.split("\n")[0])
    p.add_argument("--batches", default="1,13,250", help="batch sizes (default 1,13,250)")
    p.add_argument("--dossiers", type=int, default=3000, help="per batch size (default 3000)")
    p.add_argument("--ledger", choices=("sqlite", "postgresql"), default="sqlite")
    args = p.parse_args(argv)
    print(f"Router.handle alone, {args.ledger} ledger, {args.dossiers} dossiers per size")
    print("| batch | wall µs/dossier | CPU µs/dossier | wall ms/batch |\n|---:|---:|---:|---:|")
    for batch in (int(b) for b in args.batches.split(",") if b.strip()):
        wall, cpu = measure(batch, args.dossiers, args.ledger)
        print(f"| {batch} | {wall:,.0f} | {cpu:,.0f} | {wall * batch / 1000:,.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
