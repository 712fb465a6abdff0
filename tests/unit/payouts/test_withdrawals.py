"""Withdrawal requests and cancels against the in-memory store: what may be withdrawn, the limits, idempotency."""

from __future__ import annotations

import grpc
import pytest
from structlog.testing import capture_logs

from services.payouts import domain
from services.runtime.errors import AppError
from tests.unit.payouts.helpers import Payouts, assert_ledger_agrees


async def creator_with(diamonds: int, creator_id: str = "amy") -> Payouts:
    payouts = await Payouts().start()
    await payouts.verified(creator_id)
    if diamonds:
        await payouts.gifts(creator_id, diamonds)
    return payouts


async def refusal(payouts: Payouts, creator_id: str, diamonds: int) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(AppError) as error:
        await payouts.withdraw(creator_id, diamonds)
    return error.value.code, error.value.reason


# --- requests ---------------------------------------------------------------------------------------------------------


async def test_a_withdrawal_reserves_its_diamonds_and_prices_the_payout() -> None:
    payouts = await creator_with(5000)
    withdrawal = await payouts.withdraw("amy", 3000)
    assert (withdrawal.diamonds, withdrawal.status) == (3000, domain.WithdrawalStatus.PENDING)
    assert (withdrawal.payout_currency_code, withdrawal.payout_amount_minor) == ("USD", 1500)
    assert payouts.balances("amy") == (2000, 3000, 0)
    stored = payouts.store.state.withdrawals[withdrawal.withdrawal_id].withdrawal
    assert stored.payout_destination == "bank:alice"  # the profile's destination, captured now
    assert_ledger_agrees(payouts.store)


async def test_only_available_diamonds_can_be_withdrawn() -> None:
    payouts = await creator_with(4000)
    await payouts.withdraw("amy", 3000)  # 1,000 left available, 3,000 reserved
    assert await refusal(payouts, "amy", 2000) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_DIAMONDS")
    assert payouts.balances("amy") == (1000, 3000, 0)


async def test_pending_diamonds_cannot_be_withdrawn_before_their_hold_is_over() -> None:
    payouts = await Payouts(hold_seconds=3600).start()
    await payouts.verified("amy")
    await payouts.gifts("amy", 5000)
    assert await refusal(payouts, "amy", 2000) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_DIAMONDS")


async def test_a_creator_without_a_verified_profile_cannot_withdraw() -> None:
    payouts = await Payouts().start()
    await payouts.gifts("bob", 5000)
    assert await refusal(payouts, "bob", 2000) == (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_NOT_ELIGIBLE")


async def test_a_withdrawal_below_the_minimum_is_refused() -> None:
    payouts = await creator_with(5000)
    assert await refusal(payouts, "amy", 1998) == (grpc.StatusCode.FAILED_PRECONDITION, "BELOW_MINIMUM_WITHDRAWAL")
    assert payouts.balances("amy") == (5000, 0, 0)


async def test_a_withdrawal_not_worth_whole_cents_is_refused() -> None:
    payouts = await creator_with(5000)
    assert await refusal(payouts, "amy", 2001) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert (await payouts.withdraw("amy", 2002)).payout_amount_minor == 1001


async def test_the_daily_cap_counts_pending_and_paid_withdrawals_of_the_last_24_hours() -> None:
    payouts = await creator_with(400_000)
    await payouts.withdraw("amy", 150_000)
    assert await refusal(payouts, "amy", 50_002) == (grpc.StatusCode.FAILED_PRECONDITION, "WITHDRAWAL_LIMIT_EXCEEDED")
    await payouts.withdraw("amy", 50_000)  # exactly at the cap
    payouts.store.advance(24 * 3600 - 1)
    assert await refusal(payouts, "amy", 2000) == (grpc.StatusCode.FAILED_PRECONDITION, "WITHDRAWAL_LIMIT_EXCEEDED")
    payouts.store.advance(1)  # the first ones are 24 hours old now
    await payouts.withdraw("amy", 150_000)
    assert payouts.balances("amy") == (50_000, 350_000, 0)


async def test_canceled_withdrawals_do_not_count_toward_the_cap() -> None:
    payouts = await creator_with(400_000)
    first = await payouts.withdraw("amy", 200_000)
    await payouts.cancel(first.withdrawal_id)
    await payouts.withdraw("amy", 200_000)


async def test_the_cap_is_per_creator() -> None:
    payouts = await creator_with(200_000)
    await payouts.verified("bob")
    await payouts.gifts("bob", 2000)
    await payouts.withdraw("amy", 200_000)
    await payouts.withdraw("bob", 2000)


# --- idempotency ------------------------------------------------------------------------------------------------------


async def test_a_retried_request_returns_the_same_withdrawal_and_reserves_once() -> None:
    payouts = await creator_with(5000)
    first = await payouts.withdraw("amy", 2000, request_id="r1")
    again = await payouts.withdraw("amy", 2000, request_id="r1")
    assert again == first
    assert payouts.balances("amy") == (3000, 2000, 0)


async def test_a_request_id_used_for_another_request_is_refused() -> None:
    payouts = await creator_with(5000)
    await payouts.withdraw("amy", 2000, request_id="r1")
    with pytest.raises(AppError) as error:
        await payouts.withdraw("amy", 2002, request_id="r1")
    assert error.value.reason == "REQUEST_ID_REUSED"


async def test_a_refusal_is_the_final_answer_to_its_request_id() -> None:
    payouts = await creator_with(1000)
    with pytest.raises(AppError):
        await payouts.withdraw("amy", 2000, request_id="r1")
    await payouts.gifts("amy", 5000)
    with pytest.raises(AppError) as error:
        await payouts.withdraw("amy", 2000, request_id="r1")
    assert error.value.reason == "INSUFFICIENT_DIAMONDS"
    assert payouts.balances("amy") == (6000, 0, 0)


# --- cancel -----------------------------------------------------------------------------------------------------------


async def test_canceling_returns_the_diamonds_and_stays_canceled() -> None:
    payouts = await creator_with(5000)
    withdrawal = await payouts.withdraw("amy", 2000)
    canceled = await payouts.cancel(withdrawal.withdrawal_id)
    assert canceled.status is domain.WithdrawalStatus.CANCELED
    assert payouts.balances("amy") == (5000, 0, 0)
    again = await payouts.cancel(withdrawal.withdrawal_id)  # another request_id: canceled already, nothing moves
    assert again.status is domain.WithdrawalStatus.CANCELED
    assert payouts.balances("amy") == (5000, 0, 0)
    kinds = [kind for kind, _ in payouts.store.state.ledger_transactions.values()]
    assert kinds.count("withdrawal_canceled") == 1
    assert_ledger_agrees(payouts.store)


async def test_a_withdrawal_the_provider_is_already_paying_cannot_be_canceled() -> None:
    payouts = await creator_with(5000)
    withdrawal = await payouts.withdraw("amy", 2000)
    payouts.provider.lets_go = False
    with pytest.raises(AppError) as error:
        await payouts.cancel(withdrawal.withdrawal_id)
    assert error.value.reason == "WITHDRAWAL_NOT_CANCELABLE"
    assert payouts.balances("amy") == (3000, 2000, 0)


async def test_a_cancel_the_provider_did_not_answer_is_not_stored_and_can_be_retried() -> None:
    payouts = await creator_with(5000)
    withdrawal = await payouts.withdraw("amy", 2000)
    payouts.provider.down = True
    with capture_logs(), pytest.raises(AppError) as error:  # captured, not rendered: a traceback takes long
        await payouts.cancel(withdrawal.withdrawal_id, request_id="c1")
    assert (error.value.code, error.value.reason) == (grpc.StatusCode.UNAVAILABLE, "PAYOUT_PROVIDER_UNAVAILABLE")
    payouts.provider.down = False
    canceled = await payouts.cancel(withdrawal.withdrawal_id, request_id="c1")
    assert canceled.status is domain.WithdrawalStatus.CANCELED


async def test_a_finished_withdrawal_cannot_be_canceled() -> None:
    payouts = await creator_with(5000)
    withdrawal = await payouts.withdraw("amy", 2000)
    await payouts.worker.process_due_withdrawals()  # submitted
    payouts.store.advance(5)
    await payouts.worker.process_due_withdrawals()  # paid
    with pytest.raises(AppError) as error:
        await payouts.cancel(withdrawal.withdrawal_id)
    assert error.value.reason == "WITHDRAWAL_NOT_CANCELABLE"
    assert payouts.store.state.withdrawals[withdrawal.withdrawal_id].withdrawal.status is domain.WithdrawalStatus.PAID
