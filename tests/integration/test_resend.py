"""`dossier resend`: the assignments an agency queue deleted by hand took with it."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from broker.amqp import amqp_url
from broker.cli import main
from broker.consumers.deadlines import WatchSettings
from broker.ledger import Ledger
from broker.messages import DossierReturned, DossierStatus
from broker.service import declare_topology
from broker.topology import Topology
from tests.conftest import MINI_CATALOG, queue_depth, wait_for
from tests.helpers import Amqp, dossier
from tests.integration.conftest import FakeClock

pytestmark = pytest.mark.integration


def resend(capsys: pytest.CaptureFixture[str], ledger: Ledger, *args: str
           ) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["dossier", "resend", "--agency", "T.UBND.A", "--db-url", ledger.url, *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_an_agency_queue_deleted_with_assignments_gets_them_again(
        declared: Topology, ledger: Ledger, start_broker: Any, amqp: Amqp,
        mini_catalog: Any, capsys: pytest.CaptureFixture[str]) -> None:
    t, queue = declared, declared.agency_queue("T.UBND.A")
    start_broker()
    for _ in range(3):
        amqp.submit(t, dossier())
    amqp.submit(t, dossier("1.004227"))  # another agency's (T.SO.TP)
    wait_for(lambda: queue_depth(queue) == 3, what="three assignments")
    codes = sorted(a["dossier_code"] for a in amqp.json_all(queue))
    amqp.status(t, DossierStatus(update_id=uuid.uuid4(), dossier_code=codes[0],
                                 agency_id="T.UBND.A", status="resolved",
                                 sent_at=datetime.now(UTC)))  # done: not sent again
    amqp.status(t, DossierStatus(update_id=uuid.uuid4(), dossier_code=codes[1],
                                 agency_id="T.UBND.A", status="accepted",
                                 sent_at=datetime.now(UTC)))  # still with it
    wait_for(lambda: (ledger.dossier(codes[0]) or {}).get("state") == 9, what="resolved")
    wait_for(lambda: (ledger.dossier(codes[1]) or {}).get("state") == 4, what="accepted")
    amqp.ch.queue_delete(queue)  # by hand, with whatever it held
    declare_topology(amqp_url(), t, mini_catalog)

    rc, out, err = resend(capsys, ledger, "--dry-run")
    assert rc == 0 and queue_depth(queue) == 0, err
    assert out.endswith("would send 2 assignment(s) to T.UBND.A again, under their own ids "
                        "(an agency that has one drops the copy)\n")
    rc, out, err = resend(capsys, ledger, "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert sorted(report["assignments"]) == [f"{c}:assigned:1" for c in codes[1:]]
    assert report["sent"] == 2 and report["missing"] == []
    got = amqp.get_all(queue)
    assert sorted(p.message_id for p, _ in got) == [f"{c}:assigned:1" for c in codes[1:]]
    assert all(p.type == "dossier.assigned" for p, _ in got)
    assert sorted(json.loads(b)["dossier_code"] for _, b in got) == codes[1:]
    assert queue_depth(t.agency_queue("T.SO.TP")) == 1  # the other agency's untouched

    # a mistyped agency is not told "0 sent" as if all were well (found by a review)
    capsys.readouterr()
    assert main(["dossier", "resend", "--agency", "t.ubnd.a", "--db-url", ledger.url]) == 1
    assert capsys.readouterr().err == (
        "error: no dossier in this ledger was ever with agency 't.ubnd.a' (ids are as the "
        "catalog spells them, capitals included): nothing to send\n")

    amqp.ch.queue_delete(queue)  # and not declared again: nothing can be sent
    rc, out, err = resend(capsys, ledger)
    assert rc == 1 and "no queue for it: `casebroker topology declare` first; 0 of 2 sent" \
        in err
    amqp.ch.exchange_delete(t.agency_exchange)  # no exchange at all: said so too
    rc, out, err = resend(capsys, ledger)
    assert rc == 1 and f"no exchange '{t.agency_exchange}': `casebroker topology declare` " \
        "first; 0 of 2 sent" in err
    declare_topology(amqp_url(), t, mini_catalog)


def _take(amqp: Amqp, queue: str, n: int, what: str) -> list[tuple[str, dict[str, Any]]]:
    """Exactly the next ``n`` messages of a queue: (message id, body)."""
    got: list[tuple[str, dict[str, Any]]] = []

    def enough() -> bool:
        got.extend((p.message_id, json.loads(b)) for p, b in amqp.get_all(queue))
        return len(got) >= n

    wait_for(enough, what=what)
    assert len(got) == n, got
    return got


def _status(amqp: Amqp, t: Topology, code: str, status: str) -> None:
    amqp.status(t, DossierStatus(update_id=uuid.uuid4(), dossier_code=code,
                                 agency_id="T.UBND.A", status=status,
                                 sent_at=datetime.now(UTC)))


def test_a_desk_queue_deleted_with_notices_gets_those_since_then_again(
        declared: Topology, ledger: Ledger, start_broker: Any, amqp: Amqp,
        mini_catalog: Any, clock: FakeClock, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    t, queue = declared, declared.desk_queue("T.MC.B")
    monkeypatch.setenv("CASEBROKER_PREFIX", t.prefix)
    start_broker(watch=WatchSettings(interval_s=0.05))
    submitted = [dossier(), dossier(), dossier(desk_id="T.MC.A")]  # the last: another desk's
    for d in submitted:
        amqp.submit(t, d)
    receipts = _take(amqp, queue, 2, "the receipts")  # the desk had these
    first, second = sorted(body["dossier_code"] for _, body in receipts)
    # what it had not consumed yet when its queue was deleted: a status change, the watch's
    # apologies, a refusal of its own event, a result
    clock.set("2026-11-25 10:00")
    _status(amqp, t, first, "accepted")
    lost = _take(amqp, queue, 1, "a status change")
    clock.set("2026-11-27 09:05")  # both due 09:00 the day before: overdue
    lost += sorted(_take(amqp, queue, 2, "the apologies"), key=lambda m: m[0])
    clock.set("2026-11-27 10:00")
    amqp.status(t, DossierReturned(event_id=uuid.uuid4(), dossier_code=second,
                                   desk_id="T.MC.B", returned_at=datetime.now(UTC)))
    lost += _take(amqp, queue, 1, "the refusal")
    clock.set("2026-11-27 11:00")
    _status(amqp, t, first, "resolved")
    lost += _take(amqp, queue, 1, "the result")
    # a submission held (no unit serves its ward), then refused by an operator: the
    # refusal is recorded with the submission closed at intake, not in an outbox
    clock.set("2026-11-27 11:30")
    held = dossier(applicant_ward="99999")
    amqp.submit(t, held)
    lost += _take(amqp, queue, 1, "the held notice")
    assert main(["dead-letters", "refuse", "--id", f"submit:{held.submission_id}",
                 "--reason", "không phường nào phục vụ", "--by", "operator-1",
                 "--catalog", str(MINI_CATALOG), "--db-url", ledger.url]) == 0
    lost += _take(amqp, queue, 1, "the operator's refusal")
    # a dossier the desk sent again under another message id: its receipt again, the
    # same message; the desk had it (before the moment), and it is sent once. (The
    # operator's refusal above was stamped by the real clock, not the broker's.)
    clock.now = max(clock.now, datetime.now(UTC)) + timedelta(hours=1)
    amqp.submit(t, submitted[0], message_id="desk-retry")
    (again_receipt,) = _take(amqp, queue, 1, "the receipt again")
    assert again_receipt in receipts
    assert [body["notice"] for _, body in lost] == [
        "status_changed", "overdue_apology", "overdue_apology", "update_refused",
        "result_ready", "held", "refused"]
    amqp.ch.queue_delete(queue)  # by hand
    declare_topology(amqp_url(), t, mini_catalog)

    def resend_desk(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = main(["dossier", "resend", "--desk", "T.MC.B", "--db-url", ledger.url, *args])
        out, err = capsys.readouterr()
        return rc, out, err

    # a desk's notices are events: without a moment, every one it ever had would come again
    rc, _, err = resend_desk()
    assert rc == 2 and err.startswith("error: --desk needs --since")
    rc, out, err = resend_desk("--since", "2026-11-25T09:30:00+07:00", "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert report == {"desk": "T.MC.B", "dry_run": False,
                      "since": "2026-11-25T09:30:00+07:00", "sent": 8, "missing": [],
                      "notices": [mid for mid, _ in [*lost, again_receipt]]}  # as recorded
    again = [(p.message_id, p.type, json.loads(b)) for p, b in amqp.get_all(queue)]
    assert [(mid, body) for mid, _, body in again] == [*lost, again_receipt]  # same ids
    assert {kind for _, kind, _ in again} == {"desk.notice"}
    assert [n["notice"] for n in amqp.json_all(t.desk_queue("T.MC.A"))] == [
        "receipt", "overdue_apology"]  # the other desk's: sent once, not again
    # from a date: its midnight in Vietnam, the receipts too
    rc, out, _ = resend_desk("--since", "2026-11-25", "--dry-run", "--json")
    assert rc == 0 and json.loads(out)["notices"] == [  # each once, where it came first
        *sorted(mid for mid, _ in receipts), *(mid for mid, _ in lost)]
    assert queue_depth(queue) == 0  # a dry run sends nothing

    capsys.readouterr()
    assert main(["dossier", "resend", "--desk", "T.MC.Z", "--since", "2026-11-25",
                 "--db-url", ledger.url]) == 1
    assert "no dossier in this ledger was ever with desk 'T.MC.Z'" in capsys.readouterr().err
    assert main(["dossier", "resend", "--agency", "T.UBND.A", "--since", "2026-11-25",
                 "--db-url", ledger.url]) == 2
    assert capsys.readouterr().err.startswith("error: --since is for --desk")
