"""What a topology prefix may be."""

from __future__ import annotations

import pytest

from broker.topology import Topology, TopologyError


@pytest.mark.parametrize("prefix", ["cb", "t0123456789", "dak-lak_2", "x" * 64])
def test_a_prefix_of_letters_digits_and_dashes_names_a_topology(prefix: str) -> None:
    assert Topology(prefix).intake_queue == f"{prefix}.intake"


@pytest.mark.parametrize("prefix", ["cb.x", "", "a b", "x" * 65, "cb/"])
def test_a_prefix_that_could_reach_into_another_is_refused(prefix: str) -> None:
    # `cb.x` would put its names under `cb`'s (`cb.x.intake`), for topology delete and
    # users apply --retire to take for cb's own (found by a review)
    with pytest.raises(TopologyError, match="is not 1 to 64 ASCII letters"):
        Topology(prefix)
