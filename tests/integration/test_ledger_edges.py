"""Edges of the ledger's data layer, on SQLite and PostgreSQL alike: an upgrade or a start
cut short while it fills a new table, text PostgreSQL cannot hold that SQLite takes, and
what `ledger prune` must leave of a closed dossier (for the status router) and erase (the
documents the citizen brought later)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest
from sqlalchemy import Engine as SqlEngine
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import select, text

import broker.ledger
from broker.amqp import ConsumerSettings, amqp_url
from broker.amqp_worker import QueueWorker
from broker.cli import main
from broker.consumers.router import Router
from broker.consumers.status import StatusRouter
from broker.errors import TransientError
from broker.ledger import Ledger, dossiers, events, held, outbox
from broker.messages import (
    DossierReturned,
    DossierStatus,
    DossierSupplemented,
    DossierWithdrawn,
    encode,
)
from broker.ops.prune import prune
from broker.rules.catalog import load_catalog
from broker.rules.engine import Engine
from broker.service import Broker
from broker.topology import INTAKE_KEY, Topology
from tests.conftest import (
    MINI_CATALOG,
    RunningBroker,
    _pg_schema_url,
    pg_schema,
    queue_depth,
    ready_and_consumers,
    wait_for,
)
from tests.helpers import Amqp, dossier, intake_delivery, mini_handlers, status_delivery
from tests.integration.conftest import FakeClock

pytestmark = pytest.mark.integration


class Killed(Exception):
    """The process stopped here (a SIGKILL, a power cut): nothing after it ran."""


def _ledger_from_before_held(ledger: Ledger) -> str:
    """The ledger as versions before ``held`` left it: a dossier held in triage, its copy
    kept in the outbox, and no ``held`` table. Returns the held submission's id."""
    engine = Engine(load_catalog(MINI_CATALOG))
    router = Router(lambda: engine, ledger, Topology("t"), clock=FakeClock())
    triaged = dossier("9.999999", desk_id="T.MC.A")  # no rule routes it
    router.handle([intake_delivery(1, encode(triaged), "submit:held")])
    with ledger.engine.begin() as conn:
        conn.execute(text("DROP TABLE held"))
    ledger.dispose()
    return str(triaged.submission_id)


def _cut_short(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the filling of ``held`` stop once it has written its rows, before the
    commit."""
    fill = broker.ledger._fill_held

    def killed(conn: Any) -> None:
        fill(conn)
        raise Killed

    monkeypatch.setattr(broker.ledger, "_fill_held", killed)


def _held_rows(url: str) -> list[tuple[str, str, str]]:
    led = Ledger(url, create=False, current=False)
    try:
        with led.read() as conn:
            return [tuple(r) for r in conn.execute(
                select(held.c.submission_id, held.c.message_id, held.c.desk_id))]
    finally:
        led.dispose()


def test_an_upgrade_cut_short_while_filling_held_fills_it_when_run_again(
        ledger: Ledger, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """SQLite committed the CREATE of ``held`` at once, outside the transaction: a run
    stopped while filling it left the table there and empty, and the next run said
    the ledger was up to date; the dossier held before the upgrade could then never be
    withdrawn by its submission id."""
    sid = _ledger_from_before_held(ledger)
    _cut_short(monkeypatch)
    with pytest.raises(Killed):
        Ledger(ledger.url, create=False, current=False).upgrade()
    monkeypatch.undo()

    assert main(["ledger", "upgrade", "--db-url", ledger.url]) == 0
    said = capsys.readouterr().out
    assert "CREATE TABLE held" in said and broker.ledger.FILL_HELD in said
    assert _held_rows(ledger.url) == [(sid, "submit:held", "T.MC.A")]
    assert main(["ledger", "upgrade", "--db-url", ledger.url]) == 0
    assert "is up to date" in capsys.readouterr().out


def test_a_start_cut_short_while_filling_held_fills_it_at_the_next_start(
        ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """`casebroker run` makes the missing ``held`` table and fills it (Ledger.create_schema):
    stopped in between, the next start must fill it, not find it there and go on."""
    sid = _ledger_from_before_held(ledger)
    _cut_short(monkeypatch)
    with pytest.raises(Killed):
        Ledger(ledger.url)
    monkeypatch.undo()

    Ledger(ledger.url).dispose()
    assert _held_rows(ledger.url) == [(sid, "submit:held", "T.MC.A")]


def test_text_with_a_nul_character_is_refused_alike_on_both_databases(
        ledger: Ledger) -> None:
    """JSON allows a NUL in text (\\u0000), and SQLite stores it; PostgreSQL's text cannot
    hold one, and its json operators refuse a value that has one anywhere: a withdrawal
    whose reason had one failed its batch there (internal_error, its desk never told),
    and a dossier with one stopped the report. The contract refuses it now, on both; a
    message id with a NUL is kept with the NUL escaped."""
    clock = FakeClock()
    engine = Engine(load_catalog(MINI_CATALOG))
    router = Router(lambda: engine, ledger, Topology("t"), clock=clock)
    status = StatusRouter(lambda: engine, ledger, Topology("t"), clock=clock)
    held = dossier(desk_id="T.MC.A")
    withdrawn = status.handle([status_delivery(1, DossierWithdrawn(
        event_id=uuid.uuid4(), submission_id=held.submission_id, desk_id="T.MC.A",
        reason="công dân rút\x00hồ sơ", sent_at=clock.now))])
    named = dossier(applicant={"kind": "citizen", "name": "An\x00", "id_number": "0"})
    refused = router.handle([intake_delivery(2, encode(named), "submit:named")])
    # the dossier's desk is told it was not received (held); the withdrawal, by a
    # submission id nothing holds, names no dossier to answer about
    for out, field, told in ((withdrawn, "reason", []), (refused, "applicant.name", ["held"])):
        assert [(o.headers or {}).get("x-casebroker-reason") for o in out if o.headers] == [
            "invalid_fields"]
        assert (out[0].headers or {})["x-casebroker-detail"] == (
            f"{field}: a NUL character (\\u0000) in text")
        assert [json.loads(o.body)["notice"] for o in out[1:]] == told
    routed = router.handle([intake_delivery(3, encode(held), "submit\x00held")])
    assert [json.loads(o.body)["notice"] for o in routed if o.type == "desk.notice"] == [
        "receipt"]
    assert ledger.count_inbox_outcomes() == {"dead:invalid_fields": 2, "routed": 1}
    with ledger.read() as conn:
        assert conn.execute(select(dossiers.c.code)).scalars().all() == [
            json.loads(routed[0].body)["dossier_code"]]


def test_a_desk_event_about_a_pruned_dossier_is_still_answered(ledger: Ledger) -> None:
    """The status router answers a desk's event about a closed dossier with the
    dossier's submission id and procedure code, read from its stored submission; the
    stub prune left there kept neither, so the answer failed (KeyError) and the event
    was dead-lettered as internal_error, its desk never told."""
    clock = FakeClock("2026-09-01 09:00")
    router, status = mini_handlers(ledger, clock)
    sent = dossier(desk_id="T.MC.A")
    out = router.handle([intake_delivery(1, encode(sent), "submit:1")])
    code = next(json.loads(o.body)["dossier_code"] for o in out if o.type == "desk.notice")
    status.handle([status_delivery(2, DossierStatus(
        update_id=uuid.uuid4(), dossier_code=code, agency_id="T.UBND.A",
        status="resolved", sent_at=clock.now))])
    status.handle([status_delivery(3, DossierReturned(
        event_id=uuid.uuid4(), dossier_code=code, desk_id="T.MC.A", returned_at=clock.now))])
    assert prune(ledger, 30, "ops-1", now=FakeClock("2026-11-29 09:00").now).dossiers == 1

    clock.set("2026-11-30 09:00")
    answer = status.handle([status_delivery(4, DossierWithdrawn(
        event_id=uuid.uuid4(), dossier_code=code, desk_id="T.MC.A", sent_at=clock.now))])
    notices = [json.loads(o.body) for o in answer]
    assert [(n["notice"], n["dossier_code"], n["submission_id"], n["procedure_code"],
             n["state"]) for n in notices] == [
        ("update_refused", code, str(sent.submission_id), "1.001193", 10)]
    row = ledger.dossier(code)
    assert row is not None and sent.applicant.id_number not in json.dumps(row["submission"])


def test_prune_erases_the_documents_a_citizen_brought_later_as_it_does_the_first(
        ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    """Prune erases a closed dossier's submission, its documents' names, addresses and
    hashes among them; the documents the citizen brought later at the agency's request
    stayed whole, in the dossier's flags and in the agency's ``supplemented`` notice. So
    did (found by a review) their names in the process-control sheet, and the result the
    agency sent: in the flags, the events and the desk's notices. How many stays, and the
    report counts the result as digitized before and after."""
    clock = FakeClock("2026-09-01 09:00")
    engine = Engine(load_catalog(MINI_CATALOG))
    router = Router(lambda: engine, ledger, Topology("t"), clock=clock)
    status = StatusRouter(lambda: engine, ledger, Topology("t"), clock=clock)
    out = router.handle([intake_delivery(1, encode(dossier(desk_id="T.MC.A")), "submit:1")])
    code = next(json.loads(o.body)["dossier_code"] for o in out if o.type == "desk.notice")
    brought: dict[str, Any] = {
        "name": "CCCD Nguyễn Văn An.pdf", "uri": "s3://docs/066090001234/cccd.pdf",
        "sha256": "b" * 64, "size": 2000, "media_type": "application/pdf"}
    result: dict[str, Any] = {
        "name": "Giấy khai sinh Nguyễn Văn Bình.pdf", "uri": "s3://results/066090005678/ks",
        "sha256": "c" * 64, "size": 3000, "media_type": "application/pdf"}

    def agency(tag: int, state: str) -> None:
        status.handle([status_delivery(tag, DossierStatus(
            update_id=uuid.uuid4(), dossier_code=code, agency_id="T.UBND.A", status=state,
            requested_documents=["CCCD"] if state == "supplement_requested" else [],
            documents=[result] if state == "resolved" else [], sent_at=clock.now))])

    agency(2, "processing")
    agency(3, "supplement_requested")
    assert [json.loads(o.body)["notice"] for o in status.handle([status_delivery(
        4, DossierSupplemented(event_id=uuid.uuid4(), dossier_code=code, desk_id="T.MC.A",
                               documents=[brought], sent_at=clock.now))])
        if o.type == "agency.notice"] == ["supplemented"]
    agency(5, "resolved")
    status.handle([status_delivery(6, DossierReturned(
        event_id=uuid.uuid4(), dossier_code=code, desk_id="T.MC.A", returned_at=clock.now))])

    def stored() -> str:
        with ledger.read() as conn:
            return "\n".join([
                *(json.dumps(v, ensure_ascii=False) for v in conn.execute(
                    select(dossiers.c.submission, dossiers.c.flags)).one()),
                *(bytes(b).decode() for b in conn.execute(select(outbox.c.body)).scalars()),
                *(json.dumps(d, ensure_ascii=False) for d in conn.execute(
                    select(events.c.detail)).scalars())])

    def results_digitized() -> int:
        assert main(["report", "--from", "2026-09-01", "--to", "2026-09-30", "--json",
                     "--db-url", ledger.url]) == 0
        return int(json.loads(capsys.readouterr().out)["total"]["results_digitized"])

    private = [brought["name"], brought["uri"], brought["sha256"], "066090001234",
               result["name"], result["uri"], result["sha256"]]
    assert [v for v in private if v not in stored()] == []
    assert results_digitized() == 1
    done = prune(ledger, 30, "ops-1", now=FakeClock("2026-11-29 09:00").now)
    # the assignment, the receipt, the supplemented notice, the desk's notice of the result
    assert (done.dossiers, done.bodies) == (1, 4)
    assert [v for v in private if v in stored()] == []
    row = ledger.dossier(code)
    assert row is not None and (row["flags"]["supplements"], row["flags"]["results"]) == (1, 1)
    assert results_digitized() == 1
    assert main(["dossier", "show", code, "--db-url", ledger.url]) == 0
    assert "1 document(s) brought" in capsys.readouterr().out


@pytest.fixture
def read_only_role() -> Iterator[tuple[str, str, SqlEngine]]:
    """A ledger's tables in a schema of their own, and a login role granted every write on
    them whose sessions start read-only (``default_transaction_read_only``), as on a
    standby: (schema, role, an engine of the database's owner)."""
    role = f"cb_ro_{uuid.uuid4().hex[:8]}"
    with pg_schema() as (schema, admin):
        Ledger(_pg_schema_url(schema)).dispose()  # its tables, made by the owner
        with admin.connect() as conn:
            for statement in (f'CREATE ROLE "{role}" LOGIN',
                              f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"',
                              f'GRANT ALL ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"',
                              f'GRANT ALL ON ALL SEQUENCES IN SCHEMA "{schema}" TO "{role}"',
                              f'ALTER ROLE "{role}" SET default_transaction_read_only = on'):
                conn.execute(text(statement))
        try:
            yield schema, role, admin
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP OWNED BY "{role}"'))
                conn.execute(text(f'DROP ROLE "{role}"'))


@pytest.mark.parametrize("ledger", ["postgresql"], indirect=True)  # SQLite waits 5 s
def test_a_lock_held_past_the_lock_timeout_is_the_ledger_away_not_a_hang(
        ledger: Ledger) -> None:
    # `run` sets lock_timeout: a lock another session holds (an operator's transaction
    # left open) fails the batch as an outage, retried with backoff and given back after
    # --hold-s; waited out, it held the batch past the liveness probe and RabbitMQ's
    # consumer_timeout for as long as the lock lasted
    timed = Ledger(ledger.url, lock_timeout_s=0.3)
    router = Router(lambda: Engine(load_catalog(MINI_CATALOG)), timed, Topology("t"),
                    clock=FakeClock())
    delivery = intake_delivery(1, encode(dossier()), "submit:1")
    outcome: list[BaseException | None] = []

    def handle() -> None:
        try:
            router.handle([delivery])
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    try:
        with ledger.engine.connect() as lock:
            lock.execute(text("LOCK TABLE dossiers IN ACCESS EXCLUSIVE MODE"))
            waiting = threading.Thread(target=handle, daemon=True)
            waiting.start()
            waiting.join(timeout=30)  # without the timeout: there until the lock goes
            assert outcome, "the batch still waits for the lock"
            assert isinstance(outcome[0], TransientError)
            assert "LockNotAvailable" in str(outcome[0]), outcome[0]
            lock.rollback()
        assert ledger.count_by_state() == {}
        router.handle([delivery])  # the retry, once the lock is gone
        assert ledger.count_by_state() == {2: 1}
    finally:
        timed.dispose()


def test_a_standby_is_not_writable_and_the_ledger_is_once_it_takes_writes_again(
        read_only_role: tuple[str, str, SqlEngine]) -> None:
    # what a worker that gave its deliveries back during an outage asks before it
    # consumes again: a standby answers a read, and reads are not what routing does
    schema, role, admin = read_only_role
    ledger = Ledger(_pg_schema_url(schema).replace("//postgres@", f"//{role}@", 1))
    try:
        assert ledger.count_inbox_outcomes() == {}  # reads go through
        with pytest.raises(TransientError, match=r"ReadOnlySqlTransaction \(the server "
                           "takes no writes"):
            ledger.check_writable()
        with admin.connect() as conn:
            conn.execute(text(f'ALTER ROLE "{role}" RESET default_transaction_read_only'))
        ledger.check_writable()  # the connection that met it was dropped: a new session
        assert ledger.count_inbox_outcomes() == {}  # and it changed nothing
    finally:
        ledger.dispose()


def _refusing_new_dossiers(read_only_role: tuple[str, str, SqlEngine]) -> Ledger:
    """The role's ledger, writable but for new dossiers (``INSERT`` on ``dossiers``
    revoked): it takes the probe, a malformed message's dead letter and a status update,
    and refuses every valid submission, as a disk full refuses some writes and not
    others. ``GRANT INSERT ON <schema>.dossiers`` brings it back."""
    schema, role, admin = read_only_role
    with admin.connect() as conn:
        for statement in (f'ALTER ROLE "{role}" RESET default_transaction_read_only',
                          f'REVOKE INSERT ON "{schema}".dossiers FROM "{role}"'):
            conn.execute(text(statement))
    return Ledger(_pg_schema_url(schema).replace("//postgres@", f"//{role}@", 1))


def _grant_new_dossiers(read_only_role: tuple[str, str, SqlEngine]) -> None:
    schema, role, admin = read_only_role
    with admin.connect() as conn:
        conn.execute(text(f'GRANT INSERT ON "{schema}".dossiers TO "{role}"'))


def test_a_ledger_that_answers_the_probe_but_fails_every_batch_costs_only_the_one_tried(
        declared: Topology, amqp: Amqp, read_only_role: tuple[str, str, SqlEngine]) -> None:
    """The probe writes nothing, and a ledger may take it yet refuse each batch (here a
    privilege revoked on one table; a disk full does the same). Consuming again on the
    probe's word, the router was given its window back after each hold, a step nearer
    each delivery's limit each time: all dead-lettered within half a minute with a 1 s
    hold (a review). It takes one delivery alone to try the ledger; only that one takes
    a step, every two holds (RabbitMQ 3.10 hands the next one at the next try)."""
    ledger = _refusing_new_dossiers(read_only_role)
    broker = Broker(str(MINI_CATALOG), declared, ledger, ConsumerSettings(
        flush_interval_ms=2, hold_s=1.0, retry_initial_s=0.2, retry_max_s=0.5))
    running = RunningBroker(broker).start()
    try:
        for _ in range(10):
            amqp.submit(declared, dossier())
        time.sleep(12)  # a dozen holds of 1 s
    finally:
        running.stop()
    # each delivery's count towards its limit, as RabbitMQ keeps it (read unacked: back
    # to the queue at the close)
    peek = pika.BlockingConnection(pika.URLParameters(amqp_url()))
    counts = []
    while (got := peek.channel().basic_get(declared.intake_queue))[0] is not None:
        counts.append(int((got[1].headers or {}).get("x-delivery-count", 0)))
    peek.close()
    assert len(counts) == 10 and queue_depth(declared.dead_queue("intake")) == 0
    assert min(counts) >= 1, f"{counts}"  # the window, given back once
    # and since then a step for the one taken alone at each try (held a hold, then the
    # next waits one, two, four holds: at most 4 tries in 12 s, the last held at the
    # stop); consuming again after each probe, every delivery took a step each hold
    assert 1 <= sum(counts) - len(counts) <= 5, f"{counts}"
    _grant_new_dossiers(read_only_role)
    running = RunningBroker(Broker(str(MINI_CATALOG), declared, ledger,
                                   ConsumerSettings(flush_interval_ms=2))).start()
    try:
        wait_for(lambda: ledger.count_by_state() == {2: 10}, timeout_s=30,
                 what="the 10 dossiers routed once the ledger takes them")
        # committed before published: the receipts follow their confirms
        receipts: list[dict[str, Any]] = []
        wait_for(lambda: receipts.extend(amqp.json_all(declared.desk_queue("T.MC.B")))
                 or len(receipts) >= 10, what="the 10 receipts")
    finally:
        running.stop()
        ledger.dispose()
    assert len({r["dossier_code"] for r in receipts}) == len(receipts) == 10
    assert amqp.json_all(declared.desk_queue("T.MC.B")) == []  # and no more


def _intake_worker(running: RunningBroker, declared: Topology) -> QueueWorker:
    service = running.broker.service
    worker, = (w for w in service.workers if w.queue == declared.intake_queue)
    return worker


def _stays(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    """``predicate`` holds now and throughout the next ``seconds`` (polled)."""
    until = time.monotonic() + seconds
    while True:
        assert predicate(), what
        if time.monotonic() >= until:
            return
        time.sleep(0.05)


def test_a_queue_consumed_again_on_another_routers_try_holds_what_fails_for_a_hold(
        declared: Topology, amqp: Amqp, read_only_role: tuple[str, str, SqlEngine]) -> None:
    """Parked, a router asks for one delivery to try the ledger with, and consumes again
    when the queue is empty: another router took everything, or holds the one it tries.
    That one given back, its first failure here gave it back at once (the hold, counted
    from the outage's first failure, long over), and the router tried again within a
    second: two routers took a dossier to its delivery limit in a third of the time one
    does (a review: ~8 h with the default hold). Consumed again, the queue is on trial:
    what fails is held a hold from its own first failure, and a hold of failures waits as
    a failed try does, until batches go through a hold after the last failure. Neither a
    hold with nothing to consume (the other's try lasting a hold) nor a dossier that goes
    through needing no new dossier (held in triage) ends the trial (reviews: each did,
    and the router tried again at once)."""
    ledger = _refusing_new_dossiers(read_only_role)
    hold_s = 4.0
    running = RunningBroker(Broker(str(MINI_CATALOG), declared, ledger, ConsumerSettings(
        flush_interval_ms=2, hold_s=hold_s, retry_initial_s=0.2, retry_max_s=0.5))).start()
    queue = declared.intake_queue
    other = pika.BlockingConnection(pika.URLParameters(amqp_url()))
    try:
        amqp.submit(declared, dossier())
        wait_for(lambda: ready_and_consumers(queue) == (0, 1), what="the router holding it")
        # the other router (a consumer here, no ledger): subscribed now, it takes the
        # delivery when the router gives it back after the hold, and holds it
        taken: list[int] = []
        channel = other.channel()
        channel.basic_qos(prefetch_count=1)
        tag = channel.basic_consume(
            queue, lambda _ch, method, _p, _b: taken.append(method.delivery_tag))
        wait_for(lambda: other.process_data_events(0.1) or taken, timeout_s=hold_s + 15,
                 what="the delivery given back, to the other")
        # the router's try finds the queue empty: it consumes again beside the other
        wait_for(lambda: other.process_data_events(0.1) or ready_and_consumers(queue)
                 == (0, 2), what="the router consuming again")
        worker = _intake_worker(running, declared)
        # meanwhile a dossier no unit serves goes through alone, held in triage (its desk
        # told: more than a dead letter), needing no new dossier ...
        amqp.submit(declared, dossier(applicant_ward="99999"))
        wait_for(lambda: other.process_data_events(0.1)
                 or queue_depth(declared.triage_queue) == 1, what="held in triage")
        # ... and the other's try lasts a hold and more
        until = time.monotonic() + hold_s + 0.5
        while time.monotonic() < until:
            other.process_data_events(0.1)
        channel.basic_cancel(tag)
        channel.basic_nack(taken[0], requeue=True)  # the other's try ends: given back
        wait_for(lambda: ready_and_consumers(queue) == (0, 1), what="the router taking it")
        # it fails at once (no INSERT), and is held from its own first failure
        _stays(lambda: ready_and_consumers(queue) == (0, 1), hold_s / 2,
               "given back before a hold of its own failures")
        # after the hold it goes back: a failed try, and the next waits a hold
        wait_for(lambda: ready_and_consumers(queue) == (1, 0), timeout_s=hold_s + 10,
                 what="given back after a hold")
        _stays(lambda: ready_and_consumers(queue) == (1, 0), 1.0, "tried again at once")
        assert worker.trials_failed == 1
        # a lost connection does not cut the wait short: a new channel waits it out
        service = running.broker.service
        connection = service.connection
        assert connection is not None
        service.call_threadsafe(connection.close)
        wait_for(lambda: service.connection is not connection and service.connection_open,
                 what="connected again")
        assert worker.trials_failed == 1 and worker.next_try_at > time.monotonic(), \
            "the connection came back after the wait: no test of it"
        _stays(lambda: ready_and_consumers(queue) == (1, 0),
               worker.next_try_at - time.monotonic() - 0.3, "tried again on the new channel "
               "before the wait was over")
        _grant_new_dossiers(read_only_role)
        wait_for(lambda: ledger.count_by_state() == {2: 1}, timeout_s=hold_s + 20,
                 what="the dossier routed once the ledger takes it")
        # consumed again on trial: what ends it is a batch that goes through a hold after
        # the trial's last failure
        wait_for(lambda: ready_and_consumers(queue) == (0, 1), what="consumed again")
        assert worker.trials_failed == 1 and worker.trial_clean_since is not None
        amqp.submit(declared, dossier())
        wait_for(lambda: ledger.count_by_state() == {2: 2}, what="a new dossier routed")
        assert worker.trials_failed == 1 and worker.trial_clean_since is not None
        time.sleep(hold_s)
        amqp.submit(declared, dossier())
        wait_for(lambda: ledger.count_by_state() == {2: 3}, what="another routed")
        assert (worker.trials_failed, worker.trial_clean_since) == (0, None)
    finally:
        other.close()
        running.stop()
        ledger.dispose()
    receipts = [n for n in amqp.json_all(declared.desk_queue("T.MC.B"))
                if n["notice"] == "receipt"]
    assert len({r["dossier_code"] for r in receipts}) == len(receipts) == 3


def test_a_try_that_goes_through_without_what_fails_is_no_end_of_the_outage(
        declared: Topology, amqp: Amqp, read_only_role: tuple[str, str, SqlEngine]) -> None:
    """The delivery a parked router takes alone may go through without the write that
    fails (a malformed message, dead-lettered; the ledger refuses new dossiers alone).
    Consuming again on its word, the window was given back after the next hold, and
    tried again at once: a step for every delivery each time a malformed one came up (a
    review). The queue is consumed again on trial, and its hold of failures is a failed
    try: the next waits a hold."""
    ledger = _refusing_new_dossiers(read_only_role)
    hold_s = 3.0
    queue = declared.intake_queue
    # the malformed one first: given back with the window, it is the first one taken
    amqp.publish(declared.intake_exchange, INTAKE_KEY, b"{not json", message_id="bad-1",
                 type="dossier.submitted")
    for _ in range(4):
        amqp.submit(declared, dossier())
    running = RunningBroker(Broker(str(MINI_CATALOG), declared, ledger, ConsumerSettings(
        flush_interval_ms=2, hold_s=hold_s, retry_initial_s=0.2, retry_max_s=0.5))).start()
    try:
        wait_for(lambda: queue_depth(declared.dead_queue("intake")) == 1,
                 timeout_s=hold_s + 20, what="the malformed one tried alone, dead-lettered")
        wait_for(lambda: ready_and_consumers(queue) == (0, 1), what="consumed again")
        # the four fail for a hold and go back; the ledger is tried again a hold later
        wait_for(lambda: ready_and_consumers(queue) == (4, 0), timeout_s=hold_s + 10,
                 what="the four given back after a hold")
        _stays(lambda: ready_and_consumers(queue) == (4, 0), hold_s * 2 / 3,
               "tried again before a hold went by")
        worker = _intake_worker(running, declared)
        assert worker.parked and worker.trials_failed == 1
        _grant_new_dossiers(read_only_role)
        wait_for(lambda: ledger.count_by_state() == {2: 4}, timeout_s=hold_s + 20,
                 what="the four routed once the ledger takes them")
    finally:
        running.stop()
        ledger.dispose()
    assert ledger.count_inbox_outcomes() == {"routed": 4, "dead:malformed_json": 1}
    assert queue_depth(declared.dead_queue("intake")) == 1


def test_a_ledger_that_takes_no_writes_pauses_the_router_and_a_new_connection_resumes_it(
        read_only_role: tuple[str, str, SqlEngine]) -> None:
    # after a failover the ledger's URL may reach a standby: every write is refused as a
    # read-only transaction, which psycopg raises as an InternalError, not an outage. Read
    # as 'wrong', each delivery was dead-lettered as internal_error (found by a review);
    # it is 'not now': the batch waits, and the connection that met it is dropped so
    # that the retry connects afresh (here: the role is writable again)
    schema, role, admin = read_only_role
    url = _pg_schema_url(schema).replace("//postgres@", f"//{role}@", 1)
    assert role in url
    ledger = Ledger(url)
    try:
        router = Router(lambda: Engine(load_catalog(MINI_CATALOG)), ledger, Topology("t"),
                        clock=FakeClock())
        delivery = intake_delivery(1, encode(dossier()), "submit:1")
        for _ in range(2):  # not once by luck: each retry meets it while it lasts
            with pytest.raises(TransientError, match=r"ReadOnlySqlTransaction \(the server "
                               "takes no writes: a standby"):
                router.handle([delivery])
        assert ledger.count_inbox_outcomes() == {}
        with admin.connect() as conn:
            conn.execute(text(f'ALTER ROLE "{role}" RESET default_transaction_read_only'))
        # retried as the worker retries: the count above took a connection while the role
        # was read-only, and a connection keeps what its session began with; the batch
        # that meets it drops it, and the next one goes through on a new connection
        tries = []
        while not tries or tries[-1] != "routed":
            try:
                router.handle([delivery])
                tries.append("routed")
            except TransientError:
                tries.append("paused")
            assert len(tries) <= 3, tries
        assert tries in (["routed"], ["paused", "routed"])
        assert ledger.count_inbox_outcomes() == {"routed": 1}
        # a privilege revoked: every write refused alike, so the batch waits for it too
        second = intake_delivery(2, encode(dossier()), "submit:2")
        with admin.connect() as conn:
            conn.execute(text(f'REVOKE INSERT ON "{schema}".inbox FROM "{role}"'))
        # said as what it is, not as an outage under a type's name alone
        with pytest.raises(TransientError, match=r"InsufficientPrivilege \(the database user "
                           "lacks a privilege on the ledger's tables"):
            router.handle([second])
        with admin.connect() as conn:
            conn.execute(text(f'GRANT INSERT ON "{schema}".inbox TO "{role}"'))
        router.handle([second])
        assert ledger.count_inbox_outcomes() == {"routed": 2}
    finally:
        ledger.dispose()


def test_a_start_refused_on_an_earlier_ledger_creates_nothing_and_the_upgrade_fills_held(
        ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    """A start on a ledger `ledger upgrade` must bring up first made and filled ``held``,
    then refused. The earlier version, still running, triaged more; the upgrade found
    ``held`` there and filled nothing, so those dossiers' withdrawals by submission id
    went unanswered."""
    sid = _ledger_from_before_held(ledger)
    with ledger.engine.begin() as conn:  # a column this version added, too
        conn.execute(text("ALTER TABLE outbox DROP COLUMN headers"))
    with pytest.raises(broker.ledger.LedgerSchemaError) as refused:
        Ledger(ledger.url)
    assert "outbox.headers is missing" in str(refused.value)
    with ledger.engine.connect() as conn:
        assert not sa_inspect(conn).has_table("held")
    assert main(["ledger", "upgrade", "--db-url", ledger.url]) == 0
    assert broker.ledger.FILL_HELD in capsys.readouterr().out
    assert [r[0] for r in _held_rows(ledger.url)] == [sid]


def test_several_processes_starting_at_once_on_a_new_postgresql_ledger_all_start() -> None:
    """DESIGN.md section 10: several `casebroker run` on one PostgreSQL ledger. Started
    together on a new one, both created its tables, and one died of a unique violation
    in PostgreSQL's catalog ("no usable ledger")."""
    for _ in range(3):
        with pg_schema() as (schema, _admin):
            made, failed = _start_at_once(_pg_schema_url(schema), 3)
            for led in made:
                led.dispose()
            assert (len(made), failed) == (3, [])


def _start_at_once(url: str, n: int) -> tuple[list[Ledger], list[BaseException]]:
    """``n`` ledgers opened on ``url`` at the same moment, as processes starting."""
    barrier = threading.Barrier(n)
    made: list[Ledger] = []
    failed: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            made.append(Ledger(url))
        except BaseException as e:  # what the process would have died of
            failed.append(e)

    starts = [threading.Thread(target=start) for _ in range(n)]
    for t in starts:
        t.start()
    for t in starts:
        t.join(60)
    return made, failed


def test_a_read_only_command_on_an_earlier_ledger_says_to_upgrade_it(
        ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    """`dossier show` queried columns the ledger lacked: a traceback with the SQL on
    PostgreSQL, "ledger unavailable" (an outage, it read) on SQLite."""
    with ledger.engine.begin() as conn:
        conn.execute(text("ALTER TABLE dossiers DROP COLUMN satisfaction"))
    for argv in (["dossier", "show", "T.UBND.A-261125-0001"], ["dossier", "list"]):
        capsys.readouterr()
        assert main([*argv, "--db-url", ledger.url]) == 1
        err = capsys.readouterr().err
        assert "dossiers.satisfaction is missing" in err, err
        assert "casebroker ledger upgrade" in err and "Traceback" not in err


@pytest.mark.parametrize("ledger", ["postgresql"], indirect=True)
def test_a_postgres_url_is_taken_as_postgresql(ledger: Ledger) -> None:
    # the spelling libpq and many a DATABASE_URL use: SQLAlchemy knows no "postgres"
    # dialect, and the ledger refused it as not a ledger URL (found by a review)
    url = "postgres://" + ledger.url.split("://", 1)[1]
    other = Ledger(url, create=False)
    try:
        assert other.count_by_state() == {} and other.is_empty()
    finally:
        other.dispose()
