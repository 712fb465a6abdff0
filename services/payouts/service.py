"""Payouts use cases behind the RPCs, on the ports (services/payouts/ports.py): domain types in, domain types out.
Each mutation takes a command (domain.py) and runs under its request key in the same transaction as its ledger
writes; its result is kept with the key as the RPC's response message (convert.py's replies), which is what a replay
returns. Who may call what is the servicer's business. Settlement of gifts lives in settlement.py, the payout of
withdrawals in payout_worker.py."""

from __future__ import annotations

import asyncio

import structlog

from services.payouts import convert, domain
from services.payouts.clawbacks import repay_debts
from services.payouts.maturity import mature_due_credits
from services.payouts.ports import PayoutProvider, PayoutsStore, PayoutsTransaction
from services.runtime import pages
from services.runtime.errors import unavailable
from services.runtime.ids import new_id

log = structlog.get_logger()

# A withdrawal matures at most this many of its creator's due credits itself (the maturity worker does the rest).
WITHDRAWAL_MATURITY_LIMIT = 1000


class PayoutsService:
    def __init__(
        self,
        store: PayoutsStore,
        policy: domain.WithdrawalPolicy,
        provider: PayoutProvider,
        *,
        provider_timeout_seconds: float,
    ) -> None:
        self._store = store
        self._policy = policy
        self._provider = provider  # asked whether a submitted payout can still be canceled
        self._provider_timeout_seconds = provider_timeout_seconds

    async def adopt_configured_rate(self, numerator: int, denominator: int) -> domain.SettlementRate:
        """At start: the configured rate becomes the current version, a new one only if it changed."""
        async with self._store.transaction() as tx:
            await tx.lock_rates()
            latest = await tx.current_rate()
            if latest is not None and latest.is_configured_as(numerator, denominator):
                return latest
            rate = await tx.insert_next_rate(numerator, denominator)
        log.info("settlement_rate_version_added", version=rate.version, numerator=numerator, denominator=denominator)
        return rate

    async def get_earnings(self, creator_id: str) -> domain.Balances:
        return await self._store.get_balances(creator_id) or domain.Balances.zero(creator_id)

    async def get_rates(self) -> domain.Rates:
        rate = await self._store.current_rate()
        assert rate is not None, "adopt_configured_rate() runs before serving"
        return domain.Rates(rate, self._policy)

    async def update_profile(self, command: domain.UpdateProfile) -> domain.CreatorProfile:
        async def operation(tx: PayoutsTransaction) -> domain.CreatorProfile:
            return await tx.upsert_profile(command.profile)

        return await self._store.run_once(command.key, operation, convert.PROFILE_UPDATED)

    async def request_withdrawal(self, command: domain.Withdraw) -> domain.WithdrawalView:
        async def operation(tx: PayoutsTransaction) -> domain.WithdrawalView:
            return (await self._reserve_withdrawal(tx, command)).view

        return await self._store.run_once(command.key, operation, convert.WITHDRAWAL_REQUESTED)

    async def _reserve_withdrawal(self, tx: PayoutsTransaction, command: domain.Withdraw) -> domain.Withdrawal:
        """Checks in the contract's order, then available → reserved and a pending withdrawal, all or nothing; the
        withdrawal records the caller-scoped request_id it was made under.

        The balance row is locked before the cap is summed, so two concurrent withdrawals of one creator cannot
        both slip under the cap (or both spend the same diamonds)."""
        creator_id, diamonds = command.creator_id, command.diamonds
        profile = self._policy.check_request(await tx.get_profile(creator_id), creator_id, diamonds)
        domain.require_not_frozen(await tx.account_frozen(creator_id), creator_id)
        balances = await tx.lock_balances(creator_id) or domain.Balances.zero(creator_id)
        # Credits whose hold is over count now, not only once the maturity worker got to them (and repay debt first).
        if balances.pending_diamonds and await mature_due_credits(tx, WITHDRAWAL_MATURITY_LIMIT, creator_id):
            balances = await tx.lock_balances(creator_id) or balances
        domain.require_no_debt(balances)
        self._policy.check_daily_cap(await tx.diamonds_withdrawn_last_24h(creator_id), diamonds)
        domain.require_available(balances, diamonds)
        withdrawal = domain.Withdrawal(
            withdrawal_id=new_id("wd"),
            request_id=command.key.request_id,
            creator_id=creator_id,
            diamonds=diamonds,
            payout_currency_code=self._policy.currency_code,
            payout_amount_minor=self._policy.payout_minor(diamonds),
            payout_destination=profile.payout_destination,
            status=domain.WithdrawalStatus.PENDING,
            failure_reason="",
            provider_reference=None,
            submitted_at=None,
            payout_provider=self._provider.name,
        )
        transaction_id = new_id("txn")
        await tx.record_transaction(
            transaction_id=transaction_id,
            kind="withdrawal_reserve",
            reference=withdrawal.withdrawal_id,
            postings=domain.reserve_postings(creator_id, diamonds),
        )
        await tx.move_diamonds(creator_id, available_delta=-diamonds, reserved_delta=diamonds)
        await tx.insert_withdrawal(withdrawal, transaction_id)
        log.info(
            "withdrawal_requested", withdrawal_id=withdrawal.withdrawal_id, creator_id=creator_id, diamonds=diamonds
        )
        return withdrawal

    async def find_withdrawal(self, withdrawal_id: str) -> domain.Withdrawal | None:
        return await self._store.get_withdrawal(withdrawal_id)

    # --- withdrawal lifecycle -----------------------------------------------------------------------------------------

    async def cancel_withdrawal(self, command: domain.CancelWithdrawal) -> domain.WithdrawalView:
        """Pending → canceled, its diamonds back to available. The caller has checked that the withdrawal exists and
        who may cancel it before the request_id is claimed (a withdrawal's creator never changes), so an intruder's
        refusal is never stored under it."""

        async def operation(tx: PayoutsTransaction) -> domain.WithdrawalView:
            # Locked, and re-read under the lock: the payout worker may have finished it meanwhile.
            withdrawal = await tx.lock_withdrawal(command.withdrawal_id)
            assert withdrawal is not None, "withdrawals are never deleted"
            if domain.must_cancel(withdrawal.status, withdrawal.withdrawal_id):
                withdrawal = await self._cancel(tx, withdrawal)
            return withdrawal.view

        return await self._store.run_once(command.key, operation, convert.WITHDRAWAL_CANCELED)

    async def _cancel(self, tx: PayoutsTransaction, withdrawal: domain.Withdrawal) -> domain.Withdrawal:
        if not await self._provider_lets_go(withdrawal):
            raise domain.not_cancelable(withdrawal.withdrawal_id, "the payout provider is already paying it")
        transaction_id = new_id("txn")
        await tx.record_transaction(
            transaction_id=transaction_id,
            kind="withdrawal_canceled",
            reference=withdrawal.withdrawal_id,
            postings=domain.returned_postings(withdrawal.creator_id, withdrawal.diamonds),
        )
        balances = await tx.move_diamonds(
            withdrawal.creator_id, available_delta=withdrawal.diamonds, reserved_delta=-withdrawal.diamonds
        )
        await repay_debts(tx, [balances])  # diamonds given back repay a debt a clawback left meanwhile
        canceled = await tx.mark_canceled(withdrawal.withdrawal_id, transaction_id)
        log.info("withdrawal_canceled", withdrawal_id=withdrawal.withdrawal_id, creator_id=withdrawal.creator_id)
        return canceled

    async def _provider_lets_go(self, withdrawal: domain.Withdrawal) -> bool:
        """Asked under the withdrawal's row lock, so the payout worker cannot submit it meanwhile. A pending
        withdrawal of a submit-first rail never reached its provider (it would be SUBMITTED): nobody to ask."""
        if withdrawal.payout_provider in domain.SUBMIT_FIRST_RAILS:
            return True
        if withdrawal.payout_provider != self._provider.name:
            # Another provider's (a deployment that switched providers): only a replica configured with it can ask.
            raise unavailable(
                "PAYOUT_PROVIDER_UNAVAILABLE",
                f"withdrawal {withdrawal.withdrawal_id!r} is paid by the {withdrawal.payout_provider} provider,"
                " which this replica does not use; try again",
            )
        try:
            return await asyncio.wait_for(
                self._provider.cancel(
                    withdrawal_id=withdrawal.withdrawal_id,
                    destination=withdrawal.payout_destination,
                    provider_reference=withdrawal.provider_reference,
                ),
                self._provider_timeout_seconds,
            )
        except Exception:
            log.exception("payout_provider_cancel_failed", withdrawal_id=withdrawal.withdrawal_id)
            # Not a final answer: nothing is stored under the request_id, so a retry asks again.
            raise unavailable("PAYOUT_PROVIDER_UNAVAILABLE", "the payout provider did not answer; try again") from None

    async def list_withdrawals(self, creator_id: str, page_size: int, page_token: str) -> pages.Page[domain.Withdrawal]:
        position = pages.decode_page_token(
            page_token, kind="withdrawals", owner=creator_id, shape=(int, str), int_range=domain.POSITION_MICROS
        )
        before = None if position is None else (domain.from_micros(int(position[0])), str(position[1]))
        rows = await self._store.list_withdrawals(creator_id, before, page_size + 1)
        page, more = rows[:page_size], len(rows) > page_size
        next_token = ""
        if more:
            last = page[-1]
            assert last.created_at is not None
            next_token = pages.encode_page_token(
                "withdrawals", creator_id, [domain.to_micros(last.created_at), last.withdrawal_id]
            )
        return pages.Page(page, next_token)

    async def list_clawbacks(self, creator_id: str, page_size: int, page_token: str) -> pages.Page[domain.ClawbackView]:
        position = pages.decode_page_token(
            page_token, kind="clawbacks", owner=creator_id, shape=(int, str), int_range=domain.POSITION_MICROS
        )
        before = None if position is None else (domain.from_micros(int(position[0])), str(position[1]))
        rows = await self._store.list_clawbacks(creator_id, before, page_size + 1)
        page, more = rows[:page_size], len(rows) > page_size
        next_token = ""
        if more:
            last = page[-1]
            next_token = pages.encode_page_token(
                "clawbacks",
                creator_id,
                [domain.to_micros(last.clawed_back_at), f"{last.reversal_id}/{last.gift_transaction_id}"],
            )
        return pages.Page(page, next_token)

    # --- statements ---------------------------------------------------------------------------------------------------

    async def list_earnings(
        self, creator_id: str, group_by: domain.EarningsGroupBy, page_size: int, page_token: str
    ) -> pages.Page[domain.EarningsRow]:
        # The token names its grouping: one handed out by stream means nothing by video (nor by day).
        kind = f"earnings_by_{group_by.value}"
        if group_by is domain.EarningsGroupBy.DAY:
            position = pages.decode_page_token(page_token, kind=kind, owner=creator_id, shape=(str,))
            before = None if position is None else domain.day_start(str(position[0]))
            rows = await self._store.earnings_by_day(creator_id, before, page_size + 1)
        else:
            position = pages.decode_page_token(
                page_token, kind=kind, owner=creator_id, shape=(int, str), int_range=domain.POSITION_MICROS
            )
            after = None if position is None else (domain.from_micros(int(position[0])), str(position[1]))
            rows = await self._store.earnings_by_target(group_by, creator_id, after, page_size + 1)
        page, more = rows[:page_size], len(rows) > page_size
        next_token = ""
        if more:
            last = page[-1]
            next_position: pages.Position = (
                [last.key]
                if group_by is domain.EarningsGroupBy.DAY
                else [domain.to_micros(last.latest_credit_at), last.key]
            )
            next_token = pages.encode_page_token(kind, creator_id, next_position)
        return pages.Page(page, next_token)
