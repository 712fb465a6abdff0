"""Video gifts against the real stack: UpsertVideo, SendGift with a video_id through the same saga as stream gifts
(paid once, replayed, combos per video), GiftSent.video_id, settlement into the creator's diamonds, the video's
summary and the creator's leaderboards; refusals (unknown, gifts off, to oneself, both or neither target)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from coinstream.gifts.v1 import gifts_pb2
from coinstream.payouts.v1 import payouts_pb2

from tests.support.clients import ADMIN, SERVICE, Clients, auth, new_id
from tests.support.errors import error_reason, violated_fields
from tests.support.events import gift_sent_messages, published_event
from tests.support.factories import balance, make_account
from tests.support.gifts import go_live, post_video, video_gift, video_request
from tests.support.payouts import wait_for_lifetime
from tests.support.stack import Stack


async def video_summary(clients: Clients, video_id: str) -> gifts_pb2.VideoSummary:
    reply = await clients.gifts.GetVideoSummary(
        gifts_pb2.GetVideoSummaryRequest(video_id=video_id), metadata=auth(new_id("viewer"))
    )
    return reply.summary


async def test_a_video_gift_is_paid_once_announced_and_settled_into_diamonds(clients: Clients, stack: Stack) -> None:
    video = await post_video(clients)
    fan = await make_account(clients, package_id="coins_330")
    request = video_gift(fan, video.video_id, "doughnut", 2)
    reply = await clients.gifts.SendGift(request, metadata=auth(fan))
    gift = reply.gift
    assert (gift.video_id, gift.stream_id, gift.recipient_id, gift.coins, gift.combo_count) == (
        video.video_id,
        "",
        video.creator_id,
        60,
        1,
    )
    assert reply.sender_balance_coins == 270 == await balance(clients, fan)
    assert await clients.gifts.SendGift(request, metadata=auth(fan)) == reply  # a replay moves nothing
    assert await balance(clients, fan) == 270
    event = await published_event(stack, gift.gift_transaction_id)
    assert (event.video_id, event.stream_id, event.recipient_id, event.coins) == (
        video.video_id,
        "",
        video.creator_id,
        60,
    )
    assert len(await gift_sent_messages(stack.nats, gift.gift_transaction_id)) == 1
    # 1 coin → 1 diamond, as for stream gifts.
    assert (await wait_for_lifetime(clients, video.creator_id, 60)).lifetime_diamonds == 60


async def test_video_summary_combos_and_the_creators_leaderboard(clients: Clients) -> None:
    creator = await make_account(clients)
    video = await post_video(clients, creator)
    stream = await go_live(clients, creator)
    fans = [await make_account(clients, package_id="coins_330") for _ in range(2)]
    combos = [(await clients.gifts.SendGift(video_gift(fans[0], video.video_id), metadata=SERVICE)).gift.combo_count]
    combos += [(await clients.gifts.SendGift(video_gift(fans[0], video.video_id), metadata=SERVICE)).gift.combo_count]
    await clients.gifts.SendGift(video_gift(fans[1], video.video_id, "finger_heart"), metadata=SERVICE)
    stream_gift = gifts_pb2.SendGiftRequest(
        request_id=new_id("req"), sender_id=fans[0], stream_id=stream.stream_id, gift_id="rose", quantity=1
    )
    # The same sender and gift on the creator's stream: a combo of its own (combos are per stream or video).
    assert (await clients.gifts.SendGift(stream_gift, metadata=SERVICE)).gift.combo_count == 1
    assert combos == [1, 2]
    summary = await video_summary(clients, video.video_id)
    assert (summary.video_id, summary.total_coins, summary.gift_count) == (video.video_id, 7, 3)
    assert [(g.account_id, g.coins) for g in summary.top_gifters] == [(fans[1], 5), (fans[0], 2)]
    stream_summary = await clients.gifts.GetStreamSummary(
        gifts_pb2.GetStreamSummaryRequest(stream_id=stream.stream_id), metadata=SERVICE
    )
    assert stream_summary.summary.total_coins == 1  # video gifts are not the stream's
    board = await clients.gifts.GetLeaderboard(
        gifts_pb2.GetLeaderboardRequest(creator_id=creator, period=gifts_pb2.LEADERBOARD_PERIOD_DAY), metadata=SERVICE
    )
    assert [(e.account_id, e.coins) for e in board.entries] == [(fans[1], 5), (fans[0], 3)]


async def test_video_gifts_are_refused_when_unknown_disabled_or_to_oneself(clients: Clients) -> None:
    creator = await make_account(clients, package_id="coins_330")
    fan = await make_account(clients, package_id="coins_330")
    quiet = await post_video(clients, creator, gifts_enabled=False)
    video = await post_video(clients, creator)
    cases = [
        (video_gift(fan, new_id("vid")), grpc.StatusCode.NOT_FOUND, "VIDEO_NOT_FOUND"),
        (video_gift(fan, quiet.video_id), grpc.StatusCode.FAILED_PRECONDITION, "VIDEO_NOT_GIFTABLE"),
        (video_gift(creator, video.video_id), grpc.StatusCode.FAILED_PRECONDITION, "SELF_GIFT"),
        (video_gift(fan, video.video_id, "no-such-gift"), grpc.StatusCode.NOT_FOUND, "GIFT_NOT_FOUND"),
    ]
    for request, code, reason in cases:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await clients.gifts.SendGift(request, metadata=SERVICE)
        assert (refused.value.code(), error_reason(refused.value)) == (code, reason)
    assert await balance(clients, fan) == await balance(clients, creator) == 330
    # Turned on later, the video takes gifts; turned off again, it refuses them.
    await clients.gifts.UpsertVideo(video_request(creator, quiet.video_id), metadata=SERVICE)
    await clients.gifts.SendGift(video_gift(fan, quiet.video_id), metadata=SERVICE)
    await clients.gifts.UpsertVideo(video_request(creator, quiet.video_id, gifts_enabled=False), metadata=SERVICE)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await clients.gifts.SendGift(video_gift(fan, quiet.video_id), metadata=SERVICE)
    assert error_reason(refused.value) == "VIDEO_NOT_GIFTABLE"


async def test_send_gift_needs_exactly_one_target(clients: Clients) -> None:
    fan = await make_account(clients, package_id="coins_330")
    stream = await go_live(clients)
    both = video_gift(fan, new_id("vid"))
    both.stream_id = stream.stream_id
    neither = gifts_pb2.SendGiftRequest(request_id=new_id("req"), sender_id=fan, gift_id="rose", quantity=1)
    bad_video = video_gift(fan, "not a video id!")
    for request, field in ((both, "video_id"), (neither, "stream_id"), (bad_video, "video_id")):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await clients.gifts.SendGift(request, metadata=SERVICE)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in violated_fields(refused.value)


async def test_upsert_video_rules(clients: Clients) -> None:
    creator = await make_account(clients)
    request = video_request(creator)
    video = (await clients.gifts.UpsertVideo(request, metadata=ADMIN)).video
    assert (video.video_id, video.creator_id, video.gifts_enabled) == (request.video_id, creator, True)
    assert (await clients.gifts.UpsertVideo(request, metadata=ADMIN)).video == video  # a replay
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await clients.gifts.UpsertVideo(video_request(new_id("other"), video.video_id), metadata=SERVICE)
    assert (refused.value.code(), error_reason(refused.value)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "VIDEO_CREATOR_MISMATCH",
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await clients.gifts.UpsertVideo(video_request(creator), metadata=auth(creator))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await clients.gifts.UpsertVideo(video_request(creator, "bad id"), metadata=SERVICE)
    assert violated_fields(refused.value) == {"video_id"}
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await video_summary(clients, new_id("vid"))
    assert error_reason(refused.value) == "VIDEO_NOT_FOUND"
    assert (await video_summary(clients, video.video_id)).total_coins == 0


async def test_concurrent_video_and_stream_gifts_keep_the_money_identities(clients: Clients, stack: Stack) -> None:
    """Coins spent on a creator's video and stream gifts all arrive as diamonds (the session's invariants check the
    whole ledger again at the end)."""
    creator = await make_account(clients)
    video, stream = await post_video(clients, creator), await go_live(clients, creator)
    fans = [await make_account(clients, package_id="coins_330") for _ in range(4)]
    requests = [video_gift(fan, video.video_id, "finger_heart") for fan in fans for _ in range(3)]
    requests += [
        gifts_pb2.SendGiftRequest(
            request_id=new_id("req"), sender_id=fan, stream_id=stream.stream_id, gift_id="rose", quantity=2
        )
        for fan in fans
        for _ in range(3)
    ]
    await asyncio.gather(*(clients.gifts.SendGift(r, metadata=SERVICE) for r in requests))
    assert [await balance(clients, fan) for fan in fans] == [330 - 15 - 6] * 4
    earnings = await wait_for_lifetime(clients, creator, 4 * (15 + 6))
    assert earnings.lifetime_diamonds == 84
    statement = await clients.payouts.ListEarnings(
        payouts_pb2.ListEarningsRequest(creator_id=creator, group_by=payouts_pb2.EARNINGS_GROUP_BY_DAY),
        metadata=SERVICE,
    )
    assert sum(row.diamonds for row in statement.rows) == 84
