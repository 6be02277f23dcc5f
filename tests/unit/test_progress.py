"""Progress of long operator commands: on stderr, every few seconds, never on stdout."""

from __future__ import annotations

import pytest

from broker.ops import progress as progress_module
from broker.ops.progress import Progress


def test_progress_speaks_every_few_seconds_on_stderr_only(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    now = [100.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    told = Progress("audit: {done} of {total} dossiers checked")
    for done, at in [(10_000, 101.0), (20_000, 103.0), (30_000, 104.0), (40_000, 106.5)]:
        now[0] = at
        told(done, 200_000)
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == ["audit: 20,000 of 200,000 dossiers checked (3 s)",
                                "audit: 40,000 of 200,000 dossiers checked (6 s)"]
