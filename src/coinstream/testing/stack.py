"""A whole stack in a folder of its own on free loopback ports: embedded PostgreSQL, nats-server with JetStream and
the three services as `python -m services.<name>` processes. The test suite (tests/support/stack.py) and
`make bench` use it; `make run` (devstack.run) is the foreground variant on the fixed development ports."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import grpc

import services
from coinstream.client import NotServingError, wait_until_serving
from coinstream.testing.certificates import StackTls
from coinstream.testing.servers import NatsServer, PostgresServer, free_port, postgres_bin_with_ssl, stop_process
from services.runtime import tls as runtime_tls
from services.runtime.nats_permissions import OPERATOR_USER

# Where the services are imported from: the checkout in development (the editable install `make install` makes),
# site-packages where coinstream is installed from a wheel (coinstream[testing]). Their processes run there.
REPO_ROOT = Path(services.__file__).resolve().parent.parent
ALL_SERVICES = ("wallet", "gifts", "payouts")
# The services with an HTTP port for providers (notifications and webhooks).
HTTP_SERVICES = ("wallet", "payouts")
READY_TIMEOUT_SECONDS = 60.0


@dataclass
class ServiceProcess:
    name: str
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    # Its Prometheus /metrics port (0: none).
    metrics_port: int = 0
    # Its HTTP port for providers' notifications (wallet, payouts; 0: the service has none): free, on loopback,
    # picked for each process so that replicas do not collide.
    http_port: int = 0

    def __post_init__(self) -> None:
        if self.name in HTTP_SERVICES and not self.http_port:
            self.http_port = free_port()

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def http_env(self) -> dict[str, str]:
        return {f"COINSTREAM_{self.name.upper()}_HTTP_PORT": str(self.http_port)} if self.http_port else {}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def metrics_env(self) -> dict[str, str]:
        """The setting that opens its metrics port (given to this process only: another process of the service,
        started with service_env(), must not try to take the same port)."""
        if not self.metrics_port:
            return {}
        return {f"COINSTREAM_{self.name.upper()}_METRICS_PORT": str(self.metrics_port)}


@dataclass
class Stack:
    root: Path
    postgres: PostgresServer
    nats: NatsServer
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    # Settings every service gets besides its URLs and ports; start_service(extra_env=...) may add to one start.
    base_env: dict[str, str] = field(default_factory=dict)
    # The services start() starts; the databases and ports of all three exist regardless.
    service_names: tuple[str, ...] = ALL_SERVICES
    # Where the services' code lives: the benchmark may run another checkout's services with this venv.
    code_root: Path = REPO_ROOT
    # TLS and mutual TLS everywhere (None: plaintext, as in development): the services' gRPC ports, gifts → wallet
    # and their NATS connections get the settings of tls.service_env(); PostgreSQL and NATS, made with the same
    # StackTls (new_stack does that), require TLS; the stack's own clients present its client certificate.
    tls: StackTls | None = None
    # Every service process gets a /metrics port of its own (free, on loopback).
    metrics: bool = False

    def address(self, service: str) -> str:
        return self.services[service].address

    def operator_environment(self) -> dict[str, str]:
        """Settings for a tool run by an operator against this stack (`coinstream dead-letters`, `reconcile`)."""
        return {"COINSTREAM_NATS_URL": self.nats.url, **self.nats.credentials.environment(OPERATOR_USER)}

    def database_url(self, service: str) -> str:
        return self.postgres.url(f"coinstream_{service}")

    def service_env(self, service: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COINSTREAM_")}
        if self.tls is not None:
            env.update(self.tls.service_env())
        env.update(self.base_env)
        env.update(
            {
                "COINSTREAM_NATS_URL": self.nats.url,
                f"COINSTREAM_{service.upper()}_DATABASE_URL": self.database_url(service),
                f"COINSTREAM_{service.upper()}_PORT": str(self.services[service].port),
                "COINSTREAM_GIFTS_WALLET_ADDRESS": self.address("wallet"),
                # Each service logs in to NATS as its own user, with only the rights it needs.
                **self.nats.credentials.service_environment(service),
                # Ahead of the venv's editable install, so that code_root's services and generated code are used.
                "PYTHONPATH": os.pathsep.join([str(self.code_root), str(self.code_root / "gen" / "python")]),
            }
        )
        return env

    def start_service(self, service: str, extra_env: dict[str, str] | None = None, wait: bool = True) -> None:
        proc = self.services[service]
        env = self.service_env(service)
        env.update(proc.metrics_env())
        env.update(proc.http_env())
        env.update(extra_env or {})
        proc.process = self._spawn(service, env, proc.log_path)
        if wait:
            self.wait_serving(service)

    def start_replica(self, service: str, extra_env: dict[str, str] | None = None) -> ServiceProcess:
        """Another process of the service on a port of its own, sharing the database and NATS (as replicas do);
        the caller stops it (stop_process)."""
        port = free_port()
        replica = ServiceProcess(
            service, port, self.root / f"{service}-replica-{port}.log", metrics_port=free_port() if self.metrics else 0
        )
        env = self.service_env(service)
        env.update(
            {
                f"COINSTREAM_{service.upper()}_PORT": str(replica.port),
                **replica.metrics_env(),
                **replica.http_env(),
                **(extra_env or {}),
            }
        )
        replica.process = self._spawn(service, env, replica.log_path)
        _wait_until_serving(replica, self.tls)
        return replica

    def _spawn(self, service: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as log:  # the child keeps its own descriptor; restarts must not leak ours
            return subprocess.Popen(
                [sys.executable, "-m", f"services.{service}"],
                cwd=self.code_root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_serving(self, service: str) -> None:
        _wait_until_serving(self.services[service], self.tls)

    def nats_tls(self) -> ssl.SSLContext | None:
        return nats_client_tls(self.tls)

    def aio_channel(self, address: str) -> grpc.aio.Channel:
        """A channel to a service of this stack (created on the running event loop): over mutual TLS with the
        stack's client certificate when the stack has TLS."""
        credentials = client_credentials(self.tls)
        if credentials is None:
            return grpc.aio.insecure_channel(address)
        return grpc.aio.secure_channel(address, credentials)

    def stop_service(self, service: str) -> int | None:
        """Graceful stop (SIGTERM); returns the exit code."""
        process = self.services[service].process
        if process is None:
            return None
        stop_process(process, signal.SIGTERM)
        return process.returncode

    def kill_service(self, service: str) -> None:
        process = self.services[service].process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()

    def wait_exit(self, service: str, timeout_seconds: float = 30.0) -> int:
        """Waits for a service that is expected to die (e.g. at a crash point)."""
        process = self.services[service].process
        assert process is not None
        return process.wait(timeout_seconds)

    def restart_service(self, service: str, extra_env: dict[str, str] | None = None) -> None:
        self.stop_service(service)
        self.start_service(service, extra_env)

    def start(self) -> None:
        self.start_servers()
        self.start_services()

    def start_servers(self) -> None:
        """PostgreSQL with a database per service, NATS, and a free port for each service."""
        self.postgres.start()
        self.nats.start()
        for service in ALL_SERVICES:
            self.postgres.create_database(f"coinstream_{service}")
            self.services[service] = ServiceProcess(
                service, free_port(), self.root / f"{service}.log", metrics_port=free_port() if self.metrics else 0
            )

    def start_services(self) -> None:
        # All start at once (gifts waits for nothing from the wallet to come up), then each must report SERVING.
        for service in self.service_names:
            self.start_service(service, wait=False)
        for service in self.service_names:
            self.wait_serving(service)

    def stop(self) -> None:
        for service in reversed(self.service_names):
            if service in self.services:
                self.stop_service(service)
        self.nats.stop()
        self.postgres.stop()


def new_stack(
    root: Path,
    *,
    durable: bool,
    base_env: dict[str, str] | None = None,
    service_names: tuple[str, ...] = ALL_SERVICES,
    code_root: Path = REPO_ROOT,
    tls: StackTls | None = None,
) -> Stack:
    """A stack whose servers keep their data under root (which the unprivileged postgres user must reach); with
    tls, TLS and mutual TLS between everything (StackTls.generate makes the certificates)."""
    root.mkdir(parents=True, exist_ok=True)
    postgres_bin = None
    if tls is not None:
        postgres_bin = postgres_bin_with_ssl()
        if postgres_bin is None:
            raise RuntimeError("no PostgreSQL built with OpenSSL for a stack with TLS: apt-get install postgresql")
    return Stack(
        root=root,
        postgres=PostgresServer(
            root / "postgres" / "data", free_port(), durable=durable, tls=tls, bin_path=postgres_bin
        ),
        nats=NatsServer(root / "nats" / "data", free_port(), tls=tls),
        base_env=dict(base_env or {}),
        service_names=service_names,
        code_root=code_root,
        tls=tls,
    )


def client_credentials(stack_tls: StackTls | None) -> grpc.ChannelCredentials | None:
    """What the stack's gRPC clients (health waits, tests) present: the stack's CA and its client certificate."""
    if stack_tls is None:
        return None
    return runtime_tls.channel_credentials(*_client_files(stack_tls))


def nats_client_tls(stack_tls: StackTls | None) -> ssl.SSLContext | None:
    """The same for the stack's own NATS clients (tests, reconcile's checks)."""
    if stack_tls is None:
        return None
    return runtime_tls.client_ssl_context(*_client_files(stack_tls))


def _client_files(stack_tls: StackTls) -> tuple[runtime_tls.PemFile, runtime_tls.PemFile, runtime_tls.PemFile]:
    return (
        runtime_tls.PemFile("the stack's CA", str(stack_tls.ca_file)),
        runtime_tls.PemFile("the stack's client certificate", str(stack_tls.client_cert_file)),
        runtime_tls.PemFile("the stack's client key", str(stack_tls.client_key_file)),
    )


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_until_serving(proc: ServiceProcess, stack_tls: StackTls | None) -> None:
    """Until the service's process reports SERVING; RuntimeError with its log's end when it exits or is late."""

    def exited() -> None:
        if proc.process is not None and proc.process.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.process.returncode}:\n{tail(proc.log_path)}")

    try:
        wait_until_serving(
            proc.address,
            timeout_seconds=READY_TIMEOUT_SECONDS,
            credentials=client_credentials(stack_tls),
            still_starting=exited,
        )
    except NotServingError:
        raise RuntimeError(f"{proc.name} not SERVING in time:\n{tail(proc.log_path)}") from None
