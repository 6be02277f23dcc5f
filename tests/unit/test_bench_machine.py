"""bench.machine's gauges and how the report prints them."""

from __future__ import annotations

import os
from pathlib import Path

from bench.cli import format_report
from bench.machine import _python_work, gauges


def test_gauges_read_the_disk_and_the_interpreter(tmp_path: Path) -> None:
    reading = gauges(str(tmp_path), writes=20, runs=3)
    assert {"fsync_p50_ms", "fsync_p99_ms", "python_work_ms"} <= set(reading)
    assert 0 < reading["fsync_p50_ms"] <= reading["fsync_p99_ms"]
    assert reading["python_work_ms"] > 0
    if Path("/proc/stat").exists():  # the rest of the machine, this process left out
        assert 0 <= reading["busy_elsewhere_cores"] <= os.cpu_count()  # type: ignore[operator]
    assert os.listdir(tmp_path) == []  # the probe's file is gone


def test_the_python_work_is_the_same_work_every_time() -> None:
    # a gauge whose work changed between runs would compare nothing
    assert _python_work() == _python_work() == 400 * 12 + 400 * 66


def test_the_report_shows_both_readings() -> None:
    start = {"fsync_p50_ms": 0.08, "fsync_p99_ms": 0.4, "python_work_ms": 18.1}
    end = {"fsync_p50_ms": 0.37, "fsync_p99_ms": 1.4, "python_work_ms": 26.0,
           "busy_elsewhere_cores": 0.9}
    text = format_report({"machine": {"cpus": 2, "rabbitmq": "3.10.8",
                                      "rabbitmq_fd_limit": 1024,
                                      "gauges": {"start": start, "end": end}},
                          "dossiers": 10, "prefetch_count": 1000})
    assert "RabbitMQ 3.10.8 (open-file limit 1024)" in text
    assert "machine at the start: fsync p50/p99 0.08/0.4 ms, fixed Python work 18.1 ms" in text
    assert ("machine at the end: fsync p50/p99 0.37/1.4 ms, fixed Python work 26.0 ms, "
            "0.9 cores busy elsewhere") in text
