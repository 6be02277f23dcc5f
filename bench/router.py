"""The casebroker router at full work: validation, rules, numbering, ledger, two publishes.

A fresh topology of the shipped catalog under a prefix of its own; N real dossiers
preloaded into its intake queue; then the router (in this process, in a thread) until
the ledger's inbox holds N, the intake queue is empty and every delivery is acked (the
router acks once a dossier's two publishes are confirmed).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from bench.common import (
    Progress,
    blocking,
    depth,
    dossier_stream,
    rate,
    submit_properties,
    unique_prefix,
    wait_until,
)
from bench.cpu import CpuMeter
from bench.ledgers import ledger_url
from bench.publisher import publish
from bench.transport import Management
from broker.amqp import ConsumerSettings, amqp_url
from broker.ledger import Ledger
from broker.rules.catalog import Catalog
from broker.service import Broker, declare_topology, delete_topology
from broker.topology import INTAKE_KEY, Topology


@dataclass
class RouterResult:
    """N dossiers routed in ``seconds``, and what became of them."""

    dossiers: int
    seconds: float
    body_bytes: int
    outcomes: dict[str, int] = field(default_factory=dict)
    #: CPU microseconds per input message, by process group (bench.cpu)
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def msgs_per_s(self) -> float:
        """Intake deliveries per second (each routed one makes two confirmed publishes)."""
        return rate(self.dossiers, self.seconds)


@contextmanager
def fresh_topology(catalog: Catalog, stage: str) -> Iterator[Topology]:
    """The catalog's topology under a new prefix, deleted afterwards even on failure."""
    topology = Topology(unique_prefix(stage))
    try:
        declare_topology(amqp_url(), topology, catalog)
        yield topology
    finally:
        try:
            delete_topology(amqp_url(), topology, catalog)
        except Exception:  # AMQP refused or stuck: HTTP still deletes
            Management().delete_prefixed(topology.prefix + ".")


def preload_intake(topology: Topology, catalog: Catalog, n: int, progress: Progress, *,
                   body_kb: float = 0.0, seed: int = 6) -> int:
    """Publish N dossiers to the intake exchange; return the mean body size."""
    total = 0

    def messages() -> Any:
        nonlocal total
        for i, d in enumerate(dossier_stream(catalog, n, body_kb=body_kb, seed=seed)):
            total += len(d.body)
            if i % 5000 == 0:
                progress.note(f"preloading {i}/{n}", every_s=1.0)
            yield topology.intake_exchange, INTAKE_KEY, d.body, submit_properties(d.submission_id)

    publish(messages())
    return total // max(1, n)


def processed(ledger: Ledger) -> dict[str, int]:
    """Inbox outcomes so far (routed, refused, triaged:..., dead:...)."""
    return ledger.count_inbox_outcomes()


def router(catalog: Catalog, n: int, progress: Progress, *, ledger_kind: str = "sqlite",
           body_kb: float = 0.0, settings: ConsumerSettings | None = None,
           catalog_path: str | None = None, timeout_s: float = 1800.0) -> RouterResult:
    """Route N preloaded dossiers with the real router; time until all are processed."""
    settings = settings or ConsumerSettings()
    with fresh_topology(catalog, "rt") as topology, ledger_url(ledger_kind) as url:
        size = preload_intake(topology, catalog, n, progress, body_kb=body_kb)
        ledger = Ledger(url)
        reader = Ledger(url, create=False)
        broker = Broker(catalog_path, topology, ledger, settings)
        # as `casebroker run` serves (watch, checkpoints, GC freeze), minus the declaration
        thread = threading.Thread(target=broker.serve, kwargs={"install_signals": False},
                                  name="bench-router", daemon=True)
        conn = blocking()
        try:
            progress.note(f"{n} preloaded ({size} B each); starting the router "
                          f"({ledger_kind}, prefetch {settings.prefetch_count})")
            channel = conn.channel()
            started, cpu = time.monotonic(), CpuMeter()
            thread.start()

            def finished() -> bool:
                # the router shares this process: count the ledger (a scan) only once the
                # queue is empty, not every poll, or the benchmark slows what it measures.
                # The ledger holds the last batch before its publishes are confirmed: the
                # clock stops once every delivery is acked (acks follow the confirms), as
                # the shovel's stops once its copies are in their queues
                waiting = depth(channel, topology.intake_queue)
                progress.note(f"{n - waiting}/{n} taken ({time.monotonic() - started:.1f} s)",
                              every_s=1.0)
                return (waiting == 0 and all(w.unacked == 0 for w in broker.service.workers)
                        and sum(processed(reader).values()) >= n)

            end = wait_until(finished, timeout_s=timeout_s, interval_s=0.05,
                             what=f"{n} dossiers in the {ledger_kind} ledger")
            cpu.stop()
            outcomes = processed(reader)
        finally:
            conn.close()
            broker.stop()
            thread.join(timeout=60)
            reader.dispose()
            ledger.dispose()
    return RouterResult(n, end - started, size, outcomes, cpu.per_message(n))
