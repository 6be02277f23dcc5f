"""Private RabbitMQ nodes and a private PostgreSQL cluster that fault tests may stop and kill.

The system servers (RabbitMQ on 5672, PostgreSQL on 5432) are shared with other
developers and are never touched. Each private server lives in a temporary
directory of its own, with its own ports, node name, Erlang cookie and data, and
is stopped and removed even when a test fails.

    RabbitNode      one node: start, wait until it accepts AMQP, stop, kill
    RabbitCluster   three nodes joined into one cluster; find a quorum queue's leader
    PgServer        initdb + pg_ctl as the postgres user; stop/start for outages
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pika
from sqlalchemy import create_engine, text

from tests.helpers import free_port
from tests.sweep import FAULT_DIR_PREFIX

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
PG_BIN = Path("/usr/lib/postgresql/15/bin")


class ServerError(RuntimeError):
    """A private server that would not start or stop."""


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def unique_name(stem: str) -> str:
    """A node name no other test session on this machine uses (sessions run side by side)."""
    return f"{stem}{os.getpid()}x{secrets.token_hex(2)}"


def _wait(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise ServerError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.2)


class RabbitNode:
    """One RabbitMQ node of its own (name, ports, mnesia, cookie, config), as root."""

    def __init__(self, name: str, base: Path, cookie: str, port: int | None = None) -> None:
        self.name = name
        self.node = f"{name}@localhost"
        self.port = port or free_port()
        self.dist_port = free_port()
        self.dir = base / name
        self.cookie = cookie
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def _env(self) -> dict[str, str]:
        d = self.dir
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        env.update({
            # HOME holds this node's own Erlang cookie: the system node's is never read
            "HOME": str(d), "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port), "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"), "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(d / "pid"),
            # not /etc/rabbitmq's files: they name the system node and its port
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
        })
        return env

    def prepare(self) -> None:
        """Write the node's directory: cookie, config, no plugins."""
        self.dir.mkdir(parents=True, exist_ok=True)
        cookie = self.dir / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(self.cookie)
            cookie.chmod(0o400)
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq-env.conf").write_text("")
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\n"
            "vm_memory_high_watermark.relative = 0.2\n"
            "disk_free_limit.absolute = 50MB\n")

    def ctl(self, *args: str, timeout_s: float = 120, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        """Run ``rabbitmqctl -n NODE ARGS``."""
        result = subprocess.run([str(RABBIT_BIN / "rabbitmqctl"), "-n", self.node, *args],
                                env=self._env(), capture_output=True, text=True,
                                timeout=timeout_s, check=False)
        if check and result.returncode != 0:
            raise ServerError(f"rabbitmqctl {' '.join(args)} on {self.node}: "
                              f"{result.stderr.strip()[-800:]}")
        return result

    def start(self, timeout_s: float = 90) -> None:
        """Start detached and wait until the node accepts AMQP connections."""
        if port_open(self.port):
            raise ServerError(f"port {self.port} is taken: a node left over from another run?")
        self.prepare()
        subprocess.run([str(RABBIT_BIN / "rabbitmq-server"), "-detached"], env=self._env(),
                       cwd=self.dir, check=True, capture_output=True, timeout=60)
        _wait(lambda: self.pid() is not None, timeout_s, f"{self.node} pid file")
        self.ctl("await_startup", "--timeout", str(int(timeout_s)), timeout_s=timeout_s + 10)
        _wait(self.accepts_amqp, timeout_s, f"{self.node} accepting AMQP on {self.port}")

    def accepts_amqp(self) -> bool:
        try:
            pika.BlockingConnection(pika.URLParameters(
                self.url + "?connection_attempts=1&socket_timeout=2")).close()
            return True
        except Exception:
            return False

    def pid(self) -> int | None:
        try:
            return int((self.dir / "pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self, timeout_s: float = 90) -> None:
        """A clean stop (``rabbitmqctl stop``), waiting until the VM is gone."""
        if not self.alive():
            return
        self.ctl("stop", timeout_s=timeout_s, check=False)
        try:
            _wait(lambda: not self.alive(), timeout_s, f"{self.node} to exit")
        except ServerError:
            self.kill()
        (self.dir / "pid").unlink(missing_ok=True)
        _wait(lambda: not port_open(self.port), 30, f"port {self.port} to close")

    def kill(self) -> None:
        """SIGKILL the VM (a crash), then wait until its ports are free."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait(lambda: not self.alive(), 30, f"{self.node} to die")
        (self.dir / "pid").unlink(missing_ok=True)
        _wait(lambda: not port_open(self.port), 30, f"port {self.port} to close")


class RabbitCluster:
    """Nodes of one cluster on this machine: the first starts it, the others join."""

    def __init__(self, base: Path, names: list[str]) -> None:
        cookie = secrets.token_hex(16).upper()
        self.nodes = [RabbitNode(n, base, cookie) for n in names]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self) -> None:
        """Start every node and join the others to the first."""
        first, *others = self.nodes
        first.start()
        for node in others:
            node.start()
            node.ctl("stop_app")
            node.ctl("join_cluster", first.node)
            node.ctl("start_app")
            _wait(node.accepts_amqp, 90, f"{node.node} back after joining")
        # every node running as the first sees it: a quorum queue declared before takes
        # its members from the nodes running then, and with two of three it would lose
        # its quorum when one of them stops
        _wait(lambda: self.running_as_seen_by(first) == {n.node for n in self.nodes}, 60,
              "every node running in the cluster")

    def running_as_seen_by(self, node: RabbitNode) -> set[str]:
        """The cluster's running nodes, as ``node`` reports them."""
        result = node.ctl("cluster_status", "--formatter", "json", check=False)
        try:
            return set(json.loads(result.stdout)["running_nodes"])
        except (ValueError, KeyError, TypeError):
            return set()

    def node(self, name: str) -> RabbitNode:
        return next(n for n in self.nodes if n.node == name or n.name == name)

    def running(self) -> list[RabbitNode]:
        return [n for n in self.nodes if n.alive()]

    def leader_of(self, queue: str) -> str:
        """The node that leads a quorum queue now (asked of any running node)."""
        for node in self.running():
            result = node.ctl("list_queues", "name", "leader", "--quiet", "--no-table-headers",
                              check=False)
            for line in result.stdout.splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == queue:
                    return parts[1]
        raise ServerError(f"no running node knows the leader of {queue}")

    def stop(self) -> None:
        """Stop every node (the last one to stop first would wait for its peers)."""
        for node in reversed(self.nodes):
            with contextlib.suppress(Exception):
                node.kill()


class PgServer:
    """A PostgreSQL 15 cluster in a temporary directory, run as the postgres user."""

    def __init__(self, base: Path, port: int | None = None) -> None:
        self.dir = base / "pg"
        self.data = self.dir / "data"
        self.port = port or free_port()
        self.admin_url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["runuser", "-u", "postgres", "--", *args], capture_output=True,
                                text=True, timeout=timeout_s, check=False)
        if result.returncode != 0:
            raise ServerError(f"{' '.join(args[:2])}: {result.stderr.strip()[-800:]}")
        return result

    def init(self) -> None:
        """initdb with trust auth, owned by postgres."""
        if port_open(self.port):
            raise ServerError(f"port {self.port} is taken")
        self.dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.dir, "postgres", "postgres")
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8")
        with (self.data / "postgresql.conf").open("a") as f:
            f.write(f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{self.dir}'\nmax_connections = 60\n"
                    "shared_buffers = 64MB\nfsync = on\n")

    def start(self) -> None:
        """Start and wait until it accepts connections."""
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"),
                  "-w", "-t", "60", "start")
        _wait(self.ready, 60, f"PostgreSQL on {self.port}")

    def stop(self, mode: str = "fast") -> None:
        """Stop (``fast`` ends open sessions, like an outage)."""
        if not (self.data / "postmaster.pid").exists():
            return
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60",
                  "stop")

    def ready(self) -> bool:
        try:
            engine = create_engine(self.admin_url, connect_args={"connect_timeout": 2})
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            engine.dispose()
            return True
        except Exception:
            return False

    def create_database(self, name: str) -> str:
        """A new database; its SQLAlchemy URL."""
        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


def make_base_dir() -> Path:
    """A temporary directory the postgres user may traverse."""
    base = Path(tempfile.mkdtemp(prefix=FAULT_DIR_PREFIX))  # what tests/sweep.py looks for
    base.chmod(0o755)
    return base
