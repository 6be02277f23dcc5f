"""`casebroker dossier show` judges a step's end by Vietnam's dates, as the report does
(DOMAIN.md: dates are compared), whatever zone ``--tz`` shows the times in."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from broker.cli import _step_end

#: a step due Thu 26 Nov 17:00 in Vietnam, its end at 06:30 on Fri 27 there (late: the
#: next day), which is still Thu 26 in UTC (23:30)
ENDED = {"at": datetime(2026, 11, 26, 23, 30, tzinfo=UTC),
         "detail": {"step": 1, "step_due_at": "2026-11-26T17:00:00+07:00"}}


@pytest.mark.parametrize(("tz", "due"), [
    ("Asia/Ho_Chi_Minh", "2026-11-26 17:00"),
    ("UTC", "2026-11-26 10:00"),
    ("America/New_York", "2026-11-26 05:00"),
])
def test_a_step_ended_the_next_day_in_vietnam_is_late_in_any_zone_shown(
        tz: str, due: str) -> None:
    assert _step_end(ENDED, ZoneInfo(tz)) == f"  (step 1 due {due}: late)"
