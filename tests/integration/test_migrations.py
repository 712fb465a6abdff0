"""Replicas starting together: migrations run once, under the advisory lock, whoever gets there first."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from services.runtime import database
from tests.support.stack import REPO_ROOT, Stack


async def test_concurrent_starts_apply_each_migration_once(stack: Stack) -> None:
    name = f"migrations_{uuid.uuid4().hex[:8]}"
    stack.postgres.create_database(name)
    url = stack.postgres.url(name)
    wallet_migrations = REPO_ROOT / "services" / "wallet" / "migrations"
    pools = [await asyncpg.create_pool(url, min_size=1, max_size=2) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(database.apply_migrations(pool, wallet_migrations) for pool in pools))
        expected = [name for name, _ in database.migration_files(wallet_migrations)]
        assert sorted(sum(applied, [])) == sorted(expected)  # each applied by exactly one replica
        recorded = await pools[0].fetch("SELECT name FROM schema_migrations ORDER BY name")
        assert sorted(r["name"] for r in recorded) == sorted(expected)
        assert await database.apply_migrations(pools[0], wallet_migrations) == []
    finally:
        for pool in pools:
            await pool.close()


def test_migration_files_are_ordered_runtime_first() -> None:
    names = [name for name, _ in database.migration_files(Path(REPO_ROOT / "services" / "gifts" / "migrations"))]
    assert names[0].startswith("runtime/") and names == sorted(names, key=lambda n: (not n.startswith("runtime/"), n))


async def test_a_replica_waits_for_the_migration_lock_no_longer_than_its_setting(stack: Stack) -> None:
    name = f"migrations_{uuid.uuid4().hex[:8]}"
    stack.postgres.create_database(name)
    holder = await asyncpg.connect(stack.postgres.url(name))
    waiter = await asyncpg.connect(stack.postgres.url(name))
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", database.MIGRATION_LOCK_KEY)
        with pytest.raises(TimeoutError, match="migration lock"):
            await database.apply_migrations(
                waiter, REPO_ROOT / "services" / "wallet" / "migrations", lock_wait_seconds=1.0
            )
        assert await waiter.fetchval("SELECT to_regclass('schema_migrations')") is None  # nothing applied
    finally:
        await holder.close()
        await waiter.close()


def test_migrate_applies_the_pending_migrations_without_starting_the_service(stack: Stack) -> None:
    name = f"migrations_{uuid.uuid4().hex[:8]}"
    stack.postgres.create_database(name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COINSTREAM_")}
    env.update(
        {
            "COINSTREAM_PAYOUTS_DATABASE_URL": stack.postgres.url(name),
            "PYTHONPATH": stack.service_env("payouts")["PYTHONPATH"],
        }
    )
    for _ in range(2):  # the second run finds nothing to do
        done = subprocess.run(
            [sys.executable, "-m", "services.payouts", "migrate"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    expected = [name for name, _ in database.migration_files(REPO_ROOT / "services" / "payouts" / "migrations")]

    async def recorded() -> list[str]:
        conn = await asyncpg.connect(stack.postgres.url(name))
        try:
            return [r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations ORDER BY name")]
        finally:
            await conn.close()

    assert asyncio.run(recorded()) == sorted(expected)
    wrong = subprocess.run(
        [sys.executable, "-m", "services.payouts", "serve-please"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wrong.returncode != 0 and "usage" in wrong.stderr


@pytest.mark.parametrize("role", ["public", "pg_read_all_data", "postgres"])
async def test_migrate_refuses_to_grant_the_runtime_rows_to_everyone_or_to_itself(stack: Stack, role: str) -> None:
    """PUBLIC would give every role the rows; the migration role itself ("postgres" here) would lose its own INSERT
    on schema_migrations and block every later migration."""
    conn = await asyncpg.connect(stack.database_url("wallet"))
    try:
        wallet_migrations = REPO_ROOT / "services" / "wallet" / "migrations"
        with pytest.raises(database.RuntimeRoleError, match="COINSTREAM_DB_RUNTIME_ROLE"):
            await database.apply_migrations(conn, wallet_migrations, runtime_role=role)
        await conn.execute("INSERT INTO schema_migrations (name) VALUES ('probe') ON CONFLICT DO NOTHING")
        await conn.execute("DELETE FROM schema_migrations WHERE name = 'probe'")
    finally:
        await conn.close()
