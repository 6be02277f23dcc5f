"""Fixtures of the fault suite: private RabbitMQ nodes and PostgreSQL, started once a session.

Nothing here touches the system RabbitMQ (5672) or PostgreSQL (5432). Every
private server gets free ports and a node name of its own per session, so two
sessions (two developers running ``pytest -q``) never meet. A single node, a
three-node cluster (started only when a test asks), one PostgreSQL.
``CASEBROKER_FAULTS_FIGURES=path.json`` writes the figures each scenario recorded
(tests/conftest.py, which also prints them after the run, from whichever worker ran them).
"""

from __future__ import annotations

import dataclasses
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.harness import FIGURES, Scenario
from tests.faults.servers import PgServer, RabbitCluster, RabbitNode, make_base_dir, unique_name


@pytest.fixture(scope="session")
def fault_base() -> Iterator[Path]:
    base = make_base_dir()
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def _rabbit_node(fault_base: Path) -> Iterator[RabbitNode]:
    node = RabbitNode(unique_name("cbf"), fault_base, uuid.uuid4().hex.upper())
    try:
        node.start()
        yield node
    finally:
        node.kill()


@pytest.fixture
def rabbit(_rabbit_node: RabbitNode) -> RabbitNode:
    """The private single node, running (a scenario that stopped it has it back)."""
    if not _rabbit_node.alive() or not _rabbit_node.accepts_amqp():
        _rabbit_node.kill()
        _rabbit_node.start()
    return _rabbit_node


@pytest.fixture(scope="session")
def cluster(fault_base: Path) -> Iterator[RabbitCluster]:
    """Three private nodes in one cluster (started only if a test asks)."""
    c = RabbitCluster(fault_base, [unique_name(f"cbf{x}") for x in "abc"])
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def _pg_server(fault_base: Path) -> Iterator[PgServer]:
    pg = PgServer(fault_base)
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        pg.cleanup()


@pytest.fixture
def pg(_pg_server: PgServer) -> PgServer:
    """The private PostgreSQL, running."""
    if not _pg_server.ready():
        _pg_server.start()
    return _pg_server


@pytest.fixture
def scenario(pg: PgServer, tmp_path: Path) -> Iterator[Callable[..., Scenario]]:
    """Make a Scenario on given broker URLs with a fresh ledger database; kill its routers."""
    made: list[Scenario] = []

    def make(urls: list[str], name: str) -> Scenario:
        db = pg.create_database(f"f{uuid.uuid4().hex[:10]}")
        s = Scenario(urls, db, tmp_path, name)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under pytest-xdist, a worker hands its scenarios' figures to the controller, which
    prints and writes them (tests/conftest.py); run alone, this process does."""
    if FIGURES and hasattr(session.config, "workeroutput"):
        session.config.workeroutput["fault_figures"] = [
            dataclasses.asdict(f) for f in FIGURES]
