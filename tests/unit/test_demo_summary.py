"""The demo's summary in words: the receipt latency says under which load it was taken."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.demo import format_summary


def _summary(offered_per_s: float) -> dict[str, Any]:
    return {"submitted": 10, "routed": 10, "resolved": 10, "returned": 10, "elapsed_s": 1.0,
            "dossiers_per_s": 10.0, "lost": 0, "duplicates": 0, "dead_lettered": 0,
            "triaged": 0, "refused": 0, "boundary_free_share": 0.5,
            "receipt_latency_ms": {"p50": 12.5, "p99": 40.0}, "offered_per_s": offered_per_s}


def test_a_latency_taken_with_dossiers_submitted_as_fast_as_they_go_says_so() -> None:
    last = format_summary(_summary(0.0)).splitlines()[-1]
    assert last == ("boundary-free share 50.0%  receipt latency p50 12.5 ms, p99 40.0 ms "
                    "(submitted as fast as confirms allow: mostly the wait behind the "
                    "others; --rate R for a steady load)")


def test_a_latency_taken_at_a_steady_rate_names_the_rate() -> None:
    last = format_summary(_summary(100.0)).splitlines()[-1]
    assert last == "boundary-free share 50.0%  receipt latency p50 12.5 ms, p99 40.0 ms at 100/s"


def test_the_progress_bar_is_plain_lines_where_stderr_is_no_terminal(
        capsys: pytest.CaptureFixture[str]) -> None:
    # `make demo > log 2>&1`: the bar's carriage returns ran its ~20 frames into one line
    from adapters.demo import _Progress

    bar = _Progress(10, enabled=True)
    counts = {"submitted": 10, "routed": 10, "resolved": 4, "returned": 4}
    bar.show(counts)
    bar.show(counts)  # within the 3 s: not again
    bar.show({**counts, "returned": 10}, final=True)
    err = capsys.readouterr().err
    assert "\r" not in err and err.splitlines() == [
        "[############..................] submitted 10  routed 10  resolved 4  returned 4 / 10",
        "[##############################] submitted 10  routed 10  resolved 4  returned 10 / 10"]
