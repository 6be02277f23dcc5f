"""CASEBROKER_AMQP_URL's nodes: one login and one virtual host for all, or a clear error
at start (a publish carries user_id = the first URL's login, which RabbitMQ refuses on a
connection made under another)."""

from __future__ import annotations

import pytest

from broker.amqp import amqp_urls
from broker.cli import EXIT_USAGE, main
from broker.errors import StartupError


def test_nodes_under_one_login_are_all_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    # passwords may be written differently; an empty path, or a "/" alone, is the default
    # virtual host
    monkeypatch.setenv("CASEBROKER_AMQP_URL", "amqp://cb:one@node-a:5672/%2F, "
                       "amqp://cb:two@node-b:5672,amqp://cb:three@node-c/")
    assert amqp_urls() == ["amqp://cb:one@node-a:5672/%2F", "amqp://cb:two@node-b:5672",
                           "amqp://cb:three@node-c/"]


def test_a_password_may_hold_the_separators(monkeypatch: pytest.MonkeyPatch) -> None:
    # only a separator before amqp:// or amqps:// starts another URL
    monkeypatch.setenv("CASEBROKER_AMQP_URL",
                       " amqp://cb:top;se,cret@node-a:5672/%2F;amqps://cb:x@node-b/%2F, ")
    assert amqp_urls() == ["amqp://cb:top;se,cret@node-a:5672/%2F", "amqps://cb:x@node-b/%2F"]


@pytest.mark.parametrize("raw", [
    # no scheme after the comma: one URL whose vhost would hold the second's password
    "amqp://cb:s3cretZq9@node-a:5672/%2F,cb:s3cretZq9@node-b",
    "cb:s3cretZq9@node-b:5672",
    "amqp://cb:s3cret@node-a:Zq9/%2F",  # a port pika cannot read; its error quotes it
], ids=["second_without_scheme", "without_scheme", "bad_port"])
def test_what_is_not_an_amqp_url_is_said_without_quoting_it(
        monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("CASEBROKER_AMQP_URL", raw)
    with pytest.raises(StartupError) as caught:
        amqp_urls()
    assert "URL 1 " in str(caught.value) or "URL 2 " in str(caught.value)
    assert "s3cret" not in str(caught.value) and "Zq9" not in str(caught.value)


@pytest.mark.parametrize("path", ["/prov/", "//", "/prov/intake"])
def test_a_slash_in_the_virtual_host_is_refused_not_read_two_ways(
        monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    # the router (pika) and the SDK (kombu) would connect to different virtual hosts
    monkeypatch.setenv("CASEBROKER_AMQP_URL", f"amqp://cb:s3cret@node-a:5672{path}")
    with pytest.raises(StartupError) as caught:
        amqp_urls()
    assert "URL 1 has a '/' in its virtual host: write it as %2F" in str(caught.value)
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(("second", "said"), [
    ("amqp://other:secret@node-b:5672/%2F", "other on '/'"),
    ("amqp://cb:secret@node-b:5672/province", "cb on 'province'"),
], ids=["login", "vhost"])
def test_nodes_under_different_logins_or_vhosts_are_refused_in_words(
        monkeypatch: pytest.MonkeyPatch, second: str, said: str) -> None:
    monkeypatch.setenv("CASEBROKER_AMQP_URL", f"amqp://cb:secret@node-a:5672/%2F,{second}")
    with pytest.raises(StartupError) as caught:
        amqp_urls()
    text = str(caught.value)
    assert "different logins or virtual hosts" in text
    assert "cb on '/'" in text and said in text
    assert "secret" not in text


def test_casebroker_says_so_and_exits(monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CASEBROKER_AMQP_URL",
                       "amqp://cb:secret@node-a:5672/%2F,amqp://guest:guest@node-b:5672/%2F")
    # a setting it cannot take: exit 2, as an argument (started again, it fails again)
    assert main(["topology", "declare", "--prefix", "urlcheck"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("error: CASEBROKER_AMQP_URL names its nodes under different")
    assert "secret" not in err


@pytest.mark.parametrize("url", [
    "http://cb:s3cretZq9@node-a:5672/", "cb:s3cretZq9@node-a:5672",
    "amqp://cb:x@node-a/%2F;http://cb:s3cretZq9@node-b/%2F",
], ids=["scheme", "no_scheme", "second_node"])
def test_the_sdk_refuses_a_url_argument_that_is_no_amqp_url(url: str) -> None:
    # kombu said it at the first publish, as a KeyError "No such transport: http"
    from adapters.client import AgencyClient, DeskClient

    for client in (lambda: DeskClient("T.MC.B", url=url),
                   lambda: AgencyClient("T.UBND.A", url=url)):
        with pytest.raises(ValueError) as caught:
            client()
        assert str(caught.value).startswith("url does not start with amqp:// or amqps://")
        assert "s3cret" not in str(caught.value) and "Zq9" not in str(caught.value)


@pytest.mark.parametrize("url", [
    "amqp://cb:x@node-a:5672/%2F?ssl=1", "amqps://cb:x@node-a/%2F?login_method=PLAIN",
    "amqp://cb:x@node-a/%2F;amqp://cb:x@node-b/%2F", "pyamqp://cb:x@node-a//",
], ids=["ssl_option", "login_method", "failover", "pyamqp"])
def test_the_sdk_takes_every_url_kombu_reads(url: str) -> None:
    # the check first read a url= as pika reads CASEBROKER_AMQP_URL, and refused these,
    # which kombu takes (found by a review); nothing connects until the first publish
    from adapters.client import DeskClient

    DeskClient("T.MC.B", url=url).close()
