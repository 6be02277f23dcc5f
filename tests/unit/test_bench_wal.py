"""bench.wal reads a SQLite WAL file as SQLite itself counts it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bench.wal import wal_frames


def _log_frames(conn: sqlite3.Connection) -> int:
    # a PASSIVE checkpoint reports the frames the WAL holds (and copies them back)
    _busy, frames, _done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(frames)


def test_frames_and_commits_of_a_wal_as_sqlite_counts_them(tmp_path: Path) -> None:
    db = tmp_path / "t.sqlite3"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB)")
    for i in range(40):  # 40 commits
        conn.execute("INSERT INTO t VALUES (?, ?)", (f"{i:04d}", b"x" * 3000))
    wal = Path(f"{db}-wal")
    page_size, pages, commits = wal_frames(wal)
    assert page_size == conn.execute("PRAGMA page_size").fetchone()[0]
    assert commits == 41  # the CREATE TABLE and the 40 inserts
    assert len(pages) == _log_frames(conn)
    assert max(pages) <= conn.execute("PRAGMA page_count").fetchone()[0]

    # after a RESTART the next commit writes the file from its start again; the frames
    # of before stay behind it on disk, and only the new ones count
    conn.execute("PRAGMA wal_checkpoint(RESTART)")
    conn.execute("INSERT INTO t VALUES ('new', x'00')")
    _size, after, commits = wal_frames(wal)
    assert wal.stat().st_size > 32 + len(after) * (24 + page_size)  # stale frames remain
    assert commits == 1 and len(after) == _log_frames(conn)
    conn.close()


def test_no_wal_file_no_frames(tmp_path: Path) -> None:
    assert wal_frames(tmp_path / "absent-wal") == (0, [], 0)
