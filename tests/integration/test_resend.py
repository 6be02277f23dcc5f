"""`dossier resend`: the assignments an agency queue deleted by hand took with it."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from broker.amqp import amqp_url
from broker.cli import main
from broker.ledger import Ledger
from broker.messages import DossierStatus
from broker.service import declare_topology
from broker.topology import Topology
from tests.conftest import queue_depth, wait_for
from tests.helpers import Amqp, dossier

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
