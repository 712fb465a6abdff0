"""protobuf ⇄ domain for payouts, in one place: requests into the use cases' commands, their results into responses,
enums both ways, and the Reply of each idempotent RPC (its result kept as the response message, so a replay decodes
the stored message and answers the identical response).

GiftSent events are decoded where they arrive, by the settlement consumer (settlement.py) and its dead letters: that
is the consumer's entrypoint, as the servicer is the RPCs'."""

from __future__ import annotations

from coinstream.payouts.v1 import payouts_pb2
from coinstream.type.v1 import money_pb2
from google.protobuf import timestamp_pb2

from services.payouts import domain
from services.runtime.requests import MessageReply, RequestKey

GROUP_BY_FROM_PROTO = {
    payouts_pb2.EARNINGS_GROUP_BY_DAY: domain.EarningsGroupBy.DAY,
    payouts_pb2.EARNINGS_GROUP_BY_STREAM: domain.EarningsGroupBy.STREAM,
    payouts_pb2.EARNINGS_GROUP_BY_VIDEO: domain.EarningsGroupBy.VIDEO,
}
STATUS_TO_PROTO = {
    domain.WithdrawalStatus.PENDING: payouts_pb2.WITHDRAWAL_STATUS_PENDING,
    domain.WithdrawalStatus.SUBMITTED: payouts_pb2.WITHDRAWAL_STATUS_SUBMITTED,
    domain.WithdrawalStatus.PAID: payouts_pb2.WITHDRAWAL_STATUS_PAID,
    domain.WithdrawalStatus.FAILED: payouts_pb2.WITHDRAWAL_STATUS_FAILED,
    domain.WithdrawalStatus.CANCELED: payouts_pb2.WITHDRAWAL_STATUS_CANCELED,
    # The API has no status of its own for it (payouts.proto: FAILED covers returned and unclaimed payouts): the
    # diamonds are back, and failure_reason says it was returned.
    domain.WithdrawalStatus.RETURNED: payouts_pb2.WITHDRAWAL_STATUS_FAILED,
}
# The replies kept with request_ids: a withdrawal as it was requested or canceled, never returned.
STATUS_FROM_PROTO = {
    proto: status for status, proto in STATUS_TO_PROTO.items() if status is not domain.WithdrawalStatus.RETURNED
}


# --- requests -------------------------------------------------------------------------------------------------------


def update_profile(request: payouts_pb2.UpdateCreatorProfileRequest) -> domain.UpdateProfile:
    profile = domain.CreatorProfile(request.creator_id, request.kyc_verified, request.payout_destination)
    return domain.UpdateProfile(RequestKey.of(request), profile)


def withdraw(request: payouts_pb2.RequestWithdrawalRequest) -> domain.Withdraw:
    return domain.Withdraw(RequestKey.of(request), request.creator_id, request.diamonds)


def cancel_withdrawal(request: payouts_pb2.CancelWithdrawalRequest) -> domain.CancelWithdrawal:
    return domain.CancelWithdrawal(RequestKey.of(request), request.withdrawal_id)


def group_by(value: payouts_pb2.EarningsGroupBy.ValueType) -> domain.EarningsGroupBy | None:
    """None for EARNINGS_GROUP_BY_UNSPECIFIED or a value this release does not know (the servicer refuses both)."""
    return GROUP_BY_FROM_PROTO.get(value)


# --- results --------------------------------------------------------------------------------------------------------


def withdrawal_message(withdrawal: domain.WithdrawalView) -> payouts_pb2.Withdrawal:
    return payouts_pb2.Withdrawal(
        withdrawal_id=withdrawal.withdrawal_id,
        creator_id=withdrawal.creator_id,
        diamonds=withdrawal.diamonds,
        payout=money_pb2.Money(
            currency_code=withdrawal.payout_currency_code, amount_minor=withdrawal.payout_amount_minor
        ),
        status=STATUS_TO_PROTO[withdrawal.status],
        failure_reason=withdrawal.failure_reason,
    )


def withdrawal_from_message(message: payouts_pb2.Withdrawal) -> domain.WithdrawalView:
    return domain.WithdrawalView(
        withdrawal_id=message.withdrawal_id,
        creator_id=message.creator_id,
        diamonds=message.diamonds,
        payout_currency_code=message.payout.currency_code,
        payout_amount_minor=message.payout.amount_minor,
        status=STATUS_FROM_PROTO[message.status],
        failure_reason=message.failure_reason,
    )


def profile_message(profile: domain.CreatorProfile) -> payouts_pb2.CreatorProfile:
    return payouts_pb2.CreatorProfile(
        creator_id=profile.creator_id,
        kyc_verified=profile.kyc_verified,
        payout_destination=profile.payout_destination,
    )


def profile_from_message(message: payouts_pb2.CreatorProfile) -> domain.CreatorProfile:
    return domain.CreatorProfile(message.creator_id, message.kyc_verified, message.payout_destination)


def earnings_message(balances: domain.Balances) -> payouts_pb2.Earnings:
    return payouts_pb2.Earnings(
        creator_id=balances.creator_id,
        available_diamonds=balances.available_diamonds,
        reserved_diamonds=balances.reserved_diamonds,
        lifetime_diamonds=balances.lifetime_diamonds,
        pending_diamonds=balances.pending_diamonds,
        clawed_back_diamonds=balances.clawed_back_diamonds,
        debt_diamonds=balances.debt_diamonds,
    )


def clawback_message(clawback: domain.ClawbackView) -> payouts_pb2.Clawback:
    clawed_back_at = timestamp_pb2.Timestamp()
    clawed_back_at.FromDatetime(clawback.clawed_back_at)
    return payouts_pb2.Clawback(
        gift_transaction_id=clawback.gift_transaction_id,
        coins=clawback.coins,
        diamonds=clawback.diamonds,
        from_pending_diamonds=clawback.from_pending,
        from_available_diamonds=clawback.from_available,
        debt_diamonds=clawback.to_debt,
        clawed_back_at=clawed_back_at,
        reversal_id=clawback.reversal_id,
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


def earnings_row_message(row: domain.EarningsRow) -> payouts_pb2.EarningsRow:
    return payouts_pb2.EarningsRow(key=row.key, diamonds=row.diamonds, gift_count=row.gift_count)


# --- what idempotent RPCs keep with their keys ----------------------------------------------------------------------


PROFILE_UPDATED: MessageReply[domain.CreatorProfile, payouts_pb2.UpdateCreatorProfileResponse] = MessageReply(
    payouts_pb2.UpdateCreatorProfileResponse,
    lambda profile: payouts_pb2.UpdateCreatorProfileResponse(profile=profile_message(profile)),
    lambda message: profile_from_message(message.profile),
)
WITHDRAWAL_REQUESTED: MessageReply[domain.WithdrawalView, payouts_pb2.RequestWithdrawalResponse] = MessageReply(
    payouts_pb2.RequestWithdrawalResponse,
    lambda withdrawal: payouts_pb2.RequestWithdrawalResponse(withdrawal=withdrawal_message(withdrawal)),
    lambda message: withdrawal_from_message(message.withdrawal),
)
WITHDRAWAL_CANCELED: MessageReply[domain.WithdrawalView, payouts_pb2.CancelWithdrawalResponse] = MessageReply(
    payouts_pb2.CancelWithdrawalResponse,
    lambda withdrawal: payouts_pb2.CancelWithdrawalResponse(withdrawal=withdrawal_message(withdrawal)),
    lambda message: withdrawal_from_message(message.withdrawal),
)
