"""Personal data in the words of an error a log or an operator sees (no RabbitMQ, no
ledger: the paths below end before either)."""

from __future__ import annotations

import pytest

from broker.errors import DecodeError
from broker.messages import decode

PHONE = "0912345678"


@pytest.mark.parametrize("content_type", [
    f"text/plain; name={PHONE}", "Nguyễn Văn An", f"application/x-{PHONE}"])
def test_a_content_type_that_may_hold_personal_data_is_withheld_from_the_decode_error(
        content_type: str) -> None:
    # the detail goes to the dead letter's x-casebroker-detail header, which `dead-letters
    # list` prints whole, and the SDK's Inbox logs the error
    with pytest.raises(DecodeError) as caught:
        decode(b"{}", content_type=content_type)
    assert caught.value.reason == "wrong_content_type"
    assert PHONE not in str(caught.value) and "Nguy" not in str(caught.value)


def test_a_plain_content_type_is_still_named_in_the_decode_error() -> None:
    with pytest.raises(DecodeError) as caught:
        decode(b"{}", content_type="text/plain; charset=utf-8")
    assert caught.value.detail == "content type 'text/plain; charset=utf-8' is not JSON"


def test_the_sdk_refusing_a_dossier_of_another_desk_never_quotes_its_desk_id() -> None:
    # a phone number typed into desk_id: the SDK's ValueError (logged by the desk's
    # application) quoted it, where every other error of the SDK names, never quotes
    from adapters.client import DeskClient
    from tests.helpers import dossier

    client = DeskClient("T.MC.B", url="amqp://guest:guest@127.0.0.2:5672/%2F")
    try:
        with pytest.raises(ValueError, match="nothing was sent") as caught:
            client.submit(dossier(desk_id=f"{PHONE}901"))
    finally:
        client.close()
    assert PHONE not in str(caught.value)
    assert "T.MC.B" in str(caught.value)


@pytest.mark.parametrize("written", [
    "0905.123.456", "0905 123 456", "090-512-3456", "066 090 001 234", "066.090.001.234",
    "desk-0905.123.456", "0905123456"])
def test_a_phone_or_id_number_written_in_groups_is_withheld_as_one_run_together(
        written: str) -> None:
    # only nine digits or more in a row were: a desk id "0905.123.456", which the
    # contract's pattern allows, went whole into a triage detail, `dead-letters list` and
    # `refuse`'s lines (found by a review)
    from broker.messages import shown_id, shown_message_id
    from broker.ops.deadletters import _is_token

    assert shown_id(written) == f"<{len(written)} characters withheld: a phone or id number?>"
    assert shown_message_id(f"submit:{written}").startswith("withheld-")
    assert not _is_token(written)  # `dead-letters show` withholds the field


@pytest.mark.parametrize("plain", [
    "T.UBND.A-261125-0001", "T.UBND.A-261125-0001:assigned:1", "2026-11-25", "T.MC.B",
    "10.0.0.1", "submit:0190a3b4-5c6d-7e8f-9a0b-1c2d3e4f5a6b", "P.SO-TP.12.34"])
def test_codes_dates_and_ids_with_digits_in_groups_are_still_shown(plain: str) -> None:
    from broker.messages import shown_id, shown_message_id
    from broker.ops.deadletters import _is_token

    assert shown_id(plain) == plain and shown_message_id(plain) == plain
    assert _is_token(plain)


@pytest.mark.parametrize(("value", "shown"), [
    ("0799123456780987654321", False),  # an id number and a phone run together: digits
    ("0799123456780000", False),        # are hexadecimal too, and it was shown as a hash
    ("12345678-1234-1234-1234-123456789012", False),
    ("0190a0a0-0000-7000-8000-000000000000", True),
    ("1234c5d6c9f2c423", True),          # the catalog's hash
    ("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", True),
])
def test_only_hexadecimal_with_a_letter_passes_for_a_hash_in_dead_letters_show(
        value: str, shown: bool) -> None:
    from broker.ops.deadletters import _is_token

    assert _is_token(value) is shown
