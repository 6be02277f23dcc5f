"""Years with no government decree known: `rules calendar`, and the notes of `rules check`.

The holidays package computes the law's yearly holidays for any year, but a year's Tết
bridge days and swapped Saturdays come from a decree it only knows once a release lists
it. These tests take the last such year from the installed package, so they hold for any
release constraints.txt pins.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from broker import cli
from broker.calendar import (
    WorkingCalendar,
    decrees_known_until,
    unconfirmed_ahead,
    unconfirmed_note,
    unconfirmed_years,
    year_plan,
)
from broker.cli import main

MINI = Path(__file__).parents[1] / "fixtures" / "mini.yaml"
LAST = decrees_known_until("VN")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_package_knows_some_decree() -> None:
    # every other test here leans on it: 2026's swap of 22 August for 31 August is one
    assert LAST is not None and LAST >= 2026


def test_year_plan_lists_days_off_swaps_and_the_catalogs_own_days() -> None:
    cal = WorkingCalendar(extra_holidays=[date(2026, 12, 31)],
                          extra_workdays=[date(2026, 12, 26)])
    plan = {d.day: d for d in year_plan(cal, 2026)}
    assert plan[date(2026, 2, 17)].working is False
    assert plan[date(2026, 2, 17)].name == "Lunar New Year"
    assert plan[date(2026, 8, 22)].working is True      # a Saturday worked by decree
    assert plan[date(2026, 8, 31)].working is False     # the Monday given for it
    assert plan[date(2026, 12, 31)].source == "catalog"
    assert (plan[date(2026, 12, 26)].working, plan[date(2026, 12, 26)].source) == (True,
                                                                                  "catalog")
    assert plan[date(2026, 1, 1)].source.startswith("holidays ")
    # only days unlike a plain week: no ordinary weekday or weekend
    assert date(2026, 3, 3) not in plan and date(2026, 3, 7) not in plan
    assert all(d.working != (d.day.weekday() < 5) for d in plan.values())


def test_a_year_past_the_last_decree_is_unconfirmed_until_the_catalog_says_it_checked(
        ) -> None:
    assert LAST is not None
    assert unconfirmed_years(WorkingCalendar(), [LAST, LAST + 1, LAST + 2]) == [LAST + 1,
                                                                              LAST + 2]
    # a day of the year added (the province's own closure, say) confirms nothing: it
    # silenced the warning for a year whose decree nobody added (found by a review)
    own = WorkingCalendar(extra_holidays=[date(LAST + 1, 9, 3)],
                          extra_workdays=[date(LAST + 2, 1, 9)])
    assert unconfirmed_years(own, [LAST + 1, LAST + 2]) == [LAST + 1, LAST + 2]
    assert "the catalog adds 1 day(s) of" in unconfirmed_note(own, LAST + 1)
    # the decree's days added, or none to add: the province says it compared the year
    checked = WorkingCalendar(decree_checked=[LAST + 1])
    assert unconfirmed_years(checked, [LAST + 1, LAST + 2]) == [LAST + 2]


def test_looking_ahead_covers_due_dates_into_next_year_in_the_calendars_zone() -> None:
    assert LAST is not None
    cal = WorkingCalendar()
    mid_year = datetime(LAST, 6, 1, 3, tzinfo=UTC)
    assert unconfirmed_ahead(cal, mid_year) == []
    november = datetime(LAST, 11, 25, 3, tzinfo=UTC)   # a 30-working-day dossier ends in January
    [note] = unconfirmed_ahead(cal, november)
    assert note.startswith(f"{LAST + 1}'s government decree is not in the calendar")
    assert f"up to {LAST}" in note and f"--year {LAST + 1}" in note
    # 31 December 20:00 UTC is already New Year's Day in Vietnam: that year counts
    new_year = datetime(LAST, 12, 31, 20, tzinfo=UTC)
    assert unconfirmed_ahead(cal, new_year - timedelta(days=120)) == []
    [note] = unconfirmed_ahead(cal, new_year)
    assert note.startswith(f"{LAST + 1}'s")


def test_rules_check_adds_a_note_only_when_a_year_ahead_is_unconfirmed(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert LAST is not None
    monkeypatch.setattr(cli, "_now", lambda: datetime(LAST, 5, 4, tzinfo=UTC))
    assert _run(capsys, "rules", "check", str(MINI)) == (
        0, f"ok: {MINI}: 7 procedures, 6 agencies, 6 desks, 2 rules\n", "")
    monkeypatch.setattr(cli, "_now", lambda: datetime(LAST, 12, 1, tzinfo=UTC))
    code, out, err = _run(capsys, "rules", "check", str(MINI))
    ok, note = out.splitlines()
    assert (code, err, ok) == (0, "", f"ok: {MINI}: 7 procedures, 6 agencies, 6 desks, 2 rules")
    assert note.startswith(f"note: {LAST + 1}'s government decree is not in the calendar")


def test_rules_calendar_counts_the_years_working_days(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert LAST is not None
    code, out, err = _run(capsys, "rules", "calendar", "--catalog", str(MINI),
                          "--year", "2026", "--json")
    report = json.loads(out)
    assert (code, err) == (0, "")
    cal = WorkingCalendar()
    days = [date(2026, 1, 1) + timedelta(days=n) for n in range(365)]
    assert report["working_days"] == sum(cal.is_working_day(d) for d in days) == 249
    assert report["year"] == 2026 and report["unconfirmed"] is False   # LAST >= 2026
    assert {"date": "2026-08-22", "working": True,
            "name": "working day in exchange for a day off",
            "source": report["days"][0]["source"]} in report["days"]

    code, out, _ = _run(capsys, "rules", "calendar", "--catalog", str(MINI),
                        "--year", str(LAST + 1))
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith(f"mini: calendar VN, {LAST + 1}: ")
    assert lines[-1].startswith(f"note: {LAST + 1}'s government decree is not in the calendar")
    code, out, _ = _run(capsys, "rules", "calendar", "--catalog", str(MINI),
                        "--year", str(LAST))
    assert code == 0 and "note:" not in out


def test_rules_calendar_refuses_a_year_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["rules", "calendar", "--year", "2101"])
    assert stop.value.code == 2
    # the holidays package's calendar ends with 2100 (after it, not even New Year's Day
    # was a day off: found by a review)
    assert ("must be a year from 1900 to 2100 (the holiday calendar's), not 2101"
            in capsys.readouterr().err)


def test_a_catalog_lists_the_years_it_checked(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    assert LAST is not None
    monkeypatch.setattr(cli, "_now", lambda: datetime(LAST, 12, 1, tzinfo=UTC))
    zone = "timezone: Asia/Ho_Chi_Minh\n"
    checked = tmp_path / "checked.yaml"
    checked.write_text(MINI.read_text().replace(zone, f"{zone}decree_checked: [{LAST + 1}]\n", 1))
    assert _run(capsys, "rules", "check", str(checked)) == (
        0, f"ok: {checked}: 7 procedures, 6 agencies, 6 desks, 2 rules\n", "")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(MINI.read_text().replace(zone, f"{zone}decree_checked: [27]\n", 1))
    code, _, err = _run(capsys, "rules", "check", str(wrong))
    assert code == 1 and "decree_checked" in err and "1900" in err
