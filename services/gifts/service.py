"""Gift use cases, on the ports of ports.py (no SQL here) and in domain terms (no protobuf here): the servicer
converts requests into commands and results into responses (convert.py). A mutation runs once per its command's
idempotency key, its result kept with the key as the RPC's response message (convert.py's Reply for that RPC), so a
replay answers the identical response.

SendGift is a saga around the wallet, run in batches: see saga.py."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import structlog

from services.gifts import convert, domain, events, ports
from services.gifts.saga import GiftSaga
from services.runtime.batching import BatchPolicy
from services.runtime.errors import AppError
from services.runtime.faults import crash_point
from services.runtime.ids import new_id

log = structlog.get_logger()

# One pass of the recovery worker resumes at most this many pending gifts, and of the finisher at most this many
# matches (a full pass means more may be due: the next starts at once).
RECOVERY_BATCH_SIZE = 100
FINISHED_MATCHES_PER_PASS = 100


class GiftService:
    def __init__(
        self,
        store: ports.GiftStore,
        wallet: ports.Wallet,
        feed: ports.LiveFeed,
        gift_batching: BatchPolicy,
        on_event_queued: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        *,
        per_gift_events: bool = False,
    ) -> None:
        self._store = store
        self._wallet = wallet
        self._feed = feed
        # Wakes the outbox relay so GiftSent / StreamEnded go out at once rather than at its next poll.
        self._on_event_queued = on_event_queued
        # Which leaderboard period is the current one.
        self._clock = clock
        self._saga = GiftSaga(
            store, wallet, gift_batching, convert.GIFT_SENT, on_event_queued, per_gift_events=per_gift_events
        )

    async def list_gifts(self) -> list[domain.CatalogGift]:
        return await self._store.list_active_gifts()

    async def upsert_gift(self, command: domain.UpsertGift) -> domain.CatalogGift:
        async def operation(tx: ports.Transaction) -> domain.CatalogGift:
            return await tx.upsert_gift(command.gift)

        return await self._store.run_once(command.key, operation, convert.GIFT_UPSERTED)

    async def retire_gift(self, command: domain.RetireGift) -> domain.CatalogGift:
        async def operation(tx: ports.Transaction) -> domain.CatalogGift:
            return domain.require_catalog_gift(await tx.retire_gift(command.gift_id), command.gift_id)

        return await self._store.run_once(command.key, operation, convert.GIFT_RETIRED)

    async def start_live_stream(self, command: domain.StartStream) -> domain.LiveStream:
        # A replay needs no wallet: answer it before asking the wallet (which may be down).
        replayed = await self._store.replay_if_completed(command.key, convert.STREAM_STARTED)
        if replayed is not None:
            return replayed
        # Asked before the transaction (never hold one open across a network call); used only if the request is new.
        creator = await self._wallet.get_account(command.creator_id)

        async def operation(tx: ports.Transaction) -> domain.LiveStream:
            domain.require_can_go_live(creator, command.creator_id)
            stream = await tx.start_stream(new_id("str"), command.creator_id, command.title)
            if stream is None:
                raise domain.stream_already_live(command.creator_id)
            return stream

        return await self._store.run_once(command.key, operation, convert.STREAM_STARTED)

    async def get_stream(self, stream_id: str) -> domain.LiveStream:
        return domain.require_stream(await self._store.get_stream(stream_id), stream_id)

    async def end_live_stream(self, command: domain.EndStream) -> domain.LiveStream:
        async def operation(tx: ports.Transaction) -> domain.LiveStream:
            stream = domain.require_stream(await tx.lock_stream(command.stream_id), command.stream_id)
            if stream.status is domain.StreamStatus.LIVE:
                stream, ended_at = await tx.end_stream(stream.stream_id)
                # In the same transaction and outbox as the stream's gifts: published after every one of them.
                await tx.insert_outbox_events([events.stream_ended(stream, ended_at)])
            return stream

        ended = await self._store.run_once(command.key, operation, convert.STREAM_ENDED)
        self._on_event_queued()
        return ended

    async def send_gift(self, command: domain.SendGift) -> domain.GiftReceipt:
        return await self._saga.send(command)

    async def send_gift_waiting(self, command: domain.SendGift, max_wait_seconds: float) -> domain.GiftReceipt:
        """send_gift for a stream caller (SendGifts): a gift the batch queue's admission refuses (RATE_LIMITED,
        before anything was recorded) is submitted again after the delay it was given, for up to max_wait_seconds.
        The stream's slot stays taken meanwhile, so the stream's flow control slows the sender instead of a refusal
        it would have to retry; past the wait, the refusal is the answer (with its RetryInfo)."""
        deadline = time.monotonic() + max_wait_seconds
        while True:
            try:
                return await self._saga.send(command)
            except AppError as refusal:
                delay = refusal.retry_after_seconds
                if refusal.reason != "RATE_LIMITED" or delay is None or time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)

    async def recover_pending_gifts(self, older_than_seconds: float) -> int:
        return await self._saga.recover_pending(older_than_seconds, RECOVERY_BATCH_SIZE)

    async def get_leaderboard(
        self, creator_id: str, period: domain.LeaderboardPeriod, page_size: int
    ) -> list[domain.RankedGifter]:
        start = domain.period_start(period, self._clock())
        return domain.rank_gifters(await self._store.top_gifters_to_creator(creator_id, period, start, page_size))

    async def watch_stream_gifts(
        self,
        stream_id: str,
        on_subscribed: Callable[[], Awaitable[None]],
        caller: str | None = None,
        with_updates: bool = False,
    ) -> AsyncIterator[ports.FeedEvent]:
        """Every gift of a live stream completed from now on (and, with_updates, its match and goal updates), until
        the stream ends. The watcher is registered before the stream is checked and before on_subscribed answers the
        caller, so no gift falls in between and an end racing the check still reaches it. caller: whose share of the
        watchers this takes (None: unlimited)."""
        with self._feed.watch(stream_id, caller, with_updates=with_updates) as watcher:
            await self._feed.ensure_subscribed()
            domain.require_watchable(await self._store.get_stream(stream_id), stream_id)
            await on_subscribed()
            while (event := await watcher.next()) is not None:
                yield event

    async def get_stream_summary(self, stream_id: str) -> domain.StreamSummary:
        # One snapshot, so the totals, the top gifters and the goal agree with each other.
        async with self._store.snapshot() as reads:
            stream = await reads.get_stream(stream_id)
            totals = await reads.get_totals(domain.TargetKind.STREAM, stream_id)
            if stream is None or totals is None:
                raise domain.stream_not_found(stream_id)
            gifters = await reads.top_gifters(domain.TargetKind.STREAM, stream_id, domain.TOP_GIFTERS_LIMIT)
            goal = await reads.get_goal(stream.goal_id) if stream.goal_id else None
        return domain.StreamSummary(stream_id, totals, gifters, stream.match_id, goal)

    # ---------------------------------------------------------------- videos

    async def upsert_video(self, command: domain.UpsertVideo) -> domain.Video:
        video = command.video

        async def operation(tx: ports.Transaction) -> domain.Video:
            upserted = await tx.upsert_video(video)
            if upserted is None:
                domain.require_same_video_creator(await tx.get_video(video.video_id), video.creator_id)
            assert upserted is not None, f"video {video.video_id} neither upserted nor another creator's"
            return upserted

        return await self._store.run_once(command.key, operation, convert.VIDEO_UPSERTED)

    async def get_video_summary(self, video_id: str) -> domain.VideoSummary:
        async with self._store.snapshot() as reads:
            totals = await reads.get_totals(domain.TargetKind.VIDEO, video_id)
            if totals is None:
                raise domain.video_not_found(video_id)
            gifters = await reads.top_gifters(domain.TargetKind.VIDEO, video_id, domain.TOP_GIFTERS_LIMIT)
        return domain.VideoSummary(video_id, totals, gifters)

    # ---------------------------------------------------------------- matches

    async def start_match(self, command: domain.StartMatch) -> domain.Match:
        async def operation(tx: ports.Transaction) -> domain.Match:
            # Locked (FOR UPDATE) until the match is in place: a gift completing to these streams meanwhile commits
            # before the match starts (and is not counted), or after it (and is).
            streams = await tx.lock_streams(list(command.stream_ids))
            sides = domain.require_matchable(streams, command.stream_ids)
            match = await tx.create_match(new_id("mat"), sides, command.duration)
            await tx.insert_outbox_events([events.match_updated(match)])
            return match

        match = await self._store.run_once(command.key, operation, convert.MATCH_STARTED)
        self._on_event_queued()
        return match

    async def get_match(self, match_id: str) -> domain.MatchView:
        async with self._store.snapshot() as reads:
            match = await reads.get_match(match_id)
            if match is None:
                raise domain.match_not_found(match_id)
            supporters = await reads.top_match_supporters(match_id, domain.TOP_SUPPORTERS_PER_SIDE)
        return domain.MatchView(match, supporters)

    async def finish_due_matches(self, limit: int = FINISHED_MATCHES_PER_PASS) -> int:
        """Finishes the matches past their end — on time, or overdue after a restart — one transaction each, so
        replicas finishing at once wait for each other on the match and never finish one twice. Returns how many it
        finished."""
        finished = 0
        while finished < limit and await self._finish_one_due_match():
            finished += 1
        return finished

    async def _finish_one_due_match(self) -> bool:
        async with self._store.transaction() as tx:
            match = await tx.lock_due_match()
            if match is None:
                return False
            winners = domain.match_winners(match.sides)
            finished_at = await tx.finish_match(match.match_id, list(winners))
            crash_point("gifts.before_match_finished_commit")
            finished = dataclasses.replace(
                match, status=domain.MatchStatus.FINISHED, winner_stream_ids=winners, finished_at=finished_at
            )
            await tx.insert_outbox_events([events.match_finished(finished)])
        log.info("match_finished", match_id=match.match_id, winners=list(winners))
        self._on_event_queued()
        return True

    # ---------------------------------------------------------------- goals

    async def set_stream_goal(self, command: domain.SetGoal) -> domain.StreamGoal:
        async def operation(tx: ports.Transaction) -> domain.StreamGoal:
            # Locked (FOR UPDATE) until the goal is in place: gifts completing meanwhile count in the old goal or
            # the new one, never in neither or both.
            stream = domain.require_goal_settable(await tx.lock_stream(command.stream_id), command.stream_id)
            goal = await tx.replace_goal(new_id("goal"), stream, command.target_coins, command.description)
            await tx.insert_outbox_events([events.goal_updated(goal)])
            return goal

        goal = await self._store.run_once(command.key, operation, convert.GOAL_SET)
        self._on_event_queued()
        return goal
