"""Edges of the intake router found by a review: the receipt's time zone, a chain's share
of calendar days, the words of a missing intake unit. The router's handler on a real
ledger (SQLite and PostgreSQL), and the whole broker on the real RabbitMQ where what a
desk sees is the point."""
# ruff: noqa: E501 - catalog YAML in flow style reads best one entry per line

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from broker.amqp import DETAIL_HEADER, REASON_HEADER
from broker.consumers.router import Router
from broker.envelope import Outbound
from broker.ledger import Ledger
from broker.messages import encode
from broker.rules.catalog import load_catalog, parse_catalog
from broker.rules.engine import Engine
from broker.topology import Topology
from tests.conftest import MINI_CATALOG, wait_for
from tests.helpers import Amqp, dossier
from tests.helpers import intake_delivery as _delivery

pytestmark = pytest.mark.integration

ICT = ZoneInfo("Asia/Ho_Chi_Minh")
#: 2026-11-25 09:00 in Vietnam: tests.helpers.dossier's submitted_at (sent in UTC)
WED_9AM = datetime(2026, 11, 25, 9, 0, tzinfo=ICT)


def _router(ledger: Ledger, catalog: bytes | None = None) -> Router:
    engine = Engine(load_catalog(MINI_CATALOG) if catalog is None
                    else parse_catalog(catalog, "mini.yaml"))
    # the broker's clock is in UTC (messages.utc_now), whatever the catalog's zone
    return Router(lambda: engine, ledger, Topology("t"), clock=lambda: WED_9AM.astimezone(UTC))


def _bodies(out: list[Outbound]) -> dict[str, dict[str, Any]]:
    """Each message published, by its message id."""
    return {o.message_id: json.loads(o.body) for o in out}


def test_a_receipt_gives_the_receipt_time_in_the_catalogs_zone_like_every_later_notice(
        declared: Topology, ledger: Ledger, start_broker: Any, amqp: Amqp) -> None:
    # a desk that stamps submitted_at in UTC got a receipt saying "received 02:00" beside
    # "due 17:00+07:00", and its dossier's later notices said received 09:00+07:00
    start_broker()
    amqp.submit(declared, dossier("1.001193", desk_id="T.MC.B", applicant_ward="10001"))
    (receipt,) = wait_for(lambda: amqp.json_all(declared.desk_queue("T.MC.B")), what="receipt")
    (assigned,) = wait_for(lambda: amqp.json_all(declared.agency_queue("T.UBND.A")),
                           what="assignment")
    assert receipt["notice"] == "receipt"
    assert receipt["received_at"] == "2026-11-25T09:00:00+07:00"
    assert receipt["due_at"] == "2026-11-26T09:00:00+07:00"
    assert assigned["received_at"] == receipt["received_at"]


def test_a_desk_clock_ahead_is_received_now_in_the_catalogs_zone(ledger: Ledger) -> None:
    router = _router(ledger)
    ahead = dossier(submitted_at="2026-11-26T02:00:00+00:00")  # the desk's clock: a day on
    out = router.handle([_delivery(1, encode(ahead), "submit:1")])
    sent = _bodies(out)
    (code,) = {b["dossier_code"] for b in sent.values()}
    assert sent[f"{code}:receipt"]["received_at"] == "2026-11-25T09:00:00+07:00"
    assert sent[f"{code}:assigned:1"]["received_at"] == "2026-11-25T09:00:00+07:00"


_CAL_CHAIN = ('  - {code: "1.000004", name: "Liên thông theo ngày", processing: {amount: 5, unit: calendar_days}, '
              "competence: {chain: [{by_area: applicant}, {agency: T.CA}]}, boundary_free: true}")


def test_the_first_agency_of_a_calendar_day_chain_gets_its_whole_share(ledger: Ledger) -> None:
    # 5 calendar days over two agencies: 2.5 days each. The share was rounded half to
    # even, so the commune was told its step was due Friday 09:00, half a day short
    text = MINI_CATALOG.read_text().replace("\nrules:\n", f"\n{_CAL_CHAIN}\nrules:\n")
    router = _router(ledger, text.encode())
    d = dossier("1.000004", desk_id="T.MC.A", applicant_ward="10001")
    out = router.handle([_delivery(1, encode(d), "submit:1")])
    sent = _bodies(out)
    (code,) = {b["dossier_code"] for b in sent.values()}
    assigned = sent[f"{code}:assigned:1"]
    assert (assigned["agency_id"], assigned["step"], assigned["steps"]) == ("T.UBND.A", 1, 2)
    assert assigned["step_due_at"] == "2026-11-27T21:00:00+07:00"
    assert assigned["due_at"] == "2026-11-30T09:00:00+07:00"
    row = ledger.dossier(code)
    assert row is not None
    assert row["step_due_at"] == datetime(2026, 11, 27, 21, 0, tzinfo=ICT)


def test_a_dossier_held_for_want_of_an_intake_unit_is_told_what_is_missing(
        ledger: Ledger) -> None:
    # at the provincial centre (two units), with no applicant ward: the desk and the
    # operator were told the centre "has no unit of its own" and the ward is "unknown"
    router = _router(ledger)
    d = dossier("2.000815", desk_id="T.CENTRE", applicant_ward=None)
    out = router.handle([_delivery(1, encode(d), "submit:1")])
    assert [o.routing_key for o in out] == ["triage", "T.CENTRE"]
    detail = ("procedure 2.000815 is decided by the intake desk's unit: desk T.CENTRE has "
              "several (T.SO.TP, T.SO.NNMT), no commune committee serves its area 10, and "
              "the dossier has no applicant.ward_code")
    assert out[0].headers is not None
    assert out[0].headers[REASON_HEADER] == "no_intake_unit"
    assert out[0].headers[DETAIL_HEADER] == detail
    held = json.loads(out[1].body)
    assert held["notice"] == "held" and held["reason"] == f"no_intake_unit: {detail}"
    assert ledger.count_inbox_outcomes() == {"triaged:no_intake_unit": 1}
