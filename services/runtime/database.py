"""asyncpg pool and plain-SQL migrations, applied at start under an advisory lock so replicas may start together."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias
from urllib.parse import parse_qs, urlsplit

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from services.runtime.tls import PemFile, TlsSettingError

if TYPE_CHECKING:  # config reads tls_mode from here for its production checks
    from services.runtime.config import RuntimeSettings

RUNTIME_MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant works; it only has to be the same for every replica of every service sharing a database server.
MIGRATION_LOCK_KEY = 0x636F696E  # "coin"

log = structlog.get_logger()

# A connection to run queries and transactions on: one of its own (asyncpg.connect) or one lent by a pool, which is a
# PoolConnectionProxy (it forwards to a Connection, but asyncpg's stubs keep the two types apart).
Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy
# Where a single statement can run: a connection, or the pool, which lends one for the statement.
Executor: TypeAlias = Connection | asyncpg.Pool


@dataclass(frozen=True)
class Statement:
    """SQL with its arguments, for a caller to run alone or as a CTE of a statement of its own (one round trip)."""

    sql: str
    args: list[object]


def placeholders(first: int, count: int) -> list[str]:
    """$first, $first+1, …: the parameters of a Statement that starts at parameter number `first`."""
    return [f"${first + index}" for index in range(count)]


def new_pool(settings: RuntimeSettings) -> asyncpg.Pool:
    """The pool object, not yet connected, so use cases can be wired to it before the server starts;
    open_pool() connects it once the database answers."""
    return asyncpg.create_pool(
        settings.database_url,
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        command_timeout=settings.db_command_timeout_seconds,
        # asyncpg's default reset (RESET ALL, CLOSE ALL, UNLISTEN *, pg_advisory_unlock_all()) costs a round trip on
        # every release, and it is kept: it is also what finds a connection a database restart left in a broken
        # protocol state ("another operation is in progress") and has the pool terminate it, where a no-op reset
        # handed it out again and again (seen in tests/integration/test_server_faults.py).
        server_settings={
            "application_name": f"coinstream-{settings.service_name}",
            # A transaction held open across a network call (outbox relay, payout provider) must not hold its
            # locks forever if the process hangs; command_timeout does not cover an idle transaction.
            "idle_in_transaction_session_timeout": str(int(settings.db_idle_in_transaction_timeout_seconds * 1000)),
        },
    )


async def open_pool(pool: asyncpg.Pool, settings: RuntimeSettings) -> None:
    await wait_for_database(settings)
    await pool  # a failed pool can't be initialized again, so it is only tried once the database answers


# libpq's sslmode values, which asyncpg accepts in a URL: verify-full checks the server's certificate (against
# sslrootcert) and its host name, verify-ca the certificate only; require/prefer/allow encrypt without verifying.
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# Files a URL may name: the CA for the server's certificate, and a client certificate and key (mutual TLS).
SSL_FILE_PARAMETERS = ("sslrootcert", "sslcert", "sslkey")


def tls_mode(url: str) -> str:
    """The sslmode a database URL asks for, "" when it names none (asyncpg then uses PGSSLMODE, else `prefer`:
    TLS when the server offers it, the certificate unverified)."""
    modes = _url_parameters(url).get("sslmode", [])
    return modes[-1] if modes else ""


def check_tls(url: str, setting: str) -> None:
    """A start-up check of the URL's TLS parameters, naming the setting: an unknown sslmode, or a file it names
    that cannot be read. asyncpg would fail too, but a missing client certificate looks to it like a database
    not answering yet (an OSError) and would be retried for a minute, and its messages name no setting."""
    mode = tls_mode(url)
    if mode and mode not in SSL_MODES:
        raise TlsSettingError(f"{setting}: sslmode={mode!r} is not one of {', '.join(SSL_MODES)}")
    parameters = _url_parameters(url)
    for parameter in SSL_FILE_PARAMETERS:
        for path in parameters.get(parameter, []):
            PemFile(f"{setting} ({parameter})", path).read()


def _url_parameters(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


async def wait_for_database(settings: RuntimeSettings) -> None:
    """Retries until the database answers (it may still be starting), up to db_connect_timeout_seconds."""
    check_tls(settings.database_url, settings.env_name(f"{settings.service_name}_database_url"))
    deadline = time.monotonic() + settings.db_connect_timeout_seconds
    delay_seconds = 0.2
    while True:
        try:
            probe = await asyncpg.connect(settings.database_url, timeout=5)
            await probe.close()
            return
        except (TimeoutError, OSError, asyncpg.PostgresError) as error:
            if time.monotonic() > deadline:
                raise
            log.warning("database_not_ready", error=str(error), retry_in_seconds=delay_seconds)
            await asyncio.sleep(delay_seconds)
            delay_seconds = min(delay_seconds * 2, 2.0)


def migration_files(service_migrations: Path) -> list[tuple[str, Path]]:
    """Runtime tables first (idempotency keys), then the service's own, each in file-name order."""
    files = [(f"runtime/{p.name}", p) for p in sorted(RUNTIME_MIGRATIONS.glob("*.sql"))]
    files += [(f"service/{p.name}", p) for p in sorted(service_migrations.glob("*.sql"))]
    return files


async def migrate(settings: RuntimeSettings, service_migrations: Path) -> list[str]:
    """The `migrate` entrypoint: applies what is pending over a connection of its own, without starting the service
    (a Kubernetes Job or init container before a rollout, say), then grants the runtime role its rows."""
    await wait_for_database(settings)
    connection = await asyncpg.connect(settings.database_url, timeout=settings.db_connect_timeout_seconds)
    try:
        return await apply_migrations(
            connection,
            service_migrations,
            lock_wait_seconds=settings.db_migration_lock_wait_seconds,
            statement_timeout_seconds=settings.db_migration_statement_timeout_seconds,
            lock_timeout_seconds=settings.db_migration_lock_timeout_seconds,
            runtime_role=settings.db_runtime_role,
        )
    finally:
        await connection.close()


async def prepare_schema(pool: asyncpg.Pool, settings: RuntimeSettings, service_migrations: Path) -> None:
    """At start, before SERVING: apply the pending migrations (COINSTREAM_DB_MIGRATE_ON_START, the default), or, where
    a migration job owns the schema and this process's role cannot change it, wait until the job has applied every
    migration this code knows (a newer schema is fine: migrations only expand what older code uses)."""
    if settings.db_migrate_on_start:
        await apply_migrations(
            pool,
            service_migrations,
            lock_wait_seconds=settings.db_migration_lock_wait_seconds,
            statement_timeout_seconds=settings.db_migration_statement_timeout_seconds,
            lock_timeout_seconds=settings.db_migration_lock_timeout_seconds,
        )
    else:
        await wait_for_schema(pool, service_migrations, settings.db_migration_lock_wait_seconds)


class SchemaNotMigratedError(RuntimeError):
    pass


SCHEMA_POLL_SECONDS = 2.0


async def pending_migrations(database: Executor, service_migrations: Path) -> list[str]:
    """The migrations this code ships that schema_migrations does not record, in order (all of them on a database
    never migrated)."""
    names = [name for name, _ in migration_files(service_migrations)]
    if await database.fetchval("SELECT to_regclass('schema_migrations')") is None:
        return names
    applied = {r["name"] for r in await database.fetch("SELECT name FROM schema_migrations")}
    return [name for name in names if name not in applied]


async def wait_for_schema(pool: asyncpg.Pool, service_migrations: Path, wait_seconds: float) -> None:
    started = time.monotonic()
    logged_at: float | None = None
    while True:
        try:
            missing = await pending_migrations(pool, service_migrations)
            refused = ""
        except asyncpg.InsufficientPrivilegeError as error:
            # The job has made schema_migrations but not yet granted this role its rows (it is still running), or
            # it grants another role: said in the error below if it lasts.
            missing = [name for name, _ in migration_files(service_migrations)]
            refused = f"; this role may not read schema_migrations ({error}): check COINSTREAM_DB_RUNTIME_ROLE"
        if not missing:
            return
        now = time.monotonic()
        if now - started > wait_seconds:
            raise SchemaNotMigratedError(
                f"{len(missing)} migration(s) not applied after {wait_seconds:g} s (first: {missing[0]}): run"
                " `python -m services.<name> migrate` (the migration job) with the new release first" + refused
            )
        if logged_at is None or now - logged_at >= 10:
            log.warning("waiting_for_migrations", missing=missing[:5], count=len(missing), refused=bool(refused))
            logged_at = now
        await asyncio.sleep(SCHEMA_POLL_SECONDS)


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def runtime_role_grants(role: str, database: str) -> list[str]:
    """What the role a service runs as may do: connect and use rows, not change the schema. Run by the migration role
    (the database's owner, so the owner of what the migrations make) after every migration, so tables made by earlier
    releases get them too; the default privileges cover what this role makes later. The service must not change
    the recorded schema version, and other roles (another service's) may not even connect."""
    quoted = quote_identifier(role)
    return [
        f"REVOKE ALL ON DATABASE {quote_identifier(database)} FROM PUBLIC",
        f"GRANT CONNECT ON DATABASE {quote_identifier(database)} TO {quoted}",
        # PostgreSQL 15+ gives PUBLIC no CREATE on the public schema; older versions did (a warning only where the
        # migration role does not own the schema).
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
        f"GRANT USAGE ON SCHEMA public TO {quoted}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {quoted}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {quoted}",
        f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON schema_migrations FROM {quoted}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {quoted}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {quoted}",
    ]


async def apply_migrations(
    database: Executor,
    service_migrations: Path,
    *,
    lock_wait_seconds: float = 600.0,
    statement_timeout_seconds: float = 3600.0,
    lock_timeout_seconds: float = 0.0,
    runtime_role: str = "",
) -> list[str]:
    """Applies the pending migrations, each in a transaction, under an advisory lock that replicas starting together
    wait for (up to lock_wait_seconds); then, with a runtime_role, grants it its rows (runtime_role_grants). Timeouts
    of their own, not the pool's command timeout: a migration may rightly take minutes, and so may waiting for
    another replica's; lock_timeout_seconds bounds a statement's wait for a table lock (0: none of its own)."""
    if isinstance(database, asyncpg.Pool):
        async with database.acquire() as connection:
            return await apply_migrations(
                connection,
                service_migrations,
                lock_wait_seconds=lock_wait_seconds,
                statement_timeout_seconds=statement_timeout_seconds,
                lock_timeout_seconds=lock_timeout_seconds,
                runtime_role=runtime_role,
            )
    conn = database
    # Client-side bound just above the server's statement_timeout, which is the one that should fire.
    timeout = statement_timeout_seconds + 5
    applied_now: list[str] = []
    await _take_migration_lock(conn, lock_wait_seconds)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
            timeout=timeout,
        )
        already_applied = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        for name, path in migration_files(service_migrations):
            if name in already_applied:
                continue
            started = time.monotonic()
            async with conn.transaction():
                # SET LOCAL: ends with the transaction, so a pooled connection goes back as it came.
                await conn.execute(f"SET LOCAL statement_timeout = {int(statement_timeout_seconds * 1000)}")
                await conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_seconds * 1000)}")
                await conn.execute(path.read_text(), timeout=timeout)
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
            applied_now.append(name)
            log.info("migration_applied", migration=name, seconds=round(time.monotonic() - started, 3))
        if runtime_role:
            await _grant_runtime_role(conn, runtime_role, lock_timeout_seconds, timeout)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    return applied_now


class RuntimeRoleError(RuntimeError):
    pass


async def _grant_runtime_role(
    conn: Connection, role: str, lock_timeout_seconds: float, statement_seconds: float
) -> None:
    """The grants run by the migration role: never to itself (revoking its own INSERT on schema_migrations would
    block every later migration) and never to PUBLIC (every role would get the rows)."""
    if role == "public" or role.startswith("pg_"):
        raise RuntimeRoleError(f"COINSTREAM_DB_RUNTIME_ROLE={role!r} names every role or a built-in one")
    if role == await conn.fetchval("SELECT current_user"):
        raise RuntimeRoleError(
            f"COINSTREAM_DB_RUNTIME_ROLE={role!r} is the migration role itself: give the service a role of its own"
        )
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_seconds * 1000)}")
        current_database = await conn.fetchval("SELECT current_database()")
        for grant in runtime_role_grants(role, current_database):
            await conn.execute(grant, timeout=statement_seconds)
    log.info("runtime_role_granted", role=role)


MIGRATION_LOCK_POLL_SECONDS = 0.5


async def _take_migration_lock(conn: Connection, wait_seconds: float) -> None:
    """Polled rather than waited for in one call, so the wait is bounded by our setting and visible in the log."""
    started = logged_at = time.monotonic()
    while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK_KEY):
        now = time.monotonic()
        if now - started > wait_seconds:
            raise TimeoutError(f"another process held the migration lock for more than {wait_seconds:g} s")
        if now - logged_at >= 5:
            log.info("waiting_for_migration_lock", waited_seconds=round(now - started))
            logged_at = now
        await asyncio.sleep(MIGRATION_LOCK_POLL_SECONDS)
