"""Threads named in the operating system too, so `top -H` and /proc show which is which.

Python names a thread for itself only: in ``top -H -p <pid>`` or
``/proc/<pid>/task/*/comm`` every thread of `casebroker run` reads ``python``, and a
handler thread busy all the time looks like any other. :func:`start` gives the thread
the same name in the kernel (Linux ``prctl(PR_SET_NAME)``, 15 bytes at most) before it
runs its target. Elsewhere, or if the call fails, the thread runs unnamed in the OS:
the name is for people watching, never something the broker depends on.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from collections.abc import Callable
from typing import Any

_PR_SET_NAME = 15
#: the kernel's limit for a thread's name, without the terminating NUL
NAME_BYTES = 15


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:  # the running interpreter's own symbols: libc's are among them (find_library
        # would start a subprocess, tens of ms at every import)
        return ctypes.CDLL(None).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()


def os_name(name: str) -> bytes:
    """The name as the kernel keeps it: UTF-8, cut to :data:`NAME_BYTES` bytes."""
    return name.encode()[:NAME_BYTES]


def name_this_thread(name: str) -> None:
    """Name the calling thread in the OS (no-op where that is not possible)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_NAME, ctypes.c_char_p(os_name(name)), 0, 0, 0)


def start(target: Callable[[], Any], name: str) -> threading.Thread:
    """Start a daemon thread called ``name`` in Python and in the OS, running ``target``."""

    def run() -> None:
        name_this_thread(name)
        target()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread
