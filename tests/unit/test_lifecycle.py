"""Every allowed and every forbidden transition of the one table."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from broker.calendar import WorkingCalendar
from broker.consumers.deadlines import (
    AT_RISK,
    NOTHING_SENT,
    OVERDUE,
    WatchSettings,
    decide,
    given_s,
    level_for,
    message_id,
)
from broker.errors import StartupError, TransitionRefused
from broker.lifecycle import OPEN_STATES, TERMINAL_STATES, TRANSITIONS, Event, State, apply
from broker.messages import NoticeKind

S, E = State, Event
ALLOWED = {
    (S.SUBMITTED, E.RECEIVE): S.RECEIVED, (S.SUBMITTED, E.REFUSE): S.REFUSED,
    (S.RECEIVED, E.REFUSE): S.REFUSED, (S.RECEIVED, E.ACCEPT): S.PROCESSING,
    (S.RECEIVED, E.PROCESS): S.PROCESSING, (S.RECEIVED, E.REQUEST_SUPPLEMENT):
        S.SUPPLEMENT_REQUESTED,
    (S.RECEIVED, E.RESOLVE): S.RESOLVED, (S.RECEIVED, E.HAND_OFF): S.PROCESSING,
    (S.PROCESSING, E.PROCESS): S.PROCESSING, (S.PROCESSING, E.ACCEPT): S.PROCESSING,
    (S.PROCESSING, E.HAND_OFF): S.PROCESSING,
    (S.PROCESSING, E.REQUEST_SUPPLEMENT): S.SUPPLEMENT_REQUESTED,
    (S.PROCESSING, E.REQUIRE_PAYMENT): S.FINANCIAL_OBLIGATION,
    (S.PROCESSING, E.STOP): S.STOPPED, (S.PROCESSING, E.RESOLVE): S.RESOLVED,
    (S.SUPPLEMENT_REQUESTED, E.SUPPLEMENT): S.PROCESSING,
    (S.SUPPLEMENT_REQUESTED, E.STOP): S.STOPPED,
    (S.FINANCIAL_OBLIGATION, E.PROCESS): S.PROCESSING,
    (S.FINANCIAL_OBLIGATION, E.RESOLVE): S.RESOLVED,
    (S.FINANCIAL_OBLIGATION, E.HAND_OFF): S.PROCESSING,
    (S.FINANCIAL_OBLIGATION, E.STOP): S.STOPPED,
    (S.RESOLVED, E.RETURN): S.RETURNED,
    (S.SUBMITTED, E.WITHDRAW): S.WITHDRAWN, (S.RECEIVED, E.WITHDRAW): S.WITHDRAWN,
    (S.PROCESSING, E.WITHDRAW): S.WITHDRAWN, (S.SUPPLEMENT_REQUESTED, E.WITHDRAW): S.WITHDRAWN,
    (S.FINANCIAL_OBLIGATION, E.WITHDRAW): S.WITHDRAWN,
}


def test_table_is_exactly_the_documented_one() -> None:
    assert TRANSITIONS == ALLOWED


@pytest.mark.parametrize(("state", "event"), sorted(ALLOWED))
def test_allowed(state: State, event: Event) -> None:
    assert apply(state, event) == ALLOWED[(state, event)]


FORBIDDEN = sorted(set(itertools.product(State, Event)) - set(ALLOWED))


@pytest.mark.parametrize(("state", "event"), FORBIDDEN)
def test_forbidden(state: State, event: Event) -> None:
    with pytest.raises(TransitionRefused):
        apply(state, event)


def test_terminal_states_allow_nothing() -> None:
    for state, event in itertools.product(TERMINAL_STATES, Event):
        assert (state, event) not in TRANSITIONS


def test_withdraw_from_every_open_state_only() -> None:
    assert {s for (s, e) in TRANSITIONS if e == E.WITHDRAW} == set(OPEN_STATES)
    with pytest.raises(TransitionRefused):
        apply(S.RESOLVED, E.WITHDRAW)


# --- overdue is derived from the due date, not a state -------------------------------

VN = ZoneInfo("Asia/Ho_Chi_Minh")
CAL = WorkingCalendar()
DUE = datetime(2026, 12, 9, 9, 0, tzinfo=VN)  # Wed
SETTINGS = WatchSettings()  # at risk: under 8 working hours, or a quarter of the time given


def _vn(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=VN)


def _row(state: State = S.PROCESSING, paused_at: str | None = None,
         level: int = NOTHING_SENT) -> dict[str, Any]:
    return {"state": int(state), "due_at": DUE, "watch_level": level,
            "steps": [{"agency_id": "A", "amount": 10, "unit": "working_days"}],
            "paused_at": _vn(paused_at) if paused_at else None}


@pytest.mark.parametrize(
    ("now", "state", "paused_at", "expected"),
    [
        ("2026-12-07 09:00", S.PROCESSING, None, NOTHING_SENT),  # 16 working hours left
        ("2026-12-08 09:00", S.PROCESSING, None, NOTHING_SENT),  # exactly 8 h: not yet
        ("2026-12-08 09:30", S.RECEIVED, None, AT_RISK),  # 7.5 h
        ("2026-12-08 18:00", S.FINANCIAL_OBLIGATION, None, AT_RISK),  # 2 h
        ("2026-12-09 09:00", S.PROCESSING, None, AT_RISK),  # due now: 0 h left, not past
        # late is by dates (DOMAIN.md), as the report counts a result: on time all the due
        # day, overdue from the start of the next
        ("2026-12-09 09:01", S.PROCESSING, None, AT_RISK),
        ("2026-12-09 23:59", S.PROCESSING, None, AT_RISK),
        ("2026-12-10 00:00", S.PROCESSING, None, OVERDUE),
        ("2026-12-12 10:00", S.RECEIVED, None, OVERDUE),  # a Saturday: still late
        # a paused clock stops at its pause: never at risk while waiting for the desk...
        ("2026-12-20 10:00", S.SUPPLEMENT_REQUESTED, "2026-12-08 16:00", NOTHING_SENT),
        # ...also one asked for on its due day after its due time (not late yet: a
        # result then is on time)...
        ("2026-12-20 10:00", S.SUPPLEMENT_REQUESTED, "2026-12-09 10:00", NOTHING_SENT),
        # ...but late if its due day was over when paused
        ("2026-12-20 10:00", S.SUPPLEMENT_REQUESTED, "2026-12-10 00:00", OVERDUE),
    ],
)
def test_deadline_level(now: str, state: State, paused_at: str | None, expected: int) -> None:
    assert level_for(_row(state, paused_at), _vn(now), CAL, SETTINGS) == expected


def test_deadline_levels_only_rise() -> None:
    rows = [_row(level=NOTHING_SENT), _row(level=AT_RISK), _row(level=OVERDUE)]
    assert [(r["watch_level"], lvl) for r, lvl in decide(rows, _vn("2026-12-10 10:00"), CAL,
                                                         SETTINGS)] == [(0, 2), (1, 2)]
    assert [(r["watch_level"], lvl) for r, lvl in decide(rows, _vn("2026-12-08 16:00"), CAL,
                                                         SETTINGS)] == [(0, 1)]
    assert decide(rows, _vn("2026-12-01 10:00"), CAL, SETTINGS) == []


@pytest.mark.parametrize(
    ("amount", "unit", "due", "now", "expected"),
    [
        # a certification given 2 working hours is at risk for its last 30 minutes only
        (2, "working_hours", "2026-12-09 09:00", "2026-12-09 07:05", NOTHING_SENT),
        (2, "working_hours", "2026-12-09 09:00", "2026-12-09 08:30", NOTHING_SENT),
        (2, "working_hours", "2026-12-09 09:00", "2026-12-09 08:31", AT_RISK),
        # ...also when a supplement pause moved its due date: the pause was given to nobody
        (2, "working_hours", "2026-12-09 14:00", "2026-12-09 10:10", NOTHING_SENT),
        (2, "working_hours", "2026-12-09 14:00", "2026-12-09 13:31", AT_RISK),
        # one working day (8 h): its last 2
        (1, "working_days", "2026-12-09 17:00", "2026-12-09 14:59", NOTHING_SENT),
        (1, "working_days", "2026-12-09 17:00", "2026-12-09 15:01", AT_RISK),
        # 3 calendar days before Wed 09:00: Mon 09:00, so 6 + 8 + 2 = 16 working hours
        (3, "calendar_days", "2026-12-09 09:00", "2026-12-08 11:29", NOTHING_SENT),
        (3, "calendar_days", "2026-12-09 09:00", "2026-12-08 16:01", AT_RISK),
        # given 40 hours or more: the 8 working hours, as before
        (5, "working_days", "2026-12-09 09:00", "2026-12-08 09:01", AT_RISK),
    ],
)
def test_a_short_dossier_is_at_risk_for_the_last_share_of_its_time(
        amount: float, unit: str, due: str, now: str, expected: int) -> None:
    row = {**_row(), "due_at": _vn(due),
           "steps": [{"agency_id": "A", "amount": amount, "unit": unit}]}
    assert level_for(row, _vn(now), CAL, SETTINGS) == expected


@pytest.mark.parametrize(
    ("due", "now", "expected"),
    [
        # received Thu 09:00 with 3 calendar days: due Sun 09:00, moved to Mon 09:00. It
        # was given Thu 6 h + Fri 8 h + Mon 2 h = 16 h, so at risk for its last 4 h; counted
        # back from Monday, only Fri + Mon (8 h): at risk 2 h before, with 3 h left
        ("2026-12-14 09:00", "2026-12-11 13:59", NOTHING_SENT),  # 5 h left
        ("2026-12-14 09:00", "2026-12-11 16:00", AT_RISK),  # 3 h left
        # a due date a pause moved a day on: its plan gave the same 16 h (counted back
        # from the moved date, Mon 8 h + Tue 2 h, it was at risk from 2.5 h left, not 4:
        # a review), so at risk for its last 4 h
        ("2026-12-15 09:00", "2026-12-14 14:00", NOTHING_SENT),  # 5 h left
        ("2026-12-15 09:00", "2026-12-14 16:00", AT_RISK),  # 3 h left
    ],
)
def test_calendar_days_moved_past_days_off_were_given_the_days_moved_over(
        due: str, now: str, expected: int) -> None:
    row = {**_row(), "received_at": _vn("2026-12-10 09:00"), "due_at": _vn(due),
           "steps": [{"agency_id": "A", "amount": 3, "unit": "calendar_days"}]}
    assert CAL.due_at(row["received_at"], 3, "calendar_days") == _vn("2026-12-14 09:00")
    assert given_s(row, CAL) == 16 * 3600
    assert level_for(row, _vn(now), CAL, SETTINGS) == expected


def test_calendar_days_received_after_closing_were_given_the_office_time_to_their_end(
        ) -> None:
    # received Wed 9 Dec after closing, 3 calendar days count from Wed 17:00: Sat 12 Dec
    # 17:00, moved to Mon 14 Dec 17:00; given Thu, Fri and Mon. Counted from the next
    # working morning, the plan's end (Sun 07:00, so Mon 07:00) missed the due date, and
    # the time given was counted back from it, 3 days before: Mon alone, 8 h
    row = {**_row(), "received_at": _vn("2026-12-09 17:30"), "due_at": _vn("2026-12-14 17:00"),
           "steps": [{"agency_id": "A", "amount": 3, "unit": "calendar_days"}]}
    assert CAL.due_at(row["received_at"], 3, "calendar_days") == row["due_at"]
    assert given_s(row, CAL) == 24 * 3600


def test_a_chain_dossier_is_given_its_steps_times_together() -> None:
    row = {**_row(), "steps": [{"agency_id": "A", "amount": 2, "unit": "working_days"},
                               {"agency_id": "B", "amount": 4, "unit": "working_hours"}]}
    assert given_s(row, CAL) == 20 * 3600


def test_a_chain_step_is_given_what_its_plan_gives() -> None:
    def step(amount: float, unit: str) -> dict[str, Any]:
        return {"step": 2, "step_due_at": _vn("2026-12-14 09:00"),  # a Monday
                "steps": [{"agency_id": "A", "amount": 1, "unit": "working_days"},
                          {"agency_id": "B", "amount": amount, "unit": unit}]}

    assert given_s(step(4, "working_hours"), CAL, step=True) == 4 * 3600
    assert given_s(step(1.5, "working_days"), CAL, step=True) == 12 * 3600
    # handed on Thu 10 Dec 09:00, 2 calendar days end Sat 09:00, moved to Mon 09:00: Thu
    # 6 h, Fri 8 h and Mon 2 h. Counted back from Monday, Sat and Sun alone: 2 h, and the
    # step was told at risk with half an hour left (a review)
    handed_on = {**step(2, "calendar_days"), "step_started": "2026-12-10T09:00:00+07:00"}
    assert given_s(handed_on, CAL, step=True) == 16 * 3600
    # a step whose start is not known (handed on before casebroker kept it): 3 calendar
    # days counted back from Monday 09:00, from Friday 09:00, so Friday's 6 h and Monday's 2
    assert given_s(step(3, "calendar_days"), CAL, step=True) == 8 * 3600
    row = {**_row(), **step(4, "working_hours"), "step_watch_level": NOTHING_SENT}
    assert decide([row], _vn("2026-12-14 08:01"), CAL, SETTINGS, step=True) == [
        (row, AT_RISK)]  # 59 minutes left of 4 hours
    assert decide([row], _vn("2026-12-14 07:59"), CAL, SETTINGS, step=True) == []


@pytest.mark.parametrize(("name", "value", "said"), [
    ("CASEBROKER_DEADLINE_AT_RISK_HOURS", "eight", "CASEBROKER_DEADLINE_AT_RISK_HOURS='eight' "
                                                   "is not a number"),
    ("CASEBROKER_DEADLINE_INTERVAL_S", "0", "CASEBROKER_DEADLINE_INTERVAL_S='0': a number "
                                             "above 0 and at most 86400, please"),
    # the watch thread died on these, or failed every round, while routing went on
    ("CASEBROKER_DEADLINE_INTERVAL_S", "inf", "CASEBROKER_DEADLINE_INTERVAL_S='inf': a "
                                               "number above 0 and at most 86400, please"),
    ("CASEBROKER_DEADLINE_AT_RISK_HOURS", "nan", "CASEBROKER_DEADLINE_AT_RISK_HOURS='nan': "
                                                 "a number above 0 and at most 10000, please"),
    ("CASEBROKER_DEADLINE_EXTENSION_HOURS", "1e300", "CASEBROKER_DEADLINE_EXTENSION_HOURS="
                                                     "'1e300': a number above 0 and at most "
                                                     "10000, please"),
    ("CASEBROKER_DEADLINE_AT_RISK_SHARE", "25", "CASEBROKER_DEADLINE_AT_RISK_SHARE='25': a "
                                                 "number above 0 and at most 1, please"),
])
def test_watch_settings_from_the_environment_say_what_is_wrong(
        monkeypatch: pytest.MonkeyPatch, name: str, value: str, said: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(StartupError) as e:
        WatchSettings.from_env()
    assert str(e.value) == said


def test_deadline_notice_ids_are_deterministic_per_due_date_and_party() -> None:
    ids = {message_id("X-261125-0001", kind, due, party)
           for kind in (NoticeKind.AT_RISK, NoticeKind.OVERDUE)
           for due in (DUE, DUE.replace(hour=10)) for party in ("agency", "desk")}
    assert len(ids) == 8
    assert message_id("X-261125-0001", NoticeKind.AT_RISK, DUE, "desk") == \
        "X-261125-0001:at_risk:20261209T020000Z:desk"


def test_deadline_notice_ids_differ_for_due_dates_less_than_a_second_apart() -> None:
    moved = DUE + timedelta(milliseconds=400)  # a pause of 0.4 working seconds
    assert message_id("X-261125-0001", NoticeKind.AT_RISK, moved, "agency") == \
        "X-261125-0001:at_risk:20261209T020000.400000Z:agency"
    assert message_id("X-261125-0001", NoticeKind.AT_RISK, DUE + timedelta(microseconds=1),
                      "agency") != message_id("X-261125-0001", NoticeKind.AT_RISK, DUE, "agency")


def test_what_the_contract_tells_integrators_is_the_transition_table() -> None:
    """AgencyStatus and the desk events' docs (asyncapi) list what each state allows:
    they must say what TRANSITIONS says, for a chain step's resolve as for the last's.
    State 1 is the router's alone (a dossier reaches an agency received)."""
    import re

    from broker.consumers.status import STATUS_EVENTS
    from broker.messages import (
        AgencyStatus,
        DossierReturned,
        DossierSupplemented,
        DossierWithdrawn,
    )

    text = " ".join((AgencyStatus.__doc__ or "").split())
    documented = {name: allowed.split(", ") for name, allowed in re.findall(
        r"- (\w+) \(\d+\): ([a-z_, ]+?)(?= \(| - |$)", text)}
    assert documented and "any other state: nothing" in text
    for state in set(State) - {State.SUBMITTED}:
        for resolve in (Event.RESOLVE, Event.HAND_OFF):
            allowed = [s.value for s, e in STATUS_EVENTS.items() if (
                state, resolve if e == Event.RESOLVE else e) in TRANSITIONS]
            assert allowed == documented.get(state.name.lower(), []), state
    for event, model in ((Event.RETURN, DossierReturned),
                         (Event.SUPPLEMENT, DossierSupplemented),
                         (Event.WITHDRAW, DossierWithdrawn)):
        said = {int(n) for n in re.findall(r"\((\d+)\)", model.__doc__ or "")}
        assert said == {int(s) for s in State if (s, event) in TRANSITIONS}, model


@pytest.mark.parametrize(("paused_from", "back"), [
    (State.RECEIVED, State.RECEIVED), (State.PROCESSING, State.PROCESSING),
    (None, State.PROCESSING),  # asked for before the state was recorded: as before
])
def test_a_supplement_resumes_where_its_request_found_the_dossier(
        paused_from: State | None, back: State) -> None:
    assert apply(State.SUPPLEMENT_REQUESTED, Event.SUPPLEMENT, paused_from=paused_from) == back


def test_where_a_dossier_paused_from_changes_no_other_transition() -> None:
    assert apply(State.PROCESSING, Event.RESOLVE, paused_from=State.RECEIVED) == State.RESOLVED
    with pytest.raises(TransitionRefused):
        apply(State.PROCESSING, Event.SUPPLEMENT, paused_from=State.RECEIVED)
