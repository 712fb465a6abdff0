"""The payout worker: moves its provider's withdrawals through the payout provider to PAID or FAILED.

One withdrawal at a time, locked (FOR UPDATE SKIP LOCKED, so replicas share the work without waiting on each other),
only those of this worker's provider (each withdrawal records the provider it was requested under).

The sandbox: in one transaction holding the row lock, submit it if it was never submitted, else ask the provider
about it, then record what the provider said. A crash between the provider call and the commit loses only the record
of the call; the next look repeats it, and the sandbox is idempotent by withdrawal_id.

A real rail (domain.SUBMIT_FIRST_RAILS), whose payouts cannot be called back: pending → SUBMITTED is committed first,
then the provider is called with no transaction open, then its answer recorded in a second transaction. A crash,
a timeout or a 5xx after the commit leaves a SUBMITTED withdrawal without an answer: the next look asks the provider
by the withdrawal id (its idempotency key) and submits again, with the same key, only if the provider never received
it. Nothing is ever guessed, and a submitted withdrawal can no longer be canceled. Webhooks (payout_notices.py) may
finish it first; the record of an answer then changes nothing."""

from __future__ import annotations

import asyncio

import structlog
from prometheus_client import Counter, Gauge

from services.payouts import domain
from services.payouts.clawbacks import repay_debts
from services.payouts.ports import PayoutProvider, PayoutResult, PayoutsStore, PayoutState, PayoutsTransaction
from services.runtime.faults import crash_point
from services.runtime.ids import new_id

WITHDRAWALS_FINISHED = Counter("coinstream_payouts_withdrawals_finished_total", "Withdrawals finished", ["status"])
# Polled (measure_withdrawals): pending withdrawals by stage — waiting for this worker (queued) or for the payout
# provider (with_provider) — and the age of the oldest. Finished ones are counted as they finish (above).
PENDING_WITHDRAWALS = Gauge("coinstream_payouts_withdrawals_pending", "Pending withdrawals", ["stage"])
OLDEST_PENDING_WITHDRAWAL = Gauge(
    "coinstream_payouts_withdrawals_pending_oldest_age_seconds", "Age of the oldest pending withdrawal"
)

# A withdrawal failed before it reached the provider has no provider reference; this stands for one.
NOT_SUBMITTED = "not-submitted"
FAILED = domain.WithdrawalStatus.FAILED

log = structlog.get_logger()


class PayoutWorker:
    def __init__(
        self,
        store: PayoutsStore,
        provider: PayoutProvider,
        *,
        batch_size: int,
        check_interval_seconds: float,
        provider_timeout_seconds: float,
    ) -> None:
        self._store = store
        self._provider = provider
        self._batch_size = batch_size
        self._check_interval_seconds = check_interval_seconds
        self._provider_timeout_seconds = provider_timeout_seconds

    async def process_due_withdrawals(self) -> int:
        """Looks at up to batch_size due withdrawals; returns how many it looked at."""
        for handled in range(self._batch_size):
            if not await self._advance_next():
                return handled
        return self._batch_size

    async def _advance_next(self) -> bool:
        async with self._store.transaction() as tx:
            withdrawal = await tx.lock_next_due_withdrawal(self._provider.name)
            if withdrawal is None:
                return False
            held_back = await _why_not_pay(tx, withdrawal)
            if held_back:
                await finish(tx, withdrawal, PayoutResult(PayoutState.FAILED, NOT_SUBMITTED, held_back), FAILED)
                return True
            if not self._submit_first:
                await self._record(tx, withdrawal, await self._ask_provider(withdrawal, handed_over_before=False))
                return True
            handed_over_before = withdrawal.status is domain.WithdrawalStatus.SUBMITTED
            withdrawal = await self._claim(tx, withdrawal)
        # Committed: SUBMITTED before anything reaches the provider, so nothing handed over can be lost.
        result = await self._ask_provider(withdrawal, handed_over_before=handed_over_before)
        async with self._store.transaction() as tx:
            current = await tx.lock_withdrawal(withdrawal.withdrawal_id)
            if current is not None and current.status is domain.WithdrawalStatus.SUBMITTED:
                await self._record(tx, current, result)
        return True

    @property
    def _submit_first(self) -> bool:
        return self._provider.name in domain.SUBMIT_FIRST_RAILS

    async def _claim(self, tx: PayoutsTransaction, withdrawal: domain.Withdrawal) -> domain.Withdrawal:
        """Marks it submitted (a first look) or not due again (a later one) for longer than the provider call may
        take, so no other replica looks at it meanwhile."""
        claim_seconds = self._provider_timeout_seconds + self._check_interval_seconds
        if withdrawal.status is domain.WithdrawalStatus.PENDING:
            withdrawal = await tx.mark_submitted(withdrawal.withdrawal_id, claim_seconds)
            log.info("withdrawal_submitted", withdrawal_id=withdrawal.withdrawal_id)
            return withdrawal
        await tx.postpone_check(withdrawal.withdrawal_id, claim_seconds)
        return withdrawal

    async def _ask_provider(self, withdrawal: domain.Withdrawal, *, handed_over_before: bool) -> PayoutResult | None:
        """What the provider says now; None when it could not be asked (we ask again later)."""
        try:
            return await asyncio.wait_for(self._look_up(withdrawal, handed_over_before), self._provider_timeout_seconds)
        except Exception:
            # Whatever went wrong with the provider (timeout, outage, a bug in its adapter), the withdrawal stays
            # pending and is looked at again later, behind the others, so one bad payout cannot block the queue.
            log.exception("payout_provider_call_failed", withdrawal_id=withdrawal.withdrawal_id)
            return None

    async def _look_up(self, withdrawal: domain.Withdrawal, handed_over_before: bool) -> PayoutResult:
        if withdrawal.provider_reference is not None:
            return await self._provider.status(
                withdrawal_id=withdrawal.withdrawal_id, provider_reference=withdrawal.provider_reference
            )
        # Submitted on an earlier look whose answer was lost: the provider is asked by the idempotency key, and
        # submits under it only if it never got it.
        call = self._provider.resume if handed_over_before else self._provider.submit
        result = await call(
            withdrawal_id=withdrawal.withdrawal_id,
            destination=withdrawal.payout_destination,
            amount_minor=withdrawal.payout_amount_minor,
            currency_code=withdrawal.payout_currency_code,
        )
        crash_point("payouts.after_payout_submitted")
        log.info(
            "payout_submitted",
            withdrawal_id=withdrawal.withdrawal_id,
            state=result.state.value,
            resumed=handed_over_before,
        )
        return result

    async def _record(self, tx: PayoutsTransaction, withdrawal: domain.Withdrawal, result: PayoutResult | None) -> None:
        if result is None:
            await tx.postpone_check(withdrawal.withdrawal_id, self._check_interval_seconds)
        elif result.state is PayoutState.PROCESSING:
            since = withdrawal.submitted_at
            waited_seconds = 0.0 if since is None else (await tx.now() - since).total_seconds()
            await tx.record_provider_progress(
                withdrawal.withdrawal_id,
                result.provider_reference,
                domain.next_look_seconds(self._check_interval_seconds, waited_seconds),
            )
        elif result.state is PayoutState.PAID:
            await finish(tx, withdrawal, result, domain.WithdrawalStatus.PAID)
        else:
            await finish(tx, withdrawal, result, domain.WithdrawalStatus.FAILED)


async def _why_not_pay(tx: PayoutsTransaction, withdrawal: domain.Withdrawal) -> str:
    """Why a withdrawal not yet submitted must not be paid now (empty: it may): since it was requested, a chargeback
    left its creator in debt, or froze the creator's wallet account. It fails, its diamonds come back (and repay the
    debt). One already with the provider goes on: it may be being paid."""
    if withdrawal.provider_reference is not None or withdrawal.status is not domain.WithdrawalStatus.PENDING:
        return ""
    if await tx.account_frozen(withdrawal.creator_id):
        return "the account is frozen after a chargeback"
    balances = await tx.lock_balances(withdrawal.creator_id)
    if balances is not None and balances.debt_diamonds:
        return f"{balances.debt_diamonds} diamonds were clawed back after a chargeback: they are owed first"
    return ""


async def finish(
    tx: PayoutsTransaction, withdrawal: domain.Withdrawal, result: PayoutResult, status: domain.WithdrawalStatus
) -> None:
    """Releases the reserved diamonds, to system:paid_out (paid) or back to available (failed), with the status."""
    creator_id, diamonds = withdrawal.creator_id, withdrawal.diamonds
    paid = status is domain.WithdrawalStatus.PAID
    transaction_id = new_id("txn")
    await tx.record_transaction(
        transaction_id=transaction_id,
        kind="withdrawal_paid" if paid else "withdrawal_returned",
        reference=withdrawal.withdrawal_id,
        postings=(domain.paid_out_postings if paid else domain.returned_postings)(creator_id, diamonds),
    )
    balances = await tx.move_diamonds(creator_id, available_delta=0 if paid else diamonds, reserved_delta=-diamonds)
    await repay_debts(tx, [balances])  # diamonds given back repay a debt a clawback left meanwhile
    failure_reason = "" if paid else (result.failure_reason or "payout failed")
    finished = await tx.finish_withdrawal(
        withdrawal.withdrawal_id,
        status=status,
        failure_reason=failure_reason,
        provider_reference=result.provider_reference,
        finish_transaction_id=transaction_id,
    )
    # We hold the row lock on an unfinished withdrawal, so the status guard cannot miss; if it ever did, this rolls
    # back.
    assert finished, f"withdrawal {withdrawal.withdrawal_id} was finished already"
    WITHDRAWALS_FINISHED.labels(status.value).inc()
    log.info("withdrawal_finished", withdrawal_id=withdrawal.withdrawal_id, status=status.value, reason=failure_reason)


async def give_back(tx: PayoutsTransaction, withdrawal: domain.Withdrawal, reason: str) -> None:
    """Paid → returned: the provider gave the payout back (returned, reversed), so its diamonds come back to the
    creator's available diamonds from system:paid_out, once (the status guard), and repay a debt first."""
    transaction_id = new_id("txn")
    await tx.record_transaction(
        transaction_id=transaction_id,
        kind="payout_returned",
        reference=withdrawal.withdrawal_id,
        postings=domain.payout_returned_postings(withdrawal.creator_id, withdrawal.diamonds),
    )
    balances = await tx.move_diamonds(withdrawal.creator_id, available_delta=withdrawal.diamonds, reserved_delta=0)
    await repay_debts(tx, [balances])
    returned = await tx.mark_returned(withdrawal.withdrawal_id, reason or "the payout was returned", transaction_id)
    assert returned, f"withdrawal {withdrawal.withdrawal_id} was not paid"  # we hold its row lock
    WITHDRAWALS_FINISHED.labels(domain.WithdrawalStatus.RETURNED.value).inc()
    log.info("payout_returned", withdrawal_id=withdrawal.withdrawal_id, reason=reason)


async def measure_withdrawals(store: PayoutsStore) -> None:
    """Sets the pending-withdrawal gauges (a probe of the metrics poller)."""
    pending = await store.pending_withdrawals()
    PENDING_WITHDRAWALS.labels("queued").set(pending.queued)
    PENDING_WITHDRAWALS.labels("with_provider").set(pending.with_provider)
    OLDEST_PENDING_WITHDRAWAL.set(pending.oldest_age_seconds)
