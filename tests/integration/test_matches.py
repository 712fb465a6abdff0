"""LIVE matches against the real stack: StartMatch and its refusals, scores kept exactly by the gifts' completions
(concurrent gifts across both boundaries: none counted twice or lost), winners and ties, a side whose stream ends,
the live feed, and MatchFinished published once — also when the match ended while gifts was down, and with two
replicas finishing. The suite allows matches from one second (tests/support/stack.py)."""

from __future__ import annotations

import asyncio
import itertools
import time

import asyncpg
import grpc
import pytest
from coinstream.events.v1 import events_pb2
from coinstream.gifts.v1 import gifts_pb2
from google.protobuf.duration_pb2 import Duration

from coinstream.testing.servers import stop_process
from services.runtime.messaging import MATCH_FINISHED_SUBJECT
from tests.support.clients import ADMIN, SERVICE, Clients, auth, new_id
from tests.support.crashes import gifts_crashing_at, restart_after_crash
from tests.support.errors import error_reason, violated_fields
from tests.support.events import events_on
from tests.support.factories import make_account
from tests.support.gifts import end_stream, go_live, send, watching
from tests.support.stack import Stack

FINISH_TIMEOUT_SECONDS = 20.0
FEED_TIMEOUT_SECONDS = 15.0


def match_request(
    stream_ids: list[str], seconds: float = 2.0, request_id: str | None = None
) -> gifts_pb2.StartMatchRequest:
    duration = Duration()
    duration.FromMilliseconds(int(seconds * 1000))
    return gifts_pb2.StartMatchRequest(request_id=request_id or new_id("req"), stream_ids=stream_ids, duration=duration)


async def start_match(clients: Clients, stream_ids: list[str], seconds: float = 2.0) -> gifts_pb2.Match:
    return (await clients.gifts.StartMatch(match_request(stream_ids, seconds), metadata=SERVICE)).match


async def get_match(clients: Clients, match_id: str) -> gifts_pb2.GetMatchResponse:
    return await clients.gifts.GetMatch(gifts_pb2.GetMatchRequest(match_id=match_id), metadata=auth(new_id("viewer")))


async def finished_match(clients: Clients, match_id: str) -> gifts_pb2.GetMatchResponse:
    """The match once the finisher finished it (it runs every 0.2 s in the suite)."""
    deadline = time.monotonic() + FINISH_TIMEOUT_SECONDS
    while True:
        reply = await get_match(clients, match_id)
        if reply.match.status == gifts_pb2.MATCH_STATUS_FINISHED:
            return reply
        assert time.monotonic() < deadline, f"match {match_id} not finished: {reply}"
        await asyncio.sleep(0.1)


async def match_finished_events(stack: Stack, match_id: str) -> list[events_pb2.MatchFinished]:
    return await events_on(
        stack.nats, MATCH_FINISHED_SUBJECT, events_pb2.MatchFinished, lambda event: event.match_id == match_id
    )


def scores(match: gifts_pb2.Match) -> dict[str, int]:
    return {side.stream_id: side.score_coins for side in match.sides}


# ---------------------------------------------------------------- starting


async def test_a_match_starts_active_with_zero_scores_in_the_order_asked(clients: Clients) -> None:
    streams = [await go_live(clients) for _ in range(3)]
    ids = [stream.stream_id for stream in reversed(streams)]
    request = match_request(ids, seconds=90)
    match = (await clients.gifts.StartMatch(request, metadata=ADMIN)).match
    assert match.match_id and match.status == gifts_pb2.MATCH_STATUS_ACTIVE
    assert [(side.stream_id, side.score_coins) for side in match.sides] == [(stream_id, 0) for stream_id in ids]
    assert [side.creator_id for side in match.sides] == [stream.creator_id for stream in reversed(streams)]
    assert (match.ends_at.ToDatetime() - match.starts_at.ToDatetime()).total_seconds() == 90
    assert list(match.winner_stream_ids) == []
    assert (await clients.gifts.StartMatch(request, metadata=ADMIN)).match == match  # a replay
    assert (await get_match(clients, match.match_id)).match == match
    summary = await clients.gifts.GetStreamSummary(
        gifts_pb2.GetStreamSummaryRequest(stream_id=ids[0]), metadata=SERVICE
    )
    assert summary.summary.active_match_id == match.match_id


@pytest.mark.parametrize(
    ("count", "duplicate", "seconds", "field"),
    [
        (1, False, 2, "stream_ids"),
        (5, False, 2, "stream_ids"),
        (2, True, 2, "stream_ids"),
        (2, False, 0.5, "duration"),  # the suite's minimum is 1 s
        (2, False, 3601, "duration"),
    ],
)
async def test_start_match_refuses_bad_input(
    clients: Clients, count: int, duplicate: bool, seconds: float, field: str
) -> None:
    ids = [new_id("str") for _ in range(count)]
    if duplicate:
        ids[1] = ids[0]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await clients.gifts.StartMatch(match_request(ids, seconds), metadata=SERVICE)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violated_fields(refused.value)


async def test_start_match_refuses_unknown_ended_and_busy_streams(clients: Clients) -> None:
    a, b, c = [await go_live(clients) for _ in range(3)]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await start_match(clients, [a.stream_id, new_id("str")])
    assert (refused.value.code(), error_reason(refused.value)) == (grpc.StatusCode.NOT_FOUND, "STREAM_NOT_FOUND")
    await start_match(clients, [a.stream_id, b.stream_id], seconds=60)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await start_match(clients, [c.stream_id, b.stream_id])
    assert (refused.value.code(), error_reason(refused.value)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "STREAM_IN_MATCH",
    )
    await end_stream(clients, c.stream_id)
    d = await go_live(clients)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await start_match(clients, [d.stream_id, c.stream_id])
    assert (refused.value.code(), error_reason(refused.value)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "STREAM_NOT_LIVE",
    )


async def test_only_services_and_admins_start_matches(clients: Clients) -> None:
    a, b = await go_live(clients), await go_live(clients)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await clients.gifts.StartMatch(match_request([a.stream_id, b.stream_id]), metadata=auth(a.creator_id))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await get_match(clients, new_id("mat"))
    assert (refused.value.code(), error_reason(refused.value)) == (grpc.StatusCode.NOT_FOUND, "MATCH_NOT_FOUND")


# ---------------------------------------------------------------- scores and winners


async def test_scores_supporters_and_winner(clients: Clients, stack: Stack) -> None:
    a, b = await go_live(clients), await go_live(clients)
    fans = [await make_account(clients, package_id="coins_330") for _ in range(3)]
    match = await start_match(clients, [a.stream_id, b.stream_id], seconds=3)
    await send(clients, fans[0], a.stream_id, "doughnut")  # 30
    await send(clients, fans[1], a.stream_id, "finger_heart", 2)  # 10
    await send(clients, fans[2], b.stream_id, "hand_hearts")  # 100
    await send(clients, fans[0], b.stream_id, "rose", 3)  # 3
    during = await get_match(clients, match.match_id)
    assert scores(during.match) == {a.stream_id: 40, b.stream_id: 103}
    assert [(s.stream_id, s.account_id, s.coins) for s in during.top_supporters] == [
        (a.stream_id, fans[0], 30),
        (a.stream_id, fans[1], 10),
        (b.stream_id, fans[2], 100),
        (b.stream_id, fans[0], 3),
    ]
    final = await finished_match(clients, match.match_id)
    assert scores(final.match) == {a.stream_id: 40, b.stream_id: 103}
    assert list(final.match.winner_stream_ids) == [b.stream_id]
    [event] = await match_finished_events(stack, match.match_id)
    assert [(s.stream_id, s.creator_id, s.score_coins) for s in event.sides] == [
        (a.stream_id, a.creator_id, 40),
        (b.stream_id, b.creator_id, 103),
    ]
    assert list(event.winner_stream_ids) == [b.stream_id]
    assert event.finished_at.ToDatetime() >= event.ends_at.ToDatetime() == final.match.ends_at.ToDatetime()
    # The streams are free again: a gift now counts in nothing, and a new match may start.
    await send(clients, fans[1], a.stream_id, "corgi")
    assert scores((await get_match(clients, match.match_id)).match) == {a.stream_id: 40, b.stream_id: 103}
    rematch = await start_match(clients, [b.stream_id, a.stream_id])
    assert rematch.match_id != match.match_id


async def test_a_tie_has_several_winners(clients: Clients) -> None:
    a, b, c = [await go_live(clients) for _ in range(3)]
    fan = await make_account(clients, package_id="coins_330")
    match = await start_match(clients, [a.stream_id, b.stream_id, c.stream_id], seconds=1.5)
    await send(clients, fan, a.stream_id, "finger_heart")
    await send(clients, fan, c.stream_id, "rose", 5)
    await send(clients, fan, b.stream_id, "rose", 2)
    final = await finished_match(clients, match.match_id)
    assert list(final.match.winner_stream_ids) == [a.stream_id, c.stream_id]


async def test_a_match_nobody_gifted_is_a_tie_of_every_side(clients: Clients) -> None:
    a, b = await go_live(clients), await go_live(clients)
    match = await start_match(clients, [a.stream_id, b.stream_id], seconds=1)
    final = await finished_match(clients, match.match_id)
    assert list(final.match.winner_stream_ids) == [a.stream_id, b.stream_id]


async def test_a_stream_that_ends_mid_match_keeps_its_score_and_may_win(clients: Clients) -> None:
    a, b = await go_live(clients), await go_live(clients)
    fan = await make_account(clients, package_id="coins_330")
    match = await start_match(clients, [a.stream_id, b.stream_id], seconds=2)
    await send(clients, fan, a.stream_id, "doughnut")
    await end_stream(clients, a.stream_id)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await send(clients, fan, a.stream_id)
    assert error_reason(refused.value) == "STREAM_NOT_LIVE"
    await send(clients, fan, b.stream_id, "finger_heart")
    final = await finished_match(clients, match.match_id)
    assert scores(final.match) == {a.stream_id: 30, b.stream_id: 5}
    assert list(final.match.winner_stream_ids) == [a.stream_id]


async def test_concurrent_gifts_across_both_boundaries_count_once_by_completion_time(
    clients: Clients, stack: Stack
) -> None:
    """Fans gift both sides before, during and after a match; each side's score is exactly the coins of the gifts
    to its stream that completed inside [starts_at, ends_at), and the supporters add up to it."""
    a, b = await go_live(clients), await go_live(clients)
    fans = [await make_account(clients, package_id="coins_1321") for _ in range(8)]
    stop = asyncio.Event()

    async def fan_loop(fan: str, index: int) -> None:
        for turn in itertools.count():
            if stop.is_set():
                return
            await send(clients, fan, (a, b)[(index + turn) % 2].stream_id, ("rose", "finger_heart")[turn % 2])

    gifting = [asyncio.create_task(fan_loop(fan, index)) for index, fan in enumerate(fans)]
    try:
        await asyncio.sleep(0.5)
        match = await start_match(clients, [a.stream_id, b.stream_id], seconds=1.5)
        final = await finished_match(clients, match.match_id)
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await asyncio.gather(*gifting)
    conn = await asyncpg.connect(stack.database_url("gifts"))
    try:
        rows = await conn.fetch(
            "SELECT g.stream_id, g.finished_at >= m.starts_at AND g.finished_at < m.ends_at AS inside,"
            " sum(g.coins) AS coins, count(*) AS gifts"
            " FROM gift_transactions AS g, matches AS m WHERE m.match_id = $1 AND g.status = 'completed'"
            " AND g.stream_id = ANY($2::text[]) GROUP BY 1, 2",
            match.match_id,
            [a.stream_id, b.stream_id],
        )
        supporters = await conn.fetch(
            "SELECT stream_id, sum(coins) AS coins FROM match_supporters WHERE match_id = $1 GROUP BY 1",
            match.match_id,
        )
    finally:
        await conn.close()
    inside = {row["stream_id"]: row["coins"] for row in rows if row["inside"]}
    outside = {row["stream_id"]: row["gifts"] for row in rows if not row["inside"]}
    assert scores(final.match) == inside
    assert {row["stream_id"]: row["coins"] for row in supporters} == inside
    # Gifts completed on both sides of the window, before the start and after the end: the boundaries were crossed.
    assert outside.get(a.stream_id, 0) + outside.get(b.stream_id, 0) >= 4
    best = max(inside.values())
    assert list(final.match.winner_stream_ids) == [s for s in (a.stream_id, b.stream_id) if inside[s] == best]
    [event] = await match_finished_events(stack, match.match_id)
    assert {side.stream_id: side.score_coins for side in event.sides} == inside


# ---------------------------------------------------------------- the live feed


async def test_the_live_feed_shows_the_start_score_updates_and_result(clients: Clients) -> None:
    a, b = await go_live(clients), await go_live(clients)
    fan = await make_account(clients, package_id="coins_330")
    async with watching(clients, b.stream_id) as gifts_only, watching(clients, a.stream_id, with_updates=True) as feed:
        match = await start_match(clients, [a.stream_id, b.stream_id], seconds=2)
        await send(clients, fan, b.stream_id, "finger_heart")
        await send(clients, fan, a.stream_id, "doughnut")
        seen = []
        while True:
            response = await asyncio.wait_for(feed.read(), FEED_TIMEOUT_SECONDS)
            kind = "gift" if response.HasField("event") else "match" if response.HasField("match") else "other"
            seen.append((kind, response))
            if kind == "match" and response.match.status == gifts_pb2.MATCH_STATUS_FINISHED:
                break
        # A watcher that did not ask for updates sees the gifts only (as before matches existed).
        only = await asyncio.wait_for(gifts_only.read(), FEED_TIMEOUT_SECONDS)
        assert only.HasField("event") and only.event.gift.stream_id == b.stream_id
    assert [kind for kind, _ in seen] == ["match", "match", "gift", "match", "match"]
    matches = [response.match for kind, response in seen if kind == "match"]
    assert all(m.match_id == match.match_id for m in matches)
    assert [scores(m) for m in matches] == [
        {a.stream_id: 0, b.stream_id: 0},
        {a.stream_id: 0, b.stream_id: 5},
        {a.stream_id: 30, b.stream_id: 5},
        {a.stream_id: 30, b.stream_id: 5},
    ]
    assert list(matches[-1].winner_stream_ids) == [a.stream_id]
    assert seen[2][1].event.gift.coins == 30


# ---------------------------------------------------------------- finishing: restarts and replicas


@pytest.mark.slow
async def test_a_match_that_ends_while_gifts_is_down_finishes_after_the_restart(clients: Clients, stack: Stack) -> None:
    a, b = await go_live(clients), await go_live(clients)
    fan = await make_account(clients, package_id="coins_330")
    match = await start_match(clients, [a.stream_id, b.stream_id], seconds=1.5)
    await send(clients, fan, b.stream_id, "finger_heart")
    await asyncio.to_thread(stack.kill_service, "gifts")
    try:
        await asyncio.sleep(2.0)  # the match ends while nobody can finish it
    finally:
        await asyncio.to_thread(stack.start_service, "gifts")
    final = await finished_match(clients, match.match_id)
    assert list(final.match.winner_stream_ids) == [b.stream_id]
    assert scores(final.match) == {a.stream_id: 0, b.stream_id: 5}
    await asyncio.sleep(1.0)  # a second finishing would have published by now
    [event] = await match_finished_events(stack, match.match_id)
    assert list(event.winner_stream_ids) == [b.stream_id]


@pytest.mark.slow
async def test_two_replicas_finish_each_match_once(clients: Clients, stack: Stack) -> None:
    replica = await asyncio.to_thread(stack.start_replica, "gifts")
    try:
        streams = [await go_live(clients) for _ in range(12)]
        fan = await make_account(clients, package_id="coins_330")
        pairs = [(streams[i], streams[i + 1]) for i in range(0, len(streams), 2)]
        matches = await asyncio.gather(*(start_match(clients, [x.stream_id, y.stream_id], 1) for x, y in pairs))
        await asyncio.gather(*(send(clients, fan, y.stream_id) for _, y in pairs))
        finals = await asyncio.gather(*(finished_match(clients, match.match_id) for match in matches))
    finally:
        await asyncio.to_thread(stop_process, replica.process)
    for (_, y), final in zip(pairs, finals, strict=True):
        assert list(final.match.winner_stream_ids) == [y.stream_id]
    await asyncio.sleep(1.0)
    for match in matches:
        assert len(await match_finished_events(stack, match.match_id)) == 1


@pytest.mark.slow
async def test_a_finisher_killed_before_its_commit_leaves_the_match_to_the_next_start(
    clients: Clients, stack: Stack
) -> None:
    a, b = await go_live(clients), await go_live(clients)
    fan = await make_account(clients, package_id="coins_330")
    with gifts_crashing_at(stack, "gifts.before_match_finished_commit"):
        match = await start_match(clients, [a.stream_id, b.stream_id], seconds=1)
        await send(clients, fan, a.stream_id, "finger_heart")
        # The finisher kills its process (SIGKILL) with the match stamped finished but not committed.
        await asyncio.to_thread(restart_after_crash, stack)
    final = await finished_match(clients, match.match_id)
    assert list(final.match.winner_stream_ids) == [a.stream_id]
    await asyncio.sleep(1.0)
    assert len(await match_finished_events(stack, match.match_id)) == 1
