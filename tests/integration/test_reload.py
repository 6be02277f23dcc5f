"""Live catalog reload: `casebroker run` as a real process, SIGHUP while dossiers flow.

Checks that nothing is lost, that every dossier is routed consistently with the catalog
version it records (old hash → old agency, new hash → new agency), that everything
published after the reload was acknowledged (metric) uses the new catalog, and that an
invalid catalog is refused, counted, and the last good one keeps serving.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import select

from adapters.demo import stop_process
from broker.amqp import amqp_url
from broker.ledger import Ledger, dossiers
from broker.rules.catalog import load_catalog
from broker.service import delete_topology
from broker.topology import Topology
from tests.conftest import MINI_CATALOG, queue_depth, wait_for
from tests.helpers import Amqp, dossier, free_port

PROCEDURE = "1.004227"  # fixed to T.SO.TP in the mini catalog
OLD_AGENCY, NEW_AGENCY, NEW_RULE = "T.SO.TP", "T.CA", "reload-moves-records"
MOVE_RULE = f"""\
  - id: {NEW_RULE}
    when: {{procedure_code: "{PROCEDURE}"}}
    route: {{agency: {NEW_AGENCY}}}
"""



@dataclass
class Publisher:
    """Publishes dossiers in a thread until stopped; remembers when each was sent."""

    topology: Topology
    interval_s: float = 0.005
    sent: list[tuple[float, str]] = field(default_factory=list)  # (monotonic, submission id)
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Publisher:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        amqp = Amqp()
        try:
            while not self._stop.is_set():
                d = dossier(PROCEDURE, desk_id="T.CENTRE")
                amqp.submit(self.topology, d)  # confirmed before we note it
                self.sent.append((time.monotonic(), str(d.submission_id)))
                time.sleep(self.interval_s)
        except BaseException as e:  # noqa: BLE001 - reported by stop()
            self.error = e
        finally:
            amqp.close()

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=10)
        assert self.error is None, f"publisher failed: {self.error!r}"

    def sent_after(self, t: float) -> set[str]:
        return {sid for at, sid in list(self.sent) if at > t}


@dataclass
class RunProcess:
    """`casebroker run` as a subprocess with its own catalog copy, ledger and metrics port."""

    proc: subprocess.Popen[bytes]
    catalog: Path
    db_url: str
    metrics_port: int
    log: Path

    def metric(self, result: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=2) as r:
            text = r.read().decode()
        m = re.search(rf'^casebroker_catalog_reloads_total\{{result="{result}"\}} (\S+)$', text,
                      re.MULTILINE)
        return float(m.group(1)) if m else 0.0

    def reload(self, result: str) -> float:
        """SIGHUP, then wait until the metric counts the reload; return when we saw it."""
        before = self.metric(result)
        self.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: self.metric(result) > before, 20, f"reload {result}")
        return time.monotonic()

    def rows(self) -> dict[str, tuple[str, str, str]]:
        """submission id → (catalog hash, agency, rule) from the ledger."""
        ledger = Ledger(self.db_url, create=False)
        try:
            with ledger.read() as conn:
                c = dossiers.c
                return {r.submission_id: (r.catalog_hash, r.agency_id, r.rule_id)
                        for r in conn.execute(select(c.submission_id, c.catalog_hash,
                                                     c.agency_id, c.rule_id))}
        finally:
            ledger.dispose()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def running(tmp_path: Path, topology: Topology) -> Iterator[RunProcess]:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_bytes(MINI_CATALOG.read_bytes())
    db_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    port = free_port()
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "run", "--catalog", str(catalog), "--prefix",
             topology.prefix, "--db-url", db_url, "--metrics-port", str(port),
             "--flush-interval-ms", "2"],
            stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
    run = RunProcess(proc, catalog, db_url, port, log)
    try:
        def consuming() -> bool:
            assert proc.poll() is None, f"casebroker run exited:\n{run.log_text()}"
            try:
                conn = Amqp()
            except Exception:  # noqa: BLE001 - not declared yet
                return False
            try:
                ok = conn.ch.queue_declare(topology.intake_queue, passive=True).method
                return bool(ok.consumer_count)
            except Exception:  # noqa: BLE001 - the passive declare closes the channel
                return False
            finally:
                if conn.conn.is_open:
                    conn.close()
        wait_for(consuming, 30, "casebroker run to consume")
        yield run
    finally:
        stop_process(proc, timeout_s=20)
        delete_topology(amqp_url(), topology, load_catalog(MINI_CATALOG))


def test_reload_under_load(running: RunProcess, topology: Topology) -> None:
    old_hash = load_catalog(MINI_CATALOG).content_hash
    publisher = Publisher(topology).start()
    try:
        wait_for(lambda: len(running.rows()) >= 50, 20, "dossiers routed on the old catalog")

        new_text = MINI_CATALOG.read_text(encoding="utf-8").replace("rules:\n",
                                                                   "rules:\n" + MOVE_RULE)
        running.catalog.write_text(new_text, encoding="utf-8")
        new_hash = load_catalog(running.catalog).content_hash
        applied_at = running.reload("applied")
        wait_for(lambda: len(publisher.sent_after(applied_at)) >= 100, 20, "traffic after reload")

        running.catalog.write_text(new_text.replace("route: {agency: T.CA}",
                                                    "route: {agency: T.GHOST}"), encoding="utf-8")
        refused_at = running.reload("refused")
        wait_for(lambda: len(publisher.sent_after(refused_at)) >= 100, 20, "traffic after refusal")
    finally:
        publisher.stop()

    sent = {sid for _, sid in publisher.sent}
    rows = wait_for(lambda: (r := running.rows()) and sent <= set(r) and r, 30,
                    "every dossier in the ledger")
    assert set(rows) == sent, "lost or unexpected dossiers"

    old = (old_hash, OLD_AGENCY, f"procedure:{PROCEDURE}")
    new = (new_hash, NEW_AGENCY, NEW_RULE)
    versions = {sid: rows[sid] for sid in sent}
    assert set(versions.values()) == {old, new}, "a dossier routed inconsistently with its hash"
    after = publisher.sent_after(applied_at)
    assert {versions[sid] for sid in after} == {new}
    assert sum(v == old for v in versions.values()) >= 50

    # transport agrees with the ledger: each agency queue holds exactly its assignments
    # (the ledger commits before the batch is published, so wait for the last publishes)
    expected = (sum(v == old for v in versions.values()), sum(v == new for v in versions.values()))
    wait_for(lambda: (queue_depth(topology.agency_queue(OLD_AGENCY)),
                      queue_depth(topology.agency_queue(NEW_AGENCY))) == expected, 10,
             f"agency queues to hold {expected}")
    assert queue_depth(topology.triage_queue) == 0

    assert running.metric("applied") == 1 and running.metric("refused") == 1
    log = running.log_text()
    assert f"catalog reloaded: {old_hash} -> {new_hash}" in log
    assert "catalog reload refused" in log and "unknown agency T.GHOST" in log
    assert running.proc.poll() is None
    # the catalog in force again: a reload that changes nothing says so
    running.catalog.write_text(new_text, encoding="utf-8")
    running.reload("applied")
    assert f"catalog reloaded: unchanged ({new_hash})" in running.log_text()
