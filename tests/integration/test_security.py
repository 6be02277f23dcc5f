"""Per-party RabbitMQ users: each desk and agency can do exactly its part, no more."""

from __future__ import annotations

import secrets
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest

from adapters.client import BrokerClient, DeskClient, Inbox, InboxRefused, PublishError
from broker.amqp import DETAIL_HEADER, REASON_HEADER, SENT_BY_HEADER, amqp_url
from broker.cli import main
from broker.ledger import Ledger
from broker.messages import encode
from broker.rules.catalog import Catalog
from broker.security import Grant, Management, ManagementError, apply, grants, user_for
from broker.topology import INTAKE_KEY, TRIAGE_KEY, Topology
from tests.conftest import MINI_CATALOG, queue_depth, wait_for
from tests.helpers import Amqp, dossier, management_api

pytestmark = pytest.mark.integration


@pytest.fixture
def users(declared: Topology, mini_catalog: Catalog, tmp_path: Path) -> Iterator[Path]:
    api = management_api()
    planned = grants(declared, mini_catalog)
    result = apply(planned, api, tmp_path / "secrets")
    assert result == {"users": len(planned), "created": len(planned)}
    assert apply(planned, api, tmp_path / "secrets") == {"users": len(planned), "created": 0}
    yield tmp_path / "secrets"
    for g in planned:
        api.delete_user(g.user)


def _connect(user: str, secrets: Path) -> pika.BlockingConnection:
    password = (secrets / f"{user}.password").read_text().strip()
    assert (secrets / f"{user}.password").stat().st_mode & 0o077 == 0
    base = urllib.parse.urlsplit(amqp_url())
    url = (f"amqp://{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password)}@"
           f"{base.hostname}:{base.port or 5672}/%2F")
    return pika.BlockingConnection(pika.URLParameters(url))


def _publish(conn: pika.BlockingConnection, exchange: str, key: str, body: bytes,
             user_id: str | None) -> None:
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish(exchange, key, body, pika.BasicProperties(
        delivery_mode=2, content_type="application/json", message_id="m1", user_id=user_id),
        mandatory=True)


def test_desk_and_agency_can_do_their_part_only(declared: Topology, users: Path) -> None:
    desk = user_for(declared, "T.MC.A")
    conn = _connect(desk, users)
    try:
        _publish(conn, declared.intake_exchange, INTAKE_KEY, encode(dossier(desk_id="T.MC.A")),
                 desk)
        conn.channel().queue_declare(declared.desk_queue("T.MC.A"), passive=True)
        conn.channel().basic_get(declared.desk_queue("T.MC.A"))  # reading its own queue
        refused = [
            lambda: conn.channel().basic_get(declared.desk_queue("T.MC.B")),
            lambda: conn.channel().basic_get(declared.intake_queue),
            lambda: _publish(conn, declared.agency_exchange, "T.UBND.A", b"{}", desk),
            lambda: _publish(conn, declared.intake_exchange, INTAKE_KEY, b"{}",
                             user_for(declared, "T.MC.B")),  # pretending to be another desk
            lambda: conn.channel().queue_declare("rogue", durable=True),
        ]
        for attempt in refused:
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
                attempt()
            assert e.value.reply_code in (403, 406)
    finally:
        conn.close()

    # the SDK under the desk's own user: its check of the desk queue needs no configure
    password = (users / f"{desk}.password").read_text().strip()
    base = urllib.parse.urlsplit(amqp_url())
    with DeskClient("T.MC.A", topology=declared, url=(
            f"amqp://{urllib.parse.quote(desk, safe='')}:{urllib.parse.quote(password)}@"
            f"{base.hostname}:{base.port or 5672}/%2F")) as client:
        client.submit(dossier(desk_id="T.MC.A"))
        # its inbox may read its own queue only, and says so in words (not amqp's error)
        with pytest.raises(InboxRefused, match="refused to let this login read "
                           f"'{declared.desk_queue('T.MC.B')}'"):
            Inbox(client, [declared.desk_queue("T.MC.B")]).drain(lambda r: None,
                                                                   timeout_s=2)
    assert queue_depth(declared.intake_queue) == 2
    with DeskClient("T.MC.A", topology=declared, url=(
            f"amqp://{urllib.parse.quote(desk, safe='')}:not-{urllib.parse.quote(password)}@"
            f"{base.hostname}:{base.port or 5672}/%2F")) as client:
        with pytest.raises(InboxRefused, match="refused the login") as e:
            client.inbox().drain(lambda r: None, timeout_s=2)
        assert password not in str(e.value)

    agency = user_for(declared, "T.UBND.A")
    conn = _connect(agency, users)
    try:
        conn.channel().basic_get(declared.agency_queue("T.UBND.A"))
        _publish(conn, declared.status_exchange, "status", b"{}", agency)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            conn.channel().basic_get(declared.agency_queue("T.SO.TP"))
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            _publish(conn, declared.intake_exchange, INTAKE_KEY, b"{}", agency)
    finally:
        conn.close()
    # through the SDK, a permission missing is said to be one, not a password to check
    # (found by a review)
    password = (users / f"{agency}.password").read_text().strip()
    with BrokerClient(topology=declared, url=(
            f"amqp://{urllib.parse.quote(agency, safe='')}:{urllib.parse.quote(password)}@"
            f"{base.hostname}:{base.port or 5672}/%2F")) as client, \
            pytest.raises(PublishError) as refused:
        client.publish(dossier(desk_id="T.MC.A"), exchange=declared.intake_exchange,
                       routing_key=INTAKE_KEY, message_id="m2")
    assert "RabbitMQ refused this user (ACCESS_REFUSED - access to exchange " in str(
        refused.value)
    assert "see its permissions (`casebroker users plan`)" in str(refused.value)
    assert "password" not in str(refused.value)


def test_router_refuses_a_dossier_naming_another_desk(
        declared: Topology, users: Path, run_broker, ledger: Ledger,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASEBROKER_PARTY_USERS", "1")
    run_broker()
    desk = user_for(declared, "T.MC.A")
    conn = _connect(desk, users)
    try:
        _publish(conn, declared.intake_exchange, INTAKE_KEY,
                 encode(dossier(desk_id="T.MC.B")), desk)  # T.MC.A claims to be T.MC.B
        honest = dossier(desk_id="T.MC.A")
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish(declared.intake_exchange, INTAKE_KEY, encode(honest),
                         pika.BasicProperties(delivery_mode=2, content_type="application/json",
                                              message_id="honest", user_id=desk))
    finally:
        conn.close()
    amqp = Amqp()
    try:
        dead = wait_for(lambda: amqp.get_all(declared.dead_queue("intake")), what="dead")
        assert [p.headers[REASON_HEADER] for p, _ in dead] == ["sender_mismatch"]
        wait_for(lambda: ledger.count_by_state() == {2: 1}, what="honest one routed")
        assert ledger.states_for_submissions([str(honest.submission_id)])
        # desk A hears of both, in order; desk B, which it named, of neither
        told: list[dict[str, object]] = []

        def both_told() -> bool:
            told.extend(amqp.json_all(declared.desk_queue("T.MC.A")))
            return len(told) >= 2

        wait_for(both_told, what="desk A's two notices")
        assert [(n["notice"], n["desk_id"]) for n in told] == [("held", "T.MC.A"),
                                                               ("receipt", "T.MC.A")]
        assert str(told[0]["reason"]).startswith("sender_mismatch: published by ")
        assert queue_depth(declared.desk_queue("T.MC.B")) == 0
    finally:
        amqp.close()


def test_a_replayed_dead_letter_keeps_its_first_sender(
        declared: Topology, users: Path, run_broker, ledger: Ledger,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The operator replays under the router's login, not the desk's: the router takes
    the first sender from the dead letter, recorded from a user_id RabbitMQ checked. An
    honest dossier replayed is routed as its desk's; a spoofed one stays refused; and a
    desk cannot claim another sender by setting the header itself."""
    monkeypatch.setenv("CASEBROKER_PARTY_USERS", "1")
    run_broker()
    desk, other = user_for(declared, "T.MC.A"), user_for(declared, "T.MC.B")
    conn = _connect(desk, users)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        for mid, body, headers in [
                ("unknown", encode(dossier("9.999999", desk_id="T.MC.A")), None),  # triaged
                ("spoof", encode(dossier(desk_id="T.MC.B")), None),                # claims B
                ("forged", encode(dossier(desk_id="T.MC.B")), {SENT_BY_HEADER: other})]:
            ch.basic_publish(declared.intake_exchange, INTAKE_KEY, body, pika.BasicProperties(
                delivery_mode=2, content_type="application/json", message_id=mid,
                user_id=desk, headers=headers), mandatory=True)
    finally:
        conn.close()
    amqp = Amqp()
    try:
        dead = wait_for(lambda: amqp.get_all(declared.dead_queue("intake"))
                        if queue_depth(declared.dead_queue("intake")) >= 2 else None,
                        what="two dead letters")
        assert {p.message_id: (p.headers[REASON_HEADER], p.headers[SENT_BY_HEADER])
                for p, _ in dead} == {"spoof": ("sender_mismatch", desk),
                                      "forged": ("sender_mismatch", desk)}
        triaged = wait_for(lambda: amqp.get_all(declared.triage_queue), what="triaged")
        assert [(p.message_id, p.headers[SENT_BY_HEADER]) for p, _ in triaged] == [
            ("unknown", desk)]
        # the operator replays with the router's login (guest here, CASEBROKER_AMQP_URL)
        for p, body in dead:
            _publish_dead_letter(amqp, declared, "intake", p, body)
        _publish_dead_letter(amqp, declared, "triage", *triaged[0])
        for queue in ("intake", "triage"):
            assert main(["dead-letters", "replay", "--all", "--queue", queue,
                         "--prefix", declared.prefix]) == 0
        again = wait_for(lambda: amqp.get_all(declared.triage_queue), what="triaged again")
        # the honest one passed the sender check: triaged again for its procedure
        assert [(p.message_id, p.headers[REASON_HEADER], p.headers[SENT_BY_HEADER])
                for p, _ in again] == [("unknown#replay1", "unknown_procedure", desk)]
        dead = wait_for(lambda: amqp.get_all(declared.dead_queue("intake"))
                        if queue_depth(declared.dead_queue("intake")) >= 2 else None,
                        what="spoofs dead again")
        assert {p.message_id: (p.headers[REASON_HEADER], p.headers[DETAIL_HEADER])
                for p, _ in dead} == {
            "spoof#replay1": ("sender_mismatch", f"published by {desk!r}, not by T.MC.B"),
            "forged#replay1": ("sender_mismatch", f"published by {desk!r}, not by T.MC.B")}
        assert ledger.count_by_state() == {}
    finally:
        amqp.close()
    capsys.readouterr()


def _publish_dead_letter(amqp: Amqp, t: Topology, which: str,
                         props: pika.BasicProperties, body: bytes) -> None:
    """Put a dead letter taken to look at back where it was (as `casebroker dead-letters`
    does): the same properties, under this connection's login, so without user_id."""
    key = TRIAGE_KEY if which == "triage" else which
    props.user_id = None
    amqp.ch.basic_publish(t.dead_letter_exchange, key, body, props, mandatory=True)


def test_a_party_taken_out_of_the_catalog_is_named_then_retired(
        declared: Topology, users: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # found by a review: a decommissioned desk kept write access to intake and status
    api = management_api()
    router_like = user_for(declared, "router")  # configures: no party's, never retired
    api.put_user(router_like, secrets.token_urlsafe(16))
    api.put_permissions(Grant(router_like, "router", "service", ".*", ".*", ".*"))
    monitor = user_for(declared, "monitor")  # configures nothing, reads no party's queue
    api.put_user(monitor, secrets.token_urlsafe(16))
    api.put_permissions(Grant(monitor, "monitor", "service", "^$", "^$", "^$"))
    try:
        smaller = tmp_path / "smaller.yaml"
        smaller.write_text(MINI_CATALOG.read_text().replace(
            "  - {id: T.POST", "  # - {id: T.POST"))
        assert "# - {id: T.POST" in smaller.read_text()
        apply_ = ["users", "apply", "--catalog", str(smaller), "--prefix", declared.prefix,
                  "--secrets-dir", str(users)]
        capsys.readouterr()
        assert main(apply_) == 0
        out, err = capsys.readouterr()
        gone = user_for(declared, "T.POST")
        assert err == (f"warning: 1 user(s) whose desk or agency is not in the catalog still "
                       f"hold their permissions: {gone} (--retire deletes them)\n")
        assert api.user_exists(gone) and (users / f"{gone}.password").exists()
        assert main([*apply_, "--retire"]) == 0
        out, err = capsys.readouterr()
        assert out.endswith(f"retired {gone}: its desk or agency is not in the catalog\n")
        assert err == "" and not api.user_exists(gone)
        assert not (users / f"{gone}.password").exists()  # it opens nothing now
        assert api.user_exists(router_like) and api.user_exists(monitor)
        assert main(apply_) == 0 and capsys.readouterr().err == ""
    finally:
        api.delete_user(router_like)
        api.delete_user(monitor)
        api.put_user(user_for(declared, "T.POST"), "x")  # for the fixture's teardown


def test_a_page_that_is_no_management_api_is_said_in_words() -> None:
    # a proxy's or another server's page answered 200: json.loads raised on it, past the
    # ManagementError every caller handles (the audit crashed; found by a review)
    import http.server
    import threading

    class Portal(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
            page = b"<html><body>Sign in</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Portal)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        api = Management.from_url(f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(ManagementError) as e:
            api.unacked()
        assert "the answer is not JSON: no RabbitMQ management API at http://127.0.0.1:" in (
            str(e.value))
    finally:
        server.shutdown()
        server.server_close()
