"""Combos, leaderboards, catalog admin and the paid/bonus split of GiftSent, against the real stack. Every test makes
its own accounts, streams and catalog gifts (the seeded catalog is never changed)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from coinstream.gifts.v1 import gifts_pb2

from tests.support.clients import ADMIN, SERVICE, Clients, auth, new_id
from tests.support.errors import error_reason, violated_fields
from tests.support.events import published_event
from tests.support.factories import make_account
from tests.support.gifts import gift_request, go_live, send, summary_of
from tests.support.stack import Stack

DAY = gifts_pb2.LEADERBOARD_PERIOD_DAY
WEEK = gifts_pb2.LEADERBOARD_PERIOD_WEEK
ALL_TIME = gifts_pb2.LEADERBOARD_PERIOD_ALL_TIME


# ---------------------------------------------------------------- combos


async def test_same_sender_gift_and_stream_within_ten_seconds_continue_a_combo(clients: Clients) -> None:
    stream, other_stream = await go_live(clients), await go_live(clients)
    sender = await make_account(clients, package_id="coins_330")
    other_sender = await make_account(clients, package_id="coins_330")
    assert [await send(clients, sender, stream.stream_id) for _ in range(3)] == [1, 2, 3]
    assert await send(clients, sender, stream.stream_id, "finger_heart") == 1  # another gift: its own combo
    assert await send(clients, other_sender, stream.stream_id) == 1  # another sender
    assert await send(clients, sender, other_stream.stream_id) == 1  # another stream
    assert await send(clients, sender, stream.stream_id, quantity=5) == 4  # the quantity does not matter
    assert await send(clients, sender, stream.stream_id, "finger_heart") == 2  # the other combos went on meanwhile


async def test_combo_count_is_in_the_reply_its_replay_and_gift_sent(clients: Clients, stack: Stack) -> None:
    stream = await go_live(clients)
    sender = await make_account(clients, package_id="coins_330")
    await send(clients, sender, stream.stream_id)
    request = gift_request(sender, stream.stream_id)
    reply = await clients.gifts.SendGift(request, metadata=SERVICE)
    assert reply.gift.combo_count == 2
    assert await clients.gifts.SendGift(request, metadata=SERVICE) == reply  # the replay keeps its combo
    assert (await published_event(stack, reply.gift.gift_transaction_id)).combo_count == 2


async def test_a_pause_longer_than_ten_seconds_starts_a_new_combo(clients: Clients) -> None:
    stream = await go_live(clients)
    sender = await make_account(clients, package_id="coins_330")
    assert [await send(clients, sender, stream.stream_id) for _ in range(2)] == [1, 2]
    await asyncio.sleep(10.5)
    assert [await send(clients, sender, stream.stream_id) for _ in range(2)] == [1, 2]


async def test_concurrent_gifts_of_one_combo_get_distinct_counts(clients: Clients) -> None:
    stream = await go_live(clients)
    sender = await make_account(clients, package_id="coins_330")
    counts = await asyncio.gather(*(send(clients, sender, stream.stream_id) for _ in range(8)))
    assert sorted(counts) == list(range(1, 9))


async def test_refused_gift_does_not_touch_the_combo(clients: Clients) -> None:
    stream = await go_live(clients)
    sender = await make_account(clients, package_id="coins_65")
    assert await send(clients, sender, stream.stream_id) == 1
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await send(clients, sender, stream.stream_id, quantity=100)  # more than the 64 coins left
    assert error_reason(error.value) == "INSUFFICIENT_COINS"
    assert await send(clients, sender, stream.stream_id) == 2


# ---------------------------------------------------------------- paid / bonus split


async def test_gift_sent_carries_how_the_coins_were_paid(clients: Clients, stack: Stack) -> None:
    """GiftSent carries the wallet's split of the spend (bonus first), so the cash behind every gift is known."""
    stream = await go_live(clients)
    sender = await make_account(clients, package_id="coins_1321")  # 1,321 paid coins and 66 bonus coins
    reply = await clients.gifts.SendGift(gift_request(sender, stream.stream_id, "hand_hearts", 2), metadata=SERVICE)
    event = await published_event(stack, reply.gift.gift_transaction_id)
    assert event.coins == 200
    assert (event.paid_coins, event.bonus_coins) == (134, 66)  # bonus coins are spent first


# ---------------------------------------------------------------- leaderboards


async def leaderboard(
    clients: Clients, creator_id: str, period: int = ALL_TIME, page_size: int = 0, metadata: object = SERVICE
) -> list[tuple[str, int, int]]:
    reply = await clients.gifts.GetLeaderboard(
        gifts_pb2.GetLeaderboardRequest(creator_id=creator_id, period=period, page_size=page_size), metadata=metadata
    )
    return [(entry.account_id, entry.coins, entry.rank) for entry in reply.entries]


async def test_leaderboard_ranks_top_gifters_to_a_creator_across_streams(clients: Clients) -> None:
    creator = await make_account(clients)
    first_stream = await go_live(clients, creator)
    # a: 100 coins; b and c: 30 each (a tie); d: 5; on two streams of the creator.
    a, b, c, d = [await make_account(clients, package_id="coins_330") for _ in range(4)]
    await send(clients, a, first_stream.stream_id, "doughnut", 2)
    await send(clients, b, first_stream.stream_id, "doughnut")
    await clients.gifts.EndLiveStream(
        gifts_pb2.EndLiveStreamRequest(request_id=new_id("req"), stream_id=first_stream.stream_id), metadata=SERVICE
    )
    second_stream = await go_live(clients, creator)
    await send(clients, a, second_stream.stream_id, "doughnut", 1)
    await send(clients, a, second_stream.stream_id, "finger_heart", 2)
    await send(clients, c, second_stream.stream_id, "finger_heart", 6)
    await send(clients, d, second_stream.stream_id, "finger_heart")
    expected = [(a, 100, 1), *sorted([(b, 30, 2), (c, 30, 2)]), (d, 5, 4)]
    for period in (DAY, WEEK, ALL_TIME):  # everything happened today, so the three periods agree
        assert await leaderboard(clients, creator, period) == expected
    assert await leaderboard(clients, creator, page_size=2) == expected[:2]
    assert await leaderboard(clients, creator, metadata=auth(new_id("viewer"))) == expected  # any user may look
    assert await leaderboard(clients, await make_account(clients)) == []  # another creator's board is its own


async def test_leaderboard_page_size_defaults_to_ten_and_caps_at_a_hundred(clients: Clients) -> None:
    stream = await go_live(clients)
    senders = [await make_account(clients, package_id="coins_65") for _ in range(12)]
    await asyncio.gather(*(send(clients, s, stream.stream_id, "rose", i + 1) for i, s in enumerate(senders)))
    most_first = [(sender, i + 1) for i, sender in enumerate(senders)][::-1]
    board = await leaderboard(clients, stream.creator_id)
    assert [(account, coins) for account, coins, _ in board] == most_first[:10]
    assert [rank for _, _, rank in board] == list(range(1, 11))
    assert len(await leaderboard(clients, stream.creator_id, page_size=100)) == 12
    assert len(await leaderboard(clients, stream.creator_id, page_size=1)) == 1


async def test_leaderboard_counts_only_completed_gifts(clients: Clients) -> None:
    stream = await go_live(clients)
    rich, poor = await make_account(clients, package_id="coins_65"), await make_account(clients)
    await send(clients, rich, stream.stream_id, "doughnut")
    with pytest.raises(grpc.aio.AioRpcError):
        await send(clients, poor, stream.stream_id, "doughnut")
    with pytest.raises(grpc.aio.AioRpcError):
        await send(clients, rich, stream.stream_id, "hand_hearts")
    assert await leaderboard(clients, stream.creator_id) == [(rich, 30, 1)]
    summary = await summary_of(clients, stream.stream_id)
    assert [(g.account_id, g.coins) for g in summary.top_gifters] == [(rich, 30)]


@pytest.mark.parametrize(
    ("creator_id", "period", "page_size", "fields"),
    [
        ("creator-1", gifts_pb2.LEADERBOARD_PERIOD_UNSPECIFIED, 0, {"period"}),
        ("creator-1", 42, 0, {"period"}),
        ("creator-1", DAY, 101, {"page_size"}),
        ("creator-1", DAY, -1, {"page_size"}),
        ("", DAY, 0, {"creator_id"}),
        ("not valid!", gifts_pb2.LEADERBOARD_PERIOD_UNSPECIFIED, 500, {"creator_id", "period", "page_size"}),
    ],
)
async def test_invalid_leaderboard_requests_are_refused(
    clients: Clients, creator_id: str, period: int, page_size: int, fields: set[str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await leaderboard(clients, creator_id, period, page_size)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error.value) == fields


async def test_leaderboard_needs_a_token(clients: Clients) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await leaderboard(clients, "creator-1", metadata=None)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


# ---------------------------------------------------------------- catalog admin


def new_gift(coin_price: int = 7, name: str = "Test Balloon") -> gifts_pb2.Gift:
    return gifts_pb2.Gift(gift_id=new_id("gift"), name=name, coin_price=coin_price)


async def upsert(clients: Clients, gift: gifts_pb2.Gift, request_id: str | None = None) -> gifts_pb2.Gift:
    reply = await clients.gifts.UpsertGift(
        gifts_pb2.UpsertGiftRequest(request_id=request_id or new_id("req"), gift=gift), metadata=ADMIN
    )
    return reply.gift


async def retire(clients: Clients, gift_id: str, request_id: str | None = None) -> gifts_pb2.Gift:
    reply = await clients.gifts.RetireGift(
        gifts_pb2.RetireGiftRequest(request_id=request_id or new_id("req"), gift_id=gift_id), metadata=ADMIN
    )
    return reply.gift


async def catalog(clients: Clients) -> dict[str, gifts_pb2.Gift]:
    reply = await clients.gifts.ListGifts(gifts_pb2.ListGiftsRequest(), metadata=auth(new_id("user")))
    return {gift.gift_id: gift for gift in reply.gifts}


async def test_upserted_gift_is_listed_and_can_be_sent(clients: Clients) -> None:
    gift = new_gift(coin_price=7)
    assert await upsert(clients, gift) == gift
    assert (await catalog(clients))[gift.gift_id] == gift
    stream = await go_live(clients)
    sender = await make_account(clients, package_id="coins_65")
    reply = await clients.gifts.SendGift(gift_request(sender, stream.stream_id, gift.gift_id, 3), metadata=SERVICE)
    assert (reply.gift.gift_id, reply.gift.coins, reply.sender_balance_coins) == (gift.gift_id, 21, 44)


async def test_price_change_never_alters_an_accepted_gift(clients: Clients) -> None:
    gift = new_gift(coin_price=10)
    await upsert(clients, gift)
    stream = await go_live(clients)
    sender = await make_account(clients, package_id="coins_65")
    request = gift_request(sender, stream.stream_id, gift.gift_id, 2)
    accepted = await clients.gifts.SendGift(request, metadata=SERVICE)
    assert accepted.gift.coins == 20

    changed = gifts_pb2.Gift(gift_id=gift.gift_id, name="Pricier Balloon", coin_price=15)
    assert await upsert(clients, changed) == changed
    assert await clients.gifts.SendGift(request, metadata=SERVICE) == accepted  # the replay: 20 coins still
    later = await clients.gifts.SendGift(gift_request(sender, stream.stream_id, gift.gift_id, 2), metadata=SERVICE)
    assert later.gift.coins == 30 and later.sender_balance_coins == 65 - 20 - 30
    assert (await summary_of(clients, stream.stream_id)).total_coins == 50


async def test_retired_gift_is_unlisted_and_refused_until_upserted_again(clients: Clients) -> None:
    gift = await upsert(clients, new_gift())
    assert await retire(clients, gift.gift_id) == gift
    assert gift.gift_id not in await catalog(clients)
    assert await retire(clients, gift.gift_id) == gift  # retiring a retired gift returns it unchanged
    stream = await go_live(clients)
    sender = await make_account(clients, package_id="coins_65")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await clients.gifts.SendGift(gift_request(sender, stream.stream_id, gift.gift_id), metadata=SERVICE)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_reason(error.value) == "GIFT_NOT_FOUND"

    back = gifts_pb2.Gift(gift_id=gift.gift_id, name=gift.name, coin_price=9)
    assert await upsert(clients, back) == back  # upserting re-activates it
    assert (await catalog(clients))[gift.gift_id] == back
    assert (await clients.gifts.SendGift(gift_request(sender, stream.stream_id, gift.gift_id), metadata=SERVICE)).gift


async def test_retiring_an_unknown_gift_is_not_found(clients: Clients) -> None:
    request_id, gift_id = new_id("req"), new_id("nope")
    for _ in range(2):  # stored: the retry gets the same answer
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await retire(clients, gift_id, request_id=request_id)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        assert error_reason(error.value) == "GIFT_NOT_FOUND"


async def test_catalog_admin_is_idempotent(clients: Clients) -> None:
    gift = new_gift(coin_price=11)
    request_id = new_id("req")
    assert await upsert(clients, gift, request_id) == gift
    await upsert(clients, gifts_pb2.Gift(gift_id=gift.gift_id, name=gift.name, coin_price=12))
    assert await upsert(clients, gift, request_id) == gift  # the replay moves nothing
    assert (await catalog(clients))[gift.gift_id].coin_price == 12
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await upsert(clients, gifts_pb2.Gift(gift_id=gift.gift_id, name=gift.name, coin_price=13), request_id)
    assert error_reason(error.value) == "REQUEST_ID_REUSED"

    retire_id = new_id("req")
    retired = await retire(clients, gift.gift_id, retire_id)
    await upsert(clients, gift)  # active again
    assert await retire(clients, gift.gift_id, retire_id) == retired  # the replay does not retire it again
    assert gift.gift_id in await catalog(clients)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await retire(clients, "rose", retire_id)
    assert error_reason(error.value) == "REQUEST_ID_REUSED"


@pytest.mark.parametrize("roles", [("user",), ("service",)])
async def test_catalog_admin_needs_the_admin_role(clients: Clients, roles: tuple[str, ...]) -> None:
    gift = new_gift()
    metadata = auth(new_id("someone"), *roles)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await clients.gifts.UpsertGift(
            gifts_pb2.UpsertGiftRequest(request_id=new_id("req"), gift=gift), metadata=metadata
        )
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await clients.gifts.RetireGift(
            gifts_pb2.RetireGiftRequest(request_id=new_id("req"), gift_id="rose"), metadata=metadata
        )
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "rose" in await catalog(clients) and gift.gift_id not in await catalog(clients)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await clients.gifts.UpsertGift(gifts_pb2.UpsertGiftRequest(request_id=new_id("req"), gift=gift))
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("changes", "fields"),
    [
        ({"gift_id": ""}, {"gift.gift_id"}),
        ({"gift_id": "has space"}, {"gift.gift_id"}),
        ({"gift_id": "g" * 65}, {"gift.gift_id"}),
        ({"name": ""}, {"gift.name"}),
        ({"name": "   "}, {"gift.name"}),
        ({"name": "n" * 101}, {"gift.name"}),
        ({"name": "bad\x00name"}, {"gift.name"}),
        ({"coin_price": 0}, {"gift.coin_price"}),
        ({"coin_price": -5}, {"gift.coin_price"}),
        ({"coin_price": 1_000_001}, {"gift.coin_price"}),
        ({"gift_id": "", "name": "", "coin_price": 0}, {"gift.gift_id", "gift.name", "gift.coin_price"}),
    ],
)
async def test_invalid_upserts_are_refused_and_change_nothing(
    clients: Clients, changes: dict[str, object], fields: set[str]
) -> None:
    gift = new_gift()
    for name, value in changes.items():
        setattr(gift, name, value)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await upsert(clients, gift)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error.value) == fields
    assert gift.gift_id not in await catalog(clients)


async def test_boundary_prices_and_names_are_accepted(clients: Clients) -> None:
    cheapest = new_gift(coin_price=1, name="n")
    dearest = new_gift(coin_price=1_000_000, name="N" * 100)
    assert await upsert(clients, cheapest) == cheapest
    assert await upsert(clients, dearest) == dearest


async def test_invalid_retire_requests_are_refused(clients: Clients) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await clients.gifts.RetireGift(gifts_pb2.RetireGiftRequest(request_id="bad id", gift_id=""), metadata=ADMIN)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error.value) == {"request_id", "gift_id"}
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await clients.gifts.UpsertGift(gifts_pb2.UpsertGiftRequest(request_id="", gift=new_gift()), metadata=ADMIN)
    assert violated_fields(error.value) == {"request_id"}
