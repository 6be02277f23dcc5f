"""`casebroker dead-letters` and `casebroker audit` on real traffic."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import delete

from broker.cli import main
from broker.ledger import outbox
from broker.messages import DossierStatus, encode
from broker.topology import INTAKE_KEY, STATUS_KEY
from tests.faults.harness import MINI_CATALOG, Load, Msg, Scenario, wait_until
from tests.faults.servers import RabbitNode
from tests.helpers import dossier

pytestmark = pytest.mark.faults


def _cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, s: Scenario,
         *args: str) -> tuple[int, str]:
    monkeypatch.setenv("CASEBROKER_AMQP_URL", ",".join(s.urls))
    capsys.readouterr()
    code = main([*args, "--prefix", s.topology.prefix])
    return code, capsys.readouterr().out


def test_dead_letters_list_show_replay(
        rabbit: RabbitNode, scenario: Callable[..., Scenario], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    s = scenario([rabbit.url], "dead-letter replay")
    catalog = tmp_path / "catalog.yaml"
    shutil.copy(MINI_CATALOG, catalog)
    router = s.router()
    router.catalog = catalog
    router.start().wait_consuming()
    t = s.topology
    d = dossier()                                # routed normally
    unknown = dossier("1.009999")                # triaged: the catalog lacks the procedure
    broken = b'{"schema": "casebroker.dossier.submitted/v1", '
    code = "T.UBND.A-261125-0001"                # the first code of a fresh ledger
    early = DossierStatus(update_id="0b9c6a57-3f7e-4c1e-9d3a-5d2f1e6b7a80", dossier_code=code,
                          agency_id="T.UBND.A", status="resolved",
                          sent_at="2026-11-28T09:00:00+07:00")
    Load(s.urls, [
        Msg(t.status_exchange, STATUS_KEY, encode(early), "status:early", "dossier.status"),
        Msg(t.intake_exchange, INTAKE_KEY, broken, "bad:broken"),
        Msg(t.intake_exchange, INTAKE_KEY, encode(unknown), "submit:unknown"),
    ]).run()
    wait_until(lambda: s.queue_info(t.dead_queue("status")) == 1
               and s.queue_info(t.dead_queue("intake")) == 1
               and s.queue_info(t.triage_queue) == 1, 30, "dead letters and triage")
    # the same valid dossier twice: once fine, once with a wrong content type
    Load(s.urls, [Msg(t.intake_exchange, INTAKE_KEY, encode(d), "submit:d"),
                  Msg(t.intake_exchange, INTAKE_KEY, encode(d), "again:d",
                      content_type="text/plain")]).run()
    s.wait_routed(1)
    wait_until(lambda: s.queue_info(t.dead_queue("intake")) == 2, 30, "second dead letter")

    # list and show put everything back, untouched
    for _ in range(3):
        rc, out = _cli(capsys, monkeypatch, s, "dead-letters", "list", "--json")
        assert rc == 0
    listed = {m["message_id"]: m for m in json.loads(out)}
    assert {k: v["reason"] for k, v in listed.items()} == {
        "status:early": "unknown_dossier", "bad:broken": "malformed_json",
        "submit:unknown": "unknown_procedure", "again:d": "wrong_content_type"}
    rc, out = _cli(capsys, monkeypatch, s, "dead-letters", "show", "submit:unknown")
    assert rc == 0 and "Nguy" not in out and "applicant.name" in out  # withheld, named
    assert s.queue_info(t.dead_queue("intake")) == 2 and s.queue_info(t.triage_queue) == 1

    # the fix: the procedure joins the catalog; then replay triage and the early update
    catalog.write_text(catalog.read_text().replace(
        "procedures:\n", 'procedures:\n  - {code: "1.009999", name: "Added", processing: '
        '{amount: 1, unit: working_days}, competence: {agency: T.SO.TP}, boundary_free: true}\n'))
    router.reload()
    wait_until(lambda: "catalog reloaded" in router.log(), 30, "catalog reload")
    rc, out = _cli(capsys, monkeypatch, s, "dead-letters", "replay", "--all", "--queue",
                   "triage", "--json")
    assert rc == 0 and json.loads(out)["replayed"] == 1
    assert json.loads(out)["messages"][0]["replayed_as"] == "submit:unknown#replay1"
    s.wait_routed(2)
    rc, _ = _cli(capsys, monkeypatch, s, "dead-letters", "replay", "--id", "status:early")
    assert rc == 0
    wait_until(lambda: (s.ledger.dossier(code) or {}).get("state") == 9, 30, "early applied")

    # a dead letter of a dossier that exists: replayed, it makes no second dossier
    rc, _ = _cli(capsys, monkeypatch, s, "dead-letters", "replay", "--id", "again:d")
    wait_until(lambda: s.ledger.count_inbox_outcomes().get("duplicate") == 1, 30, "dup seen")
    assert rc == 0 and s.ledger_count() == 2
    # a crash between publish and ack replays the same dead letter again: same id, one effect
    Load(s.urls, [Msg(t.intake_exchange, INTAKE_KEY, encode(d), "again:d#replay1")]).run()
    wait_until(lambda: s.queue_info(t.intake_queue) == 0, 30, "intake drained")
    assert s.ledger.count_inbox_outcomes().get("duplicate") == 1 and s.ledger_count() == 2

    # still broken: dead again with the replay count, and again, never looping
    for generation in (1, 2):
        rc, _ = _cli(capsys, monkeypatch, s, "dead-letters", "replay", "--id",
                     "bad:broken" if generation == 1 else "bad:broken#replay1")
        assert rc == 0
        wait_until(lambda: s.queue_info(t.dead_queue("intake")) == 1, 30, "dead again")
    rc, out = _cli(capsys, monkeypatch, s, "dead-letters", "list", "--json")
    (left,) = json.loads(out)
    assert left["message_id"] == "bad:broken#replay2" and left["replays"] == 2
    assert left["reason"] == "malformed_json"
    rc, _ = _cli(capsys, monkeypatch, s, "dead-letters", "replay", "--id", "nope")
    assert rc == 1
    assert router.alive() and len(s.ledger.history(code)) == 2


def test_audit_names_what_is_not_accounted_for(
        rabbit: RabbitNode, scenario: Callable[..., Scenario], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    s = scenario([rabbit.url], "audit")
    s.router().start().wait_consuming()
    t = s.topology
    msgs = s.dossiers(300)
    triaged = dossier("9.999999")
    Load(s.urls, [*msgs, Msg(t.intake_exchange, INTAKE_KEY, encode(triaged),
                             f"submit:{triaged.submission_id}")]).run()
    s.wait_routed(300)
    s.resolve_all()
    subs = tmp_path / "subs.txt"
    subs.write_text("\n".join([*s.submissions, str(triaged.submission_id)]))
    monkeypatch.setenv("CASEBROKER_DB_URL", s.db_url)
    rc, out = _cli(capsys, monkeypatch, s, "audit", "--json", "--submissions", str(subs))
    report = json.loads(out)
    assert rc == 0 and report["unaccounted"] == 0 and report["dossiers"] == 300
    assert report["queues"]["triage"] == 1 and report["pending"] == 0

    # a submission nobody received, and a dossier whose assignment vanished from the outbox
    subs.write_text(subs.read_text() + "\n00000000-0000-4000-8000-000000000000")
    code = next(iter(s.ledger.states_for_submissions(s.submissions[:1]).values()))[0]
    with s.ledger.engine.begin() as conn:
        conn.execute(delete(outbox).where(outbox.c.message_id == f"{code}:assigned:1"))
    rc, out = _cli(capsys, monkeypatch, s, "audit", "--json", "--submissions", str(subs))
    report = json.loads(out)
    assert rc == 1 and report["unaccounted"] == 2
    assert report["unaccounted_dossiers"] == [
        {"dossier_code": code, "problem": f"assignment {code}:assigned:1 not in outbox"}]
    assert report["unaccounted_submissions"][0]["submission_id"].startswith("00000000")
    rc, out = _cli(capsys, monkeypatch, s, "audit")
    assert rc == 1 and code in out
