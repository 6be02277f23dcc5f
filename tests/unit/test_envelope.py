"""Headers made portable: what pika decodes from any sender, as both an AMQP table pika
can encode again and JSON the ledger can store."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pika.compat import long
from pika.data import encode_table

from broker.envelope import HEADER_NAME_MAX, portable_headers, short_text


def test_what_pika_decodes_is_made_text_where_amqp_or_json_cannot_take_it_back() -> None:
    when = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
    decoded = {b"\xff" * 100: long(10**300),  # pika's int subclass, for a double
               "x-int": long(-2**63), "x-nan": float("nan"), "x-amount": Decimal("1.50"),
               "x-when": when, "x-raw": b"\xfe", "x-list": [b"a", {"k": 2**64}],
               "x-ok": "kept", "x-flag": True, "x-none": None}
    out = portable_headers(decoded)
    # escaped, 400 characters: cut to 255 bytes, a digest of the whole at the end
    (long_name,) = [k for k in out if k.startswith("\\xff" * 50)]
    assert len(long_name.encode()) == HEADER_NAME_MAX and "~" in long_name
    assert out[long_name] == str(10**300)
    assert out["x-int"] == -2**63 and type(out["x-int"]) is int
    assert out["x-nan"] == "nan" and out["x-amount"] == "1.50"
    assert out["x-when"] == when.isoformat() and out["x-raw"] == "\\xfe"
    assert out["x-list"] == ["a", {"k": str(2**64)}]
    assert (out["x-ok"], out["x-flag"], out["x-none"]) == ("kept", True, None)
    encode_table([], out)  # pika takes it: no exception
    assert json.loads(json.dumps(out, allow_nan=False)) == out


def test_a_long_name_keeps_a_digest_so_two_long_names_stay_apart() -> None:
    a, b = "n" * 300 + "a", "n" * 300 + "b"
    out = portable_headers({a: 1, b: 2})
    assert len(out) == 2 and all(len(k) <= HEADER_NAME_MAX for k in out)


def test_short_text_keeps_what_fits_and_digests_the_rest() -> None:
    assert short_text("dossier.submitted", 32) == "dossier.submitted"
    cut = short_text("t" * 100, 32)
    assert len(cut) == 32 and cut != short_text("t" * 101, 32)
    assert short_text(b"\xfe", 32) == "\\xfe"


@pytest.mark.parametrize("text", [
    "ệ" * 85,                    # 85 characters, 255 bytes: fits both bounds, kept whole
    "ệ" * 85 + ":held",          # 90 characters, 260 bytes: over AMQP's short string
    "ệ" * 127 + "a",             # 128 characters, 382 bytes
    "𝔸" * 100,                   # four bytes a character: never cut inside one
])
def test_short_text_fits_an_amqp_short_string_in_bytes_as_well_as_characters(
        text: str) -> None:
    kept = short_text(text, 128)
    assert len(kept) <= 128 and len(kept.encode()) <= 255
    if len(text.encode()) <= 255 and len(text) <= 128:
        assert kept == text
    else:
        assert "~sha256:" in kept and text.startswith(kept.split("~sha256:")[0])
        assert kept != short_text(text + "x", 128)  # the digest is of the whole
