"""`ledger prune` on a ledger of closed dossiers: how long a first run and a nightly run take.

    python -m bench.prune                              # 20,000 dossiers, SQLite
    python -m bench.prune --dossiers 50000 --ledger postgresql

Routes ``--dossiers`` dossiers of the province's catalog through ``Router.handle`` and
has their desks withdraw them (``StatusRouter.handle``), both in batches of 250 on a
clock set 60 days back, then prunes with a retention of 30 days: the first run erases
every one of them; the second, a day later, starts at the first's cutoff and finds
nothing. Reports seconds and µs per dossier for each.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from datetime import UTC, datetime, timedelta

from pika.spec import BasicProperties

from bench.common import intake_deliveries
from bench.ledgers import ledger_url
from broker.amqp import Delivery
from broker.consumers.router import Router
from broker.consumers.status import StatusRouter
from broker.ledger import Ledger
from broker.messages import CONTENT_TYPE, DossierWithdrawn, encode, kind_of
from broker.ops.prune import prune
from broker.rules.catalog import load_catalog
from broker.rules.engine import Engine
from broker.topology import Topology

BATCH = 250


def _withdrawals(receipts: list[dict[str, str]], at: datetime, start: int) -> list[Delivery]:
    out = []
    for i, r in enumerate(receipts):
        msg = DossierWithdrawn(event_id=uuid.uuid4(), dossier_code=r["dossier_code"],
                               desk_id=r["desk_id"], sent_at=at)
        out.append(Delivery(start + i, encode(msg), BasicProperties(
            content_type=CONTENT_TYPE, message_id=str(msg.event_id), type=kind_of(msg)),
            False, "status"))
    return out


def measure(dossiers: int, ledger_kind: str) -> dict[str, float]:
    catalog = load_catalog()
    engine = Engine(catalog)
    deliveries = intake_deliveries(catalog, dossiers)
    now = datetime.now(UTC)
    then = now - timedelta(days=60)
    with ledger_url(ledger_kind) as url:
        ledger = Ledger(url)
        try:
            router = Router(lambda: engine, ledger, Topology("benchprune"), clock=lambda: then)
            status = StatusRouter(lambda: engine, ledger, Topology("benchprune"),
                                  clock=lambda: then)
            receipts = []
            for i in range(0, dossiers, BATCH):
                for o in router.handle(deliveries[i:i + BATCH]):
                    body = json.loads(o.body)
                    if o.type == "desk.notice" and body.get("notice") == "receipt":
                        receipts.append(body)
            withdrawals = _withdrawals(receipts, then, dossiers + 1)
            for i in range(0, len(withdrawals), BATCH):
                status.handle(withdrawals[i:i + BATCH])
            first = time.perf_counter()
            done = prune(ledger, 30, "bench", now=now)
            first = time.perf_counter() - first
            nightly = time.perf_counter()
            again = prune(ledger, 30, "bench", now=now + timedelta(days=1))
            nightly = time.perf_counter() - nightly
        finally:
            ledger.dispose()
    return {"closed": len(receipts), "pruned_dossiers": done.dossiers,
            "pruned_bodies": done.bodies, "first_s": first,
            "first_us_per_dossier": first / max(done.dossiers, 1) * 1e6,
            "nightly_pruned": again.dossiers, "nightly_s": nightly}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.prune",
                                description=__doc__.split("\n")[0])
    p.add_argument("--dossiers", type=int, default=20000)
    p.add_argument("--ledger", choices=("sqlite", "postgresql"), default="sqlite")
    args = p.parse_args(argv)
    r = measure(args.dossiers, args.ledger)
    print(f"ledger prune, {args.ledger}: {r['closed']:,} dossiers closed 60 days ago; "
          f"first run erased {r['pruned_dossiers']:,} dossiers and {r['pruned_bodies']:,} "
          f"bodies in {r['first_s']:.1f} s ({r['first_us_per_dossier']:,.0f} µs per "
          f"dossier); the next day's run erased {r['nightly_pruned']} in "
          f"{r['nightly_s']:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
