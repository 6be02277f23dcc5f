"""`casebroker ledger prune`: erase the personal data of what closed long enough ago.

The ledger keeps each dossier's submission as its desk sent it (the applicant's name, id
number, phone, address) and every message published for it, among them the assignments
that carried the submission to agencies; dead letters and triage copies keep whatever
their sender sent. Once a dossier is closed (refused, withdrawn, stopped or returned) its
hand-offs were confirmed and its deliveries acked before it could close, and none of that
personal data is needed any more. ``prune`` puts a stub (:func:`broker.tables.pruned_stub`:
when, a SHA-256 digest, and the ids the audit and the duplicate check use) in its place and
keeps every row, code, state, time and message id:

* dossiers closed (state 3, 7, 8 or 10) before the cutoff: ``dossiers.submission``, whose
  stub keeps the digest of its values (:func:`broker.consumers.router.submission_digest`,
  so that a copy sent again is still told from another dossier under the same id) and
  how many documents it had (for the report's digitized share), and the
  ``dossier.assigned`` bodies in ``outbox``; the documents the citizen brought later (a
  supplement: the flags' ``supplements``, then how many, and the bodies of the agencies'
  notices that carried them) and the results the agencies sent (the flags' ``results``,
  then how many, and the bodies of the desks' notices that carried them); in the events,
  the documents' names (then how many);
* dead letters' and triage copies' bodies in ``outbox`` processed before the cutoff
  (the stub keeps the submission id, for ``audit --submissions``, and the schema);
* refusals at intake made before the cutoff: ``refusals.submission``; and the reason a
  desk gave for withdrawing a submission that never came (``early_withdrawals``).

Desk notices, the events (the process-control sheet) and deadline notices carry codes,
states, dates and reasons, and are kept (free text as written: docs/RELIABILITY.md). A
pruned body is never published again: a redelivery of its message, long acked, re-sends
the rest (:meth:`Batch.seen`).

Each completed run is a ``prunes`` row (cutoff, who, counts); the next run starts at its
cutoff, so a nightly run reads one day's closings. A run cut short is redone from the last
completed one; rows pruned already are stubs and are passed over. It may run beside
`casebroker run`: each chunk of dossiers is a short transaction of its own.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, update

from broker.amqp_worker import REASON_HEADER
from broker.cli import BY_MAX, DB_URL_HELP, at_least, json_value, system_user, words
from broker.consumers.router import stored_submission, submission_digest
from broker.ledger import (
    SET_ASIDE,
    Ledger,
    dossiers,
    early_withdrawals,
    events,
    inbox,
    outbox,
    prunes,
    refusals,
)
from broker.lifecycle import TERMINAL_STATES
from broker.ops.progress import Progress, term_as_interrupt
from broker.tables import (
    APPLICANT,
    DOCUMENTS,
    RESULTS,
    SUPPLEMENTS,
    VALUES_DIGEST,
    is_pruned,
    pruned_body,
    pruned_stub,
)

#: the shortest retention `prune` accepts: a closed dossier's messages were confirmed
#: before it closed, but audits and a desk's questions about a dossier just returned
#: need its data for a while
MIN_KEEP_DAYS = 7
#: the longest: a century (a cutoff before year 1 ended in a traceback: a review)
MAX_KEEP_DAYS = 36_500
#: dossiers (or set-aside deliveries, or refusals) per transaction
CHUNK = 500


@dataclass
class Pruned:
    """What a run erased (or, dry, would erase)."""

    cutoff: datetime
    since: datetime | None
    dossiers: int = 0
    bodies: int = 0
    refusals: int = 0


class PruneCutShort(Exception):
    """A run stopped part way (Ctrl-C, SIGTERM, the ledger away): ``done`` is what its
    chunks erased and committed before ``error``; the run is not recorded in ``prunes``
    (the next starts from the last completed one and passes over what this one erased)."""

    def __init__(self, done: Pruned, error: BaseException) -> None:
        super().__init__(str(error))
        self.done, self.error = done, error


def _digest_of_submission(stored: Any) -> str | None:
    """The digest of a submission's values, or None: not a submission the contract
    takes."""
    msg = stored_submission(stored)
    return None if msg is None else submission_digest(msg)


def _body_stub(body: bytes, at: datetime) -> bytes:
    """A stub for a message body: its digest, and its schema and submission id if it is a
    JSON object that has them; for a submission also the digest of its values
    (``values_sha256``), which a withdrawal of it while held keeps for the router's
    duplicate check (:func:`broker.consumers.router.submission_digest`)."""
    kept: dict[str, str] = {}
    try:
        value = json.loads(body)
    except ValueError:
        value = None
    if isinstance(value, dict):
        for key, as_ in (("schema", "was"), ("submission_id", "submission_id")):
            if isinstance(value.get(key), str):
                kept[as_] = value[key]
        if (digest := _digest_of_submission(value)) is not None:
            kept[VALUES_DIGEST] = digest
    return pruned_body(pruned_stub(at, hashlib.sha256(body).hexdigest(), **kept))


def _submission_stub(stored: Any, at: datetime) -> dict[str, Any]:
    """The stub of a stored submission: the digest of its values, and how many documents
    it had (the report's digitized share counts them; the documents' names, addresses
    and hashes go)."""
    documents = stored.get(DOCUMENTS) if isinstance(stored, dict) else None
    kept = {DOCUMENTS: len(documents)} if isinstance(documents, list) else {}
    return pruned_stub(at, _digest_of_submission(stored), **kept)


def _erase_submissions(conn: Connection, key: Any, rows: Sequence[Any], at: datetime,
                       dry_run: bool) -> int:
    """Replace the submissions of these rows (key, submission) of ``key``'s table by stubs
    (:func:`_submission_stub`); those not stubs yet."""
    fresh = [(k, stored) for k, stored in rows if not is_pruned(stored)]
    if fresh and not dry_run:
        conn.execute(update(key.table).where(key == bindparam("row_key"))
                     .values(submission=bindparam("stub")),
                     [{"row_key": k, "stub": _submission_stub(stored, at)}
                      for k, stored in fresh])
    return len(fresh)


def _window(column: Any, since: datetime | None, cutoff: datetime) -> list[Any]:
    where = [column < cutoff]
    if since is not None:
        where.append(column >= since)
    return where


def _erase_bodies(conn: Connection, rows: Sequence[Any], at: datetime, dry_run: bool) -> int:
    """Replace the bodies of these outbox rows (id, body) by stubs, those not stubs yet;
    a receipt by itself without the applicant and the documents (:func:`_receipt_kept`)."""
    todo = list({r.id: bytes(r.body) for r in rows if not is_pruned(bytes(r.body))}.items())
    if todo and not dry_run:
        conn.execute(update(outbox).where(outbox.c.id == bindparam("row_id"))
                     .values(body=bindparam("stub")),
                     [{"row_id": i, "stub": _receipt_kept(body) or _body_stub(body, at)}
                      for i, body in todo])
    return len(todo)


def _receipt_kept(body: bytes) -> bytes | None:
    """A desk's receipt without what names the applicant or the documents, or None for
    any other body. The router sends a dossier's receipt again when its desk sends the
    dossier again, after the prune too: a stub would leave the desk unanswered, and the
    receipt without them is one the contract takes (as receipts were before they named
    the applicant)."""
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("notice") != "receipt":
        return None
    kept = {k: v for k, v in value.items() if k not in (APPLICANT, DOCUMENTS)}
    return json.dumps(kept, ensure_ascii=False, separators=(",", ":")).encode()


def _prune_dossiers(ledger: Ledger, done: Pruned, at: datetime, dry_run: bool,
                    progress: Progress) -> None:
    c = dossiers.c
    where = [c.state.in_([int(s) for s in TERMINAL_STATES]),
             *_window(c.updated_at, done.since, done.cutoff)]
    with ledger.read() as conn:
        total = conn.execute(select(func.count()).select_from(dossiers).where(*where)).scalar()
    last, seen = 0, 0
    while True:
        with ledger.write() as conn:
            # FOR UPDATE (PostgreSQL; SQLite's write lock does it): a prune running at
            # the same moment waits for this chunk, then finds its stubs and passes over
            rows = conn.execute(select(c.id, c.code, c.submission, c.flags)
                                .where(*where, c.id > last)
                                .order_by(c.id).limit(CHUNK).with_for_update()).all()
            if not rows:
                return
            last, seen = rows[-1].id, seen + len(rows)
            erased = _erase_submissions(
                conn, c.id, [(r.id, r.submission) for r in rows], at, dry_run)
            _count_documents(conn, rows, dry_run)
            _count_event_documents(conn, [r.code for r in rows], dry_run)
            # the assignments, and the notices carrying documents or the applicant: the
            # agencies' with the supplements, the desks' receipts and results
            sent = list(conn.execute(
                select(outbox.c.id, outbox.c.type, outbox.c.body)
                .join(events, events.c.message_id == outbox.c.inbox_message_id)
                .where(events.c.dossier_code.in_([r.code for r in rows]),
                       outbox.c.type.in_(["dossier.assigned", "agency.notice",
                                          "desk.notice"]))
                .with_for_update(of=outbox)))
            # and the receipt as it was answered again to a copy of the dossier sent under
            # another message id, kept under that id (an inbox row of its own, no event)
            sent += list(conn.execute(
                select(outbox.c.id, outbox.c.type, outbox.c.body)
                .join(inbox, inbox.c.message_id == outbox.c.inbox_message_id)
                .where(inbox.c.outcome == "duplicate",  # through the outcome's index
                       inbox.c.dossier_code.in_([r.code for r in rows]),
                       outbox.c.type == "desk.notice")
                .with_for_update(of=outbox)))
            bodies = _erase_bodies(conn, [
                r for r in sent if r.type == "dossier.assigned" or _personal(r.body)
            ], at, dry_run)
        # counted once committed: a chunk rolled back (Ctrl-C, the ledger away) erased
        # nothing, and the line a run cut short prints says what is erased
        done.dossiers, done.bodies = done.dossiers + erased, done.bodies + bodies
        progress(seen, int(total or 0))


def _count_documents(conn: Connection, rows: Sequence[Any], dry_run: bool) -> None:
    """Replace the documents in these dossiers' flags (the citizen's brought later,
    :data:`SUPPLEMENTS`, and the agencies' results, :data:`RESULTS`: names, addresses,
    hashes, as the submission's own) by how many there were."""
    fresh = []
    for r in rows:
        flags = r.flags if isinstance(r.flags, dict) else {}
        counted = {key: len(flags[key]) for key in (SUPPLEMENTS, RESULTS)
                   if isinstance(flags.get(key), list)}
        if counted:
            fresh.append((r.id, {**flags, **counted}))
    if fresh and not dry_run:
        conn.execute(update(dossiers).where(dossiers.c.id == bindparam("row_id"))
                     .values(flags=bindparam("counted")),
                     [{"row_id": i, "counted": flags} for i, flags in fresh])


def _count_event_documents(conn: Connection, codes: list[str], dry_run: bool) -> None:
    """In the process-control sheet of these dossiers, the names of the documents an
    event brought (a supplement, a result) by how many: a file is often named after its
    citizen. The rest of each event stays."""
    rows = conn.execute(select(events.c.id, events.c.detail)
                        .where(events.c.dossier_code.in_(codes))).all()
    fresh = [(r.id, {**r.detail, DOCUMENTS: len(r.detail[DOCUMENTS])}) for r in rows
             if isinstance(r.detail, dict) and isinstance(r.detail.get(DOCUMENTS), list)]
    if fresh and not dry_run:
        conn.execute(update(events).where(events.c.id == bindparam("row_id"))
                     .values(detail=bindparam("counted")),
                     [{"row_id": i, "counted": detail} for i, detail in fresh])


def _personal(body: bytes) -> bool:
    """Whether a notice's body lists documents (an agency's ``supplemented`` notice, a
    desk's receipt, a result sent as a document) or names the applicant (a desk's receipt
    and result_ready)."""
    try:
        value = json.loads(bytes(body))
    except ValueError:
        return False
    return isinstance(value, dict) and bool(value.get(DOCUMENTS) or value.get(APPLICANT))


def _prune_set_aside(ledger: Ledger, done: Pruned, at: datetime, dry_run: bool) -> None:
    """Dead letters' and triage copies' bodies (the copy carries the reason header; the
    notices published beside it do not, and hold no personal data)."""
    last = ""
    while True:
        with ledger.write() as conn:
            mids = conn.execute(
                select(inbox.c.message_id).where(
                    SET_ASIDE, *_window(inbox.c.processed_at, done.since, done.cutoff),
                    inbox.c.message_id > last)
                .order_by(inbox.c.message_id).limit(CHUNK)).scalars().all()
            if not mids:
                return
            last = mids[-1]
            rows = conn.execute(select(outbox.c.id, outbox.c.body, outbox.c.headers)
                                .where(outbox.c.inbox_message_id.in_(mids))
                                .with_for_update()).all()
            copies = [r for r in rows if isinstance(r.headers, dict)
                      and REASON_HEADER in r.headers]
            bodies = _erase_bodies(conn, copies, at, dry_run)
        done.bodies += bodies  # once committed


def _prune_refusals(ledger: Ledger, done: Pruned, at: datetime, dry_run: bool) -> None:
    c = refusals.c
    with ledger.write() as conn:
        rows = conn.execute(select(c.submission_id, c.submission).where(
            *_window(c.refused_at, done.since, done.cutoff)).with_for_update()).all()
        erased = _erase_submissions(conn, c.submission_id, rows, at, dry_run)
        # withdrawals of submissions that never came: the row stays (one coming late is
        # still closed at intake), the desk's free-text reason goes
        e = early_withdrawals.c
        if not dry_run:
            conn.execute(update(early_withdrawals).where(
                *_window(e.withdrawn_at, done.since, done.cutoff), e.reason.is_not(None))
                .values(reason=None))
    done.refusals += erased  # once committed


def prune(ledger: Ledger, keep_days: int, by: str, *, now: datetime | None = None,
          dry_run: bool = False) -> Pruned:
    """Erase the personal data of what closed more than ``keep_days`` days before ``now``
    and after the last completed run's cutoff; record the run (unless ``dry_run``)."""
    if not MIN_KEEP_DAYS <= keep_days <= MAX_KEEP_DAYS:
        raise ValueError(f"--keep-days must be from {MIN_KEEP_DAYS} to {MAX_KEEP_DAYS}, "
                         f"not {keep_days}")
    at = now or datetime.now(UTC)
    with ledger.read() as conn:
        since = conn.execute(select(func.max(prunes.c.cutoff))).scalar()
    done = Pruned(cutoff=at - timedelta(days=keep_days), since=since)
    # a run with a shorter retention, or a later clock, went further: nothing in this
    # one's window, and the run completed all the same (recorded: the alert on runs that
    # stopped reads the last one's time, and a night's run with nothing to do is no stop)
    if since is None or since < done.cutoff:
        try:
            _prune_dossiers(ledger, done, at, dry_run,
                            Progress("prune: {done} of {total} closed dossiers read"))
            _prune_set_aside(ledger, done, at, dry_run)
            _prune_refusals(ledger, done, at, dry_run)
        except (Exception, KeyboardInterrupt) as e:
            raise PruneCutShort(done, e) from e
    if not dry_run:
        with ledger.write() as conn:
            conn.execute(prunes.insert().values(
                cutoff=done.cutoff, ran_at=at, pruned_by=by, dossiers=done.dossiers,
                bodies=done.bodies, refusals=done.refusals))
    return done


def _cmd_prune(args: argparse.Namespace) -> int:
    ledger = Ledger(args.db_url, create=False)  # a mistyped path: said, not made
    try:
        ledger.check_schema()  # a ledger from before `prunes`: `casebroker ledger upgrade`
        with term_as_interrupt():
            done = prune(ledger, args.keep_days, args.by or system_user(),
                         dry_run=args.dry_run)
    except PruneCutShort as e:
        verb = "would have erased" if args.dry_run else "erased and committed"
        erased = e.done.dossiers or e.done.bodies or e.done.refusals
        if erased or isinstance(e.error, KeyboardInterrupt):
            print(f"cut short: {verb} {_what(e.done)} before it stopped; not recorded as a run "
                  "in the erasure log (`prunes` lists completed runs): run it again, it "
                  "passes over what is erased and finishes the rest", file=sys.stderr)
        if isinstance(e.error, KeyboardInterrupt):
            return 130
        raise e.error from None  # said in one line by `casebroker` (ledger unavailable...)
    finally:
        ledger.dispose()
    if args.json:
        print(json.dumps({**asdict(done), "dry_run": args.dry_run}, default=json_value))
        return 0
    if done.since is not None and done.since >= done.cutoff:
        recorded = "a dry run, not recorded" if args.dry_run else "this run is recorded"
        print(f"nothing to erase: an earlier run erased up to {done.since.isoformat()}, "
              f"after this run's cutoff ({done.cutoff.isoformat()}: a shorter --keep-days, "
              f"or a clock set back); {recorded}, in the ledger at {ledger.where}")
        return 0
    verb = "would erase" if args.dry_run else "erased"
    since = f" and after {done.since.isoformat()} (the last run's cutoff)" if done.since else ""
    print(f"{verb} {_what(done)} from before {done.cutoff.isoformat()}{since} in the ledger "
          f"at {ledger.where}")
    return 0


def _what(done: Pruned) -> str:
    return (f"the personal data of {_n(done.dossiers, 'closed dossier')}, "
            f"{_n(done.bodies, 'message body', 'message bodies')} and "
            f"{_n(done.refusals, 'refusal at intake', 'refusals at intake')}")


def _n(count: int, one: str, many: str | None = None) -> str:
    return f"{count:,} {one if count == 1 else many or one + 's'}"


def register(actions: Any) -> None:
    """Add `casebroker ledger prune` to the ledger's actions."""
    p = actions.add_parser(
        "prune", help="erase the personal data (submissions, assignments, supplements' "
        "and results' documents, dead letters' and triage copies' bodies, the submissions "
        "of refusals at intake, the reasons of withdrawals whose submission never came) of "
        "what closed more than --keep-days ago; ids, codes, states, times and digests "
        "stay, for the audit, the report and duplicate checks")
    p.add_argument("--keep-days", required=True,
                   type=at_least(MIN_KEEP_DAYS, most=MAX_KEEP_DAYS),
                   help=f"retention in days after a dossier closed ({MIN_KEEP_DAYS} to "
                        f"{MAX_KEEP_DAYS})")
    p.add_argument("--dry-run", action="store_true", help="count, erase nothing")
    p.add_argument("--by", type=words(BY_MAX),
                   help="who prunes, for the ledger (default: this system user)")
    p.add_argument("--db-url", help=DB_URL_HELP)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_cmd_prune)
