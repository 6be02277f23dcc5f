"""Simulated citizens and desks: plausible dossiers for a catalog, from a seeded RNG.

Traffic is shaped like a province's: most dossiers arrive at commune desks, many
for people living in that commune, the rest at the provincial centre, the online
portal, bank agent points and the post; popular (real) procedures are asked for
far more often than the long tail. Names and id numbers are invented.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

from broker.messages import DossierSubmitted, new_id
from broker.rules.catalog import Catalog, Desk
from broker.rules.validate import WARD_CODE_LENGTH

SURNAMES = ("Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng",
            "Bùi", "Đỗ", "Hồ", "Ngô", "Dương", "Y", "H'", "Ksor", "Niê", "Êban")
GIVEN = ("An", "Bình", "Châu", "Dũng", "Hà", "Hải", "Hạnh", "Hùng", "Lan", "Linh", "Mai",
         "Minh", "Nam", "Ngọc", "Phúc", "Quang", "Sơn", "Thảo", "Trang", "Tuấn", "Blơ", "Nhi")
#: where dossiers are received: commune desks, the provincial centre, portal, agents, post
CHANNEL_WEIGHTS = {"in_person": 70, "online": 20, "agent": 6, "postal": 4}
SAME_AREA_SHARE = 0.7
OTHER_RETURN_DESK_SHARE = 0.15
ORGANIZATION_SHARE = 0.08
POPULAR_WEIGHT = 25


class DossierFactory:
    """Makes valid ``dossier.submitted`` messages for one catalog."""

    def __init__(self, catalog: Catalog, rng: random.Random) -> None:
        spec = catalog.spec
        self.rng = rng
        self.procedures = [p.code for p in spec.procedures]
        self.weights = [1 if p.sample else POPULAR_WEIGHT for p in spec.procedures]
        self.wards = sorted({a for ag in spec.agencies for a in ag.serves
                             if len(a) == WARD_CODE_LENGTH})
        by_channel: dict[str, list[Desk]] = {}
        for desk in spec.desks:
            by_channel.setdefault(desk.channel, []).append(desk)
        self.desks_by_channel = by_channel
        self.channels = [c for c in CHANNEL_WEIGHTS if c in by_channel]
        self.channel_weights = [CHANNEL_WEIGHTS[c] for c in self.channels]
        self.commune_desks = [d for d in spec.desks
                              if d.area and len(d.area) == WARD_CODE_LENGTH
                              and d.channel == "in_person"]

    def _any_ward(self) -> str | None:
        """A ward some agency serves; None in a catalog whose agencies serve only whole
        provinces (a ward code is optional in a dossier)."""
        return self.rng.choice(self.wards) if self.wards else None

    def make(self) -> DossierSubmitted:
        """One new dossier with a fresh submission id."""
        rng = self.rng
        channel = rng.choices(self.channels, self.channel_weights)[0]
        desk = rng.choice(self.desks_by_channel[channel])
        home = desk.area if desk.area and len(desk.area) == WARD_CODE_LENGTH else None
        ward = home if home and rng.random() < SAME_AREA_SHARE else self._any_ward()
        subject_ward = ward if rng.random() < 0.8 else self._any_ward()
        return_desk = desk.id
        if self.commune_desks and rng.random() < OTHER_RETURN_DESK_SHARE:
            return_desk = rng.choice(self.commune_desks).id
        organization = rng.random() < ORGANIZATION_SHARE
        applicant: dict[str, Any] = {
            "kind": "organization" if organization else "citizen",
            "name": (f"Công ty TNHH {rng.choice(GIVEN)} {rng.choice(GIVEN)}" if organization
                     else f"{rng.choice(SURNAMES)} {rng.choice(GIVEN)} {rng.choice(GIVEN)}"),
            "id_number": "".join(rng.choice("0123456789") for _ in range(10 if organization
                                                                       else 12)),
            "phone": "09" + "".join(rng.choice("0123456789") for _ in range(8)),
            "ward_code": ward,
        }
        code = rng.choices(self.procedures, self.weights)[0]
        return DossierSubmitted.model_validate({
            "schema": "casebroker.dossier.submitted/v1",
            "submission_id": str(new_id(random_bits=rng.getrandbits(74))),
            "procedure_code": code,
            "desk_id": desk.id,
            "return_desk_id": return_desk,
            "channel": channel,
            "submitted_at": datetime.now(UTC).isoformat(),
            "applicant": applicant,
            "subject": {"ward_code": subject_ward} if subject_ward else None,
            "documents": [{
                "name": "don-de-nghi.pdf", "uri": f"https://docs.example.invalid/{code}",
                "sha256": f"{rng.getrandbits(256):064x}", "size": rng.randint(20_000, 900_000),
                "media_type": "application/pdf"}],
            "attributes": {
                "floor_area_m2": rng.choice((60, 120, 250, 800, 1500)),
                "foreign_element": rng.random() < 0.03,
                "charter_capital_vnd": rng.choice((0, 500_000_000, 5_000_000_000,
                                                   50_000_000_000)),
            },
        })
