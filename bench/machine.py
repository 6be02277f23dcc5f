"""What the figures were measured on."""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import blocking, percentile
from bench.cpu import CpuMeter
from bench.transport import Management


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _memory_gb() -> float | None:
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(kb / 1024 / 1024, 1)


def describe_machine() -> dict[str, Any]:
    """CPU, memory, load, Python and RabbitMQ versions, RabbitMQ's open-file limit."""
    info: dict[str, Any] = {"cpus": os.cpu_count(), "cpu_model": _cpu_model(),
                            "memory_gb": _memory_gb(), "python": platform.python_version(),
                            "load_avg_1m": round(os.getloadavg()[0], 2)}
    try:
        conn = blocking()
        try:
            props = conn._impl.server_properties  # noqa: SLF001 - pika keeps them there
            info["rabbitmq"] = props.get("version", b"?").decode() \
                if isinstance(props.get("version"), bytes) else props.get("version")
        finally:
            conn.close()
    except Exception as e:  # the figures matter more than the version string
        info["rabbitmq"] = f"unknown ({type(e).__name__})"
    try:  # over the management API, which the shovel stages need anyway
        nodes = Management().call("GET", "/nodes?columns=name,fd_total")
        info["rabbitmq_fd_limit"] = int(nodes[0]["fd_total"])
    except Exception:  # not enabled yet, or not reachable: the stages will say so
        pass
    return info


def _fsync_ms(directory: str | None, writes: int) -> list[float]:
    """Milliseconds each of ``writes`` synced 4 KB appends took, in ``directory``."""
    fd, path = tempfile.mkstemp(prefix="casebroker-gauge-", dir=directory)
    try:
        took = []
        for _ in range(writes):
            os.write(fd, b"\0" * 4096)
            started = time.perf_counter()
            os.fsync(fd)
            took.append((time.perf_counter() - started) * 1000)
        return took
    finally:
        os.close(fd)
        os.unlink(path)


def _python_work() -> int:
    """A fixed piece of the kind of work the router's interpreter does: JSON in and out
    of a dossier-like document, dicts, sorting. 11-27 ms on the machine of
    docs/BENCHMARKS.md, whose speed varies that much within minutes."""
    doc = {"submission_id": "0192f0c4-7d2a-7c3e-9a51-3f4e5d6c7b8a", "desk_id": "desk-001",
           "documents": [{"name": f"doc{i}", "pages": i, "kind": "copy"} for i in range(12)],
           "attributes": {f"k{i}": str(i) * 4 for i in range(12)}}
    total = 0
    for i in range(400):
        copy = json.loads(json.dumps(doc))
        copy["n"] = i
        total += len(sorted(copy["attributes"].items()))
        total += sum(d["pages"] for d in copy["documents"])
    return total


def gauges(directory: str | None = None, *, writes: int = 300, runs: int = 5
           ) -> dict[str, float]:
    """How fast the machine is right now, read in well under a second.

    The machine these figures come from drifts (docs/BENCHMARKS.md): the same code
    gave receipt p99 of 25-68 ms in one session and 206-680 ms in the next, an hour
    later. Two readings tell such states apart: the disk's synced 4 KB write in
    ``directory`` (where the benchmark's SQLite ledgers go; every quorum-queue commit
    and every ledger commit waits for one), p50 and p99; and the wall time of a fixed
    piece of Python work, median of ``runs``. Taken at the start and at the end of a
    run. With them, where ``/proc/stat`` exists, ``busy_elsewhere_cores``: the cores
    the rest of the machine kept busy meanwhile (RabbitMQ still deleting a stage's
    queues slows the second reading, and says so here).
    """
    meter = CpuMeter()
    synced = _fsync_ms(directory, writes)
    python_ms = []
    for _ in range(runs):
        started = time.perf_counter()
        _python_work()
        python_ms.append((time.perf_counter() - started) * 1000)
    reading = {"fsync_p50_ms": round(percentile(synced, 0.50), 3),
               "fsync_p99_ms": round(percentile(synced, 0.99), 3),
               "python_work_ms": round(statistics.median(python_ms), 2)}
    spent = meter.seconds()
    if spent and spent["wall"] > 0:
        elsewhere = max(0.0, spent["machine"] - spent["benchmark"]) / spent["wall"]
        reading["busy_elsewhere_cores"] = round(elsewhere, 2)
    return reading
