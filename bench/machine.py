"""What the figures were measured on."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from bench.common import blocking


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
    """CPU, memory, load, Python and RabbitMQ versions."""
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
    return info
