"""The payout worker against the in-memory store and a scripted provider: paid withdrawals leave the platform,
failed ones give their diamonds back, a provider outage loses nothing."""

from __future__ import annotations

from structlog.testing import capture_logs

from services.payouts import domain
from services.payouts.domain import WithdrawalStatus
from services.payouts.ports import PayoutState
from tests.unit.payouts.helpers import CHECK_INTERVAL_SECONDS, Payouts, assert_ledger_agrees


async def with_withdrawal(diamonds: int = 2000) -> tuple[Payouts, str]:
    payouts = await Payouts().start()
    await payouts.verified("amy")
    await payouts.gifts("amy", 5000)
    withdrawal = await payouts.withdraw("amy", diamonds)
    return payouts, withdrawal.withdrawal_id


def status_of(payouts: Payouts, withdrawal_id: str) -> domain.Withdrawal:
    return payouts.store.state.withdrawals[withdrawal_id].withdrawal


async def test_a_paid_withdrawal_moves_its_diamonds_out_of_the_platform() -> None:
    payouts, withdrawal_id = await with_withdrawal()
    assert await payouts.worker.process_due_withdrawals() == 1
    submitted = status_of(payouts, withdrawal_id)
    assert (submitted.status, submitted.provider_reference) == (WithdrawalStatus.PENDING, f"ref-{withdrawal_id}")
    assert await payouts.worker.process_due_withdrawals() == 0  # not due again before the check interval
    payouts.store.advance(CHECK_INTERVAL_SECONDS)
    assert await payouts.worker.process_due_withdrawals() == 1
    assert status_of(payouts, withdrawal_id).status is WithdrawalStatus.PAID
    assert payouts.balances("amy") == (3000, 0, 0)
    assert payouts.store.account_balance(domain.SYSTEM_PAID_OUT) == 2000
    assert payouts.provider.submitted == [withdrawal_id]
    assert_ledger_agrees(payouts.store)


async def test_a_failed_payout_returns_the_diamonds_and_frees_the_daily_cap() -> None:
    payouts, withdrawal_id = await with_withdrawal(2000)
    payouts.provider.submit_state = PayoutState.FAILED
    await payouts.worker.process_due_withdrawals()
    failed = status_of(payouts, withdrawal_id)
    assert (failed.status, failed.failure_reason) == (WithdrawalStatus.FAILED, "the bank refused the payout")
    assert payouts.balances("amy") == (5000, 0, 0)
    assert payouts.store.account_balance(domain.SYSTEM_PAID_OUT) == 0
    assert [kind for kind, _ in payouts.store.state.ledger_transactions.values()].count("withdrawal_returned") == 1
    assert_ledger_agrees(payouts.store)


async def test_a_payout_failing_after_submission_returns_the_diamonds() -> None:
    payouts, withdrawal_id = await with_withdrawal()
    payouts.provider.status_state = PayoutState.FAILED
    await payouts.worker.process_due_withdrawals()
    payouts.store.advance(CHECK_INTERVAL_SECONDS)
    await payouts.worker.process_due_withdrawals()
    assert status_of(payouts, withdrawal_id).status is WithdrawalStatus.FAILED
    assert payouts.balances("amy") == (5000, 0, 0)


async def test_a_provider_outage_leaves_the_withdrawal_pending_for_a_later_look() -> None:
    payouts, withdrawal_id = await with_withdrawal()
    payouts.provider.down = True
    with capture_logs() as logs:  # captured, not rendered: a traceback's rendering takes most of a second
        assert await payouts.worker.process_due_withdrawals() == 1
    assert [entry["event"] for entry in logs] == ["payout_provider_call_failed"]
    assert status_of(payouts, withdrawal_id).status is WithdrawalStatus.PENDING
    assert await payouts.worker.process_due_withdrawals() == 0  # postponed, behind the others
    payouts.provider.down = False
    payouts.store.advance(CHECK_INTERVAL_SECONDS)
    await payouts.worker.process_due_withdrawals()
    payouts.store.advance(CHECK_INTERVAL_SECONDS)
    await payouts.worker.process_due_withdrawals()
    assert status_of(payouts, withdrawal_id).status is WithdrawalStatus.PAID
    assert payouts.balances("amy") == (3000, 0, 0)


async def test_the_worker_handles_at_most_its_batch_per_pass() -> None:
    payouts = await Payouts().start()
    await payouts.verified("amy")
    await payouts.gifts("amy", 200_000)
    for _ in range(12):
        await payouts.withdraw("amy", 2000)
    assert await payouts.worker.process_due_withdrawals() == 10
    assert await payouts.worker.process_due_withdrawals() == 2
