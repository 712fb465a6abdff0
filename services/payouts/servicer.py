"""gRPC entrypoint of payouts: who may call (declared on each RPC), check input, convert the request to a command
(convert.py), call one use case, convert its result back."""

from __future__ import annotations

from coinstream.payouts.v1 import payouts_pb2, payouts_pb2_grpc

from services.payouts import convert, domain
from services.payouts.config import MAX_WITHDRAWAL_SETTING
from services.payouts.service import PayoutsService
from services.runtime import pages
from services.runtime.auth import ROLE_ADMIN, ROLE_SERVICE
from services.runtime.authorization import (
    allow_any_caller,
    allow_owner,
    allow_resource_owner,
    allow_roles,
    may_see_resource,
)
from services.runtime.idempotency import scope_to_caller
from services.runtime.interceptors import Context
from services.runtime.validation import Validator, page_size

# Far above any real withdrawal (the daily cap is 200,000) yet far from int64 overflow of the payout amount.
MAX_WITHDRAWAL_DIAMONDS = MAX_WITHDRAWAL_SETTING
MAX_DESTINATION_LENGTH = 256


class PayoutsServicer(payouts_pb2_grpc.PayoutServiceServicer):
    def __init__(self, payouts: PayoutsService) -> None:
        self._payouts = payouts

    @allow_owner("creator_id", or_roles=(ROLE_SERVICE, ROLE_ADMIN))
    async def GetEarnings(
        self, request: payouts_pb2.GetEarningsRequest, context: Context
    ) -> payouts_pb2.GetEarningsResponse:
        check = Validator()
        check.identifier(request.creator_id, "creator_id")
        check.raise_if_invalid()
        balances = await self._payouts.get_earnings(request.creator_id)
        return payouts_pb2.GetEarningsResponse(earnings=convert.earnings_message(balances))

    @allow_any_caller
    async def GetRates(self, request: payouts_pb2.GetRatesRequest, context: Context) -> payouts_pb2.GetRatesResponse:
        return payouts_pb2.GetRatesResponse(rates=convert.rates_message(await self._payouts.get_rates()))

    @allow_roles(ROLE_SERVICE, ROLE_ADMIN)
    async def UpdateCreatorProfile(
        self, request: payouts_pb2.UpdateCreatorProfileRequest, context: Context
    ) -> payouts_pb2.UpdateCreatorProfileResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.identifier(request.creator_id, "creator_id")
        check.text(request.payout_destination, "payout_destination", max_length=MAX_DESTINATION_LENGTH)
        check.raise_if_invalid()
        scope_to_caller(request)
        profile = await self._payouts.update_profile(convert.update_profile(request))
        return convert.PROFILE_UPDATED.to_message(profile)

    @allow_owner("creator_id", or_roles=(ROLE_SERVICE,))
    async def RequestWithdrawal(
        self, request: payouts_pb2.RequestWithdrawalRequest, context: Context
    ) -> payouts_pb2.RequestWithdrawalResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.identifier(request.creator_id, "creator_id")
        check.int_range(request.diamonds, "diamonds", minimum=1, maximum=MAX_WITHDRAWAL_DIAMONDS)
        check.raise_if_invalid()
        scope_to_caller(request)
        withdrawal = await self._payouts.request_withdrawal(convert.withdraw(request))
        return convert.WITHDRAWAL_REQUESTED.to_message(withdrawal)

    @allow_resource_owner(or_roles=(ROLE_SERVICE, ROLE_ADMIN))
    async def GetWithdrawal(
        self, request: payouts_pb2.GetWithdrawalRequest, context: Context
    ) -> payouts_pb2.GetWithdrawalResponse:
        check = Validator()
        check.opaque_id(request.withdrawal_id, "withdrawal_id")
        check.raise_if_invalid()
        withdrawal = await self._visible_withdrawal(request.withdrawal_id)
        return payouts_pb2.GetWithdrawalResponse(withdrawal=convert.withdrawal_message(withdrawal.view))

    # Staff may read any withdrawal but not cancel one: only its creator, or a backend acting for them, may.
    @allow_resource_owner(or_roles=(ROLE_SERVICE,))
    async def CancelWithdrawal(
        self, request: payouts_pb2.CancelWithdrawalRequest, context: Context
    ) -> payouts_pb2.CancelWithdrawalResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.opaque_id(request.withdrawal_id, "withdrawal_id")
        check.raise_if_invalid()
        # Before the request_id is claimed, so an intruder's refusal is never stored under it.
        await self._visible_withdrawal(request.withdrawal_id)
        scope_to_caller(request)
        withdrawal = await self._payouts.cancel_withdrawal(convert.cancel_withdrawal(request))
        return convert.WITHDRAWAL_CANCELED.to_message(withdrawal)

    async def _visible_withdrawal(self, withdrawal_id: str) -> domain.Withdrawal:
        """Someone else's withdrawal looks exactly like a missing one (NOT_FOUND), to a user."""
        withdrawal = await self._payouts.find_withdrawal(withdrawal_id)
        if withdrawal is None or not may_see_resource(withdrawal.creator_id):
            raise domain.withdrawal_not_found(withdrawal_id)
        return withdrawal

    @allow_owner("creator_id", or_roles=(ROLE_SERVICE, ROLE_ADMIN))
    async def ListWithdrawals(
        self, request: payouts_pb2.ListWithdrawalsRequest, context: Context
    ) -> payouts_pb2.ListWithdrawalsResponse:
        check = Validator()
        check.identifier(request.creator_id, "creator_id")
        size = page_size(check, request.page_size)
        check.text(request.page_token, "page_token", max_length=pages.MAX_PAGE_TOKEN_LENGTH, required=False)
        check.raise_if_invalid()
        page = await self._payouts.list_withdrawals(request.creator_id, size, request.page_token)
        return payouts_pb2.ListWithdrawalsResponse(
            withdrawals=[convert.withdrawal_message(row.view) for row in page.items],
            next_page_token=page.next_page_token,
        )

    @allow_owner("creator_id", or_roles=(ROLE_SERVICE, ROLE_ADMIN))
    async def ListEarnings(
        self, request: payouts_pb2.ListEarningsRequest, context: Context
    ) -> payouts_pb2.ListEarningsResponse:
        check = Validator()
        check.identifier(request.creator_id, "creator_id")
        group_by = convert.group_by(request.group_by)
        if group_by is None:
            check.fail("group_by", "must be EARNINGS_GROUP_BY_DAY, EARNINGS_GROUP_BY_STREAM or EARNINGS_GROUP_BY_VIDEO")
        size = page_size(check, request.page_size)
        check.text(request.page_token, "page_token", max_length=pages.MAX_PAGE_TOKEN_LENGTH, required=False)
        check.raise_if_invalid()
        assert group_by is not None
        page = await self._payouts.list_earnings(request.creator_id, group_by, size, request.page_token)
        return payouts_pb2.ListEarningsResponse(
            rows=[convert.earnings_row_message(row) for row in page.items], next_page_token=page.next_page_token
        )

    @allow_owner("creator_id", or_roles=(ROLE_SERVICE, ROLE_ADMIN))
    async def ListClawbacks(
        self, request: payouts_pb2.ListClawbacksRequest, context: Context
    ) -> payouts_pb2.ListClawbacksResponse:
        check = Validator()
        check.identifier(request.creator_id, "creator_id")
        size = page_size(check, request.page_size)
        check.text(request.page_token, "page_token", max_length=pages.MAX_PAGE_TOKEN_LENGTH, required=False)
        check.raise_if_invalid()
        page = await self._payouts.list_clawbacks(request.creator_id, size, request.page_token)
        return payouts_pb2.ListClawbacksResponse(
            clawbacks=[convert.clawback_message(row) for row in page.items], next_page_token=page.next_page_token
        )
