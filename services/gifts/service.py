"""Gift use cases. Mutations run under their request_id's idempotency key; responses are protobuf messages because
they are what an idempotent replay must return.

SendGift is a saga around the wallet, run in batches: see saga.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import asyncpg
import structlog
from coinstream.events.v1 import events_pb2
from coinstream.gifts.v1 import gifts_pb2

from services.gifts import domain, store
from services.gifts.feed import STREAM_ENDED_SUBJECT, GiftFeed
from services.gifts.saga import GiftSaga, new_id
from services.gifts.wallet_client import WalletClient
from services.runtime import idempotency, tracing
from services.runtime.batching import BatchPolicy

log = structlog.get_logger()

_STREAM_STATUS_TO_PROTO = {
    domain.StreamStatus.LIVE: gifts_pb2.STREAM_STATUS_LIVE,
    domain.StreamStatus.ENDED: gifts_pb2.STREAM_STATUS_ENDED,
}

_LEADERBOARD_PERIODS = {
    gifts_pb2.LEADERBOARD_PERIOD_DAY: domain.LeaderboardPeriod.DAY,
    gifts_pb2.LEADERBOARD_PERIOD_WEEK: domain.LeaderboardPeriod.WEEK,
    gifts_pb2.LEADERBOARD_PERIOD_ALL_TIME: domain.LeaderboardPeriod.ALL_TIME,
}


class GiftService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        wallet: WalletClient,
        feed: GiftFeed,
        gift_batching: BatchPolicy,
        on_event_queued: Callable[[], None] = lambda: None,
    ) -> None:
        self._pool = pool
        self._wallet = wallet
        self._feed = feed
        # Wakes the outbox relay so GiftSent / StreamEnded go out at once rather than at its next poll.
        self._on_event_queued = on_event_queued
        self._saga = GiftSaga(pool, wallet, gift_batching, on_event_queued)

    async def list_gifts(self) -> list[gifts_pb2.Gift]:
        return [gift_catalog_message(gift) for gift in await store.list_active_gifts(self._pool)]

    async def upsert_gift(self, request: gifts_pb2.UpsertGiftRequest) -> gifts_pb2.UpsertGiftResponse:
        gift = domain.CatalogGift(request.gift.gift_id, request.gift.name, request.gift.coin_price)

        async def operation(conn: asyncpg.Connection) -> gifts_pb2.UpsertGiftResponse:
            return gifts_pb2.UpsertGiftResponse(gift=gift_catalog_message(await store.upsert_gift(conn, gift)))

        return await idempotency.run_once(self._pool, request, gifts_pb2.UpsertGiftResponse, operation)

    async def retire_gift(self, request: gifts_pb2.RetireGiftRequest) -> gifts_pb2.RetireGiftResponse:
        async def operation(conn: asyncpg.Connection) -> gifts_pb2.RetireGiftResponse:
            retired = domain.require_catalog_gift(await store.retire_gift(conn, request.gift_id), request.gift_id)
            return gifts_pb2.RetireGiftResponse(gift=gift_catalog_message(retired))

        return await idempotency.run_once(self._pool, request, gifts_pb2.RetireGiftResponse, operation)

    async def start_live_stream(self, request: gifts_pb2.StartLiveStreamRequest) -> gifts_pb2.StartLiveStreamResponse:
        # A replay needs no wallet: answer it before asking the wallet (which may be down).
        replayed = await idempotency.replay_if_completed(self._pool, request, gifts_pb2.StartLiveStreamResponse)
        if replayed is not None:
            return replayed
        # Asked before the transaction (never hold one open across a network call); used only if the request is new.
        creator = await self._wallet.get_account(request.creator_id)

        async def operation(conn: asyncpg.Connection) -> gifts_pb2.StartLiveStreamResponse:
            domain.require_can_go_live(creator, request.creator_id)
            stream = await store.start_stream(conn, new_id("str"), request.creator_id, request.title)
            if stream is None:
                raise domain.stream_already_live(request.creator_id)
            return gifts_pb2.StartLiveStreamResponse(stream=stream_message(stream))

        return await idempotency.run_once(self._pool, request, gifts_pb2.StartLiveStreamResponse, operation)

    async def get_stream(self, stream_id: str) -> domain.LiveStream:
        return domain.require_stream(await store.get_stream(self._pool, stream_id), stream_id)

    async def end_live_stream(self, request: gifts_pb2.EndLiveStreamRequest) -> gifts_pb2.EndLiveStreamResponse:
        async def operation(conn: asyncpg.Connection) -> gifts_pb2.EndLiveStreamResponse:
            stream = domain.require_stream(await store.lock_stream(conn, request.stream_id), request.stream_id)
            if stream.status is domain.StreamStatus.LIVE:
                stream, ended_at = await store.end_stream(conn, stream.stream_id)
                # In the same transaction and outbox as the stream's gifts: published after every one of them.
                event = stream_ended_event(stream, ended_at)
                await store.insert_outbox_event(
                    conn,
                    f"stream_ended:{stream.stream_id}",
                    STREAM_ENDED_SUBJECT,
                    event.SerializeToString(),
                    tracing.current_traceparent(),
                )
            return gifts_pb2.EndLiveStreamResponse(stream=stream_message(stream))

        response = await idempotency.run_once(self._pool, request, gifts_pb2.EndLiveStreamResponse, operation)
        self._on_event_queued()
        return response

    async def send_gift(self, request: gifts_pb2.SendGiftRequest) -> gifts_pb2.SendGiftResponse:
        return await self._saga.send(request)

    async def recover_pending_gifts(self, older_than_seconds: float) -> int:
        return await self._saga.recover_pending(older_than_seconds)

    async def get_leaderboard(
        self, creator_id: str, period: gifts_pb2.LeaderboardPeriod.ValueType, page_size: int
    ) -> list[gifts_pb2.LeaderboardEntry]:
        kind = _LEADERBOARD_PERIODS[period]
        start = domain.period_start(kind, datetime.now(UTC))
        gifters = await store.top_gifters_to_creator(self._pool, creator_id, kind, start, page_size)
        return [
            gifts_pb2.LeaderboardEntry(account_id=entry.account_id, coins=entry.coins, rank=entry.rank)
            for entry in domain.rank_gifters(gifters)
        ]

    async def watch_stream_gifts(
        self, stream_id: str, on_subscribed: Callable[[], Awaitable[None]], caller: str | None = None
    ) -> AsyncIterator[gifts_pb2.WatchStreamGiftsResponse]:
        """Every gift of a live stream completed from now on, until the stream ends. The watcher is registered
        before the stream is checked and before on_subscribed answers the caller, so no gift falls in between and
        an end racing the check still reaches it. caller: whose share of the watchers this takes (None: unlimited)."""
        with self._feed.watch(stream_id, caller) as watcher:
            await self._feed.ensure_subscribed()
            domain.require_watchable(await store.get_stream(self._pool, stream_id), stream_id)
            await on_subscribed()
            while (event := await watcher.next()) is not None:
                yield event

    async def get_stream_summary(self, stream_id: str) -> gifts_pb2.StreamSummary:
        # One snapshot, so the totals and the top gifters agree with each other.
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            totals = await store.get_stream_totals(conn, stream_id)
            if totals is None:
                raise domain.stream_not_found(stream_id)
            gifters = await store.top_gifters(conn, stream_id, domain.TOP_GIFTERS_LIMIT)
        return gifts_pb2.StreamSummary(
            stream_id=stream_id,
            total_coins=totals.total_coins,
            gift_count=totals.gift_count,
            top_gifters=[gifts_pb2.Gifter(account_id=account_id, coins=coins) for account_id, coins in gifters],
        )


def stream_message(stream: domain.LiveStream) -> gifts_pb2.LiveStream:
    return gifts_pb2.LiveStream(
        stream_id=stream.stream_id,
        creator_id=stream.creator_id,
        title=stream.title,
        status=_STREAM_STATUS_TO_PROTO[stream.status],
    )


def gift_catalog_message(gift: domain.CatalogGift) -> gifts_pb2.Gift:
    return gifts_pb2.Gift(gift_id=gift.gift_id, name=gift.name, coin_price=gift.coin_price)


def stream_ended_event(stream: domain.LiveStream, ended_at: datetime) -> events_pb2.StreamEnded:
    event = events_pb2.StreamEnded(stream_id=stream.stream_id, creator_id=stream.creator_id)
    event.ended_at.FromDatetime(ended_at)
    return event
