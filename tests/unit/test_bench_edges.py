"""Edges of the benchmark's and the demo's arithmetic, on fakes: no RabbitMQ, no timing.

Each test drives the code under a fake clock (or none) and checks what a figure is
computed from: which interval, which time stamp, which rank, which count.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.conftest import MINI_CATALOG


class _Clock:
    """A monotonic clock that moves only when told (``sleep`` moves it too)."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_800_000_000.0 + self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


# --- percentiles: nearest rank, not one rank above it ---------------------------------

def test_bench_percentile_is_the_nearest_rank() -> None:
    from bench.process import _percentile

    hundred = [float(i) for i in range(1, 101)]
    assert _percentile(hundred, 0.99) == 99.0  # not the maximum
    assert _percentile(hundred, 0.50) == 50.0
    assert _percentile([float(i) for i in range(1, 10_001)], 0.99) == 9900.0
    assert _percentile([1.0, 2.0], 0.50) == 1.0
    assert _percentile([7.0], 0.99) == 7.0


def test_demo_percentile_is_the_nearest_rank() -> None:
    from adapters.demo import _percentile

    assert _percentile([float(i) for i in range(1, 101)], 0.99) == 99.0
    assert _percentile([float(i) for i in range(1, 501)], 0.99) == 495.0
    assert _percentile([], 0.99) is None


def test_machine_gauge_percentiles_are_the_nearest_rank(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    from bench import machine

    # 300 synced writes taking 1..300 ms: p50 is the 150th, p99 the 297th
    monkeypatch.setattr(machine, "_fsync_ms", lambda _d, n: [float(i) for i in range(n, 0, -1)])
    reading = machine.gauges(writes=300, runs=1)
    assert reading["fsync_p50_ms"] == 150.0
    assert reading["fsync_p99_ms"] == 297.0


# --- the receipt stage's publisher: latency from when each dossier was due ------------

class _FakeChannel:
    def __init__(self) -> None:
        self.published: list[str] = []

    def basic_publish(self, _exchange: str, key: str, _body: bytes, _props: Any) -> None:
        self.published.append(key)


class _FakeIoloop:
    def __init__(self) -> None:
        self.timers: list[tuple[float, Any]] = []

    def call_later(self, delay: float, fn: Any) -> object:
        self.timers.append((delay, fn))
        return object()


def test_paced_publisher_reports_the_time_each_message_was_due(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Coordinated omission: a publish held up (here the window is full while a confirm
    is slow) goes late; its latency must count from when it was due at the offered rate,
    or the stall the broker caused is left out of the very dossiers it delayed."""
    from bench import publisher

    clock = _Clock()
    monkeypatch.setattr(publisher, "time", clock)
    noted: list[tuple[str, float]] = []
    messages = [("x", f"m{i}", b"", None) for i in range(3)]
    pipe = publisher._Pipeline(messages, 1, 100.0,  # window 1, 100/s: due at 0, 10, 20 ms
                               lambda message, due: noted.append((message[1], due)))
    channel, ioloop = _FakeChannel(), _FakeIoloop()
    pipe.channel = channel
    pipe.connection = SimpleNamespace(ioloop=ioloop, close=lambda: None)
    pipe.start()
    assert channel.published == ["m0"]
    clock.now = 0.5  # the first confirm comes half a second late
    pipe.on_confirm(SimpleNamespace(method=SimpleNamespace(delivery_tag=1, multiple=False)))
    assert channel.published == ["m0", "m1"]  # sent at once, 490 ms after it was due
    assert noted == [("m0", 0.0), ("m1", pytest.approx(0.01))]


def test_unpaced_publisher_reports_the_moment_of_sending(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    from bench import publisher

    clock = _Clock()
    clock.now = 3.0
    monkeypatch.setattr(publisher, "time", clock)
    noted: list[float] = []
    pipe = publisher._Pipeline([("x", "m0", b"", None)], 10, 0.0,
                               lambda _message, due: noted.append(due))
    pipe.channel = _FakeChannel()
    pipe.connection = SimpleNamespace(ioloop=_FakeIoloop(),
                                      close=lambda: None)
    pipe.start()
    assert noted == [3.0]


# --- the router stages: the clock stops once the last publishes are confirmed ---------

def test_router_clock_stops_only_once_every_delivery_is_acked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The router acks a delivery when its assignment and receipt are confirmed. The
    ledger holds the last batch before that; a clock stopped there leaves the last
    batch's publishes out, where the shovel's clock waits for its copies in the queues."""
    from bench import common, router

    clock = _Clock()
    monkeypatch.setattr(common, "time", clock)
    monkeypatch.setattr(router, "time", clock)

    class Worker:
        @property
        def unacked(self) -> int:  # the last batch's confirms come at 1 s
            return 250 if clock.now < 1.0 else 0

    class FakeBroker:
        def __init__(self, *_a: Any, **_k: Any) -> None:
            self.service = SimpleNamespace(workers=[Worker()])

        def serve(self, **_k: Any) -> None:
            pass

        def stop(self) -> None:
            pass

    @contextlib.contextmanager
    def fake_topology(_catalog: Any, _stage: str) -> Iterator[Any]:
        yield SimpleNamespace(intake_queue="hb.intake")

    @contextlib.contextmanager
    def fake_ledger_url(_kind: str) -> Iterator[str]:
        yield "sqlite://"

    meter = SimpleNamespace(stop=lambda: None, per_message=lambda _n: {})
    monkeypatch.setattr(router, "fresh_topology", fake_topology)
    monkeypatch.setattr(router, "ledger_url", fake_ledger_url)
    monkeypatch.setattr(router, "preload_intake", lambda *_a, **_k: 700)
    monkeypatch.setattr(router, "Ledger", lambda *_a, **_k: SimpleNamespace(dispose=lambda: None))
    monkeypatch.setattr(router, "Broker", FakeBroker)
    monkeypatch.setattr(router, "blocking", lambda: SimpleNamespace(channel=lambda: None,
                                                                    close=lambda: None))
    monkeypatch.setattr(router, "depth", lambda _ch, _q: 0)  # all taken
    monkeypatch.setattr(router, "processed", lambda _l: {"routed": 500})  # all committed
    monkeypatch.setattr(router, "CpuMeter", lambda: meter)
    result = router.router(SimpleNamespace(), 500, common.Progress(False))  # type: ignore[arg-type]
    assert result.seconds >= 1.0


# --- the demo: lost counts, paced submissions, leftovers ------------------------------

class _FakeBlocking:
    """pika.BlockingConnection answering passive declares from a dict of depths."""

    depths: dict[str, int] = {}

    def __init__(self, _params: Any) -> None:
        pass

    def channel(self) -> Any:
        def queue_declare(queue: str, passive: bool = False) -> Any:
            return SimpleNamespace(method=SimpleNamespace(
                message_count=self.depths.get(queue, 0), consumer_count=0))
        return SimpleNamespace(queue_declare=queue_declare)

    def close(self) -> None:
        pass


def test_demo_counts_a_lost_submission_beside_a_dead_lettered_status_update(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A submission missing from the ledger is accounted for by a dead letter of intake
    or a triage copy; a status update dead-lettered elsewhere must not cancel it out."""
    from adapters import demo
    from broker.topology import Topology

    topology = Topology("hbedges")
    _FakeBlocking.depths = {topology.dead_queue("status"): 1}
    monkeypatch.setattr("adapters.demo.pika.BlockingConnection", _FakeBlocking)
    ids = [str(uuid.uuid4()) for _ in range(3)]
    in_ledger = {sid: (f"C{i}", 10, False) for i, sid in enumerate(ids[:2])}  # one missing
    ledger = SimpleNamespace(states_for_submissions=lambda _ids: in_ledger)
    summary = demo._summarize(topology, ledger, demo._Tally(), ids, 1.0, 0.0)  # type: ignore[arg-type]
    assert summary["dead_lettered"] == 1
    assert summary["lost"] == 1


def test_demo_intake_dead_letters_still_account_for_missing_submissions(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from adapters import demo
    from broker.topology import Topology

    topology = Topology("hbedges")
    _FakeBlocking.depths = {topology.dead_queue("intake"): 1, topology.triage_queue: 1}
    monkeypatch.setattr("adapters.demo.pika.BlockingConnection", _FakeBlocking)
    ids = [str(uuid.uuid4()) for _ in range(3)]
    ledger = SimpleNamespace(states_for_submissions=lambda _ids: {ids[0]: ("C0", 10, False)})
    summary = demo._summarize(topology, ledger, demo._Tally(), ids, 1.0, 0.0)  # type: ignore[arg-type]
    assert summary["lost"] == 0


def test_paced_demo_times_each_receipt_from_when_its_dossier_was_due(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With --rate one desk submits on a schedule and waits for each confirm; a slow
    confirm delays the next submissions, whose receipt latency must still count from
    when they were due (coordinated omission), not from when they finally went."""
    from adapters import demo

    clock = _Clock()
    monkeypatch.setattr(demo, "time", clock)

    class Client:
        def __init__(self, **_k: Any) -> None:
            self.calls = 0

        def __enter__(self) -> Client:
            return self

        def __exit__(self, *_exc: Any) -> None:
            pass

        def publish(self, *_a: Any, **_k: Any) -> None:
            self.calls += 1
            clock.now += 0.5 if self.calls == 1 else 0.001  # the first confirm is slow

    monkeypatch.setattr(demo, "BrokerClient", Client)
    ids = iter(range(3))
    factory = SimpleNamespace(make=lambda: SimpleNamespace(
        submission_id=uuid.UUID(int=next(ids) + 1)))
    tally = demo._Tally()
    submitters = demo._Submitters(demo.DemoSettings(dossiers=3, rate=100.0),
                                  SimpleNamespace(intake_exchange="hb.x"),  # type: ignore[arg-type]
                                  factory, tally)  # type: ignore[arg-type]
    submitters._submit()
    assert not submitters.failures
    assert sorted(tally.submitted_at.values()) == [0.0, pytest.approx(0.01),
                                                   pytest.approx(0.02)]


def test_failed_demo_removes_its_working_directory(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    """A demo that fails (here: its router never consumes) still removes the throw-away
    ledger and log it made, as a finished one does."""
    import tempfile

    from adapters import demo

    made: list[Path] = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(prefix: str = "") -> str:
        made.append(Path(real_mkdtemp(prefix=prefix, dir=tmp_path)))
        return str(made[-1])

    def never_consumes(*_a: Any) -> None:
        raise RuntimeError("casebroker run did not start consuming")

    monkeypatch.setattr("adapters.demo.tempfile.mkdtemp", mkdtemp)
    monkeypatch.setattr(demo, "declare_topology", lambda *_a: None)
    monkeypatch.setattr(demo, "delete_topology", lambda *_a: None)
    monkeypatch.setattr(demo, "_start_router", lambda *_a: SimpleNamespace(returncode=1))
    monkeypatch.setattr(demo, "stop_process", lambda _p: 1)
    monkeypatch.setattr(demo, "_wait_for_consumer", never_consumes)
    with pytest.raises(RuntimeError, match="did not start consuming"):
        demo.run_demo(demo.DemoSettings(dossiers=1, progress=False, catalog=str(MINI_CATALOG),
                                        prefix="hbedges"))
    assert len(made) == 1 and not made[0].exists()


# --- the memory stage: router_rss_peak_mb is the process's peak ------------------------

def test_rss_peak_is_the_kernels_high_water_mark(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sampled once a chunk, the "peak" misses memory taken and given back inside a
    chunk; the kernel keeps the real one (VmHWM). Here the "router" is this process,
    which has just held 200 MB more for a moment."""
    import os

    from bench import common, process

    big = b"x" * (200 * 2**20)  # touched, so resident; freed at once
    del big
    high_water = process.rss_mb(os.getpid(), "VmHWM")

    topology = SimpleNamespace(intake_exchange="hb.x", intake_queue="hb.intake",
                               agency_queue=str, desk_queue=str)
    monkeypatch.setattr(process, "fresh_topology", lambda *_a: contextlib.nullcontext(topology))
    monkeypatch.setattr(process, "sqlite_ledger_url", lambda: contextlib.nullcontext("sqlite://"))
    monkeypatch.setattr(process, "router_process", lambda *_a, **_k: contextlib.nullcontext(
        SimpleNamespace(pid=os.getpid())))
    monkeypatch.setattr(process, "_recycled", lambda _c, n, pool: iter(
        [common.Dossier(str(i), b"{}") for i in range(n)]))
    monkeypatch.setattr(process, "publish", lambda messages: list(messages))
    monkeypatch.setattr(process, "blocking", lambda: SimpleNamespace(
        channel=lambda: SimpleNamespace(queue_purge=lambda _q: None), close=lambda: None))
    monkeypatch.setattr(process, "wait_until", lambda *_a, **_k: 0.0)
    monkeypatch.setattr(process, "Ledger", lambda *_a, **_k: SimpleNamespace(
        count_inbox_outcomes=lambda: {"routed": 4}, dispose=lambda: None))
    catalog = SimpleNamespace(agency_ids=["a"], desk_ids=["d"])
    result = process.router_rss(catalog, 4, common.Progress(False), chunk=2)  # type: ignore[arg-type]
    assert result.end_mb < high_water - 100  # the 200 MB are gone again...
    assert result.peak_mb >= high_water  # ...but were the process's peak


@pytest.mark.parametrize("refusal", ["_require_empty", "Ledger"])
def test_demo_refusing_its_ledger_leaves_no_working_directory(
        refusal: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`casebroker demo --db-url` on a ledger that holds dossiers, or one out of reach,
    is refused before anything runs; it must not leave an empty casebroker-demo-* behind
    (each full test run did, tests/integration/test_cli.py refusing a working ledger)."""
    import tempfile

    from adapters import demo
    from broker.errors import StartupError

    real_mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr("adapters.demo.tempfile.mkdtemp",
                        lambda prefix="": real_mkdtemp(prefix=prefix, dir=tmp_path))

    def refuse(*_a: Any, **_k: Any) -> None:
        raise StartupError("hb: refused")

    monkeypatch.setattr(demo, refusal, refuse)
    with pytest.raises(StartupError, match="hb: refused"):
        demo.run_demo(demo.DemoSettings(dossiers=1, progress=False, catalog=str(MINI_CATALOG),
                                        db_url=f"sqlite:///{tmp_path / 'hb.sqlite3'}",
                                        prefix="hbedges"))
    assert list(tmp_path.glob("casebroker-demo-*")) == []
