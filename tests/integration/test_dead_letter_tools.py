"""`casebroker dead-letters` and `casebroker audit` against what the router, the status
router, the deadline watch and RabbitMQ itself put in the dead-letter queues (the real
RabbitMQ and ledger of this machine)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pika
import pytest

from broker.amqp import (
    DETAIL_HEADER,
    REASON_HEADER,
    SENT_BY_HEADER,
    SOURCE_HEADER,
    amqp_url,
    properties_for,
)
from broker.cli import main
from broker.consumers.common import to_agency, to_desk
from broker.consumers.router import Router
from broker.consumers.status import StatusRouter
from broker.envelope import Outbound
from broker.ledger import Ledger
from broker.messages import (
    AgencyNotice,
    DeskNotice,
    Document,
    DossierStatus,
    DossierSupplemented,
    NoticeKind,
    encode,
)
from broker.ops import deadletters, queues
from broker.ops.audit import audit
from broker.ops.progress import term_as_interrupt
from broker.ops.queues import Taken
from broker.rules.catalog import Catalog, load_catalog
from broker.rules.engine import Engine
from broker.service import declare_topology
from broker.topology import INTAKE_KEY, Topology
from tests.conftest import MINI_CATALOG, RunningBroker, queue_depth, wait_for
from tests.helpers import (
    FAR_DATE,
    Amqp,
    as_other_clients_send,
    cli,
    dossier,
    free_port,
    intake_delivery,
    status_delivery,
)

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
SUBMISSION = "0b9c6a57-3f7e-4c1e-9d3a-5d2f1e6b7a80"






def _publish_dead(amqp: Amqp, t: Topology, key: str, out: Outbound,
                  headers: dict[str, Any]) -> None:
    """A dead letter published the way its producer publishes it."""
    amqp.ch.basic_publish(t.dead_letter_exchange, key, out.body, pika.BasicProperties(
        content_type="application/json", delivery_mode=2, message_id=out.message_id,
        correlation_id=out.correlation_id, type=out.type, headers=headers), mandatory=True)


def _ids(amqp: Amqp, queue: str) -> list[str]:
    return [str(p.message_id) for p, _ in amqp.get_all(queue)]


def _desk_notice(t: Topology, code: str, desk: str = "T.MC.A") -> Outbound:
    return to_desk(t, DeskNotice(
        notice=NoticeKind.AT_RISK, dossier_code=code, submission_id=SUBMISSION, desk_id=desk,
        procedure_code="1.001193", state=2, agency_id="T.UBND.A", issued_at=NOW),
        f"{code}:at_risk:2026-11-28T09:00:00+07:00:desk")


def _agency_notice(t: Topology, code: str, agency: str = "T.UBND.A") -> Outbound:
    return to_agency(t, AgencyNotice(
        notice=NoticeKind.AT_RISK, dossier_code=code, agency_id=agency, state=2,
        issued_at=NOW), f"{code}:at_risk:2026-11-28T09:00:00+07:00:agency")


def test_an_unroutable_assignment_is_replayed_to_its_agency_not_to_the_router(
        declared: Topology, mini_catalog: Catalog, ledger: Ledger,
        run_broker: Callable[..., RunningBroker], amqp: Amqp,
        capsys: pytest.CaptureFixture[str]) -> None:
    t = declared
    run_broker()
    amqp.submit(t, dossier(applicant_ward="10002"))  # the router has declared and consumes
    wait_for(lambda: queue_depth(t.agency_queue("T.UBND.B")), what="the first assignment")
    amqp.delete_queues(t.agency_queue("T.UBND.A"))  # the agency's queue is gone
    d = dossier()                                  # ward 10001: for T.UBND.A
    amqp.submit(t, d)
    wait_for(lambda: queue_depth(t.dead_queue("agency")) == 1, what="the dead assignment")
    (code, _, _), = ledger.states_for_submissions([str(d.submission_id)]).values()
    declare_topology(amqp_url(), t, mini_catalog)  # the queue is back: replay

    rc, out, err = cli(capsys, t, "dead-letters", "replay", "--all", "--queue", "agency",
                       "--json")
    assert rc == 0, err
    assert json.loads(out)["messages"][0]["exchange"] == t.agency_exchange
    got = wait_for(lambda: amqp.get_all(t.agency_queue("T.UBND.A")), timeout_s=5,
                   what="the assignment in the agency's queue")
    assert [(p.message_id, p.type) for p, _ in got] == [(f"{code}:assigned:1",
                                                        "dossier.assigned")]
    assert queue_depth(t.dead_queue("agency")) == 0
    assert queue_depth(t.dead_queue("intake")) == 0     # not sent through the router


def test_replay_finds_the_destination_each_dead_letter_producer_wrote(
        declared: Topology, amqp: Amqp, capsys: pytest.CaptureFixture[str]) -> None:
    t = declared
    code = "T.UBND.A-261125-0001"
    # the deadline watch: no original exchange or routing key in the headers
    watch = {REASON_HEADER: "unroutable", SOURCE_HEADER: "watch"}
    desk_notice, agency_notice = _desk_notice(t, code), _agency_notice(t, code)
    _publish_dead(amqp, t, "desk", desk_notice, {
        **watch, DETAIL_HEADER: f"no queue for T.MC.A on {t.desk_exchange}"})
    _publish_dead(amqp, t, "agency", agency_notice, {
        **watch, DETAIL_HEADER: f"no queue for T.UBND.A on {t.agency_exchange}"})
    # the status router's unroutable notice (amqp_worker._on_return): source "status"
    returned = _desk_notice(t, "T.UBND.A-261125-0002", desk="T.MC.B")
    _publish_dead(amqp, t, "desk", returned, {
        REASON_HEADER: "unroutable", SOURCE_HEADER: "status",
        DETAIL_HEADER: f"no queue for T.MC.B on {t.desk_exchange}",
        "x-original-exchange": t.desk_exchange, "x-original-routing-key": "T.MC.B"})
    # an assignment the agency never managed to take: the quorum queue's delivery limit
    # dead-letters it with x-death
    poison = _agency_notice(t, "T.UBND.A-261125-0003", agency="T.UBND.B")
    amqp.publish(t.agency_exchange, "T.UBND.B", poison.body, message_id=poison.message_id,
                 type=poison.type)
    amqp.nack_until_dead_lettered(t.agency_queue("T.UBND.B"))
    wait_for(lambda: queue_depth(t.dead_queue("agency")) == 2, what="the delivery limit")

    rc, out, err = cli(capsys, t, "dead-letters", "replay", "--all", "--json")
    assert rc == 0, err
    assert json.loads(out)["replayed"] == 4
    assert _ids(amqp, t.desk_queue("T.MC.A")) == [desk_notice.message_id]
    assert _ids(amqp, t.desk_queue("T.MC.B")) == [returned.message_id]
    assert _ids(amqp, t.agency_queue("T.UBND.A")) == [agency_notice.message_id]
    assert _ids(amqp, t.agency_queue("T.UBND.B")) == [poison.message_id]
    for q in (t.dead_queue("agency"), t.dead_queue("desk"), t.intake_queue, t.status_queue):
        assert queue_depth(q) == 0, q


def test_a_message_that_cannot_be_replayed_holds_back_only_itself(
        declared: Topology, amqp: Amqp, capsys: pytest.CaptureFixture[str]) -> None:
    t = declared
    watch = {REASON_HEADER: "unroutable", SOURCE_HEADER: "watch"}
    first = _agency_notice(t, "T.UBND.A-261125-0001")
    last = _agency_notice(t, "T.UBND.B-261125-0004", agency="T.UBND.B")
    no_target = Outbound(t.agency_exchange, "", "garbled:1", "", None, None, b"\xff\xfe")
    gone = _agency_notice(t, "T.UBND.A-261125-0003", agency="T.GONE")
    _publish_dead(amqp, t, "agency", first, watch)
    _publish_dead(amqp, t, "agency", no_target, watch)     # names no agency: no target
    _publish_dead(amqp, t, "agency", gone, {                # its agency still has no queue
        **watch, "x-original-exchange": t.agency_exchange, "x-original-routing-key": "T.GONE"})
    _publish_dead(amqp, t, "agency", last, watch)

    for run in (1, 2):
        rc, out, err = cli(capsys, t, "dead-letters", "replay", "--all", "--queue", "agency")
        assert rc == 1
        assert "garbled:1" in err and gone.message_id in err and "Traceback" not in err
        assert f"{2 if run == 1 else 0} message(s) replayed" in out
        assert "2 message(s) not replayed" in err
        # each good message reached its agency once, in the first run only
        assert _ids(amqp, t.agency_queue("T.UBND.A")) == ([first.message_id] if run == 1 else [])
        assert _ids(amqp, t.agency_queue("T.UBND.B")) == ([last.message_id] if run == 1 else [])
        assert queue_depth(t.dead_queue("agency")) == 2
    rc, out, _ = cli(capsys, t, "dead-letters", "list", "--queue", "agency", "--json")
    assert rc == 0
    assert sorted(m["message_id"] for m in json.loads(out)) == sorted(["garbled:1",
                                                                        gone.message_id])


def test_discard_takes_out_only_the_dead_letters_named_and_never_triage(
        declared: Topology, amqp: Amqp, capsys: pytest.CaptureFixture[str]) -> None:
    # bad input nobody will replay would wait for an operator for ever (and keep
    # CasebrokerSetAsideWaiting firing): discarded by id, or a whole queue named
    t = declared
    bad = {REASON_HEADER: "malformed_json", SOURCE_HEADER: "router"}
    for i in (1, 2):
        _publish_dead(amqp, t, "intake", Outbound(t.intake_exchange, "dossier", f"junk:{i}",
                                                  "", None, None, b"{"), bad)
    notice = _desk_notice(t, "T.UBND.A-261125-0001")
    _publish_dead(amqp, t, "desk", notice, {REASON_HEADER: "unroutable", SOURCE_HEADER: "watch"})
    amqp.publish(t.dead_letter_exchange, "triage", encode(dossier("9.999999")),
                 message_id="held:1", type="dossier.submitted")

    rc, out, err = cli(capsys, t, "dead-letters", "discard", "--id", "junk:1", "--id", "held:1",
                       "--id", "nowhere:1")
    assert rc == 1 and "intake: junk:1 discarded (malformed_json)" in out
    assert "1 message(s) discarded" in out and "error: not found: nowhere:1" in err
    # a triage copy asked for by id is named as such, with what to do instead
    assert ("error: held:1 is in triage, which is never discarded: its desk waits for an "
            "answer. `dead-letters replay --id held:1` once a rule routes it, or "
            "`dead-letters refuse --id held:1 --reason ...`") in err
    assert "not found: held:1" not in err
    assert queue_depth(t.dead_queue("intake")) == 1  # junk:2, below
    assert queue_depth(t.triage_queue) == 1  # triage is replayed or refused, never discarded
    rc, _, err = cli(capsys, t, "dead-letters", "discard", "--all")
    assert rc == 2 and "--all needs --queue" in err
    assert queue_depth(t.dead_queue("desk")) == 1
    _publish_dead(amqp, t, "desk", _desk_notice(t, "T.UBND.A-261125-0002"),
                  {REASON_HEADER: "unroutable", SOURCE_HEADER: "watch"})
    rc, out, err = cli(capsys, t, "dead-letters", "discard", "--id", notice.message_id)
    assert rc == 0 and f"desk: {notice.message_id} discarded (unroutable)" in out
    assert "warning: 1 of them were for an agency or a desk, which will not have them" in err
    rc, out, err = cli(capsys, t, "dead-letters", "discard", "--all", "--queue", "desk",
                       "--json")
    assert rc == 0 and json.loads(out)["discarded"] == 1
    assert "warning: 1 of them were for an agency or a desk" in err  # with --json too
    rc, out, err = cli(capsys, t, "dead-letters", "discard", "--all", "--queue", "intake",
                       "--json")
    assert rc == 0 and json.loads(out)["discarded"] == 1
    assert [m["message_id"] for m in json.loads(out)["messages"]] == ["junk:2"]
    assert "RabbitMQ dead-lettered itself" not in err  # the router's: in the ledger
    for which in ("intake", "desk"):
        assert queue_depth(t.dead_queue(which)) == 0
    assert queue_depth(t.triage_queue) == 1
    # one RabbitMQ dead-lettered itself (its delivery limit) no router judged: the ledger
    # holds no copy of it, and the operator is told so (found by a review)
    _publish_dead(amqp, t, "intake", Outbound(t.intake_exchange, "dossier", "worn:1", "",
                                              None, None, encode(dossier())),
                  {"x-first-death-reason": "delivery_limit"})
    rc, out, err = cli(capsys, t, "dead-letters", "discard", "--id", "worn:1")
    assert rc == 0 and "intake: worn:1 discarded (rabbitmq:delivery_limit)" in out
    assert ("warning: 1 of them RabbitMQ dead-lettered itself (a delivery limit, before a "
            "router judged them): the ledger holds no copy of what they carried") in err


def test_show_gives_every_copy_of_an_id_in_text_as_in_json(
        declared: Topology, amqp: Amqp, capsys: pytest.CaptureFixture[str]) -> None:
    t = declared
    body = encode(dossier("9.999999"))
    amqp.publish(t.dead_letter_exchange, "triage", body, message_id="twice:1",
                 type="dossier.submitted")
    _publish_dead(amqp, t, "intake", Outbound(t.intake_exchange, "dossier", "twice:1",
                                              "dossier.submitted", None, None, body),
                  {REASON_HEADER: "stale", SOURCE_HEADER: "router"})
    rc, out, _ = cli(capsys, t, "dead-letters", "show", "twice:1", "--json")
    assert rc == 0 and sorted(m["queue"] for m in json.loads(out)) == ["intake", "triage"]
    rc, out, _ = cli(capsys, t, "dead-letters", "show", "twice:1")
    assert rc == 0 and out.startswith("2 messages with this id, in intake, triage:\n")
    assert out.count('"message_id": "twice:1"') == 2


def test_a_missing_queue_is_named_and_the_others_are_read(
        declared: Topology, amqp: Amqp, capsys: pytest.CaptureFixture[str]) -> None:
    # one operator queue deleted (or a topology declared by an older version): the tools
    # name it and go on with the rest, where RabbitMQ's 404 was a traceback before
    t = declared
    notice = _agency_notice(t, "T.UBND.A-261125-0001")
    _publish_dead(amqp, t, "agency", notice, {REASON_HEADER: "unroutable",
                                              SOURCE_HEADER: "watch"})
    amqp.delete_queues(t.dead_queue("status"))
    rc, out, err = cli(capsys, t, "dead-letters", "list", "--json")
    assert rc == 1 and "Traceback" not in err
    assert [m["message_id"] for m in json.loads(out)] == [notice.message_id]
    assert f"error: status: no queue {t.dead_queue('status')}" in err
    assert "casebroker topology declare" in err and "message(s)" not in err
    rc, out, err = cli(capsys, t, "dead-letters", "replay", "--all")
    assert rc == 1 and "1 message(s) replayed" in out and "no queue" in err
    assert _ids(amqp, t.agency_queue("T.UBND.A")) == [notice.message_id]


@pytest.mark.parametrize("args", [("list",), ("replay", "--all"), ("show", "x"),
                                  ("discard", "--all", "--queue", "desk")])
def test_a_wrong_prefix_is_said_once_not_read_as_no_message(
        args: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    # no operator queue under the prefix: it said "0 message(s)", read as all clear, and
    # an error per queue, five lines of the same cause
    nowhere = Topology(f"cbnone{uuid.uuid4().hex[:8]}")
    rc, out, err = cli(capsys, nowhere, "dead-letters", *args)
    assert (rc, out) == (1, "")
    assert err.count("\n") == 1 and err.startswith("error: RabbitMQ has no queue")
    assert f"{nowhere.prefix}.dead.desk" in err and "a wrong --prefix" in err


def test_rabbitmq_out_of_reach_is_one_line_without_the_password(
        declared: Topology, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASEBROKER_AMQP_URL",
                       f"amqp://guest:s3cret-pw@127.0.0.1:{free_port()}/")
    for args in (("dead-letters", "list"), ("topology", "declare")):
        rc, out, err = cli(capsys, declared, *args)
        assert rc == 1 and "Traceback" not in err and "s3cret-pw" not in err + out
        assert "error: RabbitMQ unreachable at amqp://guest:***@127.0.0.1:" in err
        assert "Connection refused" in err


def test_the_operators_login_need_not_be_the_dead_letters_sender(
        declared: Topology, amqp: Amqp, operator_url: str,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    t = declared
    # the router stamps its own login (here guest) on what it dead-letters
    for mid in ("bad:1", "bad:2"):
        amqp.ch.basic_publish(t.dead_letter_exchange, "intake", b"{", pika.BasicProperties(
            content_type="application/json", delivery_mode=2, message_id=mid, user_id="guest",
            headers={REASON_HEADER: "malformed_json", SOURCE_HEADER: "intake"}),
            mandatory=True)
    monkeypatch.setenv("CASEBROKER_AMQP_URL", operator_url)
    for _ in range(2):
        rc, out, err = cli(capsys, t, "dead-letters", "list", "--json")
        assert rc == 0, err
        listed = json.loads(out)
        assert [m["message_id"] for m in listed] == ["bad:1", "bad:2"]
        assert {m["sent_by"] for m in listed} == {"guest"}     # the original sender, kept
    rc, _, err = cli(capsys, t, "dead-letters", "show", "bad:2")
    assert rc == 0, err
    rc, out, err = cli(capsys, t, "dead-letters", "replay", "--id", "bad:2")
    assert rc == 0, err
    assert _ids(amqp, t.intake_queue) == ["bad:2#replay1"]   # no router runs here
    assert _ids(amqp, t.dead_queue("intake")) == ["bad:1"]


def test_audit_counts_what_sits_in_dead_agency_and_dead_desk_and_unreadable_queues(
        declared: Topology, ledger: Ledger, run_broker: Callable[..., RunningBroker],
        amqp: Amqp, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    t = declared
    monkeypatch.setenv("CASEBROKER_DB_URL", ledger.engine.url.render_as_string(
        hide_password=False))
    run_broker()
    amqp.submit(t, dossier(applicant_ward="10002"))  # the router has declared and consumes
    wait_for(lambda: queue_depth(t.agency_queue("T.UBND.B")), what="the first assignment")
    rc, out, err = cli(capsys, t, "audit", "--json")
    report = json.loads(out)
    assert rc == 0, err
    assert report["undelivered"] == 0 and report["queues_error"] is None
    listed = tmp_path / "sent.txt"  # a desk's list naming one submission twice
    sid = str(uuid.uuid4())
    listed.write_text(f"{sid}\n  {sid.upper()}  \n\n")  # the same id, as a desk may write it
    rc, out, err = cli(capsys, t, "audit", "--json", "--submissions", str(listed))
    assert json.loads(out)["submissions_checked"] == 1

    amqp.delete_queues(t.agency_queue("T.UBND.A"))
    amqp.submit(t, dossier())                       # its assignment: dead.agency
    wait_for(lambda: queue_depth(t.dead_queue("agency")) == 1, what="the dead assignment")
    wait_for(lambda: queue_depth(t.intake_queue) == 0, what="intake drained")
    rc, out, _ = cli(capsys, t, "audit", "--json")
    report = json.loads(out)
    assert rc == 1 and report["unaccounted"] == 0    # the outbox has it; the agency has not
    assert report["undelivered"] == 1 and report["queues"]["dead.agency"] == 1
    rc, out, _ = cli(capsys, t, "audit")
    assert rc == 1 and "1 undelivered" in out and "dead.agency" in out
    assert "set aside" not in out
    # what waits for an operator is said in the text too, not only in --json
    amqp.submit(t, dossier("9.999999"))  # triaged
    amqp.publish(t.intake_exchange, "dossier", b"{", message_id="broken-1",
                 type="dossier.submitted")
    wait_for(lambda: queue_depth(t.dead_queue("intake")) == 1, what="the broken dossier")
    wait_for(lambda: queue_depth(t.triage_queue) == 1, what="the triaged dossier")
    rc, out, _ = cli(capsys, t, "audit")
    assert "  set aside: 1 in triage, 1 in dead.intake (casebroker dead-letters list" in out

    # RabbitMQ unreachable: said so, where, and not a clean bill
    port = free_port()
    monkeypatch.setenv("CASEBROKER_AMQP_URL", f"amqp://guest:s3cret@127.0.0.1:{port}/")
    amqp.get_all(t.dead_queue("agency"))
    rc, out, _ = cli(capsys, t, "audit", "--json")
    report = json.loads(out)
    assert rc == 1 and report["queues"] is None and report["queues_error"]
    rc, out, _ = cli(capsys, t, "audit")
    assert rc == 1 and "undelivered; pending unknown;" in out and "None" not in out
    assert f"  queues unreadable: RabbitMQ unreachable at amqp://guest:***@127.0.0.1:{port}/" \
        in out and "s3cret" not in out


def test_show_prints_only_fields_known_to_carry_no_personal_data(
        declared: Topology, amqp: Amqp, capsys: pytest.CaptureFixture[str]) -> None:
    t = declared
    secret = ["Nguy", "066090001234", "0905000000", "Trần Văn Bình", "Lê Thị", "cccd-an",
              "s3://docs/an", "Phạm", "Ng\\u", "\\xff"]
    d = dossier(subject={"ward_code": "10001", "description": "Thửa đất của Trần Văn Bình"},
                attributes={"owner_note": "Lê Thị Cúc"},
                documents=[{"name": "cccd-an.pdf", "uri": "s3://docs/an/cccd", "sha256": "a" * 64,
                            "size": 1, "media_type": "application/pdf"}])
    status = {"schema": "casebroker.dossier.status/v1", "update_id": SUBMISSION,
              "dossier_code": "T.UBND.A-261125-0001", "agency_id": "T.UBND.A",
              "status": "rejected", "reason": "Ông Phạm Văn Dũng thiếu giấy tờ",
              "sent_at": "2026-11-28T09:00:00+07:00"}
    odd = {"desk_id": "Nguyễn Văn An", "Nguyễn Thị Hoa": "066090001234", "channel": 1,
           # failed its checks for this: a phone and an id number in the wrong fields
           "applicant": {"ward_code": "0905000000"}, "status": "066090001234",
           "state": 66090001234, "catalog_hash": "0123456789abcdef0123456789abcdef"}
    raw = "Nguyễn Văn An 066090001234".encode() + b"\xff"
    bodies = {"submit:d": d.model_dump_json(by_alias=True).encode(),
              "status:s": json.dumps(status, ensure_ascii=False).encode(),
              "bad:odd": json.dumps(odd, ensure_ascii=False).encode(), "bad:raw": raw}
    for mid, body in bodies.items():
        amqp.ch.basic_publish(t.dead_letter_exchange, "intake", body, pika.BasicProperties(
            content_type="application/json", delivery_mode=2, message_id=mid,
            headers={REASON_HEADER: "malformed_json", SOURCE_HEADER: "intake"}),
            mandatory=True)

    shown: dict[str, Any] = {}
    for mid in bodies:
        rc, out, err = cli(capsys, t, "dead-letters", "show", mid, "--queue", "intake")
        assert rc == 0, err
        for s in secret:
            assert s not in out, (mid, s)
        shown[mid] = json.loads(out)["body"]
    sub = shown["submit:d"]
    assert sub["submission_id"] == str(d.submission_id) and sub["procedure_code"] == "1.001193"
    assert sub["applicant"]["kind"] == "citizen" and sub["applicant"]["ward_code"] == "10001"
    assert sub["subject"]["ward_code"] == "10001"
    assert {"applicant.name", "applicant.id_number", "subject.description", "documents",
            "attributes"} <= set(sub["withheld"])
    st = shown["status:s"]
    assert st["status"] == "rejected" and st["dossier_code"] == "T.UBND.A-261125-0001"
    assert "reason" in st["withheld"]
    assert shown["bad:odd"]["channel"] == 1 and "desk_id" in shown["bad:odd"]["withheld"]
    assert {"applicant.ward_code", "status", "state"} <= set(shown["bad:odd"]["withheld"])
    assert shown["bad:odd"]["catalog_hash"] == "0123456789abcdef0123456789abcdef"
    assert shown["bad:raw"] == {"undecodable": True, "size": len(raw),
                                "sha256": hashlib.sha256(raw).hexdigest()}
    assert queue_depth(t.dead_queue("intake")) == 4


def test_a_message_id_that_could_hold_personal_data_is_shown_and_taken_as_a_digest(
        declared: Topology, amqp: Amqp, capsys: pytest.CaptureFixture[str]) -> None:
    # a sender's own message id is printed by every dead-letters command; one with a name
    # and an id number in it was printed whole beside a correlation id shown as withheld
    # (found by a review)
    t = declared
    named = "Nguyễn Văn An 066090001234"
    digest = "withheld-" + hashlib.sha256(named.encode()).hexdigest()[:16]
    plain = ["submit:12345678-1234-1234-1234-123456789012", "T.UBND.A-261125-0001:receipt",
             "submit:x#replay2", "abc@desk"]
    for mid in [named, *plain]:
        amqp.ch.basic_publish(t.dead_letter_exchange, "intake", b"{", pika.BasicProperties(
            content_type="application/json", delivery_mode=2, message_id=mid,
            headers={REASON_HEADER: "malformed_json", SOURCE_HEADER: "intake"}),
            mandatory=True)
    rc, out, _ = cli(capsys, t, "dead-letters", "list", "--queue", "intake", "--json")
    assert rc == 0 and [m["message_id"] for m in json.loads(out)] == [digest, *plain]
    rc, out, _ = cli(capsys, t, "dead-letters", "list", "--queue", "intake")
    assert rc == 0 and "066090001234" not in out and "Nguy" not in out
    for asked in (digest, named):  # either form names it
        rc, out, _ = cli(capsys, t, "dead-letters", "show", asked, "--queue", "intake")
        assert rc == 0 and json.loads(out)["message_id"] == digest
        assert "066090001234" not in out
    rc, out, err = cli(capsys, t, "dead-letters", "discard", "--queue", "intake",
                       "--id", named, "--id", plain[2])
    assert rc == 0 and "2 message(s) discarded" in out, err
    assert "066090001234" not in out + err
    assert _ids(amqp, t.dead_queue("intake")) == [plain[0], plain[1], plain[3]]


def test_refuse_closes_a_triaged_dossier_once_and_its_desk_hears_it_once(
        declared: Topology, ledger: Ledger, run_broker: Callable[..., RunningBroker],
        amqp: Amqp, capsys: pytest.CaptureFixture[str]) -> None:
    # a procedure the province does not handle: triaged, and no catalog fix will route it
    t = declared
    run_broker()
    never = dossier("9.999999")
    stray = dossier(desk_id="T.NOWHERE", applicant_ward="99999")  # a desk with no queue
    lost = dossier(applicant_ward="99999")                         # a ward no unit serves
    for d in (never, stray, lost):
        amqp.submit(t, d)
    wait_for(lambda: queue_depth(t.triage_queue) == 3, what="three dossiers triaged")
    wait_for(lambda: queue_depth(t.desk_queue("T.MC.B")) == 2, what="two held notices")
    amqp.get_all(t.desk_queue("T.MC.B"))
    reason = "Thủ tục 9.999999 không thuộc danh mục tiếp nhận không phụ thuộc địa giới"
    on_shipped = ("dead-letters", "refuse", "--reason", reason, "--by", "operator-1",
                  "--db-url", ledger.url)
    refuse = (*on_shipped, "--catalog", str(MINI_CATALOG))
    never_id, stray_id, lost_id = (f"submit:{d.submission_id}" for d in (never, stray, lost))

    # read against another catalog than the routers' (here the shipped one), its desk is
    # one nobody can tell: said so, and nothing refused
    rc, out, err = cli(capsys, t, *on_shipped, "--id", never_id)
    assert rc == 1 and "desk T.MC.B has nobody to tell: the catalog has no such desk" in err
    assert "refuse reads the catalog --catalog names, as the routers do" in err
    assert ledger.refusal(str(never.submission_id)) is None
    assert queue_depth(t.triage_queue) == 3 and queue_depth(t.desk_queue("T.MC.B")) == 0

    rc, out, err = cli(capsys, t, *refuse, "--id", never_id, "--json")
    assert rc == 0, err
    (done,) = json.loads(out)["messages"]
    assert done["refused_before"] is False and done["notice_id"] == f"{never_id}:refused"
    (props, body), = amqp.get_all(t.desk_queue("T.MC.B"))
    notice = json.loads(body)
    assert props.message_id == f"{never_id}:refused" and props.type == "desk.notice"
    assert (notice["notice"], notice["state"], notice["reason"]) == ("refused", 3, reason)
    assert "dossier_code" not in notice and notice["submission_id"] == str(never.submission_id)
    left = amqp.get_all(t.triage_queue)
    assert sorted(p.message_id for p, _ in left) == sorted([stray_id, lost_id])
    for props, body in left:  # back in triage as they were, for the next tests below
        amqp.publish(t.dead_letter_exchange, "triage", body, message_id=props.message_id,
                     type="dossier.submitted", headers=props.headers)

    # its triage copy again (a crash after the refusal was committed, before the ack):
    # refused again as before, its desk told under the same message id
    amqp.publish(t.dead_letter_exchange, "triage", encode(never), message_id=never_id,
                 type="dossier.submitted")
    rc, out, err = cli(capsys, t, *refuse, "--reason", "another reason", "--id", never_id,
                       "--json")
    assert rc == 0, err
    assert json.loads(out)["messages"][0]["refused_before"] is True
    (props, body), = amqp.get_all(t.desk_queue("T.MC.B"))
    assert props.message_id == f"{never_id}:refused" and json.loads(body) == notice

    # the desk sends it again under a new message id: the same refusal, no dossier; a
    # different dossier under its submission id is dead-lettered, its desk told it is held
    amqp.submit(t, never, message_id="desk-retry-1")
    amqp.submit(t, never.model_copy(update={"procedure_code": "1.001193"}),
                message_id="desk-retry-2")
    wait_for(lambda: queue_depth(t.dead_queue("intake")) == 1, what="the reused id")
    wait_for(lambda: queue_depth(t.desk_queue("T.MC.B")) == 2, what="two notices")
    notices = {p.message_id: json.loads(b) for p, b in amqp.get_all(t.desk_queue("T.MC.B"))}
    assert notices[f"{never_id}:refused"] == notice
    assert notices["desk-retry-2:held"]["reason"].startswith("submission_id_reused: ")
    (dead, _), = amqp.get_all(t.dead_queue("intake"))
    assert "a submission closed at intake" in dead.headers[DETAIL_HEADER]
    assert ledger.count_by_state() == {}
    assert ledger.count_inbox_outcomes()["duplicate"] == 1

    # nobody to tell: put back, nothing recorded
    rc, out, err = cli(capsys, t, *refuse, "--id", stray_id)
    # the router triaged it for a desk the catalog lacks: that is what is said
    assert rc == 1 and "desk T.NOWHERE has nobody to tell: the catalog has no such desk " \
        "(triaged as unknown_desk)" in err
    assert ledger.refusal(str(stray.submission_id)) is None
    # corrected and received since it was triaged: nothing to refuse
    amqp.submit(t, lost.model_copy(update={"applicant": lost.applicant.model_copy(
        update={"ward_code": "10001"})}), message_id="desk-corrected")
    wait_for(lambda: ledger.count_by_state() == {2: 1}, what="the corrected dossier")
    rc, out, err = cli(capsys, t, *refuse, "--id", lost_id, "--id", "no-such-id")
    assert rc == 1 and "opened dossier T.UBND.A-" in err and "not in triage: no-such-id" in err
    assert ledger.refusal(str(lost.submission_id)) is None
    assert sorted(_ids(amqp, t.triage_queue)) == sorted([stray_id, lost_id])  # put back
    # replayed as `refuse` advises, the stale copy is answered with the corrected copy's
    # receipt, under its id (the desk drops it), and opens nothing: no held notice saying
    # the id was reused, which would have the desk send it again under a new one
    (receipt, _), = amqp.get_all(t.desk_queue("T.MC.B"))
    amqp.publish(t.dead_letter_exchange, "triage", encode(lost), message_id=lost_id,
                 type="dossier.submitted")  # taken off by the look just above
    code = receipt.message_id.removesuffix(":receipt")
    rc, out, err = cli(capsys, t, "dead-letters", "list", "--queue", "triage", "--db-url",
                       ledger.url)
    assert rc == 0 and f"[received since as {code}; replay takes it out]" in out, err
    rc, out, err = cli(capsys, t, "dead-letters", "list", "--queue", "triage", "--db-url",
                       ledger.url, "--json")
    assert [(f["message_id"], f["opened"], f["closed"]) for f in json.loads(out)] == [
        (lost_id, code, None)]
    rc, out, err = cli(capsys, t, "dead-letters", "replay", "--id", lost_id)
    assert rc == 0, err
    wait_for(lambda: queue_depth(t.desk_queue("T.MC.B")) == 1, what="the receipt again")
    (again, _), = amqp.get_all(t.desk_queue("T.MC.B"))
    assert again.message_id == receipt.message_id and again.message_id.endswith(":receipt")
    assert queue_depth(t.dead_queue("intake")) == 0 and queue_depth(t.triage_queue) == 0
    assert ledger.count_by_state() == {2: 1}

    report = audit(ledger, t, [str(d.submission_id) for d in (never, stray, lost)])
    assert report["refused_from_triage"] == 1 and report["unaccounted"] == 0
    glued = f"{never.submission_id}{lost.submission_id}"  # a line of the desk's list gone bad
    report = audit(ledger, t, [str(never.submission_id), glued])
    assert report["unaccounted_submissions"] == [
        {"submission_id": glued, "problem": "not a submission id (a UUID)"}]
    # what the desk's helpdesk sees
    assert main(["dossier", "show", str(never.submission_id), "--db-url", ledger.url]) == 0
    out = capsys.readouterr().out
    assert "refused at intake (3) by operator-1" in out
    assert "066090001234" not in out  # the applicant stays out of it, and the reason's
    assert reason not in out  # words, for the citizen (the desk was told them)


def test_a_dossier_from_a_desk_that_does_not_exist_leaves_triage_told_to_nobody(
        declared: Topology, ledger: Ledger, run_broker: Callable[..., RunningBroker],
        amqp: Amqp, capsys: pytest.CaptureFixture[str]) -> None:
    # junk, or a phone number in desk_id: triaged as unknown_desk, and no catalog fix is
    # right for it; refused only when the operator says nobody will be told, and the
    # id, which may be a phone number, is never printed
    t = declared
    run_broker()
    junk = dossier(desk_id="0912345678901")
    amqp.submit(t, junk)
    wait_for(lambda: queue_depth(t.triage_queue) == 1, what="triaged")
    mid, sid = f"submit:{junk.submission_id}", str(junk.submission_id)
    refuse = ("dead-letters", "refuse", "--id", mid, "--reason", "no such desk",
              "--catalog", str(MINI_CATALOG), "--db-url", ledger.url)
    rc, out, err = cli(capsys, t, *refuse)
    assert rc == 1 and "desk <13 characters withheld: a phone or id number?> has nobody " \
        "to tell" in err and "refuse --without-notice" in err
    assert ledger.refusal(sid) is None and queue_depth(t.triage_queue) == 1
    rc, out, err = cli(capsys, t, *refuse, "--without-notice")
    assert rc == 0, err
    assert f"triage: {mid}: submission {sid} refused; desk <13 characters withheld: a " \
        "phone or id number?> has no queue, nobody told" in out
    assert "0912345678901" not in out + err
    refused = ledger.refusal(sid)
    assert refused is not None and refused["state"] == 3
    assert queue_depth(t.triage_queue) == 0
    report = audit(ledger, t, [sid])
    assert report["refused_from_triage"] == 1 and report["unaccounted"] == 0


def test_refuse_takes_every_triaged_dossier_of_a_procedure_the_province_does_not_take(
        declared: Topology, ledger: Ledger, run_broker: Callable[..., RunningBroker],
        amqp: Amqp, capsys: pytest.CaptureFixture[str]) -> None:
    t = declared
    run_broker()
    others = [dossier("9.999998"), dossier("9.999998", desk_id="T.MC.A")]
    lost = dossier(applicant_ward="99999")  # another procedure, another reason: stays
    for d in (*others, lost):
        amqp.submit(t, d)
    wait_for(lambda: queue_depth(t.triage_queue) == 3, what="three dossiers triaged")
    refuse = ("dead-letters", "refuse", "--procedure", "9.999998", "--reason", "not here",
              "--catalog", str(MINI_CATALOG), "--db-url", ledger.url)
    rc, out, err = cli(capsys, t, *refuse)
    assert rc == 0, err
    assert out.splitlines()[-1] == "2 dossier(s) refused"
    assert _ids(amqp, t.triage_queue) == [f"submit:{lost.submission_id}"]
    for d in others:
        assert ledger.refusal(str(d.submission_id)) is not None
    rc, out, err = cli(capsys, t, *refuse)  # nothing of it left
    assert rc == 1 and "no dossier of procedure 9.999998 in triage as unknown_procedure" in err
    # a procedure the catalog has, triaged for a ward no unit serves: a catalog fix may
    # route it, so --procedure leaves it, and says so (it refused it for good)
    amqp.submit(t, lost, message_id="lost-again")  # triage emptied by _ids above
    wait_for(lambda: queue_depth(t.triage_queue) == 1, what="triaged again")
    rc, out, err = cli(capsys, t, "dead-letters", "refuse", "--procedure", "1.001193",
                       "--reason", "not here", "--catalog", str(MINI_CATALOG),
                       "--db-url", ledger.url)
    assert rc == 1 and out == "0 dossier(s) refused\n"
    assert err.splitlines() == [
        "1 dossier(s) of procedure 1.001193 left in triage, set aside for another reason "
        "than unknown_procedure (area_not_served: 1): a fix of the catalog or of the dossier "
        "may route them; refuse one by --id",
        "error: no dossier of procedure 1.001193 in triage as unknown_procedure"]
    assert _ids(amqp, t.triage_queue) == ["lost-again"]
    assert ledger.refusal(str(lost.submission_id)) is None


def test_a_channel_rabbitmq_closes_mid_replay_is_one_line_and_loses_nothing(
        declared: Topology, mini_catalog: Catalog, amqp: Amqp,
        capsys: pytest.CaptureFixture[str]) -> None:
    # the agency exchange deleted under the operator: RabbitMQ closes the channel of the
    # publish (404), with the dead letter taken and not yet acked
    t = declared
    notice = _agency_notice(t, "T.UBND.A-261125-0001")
    _publish_dead(amqp, t, "agency", notice, {REASON_HEADER: "unroutable",
                                              SOURCE_HEADER: "watch"})
    amqp.ch.exchange_delete(t.agency_exchange)
    rc, out, err = cli(capsys, t, "dead-letters", "replay", "--all")
    assert rc == 1 and "Traceback" not in err
    assert "error: agency: RabbitMQ ChannelClosedByBroker: (404" in err
    assert f"left in {t.dead_queue('agency')} (no queue after it is read)" in err
    wait_for(lambda: queue_depth(t.dead_queue("agency")) == 1, what="the dead letter back")
    declare_topology(amqp_url(), t, mini_catalog)  # the exchange is back: replay works
    rc, out, err = cli(capsys, t, "dead-letters", "replay", "--all")
    assert rc == 0, err
    assert _ids(amqp, t.agency_queue("T.UBND.A")) == [notice.message_id]


def test_a_delivery_rabbitmq_dead_lettered_after_its_batch_committed_is_replayed_in_full(
        declared: Topology, ledger: Ledger, amqp: Amqp, start_broker: Any,
        capsys: pytest.CaptureFixture[str]) -> None:
    # the router committed the dossier, then RabbitMQ refused its publishes (a full agency
    # queue) until the intake delivery reached the quorum queue's delivery limit: the
    # assignment and the receipt are in the outbox, and nobody has them
    t = declared
    d = dossier()
    body, mid = encode(d), f"submit:{d.submission_id}"
    engine = Engine(load_catalog(MINI_CATALOG))
    committed = Router(lambda: engine, ledger, t).handle([intake_delivery(1, body, mid)])
    assert sorted(o.type for o in committed) == ["desk.notice", "dossier.assigned"]
    amqp.publish(t.intake_exchange, INTAKE_KEY, body, message_id=mid,
                 type="dossier.submitted")
    amqp.nack_until_dead_lettered(t.intake_queue)
    wait_for(lambda: queue_depth(t.dead_queue("intake")) == 1, what="the delivery limit")
    # beside a poison message casebroker judged, which is no such case
    amqp.publish(t.dead_letter_exchange, "intake", b"{", message_id="poison",
                 headers={REASON_HEADER: "malformed_json"})
    wait_for(lambda: queue_depth(t.dead_queue("intake")) == 2, what="the poison")
    # the audit finds it (the ledger alone says all was published), reads the queue
    # without taking anything, and says what to do
    rc, out, err = cli(capsys, t, "audit", "--db-url", ledger.url)
    assert rc == 1 and (
        "  1 in dead.intake or dead.status that RabbitMQ set aside after their last allowed "
        "delivery, not judged by casebroker: its batch may be recorded with assignments or "
        "notices that never went out. Replay them (under their own ids: what was recorded "
        f"is published): casebroker dead-letters replay --id {mid}\n") in out, out + err
    assert queue_depth(t.dead_queue("intake")) == 2
    rc, out, err = cli(capsys, t, "audit", "--db-url", ledger.url, "--json")
    assert rc == 1 and json.loads(out)["exhausted"] == [mid]
    from broker.ops.queues import channel
    with channel(lock=t):  # an operator at work on the queues: the audit cannot tell
        rc, out, err = cli(capsys, t, "audit", "--db-url", ledger.url)
    assert rc == 1 and "  queues unreadable: not read: an operator command holds the " \
        "queues" in out
    rc, out, err = cli(capsys, t, "dead-letters", "list", "--queue", "intake")
    assert rc == 0 and f"{mid}" in out and "rabbitmq:delivery_limit" in out, out
    rc, out, err = cli(capsys, t, "dead-letters", "discard", "--id", "poison")
    assert rc == 0, err

    rc, out, err = cli(capsys, t, "dead-letters", "replay", "--all", "--queue", "intake",
                       "--json")
    assert rc == 0, err
    (done,) = json.loads(out)["messages"]
    assert done["replayed_as"] == mid  # its own id: the inbox has it
    start_broker()
    wait_for(lambda: queue_depth(t.agency_queue("T.UBND.A")) == 1, what="the assignment")
    assigned = amqp.json_all(t.agency_queue("T.UBND.A"))
    assert [a["submission_id"] for a in assigned] == [str(d.submission_id)]
    wait_for(lambda: queue_depth(t.desk_queue("T.MC.B")) == 1, what="the receipt")
    assert [n["notice"] for n in amqp.json_all(t.desk_queue("T.MC.B"))] == ["receipt"]
    wait_for(lambda: queue_depth(t.intake_queue) == 0, what="the replay acked")
    assert ledger.count_inbox_outcomes() == {"routed": 1}  # not taken for a new copy
    assert ledger.count_by_state() == {2: 1}
    rc, out, err = cli(capsys, t, "audit", "--db-url", ledger.url, "--json")
    assert rc == 0 and json.loads(out)["exhausted"] == [], out


def test_two_operator_commands_never_work_on_the_same_queues_at_once(
        declared: Topology, amqp: Amqp, capsys: pytest.CaptureFixture[str]) -> None:
    # each takes every message and puts it back: a second one at the same time saw the
    # queue short, or a message it discarded came back with the first one's copy (found
    # by a review: 60 discarded, 27 back)
    from broker.ops.queues import channel

    t = declared
    for n in range(5):
        amqp.publish(t.dead_letter_exchange, "intake", b"{}", message_id=f"poison-{n}",
                     headers={REASON_HEADER: "malformed_json"})
    wait_for(lambda: queue_depth(t.dead_queue("intake")) == 5, what="five dead letters")
    with channel(lock=t) as ch:  # an operator command working
        ch.basic_get(t.dead_queue("intake"))  # holds one, unacked
        for args in (("list",), ("discard", "--all", "--queue", "intake"),
                     ("replay", "--id", "poison-1"), ("show", "poison-2")):
            rc, out, err = cli(capsys, t, "dead-letters", *args)
            assert rc == 1 and out == "" and err == (
                "error: another operator command (dead-letters, audit or topology delete) is "
                f"working on the queues under {t.prefix!r}; run this one when it has ended "
                "(nothing was taken)\n"), args
        # a ledger that is not there is said before any queue is asked for
        rc, out, err = cli(capsys, t, "dead-letters", "list", "--db-url",
                           "sqlite:////nonexistent/ledger.db")
        assert rc != 0 and out == "" and "another operator command" not in err
        assert "ledger" in err
    # released with its connection: the next command sees all five, the unacked one back
    rc, out, err = cli(capsys, t, "dead-letters", "list", "--queue", "intake")
    assert rc == 0 and out.endswith("5 message(s)\n"), err
    other = Topology(t.prefix + "x")  # another topology's lock is another lock
    with channel(lock=t), channel(lock=other):
        pass


def test_the_audit_never_wears_out_a_dead_letter_queue_with_a_delivery_limit(
        declared: Topology, ledger: Ledger, amqp: Amqp,
        capsys: pytest.CaptureFixture[str]) -> None:
    # dead.intake as a version before a198525 declared it, with a delivery limit (2 here,
    # 20 then): found by a review, the audit returned what it read (a nack), and the 21st
    # audit found the queue empty and said all was well
    t = declared
    amqp.ch.queue_delete(t.dead_queue("intake"))
    amqp.ch.queue_declare(t.dead_queue("intake"), durable=True, arguments={
        "x-queue-type": "quorum", "x-delivery-limit": 2})
    amqp.ch.queue_bind(t.dead_queue("intake"), t.dead_letter_exchange, "intake")
    amqp.publish(t.dead_letter_exchange, "intake", b"{}", message_id="submit:stuck",
                 headers={"x-first-death-reason": "delivery_limit"})  # as RabbitMQ writes it
    wait_for(lambda: queue_depth(t.dead_queue("intake")) == 1, what="the dead letter")
    for _ in range(5):
        rc, out, err = cli(capsys, t, "audit", "--db-url", ledger.url, "--json")
        assert rc == 1 and json.loads(out)["exhausted"] == ["submit:stuck"], out + err
    assert queue_depth(t.dead_queue("intake")) == 1


def test_a_queue_longer_than_a_prefetch_window_is_read_in_rounds_each_message_once(
        declared: Topology, amqp: Amqp, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # prefetch_count is 16 bits: one consumer holds at most 65,535 unacked, and a read
    # in one round stopped there, exit 0, a message beyond it "not found" (found by a
    # review with 66,009 dead letters). Here a window of 4 over 10
    t = declared
    monkeypatch.setattr("broker.ops.queues.MAX_ROUND", 4)
    notices = [_desk_notice(t, f"T.UBND.A-261125-{n:04d}") for n in range(10)]
    for n in notices:
        _publish_dead(amqp, t, "desk", n, {REASON_HEADER: "unroutable", SOURCE_HEADER: "watch"})
    ids = [n.message_id for n in notices]
    rc, out, _ = cli(capsys, t, "dead-letters", "list", "--queue", "desk", "--json")
    assert rc == 0 and [m["message_id"] for m in json.loads(out)] == ids
    rc, out, _ = cli(capsys, t, "dead-letters", "show", ids[9], "--queue", "desk", "--json")
    assert rc == 0 and [m["message_id"] for m in json.loads(out)] == [ids[9]]
    rc, out, _ = cli(capsys, t, "dead-letters", "replay", "--id", ids[8], "--id", ids[1])
    assert rc == 0 and "2 message(s) replayed" in out
    assert _ids(amqp, t.desk_queue("T.MC.A")) == [ids[1], ids[8]]
    assert _ids(amqp, t.dead_queue("desk")) == [i for i in ids if i not in (ids[1], ids[8])]


def test_a_read_another_consumer_cuts_short_says_so_and_exits_1(
        declared: Topology, amqp: Amqp, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    t = declared
    monkeypatch.setattr("broker.ops.queues.MAX_ROUND", 4)
    monkeypatch.setattr("broker.ops.queues.ROUND_IDLE_S", 0.5)
    notices = [_desk_notice(t, f"T.UBND.A-261125-{n:04d}") for n in range(10)]
    for n in notices:
        _publish_dead(amqp, t, "desk", n, {REASON_HEADER: "unroutable", SOURCE_HEADER: "watch"})
    # while the first round is discarded, another consumer takes the fifth
    real_describe = deadletters.describe

    def describe_and_steal(which: str, msg: Taken) -> dict[str, Any]:
        if msg.message_id == notices[0].message_id:
            method, _, _ = amqp.ch.basic_get(t.dead_queue("desk"), auto_ack=False)
            amqp.ch.basic_ack(method.delivery_tag)
        return real_describe(which, msg)

    monkeypatch.setattr(deadletters, "describe", describe_and_steal)
    rc, out, err = cli(capsys, t, "dead-letters", "discard", "--queue", "desk", "--all")
    assert rc == 1 and "9 message(s) discarded" in out
    assert notices[4].message_id not in out
    assert (f"error: desk: read 9 of the 10 messages {t.dead_queue('desk')} held: none came "
            "for 0.5 s") in err
    assert _ids(amqp, t.dead_queue("desk")) == []


def test_dead_letters_with_headers_pika_reads_badly_are_listed_and_replayed(
        declared: Topology, amqp: Amqp, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a header timestamp past the year 9999 (a Java client's Long.MAX_VALUE date) ended
    # pika's frame reader: list, show, replay and discard all stopped on it, saying
    # RabbitMQ was unreachable; a double too large for AMQP's integers, which pika reads
    # as one, could not be put back (found by a review)
    t = declared
    with as_other_clients_send(monkeypatch):
        for mid, odd in (("far-date", FAR_DATE), ("huge-double", 1e300)):
            amqp.ch.basic_publish(t.dead_letter_exchange, "intake", b"{", pika.BasicProperties(
                content_type="application/json", delivery_mode=2, message_id=mid,
                user_id="guest", headers={REASON_HEADER: "malformed_json",
                                          SOURCE_HEADER: "intake", "x-odd": odd}),
                mandatory=True)
    for _ in range(2):  # read, put back, read again
        rc, out, err = cli(capsys, t, "dead-letters", "list", "--json")
        assert rc == 0, err
        assert sorted(m["message_id"] for m in json.loads(out)) == ["far-date", "huge-double"]
    rc, out, err = cli(capsys, t, "dead-letters", "replay", "--all", "--queue", "intake")
    assert rc == 0, err
    replayed = {str(p.message_id): p.headers["x-odd"] for p, _ in amqp.get_all(t.intake_queue)}
    # the values kept, as numbers where AMQP carries them, else as text
    assert replayed == {"far-date#replay1": str(2**63),
                        "huge-double#replay1": str(int(1e300))}


def test_a_sender_only_claimed_in_a_header_is_never_taken_for_the_sender(
        declared: Topology, amqp: Amqp, capsys: pytest.CaptureFixture[str]) -> None:
    # RabbitMQ dead-letters a sender's message as it came (its delivery limit), with a
    # claimed x-casebroker-sent-by and no user_id: it was listed as that party's, and a
    # replay under the router's login handed the router that claim as checked (found by
    # a review). Unchecked, it is no sender; the replay carries no claim
    t = declared
    amqp.ch.basic_publish(
        t.dead_letter_exchange, "intake", encode(dossier(desk_id="T.MC.B")),
        pika.BasicProperties(content_type="application/json", delivery_mode=2,
                             message_id="claims-b", headers={
                                 SENT_BY_HEADER: "someone.T.MC.B",
                                 "x-first-death-reason": "delivery_limit", "x-death": [{
                                     "reason": "delivery_limit", "queue": t.intake_queue,
                                     "count": 1}]}), mandatory=True)
    for _ in range(2):  # read, put back, read again
        rc, out, err = cli(capsys, t, "dead-letters", "list", "--json")
        assert rc == 0, err
        assert [(m["message_id"], m["sent_by"]) for m in json.loads(out)] == [
            ("claims-b", None)]
    rc, out, err = cli(capsys, t, "dead-letters", "replay", "--id", "claims-b")
    assert rc == 0, err
    [(props, _)] = amqp.get_all(t.intake_queue)
    assert props.message_id == "claims-b" and props.user_id is None
    assert SENT_BY_HEADER not in (props.headers or {})


@pytest.mark.parametrize("command", ["replay", "discard"])
def test_ctrl_c_mid_way_still_says_what_was_done(
        declared: Topology, amqp: Amqp, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    # an interrupted replay or discard returned 130 and said nothing: a discarded dead
    # letter has no copy anywhere else, and the operator could not tell which went (found
    # by a review). Ctrl-C arrives here as the third message is taken up
    t = declared
    for n in range(1, 6):
        amqp.ch.basic_publish(t.dead_letter_exchange, "intake", b"{", pika.BasicProperties(
            content_type="application/json", delivery_mode=2, message_id=f"bad:{n}",
            user_id="guest", headers={REASON_HEADER: "malformed_json",
                                      SOURCE_HEADER: "intake"}), mandatory=True)
    act = deadletters.replay if command == "replay" else deadletters.describe
    taken = 0

    def interrupted_at_the_third(*args: Any) -> Any:
        nonlocal taken
        taken += 1
        if taken == 3:
            raise KeyboardInterrupt
        return act(*args)

    monkeypatch.setattr(deadletters, act.__name__, interrupted_at_the_third)
    rc, out, err = cli(capsys, t, "dead-letters", command, "--all", "--queue", "intake")
    verb = {"replay": "replayed", "discard": "discarded"}[command]
    assert rc == 130
    assert out.splitlines()[-1] == f"2 message(s) {verb}"
    assert [line.split()[1] for line in out.splitlines()[:-1]] == ["bad:1", "bad:2"]
    assert err.startswith(f"interrupted: only the messages above were {verb}")
    # the rest are where they were, the one in hand among them (its channel closed)
    assert sorted(_ids(amqp, t.dead_queue("intake"))) == ["bad:3", "bad:4", "bad:5"]
    if command == "replay":
        assert _ids(amqp, t.intake_queue) == ["bad:1#replay1", "bad:2#replay1"]


def test_refuse_leaves_another_desks_dossier_under_a_taken_id_in_triage(
        declared: Topology, ledger: Ledger, run_broker: Callable[..., RunningBroker],
        amqp: Amqp, capsys: pytest.CaptureFixture[str]) -> None:
    # two desks' dossiers under one submission id, both triaged (a procedure the province
    # does not take): refusing both answered desk A's with desk B's refusal and acked it,
    # so desk A's dossier, another citizen's, left triage unrefused and untold
    t = declared
    run_broker()
    b = dossier("9.999997")
    a = dossier("9.999997", desk_id="T.MC.A", submission_id=str(b.submission_id),
                applicant={"kind": "citizen", "name": "Trần Thị Bình",
                           "id_number": "066190001111", "ward_code": "10001"})
    amqp.submit(t, b, message_id="from-b")
    amqp.submit(t, a, message_id="from-a")
    wait_for(lambda: queue_depth(t.triage_queue) == 2, what="both triaged")
    rc, out, err = cli(capsys, t, "dead-letters", "refuse", "--procedure", "9.999997",
                       "--reason", "not here", "--catalog", str(MINI_CATALOG),
                       "--db-url", ledger.url)
    assert rc == 1
    assert out.splitlines() == [
        f"triage: from-b: submission {b.submission_id} refused, desk T.MC.B told as "
        "from-b:refused", "1 dossier(s) refused"]
    assert (f"from-a: submission {b.submission_id} was closed at intake (refused) for desk "
            "T.MC.B's dossier; this copy, from desk T.MC.A, is another dossier") in err
    assert ledger.refusal(str(b.submission_id))["desk_id"] == "T.MC.B"
    # left where it was, and `list` does not call it settled by desk B's refusal
    rc, out, err = cli(capsys, t, "dead-letters", "list", "--queue", "triage", "--json",
                       "--db-url", ledger.url)
    assert rc == 0, err
    [listed] = json.loads(out)
    assert (listed["message_id"], listed["closed"]) == ("from-a", None)
    # replayed, the router dead-letters it as reused and tells desk A, its own desk
    amqp.get_all(t.desk_queue("T.MC.A"))
    rc, out, err = cli(capsys, t, "dead-letters", "replay", "--queue", "triage", "--all")
    assert rc == 0, err
    wait_for(lambda: queue_depth(t.dead_queue("intake")) == 1, what="dead-lettered as reused")
    [(dead, _)] = amqp.get_all(t.dead_queue("intake"))
    assert dead.headers[REASON_HEADER] == "submission_id_reused"
    [held] = wait_for(lambda: amqp.json_all(t.desk_queue("T.MC.A")), what="desk A told")
    assert held["notice"] == "held" and held["reason"].startswith("submission_id_reused: ")


def test_a_replay_cut_short_leaves_no_pair_that_every_later_replay_keeps(
        declared: Topology, ledger: Ledger, run_broker: Callable[..., RunningBroker],
        amqp: Amqp, capsys: pytest.CaptureFixture[str]) -> None:
    # a replay killed after its publish, before its ack: the copy in hand came back, and
    # the router set its replay aside again beside it. Each later replay sent each copy
    # round as the other (#replay1 and #replay2, then #replay2 and #replay3...): two
    # copies for ever, and two held notices to the desk each time (found by a review)
    t = declared
    run_broker()
    d = dossier("9.999999")  # a procedure nobody routes: set aside at every replay
    first = f"submit:{d.submission_id}"
    amqp.submit(t, d)
    wait_for(lambda: queue_depth(t.triage_queue) == 1, what="triaged")
    # what the killed replay published, its ack never sent
    amqp.publish(t.intake_exchange, INTAKE_KEY, encode(d), message_id=f"{first}#replay1",
                 type="dossier.submitted", headers={"x-casebroker-replay-of": first,
                                                    "x-casebroker-replays": 1})
    wait_for(lambda: queue_depth(t.triage_queue) == 2, what="the pair in triage")
    # the replay takes both (triage empty), replays one: set aside again, one copy
    rc, out, err = cli(capsys, t, "dead-letters", "replay", "--queue", "triage", "--all")
    assert rc == 0, err
    assert out.splitlines()[:2] == [
        f"triage: {first} -> {t.intake_exchange} as {first}#replay1",
        f"triage: {first}#replay1 dropped: the same message as the copy replayed as "
        f"{first}#replay1 in this run"]
    assert out.splitlines()[-1] == ("(1 of them: a copy of a message replayed in this run, "
                                    "dropped, not replayed again)")
    wait_for(lambda: queue_depth(t.triage_queue) == 1, what="one copy set aside again")
    # and so on: one copy at each replay, no pair
    rc, out, err = cli(capsys, t, "dead-letters", "replay", "--queue", "triage", "--all")
    assert rc == 0 and "dropped" not in out, err
    wait_for(lambda: ledger.count_inbox_outcomes()["triaged:unknown_procedure"] == 3,
             what="the second replay set aside")
    wait_for(lambda: queue_depth(t.triage_queue) == 1, what="one copy set aside again")
    [(props, body)] = amqp.get_all(t.triage_queue)
    assert (props.message_id, body) == (f"{first}#replay2", encode(d))


def test_a_supplement_set_aside_before_the_request_now_waiting_is_replayed_as_stale(
        declared: Topology, ledger: Ledger, amqp: Amqp, run_broker: Any,
        capsys: pytest.CaptureFixture[str]) -> None:
    # the desk's supplement for the agency's first request was set aside (RabbitMQ's
    # delivery limit, a bug's internal_error); the desk sent the documents again, they
    # were applied, and the agency asked for more. Replayed then, the old supplement would
    # answer the second request with the first one's documents and restart the clock
    t = declared
    engine = Engine(load_catalog(MINI_CATALOG))
    router = Router(lambda: engine, ledger, t)
    status = StatusRouter(lambda: engine, ledger, t)
    d = dossier()
    (assigned,) = [o for o in router.handle([intake_delivery(1, encode(d), "submit:x")])
                   if o.type == "dossier.assigned"]
    code = json.loads(assigned.body)["dossier_code"]
    tags = iter(range(10, 100))

    def handle(message: Any) -> list[Outbound]:
        return status.handle([status_delivery(next(tags), message)])

    def supplement(name: str) -> DossierSupplemented:
        return DossierSupplemented(event_id=uuid.uuid4(), dossier_code=code, desk_id="T.MC.B",
                                   documents=[Document(name=name, uri=f"s3://docs/{name}",
                                                       sha256="c" * 64, size=10,
                                                       media_type="application/pdf")],
                                   sent_at=datetime.now(UTC))

    def request() -> DossierStatus:
        return DossierStatus(update_id=uuid.uuid4(), dossier_code=code, agency_id="T.UBND.A",
                             status="supplement_requested", sent_at=datetime.now(UTC),
                             requested_documents=["Bản sao CCCD"])

    handle(request())
    by_limit, by_bug = supplement("old-1.pdf"), supplement("old-2.pdf")
    amqp.status(t, by_limit)
    amqp.nack_until_dead_lettered(t.status_queue)
    (dead,) = status.internal_error(status_delivery(next(tags), by_bug), RuntimeError("a bug"))
    amqp.ch.basic_publish(dead.exchange, dead.routing_key, dead.body,
                          properties_for(dead, None), mandatory=True)
    wait_for(lambda: queue_depth(t.dead_queue("status")) == 2, what="both set aside")
    handle(supplement("again.pdf"))  # the desk sent the documents again
    time.sleep(1.1)  # the times RabbitMQ and a dead letter's timestamp give are whole seconds
    handle(request())  # and the agency asked for more
    # a supplement for the request now waiting, set aside by a bug, is no earlier one
    (current,) = status.internal_error(status_delivery(next(tags), supplement("new.pdf")),
                                       RuntimeError("a bug"))
    amqp.ch.basic_publish(current.exchange, current.routing_key, current.body,
                          properties_for(current, None), mandatory=True)
    wait_for(lambda: queue_depth(t.dead_queue("status")) == 3, what="the third set aside")
    assert ledger.dossier(code)["state"] == 5

    rc, out, err = cli(capsys, t, "dead-letters", "replay", "--all", "--queue", "status")
    assert rc == 0, err
    run_broker()
    wait_for(lambda: queue_depth(t.desk_queue("T.MC.B")) == 3, what="the desk's answers")
    notices = amqp.json_all(t.desk_queue("T.MC.B"))
    refused = [n for n in notices if n["notice"] == "update_refused"]
    assert [n["reason"].split(":")[0] for n in refused] == ["stale", "stale"], notices
    assert all("before the supplement request now waiting was made" in n["reason"]
               for n in refused)
    assert [n["notice"] for n in notices if n not in refused] == ["status_changed"]
    row = ledger.dossier(code)
    assert row["state"] == 2  # back where the second request found it: the new documents
    assert [s["name"] for s in row["flags"]["supplements"]] == ["again.pdf", "new.pdf"]
    (to_agency_,) = amqp.json_all(t.agency_queue("T.UBND.A"))
    assert to_agency_["notice"] == "supplemented" and [
        doc["name"] for doc in to_agency_["documents"]] == ["new.pdf"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_between_a_copy_and_its_ack_leaves_each_message_once(
        declared: Topology, amqp: Amqp, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, signum: int) -> None:
    # `dead-letters list` puts each message back as a fresh copy, then acks the original:
    # a Ctrl-C landing between the two left the message twice in its queue, and a list
    # looks read-only (found by a review: 7,002 dead letters, then 7,003). The signal is
    # now held back until the message in hand is settled. Here it comes as the second
    # copy is confirmed
    t = declared
    notices = [_desk_notice(t, f"T.UBND.A-261125-{n:04d}") for n in range(4)]
    for n in notices:
        _publish_dead(amqp, t, "desk", n, {REASON_HEADER: "unroutable", SOURCE_HEADER: "watch"})
    publish = queues.publish_copy
    copies = 0

    def then_a_signal(*args: Any) -> None:
        nonlocal copies
        publish(*args)
        copies += 1
        if copies == 2:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(queues, "publish_copy", then_a_signal)
    # SIGTERM as `replay` takes it, as Ctrl-C (`list` is ended by it, the message in hand
    # settled first: that would end pytest too)
    with term_as_interrupt():
        rc, out, err = cli(capsys, t, "dead-letters", "list", "--queue", "desk")
    assert rc == 130
    ids = [n.message_id for n in notices]
    assert sorted(_ids(amqp, t.dead_queue("desk"))) == sorted(ids)  # each once
