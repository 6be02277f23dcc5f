"""The report's counting rules on rows made here: a dossier ended while paused."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

from broker.ops.report import tally

VN = ZoneInfo("Asia/Ho_Chi_Minh")
DUE = datetime(2026, 11, 26, 2, 0, tzinfo=UTC)  # 09:00 on 26 November in Vietnam
PAUSED_IN_TIME = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)
PAUSED_LATE = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
ENDED = datetime(2026, 12, 10, 2, 0, tzinfo=UTC)  # two weeks after the due day
NOW = datetime(2026, 12, 11, 3, 0, tzinfo=UTC)


def _row(state: int, paused_at: datetime | None, finished_at: datetime | None) -> Any:
    return SimpleNamespace(
        code="T.UBND.A-261125-0001", procedure_code="1.001193", intake_desk_id="T.MC.B",
        channel="in_person", state=state, seq=4, boundary_free=True, due_at=DUE,
        finished_at=finished_at, paused_at=paused_at, satisfaction=None,
        documents=[{"name": "to-khai.pdf"}], results=None)


def test_a_dossier_stopped_or_withdrawn_waiting_for_a_supplement_asked_in_time_is_no_delay(
        ) -> None:
    # open, waiting for the citizen's supplement, it is not overdue (its clock stands
    # still); stopped, or withdrawn by the citizen, it counted as delayed
    waiting = [_row(5, PAUSED_IN_TIME, None)]
    ended = [_row(8, PAUSED_IN_TIME, ENDED), _row(7, PAUSED_IN_TIME, ENDED)]
    late = [_row(8, PAUSED_LATE, ENDED), _row(7, None, ENDED)]  # the clock ran out first
    total, _ = tally(waiting, None, VN, NOW)
    assert (total.overdue, total.satisfied) == (0, 1)
    total, _ = tally(ended, None, VN, NOW)
    assert (total.stopped, total.withdrawn, total.satisfied) == (1, 1, 2)
    total, _ = tally(late, None, VN, NOW)
    assert (total.stopped, total.withdrawn, total.satisfied) == (1, 1, 0)
