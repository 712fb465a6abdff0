"""The rules of video gifts, matches and goals without servers: who may be gifted, who wins, when a goal is first
reached, which durations a match may have, and how the live feed routes match and goal updates."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from coinstream.events.v1 import events_pb2
from coinstream.gifts.v1 import gifts_pb2
from google.protobuf.duration_pb2 import Duration

from services.gifts import domain, events
from services.gifts.config import MatchDurations
from services.gifts.feed import GiftFeed
from services.runtime import messaging
from services.runtime.errors import AppError
from services.runtime.messaging import GIFT_SENT_SUBJECT
from services.runtime.validation import Validator

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
ROSE = domain.CatalogGift("rose", "Rose", 1)


def refused(function: Callable[..., object], *args: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(AppError) as error:
        function(*args)
    return error.value.code, error.value.reason


class TestVideoGifts:
    def test_a_video_that_takes_gifts_from_someone_else_is_giftable(self) -> None:
        video = domain.Video("v1", "creator", gifts_enabled=True)
        assert domain.require_giftable_video(video, "v1", ROSE, "rose", "fan") == (video, ROSE)

    def test_refusals(self) -> None:
        video = domain.Video("v1", "creator", gifts_enabled=True)
        off = domain.Video("v1", "creator", gifts_enabled=False)
        require = domain.require_giftable_video
        assert refused(require, None, "v1", ROSE, "rose", "fan") == (grpc.StatusCode.NOT_FOUND, "VIDEO_NOT_FOUND")
        assert refused(require, off, "v1", ROSE, "rose", "fan") == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "VIDEO_NOT_GIFTABLE",
        )
        assert refused(require, video, "v1", None, "rose", "fan") == (grpc.StatusCode.NOT_FOUND, "GIFT_NOT_FOUND")
        assert refused(require, video, "v1", ROSE, "rose", "creator") == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "SELF_GIFT",
        )

    def test_a_videos_creator_is_fixed(self) -> None:
        domain.require_same_video_creator(None, "anyone")
        domain.require_same_video_creator(domain.Video("v1", "creator", True), "creator")
        assert refused(domain.require_same_video_creator, domain.Video("v1", "creator", True), "other") == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "VIDEO_CREATOR_MISMATCH",
        )

    def test_counters_keep_streams_and_videos_apart(self) -> None:
        gifts = [
            domain.CountedGift("s1", "creator", "fan-a", 5),
            domain.CountedGift(None, "creator", "fan-a", 30, video_id="v1"),
            domain.CountedGift(None, "creator", "fan-b", 1, video_id="v1"),
            domain.CountedGift("s1", "creator", "fan-b", 100),
        ]
        assert domain.total_increments(gifts, domain.TargetKind.STREAM) == [("s1", 105, 2)]
        assert domain.total_increments(gifts, domain.TargetKind.VIDEO) == [("v1", 31, 2)]
        assert domain.gifter_increments(gifts, domain.TargetKind.VIDEO) == [("v1", "fan-a", 30), ("v1", "fan-b", 1)]
        # The creator's leaderboards count both.
        by_sender = {(i.sender_id, i.period): i.coins for i in domain.leaderboard_increments(gifts, T0)}
        assert by_sender[("fan-a", domain.LeaderboardPeriod.DAY)] == 35


def live(stream_id: str, creator_id: str, match_id: str | None = None) -> domain.LiveStream:
    return domain.LiveStream(stream_id, creator_id, "title", domain.StreamStatus.LIVE, match_id)


class TestMatches:
    def test_sides_are_the_streams_in_the_order_asked(self) -> None:
        streams = {"s1": live("s1", "c1"), "s2": live("s2", "c2")}
        assert [s.stream_id for s in domain.require_matchable(streams, ["s2", "s1"])] == ["s2", "s1"]

    def test_unknown_ended_and_busy_streams_are_refused(self) -> None:
        ended = domain.LiveStream("s2", "c2", "t", domain.StreamStatus.ENDED)
        busy = live("s3", "c3", match_id="mat_1")
        streams = {"s1": live("s1", "c1"), "s2": ended, "s3": busy}
        assert refused(domain.require_matchable, streams, ["s1", "nope"])[1] == "STREAM_NOT_FOUND"
        assert refused(domain.require_matchable, streams, ["s1", "s2"])[1] == "STREAM_NOT_LIVE"
        assert refused(domain.require_matchable, streams, ["s1", "s3"]) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "STREAM_IN_MATCH",
        )

    @pytest.mark.parametrize(
        ("scores", "winners"),
        [
            ((10, 3), ("a",)),
            ((3, 10, 10), ("b", "c")),
            ((0, 0), ("a", "b")),
            ((7, 7, 7, 7), ("a", "b", "c", "d")),
        ],
    )
    def test_the_highest_scores_win(self, scores: tuple[int, ...], winners: tuple[str, ...]) -> None:
        sides = [
            domain.MatchSide(stream_id, f"c-{stream_id}", score)
            for stream_id, score in zip("abcd"[: len(scores)], scores, strict=True)
        ]
        assert domain.match_winners(sides) == winners

    @pytest.mark.parametrize(
        ("seconds", "nanos", "valid"),
        [
            (30, 0, True),
            (3600, 0, True),
            (29, 999_999_999, False),
            (3600, 1_000, False),
            (3600, 999, True),
            (-30, 0, False),
            (45, 5, True),
        ],
    )
    def test_durations(self, seconds: int, nanos: int, valid: bool) -> None:
        check = Validator()
        MatchDurations().check(check, Duration(seconds=seconds, nanos=nanos))
        assert (not check.violations) == valid
        assert all(v.field == "duration" for v in check.violations)


class TestGoals:
    def goal(self, progress: int, reached: bool, target: int = 100) -> domain.StreamGoal:
        return domain.StreamGoal("goal_1", "s1", "c1", target, progress, "", T0, T0 if reached else None)

    def test_reached_by_the_coins_that_cross_the_target_only(self) -> None:
        assert domain.goal_just_reached(self.goal(100, True), added_coins=30)  # 70 → 100
        assert domain.goal_just_reached(self.goal(150, True), added_coins=100)  # 50 → 150
        assert not domain.goal_just_reached(self.goal(130, True), added_coins=30)  # 100 → 130: reached before
        assert not domain.goal_just_reached(self.goal(99, False), added_coins=99)

    def test_goals_are_set_on_live_streams(self) -> None:
        ended = domain.LiveStream("s1", "c1", "t", domain.StreamStatus.ENDED)
        assert refused(domain.require_goal_settable, ended, "s1")[1] == "STREAM_NOT_LIVE"
        assert refused(domain.require_goal_settable, None, "s1")[1] == "STREAM_NOT_FOUND"


def match(match_id: str, scores: dict[str, int]) -> domain.Match:
    sides = tuple(domain.MatchSide(stream_id, f"c-{stream_id}", score) for stream_id, score in scores.items())
    return domain.Match(match_id, sides, domain.MatchStatus.ACTIVE, T0, T0 + timedelta(minutes=1))


class TestFeedRouting:
    async def test_match_updates_reach_every_sides_watchers_once_and_the_result_ends_nothing(self) -> None:
        feed = GiftFeed(max_watchers=10, watcher_queue_size=10, stuck_grace_seconds=1.0)
        with (
            feed.watch("s1", with_updates=True) as first,
            feed.watch("s2", with_updates=True) as second,
            feed.watch("s3", with_updates=True) as outsider,
            feed.watch("s1") as gifts_only,
        ):
            update = events.match_updated(match("mat_1", {"s1": 5, "s2": 0}))
            feed.route(messaging.MATCH_UPDATED_SUBJECT, update.payload)
            feed.route(messaging.MATCH_UPDATED_SUBJECT, update.payload)  # republished: dropped
            finished = match("mat_1", {"s1": 5, "s2": 0})
            finished = domain.Match(
                finished.match_id,
                finished.sides,
                domain.MatchStatus.FINISHED,
                finished.starts_at,
                finished.ends_at,
                ("s1",),
                T0 + timedelta(minutes=1),
            )
            feed.route(messaging.MATCH_FINISHED_SUBJECT, events.match_finished(finished).payload)
            for watcher in (first, second):
                scoreboard = await asyncio.wait_for(watcher.next(), 1.0)
                result = await asyncio.wait_for(watcher.next(), 1.0)
                assert scoreboard is not None and result is not None
                assert [(s.stream_id, s.score_coins) for s in scoreboard.match.sides] == [("s1", 5), ("s2", 0)]
                assert list(result.match.winner_stream_ids) == ["s1"]
                assert result.match.status == gifts_pb2.MATCH_STATUS_FINISHED
            for watcher in (outsider, gifts_only):
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(watcher.next(), 0.1)

    async def test_an_update_published_again_after_a_newer_one_is_dropped(self) -> None:
        feed = GiftFeed(max_watchers=10, watcher_queue_size=10, stuck_grace_seconds=1.0)
        with feed.watch("s1", with_updates=True) as watcher:
            older = events.match_updated(match("mat_1", {"s1": 5, "s2": 0}))
            newer = events.match_updated(match("mat_1", {"s1": 5, "s2": 30}))
            # The relay's publish of the older one failed (never seen here) while the newer one went through; its
            # next round publishes the older one after the newer: first seen here, it must not turn the score back.
            feed.route(messaging.MATCH_UPDATED_SUBJECT, newer.payload)
            feed.route(messaging.MATCH_UPDATED_SUBJECT, older.payload)
            shown = [await asyncio.wait_for(watcher.next(), 1.0)]
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(watcher.next(), 0.1)
        assert [[s.score_coins for s in update.match.sides] for update in shown if update] == [[5, 30]]

    async def test_goal_updates_reach_the_streams_watchers(self) -> None:
        feed = GiftFeed(max_watchers=10, watcher_queue_size=10, stuck_grace_seconds=1.0)
        with feed.watch("s1", with_updates=True) as watcher:
            goal = domain.StreamGoal("goal_1", "s1", "c1", 100, 120, "Mic", T0, T0 + timedelta(seconds=5))
            feed.route(messaging.GOAL_UPDATED_SUBJECT, events.goal_updated(goal).payload)
            update = await asyncio.wait_for(watcher.next(), 1.0)
        assert update is not None
        assert (update.goal.goal_id, update.goal.progress_coins, update.goal.HasField("reached_at")) == (
            "goal_1",
            120,
            True,
        )

    async def test_video_gifts_have_no_feed(self) -> None:
        feed = GiftFeed(max_watchers=10, watcher_queue_size=10, stuck_grace_seconds=1.0)
        with feed.watch("") as watcher:  # not a stream id anyone could watch: the worst case of a missing check
            sent = events_pb2.GiftSent(gift_transaction_id="g1", video_id="v1", recipient_id="c1", coins=1)
            feed.route(GIFT_SENT_SUBJECT, sent.SerializeToString())
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(watcher.next(), 0.1)
