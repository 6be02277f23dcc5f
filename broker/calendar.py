"""Working calendar: office hours, public holidays and legal due dates.

Due-date semantics (``WorkingCalendar.due_at``):

* The clock starts at ``clock_start(received_at)``: unchanged inside an office period;
  before opening or at lunch on a working day it moves to the next period's start; after
  closing or on a non-working day it moves to the next working day's opening; so it does
  from ``next_day_after`` on, where a province sets an earlier cut-off (DOMAIN.md: not
  settled in law, so configurable).
* ``working_days``: ``add_working_seconds(start, amount * seconds_per_day)``. A dossier
  received Tue 2026-02-10 09:00 with 10 working days is due Tue 2026-03-03 09:00 (Tết
  16-20 Feb skipped); one received Mon after 17:00 with 1 working day is due Tue 17:00.
* ``working_hours``: ``add_working_seconds(start, amount * 3600)``.
* ``calendar_days``: ``calendar_start(received_at) + amount`` days on the wall clock; if
  that falls on a day off it moves to the same time of day on the next working day. Days
  off count, so their clock starts on the day of receipt, worked or not, at the receipt's
  time held within office hours (``calendar_start``: from closing, or ``next_day_after``,
  at closing). A dossier received Fri 2026-12-04 after 17:00 with 30 calendar days is due
  Mon 2027-01-04 17:00 (Sun 3 Jan, moved), not 30 days after Monday morning.
* Landing exactly on a period's end stays there (17:00, not next morning's 07:00).
* ``amount`` must be a non-negative int; datetimes must be timezone-aware. Results are
  aware datetimes in the calendar's timezone.

Office time is measured on the local wall clock, so a DST jump inside office hours (none
in Vietnam) does not change the length of a working day.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from importlib.metadata import version
from zoneinfo import ZoneInfo

import holidays

__all__ = ["CalendarDay", "DurationUnit", "OfficeHours", "WorkingCalendar", "decrees_known_until",
           "unconfirmed_ahead", "unconfirmed_note", "unconfirmed_years", "year_plan"]

_US = 1_000_000
_ONE_DAY = timedelta(days=1)
# Bounds the search for the next working day so a misconfigured calendar fails loudly
# instead of looping forever.
_MAX_DAYS_OFF = 366
#: the holidays package's version, named where its calendar is shown
_PACKAGE_VERSION = version("holidays")
#: bound of each memo: a year of days x 100 distinct processing times
_MEMO_MAX = 36_500


class DurationUnit(StrEnum):
    """Unit of a procedure's legal processing time."""

    WORKING_DAYS = "working_days"
    CALENDAR_DAYS = "calendar_days"
    WORKING_HOURS = "working_hours"


def _us_of_day(t: time | datetime) -> int:
    return ((t.hour * 60 + t.minute) * 60 + t.second) * _US + t.microsecond


def parse_hhmm(text: str) -> time:
    hh, sep, mm = text.strip().partition(":")
    if not sep or not (hh.isdigit() and mm.isdigit()) or len(mm) != 2:
        raise ValueError(f"invalid time {text!r}, expected HH:MM")
    return time(int(hh), int(mm))  # time() rejects hours > 23 and minutes > 59


@dataclass(frozen=True)
class OfficeHours:
    """Daily office periods, e.g. morning and afternoon sessions around lunch."""

    periods: tuple[tuple[time, time], ...] = (
        (time(7, 0), time(11, 30)),
        (time(13, 30), time(17, 0)),
    )

    def __post_init__(self) -> None:
        if not self.periods:
            raise ValueError("office hours need at least one period")
        previous_end: time | None = None
        for start, end in self.periods:
            if start.tzinfo is not None or end.tzinfo is not None:
                raise ValueError("office hours are local wall-clock times; drop the tzinfo")
            if start.microsecond or end.microsecond:
                # seconds_per_day is an int; sub-second periods would make it lossy.
                raise ValueError(f"office period {start}-{end}: use whole seconds")
            if start >= end:
                raise ValueError(f"office period {start}-{end}: start must be before end")
            if previous_end is not None and start < previous_end:
                raise ValueError(
                    f"office period {start}-{end} overlaps or precedes the one ending "
                    f"{previous_end}; periods must be sorted and non-overlapping"
                )
            previous_end = end

    @classmethod
    def parse(cls, spec: list[str]) -> OfficeHours:
        """Build office hours from strings like ``["07:00-11:30", "13:30-17:00"]``."""
        periods: list[tuple[time, time]] = []
        for item in spec:
            start, sep, end = item.partition("-")
            if not sep:
                raise ValueError(f"invalid office period {item!r}, expected HH:MM-HH:MM")
            periods.append((parse_hhmm(start), parse_hhmm(end)))
        return cls(tuple(periods))

    @property
    def seconds_per_day(self) -> int:
        """Office seconds in one working day."""
        return sum(_us_of_day(e) - _us_of_day(s) for s, e in self.periods) // _US


def _require_aware(value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timezone-aware datetime required")


class WorkingCalendar:
    """Working days and office hours of one country, timezone and office."""

    def __init__(
        self,
        country: str = "VN",
        timezone: str = "Asia/Ho_Chi_Minh",
        office_hours: OfficeHours = OfficeHours(),  # noqa: B008 - frozen, so sharing is safe
        extra_holidays: Iterable[date] = (),
        extra_workdays: Iterable[date] = (),
        next_day_after: time | None = None,
        decree_checked: Iterable[int] = (),
    ) -> None:
        try:
            holidays.country_holidays(country)
        except NotImplementedError as exc:
            raise ValueError(f"no holiday calendar for country {country!r}") from exc
        self.country = country
        self.tz = ZoneInfo(timezone)
        self.office_hours = office_hours
        self.extra_holidays = frozenset(extra_holidays)
        self.extra_workdays = frozenset(extra_workdays)
        #: years whose decree a person compared with this calendar (``unconfirmed_years``)
        self.decree_checked = frozenset(decree_checked)
        #: received at or after this time of a working day, a dossier's clock starts at
        #: the next working day's opening (None: at closing, as after any period)
        self.next_day_after = next_day_after
        # Periods as microseconds since midnight: integer arithmetic keeps
        # add_working_seconds and working_seconds_between exact inverses.
        self._periods = tuple((_us_of_day(s), _us_of_day(e)) for s, e in office_hours.periods)
        self._us_per_day = sum(e - s for s, e in self._periods)
        self._years: dict[int, tuple[frozenset[date], frozenset[date]]] = {}
        self._next_cache: dict[date, date] = {}
        self._skip_cache: dict[tuple[date, int], date] = {}
        self._working: dict[date, bool] = {}

    def _year(self, year: int) -> tuple[frozenset[date], frozenset[date]]:
        # Building a holidays object is slow (lunar maths), so each year is built once.
        # One dict entry per year keeps concurrent first lookups race-free.
        cached = self._years.get(year)
        if cached is None:
            cal = holidays.country_holidays(self.country, years=year)
            # Decreed make-up Saturdays (swapped for a bridge day off) are known to the
            # package; ignoring them would lose a working day from the count.
            workdays = getattr(cal, "weekend_workdays", ())
            cached = frozenset(cal), frozenset(d for d in workdays if d.year == year)
            self._years[year] = cached
        return cached

    def is_working_day(self, day: date) -> bool:
        """Whether offices are open on ``day``."""
        known = self._working.get(day)
        if known is not None:
            return known
        if isinstance(day, datetime):
            raise TypeError("is_working_day takes a date, not a datetime")
        working = self._is_working_day(day)
        if len(self._working) >= _MEMO_MAX:
            self._working.clear()
        self._working[day] = working
        return working

    def _is_working_day(self, day: date) -> bool:
        if day in self.extra_workdays:
            return True
        if day in self.extra_holidays:
            return False
        days_off, make_up_days = self._year(day.year)
        if day in make_up_days:
            return True
        return day.weekday() < 5 and day not in days_off

    def _next_working_day(self, day: date) -> date:
        # memoized: due dates step through the same few weeks for every dossier
        found = self._next_cache.get(day)
        if found is not None:
            return found
        following = day
        for _ in range(_MAX_DAYS_OFF):
            following += _ONE_DAY
            if self.is_working_day(following):
                if len(self._next_cache) >= _MEMO_MAX:
                    self._next_cache.clear()
                self._next_cache[day] = following
                return following
        raise ValueError(f"no working day within {_MAX_DAYS_OFF} days after {day}")

    def _working_days_after(self, day: date, count: int) -> date:
        # memoized like _next_working_day: a province's due dates start on the same few
        # days with a few dozen processing times, so one lookup replaces a walk of up to
        # a few dozen days; the memo is dropped when it grows past a year of such pairs
        key = (day, count)
        found = self._skip_cache.get(key)
        if found is None:
            found = day
            for _ in range(count):
                found = self._next_working_day(found)
            if len(self._skip_cache) >= _MEMO_MAX:
                self._skip_cache.clear()
            self._skip_cache[key] = found
        return found

    def _to_wall(self, value: datetime) -> datetime:
        _require_aware(value)
        return value.astimezone(self.tz).replace(tzinfo=None)

    def _at(self, day: date, us: int) -> datetime:
        return datetime.combine(day, time()) + timedelta(microseconds=us)

    def _wall_clock_start(self, wall: datetime) -> datetime:
        day = wall.date()
        if self.is_working_day(day):
            now = _us_of_day(wall)
            for start, end in self._periods:
                if now < start:
                    return self._at(day, start)
                if now < end:
                    return wall
        return self._at(self._next_working_day(day), self._periods[0][0])

    def _receipt_start(self, wall: datetime) -> datetime:
        """Where the clock of a dossier received at ``wall`` starts: as
        :meth:`_wall_clock_start`, but from :attr:`next_day_after` on, at the next working
        day's opening."""
        if (self.next_day_after is not None and self.is_working_day(wall.date())
                and _us_of_day(wall) >= _us_of_day(self.next_day_after)):
            return self._at(self._next_working_day(wall.date()), self._periods[0][0])
        return self._wall_clock_start(wall)

    def clock_start(self, received_at: datetime) -> datetime:
        """When the processing clock starts for a dossier received at ``received_at``."""
        return self._receipt_start(self._to_wall(received_at)).replace(tzinfo=self.tz)

    def add_working_seconds(self, start: datetime, seconds: float) -> datetime:
        """The instant ``seconds`` of office time after ``start``, counted from where
        office time next runs: ``start`` itself inside an office period, else the start
        of the next one (after closing or on a day off, the next working day's opening).
        Unlike :meth:`clock_start` it ignores ``next_day_after``, which only a receipt
        takes: time added from a later instant (a pause, an at-risk margin) still counts
        the office time after the cut-off. Zero seconds give that start."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"seconds must be finite and >= 0, got {seconds!r}")
        wall = self._wall_clock_start(self._to_wall(start))
        remaining = round(seconds * _US)
        day, now = wall.date(), _us_of_day(wall)
        while True:
            # Whole days first, so long durations cost one step per day, not per period.
            # Strictly greater: a duration ending exactly at closing stays on this day.
            if now == self._periods[0][0] and remaining > self._us_per_day:
                whole = (remaining - 1) // self._us_per_day
                remaining -= whole * self._us_per_day
                day = self._working_days_after(day, whole)
            for period_start, period_end in self._periods:
                if now >= period_end:
                    continue
                now = max(now, period_start)
                if remaining <= period_end - now:
                    return self._at(day, now + remaining).replace(tzinfo=self.tz)
                remaining -= period_end - now
                now = period_end
            day, now = self._next_working_day(day), self._periods[0][0]

    def _working_days_due(self, received_at: datetime, amount: int) -> datetime:
        """``add_working_seconds(clock_start(received_at), amount whole office days)`` in
        closed form.

        A whole number of office days keeps the clock's place within the day: from
        office time ``o`` into day D, the due instant is office time ``o`` into the
        ``amount``-th working day after D, or closing time of the ``amount - 1``-th when
        the clock starts at opening (``o`` = 0; a duration ending exactly at closing
        stays on its day). Where ``o`` falls on a break, the earliest wall instant is
        the one meant, as in ``add_working_seconds``: the end of the period before it.
        Two memoized lookups instead of a walk: the router computes one per dossier.
        """
        wall = self._receipt_start(self._to_wall(received_at))
        if amount == 0:
            return wall.replace(tzinfo=self.tz)
        now = _us_of_day(wall)
        periods = self._periods
        if now == periods[0][0]:
            day = self._working_days_after(wall.date(), amount - 1)
            return self._at(day, periods[-1][1]).replace(tzinfo=self.tz)
        for i in range(1, len(periods)):
            if now == periods[i][0]:
                now = periods[i - 1][1]  # the break after a period's end: its end
                break
        day = self._working_days_after(wall.date(), amount)
        return self._at(day, now).replace(tzinfo=self.tz)

    def _office_us_in_day(self, day: date, lo: int, hi: int) -> int:
        if not self.is_working_day(day):
            return 0
        return sum(max(0, min(hi, e) - max(lo, s)) for s, e in self._periods)

    def working_seconds_between(self, a: datetime, b: datetime) -> float:
        """Office seconds in ``[a, b)``; 0 if ``b <= a``."""
        wall_a, wall_b = self._to_wall(a), self._to_wall(b)
        if b <= a:
            return 0.0
        first, last = wall_a.date(), wall_b.date()
        lo, hi = _us_of_day(wall_a), _us_of_day(wall_b)
        if first == last:
            return self._office_us_in_day(first, lo, hi) / _US
        total = self._office_us_in_day(first, lo, self._periods[-1][1])
        total += self._office_us_in_day(last, 0, hi)
        day = first + _ONE_DAY
        while day < last:
            if self.is_working_day(day):
                total += self._us_per_day
            day += _ONE_DAY
        return total / _US

    def due_at(self, received_at: datetime, amount: int, unit: DurationUnit | str) -> datetime:
        """Legal due date for a processing time of ``amount`` ``unit``."""
        unit = DurationUnit(unit)
        if isinstance(amount, bool) or not isinstance(amount, int):
            raise TypeError(f"amount must be an int, got {amount!r}")
        if amount < 0:
            raise ValueError(f"amount must be >= 0, got {amount}")
        if unit is DurationUnit.WORKING_DAYS:
            return self._working_days_due(received_at, amount)
        if unit is DurationUnit.WORKING_HOURS:
            return self.add_working_seconds(self.clock_start(received_at), amount * 3600)
        return self.on_a_working_day(self.calendar_days_end(received_at, amount))

    def calendar_start(self, received_at: datetime) -> datetime:
        """Where a time counted in calendar days starts for ``received_at``: on that day,
        worked or not, at the receipt's time held within office hours: before opening or
        at lunch at the next period's start; from closing, or from :attr:`next_day_after`,
        at closing. Days off are counted, so the start is never moved to the next working
        morning as :meth:`clock_start` moves it: that lost every day off in between, the
        weekend of a Friday evening's receipt, a week on the eve of Tết (found by a
        review). Held at closing, a receipt after closing is due no earlier than one
        before it."""
        wall = self._to_wall(received_at)
        now, closing = _us_of_day(wall), self._periods[-1][1]
        if self.next_day_after is not None and now >= _us_of_day(self.next_day_after):
            now = closing
        for start, end in self._periods:
            if now < start:
                now = start
                break
            if now < end:
                break
        else:
            now = closing
        return self._at(wall.date(), now).replace(tzinfo=self.tz)

    def calendar_days_end(self, start: datetime, days: float) -> datetime:
        """Where ``days`` calendar days counted from :meth:`calendar_start` end, before
        :meth:`on_a_working_day` moves that end off a day off: a pause extends this end,
        and the end it reaches is moved afresh (extending the moved one would give the
        days off it skipped a second time)."""
        return self.calendar_start(start) + timedelta(days=days)

    def on_a_working_day(self, when: datetime) -> datetime:
        """``when`` (in the calendar's zone), or, if it falls on a day off, the same time
        of day on the next working day: where a time counted in calendar days ends."""
        wall = self._to_wall(when)
        if not self.is_working_day(wall.date()):
            wall = datetime.combine(self._next_working_day(wall.date()), wall.time())
        return wall.replace(tzinfo=self.tz)

    def office_day_at(self, when: datetime) -> bool:
        """Whether ``when`` falls between the opening and the closing of a working day
        (its lunch break included): when desks and agencies are expected at work."""
        wall = self._to_wall(when)
        return (self.is_working_day(wall.date())
                and self._periods[0][0] <= _us_of_day(wall) < self._periods[-1][1])



@dataclass(frozen=True)
class CalendarDay:
    """A day that differs from a plain week: off on a weekday, or worked on a weekend."""

    day: date
    working: bool
    #: the holiday's name, or why a weekend day is worked
    name: str
    #: ``catalog`` (its extra_holidays / extra_workdays) or ``holidays <version>`` (the
    #: package's yearly rules and the government decrees it lists)
    source: str


@functools.cache  # the package's data, fixed in a process; asked at each scrape
def _decree_years(country: str) -> frozenset[int]:
    return frozenset(getattr(holidays.country_holidays(country), "special_public_holidays", {}))


def year_plan(calendar: WorkingCalendar, year: int) -> list[CalendarDay]:
    """Every day of ``year`` the calendar treats unlike a plain Monday-Friday week, in
    date order: what to hold against the government's decree for that year."""
    cal = holidays.country_holidays(calendar.country, years=year, language="en_US")
    package = f"holidays {_PACKAGE_VERSION}"
    days: list[CalendarDay] = []
    day = date(year, 1, 1)
    while day.year == year:
        working = calendar.is_working_day(day)
        if working != (day.weekday() < 5):
            if day in calendar.extra_holidays:
                days.append(CalendarDay(day, False, "extra holiday", "catalog"))
            elif day in calendar.extra_workdays:
                days.append(CalendarDay(day, True, "extra working day", "catalog"))
            elif working:
                days.append(CalendarDay(day, True, "working day in exchange for a day off",
                                        package))
            else:
                days.append(CalendarDay(day, False, "; ".join(cal.get_list(day)), package))
        day += _ONE_DAY
    return days


def unconfirmed_years(calendar: WorkingCalendar, years: Iterable[int]) -> list[int]:
    """Those of ``years`` past the last one for which the holidays package lists a
    government decree (Tết bridge days, swapped Saturdays) that the catalog does not list
    as checked (``decree_checked``): their days off may be only the law's yearly holidays,
    and due dates may come a few working days early once the decree is out. A day of the
    year in ``extra_holidays`` confirms nothing: it may be the province's own closure
    (confirmed by it, a year whose decree nobody added went unwarned: found by a review)."""
    last = decrees_known_until(calendar.country)
    return [y for y in years if (last is None or y > last)
            and y not in calendar.decree_checked]


def decrees_known_until(country: str) -> int | None:
    """The last year for which the holidays package lists a government decree."""
    return max(_decree_years(country), default=None)


def unconfirmed_note(calendar: WorkingCalendar, year: int) -> str:
    """What an operator is told about a year ``unconfirmed_years`` returns."""
    last = decrees_known_until(calendar.country)
    known = f"up to {last}" if last is not None else "for no year"
    added = sorted(d for d in calendar.extra_holidays | calendar.extra_workdays
                   if d.year == year)
    adds = (f"the catalog adds {len(added)} day(s) of {year} of its own" if added
            else f"the catalog adds no day of {year}")
    return (f"{year}'s government decree is not in the calendar: holidays "
            f"{_PACKAGE_VERSION} lists {calendar.country} government decrees {known}, "
            f"{adds}, and decree_checked does not list {year}. When the decree on Tết and "
            "bridge days is out, add its days to extra_holidays and extra_workdays and the "
            f"year to decree_checked (`casebroker rules calendar --year {year}` lists what "
            "is counted now)")


#: how far ahead start-up and `rules check` look for unconfirmed years: a due date this far
#: off covers the longest processing times of the shipped catalog (30 working days, 45
#: calendar days) with room to spare
LOOK_AHEAD = timedelta(days=90)


def unconfirmed_ahead(calendar: WorkingCalendar, now: datetime) -> list[str]:
    """Notes on the years between ``now`` and ``LOOK_AHEAD`` later that no decree is known
    for (``unconfirmed_years``)."""
    return [unconfirmed_note(calendar, y) for y in _unconfirmed_ahead(calendar, now)]


def first_unconfirmed_ahead(calendar: WorkingCalendar, now: datetime) -> int:
    """The first of the years :func:`unconfirmed_ahead` warns of; 0: none."""
    return min(_unconfirmed_ahead(calendar, now), default=0)


def _unconfirmed_ahead(calendar: WorkingCalendar, now: datetime) -> list[int]:
    first, last = (calendar._to_wall(t).year for t in (now, now + LOOK_AHEAD))
    return unconfirmed_years(calendar, range(first, last + 1))
