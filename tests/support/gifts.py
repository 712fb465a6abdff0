"""Gifts through the public API: streams gone live and ended, videos posted, gift requests, summaries, and a
subscribed watcher of a stream's live feed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from coinstream.gifts.v1 import gifts_pb2

from tests.support.clients import SERVICE, Clients, auth, new_id
from tests.support.factories import make_account

EVENT_TIMEOUT_SECONDS = 15.0

Feed = grpc.aio.UnaryStreamCall


async def go_live(clients: Clients, creator_id: str | None = None) -> gifts_pb2.LiveStream:
    creator_id = creator_id or await make_account(clients)
    reply = await clients.gifts.StartLiveStream(
        gifts_pb2.StartLiveStreamRequest(request_id=new_id("req"), creator_id=creator_id, title="Friday night"),
        metadata=auth(creator_id),
    )
    return reply.stream


async def live_stream_id(clients: Clients, creator_id: str | None = None) -> str:
    """The id of a stream its creator (a new account unless given) just started."""
    return (await go_live(clients, creator_id)).stream_id


async def end_stream(clients: Clients, stream_id: str) -> None:
    await clients.gifts.EndLiveStream(
        gifts_pb2.EndLiveStreamRequest(request_id=new_id("req"), stream_id=stream_id), metadata=SERVICE
    )


def video_request(
    creator_id: str, video_id: str | None = None, gifts_enabled: bool = True
) -> gifts_pb2.UpsertVideoRequest:
    return gifts_pb2.UpsertVideoRequest(
        request_id=new_id("req"), video_id=video_id or new_id("vid"), creator_id=creator_id, gifts_enabled=gifts_enabled
    )


async def post_video(clients: Clients, creator_id: str | None = None, gifts_enabled: bool = True) -> gifts_pb2.Video:
    """A new video of the creator's (a new account unless given; any id may own a video)."""
    creator_id = creator_id or await make_account(clients)
    reply = await clients.gifts.UpsertVideo(video_request(creator_id, gifts_enabled=gifts_enabled), metadata=SERVICE)
    return reply.video


def video_gift(sender_id: str, video_id: str, gift_id: str = "rose", quantity: int = 1) -> gifts_pb2.SendGiftRequest:
    return gifts_pb2.SendGiftRequest(
        request_id=new_id("req"), sender_id=sender_id, video_id=video_id, gift_id=gift_id, quantity=quantity
    )


def gift_request(
    sender_id: str, stream_id: str, gift_id: str = "rose", quantity: int = 1, request_id: str | None = None
) -> gifts_pb2.SendGiftRequest:
    return gifts_pb2.SendGiftRequest(
        request_id=request_id or new_id("req"),
        sender_id=sender_id,
        stream_id=stream_id,
        gift_id=gift_id,
        quantity=quantity,
    )


async def send(clients: Clients, sender: str, stream_id: str, gift_id: str = "rose", quantity: int = 1) -> int:
    """Sends a gift as the service; returns its combo_count."""
    reply = await clients.gifts.SendGift(gift_request(sender, stream_id, gift_id, quantity), metadata=SERVICE)
    return reply.gift.combo_count


async def summary_of(clients: Clients, stream_id: str) -> gifts_pb2.StreamSummary:
    reply = await clients.gifts.GetStreamSummary(
        gifts_pb2.GetStreamSummaryRequest(stream_id=stream_id), metadata=SERVICE
    )
    return reply.summary


@asynccontextmanager
async def watching(
    clients: Clients, stream_id: str, metadata: object = None, *, with_updates: bool = False
) -> AsyncIterator[Feed]:
    """A subscribed watcher (its initial metadata arrived), cancelled on exit; with_updates: match and goal updates
    too."""
    call = clients.gifts.WatchStreamGifts(
        gifts_pb2.WatchStreamGiftsRequest(stream_id=stream_id, include_match_and_goal_updates=with_updates),
        metadata=metadata or auth(new_id("viewer")),
    )
    try:
        await asyncio.wait_for(call.initial_metadata(), EVENT_TIMEOUT_SECONDS)
        # A refused call also yields (empty) initial metadata: only a call still open is subscribed.
        if call.done():
            await call.read()  # raises the refusal (AioRpcError), as a read of a subscribed call would
            raise AssertionError("the watch finished before it started")
        yield call
    finally:
        call.cancel()
