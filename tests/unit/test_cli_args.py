"""Counts, rates and ports on the command line: nonsense is refused before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.amqp import ConsumerSettings, shown_url
from broker.cli import _metrics_port, build_parser, main
from broker.consumers.common import party_users_enabled
from broker.ledger import Ledger, sqlite_file
from broker.security import Management, ManagementError
from tests.conftest import MINI_CATALOG


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "--batch-size", "0"], "argument --batch-size: must be at least 1, not 0"),
    (["run", "--prefetch-count", "-5"], "argument --prefetch-count: must be at least 1, not -5"),
    (["run", "--flush-interval-ms", "-1"], "argument --flush-interval-ms: must be at least 0"),
    # over a bound AMQP, SQL or a date has: a connection failing for good, or a traceback
    # (found by a review)
    (["run", "--prefetch-count", "70000"], "--prefetch-count: must be at most 65535, not 70000"),
    (["run", "--hold-s", "inf"], "argument --hold-s: must be at most 86400, not inf"),
    (["run", "--hold-s", "nan"], "argument --hold-s: must be at least 0, not nan"),
    (["dossier", "list", "--limit", "9223372036854775807"],
     "argument --limit: must be at most 1000000000, not 9223372036854775807"),
    (["ledger", "prune", "--keep-days", "800000"],
     "argument --keep-days: must be at most 36500, not 800000"),
    (["demo", "--parallel", "99999999999"],
     "--parallel: must be at most 2147483647, not 99999999999"),
    (["bench", "--prefetches", "100,70000"], "--prefetches: must be at most 65535, not 70000"),
    (["rules", "explain", "d.json", "--at", "2101-01-01T09:00:00+07:00"],
     "argument --at: '2101-01-01T09:00:00+07:00' is outside the years 1900 to 2100"),
    (["run", "--metrics-port", "70000"], "must be a TCP port, 0 to 65535, not 70000"),
    (["run", "--batch-size", "many"], "argument --batch-size: not a whole number: 'many'"),
    (["demo", "--dossiers", "-3"], "argument --dossiers: must be at least 1, not -3"),
    (["demo", "--timeout-s", "0"], "argument --timeout-s: must be above 0, not 0"),
    (["demo", "--rate", "fast"], "argument --rate: not a number: 'fast'"),
    (["bench", "--dossiers", "0"], "argument --dossiers: must be at least 1, not 0"),
    (["bench", "--shovel-runs", "0"], "argument --shovel-runs: must be at least 1, not 0"),
    (["bench", "--receipt-rate", "0"], "argument --receipt-rate: must be above 0, not 0"),
    (["bench", "--receipt-warmup", "-1"], "argument --receipt-warmup: must be at least 0"),
    (["bench", "--sizes-kb", "1,0"], "argument --sizes-kb: must be above 0, not 0"),
    (["bench", "--prefetches", "100,x"], "argument --prefetches: not a whole number: 'x'"),
    (["bench", "--prefetches", ","], "argument --prefetches: no values in ','"),
    (["audit", "--since", "last week"], "argument --since: 'last week' is neither a date"),
    (["audit", "--since", "2026-11-01T00:00"], "'2026-11-01T00:00' has no offset"),
    # a period's bounds shifted by a day and a zone overflowed: a traceback
    (["report", "--to", "9999-12-31"], "argument --to: '9999-12-31' is outside the years 1900"),
    (["report", "--from", "0001-01-01"], "argument --from: '0001-01-01' is outside the years"),
    (["audit", "--since", "0001-01-01"], "argument --since: '0001-01-01' is outside the years"),
    (["dossier", "resend", "--desk", "D", "--since", "0001-01-01T00:00:00+14:00"],
     "argument --since: '0001-01-01T00:00:00+14:00' is outside the years 1900 to 2999"),
    (["rules", "explain", "d.json", "--at", "9999-12-31T23:00:00-12:00"],
     "argument --at: '9999-12-31T23:00:00-12:00' is outside the years 1900 to 2999"),
    (["dead-letters", "refuse", "--id", "m", "--reason", "  "],
     "argument --reason: 1 to 500 characters, not 0"),
    (["dead-letters", "refuse", "--id", "m", "--reason", "x" * 501],
     "argument --reason: 1 to 500 characters, not 501"),
    (["dead-letters", "refuse", "--id", "m", "--reason", "r", "--by", "b" * 65],
     "argument --by: 1 to 64 characters, not 65"),
    (["rules", "explain", "d.json", "--at", "2026-13-01"],
     "argument --at: not a moment with its UTC offset (e.g. 2026-02-10T09:00:00+07:00)"),
    (["rules", "explain", "d.json", "--at", "2026-11-01T09:00"], "argument --at: not a moment"),
    (["report", "--tz", "Mars/Base"], "argument --tz: not a time zone name"),
    (["dossier", "list", "--tz", ""], "argument --tz: not a time zone name"),
    (["dossier", "show", "X", "--tz", "../etc"], "argument --tz: not a time zone name"),
    (["dossier", "show", "X", "--tz", "Asia"], "argument --tz: not a time zone name"),
])
def test_bad_numbers_are_refused_with_the_option_named(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2  # argparse's usage error, before any connection is made
    assert message in capsys.readouterr().err


def test_good_numbers_are_parsed_to_their_kinds() -> None:
    args = build_parser().parse_args(["bench", "--dossiers", "5", "--receipt-rate", "2.5",
                                      "--sizes-kb", "1, 16,128", "--prefetches", "100,1000",
                                      "--receipt-warmup", "0"])
    assert (args.dossiers, args.receipt_rate, args.receipt_warmup) == (5, 2.5, 0)
    assert args.sizes_kb == [1.0, 16.0, 128.0] and args.prefetches == [100, 1000]
    run = build_parser().parse_args(["run", "--metrics-port", "0", "--flush-interval-ms", "0"])
    assert (run.metrics_port, run.flush_interval_ms) == (0, 0)
    defaults = build_parser().parse_args(["bench"])  # string defaults go through the types
    assert defaults.sizes_kb == [1.0, 16.0, 128.0] and defaults.prefetches == [100, 1000, 5000]


def test_audit_since_a_date_means_its_midnight_in_vietnam() -> None:
    args = build_parser().parse_args(["audit", "--since", "2026-11-01"])
    assert args.since.isoformat() == "2026-11-01T00:00:00+07:00"
    args = build_parser().parse_args(["audit", "--since", "2026-11-01T08:00:00Z"])
    assert args.since.isoformat() == "2026-11-01T08:00:00+00:00"


def test_consumer_settings_refuse_an_empty_batch_or_window() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ConsumerSettings(batch_size=0)
    with pytest.raises(ValueError, match="at least 1"):
        ConsumerSettings(prefetch_count=0)
    with pytest.raises(ValueError, match="flush_interval_ms at least 0"):
        ConsumerSettings(flush_interval_ms=-2)
    assert ConsumerSettings(prefetch_count=1, batch_size=1).batch_size == 1


def test_a_bad_metrics_port_in_the_environment_is_refused_by_its_name(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    # it was said as "argument --metrics-port: not a whole number", an option nobody typed
    monkeypatch.setenv("CASEBROKER_METRICS_PORT", "nine")
    ledger = tmp_path / "ledger.sqlite3"
    assert main(["run", "--db-url", f"sqlite:///{ledger}"]) == 2
    assert capsys.readouterr().err == (
        "error: CASEBROKER_METRICS_PORT='nine': a TCP port, 0 to 65535 (0: no metrics), "
        "please\n")
    assert not ledger.exists()  # refused before anything started
    monkeypatch.setenv("CASEBROKER_METRICS_PORT", "9500")
    assert _metrics_port() == 9500
    assert build_parser().parse_args(["run", "--metrics-port", "0"]).metrics_port == 0


def test_a_window_no_wider_than_a_batch_is_warned_about(
        caplog: pytest.LogCaptureFixture) -> None:
    from broker.amqp import ConsumerService

    with caplog.at_level("WARNING", logger="broker.amqp"):
        ConsumerService(ConsumerSettings(prefetch_count=250, batch_size=250), "x.dead",
                        lambda _exchange: None)
    assert "prefetch 250 is not above the batch size 250" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="broker.amqp"):
        ConsumerService(ConsumerSettings(), "x.dead", lambda _exchange: None)
    assert caplog.text == ""


@pytest.mark.parametrize(("url", "shown"), [
    ("amqp://guest:guest@127.0.0.1:5672/%2F", "amqp://guest:***@127.0.0.1:5672/%2F"),
    ("amqps://ops:p%40ss/w0rd@mq.daklak.gov.vn/", "amqps://ops:***@mq.daklak.gov.vn/"),
    ("amqp://127.0.0.1:5672/", "amqp://127.0.0.1:5672/"),
    ("amqp://user@host/", "amqp://user@host/"),
    # pika takes an @ not URL-encoded in a password: hidden up to the last one
    ("amqp://guest:S3cr@t-Tail@127.0.0.1:5673/%2F", "amqp://guest:***@127.0.0.1:5673/%2F"),
    ("amqp://a:p@1@h1/,amqp://b:q@h2:5672/", "amqp://a:***@h1/,amqp://b:***@h2:5672/"),
    ("amqp://h1:5672/,amqp://u:p@h2/", "amqp://h1:5672/,amqp://u:***@h2/"),
    # libpq takes a password in the query too
    ("postgresql://postgres@db:5432/test?password=TopSecret&sslmode=require",
     "postgresql://postgres@db:5432/test?password=***&sslmode=require"),
])
def test_a_broker_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert shown_url(url) == shown


def test_a_reader_that_goes_away_ends_a_command_without_a_traceback() -> None:
    # `casebroker report --csv | head`: the pipe closes while the command still writes
    import fcntl
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "broker.cli", "schema"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    fcntl.fcntl(proc.stdout, fcntl.F_SETPIPE_SZ, 4096)  # the 30 KB schema will not fit
    assert proc.stdout.read(10).startswith(b"{")
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=30) == 1 and "Traceback" not in err and "BrokenPipe" not in err


@pytest.mark.parametrize(("url", "said", "code"), [
    # no URL it can use: a setting, exit 2 (started again, it fails again)
    ("garbage", "not a ledger URL casebroker can use: garbage (ArgumentError); give "
                "sqlite:///PATH or postgresql://USER@HOST/DB", 2),
    ("mysql://ops:s3cret@db/x", "not a ledger URL casebroker can use: mysql://ops:***@db/x "
                                "(ModuleNotFoundError)", 2),
    # a file that is no ledger (yet: a restore under way?): a fault, exit 1
    ("sqlite:///{tmp}/text.sqlite3", "no usable ledger at sqlite:///{tmp}/text.sqlite3: file "
                                     "is not a database", 1),
])
def test_a_ledger_url_that_names_no_usable_ledger_is_said_in_one_line(
        url: str, said: str, code: int, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "text.sqlite3").write_text("not a database\n")
    url, said = url.format(tmp=tmp_path), said.format(tmp=tmp_path)
    for argv in (["report"], ["dossier", "list"], ["run", "--metrics-port", "0"],
                 ["ledger", "upgrade"]):
        assert main([*argv, "--db-url", url]) == code
        err = capsys.readouterr().err
        assert f"error: {said}" in err and "s3cret" not in err and "Traceback" not in err


def test_audit_says_in_one_line_that_its_submissions_file_cannot_be_read(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.txt"
    assert main(["audit", "--submissions", str(missing)]) == 2  # before any connection
    assert capsys.readouterr().err == \
        f"error: cannot read {missing}: No such file or directory\n"


@pytest.mark.parametrize(("value", "on"), [
    ("1", True), ("true", True), (" Yes ", True), ("ON", True),
    ("0", False), ("false", False), ("no", False), ("Off", False), ("", False)])
def test_party_users_takes_on_and_off_in_words_and_any_case(
        monkeypatch: pytest.MonkeyPatch, value: str, on: bool) -> None:
    monkeypatch.setenv("CASEBROKER_PARTY_USERS", value)
    assert party_users_enabled(None) is on
    assert party_users_enabled(not on) is (not on)  # an explicit choice wins


def test_a_party_users_value_meant_as_on_is_not_taken_as_off(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # a security setting: read as off, "enabled" would let any login send in any name
    monkeypatch.setenv("CASEBROKER_PARTY_USERS", "enabled")
    code = main(["run", "--catalog", str(MINI_CATALOG), "--metrics-port", "0",
                 "--db-url", f"sqlite:///{tmp_path / 'ledger.sqlite3'}"])
    assert code == 2  # a setting it cannot take, as a wrong argument
    assert capsys.readouterr().err == (
        "error: CASEBROKER_PARTY_USERS='enabled' is neither on (1, true, yes, on) nor off "
        "(0, false, no, off, or unset)\n")


@pytest.mark.parametrize("url", [
    "notaurl", "http://guest:s3cret@host:abc", "ftp://guest:s3cret@host", "http://:s3cret@",
    "http://guest:s3cret@host:99999"])
def test_a_management_url_of_another_form_is_refused_without_quoting_it(url: str) -> None:
    with pytest.raises(ManagementError) as e:
        Management.from_url(url)
    assert str(e.value) == ("the management API's URL is not "
                            "http(s)://user:password@host:port (--management-url, "
                            "CASEBROKER_MANAGEMENT_URL)")


def test_a_management_url_gives_its_base_and_login() -> None:
    api = Management.from_url(" https://ops:pw@rabbit.example:15671/ ")
    assert api.url == "https://rabbit.example:15671"
    assert api.headers["Authorization"] == "Basic b3BzOnB3"  # ops:pw
    assert Management.from_url("http://127.0.0.1").url == "http://127.0.0.1"


@pytest.mark.parametrize("argv", [
    ["topology", "delete", "--prefix", "", "--force", "--catalog", str(MINI_CATALOG)],
    ["dead-letters", "list", "--prefix", ""],
    ["audit", "--prefix", ""],
])
def test_an_empty_prefix_is_refused_not_taken_for_the_default(
        argv: list[str], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # `--prefix "$P"` with P unset was read as no --prefix: the command acted on
    # CASEBROKER_PREFIX's topology (the province's own, `cb`), --force deleting it. Here
    # that is a prefix nothing has, so the old reading deleted nothing
    monkeypatch.setenv("CASEBROKER_PREFIX", "nothing-here-7f3a")
    assert main(argv) == 2
    assert "error: topology prefix '' is not 1 to 64 ASCII letters" in capsys.readouterr().err


@pytest.mark.parametrize(("address", "said"), [
    ("no-such-host.invalid", "Name or service not known"),
    ("192.0.2.1", "Cannot assign requested address"),  # TEST-NET-1: on no host
])
def test_a_metrics_address_not_of_this_host_is_a_setting(
        address: str, said: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # exit 2: a supervisor must not restart it in a loop (a port taken is exit 1: the
    # router it collides with may be leaving)
    monkeypatch.setenv("CASEBROKER_METRICS_ADDR", address)
    assert main(["run", "--catalog", str(MINI_CATALOG), "--metrics-port", "19997",
                 "--db-url", f"sqlite:///{tmp_path / 'ledger.sqlite3'}"]) == 2
    assert capsys.readouterr().err == (
        f"error: cannot serve metrics on {address}:19997: {said} (CASEBROKER_METRICS_ADDR: "
        "an address of this host)\n")


def test_topology_delete_with_a_management_url_of_another_form_exits_2(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topology", "delete", "--prefix", "nothing-here-7f3a", "--force",
                 "--catalog", str(MINI_CATALOG), "--management-url", "garbage"]) == 2
    assert capsys.readouterr().err == (
        "error: the management API's URL is not http(s)://user:password@host:port "
        "(--management-url, CASEBROKER_MANAGEMENT_URL)\n")


@pytest.mark.parametrize(("url", "file"), [
    ("sqlite:///ledger.sqlite3", "ledger.sqlite3"),
    ("sqlite:////var/lib/cb/l.db?timeout=10", "/var/lib/cb/l.db"),
    ("sqlite:///file:/var/lib/cb/l.db?mode=ro&uri=true", "/var/lib/cb/l.db"),
    ("sqlite:///file::memory:?cache=shared&uri=true", None),
    ("sqlite:///file:x?mode=memory&uri=true", None),
    ("sqlite://", None), ("sqlite:///:memory:", None),
    ("postgresql://cb@db/cb", None), ("garbage", None),
])
def test_the_file_of_a_sqlite_ledger_url(url: str, file: str | None) -> None:
    # the run lock, the read-only commands' "no such file" and the WAL checkpoints all
    # find the file by it: SQLite's URI form named "file:PATH" (a false refusal)
    assert sqlite_file(url) == file


def test_a_read_only_command_finds_a_ledger_named_in_sqlites_uri_form(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    Ledger(f"sqlite:///{tmp_path / 'l.sqlite3'}").dispose()
    assert main(["dossier", "list", "--db-url",
                 f"sqlite:///file:{tmp_path / 'l.sqlite3'}?uri=true"]) == 0, \
        capsys.readouterr().err


def test_a_ctrl_c_while_the_commands_load_exits_130_without_a_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # the command modules take most of a second to load, outside the handling of the
    # rest: a Ctrl-C then printed a traceback of 30 frames (found by a review)
    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("broker.cli.build_parser", interrupted)
    assert main(["report"]) == 130
    assert capsys.readouterr().err == ""
