"""What the session-start sweep (tests/sweep.py) may delete, and what it must not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from bench.common import unique_prefix
from broker.topology import DEFAULT_PREFIX, Topology
from tests.conftest import wait_for
from tests.sweep import (
    FAULT_DIR_PREFIX,
    FAULT_RUN_ENV,
    LEFTOVER,
    LEFTOVER_SCHEMA,
    other_owners,
    stop_stray_servers,
    stray_servers,
)


def test_the_random_prefixes_of_tests_demos_and_benchmarks_are_swept() -> None:
    for prefix in (f"t{uuid.uuid4().hex[:10]}", f"t{uuid.uuid4().hex[:8]}",
                   f"demo{uuid.uuid4().hex[:8]}", unique_prefix("lc"), unique_prefix("fwd")):
        assert LEFTOVER.match(Topology(prefix).intake_queue), prefix
    assert LEFTOVER_SCHEMA.match(f"t{uuid.uuid4().hex[:10]}")


def test_an_operators_names_are_never_swept() -> None:
    for name in (Topology(DEFAULT_PREFIX).intake_queue, "opsrev1.intake", "t.intake",
                 "tX.keep", "demo.intake", "t0123456789abc.intake", "bench.intake"):
        assert not LEFTOVER.match(name), name
    for schema in ("public", "t", "test", "t0123"):
        assert not LEFTOVER_SCHEMA.match(schema), schema


def test_this_test_run_is_not_another_owner() -> None:
    assert os.getpid() not in other_owners()


def test_a_benchmark_module_run_by_itself_is_an_owner() -> None:
    from tests.sweep import OWNERS

    for cmdline in (b"/usr/bin/python3\x00-m\x00bench.transport\x00--dossiers\x001000",
                    b"/x/.venv/bin/python\x00/x/.venv/bin/casebroker\x00demo",
                    b"python\x00-m\x00broker.cli\x00run", b"python\x00-m\x00pytest"):
        assert OWNERS.search(cmdline), cmdline
    assert not OWNERS.search(b"/usr/sbin/rabbitmq-server\x00-detached")


def test_a_killed_fault_runs_servers_are_stopped_and_their_directories_removed(
        tmp_path: Path) -> None:
    # stand-ins for a node and a database server left by a killed fault run: processes
    # whose command lines name their casebroker-faults-* directory; and one that does not
    left = tmp_path / f"{FAULT_DIR_PREFIX}x1"
    (left / "pg" / "data").mkdir(parents=True)
    (left / "n1" / "mnesia").mkdir(parents=True)
    # and a router it started, known by the mark in its environment (this test's own
    # mark: a real fault run's routers are none of its business). The servers are
    # Python under the servers' names; an operator reading a log in the directory, or
    # a server of another directory, is left alone
    mark = f"CASEBROKER_TEST_MARK_{uuid.uuid4().hex}"
    (tmp_path / "bin").mkdir()
    for name in ("postgres", "beam.smp"):
        (tmp_path / "bin" / name).symlink_to(sys.executable)

    def nap(program: str = sys.executable) -> list[str]:
        return [program, "-c", "import time; time.sleep(120)"]

    def quittable() -> None:
        # SIGQUIT ends the stand-in, as it does a real server, whatever this run
        # inherited: a shell's background job starts with it ignored
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)

    postgres, beam = (str(tmp_path / "bin" / name) for name in ("postgres", "beam.smp"))
    strays = [subprocess.Popen([*nap(postgres), "-D", str(left / "pg" / "data")],
                               preexec_fn=quittable),
              subprocess.Popen([*nap(beam), "-mnesia", str(left / "n1" / "mnesia")]),
              subprocess.Popen([*nap(), "broker.cli", "run"], env={**os.environ, mark: "1"})]
    bystanders = [subprocess.Popen([*nap(postgres), "-D", str(tmp_path / "elsewhere")]),
                  subprocess.Popen([*nap(), "tail", "-f", str(left / "router0.log")])]
    try:
        found = wait_for(lambda: sorted(pid for pid, _ in stray_servers(tmp_path, mark))
                         if len(stray_servers(tmp_path, mark)) == 3 else None, timeout_s=10,
                         what="the strays' command lines")
        assert found == sorted(p.pid for p in strays)
        assert stop_stray_servers(tmp_path, wait_s=10, mark=mark) == (3, 1)
        # PostgreSQL is asked to shut down at once (SIGQUIT), the others killed
        assert [p.wait(timeout=10) for p in strays] == [-signal.SIGQUIT, -signal.SIGKILL,
                                                         -signal.SIGKILL]
        assert not left.exists() and [b.poll() for b in bystanders] == [None, None]
        assert stray_servers(tmp_path, mark) == []
        assert stop_stray_servers(tmp_path, mark=mark) == (0, 0)
    finally:
        for p in (*strays, *bystanders):
            p.kill()
            p.wait()


def test_a_fault_runs_router_is_not_an_owner_but_another_router_is() -> None:
    nap = [sys.executable, "-c", "import time; time.sleep(120)", "broker.cli", "run"]
    router = subprocess.Popen(nap)
    fault_router = subprocess.Popen(nap, env={**os.environ, FAULT_RUN_ENV: "1"})
    try:
        wait_for(lambda: router.pid in other_owners(), timeout_s=10, what="an owner")
        assert fault_router.pid not in other_owners()
    finally:
        for p in (router, fault_router):
            p.kill()
            p.wait()
