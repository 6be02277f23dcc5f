"""A ledger made by another version is refused at start, in words, on both databases.

Without the check, a column this version writes and the ledger lacks failed every
batch: on SQLite as an OperationalError, read as "the ledger is away" and retried
forever; on PostgreSQL as a programming error, dead-lettering every dossier.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Column, MetaData, Table, inspect, select, text
from sqlalchemy.exc import ProgrammingError

from broker.cli import EXIT_PROBLEM, main
from broker.consumers.router import Router
from broker.envelope import Outbound
from broker.errors import LedgerSchemaError, TransientError
from broker.ledger import Ledger, early_withdrawals
from broker.messages import encode
from broker.rules.catalog import load_catalog
from broker.rules.engine import Engine
from broker.topology import Topology
from tests.conftest import MINI_CATALOG, wait_for
from tests.helpers import dossier, dossier_row, intake_delivery

pytestmark = pytest.mark.integration


def _alter(ledger: Ledger, *statements: str) -> None:
    with ledger.engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))
    ledger.dispose()


def test_a_ledger_lacking_a_column_is_refused_by_name(ledger: Ledger) -> None:
    _alter(ledger, "ALTER TABLE outbox DROP COLUMN headers")
    with pytest.raises(LedgerSchemaError) as caught:
        Ledger(ledger.url)
    assert caught.value.problems == ["outbox.headers is missing"]
    assert "another version" in str(caught.value)


def test_without_the_check_the_same_ledger_fails_every_batch(ledger: Ledger) -> None:
    """What the check prevents: SQLite's error reads as an outage (a pause that never
    ends), PostgreSQL's as a bad batch (dead letters)."""
    _alter(ledger, "ALTER TABLE outbox DROP COLUMN headers")
    unchecked = Ledger(ledger.url, create=False, current=False)
    out = Outbound("x", "k", "m1:a", "desk.notice", None, None, b"{}")
    expected = TransientError if ledger.engine.dialect.name == "sqlite" else ProgrammingError
    with pytest.raises(expected), unchecked.batch() as batch:
        batch.record("m1", "intake", "routed", None, [out], datetime.now(UTC))
    unchecked.dispose()


def test_extra_optional_columns_are_left_alone(ledger: Ledger) -> None:
    # columns a DBA added, which this version does not know: the ledger starts, its
    # batches write around them (the database fills them in), and they stay
    _alter(ledger, "ALTER TABLE events ADD COLUMN note VARCHAR(20)",
           "ALTER TABLE inbox ADD COLUMN origin VARCHAR(20) DEFAULT 'desk' NOT NULL")
    started = Ledger(ledger.url)  # no LedgerSchemaError
    try:
        engine = Engine(load_catalog(MINI_CATALOG))
        out = Router(lambda: engine, started, Topology("t")).handle(
            [intake_delivery(1, encode(dossier()), "submit:extra")])
        code = json.loads(out[-1].body)["dossier_code"]
        assert started.count_by_state() == {2: 1}
        assert started.count_inbox_outcomes() == {"routed": 1}
        assert [e["kind"] for e in started.history(code)] == ["received"]
        with started.read() as conn:
            assert conn.execute(text("SELECT message_id, origin FROM inbox")).all() == [
                ("submit:extra", "desk")]
            assert conn.execute(text("SELECT dossier_code, note FROM events")).all() == [
                (code, None)]
    finally:
        started.dispose()


def test_an_unknown_required_column_is_refused(ledger: Ledger) -> None:
    if ledger.engine.dialect.name == "sqlite":
        pytest.skip("SQLite cannot add a NOT NULL column without a default")
    _alter(ledger, "ALTER TABLE events ADD COLUMN tenant VARCHAR(8) NOT NULL")
    with pytest.raises(LedgerSchemaError) as caught:
        Ledger(ledger.url)
    assert caught.value.problems == [
        "events.tenant is required (NOT NULL, no default) but this version does not know it"]


def test_casebroker_run_says_so_and_exits(ledger: Ledger,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    _alter(ledger, "ALTER TABLE outbox DROP COLUMN headers")
    code = main(["run", "--db-url", ledger.url, "--prefix", "schemacheck", "--metrics-port", "0"])
    assert code == EXIT_PROBLEM
    err = capsys.readouterr().err
    assert "outbox.headers is missing" in err
    assert "password" not in err.lower()


def _indexes(ledger: Ledger, table: str) -> set[str]:
    with ledger.engine.connect() as conn:
        return {str(ix["name"]) for ix in inspect(conn).get_indexes(table)}


def test_ledger_upgrade_brings_an_earlier_ledger_up_to_this_version(
        ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    # a ledger as versions before status_sent_at, watch_level, the watch indexes, inbox
    # fingerprints and step_watch_level left it, with the indexes they made and this one
    # dropped, rows, and an index a DBA added
    with ledger.batch() as batch:
        batch.add_dossier(dossier_row("OLD-1"))
        batch.record("submit:old", "intake", "routed", "OLD-1", [], datetime.now(UTC))
    _alter(ledger, "DROP INDEX ix_dossiers_watch", "DROP INDEX ix_dossiers_step_watch",
           "ALTER TABLE dossiers DROP COLUMN step_watch_level",
           "ALTER TABLE dossiers DROP COLUMN watch_level",
           "ALTER TABLE dossiers DROP COLUMN status_sent_at",
           "ALTER TABLE inbox DROP COLUMN fingerprint",
           "CREATE INDEX ix_dossiers_agency_id ON dossiers (agency_id)",
           "CREATE INDEX ix_events_dossier_code ON events (dossier_code)",
           "CREATE INDEX dba_reporting ON dossiers (procedure_code)")
    with pytest.raises(LedgerSchemaError):
        Ledger(ledger.url)

    assert main(["ledger", "upgrade", "--dry-run", "--db-url", ledger.url]) == 0
    said = capsys.readouterr().out
    assert "ADD COLUMN status_sent_at" in said and "ADD COLUMN watch_level" in said
    assert "ADD COLUMN fingerprint" in said and "ADD COLUMN step_watch_level" in said
    assert "CREATE INDEX ix_dossiers_watch" in said
    assert "CREATE INDEX ix_dossiers_step_watch" in said
    assert "DROP INDEX ix_dossiers_agency_id" in said and "ix_events_dossier_code" in said
    assert "dba_reporting" not in said and "would run 8 statements" in said
    with pytest.raises(LedgerSchemaError):  # a dry run changes nothing
        Ledger(ledger.url)

    assert main(["ledger", "upgrade", "--db-url", ledger.url]) == 0
    assert "ran 8 statements" in capsys.readouterr().out
    upgraded = Ledger(ledger.url)  # starts: the schema check passes
    row = upgraded.dossier("OLD-1")
    assert row is not None and row["watch_level"] == 0 and row["status_sent_at"] is None
    assert row["step_watch_level"] == 0
    with upgraded.batch() as batch:  # a copy under the old id is taken for a redelivery
        assert batch.seen(["submit:old"])["submit:old"].fingerprint is None
    assert _indexes(upgraded, "dossiers") >= {"ix_dossiers_watch", "ix_dossiers_step_watch",
                                              "dba_reporting"}
    assert not _indexes(upgraded, "dossiers") & {"ix_dossiers_agency_id"}
    assert "ix_events_dossier_code" not in _indexes(upgraded, "events")
    upgraded.dispose()
    assert main(["ledger", "upgrade", "--db-url", ledger.url]) == 0
    assert "is up to date" in capsys.readouterr().out


def _early_withdrawals_keyed_by(*key: str) -> Table:
    """``early_withdrawals`` with this version's columns under another primary key."""
    return Table("early_withdrawals", MetaData(), *(
        Column(c.name, c.type, primary_key=c.name in key, nullable=c.nullable)
        for c in early_withdrawals.columns))


def test_ledger_upgrade_rekeys_early_withdrawals_by_submission_and_desk(
        ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    # the table as versions keying it by submission id alone made it, with a row, and a
    # column and an index a DBA added
    sqlite = ledger.engine.dialect.name == "sqlite"
    old = _early_withdrawals_keyed_by("submission_id")
    kept = {"submission_id": "0190d8a4-0000-7000-8000-000000000001", "desk_id": "T.MC.B",
            "message_id": "m1", "reason": "công dân rút hồ sơ",
            "withdrawn_at": datetime(2026, 11, 25, 3, 0, tzinfo=UTC)}
    with ledger.engine.begin() as conn:
        early_withdrawals.drop(conn)
        old.create(conn)
        conn.execute(old.insert(), [kept])
        conn.execute(text("ALTER TABLE early_withdrawals ADD COLUMN ticket VARCHAR(20)"))
        conn.execute(text("UPDATE early_withdrawals SET ticket = 'OPS-7'"))
        conn.execute(text("CREATE INDEX dba_withdrawn ON early_withdrawals (withdrawn_at)"))
        if sqlite:  # one on an expression, which SQLAlchemy's reflection passes over
            conn.execute(text("CREATE INDEX dba_desk ON early_withdrawals (lower(desk_id))"))
        if sqlite:
            # and what a re-key interrupted after its first statement leaves on SQLite
            # (which commits a CREATE at once): the passing table, empty
            early_withdrawals.to_metadata(MetaData(), name="early_withdrawals_rekeyed").create(
                conn)
    ledger.dispose()
    with pytest.raises(LedgerSchemaError) as caught:
        Ledger(ledger.url)
    assert caught.value.problems == [
        "early_withdrawals is keyed by (submission_id); this version keys it by "
        "(submission_id, desk_id)"]

    assert main(["ledger", "upgrade", "--dry-run", "--db-url", ledger.url]) == 0
    said = capsys.readouterr().out
    if sqlite:  # SQLite cannot change a key: the table is made again and the rows copied
        assert "CREATE TABLE early_withdrawals_rekeyed" in said
        assert "INSERT INTO early_withdrawals_rekeyed" in said
        assert "CREATE INDEX dba_withdrawn ON early_withdrawals (withdrawn_at)" in said
        assert "CREATE INDEX dba_desk ON early_withdrawals (lower(desk_id))" in said
    else:  # PostgreSQL changes it in place: the table keeps its columns, indexes, grants
        assert ("ALTER TABLE early_withdrawals DROP CONSTRAINT early_withdrawals_pkey, "
                "ADD PRIMARY KEY (submission_id, desk_id)") in said
        assert "early_withdrawals_rekeyed" not in said
    assert main(["ledger", "upgrade", "--db-url", ledger.url]) == 0
    capsys.readouterr()
    upgraded = Ledger(ledger.url)  # starts: the schema check passes
    with upgraded.engine.connect() as conn:
        key = inspect(conn).get_pk_constraint("early_withdrawals")
        assert key["constrained_columns"] == ["submission_id", "desk_id"]
        assert key["name"] == ("early_withdrawals_pkey" if not sqlite else None)
        assert not inspect(conn).has_table("early_withdrawals_rekeyed")
        made = conn.execute(text(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
            "AND tbl_name = 'early_withdrawals' ORDER BY name") if sqlite else text(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'early_withdrawals' "
            "AND indexname LIKE 'dba%' ORDER BY indexname")).scalars().all()
        assert made == (["dba_desk", "dba_withdrawn"] if sqlite else ["dba_withdrawn"])
        assert conn.execute(text("SELECT ticket FROM early_withdrawals")).scalar() == "OPS-7"
    with upgraded.batch() as batch:  # another desk's withdrawal of the same id has room
        assert batch.early_withdrawals([kept["submission_id"]]) == {
            kept["submission_id"]: {"T.MC.B": kept}}
        batch.withdraw_early({**kept, "desk_id": "T.MC.A", "message_id": "m2"})
    with upgraded.read() as conn:
        assert sorted(r.desk_id for r in conn.execute(select(early_withdrawals))) == [
            "T.MC.A", "T.MC.B"]
    upgraded.dispose()
    assert main(["ledger", "upgrade", "--db-url", ledger.url]) == 0
    assert "is up to date" in capsys.readouterr().out


def test_ledger_upgrade_will_not_rekey_a_table_with_no_key(
        ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    # rows a key never kept unique may repeat under the new one: refused, nothing changed
    old = _early_withdrawals_keyed_by()
    row = {"submission_id": "s1", "desk_id": "T.MC.B", "message_id": "m1", "reason": None,
           "withdrawn_at": datetime(2026, 11, 25, 3, 0, tzinfo=UTC)}
    with ledger.engine.begin() as conn:
        early_withdrawals.drop(conn)
        old.create(conn)
        conn.execute(old.insert(), [row, row])
    ledger.dispose()
    assert main(["ledger", "upgrade", "--db-url", ledger.url]) == EXIT_PROBLEM
    err = capsys.readouterr().err
    assert "early_withdrawals is keyed by (nothing)" in err and "nothing was changed" in err
    with ledger.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM early_withdrawals")).scalar() == 2


def test_ledger_upgrade_refuses_a_column_it_cannot_add_and_changes_nothing(
        ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    _alter(ledger, "ALTER TABLE events DROP COLUMN actor",  # NOT NULL, no default
           "ALTER TABLE dossiers DROP COLUMN status_sent_at")
    assert main(["ledger", "upgrade", "--db-url", ledger.url]) == EXIT_PROBLEM
    err = capsys.readouterr().err
    assert "events.actor is missing and required" in err and "nothing was changed" in err
    with ledger.engine.connect() as conn:
        assert "status_sent_at" not in {c["name"] for c in inspect(conn).get_columns("dossiers")}


def test_ledger_upgrade_needs_a_ledger_there(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'typo.sqlite3'}"
    assert main(["ledger", "upgrade", "--db-url", url]) == EXIT_PROBLEM
    assert "no ledger at" in capsys.readouterr().err
    assert not (tmp_path / "typo.sqlite3").exists()


def test_two_upgrades_at_once_leave_the_second_nothing_to_do(ledger: Ledger) -> None:
    # PostgreSQL (one SQLite upgrade at a time is the run lock's): both planned the same
    # column, the second ran it after the first and said "no usable ledger ...: column
    # already exists" of one just upgraded (found by a review). A session holding the
    # table makes both wait where the first has planned; the second now plans after it
    if ledger.engine.dialect.name == "sqlite":
        pytest.skip("SQLite ledgers are upgraded by one process at a time (sole_runner)")
    _alter(ledger, "ALTER TABLE dossiers DROP COLUMN watch_level")
    upgrading = [Ledger(ledger.url, create=False, current=False) for _ in range(2)]
    results: list[list[str] | BaseException] = []

    def upgrade(one: Ledger) -> None:
        try:
            results.append(one.upgrade())
        except BaseException as e:  # noqa: BLE001 (the test reads it)
            results.append(e)

    holder = ledger.engine.connect()
    holder.begin()
    holder.execute(text("LOCK TABLE dossiers IN ACCESS SHARE MODE"))  # ALTER waits on it
    threads = [threading.Thread(target=upgrade, args=(one,)) for one in upgrading]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: _waiting_sessions(ledger) == 2, what="both upgrades waiting")
    finally:
        holder.rollback()
        holder.close()
    for t in threads:
        t.join(timeout=30)
    for one in upgrading:
        one.dispose()
    # the column and its watch index, once; the other found nothing to do
    assert sorted(f"{len(r)} steps" if isinstance(r, list) else repr(r)
                  for r in results) == ["0 steps", "2 steps"], results
    Ledger(ledger.url).dispose()  # up to date


def _waiting_sessions(ledger: Ledger) -> int:
    """Upgrades waiting on a lock: their column (behind the test's session), or the schema
    gate (behind the other upgrade)."""
    with ledger.engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND (query LIKE 'ALTER TABLE dossiers ADD COLUMN watch_level%' "
            "OR query LIKE 'SELECT pg_advisory_xact_lock%')")).scalar_one())
