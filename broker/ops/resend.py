"""`casebroker dossier resend`: publish again what a deleted or purged queue lost.

RabbitMQ deletes a queue's messages with the queue. An agency queue deleted by hand (or
purged) while it held assignments leaves dossiers received, numbered and due, that their
agency never got; no dead letter records them, and the audit finds every proof in the
ledger. Once the queue is declared again, ``--agency`` publishes, for each open dossier
now with the agency (states 2, 4, 5, 6), the assignment the ledger recorded for its
current step, under the same message id: an agency that has it drops the copy, as it
drops any redelivery; and after it the ``supplemented`` notices of that step, which alone
carry the documents the citizen brought since and the due dates their pause moved.
Other notices sent to the agency since (a withdrawal refused, a deadline warning...)
are not sent again; ``dossier show`` gives a dossier's history.

A desk's notices are events, not one message that says it all: ``--desk ID --since
WHEN`` publishes again every notice the ledger recorded for that desk since then, in the
order recorded (receipts, status changes, results, refusals of its events, notices about
submissions held or refused at intake, the deadline watch's), under the same message
ids: a desk that has one drops the copy. WHEN is the last moment the desk is known to
have had its queue's messages (when it last consumed, or when the queue was deleted).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select

from broker.amqp_worker import properties_for
from broker.cli import DB_URL_HELP, moment_or_day
from broker.envelope import Outbound
from broker.ledger import (
    Ledger,
    dossiers,
    events,
    inbox,
    outbox,
    refusal_notice,
    refusals,
    watch_outbox,
)
from broker.lifecycle import State
from broker.messages import NoticeKind, shown_message_id
from broker.ops.progress import Progress
from broker.tables import is_pruned
from broker.topology import Topology

#: the states a dossier waits in with its agency
WITH_THE_AGENCY = (State.RECEIVED, State.PROCESSING, State.SUPPLEMENT_REQUESTED,
                   State.FINANCIAL_OBLIGATION)
#: dossiers looked up per query
CHUNK = 500


def assignments(ledger: Ledger, agency_id: str) -> tuple[list[Outbound], list[str]] | None:
    """The current assignment of every open dossier with ``agency_id``, as recorded, each
    followed by the supplements brought since (``supplemented`` notices); and the codes
    whose assignment the ledger no longer holds whole (pruned: none should be). None when
    no dossier was ever with that agency (a mistyped id)."""
    found: list[Outbound] = []
    missing: list[str] = []
    with ledger.read() as conn:
        rows = conn.execute(
            select(dossiers.c.code, dossiers.c.step)
            .where(dossiers.c.agency_id == agency_id,
                   dossiers.c.state.in_([int(s) for s in WITH_THE_AGENCY]))
            .order_by(dossiers.c.due_at, dossiers.c.code)).all()
    # none open: was the agency ever in this ledger (its updates, a hand-off to it)?
    if not rows and not ledger.ever_had(agency=agency_id):
        return None
    supplemented = f"%:{NoticeKind.SUPPLEMENTED.value}:%"
    with ledger.read() as conn:
        for i in range(0, len(rows), CHUNK):
            wanted = {f"{code}:assigned:{step}": code for code, step in rows[i:i + CHUNK]}
            # through each dossier's history: the outbox is indexed by the delivery that
            # published a row, and the assignment was published by one of its events'
            got: dict[str, Any] = {}
            later: dict[str, dict[str, Any]] = {}
            for r in conn.execute(
                    select(outbox, events.c.dossier_code, events.c.seq.label("event_seq"))
                    .select_from(events.join(
                        outbox, outbox.c.inbox_message_id == events.c.message_id))
                    .where(events.c.dossier_code.in_(list(wanted.values())), or_(
                        outbox.c.message_id.in_(list(wanted)),
                        and_(outbox.c.routing_key == agency_id,
                             outbox.c.type == "agency.notice",
                             outbox.c.message_id.like(supplemented))))):
                if r.message_id in wanted:
                    got[r.message_id] = r
                else:
                    later.setdefault(r.dossier_code, {})[r.message_id] = r
            for mid, code in wanted.items():
                assigned = got.get(mid)
                if assigned is None or is_pruned(bytes(assigned.body)):
                    missing.append(code)
                    continue
                found.append(_outbound(assigned))
                # and the supplements brought since it was assigned: their documents and
                # the due dates their pause moved are in those notices alone
                found += [_outbound(n) for n in sorted(
                    later.get(code, {}).values(), key=lambda n: (n.event_seq, n.id))
                    if n.event_seq > assigned.event_seq]
    return found, missing


def _outbound(r: Any) -> Outbound:
    """An outbox row as the message it was."""
    return Outbound(r.exchange, r.routing_key, r.message_id, r.type, r.correlation_id,
                    r.headers, bytes(r.body))


def desk_notices(ledger: Ledger, desk_id: str, since: datetime
                 ) -> tuple[list[Outbound], list[str]] | None:
    """Every notice to ``desk_id`` the ledger recorded since ``since``, each once, in the
    order recorded: those published with a delivery's effects (the outbox, by the time
    the delivery was processed), the deadline watch's (its own outbox) and those of
    submissions closed at intake (``refusals``: an operator's ``dead-letters refuse``, a
    withdrawal while held); and the ids of those whose body a prune erased. None when
    the ledger has nothing for the desk and no submission ever came to it nor was to be
    returned there (a mistyped id).

    The tables are read whole, filtered by desk: no index serves a desk (each would cost
    every write), and this is a rare repair."""
    timed: list[tuple[datetime, int, int, Outbound]] = []
    with ledger.read() as conn:
        for r in conn.execute(
                select(outbox, inbox.c.processed_at)
                .join(inbox, inbox.c.message_id == outbox.c.inbox_message_id)
                .where(outbox.c.routing_key == desk_id, outbox.c.type == "desk.notice",
                       inbox.c.processed_at >= since)):
            timed.append((r.processed_at, 0, r.id, Outbound(
                r.exchange, r.routing_key, r.message_id, r.type, r.correlation_id,
                r.headers, bytes(r.body))))
        for r in conn.execute(
                select(watch_outbox)
                .where(watch_outbox.c.routing_key == desk_id,
                       watch_outbox.c.type == "desk.notice",
                       watch_outbox.c.created_at >= since)):
            timed.append((r.created_at, 1, r.id, Outbound(
                r.exchange, r.routing_key, r.message_id, r.type, r.correlation_id, None,
                bytes(r.body))))
        desk_exchange = None
        for r in conn.execute(
                select(refusals).where(refusals.c.desk_id == desk_id,
                                       refusals.c.refused_at >= since)):
            desk_exchange = desk_exchange or _desk_exchange(conn, desk_id)
            timed.append((r.refused_at, 2, 0, refusal_notice(r._mapping, desk_exchange)))
    if not timed and not ledger.ever_had(desk=desk_id):
        return None
    found: list[Outbound] = []
    missing: list[str] = []
    seen: set[str] = set()
    for _, _, _, out in sorted(timed, key=lambda t: t[:3]):
        # one notice may be recorded twice: a withdrawal while held is in the outbox of
        # the desk's event and in its refusals row; the same receipt answers two copies
        if out.message_id in seen:
            continue
        seen.add(out.message_id)
        if is_pruned(out.body):
            missing.append(out.message_id)
            continue
        found.append(out)
    return found, missing


def _desk_exchange(conn: Any, desk_id: str) -> str:
    """The desk exchange a refusal's notice goes to: the one the desk's notices went to
    (the refusals table does not keep it); the current topology's when none did."""
    recorded = conn.execute(
        select(outbox.c.exchange).where(outbox.c.routing_key == desk_id,
                                        outbox.c.type == "desk.notice").limit(1)).scalar()
    return str(recorded) if recorded is not None else Topology.from_env().desk_exchange


def _cmd_resend(args: argparse.Namespace) -> int:
    from pika.exceptions import ChannelClosedByBroker, NackError, UnroutableError

    from broker.ops.queues import channel

    party, party_id = ("agency", args.agency) if args.agency else ("desk", args.desk)
    if party == "desk" and args.since is None:
        print("error: --desk needs --since: a desk's notices are events, and those it had "
              "consumed before its queue was lost must not all come again", file=sys.stderr)
        return 2
    if party == "agency" and args.since is not None:
        print("error: --since is for --desk: an agency gets the current assignment of "
              "each open dossier, whenever it was made", file=sys.stderr)
        return 2
    what = "assignment(s)" if party == "agency" else "notice(s)"
    ledger = Ledger(args.db_url, create=False)
    try:
        ledger.check_schema()
        listed = (assignments(ledger, party_id) if party == "agency"
                  else desk_notices(ledger, party_id, args.since))
    finally:
        ledger.dispose()
    if listed is None:
        print(f"error: no dossier in this ledger was ever with {party} {party_id!r} (ids "
              "are as the catalog spells them, capitals included): nothing to send",
              file=sys.stderr)
        return 1
    found, missing = listed
    if party == "agency" and any(o.type != "dossier.assigned" for o in found):
        what = "assignment(s) and supplement notice(s)"
    sent: list[str] = []
    if found and not args.dry_run:
        # each publish waits for its confirm: thousands of open dossiers take seconds
        progress = Progress(f"resend: {{done}} of {{total}} {what} sent")
        with channel() as ch:
            for out in found:
                try:
                    ch.basic_publish(out.exchange, out.routing_key, out.body,
                                     properties_for(out, None), mandatory=True)
                except (UnroutableError, NackError, ChannelClosedByBroker) as e:
                    why = ("no queue for it: `casebroker topology declare` first"
                           if isinstance(e, UnroutableError) else
                           f"no exchange {out.exchange!r}: `casebroker topology declare` "
                           "first" if getattr(e, "reply_code", 0) == 404
                           else f"refused by RabbitMQ ({e})")
                    print(f"error: {shown_message_id(out.message_id)}: {why}; {len(sent)} "
                          f"of {len(found)} sent", file=sys.stderr)
                    return 1
                sent.append(out.message_id)
                progress(len(sent), len(found))
    # as the dead-letters commands show them: a notice's id may be made from a desk's own
    # message id (held, refused), which may hold a name or an id number
    ids = [shown_message_id(o.message_id) for o in found]
    missing = [shown_message_id(m) for m in missing]
    if args.json:
        report: dict[str, Any] = {party: party_id, "dry_run": args.dry_run}
        if party == "desk":
            report["since"] = args.since.isoformat()
        listing = ({"assignments": [i for i, o in zip(ids, found, strict=True)
                                    if o.type == "dossier.assigned"],
                    "supplements": [i for i, o in zip(ids, found, strict=True)
                                    if o.type != "dossier.assigned"]}
                   if party == "agency" else {"notices": ids})
        print(json.dumps(report | listing | {"sent": len(sent), "missing": missing}))
    else:
        for mid in ids:
            print(f"  {mid}")
        verb = "would send" if args.dry_run else "sent"
        article = "an" if party == "agency" else "a"
        print(f"{verb} {len(ids)} {what} to {party_id} again, under their own ids "
              f"({article} {party} that has one drops the copy)")
    for item in missing:
        print(f"error: {item}: its {'assignment' if party == 'agency' else 'body'} is no "
              "longer in the ledger", file=sys.stderr)
    return 1 if missing else 0


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add `casebroker dossier resend`."""
    p = groups["dossier"].add_parser(
        "resend", help="publish again what a deleted or purged queue lost (same message "
        "ids): an agency's open dossiers' current assignments (and the supplements brought "
        "since), or a desk's notices since a moment")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--agency", help="the agency whose queue lost them")
    who.add_argument("--desk", help="the desk whose queue lost them (with --since)")
    p.add_argument("--since", type=moment_or_day, help="with --desk: the notices recorded "
                   "since then (a date: its midnight, Vietnam time; or an ISO 8601 time "
                   "with offset), when the desk last had its queue's messages")
    p.add_argument("--dry-run", action="store_true", help="list them, send nothing")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--db-url", help=DB_URL_HELP)
    p.set_defaults(handler=_cmd_resend)
