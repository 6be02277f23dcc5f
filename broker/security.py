"""One RabbitMQ user per desk and agency, with permissions generated from the catalog.

An agency may read only its own queue and write only to the status exchange; a desk
may write only to the intake and status exchanges and read only its own queue;
neither may configure anything. "Read" is the messages: RabbitMQ checks no permission
on a passive declare, so any login can learn a queue's depth and consumer count, and
whether a queue of that name exists (and so which party ids the catalog has); no
permission pattern can close that. RabbitMQ checks the ``user_id`` property of every
publish against the connection's user, so with these users in place the routers can
trust ``user_id`` to say who sent a message (see :func:`user_for`).

Users are created through the management HTTP API (plugin ``rabbitmq_management``),
idempotently; a new user's password is written once to a file only root can read.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika

from broker.amqp import amqp_url
from broker.errors import CasebrokerError, SettingError
from broker.rules.catalog import Catalog
from broker.topology import Topology


@dataclass(frozen=True)
class Grant:
    """A RabbitMQ user and its configure/write/read permission patterns."""

    user: str
    party: str
    kind: str
    configure: str
    write: str
    read: str


def user_for(topology: Topology, party_id: str) -> str:
    """The RabbitMQ user of a desk or agency: the ``user_id`` its messages must carry."""
    return f"{topology.prefix}.{party_id}"


def party_of(topology: Topology, user: str | None) -> str | None:
    """The desk or agency whose RabbitMQ user ``user`` is (:func:`user_for`), or None."""
    if user is None or not user.startswith(f"{topology.prefix}."):
        return None
    return user.removeprefix(f"{topology.prefix}.") or None


def _exact(*names: str) -> str:
    return "^(" + "|".join(re.escape(n) for n in names) + ")$"


def grants(topology: Topology, catalog: Catalog) -> list[Grant]:
    """Every party's user and permissions, derived from the catalog (whose check refuses
    a desk and an agency under one id: they would be one user)."""
    t = topology
    out = [Grant(user_for(t, a), a, "agency", "^$", _exact(t.status_exchange),
                 _exact(t.agency_queue(a))) for a in catalog.agency_ids]
    out += [Grant(user_for(t, d), d, "desk", "^$", _exact(t.intake_exchange, t.status_exchange),
                  _exact(t.desk_queue(d))) for d in catalog.desk_ids]
    return out


def management_url() -> str:
    """The management API's URL: ``CASEBROKER_MANAGEMENT_URL``, else this machine's."""
    return os.environ.get("CASEBROKER_MANAGEMENT_URL", "http://guest:guest@127.0.0.1:15672")


class ManagementError(CasebrokerError):
    """The RabbitMQ management API refused or could not be reached."""


class ManagementUrlError(ManagementError, SettingError):
    """``--management-url`` (``CASEBROKER_MANAGEMENT_URL``) is no management API URL."""


class Management:
    """A minimal client of the RabbitMQ management HTTP API."""

    def __init__(self, url: str = "http://127.0.0.1:15672", user: str = "guest",
                 password: str = "guest", vhost: str = "/") -> None:
        self.url = url.rstrip("/")
        self.vhost = urllib.parse.quote(vhost, safe="")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, *,
              absent_ok: bool = False) -> Any:
        """The API's answer; with ``absent_ok``, None where a GET of one object (a user,
        a permission) finds none. A list answered 404 is an error: a virtual host that
        does not exist, or no management API at that URL (a wrong port, a path prefix
        left out), which must not read as "nothing there" (`topology delete` said it had
        deleted everything, and left queues)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers=self.headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            if e.code == 404 and method == "GET" and absent_ok:
                return None
            hint = (" (no such virtual host, or no RabbitMQ management API at "
                    f"{self.url}: check --management-url, CASEBROKER_MANAGEMENT_URL)"
                    if e.code == 404 else "")
            raise ManagementError(f"{method} {path}: HTTP {e.code}{_reason(e)}{hint}") from e
        except OSError as e:
            raise ManagementError(f"management API at {self.url} unreachable: {e}") from e
        try:
            return json.loads(raw) if raw else None
        except ValueError:  # a proxy's or another server's page: no management API there
            raise ManagementError(f"{method} {path}: the answer is not JSON: no RabbitMQ "
                                  f"management API at {self.url}? (--management-url, "
                                  "CASEBROKER_MANAGEMENT_URL)") from None

    @classmethod
    def from_url(cls, url: str, vhost: str | None = None) -> Management:
        """From ``http://user:password@host:port`` (guest/guest when it names nobody; each
        URL-encoded, as a password holding ``@``, ``:`` or ``/`` must be), on ``vhost``,
        by default the virtual host of ``CASEBROKER_AMQP_URL``, where the routers, desks
        and agencies work; a URL of another form is a :class:`ManagementError` that does
        not quote it (it may hold a password)."""
        refused = ManagementUrlError("the management API's URL is not "
                                     "http(s)://user:password@host:port (--management-url, "
                                     "CASEBROKER_MANAGEMENT_URL)")
        parts = urllib.parse.urlsplit(url.strip())
        try:
            port = parts.port
        except ValueError:  # a port that is no number, or out of range
            raise refused from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise refused
        # a path kept: the API served under a prefix (a proxy's /rabbitmq)
        base = (f"{parts.scheme}://{parts.hostname}" + (f":{port}" if port else "")
                + parts.path.rstrip("/"))
        if vhost is None:
            vhost = pika.URLParameters(amqp_url()).virtual_host
        return cls(base, urllib.parse.unquote(parts.username or "guest"),
                   urllib.parse.unquote(parts.password or "guest"), vhost)

    def names(self, kind: str) -> list[str]:
        """The names of the virtual host's ``queues`` or ``exchanges``."""
        rows = self._call("GET", f"/api/{kind}/{self.vhost}?columns=name") or []
        return [str(r["name"]) for r in rows]

    def unacked(self) -> dict[str, int]:
        """Each queue of the virtual host: the messages it delivered to consumers that
        were not acked yet, as the management API last counted them (every few seconds)."""
        rows = self._call("GET", f"/api/queues/{self.vhost}?columns=name,"
                          "messages_unacknowledged") or []
        return {str(r["name"]): int(r.get("messages_unacknowledged") or 0) for r in rows}

    def users(self) -> list[str]:
        """Every user's name."""
        return [str(u["name"]) for u in self._call("GET", "/api/users?columns=name") or []]

    def permissions(self, user: str) -> dict[str, str] | None:
        """The user's configure/write/read patterns on the virtual host (None: none)."""
        got = self._call("GET", f"/api/permissions/{self.vhost}/"
                         f"{urllib.parse.quote(user, safe='')}", absent_ok=True)
        return None if got is None else {k: str(got[k]) for k in ("configure", "write", "read")}

    def user_exists(self, user: str) -> bool:
        return self._call("GET", f"/api/users/{urllib.parse.quote(user, safe='')}",
                          absent_ok=True) is not None

    def put_user(self, user: str, password: str) -> None:
        self._call("PUT", f"/api/users/{urllib.parse.quote(user, safe='')}",
                   {"password": password, "tags": ""})

    def delete_user(self, user: str) -> None:
        self._call("DELETE", f"/api/users/{urllib.parse.quote(user, safe='')}")

    def put_permissions(self, grant: Grant) -> None:
        self._call("PUT", f"/api/permissions/{self.vhost}/"
                   f"{urllib.parse.quote(grant.user, safe='')}",
                   {"configure": grant.configure, "write": grant.write, "read": grant.read})


def _reason(error: urllib.error.HTTPError) -> str:
    """What RabbitMQ said of a refused call (``Login failed``, ``Not administrator user``,
    ``vhost_or_user_not_found``), which the status code alone does not tell apart."""
    try:
        reason = json.loads(error.read())["reason"]
    except (OSError, ValueError, TypeError, KeyError):
        return ""
    said = reason if isinstance(reason, str) else json.dumps(reason)
    return f" ({said[:200]})"


def stale(grants_: list[Grant], api: Management, topology: Topology) -> list[str]:
    """Users named as a party of ``topology`` (``<prefix>.<id>``) whose party the catalog
    no longer has: a desk or agency taken out keeps its permissions until retired."""
    planned = {g.user for g in grants_}
    under = user_for(topology, "")

    def a_partys(user: str) -> bool:
        # exactly what `users apply` gave a desk or agency of that id: a user named under
        # the prefix with other permissions (the routers', an operator's, a monitor's) is
        # none of its making, and never retired here
        party = user[len(under):]
        perms = api.permissions(user)
        return perms is not None and perms["configure"] == "^$" and perms["read"] in (
            _exact(topology.desk_queue(party)), _exact(topology.agency_queue(party)))

    return sorted(u for u in api.users()
                  if u.startswith(under) and u not in planned and a_partys(u))


def apply(grants_: list[Grant], api: Management, secrets_dir: Path,
          rotate: bool = False) -> dict[str, int]:
    """Create missing users (password to ``secrets_dir/<user>.password``), set permissions.

    A new password replaces the file's only once RabbitMQ has taken it: a rotation the API
    refuses leaves every file holding the password its user still has. A directory that
    cannot be made is a :class:`~broker.errors.SettingError`, and one that cannot be
    written a :class:`~broker.errors.CasebrokerError`, saying so."""
    try:
        secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:  # a file there, a directory not ours: the argument, exit 2
        raise SettingError(f"cannot keep passwords in {secrets_dir}: {e.strerror} "
                           "(--secrets-dir)") from None
    created = 0
    for grant in grants_:
        if rotate or not api.user_exists(grant.user):
            password = secrets.token_urlsafe(24)
            path = secrets_dir / f"{grant.user}.password"
            # written first (a password RabbitMQ has is never only in memory), put in
            # place after
            pending = path.with_name(path.name + ".new")
            try:
                fd = os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            except OSError as e:
                raise CasebrokerError(f"cannot write passwords to {secrets_dir}: "
                                      f"{e.strerror} (--secrets-dir); {created} user(s) "
                                      "created before it") from None
            with os.fdopen(fd, "w") as f:
                f.write(password + "\n")
            try:
                api.put_user(grant.user, password)
            except ManagementError:
                pending.unlink()
                raise
            pending.replace(path)
            created += 1
        api.put_permissions(grant)
    return {"users": len(grants_), "created": created}
