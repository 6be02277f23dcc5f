"""What `casebroker run` answers on ``/livez`` and ``/readyz`` (beside ``/metrics``).

For an orchestrator (a Docker health check, Kubernetes probes, a load balancer's check):

* **live**: the process still works, or restarting it is the cure. Its AMQP I/O loop
  turns (or its reconnect loop, while RabbitMQ is away), each handler thread is there and
  not held on one batch for minutes (a ledger call that never returns), and the deadline
  watch's thread, if any, is there. An outage of RabbitMQ or the ledger is not a liveness
  failure: the process rides it out, and a restart would not help.
* **ready**: it routes now. Connected to RabbitMQ, not blocked by an alarm, consuming
  every queue, none held up after a failure (the ledger away, publishes refused) without
  a batch acked since, no handler on one batch for half a minute (a ledger call that
  does not return, which no error ends), and no batch waiting half a minute for
  RabbitMQ's confirms (a quorum queue without a leader may hold them back).

Each answers 200 or 503 with a JSON object: ``status``, ``problems`` (sentences, ids of
queues and threads only, never a message's content), and what it judged from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker.amqp_worker import _HandlerThread
    from broker.service import Broker
    from monitoring.metrics import Probe


@dataclass(frozen=True)
class Probes:
    """The two probes of one running :class:`~broker.service.Broker`."""

    broker: Broker
    #: the I/O loop notes a turn each second, the reconnect loop at least every
    #: ``reconnect_max_s`` (10 s); past this, it is stuck
    loop_stale_s: float = 30.0
    #: a batch of 250 takes well under a second, and a ledger away fails in 5 s; past
    #: this, not ready; past ``stuck_batch_s``, not live (a call that does not return).
    #: The same for a batch's confirms, which come within milliseconds
    slow_batch_s: float = 30.0
    stuck_batch_s: float = 120.0

    def routes(self) -> dict[str, Probe]:
        """The paths served beside ``/metrics``."""
        return {"/livez": self.live, "/readyz": self.ready}

    def live(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        service = self.broker.service
        problems: list[str] = []
        idle_s = now - service.turned_at
        if idle_s > self.loop_stale_s:
            problems.append(f"the AMQP I/O loop has not turned for {idle_s:.0f} s")
        for worker in service.workers:
            problems += _handler_problems(worker.thread, now, self.stuck_batch_s)
        watch = self.broker.watch
        if watch is not None and watch.thread_lost:
            problems.append("thread deadline-watch has ended")
        return _answer(problems, "live", {"loop_turned_s_ago": round(idle_s, 1)})

    def ready(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        service = self.broker.service
        problems: list[str] = []
        if service.stopping:
            problems.append("stopping")
        elif not service.connection_open:
            problems.append("not connected to RabbitMQ (reconnecting)")
        elif service.blocked:
            problems.append("RabbitMQ blocks the connection (a memory or disk alarm)")
        queues: dict[str, Any] = {}
        for worker in service.workers:
            since = worker.trouble_since
            held_up_s = None if since is None else round(now - since, 1)
            awaited = worker.confirms_awaited_s(now)
            queues[worker.queue] = {"consuming": worker.consuming, "held_up_s": held_up_s,
                                    "unacked": worker.unacked, "confirms_awaited_s":
                                    None if awaited is None else round(awaited, 1)}
            if service.connection_open and not service.stopping:
                if not worker.consuming:
                    gone, said = worker.missing_exchange, worker.closed_by_broker
                    problems.append(f"{worker.queue}: not consuming" + (
                        f" until exchange {gone} is back (`casebroker topology declare`)"
                        if gone is not None else
                        " until the ledger takes writes again (its deliveries given back "
                        "to the queue)" if worker.parked else
                        f" (RabbitMQ closed its channel: {said})" if said is not None
                        else ""))
                if held_up_s is not None:
                    problems.append(f"{worker.queue}: held up for {held_up_s:.0f} s: "
                                    f"{worker.trouble}")
                if awaited is not None and awaited > self.slow_batch_s:
                    # a quorum queue without a majority may hold them back rather than
                    # nack; every later ack on this queue waits behind this batch
                    problems.append(f"{worker.queue}: RabbitMQ has not confirmed a batch's "
                                    f"publishes for {awaited:.0f} s (a queue without a "
                                    "leader?); its deliveries and those after it stay "
                                    "unacked")
            problems += _handler_problems(worker.thread, now, self.slow_batch_s)
        details: dict[str, Any] = {"queues": queues}
        watch = self.broker.watch
        if watch is not None and watch.last_round_at is not None:
            # routing goes on without it: told, not judged (CasebrokerDeadlineWatchStalled)
            details["deadline_watch_last_round_s_ago"] = round(now - watch.last_round_at, 1)
        return _answer(problems, "ready", details)


def starting() -> dict[str, Probe]:
    """What the two paths answer while `casebroker run` opens the ledger and builds its
    consumers, its metrics port already held: live (a restart would not help), not
    ready."""
    return {"/livez": lambda: _answer([], "live", {"starting": True}),
            "/readyz": lambda: _answer(["starting: opening the ledger"], "ready", {})}


def _handler_problems(thread: _HandlerThread, now: float, limit_s: float) -> list[str]:
    """A handler thread that has ended, or has been on one batch for over ``limit_s``."""
    if not thread.os_thread.is_alive():
        return [f"thread {thread.name} has ended"]
    started = thread.job_started
    if started is None or now - started <= limit_s:
        return []
    return [f"thread {thread.name} has been on one batch for {now - started:.0f} s (a ledger "
            "call that does not return?)"]


def _answer(problems: list[str], good: str, details: dict[str, Any]
            ) -> tuple[bool, dict[str, Any]]:
    return not problems, {"status": good if not problems else f"not {good}",
                          "problems": problems, **details}
