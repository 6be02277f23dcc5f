"""`casebroker dead-letters list|show|replay|refuse|discard`: dead letters and triage as a
workflow.

``refuse`` ends a triaged dossier that no catalog fix will route at intake (state 3):
the refusal is committed to the ledger first, then its desk's notice published, then the
triage copy acked; see :func:`refuse` and docs/RELIABILITY.md.

Replay, and why it is safe to repeat (docs/RELIABILITY.md has the long form):

* A dead-lettered intake or status message already has an ``inbox`` row (outcome
  ``dead:<reason>`` or ``triaged:<reason>``) under its message id, so sending it
  back with that id would only replay the dead letter. A replay therefore gets a
  new id derived from the original: ``<original id>#replay<n>``, where ``n`` is one
  more than the ``x-casebroker-replays`` header the dead letter carries. The same
  dead letter replayed twice (a crash between publish and ack) gets the same id, and
  the router answers the second with what it recorded for the first (set aside again,
  if it was): two copies of one message then wait, which the next replay takes
  together, replaying one and dropping the other (:func:`replay_dead`). A replay that
  is dead-lettered again carries ``n`` and its next replay is ``n + 1``, processed
  afresh.
* A replayed dossier can never make a second dossier: the router dedupes on its
  ``submission_id`` whatever the message id.
* Messages for agencies and desks (``dead.agency``, ``dead.desk``) go back to
  their exchange with their own deterministic id: receivers drop what they have.

Each message is published (confirmed) before the one it replaces is acked, one by one:
a message that cannot be replayed (nowhere to send it, still unroutable, nacked) is put
back and reported, and does not hold back or repeat the others.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from datetime import UTC, datetime
from typing import Any, NoReturn, get_args

from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import AMQPError, NackError, UnroutableError

from broker.amqp import (
    DEAD_SINCE_HEADER,
    DETAIL_HEADER,
    ORIGINAL_EXCHANGE_HEADER,
    ORIGINAL_KEY_HEADER,
    REASON_HEADER,
    REPLAY_OF_HEADER,
    SENT_BY_HEADER,
    SOURCE_HEADER,
    header_time,
    properties_for,
)
from broker.cli import BY_MAX, DB_URL_HELP, catalog_option, json_value, system_user, words
from broker.consumers.common import kept_id, to_desk
from broker.errors import UNKNOWN_PROCEDURE, CasebrokerError, DecodeError
from broker.ledger import Ledger, RawJSON, SubmissionOpened, refusal_notice
from broker.lifecycle import State
from broker.messages import (
    CONTENT_TYPE,
    PERSONAL_DIGITS,
    UUID_TEXT,
    Applicant,
    DeskNotice,
    DossierSubmitted,
    Message,
    NoticeKind,
    Subject,
    decode,
    has_personal_digits,
    shown_content_type,
    shown_id,
    shown_message_id,
    utc_now,
)
from broker.ops.progress import Progress, term_as_interrupt
from broker.ops.queues import (
    QUEUE_CHOICES,
    Settled,
    Taken,
    channel,
    copy_properties,
    login,
    missing,
    publish_copy,
    put_back,
    queue_and_key,
    read_back,
    routers_own,
    sent_by,
    settle_queue,
    why_failed,
)
from broker.rules.catalog import load_catalog
from broker.topology import DEAD_SOURCES, INTAKE_KEY, STATUS_KEY, Topology

REPLAYS_HEADER = "x-casebroker-replays"
#: the longest reason an operator may give a refusal
REASON_MAX = 500
_SUBMITTED = frozenset({"dossier.submitted"})
#: headers that describe a dead-lettering, not the message: dropped on replay
_DEAD_HEADERS = frozenset({REASON_HEADER, DETAIL_HEADER, SOURCE_HEADER, "x-death",
                           "x-first-death-exchange", "x-first-death-queue",
                           "x-first-death-reason", "x-delivery-count", "x-original-type",
                           "x-original-content-type", ORIGINAL_EXCHANGE_HEADER,
                           ORIGINAL_KEY_HEADER, SENT_BY_HEADER, DEAD_SINCE_HEADER})
#: message fields `show` prints: ids, codes, kinds, states, timestamps (no personal data)
_SHOWN = frozenset({
    "schema", "submission_id", "update_id", "event_id", "dossier_code", "procedure_code",
    "desk_id", "return_desk_id", "agency_id", "channel", "step", "steps", "status", "notice",
    "state", "rule_id", "catalog_hash", "submitted_at", "received_at", "due_at",
    "step_due_at", "sent_at", "returned_at", "issued_at"})
_SHOWN_NESTED = {"applicant": frozenset({"kind", "ward_code"}),
                 "subject": frozenset({"ward_code"})}
#: every field of the message contract: the others are only counted, never named
_KNOWN = frozenset(f.alias or n for m in get_args(Message) for n, f in m.model_fields.items())
_KNOWN_NESTED = frozenset(n for m in (Applicant, Subject) for n in m.model_fields)
#: what an allowed field's value must look like to be shown
_TOKEN = re.compile(r"[A-Za-z0-9._:+/-]{0,100}")
#: a phone or id number (has_personal_digits) may sit in the wrong field of a message that
#: failed its checks for that reason. No id, code, state or time of the contract has such
#: a run of digits, but for hexadecimal ones (UUIDs, the catalog's hash), shown when they
#: are well-formed (a UUID; 16, 32 or 64 digits, as the catalog's hash and SHA-256 are)
#: and have a letter: a desk id of 22 digits, an id number and a phone run together, was
#: printed whole as hexadecimal (found by a review). A random UUID or hash without a
#: letter is rare enough to be withheld with them
_HEX_ID = re.compile(rf"(?=.*[a-fA-F])(?:{UUID_TEXT.pattern}|[0-9a-f]{{16}}|[0-9a-f]{{32}}"
                     r"|[0-9a-f]{64})")


def replay_id(msg: Taken) -> tuple[str, str, int]:
    """(new message id, original message id, replay generation) of a dead letter."""
    headers = msg.headers
    of = headers.get(REPLAY_OF_HEADER)
    original = (_text(of) if isinstance(of, str | bytes) else None) or msg.message_id
    generation = replays(headers) + 1
    return f"{original}#replay{generation}", original, generation


def dead_since(msg: Taken) -> datetime | None:
    """When a dead letter was set aside at the latest: its oldest ``x-death`` (RabbitMQ's
    delivery limit), the dead letter's own timestamp where casebroker set it aside (a
    reason header: published by the router as it judged the delivery), or what an earlier
    replay recorded; None where nothing says. Later than the delivery's first arrival, so
    a replay judged by it is never taken for older than it is."""
    headers = msg.headers
    deaths = headers.get("x-death")
    times = [t for death in (deaths if isinstance(deaths, list) else [])
             if isinstance(death, dict) and (t := header_time(death.get("time"))) is not None]
    stamp = msg.properties.timestamp
    if routers_own(headers) and isinstance(stamp, int) and 0 < stamp < 2**40:
        times.append(datetime.fromtimestamp(stamp, UTC))
    if (earlier := header_time(headers.get(DEAD_SINCE_HEADER))) is not None:
        times.append(earlier)
    return min(times, default=None)


def replays(headers: dict[str, Any]) -> int:
    """How many times a message was replayed before (``x-casebroker-replays``): 0 when the
    header is not a count, as a sender may put anything in the headers a dead letter keeps
    (a text, a list: neither may stop the tools, nor be quoted)."""
    value = headers.get(REPLAYS_HEADER)
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 10:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**9:
        return value
    return 0


class NoTarget(ValueError):
    """A dead letter that says nowhere where it is to be replayed to."""


def replay_target(topology: Topology, which: str, msg: Taken) -> tuple[str, str, bool]:
    """(exchange, routing key, through our inbox?) where a dead letter is replayed to.

    The queue says which exchange a dead letter was meant for, whoever wrote it: the
    router and the status router dead-letter (``dead.intake``, ``dead.status``) and
    triage what came in through their own input; ``dead.agency`` and ``dead.desk`` hold
    what was meant for an agency or a desk: returned as unroutable (``x-original-*``
    headers, whatever the ``x-casebroker-source`` of the process that published it; the
    deadline watch's too), or dead-lettered by the quorum queue's delivery limit
    (``x-death``). A dead letter with neither (the deadline watch's, before it wrote
    ``x-original-*``) goes by the notice's own ``agency_id``/``desk_id``, its routing key
    when it was published. Headers a sender could have put on its message never send
    an intake or status message anywhere but back through the router.
    """
    headers = msg.headers
    if (which in ("intake", "status") and routers_own(headers)
            and _text(headers.get(REASON_HEADER)) == "too_large"):
        # its dead letter keeps only the body's first MAX_BODY_BYTES: replayed, that cut
        # body came back as malformed_json, its reason and size lost
        raise NoTarget(f"{which}: {_shown(msg)!r} was dead-lettered as too_large and keeps "
                       "only the start of its body: it cannot be replayed (have its sender "
                       "send it again within the limit, then discard this one)")
    if which in ("intake", "status", "triage"):
        source = which if which != "triage" else _text(headers.get(SOURCE_HEADER)) or "intake"
        if source == "intake":
            return topology.intake_exchange, INTAKE_KEY, True
        if source == "status":
            return topology.status_exchange, STATUS_KEY, True
        raise NoTarget(f"{which}: {_shown(msg)!r} came from {source!r}, not from the "
                       "router's intake or status queue")
    if which == "agency":
        exchange, field = topology.agency_exchange, "agency_id"
    elif which == "desk":
        exchange, field = topology.desk_exchange, "desk_id"
    else:
        raise NoTarget(f"{which}: not a dead-letter queue")
    key = _original_key(topology, exchange, headers) or _field_of(msg.body, field)
    if not key:
        raise NoTarget(f"{which}: {_shown(msg)!r} names no {field} (no x-original-routing"
                       f"-key, no x-death, no {field} in its body)")
    return exchange, key, False


def _original_key(topology: Topology, exchange: str, headers: dict[str, Any]) -> str | None:
    """The routing key the headers record for a publish to ``exchange``, if any."""
    if _text(headers.get(ORIGINAL_EXCHANGE_HEADER)) == exchange:
        key = _text(headers.get(ORIGINAL_KEY_HEADER))
        if key:
            return key
    deaths = headers.get("x-death")
    for death in reversed(deaths if isinstance(deaths, list) else []):  # oldest first
        if isinstance(death, dict) and _text(death.get("exchange")) == exchange:
            keys = death.get("routing-keys") or []
            if keys and _text(keys[0]):
                return _text(keys[0])
    return None


def _field_of(body: bytes, field: str) -> str | None:
    """A text field of a message body (its ``agency_id`` or ``desk_id``: its routing key
    when published; a dossier's ``procedure_code``), or None."""
    try:
        value = json.loads(body.decode("utf-8")).get(field)
    except (UnicodeDecodeError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def replay(ch: BlockingChannel, topology: Topology, which: str, msg: Taken) -> dict[str, Any]:
    """Publish one dead letter back to its source (confirmed); what was done."""
    exchange, key, via_inbox = replay_target(topology, which, msg)
    headers = {k: v for k, v in msg.headers.items() if k not in _DEAD_HEADERS}
    if via_inbox:
        if which == "triage" or routers_own(msg.headers):  # judged by casebroker
            new_id, original, generation = replay_id(msg)
            headers.update({REPLAY_OF_HEADER: original, REPLAYS_HEADER: generation})
        else:
            # the delivery itself, dead-lettered by RabbitMQ (its delivery limit), maybe
            # after its batch committed and while its publishes were refused: under its
            # own id the inbox republishes what it recorded, or it is processed afresh
            new_id = msg.message_id
        if (since := dead_since(msg)) is not None:  # a supplement's staleness is judged by it
            headers[DEAD_SINCE_HEADER] = since.astimezone(UTC).isoformat()
        first_sender = sent_by(msg.properties)
        if first_sender is not None:
            # under the operator's login, which must be the router's own for the router to
            # take its word for the first sender (with CASEBROKER_PARTY_USERS=1)
            headers[SENT_BY_HEADER] = first_sender
        props = copy_properties(msg.properties, message_id=new_id, headers=headers,
                                content_type=CONTENT_TYPE,
                                user_id=login() if first_sender is not None else None)
    else:
        new_id = msg.message_id
        props = copy_properties(msg.properties, headers=headers or None)
    publish_copy(ch, exchange, key, msg.body, props)
    return {"queue": which, "message_id": _shown(msg),
            "replayed_as": shown_message_id(new_id),
            "exchange": exchange, "routing_key": key}


def refuse(ch: BlockingChannel, topology: Topology, ledger: Ledger, msg: Taken, reason: str,
           by: str, now: datetime, desks: Collection[str], without_notice: bool = False,
           committed: Callable[[], None] | None = None) -> dict[str, Any]:
    """Refuse one triaged dossier at intake (state 3): the refusal is committed to the
    ledger, then its desk's notice published (confirmed); the caller acks the triage copy
    after. Run again after a crash in between, it finds the refusal and publishes the same
    notice under the same id (the desk drops a copy it has). ``ValueError``: not refused,
    and why (the copy is put back). A desk with no queue (one the catalog, ``desks``, does
    not know) cannot be told: refused only ``without_notice``, the notice kept in the
    ledger (sent if the desk submits the dossier again) and not published. ``committed``
    is called once the refusal is in the ledger (final), before its notice is published;
    :class:`NoticeNotSent` if RabbitMQ then refuses the notice."""
    try:
        dossier = decode(msg.body, expected=_SUBMITTED)
    except DecodeError as e:
        raise ValueError(f"not a dossier the contract accepts ({e.reason}): nothing to "
                         "refuse") from None
    assert isinstance(dossier, DossierSubmitted)
    if dossier.desk_id in desks:
        untold = missing(ch, topology.desk_queue(dossier.desk_id))
        if untold is not None:  # the queue's name holds the desk id: shown as below
            untold = untold.replace(dossier.desk_id, shown_id(dossier.desk_id))
    else:
        # RabbitMQ is not asked: its log names a queue a passive declare does not find,
        # and the id of a desk the catalog lacks may be a phone or id number
        triaged = _text(msg.headers.get(REASON_HEADER)) == "unknown_desk"
        untold = (f"the catalog has no such desk{' (triaged as unknown_desk)' * triaged}, "
                  "so it has no queue: add the desk to the catalog (a running router "
                  "declares its queue on reload, SIGHUP), then refuse or replay; or, for a "
                  "desk that does not exist, refuse --without-notice; refuse reads the "
                  "catalog --catalog names, as the routers do")
    if untold is not None and not without_notice:
        raise ValueError(f"desk {shown_id(dossier.desk_id)} has nobody to tell: {untold}")
    sid = str(dossier.submission_id)
    notice = to_desk(topology, DeskNotice(
        notice=NoticeKind.REFUSED, dossier_code=None, submission_id=dossier.submission_id,
        desk_id=dossier.desk_id, procedure_code=dossier.procedure_code, state=State.REFUSED,
        reason=reason, issued_at=now), kept_id(f"{msg.message_id}:refused"))
    try:
        kept, new = ledger.refuse({
            "submission_id": sid, "message_id": msg.message_id, "desk_id": dossier.desk_id,
            "procedure_code": dossier.procedure_code, "state": int(State.REFUSED),
            "reason": reason, "refused_by": by,
            "refused_at": now, "submission": RawJSON(msg.body.decode()),
            "notice_id": notice.message_id, "notice": notice.body})
    except SubmissionOpened as e:
        raise ValueError(f"submission {sid} opened dossier {e.code} since it was triaged: "
                         "nothing to refuse (replay it: the router answers it with that "
                         "dossier's notice)") from None
    if not new and kept["desk_id"] != dossier.desk_id:
        # another desk's dossier under the id is another citizen's, as the router judges
        # it: answered with that one's notice and acked, it was lost without a word
        raise ValueError(
            f"submission {sid} was closed at intake ({State(kept['state']).name.lower()}) "
            f"for desk {shown_id(str(kept['desk_id']))}'s dossier; this copy, from desk "
            f"{shown_id(dossier.desk_id)}, is another dossier under a taken submission id: "
            "not refused, left in triage; replay it: the router dead-letters it as "
            "submission_id_reused and tells its desk to send it under a new id") from None
    if committed is not None:
        committed()
    sent = refusal_notice(kept, topology.desk_exchange)
    if untold is None:
        try:
            ch.basic_publish(sent.exchange, sent.routing_key, sent.body,
                             properties_for(sent, None), mandatory=True)
        except (UnroutableError, NackError) as e:
            # committed: final whatever is done next (a replay is answered with it), so
            # never to be reported as "not refused"
            raise NoticeNotSent(
                f"{State(kept['state']).name.lower()} in the ledger (final), but desk "
                f"{shown_id(str(kept['desk_id']))} was not told: {why_failed(e)}") from None
    # closed before: refused by an operator (a run cut short, done again), or withdrawn by
    # its desk while it waited; either way the notice it got is sent again, and the copy
    # leaves triage
    before = None if new else State(kept["state"]).name.lower()
    return {"queue": "triage", "message_id": _shown(msg),
            "submission_id": sid, "desk_id": shown_id(kept["desk_id"]),
            "notice_id": shown_message_id(sent.message_id),
            "told": untold is None, "refused_before": before == "refused",
            "closed_before": before}


class NoticeNotSent(ValueError):
    """A refusal committed to the ledger whose desk's notice RabbitMQ did not take: the
    triage copy is put back, and refusing it again sends the same notice."""


def describe(which: str, msg: Taken) -> dict[str, Any]:
    """One dead letter as the operator sees it (no body)."""
    h = msg.headers
    # one RabbitMQ dead-lettered itself has no reason of casebroker's: RabbitMQ's, then
    # (a reject by a desk's or agency's Inbox, whose handler failed: "rejected"); the
    # reason and detail headers it may carry are the sender's own, shown as casebroker's
    # (a sender's words, a name among them: found by a review), and not read
    ours = routers_own(h)
    reason = _text(h.get(REASON_HEADER)) if ours else (
        f"rabbitmq:{_text(h.get('x-first-death-reason'))}"
        if h.get("x-first-death-reason") else None)
    # the type and content type are the sender's (one RabbitMQ dead-lettered keeps the
    # sender's headers too): shown only when they look like what they should
    content_type = _text(h.get("x-original-content-type")) or _text(
        msg.properties.content_type)
    return {"queue": which, "message_id": _shown(msg),
            "reason": _token_or_withheld(reason),
            "detail": _text(h.get(DETAIL_HEADER)) if ours else None,
            "source": _token_or_withheld(_text(h.get(SOURCE_HEADER))) if ours else None,
            "type": _token_or_withheld(_text(msg.properties.type)),
            "content_type": content_type if content_type is None else shown_content_type(
                content_type),
            "correlation_id": _token_or_withheld(msg.properties.correlation_id),
            "sent_by": sent_by(msg.properties),
            "size": len(msg.body),
            "replays": replays(h)}


def redacted_body(body: bytes) -> Any:
    """What of a body an operator may see: an allowlist of fields known to carry no
    personal data (ids, codes, kinds, states, timestamps), each value a short token.

    Every other field of the contract (names, id numbers, contact details, descriptions,
    documents, attributes, free-text reasons) is named in ``withheld``, its value never
    shown; fields outside the contract are only counted (a key could be a name). A body
    that is not a JSON object is given as its size and SHA-256 only.
    """
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        data = None
    if not isinstance(data, dict):
        return {"undecodable": True, "size": len(body),
                "sha256": hashlib.sha256(body).hexdigest()}
    withheld: list[str] = []
    others = [0]
    shown = _allowed(data, _SHOWN, _KNOWN, "", withheld, others)
    for name, fields in _SHOWN_NESTED.items():
        value = data.get(name)
        if isinstance(value, dict):
            shown[name] = _allowed(value, fields, _KNOWN_NESTED, f"{name}.", withheld, others)
        elif name in data:
            withheld.append(name)
    shown["withheld"] = sorted(withheld)
    if others[0]:
        shown["other_fields"] = others[0]
    return shown


def _allowed(data: dict[str, Any], fields: frozenset[str], known: frozenset[str],
             prefix: str, withheld: list[str], others: list[int]) -> dict[str, Any]:
    """The ``fields`` of ``data`` whose value is a token; the other known fields' names
    go to ``withheld``, and unknown ones are counted in ``others``."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if k in fields and _is_token(v):
            out[k] = v
        elif not prefix and k in _SHOWN_NESTED:
            continue  # applicant, subject: their own allowlist
        elif k in fields or k in known:
            withheld.append(prefix + k)
        else:
            others[0] += 1
    return out


def _shown(msg: Taken) -> str:
    return shown_message_id(msg.message_id)


def _token_or_withheld(value: Any) -> Any:
    """A sender-chosen value (a correlation id): shown only if it is a plain token."""
    return value if _is_token(value) else "<withheld>"


def _is_token(value: Any) -> bool:
    """An id, code, kind, number or timestamp: never a name, a sentence, or a number as
    long as a phone or id number."""
    if value is None or isinstance(value, (bool, float)):
        return True
    if isinstance(value, int):
        return PERSONAL_DIGITS.search(str(value)) is None
    return isinstance(value, str) and _TOKEN.fullmatch(value) is not None and (
        not has_personal_digits(value) or _HEX_ID.fullmatch(value) is not None)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _queues(arg: str | None) -> list[str]:
    return list(QUEUE_CHOICES) if arg in (None, "all") else [str(arg)]


def _topology(args: argparse.Namespace) -> Topology:
    return Topology.named(args.prefix)


def _failures(which: str, settled: Settled) -> list[dict[str, Any]]:
    """What failed in a queue: each message, and a reading that stopped short (no
    message id: ids asked for and not seen may be in what was not read)."""
    failed: list[dict[str, Any]] = [{"queue": which, "message_id": _shown(m), "error": why}
                                    for m, why in settled.failed]
    if settled.short is not None:
        failed.append({"queue": which, "message_id": None, "error": settled.short})
    return failed


def list_dead(topology: Topology, queues: Iterable[str]
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every message in the named operator queues, each put back unchanged; and the
    messages that could not be put back (left unacked: they return to their queue)."""
    found: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    queues = list(queues)
    with channel(lock=topology) as ch:
        _some_there(ch, topology, queues)
        for which in queues:
            queue, _ = queue_and_key(topology, which)
            if (why := missing(ch, queue)) is not None:
                failed.append({"queue": which, "message_id": None, "error": why})
                continue
            read = read_back(ch, topology, which, _progress(queue))
            failed += _failures(which, read)
            found += [dict(describe(which, m), body=redacted_body(m.body)) for m in read.taken]
    return found, failed


def replay_dead(topology: Topology, queues: Iterable[str], ids: set[str] | None
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Replay the messages with ``ids`` (None: all) from the queues; put the rest back.

    Returns (what was replayed, what was not and why). Each message is acked once its
    own publish is confirmed; one that cannot be replayed is put back and reported, and
    the others are replayed all the same.

    A copy of a message already replayed in this run (the same original id and the same
    body: a replay cut short before its ack leaves the copy in hand, and the router sets
    its replay aside again beside it) is acked without being replayed again, and said
    so (``duplicate_of``). Replayed, each copy came back as the other: two for ever.
    """
    replayed: dict[tuple[str, str, bytes], str] = {}

    def act(ch: BlockingChannel, which: str, msg: Taken) -> dict[str, Any]:
        same = (which, replay_id(msg)[1], hashlib.sha256(msg.body).digest())
        if (first := replayed.get(same)) is not None:  # that one's publish is confirmed
            return {"queue": which, "message_id": _shown(msg), "replayed_as": None,
                    "duplicate_of": first, "exchange": None, "routing_key": None}
        done = replay(ch, topology, which, msg)
        replayed[same] = done["replayed_as"]
        return done

    return _each(topology, queues, ids, act)


def discard_dead(topology: Topology, queues: Iterable[str], ids: set[str] | None
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Take the messages with ``ids`` (None: all) out of the dead-letter queues for good
    (acked, published nowhere); put the rest back. Returns (what was discarded, as
    :func:`describe` gives it, and what failed), as :func:`replay_dead`."""
    return _each(topology, queues, ids, lambda _ch, which, msg: describe(which, msg))


def _each(topology: Topology, queues: Iterable[str], ids: set[str] | None,
          act: Callable[[BlockingChannel, str, Taken], dict[str, Any]]
          ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``act`` on (and ack) the messages with ``ids`` (None: all) of each queue in turn,
    collecting what it returns; put the others back. Stops at a channel RabbitMQ closed."""
    done: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    queues = list(queues)
    try:
        with channel(lock=topology) as ch:
            _some_there(ch, topology, queues)
            for which in queues:
                def each(ch: BlockingChannel, msg: Taken, w: str = which) -> None:
                    done.append(act(ch, w, msg))

                problems, usable = _work(ch, topology, which,
                                         lambda m: ids is None or _shown(m) in ids, each)
                failed += problems
                if not usable:
                    break
    except KeyboardInterrupt:
        raise Interrupted(done, failed) from None
    except Exception as e:
        if not done and not failed:
            raise  # nothing done: the error says it all
        raise CutShort(done, failed, e) from e
    return done, failed


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) while messages were settled: what was done (acked) before it,
    which the command still says (a discarded message has no copy anywhere else)."""

    def __init__(self, done: list[dict[str, Any]], failed: list[dict[str, Any]]) -> None:
        super().__init__()
        self.done, self.failed = done, failed


class CutShort(Exception):
    """An error (the ledger away, say) while messages were settled: what was done before
    it, final, which the command says before the error. Before, the error alone was said,
    and an operator could not tell that hundreds of refusals were committed and told."""

    def __init__(self, done: list[dict[str, Any]], failed: list[dict[str, Any]],
                 error: Exception) -> None:
        super().__init__(str(error))
        self.done, self.failed, self.error = done, failed, error


def refuse_triaged(topology: Topology, ledger: Ledger, chosen: Callable[[Taken], bool],
                   reason: str, by: str, desks: Collection[str], without_notice: bool = False
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Refuse the triaged dossiers ``chosen`` picks (their desks among ``desks``, the
    catalog's, told); put every other triage copy back.
    Returns (what was refused, what was not and why), as :func:`replay_dead`. A refusal
    committed but not acked (the connection lost in between) is sent again, the same,
    when refused again."""
    done: list[dict[str, Any]] = []
    recorded: set[str] = set()
    failed: list[dict[str, Any]] = []
    now = utc_now()
    try:
        with channel(lock=topology) as ch:
            def act(ch: BlockingChannel, msg: Taken) -> None:
                mid = _shown(msg)
                done.append(refuse(ch, topology, ledger, msg, reason, by, now, desks,
                                   without_notice, committed=lambda: recorded.add(mid)))
                recorded.discard(mid)  # and its desk told

            failed, _ = _work(ch, topology, "triage", chosen, act)
    except KeyboardInterrupt:
        raise Interrupted(done, _untold(failed, recorded)) from None
    except Exception as e:
        if not done and not recorded:
            raise  # nothing done: the error says it all
        raise CutShort(done, _untold(failed, recorded), e) from e
    return done, _untold(failed, recorded)


def _untold(failed: list[dict[str, Any]], recorded: set[str]) -> list[dict[str, Any]]:
    """``failed``, each marked whether its refusal is in the ledger, with those refused
    in the ledger whose notice was not confirmed (``recorded``) added."""
    # what is left in ``recorded`` is refused all the same (final), its desk not told yet:
    # RabbitMQ refused the notice (put back, failed), or the channel went before it was
    # confirmed (the copy back in triage with the rest)
    failed = list(failed)
    for f in failed:
        if f["message_id"] is not None:
            f["recorded"] = f["message_id"] in recorded
    for mid in sorted(recorded - {f["message_id"] for f in failed}):
        failed.append({"queue": "triage", "message_id": mid, "recorded": True, "error": (
            "refused in the ledger (final), but its desk's notice was not confirmed by "
            "RabbitMQ before the channel was lost; back in triage")})
    return failed


class NoOperatorQueues(CasebrokerError):
    """None of the operator queues asked for is there: the prefix is wrong, or the
    topology was never declared."""


def _some_there(ch: BlockingChannel, topology: Topology, queues: list[str]) -> None:
    """Raise :class:`NoOperatorQueues` if none of the queues asked for is there: said
    once, not once for each of them after a "0 message(s)" that reads as all clear."""
    names = [queue_and_key(topology, which)[0] for which in queues]
    if names and all(missing(ch, name) is not None for name in names):
        raise NoOperatorQueues(
            f"RabbitMQ has no {'queue' if len(names) == 1 else 'queues'} "
            f"{', '.join(names)}: a wrong --prefix or CASEBROKER_PREFIX, or the topology "
            "not declared (casebroker topology declare)")


def _work(ch: BlockingChannel, topology: Topology, which: str, chosen: Callable[[Taken], bool],
          act: Callable[[BlockingChannel, Taken], None]) -> tuple[list[dict[str, Any]], bool]:
    """Take every message of the operator queue ``which``; ``act`` on (and ack) those
    ``chosen`` picks, put the others back. Returns what failed, and whether the channel
    is still usable (False: RabbitMQ closed it; what was acked is done, the rest is back
    in the queue)."""
    queue, _ = queue_and_key(topology, which)
    if (why := missing(ch, queue)) is not None:
        return [{"queue": which, "message_id": None, "error": why}], True

    def keep(msg: Taken) -> None:
        put_back(ch, topology, which, msg)

    def action(msg: Taken) -> None:
        if chosen(msg):
            act(ch, msg)
        else:
            keep(msg)

    try:
        return _failures(which, settle_queue(ch, queue, action, keep, _progress(queue))), True
    except AMQPError as e:
        return [{"queue": which, "message_id": None, "error": (
            f"RabbitMQ {type(e).__name__}: {e}; the messages not yet settled are left in "
            f"{queue} (no queue after it is read)")}], False


def _progress(queue: str) -> Progress:
    return Progress(f"{queue}: {{done}} of {{total}} messages settled")


def _report_failures(failed: list[dict[str, Any]], what: str) -> None:
    """Each failure on stderr, then how many messages ``what`` (no count if empty)."""
    for f in failed:
        about = f"{f['queue']}: {f['message_id']}" if f["message_id"] is not None else f["queue"]
        print(f"error: {about}: {f['error']}", file=sys.stderr)
    if (messages := _messages(failed)) and what:
        print(f"{messages} message(s) {what}", file=sys.stderr)


def _messages(failed: list[dict[str, Any]]) -> int:
    """How many messages failed: a queue that could not be read (or read through) is
    named among the failures with no message id, and is no message."""
    return sum(1 for f in failed if f["message_id"] is not None)


def closed_in_ledger(ledger: Ledger, found: list[dict[str, Any]]) -> None:
    """Mark each triage copy whose submission was settled meanwhile: ``closed`` is
    ``withdrawn`` or ``refused`` (at intake: by its desk while held, or by an operator),
    else None; ``opened`` the code of the dossier a corrected copy under its submission
    id opened at the same desk, else None. A replay takes such a copy out (the router
    answers it with that notice, or that dossier's, again), as does ``refuse`` for a
    closed one (which refuses nothing more)."""
    sids: dict[int, str] = {}
    for i, f in enumerate(found):
        body = f.get("body")
        sid = body.get("submission_id") if f["queue"] == "triage" and isinstance(
            body, dict) else None
        if isinstance(sid, str):
            sids[i] = sid
    closed = ledger.closed_at_intake(sids.values())  # one query each for the whole list
    opened = {sid: s[0] for sid, s in ledger.states_for_submissions(list(sids.values())).items()}
    desks = ledger.intake_desks(list(opened.values()))
    for i, f in enumerate(found):
        row = closed.get(sids.get(i, ""))
        # as for opened, below: another desk's submission closed under the id leaves
        # this copy unsettled
        f["closed"] = (State(row["state"]).name.lower() if row is not None
                       and row["desk_id"] == f["body"].get("desk_id") else None)
        code = opened.get(sids.get(i, ""))
        # only its own desk's dossier settles it: another desk's under the id is another
        # citizen's (a replay dead-letters the copy as reused, its desk told to send again)
        f["opened"] = code if code is not None and desks.get(code) == f["body"].get(
            "desk_id") else None


def _cmd_list(args: argparse.Namespace) -> int:
    # the ledger opened first: one that is missing or old is said before every queue is
    # read through
    ledger = Ledger(args.db_url, create=False) if args.db_url else None
    try:
        if ledger is not None:
            ledger.check_schema()  # a ledger from before refusals.state: `ledger upgrade`
        found, failed = list_dead(_topology(args), _queues(args.queue))
        if ledger is not None:
            closed_in_ledger(ledger, found)
    finally:
        if ledger is not None:
            ledger.dispose()
    if args.json:
        print(json.dumps([{k: v for k, v in f.items() if k != "body"} for f in found]))
    else:
        for f in found:
            closed = (f"  [closed at intake: {f['closed']}; replay takes it out]"
                      if f.get("closed") else
                      f"  [received since as {f['opened']}; replay takes it out]"
                      if f.get("opened") else "")
            print(f"{f['queue']:<7} {f['message_id']:<50} {f['reason'] or '-':<20} "
                  f"{f['size']:>7} B  replays {f['replays']}  {f['detail'] or ''}{closed}")
        print(f"{len(found)} message(s)")
    _report_failures(failed, "not put back (left unacked: back in their queue)")
    return 1 if failed else 0


def _cmd_show(args: argparse.Namespace) -> int:
    found, failed = list_dead(_topology(args), _queues(args.queue))
    found = [f for f in found if f["message_id"] == shown_message_id(args.id)]
    _report_failures(failed, "not put back (left unacked: back in their queue)")
    if not found:
        print(f"error: no dead letter with message id {shown_message_id(args.id)!r}",
              file=sys.stderr)
        return 1
    if args.json:  # a list: one id can wait in several queues (a copy replayed twice)
        print(json.dumps(found, ensure_ascii=False, default=json_value))
    else:
        if len(found) > 1:
            print(f"{len(found)} messages with this id, in "
                  f"{', '.join(f['queue'] for f in found)}:")
        for f in found:
            print(json.dumps(f, indent=2, ensure_ascii=False, default=json_value))
    return 1 if failed else 0


def _cmd_replay(args: argparse.Namespace) -> int:
    ids = None if args.all else {shown_message_id(i) for i in args.id}

    def what(d: dict[str, Any]) -> str:
        if d.get("duplicate_of"):
            return (f"dropped: the same message as the copy replayed as "
                    f"{d['duplicate_of']} in this run")
        return f"-> {d['exchange']} as {d['replayed_as']}"

    try:
        with term_as_interrupt():
            done, failed = replay_dead(_topology(args), _queues(args.queue), ids)
    except Interrupted as stop:
        return _interrupted(args.json, "replayed", stop, what)
    except CutShort as cut:
        _cut_short(args.json, "replayed", cut, what)
    _print_done(args.json, "replayed", done, failed, what)
    if (dropped := sum(1 for d in done if d.get("duplicate_of"))) and not args.json:
        print(f"({dropped} of them: a copy of a message replayed in this run, dropped, "
              "not replayed again)")
    return _ended(ids, done, failed, "not replayed")


def _interrupted(as_json: bool, verb: str, stop: Interrupted,
                 what: Callable[[dict[str, Any]], str]) -> int:
    """Ctrl-C: what was done before it, as the command says it when it ends; status 130."""
    _print_done(as_json, verb, stop.done, stop.failed, what)
    in_hand = (" (the one in hand may now be there twice: the next replay replays it once "
               "and drops the other copy)" if verb == "replayed" else "")
    print(f"interrupted: only the messages above were {verb}; the others are where they "
          f"were{in_hand}", file=sys.stderr)
    return 130


def _cut_short(as_json: bool, verb: str, cut: CutShort,
               what: Callable[[dict[str, Any]], str]) -> NoReturn:
    """An error part-way: what was done before it, then the error (as the command's)."""
    _print_done(as_json, verb, cut.done, cut.failed, what)
    print(f"cut short: only the messages above were {verb}; the others are where they "
          "were", file=sys.stderr)
    raise cut.error from None


def _print_done(as_json: bool, verb: str, done: list[dict[str, Any]],
                failed: list[dict[str, Any]], what: Callable[[dict[str, Any]], str]) -> None:
    """What `replay` or `discard` did: a line a message (``what`` it became) and a count,
    or one JSON object."""
    if as_json:
        print(json.dumps({verb: len(done), "messages": done,
                          f"not_{verb}": _messages(failed), "failed": failed}))
        return
    for d in done:
        print(f"{d['queue']}: {d['message_id']} {what(d)}")
    print(f"{len(done)} message(s) {verb}")


def _cmd_discard(args: argparse.Namespace) -> int:
    if args.all and args.queue is None:
        print("error: --all needs --queue: say which dead-letter queue to empty",
              file=sys.stderr)
        return 2
    ids = None if args.all else {shown_message_id(i) for i in args.id}
    queues = list(DEAD_SOURCES) if args.queue in (None, "all") else [args.queue]
    topology = _topology(args)

    def what(d: dict[str, Any]) -> str:
        return f"discarded ({d['reason'] or '-'})"

    try:
        with term_as_interrupt():
            done, failed = discard_dead(topology, queues, ids)
    except Interrupted as stop:
        return _interrupted(args.json, "discarded", stop, what)
    except CutShort as cut:
        _cut_short(args.json, "discarded", cut, what)
    _print_done(args.json, "discarded", done, failed, what)
    lost = sum(1 for d in done if d["queue"] in ("agency", "desk"))
    if lost:  # on stderr with --json too
        print(f"warning: {lost} of them were for an agency or a desk, which will not have "
              "them", file=sys.stderr)
    # one RabbitMQ dead-lettered itself (its delivery limit) never reached a router's
    # judgement: the ledger holds no copy of what it carried (found by a review)
    uncopied = sum(1 for d in done if d["queue"] in ("intake", "status")
                   and str(d["reason"] or "").startswith("rabbitmq:"))
    if uncopied:
        print(f"warning: {uncopied} of them RabbitMQ dead-lettered itself (a delivery "
              "limit, before a router judged them): the ledger holds no copy of what they "
              "carried", file=sys.stderr)
    held = _in_triage(topology, _unseen(ids, done, failed)) if ids else set()
    for mid in sorted(held):
        print(f"error: {mid} is in triage, which is never discarded: its desk waits for an "
              f"answer. `dead-letters replay --id {mid}` once a rule routes it, or "
              f"`dead-letters refuse --id {mid} --reason ...`", file=sys.stderr)
    return max(_ended(ids - held if ids else ids, done, failed, "not discarded"),
               1 if held else 0)


def _in_triage(topology: Topology, ids: set[str]) -> set[str]:
    """Which of ``ids`` wait in triage (each message there put back as it was)."""
    if not ids:
        return set()
    found, _ = list_dead(topology, ["triage"])
    return ids & {d["message_id"] for d in found}


def _ended(ids: set[str] | None, done: list[dict[str, Any]], failed: list[dict[str, Any]],
           what: str) -> int:
    """Say what failed and which ids asked for were found nowhere; the exit status."""
    _report_failures(failed, what)
    unseen = _unseen(ids, done, failed) if ids is not None else set()
    if unseen:
        print(f"error: not found: {', '.join(sorted(unseen))}", file=sys.stderr)
    return 1 if failed or unseen else 0


def _unseen(ids: set[str], done: list[dict[str, Any]], failed: list[dict[str, Any]]
            ) -> set[str]:
    """The message ids asked for that were in none of the queues read (none said when a
    queue could not be read through: the error says so, and they may be there)."""
    if any(f["message_id"] is None for f in failed):
        return set()
    return ids - {d["message_id"] for d in done} - {f["message_id"] for f in failed}


def _print_refused(as_json: bool, done: list[dict[str, Any]],
                   failed: list[dict[str, Any]]) -> None:
    """What `refuse` did: a line a dossier and the counts, or one JSON object; then, on
    stderr, what it did not do."""
    withdrawn = sum(1 for d in done if d["closed_before"] == "withdrawn")
    # refused in the ledger, their desks not told (RabbitMQ refused the notice): final,
    # never "not refused"; the same command again tells them
    untold = [f for f in failed if f.get("recorded")]
    failed_else = [f for f in failed if not f.get("recorded")]
    if as_json:
        print(json.dumps({"refused": len(done) - withdrawn, "withdrawn_before": withdrawn,
                          "messages": done, "not_refused": _messages(failed_else),
                          "refused_untold": len(untold), "failed": failed}))
    else:
        for d in done:
            if d["closed_before"] == "withdrawn":
                told = (f"its withdrawal notice {d['notice_id']} sent again" if d["told"]
                        else f"desk {d['desk_id']} has no queue, nobody told")
                print(f"triage: {d['message_id']}: submission {d['submission_id']} was "
                      f"withdrawn by desk {d['desk_id']} while held: not refused; {told}, "
                      "the copy removed")
                continue
            if not d["told"]:
                print(f"triage: {d['message_id']}: submission {d['submission_id']} refused; "
                      f"desk {d['desk_id']} has no queue, nobody told")
                continue
            again = " (refused before: its notice sent again)" if d["refused_before"] else ""
            print(f"triage: {d['message_id']}: submission {d['submission_id']} refused, "
                  f"desk {d['desk_id']} told as {d['notice_id']}{again}")
        print(f"{len(done) - withdrawn} dossier(s) refused"
              + (f", {withdrawn} withdrawn before (taken out of triage)" if withdrawn else ""))
    _report_failures(failed_else, "not refused")
    _report_failures(untold, "")
    if untold:
        print(f"{len(untold)} dossier(s) refused in the ledger whose desks were not told: "
              "still in triage, run the same refuse again to tell them", file=sys.stderr)


def _cmd_refuse(args: argparse.Namespace) -> int:
    ids = {shown_message_id(i) for i in args.id or ()}

    procedure: str | None = args.procedure
    #: copies of the procedure triaged for another reason than unknown_procedure: left
    other_reasons: Counter[str] = Counter()

    def chosen(msg: Taken) -> bool:
        if procedure is None:
            return _shown(msg) in ids
        if _field_of(msg.body, "procedure_code") != procedure:
            return False
        # only what no catalog fix routes: a procedure the catalog lacks. The same code
        # triaged for a ward or a desk (area_not_served, unknown_desk...) may route once
        # the catalog or the sender is fixed: refused by --procedure, it was lost for good
        reason = _text(msg.headers.get(REASON_HEADER)) or "-"
        if reason != UNKNOWN_PROCEDURE:
            other_reasons[reason] += 1
            return False
        return True

    desks = set(load_catalog(args.catalog).desk_ids)
    ledger = Ledger(args.db_url, create=False)
    try:
        ledger.check_schema()  # a ledger from before refusals: `casebroker ledger upgrade`
        with term_as_interrupt():
            done, failed = refuse_triaged(_topology(args), ledger, chosen, args.reason,
                                          args.by or system_user(), desks,
                                          args.without_notice)
    except Interrupted as stop:
        _print_refused(args.json, stop.done, stop.failed)
        print("interrupted: only the dossiers above were refused; the others are where they "
              "were", file=sys.stderr)
        return 130
    except CutShort as cut:
        _print_refused(args.json, cut.done, cut.failed)
        print("cut short: only the dossiers above were refused; the others are where they "
              "were", file=sys.stderr)
        raise cut.error from None
    finally:
        ledger.dispose()
    _print_refused(args.json, done, failed)
    unseen = _unseen(ids, done, failed)
    if unseen:
        print(f"error: not in triage: {', '.join(sorted(unseen))}", file=sys.stderr)
    if other_reasons:
        told = ", ".join(f"{r}: {n}" for r, n in sorted(other_reasons.items()))
        print(f"{sum(other_reasons.values())} dossier(s) of procedure {args.procedure} left "
              f"in triage, set aside for another reason than {UNKNOWN_PROCEDURE} ({told}): "
              "a fix of the catalog or of the dossier may route them; refuse one by --id",
              file=sys.stderr)
    if args.procedure is not None and not done and not failed:
        print(f"error: no dossier of procedure {args.procedure} in triage as "
              f"{UNKNOWN_PROCEDURE}", file=sys.stderr)
        return 1
    return 1 if failed or unseen else 0


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add `casebroker dead-letters list|show|replay|discard|refuse`."""
    dl = sub.add_parser("dead-letters", help="list, show and replay dead letters and triage; "
                        "refuse what triage holds that no rule will route; discard dead "
                        "letters nobody will replay")
    dl_sub = dl.add_subparsers(dest="action", required=True)
    groups["dead-letters"] = dl_sub

    def common(p: argparse.ArgumentParser, json_help: str = "print JSON") -> None:
        p.add_argument("--queue", choices=[*QUEUE_CHOICES, "all"], default="all",
                       help="dead.<source> or triage (default: all of them)")
        p.add_argument("--prefix", help="topology prefix (default: $CASEBROKER_PREFIX or cb)")
        p.add_argument("--json", action="store_true", help=json_help)

    p = dl_sub.add_parser("list", help="every dead letter and triaged message")
    common(p)
    p.add_argument("--db-url", default=os.environ.get("CASEBROKER_DB_URL") or None,
                   help="also mark triage copies settled meanwhile: closed at intake "
                   "(withdrawn while held, or refused) or received since (a corrected "
                   "copy opened a dossier), from this ledger (default: $CASEBROKER_DB_URL; "
                   "unmarked without either)")
    p.set_defaults(handler=_cmd_list)
    p = dl_sub.add_parser("show", help="one message: headers and the body's fields that carry "
                          "no personal data (ids, codes, states, timestamps)")
    p.add_argument("id", help="message id (as list shows it: one that could hold personal "
                   "data is shown, and taken, as withheld-<16 hex digits>)")
    common(p, "print a JSON list, one object per copy (without it: each copy as indented "
              "JSON): one id may wait in several queues, a copy replayed twice")
    p.set_defaults(handler=_cmd_show)
    p = dl_sub.add_parser("replay", help="publish messages back to their source, idempotently")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--id", action="append",
                      help="message id, as list shows it (repeatable)")
    what.add_argument("--all", action="store_true", help="every message in the queue(s)")
    common(p)
    p.set_defaults(handler=_cmd_replay)
    p = dl_sub.add_parser(
        "discard", help="take dead letters out for good, published nowhere (bad input "
        "nobody will replay); the ledger keeps the copy of what the routers dead-lettered")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--id", action="append",
                      help="message id, as list shows it (repeatable)")
    what.add_argument("--all", action="store_true",
                      help="every message in the --queue named (required with --all)")
    p.add_argument("--queue", choices=[*DEAD_SOURCES, "all"],
                   help="dead.<source> (default with --id: all of them; never triage, "
                   "whose dossiers are replayed or refused)")
    p.add_argument("--prefix", help="topology prefix (default: $CASEBROKER_PREFIX or cb)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_cmd_discard)
    p = dl_sub.add_parser(
        "refuse", help="refuse triaged dossiers at intake (state 3) that no rule will route "
        "(a procedure the province does not handle): recorded, and their desks told; final")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", action="append",
                       help="message id of the dossier in triage (repeatable)")
    which.add_argument("--procedure", help="every dossier of this procedure code in triage "
                       f"as {UNKNOWN_PROCEDURE} (one the province does not take); those "
                       "set aside for another reason are left, and counted")
    p.add_argument("--reason", required=True, type=words(REASON_MAX),
                   help="why, for the desk to give the applicant (sent to the desk and kept "
                   "in the ledger; never logged)")
    p.add_argument("--by", type=words(BY_MAX),
                   help="who refuses, for the ledger (default: this system user)")
    p.add_argument("--without-notice", action="store_true",
                   help="refuse also a dossier whose desk has no queue (not in the catalog: "
                   "junk, or a mistyped desk id), telling nobody; without it such a dossier "
                   "is left in triage")
    catalog_option(p, "catalog YAML the routers run with, whose desks are told (default: "
                   "$CASEBROKER_CATALOG or the shipped Đắk Lắk catalog)")
    p.add_argument("--db-url", help=DB_URL_HELP)
    p.add_argument("--prefix", help="topology prefix (default: $CASEBROKER_PREFIX or cb)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=_cmd_refuse)
