"""DEADLINE WATCH: flags dossiers at risk or overdue and tells their agency and desk once.

Every ``interval_s`` one ledger transaction selects the open dossiers whose level can
rise now (not flagged and due within the at-risk margin, or flagged at risk and past
due; not those paused in time for a supplement: their clock stands still), through a
partial index, decides with the pure :func:`decide` which deserve a notice, raises their
``watch_level`` with an optimistic check (so two `casebroker run` processes never
both notify), adds the flag to the process-control history, and writes the notices
to ``watch_outbox``, all in that one transaction. Only after the commit are they
published, with publisher confirms; confirmed rows are marked. Rows left unconfirmed
(the process died, RabbitMQ was away) are published again, with the same
deterministic message ids, on the next start and after ``stale_after_s``.

A round decides by the time the status queue was last seen empty, and the process's own
status consumer holding nothing it took, not later: an update not applied yet (casebroker
was stopped, a backlog built up) may be the result that makes a dossier on time (the
status router goes by when it was sent), and a notice sent is sent for good. Right after
a start with a backlog, the first rounds decide nothing; updates that keep waiting for
:data:`CAUGHT_UP_LAG_S` hold the watch's heartbeat back, so that its alert says so.

A chain step due before its dossier is watched the same way by its own due date and
level (``step_due_at``, ``step_watch_level``, its own partial index): its agency alone
is told, since the citizen's due date has not moved; a hand-off starts the next step's
watch afresh, and a supplement that moves the step's due date likewise.

The watch runs in a thread of its own with its own blocking connection, so a slow
query never stalls the consumers' I/O loop and a failing tick never touches them.
Deadline notices are few (at most two per dossier and party), so waiting for each
confirm in turn costs nothing that matters.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import ChannelClosedByBroker, NackError, UnroutableError
from sqlalchemy.exc import DBAPIError

from broker import threads
from broker.amqp import (
    DETAIL_HEADER,
    ORIGINAL_EXCHANGE_HEADER,
    ORIGINAL_KEY_HEADER,
    REASON_HEADER,
    SOURCE_HEADER,
    amqp_urls,
    properties_for,
)
from broker.calendar import DurationUnit, WorkingCalendar
from broker.consumers.common import (
    Clock,
    EngineProvider,
    in_zone,
    notice_labels,
    to_agency,
    to_desk,
)
from broker.envelope import Outbound
from broker.errors import SettingError, without_values
from broker.ledger import Batch, Ledger, is_transient
from broker.lifecycle import State, day_start, late_from, paused_in_time
from broker.messages import AgencyNotice, DeskNotice, NoticeKind, utc_now
from broker.topology import Topology

log = logging.getLogger(__name__)

#: watch levels kept in ``dossiers.watch_level``; they only ever rise for one due date
NOTHING_SENT, AT_RISK, OVERDUE = 0, 1, 2
ACTOR = "deadline-watch"


#: how far the wall clock may run ahead of the monotonic clock between two rounds
CLOCK_JUMP_S = 120.0
#: how far this process's clock may be off the database's
CLOCK_SKEW_S = 120.0
#: status updates waiting longer than this (the status queue not seen empty since) hold
#: the watch's heartbeat back: notices are decided only up to when it was last empty
CAUGHT_UP_LAG_S = 600.0
#: attempts, a second apart, to mark a round's notices confirmed while the ledger is away
CONFIRM_TRIES = 10
#: while another `casebroker run` consumes the status queue too, notices are decided up
#: to this long before the queue was last seen caught up: what that process holds, taken
#: and not applied, this one cannot see, and a process that stops answering (frozen, its
#: host paused) holds it until RabbitMQ finds it gone by its heartbeats (30 s each; a
#: few missed) and gives it back to the queue. Deciding up to the last empty queue, a
#: watch told of lateness results a frozen peer held, sent in time (found by a review)
PEER_HOLD_S = 120.0


@dataclass(frozen=True)
class WatchSettings:
    """How often the watch looks and what counts as at risk."""

    interval_s: float = 60.0
    #: less working time than this left before the due date: at risk...
    at_risk_working_s: float = 8 * 3600.0
    #: ...or, for a dossier (a chain step) given less time, less than this share of the
    #: working time it was given: a certification due two working hours after it came
    #: is at risk 30 minutes before, not the moment it arrives
    at_risk_share: float = 0.25
    #: an overdue dossier's new appointment: this much working time after the notice
    extension_working_s: float = 8 * 3600.0
    #: unconfirmed notices older than this are published again
    stale_after_s: float = 120.0
    #: at most this many dossiers (and as many chain steps) flagged in one round, and
    #: candidates read this many at a time
    limit: int = 500

    def __post_init__(self) -> None:
        if not 0 < self.at_risk_share <= 1:
            raise ValueError(f"the at-risk share is a fraction above 0 and at most 1, "
                             f"not {self.at_risk_share}")

    @classmethod
    def from_env(cls) -> WatchSettings:
        """Settings from ``CASEBROKER_DEADLINE_*`` variables (hours are working hours);
        a value that is not a number, or out of range, is a :class:`SettingError` (the
        watch thread would fail every round on it, or die, while routing went on)."""
        def number(name: str, default: str, most: float) -> float:
            text = os.environ.get(name, default)
            try:
                value = float(text)
            except ValueError:
                raise SettingError(f"{name}={text!r} is not a number") from None
            if not 0 < value <= most:  # NaN and infinity fail this too
                raise SettingError(f"{name}={text!r}: a number above 0 and at most "
                                   f"{most:g}, please")
            return value

        hours = 10_000  # five years of working hours: more is a typing mistake
        return cls(
            interval_s=number("CASEBROKER_DEADLINE_INTERVAL_S", "60", 86_400),
            at_risk_working_s=number("CASEBROKER_DEADLINE_AT_RISK_HOURS", "8", hours) * 3600,
            at_risk_share=number("CASEBROKER_DEADLINE_AT_RISK_SHARE", "0.25", 1),
            extension_working_s=number("CASEBROKER_DEADLINE_EXTENSION_HOURS", "8",
                                       hours) * 3600)


def given_s(row: Mapping[str, Any], calendar: WorkingCalendar, *, step: bool = False
            ) -> float:
    """The working time a dossier was given by its plan (its steps' times together), or
    with ``step`` its current chain step. The plan, not the time from receipt to the due
    date: a supplement pause moves the due date, and the time it stood still was not
    given to anyone (counted in, it made a short dossier at risk on its return)."""
    if step:
        started = row.get("step_started") if row["step"] > 1 else row.get("received_at")
        return _planned_s(row["steps"][row["step"] - 1], row["step_due_at"], calendar,
                          _as_datetime(started))
    if len(row["steps"]) == 1:
        return _planned_s(row["steps"][0], row["due_at"], calendar, row.get("received_at"))
    return sum(_planned_s(plan, row["due_at"], calendar) for plan in row["steps"])


def _as_datetime(value: datetime | str | None) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _planned_s(plan: Mapping[str, Any], due: datetime, calendar: WorkingCalendar,
               start: datetime | None = None) -> float:
    """The working time ``plan`` gives. Calendar days give the working time from where
    they start (``start``: the receipt, or the step's hand-off) to where they end, moved
    past days off onto a working day, as their due date was set; counted back from the
    due date (a later step's, not begun), the days moved over were lost, and a pause's
    move changed what they gave (a review: at risk a day late)."""
    amount, unit = float(plan["amount"]), DurationUnit(plan["unit"])
    if unit == DurationUnit.WORKING_HOURS:
        return amount * 3600
    if unit == DurationUnit.WORKING_DAYS:
        return amount * calendar.office_hours.seconds_per_day
    if start is not None:
        return calendar.working_seconds_between(
            calendar.calendar_start(start),
            calendar.on_a_working_day(calendar.calendar_days_end(start, amount)))
    return calendar.working_seconds_between(due - timedelta(days=amount), due)


def level_for(row: Mapping[str, Any], now: datetime, calendar: WorkingCalendar,
              settings: WatchSettings, *, step: bool = False) -> int:
    """The watch level a dossier (with ``step``: its chain step, by the step's due date)
    deserves at ``now``: overdue once its due day is over (:func:`late_from`, as the
    report counts a result late), at risk while little of its time is left. A clock
    paused in time (:func:`paused_in_time`) stops at its pause; one paused later does not."""
    due = row["step_due_at" if step else "due_at"]
    paused = row["state"] == State.SUPPLEMENT_REQUESTED
    if paused and paused_in_time(row["paused_at"], due):
        return NOTHING_SENT  # its time left is frozen until the supplement comes
    if now >= late_from(due):
        return OVERDUE
    if paused:
        return NOTHING_SENT  # no pause recorded (an early version's row): frozen
    left_s = calendar.working_seconds_between(now, due)
    if left_s >= settings.at_risk_working_s:
        return NOTHING_SENT
    if left_s >= settings.at_risk_share * given_s(row, calendar, step=step):
        return NOTHING_SENT  # a short one: most of its little time is still ahead
    return AT_RISK


def decide(rows: Iterable[Mapping[str, Any]], now: datetime, calendar: WorkingCalendar,
           settings: WatchSettings, *, step: bool = False
           ) -> list[tuple[Mapping[str, Any], int]]:
    """(row, new level) for each dossier (with ``step``: each chain step, by its own due
    date and level) whose level must rise now."""
    level_key = "step_watch_level" if step else "watch_level"
    out = []
    for row in rows:
        level = level_for(row, now, calendar, settings, step=step)
        if level > row[level_key]:
            out.append((row, level))
    return out


def message_id(code: str, kind: NoticeKind, due_at: datetime, party: str) -> str:
    """Deterministic id of a deadline notice: one per dossier, kind, due date and party
    (``agency``, ``desk``, ``step<n>`` for chain step n's agency, ``agency<n>`` for the
    agency a hand-off gave the dossier at step n).

    The due date to the microsecond the ledger keeps (``20261209T020000Z``, or
    ``20261209T020000.400000Z`` when it has a fraction): a pause shorter than a working
    second moves it by less than a second, and its new notices must not take the ids
    of the old ones (desks would drop them as repeats).
    """
    due = due_at.astimezone(UTC)
    fraction = f".{due.microsecond:06d}" if due.microsecond else ""
    return f"{code}:{kind.value}:{due:%Y%m%dT%H%M%S}{fraction}Z:{party}"


def to_the_minute(at: datetime) -> datetime:
    """An appointment to the minute, as the citizen is given it (the watch's clock has
    microseconds)."""
    return at.replace(second=0, microsecond=0)


def apology(topology: Topology, row: Mapping[str, Any], now: datetime, appointment: datetime,
            reason: str) -> Outbound:
    """The return desk's apology for a late dossier, with its new appointment date.

    ``row`` holds the dossier's code, submission_id, return_desk_id, procedure_code, state,
    agency_id, received_at and due_at; the id is the same whoever sends it (watch or
    status router), so a desk never keeps two apologies for one due date.
    """
    notice = DeskNotice(
        notice=NoticeKind.OVERDUE_APOLOGY, dossier_code=row["code"],
        submission_id=row["submission_id"], desk_id=row["return_desk_id"],
        procedure_code=row["procedure_code"], state=int(row["state"]),
        agency_id=row["agency_id"], received_at=row["received_at"], due_at=appointment,
        reason=reason, issued_at=now)
    return to_desk(topology, notice,
                   message_id(row["code"], NoticeKind.OVERDUE_APOLOGY, row["due_at"], "desk"))


def _dossier_reason(level: int, due_at: datetime, now: datetime, calendar: WorkingCalendar
                    ) -> tuple[NoticeKind, str]:
    """The agency's notice kind and reason for a dossier at ``level``."""
    due_text = due_at.astimezone(calendar.tz).isoformat(timespec="minutes")
    if level == OVERDUE:
        return NoticeKind.OVERDUE, f"legal due date {due_text} has passed"
    left_h = max(0.0, calendar.working_seconds_between(now, due_at) / 3600)
    return NoticeKind.AT_RISK, f"due {due_text}: {left_h:.1f} working hours left"


def notices_for(topology: Topology, row: Mapping[str, Any], level: int, now: datetime,
                calendar: WorkingCalendar, appointment: datetime | None) -> list[Outbound]:
    """The agency's and the return desk's notice for a dossier reaching ``level``;
    ``appointment``: the new one an overdue dossier's apology gives (Form 04)."""
    code, due_at = row["code"], row["due_at"]
    agency_kind, reason = _dossier_reason(level, due_at, now, calendar)
    if level == OVERDUE:
        assert appointment is not None
        desk = apology(topology, row, now, appointment,
                       f"{reason}; new appointment "
                       f"{appointment.isoformat(timespec='minutes')}")
    else:
        desk = to_desk(topology, DeskNotice(
            notice=NoticeKind.AT_RISK, dossier_code=code, submission_id=row["submission_id"],
            desk_id=row["return_desk_id"], procedure_code=row["procedure_code"],
            state=int(row["state"]), agency_id=row["agency_id"],
            received_at=row["received_at"], due_at=due_at, reason=reason, issued_at=now),
            message_id(code, NoticeKind.AT_RISK, due_at, "desk"))
    agency = to_agency(topology, AgencyNotice(
        notice=agency_kind, dossier_code=code, agency_id=row["agency_id"],
        state=int(row["state"]), reason=reason + _to_keep(appointment, calendar),
        issued_at=now),
        message_id(code, agency_kind, due_at, "agency"))
    return [agency, desk]


def _to_keep(appointment: datetime | None, calendar: WorkingCalendar) -> str:
    """What an agency's overdue notice adds of the appointment the apology gave the
    citizen ("" without one): the agency is who must keep it. In words: AgencyNotice v1
    has no field for it, and a receiver of v1 may refuse a new one."""
    if appointment is None:
        return ""
    at = appointment.astimezone(calendar.tz).isoformat(timespec="minutes")
    return f"; the citizen was given a new appointment {at}: have the result ready by then"


def handed_on(topology: Topology, code: str, agency_id: str, step: int, state: int,
              level: int, due_at: datetime, now: datetime, calendar: WorkingCalendar,
              appointment: datetime | None = None) -> Outbound:
    """What the watch told the last step's agency of the dossier (at risk, overdue), for
    the agency a hand-off gives it to: the watch tells each level once, so the new one
    would never hear it. ``appointment``: the one the apology gave the citizen, which the
    new agency now has to keep."""
    kind, reason = _dossier_reason(level, due_at, now, calendar)
    return to_agency(topology, AgencyNotice(
        notice=kind, dossier_code=code, agency_id=agency_id, state=state,
        reason=f"{reason} (told to the agency before you){_to_keep(appointment, calendar)}",
        issued_at=now),
        message_id(code, kind, due_at, f"agency{step}"))


def step_notice(topology: Topology, row: Mapping[str, Any], level: int, now: datetime,
                calendar: WorkingCalendar) -> Outbound:
    """The notice to a chain step's agency that its step, due before the dossier, is at
    risk or overdue (the desk is told only of the dossier's own due date)."""
    step, due_at = row["step"], row["step_due_at"]
    of = f"step {step} of {len(row['steps'])}"
    due_text = due_at.astimezone(calendar.tz).isoformat(timespec="minutes")
    dossier_due = row["due_at"].astimezone(calendar.tz).isoformat(timespec="minutes")
    if level == OVERDUE:
        kind = NoticeKind.OVERDUE
        reason = f"{of} was due {due_text} and has passed; the dossier is due {dossier_due}"
    else:
        kind = NoticeKind.AT_RISK
        left_h = calendar.working_seconds_between(now, due_at) / 3600
        reason = (f"{of} due {due_text}: {left_h:.1f} working hours left; "
                  f"the dossier is due {dossier_due}")
    return to_agency(topology, AgencyNotice(
        notice=kind, dossier_code=row["code"], agency_id=row["agency_id"],
        state=int(row["state"]), reason=reason, issued_at=now),
        message_id(row["code"], kind, due_at, f"step{step}"))


class DeadlineWatch:
    """Flags at-risk and overdue dossiers in the ledger, then publishes their notices."""

    def __init__(self, engine: EngineProvider, ledger: Ledger, topology: Topology,
                 settings: WatchSettings | None = None, clock: Clock = utc_now,
                 metrics: Any = None, urls: Sequence[str] | None = None,
                 check_clock: bool | None = None,
                 holding: Callable[[], int] | None = None,
                 consuming: Callable[[], bool] | None = None) -> None:
        self.engine = engine
        self.ledger = ledger
        self.topology = topology
        self.settings = settings or WatchSettings()
        self.clock = clock
        self.metrics = metrics
        #: the nodes, tried in turn for each round's connection (pika's BlockingConnection
        #: takes the next when one cannot be reached), as the consumers' reconnects do
        self.params = [pika.URLParameters(u) for u in (urls or amqp_urls())]
        #: RabbitMQ validates user_id against the connection's user, like the consumers'
        self.user_id: str = self.params[0].credentials.username
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._republish_all = True  # on start: whatever a previous process left unconfirmed
        #: where the next round's page of leftovers starts (``Ledger.unconfirmed_notice_page``)
        self._leftovers_from = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: when the last round completed (or the watch started), on the monotonic clock
        self.last_round_at: float | None = None
        #: whether a round first checks the clock it decides by (:meth:`clock_problem`):
        #: by default when that clock is the system's (tests set theirs where they like)
        self.check_clock = clock is utc_now if check_clock is None else check_clock
        #: the clock's reading at the last round, and the monotonic clock's then
        self._last_clock: tuple[datetime, float] | None = None
        #: when a round last found no status update waiting (None: not since the start)
        self.caught_up_at: datetime | None = None
        #: how many status deliveries this process's consumer holds, taken and not acked
        #: (None: no consumer here); wired by broker.service
        self.holding = holding
        #: whether this process's status consumer consumes now (None: no consumer here)
        self.consuming = consuming
        if (holding is None) != (consuming is None):
            # with only one, this process's own consumer was counted as another's
            raise ValueError("holding and consuming tell of one status consumer: give both")
        #: how long before :attr:`caught_up_at` notices are decided: :data:`PEER_HOLD_S`
        #: if another process consumed the status queue then
        self._decide_lag = timedelta(0)
        self._started: float | None = None

    # one round ---------------------------------------------------------------------
    def flag(self, decide_at: datetime | None = None) -> list[Outbound]:
        """One ledger transaction: raise watch levels, record them, keep their notices.
        Levels are decided at ``decide_at`` (default: now; see :meth:`status_caught_up`),
        the notices dated now."""
        cal, now = self.engine().calendar, self.clock()
        at = now if decide_at is None else min(decide_at, now)
        out: list[Outbound] = []
        with self.ledger.batch() as batch:
            for row, level in self._due(batch, at, cal, step=False):
                out += self._flag_one(batch, in_zone(dict(row), cal.tz), level, now, cal)
            # read after those flags, a dossier's step row carries its new seq: both can
            # rise in one round
            for row, level in self._due(batch, at, cal, step=True):
                out += self._flag_step(batch, in_zone(dict(row), cal.tz), level, now, cal)
        return out

    def _due(self, batch: Batch, now: datetime, cal: WorkingCalendar, *, step: bool
             ) -> list[tuple[Mapping[str, Any], int]]:
        """Up to ``limit`` (row, level) whose level must rise now, overdue ones first.

        The ledger can only narrow the candidates down by due date: a short dossier due
        within the at-risk hours may still have most of its time ahead (the share of it
        it was given). Those are read past, a page at a time in due-date order, so that
        however many of them there are they never keep the others from their notices."""
        s = self.settings
        at_risk_before = cal.add_working_seconds(now, s.at_risk_working_s)
        found: list[tuple[Mapping[str, Any], int]] = []
        # overdue: due before today began (late_from); at risk: due within the hours
        for level, due_before in ((AT_RISK, day_start(now)), (NOTHING_SENT, at_risk_before)):
            after: tuple[datetime, int] | None = None
            while len(found) < s.limit:
                rows = batch.watch_range(level, due_before, now, s.limit, step=step,
                                         after=after)
                found += decide(rows, now, cal, s, step=step)
                if len(rows) < s.limit:
                    break
                after = (rows[-1]["step_due_at" if step else "due_at"], rows[-1]["id"])
        return found[:s.limit]

    def _flag_one(self, batch: Batch, row: Mapping[str, Any], level: int, now: datetime,
                  cal: WorkingCalendar) -> list[Outbound]:
        if not batch.raise_watch_level(row["code"], row["seq"], row["watch_level"], level, now):
            return []  # a status update or another watch got there first
        extension = self.settings.extension_working_s
        appointment = (to_the_minute(cal.add_working_seconds(now, extension))
                       if level == OVERDUE else None)
        notices = notices_for(self.topology, row, level, now, cal, appointment)
        kind = "overdue" if level == OVERDUE else "at_risk"
        detail = {"due_at": row["due_at"].isoformat(), "agency_id": row["agency_id"],
                  "desk_id": row["return_desk_id"]}
        if appointment is not None:  # what the apology promised, for the process-control sheet
            detail["appointment"] = appointment.isoformat()
        batch.add_event({
            "dossier_code": row["code"], "seq": row["seq"] + 1, "kind": kind,
            "state_from": int(row["state"]), "state_to": int(row["state"]), "actor": ACTOR,
            "from_agency": None, "to_agency": None, "message_id": notices[0].message_id,
            "detail": detail, "at": now})
        return batch.add_watch_notices(row["code"], notices, now)

    def _flag_step(self, batch: Batch, row: Mapping[str, Any], level: int, now: datetime,
                   cal: WorkingCalendar) -> list[Outbound]:
        if not batch.raise_watch_level(row["code"], row["seq"], row["step_watch_level"],
                                       level, now, step=True):
            return []
        # a step due earlier on its dossier's due day is late from the same midnight as
        # the dossier: the dossier's own overdue notice tells its agency, a second one
        # would say it again at the same moment. Its level rises all the same (read no more)
        notice = None if level == OVERDUE and late_from(row["step_due_at"]) == late_from(
            row["due_at"]) else step_notice(self.topology, row, level, now, cal)
        detail = {"step": row["step"], "due_at": row["step_due_at"].isoformat(),
                  "agency_id": row["agency_id"]}
        if notice is None:
            detail["told"] = "with the dossier's overdue notice"
        batch.add_event({
            "dossier_code": row["code"], "seq": row["seq"] + 1,
            "kind": "step_overdue" if level == OVERDUE else "step_at_risk",
            "state_from": int(row["state"]), "state_to": int(row["state"]), "actor": ACTOR,
            "from_agency": None, "to_agency": None,
            "message_id": None if notice is None else notice.message_id,
            "detail": detail, "at": now})
        return [] if notice is None else batch.add_watch_notices(row["code"], [notice], now)

    def clock_problem(self, now: datetime) -> str | None:
        """Why ``now`` is not to be trusted for this round, or None. A notice sent is sent
        for good (levels only rise): a clock that jumped ahead, set by hand or by a
        resumed virtual machine, would tell desks and citizens of a lateness that is not.
        So a round is skipped when the clock ran ahead of the monotonic clock since the
        last round by more than :data:`CLOCK_JUMP_S` (once: from then on, a clock put
        right stays right), and for as long as it is more than :data:`CLOCK_SKEW_S` off
        the database's (one of them is wrong: an operator must look)."""
        mono = time.monotonic()
        last, self._last_clock = self._last_clock, (now, mono)
        if last is not None:
            ahead = (now - last[0]).total_seconds() - (mono - last[1])
            if ahead > CLOCK_JUMP_S:
                return (f"the clock jumped {ahead:.0f} s ahead since the last round (set by "
                        "hand, a virtual machine resumed?); no notice is decided on it "
                        "until the next round")
        off = (now - self.ledger.database_now()).total_seconds()
        if abs(off) > CLOCK_SKEW_S:
            return (f"this process's clock is {off:+.0f} s off the database's: no notice is "
                    "decided until they agree within "
                    f"{CLOCK_SKEW_S:.0f} s (set both by NTP)")
        return None

    def status_caught_up(self, now: datetime) -> datetime | None:
        """Until when the status router has applied every update sent: ``now`` if the
        status queue holds none waiting and this process's status consumer holds none it
        took (:attr:`holding`), else when a round last found it so (None: not since this
        process started, or no status queue). An update not applied yet may be a result
        sent in time, or a supplement request that stopped the clock.

        The queue is read first: an update it hands over between the two reads is then
        seen held. Where this process has a status consumer (:attr:`consuming`), it must
        be consuming, and RabbitMQ must count it: RabbitMQ 3.10 answers 0 messages and 0
        consumers for a quorum queue whose leader it could not ask in time (no majority
        of its nodes, or a leader slow to answer), and a watch that took that 0 for an
        empty queue told of lateness results sent in time (found by a review). Another
        `casebroker run`'s consumer is not seen: while there is one, notices are decided
        :data:`PEER_HOLD_S` earlier."""
        # read first: a consumer that starts between the two is then counted, not missed
        own = self.consuming() if self.consuming is not None else None
        try:
            answer = self._open().queue_declare(self.topology.status_queue,
                                                passive=True).method
        except ChannelClosedByBroker as e:
            if e.reply_code != 404:
                raise
            self.close()
            log.warning("deadline watch: no status queue %s: status updates wait nowhere "
                        "to be applied, and no notice is decided until it is back "
                        "(`casebroker topology declare`)", self.topology.status_queue)
            return None
        ready, consumers = answer.message_count, answer.consumer_count
        held = self.holding() if self.holding is not None else 0
        doubt = None
        if own is False:
            doubt = "this process's status consumer is not consuming (starting, reconnecting)"
        elif own and consumers == 0:
            doubt = ("RabbitMQ counts no consumer on the status queue this process "
                     "consumes, so its count of waiting updates is no answer either (a "
                     "quorum queue whose leader it could not ask: a majority of its nodes "
                     "down, or a leader slow to answer)")
            log.warning("deadline watch: %s; no notice is decided on it", doubt)
        if ready == 0 and held == 0 and doubt is None:
            self.caught_up_at = now
            peers = consumers > (1 if own else 0)
            self._decide_lag = timedelta(seconds=PEER_HOLD_S if peers else 0)
        elif self.caught_up_at is None:
            since_start = time.monotonic() - (self._started or time.monotonic())
            say = log.warning if since_start > CAUGHT_UP_LAG_S else log.info
            say("deadline watch: status updates have waited unapplied since the start (%d "
                "in the queue, %d held here%s); no notice is decided until they are applied",
                ready, held, "" if doubt is None else f"; {doubt}")
        return None if self.caught_up_at is None else self.caught_up_at - self._decide_lag

    def tick(self) -> int:
        """Publish leftovers, flag what is due (:meth:`status_caught_up` permitting),
        refresh the gauges (overdue dossiers, the last prune); return notices confirmed.
        A round whose clock is not to be trusted (:meth:`clock_problem`) does none of it,
        says why and returns 0."""
        now = self.clock()
        if self.check_clock and (problem := self.clock_problem(now)) is not None:
            log.warning("deadline watch: round skipped: %s", problem)
            return 0
        # on start, all a previous process left, whatever its clock said (one ahead of
        # this one's dated them later); then those a round of this process left behind
        before = None if self._republish_all else now - timedelta(
            seconds=self.settings.stale_after_s)
        # a page at a time, on from where the last round's page ended
        leftovers, self._leftovers_from = self.ledger.unconfirmed_notice_page(
            before, self.settings.limit, self._leftovers_from)
        # after a failure, all of them: the pages after this one too (later rounds read
        # on from where it ended), not only those left past ``stale_after_s``
        self._republish_all = self._republish_all and self._leftovers_from != 0
        try:
            # notices decided before go out whatever the status queue holds
            confirmed = self.publish(leftovers)
            decide_at = self.status_caught_up(now)
            if decide_at is not None:
                confirmed += self.publish(self.flag(decide_at))
        finally:
            # no connection is kept between rounds: idle for a round's interval, it answers
            # no heartbeat, and RabbitMQ drops it (60 s), so that the next round's first
            # publish would fail, a round late; each round opens one afresh
            self.close()
        if self.metrics is not None:
            counts = dict.fromkeys(self.engine().agencies, 0)
            counts.update(self.ledger.overdue_by_agency(now))
            self.metrics.overdue(counts)
            self.metrics.pruned(self.ledger.last_prune())
        behind_s = (now - (decide_at or now)).total_seconds()
        if decide_at is None or behind_s > CAUGHT_UP_LAG_S:
            # the heartbeat stands still: the alert tells of notices decided late or not
            if decide_at is not None:
                log.warning("deadline watch: status updates have waited unapplied for "
                            "%.0f s; notices are decided only up to %s", behind_s,
                            decide_at.isoformat(timespec="seconds"))
            return confirmed
        if self.metrics is not None:
            self.metrics.watch_round()
        self.last_round_at = time.monotonic()
        return confirmed

    # publishing --------------------------------------------------------------------
    def publish(self, outbound: list[Outbound]) -> int:
        """Publish with confirms, mark the confirmed ones in the ledger; return their count."""
        if not outbound:
            return 0
        confirmed: list[str] = []
        sent: list[str] = []
        try:
            channel = self._open()
            for out in outbound:
                outcome = self._publish_one(channel, out)
                if outcome is not None:
                    confirmed.append(out.message_id)
                if outcome == "sent":
                    sent.append(out.message_id)
                elif outcome == "dead_lettered" and self.metrics is not None:
                    self.metrics.returned("watch", out.exchange)
        except BaseException:
            # RabbitMQ lost mid-round: what it confirmed is marked if the ledger can be
            # written now, once; the round's own error is the one raised
            self._publish_all_again()
            try:
                self.ledger.confirm_notices(confirmed, self.clock())
            except DBAPIError as e:
                log.warning("deadline watch: %d notices confirmed by RabbitMQ could not be "
                            "marked (%s); they go out again, under the same ids",
                            len(confirmed), without_values(e))
            raise
        self._confirm(confirmed)
        if len(confirmed) < len(outbound):
            # refused ones (nacked, or no queue took them): the pages go on from the
            # cursor, so that notices refused for good do not hold every later one back
            self._republish_all = True
        if self.metrics is not None:
            for mid in sent:
                self.metrics.deadline_notices_total.labels(*notice_labels(mid)).inc()
        return len(confirmed)

    def _publish_all_again(self) -> None:
        """After a failure, the next rounds publish every notice left unconfirmed, from
        the first page on (the one that failed among them), not only the stale ones."""
        self._republish_all, self._leftovers_from = True, 0

    def _confirm(self, message_ids: list[str]) -> None:
        """Mark the notices RabbitMQ confirmed. The ledger away for a moment (a restart
        of PostgreSQL) is waited out: :data:`CONFIRM_TRIES` attempts a second apart, each
        up to the driver's own timeout (5 s), or until the watch stops. Unmarked, the
        round's notices were all published again (found by a review: 1,000 after an
        8-second outage), which their receivers drop by id, but need not get."""
        for attempt in range(1, CONFIRM_TRIES + 1):
            try:
                self.ledger.confirm_notices(message_ids, self.clock())
                return
            except DBAPIError as e:
                if not is_transient(e) or attempt == CONFIRM_TRIES or self._stop.wait(1.0):
                    raise

    def _publish_one(self, channel: BlockingChannel, out: Outbound) -> str | None:
        """``sent``; ``dead_lettered`` (no queue took it: in ``dead.<agency|desk>`` to be
        replayed, counted as unroutable, not as a notice sent); None: nacked, or no queue
        took it and its dead-letter queue neither, to publish again."""
        try:
            channel.basic_publish(out.exchange, out.routing_key, out.body,
                                  properties_for(out, self.user_id), mandatory=True)
            return "sent"
        except NackError:
            log.warning("deadline notice %s nacked; will publish it again", out.message_id)
            self._refused()
            return None
        except UnroutableError:
            # like the consumers: an unroutable message is dead-lettered, never dropped
            source = "agency" if out.exchange == self.topology.agency_exchange else "desk"
            headers = {REASON_HEADER: "unroutable", SOURCE_HEADER: "watch",
                       DETAIL_HEADER: f"no queue for {out.routing_key} on {out.exchange}",
                       ORIGINAL_EXCHANGE_HEADER: out.exchange,
                       ORIGINAL_KEY_HEADER: out.routing_key}
            dead = Outbound(self.topology.dead_letter_exchange, source, out.message_id,
                            out.type, out.correlation_id, headers, out.body)
            try:
                channel.basic_publish(dead.exchange, dead.routing_key, dead.body,
                                      properties_for(dead, self.user_id), mandatory=True)
            except (NackError, UnroutableError):
                # dead.<source> is gone or refuses it too: kept unconfirmed, to publish
                # again; raised, it failed the round for every other party's notices
                # and every round after it, and no dossier was flagged until an operator
                # brought both queues back
                log.warning("deadline notice %s: no queue took it, nor dead.%s; will "
                            "publish it again", out.message_id, source)
                self._refused()
                return None
            return "dead_lettered"

    def _refused(self) -> None:
        """Count a notice RabbitMQ refused, kept to publish again (an alert's series)."""
        if self.metrics is not None:
            self.metrics.retry("watch", "refused")

    def _open(self) -> BlockingChannel:
        if self._channel is None or not self._channel.is_open:
            self.close()
            self._connection = pika.BlockingConnection(self.params)
            self._channel = self._connection.channel()
            self._channel.confirm_delivery()
        return self._channel

    def close(self) -> None:
        """Close the publishing connection (reopened on the next publish)."""
        conn, self._connection, self._channel = self._connection, None, None
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except Exception:  # already broken: nothing to close cleanly
                log.debug("closing the deadline watch connection failed", exc_info=True)

    # the thread --------------------------------------------------------------------
    def start(self) -> None:
        """Run :meth:`tick` every ``interval_s`` in a daemon thread until :meth:`stop`."""
        self._stop.clear()
        self._started = time.monotonic()
        if self.metrics is not None:  # a watch that never completes a round is seen too
            self.metrics.watch_round()
        self.last_round_at = time.monotonic()
        self._thread = threads.start(self._loop, "deadline-watch")

    @property
    def thread_lost(self) -> bool:
        """Started, not stopped, and its thread is gone (liveness, broker/health.py)."""
        return (self._thread is not None and not self._stop.is_set()
                and not self._thread.is_alive())

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as e:
                # the ledger or RabbitMQ is away, or a competing watch won a write race
                # (the driver's message can quote the rows' values: not logged)
                log.error("deadline watch round failed (%s); retrying in %.0fs",
                          without_values(e), self.settings.interval_s)
                self._publish_all_again()
                self.close()
            self._stop.wait(self.settings.interval_s)
        self.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread after its current round (thread-safe)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
