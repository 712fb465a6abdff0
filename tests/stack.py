"""The system under test: real PostgreSQL, real nats-server and the three services as real processes on free
loopback ports. Tests may restart a service with extra settings (e.g. a crash point) or kill it with SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import nats
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from devstack.servers import NatsServer, PostgresServer, free_port, stop_process
from services.runtime import messaging

REPO_ROOT = Path(__file__).resolve().parent.parent
ALL_SERVICES = ("wallet", "gifts", "payouts")
# While developing one service, COINSTREAM_TEST_SERVICES=wallet,gifts starts only those (tests of the others fail).
SERVICES = tuple(s for s in os.environ.get("COINSTREAM_TEST_SERVICES", ",".join(ALL_SERVICES)).split(",") if s)
READY_TIMEOUT_SECONDS = 60.0
AUTH_SECRET = "test-secret-at-least-32-bytes-long-0123456789"


@dataclass
class ServiceProcess:
    name: str
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class Stack:
    root: Path
    postgres: PostgresServer
    nats: NatsServer
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    # Settings every service gets; tests may add to a single start through start_service(extra_env=...).
    base_env: dict[str, str] = field(default_factory=dict)

    def address(self, service: str) -> str:
        return self.services[service].address

    def database_url(self, service: str) -> str:
        return self.postgres.url(f"coinstream_{service}")

    def service_env(self, service: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COINSTREAM_")}
        env.update(self.base_env)
        env.update(
            {
                f"COINSTREAM_{service.upper()}_DATABASE_URL": self.database_url(service),
                f"COINSTREAM_{service.upper()}_PORT": str(self.services[service].port),
                "COINSTREAM_GIFTS_WALLET_ADDRESS": self.address("wallet"),
            }
        )
        return env

    def start_service(self, service: str, extra_env: dict[str, str] | None = None, wait: bool = True) -> None:
        proc = self.services[service]
        env = self.service_env(service)
        env.update(extra_env or {})
        log = open(proc.log_path, "ab")
        proc.process = subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        if wait:
            self.wait_serving(service)

    def wait_serving(self, service: str) -> None:
        proc = self.services[service]
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        with grpc.insecure_channel(proc.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if proc.process is not None and proc.process.poll() is not None:
                    raise RuntimeError(f"{service} exited with {proc.process.returncode}:\n{tail(proc.log_path)}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise RuntimeError(f"{service} not SERVING in time:\n{tail(proc.log_path)}")

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
        self.postgres.start()
        self.nats.start()
        asyncio.run(declare_audit_consumer(self.nats.url))
        for service in ALL_SERVICES:
            self.postgres.create_database(f"coinstream_{service}")
            self.services[service] = ServiceProcess(service, free_port(), self.root / f"{service}.log")
        self.base_env = {
            "COINSTREAM_NATS_URL": self.nats.url,
            "COINSTREAM_AUTH_SECRET": AUTH_SECRET,
            "COINSTREAM_LOG_LEVEL": "info",
            # Fast background loops so tests see recovery and settlement quickly.
            "COINSTREAM_GIFTS_RECOVERY_INTERVAL_SECONDS": "0.5",
            "COINSTREAM_GIFTS_RECOVERY_AGE_SECONDS": "1",
            "COINSTREAM_WALLET_RECOVERY_INTERVAL_SECONDS": "0.5",
            "COINSTREAM_WALLET_RECOVERY_AGE_SECONDS": "1",
            "COINSTREAM_PAYOUTS_WORKER_INTERVAL_SECONDS": "0.2",
            "COINSTREAM_PAYOUTS_SANDBOX_SETTLE_SECONDS": "0.5",
        }
        for service in SERVICES:
            self.start_service(service, wait=False)
        for service in SERVICES:
            self.wait_serving(service)

    def stop(self) -> None:
        for service in reversed(SERVICES):
            if service in self.services:
                self.stop_service(service)
        self.nats.stop()
        self.postgres.stop()


AUDIT_CONSUMER = "test-audit"


async def declare_audit_consumer(nats_url: str) -> None:
    """With interest retention, JetStream deletes a message once every consumer acked it. This durable consumer
    never acks, so tests can read back every event ever published (as an audit/archive consumer would)."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await messaging.ensure_gifts_stream(js)
        await js.add_consumer(
            messaging.GIFTS_STREAM,
            ConsumerConfig(
                durable_name=AUDIT_CONSUMER, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL
            ),
        )
    finally:
        await nc.close()


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def build_stack(root: Path) -> Stack:
    root.mkdir(parents=True, exist_ok=True)
    return Stack(
        root=root,
        postgres=PostgresServer(root / "postgres" / "data", free_port(), durable=False),
        nats=NatsServer(root / "nats" / "data", free_port()),
    )
