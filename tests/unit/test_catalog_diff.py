"""`casebroker rules diff`: recorded dossiers re-decided under two catalogs, on SQLite and
PostgreSQL ledgers (the ``ledger`` fixture of tests/conftest.py)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from broker.cli import main
from broker.ledger import Ledger
from broker.messages import DossierSubmitted
from broker.rules.catalog import load_catalog
from broker.rules.engine import Engine
from broker.rules_cli import ledger_submissions
from tests.helpers import dossier

MINI = Path(__file__).parents[1] / "fixtures" / "mini.yaml"
ICT = ZoneInfo("Asia/Ho_Chi_Minh")
DAY = datetime(2026, 11, 17, 9, 0, tzinfo=ICT)
NEW_RULE = """\
  - id: online-birth-to-justice
    when: {procedure_code: "1.001193", channel: online}
    route: {agency: T.SO.TP}
"""


def _record(ledger: Ledger, engine: Engine, items: list[tuple[DossierSubmitted, datetime]],
            raw: tuple[dict[str, Any], ...] = ()) -> None:
    """Write dossiers to the ledger the way the router does (one batch)."""
    with ledger.batch() as batch:
        for n, (d, at) in enumerate(items):
            dec = engine.decide(d, at)
            batch.add_dossier({
                "code": f"{dec.agency_id}-{at:%y%m%d}-{n:04d}",
                "submission_id": str(d.submission_id),
                "procedure_code": d.procedure_code, "intake_desk_id": d.desk_id,
                "return_desk_id": d.collect_at, "channel": d.channel.value, "state": 2,
                "agency_id": dec.agency_id, "step": 1,
                "steps": [{"agency_id": s.agency_id, "amount": s.amount, "unit": s.unit.value}
                          for s in dec.steps],
                "rule_id": dec.rule_id, "catalog_hash": dec.catalog_hash,
                "boundary_free": dec.boundary_free, "received_at": at, "due_at": dec.due_at,
                "step_due_at": dec.first_step_due_at, "finished_at": None, "flags": {},
                "seq": 1, "submission": d.model_dump(mode="json", by_alias=True),
                "updated_at": at})
        for row in raw:
            batch.add_dossier(row)


@pytest.fixture
def catalogs(tmp_path: Path) -> tuple[Path, Path]:
    old = tmp_path / "old.yaml"
    old.write_bytes(MINI.read_bytes())
    new = tmp_path / "new.yaml"
    new.write_text(MINI.read_text(encoding="utf-8").replace("rules:\n", "rules:\n" + NEW_RULE)
                   .replace('"1.004227", name: "Lý lịch tư pháp", processing: {amount: 10',
                            '"1.004227", name: "Lý lịch tư pháp", processing: {amount: 12'),
                   encoding="utf-8")
    return old, new


def _fill(ledger: Ledger) -> Engine:
    engine = Engine(load_catalog(MINI))
    items = ([(dossier(desk_id="T.MC.B"), DAY + timedelta(minutes=i)) for i in range(6)]
             + [(dossier(desk_id="T.PORTAL", channel="online"), DAY + timedelta(hours=i))
                for i in range(4)]
             + [(dossier("1.004227", desk_id="T.CENTRE"), DAY - timedelta(days=10)),
                (dossier("1.004227", desk_id="T.CENTRE"), DAY)]
             + [(dossier(desk_id="T.PORTAL", channel="online"), DAY - timedelta(days=30))])
    _record(ledger, engine, items)
    return engine


def test_diff_counts_moves_by_procedure_and_agency(
        ledger: Ledger, catalogs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _fill(ledger)
    old, new = catalogs
    assert main(["rules", "diff", str(old), str(new), "--db-url", ledger.url, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["dossiers"], report["changed"], report["unreadable"]) == (13, 5, 0)
    assert report["processing_changed"] == 2
    assert report["by_procedure"] == [{
        "procedure_code": "1.001193", "dossiers": 11, "changed": 5,
        "moves": [{"from": "T.UBND.A", "to": "T.SO.TP", "dossiers": 5}]}]
    assert report["by_agency"] == [
        {"agency_id": "T.SO.TP", "before": 2, "after": 7, "lost": 0, "gained": 5},
        {"agency_id": "T.UBND.A", "before": 11, "after": 6, "lost": 5, "gained": 0}]
    assert report["new"]["hash"] != report["old"]["hash"]
    assert report["since"] is None

    # --since: local date; the 30- and 10-day-old dossiers drop out
    assert main(["rules", "diff", str(old), str(new), "--db-url", ledger.url, "--json",
                 "--since", DAY.date().isoformat()]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["dossiers"], report["changed"], report["since"]) == (11, 4, "2026-11-17")

    assert main(["rules", "diff", str(old), str(new), "--db-url", ledger.url]) == 0
    text = capsys.readouterr().out
    assert text.startswith("re-decided 13 dossiers under ")
    assert ": 5 would now go elsewhere (38.5%)" in text.splitlines()[0]
    assert "T.UBND.A  ->  T.SO.TP" in text


def test_same_catalog_changes_nothing(ledger: Ledger, catalogs: tuple[Path, Path],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    _fill(ledger)
    old, _ = catalogs
    assert main(["rules", "diff", str(old), str(old), "--db-url", ledger.url, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["dossiers"], report["changed"], report["by_agency"]) == (13, 0, [])


def test_streams_in_chunks_and_tolerates_unreadable_rows(ledger: Ledger) -> None:
    engine = Engine(load_catalog(MINI))
    items = [(dossier(desk_id="T.MC.B"), DAY + timedelta(seconds=i)) for i in range(25)]
    bad = {"code": "X-1", "submission_id": "not-a-uuid", "procedure_code": "1.001193",
           "intake_desk_id": "T.MC.B", "return_desk_id": "T.MC.B", "channel": "in_person",
           "state": 2, "agency_id": "T.UBND.A", "step": 1, "steps": [], "rule_id": "r",
           "catalog_hash": "h", "boundary_free": False, "received_at": DAY, "due_at": DAY,
           "step_due_at": DAY, "finished_at": None, "flags": {}, "seq": 1,
           "submission": {"schema": "old/v0"}, "updated_at": DAY}
    _record(ledger, engine, items, (bad,))
    rows = list(ledger_submissions(ledger.url, chunk_rows=4))
    assert len(rows) == 26
    assert [r[0] is None for r in rows].count(True) == 1
    assert {str(d.submission_id) for d, _ in rows if d} == {str(d.submission_id) for d, _ in items}
    assert all(at.tzinfo is not None for _, at in rows)


def test_unreadable_ledger_is_reported(tmp_path: Path, catalogs: tuple[Path, Path],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    old, new = catalogs
    url = f"sqlite:///{tmp_path / 'empty.sqlite3'}"
    assert main(["rules", "diff", str(old), str(new), "--db-url", url]) == 1
    err = capsys.readouterr().err
    assert f"error: no ledger at {url}: no such file" in err
    assert not (tmp_path / "empty.sqlite3").exists()  # a mistyped path is not created


def test_a_database_without_a_ledger_is_reported(tmp_path: Path, catalogs: tuple[Path, Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import sqlite3

    old, new = catalogs
    other = tmp_path / "other.sqlite3"
    sqlite3.connect(other).close()  # a database, but not a casebroker ledger
    url = f"sqlite:///{other}"
    assert main(["rules", "diff", str(old), str(new), "--db-url", url]) == 1
    assert f"error: no casebroker ledger at {url}: it has no dossiers table" \
        in capsys.readouterr().err
