"""`casebroker dead-letters` at its edges: what an operator's login, a refused notice, a
sender's odd headers, a body cut for its size or a missing queue do to what the tools say
and keep (the real RabbitMQ and ledger of this machine)."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import pika
import pytest
from pika.exceptions import NackError

from broker.amqp import REASON_HEADER, SENT_BY_HEADER, SOURCE_HEADER, amqp_url
from broker.errors import TransientError
from broker.ledger import Ledger
from broker.messages import encode
from broker.rules.catalog import Catalog
from broker.service import declare_topology
from broker.topology import Topology
from tests.conftest import MINI_CATALOG, queue_depth
from tests.helpers import Amqp, cli, dossier, length_cap

pytestmark = pytest.mark.integration

#: what a sender put where only ids and codes belong: a name and an id number
PERSONAL = "Nguyễn Văn An 066090001234"


def _routers_triage_copy(amqp: Amqp, t: Topology, mid: str, desk_login: str) -> bytes:
    """A triage copy as the router publishes it: under its own login (guest here), the
    desk's login RabbitMQ checked on the delivery in x-casebroker-sent-by."""
    body = encode(dossier("9.999999"))
    amqp.ch.basic_publish(t.dead_letter_exchange, "triage", body, pika.BasicProperties(
        content_type="application/json", delivery_mode=2, message_id=mid,
        type="dossier.submitted", user_id="guest", headers={
            REASON_HEADER: "unknown_procedure", SOURCE_HEADER: "intake",
            SENT_BY_HEADER: desk_login}), mandatory=True)
    return body


def test_a_look_under_another_login_keeps_the_desk_as_the_first_sender(
        declared: Topology, amqp: Amqp, operator_url: str,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # the router's triage copies and dead letters carry its own user_id and the desk's
    # login in x-casebroker-sent-by. A `list` under an operator's own login showed the
    # router as the sender, and put every copy back with the router's login written over
    # the desk's: a replay under the router's login (as CASEBROKER_PARTY_USERS=1 asks)
    # then vouched for the router as the sender, and the honest dossier was dead-lettered
    # as sender_mismatch
    t = declared
    _routers_triage_copy(amqp, t, "submit:held-1", "desk-T.MC.B")
    routers_url = amqp_url()
    monkeypatch.setenv("CASEBROKER_AMQP_URL", operator_url)
    for _ in range(2):
        rc, out, err = cli(capsys, t, "dead-letters", "list", "--queue", "triage", "--json")
        assert rc == 0, err
        assert [(m["message_id"], m["sent_by"]) for m in json.loads(out)] == [
            ("submit:held-1", "desk-T.MC.B")]
    monkeypatch.setenv("CASEBROKER_AMQP_URL", routers_url)  # the router's login: replay
    rc, out, err = cli(capsys, t, "dead-letters", "list", "--queue", "triage", "--json")
    assert rc == 0 and [m["sent_by"] for m in json.loads(out)] == ["desk-T.MC.B"], err
    rc, out, err = cli(capsys, t, "dead-letters", "replay", "--all", "--queue", "triage")
    assert rc == 0, err
    (props, _), = amqp.get_all(t.intake_queue)
    assert props.message_id == "submit:held-1#replay1" and props.user_id == "guest"
    assert props.headers[SENT_BY_HEADER] == "desk-T.MC.B"


def _fill(t: Topology, desk: str) -> list[str]:
    """Fill a desk's capped queue until RabbitMQ refuses a new channel's first publish
    (a quorum queue lets a channel's first publish in once, up to one over its cap);
    the message ids that went in."""
    went_in: list[str] = []
    for n in range(5):
        fresh = Amqp()
        try:
            fresh.publish(t.desk_exchange, desk, b"{}", message_id=f"filler-{n}")
            went_in.append(f"filler-{n}")
        except NackError:
            return went_in
        finally:
            fresh.close()
    pytest.fail(f"the capped queue of {desk} took every filler")


def test_a_refusal_recorded_whose_notice_rabbitmq_refused_is_not_called_not_refused(
        declared: Topology, ledger: Ledger, amqp: Amqp,
        capsys: pytest.CaptureFixture[str]) -> None:
    # the refusal is committed first; a notice RabbitMQ then nacked (the desk's queue
    # full) was reported as "not refused", while the ledger held the refusal: a later
    # replay is answered with it. What is final is said so, and running it again tells
    # the desk
    t = declared
    d = dossier("9.999999")
    mid = f"submit:{d.submission_id}"
    amqp.publish(t.dead_letter_exchange, "triage", encode(d), message_id=mid,
                 type="dossier.submitted")
    refuse = ("dead-letters", "refuse", "--id", mid, "--reason", "not here", "--catalog",
              str(MINI_CATALOG), "--db-url", ledger.url)
    desk = t.desk_queue("T.MC.B")
    with length_cap(desk, f"{t.prefix}-cap") as cap:
        fillers = _fill(t, "T.MC.B")
        rc, out, err = cli(capsys, t, *refuse, "--json")
        assert rc == 1
        report = json.loads(out)
        assert (report["refused"], report["not_refused"], report["refused_untold"]) == (0, 0, 1)
        (failed,) = report["failed"]
        assert failed["message_id"] == mid and failed["recorded"] is True
        rc, out, err = cli(capsys, t, *refuse)
        assert rc == 1
        assert "not refused" not in err, err
        assert (f"error: triage: {mid}: refused in the ledger (final), but desk T.MC.B was "
                "not told: refused (nacked) by RabbitMQ; put back") in err
        assert ("1 dossier(s) refused in the ledger whose desks were not told: still in "
                "triage, run the same refuse again to tell them") in err
        assert ledger.refusal(str(d.submission_id)) is not None
        assert queue_depth(t.triage_queue) == 1
        cap.lift()
    assert [p.message_id for p, _ in amqp.get_all(desk)] == fillers
    rc, out, err = cli(capsys, t, *refuse, "--json")
    assert rc == 0, err
    (done,) = json.loads(out)["messages"]
    assert done["refused_before"] is True and done["told"] is True
    assert [p.message_id for p, _ in amqp.get_all(desk)] == [f"{mid}:refused"]
    assert queue_depth(t.triage_queue) == 0


def test_a_senders_odd_replay_count_neither_breaks_the_tools_nor_is_printed(
        declared: Topology, amqp: Amqp, capsys: pytest.CaptureFixture[str]) -> None:
    # dead letters keep the sender's headers: a text or a list in x-casebroker-replays
    # stopped `list` and `show` with a traceback (after every message was put back), and
    # the message could be neither discarded nor replayed; the error quoted the header
    t = declared
    odd: dict[str, Any] = {"bad:text": PERSONAL, "bad:list": [1, 2], "bad:negative": -4}
    for mid, value in odd.items():
        amqp.publish(t.dead_letter_exchange, "intake", b"{", message_id=mid,
                     headers={REASON_HEADER: "malformed_json", SOURCE_HEADER: "intake",
                              "x-casebroker-replays": value})
    amqp.publish(t.dead_letter_exchange, "triage", encode(dossier("9.999999")),
                 message_id="held:odd", type="dossier.submitted",
                 headers={REASON_HEADER: "unknown_procedure", SOURCE_HEADER: "intake",
                          "x-casebroker-replays": "x"})
    rc, out, err = cli(capsys, t, "dead-letters", "list", "--json")
    assert rc == 0, err
    assert sorted((m["message_id"], m["replays"]) for m in json.loads(out)) == sorted(
        [("bad:text", 0), ("bad:list", 0), ("bad:negative", 0), ("held:odd", 0)])
    rc, out, err = cli(capsys, t, "dead-letters", "show", "bad:list")
    assert rc == 0 and json.loads(out)["replays"] == 0, err
    rc, out, err = cli(capsys, t, "dead-letters", "replay", "--id", "held:odd")
    assert rc == 0, err
    (props, _), = amqp.get_all(t.intake_queue)
    assert props.message_id == "held:odd#replay1"
    assert props.headers["x-casebroker-replays"] == 1
    rc, out, err = cli(capsys, t, "dead-letters", "discard", "--all", "--queue", "intake")
    assert rc == 0 and "3 message(s) discarded" in out, err
    assert "066090001234" not in out + err and "Nguy" not in out + err
    assert queue_depth(t.dead_queue("intake")) == 0


def test_json_counts_only_messages_as_not_replayed_or_not_discarded(
        declared: Topology, amqp: Amqp, capsys: pytest.CaptureFixture[str]) -> None:
    # a missing queue is no message: `not_replayed` and `not_discarded` counted it as one
    # (the text, right, said no message failed)
    t = declared
    for n in (1, 2):
        amqp.publish(t.dead_letter_exchange, "intake", b"{", message_id=f"junk:{n}",
                     headers={REASON_HEADER: "malformed_json", SOURCE_HEADER: "intake"})
    amqp.delete_queues(t.dead_queue("status"))
    rc, out, err = cli(capsys, t, "dead-letters", "replay", "--id", "junk:1", "--json")
    assert rc == 1 and "no queue" in err
    report = json.loads(out)
    assert (report["replayed"], report["not_replayed"]) == (1, 0)
    assert [f["message_id"] for f in report["failed"]] == [None]
    rc, out, err = cli(capsys, t, "dead-letters", "discard", "--all", "--queue", "all",
                       "--json")
    assert rc == 1 and "no queue" in err
    report = json.loads(out)
    assert (report["discarded"], report["not_discarded"]) == (1, 0)
    assert [f["message_id"] for f in report["failed"]] == [None]


def test_a_type_or_content_type_holding_personal_data_is_withheld(
        declared: Topology, amqp: Amqp, capsys: pytest.CaptureFixture[str]) -> None:
    # the sender's own type and content type are on its dead letter: `list --json` and
    # `show` printed them whole, where a correlation id or message id like them is
    # withheld
    t = declared
    amqp.ch.basic_publish(t.dead_letter_exchange, "intake", b"{}", pika.BasicProperties(
        content_type="application/json", delivery_mode=2, message_id="odd:1", type=PERSONAL,
        headers={REASON_HEADER: "wrong_content_type", SOURCE_HEADER: "intake",
                 "x-original-content-type": "text/plain; name=0905000000"}), mandatory=True)
    amqp.ch.basic_publish(t.dead_letter_exchange, "intake", b"{}", pika.BasicProperties(
        content_type="application/json", delivery_mode=2, message_id="plain:1",
        type="dossier.submitted",
        headers={REASON_HEADER: "wrong_content_type", SOURCE_HEADER: "intake",
                 "x-original-content-type": "application/json; charset=utf-8"}),
        mandatory=True)
    rc, out, err = cli(capsys, t, "dead-letters", "list", "--json")
    assert rc == 0, err
    assert "066090001234" not in out and "0905000000" not in out and "Nguy" not in out
    listed = {m["message_id"]: (m["type"], m["content_type"]) for m in json.loads(out)}
    assert listed == {"odd:1": ("<withheld>", "<withheld>"),
                      "plain:1": ("dossier.submitted", "application/json; charset=utf-8")}
    rc, out, err = cli(capsys, t, "dead-letters", "show", "odd:1")
    assert rc == 0, err
    assert "066090001234" not in out and "0905000000" not in out and "Nguy" not in out


def test_a_refusal_recorded_before_its_channel_was_lost_is_said_refused_not_told(
        declared: Topology, mini_catalog: Catalog, ledger: Ledger, amqp: Amqp,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # RabbitMQ closes the channel at the notice's publish (here: the desk exchange deleted
    # right after the refusal was committed): only "the messages not yet settled are left
    # in triage" and "0 dossier(s) refused" were said, of a refusal that is final
    t = declared
    d = dossier("9.999999")
    mid = f"submit:{d.submission_id}"
    amqp.publish(t.dead_letter_exchange, "triage", encode(d), message_id=mid,
                 type="dossier.submitted")
    real_refuse = Ledger.refuse

    def refuse_then_lose_the_desk_exchange(self: Ledger, row: dict[str, Any]
                                           ) -> tuple[dict[str, Any], bool]:
        kept = real_refuse(self, row)
        amqp.ch.exchange_delete(t.desk_exchange)
        return kept

    monkeypatch.setattr(Ledger, "refuse", refuse_then_lose_the_desk_exchange)
    refuse = ("dead-letters", "refuse", "--id", mid, "--reason", "not here", "--catalog",
              str(MINI_CATALOG), "--db-url", ledger.url)
    rc, out, err = cli(capsys, t, *refuse)
    assert rc == 1 and "Traceback" not in err
    assert f"left in {t.triage_queue}" in err
    assert (f"error: triage: {mid}: refused in the ledger (final), but its desk's notice was "
            "not confirmed by RabbitMQ before the channel was lost; back in triage") in err
    assert ("1 dossier(s) refused in the ledger whose desks were not told: still in triage, "
            "run the same refuse again to tell them") in err
    assert ledger.refusal(str(d.submission_id)) is not None
    monkeypatch.setattr(Ledger, "refuse", real_refuse)
    declare_topology(amqp_url(), t, mini_catalog)  # the exchange is back
    assert queue_depth(t.triage_queue) == 1
    rc, out, err = cli(capsys, t, *refuse, "--json")
    assert rc == 0, err
    (done,) = json.loads(out)["messages"]
    assert done["refused_before"] is True and done["told"] is True
    assert [p.message_id for p, _ in amqp.get_all(t.desk_queue("T.MC.B"))] == [
        f"{mid}:refused"]


def test_a_body_cut_for_its_size_is_not_replayed_as_a_broken_message(
        declared: Topology, amqp: Amqp, capsys: pytest.CaptureFixture[str]) -> None:
    # a too_large dead letter keeps only its body's first 256 KiB; `replay --all` sent
    # that cut body to the router, which dead-lettered it again as malformed_json: the
    # reason and the original size gone, the message no nearer its agency
    t = declared
    cut = b'{"schema": "casebroker.dossier.submitted/v1", "attributes": {"note": "' + (
        b"x" * 1000)
    amqp.publish(t.dead_letter_exchange, "intake", cut, message_id="big:1",
                 type="dossier.submitted",
                 headers={REASON_HEADER: "too_large", SOURCE_HEADER: "intake",
                          "x-casebroker-original-size": 300_000})
    amqp.publish(t.dead_letter_exchange, "intake", b"{", message_id="junk:1",
                 headers={REASON_HEADER: "malformed_json", SOURCE_HEADER: "intake"})
    rc, out, err = cli(capsys, t, "dead-letters", "replay", "--all", "--queue", "intake")
    assert rc == 1 and "1 message(s) replayed" in out
    assert ("error: intake: big:1: intake: 'big:1' was dead-lettered as too_large and keeps "
            "only the start of its body: it cannot be replayed") in err
    assert [p.message_id for p, _ in amqp.get_all(t.intake_queue)] == ["junk:1#replay1"]
    (props, body), = amqp.get_all(t.dead_queue("intake"))
    assert props.message_id == "big:1" and body == cut
    assert props.headers[REASON_HEADER] == "too_large"


def test_a_refuse_the_ledger_cuts_short_says_what_it_refused_before(
        declared: Topology, ledger: Ledger, amqp: Amqp,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # the ledger goes away after the first of three refusals (final, its desk told, its
    # copy acked): only "error: ledger unavailable" was said, on stderr, and stdout was
    # empty, so the operator could not tell what was done
    t = declared
    triaged = [dossier("9.999999") for _ in range(3)]
    for d in triaged:  # as the router sets them aside
        amqp.publish(t.dead_letter_exchange, "triage", encode(d),
                     message_id=f"submit:{d.submission_id}", type="dossier.submitted",
                     headers={REASON_HEADER: "unknown_procedure", SOURCE_HEADER: "intake"})
    real_refuse = Ledger.refuse
    calls: list[str] = []

    def refuse_once_then_away(self: Ledger, row: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        calls.append(row["submission_id"])
        if len(calls) > 1:
            raise TransientError("ledger unavailable: OperationalError (database is locked)")
        return real_refuse(self, row)

    monkeypatch.setattr(Ledger, "refuse", refuse_once_then_away)
    rc, out, err = cli(capsys, t, "dead-letters", "refuse", "--procedure", "9.999999",
                       "--reason", "not here", "--catalog", str(MINI_CATALOG),
                       "--db-url", ledger.url)
    assert rc == 1 and "Traceback" not in err
    first = calls[0]
    assert out.splitlines() == [
        f"triage: submit:{first}: submission {first} refused, desk T.MC.B told as "
        f"submit:{first}:refused", "1 dossier(s) refused"]
    assert err.splitlines()[-2:] == [
        "cut short: only the dossiers above were refused; the others are where they were",
        "error: ledger unavailable: OperationalError (database is locked)"]
    assert queue_depth(t.triage_queue) == 2  # the other two, back where they were
    assert [ledger.refusal(str(d.submission_id)) is not None for d in triaged].count(True) == 1


def test_sigterm_during_a_settling_command_is_taken_as_ctrl_c_and_then_restored() -> None:
    # `timeout` or a service manager stops a replay with SIGTERM: the process died with
    # nothing said of what it had replayed or discarded (a discarded message has no copy)
    from broker.ops.progress import term_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), term_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 1)  # the handler runs here at the latest
    assert signal.getsignal(signal.SIGTERM) is before
