"""asyncpg pool and plain-SQL migrations, applied at start under an advisory lock so replicas may start together."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import structlog

from services.runtime.config import RuntimeSettings

RUNTIME_MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant works; it only has to be the same for every replica of every service sharing a database server.
MIGRATION_LOCK_KEY = 0x636F696E  # "coin"

log = structlog.get_logger()


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
        # asyncpg's default reset (RESET ALL, CLOSE ALL, UNLISTEN *, pg_advisory_unlock_all()) costs a round trip
        # on every release. Our connections keep no session state to reset: settings are SET LOCAL, advisory locks
        # are transaction-level or released in a finally; an open transaction is still rolled back by asyncpg.
        reset=_keep_session,
        server_settings={
            "application_name": f"coinstream-{settings.service_name}",
            # A transaction held open across a network call (outbox relay, payout provider) must not hold its
            # locks forever if the process hangs; command_timeout does not cover an idle transaction.
            "idle_in_transaction_session_timeout": str(int(settings.db_idle_in_transaction_timeout_seconds * 1000)),
        },
    )


async def _keep_session(connection: asyncpg.Connection) -> None:
    return None


async def open_pool(pool: asyncpg.Pool, settings: RuntimeSettings) -> None:
    await wait_for_database(settings)
    await pool  # a failed pool can't be initialized again, so it is only tried once the database answers


async def wait_for_database(settings: RuntimeSettings) -> None:
    """Retries until the database answers (it may still be starting), up to db_connect_timeout_seconds."""
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


async def apply_migrations(pool: asyncpg.Pool, service_migrations: Path) -> list[str]:
    applied_now: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            already_applied = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
            for name, path in migration_files(service_migrations):
                if name in already_applied:
                    continue
                async with conn.transaction():
                    await conn.execute(path.read_text())
                    await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
                applied_now.append(name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
    if applied_now:
        log.info("migrations_applied", migrations=applied_now)
    return applied_now
