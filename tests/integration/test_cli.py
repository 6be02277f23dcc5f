"""The `casebroker` command as an operator runs it: separate processes, real servers."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.cli import main
from broker.consumers.router import Router
from broker.ledger import Ledger
from broker.messages import DossierSubmitted, encode
from broker.rules.catalog import load_catalog
from broker.rules.engine import Engine
from broker.topology import Topology
from tests.conftest import MINI_CATALOG, queue_depth, wait_for
from tests.helpers import (
    Amqp,
    dossier,
    free_port,
    held_port,
    intake_delivery,
    probe,
)

pytestmark = pytest.mark.integration


def _run(prefix: str, db_url: str, metrics_port: int = 0) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "run", "--catalog", str(MINI_CATALOG),
         "--prefix", prefix, "--db-url", db_url, "--metrics-port", str(metrics_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy())


def _consumers(queue: str) -> int:
    import pika

    from broker.amqp import amqp_url
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url()))
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.consumer_count)
    finally:
        conn.close()


def _stop(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out.decode(errors="replace")


def test_run_routes_then_stops_cleanly_on_sigterm(declared: Topology, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    port = free_port()
    proc = _run(declared.prefix, db_url, port)
    try:
        wait_for(lambda: _consumers(declared.intake_queue) == 1, what="router consuming")
        # what an orchestrator asks (the compose file's health check): consuming both
        ready = wait_for(lambda: (got := probe(port, "/readyz"))[0] == 200 and got[1],
                         what="/readyz answering 200")
        assert ready["problems"] == [] and all(
            q["consuming"] for q in ready["queues"].values()) and len(ready["queues"]) == 2
        assert probe(port, "/livez")[0] == 200
        amqp = Amqp()
        subs = [dossier() for _ in range(300)]
        for d in subs:
            amqp.submit(declared, d)
        amqp.close()
        ledger = Ledger(db_url)
        wait_for(lambda: ledger.count_by_state().get(2) == 300, what="300 routed")
    finally:
        code, log = _stop(proc)
    assert code == 0, log
    assert "stopped" in log
    assert "senders are not checked against RabbitMQ users (CASEBROKER_PARTY_USERS is " \
        "off)" in log  # said at start, whichever way it is
    assert "not acked at close" not in log  # all 300 were acked before it stopped
    assert queue_depth(declared.intake_queue) == 0
    assert queue_depth(declared.agency_queue("T.UBND.A")) == 300
    # personal data never reaches the log
    assert "066090001234" not in log and "Nguyễn Văn An" not in log


def test_a_second_run_or_an_upgrade_on_a_sqlite_ledger_in_use_is_refused(
        declared: Topology, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # several routers need PostgreSQL: on one SQLite file they took turns at its write
    # lock, each batch waiting up to 5 s and then paused as if the ledger were away; and
    # `ledger upgrade` must not change the tables under a running router
    (tmp_path / "by").mkdir()
    db_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    # the same file by another path is the same ledger
    other_path = f"sqlite:///{tmp_path / 'by' / '..' / 'ledger.sqlite3'}"
    as_uri = f"sqlite:///file:{tmp_path / 'ledger.sqlite3'}?uri=true"  # SQLite's URI form
    port = free_port()
    proc = _run(declared.prefix, db_url, port)
    try:
        wait_for(lambda: _consumers(declared.intake_queue) == 1, what="router consuming")
        said = (f"error: another process (pid {proc.pid}) holds the SQLite ledger "
                f"{tmp_path / 'ledger.sqlite3'} for `casebroker run` or `ledger upgrade` "
                "(its lock: ledger.sqlite3.run-lock): one process at a time routes on a "
                "SQLite ledger; several routers need PostgreSQL (--db-url, "
                "CASEBROKER_DB_URL)\n")
        for url in (other_path, as_uri):  # said before the metrics port the first holds
            assert main(["run", "--catalog", str(MINI_CATALOG), "--prefix", declared.prefix,
                         "--db-url", url, "--metrics-port", str(port)]) == 1
            assert capsys.readouterr().err == said
        assert main(["ledger", "upgrade", "--db-url", db_url]) == 1
        assert capsys.readouterr().err == said
        assert main(["ledger", "upgrade", "--dry-run", "--db-url", db_url]) == 0  # reads
        assert _consumers(declared.intake_queue) == 1  # the first one routes on
    finally:
        code, log = _stop(proc)
    assert code == 0, log
    # stopped, it lets go (a killed one too: the kernel drops its lock)
    assert main(["ledger", "upgrade", "--db-url", db_url]) == 0
    assert "is up to date" in capsys.readouterr().out


def _stopped_once_routing(declared: Topology, tmp_path: Path,
                          backlog: list[DossierSubmitted]) -> Ledger:
    """``backlog`` submitted, then `casebroker run` started and stopped (SIGTERM) once it
    has routed the first; its ledger. The stop must be clean and leave nothing unacked."""
    db_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    amqp = Amqp()
    for d in backlog:
        amqp.submit(declared, d)
    amqp.close()
    ledger = Ledger(db_url)
    proc = _run(declared.prefix, db_url)
    try:
        wait_for(lambda: ledger.count_by_state().get(2, 0) > 0, what="the first routed")
    finally:
        code, log = _stop(proc)
    assert code == 0, log
    assert "not acked at close" not in log, log
    return ledger


def test_a_stop_during_a_backlog_handles_what_the_router_received(
        declared: Topology, tmp_path: Path) -> None:
    # its prefetch window went back to the queue unhandled at each stop, every delivery a
    # step nearer its delivery limit (20): a router restarted during a backlog sent good
    # dossiers towards dead.intake (found by a review). Within the grace, what it
    # received is handled and acked first
    # waiting before the router starts: all in its window (2,000)
    ledger = _stopped_once_routing(declared, tmp_path, [dossier() for _ in range(1200)])
    assert ledger.count_by_state() == {2: 1200}
    assert queue_depth(declared.intake_queue) == 0
    assert queue_depth(declared.agency_queue("T.UBND.A")) == 1200


def test_a_stop_takes_the_large_dossiers_still_coming_instead_of_rejecting_them(
        declared: Topology, tmp_path: Path) -> None:
    # what RabbitMQ had sent before it read the router's cancel, and the router read from
    # its socket after sending it, pika rejected back to the queue: with dossiers of 100
    # KB, 216 of 240 in a run, each a step nearer its delivery limit. Handled instead
    documents = [{"name": f"trang-{i}.pdf", "uri": f"s3://docs/{i:03d}/" + "x" * 980,
                  "sha256": "a" * 64, "size": 1000, "media_type": "application/pdf"}
                 for i in range(100)]
    ledger = _stopped_once_routing(declared, tmp_path,
                                   [dossier(documents=documents) for _ in range(240)])
    routed = ledger.count_by_state().get(2, 0)
    left = Amqp().get_all(declared.intake_queue)
    assert routed + len(left) == 240
    # every dossier left in the queue was never delivered, or was and is not counted
    assert [props.headers.get("x-delivery-count") for props, _ in left
            if props.headers and props.headers.get("x-delivery-count")] == []


def test_run_logs_json_lines_for_a_log_shipper(declared: Topology, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "broker.cli", "run", "--catalog", str(MINI_CATALOG),
           "--prefix", declared.prefix, "--db-url", f"sqlite:///{tmp_path / 'l.sqlite3'}",
           "--metrics-port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "CASEBROKER_LOG_FORMAT": "json"})
    try:
        wait_for(lambda: _consumers(declared.intake_queue) == 1, what="router consuming")
        amqp = Amqp()
        amqp.submit(declared, dossier(applicant_ward="99999"))  # triaged
        amqp.close()
        wait_for(lambda: queue_depth(declared.triage_queue) == 1, what="the triaged dossier")
    finally:
        code, log = _stop(proc)
    assert code == 0, log
    entries = [json.loads(line) for line in log.splitlines()]  # every line one object
    assert all(set(e) == {"time", "level", "logger", "thread", "message"} for e in entries)
    said = {(e["level"], e["logger"], e["thread"], e["message"]) for e in entries}
    assert ("INFO", "broker.amqp", "MainThread", f"consuming {declared.intake_queue}") in said
    assert ("INFO", "broker.service", "MainThread", "stopped") in said
    assert "066090001234" not in log and "Nguy" not in log  # personal data: not in any form


def test_run_starts_through_the_next_node_when_the_first_is_down(
        declared: Topology, tmp_path: Path) -> None:
    """The topology is declared, and the deadline watch publishes, through the first of
    CASEBROKER_AMQP_URL's nodes that answers, as the consumers connect; a node down at
    start does not stop the service. With none up, one line says so."""
    from broker.amqp import amqp_url

    port = free_port()
    down = f"amqp://guest:s3cret@127.0.0.1:{port}/"
    db_url = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    # a dossier received two weeks ago (one working day given) is overdue in the ledger:
    # the watch's first round has a notice to send
    received = datetime.now(UTC) - timedelta(days=14)
    ledger = Ledger(db_url)
    engine = Engine(load_catalog(MINI_CATALOG))
    out = Router(lambda: engine, ledger, declared, clock=lambda: received).handle(
        [intake_delivery(1, encode(dossier(submitted_at=received.isoformat())), "submit:1")])
    overdue = json.loads(out[-1].body)["dossier_code"]
    ledger.dispose()
    env = {**os.environ, "CASEBROKER_AMQP_URL": f"{down},{amqp_url()}",
           "CASEBROKER_DEADLINE_INTERVAL_S": "0.5"}
    cmd = [sys.executable, "-m", "broker.cli", "run", "--catalog", str(MINI_CATALOG),
           "--prefix", declared.prefix, "--db-url", db_url, "--metrics-port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    amqp = Amqp()
    try:
        wait_for(lambda: _consumers(declared.intake_queue) == 1, what="router consuming")
        (notice,) = wait_for(lambda: amqp.json_all(declared.agency_queue("T.UBND.A")),
                             what="the watch's overdue notice")
        assert (notice["notice"], notice["dossier_code"]) == ("overdue", overdue)
    finally:
        amqp.close()
        code, log = _stop(proc)
    assert code == 0, log
    assert f"WARNING broker.amqp: cannot connect to RabbitMQ at 127.0.0.1:{port}: " \
        "AMQPConnectionWorkflowFailed" in log and "not connected; connecting to" in log
    assert "connected to RabbitMQ at" in log and "s3cret" not in log
    assert "ERROR pika" not in log and "Traceback" not in log, log
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "CASEBROKER_AMQP_URL": down})
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: RabbitMQ unreachable at {down.replace(':s3cret@', ':***@')} "
        "(CASEBROKER_AMQP_URL): AMQPConnectorSocketConnectError: "
        "ConnectionRefusedError(111, 'Connection refused')"]


def test_shutdown_while_the_ledger_is_locked_acks_nothing(declared: Topology,
                                                          tmp_path: Path) -> None:
    """Work that could not be committed is not acked: it is all back in the queue."""
    db_path = tmp_path / "ledger.sqlite3"
    db_url = f"sqlite:///{db_path}"
    Ledger(db_url).dispose()  # create the schema
    lock = sqlite3.connect(db_path, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # the router's commits now fail: the ledger is "away"
    proc = _run(declared.prefix, db_url)
    try:
        wait_for(lambda: _consumers(declared.intake_queue) == 1, what="router consuming")
        amqp = Amqp()
        for _ in range(50):
            amqp.submit(declared, dossier())
        amqp.close()
        time.sleep(7)  # longer than the 5 s busy timeout: at least one failed attempt
    finally:
        code, log = _stop(proc)
    lock.execute("ROLLBACK")
    lock.close()
    assert code == 0, log
    assert "paused" in log  # it noticed, and retried rather than crashing
    # stopped while paused: what it held is said to go back, none of it acked
    assert log.count(".intake: 50 deliveries not acked at close go back to the queue") == 1, log
    assert queue_depth(declared.intake_queue) == 50  # requeued, none acked
    assert Ledger(db_url).count_by_state() == {}
    assert queue_depth(declared.agency_queue("T.UBND.A")) == 0

    # the ledger is back: a new router processes every one of them exactly once
    proc = _run(declared.prefix, db_url)
    try:
        ledger = Ledger(db_url)
        wait_for(lambda: ledger.count_by_state().get(2) == 50, what="50 routed")
        wait_for(lambda: queue_depth(declared.intake_queue) == 0, what="intake drained")
    finally:
        code, log = _stop(proc)
    assert code == 0, log
    assert queue_depth(declared.agency_queue("T.UBND.A")) == 50


def test_rules_explain_and_check_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                            ) -> None:
    good = tmp_path / "d.json"
    good.write_text(dossier("1.001193", desk_id="T.MC.B").model_dump_json(by_alias=True))
    assert main(["rules", "explain", str(good), "--catalog", str(MINI_CATALOG), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["agency_id"] == "T.UBND.A" and out["boundary_free"] is True
    assert set(out) >= {"agency_id", "rule_id", "boundary_free", "due_at", "catalog_hash"}

    for kw, word in ((dict(procedure_code="9.999999"), "procedure"),
                     (dict(desk_id="T.NOWHERE"), "desk"),
                     (dict(applicant_ward="99999"), "area")):
        bad = tmp_path / "bad.json"
        bad.write_text(dossier(**kw).model_dump_json(by_alias=True))
        assert main(["rules", "explain", str(bad), "--catalog", str(MINI_CATALOG)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and word in err

    assert main(["rules", "check", str(MINI_CATALOG)]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {MINI_CATALOG}: 7 procedures, 6 agencies")
    broken = tmp_path / "broken.yaml"
    broken.write_text(MINI_CATALOG.read_text().replace("T.SO.TP}", "T.SO.NOPE}", 1))
    assert main(["rules", "check", str(broken)]) == 1
    assert "unknown agency T.SO.NOPE" in capsys.readouterr().err


def test_demo_main_job_counts_every_dossier() -> None:
    """The README's main job, small: the shipped catalog, a real router process."""
    result = subprocess.run([sys.executable, "-m", "broker.cli", "demo", "--dossiers", "150",
                             "--json"], capture_output=True, timeout=300,
                            env=os.environ.copy())
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    lines = result.stdout.decode().strip().splitlines()
    assert len(lines) == 1  # exactly one JSON object
    s = json.loads(lines[0])
    assert s["submitted"] == 150 and s["returned"] == 150 and s["resolved"] == 150
    assert s["routed"] == 150 and s["lost"] == 0 and s["duplicates"] == 0
    assert s["dead_lettered"] == 0 and s["triaged"] == 0
    assert 0 < s["boundary_free_share"] < 1
    assert 0 < s["receipt_latency_ms"]["p50"] <= s["receipt_latency_ms"]["p99"]
    assert s["elapsed_s"] > 0 and s["offered_per_s"] == 0


def test_demo_never_writes_into_a_working_ledger(tmp_path: Path) -> None:
    """On a host running casebroker, CASEBROKER_DB_URL names the working ledger: the demo
    does not read it (its router would number dossiers there and take the deadline
    notices of the open ones), and a ledger given with --db-url must be empty."""
    working = Ledger(f"sqlite:///{tmp_path / 'working.sqlite3'}")
    router = Router(lambda: Engine(load_catalog(MINI_CATALOG)), working, Topology("t"))
    d = dossier()
    router.handle([intake_delivery(1, encode(d), f"submit:{d.submission_id}")])

    def rows() -> dict[str, int]:
        with sqlite3.connect(tmp_path / "working.sqlite3") as conn:
            return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                    for t in ("inbox", "outbox", "dossiers", "events", "code_sequences")}

    before = rows()
    assert before["dossiers"] == 1
    demo = [sys.executable, "-m", "broker.cli", "demo", "--dossiers", "5", "--json",
            "--catalog", str(MINI_CATALOG)]
    result = subprocess.run(demo, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "CASEBROKER_DB_URL": working.url})
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["returned"] == 5
    assert rows() == before  # its five dossiers went to a throw-away ledger
    result = subprocess.run([*demo, "--db-url", working.url], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    assert f"error: the ledger at {working.url} already holds dossiers or deliveries" \
        in result.stderr and "Traceback" not in result.stderr
    assert rows() == before
    empty = f"sqlite:///{tmp_path / 'empty.sqlite3'}"  # no ledger yet: made there
    result = subprocess.run([*demo, "--db-url", empty], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert Ledger(empty, create=False).count_by_state() == {10: 5}


def test_run_refuses_a_taken_metrics_port_in_words(tmp_path: Path) -> None:
    with held_port() as port:
        result = subprocess.run(
            [sys.executable, "-m", "broker.cli", "run", "--catalog", str(MINI_CATALOG),
             "--prefix", "cbportcheck", "--db-url", f"sqlite:///{tmp_path / 'l.sqlite3'}",
             "--metrics-port", str(port)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"error: cannot serve metrics on 127.0.0.1:{port}: Address already in use" \
        in result.stderr
    assert "Traceback" not in result.stderr
    # said before the ledger is opened: no empty new ledger left behind to puzzle over
    assert not (tmp_path / "l.sqlite3").exists()


def test_run_refuses_a_broken_catalog_before_it_makes_a_ledger(tmp_path: Path) -> None:
    broken = tmp_path / "catalog.yaml"
    broken.write_text(MINI_CATALOG.read_text(encoding="utf-8").replace(
        "working_days", "workin_days", 1), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "broker.cli", "run", "--catalog", str(broken),
         "--prefix", "cbcatcheck", "--db-url", f"sqlite:///{tmp_path / 'l.sqlite3'}",
         "--metrics-port", "0"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: 1 problem(s) in catalog\n")
    assert re.search(r"catalog\.yaml:\d+: procedures\.0\.processing\.unit: ", result.stderr)
    assert not (tmp_path / "l.sqlite3").exists()


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql+psycopg://casebroker:s3cret@127.0.0.1:1/ledger",
     "postgresql+psycopg://casebroker:***@127.0.0.1:1/ledger"),
    # libpq's password in the query: SQLAlchemy's hide_password leaves it
    ("postgresql+psycopg://casebroker@127.0.0.1:1/ledger?password=s3cret",
     "postgresql+psycopg://casebroker@127.0.0.1:1/ledger?password=***")])
def test_run_names_a_ledger_it_cannot_reach_and_hides_its_password(url: str, shown: str
                                                                     ) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "broker.cli", "run", "--catalog", str(MINI_CATALOG),
         "--prefix", "cbledgercheck", "--metrics-port", "0", "--db-url", url],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"error: ledger unavailable at {shown}: " in result.stderr
    assert "s3cret" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [
    ("demo", "--dossiers", "10"), ("bench", "--dossiers", "10"),
    ("dead-letters", "list"), ("topology", "declare"),
    # `run` keeps pika's warnings and errors, but not its guess at a refused login
    ("run", "--metrics-port", "0", "--db-url", "sqlite:///:memory:")])
def test_rabbitmq_out_of_reach_or_refusing_the_login_is_one_line(
        command: tuple[str, ...]) -> None:
    # as an operator sees it, in a process of its own: in a test's process pika's log
    # goes to pytest, not to stderr, so its traceback per failed connection would not show
    cases = {
        f"amqp://guest:s3cret@127.0.0.1:{free_port()}/": "RabbitMQ unreachable at "
                                                        "amqp://guest:***@127.0.0.1:",
        f"amqp://guest:s3cret-{os.getpid()}@127.0.0.1:5672/": "RabbitMQ at "
            "amqp://guest:***@127.0.0.1:5672/ refused the login (CASEBROKER_AMQP_URL): ",
    }
    for url, said in cases.items():
        result = subprocess.run(
            [sys.executable, "-m", "broker.cli", *command], capture_output=True, text=True,
            timeout=60, env={**os.environ, "CASEBROKER_AMQP_URL": url,
                             "CASEBROKER_PREFIX": "cbreachcheck"})
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith(f"error: {said}") and result.stderr.count("\n") == 1
        assert "s3cret" not in result.stderr + result.stdout


def test_dossier_show_finds_a_submission_by_its_id_whether_it_opened_a_dossier_or_not(
        ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    # a desk asks after what it sent, by the submission id it has
    engine = Engine(load_catalog(MINI_CATALOG))
    router = Router(lambda: engine, ledger, Topology("t"))
    routed, lost = dossier(), dossier(applicant_ward="99999")  # a ward no unit serves
    broken = json.loads(encode(dossier()))
    broken["applicant"]["ward_code"] = "ward 1"  # outside the contract
    router.handle([intake_delivery(1, encode(routed), f"submit:{routed.submission_id}"),
                   intake_delivery(2, encode(lost), f"submit:{lost.submission_id}"),
                   intake_delivery(3, json.dumps(broken).encode(), "desk-system-7")])

    def show(*args: str) -> tuple[int, str, str]:
        rc = main(["dossier", "show", *args, "--db-url", ledger.url])
        out, err = capsys.readouterr()
        return rc, out, err

    rc, out, _ = show(str(routed.submission_id))
    assert rc == 0 and "received (2)" in out and "desk T.MC.B" in out
    # corrected, sent again under the same message id and triaged again: both shown, by
    # the id each waits under in the triage queue
    again = lost.model_copy(update={"procedure_code": "9.999999"})
    router.handle([intake_delivery(4, encode(again), f"submit:{lost.submission_id}")])
    rc, out, _ = show(str(lost.submission_id))
    assert rc == 0 and f"submission {lost.submission_id}: no dossier opened" in out
    lines = [line.split() for line in out.splitlines() if line.startswith("  20")]
    assert [(w[2], w[4]) for w in lines] == [
        ("triaged:area_not_served", f"submit:{lost.submission_id}"),
        ("triaged:unknown_procedure", f"submit:{lost.submission_id}")]
    # dead-lettered under a message id of its desk's own, found by the body it kept
    rc, out, _ = show(broken["submission_id"], "--json")
    shown = json.loads(out)
    assert rc == 0 and shown["dossier"] is None
    assert [(d["message_id"], d["outcome"]) for d in shown["deliveries"]] == [
        ("desk-system-7", "dead:invalid_fields")]
    # its times as every other --json writes them (a review: "2026-12-01 21:34:31+00:00")
    assert datetime.fromisoformat(shown["deliveries"][0]["processed_at"]).isoformat() == (
        shown["deliveries"][0]["processed_at"])
    assert "066090001234" not in out and "Nguyễn" not in out  # no personal data
    rc, out, err = show(str(uuid.uuid4()))
    assert rc == 1 and out == "" and "no dead-lettered or triaged delivery" in err
    # a ledger of a version before refusals from triage (a newer command line on it)
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE refusals")
    rc, out, _ = show(str(lost.submission_id))
    assert rc == 0 and f"submission {lost.submission_id}: no dossier opened" in out


def test_a_queue_that_takes_a_message_while_the_topology_goes_down_is_left_with_it(
        amqp: Amqp, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # found by a review: checked, then deleted, the intake queue lost what a desk
    # published in between; now its exchanges go first and each queue is looked at again
    from broker.amqp import amqp_url
    from broker.ops import teardown
    from broker.service import declare_topology, delete_topology

    t, mini = Topology(f"t{uuid.uuid4().hex[:10]}"), load_catalog(MINI_CATALOG)
    declare_topology(amqp_url(), t, mini)
    looked: dict[str, int] = {}
    state = teardown.queue_state

    def meanwhile(ch: Any, queue: str) -> Any:
        looked[queue] = looked.get(queue, 0) + 1
        if queue == t.intake_queue and looked[queue] == 2:  # after the first look
            amqp.publish("", queue, b"{}", message_id="in-between")
            wait_for(lambda: queue_depth(queue) == 1)
        return state(ch, queue)

    monkeypatch.setattr(teardown, "queue_state", meanwhile)
    try:
        assert teardown.delete(t, mini, "http://guest:guest@127.0.0.1:15672", False) == 1
        out, err = capsys.readouterr()
        assert out == f"deleted 18 queues and the exchanges under {t.prefix!r}\n"
        assert err == (f"  {t.intake_queue}: 1 message(s), 0 consumer(s)\n"
                       "error: 1 queue(s) took messages or consumers while the topology was "
                       "taken down, and were left with them; its exchanges are gone "
                       "(`topology declare` restores them)\n")
        assert queue_depth(t.intake_queue) == 1
    finally:
        delete_topology(amqp_url(), t, mini)


def test_topology_delete_keeps_what_queues_hold_unless_forced(
        amqp: Amqp, capsys: pytest.CaptureFixture[str]) -> None:
    # found by a review: it deleted queues with what they held (assignments, held
    # dossiers) and said all was well; declared from another catalog, it left that
    # catalog's queues behind, messages and all, and said the topology was deleted
    from broker.amqp import amqp_url
    from broker.security import Management
    from broker.service import declare_topology, delete_topology
    from tests.helpers import cli

    t, mini = Topology(f"t{uuid.uuid4().hex[:10]}"), load_catalog(MINI_CATALOG)
    extra = f"{t.prefix}.agency.T.GONE"  # an agency since dropped from the catalog
    declare_topology(amqp_url(), t, mini)
    try:
        amqp.ch.queue_declare(extra, durable=True, arguments={"x-queue-type": "quorum"})
        amqp.publish("", extra, b"{}", message_id="waiting-1")
        amqp.publish(t.agency_exchange, "T.UBND.A", b"{}", message_id="waiting-2")
        wait_for(lambda: queue_depth(extra) == queue_depth(t.agency_queue("T.UBND.A")) == 1)
        rc, out, err = cli(capsys, t, "topology", "delete", "--catalog", str(MINI_CATALOG))
        assert rc == 1 and out == ""
        assert f"  {t.agency_queue('T.UBND.A')}: 1 message(s), 0 consumer(s)\n" in err
        assert f"  {extra}: 1 message(s), 0 consumer(s)\n" in err
        assert err.endswith("Nothing was deleted\n")
        assert queue_depth(t.intake_queue) == 0 and queue_depth(extra) == 1  # all there
        # without the management API it cannot see T.GONE: it deletes nothing
        rc, out, err = cli(capsys, t, "topology", "delete", "--catalog", str(MINI_CATALOG),
                           "--force", "--management-url", f"http://127.0.0.1:{free_port()}")
        assert rc == 1 and out == "" and err.endswith("Nothing was deleted\n"), err
        assert queue_depth(extra) == 1 and queue_depth(t.intake_queue) == 0
        rc, out, err = cli(capsys, t, "topology", "delete", "--catalog", str(MINI_CATALOG),
                           "--force")
        assert rc == 0 and out == (f"deleted 20 queues and the exchanges under {t.prefix!r} "
                                   "(2 message(s) with them)\n"), err
        api = Management()
        assert [n for n in api.names("queues") + api.names("exchanges")
                if n.startswith(t.prefix + ".")] == []
        # again (or under a mistyped prefix): nothing there, said so, and no failure
        rc, out, err = cli(capsys, t, "topology", "delete", "--catalog", str(MINI_CATALOG))
        assert rc == 0 and out == (f"no queue under {t.prefix!r} to delete (its exchanges, "
                                   "if it had any, are deleted): is that the prefix meant? "
                                   "--prefix, CASEBROKER_PREFIX\n")
    finally:
        delete_topology(amqp_url(), t, mini)
        amqp.ch.queue_delete(extra)


def test_a_backdated_dossier_s_sheet_starts_when_its_desk_received_it(
        ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    # a dossier its desk sent days after receiving it: the sheet's first line, its
    # receipt, was dated when casebroker recorded it, after the updates dated since by
    # their senders (found by a review). It is dated when the desk received it, and says
    # when it was recorded
    engine = Engine(load_catalog(MINI_CATALOG))
    now = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
    router = Router(lambda: engine, ledger, Topology("t"), clock=lambda: now)
    sent = dossier()  # submitted 2026-11-25 02:00 UTC: two days before
    (_, receipt) = router.handle([intake_delivery(1, encode(sent), "submit:1")])
    code = json.loads(receipt.body)["dossier_code"]
    (first,) = ledger.history(code)
    assert first["at"] == sent.submitted_at
    assert first["detail"]["recorded_at"] == now.isoformat()
    assert main(["dossier", "show", code, "--db-url", ledger.url]) == 0
    out = capsys.readouterr().out
    assert ("1 2026-11-25 09:00:00  received           1->2  by T.MC.B   -> T.UBND.A  "
            "(recorded 2026-11-27 09:00)") in out, out
