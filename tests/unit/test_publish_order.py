"""A batch's messages go out grouped by destination, each destination's in its order."""

from __future__ import annotations

import random

from broker.amqp_worker import by_destination
from broker.envelope import Outbound


def _out(exchange: str, key: str, n: int) -> Outbound:
    return Outbound(exchange, key, f"{exchange}/{key}/{n}", "desk.notice", None, None, b"{}")


def test_grouped_and_stable() -> None:
    rng = random.Random(7)
    destinations = [("p.agency", f"A{i}") for i in range(5)] + [("p.desk", f"D{i}")
                                                                 for i in range(5)]
    counters = dict.fromkeys(destinations, 0)
    batch = []
    for _ in range(300):  # dossier order: assignment and receipt hop between queues
        dest = rng.choice(destinations)
        batch.append(_out(*dest, counters[dest]))
        counters[dest] += 1
    published = by_destination(list(batch))
    assert sorted(published, key=lambda o: o.message_id) == sorted(batch,
                                                                   key=lambda o: o.message_id)
    # each destination appears as one run
    runs = [(o.exchange, o.routing_key) for i, o in enumerate(published)
            if i == 0 or (published[i - 1].exchange, published[i - 1].routing_key)
            != (o.exchange, o.routing_key)]
    assert len(runs) == len(set(runs)) == len([d for d in destinations if counters[d]])
    # and within a destination, the order the handler produced
    for dest in destinations:
        ids = [o.message_id for o in published if (o.exchange, o.routing_key) == dest]
        assert ids == [f"{dest[0]}/{dest[1]}/{n}" for n in range(counters[dest])]
