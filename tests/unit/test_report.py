"""The report's counting rules on rows made here: local days, pauses, the groups."""

from __future__ import annotations

from datetime import UTC, date, datetime
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

from broker.ops.report import Tally, format_report, quarter_start, tally

VN = ZoneInfo("Asia/Ho_Chi_Minh")
DUE = datetime(2026, 11, 26, 2, 0, tzinfo=UTC)  # 09:00 on 26 November in Vietnam
NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)


def _row(code: str = "T.UBND.A-261125-0001", state: int = 9, **values: Any) -> Any:
    row = {"code": code, "procedure_code": "1.001193", "intake_desk_id": "T.MC.B",
           "channel": "in_person", "state": state, "seq": 3, "boundary_free": True,
           "due_at": DUE, "finished_at": None, "paused_at": None, "satisfaction": None,
           "documents": [{"name": "to-khai.pdf"}], "results": None}
    return SimpleNamespace(**{**row, **values})


def test_on_time_is_judged_on_vietnamese_days_not_utc_ones() -> None:
    # 17:30 UTC on the due day is 00:30 the next day in Vietnam: a day late
    late = _row(finished_at=datetime(2026, 11, 26, 17, 30, tzinfo=UTC))
    on_time = _row(finished_at=datetime(2026, 11, 26, 16, 30, tzinfo=UTC))  # 23:30 local
    early = _row(finished_at=datetime(2026, 11, 25, 16, 59, tzinfo=UTC))
    total, _ = tally([late, on_time, early], None, VN, NOW)
    assert (total.early, total.on_time, total.late) == (1, 1, 1)
    assert total.satisfied == 2 and total.shares()["on_time_share"] == round(2 / 3, 4)


def test_an_open_dossier_is_overdue_unless_its_clock_was_paused_in_time() -> None:
    rows = [_row(state=4), _row(state=5, paused_at=DUE),
            _row(state=5, paused_at=datetime(2026, 11, 27, tzinfo=UTC)),
            _row(state=2, due_at=datetime(2026, 12, 1, tzinfo=UTC))]
    total, _ = tally(rows, None, VN, NOW)
    assert (total.open, total.overdue) == (4, 2)


def test_an_open_dossier_is_overdue_from_the_day_after_its_due_day_in_vietnam() -> None:
    # DOMAIN.md: late "when it is still open after its due date": a result given that
    # evening counts on time, so the dossier open then is not yet overdue either
    due = datetime(2026, 11, 29, 1, 0, tzinfo=UTC)  # 08:00 on 29 November in Vietnam
    open_row = _row(state=4, due_at=due)
    for now, overdue in ((datetime(2026, 11, 29, 16, 59, tzinfo=UTC), 0),  # 23:59 local
                         (datetime(2026, 11, 29, 17, 0, tzinfo=UTC), 1)):  # 00:00 the 30th
        total, _ = tally([open_row], None, VN, now)
        assert (total.open, total.overdue, total.satisfied) == (1, overdue, 1 - overdue)


def test_refusals_at_intake_are_not_received_and_rejections_after_receipt_are() -> None:
    rows = [_row(state=3, seq=1), _row(state=3, seq=2), _row(state=7), _row(state=8),
            _row(state=10, finished_at=DUE, satisfaction=1, channel="online",
                 boundary_free=False)]
    total, _ = tally(rows, None, VN, NOW)
    assert (total.refused_at_intake, total.received, total.rejected, total.withdrawn,
            total.stopped) == (1, 4, 1, 1, 1)
    # satisfaction over all received (DOMAIN.md): the rejected, withdrawn and stopped ones
    # ended without delay; the one rated 1 was dissatisfied
    assert (total.rated, total.satisfied, total.online, total.boundary_free) == (1, 3, 1, 3)
    shares = total.shares()
    assert shares["online_share"] == 0.25 and shares["satisfaction_share"] == 0.75


def test_satisfaction_counts_every_dossier_received_and_delay_wherever_it_is() -> None:
    late_end = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)  # the day after the due day
    rows = [_row(state=9, finished_at=DUE),                        # in time
            _row(state=4),                                         # open, overdue now
            _row(state=2, due_at=datetime(2026, 12, 1, tzinfo=UTC)),  # open, in time
            _row(state=3, seq=4, finished_at=late_end),            # rejected a day late
            _row(state=8, finished_at=DUE)]                        # stopped in time
    total, _ = tally(rows, None, VN, NOW)
    assert (total.received, total.resolved, total.satisfied) == (5, 1, 3)
    assert total.shares()["satisfaction_share"] == 0.6  # was 1 of 1 resolved: 1.0


def test_digitized_records_are_over_received_and_digitized_results_over_resolved() -> None:
    rows = [_row(state=9, finished_at=DUE, results=[{"name": "giay-khai-sinh.pdf"}]),
            _row(state=10, finished_at=DUE, documents=[]),  # paper in, paper out
            _row(state=4, documents=2),      # pruned: the stub kept the count
            _row(state=4, documents=None),   # pruned before the count was kept
            _row(state=3, seq=1, results=[{"name": "x"}])]  # refused at intake: not counted
    total, _ = tally(rows, None, VN, NOW)
    assert (total.received, total.digitized, total.resolved, total.results_digitized) == (
        4, 2, 2, 1)
    shares = total.shares()
    assert (shares["digitized_share"], shares["results_digitized_share"]) == (0.5, 0.5)
    assert Tally().shares()["results_digitized_share"] is None  # nothing resolved


def test_groups_by_the_unit_that_numbered_the_dossier() -> None:
    rows = [_row(code="T.UBND.A-261125-0001", state=2), _row(code="T.SO.TP-261125-0001",
                                                             state=4),
            _row(code="T.SO.TP-261125-0002", state=2, intake_desk_id="T.CENTRE")]
    total, by_agency = tally([*rows], "agency", VN, NOW)
    assert {k: t.received for k, t in by_agency.items()} == {"T.SO.TP": 2, "T.UBND.A": 1}
    _, by_desk = tally(rows, "desk", VN, NOW)
    assert list(by_desk) == ["T.CENTRE", "T.MC.B"]
    text = format_report({"from": "2026-11-25", "to": "2026-11-25", "tz": "Asia/Ho_Chi_Minh",
                          "as_of": "2026-11-29T10:00:00+07:00", "by": "agency",
                          "total": {**total.as_dict(), "refused_from_triage": 0},
                          "groups": {k: t.as_dict() for k, t in by_agency.items()}})
    assert text.splitlines()[3].split()[:2] == ["T.SO.TP", "2"]


def test_the_default_period_starts_with_the_quarter() -> None:
    assert quarter_start(date(2026, 11, 29)) == date(2026, 10, 1)
    assert quarter_start(date(2026, 3, 31)) == date(2026, 1, 1)
    assert quarter_start(date(2026, 4, 1)) == date(2026, 4, 1)
