"""The message contract (v1): one strict, frozen pydantic model per message kind.

Every message is UTF-8 JSON with a ``schema`` field naming its kind and version,
e.g. ``casebroker.dossier.submitted/v1``. :func:`decode` turns raw AMQP bodies into
models, and maps every way a body can be wrong to a :class:`~broker.errors.DecodeError`
with a stable reason code and a description free of personal data.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, cast
from uuid import UUID

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from broker.errors import DecodeError

#: Bodies over this size are refused before parsing (documents travel by reference).
MAX_BODY_BYTES = 256 * 1024
#: The largest body casebroker sends a desk or an agency: an assignment or a notice carries
#: a dossier (up to MAX_BODY_BYTES) and the documents its agencies and desk added since
#: (each step's results, the supplements), so it may be larger than what came in. The
#: status router refuses an update that would make a larger one: RabbitMQ refuses bodies
#: over its ``max_message_size`` (docker-compose.yml: this size) by closing the channel,
#: after the ledger has recorded the change the message was to announce
MAX_BROKER_BODY_BYTES = 1024 * 1024
CONTENT_TYPE = "application/json"

#: nine digits or more in a row: what a phone number (10) or an id number (9 or 12) is
PERSONAL_DIGITS = re.compile(r"\d{9,}")
#: the same written in groups, as people write phones and id numbers: "0905.123.456",
#: "0905 123 456", "090-512-3456", "066 090 001 234" (groups of 2 to 4 digits, one
#: separator throughout; nine digits or more in all, counted apart). A dossier code's
#: "261125-0001" (a group of six) and a date's "2026-11-25" (eight) are not
_GROUPED_DIGITS = re.compile(r"(?<![0-9])[0-9]{2,4}([ .-])[0-9]{2,4}(?:\1[0-9]{2,4})+(?![0-9])")


def has_personal_digits(value: str) -> bool:
    """Whether ``value`` holds what may be a phone or id number: nine digits or more in a
    row, or in groups. (Only run together, they let "0905.123.456" through, as a desk id
    the contract's pattern allows, into dead letters' details and the operator's tools.)"""
    if PERSONAL_DIGITS.search(value) is not None:
        return True
    return any(sum(c.isdigit() for c in m.group(0)) >= 9
               for m in _GROUPED_DIGITS.finditer(value))


def shown_id(value: str) -> str:
    """A desk's or agency's id as a dead letter's detail or a log may quote it: as it is,
    unless it holds a phone or id number (a sender's mistake the contract's pattern lets
    through), which is withheld."""
    if not has_personal_digits(value):
        return value
    return f"<{len(value)} characters withheld: a phone or id number?>"


#: a UUID as text; its hexadecimal digits are no phone or id number
UUID_TEXT = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                       r"[0-9a-fA-F]{12}")
#: what a message id casebroker or its SDK makes looks like: ids, codes, times, kinds,
#: and a replay's #replayN (AMQP allows 255 characters)
_MESSAGE_ID = re.compile(r"[A-Za-z0-9._:+/#@-]{0,255}")
#: a message id as shown when it is not one of those (:func:`shown_message_id`)
_WITHHELD_ID = re.compile(r"withheld-[0-9a-f]{16}")


def shown_message_id(mid: str) -> str:
    """A message id as logs and the operator's tools print it (the dead-letter tools take
    it back, ``--id``): as it is when it is a plain id (every id casebroker and its SDK
    make); else, since a sender may have put a name or an id number in it, ``withheld-``
    and 16 hex digits of its SHA-256."""
    if _WITHHELD_ID.fullmatch(mid) or (_MESSAGE_ID.fullmatch(mid) and not has_personal_digits(
            UUID_TEXT.sub("", mid))):
        return mid
    return "withheld-" + hashlib.sha256(mid.encode()).hexdigest()[:16]


#: a MIME content type, with parameters (``application/json; charset=utf-8``)
_MIME_TOKEN = r"[A-Za-z0-9!#$&^_.+-]{1,64}"
_CONTENT_TYPE = re.compile(rf"{_MIME_TOKEN}/{_MIME_TOKEN}"
                           rf"(?:\s*;\s*{_MIME_TOKEN}=(\"?)[A-Za-z0-9!#$&^_.+/-]{{0,64}}\1)*")


def shown_content_type(value: str) -> str:
    """A sender's content type as a dead letter's detail, a log or the dead-letter tools
    may quote it: as it is when it looks like one, else ``<withheld>`` (a sender may have
    put a name or a phone number in it)."""
    if _CONTENT_TYPE.fullmatch(value) and not has_personal_digits(value):
        return value
    return "<withheld>"


# [0-9], not \d: pydantic's regex engine reads \d as any Unicode digit (decode() took an
# Arabic-Indic or full-width code the schema refuses), and a pattern compiled with
# Python's re, whose $ also matches before a final newline, took "1.001193\n" (triaged as
# unknown, and echoed in a notice the published schema refuses). Plain text patterns are
# checked alike by pydantic's engine and by ECMA-262's, the published schema's
ProcedureCode = Annotated[str, Field(pattern=r"^[0-9]\.[0-9]{6}$")]
PartyId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
WardCode = Annotated[str, Field(pattern=r"^[0-9]{2,5}$")]
#: at least one character that shows: neither a space nor a zero-width one
_VISIBLE = "[^\\s\u200b\u200c\u200d\u2060\ufeff]"
def _whole(value: Any) -> Any:
    """A whole number written with a fraction (``123.0``, as Jackson and BigDecimal write
    one) as the int it is: JSON Schema's ``integer``, which the published contract says,
    takes it, and a message the contract allows must not be dead-lettered."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


#: a character that says something, alike in Python's regular expressions and in
#: ECMA-262's (the published schema's): neither's whitespace (Python's own takes in
#: \x1c-\x1f and \x85, ECMA's \ufeff). With str.strip() and \S, a JSON Schema validator
#: took a reason of "\x1c" that casebroker refused
_SAID = "[^\\s\\x1c-\\x1f\\x85\\ufeff]"
_SAYS = re.compile(_SAID)
#: a whole number as JSON writes it (``123``, ``123.0``): not true (which pydantic took as
#: 1), not "5", not 2.5. Its bounds go before the validator, or the published schema says
#: them as pydantic's ``ge``/``le`` instead of JSON Schema's minimum/maximum
Rating = Annotated[int, Strict(), Field(ge=1, le=5), BeforeValidator(_whole)]
#: the longest dossier code: what the ledger's code columns hold (``String(96)`` in
#: broker/tables.py: dossiers.code, events.dossier_code, outbox.correlation_id)
DOSSIER_CODE_MAX = 96
#: a dossier code ``<agency code>-<YYMMDD>-<NNNN>``. Unbounded, an update naming a longer
#: one (no dossier has it) failed its whole batch on PostgreSQL: the refusal to its sender
#: carries the code as its correlation id, which the outbox's column could not hold
DossierCode = Annotated[str, Field(min_length=1, max_length=DOSSIER_CODE_MAX)]
AttributeValue = str | int | float | bool

#: how an ISO 8601 date-time begins: a date, then T (or a space)
_ISO_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]")


def _iso_8601(value: Any) -> Any:
    """A time as the contract writes it. pydantic alone also takes a number of seconds
    since 1970, as a number or as a string of digits: a phone number or a desk's counter
    sent by mistake would become a legal date in 1998 or 2025. Years 1900 to 2999 only:
    at the ends of what Python's datetime holds, the working-day calendar's arithmetic
    overflows (year 1 at +14:00 stopped the router's batch with an OverflowError)."""
    if isinstance(value, str) and not _ISO_DATE_TIME.match(value):
        raise ValueError("not an ISO 8601 date-time with offset (2026-11-25T09:00:00+07:00)")
    if isinstance(value, int | float):
        raise ValueError("a number is no date-time: ISO 8601 with offset, as a string")
    year = value.year if isinstance(value, datetime) else int(value[:4]) if isinstance(
        value, str) else None
    if year is not None and not 1900 <= year <= 2999:
        raise ValueError("a date-time between the years 1900 and 2999")
    return value


#: a date-time with its offset, written in ISO 8601 (never a Unix time), in what desks and
#: agencies send; what casebroker builds from times it holds (assignments, notices) keeps
#: pydantic's own check, without a Python call per field on the hot path
Timestamp = Annotated[AwareDatetime, BeforeValidator(_iso_8601),
                      Field(json_schema_extra={"pattern": r"^(19|2[0-9])[0-9]{2}-"})]
#: the largest whole number every JSON reader keeps exact (a JavaScript or a double's
#: 2**53 - 1): a larger size or amount would reach a desk's or an agency's system changed
JSON_SAFE_INT = 2**53 - 1
#: a size or an amount: a whole number from 0 to :data:`JSON_SAFE_INT`, as :data:`Rating`
Amount = Annotated[int, Strict(), Field(ge=0, le=JSON_SAFE_INT), BeforeValidator(_whole)]


class _Model(BaseModel):
    # by alias by default: a message an integrator dumps with pydantic's defaults carries
    # "schema", as the contract says, not the Python name "schema_" it would then refuse.
    # NaN and Infinity (Python's json reads and writes them) are no JSON numbers: taken,
    # PostgreSQL's json refused the batch, and the assignment said null in their place
    model_config = ConfigDict(extra="forbid", frozen=True, serialize_by_alias=True,
                              allow_inf_nan=False)

    #: fields a sender may stamp afresh when it retries the same message (the SDK sets
    #: them to the time of the retry); they do not make a retry a different message.
    #: A dossier's submitted_at is not one: it can decide where the dossier goes
    retry_stamped: ClassVar[frozenset[str]] = frozenset()


class Channel(StrEnum):
    """How a dossier reached the desk."""

    IN_PERSON = "in_person"
    ONLINE = "online"
    POSTAL = "postal"
    AGENT = "agent"


class Applicant(_Model):
    """The citizen or organization; ``name``, ``id_number``, ``phone`` are personal data."""

    kind: Literal["citizen", "organization"]
    name: Annotated[str, Field(min_length=1, max_length=200, pattern=_VISIBLE)]
    id_number: Annotated[str, Field(min_length=1, max_length=32, pattern=_VISIBLE)]
    phone: str | None = None
    email: str | None = None
    address: str | None = None
    ward_code: WardCode | None = None


class Subject(_Model):
    """The place the case concerns (a land parcel, a residence)."""

    ward_code: WardCode | None = None
    description: str | None = None


class Document(_Model):
    """A document by reference: the broker never carries file bodies."""

    name: Annotated[str, Field(min_length=1, max_length=200)]
    uri: Annotated[str, Field(min_length=1, max_length=1000)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    size: Amount
    media_type: Annotated[str, Field(min_length=1, max_length=100)]


class DossierSubmitted(_Model):
    """desk → broker: a new dossier received at a desk."""

    schema_: Literal["casebroker.dossier.submitted/v1"] = Field(
        "casebroker.dossier.submitted/v1", alias="schema"
    )
    submission_id: UUID = Field(description=(
        "The desk's idempotency key: a submission sent again with the same id makes no "
        "second dossier. Any UUID; a time-ordered one (version 7, RFC 9562) keeps the "
        "ledger's indexes growing at their end."))
    procedure_code: ProcedureCode
    desk_id: PartyId
    return_desk_id: PartyId | None = None
    channel: Channel
    submitted_at: Timestamp
    applicant: Applicant
    subject: Subject | None = None
    documents: list[Document] = Field(default_factory=list, max_length=100)
    attributes: dict[str, AttributeValue] = Field(default_factory=dict)

    @property
    def collect_at(self) -> str:
        """The desk where the citizen collects the result."""
        return self.return_desk_id or self.desk_id


class DossierAssigned(_Model):
    """broker → agency: a dossier (or one step of a chain) for the competent agency."""

    schema_: Literal["casebroker.dossier.assigned/v1"] = Field(
        "casebroker.dossier.assigned/v1", alias="schema"
    )
    dossier_code: DossierCode
    submission_id: UUID
    procedure_code: ProcedureCode
    agency_id: PartyId
    step: Annotated[int, Field(ge=1)]
    steps: Annotated[int, Field(ge=1)]
    desk_id: PartyId
    return_desk_id: PartyId
    channel: Channel
    received_at: AwareDatetime
    due_at: AwareDatetime
    step_due_at: AwareDatetime
    applicant: Applicant
    subject: Subject | None = None
    documents: list[Document] = Field(default_factory=list)
    attributes: dict[str, AttributeValue] = Field(default_factory=dict)
    rule_id: str
    catalog_hash: str


class AgencyStatus(StrEnum):
    """What an agency may report about a dossier assigned to it, by the dossier's state
    (anything else is answered ``update_refused``, saying what is allowed now):

    - received (2): accepted, processing, supplement_requested, rejected, resolved
    - processing (4): accepted, processing, supplement_requested, financial_obligation,
      stopped, resolved
    - supplement_requested (5): stopped (the desk's supplemented resumes it: in received
      (2) if the request came on receipt, else in processing (4))
    - financial_obligation (6): processing, stopped, resolved
    - any other state: nothing

    ``resolved`` from a chain step before the last hands the dossier to the next step's
    agency (state 4); from the last, the result goes to the return desk (state 9).
    """

    ACCEPTED = "accepted"
    PROCESSING = "processing"
    SUPPLEMENT_REQUESTED = "supplement_requested"
    FINANCIAL_OBLIGATION = "financial_obligation"
    REJECTED = "rejected"
    STOPPED = "stopped"
    RESOLVED = "resolved"


#: the statuses that must say why (DOMAIN.md: a refusal is final "with reason"; a stop
#: ends the dossier as finally)
_REASON_REQUIRED = ("rejected", "stopped")


class DossierStatus(_Model):
    """agency → broker: a status update from the dossier's current assignee.

    ``rejected`` and ``stopped`` carry a ``reason`` (the citizen is told why the dossier
    ends); ``supplement_requested`` names what to bring, in ``requested_documents`` or in
    the ``reason``. The published schema says so; the status router answers one that does
    not with ``update_refused``, and the SDK refuses to send it."""

    # the docstring is the published contract's text (broker/contract.py): the status
    # router and the SDK both ask unsaid(), below

    retry_stamped: ClassVar[frozenset[str]] = frozenset({"sent_at"})
    #: the published schema says what :meth:`unsaid` checks
    model_config = ConfigDict(json_schema_extra={"allOf": [
        {"if": {"required": ["status"],
                "properties": {"status": {"enum": list(_REASON_REQUIRED)}}},
         "then": {"required": ["reason"],
                  "properties": {"reason": {"type": "string", "pattern": _SAID}}}},
        {"if": {"required": ["status"],
                "properties": {"status": {"const": "supplement_requested"}}},
         "then": {"anyOf": [
             {"required": ["reason"],
              "properties": {"reason": {"type": "string", "pattern": _SAID}}},
             {"required": ["requested_documents"],
              # one that shows: [" "] says nothing, as unsaid() finds
              "properties": {"requested_documents": {
                  "contains": {"type": "string", "pattern": _SAID}}}}]}},
    ]})

    schema_: Literal["casebroker.dossier.status/v1"] = Field(
        "casebroker.dossier.status/v1", alias="schema"
    )
    update_id: UUID
    dossier_code: DossierCode
    agency_id: PartyId
    status: AgencyStatus
    reason: Annotated[str, Field(max_length=2000)] | None = None
    documents: list[Document] = Field(default_factory=list, max_length=100)
    requested_documents: list[str] = Field(default_factory=list, max_length=100)
    amount_vnd: Amount | None = None
    sent_at: Timestamp = Field(description=(
        "When the agency made the update. The dossier's clocks go by it (a result's "
        "time against its due date, a pause's start, the next step's start), never "
        "later than the broker's clock, nor before the dossier's last event, nor before "
        "the end of its due day once it was told it is late, nor further back than the catalog's "
        "max_backdate_days; an update sent before the last one applied from the same "
        "agency is refused as stale."))

    def unsaid(self) -> str | None:
        """What this update leaves out that its status must say, in words (None: nothing).
        Not a decode error: a message the contract took before this rule, redelivered,
        must still be recognised as the one applied, and the agency is answered."""
        said = self.reason is not None and _SAYS.search(self.reason) is not None
        if self.status in _REASON_REQUIRED and not said:
            return (f"a {self.status.value} status says why, in reason: the citizen is "
                    "told why the dossier ends")
        if self.status == AgencyStatus.SUPPLEMENT_REQUESTED and not (
                said or any(_SAYS.search(d) for d in self.requested_documents)):
            return ("a supplement_requested status names what the citizen is to bring, in "
                    "requested_documents or in reason")
        return None


class DossierReturned(_Model):
    """desk → broker: the result was handed to the citizen. Only the return desk, only
    once the dossier is resolved (9)."""

    retry_stamped: ClassVar[frozenset[str]] = frozenset({"returned_at"})

    schema_: Literal["casebroker.dossier.returned/v1"] = Field(
        "casebroker.dossier.returned/v1", alias="schema"
    )
    event_id: UUID
    dossier_code: DossierCode
    desk_id: PartyId
    returned_at: Timestamp
    satisfaction: Rating | None = None


class DossierSupplemented(_Model):
    """desk → broker: the citizen brought the documents the agency asked for. Only while
    a supplement is requested (5)."""

    retry_stamped: ClassVar[frozenset[str]] = frozenset({"sent_at"})

    schema_: Literal["casebroker.dossier.supplemented/v1"] = Field(
        "casebroker.dossier.supplemented/v1", alias="schema"
    )
    event_id: UUID
    dossier_code: DossierCode
    desk_id: PartyId
    documents: list[Document] = Field(min_length=1, max_length=100)
    sent_at: Timestamp


class DossierWithdrawn(_Model):
    """desk → broker: the citizen withdrew the dossier: named by its code, or, held and
    never received (a ``held`` notice, no code), by the submission id its intake desk
    sent it under. Only while the dossier is open: submitted (1), received (2),
    processing (4), supplement_requested (5), financial_obligation (6)."""

    retry_stamped: ClassVar[frozenset[str]] = frozenset({"sent_at"})
    #: the published schema says "exactly one of the two" as the validator below does
    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": [key], "properties": {key: {"type": "string"}}}
        for key in ("dossier_code", "submission_id")]})

    schema_: Literal["casebroker.dossier.withdrawn/v1"] = Field(
        "casebroker.dossier.withdrawn/v1", alias="schema"
    )
    event_id: UUID
    dossier_code: DossierCode | None = Field(None, description=(
        "the dossier withdrawn; or leave it out and give submission_id: exactly one of "
        "the two"))
    submission_id: UUID | None = Field(None, description=(
        "for a dossier its intake desk has no code for (held: triaged, waiting for an "
        "operator): the submission id it was sent under. Only the intake desk may "
        "withdraw by it; one that has opened a dossier is answered update_refused with "
        "that dossier's code, to withdraw it by"))
    desk_id: PartyId
    reason: Annotated[str, Field(max_length=2000)] | None = None
    sent_at: Timestamp

    @model_validator(mode="after")
    def _code_or_submission(self) -> DossierWithdrawn:
        if (self.dossier_code is None) == (self.submission_id is None):
            raise ValueError("a withdrawal names its dossier by dossier_code, or one held "
                             "without a code by submission_id: exactly one of the two")
        return self


class NoticeKind(StrEnum):
    """What a notice to a desk or an agency is about; who gets each, and when:

    - receipt (intake desk): the dossier is received (state 2); it carries the code and
      the legal due date.
    - refused (intake desk at intake; the return desk when the agency refuses it later):
      state 3, ``reason`` says why. From triage, refused by an operator: no code.
    - held (intake desk; for a submission dead-lettered for its sender, the desk that sent
      it): no dossier was opened from this message, no code; matched by
      ``submission_id``. One whose ``reason`` begins ``submission_id_reused:`` is about
      another dossier sent under a submission id already taken: what the desk was told
      of the first one sent under that id (its receipt) stands; the other must go again
      under a new id.
    - status_changed, supplement_requested, financial_obligation, stopped, result_ready
      (return desk): the agency's update took effect (states 4, 5, 6, 8, 9);
      supplement_requested lists ``requested_documents``, financial_obligation
      ``amount_vnd``, result_ready the result ``documents``. status_changed also says a
      supplement took effect: state 2 if it was asked for on receipt, else 4 (to the
      intake desk too, when it brought the supplement).
    - withdrawn (return desk, the intake desk if it withdrew, the current agency):
      state 7. Without a code: withdrawn while held.
    - supplemented (current agency): the citizen brought the documents; the clock runs
      again, ``due_at`` and ``step_due_at`` are the moved due dates (``reason`` says
      them in words).
    - at_risk (agency and return desk) and overdue (agency): the legal due date is near
      or past; a chain step's agency hears of its own step's date too.
    - overdue_apology (return desk): the dossier is late; ``due_at`` is the new
      appointment to give the citizen.
    - update_refused (the sender): an update or desk event that did not take effect;
      ``reason`` says why, and begins ``not_yours:`` for a dossier that is not the
      sender's (or no dossier at all). Such a notice tells nothing of the dossier: to an
      agency it has no ``state``; to a desk it has only the code the desk sent, no
      ``submission_id``, ``procedure_code`` or ``state``.
    - closed (return desk and the agency that resolved): the return desk's ``returned``
      took effect, state 10; nothing more will happen to the dossier.
    """

    RECEIPT = "receipt"
    REFUSED = "refused"
    #: to the desk: no dossier was opened; it is held for an operator (triage), or must be
    #: sent again under a new submission id, or corrected (it broke the contract, or with
    #: per-party users named another desk). ``reason`` says which and why
    HELD = "held"
    STATUS_CHANGED = "status_changed"
    SUPPLEMENT_REQUESTED = "supplement_requested"
    FINANCIAL_OBLIGATION = "financial_obligation"
    RESULT_READY = "result_ready"
    STOPPED = "stopped"
    WITHDRAWN = "withdrawn"
    SUPPLEMENTED = "supplemented"
    AT_RISK = "at_risk"
    OVERDUE_APOLOGY = "overdue_apology"
    OVERDUE = "overdue"  # to the agency: the dossier is past its legal due date
    UPDATE_REFUSED = "update_refused"
    CLOSED = "closed"


#: how a refusal begins that tells its sender the dossier is not its own (or does not
#: exist): the same words either way, so a stranger learns nothing of another's dossier
NOT_YOURS = "not_yours"

#: notices that may be about a submission that opened no dossier (no dossier code): held,
#: refused at intake from triage by an operator, withdrawn while held, and a withdrawal
#: of such a submission refused
UNOPENED_NOTICES = frozenset({NoticeKind.HELD, NoticeKind.REFUSED, NoticeKind.WITHDRAWN,
                              NoticeKind.UPDATE_REFUSED})


class DeskNotice(_Model):
    """broker → desk: receipt, status change, supplement request, result ready, apology;
    or, about a submission that opened no dossier (no dossier code), held (``held``),
    refused at intake from triage by an operator (``refused``), withdrawn by its desk
    while held (``withdrawn``), or such a withdrawal refused (``update_refused``)."""

    # what the validator below says, for those who read the schema: submission_id,
    # procedure_code and state are absent only from a not_yours refusal
    model_config = ConfigDict(json_schema_extra={
        "if": {"required": ["notice", "reason"], "properties": {
            "notice": {"const": "update_refused"},
            "reason": {"type": "string", "pattern": "^not_yours:"}}},
        "then": {"required": ["dossier_code"], "not": {"anyOf": [
            {"required": [k]} for k in ("submission_id", "procedure_code", "state")]}},
        "else": {"required": ["submission_id", "procedure_code", "state"]}})

    schema_: Literal["casebroker.desk.notice/v1"] = Field(
        "casebroker.desk.notice/v1", alias="schema"
    )
    notice: NoticeKind
    dossier_code: DossierCode | None = Field(None, description=(
        "the dossier's code; in every notice but those about a submission that opened "
        "no dossier, which have none and the submission id says which dossier it is: "
        "held, refused from triage by an operator (no rule could route it), withdrawn "
        "by its desk while held, or such a withdrawal refused (update_refused)"))
    submission_id: UUID | None = Field(None, description=(
        "the submission that opened the dossier, or was held; absent only in an "
        "update_refused whose reason begins not_yours (see reason)"))
    desk_id: PartyId
    procedure_code: ProcedureCode | None = Field(None, description=(
        "absent only in an update_refused whose reason begins not_yours"))
    state: Annotated[int, Field(ge=1, le=10)] | None = Field(None, description=(
        "the dossier's state; absent only in an update_refused whose reason begins "
        "not_yours"))
    agency_id: PartyId | None = None
    received_at: AwareDatetime | None = None
    due_at: AwareDatetime | None = None
    applicant: Applicant | None = Field(None, description=(
        "whose dossier it is: in a receipt (Form 01), and in a result_ready, for the "
        "return desk to hand the result to that person (it may not be the desk that "
        "received the dossier). Personal data: for the desk's records, never its logs"))
    channel: Channel | None = Field(None, description=(
        "how the dossier was received; in a receipt"))
    return_desk_id: PartyId | None = Field(None, description=(
        "where the citizen collects the result; in a receipt"))
    reason: str | None = Field(None, description=(
        "why, in words; in an update_refused that begins not_yours, the desk event named "
        "a dossier that is not this desk's, or none at all: the notice then carries only "
        "the code the desk sent"))
    documents: list[Document] = Field(default_factory=list, description=(
        "in a receipt, the documents received (Form 01); in a result_ready, the result "
        "documents"))
    requested_documents: list[str] = Field(default_factory=list)
    amount_vnd: int | None = None
    issued_at: AwareDatetime

    @property
    def not_yours(self) -> bool:
        """An ``update_refused`` of an event about a dossier that is not the desk's."""
        return (self.notice == NoticeKind.UPDATE_REFUSED and self.reason is not None
                and self.reason.startswith(f"{NOT_YOURS}:"))

    @model_validator(mode="after")
    def _code_unless_never_opened(self) -> DeskNotice:
        # the kind first: the router builds a receipt per dossier, and the property's
        # checks cost more than this one comparison
        if self.notice is NoticeKind.UPDATE_REFUSED and self.not_yours:
            if self.dossier_code is None:
                raise ValueError("a not_yours refusal names the dossier_code the desk sent")
            if (self.submission_id, self.procedure_code, self.state) != (None, None, None):
                raise ValueError("a not_yours refusal tells nothing of the dossier: no "
                                 "submission_id, procedure_code or state")
            return self
        if self.submission_id is None or self.procedure_code is None or self.state is None:
            missing = [name for name in ("submission_id", "procedure_code", "state")
                       if getattr(self, name) is None]
            raise ValueError(f"{', '.join(missing)} required, except in an update_refused "
                             f"whose reason begins {NOT_YOURS}:")
        if self.notice == NoticeKind.HELD:
            if self.dossier_code is not None:
                raise ValueError("a held notice has no dossier_code: no dossier was opened")
        elif self.dossier_code is None and self.notice not in UNOPENED_NOTICES:
            raise ValueError("dossier_code is required, except in a notice about a "
                             "submission that opened no dossier (held, refused, withdrawn, "
                             "update_refused)")
        return self


class AgencyNotice(_Model):
    """broker → agency: an update refused, a withdrawal, supplements, deadline warnings."""

    schema_: Literal["casebroker.agency.notice/v1"] = Field(
        "casebroker.agency.notice/v1", alias="schema"
    )
    notice: NoticeKind
    dossier_code: DossierCode
    agency_id: PartyId
    state: Annotated[int, Field(ge=1, le=10)] | None = Field(None, description=(
        "the dossier's state; absent in an update_refused whose reason starts not_yours: "
        "the update named a dossier never assigned to this agency, or no dossier at all"))
    reason: str | None = None
    documents: list[Document] = Field(default_factory=list)
    due_at: AwareDatetime | None = Field(None, description=(
        "in a supplemented notice: the dossier's legal due date, moved by the working time "
        "the clock was stopped (the assignment's due_at no longer holds)"))
    step_due_at: AwareDatetime | None = Field(None, description=(
        "in a supplemented notice: this step's due date, moved likewise"))
    issued_at: AwareDatetime


Message = (
    DossierSubmitted
    | DossierAssigned
    | DossierStatus
    | DossierReturned
    | DossierSupplemented
    | DossierWithdrawn
    | DeskNotice
    | AgencyNotice
)

#: message kind (the AMQP ``type`` property) → model
KINDS: dict[str, type[_Model]] = {
    "dossier.submitted": DossierSubmitted,
    "dossier.assigned": DossierAssigned,
    "dossier.status": DossierStatus,
    "dossier.returned": DossierReturned,
    "dossier.supplemented": DossierSupplemented,
    "dossier.withdrawn": DossierWithdrawn,
    "desk.notice": DeskNotice,
    "agency.notice": AgencyNotice,
}
#: every kind at once, told apart by ``schema`` (a tagged union: no trial and error)
_ANY_KIND: TypeAdapter[Message] = TypeAdapter(
    Annotated[Message, Field(discriminator="schema_")])


_KIND_OF_MODEL = {model: kind for kind, model in KINDS.items()}


def kind_of(message: _Model) -> str:
    """The kind (``dossier.submitted`` ...) of a message model instance."""
    return _KIND_OF_MODEL[type(message)]


def encode(message: _Model) -> bytes:
    """Serialize a message to its canonical UTF-8 JSON body."""
    return message.model_dump_json(by_alias=True, exclude_none=True).encode()


def fingerprint(message: _Model) -> bytes:
    """16 bytes telling a message apart from a different one sent under the same id.

    A digest of the validated values, as :func:`encode` would write them, without the
    fields a retry may stamp afresh (:attr:`_Model.retry_stamped`): a retry by the SDK,
    or the same values with other spacing or field order, gives the same fingerprint; a
    changed value gives another (and so does another key order inside ``attributes``,
    a plain mapping). Costs a serialization in Rust and a SHA-256: 6-9 µs for a dossier
    here, which is why the router fingerprints the body instead (:func:`body_fingerprint`).
    """
    data = type(message).__pydantic_serializer__.to_json(
        message, by_alias=True, exclude_none=True, exclude=set(message.retry_stamped))
    return hashlib.sha256(data).digest()[:16]


def body_fingerprint(body: bytes) -> bytes:
    """16 bytes of a body's SHA-256: the fingerprint of a body outside the contract, and
    the router's (1.3 µs for a dossier here; a copy serialized another way differs)."""
    return hashlib.sha256(body).digest()[:16]


def decode(
    body: bytes,
    *,
    content_type: str | None = CONTENT_TYPE,
    expected: frozenset[str] | None = None,
    max_bytes: int = MAX_BODY_BYTES,
) -> Message:
    """Parse and validate one AMQP body; raise DecodeError with a reason code otherwise.

    ``expected`` limits the kinds accepted on a queue (a desk event on the intake
    queue is as wrong as a malformed body); ``max_bytes``, the size (what comes from
    casebroker may be larger than what goes to it: :data:`MAX_BROKER_BODY_BYTES`).
    """
    if content_type not in (CONTENT_TYPE, None, "") and not _json_with_utf8(content_type):
        raise DecodeError("wrong_content_type",
                          f"content type {shown_content_type(content_type)!r} is not JSON")
    if len(body) > max_bytes:
        raise DecodeError("too_large", f"{len(body)} bytes over the {max_bytes}-byte limit")
    try:
        message: Message = _ANY_KIND.validate_json(body)  # one pass, in Rust
    except ValidationError as e:
        raise _classify(body, e, expected) from None
    if expected is not None and kind_of(message) not in expected:
        raise DecodeError("unexpected_kind", f"{kind_of(message)} is not accepted on this queue")
    if (where := nul_in_text(body)) is not None:
        raise DecodeError("invalid_fields", f"{where}: a NUL character (\\u0000) in text")
    return message


def nul_in_text(body: bytes) -> str | None:
    """Where a JSON body holds a NUL character in text, or None (see :func:`_nul_in`):
    what :func:`decode` refuses and the SDK refuses to send."""
    if b"\\u0000" not in body:
        return None
    return _nul_in(json.loads(body))


def _json_with_utf8(content_type: str) -> bool:
    """``application/json`` as clients write it too: in any case, with a ``charset``
    parameter naming UTF-8 (JSON's only encoding, RFC 8259), quoted or not. Many HTTP-style
    clients set ``application/json; charset=utf-8``; it was dead-lettered as not JSON."""
    media, *params = (p.strip() for p in content_type.split(";"))
    if media.lower() != CONTENT_TYPE:
        return False
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() != "charset" or value.strip().strip('"').lower() not in (
                "utf-8", "utf8"):
            return False
    return True


def _nul_in(value: Any, path: str = "") -> str | None:
    """Where a parsed body holds a NUL character in a string (a key or a value), or None.

    JSON allows it, as \\u0000; PostgreSQL's text cannot hold it, and its json operators
    refuse a value that has one anywhere: taken, the batch's commit failed (the message
    dead-lettered as internal_error), or a later report did. Looked for only in a body
    that spells one, which no valid message needs."""
    if isinstance(value, str):
        return (path or "(body)") if "\x00" in value else None
    items = (value.items() if isinstance(value, dict)
             else enumerate(value) if isinstance(value, list) else ())
    for key, item in items:
        # the detail is stored: no NUL in it, nor a key the sender chose that may be a
        # name or an id number (the contract's own keys read as field names)
        name = str(key) if isinstance(key, int) else shown_key(str(key))
        where = f"{path}.{name}" if path else name
        if "\x00" in str(key):
            return where
        if (found := _nul_in(item, where)) is not None:
            return found
    return None


def _classify(body: bytes, error: ValidationError,
              expected: frozenset[str] | None = None) -> DecodeError:
    """The reason code of a body the contract refused: a kind this queue does not take is
    ``unexpected_kind`` whatever else is wrong with it (it is on the wrong queue first)."""
    first = error.errors(include_input=False, include_url=False)[0]
    if first["type"] == "json_invalid":
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as e:
            return DecodeError("not_utf8", f"body is not UTF-8 (byte {e.start})")
        # the parser's own words, with where (no input quoted): "lone leading surrogate in
        # hex escape", "recursion limit exceeded", "number out of range", "EOF while
        # parsing..." at line and column. Python's json, asked instead, took some of these
        # bodies (a lone surrogate: "body is not valid JSON", nothing more) and raised
        # past this function on others (a 5,000-digit number: ValueError; arrays nested
        # 3,000 deep: RecursionError), which the consumers took for their own failure
        return DecodeError("malformed_json", str(first["msg"]).removeprefix("Invalid JSON: "))
    if first["type"] in ("model_attributes_type", "dict_type") and not first["loc"]:
        return DecodeError("malformed_json", "body is not a JSON object")
    if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
        return DecodeError("unknown_kind", "unknown or missing schema")
    tag = first["loc"][0] if first["loc"] else None
    if expected is not None and isinstance(tag, str) and tag.startswith("casebroker."):
        kind = tag.removeprefix("casebroker.").split("/")[0]
        if kind not in expected:
            return DecodeError("unexpected_kind", f"{kind} is not accepted on this queue")
    return DecodeError("invalid_fields", describe_validation_error(error))


def describe_validation_error(error: ValidationError) -> str:
    """Summarize validation errors by field path and message, never echoing values."""
    problems = []
    for item in error.errors(include_input=False, include_url=False, include_context=False)[:10]:
        path = [str(p) for p in item["loc"]]
        if path and path[0].startswith("casebroker."):
            path = path[1:]  # the union's tag: the kind is known from the schema field
        # a key the sender chose (an attribute's, or a field the contract does not have)
        # may be a name or an id number ({"cccd_066090001234": ...}, {"Nguyễn Văn An":
        # ...}): said as such, never quoted; the sender knows which of its keys it is
        chosen = [i for i in range(len(path))
                  if (i == 1 and path[0] == "attributes")
                  or (item["type"] == "extra_forbidden" and i == len(path) - 1)]
        for i in chosen:
            path[i] = shown_key(path[i])
        problems.append(f"{'.'.join(path) or '(body)'}: {item['msg']}")
    return "; ".join(problems)


#: how a validation error's detail names a key the sender chose that may name someone
SENDERS_KEY = "<a key of the sender's>"
#: a key as a form field is named (``area_m2``, ``so_tang``): quoted in a detail
_FIELD_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def shown_key(key: str) -> str:
    """A key the sender chose, as an error's detail may quote it: as it is when it reads
    as a field's name (lower case, digits, ``_``; no phone or id number), else
    :data:`SENDERS_KEY` ("Nguyễn Văn An", "CCCD 066090001234" are keys senders used)."""
    if _FIELD_NAME.fullmatch(key) and not has_personal_digits(key):
        return key
    return SENDERS_KEY


def as_received(data: Mapping[str, Any]) -> DossierSubmitted:
    """A submission as the ledger keeps it, as it was received. One an earlier version
    took under looser checks than this one's (an applicant's name of spaces, a code with a
    newline) is built without them: a dossier already received must still move on (its
    result told, its chain handed on), where validating it afresh raised on every update
    and dead-lettered it as internal_error."""
    try:
        return DossierSubmitted.model_validate(data)
    except ValidationError:
        return DossierSubmitted.model_validate(_people_unchecked(data))


class _LooseApplicant(_Model):
    """An :class:`Applicant`'s shape, its text unchecked: what an earlier version's
    looser checks let in (a name of spaces, a ward code with a newline), no more."""

    kind: Literal["citizen", "organization"]
    name: str
    id_number: str
    phone: str | None = None
    email: str | None = None
    address: str | None = None
    ward_code: str | None = None


class _LooseSubject(_Model):
    """A :class:`Subject`'s shape, its text unchecked."""

    ward_code: str | None = None
    description: str | None = None


def _people_unchecked(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with its applicant and subject (when objects) built with their text as
    it is: what an earlier version's looser checks may have let into them. Their shape
    is checked all the same (a review: an applicant with no kind or name, numbers for
    its text or a field the contract lacks reached the SDK's handler): raises
    ValidationError."""
    loose = dict(data)
    for key, shape, model in (("applicant", _LooseApplicant, Applicant),
                              ("subject", _LooseSubject, Subject)):
        if isinstance(data.get(key), Mapping):
            checked = shape.model_validate(data[key])
            loose[key] = model.model_construct(checked.model_fields_set, **dict(checked))
    return loose


def decode_sent(body: bytes, *, content_type: str | None, expected: frozenset[str],
                max_bytes: int = MAX_BROKER_BODY_BYTES) -> Message:
    """:func:`decode` for what casebroker sends (an assignment, a notice), as strict but for
    the applicant and the subject of a dossier an earlier version took under looser
    checks (a name of spaces), built as they are, as :func:`as_received` builds the
    ledger's copy: the broker moves such a dossier on, and the SDK's inbox, refusing its
    assignment or its result, dead-lettered them where they were to be handled."""
    try:
        return decode(body, content_type=content_type, expected=expected, max_bytes=max_bytes)
    except DecodeError as e:
        if e.reason != "invalid_fields" or (loose := _loosely(body, expected)) is None:
            raise
        return loose


def _loosely(body: bytes, expected: frozenset[str]) -> Message | None:
    """The message of a body whose applicant and subject are built unchecked, or None if
    it fails the contract all the same (elsewhere than in them)."""
    if nul_in_text(body) is not None:  # refused in any field, as decode() refuses it
        return None
    data = json.loads(body)
    if not isinstance(data, dict):
        return None
    kind = str(data.get("schema", "")).removeprefix("casebroker.").split("/")[0]
    model = KINDS.get(kind)
    if model is None or kind not in expected or not any(
            isinstance(data.get(k), dict) for k in ("applicant", "subject")):
        return None
    try:
        return cast(Message, model.model_validate(_people_unchecked(data)))
    except ValidationError:
        return None


def published_schema(model: type[BaseModel], **options: Any) -> dict[str, Any]:
    """A message kind's JSON Schema as integrators are given it: ``schema`` required,
    as :func:`decode` requires it (it says which kind a body is; the models fill it in
    for whoever builds one in Python, so pydantic alone would publish it optional)."""
    schema = model.model_json_schema(by_alias=True, **options)
    schema["required"] = ["schema", *(r for r in schema.get("required", []) if r != "schema")]
    return schema


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every message kind, keyed by its schema id."""
    return {f"casebroker.{kind}/v1": published_schema(model) for kind, model in KINDS.items()}


def utc_now() -> datetime:
    """The current time, timezone-aware (UTC)."""
    from datetime import UTC

    return datetime.now(UTC)


_UNIX_MS_MAX = (1 << 48) - 1
_RANDOM_BITS_MAX = (1 << 74) - 1


def new_id(unix_ms: int | None = None, random_bits: int | None = None) -> UUID:
    """A new id for a submission, a desk event or a status update: a UUID of version 7.

    Version 7 (RFC 9562) starts with the Unix time in milliseconds, so ids made later
    sort later. The ledger keys its idempotency rows on these ids (``inbox`` by message
    id, ``dossiers`` by submission id, ``outbox`` by the delivery that caused it): new
    time-ordered ids land on the last page of each index, where random ones (version
    4) each dirty a page of their own, which a SQLite ledger writes whole to its log
    for every small batch: about a quarter of the router's log per dossier
    (docs/BENCHMARKS.md, "What the ledger writes per dossier"). Any UUID is accepted;
    this is what the SDK and the simulators use.

    ``unix_ms`` (default: now) and ``random_bits`` (74 bits; default: from the
    system's random source) exist so that simulators can make reproducible ids.
    """
    if unix_ms is None:
        unix_ms = time.time_ns() // 1_000_000
    if random_bits is None:
        random_bits = int.from_bytes(os.urandom(10)) >> 6
    if not 0 <= unix_ms <= _UNIX_MS_MAX:
        raise ValueError(f"unix_ms out of range for a UUIDv7: {unix_ms}")
    if not 0 <= random_bits <= _RANDOM_BITS_MAX:
        raise ValueError("random_bits must be a non-negative integer of at most 74 bits")
    # 48 bits of time, version 7, 12 random bits, variant 0b10, 62 random bits
    return UUID(int=(unix_ms << 80) | (0x7 << 76) | ((random_bits >> 62) << 64)
                | (0b10 << 62) | (random_bits & ((1 << 62) - 1)))
