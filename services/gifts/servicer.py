"""gRPC entrypoint of the gifts service: who may call each RPC (declared on it, checked before anything else),
then check the input, convert the request (convert.py; a mutation's into a command keyed by its caller-scoped
request), call one use case, and convert its result back."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import structlog
from coinstream.gifts.v1 import gifts_pb2, gifts_pb2_grpc
from prometheus_client import Counter

from services.gifts import convert, domain
from services.gifts.config import MatchDurations, StreamLimits
from services.gifts.service import GiftService
from services.runtime.auth import ROLE_ADMIN, ROLE_SERVICE, current_principal
from services.runtime.authorization import (
    allow_any_caller,
    allow_owner,
    allow_resource_owner,
    allow_roles,
    require_resource_owner,
)
from services.runtime.errors import AppError
from services.runtime.idempotency import scope_to_caller
from services.runtime.interceptors import Context, answer_for_unexpected, loggable_request_id
from services.runtime.streams import answer_concurrently
from services.runtime.validation import Validator, page_size

# A SendGifts stream is one call in coinstream_rpc_total, however many gifts it carries: each gift's outcome is
# counted here, by the code SendGift would have answered.
STREAMED_GIFTS = Counter("coinstream_streamed_gifts_total", "Gifts answered inside SendGifts streams", ["code"])
_STREAMED_GIFT_SERIES = {code.value[0]: STREAMED_GIFTS.labels(code.name) for code in grpc.StatusCode}


class GiftServicer(gifts_pb2_grpc.GiftServiceServicer):
    def __init__(
        self,
        gifts: GiftService,
        match_durations: MatchDurations | None = None,
        stream_limits: StreamLimits | None = None,
    ) -> None:
        self._gifts = gifts
        self._match_durations = match_durations or MatchDurations()
        self._stream_limits = stream_limits or StreamLimits()

    @allow_any_caller
    async def ListGifts(self, request: gifts_pb2.ListGiftsRequest, context: Context) -> gifts_pb2.ListGiftsResponse:
        gifts = await self._gifts.list_gifts()
        return gifts_pb2.ListGiftsResponse(gifts=[convert.gift_catalog_message(gift) for gift in gifts])

    @allow_owner("creator_id", or_roles=(ROLE_SERVICE,))
    async def StartLiveStream(
        self, request: gifts_pb2.StartLiveStreamRequest, context: Context
    ) -> gifts_pb2.StartLiveStreamResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.identifier(request.creator_id, "creator_id")
        check.text(request.title, "title", max_length=domain.MAX_TITLE_LENGTH)
        check.raise_if_invalid()
        scope_to_caller(request)
        stream = await self._gifts.start_live_stream(convert.start_stream(request))
        return convert.STREAM_STARTED.to_message(stream)

    @allow_resource_owner(or_roles=(ROLE_SERVICE,))
    async def EndLiveStream(
        self, request: gifts_pb2.EndLiveStreamRequest, context: Context
    ) -> gifts_pb2.EndLiveStreamResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.opaque_id(request.stream_id, "stream_id")
        check.raise_if_invalid()
        # Only the stream's creator (or a service) may end it, so the stream is looked up to authorize.
        stream = await self._gifts.get_stream(request.stream_id)
        require_resource_owner(stream.creator_id)
        scope_to_caller(request)
        stream = await self._gifts.end_live_stream(convert.end_stream(request))
        return convert.STREAM_ENDED.to_message(stream)

    @allow_owner("sender_id", or_roles=(ROLE_SERVICE,))
    async def SendGift(self, request: gifts_pb2.SendGiftRequest, context: Context) -> gifts_pb2.SendGiftResponse:
        _check_send_gift(request)
        scope_to_caller(request)
        receipt = await self._gifts.send_gift(convert.send_gift(request))
        return convert.GIFT_SENT.to_message(receipt)

    @allow_roles(ROLE_SERVICE)
    async def SendGifts(
        self, request_iterator: AsyncIterator[gifts_pb2.SendGiftRequest], context: Context
    ) -> AsyncIterator[gifts_pb2.SendGiftsResponse]:
        # Service only: the requests name many senders, and one check at the stream's start must cover them all.
        limit = self._stream_limits.max_in_flight
        async for response in answer_concurrently(request_iterator, self._send_one_of_many, limit):
            _STREAMED_GIFT_SERIES[response.error.code].inc()  # (no error: code 0, OK)
            yield response

    async def _send_one_of_many(self, request: gifts_pb2.SendGiftRequest) -> gifts_pb2.SendGiftsResponse:
        """One SendGifts request, answered as SendGift would answer it — a refusal included, so the stream goes on."""
        request_id = request.request_id  # as sent: scope_to_caller rewrites the request's
        structlog.contextvars.bind_contextvars(request_id=loggable_request_id(request))  # this gift's task only
        try:
            _check_send_gift(request)
            scope_to_caller(request)
            command = convert.send_gift(request)
            receipt = await self._gifts.send_gift_waiting(command, self._stream_limits.admission_wait_seconds)
        except AppError as refusal:
            return gifts_pb2.SendGiftsResponse(request_id=request_id, error=refusal.to_rpc_status())
        except Exception as error:
            failure = answer_for_unexpected(error)
            return gifts_pb2.SendGiftsResponse(request_id=request_id, error=failure.to_rpc_status())
        return gifts_pb2.SendGiftsResponse(request_id=request_id, gift=convert.GIFT_SENT.to_message(receipt))

    @allow_any_caller
    async def GetStreamSummary(
        self, request: gifts_pb2.GetStreamSummaryRequest, context: Context
    ) -> gifts_pb2.GetStreamSummaryResponse:
        check = Validator()
        check.opaque_id(request.stream_id, "stream_id")
        check.raise_if_invalid()
        summary = await self._gifts.get_stream_summary(request.stream_id)
        return gifts_pb2.GetStreamSummaryResponse(summary=convert.stream_summary_message(summary))

    @allow_any_caller
    async def WatchStreamGifts(
        self, request: gifts_pb2.WatchStreamGiftsRequest, context: Context
    ) -> AsyncIterator[gifts_pb2.WatchStreamGiftsResponse]:
        check = Validator()
        check.opaque_id(request.stream_id, "stream_id")
        check.raise_if_invalid()

        async def subscribed() -> None:
            # Headers go out once the watcher is registered: a client awaiting initial_metadata() knows that every
            # gift completed from then on reaches it.
            await context.send_initial_metadata(())

        principal = current_principal()
        # A trusted backend (service role) fans feeds out to many viewers; anyone else has a share of their own.
        caller = None if ROLE_SERVICE in principal.roles else principal.subject
        async for response in self._gifts.watch_stream_gifts(
            request.stream_id, subscribed, caller, with_updates=request.include_match_and_goal_updates
        ):
            yield response

    @allow_any_caller
    async def GetLeaderboard(
        self, request: gifts_pb2.GetLeaderboardRequest, context: Context
    ) -> gifts_pb2.GetLeaderboardResponse:
        check = Validator()
        check.identifier(request.creator_id, "creator_id")
        if request.period not in convert.LEADERBOARD_PERIODS:
            check.fail("period", "must be one of LEADERBOARD_PERIOD_DAY, _WEEK, _ALL_TIME")
        size = page_size(
            check,
            request.page_size,
            default=domain.LEADERBOARD_DEFAULT_PAGE_SIZE,
            maximum=domain.LEADERBOARD_MAX_PAGE_SIZE,
        )
        check.raise_if_invalid()
        period = convert.LEADERBOARD_PERIODS[request.period]
        ranked = await self._gifts.get_leaderboard(request.creator_id, period, size)
        return gifts_pb2.GetLeaderboardResponse(entries=convert.leaderboard_entries(ranked))

    @allow_roles(ROLE_ADMIN)
    async def UpsertGift(self, request: gifts_pb2.UpsertGiftRequest, context: Context) -> gifts_pb2.UpsertGiftResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.identifier(request.gift.gift_id, "gift.gift_id")
        check.text(request.gift.name, "gift.name", max_length=domain.MAX_GIFT_NAME_LENGTH)
        check.int_range(
            request.gift.coin_price, "gift.coin_price", minimum=domain.MIN_COIN_PRICE, maximum=domain.MAX_COIN_PRICE
        )
        check.raise_if_invalid()
        scope_to_caller(request)
        gift = await self._gifts.upsert_gift(convert.upsert_gift(request))
        return convert.GIFT_UPSERTED.to_message(gift)

    @allow_roles(ROLE_ADMIN)
    async def RetireGift(self, request: gifts_pb2.RetireGiftRequest, context: Context) -> gifts_pb2.RetireGiftResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.identifier(request.gift_id, "gift_id")
        check.raise_if_invalid()
        scope_to_caller(request)
        gift = await self._gifts.retire_gift(convert.retire_gift(request))
        return convert.GIFT_RETIRED.to_message(gift)

    @allow_roles(ROLE_SERVICE, ROLE_ADMIN)
    async def UpsertVideo(
        self, request: gifts_pb2.UpsertVideoRequest, context: Context
    ) -> gifts_pb2.UpsertVideoResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.identifier(request.video_id, "video_id")
        check.identifier(request.creator_id, "creator_id")
        check.raise_if_invalid()
        scope_to_caller(request)
        video = await self._gifts.upsert_video(convert.upsert_video(request))
        return convert.VIDEO_UPSERTED.to_message(video)

    @allow_any_caller
    async def GetVideoSummary(
        self, request: gifts_pb2.GetVideoSummaryRequest, context: Context
    ) -> gifts_pb2.GetVideoSummaryResponse:
        check = Validator()
        check.identifier(request.video_id, "video_id")
        check.raise_if_invalid()
        summary = await self._gifts.get_video_summary(request.video_id)
        return gifts_pb2.GetVideoSummaryResponse(summary=convert.video_summary_message(summary))

    @allow_roles(ROLE_SERVICE, ROLE_ADMIN)
    async def StartMatch(self, request: gifts_pb2.StartMatchRequest, context: Context) -> gifts_pb2.StartMatchResponse:
        check = Validator()
        check.request_id(request.request_id)
        if not domain.MIN_MATCH_SIDES <= len(request.stream_ids) <= domain.MAX_MATCH_SIDES:
            check.fail("stream_ids", f"must list {domain.MIN_MATCH_SIDES}-{domain.MAX_MATCH_SIDES} live streams")
        elif len(set(request.stream_ids)) != len(request.stream_ids):
            check.fail("stream_ids", "must be distinct")
        for index, stream_id in enumerate(request.stream_ids[: domain.MAX_MATCH_SIDES]):
            check.opaque_id(stream_id, f"stream_ids[{index}]")
        self._match_durations.check(check, request.duration)
        check.raise_if_invalid()
        scope_to_caller(request)
        match = await self._gifts.start_match(convert.start_match(request))
        return convert.MATCH_STARTED.to_message(match)

    @allow_any_caller
    async def GetMatch(self, request: gifts_pb2.GetMatchRequest, context: Context) -> gifts_pb2.GetMatchResponse:
        check = Validator()
        check.opaque_id(request.match_id, "match_id")
        check.raise_if_invalid()
        return convert.get_match_response(await self._gifts.get_match(request.match_id))

    @allow_resource_owner(or_roles=(ROLE_SERVICE,))
    async def SetStreamGoal(
        self, request: gifts_pb2.SetStreamGoalRequest, context: Context
    ) -> gifts_pb2.SetStreamGoalResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.opaque_id(request.stream_id, "stream_id")
        check.int_range(
            request.target_coins, "target_coins", minimum=domain.MIN_GOAL_TARGET, maximum=domain.MAX_GOAL_TARGET
        )
        check.text(request.description, "description", max_length=domain.MAX_GOAL_DESCRIPTION_LENGTH, required=False)
        check.raise_if_invalid()
        # Only the stream's creator (or a service) may set its goal, so the stream is looked up to authorize.
        stream = await self._gifts.get_stream(request.stream_id)
        require_resource_owner(stream.creator_id)
        scope_to_caller(request)
        goal = await self._gifts.set_stream_goal(convert.set_goal(request))
        return convert.GOAL_SET.to_message(goal)


def _check_send_gift(request: gifts_pb2.SendGiftRequest) -> None:
    """SendGift's input rules, for SendGift and each request of SendGifts."""
    check = Validator()
    check.request_id(request.request_id)
    check.identifier(request.sender_id, "sender_id")
    if request.stream_id and request.video_id:
        check.fail("video_id", "set exactly one of stream_id and video_id")
    elif request.video_id:
        check.identifier(request.video_id, "video_id")
    else:
        check.opaque_id(request.stream_id, "stream_id")
    check.identifier(request.gift_id, "gift_id")
    check.int_range(request.quantity, "quantity", minimum=domain.MIN_QUANTITY, maximum=domain.MAX_QUANTITY)
    check.raise_if_invalid()
