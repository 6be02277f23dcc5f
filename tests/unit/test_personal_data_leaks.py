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
