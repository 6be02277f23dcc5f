"""A ledger made by another version is refused at start, in words, on both databases.

Without the check, a column this version writes and the ledger lacks failed every
batch: on SQLite as an OperationalError, read as "the ledger is away" and retried
forever; on PostgreSQL as a programming error, dead-lettering every dossier.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError

from broker.cli import EXIT_PROBLEM, main
from broker.envelope import Outbound
from broker.errors import LedgerSchemaError, TransientError
from broker.ledger import Ledger

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
    unchecked = Ledger(ledger.url, create=False)
    out = Outbound("x", "k", "m1:a", "desk.notice", None, None, b"{}")
    expected = TransientError if ledger.engine.dialect.name == "sqlite" else ProgrammingError
    with pytest.raises(expected), unchecked.batch() as batch:
        batch.record("m1", "intake", "routed", None, [out], datetime.now(UTC))
    unchecked.dispose()


def test_extra_optional_columns_are_left_alone(ledger: Ledger) -> None:
    _alter(ledger, "ALTER TABLE events ADD COLUMN note VARCHAR(20)",
           "ALTER TABLE inbox ADD COLUMN origin VARCHAR(20) DEFAULT 'desk' NOT NULL")
    Ledger(ledger.url).dispose()  # no error


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
    code = main(["run", "--db-url", ledger.url, "--prefix", "schemacheck"])
    assert code == EXIT_PROBLEM
    err = capsys.readouterr().err
    assert "outbox.headers is missing" in err
    assert "password" not in err.lower()
