"""Matches against races the services cannot be made to hit on purpose, replayed step by step with the gifts store on
a database of their own: a StartMatch that commits while a gift batch waits for the stream, and two StartMatch calls
sharing a stream. (READ COMMITTED hands a waiting statement the newest row it waited for, but reads every other table
as of its start: each check must be a statement of its own after the lock.)"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest
import pytest_asyncio

from services.gifts import domain, store, store_matches
from services.runtime import database
from services.runtime.errors import AppError
from tests.support.stack import REPO_ROOT, Stack

GIFTS_MIGRATIONS = REPO_ROOT / "services" / "gifts" / "migrations"
BLOCKED_SECONDS = 0.5


@pytest_asyncio.fixture
async def gifts_database(stack: Stack) -> AsyncIterator[str]:
    name = f"gifts_races_{uuid.uuid4().hex[:8]}"
    stack.postgres.create_database(name)
    url = stack.postgres.url(name)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        await database.apply_migrations(pool, GIFTS_MIGRATIONS)
        for number in range(1, 6):
            await pool.execute(
                "WITH s AS (INSERT INTO live_streams (stream_id, creator_id, title, status)"
                " VALUES ($1, $2, 't', 'live') RETURNING stream_id)"
                " INSERT INTO stream_totals (stream_id) SELECT stream_id FROM s",
                f"s{number}",
                f"c{number}",
            )
        await pool.execute(
            "INSERT INTO gift_transactions (gift_transaction_id, request_id, sender_id, recipient_id, stream_id,"
            " gift_id, quantity, coin_price, coins, status) VALUES ('g1', 'r1', 'fan', 'c1', 's1', 'rose', 1, 1, 1,"
            " 'pending')"
        )
    finally:
        await pool.close()
    yield url


async def start_match_uncommitted(conn: asyncpg.Connection, match_id: str, stream_ids: list[str]) -> domain.Match:
    streams = await store.lock_streams(conn, stream_ids)
    return await store_matches.create_match(
        conn, match_id, domain.require_matchable(streams, stream_ids), timedelta(minutes=5)
    )


async def test_a_match_started_while_a_gift_batch_waits_for_the_stream_counts_the_gift(gifts_database: str) -> None:
    starter, batch = await asyncpg.connect(gifts_database), await asyncpg.connect(gifts_database)
    try:
        starting = starter.transaction()
        await starting.start()
        match = await start_match_uncommitted(starter, "m1", ["s1", "s2"])
        completing = batch.transaction()
        await completing.start()
        locking = asyncio.create_task(store.lock_pending_gifts(batch, ["g1"], ["s1"]))
        await asyncio.sleep(BLOCKED_SECONDS)
        assert not locking.done(), "the batch waits for StartMatch's lock on the stream"
        await starting.commit()
        locks = await locking
        assert locks.pending == {"g1"} and locks.last_matches == {"s1": "m1"}
        assert await store.lock_active_matches(batch, ["m1"]) == {"m1"}
        completed_at = await batch.fetchval("SELECT clock_timestamp()")
        assert match.starts_at <= completed_at < match.ends_at  # the window add_to_match_scores counts it in
        await completing.rollback()
    finally:
        await starter.close()
        await batch.close()


async def test_two_starts_sharing_a_stream_cannot_both_take_it(gifts_database: str) -> None:
    first, second = await asyncpg.connect(gifts_database), await asyncpg.connect(gifts_database)
    try:
        starting = first.transaction()
        await starting.start()
        await start_match_uncommitted(first, "m2", ["s3", "s4"])
        racing = second.transaction()
        await racing.start()
        locking = asyncio.create_task(store.lock_streams(second, ["s4", "s5"]))
        await asyncio.sleep(BLOCKED_SECONDS)
        assert not locking.done(), "the second start waits for the first's lock on s4"
        await starting.commit()
        streams = await locking
        assert streams["s4"].match_id == "m2"
        with pytest.raises(AppError) as refused:
            domain.require_matchable(streams, ["s4", "s5"])
        assert refused.value.reason == "STREAM_IN_MATCH"
        await racing.rollback()
    finally:
        await first.close()
        await second.close()
