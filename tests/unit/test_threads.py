"""broker.threads: a thread's name reaches the operating system (top -H, /proc)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from broker import threads


def test_the_os_keeps_fifteen_bytes() -> None:
    assert threads.os_name("handler-intake") == b"handler-intake"
    assert threads.os_name("a-much-longer-thread-name") == b"a-much-longer-t"
    assert len(threads.os_name("hàng-đợi-tiếp-nhận")) == threads.NAME_BYTES


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_start_names_the_thread_in_python_and_in_the_os() -> None:
    seen: dict[str, str] = {}
    release = threading.Event()

    def target() -> None:
        seen["python"] = threading.current_thread().name
        seen["os"] = Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text()
        release.wait(5)

    thread = threads.start(target, "handler-intake")
    try:
        for _ in range(500):
            if "os" in seen:
                break
            threading.Event().wait(0.01)
        assert seen == {"python": "handler-intake", "os": "handler-intake\n"}
        assert thread.daemon
        # the other threads of the process keep their names
        main = Path(f"/proc/self/task/{os.getpid()}/comm").read_text()
        assert main != "handler-intake\n"
    finally:
        release.set()
        thread.join(5)
