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


@contextmanager
def whole() -> Iterator[None]:
    """Ctrl-C and SIGTERM held back until the block is over, then delivered as they would
    have been (a KeyboardInterrupt, or the end of the process): a message settled in two
    steps (its copy published and confirmed, then the original acked) is settled whole.
    Interrupted in between, `dead-letters list` left the message twice in its queue (a
    review). A second signal interrupts at once, for a RabbitMQ that does not answer."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set a handler
        return
    held: list[int] = []

    def hold(signum: int, _frame: Any) -> None:
        if held:
            raise KeyboardInterrupt
        held.append(signum)

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    taken = [sig for sig, handler in before.items() if handler not in (signal.SIG_IGN, None)]
    for sig in taken:
        signal.signal(sig, hold)
    try:
        yield
    finally:
        for sig in taken:
            signal.signal(sig, before[sig])
    if held:
        signal.raise_signal(held[0])
