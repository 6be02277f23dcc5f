"""Helpers for tests: messages and deliveries, plain pika to publish raw bodies and fetch
what queues hold, the CLI under a test prefix, and holding a thread at a step of a race."""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pika
import pika.data
import pytest
from pika.spec import BasicProperties

from broker.amqp import Delivery, amqp_url
from broker.cli import main
from broker.ledger import Batch, RawJSON
from broker.messages import CONTENT_TYPE, DossierSubmitted, encode, kind_of
from broker.security import Management, ManagementError, management_url
from broker.topology import DELIVERY_LIMIT, INTAKE_KEY, STATUS_KEY, Topology
from monitoring.metrics import Metrics


def dossier(procedure_code: str = "1.001193", desk_id: str = "T.MC.B",
            applicant_ward: str | None = "10001", **extra: Any) -> DossierSubmitted:
    """A valid dossier.submitted for the mini catalog."""
    data: dict[str, Any] = {
        "schema": "casebroker.dossier.submitted/v1", "submission_id": str(uuid.uuid4()),
        "procedure_code": procedure_code, "desk_id": desk_id, "channel": "in_person",
        "submitted_at": datetime(2026, 11, 25, 2, 0, tzinfo=UTC).isoformat(),
        "applicant": {"kind": "citizen", "name": "Nguyễn Văn An", "id_number": "066090001234",
                      "phone": "0905000000", "ward_code": applicant_ward},
        "documents": [{"name": "to-khai.pdf", "uri": "s3://docs/1", "sha256": "a" * 64,
                       "size": 1000, "media_type": "application/pdf"}],
    }
    data.update(extra)
    return DossierSubmitted.model_validate(data)


def status_delivery(tag: int, message: Any) -> Delivery:
    """An update or desk event from the status queue as the status router's handler gets
    it, under the message id ``m<tag>``."""
    return Delivery(tag, encode(message), BasicProperties(
        content_type=CONTENT_TYPE, message_id=f"m{tag}", type=kind_of(message)), True, "status")


def intake_delivery(tag: int, body: bytes, message_id: str, **headers: object) -> Delivery:
    """A delivery from the intake queue as the router's handler gets it (redelivered)."""
    return Delivery(tag, body, BasicProperties(
        content_type=CONTENT_TYPE, message_id=message_id, type="dossier.submitted",
        headers=headers or None), True, "dossier")


class Amqp:
    """A blocking pika connection for a test."""

    def __init__(self) -> None:
        self.conn = pika.BlockingConnection(pika.URLParameters(amqp_url()))
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()

    def close(self) -> None:
        self.conn.close()

    def publish(self, exchange: str, key: str, body: bytes, *, message_id: str | None = None,
                type: str | None = None, content_type: str | None = "application/json",
                headers: dict[str, Any] | None = None) -> None:
        self.ch.basic_publish(exchange, key, body, pika.BasicProperties(
            content_type=content_type, delivery_mode=2, message_id=message_id, type=type,
            headers=headers), mandatory=True)

    def submit(self, t: Topology, d: DossierSubmitted, message_id: str | None = None) -> None:
        self.publish(t.intake_exchange, INTAKE_KEY, encode(d),
                     message_id=message_id or f"submit:{d.submission_id}",
                     type="dossier.submitted")

    def status(self, t: Topology, message: Any) -> None:
        mid = str(getattr(message, "update_id", None) or message.event_id)
        self.publish(t.status_exchange, STATUS_KEY, encode(message), message_id=mid,
                     type=str(message.schema_).split("/")[0].removeprefix("casebroker."))

    def get_all(self, queue: str) -> list[tuple[Any, bytes]]:
        """Take (and ack) every message now in a queue: (properties, body) pairs."""
        out = []
        while True:
            method, props, body = self.ch.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((props, body))

    def json_all(self, queue: str) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.get_all(queue)]

    def nack_until_dead_lettered(self, queue: str) -> None:
        """Take and requeue what ``queue`` holds until its delivery limit dead-letters it
        (a consumer that never manages to handle it)."""
        for _ in range(DELIVERY_LIMIT + 5):
            method, _, _ = self.ch.basic_get(queue)
            if method is None:
                return
            self.ch.basic_nack(method.delivery_tag, requeue=True)

    def delete_queues(self, *queues: str) -> None:
        """Delete queues as an operator would by mistake (what they held is gone)."""
        for queue in queues:
            self.ch.queue_delete(queue)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def held_port() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that this test holds (bound and listening) until the block
    ends: what a process wanting it finds when another already has it."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield int(held.getsockname()[1])


#: the receipt time of dossier_row's rows: Vietnam's offset and microseconds, both kept
ROW_AT = datetime(2026, 3, 2, 9, 15, 7, 123456, tzinfo=timezone(timedelta(hours=7)))


def dossier_row(code: str, **over: Any) -> dict[str, Any]:
    """A ledger row of a received dossier (for Batch.add_dossier), with ``over`` changed."""
    row = {
        "code": code, "submission_id": f"{code}-sid"[-36:], "procedure_code": "1.001193",
        "intake_desk_id": "desk.xa-ea-kar", "return_desk_id": "desk.portal", "channel": "desk",
        "state": 2, "agency_id": "ubnd.xa-ea-kar", "step": 0,
        "steps": [{"agency_id": "ubnd.xa-ea-kar", "amount": 5.0, "unit": "working_days"}],
        "rule_id": "procedure:1.001193", "catalog_hash": "0123456789abcdef0123456789abcdef",
        "boundary_free": True, "received_at": ROW_AT, "due_at": ROW_AT + timedelta(days=7),
        "step_due_at": ROW_AT.astimezone(UTC) + timedelta(days=3), "paused_at": None,
        "finished_at": None, "satisfaction": None, "flags": {"note": "Đắk Lắk – hồ sơ"},
        "seq": 1, "submission": RawJSON('{"applicant":{"name":"Nguyễn Văn An"}}'),
        "updated_at": ROW_AT,
    }
    return {**row, **over}


def hold_router_past_duplicate_check(monkeypatch: pytest.MonkeyPatch
                                     ) -> tuple[threading.Event, threading.Event]:
    """Hold every router batch between its duplicate check (and the submission gate it
    takes) and its first write: ``(checked, go)``, set when a batch got there, and to be
    set to let it go on."""
    checked, go = threading.Event(), threading.Event()
    allocate = Batch.allocate_codes

    def allocate_when_told(self: Batch, counts: dict[tuple[str, str], int]
                           ) -> dict[tuple[str, str], int]:
        checked.set()
        assert go.wait(30)
        return allocate(self, counts)

    monkeypatch.setattr(Batch, "allocate_codes", allocate_when_told)
    return checked, go


def assert_waits(waiting: threading.Thread, release: Callable[[], None],
                 holding: threading.Thread, why: Callable[[], str],
                 held_s: float = 1.0) -> None:
    """Start ``waiting`` while ``holding`` holds what it needs: it must still be running
    after ``held_s`` (long enough for a thread that is not held back to finish its step on
    a slow machine; ``why()`` says what it did instead); then ``release`` the holder, and
    both must end."""
    waiting.start()
    waiting.join(held_s)
    assert waiting.is_alive(), why()
    release()
    for thread in (holding, waiting):
        thread.join(30)
    assert not holding.is_alive() and not waiting.is_alive()


def cli(capsys: pytest.CaptureFixture[str], t: Topology, *args: str) -> tuple[int, str, str]:
    """Run ``casebroker <args> --prefix <t's>``: (exit status, stdout, stderr)."""
    capsys.readouterr()
    code = main([*args, "--prefix", t.prefix])
    out, err = capsys.readouterr()
    return code, out, err


def management_api() -> Management:
    """The management API as guest; the test is skipped where the plugin is not reachable."""
    api = Management()
    try:
        api.user_exists("guest")
    except ManagementError as e:
        pytest.skip(f"RabbitMQ management plugin not reachable: {e}")
    return api


@dataclass
class LengthCap:
    """A length-cap policy on a queue (:func:`length_cap`)."""

    api: Management
    path: str
    lifted: bool = False

    def lift(self) -> None:
        """Delete the policy (once)."""
        if not self.lifted:
            self.api._call("DELETE", self.path)
            self.lifted = True


@contextmanager
def length_cap(queue: str, name: str) -> Iterator[LengthCap]:
    """``queue`` capped at one message by a policy ``name``, in effect on entering: with
    the topology's reject-publish overflow RabbitMQ nacks publishes to it once it holds
    one, as it does when a quorum queue has no leader. Lifted on leaving, if not before."""
    from tests.conftest import wait_for

    cap = LengthCap(Management.from_url(management_url()), f"/api/policies/%2F/{name}")
    cap.api._call("PUT", cap.path, {"pattern": f"^{re.escape(queue)}$", "apply-to": "queues",
                                    "definition": {"max-length": 1}, "priority": 10})
    try:
        wait_for(lambda: cap.api._call("GET", f"/api/queues/%2F/{queue}").get(
            "effective_policy_definition"), what="the cap in effect")
        yield cap
    finally:
        cap.lift()


class BrokerLog:
    """What RabbitMQ's own log (on this machine) gains after it is opened."""

    def __init__(self, path: Path) -> None:
        self.path, self.start = path, path.stat().st_size

    def gained(self) -> str:
        with self.path.open("rb") as f:
            f.seek(self.start)
            return f.read().decode(errors="replace")

    def mark(self, prefix: str) -> None:
        """Have RabbitMQ log a channel error naming a queue of ``prefix`` that is not
        there, and wait until it is in the log: whatever it logged before is there too."""
        from broker.ops.queues import queue_state
        from tests.conftest import wait_for

        marker = f"{prefix}.log-marker-{uuid.uuid4().hex}"
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url()))
        try:
            assert queue_state(conn.channel(), marker) is None  # RabbitMQ's 404, logged
        finally:
            conn.close()
        wait_for(lambda: marker in self.gained(), what="RabbitMQ's log to name the marker")


def broker_log() -> BrokerLog:
    """RabbitMQ's log, read from its end on; the test is skipped where that log is not on
    this machine (RabbitMQ in a container)."""
    logs = [p for p in Path("/var/log/rabbitmq").glob("rabbit@*.log")
            if not p.name.endswith("_upgrade.log")]
    if len(logs) != 1 or not os.access(logs[0], os.R_OK):
        pytest.skip("RabbitMQ's own log is not readable on this machine")
    return BrokerLog(logs[0])


def probe(port: int, path: str) -> tuple[int, dict[str, Any]]:
    """GET a health probe of a router's metrics server: its status and JSON answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def said(status: str, **fields: Any) -> dict[str, Any]:
    """``fields`` with what a status must say (DossierStatus): a reason for a refusal or
    a stop, the documents to bring for a supplement request, where the test gave none."""
    if status in ("rejected", "stopped") and not fields.get("reason"):
        return {**fields, "reason": "không đủ điều kiện"}
    if status == "supplement_requested" and not (fields.get("reason")
                                                 or fields.get("requested_documents")):
        return {**fields, "requested_documents": ["Bản sao CCCD"]}
    return fields


def metric_names() -> set[str]:
    """Every series name a router exports, or may once a label is used."""
    names = set()
    for metric in Metrics().registry.collect():
        for sample in metric.samples:
            names.add(sample.name)
        names.add(metric.name)
        if metric.type == "counter":  # labelled counters have no samples until used
            names.add(f"{metric.name}_total")
        if metric.type == "histogram":
            names |= {f"{metric.name}_{s}" for s in ("bucket", "sum", "count")}
    return names


class _FarDate:
    """A header timestamp of 2**63 seconds: past the year 9999, as a Java client's
    ``Long.MAX_VALUE`` date; pika cannot send one."""


#: put in a header within :func:`as_other_clients_send`
FAR_DATE = _FarDate()


@contextmanager
def as_other_clients_send(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Within the block, pika's header encoder also writes what other clients send and
    pika never does: a float as an AMQP double, :data:`FAR_DATE` as a timestamp."""
    encode_value = pika.data.encode_value

    def encode(pieces: list[bytes], value: Any) -> int:
        if value is FAR_DATE:
            pieces.append(struct.pack(">cQ", b"T", 2**63))
            return 9
        if isinstance(value, float):
            pieces.append(struct.pack(">cd", b"d", value))
            return 9
        return encode_value(pieces, value)  # type: ignore[no-any-return]

    with monkeypatch.context() as patched:
        patched.setattr(pika.data, "encode_value", encode)
        yield


def mini_handlers(ledger: Any, clock: Callable[[], datetime]) -> tuple[Any, Any]:
    """A router and a status router on the mini catalog, the ledger and the clock given,
    called directly (no RabbitMQ): what a test of their ledger effects needs."""
    from broker.consumers.router import Router
    from broker.consumers.status import StatusRouter
    from broker.rules.catalog import load_catalog
    from broker.rules.engine import Engine

    engine = Engine(load_catalog(Path(__file__).parent / "fixtures" / "mini.yaml"))
    return (Router(lambda: engine, ledger, Topology("t"), clock=clock),
            StatusRouter(lambda: engine, ledger, Topology("t"), clock=clock))
