"""Remove what killed test, demo and benchmark runs left on the shared RabbitMQ, and the
servers of their own the fault suite started.

Every test declares its queues under a random prefix and deletes them at teardown; a
run killed mid-test cannot, and its quorum queues stay. Enough of them (each holds
file handles) exhaust the node's file limit and RabbitMQ stops answering. So a test
session starts by deleting queues and exchanges under the random prefixes the tests,
``casebroker demo`` and ``casebroker bench`` make, and the PostgreSQL schemas the
ledger fixture makes, but only when no other test, demo, benchmark or ``casebroker``
process is running on this machine: theirs may be live. Names under any other prefix
(an operator's, a helper's) are never touched.

The fault suite (tests/faults) runs RabbitMQ nodes and a PostgreSQL server of its own,
each in a ``casebroker-faults-*`` temporary directory, and routers (``casebroker run``)
pointed at them, marked by :data:`FAULT_RUN_ENV` in their environment; it stops them all
at teardown. A run killed before that leaves them running, the routers retrying their
vanished servers for ever. Under the same condition the sweep stops the RabbitMQ nodes
and PostgreSQL servers whose command line names such a directory (nothing else that
names one: an operator's `tail -f` of a log there) and every process whose environment
has the mark, and removes the directories. A marked router is not an owner: without a
test run, it is a stray.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
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
#: what tests/faults/servers.py names its temporary directories
FAULT_DIR_PREFIX = "casebroker-faults-"
#: in the environment of every router the fault suite starts (tests/faults/harness.py)
FAULT_RUN_ENV = "CASEBROKER_FAULT_RUN"
#: the servers the fault suite starts: only these are stopped for naming its directory
#: (not an operator's `tail -f` of a log in it, nor a copy of it being made)
FAULT_SERVERS = frozenset({"beam.smp", "postgres", "postmaster"})


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


def _fault_router(pid: int, mark: str = FAULT_RUN_ENV) -> bool:
    """Whether the process is a router the fault suite started (its environment has
    ``mark``)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return b"\x00" + mark.encode() + b"=" in b"\x00" + environ


def _others() -> Iterator[tuple[int, bytes]]:
    """Every other process but this one's ancestors: (pid, command line)."""
    mine = _ancestors()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            yield int(entry.name), (entry / "cmdline").read_bytes()
        except OSError:
            continue


def other_owners() -> list[int]:
    """Other processes that may be using a test, demo or benchmark topology right now
    (not the fault suite's routers: strays once no test run is left)."""
    return [pid for pid, cmdline in _others()
            if OWNERS.search(cmdline) and not _fault_router(pid)]


def stray_servers(base: Path | None = None,
                  mark: str = FAULT_RUN_ENV) -> list[tuple[int, str]]:
    """Processes (pid, program) the fault suite started: RabbitMQ nodes and PostgreSQL
    servers whose command line names one of its directories under ``base`` (default:
    the temporary directory; ``beam.smp`` has the node's directories among its
    arguments, ``postgres`` its ``-D``), and routers, by the mark in their environment."""
    marker = str(base or Path(tempfile.gettempdir())).encode() + b"/" + FAULT_DIR_PREFIX.encode()
    found = []
    for pid, cmdline in _others():
        program = Path(cmdline.split(b"\x00")[0].decode(errors="replace")).name
        if ((program in FAULT_SERVERS and marker in cmdline)
                or (cmdline and _fault_router(pid, mark))):
            found.append((pid, program))
    return found


def stop_stray_servers(base: Path | None = None, wait_s: float = 20,
                       mark: str = FAULT_RUN_ENV) -> tuple[int, int]:
    """Stop what :func:`stray_servers` finds and remove the fault-suite directories under
    ``base``; return (processes stopped, directories removed). PostgreSQL gets SIGQUIT
    (an immediate shutdown: its backends go with it), anything else SIGKILL."""
    root = base or Path(tempfile.gettempdir())
    stopped = stray_servers(root, mark)
    for pid, program in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT if program in ("postgres", "postmaster")
                    else signal.SIGKILL)
    deadline = time.monotonic() + wait_s
    while stray_servers(root, mark) and time.monotonic() < deadline:
        time.sleep(0.2)
    if stray_servers(root, mark):  # still there: leave their directories alone
        return len(stopped), 0
    dirs = [d for d in root.glob(f"{FAULT_DIR_PREFIX}*") if d.is_dir()]
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
    return len(stopped), len(dirs)


def sweep(pg_url: str) -> str:
    """Delete leftovers; say what was done (or why nothing was), for the session header."""
    host = urllib.parse.urlsplit(amqp_url()).hostname
    if not Path("/proc").is_dir() or host not in ("127.0.0.1", "localhost"):
        return "leftover sweep: skipped (RabbitMQ is not this machine's)"
    others = other_owners()
    if others:
        return f"leftover sweep: skipped (other runs may be live: pids {others[:5]})"
    servers, dirs = stop_stray_servers()
    said = (f"; {servers} fault-suite server processes stopped, {dirs} directories removed"
            if servers or dirs else "")
    api = Management.from_url(management_url())
    try:
        queues = [q for q in api.names("queues") if LEFTOVER.match(q)]
        exchanges = [x for x in api.names("exchanges") if LEFTOVER.match(x)]
    except ManagementError as e:
        return f"leftover sweep: skipped ({e}){said}"
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
                f"deleted; schemas skipped ({type(e).__name__}){said}")
    finally:
        engine.dispose()
    return (f"leftover sweep: {len(queues)} queues, {len(exchanges)} exchanges, "
            f"{len(schemas)} schemas deleted{said}")
