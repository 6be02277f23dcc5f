"""bench.cpu: the kernel's accounting read back for a known amount of work."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from bench.cpu import CpuMeter

pytestmark = pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux /proc")


def test_meter_counts_this_process_and_the_machine() -> None:
    meter = CpuMeter()
    started = time.process_time()
    while time.process_time() - started < 0.5:
        pass
    spent = time.process_time() - started
    seconds = meter.seconds()
    # clock ticks are 10 ms; the process also ran a little outside the loop
    assert spent - 0.03 <= seconds["benchmark"] <= spent + 0.1
    assert seconds["machine"] >= seconds["benchmark"] - 0.03
    assert seconds["wall"] >= 0.5
    assert set(seconds) >= {"rabbitmq", "postgresql", "other", "steal"}


def test_per_message_divides_and_reports_busy_cores() -> None:
    meter = CpuMeter()
    started = time.process_time()
    while time.process_time() - started < 0.2:
        pass
    meter.stop()
    time.sleep(0.05)  # after stop: not counted
    report = meter.per_message(1000)
    assert 150 <= report["benchmark"] <= 320  # µs per message: 0.2 s / 1000
    assert 0 < report["cores_busy"] <= 2 * (len(Path("/proc/stat").read_text().split("cpu")) - 1)
    assert meter.per_message(0) == {}


def test_a_named_process_is_a_group_of_its_own() -> None:
    import subprocess
    import sys

    burn = ("import sys, time\nsys.stdin.readline()\nt = time.process_time()\n"
            "while time.process_time() - t < 0.3: pass\nprint('done', flush=True)\n"
            "sys.stdin.readline()")
    child = subprocess.Popen([sys.executable, "-c", burn], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    try:
        meter = CpuMeter({child.pid: "router"})
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "done"
        seconds = meter.seconds()  # the child is still alive: its time is still on record
    finally:
        child.kill()
        child.wait()
    assert 0.27 <= seconds["router"] <= 0.45
    assert seconds["benchmark"] < 0.2  # this process only waited


def test_thread_ticks_tell_a_named_busy_thread_from_the_main_one() -> None:
    from bench.cpu import thread_ticks, thread_us_per_message
    from broker import threads

    burnt, release = threading.Event(), threading.Event()

    def burn_then_wait() -> None:  # an ended thread's ticks leave /proc with it
        started = time.thread_time()
        while time.thread_time() - started < 0.3:
            pass
        burnt.set()
        release.wait(10)

    before = thread_ticks(os.getpid())
    thread = threads.start(burn_then_wait, "bench-burner")
    try:
        assert burnt.wait(10)
        after = thread_ticks(os.getpid())
    finally:
        release.set()
        thread.join(10)
    assert "main" in after
    per = thread_us_per_message(before, after, 1000)
    assert 250 <= per["bench-burner"] <= 400  # µs per message: 0.3 s over 1,000
    assert list(per)[0] == "bench-burner"  # the busiest thread first
    assert thread_us_per_message(before, after, 0) == {}
