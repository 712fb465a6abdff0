"""Gift use cases. Mutations run under their request_id's idempotency key; responses are protobuf messages because
they are what an idempotent replay must return.

SendGift is a saga around the wallet, run in batches: see saga.py."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import asyncpg
import structlog
from coinstream.events.v1 import events_pb2
from coinstream.gifts.v1 import gifts_pb2

from services.gifts import domain, events, store
from services.gifts.feed import STREAM_ENDED_SUBJECT, GiftFeed
from services.gifts.saga import GiftSaga, new_id
from services.gifts.wallet_client import WalletClient
from services.runtime import idempotency, tracing
from services.runtime.batching import BatchPolicy
from services.runtime.faults import crash_point

log = structlog.get_logger()

_STREAM_STATUS_TO_PROTO = {
    domain.StreamStatus.LIVE: gifts_pb2.STREAM_STATUS_LIVE,
    domain.StreamStatus.ENDED: gifts_pb2.STREAM_STATUS_ENDED,
}

_MATCH_STATUS_TO_PROTO = {
    domain.MatchStatus.ACTIVE: gifts_pb2.MATCH_STATUS_ACTIVE,
    domain.MatchStatus.FINISHED: gifts_pb2.MATCH_STATUS_FINISHED,
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
        self,
        stream_id: str,
        on_subscribed: Callable[[], Awaitable[None]],
        caller: str | None = None,
        with_updates: bool = False,
    ) -> AsyncIterator[gifts_pb2.WatchStreamGiftsResponse]:
        """Every gift of a live stream completed from now on (and, with_updates, its match and goal updates), until
        the stream ends. The watcher is registered before the stream is checked and before on_subscribed answers the
        caller, so no gift falls in between and an end racing the check still reaches it. caller: whose share of the
        watchers this takes (None: unlimited)."""
        with self._feed.watch(stream_id, caller, with_updates=with_updates) as watcher:
            await self._feed.ensure_subscribed()
            domain.require_watchable(await store.get_stream(self._pool, stream_id), stream_id)
            await on_subscribed()
            while (event := await watcher.next()) is not None:
                yield event

    async def get_stream_summary(self, stream_id: str) -> gifts_pb2.StreamSummary:
        # One snapshot, so the totals, the top gifters and the goal agree with each other.
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            stream = await store.get_stream(conn, stream_id)
            totals = await store.get_totals(conn, domain.TargetKind.STREAM, stream_id)
            if stream is None or totals is None:
                raise domain.stream_not_found(stream_id)
            gifters = await store.top_gifters(conn, domain.TargetKind.STREAM, stream_id, domain.TOP_GIFTERS_LIMIT)
            goal = await store.get_goal(conn, stream.goal_id) if stream.goal_id else None
        summary = gifts_pb2.StreamSummary(
            stream_id=stream_id,
            total_coins=totals.total_coins,
            gift_count=totals.gift_count,
            top_gifters=[gifts_pb2.Gifter(account_id=account_id, coins=coins) for account_id, coins in gifters],
            active_match_id=stream.match_id or "",
        )
        if goal is not None:
            summary.goal.CopyFrom(goal_message(goal))
        return summary

    # ---------------------------------------------------------------- videos

    async def upsert_video(self, request: gifts_pb2.UpsertVideoRequest) -> gifts_pb2.UpsertVideoResponse:
        video = domain.Video(request.video_id, request.creator_id, request.gifts_enabled)

        async def operation(conn: asyncpg.Connection) -> gifts_pb2.UpsertVideoResponse:
            upserted = await store.upsert_video(conn, video)
            if upserted is None:
                domain.require_same_video_creator(await store.get_video(conn, video.video_id), video.creator_id)
            assert upserted is not None, f"video {video.video_id} neither upserted nor another creator's"
            return gifts_pb2.UpsertVideoResponse(video=video_message(upserted))

        return await idempotency.run_once(self._pool, request, gifts_pb2.UpsertVideoResponse, operation)

    async def get_video_summary(self, video_id: str) -> gifts_pb2.VideoSummary:
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            totals = await store.get_totals(conn, domain.TargetKind.VIDEO, video_id)
            if totals is None:
                raise domain.video_not_found(video_id)
            gifters = await store.top_gifters(conn, domain.TargetKind.VIDEO, video_id, domain.TOP_GIFTERS_LIMIT)
        return gifts_pb2.VideoSummary(
            video_id=video_id,
            total_coins=totals.total_coins,
            gift_count=totals.gift_count,
            top_gifters=[gifts_pb2.Gifter(account_id=account_id, coins=coins) for account_id, coins in gifters],
        )

    # ---------------------------------------------------------------- matches

    async def start_match(self, request: gifts_pb2.StartMatchRequest) -> gifts_pb2.StartMatchResponse:
        duration = request.duration.ToTimedelta()

        async def operation(conn: asyncpg.Connection) -> gifts_pb2.StartMatchResponse:
            # Locked (FOR UPDATE) until the match is in place: a gift completing to these streams meanwhile commits
            # before the match starts (and is not counted), or after it (and is).
            streams = await store.lock_streams(conn, list(request.stream_ids))
            sides = domain.require_matchable(streams, request.stream_ids)
            match = await store.create_match(conn, new_id("mat"), sides, duration)
            await store.insert_outbox_events(conn, [events.match_updated(match)])
            return gifts_pb2.StartMatchResponse(match=match_message(match))

        response = await idempotency.run_once(self._pool, request, gifts_pb2.StartMatchResponse, operation)
        self._on_event_queued()
        return response

    async def get_match(self, match_id: str) -> gifts_pb2.GetMatchResponse:
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            match = await store.get_match(conn, match_id)
            if match is None:
                raise domain.match_not_found(match_id)
            supporters = await store.top_match_supporters(conn, match_id, domain.TOP_SUPPORTERS_PER_SIDE)
        return gifts_pb2.GetMatchResponse(
            match=match_message(match),
            top_supporters=[
                gifts_pb2.MatchSupporter(stream_id=s.stream_id, account_id=s.account_id, coins=s.coins)
                for s in supporters
            ],
        )

    async def finish_due_matches(self, limit: int = 100) -> int:
        """Finishes the matches past their end — on time, or overdue after a restart — one transaction each, so
        replicas finishing at once wait for each other on the match and never finish one twice. Returns how many it
        finished."""
        finished = 0
        while finished < limit and await self._finish_one_due_match():
            finished += 1
        return finished

    async def _finish_one_due_match(self) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            match = await store.lock_due_match(conn)
            if match is None:
                return False
            winners = domain.match_winners(match.sides)
            finished_at = await store.finish_match(conn, match.match_id, list(winners))
            crash_point("gifts.before_match_finished_commit")
            finished = dataclasses.replace(
                match, status=domain.MatchStatus.FINISHED, winner_stream_ids=winners, finished_at=finished_at
            )
            await store.insert_outbox_events(conn, [events.match_finished(finished)])
        log.info("match_finished", match_id=match.match_id, winners=list(winners))
        self._on_event_queued()
        return True

    # ---------------------------------------------------------------- goals

    async def set_stream_goal(self, request: gifts_pb2.SetStreamGoalRequest) -> gifts_pb2.SetStreamGoalResponse:
        async def operation(conn: asyncpg.Connection) -> gifts_pb2.SetStreamGoalResponse:
            # Locked (FOR UPDATE) until the goal is in place: gifts completing meanwhile count in the old goal or
            # the new one, never in neither or both.
            stream = domain.require_goal_settable(await store.lock_stream(conn, request.stream_id), request.stream_id)
            goal = await store.replace_goal(conn, new_id("goal"), stream, request.target_coins, request.description)
            await store.insert_outbox_events(conn, [events.goal_updated(goal)])
            return gifts_pb2.SetStreamGoalResponse(goal=goal_message(goal))

        response = await idempotency.run_once(self._pool, request, gifts_pb2.SetStreamGoalResponse, operation)
        self._on_event_queued()
        return response


def stream_message(stream: domain.LiveStream) -> gifts_pb2.LiveStream:
    return gifts_pb2.LiveStream(
        stream_id=stream.stream_id,
        creator_id=stream.creator_id,
        title=stream.title,
        status=_STREAM_STATUS_TO_PROTO[stream.status],
    )


def video_message(video: domain.Video) -> gifts_pb2.Video:
    return gifts_pb2.Video(video_id=video.video_id, creator_id=video.creator_id, gifts_enabled=video.gifts_enabled)


def match_message(match: domain.Match) -> gifts_pb2.Match:
    message = gifts_pb2.Match(
        match_id=match.match_id,
        sides=[
            gifts_pb2.MatchSide(stream_id=s.stream_id, creator_id=s.creator_id, score_coins=s.score_coins)
            for s in match.sides
        ],
        status=_MATCH_STATUS_TO_PROTO[match.status],
        winner_stream_ids=list(match.winner_stream_ids),
    )
    message.starts_at.FromDatetime(match.starts_at)
    message.ends_at.FromDatetime(match.ends_at)
    return message


def goal_message(goal: domain.StreamGoal) -> gifts_pb2.StreamGoal:
    return events.public_goal(events.goal_message(goal))


def gift_catalog_message(gift: domain.CatalogGift) -> gifts_pb2.Gift:
    return gifts_pb2.Gift(gift_id=gift.gift_id, name=gift.name, coin_price=gift.coin_price)


def stream_ended_event(stream: domain.LiveStream, ended_at: datetime) -> events_pb2.StreamEnded:
    event = events_pb2.StreamEnded(stream_id=stream.stream_id, creator_id=stream.creator_id)
    event.ended_at.FromDatetime(ended_at)
    return event
