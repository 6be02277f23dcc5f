"""Who spent the machine's CPU during a stage: RabbitMQ, PostgreSQL, this process.

On a 2-core machine the broker, the database and the client share the same cores, so
a throughput figure alone cannot say whether the router is slow or simply left with
little. :class:`CpuMeter` reads the kernel's accounting (``/proc/<pid>/stat`` of every
process, ``/proc/stat`` for the machine) at the start and the end of a timed section,
and a stage reports it as CPU microseconds per input message, per group:

* ``rabbitmq``: the Erlang VM (``beam.smp``), shovel included, since it runs inside;
* ``postgresql``: every ``postgres`` process (server and backends);
* ``benchmark``: this process (the forwarder and the router run in it; its own polling
  of queue depths is a small part);
* ``router``: a ``casebroker run`` process the stage started (the receipt stage), when
  the stage names its pid;
* ``other``: every other process and the kernel's own work (network interrupts), the
  machine's busy time minus the three above;
* ``machine``: all busy time of all cores (steal is not counted as busy);
* ``steal``: time the hypervisor gave this VM's cores to someone else.

A process that exits inside the section takes its time with it (the kernel keeps no
record of it), which counts it under ``other``; none of the groups does that here
while it is measured. Off Linux (no ``/proc``) the meter reports nothing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
_PROC = Path("/proc")
GROUPS = ("rabbitmq", "postgresql", "benchmark")


def _group_of(pid: int, comm: str, named: dict[int, str]) -> str | None:
    if pid in named:
        return named[pid]
    if pid == os.getpid():
        return "benchmark"
    if comm == "beam.smp":
        return "rabbitmq"
    if comm.startswith("postgres"):
        return "postgresql"
    return None


def _cpu_ticks(after_comm: str) -> int:
    """utime + stime, in clock ticks, from what follows ``(comm)`` in a ``stat`` file."""
    fields = after_comm.split()
    return int(fields[11]) + int(fields[12])


def _process_ticks(named: dict[int, str]) -> dict[int, tuple[str, int]]:
    """pid → (group, utime + stime in clock ticks) for the processes of a group."""
    found: dict[int, tuple[str, int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:  # gone since the listing
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        head, _, rest = raw.rpartition(")")
        comm = head.partition("(")[2]
        group = _group_of(int(entry.name), comm, named)
        if group is None:
            continue
        found[int(entry.name)] = (group, _cpu_ticks(rest))
    return found


def thread_ticks(pid: int) -> dict[str, int]:
    """Clock ticks (user + system) per thread name of one process, the main thread as
    ``main``; threads of one name are added up. `casebroker run` names its threads in
    the OS (broker.threads), so its handler threads, its WAL checkpoints and its deadline
    watch each show apart from the main thread, which runs the AMQP I/O loop. Empty off
    Linux or once the process is gone."""
    ticks: dict[str, int] = {}
    try:
        tasks = list((_PROC / str(pid) / "task").iterdir())
    except OSError:
        return ticks
    for task in tasks:
        try:
            raw = (task / "stat").read_text()
            name = "main" if task.name == str(pid) else (task / "comm").read_text().strip()
        except OSError:  # ended since the listing
            continue
        ticks[name] = ticks.get(name, 0) + _cpu_ticks(raw.rpartition(")")[2])
    return ticks


def thread_us_per_message(before: dict[str, int], after: dict[str, int], messages: int
                          ) -> dict[str, float]:
    """CPU microseconds per message of each thread name between two :func:`thread_ticks`."""
    if messages <= 0:
        return {}
    spent = {name: t - before.get(name, 0) for name, t in after.items()}
    return {name: round(t * _TICK_S / messages * 1e6, 1) for name, t in
            sorted(spent.items(), key=lambda item: -item[1]) if t > 0}


def _machine_ticks() -> tuple[int, int]:
    """(busy, steal) clock ticks of all cores since boot."""
    values = [int(v) for v in (_PROC / "stat").read_text().split("\n", 1)[0].split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user)
    user, nice, system, _idle, _iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return user + nice + system + irq + softirq, steal


@dataclass(frozen=True)
class _Reading:
    processes: dict[int, tuple[str, int]]
    busy: int
    steal: int
    at: float


def _read(named: dict[int, str]) -> _Reading:
    busy, steal = _machine_ticks()
    return _Reading(_process_ticks(named), busy, steal, time.monotonic())


class CpuMeter:
    """Start before a timed section; :meth:`per_message` after it.

    ``named`` puts processes of the stage's own (pid → group name) in groups of their own.
    """

    def __init__(self, named: dict[int, str] | None = None) -> None:
        self.available = (_PROC / "stat").exists()
        self.named = dict(named or {})
        self._start = _read(self.named) if self.available else None
        self._end: _Reading | None = None

    def stop(self) -> None:
        """Take the closing reading (the first call counts; later calls keep it)."""
        if self._start is not None and self._end is None:
            self._end = _read(self.named)

    def seconds(self) -> dict[str, float]:
        """CPU seconds per group over the section, plus ``machine``, ``other``, ``steal``
        and ``wall``."""
        self.stop()
        if self._start is None or self._end is None:
            return {}
        start, end = self._start, self._end
        spent = dict.fromkeys((*GROUPS, *self.named.values()), 0)
        for pid, (group, ticks) in end.processes.items():
            before = start.processes.get(pid)
            # a pid absent at the start began inside the section: all its time is in it
            spent[group] += ticks - (before[1] if before and before[0] == group else 0)
        machine = end.busy - start.busy
        out = {g: t * _TICK_S for g, t in spent.items()}
        out["machine"] = machine * _TICK_S
        out["other"] = max(0.0, (machine - sum(spent.values())) * _TICK_S)
        out["steal"] = (end.steal - start.steal) * _TICK_S
        out["wall"] = end.at - start.at
        return out

    def per_message(self, messages: int) -> dict[str, float]:
        """CPU microseconds per input message per group; ``cores_busy`` is the machine's
        busy time over the wall time (2.0: both cores of a 2-core machine all the time)."""
        s = self.seconds()
        if not s or messages <= 0:
            return {}
        wall = s.pop("wall")
        report = {k: round(v / messages * 1e6, 1) for k, v in s.items()}
        report["cores_busy"] = round(s["machine"] / wall, 2) if wall > 0 else 0.0
        return report
