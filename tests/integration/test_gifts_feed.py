"""WatchStreamGifts against the real stack: every gift completed after subscribing, in order, with its combo, until
the stream ends; slow watchers change nothing for the others; StreamEnded on JetStream after the stream's gifts;
refusals. A watcher is subscribed once its call's initial metadata arrived."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest
from coinstream.events.v1 import events_pb2
from coinstream.gifts.v1 import gifts_pb2
from nats.aio.msg import Msg

from coinstream.testing.servers import NatsServer
from services.runtime.messaging import GIFT_SENT_BATCH_SUBJECT, STREAM_ENDED_SUBJECT
from tests.support.clients import SERVICE, Clients, auth, new_id
from tests.support.errors import error_reason, violated_fields
from tests.support.events import gift_sent_messages, messages_on
from tests.support.factories import make_account
from tests.support.gifts import EVENT_TIMEOUT_SECONDS, Feed, end_stream, gift_request, go_live, watching
from tests.support.stack import Stack


async def next_event(call: Feed) -> gifts_pb2.GiftEvent | None:
    """The next event; None when the feed finished (the status is then checked by the caller)."""
    response = await asyncio.wait_for(call.read(), EVENT_TIMEOUT_SECONDS)
    return None if response is grpc.aio.EOF else response.event


async def collect(call: Feed, pause_seconds: float = 0.0) -> list[gifts_pb2.GiftEvent]:
    """Reads the feed until the stream ends, pausing after each event like a slow overlay."""
    events = []
    while (event := await next_event(call)) is not None:
        events.append(event)
        await asyncio.sleep(pause_seconds)
    assert await call.code() == grpc.StatusCode.OK
    return events


async def test_watcher_receives_every_gift_in_order_while_three_others_are_slow(clients: Clients) -> None:
    stream = await go_live(clients)
    senders = [await make_account(clients, package_id="coins_330") for _ in range(3)]
    async with (
        watching(clients, stream.stream_id) as fast,
        watching(clients, stream.stream_id) as slow_1,
        watching(clients, stream.stream_id) as slow_2,
        watching(clients, stream.stream_id) as never_reads,
    ):
        fast_reader = asyncio.create_task(collect(fast))
        slow_readers = [asyncio.create_task(collect(slow, pause_seconds=0.2)) for slow in (slow_1, slow_2)]
        sent: list[gifts_pb2.GiftTransaction] = []
        started = time.monotonic()
        for number in range(30):  # one after another, so their order is known
            sender = senders[number % 3]
            gift_id = "rose" if number < 15 else "finger_heart"
            reply = await clients.gifts.SendGift(gift_request(sender, stream.stream_id, gift_id), metadata=SERVICE)
            sent.append(reply.gift)
        gifting_seconds = time.monotonic() - started
        await end_stream(clients, stream.stream_id)

        received = await asyncio.wait_for(fast_reader, EVENT_TIMEOUT_SECONDS)
        assert [event.gift for event in received] == sent  # every gift, in order, as answered, then the end
        assert all(event.sent_at.seconds > 0 for event in received)
        assert [event.gift.combo_count for event in received][:3] == [1, 1, 1]  # three senders, one combo each
        assert received[3].gift.combo_count == 2
        # The slow ones still get everything, then the end.
        for events in await asyncio.gather(*slow_readers, collect(never_reads)):
            assert [event.gift for event in events] == sent
    assert gifting_seconds < 30, "gifting was slowed down"


async def test_feed_carries_combos_and_only_its_own_stream(clients: Clients) -> None:
    stream, other_stream = await go_live(clients), await go_live(clients)
    sender = await make_account(clients, package_id="coins_330")
    async with watching(clients, stream.stream_id) as feed:
        await clients.gifts.SendGift(gift_request(sender, other_stream.stream_id, "rose"), metadata=SERVICE)
        replies = [
            await clients.gifts.SendGift(gift_request(sender, stream.stream_id, "rose"), metadata=SERVICE)
            for _ in range(3)
        ]
        events = [await next_event(feed) for _ in replies]
    assert [event.gift.combo_count for event in events if event is not None] == [1, 2, 3]
    assert [event.gift for event in events if event is not None] == [reply.gift for reply in replies]


async def test_gifts_before_the_subscription_are_not_replayed(clients: Clients, stack: Stack) -> None:
    stream = await go_live(clients)
    sender = await make_account(clients, package_id="coins_65")
    before = await clients.gifts.SendGift(gift_request(sender, stream.stream_id), metadata=SERVICE)
    assert await gift_sent_messages(stack.nats, before.gift.gift_transaction_id)  # published already
    async with watching(clients, stream.stream_id) as feed:
        after = await clients.gifts.SendGift(gift_request(sender, stream.stream_id, "finger_heart"), metadata=SERVICE)
        event = await next_event(feed)
    assert event is not None and event.gift == after.gift


async def test_replayed_send_gift_is_not_a_second_event(clients: Clients) -> None:
    stream = await go_live(clients)
    sender = await make_account(clients, package_id="coins_65")
    async with watching(clients, stream.stream_id) as feed:
        request = gift_request(sender, stream.stream_id)
        first = await clients.gifts.SendGift(request, metadata=SERVICE)
        assert await clients.gifts.SendGift(request, metadata=SERVICE) == first
        await end_stream(clients, stream.stream_id)
        assert [event.gift for event in await collect(feed)] == [first.gift]


async def test_many_watchers_of_many_streams(clients: Clients) -> None:
    streams = [await go_live(clients) for _ in range(3)]
    sender = await make_account(clients, package_id="coins_330")
    calls = {
        stream.stream_id: [
            clients.gifts.WatchStreamGifts(
                gifts_pb2.WatchStreamGiftsRequest(stream_id=stream.stream_id), metadata=auth(new_id("viewer"))
            )
            for _ in range(5)
        ]
        for stream in streams
    }
    await asyncio.gather(*(call.initial_metadata() for group in calls.values() for call in group))
    sent = {stream.stream_id: [] for stream in streams}
    for _ in range(3):
        for stream in streams:
            reply = await clients.gifts.SendGift(gift_request(sender, stream.stream_id), metadata=SERVICE)
            sent[stream.stream_id].append(reply.gift.gift_transaction_id)
    for stream in streams:
        await end_stream(clients, stream.stream_id)
    for stream_id, group in calls.items():
        for events in await asyncio.gather(*(collect(call) for call in group)):
            assert [event.gift.gift_transaction_id for event in events] == sent[stream_id]


async def test_ending_the_stream_ends_its_watchers_and_publishes_stream_ended(clients: Clients, stack: Stack) -> None:
    stream = await go_live(clients)
    sender = await make_account(clients, package_id="coins_65")
    async with watching(clients, stream.stream_id) as feed:
        gift = (await clients.gifts.SendGift(gift_request(sender, stream.stream_id), metadata=SERVICE)).gift
        await end_stream(clients, stream.stream_id)
        assert [event.gift for event in await collect(feed)] == [gift]
    await end_stream(clients, stream.stream_id)  # ending it again publishes nothing more

    ended, (gift_seq, _) = (
        await stream_ended_messages(stack.nats, stream.stream_id),
        await gift_position_of(stack, gift.gift_transaction_id),
    )
    assert len(ended) == 1
    message = ended[0]
    assert message.headers is not None and message.headers["Nats-Msg-Id"] == f"stream_ended:{stream.stream_id}"
    event = events_pb2.StreamEnded.FromString(message.data)
    assert (event.stream_id, event.creator_id) == (stream.stream_id, stream.creator_id)
    assert abs(time.time() - event.ended_at.ToSeconds()) < 120
    assert message.metadata.sequence.stream > gift_seq  # after the stream's gifts


async def test_gifts_racing_the_end_of_the_stream_are_either_in_the_feed_or_after_stream_ended(
    clients: Clients, stack: Stack
) -> None:
    stream = await go_live(clients)
    senders = [await make_account(clients, package_id="coins_330") for _ in range(5)]

    async def gift(number: int) -> str | None:
        await asyncio.sleep(number * 0.01)
        try:
            reply = await clients.gifts.SendGift(gift_request(senders[number % 5], stream.stream_id), metadata=SERVICE)
        except grpc.aio.AioRpcError as error:
            assert error_reason(error) == "STREAM_NOT_LIVE"
            return None
        return reply.gift.gift_transaction_id

    async def end_midway() -> None:
        await asyncio.sleep(0.2)
        await end_stream(clients, stream.stream_id)

    async with watching(clients, stream.stream_id) as feed:
        outcomes = await asyncio.gather(*(gift(number) for number in range(40)), end_midway())
        received = [event.gift.gift_transaction_id for event in await collect(feed)]
    completed = {gift_id for gift_id in outcomes if gift_id is not None}
    # JetStream's order is the relay's order: the feed has exactly the gifts published before StreamEnded, in order.
    [ended] = await stream_ended_messages(stack.nats, stream.stream_id)
    positions = {gift_id: await gift_position_of(stack, gift_id) for gift_id in completed}
    before_end = sorted((at, gift_id) for gift_id, at in positions.items() if at[0] < ended.metadata.sequence.stream)
    assert received == [gift_id for _, gift_id in before_end]
    assert before_end, "the stream ended before any gift: the race was not exercised"


async def gift_position_of(stack: Stack, gift_transaction_id: str) -> tuple[int, int]:
    """Where the gift's GiftSent is in the stream: its message's sequence, and its place in a GiftSentBatch."""
    [message] = await gift_sent_messages(stack.nats, gift_transaction_id)
    place = 0
    if message.subject == GIFT_SENT_BATCH_SUBJECT:
        batched = events_pb2.GiftSentBatch.FromString(message.data).gifts
        place = [event.gift_transaction_id for event in batched].index(gift_transaction_id)
    return message.metadata.sequence.stream, place


async def stream_ended_messages(server: NatsServer, stream_id: str, timeout_seconds: float = 15.0) -> list[Msg]:
    deadline = time.monotonic() + timeout_seconds
    while True:
        found = [
            message
            for message in await messages_on(server, STREAM_ENDED_SUBJECT)
            if events_pb2.StreamEnded.FromString(message.data).stream_id == stream_id
        ]
        if found or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)


# ---------------------------------------------------------------- refusals


async def expect_refusal(clients: Clients, stream_id: str, metadata: object = None) -> grpc.aio.AioRpcError:
    call = clients.gifts.WatchStreamGifts(
        gifts_pb2.WatchStreamGiftsRequest(stream_id=stream_id), metadata=metadata or auth(new_id("viewer"))
    )
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await asyncio.wait_for(call.read(), EVENT_TIMEOUT_SECONDS)
    return error.value


async def test_watching_an_ended_stream_is_refused(clients: Clients) -> None:
    stream = await go_live(clients)
    await end_stream(clients, stream.stream_id)
    error = await expect_refusal(clients, stream.stream_id)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error) == "STREAM_NOT_LIVE"


async def test_watching_an_unknown_stream_is_not_found(clients: Clients) -> None:
    error = await expect_refusal(clients, "str_missing")
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error_reason(error) == "STREAM_NOT_FOUND"


@pytest.mark.parametrize("stream_id", ["", "s" * 129, "str_\x00"])
async def test_invalid_stream_id_is_refused(clients: Clients, stream_id: str) -> None:
    error = await expect_refusal(clients, stream_id)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == {"stream_id"}


async def test_a_watch_request_that_does_not_parse_is_invalid_argument(stack: Stack) -> None:
    """Found by the fuzzer (test_fuzz.py): a stream_id that is not UTF-8 ended the call UNKNOWN."""
    async with grpc.aio.insecure_channel(stack.address("gifts")) as channel:
        call = channel.unary_stream("/coinstream.gifts.v1.GiftService/WatchStreamGifts")(
            b"\x0a\x01\xff", metadata=SERVICE
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call.read()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error_reason(refused.value), violated_fields(refused.value)) == ("INVALID_ARGUMENT", {"request"})


async def test_watching_needs_a_token(clients: Clients) -> None:
    stream = await go_live(clients)
    error = await expect_refusal(clients, stream.stream_id, metadata=(("authorization", "Bearer nope"),))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    call = clients.gifts.WatchStreamGifts(gifts_pb2.WatchStreamGiftsRequest(stream_id=stream.stream_id))
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await call.read()
    assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("roles", [("user",), ("service",), ("admin",)])
async def test_anyone_authenticated_may_watch(clients: Clients, roles: tuple[str, ...]) -> None:
    stream = await go_live(clients)
    async with watching(clients, stream.stream_id, metadata=auth(new_id("someone"), *roles)):
        pass


# ---------------------------------------------------------------- limits (gifts restarted with small ones)


@asynccontextmanager
async def gifts_with(stack: Stack, settings: dict[str, str]) -> AsyncIterator[None]:
    stack.restart_service("gifts", extra_env=settings)
    try:
        yield
    finally:
        stack.restart_service("gifts")


@pytest.mark.slow
async def test_watchers_per_process_are_limited_and_freed_when_a_client_leaves(clients: Clients, stack: Stack) -> None:
    async with gifts_with(stack, {"COINSTREAM_GIFTS_FEED_MAX_WATCHERS": "3"}):
        stream = await go_live(clients)
        async with watching(clients, stream.stream_id), watching(clients, stream.stream_id):
            async with watching(clients, stream.stream_id):
                error = await expect_refusal(clients, stream.stream_id)
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert error_reason(error) == "RATE_LIMITED"
            # The third client cancelled: its place is free again (give the server a moment to see the cancel).
            for _ in range(50):
                try:
                    async with watching(clients, stream.stream_id) as feed:
                        sender = await make_account(clients, package_id="coins_65")
                        reply = await clients.gifts.SendGift(gift_request(sender, stream.stream_id), metadata=SERVICE)
                        assert (event := await next_event(feed)) is not None and event.gift == reply.gift
                    break
                except grpc.aio.AioRpcError as refused:
                    assert error_reason(refused) == "RATE_LIMITED"
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("the cancelled watcher's place was never freed")
        # Refused watchers (unknown, ended streams) do not keep a place either.
        for _ in range(5):
            assert (await expect_refusal(clients, "str_missing")).code() == grpc.StatusCode.NOT_FOUND
        async with (
            watching(clients, stream.stream_id),
            watching(clients, stream.stream_id),
            watching(clients, stream.stream_id),
        ):
            pass


@pytest.mark.slow
async def test_a_nats_outage_ends_watchers_with_unavailable_so_they_resubscribe(clients: Clients, stack: Stack) -> None:
    stream = await go_live(clients)
    sender = await make_account(clients, package_id="coins_65")
    async with watching(clients, stream.stream_id) as feed:
        stack.nats.stop()
        try:
            # Gifts published by another replica meanwhile would never reach this one: the watcher is told.
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await next_event(feed)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
            assert error_reason(error.value) == "FEED_UNAVAILABLE"
            refused = await expect_refusal(clients, stream.stream_id)
            assert (refused.code(), error_reason(refused)) == (grpc.StatusCode.UNAVAILABLE, "FEED_UNAVAILABLE")
            during = await clients.gifts.SendGift(gift_request(sender, stream.stream_id), metadata=SERVICE)
        finally:
            stack.nats.start()

    # Once gifts is connected again, a new watcher gets the gifts from then on.
    deadline = time.monotonic() + EVENT_TIMEOUT_SECONDS
    while True:
        try:
            async with watching(clients, stream.stream_id) as feed:
                after = await clients.gifts.SendGift(gift_request(sender, stream.stream_id), metadata=SERVICE)
                events = [await next_event(feed)]
                if events[0] is not None and events[0].gift == during.gift:  # relayed once NATS was back
                    events.append(await next_event(feed))
                assert events[-1] is not None and events[-1].gift == after.gift
                break
        except grpc.aio.AioRpcError as error:
            assert error_reason(error) == "FEED_UNAVAILABLE" and time.monotonic() < deadline
            await asyncio.sleep(0.3)
