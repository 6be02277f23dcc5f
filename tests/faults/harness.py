"""Load, routers and the end-of-scenario invariants shared by every fault scenario.

    Load        a pika publisher with pipelined confirms; republishes whatever was not
                confirmed when its connection dropped (same message id), so desks are
                at-least-once, like the SDK
    RouterProc  `casebroker run` as a subprocess: start, wait until consuming, SIGKILL
    Scenario    one topology prefix and one ledger database on the private servers;
                sends traffic, plays the agencies, and checks the invariants
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pika
from pika.adapters.select_connection import SelectConnection
from pika.spec import Basic, BasicProperties

from adapters.demo import stop_process
from broker.amqp import REASON_HEADER, SOURCE_HEADER
from broker.ledger import Ledger
from broker.messages import DossierStatus, encode
from broker.ops.audit import audit
from broker.topology import INTAKE_KEY, STATUS_KEY, Topology
from tests.helpers import dossier
from tests.sweep import FAULT_RUN_ENV

ROOT = Path(__file__).resolve().parents[2]
MINI_CATALOG = ROOT / "tests" / "fixtures" / "mini.yaml"
#: (procedure, intake desk, applicant ward) → competent agency in the mini catalog
TRAFFIC = [("1.001193", "T.MC.B", "10001"), ("1.001193", "T.MC.A", "10002"),
           ("1.004227", "T.PORTAL", "10001"), ("2.000815", "T.MC.A", "10001"),
           ("1.001193", "T.CENTRE", "10002")]
AGENCIES = ["T.UBND.A", "T.UBND.B", "T.SO.TP", "T.SO.NNMT", "T.CA", "T.BHXH"]
DESKS = ["T.MC.A", "T.MC.B", "T.CENTRE", "T.PORTAL", "T.BANK"]


@dataclass(frozen=True, slots=True)
class Msg:
    """One message a desk or agency sends."""

    exchange: str
    routing_key: str
    body: bytes
    message_id: str | None
    type: str | None = None
    content_type: str | None = "application/json"

    def properties(self) -> BasicProperties:
        return BasicProperties(content_type=self.content_type, delivery_mode=2,
                               message_id=self.message_id, type=self.type)


class Load:
    """Publishes a list of messages with pipelined confirms, across broker outages."""

    def __init__(self, urls: list[str], messages: list[Msg], *, window: int = 1000,
                 rate_per_s: float = 0.0) -> None:
        self.urls = urls
        self.messages = messages
        self.window = window
        self.rate_per_s = rate_per_s
        self.confirmed = 0
        self.reconnects = 0
        self.republished = 0
        self.error: BaseException | None = None
        self._todo = list(range(len(messages)))[::-1]  # a stack: pop() is the next one
        self._unconfirmed: dict[int, int] = {}
        self._seq = 0
        self._started = 0.0
        self._sent = 0
        self._conn: SelectConnection | None = None
        self._channel: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="load")

    @property
    def done(self) -> bool:
        return self.confirmed >= len(self.messages)

    def start(self) -> Load:
        self._started = time.monotonic()
        self.thread.start()
        return self

    def join(self, timeout_s: float = 300) -> None:
        self.thread.join(timeout_s)
        if self.error is not None:
            raise self.error
        assert self.done, f"load: {self.confirmed} of {len(self.messages)} confirmed"

    def run(self) -> None:
        """Publish everything in this thread."""
        self._started = time.monotonic()
        self._run()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        attempt = 0
        deadline = time.monotonic() + 600
        try:
            while not self.done and time.monotonic() < deadline:
                url = self.urls[attempt % len(self.urls)]
                attempt += 1
                params = pika.URLParameters(url)
                params.connection_attempts = 1
                params.socket_timeout = 3
                self._conn = SelectConnection(params, on_open_callback=self._on_open,
                                              on_open_error_callback=self._on_error,
                                              on_close_callback=self._on_closed)
                self._conn.ioloop.start()
                if not self.done:
                    self.reconnects += 1
                    time.sleep(0.5)
        except BaseException as e:  # noqa: BLE001 - surfaced by join()
            self.error = e

    def _on_open(self, conn: SelectConnection) -> None:
        conn.channel(on_open_callback=self._on_channel)

    def _on_error(self, conn: SelectConnection, _err: BaseException) -> None:
        conn.ioloop.stop()

    def _on_closed(self, conn: SelectConnection, _reason: BaseException) -> None:
        # whatever was not confirmed is sent again: same message id, receivers dedupe
        lost = list(self._unconfirmed.values())
        self.republished += len(lost)
        self._todo.extend(sorted(lost, reverse=True))
        self._unconfirmed.clear()
        self._channel = None
        conn.ioloop.stop()

    def _on_channel(self, channel: Any) -> None:
        self._channel = channel
        self._seq = 0
        channel.add_on_close_callback(lambda _c, _r: self._conn and self._conn.is_open
                                      and self._conn.close())
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(self._on_confirm, callback=lambda _f: self._pump())

    def _on_return(self, _ch: Any, _m: Any, props: BasicProperties, _b: bytes) -> None:
        # unroutable (e.g. no queue leader yet): close the channel so it is sent again
        if self._conn is not None and self._conn.is_open:
            self._conn.close()

    def _pump(self) -> None:
        ch = self._channel
        if ch is None or not ch.is_open:
            return
        while self._todo and len(self._unconfirmed) < self.window:
            if self.rate_per_s and self._sent >= (time.monotonic() - self._started) \
                    * self.rate_per_s:
                assert self._conn is not None
                self._conn.ioloop.call_later(0.01, self._pump)
                return
            i = self._todo.pop()
            m = self.messages[i]
            ch.basic_publish(m.exchange, m.routing_key, m.body, m.properties(), mandatory=True)
            self._seq += 1
            self._sent += 1
            self._unconfirmed[self._seq] = i

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        tags = ([t for t in self._unconfirmed if t <= method.delivery_tag] if method.multiple
                else [method.delivery_tag])
        nacked = isinstance(method, Basic.Nack)
        for t in tags:
            i = self._unconfirmed.pop(t, None)
            if i is None:
                continue
            if nacked:
                self._todo.append(i)
            else:
                self.confirmed += 1
        if self.done and self._conn is not None:
            self._conn.close()
        else:
            self._pump()


class RouterProc:
    """`casebroker run` in its own process, pointed at the private servers."""

    def __init__(self, urls: list[str], prefix: str, db_url: str, log_path: Path,
                 catalog: Path = MINI_CATALOG, metrics_port: int = 0) -> None:
        self.urls, self.prefix, self.db_url = urls, prefix, db_url
        self.log_path = log_path
        self.catalog = catalog
        #: its /metrics, /livez and /readyz (0: none)
        self.metrics_port = metrics_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> RouterProc:
        env = dict(os.environ, CASEBROKER_AMQP_URL=",".join(self.urls),
                   CASEBROKER_LOG_LEVEL="INFO", **{FAULT_RUN_ENV: "1"})  # tests/sweep.py
        cmd = [sys.executable, "-m", "broker.cli", "run", "--prefix", self.prefix,
               "--db-url", self.db_url, "--metrics-port", str(self.metrics_port),
               "--catalog", str(self.catalog)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         cwd=ROOT)
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_consuming(self, consumers: int = 1, timeout_s: float = 60) -> None:
        """Until the log says both queues are consumed (``consumers`` times over)."""
        deadline = time.monotonic() + timeout_s
        while self.log().count("consuming ") < 2 * consumers:
            if not self.alive() or time.monotonic() > deadline:
                raise AssertionError(f"router did not start consuming:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no acks for what is in flight."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def reload(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> int | None:
        return None if self.proc is None else stop_process(self.proc, timeout_s=30)


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str,
               interval_s: float = 0.2) -> Any:
    """Poll until truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


@dataclass
class Figures:
    """What a scenario proved, for docs/RELIABILITY.md."""

    name: str
    submitted: int = 0
    dossiers: int = 0
    resolved: int = 0
    bad_inputs: int = 0
    triaged: int = 0
    duplicate_deliveries_to_agencies: int = 0
    duplicate_deliveries_to_desks: int = 0
    lost: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Scenario:
    """One topology prefix and one ledger on the private servers, plus the checks."""

    def __init__(self, urls: list[str], db_url: str, workdir: Path, name: str) -> None:
        self.urls = urls
        self.db_url = db_url
        self.workdir = workdir
        self.topology = Topology(f"f{uuid.uuid4().hex[:8]}")
        self.ledger = Ledger(db_url)  # creates the schema before routers race to
        self.routers: list[RouterProc] = []
        self.submissions: list[str] = []  # distinct valid submission ids, in order
        self.expected_dead: dict[str, tuple[str, str]] = {}  # message id → (source, reason)
        self.expected_triage: dict[str, str] = {}  # message id → reason
        #: message ids of dead letters whose desk is told it was not received (``held``)
        self.expected_held: set[str] = set()
        self.agency_msgs: dict[str, list[tuple[BasicProperties, dict[str, Any]]]] = \
            defaultdict(list)
        self.desk_msgs: dict[str, list[tuple[BasicProperties, dict[str, Any]]]] = \
            defaultdict(list)
        self.figures = Figures(name)

    # servers and routers ------------------------------------------------------------
    def connect(self) -> pika.BlockingConnection:
        return pika.BlockingConnection([pika.URLParameters(u) for u in self.urls])

    def router(self, urls: list[str] | None = None, metrics_port: int = 0) -> RouterProc:
        r = RouterProc(urls or self.urls, self.topology.prefix, self.db_url,
                       self.workdir / f"router{len(self.routers)}.log",
                       metrics_port=metrics_port)
        self.routers.append(r)
        return r

    def close(self) -> None:
        for r in self.routers:
            r.kill()
        self.ledger.dispose()

    # traffic ------------------------------------------------------------------------
    def dossiers(self, n: int) -> list[Msg]:
        """``n`` valid dossiers spread over the mini catalog's agencies."""
        out = []
        for i in range(n):
            proc, desk, ward = TRAFFIC[i % len(TRAFFIC)]
            d = dossier(proc, desk_id=desk, applicant_ward=ward)
            sid = str(d.submission_id)
            self.submissions.append(sid)
            out.append(Msg(self.topology.intake_exchange, INTAKE_KEY, encode(d),
                           f"submit:{sid}", "dossier.submitted"))
        return out

    def ledger_count(self) -> int:
        return sum(self.ledger.count_by_state().values())

    def queue_info(self, queue: str) -> int:
        conn = self.connect()
        try:
            return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
        finally:
            conn.close()

    def wait_routed(self, n: int, timeout_s: float = 180) -> None:
        wait_until(lambda: self.ledger_count() >= n, timeout_s, f"{n} dossiers in the ledger",
                   interval_s=0.5)

    def drain(self, queues: Iterable[str]) -> dict[str, list[tuple[BasicProperties, bytes]]]:
        """Take every message now in ``queues`` (auto-ack)."""
        out: dict[str, list[tuple[BasicProperties, bytes]]] = {}
        conn = self.connect()
        try:
            ch = conn.channel()
            ch.basic_qos(prefetch_count=1000)
            for q in queues:
                got: list[tuple[BasicProperties, bytes]] = []
                if ch.queue_declare(q, passive=True).method.message_count:
                    for method, props, body in ch.consume(q, auto_ack=True,
                                                          inactivity_timeout=0.5):
                        if method is None:
                            break
                        got.append((props, body))
                    ch.cancel()
                out[q] = got
        finally:
            conn.close()
        return out

    def drain_agencies(self) -> None:
        t = self.topology
        for q, msgs in self.drain(t.agency_queue(a) for a in AGENCIES).items():
            self.agency_msgs[q] += [(p, json.loads(b)) for p, b in msgs]

    def drain_desks(self) -> None:
        t = self.topology
        for q, msgs in self.drain(t.desk_queue(d) for d in DESKS).items():
            self.desk_msgs[q] += [(p, json.loads(b)) for p, b in msgs]

    def resolutions(self, twice: bool = False) -> list[Msg]:
        """A ``resolved`` update from the assignee of every assignment received."""
        out, seen = [], set()
        for msgs in self.agency_msgs.values():
            for props, body in msgs:
                code = body["dossier_code"]
                if props.type != "dossier.assigned" or code in seen:
                    continue  # an agency drops what it already has, by message id
                seen.add(code)
                update = DossierStatus(update_id=uuid.uuid4(), dossier_code=code,
                                       agency_id=body["agency_id"], status="resolved",
                                       sent_at=datetime.now(UTC), documents=body["documents"])
                m = Msg(self.topology.status_exchange, STATUS_KEY, encode(update),
                        f"status:{update.update_id}", "dossier.status")
                out += [m, m] if twice else [m]
        return out

    def resolve_all(self, twice: bool = False, timeout_s: float = 180) -> int:
        """Drain the agencies, resolve every dossier, wait until the ledger says so."""
        self.drain_agencies()
        updates = self.resolutions(twice)
        Load(self.urls, updates).run()
        n = len({json.loads(m.body)["dossier_code"] for m in updates})
        wait_until(lambda: self.ledger.count_by_state().get(9, 0) >= n, timeout_s,
                   f"{n} dossiers resolved", interval_s=0.5)
        return n

    # the invariants -------------------------------------------------------------------
    def check(self) -> Figures:
        """Every invariant of issue 5; returns the figures."""
        t, f = self.topology, self.figures
        wait_until(lambda: self.queue_info(t.intake_queue) == 0
                   and self.queue_info(t.status_queue) == 0, 120, "intake and status drained")
        self.drain_agencies()
        self.drain_desks()
        states = self.ledger.states_for_submissions(self.submissions)
        # 1. every submitted dossier is in the ledger exactly once, and nothing else is
        missing = [s for s in self.submissions if s not in states]
        f.submitted, f.lost = len(self.submissions), len(missing)
        assert not missing, f"{len(missing)} dossiers lost, e.g. {missing[:3]}"
        f.dossiers = self.ledger_count()
        assert f.dossiers == len(set(self.submissions)), "a dossier too many"
        codes = {code for code, _, _ in states.values()}
        assert len(codes) == len(states), "two submissions share a dossier code"
        # 2. each reached its agency, always under the same message id
        assigned: dict[str, set[str]] = defaultdict(set)
        copies = 0
        for q, msgs in self.agency_msgs.items():
            for props, body in msgs:
                if props.type == "dossier.assigned":
                    assert q == t.agency_queue(body["agency_id"]), "assignment in wrong queue"
                    assigned[body["dossier_code"]].add(props.message_id)
                    copies += 1
        assert set(assigned) == codes, (f"assignments for {len(set(assigned))} codes, "
                                        f"ledger has {len(codes)}")
        for code, ids in assigned.items():
            assert ids == {f"{code}:assigned:1"}, f"{code} reached its agency as {ids}"
        f.duplicate_deliveries_to_agencies = copies - len(assigned)
        # 3. every resolved dossier's result reached its return desk, one notice id each
        resolved = {c for c, s, _ in states.values() if s == 9}
        results: dict[str, set[str]] = defaultdict(set)
        receipts: dict[str, set[str]] = defaultdict(set)
        held: set[str] = set()
        notices = 0
        for q, msgs in self.desk_msgs.items():
            for props, body in msgs:
                notices += 1
                assert q == t.desk_queue(body["desk_id"])
                kind = {"result_ready": results, "receipt": receipts}.get(body["notice"])
                if kind is not None:
                    kind[body["dossier_code"]].add(props.message_id)
                elif body["notice"] == "held":
                    held.add(props.message_id)
        # each triaged dossier's desk was told it was held, under one id per delivery, and
        # so was each one dead-lettered unread whose body still named its desk
        told = {f"{mid}:held" for mid in (*self.expected_triage, *self.expected_held)}
        assert held == told, _diff({m: "held" for m in held}, dict.fromkeys(told, "held"))
        assert set(results) == resolved, (f"results at desks for {len(results)}, "
                                          f"resolved {len(resolved)}")
        assert all(len(ids) == 1 for ids in results.values()), "a result under two ids"
        twice = {c: ids for c, ids in receipts.items() if len(ids) != 1}
        assert set(receipts) == codes and not twice, (
            f"receipts: {len(codes - set(receipts))} dossiers without one (e.g. "
            f"{sorted(codes - set(receipts))[:3]}), {len(set(receipts) - codes)} for no "
            f"dossier, {len(twice)} under several ids (e.g. {list(twice.items())[:2]}); "
            f"desk queues drained: {sorted((q, len(m)) for q, m in self.desk_msgs.items())}")
        f.resolved = len(resolved)
        distinct = {(q, p.message_id) for q, msgs in self.desk_msgs.items() for p, _ in msgs}
        f.duplicate_deliveries_to_desks = notices - len(distinct)
        # 4. dead-letter and triage queues hold exactly the bad inputs sent
        self.check_dead_and_triage()
        # 5. the audit agrees
        report = audit(self.ledger, t, self.submissions)
        assert report["unaccounted"] == 0, report
        return f

    def check_dead_and_triage(self) -> None:
        t = self.topology
        dead = self.drain([t.dead_queue(s) for s in ("intake", "status", "agency", "desk")])
        got: dict[str, tuple[str, str]] = {}
        for q, msgs in dead.items():
            for props, _ in msgs:
                h = props.headers or {}
                got[props.message_id] = (str(h.get(SOURCE_HEADER)), str(h.get(REASON_HEADER)))
                assert q == t.dead_queue(str(h.get(SOURCE_HEADER)))
        assert got == self.expected_dead, _diff(got, self.expected_dead)
        triaged = {p.message_id: str((p.headers or {}).get(REASON_HEADER))
                   for p, _ in self.drain([t.triage_queue])[t.triage_queue]}
        assert triaged == self.expected_triage, _diff(triaged, self.expected_triage)
        self.figures.bad_inputs = len(self.expected_dead)
        self.figures.triaged = len(self.expected_triage)


def _diff(got: dict[str, Any], want: dict[str, Any]) -> str:
    extra = sorted(set(got) - set(want))[:5]
    lost = sorted(set(want) - set(got))[:5]
    wrong = [(k, got[k], want[k]) for k in set(got) & set(want) if got[k] != want[k]][:5]
    return f"unexpected {extra}; missing {lost}; wrong {wrong} (got {len(got)}/{len(want)})"


FIGURES: list[Figures] = []


def record(f: Figures) -> None:
    """Keep a scenario's figures for the session summary (tests/conftest.py)."""
    FIGURES.append(f)
