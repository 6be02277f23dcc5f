"""`casebroker dossier resend`: publish again the assignments an agency's queue lost.

RabbitMQ deletes a queue's messages with the queue. An agency queue deleted by hand (or
purged) while it held assignments leaves dossiers received, numbered and due, that their
agency never got; no dead letter records them, and the audit finds every proof in the
ledger. Once the queue is declared again, this command publishes, for each open dossier
now with the agency (states 2, 4, 5, 6), the assignment the ledger recorded for its
current step, under the same message id: an agency that has it drops the copy, as it
drops any redelivery. Notices sent to the agency since (a supplement, a withdrawal
refused...) are not sent again; ``dossier show`` gives a dossier's history.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sqlalchemy import or_, select

from broker.amqp_worker import properties_for
from broker.cli import DB_URL_HELP
from broker.envelope import Outbound
from broker.ledger import Ledger, dossiers, events, outbox
from broker.lifecycle import State
from broker.tables import is_pruned

#: the states a dossier waits in with its agency
WITH_THE_AGENCY = (State.RECEIVED, State.PROCESSING, State.SUPPLEMENT_REQUESTED,
                   State.FINANCIAL_OBLIGATION)
#: dossiers looked up per query
CHUNK = 500


def assignments(ledger: Ledger, agency_id: str) -> tuple[list[Outbound], list[str]] | None:
    """The current assignment of every open dossier with ``agency_id``, as recorded; and
    the codes whose assignment the ledger no longer holds whole (pruned: none should be).
    None when no dossier was ever with that agency (a mistyped id)."""
    found: list[Outbound] = []
    missing: list[str] = []
    with ledger.read() as conn:
        rows = conn.execute(
            select(dossiers.c.code, dossiers.c.step)
            .where(dossiers.c.agency_id == agency_id,
                   dossiers.c.state.in_([int(s) for s in WITH_THE_AGENCY]))
            .order_by(dossiers.c.due_at, dossiers.c.code)).all()
        # none open: was the agency ever in this ledger (its updates, a hand-off to it)?
        if not rows and conn.execute(select(events.c.dossier_code).where(or_(
                events.c.actor == agency_id, events.c.to_agency == agency_id)).limit(1)
                ).first() is None and conn.execute(select(dossiers.c.code).where(
                    dossiers.c.agency_id == agency_id).limit(1)).first() is None:
            return None
        for i in range(0, len(rows), CHUNK):
            wanted = {f"{code}:assigned:{step}": code for code, step in rows[i:i + CHUNK]}
            # through each dossier's history: the outbox is indexed by the delivery that
            # published a row, and the assignment was published by one of its events'
            got = {r.message_id: r for r in conn.execute(
                select(outbox).select_from(events.join(
                    outbox, outbox.c.inbox_message_id == events.c.message_id))
                .where(events.c.dossier_code.in_(list(wanted.values())),
                       outbox.c.message_id.in_(list(wanted))))}
            for mid, code in wanted.items():
                r = got.get(mid)
                if r is None or is_pruned(bytes(r.body)):
                    missing.append(code)
                    continue
                found.append(Outbound(r.exchange, r.routing_key, r.message_id, r.type,
                                      r.correlation_id, r.headers, bytes(r.body)))
    return found, missing


def _cmd_resend(args: argparse.Namespace) -> int:
    from pika.exceptions import ChannelClosedByBroker, NackError, UnroutableError

    from broker.ops.queues import channel

    ledger = Ledger(args.db_url, create=False)
    try:
        ledger.check_schema()
        listed = assignments(ledger, args.agency)
    finally:
        ledger.dispose()
    if listed is None:
        print(f"error: no dossier in this ledger was ever with agency {args.agency!r} (ids "
              "are as the catalog spells them, capitals included): nothing to send",
              file=sys.stderr)
        return 1
    found, missing = listed
    sent: list[str] = []
    if found and not args.dry_run:
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
                    print(f"error: {out.message_id}: {why}; {len(sent)} of {len(found)} "
                          "sent", file=sys.stderr)
                    return 1
                sent.append(out.message_id)
    codes = [o.message_id for o in found]
    if args.json:
        print(json.dumps({"agency": args.agency, "dry_run": args.dry_run,
                          "assignments": codes, "sent": len(sent), "missing": missing}))
    else:
        for mid in codes:
            print(f"  {mid}")
        verb = "would send" if args.dry_run else "sent"
        print(f"{verb} {len(codes)} assignment(s) to {args.agency} again, under their own "
              "ids (an agency that has one drops the copy)")
    for code in missing:
        print(f"error: {code}: its assignment is no longer in the ledger", file=sys.stderr)
    return 1 if missing else 0


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add `casebroker dossier resend`."""
    p = groups["dossier"].add_parser(
        "resend", help="publish again the current assignment of every open dossier with an "
        "agency (same message ids): after its queue was deleted or purged with them")
    p.add_argument("--agency", required=True, help="the agency whose queue lost them")
    p.add_argument("--dry-run", action="store_true", help="list them, send nothing")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--db-url", help=DB_URL_HELP)
    p.set_defaults(handler=_cmd_resend)
