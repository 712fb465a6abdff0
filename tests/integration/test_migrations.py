"""Replicas starting together: migrations run once, under the advisory lock, whoever gets there first."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg

from services.runtime import database
from tests.stack import REPO_ROOT, Stack


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
