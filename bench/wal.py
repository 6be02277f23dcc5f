"""What the router writes to the database's log per dossier, and where it goes.

    python -m bench.wal                              # SQLite, batches of 6, 20,000 before
    python -m bench.wal --batch 250 --dossiers 5000
    python -m bench.wal --ledger postgresql

Fills a fresh ledger with ``--prefill`` dossiers (batches of 250, so its indexes are
the size of a working ledger's and not a few pages), then hands the router
``--dossiers`` more in batches of ``--batch`` (under paced traffic the router's batches
are small: whatever arrived while the previous one was handled) and measures the
write-ahead log those batches wrote:

* **SQLite**: no checkpoint runs while it measures, so the WAL file holds every page
  each commit wrote. Each frame names its page; ``dbstat`` names the table or index
  that page belongs to. A transaction writes each page it changed once, whole (4 KB),
  so a small batch pays a page for every index entry that lands on a page of its own.
* **PostgreSQL**: the WAL position before and after (``pg_current_wal_lsn``), all
  of it, for the whole server (run it with nothing else writing).

The checkpoints that copy this log back into the database, and hold commits back while
they do, cost in proportion to it (docs/BENCHMARKS.md, "What holds the receipt tail").
"""

from __future__ import annotations

import argparse
import sqlite3
import struct
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.common import intake_deliveries
from bench.ledgers import ledger_url
from broker.amqp import Delivery
from broker.consumers.router import Router
from broker.ledger import Ledger
from broker.rules.catalog import load_catalog
from broker.rules.engine import Engine
from broker.topology import Topology

_WAL_HEADER = 32
_FRAME_HEADER = 24


def wal_frames(path: Path) -> tuple[int, list[int], int]:
    """(page size, the page number of every frame, commits) of a SQLite WAL file."""
    data = path.read_bytes() if path.exists() else b""
    if len(data) < _WAL_HEADER:
        return 0, [], 0
    magic, _version, page_size = struct.unpack(">III", data[:12])
    if magic not in (0x377F0682, 0x377F0683):
        raise ValueError(f"{path} is not a SQLite WAL file")
    salts = data[16:24]
    pages: list[int] = []
    commits = 0
    for offset in range(_WAL_HEADER, len(data) - _FRAME_HEADER - page_size + 1,
                        _FRAME_HEADER + page_size):
        if data[offset + 8:offset + 16] != salts:  # left over from before a reset: not valid
            break
        page, size_after_commit = struct.unpack(">II", data[offset:offset + 8])
        pages.append(page)
        commits += size_after_commit != 0
    return page_size, pages, commits


def _feed(router: Router, deliveries: list[Delivery], batch: int) -> None:
    for i in range(0, len(deliveries), batch):
        router.handle(deliveries[i:i + batch])


def measure(ledger_kind: str, prefill: int, dossiers: int, batch: int) -> dict[str, Any]:
    """Log bytes per dossier (and, for SQLite, frames per table or index)."""
    catalog = load_catalog()
    engine = Engine(catalog)
    first = intake_deliveries(catalog, prefill, seed=61)
    measured = intake_deliveries(catalog, dossiers, start=prefill + 1, seed=62)
    with ledger_url(ledger_kind) as url:
        ledger = Ledger(url)
        router = Router(lambda: engine, ledger, Topology("benchwal"))
        try:
            stop = ledger.background_checkpoints()  # as `casebroker run` fills it
            try:
                _feed(router, first, 250)
            finally:
                stop()
            if ledger_kind == "sqlite":
                return _measure_sqlite(ledger, router, measured, batch)
            return _measure_postgres(ledger, router, measured, batch)
        finally:
            ledger.dispose()


def _measure_sqlite(ledger: Ledger, router: Router, measured: list[Delivery], batch: int
                    ) -> dict[str, Any]:
    database = Path(str(ledger.engine.url.database))
    wal = database.with_name(database.name + "-wal")
    ledger.engine.dispose()
    with sqlite3.connect(database) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    # a checkpoint thread that never wakes: commits do not checkpoint (as in `casebroker
    # run`) and nothing copies the WAL back while it is measured
    stop = ledger.background_checkpoints(every_s=1e9)
    try:
        _feed(router, measured, batch)
        page_size, pages, commits = wal_frames(wal)
        with sqlite3.connect(database) as conn:
            owner = {p: n for n, p in conn.execute("SELECT name, pageno FROM dbstat")}
    finally:
        stop()
    by_btree = Counter(owner.get(p, "(free or new)") for p in pages)
    n = len(measured)
    return {"ledger": "sqlite", "dossiers": n, "batch": batch, "commits": commits,
            "page_size": page_size, "frames": len(pages),
            "kb_per_dossier": len(pages) * (page_size + _FRAME_HEADER) / 1024 / n,
            "pages_per_dossier": {name: count / n for name, count in by_btree.most_common()}}


def _measure_postgres(ledger: Ledger, router: Router, measured: list[Delivery], batch: int
                      ) -> dict[str, Any]:
    lsn = "SELECT pg_current_wal_lsn()"
    with ledger.engine.connect() as conn:
        before = conn.execute(text(lsn)).scalar_one()
    _feed(router, measured, batch)
    with ledger.engine.connect() as conn:
        written = conn.execute(text(f"SELECT pg_wal_lsn_diff(({lsn}), '{before}')")
                               ).scalar_one()
    n = len(measured)
    return {"ledger": "postgresql", "dossiers": n, "batch": batch,
            "kb_per_dossier": float(written) / 1024 / n}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.wal", description=__doc__.split("\n")[0])
    p.add_argument("--ledger", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--prefill", type=int, default=20_000,
                   help="dossiers in the ledger before measuring (default 20,000)")
    p.add_argument("--dossiers", type=int, default=3000, help="measured (default 3,000)")
    p.add_argument("--batch", type=int, default=6, help="dossiers per batch (default 6)")
    args = p.parse_args(argv)
    if args.dossiers < 1 or args.batch < 1 or args.prefill < 0:
        p.error("--dossiers and --batch must be at least 1, --prefill at least 0")
    result = measure(args.ledger, args.prefill, args.dossiers, args.batch)
    print(f"{result['ledger']}: {result['dossiers']:,} dossiers in batches of "
          f"{result['batch']} after {args.prefill:,}: "
          f"{result['kb_per_dossier']:.1f} KB of log per dossier")
    if "pages_per_dossier" in result:
        print(f"{result['frames']:,} pages of {result['page_size']:,} bytes in "
              f"{result['commits']:,} commits")
        print("| table or index | pages per dossier |\n|---|---:|")
        for name, per in result["pages_per_dossier"].items():
            print(f"| {name} | {per:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
