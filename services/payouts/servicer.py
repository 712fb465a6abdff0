"""gRPC entrypoint of payouts: who may call (declared on each RPC), check input, call one use case, and the one place
where protobuf and the domain meet (requests, replies and enums)."""

from __future__ import annotations

from typing import Any

import grpc
from coinstream.payouts.v1 import payouts_pb2, payouts_pb2_grpc
from coinstream.type.v1 import money_pb2

from services.payouts import domain
from services.payouts.ports import IdempotentRequest
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
from services.runtime.validation import Validator, page_size

# Far above any real withdrawal (the daily cap is 200,000) yet far from int64 overflow of the payout amount.
MAX_WITHDRAWAL_DIAMONDS = 10_000_000_000
MAX_DESTINATION_LENGTH = 256

Context = grpc.aio.ServicerContext[Any, Any]


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
        return payouts_pb2.GetEarningsResponse(earnings=earnings_message(balances))

    @allow_any_caller
    async def GetRates(self, request: payouts_pb2.GetRatesRequest, context: Context) -> payouts_pb2.GetRatesResponse:
        return payouts_pb2.GetRatesResponse(rates=rates_message(await self._payouts.get_rates()))

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
        profile = domain.CreatorProfile(request.creator_id, request.kyc_verified, request.payout_destination)
        once = IdempotentRequest(request, payouts_pb2.UpdateCreatorProfileResponse, _profile_updated)
        return await self._payouts.update_profile(profile, once)

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
        once = IdempotentRequest(request, payouts_pb2.RequestWithdrawalResponse, _withdrawal_requested)
        return await self._payouts.request_withdrawal(request.request_id, request.creator_id, request.diamonds, once)

    @allow_resource_owner(or_roles=(ROLE_SERVICE, ROLE_ADMIN))
    async def GetWithdrawal(
        self, request: payouts_pb2.GetWithdrawalRequest, context: Context
    ) -> payouts_pb2.GetWithdrawalResponse:
        check = Validator()
        check.opaque_id(request.withdrawal_id, "withdrawal_id")
        check.raise_if_invalid()
        withdrawal = await self._visible_withdrawal(request.withdrawal_id)
        return payouts_pb2.GetWithdrawalResponse(withdrawal=withdrawal_message(withdrawal))

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
        once = IdempotentRequest(request, payouts_pb2.CancelWithdrawalResponse, _withdrawal_canceled)
        return await self._payouts.cancel_withdrawal(request.withdrawal_id, once)

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
            withdrawals=[withdrawal_message(row) for row in page.rows], next_page_token=page.next_page_token
        )

    @allow_owner("creator_id", or_roles=(ROLE_SERVICE, ROLE_ADMIN))
    async def ListEarnings(
        self, request: payouts_pb2.ListEarningsRequest, context: Context
    ) -> payouts_pb2.ListEarningsResponse:
        check = Validator()
        check.identifier(request.creator_id, "creator_id")
        group_by = _GROUP_BY.get(request.group_by)
        if group_by is None:
            check.fail("group_by", "must be EARNINGS_GROUP_BY_DAY, EARNINGS_GROUP_BY_STREAM or EARNINGS_GROUP_BY_VIDEO")
        size = page_size(check, request.page_size)
        check.text(request.page_token, "page_token", max_length=pages.MAX_PAGE_TOKEN_LENGTH, required=False)
        check.raise_if_invalid()
        assert group_by is not None
        page = await self._payouts.list_earnings(request.creator_id, group_by, size, request.page_token)
        return payouts_pb2.ListEarningsResponse(
            rows=[
                payouts_pb2.EarningsRow(key=row.key, diamonds=row.diamonds, gift_count=row.gift_count)
                for row in page.rows
            ],
            next_page_token=page.next_page_token,
        )


# --- protobuf ⇄ domain ------------------------------------------------------------------------------------------------

_GROUP_BY = {
    payouts_pb2.EARNINGS_GROUP_BY_DAY: domain.EarningsGroupBy.DAY,
    payouts_pb2.EARNINGS_GROUP_BY_STREAM: domain.EarningsGroupBy.STREAM,
    payouts_pb2.EARNINGS_GROUP_BY_VIDEO: domain.EarningsGroupBy.VIDEO,
}
_STATUS = {
    domain.WithdrawalStatus.PENDING: payouts_pb2.WITHDRAWAL_STATUS_PENDING,
    domain.WithdrawalStatus.PAID: payouts_pb2.WITHDRAWAL_STATUS_PAID,
    domain.WithdrawalStatus.FAILED: payouts_pb2.WITHDRAWAL_STATUS_FAILED,
    domain.WithdrawalStatus.CANCELED: payouts_pb2.WITHDRAWAL_STATUS_CANCELED,
}


def withdrawal_message(withdrawal: domain.Withdrawal) -> payouts_pb2.Withdrawal:
    return payouts_pb2.Withdrawal(
        withdrawal_id=withdrawal.withdrawal_id,
        creator_id=withdrawal.creator_id,
        diamonds=withdrawal.diamonds,
        payout=money_pb2.Money(
            currency_code=withdrawal.payout_currency_code, amount_minor=withdrawal.payout_amount_minor
        ),
        status=_STATUS[withdrawal.status],
        failure_reason=withdrawal.failure_reason,
    )


def earnings_message(balances: domain.Balances) -> payouts_pb2.Earnings:
    return payouts_pb2.Earnings(
        creator_id=balances.creator_id,
        available_diamonds=balances.available_diamonds,
        reserved_diamonds=balances.reserved_diamonds,
        lifetime_diamonds=balances.lifetime_diamonds,
        pending_diamonds=balances.pending_diamonds,
    )


def rates_message(rates: domain.Rates) -> payouts_pb2.Rates:
    rate, policy = rates.settlement, rates.withdrawal
    return payouts_pb2.Rates(
        diamonds_per_coin_numerator=rate.numerator,
        diamonds_per_coin_denominator=rate.denominator,
        diamond_value_per_1000=money_pb2.Money(
            currency_code=policy.currency_code, amount_minor=policy.value_per_1000_minor
        ),
        minimum_withdrawal_diamonds=policy.minimum_diamonds,
        daily_withdrawal_cap_diamonds=policy.daily_cap_diamonds,
        rate_version=rate.version,
    )


def _profile_updated(profile: domain.CreatorProfile) -> payouts_pb2.UpdateCreatorProfileResponse:
    return payouts_pb2.UpdateCreatorProfileResponse(
        profile=payouts_pb2.CreatorProfile(
            creator_id=profile.creator_id,
            kyc_verified=profile.kyc_verified,
            payout_destination=profile.payout_destination,
        )
    )


def _withdrawal_requested(withdrawal: domain.Withdrawal) -> payouts_pb2.RequestWithdrawalResponse:
    return payouts_pb2.RequestWithdrawalResponse(withdrawal=withdrawal_message(withdrawal))


def _withdrawal_canceled(withdrawal: domain.Withdrawal) -> payouts_pb2.CancelWithdrawalResponse:
    return payouts_pb2.CancelWithdrawalResponse(withdrawal=withdrawal_message(withdrawal))
