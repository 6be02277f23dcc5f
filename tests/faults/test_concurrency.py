"""The same dossier and the same update twice; two routers at once; a cluster losing a node."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.faults.harness import Load, Msg, Scenario, record, wait_until
from tests.faults.servers import RabbitCluster, RabbitNode
from tests.helpers import free_port

pytestmark = pytest.mark.faults


def test_same_submission_and_same_update_twice_one_effect_each(
        rabbit: RabbitNode, scenario: Callable[..., Scenario]) -> None:
    s = scenario([rabbit.url], "duplicates")
    s.router().start().wait_consuming()
    first = s.dossiers(1000)
    # every dossier again: half with the same message id, half as a fresh desk retry
    again = [m if i % 2 else Msg(m.exchange, m.routing_key, m.body, f"retry:{m.message_id}",
                                 m.type) for i, m in enumerate(first)]
    Load(s.urls, first + again).run()
    wait_until(lambda: s.ledger.count_inbox_outcomes().get("duplicate", 0) >= 500, 120,
               "500 duplicates seen")
    s.wait_routed(1000)
    s.resolve_all(twice=True)  # every resolved update delivered twice, same message id
    f = s.check()
    for code, _, _ in list(s.ledger.states_for_submissions(s.submissions).values())[:200]:
        assert [e["kind"] for e in s.ledger.history(code)] == ["received", "resolve"]
    f.extra = {"submitted_twice": 1000, "updates_twice": 1000}
    record(f)


def test_two_routers_compete_without_duplicate_codes(
        rabbit: RabbitNode, scenario: Callable[..., Scenario]) -> None:
    s = scenario([rabbit.url], "two routers")
    ports = [free_port(), free_port()]
    a, b = (s.router(metrics_port=port).start() for port in ports)
    a.wait_consuming()
    b.wait_consuming()
    Load(s.urls, s.dossiers(2000)).run()
    s.wait_routed(2000)
    # both took part: each routed some of the dossiers (its own /metrics), together each
    # dossier once
    routed_by = [_routed(port) for port in ports]
    assert min(routed_by) > 0 and sum(routed_by) == 2000, routed_by
    s.resolve_all()
    f = s.check()  # includes: no two submissions share a dossier code
    assert a.alive() and b.alive()
    f.extra = {"routed_by": routed_by}
    record(f)


def _routed(port: int) -> int:
    """Dossiers a router's /metrics says it routed."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return int(sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == "casebroker_intake_total"
               and sample.labels.get("outcome") == "routed"))


def test_cluster_node_leading_intake_stopped_under_load(
        cluster: RabbitCluster, scenario: Callable[..., Scenario]) -> None:
    s = scenario(cluster.urls, "cluster failover")
    # declare from the first node (quorum queues lead where declared), connect the router
    # to that node first: stopping the leader also takes the router's node away
    router = s.router(cluster.urls).start()
    router.wait_consuming()
    leader = cluster.leader_of(s.topology.intake_queue)
    urls = [n.url for n in cluster.nodes if n.node != leader]
    load = Load(urls, s.dossiers(2000), window=500, rate_per_s=400).start()
    wait_until(lambda: s.ledger_count() >= 300, 60, "traffic flowing")
    cluster.node(leader).stop()
    new_leader = wait_until(lambda: _leader(cluster, s) not in (None, leader)
                            and _leader(cluster, s), 60, "a new intake leader")
    load.join()
    s.urls = urls  # what is left of the cluster
    s.wait_routed(2000, timeout_s=120)
    assert router.alive() and router.starts == 1
    assert "connection to RabbitMQ lost" in router.log()
    s.resolve_all()
    f = s.check()
    f.extra = {"stopped_leader": leader.split("@")[0], "new_leader": new_leader.split("@")[0]}
    record(f)


def _leader(cluster: RabbitCluster, s: Scenario) -> str | None:
    try:
        return cluster.leader_of(s.topology.intake_queue)
    except Exception:
        return None
