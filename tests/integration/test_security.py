"""Per-party RabbitMQ users: each desk and agency can do exactly its part, no more."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest

from broker.amqp import REASON_HEADER, amqp_url
from broker.ledger import Ledger
from broker.messages import encode
from broker.rules.catalog import Catalog
from broker.security import Management, ManagementError, apply, grants, user_for
from broker.topology import INTAKE_KEY, Topology
from tests.conftest import wait_for
from tests.helpers import Amqp, dossier

pytestmark = pytest.mark.integration


def _api() -> Management:
    api = Management()
    try:
        api.user_exists("guest")
    except ManagementError as e:
        pytest.skip(f"RabbitMQ management plugin not reachable: {e}")
    return api


@pytest.fixture
def users(declared: Topology, mini_catalog: Catalog, tmp_path: Path) -> Iterator[Path]:
    api = _api()
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
    finally:
        amqp.close()
