"""The kombu client SDK against the real RabbitMQ: publishes, returns, inbox acks and rejects."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pika
import pytest

from adapters.client import (
    AgencyClient,
    BrokerClient,
    DeskClient,
    Inbox,
    InboxUnreachable,
    MessageTooLarge,
    NotInTopology,
    PublishError,
    QueueMissing,
    Received,
    RetryLater,
)
from broker.amqp import amqp_url
from broker.messages import (
    MAX_BODY_BYTES,
    AgencyNotice,
    DeskNotice,
    Document,
    DossierSubmitted,
    DossierWithdrawn,
    NoticeKind,
    decode,
    encode,
)
from broker.topology import STATUS_KEY, Topology
from tests.conftest import wait_for
from tests.helpers import free_port, length_cap

pytestmark = pytest.mark.integration

DESKS = ["T.MC.A", "T.MC.B"]
AGENCIES = ["T.UBND.A"]
CODE = "T.UBND.A-261125-0001"
DOC = Document(name="ban-sao.pdf", uri="s3://docs/2", sha256="b" * 64, size=10,
               media_type="application/pdf")


@dataclass
class Live:
    """A topology live for one test, plus a pika channel to inspect it."""

    topology: Topology
    channel: Any

    def depth(self, queue: str) -> int:
        return int(self.channel.queue_declare(queue, passive=True).method.message_count)

    def get_all(self, queue: str) -> list[tuple[Any, bytes]]:
        out = []
        while (got := self.channel.basic_get(queue, auto_ack=True))[0] is not None:
            out.append((got[1], got[2]))
        return out

    def wait_depth(self, queue: str, n: int, timeout_s: float = 5.0) -> int:
        # quorum queues dead-letter asynchronously: the copy lands a moment after the reject
        deadline = time.monotonic() + timeout_s
        while (depth := self.depth(queue)) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return depth


def dossier(desk_id: str = "T.MC.A") -> DossierSubmitted:
    return DossierSubmitted.model_validate({
        "submission_id": str(uuid.uuid4()), "procedure_code": "1.001193", "desk_id": desk_id,
        "channel": "in_person", "submitted_at": datetime.now(UTC).isoformat(),
        "applicant": {"kind": "citizen", "name": "Nguyễn Văn An", "id_number": "066090001234"},
    })


def desk_notice(desk_id: str, n: int) -> DeskNotice:
    return DeskNotice(notice=NoticeKind.RECEIPT, dossier_code=f"T.UBND.A-261125-{n:04d}",
                      submission_id=uuid.uuid4(), desk_id=desk_id, procedure_code="1.001193",
                      state=2, issued_at=datetime.now(UTC))


def publish_desk_notices(client: BrokerClient, t: Topology, desk: str, n: int) -> None:
    """``n`` notices to one desk, ids ``notice:0`` onwards."""
    for i in range(n):
        client.publish(desk_notice(desk, i), exchange=t.desk_exchange, routing_key=desk,
                       message_id=f"notice:{i}")


def send_notices(client: BrokerClient, t: Topology) -> set[str]:
    """Two desk notices per desk and one agency notice; return their message ids."""
    ids = set()
    for i, desk in enumerate(DESKS * 2):
        ids.add(mid := f"notice:{desk}:{i}")
        client.publish(desk_notice(desk, i), exchange=t.desk_exchange, routing_key=desk,
                       message_id=mid)
    agency_notice = AgencyNotice(notice=NoticeKind.WITHDRAWN, dossier_code=CODE,
                                 agency_id=AGENCIES[0], state=7, issued_at=datetime.now(UTC))
    client.publish(agency_notice, exchange=t.agency_exchange, routing_key=AGENCIES[0],
                   message_id="notice:agency")
    return ids | {"notice:agency"}


def test_submit_lands_on_intake_with_properties(live: Live) -> None:
    t = live.topology
    d = dossier()
    with DeskClient("T.MC.A", topology=t) as desk:
        assert desk.submit(d) == f"submit:{d.submission_id}"
    [(props, body)] = live.get_all(t.intake_queue)
    assert props.delivery_mode == 2 and props.content_type == "application/json"
    assert props.message_id == f"submit:{d.submission_id}"
    assert props.type == "dossier.submitted"
    assert props.correlation_id == str(d.submission_id)
    assert props.user_id == "guest"
    assert decode(body, content_type=props.content_type) == d


def test_desk_events_and_agency_reports_land_on_status_queue(live: Live) -> None:
    t = live.topology
    update_id = uuid.uuid4()
    with DeskClient("T.MC.A", topology=t) as desk, AgencyClient("T.UBND.A", topology=t) as ag:
        sent = [desk.returned(CODE, satisfaction=5), desk.supplemented(CODE, [DOC]),
                desk.withdrawn(CODE, reason="citizen request"),
                ag.report(CODE, "resolved", documents=[DOC], update_id=update_id)]
    assert sent[3] == f"status:{update_id}"
    got = live.get_all(t.status_queue)
    assert [p.message_id for p, _ in got] == sent
    assert [p.type for p, _ in got] == ["dossier.returned", "dossier.supplemented",
                                        "dossier.withdrawn", "dossier.status"]
    assert {p.correlation_id for p, _ in got} == {CODE}
    messages = [decode(body) for _, body in got]
    assert [getattr(m, "desk_id", None) for m in messages[:3]] == ["T.MC.A"] * 3
    assert messages[0].satisfaction == 5  # type: ignore[union-attr]
    assert messages[3].agency_id == "T.UBND.A"  # type: ignore[union-attr]
    # ids the SDK makes itself are time-ordered (version 7); a given one is kept as it is
    made = [uuid.UUID(mid.partition(":")[2]) for mid in sent]
    assert [u.version for u in made] == [7, 7, 7, 4]
    times = [u.int >> 80 for u in made[:3]]  # milliseconds: later events, later or equal
    assert times == sorted(times)


def test_a_held_dossier_is_withdrawn_by_submission_id_and_one_key_is_required(
        live: Live) -> None:
    t = live.topology
    sid = uuid.uuid4()
    with DeskClient("T.MC.A", topology=t) as desk:
        for keys in ({}, {"dossier_code": CODE, "submission_id": sid}):
            with pytest.raises(ValueError, match="exactly one"):
                desk.withdrawn(reason="moved away", **keys)  # type: ignore[arg-type]
        sent = desk.withdrawn(submission_id=str(sid), reason="moved away")
    [(props, body)] = live.get_all(t.status_queue)  # the refused calls sent nothing
    assert props.message_id == sent and props.correlation_id == str(sid)
    message = decode(body)
    assert isinstance(message, DossierWithdrawn)
    assert (message.submission_id, message.dossier_code) == (sid, None)


def test_unroutable_or_refused_publish_raises_and_client_recovers(live: Live) -> None:
    t = live.topology
    with DeskClient("T.MC.A", topology=t) as desk:
        with pytest.raises(PublishError, match="returned"):
            desk.publish(dossier(), exchange=t.status_exchange, routing_key="nobody",
                         message_id="lost")
        with pytest.raises(PublishError):  # the exchange does not exist: channel error 404
            desk.publish(dossier(), exchange=f"{t.prefix}.nowhere", routing_key=STATUS_KEY,
                         message_id="nowhere")
        # the next publishes confirm normally: no stale return or ack is left behind
        d = dossier()
        desk.submit(d)
        desk.withdrawn(CODE)
    assert live.depth(t.intake_queue) == 1 and live.depth(t.status_queue) == 1


def test_a_refused_publish_is_retried_on_a_new_connection_and_said_in_words(
        live: Live, caplog: pytest.LogCaptureFixture) -> None:
    # the intake queue over a cap (reject-publish): RabbitMQ nacks. Left to kombu, a nack
    # was retried at once, ten times, each on a new connection, and the error read
    # "failed: " and nothing more
    t = live.topology
    with length_cap(t.intake_queue, f"{t.prefix}-full") as cap:
        with DeskClient("T.MC.A", topology=t, max_retries=1) as desk:
            refused: list[PublishError] = []
            for _ in range(10):  # the queue tells a channel to refuse once over its cap
                try:
                    desk.submit(dossier())
                except PublishError as e:
                    refused.append(e)
                    break
                time.sleep(0.2)
        (error,) = refused
        assert "was refused by RabbitMQ (nack), 2 times" in str(error)
        assert "over its length limit" in str(error) and "same message id" in str(error)
        # a submission made while the queue is full goes in once it has room: RabbitMQ
        # 3.10 would go on refusing on the channel it told to refuse, so the retry after
        # the pause must be on a new one (max_retries None: for as long as it takes)
        d, done = dossier(), threading.Event()
        caplog.clear()
        with DeskClient("T.MC.A", topology=t, max_retries=None) as desk:
            submitting = threading.Thread(target=lambda: (desk.submit(d), done.set()))
            with caplog.at_level(logging.WARNING, logger="adapters.client"):
                submitting.start()
                wait_for(lambda: any(
                    "was refused by RabbitMQ (nack); retrying in" in r.getMessage()
                    for r in caplog.records), timeout_s=10, what="a refusal and its retry")
                cap.lift()
                submitting.join(30)
        assert done.is_set()
    taken = [json.loads(body)["submission_id"] for _, body in live.get_all(t.intake_queue)]
    assert taken.count(str(d.submission_id)) == 1


def test_inbox_drains_several_queues_and_acks(live: Live) -> None:
    t = live.topology
    got: list[Received] = []
    with BrokerClient(topology=t) as client:
        ids = send_notices(client, t)
        queues = [t.desk_queue(d) for d in DESKS] + [t.agency_queue(AGENCIES[0])]
        handled = Inbox(client, queues).drain(got.append, timeout_s=0.3)
    assert handled == len(got) == 5
    assert {r.message_id for r in got} == ids
    assert {r.queue for r in got} == set(queues)
    for r in got:
        assert r.kind == ("agency.notice" if r.queue == queues[2] else "desk.notice")
        assert not r.redelivered
        assert r.message.dossier_code.startswith("T.UBND.A-")
    assert [live.depth(q) for q in queues] == [0, 0, 0]


def test_handler_failure_and_poison_are_dead_lettered_not_acked(live: Live) -> None:
    t = live.topology
    queue = t.desk_queue("T.MC.A")

    def handler(r: Received) -> None:
        if r.message_id == "notice:bad":
            raise RuntimeError("handler bug")

    with DeskClient("T.MC.A", topology=t) as desk:
        desk.publish(desk_notice("T.MC.A", 1), exchange=t.desk_exchange,
                     routing_key="T.MC.A", message_id="notice:good")
        desk.publish(desk_notice("T.MC.A", 2), exchange=t.desk_exchange,
                     routing_key="T.MC.A", message_id="notice:bad")
        live.channel.basic_publish(t.desk_exchange, "T.MC.A", b"{not json",
                                       pika.BasicProperties(message_id="poison"))
        assert desk.inbox().drain(handler, timeout_s=0.3) == 1
    assert live.depth(queue) == 0
    assert live.wait_depth(t.dead_queue("desk"), 2) == 2
    dead = live.get_all(t.dead_queue("desk"))
    assert sorted(p.message_id for p, _ in dead) == ["notice:bad", "poison"]
    assert {p.headers["x-first-death-reason"] for p, _ in dead} == {"rejected"}
    bad = next(body for p, body in dead if p.message_id == "notice:bad")
    assert json.loads(bad)["dossier_code"] == "T.UBND.A-261125-0002"


def test_a_handler_failure_is_logged_by_type_and_place_never_by_its_message(
        live: Live, caplog: pytest.LogCaptureFixture) -> None:
    t = live.topology

    def handler_quoting_the_citizen(r: Received) -> None:
        raise ValueError("citizen id 066090001234 is not in our register")

    caplog.set_level(logging.DEBUG)
    with DeskClient("T.MC.A", topology=t) as desk:
        publish_desk_notices(desk, t, "T.MC.A", 1)
        assert desk.inbox().drain(handler_quoting_the_citizen, timeout_s=0.3) == 0
    assert "066090001234" not in caplog.text  # the formatted records, tracebacks included
    for r in caplog.records:
        assert "066090001234" not in r.getMessage() + (r.exc_text or "")
        assert r.exc_info is None or "066090001234" not in str(r.exc_info[1])
    [failed] = [r.getMessage() for r in caplog.records if "handler failed" in r.getMessage()]
    assert "ValueError" in failed and "handler_quoting_the_citizen" in failed
    assert live.wait_depth(t.dead_queue("desk"), 1) == 1


def test_stop_from_another_thread_ends_drain(live: Live) -> None:
    # ordered, not timed: without a timeout nothing but stop() ends the drain; it is still
    # running a second on, and ends once stop() is called from this thread
    handled: list[int] = []
    with DeskClient("T.MC.B", topology=live.topology) as desk:
        inbox = desk.inbox()
        draining = threading.Thread(target=lambda: handled.append(
            inbox.drain(lambda r: None, timeout_s=None)))
        draining.start()
        draining.join(1.0)
        assert draining.is_alive(), f"the drain ended before stop(): {handled}"
        inbox.stop()
        draining.join(30)
        assert not draining.is_alive(), "stop() did not end the drain"
    assert handled == [0]


def test_after_stop_the_handler_is_not_called_and_what_it_did_not_take_stays_queued(
        live: Live) -> None:
    t = live.topology
    calls: list[str | None] = []
    with DeskClient("T.MC.A", topology=t) as desk:
        publish_desk_notices(desk, t, "T.MC.A", 5)
        inbox = desk.inbox()

        def handler(r: Received) -> None:  # the desk shuts down after the first
            calls.append(r.message_id)
            inbox.stop()

        handled = inbox.drain(handler, timeout_s=2.0)
    # every call was acked: none came while the connection closed, its ack lost
    assert len(calls) == handled >= 1
    assert live.wait_depth(t.desk_queue("T.MC.A"), 5 - handled) == 5 - handled
    assert live.depth(t.dead_queue("desk")) == 0


def test_a_job_that_stops_after_each_message_never_pushes_one_past_its_delivery_limit(
        live: Live, caplog: pytest.LogCaptureFixture) -> None:
    # each drain ends after one message; what it held unhandled went back to the queue,
    # each return counted by RabbitMQ toward the delivery limit (20): with the default
    # window of 200, the notices waiting longest were dead-lettered, unseen, by the 21st
    t = live.topology
    handled: list[str | None] = []
    with DeskClient("T.MC.A", topology=t) as desk:
        publish_desk_notices(desk, t, "T.MC.A", 30)
        for _ in range(25):
            inbox = desk.inbox()

            def handler(r: Received, inbox: Inbox = inbox) -> None:
                handled.append(r.message_id)
                inbox.stop()

            with caplog.at_level(logging.INFO, logger="adapters.client"):
                assert inbox.drain(handler, timeout_s=5.0) == 1
    assert handled == [f"notice:{i}" for i in range(25)]
    assert live.wait_depth(t.desk_queue("T.MC.A"), 5) == 5
    assert live.depth(t.dead_queue("desk")) == 0
    # and each drain said what it gave back, as a count
    backs = [r.getMessage() for r in caplog.records
             if "went back to their queues as the drain ended" in r.getMessage()]
    counts = [int(m.group(1)) for b in backs
              if (m := re.match(r"inbox: (\d+) deliveries received and not handled", b))]
    # what each stop gave back: at most the window (the ack of the one it handled lets
    # RabbitMQ send one more before the close)
    assert len(counts) == len(backs) >= 1 and all(1 <= n <= 10 for n in counts), backs


def cut(connection: Any) -> None:
    """Simulate a network failure under a kombu connection."""
    connection.connection.transport.sock.shutdown(socket.SHUT_RDWR)


def test_publish_reconnects_after_connection_loss(live: Live) -> None:
    t = live.topology
    with DeskClient("T.MC.A", topology=t) as desk:
        desk.submit(dossier())
        cut(desk.connection)
        desk.submit(dossier())
    assert live.depth(t.intake_queue) == 2


class SlowLink:
    """A TCP relay to RabbitMQ that holds back what RabbitMQ sends on the connections open
    when told to (:meth:`stall`), until :meth:`release`: a confirm that comes late; with
    ``sending``, what the client sends too: a link gone silent both ways. ``rcvbuf``: the
    relay's receive buffer, small for a client's writes to back up soon."""

    def __init__(self, rcvbuf: int | None = None) -> None:
        self.listener = socket.socket()
        if rcvbuf is not None:  # set before listen(): the accepted sockets inherit it
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.target = urlsplit(amqp_url())
        self.url = self.target._replace(netloc=(
            f"{self.target.username}:{self.target.password}"
            f"@127.0.0.1:{self.listener.getsockname()[1]}")).geturl()
        self.flowing: list[threading.Event] = []
        self.sending: list[threading.Event] = []
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection((self.target.hostname, self.target.port or 5672))
            flowing, sending = threading.Event(), threading.Event()
            flowing.set()
            sending.set()
            self.flowing.append(flowing)
            self.sending.append(sending)
            self.sockets += [client, server]
            for src, dst, gate in ((client, server, sending), (server, client, flowing)):
                threading.Thread(target=self._pump, args=(src, dst, gate), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, gate: threading.Event) -> None:
        try:
            while gate.wait() and (data := src.recv(65536)):
                gate.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stall(self, *, sending: bool = False) -> None:
        for gate in self.flowing + (self.sending if sending else []):
            gate.clear()

    def release(self) -> None:
        for gate in self.flowing + self.sending:
            gate.set()

    def close(self) -> None:
        self.listener.close()
        self.release()
        for s in self.sockets:
            s.close()


def test_a_late_confirm_is_said_at_once_and_not_published_again(live: Live) -> None:
    # a confirm that timed out was taken by kombu for a lost connection: it published the
    # message again at once on a new connection, and said RabbitMQ was unavailable
    t = live.topology
    with pytest.raises(ValueError, match="confirm_timeout_s"):
        DeskClient("T.MC.A", topology=t, confirm_timeout_s=0)  # py-amqp: "wait for ever"
    link = SlowLink()
    try:
        with DeskClient("T.MC.A", url=link.url, topology=t, confirm_timeout_s=1.0) as desk:
            desk.submit(dossier())
            link.stall()
            late = dossier()
            with pytest.raises(PublishError, match="no confirm from RabbitMQ within 1 s") as e:
                desk.submit(late)
            assert e.value.message_id == f"submit:{late.submission_id}"
            assert "same message id" in str(e.value)
            link.release()
            desk.submit(dossier())  # on a new connection: the late confirm is not taken for it
    finally:
        link.close()
    taken = [p.message_id for p, _ in live.get_all(t.intake_queue)]
    assert len(taken) == 3 and taken.count(f"submit:{late.submission_id}") == 1


def _drain_desk_notices(live: Live, n: int, then: Callable[[Inbox, list[Received]], None]
                        ) -> tuple[list[Received], int]:
    """Desk T.MC.A's inbox drained of ``n`` notices (1 s idle), ``then`` called after each
    one the handler takes with what it took so far: what it took, and the drain's count."""
    seen: list[Received] = []
    with DeskClient("T.MC.A", topology=live.topology) as desk:
        publish_desk_notices(desk, live.topology, "T.MC.A", n)
        inbox = desk.inbox()

        def handler(r: Received) -> None:
            seen.append(r)
            then(inbox, seen)

        return seen, inbox.drain(handler, timeout_s=1.0)


@pytest.mark.parametrize("retried", [False, True], ids=["handled", "retried"])
def test_inbox_reconnects_and_redelivers_what_it_had_not_acked(live: Live,
                                                               retried: bool) -> None:
    # retried: the handler asked for a retry first, and the retry's ack is the one lost
    t = live.topology

    def then(inbox: Inbox, seen: list[Received]) -> None:
        if retried and len(seen) == 1:
            raise RetryLater(0.1)
        if len(seen) == 1 + retried:
            cut(inbox.connection)  # the ack after this handler returns cannot be sent

    seen, handled = _drain_desk_notices(live, 3, then)
    assert handled == 3
    assert [r.message_id for r in seen] == ["notice:0"] * (2 + retried) + [
        "notice:1", "notice:2"]
    assert [r.redelivered for r in seen[:2 + retried]] == [False] * (1 + retried) + [True]
    assert live.depth(t.desk_queue("T.MC.A")) == 0 and live.depth(t.dead_queue("desk")) == 0


def test_a_connection_lost_while_the_inbox_subscribes_is_recovered(live: Live) -> None:
    # with several queues, the first queue's deliveries reach the handler while the inbox
    # still subscribes to the others: a loss then, or again while subscribing anew after
    # it, made drain() raise
    t = live.topology
    queues = [t.desk_queue(d) for d in DESKS] + [t.agency_queue(AGENCIES[0])]
    seen: list[Received] = []
    with BrokerClient(topology=t) as client:
        ids = send_notices(client, t)
        inbox = Inbox(client, queues, prefetch_count=1)

        def handler(r: Received) -> None:
            seen.append(r)
            if len(seen) == 1 or [x.redelivered for x in seen].count(True) == 1 == r.redelivered:
                cut(inbox.connection)

        handled = inbox.drain(handler, timeout_s=1.0)
    assert handled == 5
    assert {r.message_id for r in seen} == ids
    assert sum(r.redelivered for r in seen) >= 2  # both cuts cost an ack
    assert [live.depth(q) for q in queues] == [0, 0, 0]


def test_an_inbox_that_cannot_reach_rabbitmq_keeps_trying_until_stopped(
        live: Live, caplog: pytest.LogCaptureFixture) -> None:
    # an inbox is a long-running consumer: past the client's max_retries (its publishes'),
    # it waits out a RabbitMQ restart, however long, and stop() still ends it
    nobody = f"amqp://guest:not-the-password@127.0.0.1:{free_port()}/%2F"
    handled: list[int] = []

    def failed_attempts() -> list[str]:
        return [r.getMessage() for r in caplog.records if "inbox could not subscribe "
                "(ConnectionRefusedError); retrying in" in r.getMessage()]

    with DeskClient("T.MC.A", url=nobody, topology=live.topology, max_retries=1) as desk:
        inbox = desk.inbox()
        draining = threading.Thread(target=lambda: handled.append(
            inbox.drain(lambda r: None, timeout_s=None)))
        with caplog.at_level(logging.WARNING, logger="adapters.client"):
            draining.start()
            wait_for(lambda: len(failed_attempts()) >= 3, timeout_s=10,
                     what="three failed attempts")
            assert draining.is_alive()
            inbox.stop()
            draining.join(5)
        assert not draining.is_alive() and handled == [0]
        assert [line[-4:] for line in failed_attempts()[:2]] == ["0.2s", "0.7s"]
        assert "not-the-password" not in caplog.text
        # with a timeout, the drain ends when nothing came for that long, as when
        # connected, and says it reached nothing (0 was a quiet queue's answer)
        started = time.monotonic()
        with pytest.raises(InboxUnreachable, match="could not subscribe"):
            inbox.drain(lambda r: None, timeout_s=0.5)
        assert time.monotonic() - started < 5


def test_a_queue_deleted_under_the_inbox_or_never_declared_is_said_in_words(
        live: Live, caplog: pytest.LogCaptureFixture) -> None:
    t = live.topology
    qa, qb = t.desk_queue("T.MC.A"), t.desk_queue("T.MC.B")
    with BrokerClient(topology=t) as client:
        publish_desk_notices(client, t, "T.MC.B", 1)

        def handler(r: Received) -> None:
            live.channel.queue_delete(qa)  # an operator's mistake, while B's notice is handled

        with caplog.at_level(logging.WARNING, logger="adapters.client"), pytest.raises(
                QueueMissing, match="declare the topology") as missing:
            Inbox(client, [qa, qb]).drain(handler, timeout_s=2.0)
        assert missing.value.queue == qa and qa in str(missing.value)
        assert f"the consumer on {qa} was cancelled by RabbitMQ (queue deleted?)" in caplog.text
        with pytest.raises(QueueMissing, match="no queue 'nowhere'"):
            Inbox(client, ["nowhere"]).drain(lambda r: None, timeout_s=0.3)
    assert live.depth(qb) == 0


def test_a_long_run_of_held_deliveries_leaves_the_heartbeats_answered(
        live: Live, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # after a RetryLater, the deliveries held behind it are handed over one per turn of
    # the drain loop, which reads the socket between two: handed over in one go, for
    # longer than two heartbeats, py-amqp had declared the connection dead
    import adapters.client

    monkeypatch.setattr(adapters.client, "INBOX_HEARTBEAT_S", 1)
    t = live.topology
    seen: list[Received] = []
    with DeskClient("T.MC.A", topology=t) as desk:
        publish_desk_notices(desk, t, "T.MC.A", 10)

        def handler(r: Received) -> None:
            seen.append(r)
            if len(seen) == 1:
                time.sleep(0.3)  # the other nine come meanwhile, and are held behind it
                raise RetryLater(0.1)
            time.sleep(0.4)  # well within a heartbeat, but nine of them are not

        with caplog.at_level(logging.WARNING, logger="adapters.client"):
            assert desk.inbox(prefetch_count=10).drain(handler, timeout_s=1.0) == 10
    assert [r.message_id for r in seen] == ["notice:0"] + [f"notice:{i}" for i in range(10)]
    assert not any(r.redelivered for r in seen)
    assert "connection lost" not in caplog.text  # py-amqp: "Too many heartbeats missed"


def test_a_slow_handler_does_not_end_the_drain_with_deliveries_in_hand(live: Live) -> None:
    # idle is counted from the last handler's return: a handler slower than the timeout
    # used to end the drain after one message and send the prefetched ones back (each a
    # step towards the quorum queue's delivery limit)
    t = live.topology
    seen: list[Received] = []
    heartbeats: list[int] = []
    with DeskClient("T.MC.A", topology=t) as desk:
        publish_desk_notices(desk, t, "T.MC.A", 3)
        inbox = desk.inbox()

        def slow(r: Received) -> None:
            heartbeats.append(inbox.connection.connection.heartbeat)
            seen.append(r)
            time.sleep(0.5)

        assert inbox.drain(slow, timeout_s=0.3) == 3
    assert [r.message_id for r in seen] == ["notice:0", "notice:1", "notice:2"]
    assert not any(r.redelivered for r in seen)
    assert live.depth(t.desk_queue("T.MC.A")) == 0
    assert heartbeats[0] > 0  # negotiated with RabbitMQ: a silent peer is noticed


def test_a_handler_that_cannot_take_a_message_now_gets_it_again_in_order(
        live: Live) -> None:
    # the desk's own database is down for a moment: RetryLater, not a dead letter; the
    # notices behind it wait, so the desk still sees them in the order sent
    t = live.topology
    calls: list[tuple[str | None, float, bool]] = []
    with DeskClient("T.MC.A", topology=t) as desk:
        publish_desk_notices(desk, t, "T.MC.A", 3)

        def handler(r: Received) -> None:
            calls.append((r.message_id, time.monotonic(), r.redelivered))
            if len(calls) <= 2:
                raise RetryLater(0.3)

        assert desk.inbox().drain(handler, timeout_s=1.0) == 3
    assert [mid for mid, _, _ in calls] == ["notice:0"] * 3 + ["notice:1", "notice:2"]
    assert all(b - a >= 0.3 for (_, a, _), (_, b, _) in zip(calls, calls[1:3], strict=False))
    assert not any(redelivered for _, _, redelivered in calls)  # never left the desk
    assert live.depth(t.desk_queue("T.MC.A")) == 0 and live.depth(t.dead_queue("desk")) == 0


def test_a_handler_asking_again_and_again_neither_spins_nor_starves_the_heartbeats(
        live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    # RetryLater(0) over and over, for longer than RabbitMQ waits for a heartbeat: the
    # inbox paces the calls and keeps its connection (a busy loop had lost it)
    import adapters.client

    monkeypatch.setattr(adapters.client, "INBOX_HEARTBEAT_S", 1)
    t = live.topology
    calls: list[Received] = []
    with DeskClient("T.MC.A", topology=t) as desk:
        publish_desk_notices(desk, t, "T.MC.A", 1)
        started = time.monotonic()

        def handler(r: Received) -> None:
            calls.append(r)
            if time.monotonic() - started < 4:
                raise RetryLater(0)

        assert desk.inbox().drain(handler, timeout_s=1.0) == 1
    assert len(calls) <= 4 / adapters.client.RETRY_MIN_S + 10
    assert not any(r.redelivered for r in calls)  # the same delivery all along
    assert live.depth(t.desk_queue("T.MC.A")) == 0 and live.depth(t.dead_queue("desk")) == 0


def test_a_drain_stopped_while_a_retry_waits_gives_it_back_to_its_queue(live: Live) -> None:
    t = live.topology
    calls: list[str | None] = []
    with DeskClient("T.MC.A", topology=t) as desk:
        publish_desk_notices(desk, t, "T.MC.A", 3)
        inbox = desk.inbox()

        def handler(r: Received) -> None:
            calls.append(r.message_id)
            raise RetryLater(30)

        timer = threading.Timer(0.5, inbox.stop)
        started = time.monotonic()
        timer.start()
        assert inbox.drain(handler, timeout_s=None) == 0
        assert time.monotonic() - started < 5
        timer.join()
    assert calls == ["notice:0"]  # the others waited behind it, never handed over
    assert live.wait_depth(t.desk_queue("T.MC.A"), 3) == 3
    assert live.depth(t.dead_queue("desk")) == 0
    with pytest.raises(ValueError, match="after_s"):
        RetryLater(-1)


def test_a_retried_desk_event_keeps_its_id(live: Live) -> None:
    t = live.topology
    with DeskClient("T.MC.A", topology=t) as desk:
        with pytest.raises(PublishError) as failed:
            desk.publish(dossier(), exchange=t.status_exchange, routing_key="nobody",
                         message_id="event:lost")
        assert failed.value.message_id == "event:lost"
        event_id = uuid.uuid4()
        first = desk.withdrawn(CODE, "moved away", event_id=event_id)
        again = desk.withdrawn(CODE, "moved away", event_id=event_id)  # the caller's retry
    assert first == again == f"event:{event_id}"
    got = live.get_all(t.status_queue)
    assert [p.message_id for p, _ in got] == [first, first]  # the router applies it once


def test_what_the_router_would_refuse_is_refused_before_sending(live: Live) -> None:
    t = live.topology
    with DeskClient("T.MC.A", topology=t) as desk:
        with pytest.raises(ValueError, match="names desk T.MC.B"):
            desk.submit(dossier(desk_id="T.MC.B"))
        big = dossier().model_copy(update={"attributes": {"note": "x" * 300_000}})
        with pytest.raises(MessageTooLarge, match="over the 262144-byte limit") as too_big:
            desk.submit(big)
        assert too_big.value.message_id == f"submit:{big.submission_id}"
        assert isinstance(too_big.value, PublishError)  # callers catching that still do
    assert live.depth(t.intake_queue) == 0


def test_a_party_the_topology_does_not_know_is_told_before_sending(live: Live) -> None:
    # a mistyped desk or agency id: the router would dead-letter what it sends, and no
    # answer could reach it (it has no queue); the first publish says so and sends nothing
    t = live.topology
    with DeskClient("T.MC.Z", topology=t) as desk:
        for _ in range(2):  # not remembered as checked
            with pytest.raises(NotInTopology, match=f"no queue '{t.desk_queue('T.MC.Z')}'"):
                desk.submit(dossier(desk_id="T.MC.Z"))
    with AgencyClient("T.NOBODY", topology=t) as agency:
        with pytest.raises(NotInTopology, match="nothing was sent") as failed:
            agency.report(CODE, "accepted")
        assert isinstance(failed.value, PublishError)
    assert live.depth(t.intake_queue) == live.depth(t.status_queue) == 0
    with DeskClient("T.MC.A", topology=t) as desk:  # a known desk: checked once, then sent
        desk.submit(dossier())
        desk.submit(dossier())
    assert live.depth(t.intake_queue) == 2


def test_the_sdk_tries_the_next_node_of_the_cluster(live: Live,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    nobody = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"  # a node that is down
    monkeypatch.setenv("CASEBROKER_AMQP_URL", f"{nobody},{amqp_url()}")
    with DeskClient("T.MC.A", topology=live.topology, max_retries=3) as desk:
        desk.submit(dossier())
    assert live.depth(live.topology.intake_queue) == 1


def test_a_notice_larger_than_what_a_desk_may_send_is_taken(live: Live) -> None:
    # a result notice carries every step's results: larger than the 256 KiB a desk may
    # send, it is what casebroker built, and the inbox takes it
    t = live.topology
    notice = desk_notice("T.MC.A", 1).model_copy(update={"documents": [
        DOC.model_copy(update={"name": f"ket-qua-{i:04d}.pdf"}) for i in range(2000)]})
    assert len(encode(notice)) > MAX_BODY_BYTES
    got: list[Received] = []
    with DeskClient("T.MC.A", topology=t) as desk:
        live.channel.basic_publish(t.desk_exchange, "T.MC.A", encode(notice),
                                   pika.BasicProperties(message_id="notice:large",
                                                        content_type="application/json",
                                                        type="desk.notice"))
        assert desk.inbox().drain(got.append, timeout_s=0.3) == 1
    assert [len(r.message.documents) for r in got] == [2000]
    assert live.depth(t.desk_queue("T.MC.A")) == live.depth(t.dead_queue("desk")) == 0


def test_a_channel_rabbitmq_closes_under_the_inbox_is_subscribed_again(
        live: Live, caplog: pytest.LogCaptureFixture) -> None:
    # RabbitMQ closes a channel holding a delivery past its consumer_timeout (a handler
    # asking for retries for half an hour) with 406 PRECONDITION_FAILED; the drain raised
    # py-amqp's PreconditionFailed. An ack of a tag the channel never delivered gets the
    # same closing from the server here, at once
    t = live.topology

    def then(inbox: Inbox, seen: list[Received]) -> None:
        if len(seen) == 1:
            (channel,) = [c for n, c in inbox.connection.connection.channels.items() if n]
            channel.basic_ack(999_999)  # RabbitMQ: unknown delivery tag, channel closed

    with caplog.at_level(logging.WARNING, logger="adapters.client"):
        seen, handled = _drain_desk_notices(live, 2, then)
    got = [(r.message_id, r.redelivered) for r in seen]
    # what the closed channel held comes again (notice:1 too, if it was in hand before the
    # close was read): a handler drops repeats by message id, as after a lost connection
    assert got[0] == ("notice:0", False) and ("notice:0", True) in got, got
    assert {m for m, _ in got} == {"notice:0", "notice:1"} and len(got) <= 4, got
    assert handled == len(got)  # acks sent on the closed channel are counted, not taken
    said = [m for r in caplog.records if "closed the inbox's channel" in (m := r.getMessage())]
    assert len(said) == 1 and said[0].startswith(
        "RabbitMQ closed the inbox's channel (406 PRECONDITION_FAILED - unknown delivery "
        "tag"), said
    assert live.depth(t.desk_queue("T.MC.A")) == 0 and live.depth(t.dead_queue("desk")) == 0
