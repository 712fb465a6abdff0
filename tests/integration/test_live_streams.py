"""GiftService against the real stack, before any gift: the catalog, and live streams started and ended by their
creator or a service; errors, validation, auth and idempotency. Every test makes its own accounts and streams."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from coinstream.gifts.v1 import gifts_pb2

from tests.support.clients import SERVICE, Clients, auth, new_id
from tests.support.errors import error_reason, violated_fields
from tests.support.factories import make_account
from tests.support.gifts import gift_request, go_live

# ---------------------------------------------------------------- ListGifts


SEEDED_GIFT_IDS = {
    "rose",
    "finger_heart",
    "doughnut",
    "hand_hearts",
    "corgi",
    "money_gun",
    "disco_ball",
    "lion",
    "universe",
}


async def test_list_gifts_returns_the_catalog_by_price(clients: Clients) -> None:
    reply = await clients.gifts.ListGifts(gifts_pb2.ListGiftsRequest(), metadata=auth(new_id("user")))
    # Catalog admin tests add gifts of their own to the shared catalog; the seeded ones keep their prices and order.
    prices = [g.coin_price for g in reply.gifts]
    assert prices == sorted(prices)
    assert [(g.gift_id, g.coin_price) for g in reply.gifts if g.gift_id in SEEDED_GIFT_IDS] == [
        ("rose", 1),
        ("finger_heart", 5),
        ("doughnut", 30),
        ("hand_hearts", 100),
        ("corgi", 299),
        ("money_gun", 500),
        ("disco_ball", 1000),
        ("lion", 29999),
        ("universe", 34999),
    ]
    assert {g.gift_id: g.name for g in reply.gifts}["finger_heart"] == "Finger Heart"


async def test_calls_without_a_token_are_unauthenticated(clients: Clients) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await clients.gifts.ListGifts(gifts_pb2.ListGiftsRequest())
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await clients.gifts.SendGift(gift_request("someone", "str_x"))
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


# ---------------------------------------------------------------- live streams


async def test_start_and_end_live_stream(clients: Clients) -> None:
    creator = await make_account(clients)
    request = gifts_pb2.StartLiveStreamRequest(request_id=new_id("req"), creator_id=creator, title="Cooking show")
    started = await clients.gifts.StartLiveStream(request, metadata=auth(creator))
    stream = started.stream
    assert stream.stream_id and stream.creator_id == creator and stream.title == "Cooking show"
    assert stream.status == gifts_pb2.STREAM_STATUS_LIVE
    assert await clients.gifts.StartLiveStream(request, metadata=auth(creator)) == started  # idempotent replay

    end = gifts_pb2.EndLiveStreamRequest(request_id=new_id("req"), stream_id=stream.stream_id)
    ended = await clients.gifts.EndLiveStream(end, metadata=auth(creator))
    assert ended.stream.status == gifts_pb2.STREAM_STATUS_ENDED
    assert ended.stream.stream_id == stream.stream_id and ended.stream.title == "Cooking show"
    assert await clients.gifts.EndLiveStream(end, metadata=auth(creator)) == ended  # idempotent replay
    # Ending an ended stream (new request_id) returns it unchanged.
    again = await clients.gifts.EndLiveStream(
        gifts_pb2.EndLiveStreamRequest(request_id=new_id("req"), stream_id=stream.stream_id), metadata=SERVICE
    )
    assert again.stream == ended.stream
    # Once ended, the creator may go live again.
    assert (await go_live(clients, creator)).stream_id != stream.stream_id


async def test_service_may_start_and_end_a_stream_for_a_creator(clients: Clients) -> None:
    creator = await make_account(clients)
    started = await clients.gifts.StartLiveStream(
        gifts_pb2.StartLiveStreamRequest(request_id=new_id("req"), creator_id=creator, title="t"), metadata=SERVICE
    )
    ended = await clients.gifts.EndLiveStream(
        gifts_pb2.EndLiveStreamRequest(request_id=new_id("req"), stream_id=started.stream.stream_id), metadata=SERVICE
    )
    assert ended.stream.status == gifts_pb2.STREAM_STATUS_ENDED


async def test_second_live_stream_is_refused(clients: Clients) -> None:
    stream = await go_live(clients)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await go_live(clients, stream.creator_id)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error.value) == "STREAM_ALREADY_LIVE"


async def test_concurrent_starts_leave_one_live_stream(clients: Clients) -> None:
    creator = await make_account(clients)
    outcomes = await asyncio.gather(*(go_live(clients, creator) for _ in range(5)), return_exceptions=True)
    started = [o for o in outcomes if isinstance(o, gifts_pb2.LiveStream)]
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(started) == 1 and len(refused) == 4
    assert {error_reason(e) for e in refused} == {"STREAM_ALREADY_LIVE"}


@pytest.mark.parametrize("known", [True, False], ids=["not-adult", "unknown"])
async def test_creator_must_be_adult_verified(clients: Clients, known: bool) -> None:
    creator = await make_account(clients, adult_verified=False) if known else new_id("ghost")
    request = gifts_pb2.StartLiveStreamRequest(request_id=new_id("req"), creator_id=creator, title="t")
    for _ in range(2):  # the refusal is stored: a retry gets it again
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await clients.gifts.StartLiveStream(request, metadata=auth(creator))
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(error.value) == "ACCOUNT_NOT_ELIGIBLE"


async def test_end_unknown_stream_is_not_found(clients: Clients) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await clients.gifts.EndLiveStream(
            gifts_pb2.EndLiveStreamRequest(request_id=new_id("req"), stream_id="str_missing"), metadata=SERVICE
        )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_reason(error.value) == "STREAM_NOT_FOUND"


async def test_users_cannot_start_or_end_streams_of_others(clients: Clients) -> None:
    creator = await make_account(clients)
    intruder = await make_account(clients)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await clients.gifts.StartLiveStream(
            gifts_pb2.StartLiveStreamRequest(request_id=new_id("req"), creator_id=creator, title="t"),
            metadata=auth(intruder),
        )
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    stream = await go_live(clients, creator)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await clients.gifts.EndLiveStream(
            gifts_pb2.EndLiveStreamRequest(request_id=new_id("req"), stream_id=stream.stream_id),
            metadata=auth(intruder),
        )
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # Still live: the intruder changed nothing.
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await go_live(clients, creator)
    assert error_reason(error.value) == "STREAM_ALREADY_LIVE"


async def test_invalid_stream_requests_change_nothing(clients: Clients) -> None:
    creator = await make_account(clients)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await clients.gifts.StartLiveStream(
            gifts_pb2.StartLiveStreamRequest(request_id="bad id!", creator_id=creator, title="x" * 201),
            metadata=SERVICE,
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error.value) == {"request_id", "title"}
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await clients.gifts.StartLiveStream(
            gifts_pb2.StartLiveStreamRequest(request_id=new_id("req"), creator_id="no spaces", title="  "),
            metadata=SERVICE,
        )
    assert violated_fields(error.value) == {"creator_id", "title"}
    stream = await go_live(clients, creator)  # nothing was started by the invalid calls

    with pytest.raises(grpc.aio.AioRpcError) as error:
        await clients.gifts.EndLiveStream(gifts_pb2.EndLiveStreamRequest(request_id="", stream_id=""), metadata=SERVICE)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error.value) == {"request_id", "stream_id"}
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await clients.gifts.EndLiveStream(
            gifts_pb2.EndLiveStreamRequest(request_id="", stream_id=stream.stream_id), metadata=SERVICE
        )
    assert violated_fields(error.value) == {"request_id"}
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await go_live(clients, creator)
    assert error_reason(error.value) == "STREAM_ALREADY_LIVE"  # still live
