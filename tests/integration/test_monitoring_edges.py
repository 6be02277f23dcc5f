"""Edges of monitoring and access control found by review: `casebroker users` against the
real management API and RabbitMQ (each user, vhost and topology made here removed), and
the dashboard's counts under promtool."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest
import yaml

from broker.cli import main
from broker.rules.catalog import Catalog, load_catalog
from broker.security import Grant, Management, ManagementError, grants, user_for
from broker.service import declare_topology
from broker.topology import Topology
from tests.conftest import MINI_CATALOG
from tests.helpers import management_api

pytestmark = pytest.mark.integration

API = "127.0.0.1:15672"


@pytest.fixture
def operators(topology: Topology) -> Iterator[Management]:
    """The management API as guest; every user under the test's prefix deleted after."""
    api = management_api()
    yield api
    for user in api.users():
        if user.startswith(topology.prefix + "."):
            api.delete_user(user)


def _operator(api: Management, user: str, password: str, tags: str) -> None:
    api._call("PUT", f"/api/users/{urllib.parse.quote(user, safe='')}",
              {"password": password, "tags": tags})
    api.put_permissions(Grant(user, "ops", "operator", ".*", ".*", ".*"))


def test_a_management_password_written_url_encoded_is_the_password(
        topology: Topology, operators: Management, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # a generated password holding '@', ':' or '/' can only be written encoded in a URL;
    # sent as written, RabbitMQ answered 401 and `users apply` could not run at all
    admin, password = f"{topology.prefix}.ops", "p@ss:w/rd%" + secrets.token_hex(4)
    _operator(operators, admin, password, "administrator")
    url = (f"http://{urllib.parse.quote(admin, safe='')}:"
           f"{urllib.parse.quote(password, safe='')}@{API}")
    capsys.readouterr()
    code = main(["users", "apply", "--catalog", str(MINI_CATALOG), "--prefix", topology.prefix,
                 "--secrets-dir", str(tmp_path / "secrets"), "--management-url", url])
    out, err = capsys.readouterr()
    assert (code, err) == (0, ""), err
    assert out.startswith("12 users with permissions; 12 created")
    assert operators.user_exists(user_for(topology, "T.MC.A"))


def test_a_secrets_dir_that_cannot_be_written_is_an_error_in_one_line(
        topology: Topology, operators: Management, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # a file in its place, or under it: a traceback before, mkdir's FileExistsError; a
    # wrong argument, exit 2 (1 until a review: a fault a restart may cure)
    (tmp_path / "afile").write_text("")
    for where, why in ((tmp_path / "afile", "File exists"),
                       (tmp_path / "afile" / "sub", "Not a directory")):
        capsys.readouterr()
        code = main(["users", "apply", "--catalog", str(MINI_CATALOG), "--prefix",
                     topology.prefix, "--secrets-dir", str(where)])
        assert (code, capsys.readouterr().err) == (
            2, f"error: cannot keep passwords in {where}: {why} (--secrets-dir)\n")
    assert [u for u in operators.users() if u.startswith(topology.prefix)] == []


def test_a_refused_management_call_says_what_rabbitmq_said(
        topology: Topology, operators: Management, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # "HTTP 401" alone does not tell a wrong password from a login that is no
    # administrator: the operator is told RabbitMQ's reason, never the password
    monitor, password = f"{topology.prefix}.monitor", secrets.token_hex(8)
    _operator(operators, monitor, password, "monitoring")
    not_admin = Management.from_url(f"http://{monitor}:{password}@{API}")
    with pytest.raises(ManagementError) as e:
        not_admin.users()
    assert str(e.value) == "GET /api/users?columns=name: HTTP 401 (Not administrator user)"
    assert password not in str(e.value)
    capsys.readouterr()
    code = main(["users", "apply", "--catalog", str(MINI_CATALOG), "--prefix", topology.prefix,
                 "--secrets-dir", str(tmp_path / "secrets"),
                 "--management-url", f"http://{monitor}:not-{password}@{API}"])
    desk = urllib.parse.quote(user_for(topology, "T.UBND.A"), safe="")
    assert (code, capsys.readouterr().err) == (
        1, f"error: GET /api/users/{desk}: HTTP 401 (Login failed)\n")
    assert [u for u in operators.users() if u.startswith(topology.prefix)] == [monitor]


def test_users_apply_grants_in_the_virtual_host_the_routers_use(
        topology: Topology, mini_catalog: Catalog, operators: Management, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # with CASEBROKER_AMQP_URL on a virtual host of the province's own, the users were
    # given permissions on '/' instead: no desk could even open its connection
    vhost = f"{topology.prefix}-vh"
    operators._call("PUT", f"/api/vhosts/{vhost}")  # guest is given all of it
    try:
        amqp = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
        monkeypatch.setenv("CASEBROKER_AMQP_URL", amqp)
        declare_topology(amqp, topology, mini_catalog)
        capsys.readouterr()
        assert main(["users", "apply", "--catalog", str(MINI_CATALOG), "--prefix",
                     topology.prefix, "--secrets-dir", str(tmp_path / "secrets"),
                     "--management-url", f"http://guest:guest@{API}"]) == 0
        assert capsys.readouterr().err == ""
        desk = user_for(topology, "T.MC.A")
        assert operators.permissions(desk) is None  # nothing on '/'
        password = (tmp_path / "secrets" / f"{desk}.password").read_text().strip()
        conn = pika.BlockingConnection(pika.URLParameters(
            f"amqp://{urllib.parse.quote(desk, safe='')}:{urllib.parse.quote(password)}"
            f"@127.0.0.1:5672/{vhost}"))
        try:
            conn.channel().basic_get(topology.desk_queue("T.MC.A"))  # its own queue
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
                conn.channel().basic_get(topology.desk_queue("T.MC.B"))
            assert e.value.reply_code == 403
        finally:
            conn.close()
    finally:
        operators._call("DELETE", f"/api/vhosts/{vhost}")  # with its queues


def test_a_desk_and_an_agency_under_one_id_are_refused_not_merged_into_one_user(
        topology: Topology, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # one user for both: the desk's permissions replaced the agency's (which could no
    # longer read its queue), and the desk could send as the agency
    # (the catalog's check refuses it, so `run`, a reload and `rules check` do too)
    both = tmp_path / "both.yaml"
    both.write_text(MINI_CATALOG.read_text().replace("  - {id: T.POST,", "  - {id: T.CA,"))
    capsys.readouterr()
    assert main(["users", "plan", "--catalog", str(both), "--prefix", topology.prefix]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"error: 1 problem(s) in catalog\n  {both}:20: desk T.CA: also an agency's id; a "
        "desk and an agency each need an id of their own\n")
    assert len({g.user for g in grants(topology, load_catalog(MINI_CATALOG))}) == 12


def _logs_in(user: str, password: str) -> bool:
    try:
        pika.BlockingConnection(pika.URLParameters(
            f"amqp://{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password)}"
            "@127.0.0.1:5672/%2F")).close()
    except pika.exceptions.ProbableAuthenticationError:
        return False
    return True


def test_a_rotation_the_api_refuses_leaves_each_password_file_as_its_user_has_it(
        topology: Topology, operators: Management, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # the new password was written over the file before RabbitMQ was asked: refused, the
    # file held a password no user has, and a desk set up from it could not log in
    secrets_dir = tmp_path / "secrets"
    apply_ = ["users", "apply", "--catalog", str(MINI_CATALOG), "--prefix", topology.prefix,
              "--secrets-dir", str(secrets_dir)]
    assert main([*apply_, "--management-url", f"http://guest:guest@{API}"]) == 0
    first = user_for(topology, "T.UBND.A")  # the catalog's first party: rotated first
    before = (secrets_dir / f"{first}.password").read_text()
    assert _logs_in(first, before.strip())
    capsys.readouterr()
    assert main([*apply_, "--rotate", "--management-url", f"http://guest:wrong@{API}"]) == 1
    assert capsys.readouterr().err == (
        f"error: PUT /api/users/{urllib.parse.quote(first, safe='')}: HTTP 401 (Login "
        "failed)\n")
    assert sorted(p.name for p in secrets_dir.iterdir()) == sorted(
        f"{g.user}.password" for g in grants(topology, load_catalog(MINI_CATALOG)))
    assert (secrets_dir / f"{first}.password").read_text() == before
    assert _logs_in(first, before.strip())
    # a rotation that goes through replaces each file with the password its user now has
    assert main([*apply_, "--rotate", "--management-url", f"http://guest:guest@{API}"]) == 0
    after = (secrets_dir / f"{first}.password").read_text()
    assert after != before and _logs_in(first, after.strip())
    assert (secrets_dir / f"{first}.password").stat().st_mode & 0o777 == 0o600


DASHBOARD = Path(__file__).parents[2] / "monitoring" / "grafana" / "casebroker.json"
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool not installed (apt-get install prometheus)")


def _panel_exprs(title: str) -> list[str]:
    (panel,) = [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["title"] == title]
    return [t["expr"] for t in panel["targets"]]


@needs_promtool
def test_the_dashboard_counts_the_first_events_of_a_series_as_the_alerts_do(
        tmp_path: Path) -> None:
    """A labelled counter is exported from its first event on, at 1 or more: increase()
    alone saw nothing, and the panels of counts showed 0 for a process's first dead letter,
    triage, unroutable publish or deadline notice of each kind (the alerts fired). Here a
    (job, instance) scraped since before the window gets its first events at 19m; another
    has counted for an hour (2 a minute); b's series was there when Prometheus started."""
    intake = "casebroker_intake_total"
    status = "casebroker_status_updates_total"
    unroutable = "casebroker_unroutable_total"
    notices = "casebroker_deadline_notices_total"
    a, b = 'job="casebroker", instance="a"', 'job="casebroker", instance="b"'
    series = [
        (f'up{{{a}}}', "1x90"), (f'up{{{b}}}', "_x60 1x30"),
        (f'{intake}{{{a}, outcome="triaged", reason="area_not_served"}}', "_x79 1x10"),
        (f'{intake}{{{a}, outcome="dead_lettered", reason="malformed_json"}}', "_x79 3x10"),
        (f'{intake}{{{a}, outcome="dead_lettered", reason="not_utf8"}}', "0+2x90"),
        (f'{intake}{{{b}, outcome="triaged", reason="unknown_desk"}}', "_x60 2x30"),
        (f'{status}{{{a}, outcome="dead_lettered", reason="unknown_dossier"}}', "_x79 1x10"),
        (f'{unroutable}{{{a}, source="intake", exchange="cb.agency"}}', "_x79 10x10"),
        (f'{notices}{{{a}, kind="overdue", party="desk"}}', "_x79 4x10"),
        (f'{notices}{{{a}, kind="at_risk", party="agency"}}', "0+2x90")]
    (dead, status_dead) = _panel_exprs("Dead-lettered and triaged (15 min)")
    (unroutable_1h,) = _panel_exprs("Unroutable publishes (1 h)")
    (notices_1h,) = _panel_exprs("Deadline notices sent (per hour) by kind and party")
    at = "85m"
    cases = [
        (dead, [('{outcome="triaged", reason="area_not_served"}', 1),
                ('{outcome="dead_lettered", reason="malformed_json"}', 3),
                ('{outcome="dead_lettered", reason="not_utf8"}', 30),
                ('{outcome="triaged", reason="unknown_desk"}', 0)]),
        (status_dead, [('{outcome="dead_lettered", reason="unknown_dossier"}', 1)]),
        (unroutable_1h, [('{exchange="cb.agency"}', 10)]),
        (notices_1h, [('{kind="at_risk", party="agency"}', 120),
                      ('{kind="overdue", party="desk"}', 4)])]
    test = {"rule_files": [], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series],
        "promql_expr_test": [
            {"expr": expr, "eval_time": at,
             "exp_samples": [{"labels": labels, "value": value} for labels, value in want]}
            for expr, want in cases]}]}
    path = tmp_path / "dashboard_test.yml"
    path.write_text(yaml.safe_dump(test))
    result = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
