"""A submit-first rail (Stripe Connect, PayPal) on the in-memory store: SUBMITTED is recorded before the provider is
called, a lost answer is resumed by the idempotency key (one payout), a submitted withdrawal cannot be canceled, and
the provider's later notices pay, fail or give back a payout once."""

from __future__ import annotations

import grpc
import pytest
from structlog.testing import capture_logs

from services.payouts import domain
from services.payouts.domain import PayoutNotice, PayoutOutcome, WithdrawalStatus
from services.payouts.payout_notices import NoticeOutcome, apply_payout_notice
from services.payouts.ports import PayoutState
from services.runtime.errors import AppError
from tests.fakes.payouts import ScriptedPayoutProvider
from tests.unit.payouts.helpers import CHECK_INTERVAL_SECONDS, Payouts, assert_ledger_agrees

RAIL = domain.PAYPAL_RAIL


async def with_withdrawal(diamonds: int = 2000) -> tuple[Payouts, str]:
    payouts = await Payouts(provider=ScriptedPayoutProvider(RAIL)).start()
    await payouts.verified("amy")
    await payouts.gifts("amy", 5000)
    withdrawal = await payouts.withdraw("amy", diamonds)
    return payouts, withdrawal.withdrawal_id


def withdrawal(payouts: Payouts, withdrawal_id: str) -> domain.Withdrawal:
    return payouts.store.state.withdrawals[withdrawal_id].withdrawal


def notice(withdrawal_id: str, outcome: PayoutOutcome | None, notification_id: str = "WH-1") -> PayoutNotice:
    return PayoutNotice(RAIL, notification_id, "PAYMENT.PAYOUTS-ITEM.X", withdrawal_id, outcome, "returned by PayPal")


async def test_a_withdrawal_records_its_provider_and_is_submitted_before_the_provider_is_called() -> None:
    payouts, withdrawal_id = await with_withdrawal()
    assert withdrawal(payouts, withdrawal_id).payout_provider == RAIL
    seen: list[WithdrawalStatus] = []
    submit = payouts.provider.submit

    async def watching(**call: object) -> object:
        seen.append(withdrawal(payouts, withdrawal_id).status)  # what the store holds while the provider has it
        return await submit(**call)  # type: ignore[arg-type]

    payouts.provider.submit = watching  # type: ignore[method-assign]
    payouts.provider.submit_state = PayoutState.PAID
    await payouts.worker.process_due_withdrawals()
    assert seen == [WithdrawalStatus.SUBMITTED]
    assert withdrawal(payouts, withdrawal_id).status is WithdrawalStatus.PAID
    assert payouts.balances("amy") == (3000, 0, 0)
    assert_ledger_agrees(payouts.store)


async def test_a_lost_answer_is_resumed_by_the_key_and_pays_once() -> None:
    payouts, withdrawal_id = await with_withdrawal()
    payouts.provider.lost_answers = 1
    with capture_logs():
        await payouts.worker.process_due_withdrawals()
    lost = withdrawal(payouts, withdrawal_id)
    assert (lost.status, lost.provider_reference) == (WithdrawalStatus.SUBMITTED, None)
    payouts.store.advance(CHECK_INTERVAL_SECONDS)
    await payouts.worker.process_due_withdrawals()
    assert payouts.provider.resumed == [withdrawal_id]
    assert payouts.provider.submitted == [withdrawal_id]  # found by the key: never submitted again
    assert withdrawal(payouts, withdrawal_id).status is WithdrawalStatus.PAID
    assert_ledger_agrees(payouts.store)


async def test_an_outage_leaves_it_submitted_and_the_cancel_is_refused() -> None:
    payouts, withdrawal_id = await with_withdrawal()
    payouts.provider.down = True
    with capture_logs():
        await payouts.worker.process_due_withdrawals()
    assert withdrawal(payouts, withdrawal_id).status is WithdrawalStatus.SUBMITTED
    with pytest.raises(AppError) as refused:
        await payouts.cancel(withdrawal_id)
    assert (refused.value.code, refused.value.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "WITHDRAWAL_NOT_CANCELABLE",
    )
    assert payouts.balances("amy") == (3000, 2000, 0)


async def test_a_pending_one_cancels_without_asking_the_provider() -> None:
    payouts, withdrawal_id = await with_withdrawal()
    payouts.provider.down = True  # nobody to ask: it never reached the provider
    assert (await payouts.cancel(withdrawal_id)).status is WithdrawalStatus.CANCELED
    assert payouts.balances("amy") == (5000, 0, 0)


async def test_the_sandbox_worker_never_takes_another_providers_withdrawals() -> None:
    payouts, withdrawal_id = await with_withdrawal()
    payouts.provider.name = domain.SANDBOX_RAIL
    assert await payouts.worker.process_due_withdrawals() == 0
    assert withdrawal(payouts, withdrawal_id).status is WithdrawalStatus.PENDING


async def test_notices_pay_then_give_back_once() -> None:
    payouts, withdrawal_id = await with_withdrawal()
    payouts.provider.submit_state = PayoutState.PROCESSING
    await payouts.worker.process_due_withdrawals()
    store = payouts.store
    assert await apply_payout_notice(store, notice(withdrawal_id, PayoutOutcome.PAID, "WH-1")) is NoticeOutcome.APPLIED
    assert (
        await apply_payout_notice(store, notice(withdrawal_id, PayoutOutcome.PAID, "WH-1")) is NoticeOutcome.DUPLICATE
    )
    assert payouts.balances("amy") == (3000, 0, 0)
    returned = notice(withdrawal_id, PayoutOutcome.RETURNED, "WH-2")
    assert await apply_payout_notice(store, returned) is NoticeOutcome.APPLIED
    again = notice(withdrawal_id, PayoutOutcome.RETURNED, "WH-3")  # another event with the same news
    assert await apply_payout_notice(store, again) is NoticeOutcome.NO_EFFECT
    found = withdrawal(payouts, withdrawal_id)
    assert (found.status, found.failure_reason) == (WithdrawalStatus.RETURNED, "returned by PayPal")
    assert payouts.balances("amy") == (5000, 0, 0)
    assert store.account_balance(domain.SYSTEM_PAID_OUT) == 0
    assert_ledger_agrees(store)


async def test_a_failure_notice_of_a_submitted_one_gives_the_diamonds_back_and_one_for_no_withdrawal_is_kept() -> None:
    payouts, withdrawal_id = await with_withdrawal()
    payouts.provider.submit_state = PayoutState.PROCESSING
    await payouts.worker.process_due_withdrawals()
    failed = notice(withdrawal_id, PayoutOutcome.FAILED, "WH-9")
    assert await apply_payout_notice(payouts.store, failed) is NoticeOutcome.APPLIED
    assert withdrawal(payouts, withdrawal_id).status is WithdrawalStatus.FAILED
    assert payouts.balances("amy") == (5000, 0, 0)
    unknown = notice("wd_unknown", PayoutOutcome.PAID, "WH-10")
    assert await apply_payout_notice(payouts.store, unknown) is NoticeOutcome.NO_EFFECT
    assert await apply_payout_notice(payouts.store, unknown) is NoticeOutcome.DUPLICATE
    assert_ledger_agrees(payouts.store)


@pytest.mark.parametrize(
    ("status", "outcome", "transition"),
    [
        (WithdrawalStatus.SUBMITTED, PayoutOutcome.PAID, domain.Transition.PAY),
        (WithdrawalStatus.SUBMITTED, PayoutOutcome.FAILED, domain.Transition.FAIL),
        (WithdrawalStatus.SUBMITTED, PayoutOutcome.RETURNED, domain.Transition.FAIL),
        (WithdrawalStatus.PAID, PayoutOutcome.RETURNED, domain.Transition.RETURN),
        (WithdrawalStatus.PAID, PayoutOutcome.FAILED, domain.Transition.RETURN),
        (WithdrawalStatus.PAID, PayoutOutcome.PAID, None),
        (WithdrawalStatus.RETURNED, PayoutOutcome.RETURNED, None),
        (WithdrawalStatus.FAILED, PayoutOutcome.RETURNED, None),
        (WithdrawalStatus.PENDING, PayoutOutcome.PAID, None),
        (WithdrawalStatus.CANCELED, PayoutOutcome.FAILED, None),
    ],
)
def test_what_an_outcome_does_to_each_status(
    status: WithdrawalStatus, outcome: PayoutOutcome, transition: domain.Transition | None
) -> None:
    assert domain.transition_for(status, outcome) is transition


def test_a_payout_still_processing_is_asked_about_less_and_less_often() -> None:
    assert domain.next_look_seconds(1.0, 0.0) == 1.0
    assert domain.next_look_seconds(1.0, 600.0) == 60.0
    assert domain.next_look_seconds(1.0, 30 * 86_400.0) == domain.MAX_LOOK_INTERVAL_SECONDS
