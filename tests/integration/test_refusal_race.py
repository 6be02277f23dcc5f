"""An operator's refusal at intake and a router opening a dossier for the same submission
(a corrected copy) at the same moment: one of them wins, the other sees it, on SQLite and
PostgreSQL. Without the submission gate both checks passed and the desk got a receipt
and a refusal."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from broker.consumers.router import Router
from broker.ledger import Ledger, RawJSON, SubmissionOpened, refusals
from broker.messages import DossierSubmitted, encode
from broker.rules.catalog import load_catalog
from broker.rules.engine import Engine
from broker.topology import Topology
from tests.conftest import MINI_CATALOG, _pg_schema_url, pg_schema
from tests.helpers import (
    assert_waits,
    dossier,
    hold_router_past_duplicate_check,
    intake_delivery,
)

pytestmark = pytest.mark.integration

#: long enough for a thread that is not held back to finish its step on a slow machine
HELD_S = 1.0


def _router(ledger: Ledger) -> Router:
    engine = Engine(load_catalog(MINI_CATALOG))
    return Router(lambda: engine, ledger, Topology("t"))


def _refusal(d: DossierSubmitted) -> dict[str, Any]:
    return {"submission_id": str(d.submission_id), "message_id": "submit:first",
            "desk_id": d.desk_id, "procedure_code": d.procedure_code,
            "reason": "not taken here", "refused_by": "operator-1",
            "refused_at": datetime(2026, 11, 25, 3, 0, tzinfo=UTC),
            "submission": RawJSON(encode(d).decode()), "notice_id": "submit:first:refused",
            "notice": b'{"notice": "refused"}'}


def test_a_refusal_waits_for_a_router_batch_past_its_duplicate_check_then_finds_the_dossier(
        ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    d = dossier(desk_id="T.MC.A")
    # the router's batch is held between its duplicate check and its first write
    checked, go = hold_router_past_duplicate_check(monkeypatch)
    published: list[Any] = []
    routing = threading.Thread(target=lambda: published.extend(_router(ledger).handle(
        [intake_delivery(1, encode(d), "submit:corrected")])))
    routing.start()
    assert checked.wait(30)

    outcome: list[Any] = []

    def refuse() -> None:
        try:
            outcome.append(ledger.refuse(_refusal(d)))
        except SubmissionOpened as e:
            outcome.append(e)

    assert_waits(threading.Thread(target=refuse), go.set, routing,
                 lambda: f"the refusal did not wait for the router: {outcome}")
    code = json.loads(published[-1].body)["dossier_code"]
    assert [type(o) for o in outcome] == [SubmissionOpened]
    assert outcome[0].code == code
    assert ledger.refusal(str(d.submission_id)) is None
    assert ledger.count_by_state() == {2: 1}


def test_a_router_batch_waits_for_a_refusal_being_committed_then_answers_with_it(
        ledger: Ledger) -> None:
    d = dossier(desk_id="T.MC.A")
    refusal = _refusal(d)
    published: list[Any] = []
    routing = threading.Thread(target=lambda: published.extend(_router(ledger).handle(
        [intake_delivery(1, encode(d), "submit:corrected")])))
    with ledger._refusing() as conn:  # a refusal between its check and its commit
        conn.execute(refusals.insert().values(refusal))
        routing.start()
        routing.join(HELD_S)
        assert routing.is_alive(), f"the router did not wait for the refusal: {published}"
    routing.join(30)
    assert not routing.is_alive()
    assert [(o.message_id, o.body) for o in published] == [
        (refusal["notice_id"], refusal["notice"])]
    assert ledger.count_by_state() == {}


@pytest.fixture
def two_schemas() -> Iterator[tuple[Ledger, Ledger]]:
    """Two PostgreSQL ledgers in schemas of one database (two provinces', say)."""
    with pg_schema() as (first, _), pg_schema() as (second, _):
        ledgers = [Ledger(_pg_schema_url(schema)) for schema in (first, second)]
        try:
            yield ledgers[0], ledgers[1]
        finally:
            for led in ledgers:
                led.dispose()


def test_the_gate_of_one_schemas_ledger_holds_up_nobody_in_another(
        two_schemas: tuple[Ledger, Ledger], monkeypatch: pytest.MonkeyPatch) -> None:
    # advisory locks are the database's: under one fixed key, a router batch of one
    # ledger held every refusal of the other ledgers in the database until it committed
    mine, other = two_schemas
    d = dossier(desk_id="T.MC.A")
    checked, go = hold_router_past_duplicate_check(monkeypatch)
    routing = threading.Thread(target=lambda: _router(mine).handle(
        [intake_delivery(1, encode(d), "submit:corrected")]))
    routing.start()
    try:
        assert checked.wait(30)
        refusing = threading.Thread(target=lambda: other.refuse(_refusal(d)))
        refusing.start()
        refusing.join(10 * HELD_S)
        assert not refusing.is_alive(), "the other schema's refusal waited for this one's gate"
    finally:
        go.set()
        routing.join(30)
    assert other.refusal(str(d.submission_id)) is not None
    assert mine.count_by_state() == {2: 1} and mine.refusal(str(d.submission_id)) is None
