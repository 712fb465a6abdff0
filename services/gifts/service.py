"""Gift use cases. Mutations run under their request_id's idempotency key; responses are protobuf messages because
they are what an idempotent replay must return.

SendGift is a saga around the wallet (like the wallet's own purchases around the payment provider):
  1. one transaction: claim the request_id, check the rules, record the gift as pending;
  2. spend the sender's coins with request_id "gift:<gift_transaction_id>" (the same on every attempt);
  3. one transaction: complete the gift (its combo_count decided under the combo's row lock), bump the stream's
     counters and the creator's leaderboards, queue GiftSent in the outbox, store the response — or, on a final
     wallet refusal, fail the gift and store the refusal.
A crash or a wallet outage between 1 and 3 leaves the gift pending; a retry with the same request_id or the
recovery pass resumes it at step 2, and the wallet answers the repeated spend with its stored outcome."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import asyncpg
import structlog
from coinstream.events.v1 import events_pb2
from coinstream.gifts.v1 import gifts_pb2

from services.gifts import domain, store
from services.gifts.feed import STREAM_ENDED_SUBJECT, GiftFeed
from services.gifts.wallet_client import Spend, WalletClient, WalletRefused
from services.runtime import idempotency, recovery
from services.runtime.errors import AppError
from services.runtime.faults import crash_point
from services.runtime.messaging import GIFT_SENT_SUBJECT

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


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class GiftService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        wallet: WalletClient,
        feed: GiftFeed,
        on_event_queued: Callable[[], None] = lambda: None,
    ) -> None:
        self._pool = pool
        self._wallet = wallet
        self._feed = feed
        # Wakes the outbox relay so GiftSent / StreamEnded go out at once rather than at its next poll.
        self._on_event_queued = on_event_queued

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
                    conn, f"stream_ended:{stream.stream_id}", STREAM_ENDED_SUBJECT, event.SerializeToString()
                )
            return gifts_pb2.EndLiveStreamResponse(stream=stream_message(stream))

        response = await idempotency.run_once(self._pool, request, gifts_pb2.EndLiveStreamResponse, operation)
        self._on_event_queued()
        return response

    async def send_gift(self, request: gifts_pb2.SendGiftRequest) -> gifts_pb2.SendGiftResponse:
        hashed = idempotency.request_hash("SendGift", request)
        async with self._pool.acquire() as conn, conn.transaction():
            stored = await idempotency.claim(conn, request.request_id, "SendGift", hashed)
            if stored is None:
                stored = await self._record_pending_gift(conn, request)
        if not stored.in_flight:
            return idempotency.replay(stored, gifts_pb2.SendGiftResponse)
        assert stored.resource_id is not None, f"SendGift {request.request_id} in flight without a gift"
        crash_point("gifts.after_gift_recorded")
        return await self.complete_gift(stored.resource_id)

    async def _record_pending_gift(
        self, conn: asyncpg.Connection, request: gifts_pb2.SendGiftRequest
    ) -> idempotency.StoredRequest:
        try:
            stream, gift = domain.require_giftable(
                await store.get_stream(conn, request.stream_id),
                request.stream_id,
                await store.get_active_gift(conn, request.gift_id),
                request.gift_id,
                request.sender_id,
            )
        except AppError as refusal:
            await idempotency.record_error(conn, request.request_id, refusal)
            return idempotency.StoredRequest(resource_id=None, response=None, error=refusal)
        pending = store.GiftRow(
            gift_transaction_id=new_id("gtx"),
            request_id=request.request_id,
            sender_id=request.sender_id,
            recipient_id=stream.creator_id,
            stream_id=stream.stream_id,
            gift_id=gift.gift_id,
            quantity=request.quantity,
            coin_price=gift.coin_price,
            coins=domain.gift_coins(gift.coin_price, request.quantity),
            status=domain.GiftStatus.PENDING,
            wallet_transaction_id=None,
            sender_balance_coins=None,
        )
        await store.insert_gift_transaction(conn, pending)
        await idempotency.set_resource(conn, request.request_id, pending.gift_transaction_id)
        return idempotency.StoredRequest(resource_id=pending.gift_transaction_id, response=None, error=None)

    async def complete_gift(self, gift_transaction_id: str) -> gifts_pb2.SendGiftResponse:
        """Resumes a gift wherever it stands and returns (or raises) its outcome. Safe to run concurrently."""
        gift = await store.get_gift_transaction(self._pool, gift_transaction_id)
        if gift.status is domain.GiftStatus.PENDING:
            await self._pay_and_settle(gift)
        stored = await idempotency.load(self._pool, gift.request_id)
        return idempotency.replay(stored, gifts_pb2.SendGiftResponse)

    async def _pay_and_settle(self, gift: store.GiftRow) -> None:
        spend_key = domain.wallet_spend_request_id(gift.gift_transaction_id)
        try:
            spend = await self._wallet.spend_coins(
                request_id=spend_key, account_id=gift.sender_id, coins=gift.coins, reference=spend_key
            )
        except WalletRefused as refused:
            await self._fail_gift(gift.gift_transaction_id, refused.error)
            return
        crash_point("gifts.after_wallet_debit")
        await self._settle_gift(gift.gift_transaction_id, spend)

    async def _settle_gift(self, gift_transaction_id: str, spend: Spend) -> None:
        assert spend.balance_coins >= 0, f"wallet returned a negative balance for {gift_transaction_id}"
        async with self._pool.acquire() as conn, conn.transaction():
            pending = await store.lock_gift_transaction(conn, gift_transaction_id)
            if pending.status is not domain.GiftStatus.PENDING:
                return  # a concurrent retry or the recovery pass finished it first
            # Locks in one order (gift, stream, combo, leaderboards, stream counters): completions never deadlock.
            await store.lock_stream_for_gift(conn, pending.stream_id)
            combo = await store.lock_combo(conn, pending.stream_id, pending.sender_id, pending.gift_id)
            # Stamped after the combo lock, so the gifts of one combo are stamped in the order they are counted.
            sent_at = datetime.now(UTC)
            combo_count = domain.next_combo_count(combo.last_sent_at, combo.combo_count, sent_at)
            gift = completed_gift(pending, spend, combo_count)
            await store.complete_gift_transaction(conn, gift, sent_at)
            await store.save_combo(conn, gift, sent_at)
            await idempotency.record_response(
                conn,
                gift.request_id,
                gifts_pb2.SendGiftResponse(gift=gift_message(gift), sender_balance_coins=spend.balance_coins),
            )
            await self._count_gift(conn, gift, sent_at)
        self._on_event_queued()

    @staticmethod
    async def _count_gift(conn: asyncpg.Connection, gift: store.GiftRow, sent_at: datetime) -> None:
        """The counters a completed gift feeds (leaderboards, stream summary) and its GiftSent. The stream's totals row
        is every gift of the stream's hot spot, so it is written late and its lock held the shortest. The outbox row
        comes after it: its id is then taken under that lock, so one stream's events are numbered — and published
        by the relay — in the order their gifts commit, which is the order live feeds show."""
        await store.add_to_gifter_totals(
            conn, gift.recipient_id, gift.sender_id, gift.coins, domain.period_starts(sent_at)
        )
        await store.add_to_stream_counters(conn, gift.stream_id, gift.sender_id, gift.coins)
        event = gift_sent_event(gift, sent_at)
        await store.insert_outbox_event(
            conn, gift.gift_transaction_id, GIFT_SENT_SUBJECT, event.SerializeToString(), gift.gift_transaction_id
        )

    async def _fail_gift(self, gift_transaction_id: str, refusal: AppError) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            gift = await store.lock_gift_transaction(conn, gift_transaction_id)
            if gift.status is not domain.GiftStatus.PENDING:
                return
            await store.fail_gift_transaction(conn, gift_transaction_id, refusal.reason)
            await idempotency.record_error(conn, gift.request_id, refusal)

    async def recover_pending_gifts(self, older_than_seconds: float, batch_size: int = 100) -> int:
        """Finishes gifts a crash or a wallet outage left pending. Returns how many it looked at."""
        gift_transaction_ids = await store.stale_pending_gifts(self._pool, older_than_seconds, batch_size)
        return await recovery.resume_each("gift", gift_transaction_ids, self.complete_gift)

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
        self, stream_id: str, on_subscribed: Callable[[], Awaitable[None]]
    ) -> AsyncIterator[gifts_pb2.WatchStreamGiftsResponse]:
        """Every gift of a live stream completed from now on, until the stream ends. The watcher is registered
        before the stream is checked and before on_subscribed answers the caller, so no gift falls in between and
        an end racing the check still reaches it."""
        with self._feed.watch(stream_id) as watcher:
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


def completed_gift(pending: store.GiftRow, spend: Spend, combo_count: int) -> store.GiftRow:
    paid_coins, bonus_coins = domain.payment_split(pending.coins, spend.paid_coins, spend.bonus_coins)
    return dataclasses.replace(
        pending,
        status=domain.GiftStatus.COMPLETED,
        wallet_transaction_id=spend.wallet_transaction_id,
        sender_balance_coins=spend.balance_coins,
        paid_coins=paid_coins,
        bonus_coins=bonus_coins,
        combo_count=combo_count,
    )


def gift_message(gift: store.GiftRow) -> gifts_pb2.GiftTransaction:
    return gifts_pb2.GiftTransaction(
        gift_transaction_id=gift.gift_transaction_id,
        sender_id=gift.sender_id,
        recipient_id=gift.recipient_id,
        stream_id=gift.stream_id,
        gift_id=gift.gift_id,
        quantity=gift.quantity,
        coins=gift.coins,
        combo_count=gift.combo_count,
    )


def gift_sent_event(gift: store.GiftRow, sent_at: datetime) -> events_pb2.GiftSent:
    assert gift.wallet_transaction_id is not None, f"{gift.gift_transaction_id} is not paid"
    event = events_pb2.GiftSent(
        gift_transaction_id=gift.gift_transaction_id,
        sender_id=gift.sender_id,
        recipient_id=gift.recipient_id,
        stream_id=gift.stream_id,
        gift_id=gift.gift_id,
        quantity=gift.quantity,
        coins=gift.coins,
        wallet_transaction_id=gift.wallet_transaction_id,
        paid_coins=gift.paid_coins,
        bonus_coins=gift.bonus_coins,
        combo_count=gift.combo_count,
    )
    event.sent_at.FromDatetime(sent_at)
    return event


def stream_ended_event(stream: domain.LiveStream, ended_at: datetime) -> events_pb2.StreamEnded:
    event = events_pb2.StreamEnded(stream_id=stream.stream_id, creator_id=stream.creator_id)
    event.ended_at.FromDatetime(ended_at)
    return event
