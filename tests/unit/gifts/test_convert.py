"""protobuf ⇄ domain (convert.py): a result kept with its key reads back as the result it kept and answers the
identical response; a command's key is the one the running release stores for the same request."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from coinstream.gifts.v1 import gifts_pb2
from google.protobuf.duration_pb2 import Duration

from services.gifts import convert, domain
from services.runtime.requests import Reply, RequestKey, fingerprint
from tests.unit.gifts.world import ROSE, send_request

MOMENT = datetime(2026, 1, 2, 3, 4, 5, 678_901, tzinfo=UTC)
Result = TypeVar("Result")


def kept_and_read(reply: Reply[Result], result: Result) -> Result:
    """What a replay answers: the result decoded from the stored bytes of its response message."""
    return reply.from_bytes(reply.to_message(result).SerializeToString())


def answers_the_same(reply: Reply[Result], result: Result) -> bool:
    first = reply.to_message(result).SerializeToString()
    return reply.to_message(kept_and_read(reply, result)).SerializeToString() == first


def test_every_kept_reply_reads_back_as_the_result_it_kept() -> None:
    assert kept_and_read(convert.GIFT_UPSERTED, ROSE) == ROSE
    assert kept_and_read(convert.GIFT_RETIRED, ROSE) == ROSE
    stream = domain.LiveStream("str_1", "amy", "hi", domain.StreamStatus.LIVE)
    assert kept_and_read(convert.STREAM_STARTED, stream) == stream
    ended = dataclasses.replace(stream, status=domain.StreamStatus.ENDED)
    assert kept_and_read(convert.STREAM_ENDED, ended) == ended
    for video in (domain.Video("v1", "amy", True), domain.Video("v2", "bob", False)):
        assert kept_and_read(convert.VIDEO_UPSERTED, video) == video
    sides = (domain.MatchSide("str_1", "amy", 0), domain.MatchSide("str_2", "bob", 0))
    match = domain.Match("mat_1", sides, domain.MatchStatus.ACTIVE, MOMENT, MOMENT + timedelta(minutes=5))
    assert kept_and_read(convert.MATCH_STARTED, match) == match
    to_stream = domain.GiftReceipt("gtx_1", "fan", "amy", "str_1", None, "rose", 3, 15, 2, 85)
    to_video = domain.GiftReceipt("gtx_2", "fan", "amy", None, "v1", "rose", 1, 5, 1, 0)
    for receipt in (to_stream, to_video):
        assert kept_and_read(convert.GIFT_SENT, receipt) == receipt


def test_what_the_api_does_not_show_reads_back_empty_and_answers_the_same() -> None:
    stream = domain.LiveStream("str_1", "amy", "hi", domain.StreamStatus.ENDED, match_id="mat_1", goal_id="goal_1")
    assert kept_and_read(convert.STREAM_ENDED, stream) == dataclasses.replace(stream, match_id=None, goal_id=None)
    assert answers_the_same(convert.STREAM_ENDED, stream)
    sides = (domain.MatchSide("str_1", "amy", 7), domain.MatchSide("str_2", "bob", 7))
    finished = domain.Match(
        "mat_1", sides, domain.MatchStatus.FINISHED, MOMENT, MOMENT, ("str_1", "str_2"), MOMENT + timedelta(1)
    )
    assert kept_and_read(convert.MATCH_STARTED, finished) == dataclasses.replace(finished, finished_at=None)
    for reached_at in (None, MOMENT):
        goal = domain.StreamGoal("goal_1", "str_1", "amy", 10, 12, "a cake", MOMENT, reached_at)
        assert kept_and_read(convert.GOAL_SET, goal) == dataclasses.replace(goal, creator_id="")
        assert answers_the_same(convert.GOAL_SET, goal)


def test_a_commands_key_is_the_runtimes_over_the_request() -> None:
    """Keys stored by the release that hashed the request message itself must match the commands' keys."""
    request = send_request("fan", ROSE, stream_id="str_1", quantity=3, request_id="fan/r1")
    command = convert.send_gift(request)
    assert command.key == RequestKey("fan/r1", "SendGift", fingerprint("SendGift", request))
    assert (command.request_id, command.target) == ("fan/r1", (domain.TargetKind.STREAM, "str_1"))
    to_video = convert.send_gift(send_request("fan", ROSE, video_id="v1"))
    assert to_video.target == (domain.TargetKind.VIDEO, "v1")
    match = gifts_pb2.StartMatchRequest(request_id="r2", stream_ids=["a", "b"], duration=Duration(seconds=90))
    started = convert.start_match(match)
    assert (started.key.method, started.stream_ids, started.duration) == (
        "StartMatch",
        ("a", "b"),
        timedelta(seconds=90),
    )
