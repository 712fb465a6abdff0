"""Gift use cases. Mutations run under their request_id's idempotency key; responses are protobuf messages because
they are what an idempotent replay must return.

SendGift is a saga around the wallet (like the wallet's own purchases around the payment provider):
  1. one transaction: claim the request_id, check the rules, record the gift as pending;
  2. spend the sender's coins with request_id "gift:<gift_transaction_id>" (the same on every attempt);
  3. one transaction: complete the gift, bump the stream's counters, queue GiftSent in the outbox, store the
     response — or, on a final wallet refusal, fail the gift and store the refusal.
A crash or a wallet outage between 1 and 3 leaves the gift pending; a retry with the same request_id or the
recovery pass resumes it at step 2, and the wallet answers the repeated spend with its stored outcome."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
import structlog
from coinstream.events.v1 import events_pb2
from coinstream.gifts.v1 import gifts_pb2

from services.gifts import domain, store
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


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class GiftService:
    def __init__(
        self, pool: asyncpg.Pool, wallet: WalletClient, on_gift_completed: Callable[[], None] = lambda: None
    ) -> None:
        self._pool = pool
        self._wallet = wallet
        # Wakes the outbox relay so GiftSent goes out at once rather than at its next poll.
        self._on_gift_completed = on_gift_completed

    async def list_gifts(self) -> list[gifts_pb2.Gift]:
        return [
            gifts_pb2.Gift(gift_id=gift.gift_id, name=gift.name, coin_price=gift.coin_price)
            for gift in await store.list_active_gifts(self._pool)
        ]

    async def start_live_stream(self, request: gifts_pb2.StartLiveStreamRequest) -> gifts_pb2.StartLiveStreamResponse:
        # Asked before the transaction (never hold one open across a network call); used only if the request is new.
        creator = await self._wallet.get_account(request.creator_id)

        async def operation(conn: asyncpg.Connection) -> gifts_pb2.StartLiveStreamResponse:
            domain.require_can_go_live(creator, request.creator_id)
            stream = await store.start_stream(conn, new_id("str"), request.creator_id, request.title)
            if stream is None:
                raise domain.stream_already_live(request.creator_id)
            return gifts_pb2.StartLiveStreamResponse(stream=stream_message(stream))

        return await idempotency.run_once(
            self._pool,
            request_id=request.request_id,
            method="StartLiveStream",
            request=request,
            response_type=gifts_pb2.StartLiveStreamResponse,
            operation=operation,
        )

    async def get_stream(self, stream_id: str) -> domain.LiveStream:
        return domain.require_stream(await store.get_stream(self._pool, stream_id), stream_id)

    async def end_live_stream(self, request: gifts_pb2.EndLiveStreamRequest) -> gifts_pb2.EndLiveStreamResponse:
        async def operation(conn: asyncpg.Connection) -> gifts_pb2.EndLiveStreamResponse:
            stream = domain.require_stream(await store.lock_stream(conn, request.stream_id), request.stream_id)
            if stream.status is domain.StreamStatus.LIVE:
                stream = await store.end_stream(conn, stream.stream_id)
            return gifts_pb2.EndLiveStreamResponse(stream=stream_message(stream))

        return await idempotency.run_once(
            self._pool,
            request_id=request.request_id,
            method="EndLiveStream",
            request=request,
            response_type=gifts_pb2.EndLiveStreamResponse,
            operation=operation,
        )

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
            gift = await store.lock_gift_transaction(conn, gift_transaction_id)
            if gift.status is not domain.GiftStatus.PENDING:
                return  # a concurrent retry or the recovery pass finished it first
            sent_at = datetime.now(UTC)
            await store.complete_gift_transaction(
                conn, gift_transaction_id, spend.wallet_transaction_id, spend.balance_coins, sent_at
            )
            await store.add_to_stream_counters(conn, gift.stream_id, gift.sender_id, gift.coins)
            event = gift_sent_event(gift, spend.wallet_transaction_id, sent_at)
            await store.insert_outbox_event(conn, gift_transaction_id, GIFT_SENT_SUBJECT, event.SerializeToString())
            response = gifts_pb2.SendGiftResponse(gift=gift_message(gift), sender_balance_coins=spend.balance_coins)
            await idempotency.record_response(conn, gift.request_id, response)
        self._on_gift_completed()

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


def gift_message(gift: store.GiftRow) -> gifts_pb2.GiftTransaction:
    return gifts_pb2.GiftTransaction(
        gift_transaction_id=gift.gift_transaction_id,
        sender_id=gift.sender_id,
        recipient_id=gift.recipient_id,
        stream_id=gift.stream_id,
        gift_id=gift.gift_id,
        quantity=gift.quantity,
        coins=gift.coins,
    )


def gift_sent_event(gift: store.GiftRow, wallet_transaction_id: str, sent_at: datetime) -> events_pb2.GiftSent:
    event = events_pb2.GiftSent(
        gift_transaction_id=gift.gift_transaction_id,
        sender_id=gift.sender_id,
        recipient_id=gift.recipient_id,
        stream_id=gift.stream_id,
        gift_id=gift.gift_id,
        quantity=gift.quantity,
        coins=gift.coins,
        wallet_transaction_id=wallet_transaction_id,
    )
    event.sent_at.FromDatetime(sent_at)
    return event
