"""Streams and the catalog on fakes: who may go live, ending a stream (once, its StreamEnded queued), the catalog's
upserts and retirements, and the watch feed's checks."""

from __future__ import annotations

from datetime import UTC

import grpc
from coinstream.events.v1 import events_pb2
from coinstream.gifts.v1 import gifts_pb2

from services.gifts.domain import StreamStatus
from services.runtime.messaging import STREAM_ENDED_SUBJECT
from tests.unit.gifts.world import LION, ROSE, World, refused, retire_command, start_command


async def test_only_an_adult_verified_account_goes_live() -> None:
    world = World()
    world.wallet.open_account("minor")
    assert await refused(world.gifts.start_live_stream(start_command("minor"))) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ACCOUNT_NOT_ELIGIBLE",
    )
    assert await refused(world.gifts.start_live_stream(start_command("nobody"))) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ACCOUNT_NOT_ELIGIBLE",
    )
    assert world.store.tables.streams == {}


async def test_one_live_stream_per_creator() -> None:
    world = World()
    await world.live_stream("creator")
    assert await refused(world.gifts.start_live_stream(start_command("creator"))) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "STREAM_ALREADY_LIVE",
    )


async def test_a_replayed_start_needs_no_wallet() -> None:
    world = World()
    world.wallet.open_account("creator", adult_verified=True)
    first = await world.gifts.start_live_stream(start_command("creator", "r1"))
    world.wallet.down = True
    assert await world.gifts.start_live_stream(start_command("creator", "r1")) == first
    assert await refused(world.gifts.start_live_stream(start_command("other"))) == (
        grpc.StatusCode.UNAVAILABLE,
        "WALLET_UNAVAILABLE",
    )


async def test_ending_a_stream_queues_stream_ended_once() -> None:
    world = World()
    stream_id = await world.live_stream("creator")
    ended = await world.end_stream(stream_id)
    assert ended.status is StreamStatus.ENDED
    assert (await world.end_stream(stream_id)).status is StreamStatus.ENDED  # already ended: as it is
    (row,) = world.store.events(STREAM_ENDED_SUBJECT)
    assert row.msg_id == f"stream_ended:{stream_id}"
    event = events_pb2.StreamEnded.FromString(row.payload)
    assert (event.stream_id, event.creator_id, event.ended_at.ToDatetime(UTC)) == (
        stream_id,
        "creator",
        world.clock.now(),
    )
    await world.live_stream("creator")  # may go live again


async def test_ending_an_unknown_stream_stores_not_found() -> None:
    world = World()
    assert await refused(world.end_stream("str_nope", "r1")) == (grpc.StatusCode.NOT_FOUND, "STREAM_NOT_FOUND")
    kept = world.store.tables.keys["r1"].error
    assert kept is not None and kept.reason == "STREAM_NOT_FOUND"


async def test_the_catalog_lists_active_gifts_by_price() -> None:
    world = World()
    await world.catalog(LION, ROSE)
    assert await world.gifts.list_gifts() == [ROSE, LION]
    await world.retire("lion")
    assert await world.gifts.list_gifts() == [ROSE]
    assert await refused(world.gifts.retire_gift(retire_command("nope"))) == (
        grpc.StatusCode.NOT_FOUND,
        "GIFT_NOT_FOUND",
    )
    await world.catalog(LION)  # an upsert brings a retired gift back
    assert await world.gifts.list_gifts() == [ROSE, LION]


async def test_watching_needs_a_live_stream() -> None:
    world = World()
    stream_id = await world.live_stream("creator")
    await world.end_stream(stream_id)

    async def subscribed() -> None:
        raise AssertionError("answered a watcher of an ended stream")

    watching = world.gifts.watch_stream_gifts(stream_id, subscribed)
    assert await refused(anext(watching)) == (grpc.StatusCode.FAILED_PRECONDITION, "STREAM_NOT_LIVE")
    assert world.feed.watchers[stream_id] == []  # the watcher is gone with the call


async def test_a_watcher_gets_the_feeds_events_until_the_end() -> None:
    world = World()
    stream_id = await world.live_stream("creator")
    answered: list[bool] = []

    async def subscribed() -> None:
        answered.append(True)
        (watcher,) = world.feed.watchers[stream_id]
        watcher.events.put_nowait(gifts_pb2.WatchStreamGiftsResponse())
        watcher.events.put_nowait(None)

    received = [event async for event in world.gifts.watch_stream_gifts(stream_id, subscribed)]
    assert (answered, len(received), world.feed.subscribed) == ([True], 1, 1)
