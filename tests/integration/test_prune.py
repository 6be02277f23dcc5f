"""`casebroker ledger prune` on a ledger the router and status router wrote (SQLite and
PostgreSQL): the personal data of what closed before the cutoff is gone from every table,
what is open or recent is untouched, and the audit, the duplicate check and redeliveries
work as before on what was pruned."""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

import broker.ops.prune
from broker.amqp_worker import REASON_HEADER
from broker.cli import main
from broker.consumers.deadlines import DeadlineWatch
from broker.consumers.router import Router
from broker.consumers.status import StatusRouter
from broker.ledger import (
    Ledger,
    RawJSON,
    _kept_submission,
    dossiers,
    events,
    outbox,
    prunes,
    refusals,
)
from broker.messages import (
    DossierReturned,
    DossierStatus,
    DossierSubmitted,
    DossierWithdrawn,
    decode,
    encode,
)
from broker.ops.audit import audit
from broker.ops.prune import PruneCutShort, prune
from broker.rules.catalog import load_catalog
from broker.rules.engine import Engine
from broker.tables import is_pruned, watch_outbox
from broker.topology import Topology
from monitoring.metrics import Metrics
from tests.conftest import MINI_CATALOG
from tests.helpers import dossier, intake_delivery, mini_handlers, status_delivery
from tests.integration.conftest import FakeClock

pytestmark = pytest.mark.integration


def _applicant(id_number: str) -> dict[str, Any]:
    return {"kind": "citizen", "name": f"Người {id_number}", "id_number": id_number,
            "phone": "0905" + id_number[-6:], "ward_code": "10001"}


def _ledger_text(ledger: Ledger) -> str:
    """Everything the ledger stores that may hold personal data, as one text."""
    with ledger.read() as conn:
        parts = [json.dumps(r, ensure_ascii=False, default=str) for r in (
            *conn.execute(select(dossiers.c.submission)).scalars(),
            *conn.execute(select(refusals.c.submission)).scalars(),
            *conn.execute(select(events.c.detail)).scalars(),
            *conn.execute(select(outbox.c.headers)).scalars())]
        parts += [bytes(b).decode() for b in (
            *conn.execute(select(outbox.c.body)).scalars(),
            *conn.execute(select(refusals.c.notice)).scalars(),
            *conn.execute(select(watch_outbox.c.body)).scalars())]
    return "\n".join(parts)


def test_prune_erases_what_closed_before_the_cutoff_and_keeps_the_rest_working(
        ledger: Ledger, declared: Topology, capsys: pytest.CaptureFixture[str]) -> None:
    clock = FakeClock("2026-09-01 09:00")
    engine = Engine(load_catalog(MINI_CATALOG))
    router = Router(lambda: engine, ledger, Topology("t"), clock=clock)
    status = StatusRouter(lambda: engine, ledger, Topology("t"), clock=clock)
    n = iter(range(1, 1000))
    sent: dict[str, DossierSubmitted] = {}
    codes: dict[str, str] = {}

    def submit(name: str, procedure: str = "1.001193") -> list[Any]:
        sent[name] = d = dossier(procedure, desk_id="T.MC.A",
                                 applicant=_applicant(f"0660900{len(sent):05d}"))
        out = router.handle([intake_delivery(next(n), encode(d), f"submit:{name}")])
        if out[-1].type == "desk.notice" and json.loads(out[-1].body).get("dossier_code"):
            codes[name] = json.loads(out[-1].body)["dossier_code"]
        return out

    def close(name: str) -> None:
        status.handle([status_delivery(next(n), DossierStatus(
            update_id=uuid.uuid4(), dossier_code=codes[name], agency_id="T.UBND.A",
            status="resolved", sent_at=clock.now))])
        status.handle([status_delivery(next(n), DossierReturned(
            event_id=uuid.uuid4(), dossier_code=codes[name], desk_id="T.MC.A",
            returned_at=clock.now))])

    first_out = submit("old")
    close("old")
    submit("open")
    triaged = submit("triaged", "9.999999")  # no rule routes it: a triage copy is kept
    assert any(o.headers and REASON_HEADER in o.headers for o in triaged)
    refused = dossier("9.999999", desk_id="T.MC.A", applicant=_applicant("066090099999"))
    ledger.refuse({"submission_id": str(refused.submission_id), "message_id": "submit:ref",
                   "desk_id": "T.MC.A", "procedure_code": "9.999999", "reason": "not here",
                   "refused_by": "operator-1", "refused_at": clock.now,
                   "submission": RawJSON(encode(refused).decode()),
                   "notice_id": "submit:ref:refused", "notice": b'{"notice":"refused"}'})
    clock.set("2026-11-20 09:00")
    submit("recent")
    close("recent")
    erased = [a["id_number"] for a in (sent["old"].applicant.model_dump(),
                                       sent["triaged"].applicant.model_dump())]
    erased.append(refused.applicant.id_number)
    kept = [sent[k].applicant.id_number for k in ("open", "recent")]
    before = _ledger_text(ledger)
    assert all(i in before for i in erased + kept)

    now = FakeClock("2026-11-29 09:00").now
    assert main(["ledger", "prune", "--keep-days", "30", "--dry-run", "--json",
                 "--db-url", ledger.url]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert (dry["dossiers"], dry["bodies"], dry["refusals"], dry["dry_run"]) == (1, 4, 1, True)
    assert _ledger_text(ledger) == before

    # `casebroker run`'s deadline watch exports when the last prune completed (0: never)
    metrics = Metrics()
    watch = DeadlineWatch(lambda: engine, ledger, declared, metrics=metrics,
                          clock=FakeClock("2026-08-01 09:00"))  # nothing due: no publish
    watch.tick()
    gauge = "casebroker_ledger_last_prune_timestamp_seconds"
    assert metrics.registry.get_sample_value(gauge) == 0

    done = prune(ledger, 30, "ops-1", now=now)
    watch.tick()
    assert metrics.registry.get_sample_value(gauge) == now.timestamp()
    # the dossier returned in September; its assignment, its receipt and result_ready (they
    # name the applicant), the triage copy; the refusal
    assert (done.dossiers, done.bodies, done.refusals, done.since) == (1, 4, 1, None)
    after = _ledger_text(ledger)
    assert [i for i in erased if i in after] == []
    assert [i for i in kept if i in after] == kept
    assert sent["old"].applicant.name not in after
    old = ledger.dossier(codes["old"])
    assert old is not None and is_pruned(old["submission"])
    assert old["state"] == 10 and old["submission_id"] == str(sent["old"].submission_id)
    assert len(ledger.history(codes["old"])) == 3  # the process-control sheet stays whole

    # a replay of the triage copy still finds when it first arrived, by the stub's id
    with ledger.read() as conn:
        copy_body = conn.execute(select(outbox.c.body).where(
            outbox.c.inbox_message_id == "submit:triaged",
            outbox.c.type == "dossier.submitted")).scalar_one()
    assert is_pruned(copy_body)
    assert _kept_submission(copy_body) == str(sent["triaged"].submission_id)
    # and `dossier show <submission id>` still finds what became of it
    assert [d["outcome"] for d in ledger.unopened_submission(
        str(sent["triaged"].submission_id))] == ["triaged:unknown_procedure"]

    # the audit still accounts for everything, the triaged submission by its stub
    report = audit(ledger, Topology("t"), [str(d.submission_id) for d in sent.values()])
    assert (report["unaccounted"], report["unaccounted_dossiers"],
            report["unaccounted_submissions"]) == (0, [], [])

    # the intake delivery again: its receipt again, without the applicant and the
    # documents it named, and no stub for an agency
    again = router.handle([intake_delivery(next(n), encode(sent["old"]), "submit:old")])
    receipt = [o for o in first_out if o.type == "desk.notice"]
    assert [o.message_id for o in again] == [o.message_id for o in receipt]
    kept = json.loads(again[0].body)
    assert kept == {k: v for k, v in json.loads(receipt[0].body).items()
                    if k not in ("applicant", "documents")}
    assert kept["notice"] == "receipt" and decode(again[0].body, expected=None)
    # the same dossier under a new message id: its receipt again, told apart by the digest
    copy = router.handle([intake_delivery(next(n), encode(sent["old"]), "submit:old-retry")])
    assert [o.message_id for o in copy] == [receipt[0].message_id]
    # another dossier under its submission id: dead-lettered, the desk told
    other = dossier(desk_id="T.MC.A", submission_id=str(sent["old"].submission_id))
    reused = router.handle([intake_delivery(next(n), encode(other), "submit:other")])
    dead = [o for o in reused if o.headers and REASON_HEADER in o.headers]
    assert [o.headers[REASON_HEADER] for o in dead] == ["submission_id_reused"]
    assert "ledger prune" in str(dead[0].headers)
    # the refused submission sent again: the refusal again; another under its id: reused
    assert [o.message_id for o in router.handle([intake_delivery(
        next(n), encode(refused), "submit:ref-again")])] == ["submit:ref:refused"]

    # the next run starts at this one's cutoff and finds nothing new
    later = prune(ledger, 30, "ops-1", now=now + timedelta(days=1))
    assert (later.dossiers, later.bodies, later.refusals) == (0, 0, 0)
    assert later.since == done.cutoff
    with ledger.read() as conn:
        runs = conn.execute(select(prunes.c.pruned_by, prunes.c.dossiers, prunes.c.bodies,
                                   prunes.c.refusals).order_by(prunes.c.id)).all()
    assert [tuple(r) for r in runs] == [("ops-1", 1, 4, 1), ("ops-1", 0, 0, 0)]


def test_a_prune_cut_short_is_redone_from_the_last_completed_run_without_counting_twice(
        ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock("2026-09-01 09:00")
    engine = Engine(load_catalog(MINI_CATALOG))
    router = Router(lambda: engine, ledger, Topology("t"), clock=clock)
    submitted = [dossier("9.999999", desk_id="T.MC.A") for _ in range(3)]  # triaged
    router.handle([intake_delivery(i, encode(d), f"submit:{i}")
                   for i, d in enumerate(submitted, 1)])
    refused = dossier("9.999999", desk_id="T.MC.A")
    ledger.refuse({"submission_id": str(refused.submission_id), "message_id": "submit:9",
                   "desk_id": "T.MC.A", "procedure_code": "9.999999", "reason": "not here",
                   "refused_by": "operator-1", "refused_at": clock.now,
                   "submission": RawJSON(encode(refused).decode()),
                   "notice_id": "submit:9:refused", "notice": b'{"notice":"refused"}'})
    now = FakeClock("2026-11-29 09:00").now

    def killed(*_: Any) -> None:
        raise KeyboardInterrupt  # the process stopped after the triage copies' bodies

    monkeypatch.setattr("broker.ops.prune._prune_refusals", killed)
    with pytest.raises(PruneCutShort) as cut:
        prune(ledger, 30, "ops-1", now=now)
    monkeypatch.undo()
    # what its chunks committed, for the command to say
    assert isinstance(cut.value.error, KeyboardInterrupt)
    assert (cut.value.done.bodies, cut.value.done.refusals) == (3, 0)
    with ledger.read() as conn:
        assert conn.execute(select(prunes.c.id)).all() == []  # not completed: not recorded
        bodies = conn.execute(select(outbox.c.body).where(
            outbox.c.type == "dossier.submitted")).scalars().all()
    assert len(bodies) == 3 and all(is_pruned(b) for b in bodies)

    done = prune(ledger, 30, "ops-1", now=now)
    assert (done.since, done.bodies, done.refusals) == (None, 0, 1)  # stubs passed over
    assert str(refused.applicant.id_number) not in _ledger_text(ledger)
    assert all(str(d.applicant.id_number) not in _ledger_text(ledger) for d in submitted)


def test_a_ledger_that_stays_locked_stops_prune_with_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    Ledger(url).dispose()
    holder = sqlite3.connect(tmp_path / "ledger.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer that does not let go (5 s and more)
    try:
        assert main(["ledger", "prune", "--keep-days", "30", "--db-url", url]) == 1
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    captured = capsys.readouterr()
    assert captured.err == "error: ledger unavailable: OperationalError (database is locked)\n"
    assert captured.out == ""
    assert main(["ledger", "prune", "--keep-days", "30", "--db-url", url]) == 0  # let go


def test_two_prunes_at_once_erase_each_row_once(
        ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock("2026-09-01 09:00")
    engine = Engine(load_catalog(MINI_CATALOG))
    router = Router(lambda: engine, ledger, Topology("t"), clock=clock)
    status = StatusRouter(lambda: engine, ledger, Topology("t"), clock=clock)
    out = router.handle([intake_delivery(i, encode(dossier(desk_id="T.MC.A")), f"submit:{i}")
                         for i in range(1, 4)])
    status.handle([status_delivery(10 + i, DossierWithdrawn(
        event_id=uuid.uuid4(), dossier_code=json.loads(o.body)["dossier_code"],
        desk_id="T.MC.A", sent_at=clock.now))
        for i, o in enumerate(o for o in out if o.type == "desk.notice")])
    assert ledger.count_by_state() == {7: 3}
    now = FakeClock("2026-11-29 09:00").now

    # the first run is held inside its first chunk's transaction, its stubs not committed
    erase = broker.ops.prune._erase_submissions
    inside, go = threading.Event(), threading.Event()

    def held(*args: Any) -> int:
        if threading.current_thread().name == "first":
            inside.set()
            assert go.wait(30)
        return erase(*args)

    monkeypatch.setattr(broker.ops.prune, "_erase_submissions", held)
    runs: dict[str, Any] = {}
    threads = [threading.Thread(name=name, target=lambda name=name: runs.__setitem__(
        name, prune(ledger, 30, name, now=now))) for name in ("first", "second")]
    threads[0].start()
    assert inside.wait(30)
    threads[1].start()
    threads[1].join(1.0)
    assert threads[1].is_alive(), f"the second run did not wait: {runs}"
    go.set()
    for t in threads:
        t.join(30)
    assert (runs["first"].dossiers, runs["first"].bodies) == (3, 6)  # assignments, receipts
    assert (runs["second"].dossiers, runs["second"].bodies) == (0, 0)


def test_prune_erases_the_receipt_answered_again_to_a_copy_under_another_id(
        ledger: Ledger) -> None:
    """A desk that lost its receipt sends the dossier again under a new message id: the
    router answers with the first receipt, kept under that id with no event of its own,
    and `ledger prune` (which finds what it erases through the events) left the
    applicant in it, for `dossier resend --desk` to send again."""
    clock = FakeClock("2026-09-01 09:00")
    router, status = mini_handlers(ledger, clock)
    sent = dossier(desk_id="T.MC.A")
    first = router.handle([intake_delivery(1, encode(sent), "submit:1")])
    code = json.loads(first[-1].body)["dossier_code"]
    again = router.handle([intake_delivery(2, encode(sent), "submit:1-again")])
    assert [o.message_id for o in again] == [f"{code}:receipt"]
    clock.set("2026-09-01 10:00")
    status.handle([status_delivery(3, DossierStatus(
        update_id=uuid.uuid4(), dossier_code=code, agency_id="T.UBND.A", status="resolved",
        sent_at=clock.now))])
    status.handle([status_delivery(4, DossierReturned(
        event_id=uuid.uuid4(), dossier_code=code, desk_id="T.MC.A", returned_at=clock.now))])
    prune(ledger, 30, "ops-1", now=FakeClock("2026-11-29 09:00").now)
    with ledger.read() as conn:
        kept = {r.inbox_message_id: bytes(r.body) for r in conn.execute(
            select(outbox.c.inbox_message_id, outbox.c.body)
            .where(outbox.c.message_id == f"{code}:receipt"))}
    assert sorted(kept) == ["submit:1", "submit:1-again"]
    for body in kept.values():
        assert sent.applicant.id_number.encode() not in body
        assert json.loads(body)["notice"] == "receipt"


def test_ctrl_c_mid_prune_says_what_was_erased_and_committed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # its chunks commit one by one: stopped, it said nothing, and the operator could not
    # tell that thousands of dossiers were erased, and not in the erasure log
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    ledger = Ledger(url)
    clock = FakeClock("2026-09-01 09:00")
    engine = Engine(load_catalog(MINI_CATALOG))
    Router(lambda: engine, ledger, Topology("t"), clock=clock).handle(
        [intake_delivery(i, encode(dossier("9.999999", desk_id="T.MC.A")), f"submit:{i}")
         for i in range(1, 3)])  # two triaged: their copies' bodies are erased
    ledger.dispose()

    def killed(*_: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("broker.ops.prune._prune_refusals", killed)
    assert main(["ledger", "prune", "--keep-days", "30", "--db-url", url]) == 130
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (
        "cut short: erased and committed the personal data of 0 closed dossiers, 2 message "
        "bodies and 0 refusals at intake before it stopped; not recorded as a run in the "
        "erasure log (`prunes` lists completed runs): run it again, it passes over what is "
        "erased and finishes the rest\n")


def test_a_run_with_nothing_in_its_window_is_recorded_and_says_why(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # after a run with a shorter retention, the nightly run's cutoff lies before the last
    # one's: it erased nothing and recorded nothing, and the alert on prunes that stopped
    # fired for as long as the difference (found by a review); it said "before <cutoff>
    # and after <a later time>"
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    Ledger(url).dispose()
    assert main(["ledger", "prune", "--keep-days", "7", "--db-url", url, "--by", "a"]) == 0
    capsys.readouterr()
    assert main(["ledger", "prune", "--keep-days", "30", "--db-url", url, "--by", "b"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("nothing to erase: an earlier run erased up to ") and (
        "after this run's cutoff (") in out and "this run is recorded" in out, out
    assert main(["ledger", "prune", "--keep-days", "30", "--db-url", url, "--by", "c",
                 "--dry-run"]) == 0
    assert "; a dry run, not recorded, in the ledger at " in capsys.readouterr().out
    ledger = Ledger(url, create=False)
    try:
        with ledger.read() as conn:
            runs = conn.execute(select(prunes.c.pruned_by, prunes.c.ran_at)
                                .order_by(prunes.c.id)).all()
        assert [r.pruned_by for r in runs] == ["a", "b"]
        assert ledger.last_prune() == runs[1].ran_at
    finally:
        ledger.dispose()


def test_a_chunk_cut_short_counts_nothing_it_did_not_commit(
        ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    # stopped inside a chunk, its transaction rolled back; the submissions it had erased
    # before were counted all the same, and the line said "erased and committed" of them
    # (found by a review)
    clock = FakeClock("2026-09-01 09:00")
    router, status = mini_handlers(ledger, clock)
    d = dossier(desk_id="T.MC.A")
    out = router.handle([intake_delivery(1, encode(d), "submit:1")])
    code = json.loads(out[-1].body)["dossier_code"]
    status.handle([status_delivery(2, DossierStatus(
        update_id=uuid.uuid4(), dossier_code=code, agency_id="T.UBND.A", status="rejected",
        reason="không đủ điều kiện", sent_at=clock.now))])

    def killed(*_: Any) -> None:
        raise KeyboardInterrupt  # after the chunk erased the submission, before its commit

    monkeypatch.setattr("broker.ops.prune._count_event_documents", killed)
    with pytest.raises(PruneCutShort) as cut:
        prune(ledger, 30, "ops-1", now=FakeClock("2026-11-29 09:00").now)
    assert (cut.value.done.dossiers, cut.value.done.bodies) == (0, 0)
    row = ledger.dossier(code)
    assert row is not None and not is_pruned(row["submission"])  # rolled back, as said
