"""casebroker_ready and casebroker_live: what the probes judge, as gauge values."""

from __future__ import annotations

import math
from typing import Any

from monitoring.metrics import _judged_by


def _fails() -> tuple[bool, dict[str, Any]]:
    raise RuntimeError("a bug in the check")


def test_a_gauge_is_1_while_its_probe_passes_0_while_it_fails_and_nan_if_it_breaks() -> None:
    assert _judged_by(lambda: (True, {}))() == 1.0
    assert _judged_by(lambda: (False, {"problems": ["stopping"]}))() == 0.0
    assert math.isnan(_judged_by(_fails)())  # no alert on a guess; the scrape goes on
