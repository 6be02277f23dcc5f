"""`casebroker dossier show` judges a step's end by Vietnam's dates, as the report does
(DOMAIN.md: dates are compared), whatever zone ``--tz`` shows the times in; and says when
an update was recorded only when that was later than its event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from broker.cli import _event_note, _step_end

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


@pytest.mark.parametrize(("applied_after", "said"), [
    (timedelta(milliseconds=40), ""),   # every update: the sender's clock a little ahead
    (timedelta(seconds=59), ""),
    (timedelta(minutes=75), "  (recorded 2026-11-26 10:00)"),  # applied late: said
])
def test_an_update_is_said_recorded_apart_only_when_applied_a_minute_or_more_later(
        applied_after: timedelta, said: str) -> None:
    # every status event showed "(recorded ...)", the same minute as its own time
    at = datetime(2026, 11, 26, 1, 45, tzinfo=UTC)  # 08:45 in Vietnam
    event = {"kind": "resolve", "at": at,
             "detail": {"kind": "DossierStatus",
                        "recorded_at": (at + applied_after).isoformat()}}
    assert _event_note(event, ZoneInfo("Asia/Ho_Chi_Minh")) == said
