"""`casebroker topology delete`: take a topology down without losing what it holds.

RabbitMQ deletes a queue's messages with the queue, and quorum queues do not take
``queue.delete``'s ``if-empty`` (3.10 closes the connection on it). So the command finds
every queue under the prefix (the catalog's, and through the management API any other:
an agency since dropped, a topology declared from another catalog), refuses while one
holds messages or has a consumer, then deletes the exchanges first (nothing routed
through them can arrive any more; a desk publishing meanwhile is refused, and told so by
its confirm) and looks again before it deletes each queue: one that took messages in
between is left, and named. It holds the operator lock throughout, so no dead-letters
command is taking and putting back messages meanwhile. ``--force`` deletes them all.
"""

from __future__ import annotations

import sys

from broker.ops.queues import channel, lock_queue, queue_state
from broker.rules.catalog import Catalog
from broker.security import Management, ManagementError, ManagementUrlError
from broker.topology import Topology


def _names(topology: Topology, catalog: Catalog, management_url: str
           ) -> tuple[list[str], list[str], dict[str, int]]:
    """Every queue and exchange under the prefix, and the messages each queue has
    delivered to its consumers and not had acked, as the management API last counted
    them (ManagementError: the API is needed)."""
    queues = topology.queues(catalog.agency_ids, catalog.desk_ids)
    exchanges = list(topology.exchanges)
    under = topology.prefix + "."
    api = Management.from_url(management_url)
    # a passive declare counts only the messages ready: those delivered to a consumer
    # (an agency's inbox, a router's prefetch window: up to 2,000) and not acked yet are
    # lost with the queue too, and only the management API counts them
    unacked = {q: n for q, n in api.unacked().items() if q.startswith(under)}
    queues += [q for q in unacked if q not in queues and q != lock_queue(topology)]
    exchanges += [x for x in api.names("exchanges") if x.startswith(under)
                  and x not in exchanges]
    return queues, exchanges, unacked


def delete(topology: Topology, catalog: Catalog, management_url: str, force: bool) -> int:
    """Delete the topology as the module says; print what was done; the exit status."""
    try:
        queues, exchanges, unacked = _names(topology, catalog, management_url)
    except ManagementUrlError:
        raise  # what it was given is wrong: exit 2, as for any setting
    except ManagementError as e:
        print(f"error: {e}: without the management API, queues under {topology.prefix!r} "
              "that the catalog does not name would be left behind with what they hold "
              "(--management-url, CASEBROKER_MANAGEMENT_URL). Nothing was deleted",
              file=sys.stderr)
        return 1
    with channel(lock=topology) as ch:
        found = {q: s for q in queues if (s := queue_state(ch, q)) is not None}
        busy = {q: s for q, s in found.items() if s != (0, 0)}
        if busy and not force:
            _name_busy(busy, unacked)
            print(f"error: {len(busy)} queue(s) under {topology.prefix!r} hold messages or "
                  "have consumers (a router, an agency's or a desk's inbox): deleting them "
                  "loses what they hold. Stop the consumers and let the queues drain, or "
                  "move what they hold; --force deletes them all the same. Nothing was "
                  "deleted", file=sys.stderr)
            return 1
        for x in exchanges:
            ch.exchange_delete(x)
        deleted, lost, late = 0, 0, {}
        for q in found:
            now = queue_state(ch, q)
            if now is None:
                continue
            if now != (0, 0) and not force:
                late[q] = now
                continue
            ch.queue_delete(q)
            held = unacked.get(q, 0) if now[1] else 0  # a consumer's, lost with it
            deleted, lost = deleted + 1, lost + now[0] + held
    if not found:
        # a mistyped prefix deleted nothing and said "deleted 0 queues": as if done.
        # Still exit 0: a teardown run twice, or after a partial one, has nothing left
        print(f"no queue under {topology.prefix!r} to delete (its exchanges, if it had "
              "any, are deleted): is that the prefix meant? --prefix, CASEBROKER_PREFIX")
        return 0
    print(f"deleted {deleted} queues and the exchanges under {topology.prefix!r}"
          + (f" ({lost} message(s) with them)" if lost else ""))
    if late:
        _name_busy(late, unacked)
        print(f"error: {len(late)} queue(s) took messages or consumers while the topology "
              "was taken down, and were left with them; its exchanges are gone (`topology "
              "declare` restores them)", file=sys.stderr)
        return 1
    return 0


def _name_busy(busy: dict[str, tuple[int, int]], unacked: dict[str, int]) -> None:
    for q, (messages, consumers) in sorted(busy.items()):
        held = unacked.get(q, 0) if consumers else 0
        print(f"  {q}: {messages} message(s), {consumers} consumer(s)" + (
            f" holding {held} more, delivered and not acked yet" if held else ""),
            file=sys.stderr)
