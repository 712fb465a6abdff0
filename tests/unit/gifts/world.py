"""A gifts service on fakes (tests/fakes/gifts.py): the use cases as the servicer calls them, without servers.

Commands are built from the RPCs' requests through convert.py, as the servicer builds them, so a request's idempotency
key (and its fingerprint) is the one the service sees in production."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field

import grpc
import pytest
from coinstream.gifts.v1 import gifts_pb2
from google.protobuf.duration_pb2 import Duration

from services.gifts import convert, domain
from services.gifts.service import GiftService
from services.runtime.batching import BatchPolicy
from services.runtime.errors import AppError
from services.runtime.ids import new_id
from tests.fakes.gifts import FakeClock, FakeFeed, FakeGiftStore, FakeWallet

ROSE = domain.CatalogGift("rose", "Rose", 5)
LION = domain.CatalogGift("lion", "Lion", 500)


@dataclass
class World:
    clock: FakeClock = field(default_factory=FakeClock)
    wallet: FakeWallet = field(default_factory=FakeWallet)
    feed: FakeFeed = field(default_factory=FakeFeed)
    woken: int = 0  # how often the outbox relay was woken
    per_gift_events: bool = False

    def __post_init__(self) -> None:
        self.store = FakeGiftStore(self.clock)
        self.gifts = GiftService(
            self.store,
            self.wallet,
            self.feed,
            BatchPolicy(50, 4, 5.0),
            on_event_queued=self._wake,
            clock=self.clock.now,
            per_gift_events=self.per_gift_events,
        )

    def _wake(self) -> None:
        self.woken += 1

    # ---- arranging
    async def catalog(self, *gifts: domain.CatalogGift) -> None:
        for gift in gifts:
            request = gifts_pb2.UpsertGiftRequest(request_id=new_id("req"), gift=convert.gift_catalog_message(gift))
            await self.gifts.upsert_gift(convert.upsert_gift(request))

    async def retire(self, gift_id: str) -> None:
        await self.gifts.retire_gift(retire_command(gift_id))

    async def live_stream(self, creator_id: str) -> str:
        if creator_id not in self.wallet.balances:
            self.wallet.open_account(creator_id, adult_verified=True)
        stream = await self.gifts.start_live_stream(start_command(creator_id))
        return stream.stream_id

    def fan(self, account_id: str, coins: int) -> str:
        self.wallet.open_account(account_id, coins)
        return account_id

    # ---- acting
    async def send(
        self,
        sender_id: str,
        gift: domain.CatalogGift = ROSE,
        *,
        stream_id: str = "",
        video_id: str = "",
        quantity: int = 1,
        request_id: str = "",
    ) -> domain.GiftReceipt:
        return await self.gifts.send_gift(
            send_command(
                sender_id, gift, stream_id=stream_id, video_id=video_id, quantity=quantity, request_id=request_id
            )
        )

    async def start_match(self, *stream_ids: str, seconds: int = 300) -> domain.Match:
        request = gifts_pb2.StartMatchRequest(
            request_id=new_id("req"), stream_ids=stream_ids, duration=Duration(seconds=seconds)
        )
        return await self.gifts.start_match(convert.start_match(request))

    async def set_goal(self, stream_id: str, target_coins: int) -> domain.StreamGoal:
        request = gifts_pb2.SetStreamGoalRequest(
            request_id=new_id("req"), stream_id=stream_id, target_coins=target_coins
        )
        return await self.gifts.set_stream_goal(convert.set_goal(request))

    async def end_stream(self, stream_id: str, request_id: str = "") -> domain.LiveStream:
        return await self.gifts.end_live_stream(end_command(stream_id, request_id))

    # ---- looking
    def gift(self, gift_transaction_id: str) -> domain.SentGift:
        return self.store.tables.gifts[gift_transaction_id]

    def only_gift(self) -> domain.SentGift:
        (gift,) = self.store.tables.gifts.values()
        return gift


def send_request(
    sender_id: str,
    gift: domain.CatalogGift = ROSE,
    *,
    stream_id: str = "",
    video_id: str = "",
    quantity: int = 1,
    request_id: str = "",
) -> gifts_pb2.SendGiftRequest:
    return gifts_pb2.SendGiftRequest(
        request_id=request_id or new_id("req"),
        sender_id=sender_id,
        stream_id=stream_id,
        video_id=video_id,
        gift_id=gift.gift_id,
        quantity=quantity,
    )


def send_command(
    sender_id: str,
    gift: domain.CatalogGift = ROSE,
    *,
    stream_id: str = "",
    video_id: str = "",
    quantity: int = 1,
    request_id: str = "",
) -> domain.SendGift:
    return convert.send_gift(
        send_request(sender_id, gift, stream_id=stream_id, video_id=video_id, quantity=quantity, request_id=request_id)
    )


def start_command(creator_id: str, request_id: str = "") -> domain.StartStream:
    request = gifts_pb2.StartLiveStreamRequest(
        request_id=request_id or new_id("req"), creator_id=creator_id, title="hi"
    )
    return convert.start_stream(request)


def end_command(stream_id: str, request_id: str = "") -> domain.EndStream:
    return convert.end_stream(
        gifts_pb2.EndLiveStreamRequest(request_id=request_id or new_id("req"), stream_id=stream_id)
    )


def retire_command(gift_id: str, request_id: str = "") -> domain.RetireGift:
    return convert.retire_gift(gifts_pb2.RetireGiftRequest(request_id=request_id or new_id("req"), gift_id=gift_id))


async def refused(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    """The code and reason an awaited use case was refused with."""
    with pytest.raises(AppError) as error:
        await call
    return error.value.code, error.value.reason
