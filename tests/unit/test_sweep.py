"""What the session-start sweep (tests/sweep.py) may delete, and what it must not."""

from __future__ import annotations

import os
import uuid

from bench.common import unique_prefix
from broker.topology import DEFAULT_PREFIX, Topology
from tests.sweep import LEFTOVER, LEFTOVER_SCHEMA, other_owners


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
