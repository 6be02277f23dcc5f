"""broker.calendar: its memo bounds, and due dates worked out by hand from the holidays
package's VN calendar (Tết 2027: 4-10 February; New Year 2027 on a Friday)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

import broker.calendar as calendar_module
from broker.calendar import DurationUnit, WorkingCalendar

VN = ZoneInfo("Asia/Ho_Chi_Minh")
WD, CD, WH = DurationUnit.WORKING_DAYS, DurationUnit.CALENDAR_DAYS, DurationUnit.WORKING_HOURS


def vn(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=VN)


def test_next_working_day_memo_is_bounded_like_the_others(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # every memo is bounded by _MEMO_MAX; the next-working-day one grew by a day for every
    # distinct day a clock was started or stepped from, for as long as the broker ran
    monkeypatch.setattr(calendar_module, "_MEMO_MAX", 40)
    cal = WorkingCalendar()
    first = date(2026, 1, 1)
    for n in range(200):
        cal.clock_start(datetime.combine(first + timedelta(days=n), time(18), tzinfo=VN))
    assert len(cal._next_cache) <= 40
    # answers after the memo was dropped are still right: Fri 13 Feb 2026 after closing,
    # Tết 16-20 Feb, so Mon 23 Feb 07:00
    assert cal.clock_start(vn("2026-02-13 18:00")) == vn("2026-02-23 07:00")
    assert cal.clock_start(vn("2026-08-28 18:00")) == vn("2026-09-03 07:00")


def test_add_working_seconds_counts_from_start_not_from_the_receipt_cut_off() -> None:
    # what its docstring now says: next_day_after moves a receipt's clock only
    cal = WorkingCalendar(next_day_after=time(15, 0))
    assert cal.clock_start(vn("2026-12-07 15:30")) == vn("2026-12-08 07:00")  # Mon -> Tue
    assert cal.add_working_seconds(vn("2026-12-07 15:30"), 3600) == vn("2026-12-07 16:30")
    assert cal.add_working_seconds(vn("2026-12-07 16:30"), 3600) == vn("2026-12-08 07:30")
    assert cal.add_working_seconds(vn("2026-12-07 12:00"), 0) == vn("2026-12-07 13:30")


@pytest.mark.parametrize(
    ("received", "amount", "unit", "expected"),
    [
        # Tết 2027: Thu 4 - Wed 10 Feb off; Thu 11, Fri 12, Mon 15 are the 3 working days
        ("2027-02-03 09:00", 3, WD, "2027-02-15 09:00"),
        # New Year 2027 is a Friday: 1 h Thu 31 Dec, then Mon 4 Jan
        ("2026-12-31 16:00", 2, WH, "2027-01-04 08:00"),
        ("2026-12-31 16:00", 1, WD, "2027-01-04 16:00"),
        # 3 calendar days land on Sat 2 Jan 2027: Mon 4 Jan, same time
        ("2026-12-30 09:00", 3, CD, "2027-01-04 09:00"),
        # 30 calendar days from a Friday, before and after closing: Sun 3 Jan, moved to
        # Mon 4 Jan. Once, after closing the count began Monday and ended Wed 6 Jan 07:00
        ("2026-12-04 16:59", 30, CD, "2027-01-04 16:59"),
        ("2026-12-04 17:01", 30, CD, "2027-01-04 17:00"),
        # the eve of Tết 2027 (Thu 4 - Wed 10 Feb off): the days off count. Once, after
        # closing the count began Thu 11 Feb and ended Mon 15 Mar
        ("2027-02-03 16:59", 30, CD, "2027-03-05 16:59"),
        ("2027-02-03 17:01", 30, CD, "2027-03-05 17:00"),
        # received at lunch on Fri: 3.5 h Fri afternoon + 4.5 h Mon morning
        ("2026-03-13 12:00", 1, WD, "2026-03-16 11:30"),
        # the make-up Saturday 22 Aug 2026 works; Mon 31 Aug - Wed 2 Sep do not
        ("2026-08-21 16:00", 2, WH, "2026-08-22 08:00"),
        ("2026-08-28 16:00", 2, WH, "2026-09-03 08:00"),
    ],
)
def test_due_dates_worked_out_by_hand(received: str, amount: int, unit: DurationUnit,
                                      expected: str) -> None:
    assert WorkingCalendar().due_at(vn(received), amount, unit) == vn(expected)


def test_utc_input_near_midnight_is_dated_by_the_local_day() -> None:
    cal = WorkingCalendar()
    # 23:30Z on 31 Dec is 06:30 on 1 Jan 2027 in Vietnam: New Year, then a weekend
    due = cal.due_at(datetime(2026, 12, 31, 23, 30, tzinfo=UTC), 1, WD)
    assert due == vn("2027-01-04 17:00") and due.tzinfo == VN
    # 16:59Z is 23:59 the same day in Vietnam: after closing on Thu 31 Dec
    assert cal.clock_start(datetime(2026, 12, 31, 16, 59, tzinfo=UTC)) == vn("2027-01-04 07:00")


def test_two_calendars_with_different_extra_days_keep_their_own_memos() -> None:
    closed = WorkingCalendar(extra_holidays=[date(2026, 3, 12)])
    plain = WorkingCalendar()
    for _ in range(2):  # interleaved, and again from warm memos
        assert closed.due_at(vn("2026-03-11 09:00"), 1, WD) == vn("2026-03-13 09:00")
        assert plain.due_at(vn("2026-03-11 09:00"), 1, WD) == vn("2026-03-12 09:00")
