"""Remove what killed test, demo and benchmark runs left on the shared RabbitMQ.

Every test declares its queues under a random prefix and deletes them at teardown; a
run killed mid-test cannot, and its quorum queues stay. Enough of them (each holds
file handles) exhaust the node's file limit and RabbitMQ stops answering. So a test
session starts by deleting queues and exchanges under the random prefixes the tests,
``casebroker demo`` and ``casebroker bench`` make, and the PostgreSQL schemas the
ledger fixture makes, but only when no other test, demo, benchmark or ``casebroker``
process is running on this machine: theirs may be live. Names under any other prefix
(an operator's, a helper's) are never touched.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path

import pika
from sqlalchemy import create_engine, text

from broker.amqp import amqp_url
from broker.security import Management, ManagementError, management_url
from broker.service import delete_names

#: the prefixes tests/conftest.py, adapters/demo.py and bench/common.py draw at random
LEFTOVER = re.compile(r"^(t[0-9a-f]{8,10}|demo[0-9a-f]{8}|bench[0-9a-f]{8}[a-z]*)\.")
LEFTOVER_SCHEMA = re.compile(r"^t[0-9a-f]{10}$")
#: a process whose command line holds one of these may own such a topology
OWNERS = re.compile(rb"pytest|broker\.cli|bin/casebroker|\x00bench\.")


def _ancestors() -> set[int]:
    """This process and its parents (a `timeout ... pytest` wrapper is one of us)."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pids


def other_owners() -> list[int]:
    """Other processes that may be using a test, demo or benchmark topology right now."""
    mine, found = _ancestors(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if OWNERS.search(cmdline):
            found.append(int(entry.name))
    return found


def sweep(pg_url: str) -> str:
    """Delete leftovers; say what was done (or why nothing was), for the session header."""
    host = urllib.parse.urlsplit(amqp_url()).hostname
    if not Path("/proc").is_dir() or host not in ("127.0.0.1", "localhost"):
        return "leftover sweep: skipped (RabbitMQ is not this machine's)"
    others = other_owners()
    if others:
        return f"leftover sweep: skipped (other runs may be live: pids {others[:5]})"
    api = Management.from_url(management_url())
    try:
        queues = [q for q in api.names("queues") if LEFTOVER.match(q)]
        exchanges = [x for x in api.names("exchanges") if LEFTOVER.match(x)]
    except ManagementError as e:
        return f"leftover sweep: skipped ({e})"
    if queues or exchanges:
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url()))
        try:
            delete_names(conn.channel(), queues, exchanges)
        finally:
            conn.close()
    schemas: list[str] = []
    engine = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as db:
            names = db.execute(text("SELECT nspname FROM pg_namespace")).scalars()
            schemas = [s for s in names if LEFTOVER_SCHEMA.match(s)]
            for s in schemas:
                db.execute(text(f'DROP SCHEMA "{s}" CASCADE'))
    except Exception as e:  # PostgreSQL is not needed by unit tests: say so, go on
        return (f"leftover sweep: {len(queues)} queues, {len(exchanges)} exchanges "
                f"deleted; schemas skipped ({type(e).__name__})")
    finally:
        engine.dispose()
    return (f"leftover sweep: {len(queues)} queues, {len(exchanges)} exchanges, "
            f"{len(schemas)} schemas deleted")
