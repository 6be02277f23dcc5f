"""The shovel doing the router's broker work over the real topology (`shovel_spread`).

The issue's yardstick (``bench.transport.shovel``) copies every message to the same two
quorum queues. The router does not: each dossier's assignment goes to its competent
agency's queue and its receipt to its intake desk's queue, so the traffic is spread
over the 226 agency and desk queues of the province, each a Raft log of its own that
writes a message or two per batch instead of hundreds. This stage measures what that
costs RabbitMQ, with the router out of the picture:

* a fresh topology of the catalog, declared as ``casebroker run`` declares it (the
  same queue arguments: delivery limit, at-least-once dead-lettering, reject-publish);
* the rules engine decides every dossier beforehand; the dossier goes into the intake
  queue with the routing key ``<agency>.<desk>`` (dots in ids become ``_``);
* a topic exchange binds each agency queue to ``<agency>.*`` and each desk queue to
  ``*.<desk>``, so the shovel's one publish per delivery lands in exactly the two
  queues the router's two publishes reach;
* the shovel (on-confirm, same prefetch) moves the intake queue to that exchange.

The clock stops at the start of the first poll round that finds every message in its
two queues (a round passively declares all 226 queues), which errs, if anything, in
the shovel's favour.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from bench.common import Progress, blocking, depth, dossier_stream, submit_properties, wait_until
from bench.cpu import CpuMeter
from bench.publisher import publish
from bench.router import fresh_topology
from bench.transport import Management, StageResult
from broker.messages import DossierSubmitted, decode
from broker.rules.catalog import Catalog
from broker.rules.engine import Engine
from broker.topology import Topology


def _word(identifier: str) -> str:
    """An id as one topic-exchange word (ids are dotted: ``DLK.SO.TP``)."""
    return identifier.replace(".", "_")


def _routed(catalog: Catalog, topology: Topology, n: int, body_kb: float
            ) -> tuple[list[tuple[str, bytes, Any]], Counter[str]]:
    """The N dossiers with the routing key of the two queues the router would reach,
    and how many messages each of those queues must end up holding."""
    engine = Engine(catalog)
    messages: list[tuple[str, bytes, Any]] = []
    expected: Counter[str] = Counter()
    for d in dossier_stream(catalog, n, body_kb=body_kb):
        msg = decode(d.body)
        assert isinstance(msg, DossierSubmitted)
        agency = engine.decide(msg, msg.submitted_at).agency_id
        messages.append((f"{_word(agency)}.{_word(msg.desk_id)}", d.body,
                         submit_properties(d.submission_id)))
        expected[topology.agency_queue(agency)] += 1
        expected[topology.desk_queue(msg.desk_id)] += 1
    return messages, expected


def _declare_spread(topology: Topology, catalog: Catalog) -> tuple[str, str]:
    """A fanout exchange into the intake queue (keeps each message's key) and the
    topic exchange the shovel publishes to; return their names."""
    inlet, spread = f"{topology.prefix}.spread.in", f"{topology.prefix}.spread"
    conn = blocking()
    try:
        ch = conn.channel()
        ch.exchange_declare(inlet, "fanout", durable=True)
        ch.exchange_declare(spread, "topic", durable=True)
        ch.queue_bind(topology.intake_queue, inlet, "")
        for agency in catalog.agency_ids:
            ch.queue_bind(topology.agency_queue(agency), spread, f"{_word(agency)}.*")
        for desk in catalog.desk_ids:
            ch.queue_bind(topology.desk_queue(desk), spread, f"*.{_word(desk)}")
    finally:
        conn.close()
    return inlet, spread


def _delete_exchanges(*names: str) -> None:
    conn = blocking()
    try:
        ch = conn.channel()
        for name in names:
            ch.exchange_delete(name)
    finally:
        conn.close()


def shovel_spread(catalog: Catalog, n: int, progress: Progress, *, body_kb: float = 0.0,
                  prefetch_count: int = 1000, timeout_s: float = 900.0) -> StageResult:
    """The shovel plugin, on-confirm, intake queue → the agency and desk queues."""
    mgmt = Management()
    mgmt.ensure_plugins(progress)
    with fresh_topology(catalog, "ss") as topology:
        messages, queues = _routed(catalog, topology, n, body_kb)
        size = sum(len(body) for _, body, _ in messages) // max(1, n)
        inlet, spread = _declare_spread(topology, catalog)
        name = f"{topology.prefix}.shovel"
        try:
            progress.note(f"preloading {n} dossiers, spread over "
                          f"{len(queues)} agency and desk queues")
            publish((inlet, key, body, props) for key, body, props in messages)
            progress.note(f"{n} preloaded ({size} B each); starting the shovel")
            conn = blocking()
            try:
                ch = conn.channel()
                started, cpu = time.monotonic(), CpuMeter()
                mgmt.start_shovel(name, topology.intake_queue, spread, prefetch_count)
                # the intake queue empties first (cheap to poll); then whole rounds
                wait_until(lambda: depth(ch, topology.intake_queue) == 0,
                           timeout_s=timeout_s, interval_s=0.02, what="the intake queue")
                round_started = [time.monotonic()]

                def all_moved() -> bool:
                    round_started[0] = time.monotonic()
                    short = sum(1 for q, want in queues.items() if depth(ch, q) < want)
                    progress.note(f"{len(queues) - short}/{len(queues)} queues complete "
                                  f"({time.monotonic() - started:.1f} s)", every_s=1.0)
                    return short == 0

                wait_until(all_moved, timeout_s=timeout_s, interval_s=0.0,
                           what="every dossier in its agency and desk queues")
                cpu.stop()
                return StageResult(n, round_started[0] - started, size, cpu.per_message(n))
            finally:
                conn.close()
        finally:
            mgmt.clear_shovel(name)
            _delete_exchanges(inlet, spread)
