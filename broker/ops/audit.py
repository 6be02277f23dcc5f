"""`casebroker audit`: reconcile the ledger with the queues and the desks' submissions.

A dossier is accounted for when the ledger holds the proof of every hand-off its
state implies (docs/RELIABILITY.md, "Audit"):

* the delivery that created it is in ``inbox`` (its first event's message id);
* its history is whole: events numbered 1..seq;
* unless refused at intake, its latest assignment ``<code>:assigned:<step>`` is in
  ``outbox``, published by one of the deliveries in its history (the outbox row is
  committed with the dossier, and the intake delivery is acked only once that message
  is confirmed, so it reached the agency's queue or will be published again on
  redelivery); a dossier refused at intake has ``<code>:refused`` instead;
* resolved (9) or returned (10): a ``result_ready`` notice for its return desk is in
  ``outbox``.

A submission a desk says it sent (``--submissions FILE``) is accounted for when it
is a dossier, or its delivery was dead-lettered, triaged or recorded as a duplicate
(inbox, or the body kept in outbox); one closed at intake opened no dossier, and is
counted in ``refused_from_triage`` (refused by an operator) or ``withdrawn_while_held``
(withdrawn by its desk while held, or before the router had it), by when it was closed,
for ``since``.
Messages still waiting in the intake or status queue, ready or held unacked by a router
(the management API counts those), are reported as ``pending``; run the audit again once
they drain.

An outbox row proves a message was published, not that it arrived: one for an agency or
a desk that RabbitMQ could not deliver (no queue; the receiver's delivery limit) waits
in ``dead.agency`` or ``dead.desk``. Their depth is ``undelivered``; it, like anything
unaccounted for or queues that could not be read, makes the exit status 1.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select

from broker.cli import (
    DB_URL_HELP,
    json_value,
    moment_or_day,
    rabbitmq_problem,
    submission_id_of,
)
from broker.ledger import Ledger, dossiers, events, inbox, outbox, refusals, touched_since
from broker.lifecycle import State
from broker.ops.progress import Progress
from broker.topology import DEAD_SOURCES, Topology

#: dossiers checked per round: memory stays bounded by this, not by the ledger's size
CHUNK = 10000
ProgressFn = Callable[[int, int], None]


def _dossier_problem(code: str, state: int, step: int, seq: int, n_events: int,
                     created_in_inbox: bool, published: set[str], results: set[str]
                     ) -> str | None:
    if not created_in_inbox:  # also when it has no first event at all
        return "creating delivery not in inbox"
    if n_events != seq:
        return f"history has {n_events} events, expected {seq}"
    if f"{code}:assigned:{step}" not in published and f"{code}:refused" not in published:
        return f"assignment {code}:assigned:{step} not in outbox"
    if state in (9, 10) and code not in results:
        return "result_ready notice not in outbox"
    return None


def _ledger_problems(conn: Connection, since: datetime | None = None,
                     progress: ProgressFn | None = None) -> tuple[int, list[dict[str, str]]]:
    """Check the dossiers (received since ``since``) a chunk at a time, in code order.

    A dossier's proofs are found through its own history: its events' message ids are
    the deliveries that changed it, and what each delivery published is in ``outbox``
    under that id. Per chunk, three queries walk indexes (a range of the events'
    ``(dossier_code, seq)``, the inbox's key, the outbox's ``inbox_message_id``), so
    time grows with the ledger and memory only with :data:`CHUNK`. With ``since``, the
    events and messages read are the period's dossiers' only: between two of its codes
    lie those of every dossier received before it (an agency's earlier days sort before
    its later ones), and a round of a week's audit took in, and kept, a year's.
    """
    problems: list[dict[str, str]] = []
    period = [] if since is None else [touched_since(since)]
    of_period = events if since is None else events.join(
        dossiers, and_(dossiers.c.code == events.c.dossier_code, *period))
    total = int(conn.execute(select(func.count()).select_from(dossiers).where(*period))
                .scalar_one())
    done, last = 0, ""
    while True:
        rows = conn.execute(
            select(dossiers.c.code, dossiers.c.state, dossiers.c.step, dossiers.c.seq)
            .where(dossiers.c.code > last, *period).order_by(dossiers.c.code)
            .limit(CHUNK)).all()
        if not rows:
            break
        first, last = rows[0].code, rows[-1].code
        in_range = events.c.dossier_code.between(first, last)
        n_events = {r.code: 0 for r in rows}
        created: set[str] = set()
        for code, seq, found in conn.execute(
                select(events.c.dossier_code, events.c.seq, inbox.c.message_id.is_not(None))
                .select_from(of_period.outerjoin(inbox, and_(
                    inbox.c.message_id == events.c.message_id, events.c.seq == 1)))
                .where(in_range)):
            if code in n_events:  # not the events of a dossier row deleted (tampered)
                n_events[code] += 1
                if seq == 1 and found:
                    created.add(code)
        published = {m for (m,) in conn.execute(
            select(outbox.c.message_id).select_from(of_period.join(
                outbox, outbox.c.inbox_message_id == events.c.message_id)).where(in_range))}
        results = {m.rsplit(":", 2)[0] for m in published if ":result_ready:" in m}
        for code, state, step, seq in rows:
            problem = _dossier_problem(code, state, step, seq, n_events[code],
                                       code in created, published, results)
            if problem:
                problems.append({"dossier_code": code, "problem": problem})
        done += len(rows)
        if progress is not None:
            progress(done, total)
    return done, problems


#: a line of ``--submissions`` that is no submission id and may be quoted: the characters
#: of UUIDs only, as many as one has at least (ids run together, or one mistyped)
_ID_DEBRIS = re.compile(r"[0-9A-Fa-f-]{32,}")


def _shown_line(line: str) -> str:
    """A line of ``--submissions`` that is no submission id, as the report quotes it:
    withheld unless it is made of ids gone wrong, since a desk's export may have put the
    applicant's name, id number or phone beside the id (or be a phone number alone)."""
    if _ID_DEBRIS.fullmatch(line):
        return line
    return (f"<{len(line)} characters withheld: not a submission id, and it may hold "
            "personal data>")


def _submission_problems(ledger: Ledger, conn: Connection, submission_ids: list[str]
                         ) -> list[dict[str, str]]:
    # a line that is no UUID (two ids run together, a header) is no submission the
    # contract allows: said so, rather than looked for; the others are looked for as the
    # ledger writes them (a desk's list may write them in capitals)
    canonical = {s: submission_id_of(s) for s in submission_ids}
    bad = [{"submission_id": _shown_line(s), "problem": "not a submission id (a UUID)"}
           for s, c in canonical.items() if c is None]
    submission_ids = list(dict.fromkeys(c for c in canonical.values() if c is not None))
    found = set(ledger.states_for_submissions(submission_ids, conn))
    rest = [s for s in submission_ids if s not in found]
    if not rest:
        return bad
    handled: set[str] = set()
    for i in range(0, len(rest), 500):
        chunk = rest[i:i + 500]
        rows = conn.execute(select(inbox.c.message_id).where(
            inbox.c.message_id.in_([f"submit:{s}" for s in chunk])))
        handled |= {m.removeprefix("submit:") for (m,) in rows}
        # closed at intake (refused from triage, withdrawn while held or before it came),
        # whatever message id the desk sent it under
        handled |= set(conn.execute(select(refusals.c.submission_id).where(
            refusals.c.submission_id.in_(chunk))).scalars())
    # dead letters and triage keep the body as sent: match desks that used other message
    # ids, by the id as the router reads it (a desk may write it in capitals)
    bodies = conn.execute(select(outbox.c.body).join(
        inbox, inbox.c.message_id == outbox.c.inbox_message_id).where(or_(
            inbox.c.outcome.like("dead:%"), inbox.c.outcome.like("triaged:%"))))
    for (body,) in bodies:
        try:
            sid = json.loads(bytes(body)).get("submission_id")
        except (ValueError, AttributeError):
            continue
        if isinstance(sid, str) and (read := submission_id_of(sid)) is not None:
            handled.add(read)
    return bad + [{"submission_id": s, "problem": "not in the ledger, dead letters or triage"}
                  for s in rest if s not in handled]


def _queues(topology: Topology) -> tuple[dict[str, int] | None, list[str] | None, str | None]:
    """Each queue's depth, and the message ids in dead.intake and dead.status that RabbitMQ
    itself dead-lettered at their delivery limit, with no reason of casebroker's: a delivery
    whose batch may have been recorded while its publishes were refused (a queue missing,
    the node's alarm), so that its desk has a receipt and its agency nothing, until it is
    replayed (under its own id: the inbox publishes what the batch recorded).

    Read under the operator lock: a dead-letters command holds what it reads unacked, and
    a depth read meanwhile would be short of it. Depths by passive declare; the two dead
    queues read as `dead-letters list` reads them (each message put back as a fresh copy,
    never returned, which a queue with a delivery limit counts). None for what could not
    be read, and why."""
    from broker.messages import shown_message_id
    from broker.ops.queues import OperatorBusy, channel, depth, read_back, routers_own

    names = {"intake": topology.intake_queue, "status": topology.status_queue,
             "triage": topology.triage_queue}
    names |= {f"dead.{s}": topology.dead_queue(s) for s in DEAD_SOURCES}
    try:
        with channel(lock=topology) as ch:
            depths = {k: depth(ch, q) for k, q in names.items()}
            found: list[str] = []
            for source in ("intake", "status"):
                if not depths[f"dead.{source}"]:
                    continue
                read = read_back(ch, topology, source)
                # as the dead-letters commands show (and take) them: a sender's id may
                # hold a name or an id number
                found += [shown_message_id(m.message_id) for m in read.taken
                          if not routers_own(m.headers)
                          and m.headers.get("x-first-death-reason") in (
                              "delivery_limit", b"delivery_limit")]
                if read.failed:
                    return depths, None, (f"dead.{source}: {len(read.failed)} message(s) not "
                                          "put back (left unacked: back in the queue)")
                if read.short is not None:
                    return depths, None, f"dead.{source}: {read.short}"
            return depths, found, None
    except OperatorBusy:
        return None, None, ("not read: an operator command holds the queues (dead-letters, "
                            "topology delete); run the audit again when it has ended")
    except Exception as e:  # unreachable, refused, a queue missing (404 closes the channel)
        return None, None, rabbitmq_problem(e)[:300]


def audit(ledger: Ledger, topology: Topology, submission_ids: list[str] | None = None,
          since: datetime | None = None, progress: ProgressFn | None = None) -> dict[str, Any]:
    """The audit report; ``unaccounted`` counts dossiers and submissions not accounted for,
    ``undelivered`` the messages for agencies and desks waiting in ``dead.agency`` and
    ``dead.desk`` (None, with ``queues_error``, when the queues could not be read).
    ``since``: check and count (``states``) only the dossiers received or changed since
    then (:func:`~broker.ledger.touched_since`)."""
    # one snapshot of the ledger for every query, so that routers writing meanwhile do
    # not make a dossier committed between two of them look incomplete
    with ledger.read(snapshot=True) as conn:
        n, dossier_problems = _ledger_problems(conn, since, progress)
        sub_problems = (_submission_problems(ledger, conn, submission_ids)
                        if submission_ids else [])
        states = ledger.count_by_state(conn, since=since)
        outcomes = ledger.count_inbox_outcomes(conn)
        period = [] if since is None else [refusals.c.refused_at >= since]
        closed = {int(state): int(n) for state, n in conn.execute(
            select(refusals.c.state, func.count()).where(*period)
            .group_by(refusals.c.state))}
    depths, exhausted, queues_error = _queues(topology)
    held, held_error = _held(topology) if depths is not None else (None, None)
    return {
        "dossiers": n, "since": since.isoformat() if since else None, "states": states,
        "refused_from_triage": closed.get(int(State.REFUSED), 0),
        "withdrawn_while_held": closed.get(int(State.WITHDRAWN), 0),
        "submissions_checked": len(submission_ids or []),
        "unaccounted": len(dossier_problems) + len(sub_problems),
        "unaccounted_dossiers": dossier_problems,
        "unaccounted_submissions": sub_problems,
        "undelivered": None if depths is None else depths["dead.agency"] + depths["dead.desk"],
        "inbox": outcomes,
        "queues": depths,
        "queues_error": queues_error,
        "pending": None if depths is None else (depths["intake"] + depths["status"]
                                                + sum((held or {}).values())),
        "held": held,
        "held_error": held_error,
        "exhausted": exhausted,
    }


def _held(topology: Topology) -> tuple[dict[str, int] | None, str | None]:
    """The intake and status deliveries their consumers (the routers) hold unacked, as
    the management API last counted them (every few seconds), and None with why when it
    cannot be asked. A passive declare counts only the messages ready: a router paused
    by a ledger outage holds up to its prefetch window (2,000) unacked, and those
    submissions, not in the ledger yet, read as lost under "pending 0"."""
    from broker.security import Management, ManagementError, management_url

    try:
        unacked = Management.from_url(management_url()).unacked()
    except ManagementError as e:
        return None, str(e)[:300]
    return {"intake": unacked.get(topology.intake_queue, 0),
            "status": unacked.get(topology.status_queue, 0)}, None


def clean(report: dict[str, Any]) -> bool:
    """Nothing unaccounted for, nothing undelivered, no delivery RabbitMQ set aside at its
    delivery limit, and the queues were read."""
    return (not report["unaccounted"] and report["undelivered"] == 0
            and report["exhausted"] == [])


def _cmd_audit(args: argparse.Namespace) -> int:
    topology = Topology.named(args.prefix)
    sids = None
    if args.submissions:
        try:
            # utf-8-sig: a list saved by a spreadsheet or Notepad starts with a byte-order
            # mark, and its first id was reported as no id, unaccounted (a review)
            text = sys.stdin.read() if args.submissions == "-" else Path(
                args.submissions).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            print(f"error: cannot read {args.submissions}: "
                  f"{getattr(e, 'strerror', None) or e}", file=sys.stderr)
            return 2
        # each id once, in the file's order, as the ledger writes it (a desk's list may
        # name one twice, or in capitals); a line that is no id stays as it is, reported
        sids = list(dict.fromkeys(submission_id_of(line.strip()) or line.strip()
                                  for line in text.splitlines() if line.strip()))
    ledger = Ledger(args.db_url, create=False)
    try:
        ledger.check_schema()  # a ledger from an earlier version: `casebroker ledger upgrade`
        report = audit(ledger, topology, sids, args.since,
                       Progress("audit: {done} of {total} dossiers checked"))
    finally:
        ledger.dispose()
    if args.json:
        print(json.dumps(report, default=json_value))
    else:
        _print_text(report)
    return 0 if clean(report) else 1


def _print_text(report: dict[str, Any]) -> None:
    """The report in lines, as `casebroker audit` prints it without --json."""
    queues = report["queues"]
    unknown = "unknown" if queues is None else None
    print(f"{report['dossiers']} dossiers, {report['submissions_checked']} submissions "
          f"checked: {report['unaccounted']} unaccounted, "
          f"{unknown or report['undelivered']} undelivered; pending "
          f"{unknown or report['pending']}; {report['refused_from_triage']} refused from "
          f"triage and {report['withdrawn_while_held']} withdrawn while held (no dossier)")
    if report["held"] is None and queues is not None:
        print(f"  pending counts only the messages ready: those the routers hold unacked "
              f"are not counted ({report['held_error']}; CASEBROKER_MANAGEMENT_URL)")
    elif report["pending"] and report["unaccounted_submissions"]:
        print("  a submission still pending is not in the ledger yet: run the audit "
              "again once pending is 0")
    for p in report["unaccounted_dossiers"]:
        print(f"  dossier {p['dossier_code']}: {p['problem']}")
    for p in report["unaccounted_submissions"]:
        print(f"  submission {p['submission_id']}: {p['problem']}")
    if queues is None:
        print(f"  queues unreadable: {report['queues_error']}")
        return
    if report["exhausted"] is None:
        print(f"  dead.intake and dead.status not checked: {report['queues_error']}")
    elif report["exhausted"]:
        ids = report["exhausted"]
        print(f"  {len(ids)} in dead.intake or dead.status that RabbitMQ set aside after "
              "their last allowed delivery, not judged by casebroker: its batch may be "
              "recorded with assignments or notices that never went out. Replay them "
              "(under their own ids: what was recorded is published): casebroker "
              f"dead-letters replay --id {' --id '.join(ids[:10])}"
              + (f" ... ({len(ids) - 10} more: dead-letters list)" if len(ids) > 10
                 else ""))
    if report["undelivered"]:
        print(f"  {queues['dead.agency']} in dead.agency, {queues['dead.desk']} in "
              "dead.desk: assignments or notices that did not reach their agency or desk "
              "(casebroker dead-letters list --queue agency|desk, then replay)")
    aside = {q: queues[q] for q in ("triage", "dead.intake", "dead.status") if queues[q]}
    if aside:
        print(f"  set aside: {', '.join(f'{n} in {q}' for q, n in aside.items())} "
              "(casebroker dead-letters list; then replay after a fix, refuse from "
              "triage what no rule will route, discard what nobody will replay)")


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add `casebroker audit`."""
    p = sub.add_parser("audit", help="reconcile the ledger with queues and submissions; "
                       "exit 1 when anything is unaccounted for or undelivered, or the "
                       "queues cannot be read")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--submissions", help="file of submission ids the desks sent, one a "
                   "line ('-': stdin)")
    p.add_argument("--since", type=moment_or_day, help="check only the dossiers received, "
                   "recorded or changed since then: a date (midnight, Vietnam time) or an "
                   "ISO 8601 time with offset")
    p.add_argument("--db-url", help=DB_URL_HELP)
    p.add_argument("--prefix", help="topology prefix (default: $CASEBROKER_PREFIX or cb)")
    p.set_defaults(handler=_cmd_audit)
