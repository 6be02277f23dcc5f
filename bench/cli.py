"""`casebroker bench`: the router side by side with RabbitMQ's shovel, in one run.

Registered through ``broker.cli.COMMAND_MODULES``. Prints a table (or one JSON object
with ``--json``) and shows each stage's progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.common import Progress
from bench.machine import describe_machine, gauges
from broker.amqp import PREFETCH_MAX
from broker.cli import above, at_least, listed
from broker.rules.catalog import Catalog, load_catalog

STAGES = ("shovel", "shovel_spread", "forwarder", "router_sqlite", "router_postgres",
          "lifecycle", "receipt", "rss", "sizes", "prefetch")
DEFAULT_STAGES = STAGES[:8]
DEFAULT_SIZES_KB = (1.0, 16.0, 128.0)
DEFAULT_PREFETCHES = (100, 1000, 5000)
#: RabbitMQ's open-file limit under which two shipped-catalog topologies do not fit
#: (about 3 handles per quorum queue, 233 queues each: docs/BENCHMARKS.md, Caveat)
FD_ENOUGH = 2048
#: stages that report where the machine's CPU went, and the columns of that table
CPU_STAGES = ("shovel", "shovel_spread", "forwarder", "router_sqlite", "router_postgres",
              "receipt")
CPU_COLUMNS = ("rabbitmq", "benchmark", "router", "postgresql", "other", "machine",
               "cores_busy", "steal")


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add ``casebroker bench`` to the command line."""
    p = sub.add_parser("bench", help="benchmark the router beside RabbitMQ's shovel")
    p.add_argument("--dossiers", type=at_least(1), default=20_000,
                   help="N for shovel, forwarder and router stages (default 20000)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--body-kb", type=at_least(0, float), default=0.0,
                   help="pad each dossier to this size (default: natural, about 0.7 KB)")
    p.add_argument("--prefetch-count", type=at_least(1, most=PREFETCH_MAX), default=1000,
                   help="prefetch of the shovel, forwarder and router (default 1000)")
    p.add_argument("--shovel-runs", type=at_least(1), default=3,
                   help="runs of the shovel stage; the fastest is the yardstick (default 3)")
    p.add_argument("--receipt-dossiers", type=at_least(1), default=10_000,
                   help="dossiers offered in the receipt stage (default 10000)")
    p.add_argument("--receipt-rate", type=above(0), default=1000.0,
                   help="offered load of the receipt stage, dossiers/s (default 1000)")
    p.add_argument("--receipt-warmup", type=at_least(0), default=1000,
                   help="dossiers offered first in the receipt stage, at the same rate, and "
                        "reported apart as receipt_warmup_* (default 1000; 0: none)")
    p.add_argument("--lifecycle-dossiers", type=at_least(1), default=2_000,
                   help="dossiers through the whole lifecycle (default 2000)")
    p.add_argument("--rss-dossiers", type=at_least(1), default=1_000_000,
                   help="dossiers fed to `casebroker run` for the memory stage (default 1e6)")
    p.add_argument("--rss-chunk", type=at_least(1), default=20_000,
                   help="dossiers published at a time in the memory stage (default 20000)")
    p.add_argument("--sizes-kb", type=listed(above(0)),
                   default=",".join(f"{s:g}" for s in DEFAULT_SIZES_KB),
                   help="body sizes of the 'sizes' stage, KB (default 1,16,128)")
    p.add_argument("--prefetches", type=listed(at_least(1, most=PREFETCH_MAX)),
                   default=",".join(map(str, DEFAULT_PREFETCHES)),
                   help="router prefetch counts of the 'prefetch' stage (default 100,1000,5000)")
    p.add_argument("--stages", default=",".join(DEFAULT_STAGES),
                   help=f"comma-separated, from {','.join(STAGES)} (default: all but the "
                   "sizes and prefetch sweeps)")
    p.add_argument("--sweeps", action="store_true", help="also run the sizes and prefetch sweeps")
    p.add_argument("--catalog", help="catalog YAML (default: the shipped Đắk Lắk catalog, "
                   "whatever CASEBROKER_CATALOG says: figures compare across machines)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--cleanup", action="store_true",
                   help="only delete what interrupted benchmarks left (queues, exchanges, "
                   "shovels, PostgreSQL schemas named bench<hex>...), then exit")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the chosen stages; print the figures; exit 1 if a stage failed."""
    if args.cleanup:
        return cleanup()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if args.sweeps:
        stages += [s for s in ("sizes", "prefetch") if s not in stages]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        print(f"error: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}",
              file=sys.stderr)
        return 2
    if not args.verbose:  # progress lines say what happens; the router's INFO lines repeat it
        logging.getLogger("broker").setLevel(logging.WARNING)
    report = measure(args, stages, Progress(not args.quiet))
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        print(format_report(report))
    return 1 if report.get("errors") else 0


def cleanup() -> int:
    """Delete every benchmark leftover; print what went."""
    import re

    from bench.common import PREFIX_ROOT
    from bench.ledgers import drop_leftover_schemas
    from bench.transport import Management

    mgmt = Management()
    pattern = re.compile(rf"^{PREFIX_ROOT}[0-9a-f]{{8}}[a-z]*\.")
    prefixes = {m.group(0) for path in ("/queues", "/exchanges")
                for item in mgmt.call("GET", f"{path}/{mgmt.vhost}?columns=name")
                if (m := pattern.match(item["name"]))}
    deleted = sum(mgmt.delete_prefixed(prefix) for prefix in sorted(prefixes))
    schemas = drop_leftover_schemas()
    print(f"deleted {deleted} queues/exchanges/shovels under {len(prefixes)} prefixes and "
          f"{len(schemas)} PostgreSQL schemas")
    return 0


def measure(args: argparse.Namespace, stages: list[str], progress: Progress) -> dict[str, Any]:
    """Every requested stage, in order; a failing stage is reported, the rest still run."""
    from bench import stages as st

    catalog = load_catalog(args.catalog)
    progress.begin("machine")
    machine = describe_machine()
    if machine.get("rabbitmq_fd_limit", FD_ENOUGH) < FD_ENOUGH:
        progress.note(f"RabbitMQ may open only {machine['rabbitmq_fd_limit']} files: a "
                      "second topology alive at once (a demo, the tests) would stall its "
                      "connections; run nothing else meanwhile (docs/BENCHMARKS.md, Caveat)")
    # the machine's speed drifts: read it before and after, so runs can be told apart
    machine["gauges"] = {"start": gauges()}
    report: dict[str, Any] = {"machine": machine, "dossiers": args.dossiers,
                              "prefetch_count": args.prefetch_count, "body_kb": args.body_kb}
    errors: dict[str, str] = {}
    actions: dict[str, Callable[[Catalog, argparse.Namespace, Progress], dict[str, Any]]] = {
        "shovel": st.shovel_stage, "shovel_spread": st.shovel_spread_stage,
        "forwarder": st.forwarder_stage,
        "router_sqlite": st.router_sqlite_stage, "router_postgres": st.router_postgres_stage,
        "lifecycle": st.lifecycle_stage, "receipt": st.receipt_stage, "rss": st.rss_stage,
        "sizes": st.sizes_stage, "prefetch": st.prefetch_stage,
    }
    started = time.monotonic()
    for stage in stages:
        progress.begin(stage)
        try:
            report.update(actions[stage](catalog, args, progress))
        except Exception as e:  # one broken stage must not hide the others' figures
            errors[stage] = f"{type(e).__name__}: {e}"
            progress.note(f"FAILED: {errors[stage]}")
    for kind in ("sqlite", "postgres"):
        router = report.get(f"router_{kind}_msgs_per_s")
        for yardstick in ("shovel", "shovel_spread"):
            shovel = report.get(f"{yardstick}_msgs_per_s")
            if router and shovel:
                report[f"ratio_router_{kind}_to_{yardstick}"] = round(router / shovel, 3)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    machine["gauges"]["end"] = gauges()
    if errors:
        report["errors"] = errors
    return report


def format_report(r: dict[str, Any]) -> str:
    """The figures as a short table."""
    rows = [
        ("shovel (on-confirm, fanout to 2 quorum queues)", "shovel_msgs_per_s", "msg/s in"),
        ("shovel over the real topology (agency + desk queue)", "shovel_spread_msgs_per_s",
         "msg/s in"),
        ("forwarder (ConsumerService, no logic)", "forwarder_msgs_per_s", "msg/s in"),
        ("router, SQLite ledger", "router_sqlite_msgs_per_s", "msg/s in"),
        ("router, PostgreSQL ledger", "router_postgres_msgs_per_s", "msg/s in"),
        ("router SQLite / shovel", "ratio_router_sqlite_to_shovel", ""),
        ("router PostgreSQL / shovel", "ratio_router_postgres_to_shovel", ""),
        ("router SQLite / shovel over the real topology", "ratio_router_sqlite_to_shovel_spread",
         ""),
        ("router PostgreSQL / shovel over the real topology",
         "ratio_router_postgres_to_shovel_spread", ""),
        ("full lifecycle", "lifecycle_dossiers_per_s", "dossiers/s"),
        ("receipt round trip p50 (after any warm-up)", "receipt_p50_ms", "ms"),
        ("receipt round trip p99 (after any warm-up)", "receipt_p99_ms", "ms"),
        ("  warm-up dossiers (a fresh router, reported apart)", "receipt_warmup_dossiers", ""),
        ("  warm-up round trip p99", "receipt_warmup_p99_ms", "ms"),
        ("  desk → router's batch start, p50", "receipt_to_router_p50_ms", "ms"),
        ("  desk → router's batch start, p99", "receipt_to_router_p99_ms", "ms"),
        ("  router's batch start → desk, p50", "receipt_from_router_p50_ms", "ms"),
        ("  router's batch start → desk, p99", "receipt_from_router_p99_ms", "ms"),
        ("  router's intake batches while offered", "receipt_router_batch_count", ""),
        ("  their mean size", "receipt_router_batch_mean_size", "dossiers"),
        ("  their mean time, hand-off to result", "receipt_router_batch_mean_ms", "ms"),
        ("  full, with more waiting behind them", "receipt_router_batch_full", ""),
        ("router RSS growth", "router_rss_growth_mb", "MB"),
    ]
    m = r["machine"]
    lines = [f"N={r['dossiers']}  body {r.get('message_bytes', '?')} B  "
             f"prefetch {r['prefetch_count']}  on {m.get('cpus')} CPUs, "
             f"RabbitMQ {m.get('rabbitmq')}"
             + (f" (open-file limit {m['rabbitmq_fd_limit']})" if "rabbitmq_fd_limit" in m
                else "")]
    for when, g in m.get("gauges", {}).items():
        lines.append(f"  machine at the {when}: fsync p50/p99 {g['fsync_p50_ms']}/"
                     f"{g['fsync_p99_ms']} ms, fixed Python work {g['python_work_ms']} ms"
                     + (f", {g['busy_elsewhere_cores']} cores busy elsewhere"
                        if "busy_elsewhere_cores" in g else ""))
    for label, key, unit in rows:
        if key in r:
            lines.append(f"  {label:<48} {r[key]:>10} {unit}")
    if r.get("receipt_router_threads_us_per_msg"):
        lines.append("  receipt: casebroker run's CPU µs per dossier by thread: " + ", ".join(
            f"{name} {us}" for name, us in r["receipt_router_threads_us_per_msg"].items()))
    cpu = [(stage, r[f"{stage}_cpu_us_per_msg"]) for stage in CPU_STAGES
           if r.get(f"{stage}_cpu_us_per_msg")]
    if cpu:
        lines.append("  CPU µs per input message (bench/cpu.py):")
        lines.append(f"    {'stage':<16}" + "".join(f"{g:>11}" for g in CPU_COLUMNS))
        for stage, figures in cpu:
            lines.append(f"    {stage:<16}" + "".join(
                f"{figures.get(g, ''):>11}" for g in CPU_COLUMNS))
    for key in ("by_body_kb", "by_prefetch"):
        if key in r:
            lines.append(f"  {key}: {json.dumps(r[key])}")
    for stage, error in r.get("errors", {}).items():
        lines.append(f"  FAILED {stage}: {error}")
    return "\n".join(lines)
