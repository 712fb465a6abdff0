"""gRPC entrypoint of payouts: check input, check who is calling, call one use case."""

from __future__ import annotations

import grpc
from coinstream.payouts.v1 import payouts_pb2, payouts_pb2_grpc

from services.payouts.domain import EarningsGroupBy
from services.payouts.service import OWNER_OR_STAFF, PayoutsService
from services.runtime.auth import ROLE_ADMIN, ROLE_SERVICE, current_principal
from services.runtime.idempotency import scope_to_caller
from services.runtime.validation import Validator, page_size

# Far above any real withdrawal (the daily cap is 200,000) yet far from int64 overflow of the payout amount.
MAX_WITHDRAWAL_DIAMONDS = 10_000_000_000
MAX_DESTINATION_LENGTH = 256
MAX_PAGE_TOKEN_LENGTH = 512
_GROUP_BY = {
    payouts_pb2.EARNINGS_GROUP_BY_DAY: EarningsGroupBy.DAY,
    payouts_pb2.EARNINGS_GROUP_BY_STREAM: EarningsGroupBy.STREAM,
    payouts_pb2.EARNINGS_GROUP_BY_VIDEO: EarningsGroupBy.VIDEO,
}


class PayoutsServicer(payouts_pb2_grpc.PayoutServiceServicer):
    def __init__(self, payouts: PayoutsService) -> None:
        self._payouts = payouts

    async def GetEarnings(
        self, request: payouts_pb2.GetEarningsRequest, context: grpc.aio.ServicerContext
    ) -> payouts_pb2.GetEarningsResponse:
        check = Validator()
        check.identifier(request.creator_id, "creator_id")
        check.raise_if_invalid()
        current_principal().require_account_access(request.creator_id, privileged_roles=OWNER_OR_STAFF)
        return payouts_pb2.GetEarningsResponse(earnings=await self._payouts.get_earnings(request.creator_id))

    async def GetRates(
        self, request: payouts_pb2.GetRatesRequest, context: grpc.aio.ServicerContext
    ) -> payouts_pb2.GetRatesResponse:
        return payouts_pb2.GetRatesResponse(rates=await self._payouts.get_rates())

    async def UpdateCreatorProfile(
        self, request: payouts_pb2.UpdateCreatorProfileRequest, context: grpc.aio.ServicerContext
    ) -> payouts_pb2.UpdateCreatorProfileResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.identifier(request.creator_id, "creator_id")
        check.text(request.payout_destination, "payout_destination", max_length=MAX_DESTINATION_LENGTH)
        check.raise_if_invalid()
        current_principal().require_any_role(ROLE_SERVICE, ROLE_ADMIN)
        scope_to_caller(request)
        return await self._payouts.update_profile(request)

    async def RequestWithdrawal(
        self, request: payouts_pb2.RequestWithdrawalRequest, context: grpc.aio.ServicerContext
    ) -> payouts_pb2.RequestWithdrawalResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.identifier(request.creator_id, "creator_id")
        check.int_range(request.diamonds, "diamonds", minimum=1, maximum=MAX_WITHDRAWAL_DIAMONDS)
        check.raise_if_invalid()
        current_principal().require_account_access(request.creator_id, privileged_roles=(ROLE_SERVICE,))
        scope_to_caller(request)
        return await self._payouts.request_withdrawal(request)

    async def GetWithdrawal(
        self, request: payouts_pb2.GetWithdrawalRequest, context: grpc.aio.ServicerContext
    ) -> payouts_pb2.GetWithdrawalResponse:
        check = Validator()
        check.opaque_id(request.withdrawal_id, "withdrawal_id")
        check.raise_if_invalid()
        # Authorization needs the withdrawal's creator, so the use case applies it (hiding others' withdrawals).
        withdrawal = await self._payouts.get_withdrawal(request.withdrawal_id, current_principal())
        return payouts_pb2.GetWithdrawalResponse(withdrawal=withdrawal)

    async def CancelWithdrawal(
        self, request: payouts_pb2.CancelWithdrawalRequest, context: grpc.aio.ServicerContext
    ) -> payouts_pb2.CancelWithdrawalResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.opaque_id(request.withdrawal_id, "withdrawal_id")
        check.raise_if_invalid()
        # Authorization needs the withdrawal's creator, so the use case applies it (hiding others' withdrawals).
        scope_to_caller(request)
        return await self._payouts.cancel_withdrawal(request, current_principal())

    async def ListWithdrawals(
        self, request: payouts_pb2.ListWithdrawalsRequest, context: grpc.aio.ServicerContext
    ) -> payouts_pb2.ListWithdrawalsResponse:
        check = Validator()
        check.identifier(request.creator_id, "creator_id")
        size = page_size(check, request.page_size)
        check.text(request.page_token, "page_token", max_length=MAX_PAGE_TOKEN_LENGTH, required=False)
        check.raise_if_invalid()
        current_principal().require_account_access(request.creator_id, privileged_roles=OWNER_OR_STAFF)
        return await self._payouts.list_withdrawals(request.creator_id, size, request.page_token)

    async def ListEarnings(
        self, request: payouts_pb2.ListEarningsRequest, context: grpc.aio.ServicerContext
    ) -> payouts_pb2.ListEarningsResponse:
        check = Validator()
        check.identifier(request.creator_id, "creator_id")
        group_by = _GROUP_BY.get(request.group_by)
        if group_by is None:
            check.fail("group_by", "must be EARNINGS_GROUP_BY_DAY, EARNINGS_GROUP_BY_STREAM or EARNINGS_GROUP_BY_VIDEO")
        size = page_size(check, request.page_size)
        check.text(request.page_token, "page_token", max_length=MAX_PAGE_TOKEN_LENGTH, required=False)
        check.raise_if_invalid()
        assert group_by is not None
        current_principal().require_account_access(request.creator_id, privileged_roles=OWNER_OR_STAFF)
        return await self._payouts.list_earnings(request.creator_id, group_by, size, request.page_token)
