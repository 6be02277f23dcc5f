"""`casebroker bench` at a tiny N: every stage runs against the real RabbitMQ and PostgreSQL."""

from __future__ import annotations

import json
import re
import shutil
import uuid

import pytest
from sqlalchemy.engine import make_url

from broker.cli import main
from tests.conftest import MINI_CATALOG, PG_URL
from tests.helpers import held_port

pytestmark = pytest.mark.integration

KEYS = ("shovel_msgs_per_s", "shovel_spread_msgs_per_s", "forwarder_msgs_per_s",
        "router_sqlite_msgs_per_s", "router_postgres_msgs_per_s", "ratio_router_sqlite_to_shovel",
        "ratio_router_postgres_to_shovel", "ratio_router_sqlite_to_shovel_spread",
        "ratio_router_postgres_to_shovel_spread", "lifecycle_dossiers_per_s", "receipt_p50_ms",
        "receipt_p99_ms", "router_rss_growth_mb")


def test_bench_reports_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "--dossiers", "200", "--rss-dossiers", "200", "--rss-chunk", "100",
                 "--receipt-dossiers", "200", "--receipt-warmup", "50",
                 "--lifecycle-dossiers", "100", "--json", "--quiet",
                 "--catalog", str(MINI_CATALOG)])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report.get("errors")
    assert "errors" not in report
    for key in KEYS:
        assert key in report, key
        # RSS can shrink a little at this N; it must still have been measured
        assert report[key] > 0 or key == "router_rss_growth_mb", (key, report[key])
    assert report["router_rss_end_mb"] > 0
    # the yardstick is the fastest of the shovel's runs
    assert len(report["shovel_runs_msgs_per_s"]) == 3
    assert report["shovel_msgs_per_s"] == max(report["shovel_runs_msgs_per_s"])
    assert report["router_sqlite_outcomes"] == report["router_postgres_outcomes"]
    assert sum(report["router_sqlite_outcomes"].values()) == 200
    assert report["machine"]["cpus"] >= 1
    for when in ("start", "end"):  # the machine's speed, read before and after (bench.machine)
        assert report["machine"]["gauges"][when]["fsync_p50_ms"] > 0, when
    # where the CPU went, per stage that moves messages (bench/cpu.py; its accuracy is
    # tests/unit/test_bench_cpu.py's): every group reported, none negative
    for stage in ("shovel", "shovel_spread", "forwarder", "router_sqlite", "router_postgres",
                  "receipt"):
        cpu = report[f"{stage}_cpu_us_per_msg"]
        assert set(cpu) >= {"rabbitmq", "benchmark", "postgresql", "other", "machine",
                            "cores_busy", "steal"}, stage
        assert min(cpu.values()) >= 0, (stage, cpu)
    assert "router" in report["receipt_cpu_us_per_msg"]  # `casebroker run`, a group of its own
    # the warm-up went first, by the same path, and is reported apart
    assert report["receipt_warmup_dossiers"] == 50
    assert 0 < report["receipt_warmup_p50_ms"] <= report["receipt_warmup_p99_ms"]
    assert report["receipt_dossiers"] == 200
    # the router's batches while the 200 were offered, from its /metrics
    assert report["receipt_router_batch_count"] >= 1
    assert report["receipt_router_batch_mean_size"] >= 1
    assert report["receipt_router_batch_mean_ms"] > 0
    handled = report["receipt_router_batch_count"] * report["receipt_router_batch_mean_size"]
    assert 0 <= report["receipt_router_batch_full"] <= report["receipt_router_batch_count"]
    # and its CPU by thread: the I/O loop and the intake handler, named in the OS
    threads = report["receipt_router_threads_us_per_msg"]
    assert threads["main"] > 0 and threads["handler-intake"] > 0, threads
    assert handled <= 200 * 1.05  # rounded mean; none of the warm-up's
    # the round trip's two legs, split at the router's batch start: each leg is part of it
    for leg in ("to_router", "from_router"):
        assert 0 < report[f"receipt_{leg}_p50_ms"] < report["receipt_max_ms"], leg
        assert report[f"receipt_{leg}_p50_ms"] <= report[f"receipt_{leg}_p99_ms"], leg


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_handler_bench_reports_each_batch_size(kind: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from bench.handler import main as handler_main

    assert handler_main(["--batches", "1,7", "--dossiers", "21", "--ledger", kind]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and line[2].isdigit()]
    assert [int(r[0]) for r in rows] == [1, 7]
    for _batch, wall, cpu, per_batch in rows:
        assert float(wall.replace(",", "")) > 0 and float(cpu.replace(",", "")) > 0
        assert float(per_batch.replace(",", "")) > 0


def test_wal_bench_counts_each_batch_commit_and_names_what_it_wrote(
        capsys: pytest.CaptureFixture[str]) -> None:
    from bench.wal import main as wal_main

    assert wal_main(["--prefill", "250", "--dossiers", "60", "--batch", "6"]) == 0
    out = capsys.readouterr().out
    kb = float(re.search(r"([\d.]+) KB of log per dossier", out).group(1))  # type: ignore[union-attr]
    frames, commits = (int(n.replace(",", "")) for n in re.search(  # type: ignore[union-attr]
        r"([\d,]+) pages of 4,096 bytes in ([\d,]+) commits", out).groups())
    assert commits == 10  # one per batch of 6: the router commits each batch once
    rows = {r[0].strip(): float(r[1]) for r in
            (line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| "))
            if r[1].strip()[0].isdigit()}
    # every table a dossier writes is named, from the pages of the WAL itself
    assert {"dossiers", "events", "inbox", "outbox"} <= set(rows)
    # (each figure is rounded to 0.01 page per dossier)
    assert sum(rows.values()) * 60 == pytest.approx(frames, abs=0.005 * 60 * len(rows))
    assert kb == pytest.approx(frames * (4096 + 24) / 1024 / 60, abs=0.06)


def test_wal_bench_on_postgresql(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.wal import main as wal_main

    assert wal_main(["--ledger", "postgresql", "--prefill", "250", "--dossiers", "30"]) == 0
    kb = float(re.search(r"([\d.]+) KB of log per dossier",  # type: ignore[union-attr]
                         capsys.readouterr().out).group(1))
    assert kb > 0.5  # five rows and their index entries per dossier, at the least


def test_cleanup_finds_what_a_lifecycle_stage_left(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The lifecycle stage runs the demo under a bench prefix, so `--cleanup` removes its
    topology when the stage is interrupted (here: kept on purpose)."""
    from adapters.demo import DemoSettings, run_demo
    from bench import common
    from bench.transport import Management

    # `bench --cleanup` deletes every bench<8 hex> topology and every bench<10 hex>
    # PostgreSQL schema: under pytest-xdist those of test_bench_reports_every_figure and
    # the handler and WAL benchmarks on the other worker too. Under a root of this test's
    # own it finds only what this test left; its schemas are looked for in `postgres`,
    # where no benchmark or test makes any
    monkeypatch.setattr(common, "PREFIX_ROOT", f"bench{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("CASEBROKER_BENCH_PG_URL", make_url(PG_URL).set(
        database="postgres").render_as_string(hide_password=False))
    prefix = common.unique_prefix("lc")
    mgmt = Management()

    def left() -> list[str]:
        return [q["name"] for q in mgmt.call("GET", f"/queues/{mgmt.vhost}?columns=name")
                if q["name"].startswith(prefix + ".")]

    try:
        summary = run_demo(DemoSettings(dossiers=5, progress=False, keep=True, prefix=prefix,
                                        catalog=str(MINI_CATALOG), stall_timeout_s=60.0))
        shutil.rmtree(summary["workdir"], ignore_errors=True)  # the kept ledger
        assert summary["prefix"] == prefix and summary["returned"] == 5
        assert left()
        assert main(["bench", "--cleanup"]) == 0
        assert left() == []
        assert "deleted" in capsys.readouterr().out
    finally:  # the session's sweep would not know this root
        mgmt.delete_prefixed(prefix + ".")


def test_time_ordered_ids_keep_the_id_keyed_indexes_appending() -> None:
    """Page counts, not timings: under small batches each new entry of an index keyed by
    random ids dirties a page of its own (1.3-1.7 pages per dossier in bench.wal); keyed
    by the simulator's time-ordered ids, the entries of a batch share the last page."""
    from bench.wal import measure

    result = measure("sqlite", prefill=1500, dossiers=300, batch=6)
    pages = result["pages_per_dossier"]
    for index in ("sqlite_autoindex_inbox_1",  # inbox by message id
                  "sqlite_autoindex_dossiers_2",  # dossiers by submission id
                  "ix_outbox_inbox_message_id"):  # outbox by the delivery that caused it
        assert pages[index] < 0.8, (index, pages)
    # the two indexes no query used are gone
    assert not {"ix_dossiers_agency_id", "ix_dossiers_procedure_code"} & set(pages)


def test_the_receipt_stage_router_moves_to_another_port_when_its_port_is_taken(
        declared, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.request

    from bench import process

    with held_port() as taken_port:
        ports = iter([taken_port])  # the first "free" port is taken by then
        real_free_port = process.free_port
        monkeypatch.setattr(process, "free_port", lambda: next(ports, None) or real_free_port())
        with process.router_with_metrics(declared, f"sqlite:///{tmp_path / 'l.sqlite3'}",
                                         catalog_path=str(MINI_CATALOG)) as (proc, port):
            assert port != taken_port and proc.poll() is None
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                assert b"casebroker_batch_size" in r.read()
