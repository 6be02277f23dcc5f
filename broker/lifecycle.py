"""Dossier states (the national portal's codes) and the one table of allowed transitions.

Everything that changes a dossier's state asks :func:`apply`; nothing else decides.
Overdue is not a state: it is derived from the due date.

DOMAIN.md lists the typical transitions (1→2|3; 2→4; 4→4; 4→5|6|8|9; 5→4 (or 2);
6→4|9; 9→10; open→7). A supplement brings a dossier back to the state its request found
it in (:data:`RESUMES_TO`): to received (2) when the agency asked on receipt, before
taking it up, so that it may still accept or refuse it; to processing (4) otherwise. The
table also takes what an agency does without a processing step between: 2→9, a dossier
settled on the day it is received (a certified copy); 2→3, the competent agency finding
on receipt that it cannot take the dossier (refused at intake, with the reason); 2→5,
documents missing found on receipt; a chain's step handed on from 2 (the step done on
receipt); and 5→8, 6→8, a dossier stopped because the documents or the fees never came.
Each is in :data:`TRANSITIONS`, and the agency is told what is allowed in each state
(:class:`~broker.messages.AgencyStatus`).
"""

from __future__ import annotations

from datetime import datetime, time, timedelta, tzinfo
from enum import IntEnum, StrEnum
from zoneinfo import ZoneInfo

from broker.errors import TransitionRefused


class State(IntEnum):
    """Dossier states with the national public-service portal's numeric codes."""

    SUBMITTED = 1
    RECEIVED = 2
    REFUSED = 3
    PROCESSING = 4
    SUPPLEMENT_REQUESTED = 5
    FINANCIAL_OBLIGATION = 6
    WITHDRAWN = 7
    STOPPED = 8
    RESOLVED = 9
    RETURNED = 10


class Event(StrEnum):
    """What can happen to a dossier."""

    RECEIVE = "receive"  # router: receipt issued, due date set
    REFUSE = "refuse"  # router (not open for boundary-free) or agency (rejected)
    ACCEPT = "accept"  # agency took it up
    PROCESS = "process"  # agency reports progress (also: obligation paid)
    REQUEST_SUPPLEMENT = "request_supplement"
    SUPPLEMENT = "supplement"  # desk brought the documents
    REQUIRE_PAYMENT = "require_payment"
    STOP = "stop"
    HAND_OFF = "hand_off"  # one chain step done, the next agency takes over
    RESOLVE = "resolve"  # last step done: result at the return desk
    WITHDRAW = "withdraw"
    RETURN = "return"  # result handed to the citizen


S, E = State, Event
OPEN_STATES = frozenset({S.SUBMITTED, S.RECEIVED, S.PROCESSING, S.SUPPLEMENT_REQUESTED,
                         S.FINANCIAL_OBLIGATION})
TERMINAL_STATES = frozenset({S.REFUSED, S.WITHDRAWN, S.STOPPED, S.RETURNED})
#: events that end one agency's step with its work done: the next agency takes over, or
#: the result is ready (the events record the step's own due date for the report)
STEP_ENDS = frozenset({E.HAND_OFF, E.RESOLVE})
#: states in which the agency works on the dossier (its clock runs)
WORKING_STATES = frozenset({S.RECEIVED, S.PROCESSING, S.FINANCIAL_OBLIGATION})

TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.SUBMITTED, E.RECEIVE): S.RECEIVED,
    (S.SUBMITTED, E.REFUSE): S.REFUSED,
    (S.RECEIVED, E.REFUSE): S.REFUSED,
    (S.RECEIVED, E.ACCEPT): S.PROCESSING,
    (S.RECEIVED, E.PROCESS): S.PROCESSING,
    (S.RECEIVED, E.REQUEST_SUPPLEMENT): S.SUPPLEMENT_REQUESTED,
    (S.RECEIVED, E.RESOLVE): S.RESOLVED,
    (S.RECEIVED, E.HAND_OFF): S.PROCESSING,
    (S.PROCESSING, E.PROCESS): S.PROCESSING,
    (S.PROCESSING, E.ACCEPT): S.PROCESSING,
    (S.PROCESSING, E.HAND_OFF): S.PROCESSING,
    (S.PROCESSING, E.REQUEST_SUPPLEMENT): S.SUPPLEMENT_REQUESTED,
    (S.PROCESSING, E.REQUIRE_PAYMENT): S.FINANCIAL_OBLIGATION,
    (S.PROCESSING, E.STOP): S.STOPPED,
    (S.PROCESSING, E.RESOLVE): S.RESOLVED,
    (S.SUPPLEMENT_REQUESTED, E.SUPPLEMENT): S.PROCESSING,
    (S.SUPPLEMENT_REQUESTED, E.STOP): S.STOPPED,
    (S.FINANCIAL_OBLIGATION, E.PROCESS): S.PROCESSING,
    (S.FINANCIAL_OBLIGATION, E.RESOLVE): S.RESOLVED,
    (S.FINANCIAL_OBLIGATION, E.HAND_OFF): S.PROCESSING,
    (S.FINANCIAL_OBLIGATION, E.STOP): S.STOPPED,
    (S.RESOLVED, E.RETURN): S.RETURNED,
    **{(s, E.WITHDRAW): S.WITHDRAWN for s in OPEN_STATES},
}


def refused_at_intake(state: State | int, seq: int) -> bool:
    """Whether a dossier was refused by the router on arrival (not open to boundary-free
    receipt from its desk): closed at its first event, never received, nothing ever due."""
    return state == State.REFUSED and seq == 1


def is_overdue(state: State | int, due_at: datetime, paused_at: datetime | None,
               now: datetime) -> bool:
    """Whether a dossier is late now: open past its due day (:func:`late_from`), unless
    its clock was paused in time (:func:`paused_in_time`: the due time moves when the
    supplement comes back). Overdue is not a state; the ledger's query for it is
    ``broker.ledger._overdue``."""
    return (State(state) in OPEN_STATES and late_from(due_at) <= now
            and not paused_in_time(paused_at, due_at))


def paused_in_time(paused_at: datetime | None, due_at: datetime) -> bool:
    """Whether a supplement was asked for while the dossier (or step) was not yet late:
    by the end of its due day (:func:`late_from`), as a result then would be on time. Its
    clock stops until the supplement comes, and the due date then moves by the time
    paused; asked for later, the lateness stands."""
    return paused_at is not None and paused_at < late_from(due_at)


#: whose days a result is judged by (DOMAIN.md: dates, not times): Vietnam's, one zone
#: for the whole country, whatever zone a report shows its period in
LEGAL_TIMEZONE = "Asia/Ho_Chi_Minh"
_LEGAL = ZoneInfo(LEGAL_TIMEZONE)


def day_start(at: datetime) -> datetime:
    """The first instant of ``at``'s day in Vietnam."""
    return datetime.combine(at.astimezone(_LEGAL).date(), time(), tzinfo=_LEGAL)


def late_from(due_at: datetime) -> datetime:
    """The first instant at which a dossier or a step due at ``due_at`` is late
    (DOMAIN.md: "late when it is still open after its due date, or finished after it"):
    the start of the day after its due day, in Vietnam. A result given on the due day
    after the due time is on time, as :func:`timeliness` and the report count it; the
    deadline watch, the late-result apology and the overdue counts go by the same
    instant, so no citizen is apologized to for a result the report calls on time."""
    return day_start(due_at + timedelta(days=1))


def timeliness(finished_at: datetime, due_at: datetime, tz: tzinfo) -> str:
    """``early``, ``on_time`` or ``late`` (DOMAIN.md: dates, not times, are compared):
    the local day a dossier or a step finished against its due day."""
    finished, due = finished_at.astimezone(tz).date(), due_at.astimezone(tz).date()
    return "late" if finished > due else "on_time" if finished == due else "early"


#: where a supplement resumes a dossier, by the state its request found it in; the table
#: gives processing (4) for one whose state then is not known (asked for before this was
#: recorded)
RESUMES_TO: dict[State, State] = {S.RECEIVED: S.RECEIVED, S.PROCESSING: S.PROCESSING}


def apply(state: State | int, event: Event, *, paused_from: State | int | None = None
          ) -> State:
    """The state after ``event``; raise TransitionRefused if the table forbids it.
    ``paused_from``: for a supplement, the state the request for it found the dossier in."""
    try:
        new = TRANSITIONS[(State(state), event)]
    except KeyError:
        raise TransitionRefused(int(state), event.value) from None
    if event == E.SUPPLEMENT and paused_from is not None:
        return RESUMES_TO.get(State(paused_from), new)
    return new


def allowed(state: State | int, event: Event) -> bool:
    """Whether the table allows ``event`` in ``state``."""
    return (State(state), event) in TRANSITIONS
