"""The ledger's bulk insert (driver ``executemany``) stores exactly what SQLAlchemy's
``insert`` stores, on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import LargeBinary, Table, insert, text

from broker.envelope import Outbound
from broker.ledger import ConcurrentUpdate, Ledger, dossiers, events, inbox, outbox
from monitoring.metrics import Metrics
from tests.helpers import ROW_AT as AT
from tests.helpers import dossier_row


def _event(code: str, seq: int, **over: Any) -> dict[str, Any]:
    row = {"dossier_code": code, "seq": seq, "kind": "received", "state_from": None,
           "state_to": 2, "actor": "router", "from_agency": None, "to_agency": "ubnd.x",
           "message_id": f"submit:{code}", "detail": {"rule_id": "r1", "n": [1, 2]}, "at": AT}
    return {**row, **over}


def _text_rows(ledger: Ledger, table: Table, key: str, prefix: str) -> list[tuple[Any, ...]]:
    """Every column but the surrogate id, as the database's own text, prefix removed."""
    cols = [c.name if isinstance(c.type, LargeBinary) else f"CAST({c.name} AS TEXT)"
            for c in table.c if c.name != "id"]  # bytes as bytes: not all are UTF-8
    sql = (f"SELECT {', '.join(cols)} FROM {table.name} "
           f"WHERE {key} LIKE :prefix ORDER BY {'id' if 'id' in table.c else key}")
    with ledger.read() as conn:
        rows = conn.execute(text(sql), {"prefix": f"{prefix}%"}).all()
    return [tuple(v.replace(prefix, "<p>") if isinstance(v, str)
                  else bytes(v) if isinstance(v, memoryview) else v for v in r) for r in rows]


def test_bulk_insert_stores_what_sqlalchemy_stores(ledger: Ledger) -> None:
    def rows(p: str) -> dict[Table, list[dict[str, Any]]]:
        return {
            dossiers: [dossier_row(f"{p}-A"), dossier_row(f"{p}-B", boundary_free=False,
                                                    paused_at=AT, satisfaction=4, flags={})],
            events: [_event(f"{p}-A", 1), _event(f"{p}-A", 2, state_from=2, detail={})],
            inbox: [{"message_id": f"{p}-m1", "source": "intake", "outcome": "routed",
                     "dossier_code": f"{p}-A", "processed_at": AT},
                    {"message_id": f"{p}-m2", "source": "intake", "outcome": "triaged:x",
                     "dossier_code": None, "processed_at": AT.astimezone(UTC)}],
            outbox: [{"inbox_message_id": f"{p}-m1", "exchange": "cb.agency",
                      "routing_key": "ubnd.x", "message_id": f"{p}-o1", "type": "assignment",
                      "correlation_id": None, "headers": None, "body": b"\x00\xffbody"},
                     {"inbox_message_id": f"{p}-m1", "exchange": "cb.desk",
                      "routing_key": "desk.portal", "message_id": f"{p}-o2", "type": "receipt",
                      "correlation_id": f"{p}-A", "headers": {"x-step": 0},
                      "body": "Biên nhận".encode()}],
        }

    with ledger.batch() as batch:  # reference: SQLAlchemy's insert with its bind processing
        for table, table_rows in rows("ref").items():
            batch.conn.execute(insert(table), table_rows)
    with ledger.batch() as batch:  # the bulk path
        fast = rows("fast")
        for row in fast[dossiers]:
            batch.add_dossier(row)
        for row in fast[events]:
            batch.add_event(row)
        batch._inbox.extend(fast[inbox])
        batch._outbox.extend(fast[outbox])

    for table, key in ((dossiers, "code"), (events, "dossier_code"), (inbox, "message_id"),
                       (outbox, "message_id")):
        ref = _text_rows(ledger, table, key, "ref")
        assert len(ref) == 2
        assert _text_rows(ledger, table, key, "fast") == ref, table.name

    # and read back through the ledger's own types: aware UTC datetimes, JSON, booleans
    got = ledger.dossier("fast-A")
    assert got is not None
    assert got["received_at"] == AT and got["received_at"].tzinfo is not None
    assert got["steps"][0]["agency_id"] == "ubnd.xa-ea-kar"
    assert got["submission"] == {"applicant": {"name": "Nguyễn Văn An"}}
    assert got["boundary_free"] is True


def test_rows_with_other_keys_keep_every_value_and_their_order(ledger: Ledger) -> None:
    with ledger.batch() as batch:
        batch.add_dossier(dossier_row("k-A"))
        batch.add_event(_event("k-A", 1))
        batch.add_event({k: v for k, v in _event("k-A", 2).items() if k != "from_agency"})
        batch.add_event(_event("k-A", 3, from_agency="so.tu-phap"))
        batch.fingerprints["k-m"] = bytes(range(16))
        batch.record("k-m", "intake", "routed", "k-A", [
            Outbound("cb.agency", f"a{i}", f"k-o{i}", "assignment", None, None, b"x")
            for i in range(3)], AT)
    history = ledger.history("k-A")
    assert [e["seq"] for e in history] == [1, 2, 3]
    assert history[2]["from_agency"] == "so.tu-phap"
    with ledger.batch() as batch:
        again = batch.seen(["k-m"])["k-m"]
    assert [o.message_id for o in again.published] == ["k-o0", "k-o1", "k-o2"]
    assert (again.outcome, again.dossier_code, again.fingerprint) == (
        "routed", "k-A", bytes(range(16)))


def test_naive_datetime_fails_the_batch_and_stores_nothing(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="naive datetime"), ledger.batch() as batch:
        batch.add_event(_event("n-A", 1))
        batch.add_dossier(dossier_row("n-A", received_at=datetime(2026, 3, 2, 9, 0)))
    assert ledger.dossier("n-A") is None
    assert ledger.history("n-A") == []


def test_code_blocks_follow_on_per_agency_and_day(ledger: Ledger) -> None:
    with ledger.batch() as batch:
        first = batch.allocate_codes({("so.tu-phap", "260302"): 3, ("ubnd.x", "260302"): 1})
    with ledger.batch() as batch:
        second = batch.allocate_codes({("so.tu-phap", "260302"): 2, ("so.tu-phap", "260303"): 1,
                                       ("ubnd.x", "260302"): 1})
    assert first == {("so.tu-phap", "260302"): 1, ("ubnd.x", "260302"): 1}
    assert second == {("so.tu-phap", "260302"): 4, ("so.tu-phap", "260303"): 1,
                      ("ubnd.x", "260302"): 2}
    with pytest.raises(ValueError, match="boom"), ledger.batch() as batch:
        batch.allocate_codes({("ubnd.x", "260302"): 5})
        raise ValueError("boom")  # rolled back: those five numbers are handed out again
    with ledger.batch() as batch:
        assert batch.allocate_codes({("ubnd.x", "260302"): 1}) == {("ubnd.x", "260302"): 3}


def test_a_conflict_in_the_bulk_insert_is_a_concurrent_update(ledger: Ledger) -> None:
    # what a competing router's commit looks like from here: retried, never dead-lettered
    with ledger.batch() as batch:
        batch.add_dossier(dossier_row("c-A"))
    with pytest.raises(ConcurrentUpdate), ledger.batch() as batch:
        batch.add_event(_event("c-B", 1))
        batch.add_dossier(dossier_row("c-A"))
    assert ledger.history("c-B") == []


def test_a_snapshot_read_sees_the_ledger_as_at_its_first_query(ledger: Ledger) -> None:
    # the audit's several queries must agree while routers commit beside it
    with ledger.batch() as batch:
        batch.add_dossier(dossier_row("s-A"))
        batch.record("m-A", "intake", "routed", "s-A", [], AT)
    with ledger.read(snapshot=True) as snap, ledger.read() as plain:
        assert ledger.count_by_state(snap) == ledger.count_by_state(plain) == {2: 1}
        with ledger.batch() as batch:  # a router commits meanwhile
            batch.add_dossier(dossier_row("s-B", state=4))
            batch.record("m-B", "intake", "routed", "s-B", [], AT)
        assert ledger.count_by_state(plain) == {2: 1, 4: 1}
        assert ledger.count_by_state(snap) == {2: 1}
        assert ledger.count_inbox_outcomes(snap) == {"routed": 1}
        assert list(ledger.states_for_submissions(["s-A-sid", "s-B-sid"], snap)) == ["s-A-sid"]
    assert ledger.count_by_state() == {2: 1, 4: 1}


def _checkpointed_dossiers(path: Path) -> int:
    # immutable=1 reads the database file alone, ignoring the WAL: what was checkpointed
    with contextlib.closing(sqlite3.connect(f"file:{path}?immutable=1", uri=True)) as conn:
        return int(conn.execute("SELECT count(*) FROM dossiers").fetchone()[0])


def test_the_batch_reads_find_rows_and_prepare_nothing_on_the_server(ledger: Ledger) -> None:
    """The per-batch reads are driver SQL (``IN`` on SQLite, ``= ANY`` on PostgreSQL).
    PostgreSQL must plan each run: a generic plan kept from when the ledger was empty
    scanned the whole inbox on every batch as it grew."""
    with ledger.batch() as b:
        b.record("m-1", "intake", "routed", "C-1", [], AT)
        b.add_dossier(dossier_row("C-1"))
    for _ in range(8):  # past psycopg's default threshold of 5 runs before it prepares
        with ledger.batch() as b:
            assert set(b.seen(["m-1", "m-2"])) == {"m-1"}
            assert b.existing_submissions(["C-1-sid", "nope"]) == {"C-1-sid": "C-1"}
            if ledger.engine.dialect.name == "postgresql":
                prepared = b.conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_prepared_statements").scalar()
                assert prepared == 0
    # more ids than one SQLite statement takes at once
    many = [f"m-{i}" for i in range(1, 1000)]
    with ledger.batch() as b:
        assert set(b.seen(many)) == {"m-1"}


def test_background_checkpoints_move_the_wal_into_the_database(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger(f"sqlite:///{path}")
    stop = ledger.background_checkpoints(every_s=0.05)
    try:
        with ledger.engine.connect() as conn:  # committing connections leave it to the thread
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
        with ledger.batch() as batch:
            for i in range(20):
                batch.add_dossier(dossier_row(f"w-{i}"))
        deadline = time.monotonic() + 10
        while _checkpointed_dossiers(path) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _checkpointed_dossiers(path) == 20
    finally:
        stop()
    with ledger.engine.connect() as conn:  # stopped: SQLite's own checkpoints again
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 1000
    with ledger.batch() as batch:
        batch.add_dossier(dossier_row("w-after"))
    assert _checkpointed_dossiers(path) == 20  # a small commit stays in the WAL
    assert ledger.dossier("w-after") is not None
    ledger.dispose()


@pytest.mark.parametrize("neighbour", [False, True], ids=["alone", "beside_short_reads"])
def test_the_wal_stays_bounded_under_a_writer_that_never_pauses(tmp_path: Path,
                                                                neighbour: bool) -> None:
    # a PASSIVE checkpoint alone never lets a busy writer start the WAL over: it grew to
    # 13 GB over 400,000 dossiers in a benchmark before the RESTART step. Beside it, the
    # other consumer's transactions (each a snapshot for a few ms) keep PASSIVE from
    # copying the last pages nearly every turn: the RESTART must not take them for a
    # long reader and wait for a turn without them
    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger(f"sqlite:///{path}")
    stop = ledger.background_checkpoints(every_s=0.02, restart_frames=64)
    wal = Path(f"{path}-wal")
    largest = 0
    halt = threading.Event()

    def short_reads() -> None:
        reader = sqlite3.connect(path, isolation_level=None)
        while not halt.is_set():
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM dossiers").fetchone()
            time.sleep(0.003)
            reader.execute("COMMIT")
        reader.close()

    neighbour_thread = threading.Thread(target=short_reads, daemon=True)
    if neighbour:
        neighbour_thread.start()
    try:
        for b in range(150):
            with ledger.batch() as batch:
                for i in range(20):
                    batch.add_dossier(dossier_row(f"g-{b}-{i}",
                                               flags={"pad": "x" * 2000}))
            largest = max(largest, wal.stat().st_size)
            time.sleep(0.002)  # the router's I/O loop publishes and acks between batches
    finally:
        halt.set()
        if neighbour:
            neighbour_thread.join()
        stop()
    written = 150 * 20 * 2500  # bytes of rows at least
    assert stop.held_back == 0  # short transactions are waited out, not taken for a scan
    # the WAL started over again and again, so its file holds what was written between
    # two restarts, not the whole run: 1.1-2.0 MB here on a fast machine state (the
    # writer then gets 6-16 batches in between), where a WAL never started over would
    # hold every frame, at least ``written``
    assert stop.restarts >= 5
    assert largest < written / 2, (largest, written)
    assert _checkpointed_dossiers(path) <= 3000
    with ledger.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM dossiers").scalar() == 3000
    ledger.dispose()


def test_a_long_reader_does_not_stall_the_writer_behind_a_checkpoint(tmp_path: Path) -> None:
    # a RESTART checkpoint holds new writers back while it waits for readers; a reader
    # keeping its snapshot for 1.5 s (a CLI scan, `casebroker audit`) must not hold the
    # router back. RESTARTs tried while it read held each batch for 0.43 s, twice their
    # 0.2 s timeout, and failed: the WAL cannot start over under that reader anyway.
    # Counted, not timed: a RESTART tried under the reader waits out its busy timeout and
    # returns "busy" (no error), so the thread counts it as a restart; none may be tried
    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger(f"sqlite:///{path}")
    with ledger.batch() as batch:
        batch.add_dossier(dossier_row("r-0"))
    metrics = Metrics()  # what `casebroker run` hands the thread
    stop = ledger.background_checkpoints(every_s=0.02, restart_frames=8,
                                         count=metrics.wal_checkpoint_turn)
    reader = sqlite3.connect(path, isolation_level=None)
    probe = sqlite3.connect(path, isolation_level=None)
    b = 0

    def write() -> None:
        nonlocal b
        with ledger.batch() as batch:
            batch.add_dossier(dossier_row(f"r-{b + 1}", flags={"pad": "x" * 2000}))
        b += 1
        time.sleep(0.002)

    def wal_frames() -> int:
        for _ in range(400):  # -1: the background thread was checkpointing; ask again
            frames: int = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
            if frames >= 0:
                return frames
            time.sleep(0.005)
        raise AssertionError("the WAL's size could not be read for 2 s")

    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM dossiers").fetchone()  # holds its snapshot
        # a turn that found every page copied just before the snapshot may still try its
        # RESTART (rightly: nothing was held back then), waiting out its 0.2 s busy timeout
        # on the reader. Once a write lies past the snapshot none may start, so the count
        # starts there, after that one has had time to end
        write()
        time.sleep(0.3)
        restarts = stop.restarts
        until = time.monotonic() + 1.5
        while time.monotonic() < until:
            write()
        reader.execute("COMMIT")
        restarts_while_read, held_back = stop.restarts - restarts, stop.held_back
        grown = wal_frames()
        # once the reader is gone, the WAL starts over again
        deadline = time.monotonic() + 10
        while (frames := wal_frames()) > 8 and time.monotonic() < deadline:
            write()
            time.sleep(0.02)
    finally:
        reader.close()
        probe.close()
        stop()
    # no RESTART tried (and waited on the reader, holding the writer back) while it read,
    # each due turn held back instead
    assert restarts_while_read == 0 and held_back > 0
    assert metrics.registry.get_sample_value(  # what ops see (an alert after 20 minutes)
        "casebroker_wal_checkpoint_turns_total", {"result": "held_back"}) == stop.held_back
    assert grown > 8 >= frames, (grown, frames)
    with ledger.read() as conn:  # and every write went through
        assert conn.exec_driver_sql("SELECT count(*) FROM dossiers").scalar() == b + 1
    ledger.dispose()
