"""Throw-away ledgers for the benchmark: a SQLite file, or a PostgreSQL schema of its own."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def pg_url() -> str:
    """PostgreSQL for the benchmark (``CASEBROKER_BENCH_PG_URL``, else the tests' one)."""
    return (os.environ.get("CASEBROKER_BENCH_PG_URL") or os.environ.get("CASEBROKER_TEST_PG_URL")
            or DEFAULT_PG_URL)


@contextmanager
def sqlite_ledger_url() -> Iterator[str]:
    """A SQLite ledger URL in a fresh directory, removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix="casebroker-bench-"))
    try:
        yield f"sqlite:///{workdir / 'ledger.sqlite3'}"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def postgres_ledger_url() -> Iterator[str]:
    """A ledger URL on a PostgreSQL schema created for this run and dropped afterwards."""
    base = pg_url()
    schema = f"bench{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        sep = "&" if "?" in base else "?"
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@contextmanager
def ledger_url(kind: str) -> Iterator[str]:
    """``sqlite`` or ``postgresql``."""
    factory = sqlite_ledger_url if kind == "sqlite" else postgres_ledger_url
    with factory() as url:
        yield url


def drop_leftover_schemas() -> list[str]:
    """Drop PostgreSQL schemas an interrupted benchmark left (``bench`` + 10 hex digits)."""
    admin = create_engine(pg_url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            names = [n for (n,) in conn.execute(text(
                "SELECT nspname FROM pg_namespace WHERE nspname ~ '^bench[0-9a-f]{10}$'"))]
            for name in names:
                conn.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
        return names
    finally:
        admin.dispose()
