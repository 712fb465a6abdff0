"""Stream goals against the real stack: SetStreamGoal and its refusals, progress from the stream's gifts completed
since the goal was set, reached_at stamped once and GoalReached published once under concurrent gifts and replays,
a new goal closing the previous, the goal in GetStreamSummary and in the live feed."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from coinstream.events.v1 import events_pb2
from coinstream.gifts.v1 import gifts_pb2

from services.runtime.messaging import GOAL_REACHED_SUBJECT
from tests.support.clients import SERVICE, Clients, auth, new_id
from tests.support.errors import error_reason, violated_fields
from tests.support.events import events_on
from tests.support.factories import make_account
from tests.support.gifts import end_stream, gift_request, go_live, send, summary_of, watching
from tests.support.stack import Stack

FEED_TIMEOUT_SECONDS = 15.0


def goal_request(
    stream_id: str, target_coins: int, description: str = "New microphone"
) -> gifts_pb2.SetStreamGoalRequest:
    return gifts_pb2.SetStreamGoalRequest(
        request_id=new_id("req"), stream_id=stream_id, target_coins=target_coins, description=description
    )


async def set_goal(clients: Clients, stream: gifts_pb2.LiveStream, target_coins: int) -> gifts_pb2.StreamGoal:
    reply = await clients.gifts.SetStreamGoal(
        goal_request(stream.stream_id, target_coins), metadata=auth(stream.creator_id)
    )
    return reply.goal


async def goal_reached_events(stack: Stack, goal_id: str) -> list[events_pb2.GoalReached]:
    return await events_on(
        stack.nats, GOAL_REACHED_SUBJECT, events_pb2.GoalReached, lambda event: event.goal.goal_id == goal_id
    )


async def test_a_creator_sets_a_goal_and_gifts_make_progress_until_reached(clients: Clients, stack: Stack) -> None:
    stream = await go_live(clients)
    fan = await make_account(clients, package_id="coins_330")
    await send(clients, fan, stream.stream_id, "doughnut")  # before the goal: not counted
    request = goal_request(stream.stream_id, 40, "Pizza for the chat 🍕")
    goal = (await clients.gifts.SetStreamGoal(request, metadata=auth(stream.creator_id))).goal
    assert (goal.stream_id, goal.target_coins, goal.progress_coins, goal.description) == (
        stream.stream_id,
        40,
        0,
        "Pizza for the chat 🍕",
    )
    assert goal.goal_id and not goal.HasField("reached_at") and goal.HasField("created_at")
    assert (await clients.gifts.SetStreamGoal(request, metadata=auth(stream.creator_id))).goal == goal  # a replay
    await send(clients, fan, stream.stream_id, "doughnut")
    summary = await summary_of(clients, stream.stream_id)
    assert (summary.goal.goal_id, summary.goal.progress_coins, summary.goal.HasField("reached_at")) == (
        goal.goal_id,
        30,
        False,
    )
    await send(clients, fan, stream.stream_id, "hand_hearts")
    reached = (await summary_of(clients, stream.stream_id)).goal
    assert reached.progress_coins == 130 and reached.HasField("reached_at")
    await send(clients, fan, stream.stream_id, "rose")  # progress goes on past the target; reached_at stays
    after = (await summary_of(clients, stream.stream_id)).goal
    assert after.progress_coins == 131 and after.reached_at == reached.reached_at
    [event] = await goal_reached_events(stack, goal.goal_id)
    assert (event.goal.stream_id, event.goal.creator_id, event.goal.target_coins, event.goal.progress_coins) == (
        stream.stream_id,
        stream.creator_id,
        40,
        130,
    )
    assert event.goal.reached_at == reached.reached_at


async def test_concurrent_gifts_and_replays_reach_a_goal_once(clients: Clients, stack: Stack) -> None:
    stream = await go_live(clients)
    fans = [await make_account(clients, package_id="coins_330") for _ in range(6)]
    goal = await set_goal(clients, stream, 100)
    requests = [gift_request(fan, stream.stream_id, "finger_heart") for fan in fans for _ in range(5)]  # 150 coins
    # Each gift sent twice at once: the replay moves nothing and counts nothing.
    await asyncio.gather(*(clients.gifts.SendGift(r, metadata=SERVICE) for r in requests + requests))
    final = (await summary_of(clients, stream.stream_id)).goal
    assert final.progress_coins == 150 and final.HasField("reached_at")
    await asyncio.sleep(1.0)  # a second GoalReached would have been published by now
    assert len(await goal_reached_events(stack, goal.goal_id)) == 1


async def test_a_new_goal_closes_the_previous_and_counts_from_its_creation(clients: Clients, stack: Stack) -> None:
    stream = await go_live(clients)
    fan = await make_account(clients, package_id="coins_330")
    first = await set_goal(clients, stream, 1000)
    await send(clients, fan, stream.stream_id, "doughnut")
    second = await set_goal(clients, stream, 50)
    assert second.goal_id != first.goal_id and second.progress_coins == 0
    await send(clients, fan, stream.stream_id, "finger_heart")
    goal = (await summary_of(clients, stream.stream_id)).goal
    assert (goal.goal_id, goal.progress_coins) == (second.goal_id, 5)


async def test_set_stream_goal_refusals(clients: Clients) -> None:
    stream = await go_live(clients)
    for target in (0, -1, 1_000_000_001):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await set_goal(clients, stream, target)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(refused.value) == {"target_coins"}
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await clients.gifts.SetStreamGoal(goal_request(stream.stream_id, 10, "x" * 201), metadata=SERVICE)
    assert violated_fields(refused.value) == {"description"}
    stranger = await make_account(clients)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await clients.gifts.SetStreamGoal(goal_request(stream.stream_id, 10), metadata=auth(stranger))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await clients.gifts.SetStreamGoal(goal_request(new_id("str"), 10), metadata=SERVICE)
    assert error_reason(refused.value) == "STREAM_NOT_FOUND"
    await end_stream(clients, stream.stream_id)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await clients.gifts.SetStreamGoal(goal_request(stream.stream_id, 10), metadata=SERVICE)
    assert error_reason(refused.value) == "STREAM_NOT_LIVE"
    # A service may set the goal of any live stream, without a description.
    other = await go_live(clients)
    goal = (await clients.gifts.SetStreamGoal(goal_request(other.stream_id, 10, ""), metadata=SERVICE)).goal
    assert goal.description == ""


async def test_a_stream_without_a_goal_has_none_in_its_summary(clients: Clients) -> None:
    stream = await go_live(clients)
    summary = await summary_of(clients, stream.stream_id)
    assert not summary.HasField("goal") and summary.active_match_id == ""


async def test_the_live_feed_shows_the_goal_and_its_progress(clients: Clients) -> None:
    stream = await go_live(clients)
    fan = await make_account(clients, package_id="coins_330")
    async with watching(clients, stream.stream_id, with_updates=True) as feed:
        goal = await set_goal(clients, stream, 10)
        await send(clients, fan, stream.stream_id, "finger_heart", 3)
        responses = [await asyncio.wait_for(feed.read(), FEED_TIMEOUT_SECONDS) for _ in range(3)]
    assert ["goal" if r.HasField("goal") else "gift" if r.HasField("event") else "?" for r in responses] == [
        "goal",
        "gift",
        "goal",
    ]
    assert (responses[0].goal.goal_id, responses[0].goal.progress_coins) == (goal.goal_id, 0)
    assert (responses[2].goal.progress_coins, responses[2].goal.HasField("reached_at")) == (15, True)
