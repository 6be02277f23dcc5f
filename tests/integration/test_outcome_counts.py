"""Outcome counters move when a batch commits, once per delivery, never for a rolled-back
try (the router retries a batch after a database error; counting before the commit
counted the retried dossiers twice)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from pika.spec import BasicProperties
from prometheus_client import CollectorRegistry
from sqlalchemy import text

from broker.amqp import Delivery
from broker.consumers.router import Router
from broker.errors import TransientError
from broker.ledger import Ledger
from broker.messages import CONTENT_TYPE
from broker.rules.catalog import load_catalog
from broker.rules.engine import Engine
from broker.topology import Topology
from monitoring.metrics import Metrics
from tests.conftest import MINI_CATALOG


def _submission(procedure: str, desk: str, channel: str, ward: str) -> bytes:
    return json.dumps({
        "schema": "casebroker.dossier.submitted/v1", "submission_id": str(uuid.uuid4()),
        "procedure_code": procedure, "desk_id": desk, "channel": channel,
        "submitted_at": "2026-03-02T09:00:00+07:00",
        "applicant": {"kind": "citizen", "name": "Nguyễn Văn An",
                      "id_number": "066090001234", "ward_code": ward},
        "subject": {"ward_code": ward}, "documents": [], "attributes": {}}).encode()


def _routed(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value(
        "casebroker_intake_total", {"outcome": "routed", "reason": ""}) or 0.0


def test_counts_follow_the_commit(tmp_path: Path) -> None:
    catalog = load_catalog(MINI_CATALOG)
    engine = Engine(catalog)
    spec = catalog.spec
    proc = next(p for p in spec.procedures if p.boundary_free and p.boundary_free_from is None)
    desk = spec.desks[0]
    ward = sorted(a for ag in spec.agencies for a in ag.serves if len(a) == 5)[0]
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    metrics = Metrics(CollectorRegistry())
    router = Router(lambda: engine, ledger, Topology("t"), metrics=metrics)
    deliveries = [
        Delivery(i, _submission(proc.code, desk.id, desk.channel, ward),
                 BasicProperties(content_type=CONTENT_TYPE, message_id=f"submit:{i}",
                                 type="dossier.submitted"), False, "submit")
        for i in range(1, 6)]

    with ledger.engine.begin() as conn:  # the database refuses the writes: a transient fault
        conn.execute(text("ALTER TABLE outbox RENAME TO outbox_away"))
    with pytest.raises(TransientError):
        router.handle(deliveries)
    assert _routed(metrics) == 0

    with ledger.engine.begin() as conn:
        conn.execute(text("ALTER TABLE outbox_away RENAME TO outbox"))
    out = router.handle(deliveries)
    assert len(out) == 10, out[0].headers  # an assignment and a receipt each
    assert _routed(metrics) == 5
    ledger.dispose()
