"""RabbitMQ restarted or in a resource alarm, the router SIGKILLed, PostgreSQL away: nothing
lost, nothing doubled."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable

import pytest

from tests.faults.harness import Load, Scenario, record, wait_until
from tests.faults.servers import PgServer, RabbitNode
from tests.helpers import free_port, probe

pytestmark = pytest.mark.faults


def test_rabbitmq_stopped_and_started_with_5000_in_flight(
        rabbit: RabbitNode, scenario: Callable[..., Scenario]) -> None:
    s = scenario([rabbit.url], "rabbitmq restart")
    router = s.router().start()
    router.wait_consuming()
    load = Load(s.urls, s.dossiers(7000), window=2000).start()
    # stop the broker once at least 5,000 dossiers are sent and not yet routed. The
    # router is held still until then: the publisher does not always outrun it (once,
    # under two test workers, the backlog never reached 5,000 in 60 s)
    assert router.proc is not None
    router.proc.send_signal(signal.SIGSTOP)
    try:
        in_flight = wait_until(lambda: (n := load.confirmed - s.ledger_count()) >= 5000 and n,
                               60, "5,000 dossiers in flight", interval_s=0.05)
    finally:
        router.proc.send_signal(signal.SIGCONT)
    # ...and RabbitMQ stopped while the router works through them, mid-batch
    resumed_at = s.ledger_count()
    wait_until(lambda: s.ledger_count() > resumed_at, 30, "the router routing again",
               interval_s=0.01)
    routed_at_stop = s.ledger_count()
    rabbit.stop()
    time.sleep(2)
    rabbit.start()
    load.join()
    s.wait_routed(len(s.submissions))
    assert router.alive() and router.starts == 1, "the router reconnects by itself"
    assert "connection to RabbitMQ lost" in router.log()
    s.resolve_all()
    f = s.check()
    f.extra = {"in_flight_at_stop": in_flight, "routed_at_stop": routed_at_stop,
               "publisher_reconnects": load.reconnects, "republished": load.republished}
    record(f)


def test_router_sigkilled_mid_batch_then_restarted(
        rabbit: RabbitNode, scenario: Callable[..., Scenario]) -> None:
    s = scenario([rabbit.url], "router SIGKILL")
    router = s.router().start()
    router.wait_consuming()
    Load(s.urls, s.dossiers(2000), window=2000).run()
    kills = 0
    for threshold in (300, 1100):  # twice, while batches are being handled
        wait_until(lambda: s.ledger_count() >= threshold, 60,  # noqa: B023
                   f"{threshold} routed", interval_s=0.01)
        router.kill()
        kills += 1
        assert s.ledger_count() < 2000, "killed too late to be mid-stream"
        router.start()
        router.wait_consuming(consumers=kills + 1)
    s.wait_routed(2000)
    s.resolve_all()
    f = s.check()
    f.extra = {"kills": kills}
    record(f)


def test_postgresql_down_20s_under_load(
        rabbit: RabbitNode, pg: PgServer, scenario: Callable[..., Scenario]) -> None:
    s = scenario([rabbit.url], "postgresql outage")
    router = s.router().start()
    router.wait_consuming()
    pid = router.pid
    load = Load(s.urls, s.dossiers(1500), window=50, rate_per_s=50).start()  # ~30 s of load
    wait_until(lambda: s.ledger_count() >= 100, 30, "traffic flowing")
    pg.stop("fast")
    time.sleep(2)  # a batch committed just before the outage may still be acked
    depth_before, sent_before = _intake_total(rabbit, s), load.confirmed
    time.sleep(12)
    sent_after = load.confirmed
    # quorum queue counts reach rabbitmqctl with the statistics interval (5 s): wait that
    # long so the count covers everything confirmed by then
    time.sleep(6)
    depth_after = _intake_total(rabbit, s)
    pg.start()
    # nothing was acked while the ledger was away: every message is still in the queue
    assert depth_after >= depth_before + (sent_after - sent_before) - 50
    assert sent_after - sent_before >= 500, "load kept coming during the outage"
    load.join()
    s.wait_routed(1500, timeout_s=120)
    assert router.alive() and router.pid == pid, "no crash, no restart"
    delays = [float(d) for d in re.findall(r"paused: .*?retrying in ([\d.]+)s", router.log())]
    assert delays, "the router said it paused"
    assert max(delays) <= 15.0, "backoff is bounded"
    assert len(delays) <= 30, f"no hot retry loop ({len(delays)} retries in ~20 s)"
    assert "resumed: a batch went through after the pause" in router.log()
    s.resolve_all()
    f = s.check()
    f.extra = {"outage_s": 20, "retries": len(delays), "max_backoff_s": max(delays),
               "held_in_queue": depth_after}
    record(f)


def _intake_total(node: RabbitNode, s: Scenario) -> int:
    """Ready + unacknowledged messages of the intake queue."""
    out = node.ctl("list_queues", "name", "messages", "--quiet", "--no-table-headers").stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == s.topology.intake_queue:
            return int(parts[1])
    raise AssertionError(f"{s.topology.intake_queue} not listed: {out}")


def test_rabbitmq_disk_alarm_under_load_blocks_the_router_which_waits_and_says_so(
        rabbit: RabbitNode, scenario: Callable[..., Scenario]) -> None:
    s = scenario([rabbit.url], "rabbitmq disk alarm")
    port = free_port()
    router = s.router(metrics_port=port).start()
    router.wait_consuming()
    wait_until(lambda: probe(port, "/readyz")[0] == 200, 30, "the router ready")
    load = Load(s.urls, s.dossiers(800), window=50, rate_per_s=100).start()  # ~8 s of load
    wait_until(lambda: s.ledger_count() >= 100, 30, "traffic flowing")
    # a free-disk limit above any disk: RabbitMQ raises its disk alarm and blocks every
    # connection that publishes, the router's among them, until the limit is back. It
    # blocks a connection when it next publishes: the router is held still meanwhile, so
    # that it has a backlog to route once the alarm is in force (one that had routed all
    # before then was never blocked: seen once in a full run)
    assert router.proc is not None
    router.proc.send_signal(signal.SIGSTOP)
    try:
        rabbit.ctl("set_disk_free_limit", str(10**18))
        wait_until(lambda: "disk" in rabbit.ctl("eval", "rabbit_alarm:get_alarms().").stdout,
                   30, "the disk alarm in force")
        router.proc.send_signal(signal.SIGCONT)
        blocked = wait_until(lambda: (got := probe(port, "/readyz"))[0] == 503
                             and "RabbitMQ blocks the connection (a memory or disk alarm)"
                             in got[1]["problems"] and got[1], 30, "/readyz saying blocked")
        time.sleep(3)
        assert probe(port, "/readyz")[0] == 503, "still blocked"
        assert probe(port, "/livez")[0] == 200, "waiting is no reason to restart"
        routed_while_blocked = s.ledger_count()
    finally:
        router.proc.send_signal(signal.SIGCONT)  # again, if the alarm never came
        rabbit.ctl("set_disk_free_limit", "50MB")
    wait_until(lambda: probe(port, "/readyz")[0] == 200, 60, "the router ready again")
    load.join()
    s.wait_routed(800)
    assert router.alive() and router.starts == 1, "no crash, no restart"
    assert "RabbitMQ blocked this connection" in router.log()
    assert "RabbitMQ unblocked this connection" in router.log()
    s.resolve_all()
    f = s.check()
    f.extra = {"routed_while_blocked": routed_while_blocked,
               "unacked_when_blocked": blocked["queues"][s.topology.intake_queue]["unacked"],
               "publisher_reconnects": load.reconnects}
    record(f)
