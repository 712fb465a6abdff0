"""ports.GiftStore on PostgreSQL: each method is one function of store.py or store_matches.py (which hold the SQL),
on the pool or on the connection of the transaction it belongs to."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import date, datetime, timedelta

import asyncpg

from services.gifts import store, store_matches
from services.gifts.domain import (
    CatalogGift,
    ComboKey,
    ComboState,
    CompletionLocks,
    GiftContext,
    LeaderboardIncrement,
    LeaderboardPeriod,
    LiveStream,
    Match,
    MatchSupporter,
    OutboxRow,
    SentGift,
    StreamGoal,
    TargetKind,
    Totals,
    Video,
)
from services.gifts.ports import Result
from services.runtime import idempotency
from services.runtime.errors import AppError
from services.runtime.requests import Outcome, Reply, RequestKey, StoredRequest


class PostgresReads:
    def __init__(self, executor: store.Executor) -> None:
        self._executor = executor

    async def get_stream(self, stream_id: str) -> LiveStream | None:
        return await store.get_stream(self._executor, stream_id)

    async def get_video(self, video_id: str) -> Video | None:
        return await store_matches.get_video(self._executor, video_id)

    async def get_totals(self, kind: TargetKind, target_id: str) -> Totals | None:
        return await store.get_totals(self._executor, kind, target_id)

    async def top_gifters(self, kind: TargetKind, target_id: str, limit: int) -> list[tuple[str, int]]:
        return await store.top_gifters(self._executor, kind, target_id, limit)

    async def get_goal(self, goal_id: str) -> StreamGoal | None:
        return await store_matches.get_goal(self._executor, goal_id)

    async def get_match(self, match_id: str) -> Match | None:
        return await store_matches.get_match(self._executor, match_id)

    async def top_match_supporters(self, match_id: str, per_side: int) -> list[MatchSupporter]:
        return await store_matches.top_match_supporters(self._executor, match_id, per_side)


class PostgresTransaction(PostgresReads):
    """ports.Transaction: every call on the one connection of an open transaction."""

    def __init__(self, conn: store.Connection) -> None:
        super().__init__(conn)
        self._conn = conn

    async def upsert_gift(self, gift: CatalogGift) -> CatalogGift:
        return await store.upsert_gift(self._conn, gift)

    async def retire_gift(self, gift_id: str) -> CatalogGift | None:
        return await store.retire_gift(self._conn, gift_id)

    async def start_stream(self, stream_id: str, creator_id: str, title: str) -> LiveStream | None:
        return await store.start_stream(self._conn, stream_id, creator_id, title)

    async def lock_stream(self, stream_id: str) -> LiveStream | None:
        return await store.lock_stream(self._conn, stream_id)

    async def lock_streams(self, stream_ids: list[str]) -> dict[str, LiveStream]:
        return await store.lock_streams(self._conn, stream_ids)

    async def end_stream(self, stream_id: str) -> tuple[LiveStream, datetime]:
        return await store.end_stream(self._conn, stream_id)

    async def upsert_video(self, video: Video) -> Video | None:
        return await store_matches.upsert_video(self._conn, video)

    async def create_match(self, match_id: str, sides: list[LiveStream], duration: timedelta) -> Match:
        return await store_matches.create_match(self._conn, match_id, sides, duration)

    async def lock_due_match(self) -> Match | None:
        return await store_matches.lock_due_match(self._conn)

    async def finish_match(self, match_id: str, winner_stream_ids: list[str]) -> datetime:
        return await store_matches.finish_match(self._conn, match_id, winner_stream_ids)

    async def replace_goal(self, goal_id: str, stream: LiveStream, target_coins: int, description: str) -> StreamGoal:
        return await store_matches.replace_goal(self._conn, goal_id, stream, target_coins, description)

    async def lock_pending_gifts(self, gift_transaction_ids: list[str], stream_ids: list[str]) -> CompletionLocks:
        return await store.lock_pending_gifts(self._conn, gift_transaction_ids, stream_ids)

    async def lock_active_matches(self, match_ids: list[str]) -> set[str]:
        return await store.lock_active_matches(self._conn, match_ids)

    async def lock_combos(self, keys: list[ComboKey]) -> tuple[dict[ComboKey, ComboState], datetime]:
        return await store.lock_combos(self._conn, keys)

    async def finish_gifts(
        self,
        completed: list[SentGift],
        finished_at: datetime,
        combos: dict[ComboKey, ComboState],
        failures: list[tuple[str, str]],
        outcomes: list[Outcome],
    ) -> None:
        await store.finish_gifts(self._conn, completed, finished_at, combos, failures, outcomes)

    async def add_to_gifter_totals(self, increments: list[LeaderboardIncrement]) -> None:
        await store.add_to_gifter_totals(self._conn, increments)

    async def add_to_counters(
        self, kind: TargetKind, gifters: list[tuple[str, str, int]], totals: list[tuple[str, int, int]]
    ) -> None:
        await store.add_to_counters(self._conn, kind, gifters, totals)

    async def add_to_match_scores(
        self,
        match_ids: list[str],
        stream_coins: list[tuple[str, int]],
        supporter_coins: list[tuple[str, str, int]],
        completed_at: datetime,
    ) -> list[Match]:
        return await store_matches.add_to_match_scores(
            self._conn, match_ids, stream_coins, supporter_coins, completed_at
        )

    async def add_to_goals(
        self, goal_coins: list[tuple[str, int]], completed_at: datetime
    ) -> list[tuple[StreamGoal, int]]:
        return await store_matches.add_to_goals(self._conn, goal_coins, completed_at)

    async def insert_outbox_events(self, events: list[OutboxRow]) -> None:
        await store.insert_outbox_events(self._conn, events)


class PostgresGiftStore(PostgresReads):
    """ports.GiftStore on an asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self._pool = pool

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTransaction]:
        async with self._pool.acquire() as conn, conn.transaction():
            yield PostgresTransaction(conn)

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[PostgresReads]:
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            yield PostgresReads(conn)

    async def run_once(
        self, key: RequestKey, operation: Callable[[PostgresTransaction], Awaitable[Result]], reply: Reply[Result]
    ) -> Result:
        async def on_connection(conn: store.Connection) -> Result:
            return await operation(PostgresTransaction(conn))

        return await idempotency.run_once(self._pool, key, reply, on_connection)

    async def replay_if_completed(self, key: RequestKey, reply: Reply[Result]) -> Result | None:
        return await idempotency.replay_if_completed(self._pool, key, reply)

    async def list_active_gifts(self) -> list[CatalogGift]:
        return await store.list_active_gifts(self._pool)

    async def top_gifters_to_creator(
        self, creator_id: str, period: LeaderboardPeriod, period_start: date, limit: int
    ) -> list[tuple[str, int]]:
        return await store.top_gifters_to_creator(self._pool, creator_id, period, period_start, limit)

    async def read_gift_context(
        self, stream_ids: list[str], video_ids: list[str], gift_ids: list[str], request_ids: list[str]
    ) -> GiftContext:
        return await store.read_gift_context(self._pool, stream_ids, video_ids, gift_ids, request_ids)

    async def claim_and_record_pending_gifts(
        self, claims: list[RequestKey], decided: list[Outcome], gifts: list[SentGift]
    ) -> set[str]:
        return await store.claim_and_record_pending_gifts(self._pool, claims, decided, gifts)

    async def earlier_outcomes(
        self, claims: list[RequestKey], claimed: set[str]
    ) -> dict[str, StoredRequest | AppError]:
        return await idempotency.earlier_outcomes(self._pool, claims, claimed)

    async def load_outcomes(self, request_ids: list[str]) -> dict[str, StoredRequest]:
        return await idempotency.load_many(self._pool, request_ids)

    async def get_gift_transactions(self, gift_transaction_ids: list[str]) -> dict[str, SentGift]:
        return await store.get_gift_transactions(self._pool, gift_transaction_ids)

    async def stale_pending_gifts(self, older_than_seconds: float, limit: int) -> list[str]:
        return await store.stale_pending_gifts(self._pool, older_than_seconds, limit)
