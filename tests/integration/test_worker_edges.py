"""The consumer runtime when RabbitMQ or a sender does something unusual (found by a
review): a connection or channel lost as soon as it opens backs off, a batch cut short
by refusals is not counted full, a triage copy's long AMQP properties are shortened;
through the real RabbitMQ and ledger."""

from __future__ import annotations

import logging
import re
import time
import urllib.parse
from typing import Any

import pika
import pytest

from broker.amqp import REASON_HEADER, amqp_url
from broker.amqp_worker import QueueWorker
from broker.envelope import short_text
from broker.health import Probes
from broker.ledger import Ledger
from broker.messages import encode
from broker.rules.catalog import Catalog
from broker.service import declare_topology
from broker.tables import OUTBOX_TYPE_MAX
from broker.topology import INTAKE_KEY, Topology
from tests.conftest import queue_depth, wait_for
from tests.helpers import Amqp, dossier, length_cap, management_api

pytestmark = pytest.mark.integration


def _gather(into: list[Any], more: list[Any], n: int) -> bool:
    into += more
    return len(into) >= n


def _delays(caplog: pytest.LogCaptureFixture, pattern: str) -> list[float]:
    return [float(m.group(1)) for r in caplog.records
            if (m := re.search(pattern, r.getMessage()))]


def test_a_valid_dossier_with_long_type_and_correlation_id_is_triaged_with_them_shortened(
        declared: Topology, ledger: Ledger, start_broker: Any, amqp: Amqp) -> None:
    # any desk may set these AMQP properties as it likes (255 characters); the triage copy
    # is kept in the outbox, whose columns hold 32 and 96: PostgreSQL refused the row, and
    # the dossier was dead-lettered as internal_error, its desk told nothing
    start_broker()
    d = dossier(procedure_code="9.999999")  # valid, and no procedure of the catalog
    sent_type = "casebroker.dossier.submitted/v1+desk-extension"
    amqp.ch.basic_publish(declared.intake_exchange, INTAKE_KEY, encode(d), pika.BasicProperties(
        content_type="application/json", delivery_mode=2, message_id=f"submit:{d.submission_id}",
        type=sent_type, correlation_id="HS-" + "7" * 120),
        mandatory=True)
    got: list[tuple[Any, bytes]] = []
    wait_for(lambda: _gather(got, amqp.get_all(declared.triage_queue), 1),
             what="the triage copy")
    (props, body), = got
    assert props.headers[REASON_HEADER] == "unknown_procedure" and body == encode(d)
    assert props.message_id == f"submit:{d.submission_id}"
    # as a dead letter's: the start and a digest of the whole, or, as here, a digest alone
    assert props.type == short_text(sent_type, OUTBOX_TYPE_MAX) and len(props.type) == 32
    assert len(props.correlation_id) == 96 and props.correlation_id.startswith("HS-777")
    held = wait_for(lambda: amqp.json_all(declared.desk_queue("T.MC.B")), what="held notice")
    assert [(n["notice"], n["submission_id"]) for n in held] == [("held", str(d.submission_id))]
    assert ledger.count_inbox_outcomes() == {"triaged:unknown_procedure": 1}
    assert queue_depth(declared.dead_queue("intake")) == 0


@pytest.mark.parametrize("ledger", ["sqlite"], indirect=True)  # the transport's doing
def test_a_connection_lost_each_time_right_after_it_opens_is_retried_with_growing_pauses(
        declared: Topology, ledger: Ledger, start_broker: Any, amqp: Amqp,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # a fault in the I/O loop that the redelivered dossier meets again on each connection:
    # each is given up and made again, so each gives back every unacked delivery a step
    # nearer its delivery limit. It was made again every 0.5 s, without end: only one that
    # worked for a while starts the backoff afresh
    def send_fails(self: QueueWorker, out: Any, entry: Any) -> None:
        raise RuntimeError("a bug of casebroker's own")

    monkeypatch.setattr(QueueWorker, "_send", send_fails)
    caplog.set_level(logging.INFO, logger="broker.amqp")
    running = start_broker(reconnect_max_s=4.0)
    amqp.submit(declared, dossier())
    pattern = r"connection to RabbitMQ lost; connecting to \S+ in ([\d.]+)s"
    wait_for(lambda: len(_delays(caplog, pattern)) >= 3, what="three reconnects")
    assert _delays(caplog, pattern)[:3] == [0.5, 1.0, 2.0]
    assert running.thread.is_alive()


@pytest.mark.parametrize("ledger", ["sqlite"], indirect=True)  # the worker's doing
def test_a_channel_closed_each_time_right_after_it_opens_is_reopened_with_growing_pauses(
        declared: Topology, mini_catalog: Catalog, ledger: Ledger, start_broker: Any,
        amqp: Amqp, caplog: pytest.LogCaptureFixture) -> None:
    # a publish to an exchange that is gone closes the channel (404); every reopen
    # redelivered the dossier and closed it again, once a second without end, each time
    # giving back the whole prefetch window a step nearer its delivery limit
    caplog.set_level(logging.INFO, logger="broker.amqp")
    running = start_broker(reconnect_max_s=4.0)
    first, second = dossier(), dossier()
    amqp.submit(declared, first)
    wait_for(lambda: queue_depth(declared.agency_queue("T.UBND.A")) == 1, what="first routed")
    amqp.ch.exchange_delete(declared.agency_exchange)
    amqp.submit(declared, second)
    pattern = (rf"channel for {re.escape(declared.intake_queue)} closed .*NOT_FOUND.*"
               r"reopening in (\d+)s")
    wait_for(lambda: len(_delays(caplog, pattern)) >= 3, what="three reopens")
    assert _delays(caplog, pattern)[:3] == [1.0, 2.0, 4.0]
    # and the window is not handed over again while the exchange is gone: only the first
    # close had the dossier in hand; the channels after it looked for the exchange first
    held = [int(m.group(1)) for r in caplog.records if (m := re.search(
        rf"channel for {re.escape(declared.intake_queue)} closed .*; its (\d+) unacked "
        r"deliveries go back", r.getMessage()))]
    assert held[0] >= 1 and held[1:3] == [0, 0], held
    gone = [r.getMessage() for r in caplog.records if "is gone" in r.getMessage()]
    assert gone == [f"exchange {declared.agency_exchange} is gone (deleted?): "
                    f"{declared.intake_queue} is not consumed until it is back "
                    "(`casebroker topology declare`)"]
    assert queue_depth(declared.intake_queue) == 1  # waiting, not redelivered meanwhile
    ready, said = Probes(running.broker).ready()
    assert not ready and (f"{declared.intake_queue}: not consuming until exchange "
                          f"{declared.agency_exchange} is back (`casebroker topology "
                          "declare`)") in said["problems"]
    # the exchange back, the dossier held back goes out, once
    declare_topology(amqp_url(), declared, mini_catalog)
    ids: list[str] = []
    wait_for(lambda: _gather(ids, [p.message_id for p, _ in amqp.get_all(
        declared.agency_queue("T.UBND.A"))], 2), what="both assignments")
    wait_for(lambda: queue_depth(declared.intake_queue) == 0, what="intake drained")
    ids += [p.message_id for p, _ in amqp.get_all(declared.agency_queue("T.UBND.A"))]
    assert len(ids) == len(set(ids)) == 2
    assert ledger.count_by_state() == {2: 2}


@pytest.mark.parametrize("ledger", ["sqlite"], indirect=True)  # the worker's doing
def test_batches_cut_short_while_rabbitmq_refuses_are_not_counted_as_full(
        declared: Topology, ledger: Ledger, start_broker: Any, amqp: Amqp,
        caplog: pytest.LogCaptureFixture) -> None:
    # casebroker_full_batches_total (alert CasebrokerAtCapacity: "the router works at its
    # capacity") counts a batch that reached the batch size with more waiting behind it.
    # While RabbitMQ refuses a queue, each refused delivery is handed over alone: those
    # batches were counted as full, and a refusal read as a router at its capacity
    amqp.publish(declared.desk_exchange, "T.MC.B", b"{}", message_id="filler")
    with length_cap(declared.desk_queue("T.MC.B"), f"{declared.prefix}-full"):
        caplog.set_level(logging.ERROR, logger="broker.amqp")
        registry = start_broker(batch_size=50, retry_initial_s=0.5,
                                retry_max_s=1.0).broker.metrics.registry

        def value(name: str, labels: dict[str, str]) -> float:
            return registry.get_sample_value(name, labels) or 0.0

        sent = 0

        def refused() -> bool:  # a quorum queue over its cap may take the first ones
            nonlocal sent
            if sent < 10:
                amqp.submit(declared, dossier(desk_id="T.MC.B"))
                sent += 1
                time.sleep(0.3)
            return any("was refused by RabbitMQ" in r.getMessage() for r in caplog.records)

        wait_for(refused, what="a refusal")
        for _ in range(5):  # held back while the worker pauses: more than one waits
            amqp.submit(declared, dossier(desk_id="T.MC.B"))
        wait_for(lambda: value("casebroker_retries_total",
                               {"source": "intake", "kind": "refused"}) >= 4,
                 what="refused deliveries redone one at a time")
        batches = value("casebroker_batch_size_count", {"source": "intake"})
        assert batches >= 4
        # no batch came near the batch size (50): a full count could only be a false one
        # (one reading of the histogram: batches go on being made while RabbitMQ refuses)
        (sizes,) = [m for m in registry.collect() if m.name == "casebroker_batch_size"]
        buckets = {s.labels["le"]: s.value for s in sizes.samples
                   if s.name.endswith("_bucket") and s.labels["source"] == "intake"}
        assert buckets["25.0"] == buckets["+Inf"] >= batches
        assert value("casebroker_full_batches_total", {"source": "intake"}) == 0


@pytest.mark.parametrize("ledger", ["sqlite"], indirect=True)  # the transport's doing
def test_a_connection_rabbitmq_closes_is_logged_with_rabbitmqs_reason(
        declared: Topology, ledger: Ledger, start_broker: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    # a node stopping, an operator closing it, a missed heartbeat: the line said only
    # "connection to RabbitMQ lost" of each (found by a review). The connection carries
    # its process's name, for the operator who must find it in the management UI
    api = management_api()
    caplog.set_level(logging.INFO, logger="broker.amqp")
    running = start_broker()
    name = running.broker.service.connection_name
    assert name.startswith("casebroker run (pid ")

    def ours() -> list[str]:
        return [c["name"] for c in api._call("GET", "/api/connections?columns=name,"
                                                    "client_properties") or []
                if (c.get("client_properties") or {}).get("connection_name") == name]

    (conn,) = wait_for(ours, what="the router's connection in the management API")
    api._call("DELETE", f"/api/connections/{urllib.parse.quote(conn, safe='')}")
    lost = wait_for(lambda: [r.getMessage() for r in caplog.records
                             if r.getMessage().startswith("connection to RabbitMQ lost")],
                    what="the line saying the connection was lost")
    assert "CONNECTION_FORCED" in lost[0], lost
    wait_for(lambda: (again := ours()) and again != [conn], what="the router connected again")
