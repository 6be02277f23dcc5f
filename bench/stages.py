"""Each stage of `casebroker bench` as a function: catalog, arguments → report keys."""

from __future__ import annotations

import argparse
from typing import Any

from bench.common import Progress, unique_prefix
from bench.process import receipt_latency, router_rss
from bench.router import router
from bench.transport import forwarder, shovel
from broker.amqp import ConsumerSettings
from broker.rules.catalog import Catalog


def _settings(prefetch_count: int) -> ConsumerSettings:
    return ConsumerSettings(prefetch_count=prefetch_count)


def shovel_stage(catalog: Catalog, args: argparse.Namespace, p: Progress) -> dict[str, Any]:
    """RabbitMQ's shovel plugin: N in, 2N out, on-confirm; the fastest of --shovel-runs.

    A shovel run is short (a second or two for 20,000 dossiers), so the shovel's start-up
    and a busy moment of the machine weigh on it more than on the router's longer runs;
    the fastest run is the yardstick, which keeps the router's ratio from flattering it.
    """
    runs = [shovel(catalog, args.dossiers, p, body_kb=args.body_kb,
                   prefetch_count=args.prefetch_count)
            for _ in range(max(1, args.shovel_runs))]
    best = min(runs, key=lambda r: r.seconds)
    return {"shovel_msgs_per_s": best.msgs_per_s, "shovel_seconds": round(best.seconds, 3),
            "shovel_runs_msgs_per_s": [r.msgs_per_s for r in runs],
            "shovel_cpu_us_per_msg": best.cpu, "message_bytes": best.body_bytes}


def shovel_spread_stage(catalog: Catalog, args: argparse.Namespace, p: Progress
                        ) -> dict[str, Any]:
    """The shovel over the real topology: each dossier to its agency's and desk's queue."""
    from bench.spread import shovel_spread

    r = shovel_spread(catalog, args.dossiers, p, body_kb=args.body_kb,
                      prefetch_count=args.prefetch_count)
    return {"shovel_spread_msgs_per_s": r.msgs_per_s,
            "shovel_spread_seconds": round(r.seconds, 3),
            "shovel_spread_cpu_us_per_msg": r.cpu}


def forwarder_stage(catalog: Catalog, args: argparse.Namespace, p: Progress
                    ) -> dict[str, Any]:
    """broker.amqp.ConsumerService with a handler that only copies."""
    r = forwarder(catalog, args.dossiers, p, body_kb=args.body_kb,
                  prefetch_count=args.prefetch_count)
    return {"forwarder_msgs_per_s": r.msgs_per_s, "forwarder_seconds": round(r.seconds, 3),
            "forwarder_cpu_us_per_msg": r.cpu, "message_bytes": r.body_bytes}


def _router_stage(kind: str, key: str, catalog: Catalog, args: argparse.Namespace,
                  p: Progress) -> dict[str, Any]:
    r = router(catalog, args.dossiers, p, ledger_kind=kind, body_kb=args.body_kb,
               settings=_settings(args.prefetch_count), catalog_path=args.catalog)
    return {f"router_{key}_msgs_per_s": r.msgs_per_s,
            f"router_{key}_seconds": round(r.seconds, 3),
            f"router_{key}_outcomes": r.outcomes, f"router_{key}_cpu_us_per_msg": r.cpu,
            "message_bytes": r.body_bytes}


def router_sqlite_stage(catalog: Catalog, args: argparse.Namespace, p: Progress
                        ) -> dict[str, Any]:
    """The router with a SQLite ledger."""
    return _router_stage("sqlite", "sqlite", catalog, args, p)


def router_postgres_stage(catalog: Catalog, args: argparse.Namespace, p: Progress
                          ) -> dict[str, Any]:
    """The router with a PostgreSQL ledger (a schema of its own)."""
    return _router_stage("postgresql", "postgres", catalog, args, p)


def lifecycle_stage(_catalog: Catalog, args: argparse.Namespace, p: Progress
                    ) -> dict[str, Any]:
    """submit → route → agency → resolve → return, with the demo's simulators."""
    from adapters.demo import DemoSettings, run_demo

    n = args.lifecycle_dossiers
    p.note(f"{n} dossiers through `casebroker demo` (its own prefix and SQLite ledger)")
    s = run_demo(DemoSettings(dossiers=n, progress=False, stall_timeout_s=120.0,
                             catalog=args.catalog, prefix=unique_prefix("lc")))
    if s["returned"] + s["refused"] != s["submitted"] or s["lost"] or s["duplicates"]:
        raise RuntimeError(f"lifecycle incomplete: {s}")
    return {"lifecycle_dossiers_per_s": s["dossiers_per_s"], "lifecycle_dossiers": n,
            "lifecycle_seconds": s["elapsed_s"]}


def receipt_stage(catalog: Catalog, args: argparse.Namespace, p: Progress) -> dict[str, Any]:
    """Receipt round trip at a fixed offered load."""
    r = receipt_latency(catalog, args.receipt_dossiers, p, offered_per_s=args.receipt_rate,
                        warmup=args.receipt_warmup, catalog_path=args.catalog)
    return {"receipt_p50_ms": r.p50_ms, "receipt_p99_ms": r.p99_ms, "receipt_max_ms": r.max_ms,
            "receipt_dossiers": r.dossiers, "receipt_offered_per_s": r.offered_per_s,
            "receipt_achieved_per_s": r.achieved_per_s, "receipt_cpu_us_per_msg": r.cpu,
            **{f"receipt_{k}": v for k, v in r.legs.items()},
            **{f"receipt_router_batch_{k}": v for k, v in r.batches.items()},
            "receipt_router_threads_us_per_msg": r.threads,
            "receipt_warmup_dossiers": r.warmup,
            **{f"receipt_warmup_{k}": v for k, v in r.warmup_figures.items()}}


def rss_stage(catalog: Catalog, args: argparse.Namespace, p: Progress) -> dict[str, Any]:
    """The router process's memory over --rss-dossiers dossiers."""
    r = router_rss(catalog, args.rss_dossiers, p, chunk=args.rss_chunk,
                   catalog_path=args.catalog)
    return {"router_rss_growth_mb": r.growth_mb, "router_rss_start_mb": r.start_mb,
            "router_rss_warm_mb": r.warm_mb, "router_rss_end_mb": r.end_mb,
            "router_rss_peak_mb": r.peak_mb, "router_rss_growth_after_warmup_mb":
            round(r.end_mb - r.warm_mb, 1), "rss_dossiers": r.dossiers,
            "rss_msgs_per_s": round(r.dossiers / r.seconds, 1) if r.seconds else 0.0}


def sizes_stage(catalog: Catalog, args: argparse.Namespace, p: Progress) -> dict[str, Any]:
    """Shovel and router (SQLite) at each --sizes-kb."""
    rows: dict[str, Any] = {}
    for kb in args.sizes_kb:
        p.note(f"body {kb:g} KB")
        sh = shovel(catalog, args.dossiers, p, body_kb=kb, prefetch_count=args.prefetch_count)
        rt = router(catalog, args.dossiers, p, ledger_kind="sqlite", body_kb=kb,
                    settings=_settings(args.prefetch_count), catalog_path=args.catalog)
        rows[f"{kb:g}"] = {"message_bytes": sh.body_bytes, "shovel_msgs_per_s": sh.msgs_per_s,
                           "router_sqlite_msgs_per_s": rt.msgs_per_s,
                           "ratio": round(rt.msgs_per_s / sh.msgs_per_s, 3)}
    return {"by_body_kb": rows}


def prefetch_stage(catalog: Catalog, args: argparse.Namespace, p: Progress
                   ) -> dict[str, Any]:
    """The router (SQLite) at each --prefetches."""
    rows: dict[str, Any] = {}
    for prefetch in args.prefetches:
        p.note(f"prefetch {prefetch}")
        rt = router(catalog, args.dossiers, p, ledger_kind="sqlite", body_kb=args.body_kb,
                    settings=_settings(prefetch), catalog_path=args.catalog)
        rows[str(prefetch)] = {"router_sqlite_msgs_per_s": rt.msgs_per_s}
    return {"by_prefetch": rows}
