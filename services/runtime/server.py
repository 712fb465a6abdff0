"""Service bootstrap: a grpc.aio server with health, reflection and the interceptor; Postgres and NATS connected
while health says NOT_SERVING; background workers; graceful shutdown on SIGTERM/SIGINT
(health NOT_SERVING → stop with grace → cancel workers → drain NATS → close the pool)."""

from __future__ import annotations

import asyncio
import gc
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import grpc
import pydantic
import structlog
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from nats.aio.client import Client as NatsClient
from prometheus_client import start_http_server

from services.runtime import database, idempotency, messaging, tls, tracing
from services.runtime.auth import TokenVerifier
from services.runtime.authorization import undeclared_rpcs
from services.runtime.batching import LoopLag
from services.runtime.config import RuntimeSettings, migration_only
from services.runtime.faults import enable_fault_points
from services.runtime.http_ingress import HttpIngress
from services.runtime.interceptors import ServiceInterceptor
from services.runtime.logging import configure_logging
from services.runtime.rate_limits import CallerRateLimiter
from services.runtime.supervision import OnePass, SupervisionPolicy, Worker, WorkerSupervisor, periodic

ServicerT = TypeVar("ServicerT")
log = structlog.get_logger()

READINESS_CHECK_INTERVAL_SECONDS = 5.0
IDEMPOTENCY_CLEANUP_INTERVAL_SECONDS = 3600.0
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# Health name for liveness probes: SERVING while the process runs, even when Postgres or NATS is down (that is
# readiness, the "" and per-service names), so an outage of a dependency does not restart every pod.
LIVENESS_HEALTH_NAME = "coinstream.liveness"
NATS_HEALTH_NAME = "coinstream.nats"

# A hot path allocates many short-lived objects (protobuf messages, records, futures): collecting the youngest
# generation every 700 allocations (the default) took ~3 % of a busy gifts process's CPU in a py-spy profile.
GC_YOUNGEST_THRESHOLD = 20_000


def _serving_status(ok: bool) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
    return health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING


class ServiceRuntime:
    """Owns the process's shared resources. Typical use, in a service's main():

        runtime = ServiceRuntime(settings)
        pool = runtime.use_database(MIGRATIONS)   # connected and migrated by run(), before SERVING
        nc = runtime.use_nats()                   # likewise
        runtime.on_startup(declare_streams)       # steps that need the database or NATS
        runtime.add_service(wallet_pb2_grpc.add_WalletServiceServicer_to_server, servicer, WALLET_SERVICE_NAME)
        runtime.add_worker("purchase_recovery", recovery.run_forever)
        await runtime.run()

    run() opens the port first with health NOT_SERVING (RPCs get UNAVAILABLE), connects the database (applying
    migrations) and NATS, runs the startup steps, starts the workers, and only then says SERVING."""

    def __init__(self, settings: RuntimeSettings, unshed_methods: frozenset[str] = frozenset()) -> None:
        self.settings = settings
        configure_logging(settings.service_name, settings.log_level, settings.log_format)
        tracing.configure(settings.service_name, settings.otlp_endpoint)
        enable_fault_points(settings.fault_points)
        self.pool: asyncpg.Pool | None = None
        self.nats: NatsClient | None = None
        self._migrations: Path | None = None
        self._pool_opened = False
        self._startup_steps: list[Worker] = []
        self._ready = False
        self._health = health.aio.HealthServicer()
        self._supervisor = WorkerSupervisor(self._health, SupervisionPolicy())
        self._service_names: list[str] = []
        self._workers: dict[str, Worker] = {}
        self._loop_lag = LoopLag()
        interceptor = ServiceInterceptor(
            TokenVerifier(settings),
            lambda: self._ready,
            settings.max_in_flight_unary_rpcs,
            self._loop_lag,
            settings.admission_queue_budget_seconds,
            unshed_methods,
            CallerRateLimiter(settings.effective_rate_limits()),
            settings.max_public_streams,
        )
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
            ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
            *_connection_age_options(settings.grpc_max_connection_age_seconds),
        ]
        self._server = grpc.aio.server(interceptors=[interceptor], options=options)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        # Read now, so that a bad TLS file stops the process at once, naming its setting.
        self._server_credentials = tls.grpc_server_credentials(settings)
        self._nats_tls: ssl.SSLContext | None = None
        self._health_server = (
            _plaintext_health_server(self._health, interceptor, options) if settings.grpc_health_port else None
        )
        self.http: HttpIngress | None = None

    def use_database(self, service_migrations: Path) -> asyncpg.Pool:
        self._migrations = service_migrations
        self.pool = database.new_pool(self.settings)
        self.add_periodic("idempotency_cleanup", IDEMPOTENCY_CLEANUP_INTERVAL_SECONDS, self._clean_idempotency_keys)
        return self.pool

    def use_nats(self) -> NatsClient:
        self.nats = NatsClient()
        self._nats_tls = tls.nats_ssl_context(self.settings)
        return self.nats

    def use_http(self) -> HttpIngress:
        """The service's HTTP port for providers (settings.http_port): endpoints are added to it before run(); it
        opens with the gRPC port and answers 503 until the service is ready."""
        self.http = HttpIngress(
            self.settings.http_host,
            self.settings.http_port,
            self.settings.http_max_body_bytes,
            tls.http_ssl_context(self.settings),  # read now: a bad file stops the process, naming its setting
            lambda: self._ready,
        )
        return self.http

    def on_startup(self, step: Worker) -> None:
        self._startup_steps.append(step)

    def add_service(
        self, register: Callable[[ServicerT, grpc.aio.Server], None], servicer: ServicerT, full_name: str
    ) -> None:
        """Serves servicer's RPCs; refuses one whose RPCs do not all declare who may call them (authorization.py),
        so a new RPC cannot ship open by omission."""
        undeclared = undeclared_rpcs(servicer)
        if undeclared:
            raise TypeError(f"{type(servicer).__name__} declares no access for {', '.join(undeclared)}")
        register(servicer, self._server)
        self._service_names.append(full_name)

    def add_worker(self, name: str, worker: Worker) -> None:
        """A background worker with a loop of its own, supervised (restarted after a failure, health per worker)."""
        self._workers[name] = worker

    def add_periodic(self, name: str, interval_seconds: float, one_pass: OnePass) -> None:
        """Periodic work as a supervised worker: one_pass every interval_seconds, or again at once when it says
        more is due."""
        self.add_worker(name, periodic(interval_seconds, one_pass))

    async def start(self) -> int:
        """Starts listening (health NOT_SERVING until ready); returns the bound port."""
        address = f"{self.settings.grpc_host}:{self.settings.grpc_port}"
        if self._server_credentials is None:
            port = self._server.add_insecure_port(address)
        else:
            port = self._server.add_secure_port(address, self._server_credentials)
        reflection.enable_server_reflection(
            [*self._service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self._server,
        )
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._health.set(LIVENESS_HEALTH_NAME, health_pb2.HealthCheckResponse.SERVING)
        await self._server.start()
        if self._health_server is not None:
            health_address = f"{self.settings.grpc_host}:{self.settings.grpc_health_port}"
            self._health_server.add_insecure_port(health_address)
            await self._health_server.start()
            log.info("grpc_health_listening", address=health_address)
        if self.http is not None:
            await self.http.start()
        if self.settings.metrics_port:
            start_http_server(self.settings.metrics_port, addr=self.settings.metrics_host)
        log.info(
            "grpc_listening",
            address=address,
            port=port,
            tls=self.settings.grpc_tls_enabled,
            mutual_tls=self.settings.grpc_mutual_tls_enabled,
        )
        if self.settings.environment == "production" and database.tls_mode(self.settings.database_url) != "verify-full":
            # Exempted on purpose (COINSTREAM_ALLOW_PLAINTEXT_DATABASE): said at every start, for whoever reads logs.
            log.warning("database_in_clear_text_allowed", setting="COINSTREAM_ALLOW_PLAINTEXT_DATABASE")
        return port

    async def run(self) -> None:
        """Serves until SIGTERM/SIGINT, then shuts down gracefully."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        tasks: list[asyncio.Task[None]] = []
        if await self._until_stopped(self._connect_dependencies(), stop):
            await self._supervisor.declare(list(self._workers))
            tasks = [
                asyncio.create_task(self._supervisor.supervise(name, worker), name=name)
                for name, worker in self._workers.items()
            ]
            tasks.append(asyncio.create_task(self._watch_readiness(), name="readiness"))
            tasks.append(asyncio.create_task(self._loop_lag.run_forever(), name="loop_lag"))
            self._ready = True
            _settle_garbage_collection()
            await self._set_health(health_pb2.HealthCheckResponse.SERVING)
            log.info("service_ready", services=self._service_names)
            await stop.wait()
        await self._shutdown(tasks)

    async def _connect_dependencies(self) -> None:
        if self.pool is not None:
            assert self._migrations is not None
            await database.open_pool(self.pool, self.settings)
            self._pool_opened = True
            await database.prepare_schema(self.pool, self.settings, self._migrations)
        if self.nats is not None:
            await messaging.connect(
                self.nats,
                self.settings.nats_url,
                f"coinstream-{self.settings.service_name}",
                self.settings.nats_login(),  # reads the password file now: a missing one stops the start here
                tls=self._nats_tls,
            )
        for step in self._startup_steps:
            await step()

    @staticmethod
    async def _until_stopped(work: Awaitable[None], stop: asyncio.Event) -> bool:
        """Runs work unless a stop signal comes first; True when the work finished."""
        work_task = asyncio.ensure_future(work)
        stop_task = asyncio.create_task(stop.wait())
        await asyncio.wait({work_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        stop_task.cancel()
        if not work_task.done():
            work_task.cancel()
            await asyncio.gather(work_task, return_exceptions=True)
            return False
        work_task.result()  # a failed start-up is fatal: let the process exit and be restarted
        return True

    async def _shutdown(self, tasks: Sequence[asyncio.Task[None]]) -> None:
        log.info("shutdown_started", grace_seconds=self.settings.shutdown_grace_seconds)
        await self._health.enter_graceful_shutdown()
        await self._server.stop(self.settings.shutdown_grace_seconds)
        if self._health_server is not None:
            await self._health_server.stop(None)  # probes saw NOT_SERVING through the grace above
        if self.http is not None:
            await self.http.stop()  # notifications in flight finish and are answered
        self._ready = False
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            if self.nats is not None and self.nats.is_connected:
                await self.nats.drain()
            if self.pool is not None and self._pool_opened:
                await self.pool.close()
        finally:
            tracing.shutdown()  # the spans of the last calls are exported even when the drain fails
        log.info("shutdown_complete")

    async def _watch_readiness(self) -> None:
        """Readiness follows the database only: every RPC needs it, none needs NATS (gifts queue events in their
        outbox, payouts settles when NATS is back), so a NATS outage must not stop gifting or withdrawals.
        NATS has its own health name for dashboards and alerts."""
        while True:
            await asyncio.sleep(READINESS_CHECK_INTERVAL_SECONDS)
            ready = await self._database_ok()
            if ready != self._ready:
                log.warning("readiness_changed", ready=ready)
                self._ready = ready
                await self._set_health(_serving_status(ready))
            if self.nats is not None:
                await self._health.set(NATS_HEALTH_NAME, _serving_status(self.nats.is_connected))

    async def _database_ok(self) -> bool:
        if self.pool is None:
            return True
        try:
            await self.pool.fetchval("SELECT 1", timeout=2.0)
            return True
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False

    async def _clean_idempotency_keys(self) -> bool:
        assert self.pool is not None
        deleted = await idempotency.delete_expired(self.pool, self.settings.idempotency_retention_days)
        if deleted:
            log.info("idempotency_keys_expired", deleted=deleted)
        if deleted < idempotency.EXPIRED_KEYS_PER_PASS:
            return False
        await asyncio.sleep(1.0)  # a backlog goes in steps, leaving the database to the requests in between
        return True

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        for name in ["", *self._service_names]:
            await self._health.set(name, status)


def _connection_age_options(max_age_seconds: float) -> list[tuple[str, int]]:
    """A connection older than max_age gets GOAWAY; its calls in flight have one more max_age (capped at a minute)
    to finish before it is closed."""
    if not max_age_seconds:
        return []
    max_age_ms = int(max_age_seconds * 1000)
    return [("grpc.max_connection_age_ms", max_age_ms), ("grpc.max_connection_age_grace_ms", min(max_age_ms, 60_000))]


def _plaintext_health_server(
    servicer: health.aio.HealthServicer, interceptor: ServiceInterceptor, options: list[tuple[str, int]]
) -> grpc.aio.Server:
    """COINSTREAM_GRPC_HEALTH_PORT: grpc.health.v1.Health alone, without TLS, for Kubernetes' native gRPC probes
    (they cannot speak TLS). The same servicer as the main port's, so both always give the same statuses; nothing
    else is served there (no reflection, no service), so it bypasses neither TLS nor tokens for any real RPC. The
    same interceptor and options: its Watch streams count against the same max_public_streams."""
    server = grpc.aio.server(interceptors=[interceptor], options=options)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return server


def _settle_garbage_collection() -> None:
    """Everything allocated by start-up (modules, protobuf descriptors, pools) lives as long as the process:
    frozen out of the collector's scans, and the youngest generation collected less often."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNGEST_THRESHOLD, middle, oldest)


def main(
    serve: Callable[[], Coroutine[Any, Any, None]], settings: Callable[[], RuntimeSettings], migrations: Path
) -> None:
    """A service's command line: `python -m services.<name>` serves; `python -m services.<name> migrate` applies the
    pending migrations of its database and exits (0 when done), without starting the service."""
    arguments = sys.argv[1:]
    if not arguments:
        try:
            uvloop.run(serve())
        except pydantic.ValidationError as refused:
            # A setting to fix, not a bug: its message (which never echoes the input) without a traceback.
            sys.exit(f"{refused}")
        return
    if arguments != ["migrate"]:
        sys.exit(f"usage: {_command()} [migrate]")
    try:
        with migration_only():  # production checks the database connection only: a migration serves nothing
            configured = settings()
    except pydantic.ValidationError as refused:
        sys.exit(f"{refused}")
    configure_logging(configured.service_name, configured.log_level, configured.log_format)
    applied = uvloop.run(database.migrate(configured, migrations))
    log.info("migrate_done", applied=applied)


def _command() -> str:
    """How this service was started: `python -m services.<name>` (its __main__), else the script's path."""
    spec = sys.modules["__main__"].__spec__
    return f"python -m {spec.name}" if spec is not None else sys.argv[0]
