"""How far a long operator command is: a line on stderr every few seconds.

The command's result goes to stdout (often as JSON for a script), so progress never
mixes with it; a command that ends within the first few seconds says nothing.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Progress:
    """Call with (done, total) as often as convenient; it prints at most every
    :attr:`EVERY_S` seconds, e.g. ``audit: 40,000 of 200,000 dossiers checked (3 s)``."""

    EVERY_S = 3.0

    def __init__(self, what: str) -> None:
        self.what = what
        self.started = self.said = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.said >= self.EVERY_S:
            self.said = now
            print(f"{self.what.format(done=f'{done:,}', total=f'{total:,}')} "
                  f"({now - self.started:.0f} s)", file=sys.stderr, flush=True)


@contextmanager
def term_as_interrupt() -> Iterator[None]:
    """SIGTERM (`timeout`, a service manager) taken as Ctrl-C while a command works: what
    it did is said, not lost with the process."""
    def interrupt(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set a handler
        return
    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
