"""Metrics as ops see them: a real Prometheus scrapes a running router; alert rules hold."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pika
import pytest
import yaml

from broker.amqp import amqp_url
from broker.messages import encode
from monitoring.metrics import Metrics
from tests.conftest import RunningBroker, wait_for
from tests.helpers import Amqp, dossier, free_port, metric_names

pytestmark = pytest.mark.integration
PROM_DIR = Path(__file__).parents[2] / "monitoring" / "prometheus"
DASHBOARD = Path(__file__).parents[2] / "monitoring" / "grafana" / "casebroker.json"
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool not installed (apt-get install prometheus)")


def test_alerts_and_dashboard_only_use_metrics_that_exist() -> None:
    texts = [(PROM_DIR / "alerts.yml").read_text(), DASHBOARD.read_text()]
    used = {m for t in texts for m in re.findall(r"\bcasebroker_[a-z_]+", t)}
    assert used, "no casebroker metric referenced"
    assert used <= metric_names(), f"undefined: {used - metric_names()}"
    json.loads(DASHBOARD.read_text())


def test_series_with_a_bounded_label_set_are_exported_at_zero_from_the_start() -> None:
    # an alert on increase() sees the first retry or refused reload after a start only if
    # the series was there before it, at 0 (alerts_test.yml covers the unbounded ones)
    from prometheus_client import generate_latest

    text = generate_latest(Metrics().registry).decode()
    for source in ("intake", "status"):
        for kind in ("transient", "conflict", "refused", "fault"):
            assert f'casebroker_retries_total{{kind="{kind}",source="{source}"}} 0.0' in text
    for result in ("applied", "refused", "failed"):
        assert f'casebroker_catalog_reloads_total{{result="{result}"}} 0.0' in text
    # born at 1, the first restart after a start hid from CasebrokerLedgerLogHeldBack's
    # "unless it started over" (a ticket about a log that had just started over)
    for result in ("restarted", "held_back"):
        assert f'casebroker_wal_checkpoint_turns_total{{result="{result}"}} 0.0' in text
    # CasebrokerDeadlineNoticesHeld and CasebrokerInternalErrors see their first event
    assert 'casebroker_retries_total{kind="refused",source="watch"} 0.0' in text
    for name in ("casebroker_intake_total", "casebroker_status_updates_total"):
        assert f'{name}{{outcome="dead_lettered",reason="internal_error"}} 0.0' in text
    # CasebrokerLedgerUnavailable's "or": a queue known not given back
    for source in ("intake", "status"):
        assert f'casebroker_ledger_given_back{{source="{source}"}} 0.0' in text


@needs_promtool
def test_prometheus_config_and_alert_rules() -> None:
    for args in (["check", "config", str(PROM_DIR / "prometheus.yml")],
                 ["test", "rules", str(PROM_DIR / "alerts_test.yml")]):
        result = subprocess.run(["promtool", *args], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_the_dashboard_shows_the_watch_most_behind(tmp_path: Path) -> None:
    """With several `casebroker run` processes, the panel shows the watch that has gone
    longest without a round (the one the alert fires for), not the freshest; one that
    runs no watch (0) counts for nothing."""
    panel = next(p for p in json.loads(DASHBOARD.read_text())["panels"]
                 if "watch" in p["title"] and "last round" in p["title"])
    name = "casebroker_deadline_watch_last_round_timestamp_seconds"
    test = {"rule_files": [], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [
            {"series": f'{name}{{instance="a"}}', "values": "0+60x30"},  # a round a minute
            {"series": f'{name}{{instance="b"}}', "values": "0+60x5 300x25"},  # none after 5m
            {"series": f'{name}{{instance="c"}}', "values": "0x30"}],  # no watch here
        "promql_expr_test": [{"expr": panel["targets"][0]["expr"], "eval_time": "20m",
                              "exp_samples": [{"labels": "{}", "value": 15}]}]}]}
    path = tmp_path / "dashboard_test.yml"
    path.write_text(yaml.safe_dump(test))
    result = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _results(port: int, expr: str) -> list[dict[str, Any]] | None:
    """The series of an instant query; None while Prometheus does not answer."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return list(json.load(r)["data"]["result"])
    except OSError:
        return None


def _query(port: int, expr: str) -> float | None:
    data = _results(port, expr)
    return float(data[0]["value"][1]) if data else None


def _series(port: int, expr: str) -> dict[str, float] | None:
    """Each series of an instant query by its ``queue`` label; None while unreachable."""
    data = _results(port, expr)
    return None if data is None else {
        s["metric"].get("queue", ""): float(s["value"][1]) for s in data}


@contextmanager
def _prometheus(config: dict[str, Any], tmp_path: Path) -> Iterator[int]:
    """A real Prometheus with this config, scraping every second; yields its port."""
    port = free_port()
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"}, **config}))
    prom = subprocess.Popen(
        ["prometheus", f"--config.file={path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield port
    finally:
        prom.terminate()
        prom.wait(timeout=20)


@needs_promtool
def test_real_prometheus_scrapes_the_router(run_broker: Callable[..., RunningBroker],
                                            declared, tmp_path: Path) -> None:
    running = run_broker()
    metrics_port = free_port()
    running.broker.metrics.serve(metrics_port)
    job = {"job_name": "casebroker",
           "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}
    with _prometheus({"scrape_configs": [job]}, tmp_path) as prom_port:
        amqp = Amqp()
        for _ in range(20):
            amqp.submit(declared, dossier())
        amqp.submit(declared, dossier("9.999999"))  # one for triage
        amqp.close()
        routed = 'sum(casebroker_intake_total{outcome="routed"})'
        wait_for(lambda: _query(prom_port, routed) == 20, timeout_s=40, what="scraped 20")
        assert _query(prom_port, 'sum(casebroker_intake_total{outcome="triaged"})') == 1
        assert _query(prom_port, 'casebroker_broker_connected') == 1
        assert _query(prom_port, 'up{job="casebroker"}') == 1
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as r:
            exposition = r.read().decode()
        # personal data never in metric labels; dossier codes neither (unbounded)
        assert "066090001234" not in exposition and "Nguy" not in exposition
        assert "-0001" not in exposition


def _queues_job() -> dict[str, Any]:
    """The shipped scrape job that reads each queue from RabbitMQ's own plugin."""
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 15692)) != 0:
            pytest.skip("RabbitMQ's prometheus plugin is not on 15692 (scripts/services.sh "
                        "enables it)")
    shipped = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    (job,) = [j for j in shipped["scrape_configs"] if j["job_name"] == "rabbitmq_queues"]
    return dict(job)


def _alert_expr(name: str) -> str:
    rules = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())
    (expr,) = [r["expr"] for g in rules["groups"] for r in g["rules"] if r.get("alert") == name]
    return str(expr)


@needs_promtool
def test_real_prometheus_sees_what_waits_in_triage_through_the_shipped_scrape_job(
        declared, tmp_path: Path) -> None:
    # CasebrokerSetAsideWaiting reads each queue's depth from RabbitMQ's own plugin, by
    # the scrape job prometheus.yml ships: its metric must be there, under that name, and
    # the router's prefix (casebroker_topology_info) picks this topology's queues
    job, expr = _queues_job(), _alert_expr("CasebrokerSetAsideWaiting")
    metrics = Metrics()
    metrics.topology_named(declared.prefix)
    metrics_port = free_port()
    stop_serving = metrics.serve(metrics_port)
    router_job = {"job_name": "casebroker",
                  "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}
    try:
        with _prometheus({"scrape_configs": [job, router_job]}, tmp_path) as prom_port:
            amqp = Amqp()
            amqp.publish("", declared.triage_queue, encode(dossier()), message_id="waiting")
            amqp.close()
            # RabbitMQ emits queue statistics every few seconds
            wait_for(lambda: (_series(prom_port, expr) or {}).get(declared.triage_queue) == 1,
                     timeout_s=60, what="the triaged message seen through the alert's query")
            waiting = _series(prom_port, expr) or {}
            assert declared.intake_queue not in waiting  # only what is set aside counts
            # another prefix's (another test's, on this RabbitMQ) is no router's here
            assert all(q.startswith(f"{declared.prefix}.") for q in waiting), waiting
    finally:
        stop_serving()


@needs_promtool
def test_real_prometheus_sees_a_party_not_collecting_through_the_shipped_scrape_jobs(
        declared, tmp_path: Path) -> None:
    # CasebrokerPartyNotCollecting joins RabbitMQ's queue depths and consumer counts, by the
    # shipped job, with the router's office-day gauge: all three must be there, under those
    # names and labels. An agency's queue nobody consumes is selected; a desk's queue whose
    # consumer holds one message while another waits is not.
    job, expr = _queues_job(), _alert_expr("CasebrokerPartyNotCollecting")
    metrics = Metrics()
    metrics.office_watched(lambda: True)
    metrics.topology_named(declared.prefix)
    metrics_port = free_port()
    stop_serving = metrics.serve(metrics_port)
    router_job = {"job_name": "casebroker",
                  "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}
    waiting, served = declared.agency_queue("T.SO.TP"), declared.desk_queue("T.MC.B")
    consumer = pika.BlockingConnection(pika.URLParameters(amqp_url()))
    try:
        with _prometheus({"scrape_configs": [job, router_job]}, tmp_path) as prom_port:
            amqp = Amqp()
            amqp.publish("", waiting, encode(dossier()), message_id="nobody-takes-it")
            for n in range(2):
                amqp.publish("", served, b"{}", message_id=f"notice-{n}")
            amqp.close()
            channel = consumer.channel()
            channel.basic_qos(prefetch_count=1)
            channel.basic_consume(served, lambda *_: None)  # holds one, never acks
            consumer.process_data_events(time_limit=1)

            def seen() -> dict[str, float]:
                ready = _series(prom_port, f'rabbitmq_detailed_queue_messages_ready'
                                           f'{{queue="{served}"}}') or {}
                taken = _series(prom_port, f'rabbitmq_detailed_queue_consumers'
                                           f'{{queue="{served}"}}') or {}
                firing = _series(prom_port, expr) or {}
                return {"served ready": ready.get(served, 0), "served consumers":
                        taken.get(served, 0), "waiting selected": firing.get(waiting, 0),
                        "served selected": firing.get(served, 0)}

            # RabbitMQ emits queue statistics every few seconds
            wait_for(lambda: seen() == {"served ready": 1, "served consumers": 1,
                                        "waiting selected": 1, "served selected": 0},
                     timeout_s=60, what="the agency queue selected, the desk queue not")
            # this test's queues alone: other tests' may wait beside them on this RabbitMQ,
            # under prefixes no router here serves
            assert set(_series(prom_port, expr) or {}) == {waiting}
    finally:
        consumer.close()
        stop_serving()


def test_full_batches_count_a_backlog_and_not_a_trickle(
        run_broker: Callable[..., RunningBroker], declared) -> None:
    """``casebroker_full_batches_total`` (alert CasebrokerAtCapacity) counts batches that
    left deliveries waiting behind them, and only those."""
    amqp = Amqp()
    for _ in range(60):  # queued before the router starts: a backlog of twelve batches
        amqp.submit(declared, dossier())
    registry = run_broker(batch_size=5).broker.metrics.registry

    def value(name: str, labels: dict[str, str]) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    # the prefix the queue alerts keep to (CasebrokerSetAsideWaiting, PartyNotCollecting)
    assert value("casebroker_topology_info", {"prefix": declared.prefix}) == 1

    def routed() -> float:
        return value("casebroker_intake_total", {"outcome": "routed", "reason": ""})

    def full() -> float:
        return value("casebroker_full_batches_total", {"source": "intake"})

    wait_for(lambda: routed() == 60, what="the backlog routed")
    backlog_full = full()
    batches = value("casebroker_batch_size_count", {"source": "intake"})
    assert 1 <= backlog_full < batches  # the last batch leaves nothing behind
    for n in range(61, 65):  # a trickle: each dossier routed before the next is sent
        amqp.submit(declared, dossier())
        wait_for(lambda n=n: routed() == n, what=f"dossier {n} routed")
    amqp.close()
    assert full() == backlog_full
