"""gRPC entrypoint of the gifts service: check input, check who is calling, call one use case."""

from __future__ import annotations

import grpc
from coinstream.gifts.v1 import gifts_pb2, gifts_pb2_grpc

from services.gifts import domain
from services.gifts.service import GiftService
from services.runtime.auth import ROLE_SERVICE, current_principal
from services.runtime.validation import Validator

OWNER_OR_SERVICE = (ROLE_SERVICE,)


class GiftServicer(gifts_pb2_grpc.GiftServiceServicer):
    def __init__(self, gifts: GiftService) -> None:
        self._gifts = gifts

    async def ListGifts(
        self, request: gifts_pb2.ListGiftsRequest, context: grpc.aio.ServicerContext
    ) -> gifts_pb2.ListGiftsResponse:
        return gifts_pb2.ListGiftsResponse(gifts=await self._gifts.list_gifts())

    async def StartLiveStream(
        self, request: gifts_pb2.StartLiveStreamRequest, context: grpc.aio.ServicerContext
    ) -> gifts_pb2.StartLiveStreamResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.identifier(request.creator_id, "creator_id")
        check.text(request.title, "title", max_length=domain.MAX_TITLE_LENGTH)
        check.raise_if_invalid()
        current_principal().require_account_access(request.creator_id, privileged_roles=OWNER_OR_SERVICE)
        return await self._gifts.start_live_stream(request)

    async def EndLiveStream(
        self, request: gifts_pb2.EndLiveStreamRequest, context: grpc.aio.ServicerContext
    ) -> gifts_pb2.EndLiveStreamResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.opaque_id(request.stream_id, "stream_id")
        check.raise_if_invalid()
        # Only the stream's creator (or a service) may end it, so the stream is looked up to authorize.
        stream = await self._gifts.get_stream(request.stream_id)
        current_principal().require_account_access(stream.creator_id, privileged_roles=OWNER_OR_SERVICE)
        return await self._gifts.end_live_stream(request)

    async def SendGift(
        self, request: gifts_pb2.SendGiftRequest, context: grpc.aio.ServicerContext
    ) -> gifts_pb2.SendGiftResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.identifier(request.sender_id, "sender_id")
        check.opaque_id(request.stream_id, "stream_id")
        check.identifier(request.gift_id, "gift_id")
        check.int_range(request.quantity, "quantity", minimum=domain.MIN_QUANTITY, maximum=domain.MAX_QUANTITY)
        check.raise_if_invalid()
        current_principal().require_account_access(request.sender_id, privileged_roles=OWNER_OR_SERVICE)
        return await self._gifts.send_gift(request)

    async def GetStreamSummary(
        self, request: gifts_pb2.GetStreamSummaryRequest, context: grpc.aio.ServicerContext
    ) -> gifts_pb2.GetStreamSummaryResponse:
        check = Validator()
        check.opaque_id(request.stream_id, "stream_id")
        check.raise_if_invalid()
        return gifts_pb2.GetStreamSummaryResponse(summary=await self._gifts.get_stream_summary(request.stream_id))
