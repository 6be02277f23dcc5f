"""The shipped Đắk Lắk catalog: full size, generated reproducibly, milestones met."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from broker.rules.catalog import SHIPPED_CATALOG, ByArea, Catalog, Chain, FixedAgency, load_catalog
from broker.rules.tools import coverage

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def shipped() -> Catalog:
    return load_catalog()


def test_full_size(shipped: Catalog) -> None:
    spec = shipped.spec
    assert shipped.path == str(SHIPPED_CATALOG)
    assert (spec.catalog, len(spec.procedures), len(spec.agencies), len(spec.desks),
            len(spec.rules)) == ("daklak", 1408, 118, 108, 11)
    assert len({p.code for p in spec.procedures}) == 1408
    wards = [a for a in spec.agencies if a.serves and len(a.serves[0]) == 5]
    assert len(wards) == 102


def test_generated_entries_are_marked_sample(shipped: Catalog) -> None:
    procs = shipped.spec.procedures
    generated = [p for p in procs if p.code.startswith("9.")]
    assert len(generated) == 1325
    assert all(p.sample for p in generated)
    assert all("(thủ tục mẫu số" in p.name for p in generated)
    real = [p for p in procs if not p.code.startswith("9.")]
    assert {"1.001193", "1.000894", "1.004227", "1.000001"} <= {p.code for p in real}
    assert not any("(thủ tục mẫu số" in p.name for p in real)
    # a real name with a sourced national code is not sample; placeholders are
    assert not next(p for p in procs if p.code == "1.001193").sample
    assert all(p.sample for p in real if p.code.startswith("8."))


def test_competence_mix_is_realistic(shipped: Catalog) -> None:
    def kind(p) -> str:  # type: ignore[no-untyped-def]
        c = p.competence
        if isinstance(c, Chain):
            return "chain"
        if isinstance(c, FixedAgency):
            return "agency"
        return f"by_{c.by_area}" if isinstance(c, ByArea) else "at_intake"

    mix = Counter(kind(p) for p in shipped.spec.procedures)
    assert mix == {"by_applicant": 634, "by_subject": 141, "at_intake": 211, "agency": 352,
                   "chain": 70}


@pytest.mark.parametrize(("on", "at_least", "at_most"), [
    (date(2025, 8, 31), 0.0, 0.0),
    (date(2025, 9, 1), 0.5, 0.6),
    (date(2025, 12, 30), 0.5, 0.6),
    (date(2025, 12, 31), 1.0, 1.0),
])
def test_rollout_milestones(shipped: Catalog, on: date, at_least: float, at_most: float) -> None:
    report = coverage(shipped, on)
    assert at_least <= report["share"] <= at_most
    assert report["open"] + report["opening_later"] + report["never"] == 1408


def test_generator_is_up_to_date() -> None:
    """`gen_catalog.py --check`: the shipped file and docs/CATALOG.md are what it writes."""
    done = subprocess.run([sys.executable, "scripts/gen_catalog.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_route_and_decide_agree_and_first_step_shortcut_is_exact(shipped: Catalog) -> None:
    """decide = route + due dates; a one-step plan's step is due with the dossier."""
    from bench.rules_bench import workload
    from broker.errors import RoutingError
    from broker.rules.engine import Engine

    engine = Engine(shipped)
    routed = 0
    for d, at in workload(shipped, 1500, popularity="zipf"):
        try:
            route = engine.route(d, at)
        except RoutingError:
            continue
        dec = engine.decide(d, at)
        assert (dec.steps, dec.rule_id, dec.boundary_free, dec.refusal) == (
            route.steps, route.rule_id, route.boundary_free, route.refusal)
        assert dec.first_step_due_at == engine.step_due_at(dec.steps[0], at, dec.due_at)
        routed += 1
    assert routed == 1500


@pytest.mark.parametrize("size", [100, 1420])
def test_bench_catalogs_have_the_same_shape(size: int) -> None:
    import yaml

    from bench.rules_bench import SHIPPED_CATALOG as BASE
    from bench.rules_bench import load_scaled

    base = yaml.safe_load(BASE.read_bytes())
    catalog, _ = load_scaled(size, base)
    assert len(catalog.spec.procedures) == size
    assert len(catalog.spec.rules) == 11 and len(catalog.spec.agencies) == 118
    chains = sum(isinstance(p.competence, Chain) for p in catalog.spec.procedures)
    assert 0.02 * size <= chains <= 0.1 * size


@pytest.mark.parametrize(("attributes", "agency", "rule"), [
    # the zones' authority, whatever the building's size (after the size rules, which
    # the first match wins, a large or tall one went to the department: found by a review)
    ({"in_industrial_zone": True, "floor_area_m2": 800}, "DLK.BQLKCN",
     "construction-in-industrial-zone"),
    ({"in_industrial_zone": True, "floors": 9}, "DLK.BQLKCN", "construction-in-industrial-zone"),
    ({"floor_area_m2": 800}, "DLK.SO.XD", "construction-large-floor-area"),
    ({"floor_area_m2": 120}, "DLK.UBND.24133", "procedure:1.013225"),
])
def test_a_building_goes_to_the_authority_of_its_zone_then_of_its_size(
        shipped: Catalog, attributes: dict[str, object], agency: str, rule: str) -> None:
    from broker.rules.engine import Engine
    from tests.helpers import dossier

    d = dossier(procedure_code="1.013225", desk_id="DLK.MC.24133", applicant_ward="24133",
                subject={"ward_code": "24133"}, attributes=attributes)
    route = Engine(shipped).route(d, datetime(2026, 1, 5, 2, 0, tzinfo=UTC))
    assert ([s.agency_id for s in route.steps], route.rule_id) == ([agency], rule)


@pytest.mark.parametrize("code", ["1.001193", "2.000528", "1.000894", "2.000806"])
def test_a_foreign_element_civil_status_case_goes_to_the_commune_whatever_its_code(
        shipped: Catalog, code: str) -> None:
    # the catalog's own foreign-element procedures went to the commune, the domestic codes
    # with a foreign element to the justice department: one case, two agencies
    from broker.rules.engine import Engine
    from tests.helpers import dossier

    d = dossier(procedure_code=code, desk_id="DLK.MC.24133", applicant_ward="24133",
                attributes={"foreign_element": True})
    route = Engine(shipped).route(d, datetime(2026, 1, 5, 2, 0, tzinfo=UTC))
    assert [s.agency_id for s in route.steps] == ["DLK.UBND.24133"]
