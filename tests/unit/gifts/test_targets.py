"""Where gifts count beyond their stream on fakes: video gifts, matches (the window a gift counts in, the winners)
and stream goals (progress, reached once)."""

from __future__ import annotations

import grpc
from coinstream.events.v1 import events_pb2
from coinstream.gifts.v1 import gifts_pb2

from services.gifts import convert, domain
from services.gifts.domain import TargetKind, Totals
from services.runtime import messaging
from services.runtime.ids import new_id
from services.runtime.messaging import GIFT_SENT_SUBJECT
from tests.unit.gifts.world import LION, ROSE, World, refused


async def a_world() -> World:
    world = World()
    await world.catalog(ROSE, LION)
    return world


async def upsert_video(world: World, video_id: str, creator_id: str, *, gifts_enabled: bool = True) -> None:
    request = gifts_pb2.UpsertVideoRequest(
        request_id=new_id("req"), video_id=video_id, creator_id=creator_id, gifts_enabled=gifts_enabled
    )
    await world.gifts.upsert_video(convert.upsert_video(request))


class TestVideoGifts:
    async def test_a_video_gift_is_paid_and_counted_on_the_video(self) -> None:
        world = await a_world()
        await upsert_video(world, "v1", "maker")
        fan = world.fan("fan", 100)
        response = await world.send(fan, ROSE, video_id="v1", quantity=2)
        assert (response.video_id, response.stream_id, response.recipient_id) == ("v1", None, "maker")
        assert world.wallet.debits(fan) == [10]
        summary = await world.gifts.get_video_summary("v1")
        assert (summary.totals, summary.top_gifters) == (Totals(10, 1), [(fan, 10)])
        (sent,) = world.store.events(GIFT_SENT_SUBJECT)
        assert events_pb2.GiftSent.FromString(sent.payload).video_id == "v1"

    async def test_a_video_without_gifts_or_unknown_refuses_before_the_wallet(self) -> None:
        world = await a_world()
        await upsert_video(world, "v1", "maker", gifts_enabled=False)
        fan = world.fan("fan", 100)
        assert await refused(world.send(fan, ROSE, video_id="v1")) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "VIDEO_NOT_GIFTABLE",
        )
        assert await refused(world.send(fan, ROSE, video_id="v2")) == (grpc.StatusCode.NOT_FOUND, "VIDEO_NOT_FOUND")
        assert world.wallet.calls == 0

    async def test_combos_are_per_target(self) -> None:
        world = await a_world()
        await upsert_video(world, "v1", "maker")
        stream_id = await world.live_stream("maker")
        fan = world.fan("fan", 100)
        assert (await world.send(fan, ROSE, video_id="v1")).combo_count == 1
        assert (await world.send(fan, ROSE, stream_id=stream_id)).combo_count == 1
        assert (await world.send(fan, ROSE, video_id="v1")).combo_count == 2

    async def test_a_videos_creator_is_fixed(self) -> None:
        world = await a_world()
        await upsert_video(world, "v1", "maker")
        assert await refused(upsert_video(world, "v1", "thief")) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "VIDEO_CREATOR_MISMATCH",
        )


class TestMatches:
    async def test_a_gift_counts_in_its_streams_match(self) -> None:
        world = await a_world()
        red, blue = await world.live_stream("red"), await world.live_stream("blue")
        match = await world.start_match(red, blue)
        await world.send(world.fan("fan", 1_000), LION, stream_id=red)
        view = await world.gifts.get_match(match.match_id)
        assert [(s.stream_id, s.score_coins) for s in view.match.sides] == [(red, 500), (blue, 0)]
        assert [(s.stream_id, s.account_id, s.coins) for s in view.top_supporters] == [(red, "fan", 500)]
        updates = [
            events_pb2.MatchUpdated.FromString(row.payload)
            for row in world.store.events(messaging.MATCH_UPDATED_SUBJECT)
        ]
        assert [[side.score_coins for side in u.sides] for u in updates] == [[0, 0], [500, 0]]  # the start, the gift

    async def test_a_gift_completed_at_the_matchs_end_is_not_counted(self) -> None:
        world = await a_world()
        red, blue = await world.live_stream("red"), await world.live_stream("blue")
        match = await world.start_match(red, blue, seconds=60)
        world.clock.advance(60)  # ends_at is exclusive
        await world.send(world.fan("fan", 1_000), LION, stream_id=red)
        view = await world.gifts.get_match(match.match_id)
        assert [s.score_coins for s in view.match.sides] == [0, 0]
        assert (await world.gifts.get_stream_summary(red)).totals == Totals(500, 1)  # the stream counts it

    async def test_the_finisher_names_the_winners_and_frees_the_streams(self) -> None:
        world = await a_world()
        red, blue = await world.live_stream("red"), await world.live_stream("blue")
        match = await world.start_match(red, blue, seconds=60)
        await world.send(world.fan("fan", 1_000), ROSE, stream_id=blue)
        assert await world.gifts.finish_due_matches() == 0  # not over yet
        world.clock.advance(60)
        assert await world.gifts.finish_due_matches() == 1
        finished = (await world.gifts.get_match(match.match_id)).match
        assert (finished.status, finished.winner_stream_ids) == (domain.MatchStatus.FINISHED, (blue,))
        (result,) = world.store.events(messaging.MATCH_FINISHED_SUBJECT)
        assert list(events_pb2.MatchFinished.FromString(result.payload).winner_stream_ids) == [blue]
        assert (await world.gifts.get_stream_summary(red)).active_match_id is None
        await world.start_match(red, blue)  # free for another match

    async def test_a_stream_in_a_match_cannot_join_another(self) -> None:
        world = await a_world()
        red, blue, green = await world.live_stream("red"), await world.live_stream("blue"), await world.live_stream("g")
        await world.start_match(red, blue)
        assert await refused(world.start_match(green, blue)) == (grpc.StatusCode.FAILED_PRECONDITION, "STREAM_IN_MATCH")


class TestGoals:
    async def test_gifts_fill_the_goal_and_reach_it_once(self) -> None:
        world = await a_world()
        stream_id = await world.live_stream("creator")
        goal = await world.set_goal(stream_id, target_coins=10)
        fan = world.fan("fan", 100)
        for _ in range(3):
            await world.send(fan, ROSE, stream_id=stream_id)
        summary = await world.gifts.get_stream_summary(stream_id)
        assert summary.goal is not None and summary.goal.goal_id == goal.goal_id
        assert (summary.goal.progress_coins, summary.goal.reached_at) == (15, world.clock.now())
        reached = world.store.events(messaging.GOAL_REACHED_SUBJECT)
        assert [row.msg_id for row in reached] == [f"goal_reached:{goal.goal_id}"]
        assert len(world.store.events(messaging.GOAL_UPDATED_SUBJECT)) == 4  # set, then one per gift

    async def test_a_new_goal_replaces_the_open_one(self) -> None:
        world = await a_world()
        stream_id = await world.live_stream("creator")
        await world.set_goal(stream_id, target_coins=10)
        second = await world.set_goal(stream_id, target_coins=50)
        await world.send(world.fan("fan", 100), ROSE, stream_id=stream_id)
        summary = await world.gifts.get_stream_summary(stream_id)
        assert summary.goal is not None and (summary.goal.goal_id, summary.goal.progress_coins) == (second.goal_id, 5)

    async def test_an_ended_stream_takes_no_goal(self) -> None:
        world = await a_world()
        stream_id = await world.live_stream("creator")
        await world.end_stream(stream_id)
        assert await refused(world.set_goal(stream_id, 10)) == (grpc.StatusCode.FAILED_PRECONDITION, "STREAM_NOT_LIVE")
        assert world.store.tables.totals[(TargetKind.STREAM, stream_id)] == Totals(0, 0)
