"""Personal data that reached an operator's screen or a log line through a path the
earlier reviews missed (the real RabbitMQ and ledger of this machine).

A sender's content type, message id or desk id may hold a phone or id number or a name
(the contract lets a desk's own mistakes through); each test sends one and reads what the
operator is shown."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pika
import pytest

from adapters.client import DeskClient, Inbox, Received, RetryLater
from broker.amqp import DETAIL_HEADER, REASON_HEADER, SOURCE_HEADER
from broker.cli import main
from broker.ledger import Ledger
from broker.messages import Document, DossierSubmitted, DossierSupplemented, encode
from broker.topology import INTAKE_KEY, Topology
from tests.conftest import MINI_CATALOG, RunningBroker, queue_depth, wait_for
from tests.helpers import Amqp, broker_log, cli, dossier
from tests.integration.test_client import Live, desk_notice

pytestmark = pytest.mark.integration

PHONE = "0912345678"
NAME = "Nguyễn Văn An"


def test_a_content_type_holding_a_phone_number_is_not_quoted_in_the_dead_letters_detail(
        declared: Topology, ledger: Ledger, run_broker: Callable[..., RunningBroker],
        amqp: Amqp, capsys: pytest.CaptureFixture[str]) -> None:
    # the router dead-lettered it as wrong_content_type with the detail "content type
    # 'text/plain; name=0912345678' is not JSON", which `dead-letters list` prints whole
    # (it withholds the same value in its content_type column)
    t = declared
    run_broker()
    amqp.publish(t.intake_exchange, INTAKE_KEY, b"{}", message_id="odd:1",
                 type="dossier.submitted", content_type=f"text/plain; name={PHONE}")
    amqp.publish(t.intake_exchange, INTAKE_KEY, b"{}", message_id="odd:2",
                 type="dossier.submitted", content_type=NAME)
    amqp.publish(t.intake_exchange, INTAKE_KEY, b"{}", message_id="plain:1",
                 type="dossier.submitted", content_type="text/plain")
    wait_for(lambda: queue_depth(t.dead_queue("intake")) == 3, what="three dead letters")
    rc, out, err = cli(capsys, t, "dead-letters", "list", "--queue", "intake")
    assert rc == 0, err
    _withholds(out + err)
    rc, out, err = cli(capsys, t, "dead-letters", "list", "--queue", "intake", "--json")
    assert rc == 0, err
    details = {m["message_id"]: (m["reason"], m["detail"]) for m in json.loads(out)}
    assert details["plain:1"] == ("wrong_content_type",
                                  "content type 'text/plain' is not JSON")  # still said
    assert {details[m][0] for m in ("odd:1", "odd:2")} == {"wrong_content_type"}
    _withholds(out)


def test_refusing_a_triaged_dossier_whose_desk_has_no_queue_never_names_its_queue(
        declared: Topology, ledger: Ledger, run_broker: Callable[..., RunningBroker],
        amqp: Amqp, capsys: pytest.CaptureFixture[str]) -> None:
    # a phone number in desk_id and a procedure the catalog lacks: triaged as
    # unknown_procedure (looked up before the desk), so `refuse` said "desk <withheld>
    # has nobody to tell: no queue <prefix>.desk.0912345678901 (...)"; and RabbitMQ's
    # own log said "no queue '<prefix>.desk.0912345678901'", for the passive declare
    # that asked whether the desk had a queue
    t = declared
    run_broker()
    junk = dossier("9.999999", desk_id=f"{PHONE}901")
    amqp.submit(t, junk)
    wait_for(lambda: queue_depth(t.triage_queue) == 1, what="triaged")
    mid = f"submit:{junk.submission_id}"
    refuse = ("dead-letters", "refuse", "--id", mid, "--reason", "no such procedure",
              "--catalog", str(MINI_CATALOG), "--db-url", ledger.url)
    log = broker_log()
    rc, out, err = cli(capsys, t, *refuse)
    assert rc == 1 and "has nobody to tell" in err, err
    assert PHONE not in out + err, err
    rc, out, err = cli(capsys, t, *refuse, "--json")
    assert rc == 1 and "has nobody to tell" in out, out
    assert PHONE not in out + err, out
    assert ledger.refusal(str(junk.submission_id)) is None
    assert queue_depth(t.triage_queue) == 1  # put back
    log.mark(t.prefix)
    named = PHONE in log.gained()
    assert not named, "RabbitMQ's own log names the desk's queue"


def test_the_audit_shows_a_sender_message_id_holding_personal_data_as_its_digest(
        declared: Topology, ledger: Ledger, amqp: Amqp,
        capsys: pytest.CaptureFixture[str]) -> None:
    # a delivery RabbitMQ dead-lettered at its delivery limit: the audit advises
    # `dead-letters replay --id <its message id>`, and printed the sender's id whole, where
    # every dead-letters command shows (and takes) such an id as withheld-<digest>
    t = declared
    named = f"{NAME} {PHONE}"
    amqp.publish(t.intake_exchange, INTAKE_KEY, b"{}", message_id=named,
                 type="dossier.submitted")
    amqp.nack_until_dead_lettered(t.intake_queue)
    wait_for(lambda: queue_depth(t.dead_queue("intake")) == 1, what="the delivery limit")
    rc, out, err = cli(capsys, t, "dead-letters", "list", "--queue", "intake", "--json")
    (listed,) = json.loads(out)
    shown = listed["message_id"]
    assert shown.startswith("withheld-")
    rc, out, err = cli(capsys, t, "audit", "--db-url", ledger.url)
    assert rc == 1 and f"dead-letters replay --id {shown}" in out, out + err
    _withholds(out + err)
    rc, out, err = cli(capsys, t, "audit", "--db-url", ledger.url, "--json")
    assert rc == 1 and json.loads(out)["exhausted"] == [shown], out
    assert queue_depth(t.dead_queue("intake")) == 1


def test_dossier_show_of_a_triaged_submission_shows_a_personal_message_id_as_its_digest(
        declared: Topology, ledger: Ledger, run_broker: Callable[..., RunningBroker],
        amqp: Amqp, capsys: pytest.CaptureFixture[str]) -> None:
    # `dossier show <submission id>` lists each delivery of a submission that opened no
    # dossier by the id to give `dead-letters show`, and printed the desk's own message
    # id whole: the dead-letters tools show and take it as withheld-<digest>
    t = declared
    run_broker()
    held, named = _held_under_a_name(t, amqp)
    wait_for(lambda: queue_depth(t.triage_queue) == 1, what="triaged")
    rc, out, err = cli(capsys, t, "dead-letters", "list", "--queue", "triage", "--json")
    (listed,) = json.loads(out)
    shown = listed["message_id"]
    assert shown.startswith("withheld-")
    for rc, out, err in _each_form(capsys, "dossier", "show", str(held.submission_id),
                                   "--db-url", ledger.url):
        assert rc == 0, err
        assert shown in out, out
        _withholds(out + err)


def test_dossier_show_of_a_submission_refused_without_notice_withholds_its_desk_and_ids(
        declared: Topology, ledger: Ledger, run_broker: Callable[..., RunningBroker],
        amqp: Amqp, capsys: pytest.CaptureFixture[str]) -> None:
    # a phone number in desk_id and the desk's own message id with a name in it, refused
    # from triage telling nobody: `refuse` withholds both, `dossier show` printed "desk
    # 0912345678901 told as Nguyễn Văn An 0912345678:refused"
    run_broker()
    junk = _junk_refused(declared, ledger, amqp, capsys, f"{NAME} {PHONE}")
    for rc, out, err in _each_form(capsys, "dossier", "show", str(junk.submission_id),
                                   "--db-url", ledger.url):
        # the operator's reason is for the citizen, in words that may name them: withheld
        assert rc == 0 and "no such desk" not in out, err
        _withholds(out + err)


def test_resend_lists_a_desk_notice_named_after_a_personal_message_id_as_its_digest(
        declared: Topology, ledger: Ledger, run_broker: Callable[..., RunningBroker],
        amqp: Amqp, capsys: pytest.CaptureFixture[str]) -> None:
    # the held notice of a dossier its desk sent under its own message id is
    # "<that id>:held": `dossier resend --desk` listed it whole, where the dead-letters
    # commands show such an id as withheld-<digest>
    t = declared
    run_broker()
    held, named = _held_under_a_name(t, amqp)
    wait_for(lambda: queue_depth(t.desk_queue("T.MC.B")) == 1, what="the held notice")
    (props, _), = amqp.get_all(t.desk_queue("T.MC.B"))
    assert props.message_id == f"{named}:held"  # what the desk gets is unchanged
    for rc, out, err in _each_form(capsys, "dossier", "resend", "--desk", "T.MC.B",
                                   "--since", "2020-01-01", "--dry-run", "--db-url",
                                   ledger.url):
        assert rc == 0 and "withheld-" in out, out + err
        _withholds(out + err)


def test_the_report_by_desk_withholds_a_desk_id_a_triaged_dossier_was_refused_under(
        declared: Topology, ledger: Ledger, run_broker: Callable[..., RunningBroker],
        amqp: Amqp, capsys: pytest.CaptureFixture[str]) -> None:
    # junk with a phone number in desk_id, refused from triage telling nobody: its refusal
    # is counted under its desk, and `report --by desk` made the phone number a row
    run_broker()
    _junk_refused(declared, ledger, amqp, capsys, None)
    for rc, out, err in _each_form(capsys, "report", "--by", "desk", "--from", "2020-01-01",
                                   "--db-url", ledger.url, forms=("--json", "--csv")):
        assert rc == 0, err
        assert PHONE not in out + err, out
    data = json.loads(main(["report", "--by", "desk", "--from", "2020-01-01", "--db-url",
                            ledger.url, "--json"]) == 0 and capsys.readouterr().out)
    assert data["total"]["refused_from_triage"] == 1  # still counted
    assert [g["refused_from_triage"] for g in data["groups"].values()] == [1]


def _held_under_a_name(t: Topology, amqp: Amqp) -> tuple[DossierSubmitted, str]:
    """A dossier of a procedure the catalog lacks (held: triaged, its desk told), sent
    under a message id holding a name and a phone number; and that id."""
    held, named = dossier("9.999999"), f"{NAME} {PHONE}"
    amqp.submit(t, held, message_id=named)
    return held, named


def _withholds(text: str) -> None:
    """``text`` names neither the phone number nor the name the sender put in."""
    assert PHONE not in text and "Nguy" not in text, text


def _junk_refused(t: Topology, ledger: Ledger, amqp: Amqp,
                  capsys: pytest.CaptureFixture[str], message_id: str | None
                  ) -> DossierSubmitted:
    """Junk with a phone number as its desk id (under ``message_id``, else the SDK's id),
    triaged and refused by an operator telling nobody; neither step names it."""
    junk = dossier(desk_id=f"{PHONE}901")
    message_id = message_id or f"submit:{junk.submission_id}"
    amqp.submit(t, junk, message_id=message_id)
    wait_for(lambda: queue_depth(t.triage_queue) == 1, what="triaged")
    rc, out, err = cli(capsys, t, "dead-letters", "refuse", "--id", message_id, "--reason",
                       "no such desk", "--without-notice", "--catalog", str(MINI_CATALOG),
                       "--db-url", ledger.url)
    assert rc == 0, err
    _withholds(out + err)
    return junk


def _each_form(capsys: pytest.CaptureFixture[str], *args: str,
               forms: tuple[str, ...] = ("--json",)) -> list[tuple[int, str, str]]:
    """``casebroker <args>`` as text, then with each of ``forms``: (exit status, stdout,
    stderr) of each."""
    results = []
    for extra in ((), *((f,) for f in forms)):
        capsys.readouterr()
        rc = main([*args, *extra])
        out, err = capsys.readouterr()
        results.append((rc, out, err))
    return results


def test_the_inbox_logs_a_notice_id_holding_personal_data_as_its_digest(
        live: Live, caplog: pytest.LogCaptureFixture) -> None:
    # a held or refused notice's id is made from the desk's own message id, which may
    # hold a name or an id number; the Inbox logged it whole when its handler failed on
    # it, asked for a retry, or when it could not decode it
    t = live.topology
    desk = "T.MC.A"
    personal = f"{NAME} {PHONE}:refused"
    with DeskClient(desk, topology=t) as client:
        client.publish(desk_notice(desk, 1), exchange=t.desk_exchange, routing_key=desk,
                       message_id=personal)
        live.channel.basic_publish(t.desk_exchange, desk, b"not json", pika.BasicProperties(
            message_id=f"{PHONE}:held", content_type="application/json", delivery_mode=2))
        retried: list[str] = []

        def handler(received: Received) -> None:
            if not retried:
                retried.append(str(received.message_id))
                raise RetryLater(0.05)
            raise RuntimeError("the desk system failed")

        with caplog.at_level(logging.INFO, logger="adapters.client"):
            Inbox(client, [t.desk_queue(desk)]).drain(handler, timeout_s=1.0)
    said = [r.getMessage() for r in caplog.records if r.name == "adapters.client"]
    assert retried == [personal]  # the handler itself is given the id as sent
    assert any("asked to retry withheld-" in s for s in said), said
    assert any(s.startswith("handler failed on withheld-") for s in said), said
    assert any(s.startswith("poison message withheld-") for s in said), said
    assert not any(PHONE in s or "Nguy" in s for s in said), said


def test_dossier_show_keeps_the_parties_words_out_in_json_as_in_text(
        declared: Topology, ledger: Ledger, run_broker: Callable[..., RunningBroker],
        amqp: Amqp, capsys: pytest.CaptureFixture[str]) -> None:
    # the text form counted the documents and left the reasons out; --json printed the
    # dossier's flags (every document's name and address) and each event's detail whole:
    # "CCCD of <name> <id>.pdf", "call <phone>" (found by a review)
    from tests.integration.test_lifecycle_flow import report, take

    t = declared
    run_broker()
    amqp.submit(t, dossier("1.001193"))
    code = str(take(amqp, t.agency_queue("T.UBND.A"), 1, "assignment")[0]["dossier_code"])
    take(amqp, t.desk_queue("T.MC.B"), 1, "receipt")
    named = f"CCCD {NAME} {PHONE}.pdf"
    report(amqp, t, code, "T.UBND.A", "supplement_requested",
           reason=f"gọi {NAME} {PHONE}", requested_documents=[named])
    take(amqp, t.desk_queue("T.MC.B"), 1, "the request")
    amqp.status(t, DossierSupplemented(
        event_id=uuid.uuid4(), dossier_code=code, desk_id="T.MC.B",
        documents=[Document(name=named, uri=f"s3://docs/{PHONE}", sha256="c" * 64,
                            size=10, media_type="application/pdf")],
        sent_at=datetime.now(UTC)))
    take(amqp, t.agency_queue("T.UBND.A"), 1, "the supplement")
    report(amqp, t, code, "T.UBND.A", "resolved", documents=[Document(
        name=f"KQ {NAME}.pdf", uri=f"s3://kq/{PHONE}", sha256="d" * 64, size=10,
        media_type="application/pdf")])
    wait_for(lambda: (ledger.dossier(code) or {}).get("state") == 9, what="resolved")
    for rc, out, err in _each_form(capsys, "dossier", "show", code, "--db-url", ledger.url):
        assert rc == 0, err
        _withholds(out + err)
        assert "s3://" not in out
    shown = json.loads(out)
    assert shown["dossier"]["flags"]["supplements"] == 1  # how many, as `ledger prune` keeps
    assert shown["dossier"]["flags"]["results"] == 1
    kinds = {e["kind"]: e["detail"] for e in shown["history"]}
    assert kinds["request_supplement"]["requested_documents"] == 1
    assert kinds["request_supplement"]["reason"] == "<withheld: a party's own words>"
    assert kinds["supplement"]["documents"] == 1 and kinds["resolve"]["documents"] == 1


def test_a_senders_own_casebroker_headers_are_not_shown_as_casebrokers(
        declared: Topology, ledger: Ledger, amqp: Amqp,
        capsys: pytest.CaptureFixture[str]) -> None:
    # a desk sent x-casebroker-reason and x-casebroker-detail of its own (its words, a
    # name and a phone in them); RabbitMQ dead-lettered the message at its delivery limit,
    # keeping the sender's headers, and the dead-letters tools showed that detail as
    # casebroker's, while the audit took the reason for casebroker's and did not count
    # it as set aside by RabbitMQ (found by a review)
    t = declared
    d = dossier()
    mid = f"submit:{d.submission_id}"
    amqp.publish(t.intake_exchange, INTAKE_KEY, encode(d), message_id=mid,
                 type="dossier.submitted",
                 headers={REASON_HEADER: "too_large", SOURCE_HEADER: "intake",
                          DETAIL_HEADER: f"{NAME} {PHONE}"})
    amqp.nack_until_dead_lettered(t.intake_queue)
    wait_for(lambda: queue_depth(t.dead_queue("intake")) == 1, what="the delivery limit")
    for rc, out, err in (*_each_form(capsys, "dead-letters", "list", "--queue", "intake",
                                     "--prefix", t.prefix),
                         *_each_form(capsys, "dead-letters", "show", mid, "--queue",
                                     "intake", "--prefix", t.prefix)):
        assert rc == 0, err
        _withholds(out + err)
        assert "rabbitmq:delivery_limit" in out and "too_large" not in out
    rc, out, err = cli(capsys, t, "audit", "--db-url", ledger.url, "--json")
    assert rc == 1 and json.loads(out)["exhausted"] == [mid], out + err
    # nor does a claimed too_large keep it from being replayed, under its own id
    rc, out, err = cli(capsys, t, "dead-letters", "replay", "--id", mid, "--queue", "intake")
    assert rc == 0 and "1 message(s) replayed" in out, out + err
    (props, _), = amqp.get_all(t.intake_queue)
    assert props.message_id == mid


def test_the_routers_own_dead_letter_of_a_message_claiming_rabbitmqs_marks_is_its_own(
        ) -> None:
    # a sender's x-death on its message, kept on the router's dead letter, made the tools
    # read casebroker's reason as RabbitMQ's
    from broker.consumers.common import dead_letter
    from broker.ops.queues import routers_own
    from tests.helpers import intake_delivery

    delivery = intake_delivery(1, b"{", "m1", **{
        "x-death": [{"reason": "rejected", "queue": "q"}],
        "x-first-death-reason": "delivery_limit", "x-last-death-queue": "q",
        "x-shape": "kept"})
    out = dead_letter(Topology("t"), "intake", delivery, "malformed_json", "not JSON")
    assert out.headers is not None and routers_own(out.headers)
    assert not any(h.startswith(("x-death", "x-first-death", "x-last-death"))
                   for h in out.headers)
    assert out.headers["x-shape"] == "kept"  # the sender's other headers stay


def test_the_sdk_says_a_publish_under_a_personal_message_id_by_its_digest(
        live: Live, caplog: pytest.LogCaptureFixture) -> None:
    # "publish Zqxname Vwtest 079912345678 to cb.desk was returned unroutable" in the log
    # and in the PublishError, which integrators log (found by a review)
    from adapters.client import PublishError

    t = live.topology
    personal = f"{NAME} {PHONE}"
    with DeskClient("T.MC.A", topology=t) as client, \
            caplog.at_level(logging.INFO, logger="adapters.client"), \
            pytest.raises(PublishError) as e:
        client.publish(desk_notice("T.MC.A", 1), exchange=t.desk_exchange,
                       routing_key="T.NOWHERE", message_id=personal)
    said = [r.getMessage() for r in caplog.records if r.name == "adapters.client"]
    assert said and all("withheld-" in s for s in said), said
    _withholds(" ".join(said) + str(e.value))
    assert "withheld-" in str(e.value) and e.value.message_id == personal  # its own, whole
