"""Payouts use cases behind the RPCs. Each mutation runs under its request_id's idempotency key in the same
transaction as its ledger writes; responses are protobuf messages because they are what an idempotent replay returns.
Settlement of gifts lives in settlement.py, the payout of withdrawals in payout_worker.py."""

from __future__ import annotations

import asyncio

import asyncpg
import structlog
from coinstream.payouts.v1 import payouts_pb2
from coinstream.type.v1 import money_pb2

from services.payouts import domain, store
from services.payouts.ids import new_id
from services.payouts.maturity import mature_due_credits
from services.payouts.payout_provider import PayoutProvider
from services.runtime import idempotency
from services.runtime.auth import ROLE_ADMIN, ROLE_SERVICE, Principal
from services.runtime.errors import AppError, not_found, unavailable

log = structlog.get_logger()

_STATUS_TO_PROTO = {
    domain.WithdrawalStatus.PENDING: payouts_pb2.WITHDRAWAL_STATUS_PENDING,
    domain.WithdrawalStatus.PAID: payouts_pb2.WITHDRAWAL_STATUS_PAID,
    domain.WithdrawalStatus.FAILED: payouts_pb2.WITHDRAWAL_STATUS_FAILED,
    domain.WithdrawalStatus.CANCELED: payouts_pb2.WITHDRAWAL_STATUS_CANCELED,
}
OWNER_OR_STAFF = (ROLE_SERVICE, ROLE_ADMIN)
# A withdrawal matures at most this many of its creator's due credits itself (the maturity worker does the rest).
WITHDRAWAL_MATURITY_LIMIT = 1000


def withdrawal_message(withdrawal: store.WithdrawalRow) -> payouts_pb2.Withdrawal:
    return payouts_pb2.Withdrawal(
        withdrawal_id=withdrawal.withdrawal_id,
        creator_id=withdrawal.creator_id,
        diamonds=withdrawal.diamonds,
        payout=money_pb2.Money(
            currency_code=withdrawal.payout_currency_code, amount_minor=withdrawal.payout_amount_minor
        ),
        status=_STATUS_TO_PROTO[withdrawal.status],
        failure_reason=withdrawal.failure_reason,
    )


class PayoutsService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        policy: domain.WithdrawalPolicy,
        provider: PayoutProvider,
        *,
        provider_timeout_seconds: float,
    ) -> None:
        self._pool = pool
        self._policy = policy
        self._provider = provider  # asked whether a submitted payout can still be canceled
        self._provider_timeout_seconds = provider_timeout_seconds

    async def adopt_configured_rate(self, numerator: int, denominator: int) -> domain.SettlementRate:
        """At start: the configured rate becomes the current version, a new one only if it changed."""
        async with self._pool.acquire() as conn, conn.transaction():
            await store.lock_rates(conn)
            latest = await store.current_rate(conn)
            if latest is not None and latest.is_configured_as(numerator, denominator):
                return latest
            rate = await store.insert_next_rate(conn, numerator, denominator)
        log.info("settlement_rate_version_added", version=rate.version, numerator=numerator, denominator=denominator)
        return rate

    async def get_earnings(self, creator_id: str) -> payouts_pb2.Earnings:
        balances = await store.get_balances(self._pool, creator_id) or domain.Balances.zero(creator_id)
        return payouts_pb2.Earnings(
            creator_id=creator_id,
            available_diamonds=balances.available_diamonds,
            reserved_diamonds=balances.reserved_diamonds,
            lifetime_diamonds=balances.lifetime_diamonds,
            pending_diamonds=balances.pending_diamonds,
        )

    async def get_rates(self) -> payouts_pb2.Rates:
        rate = await store.current_rate(self._pool)
        assert rate is not None, "adopt_configured_rate() runs before serving"
        return payouts_pb2.Rates(
            diamonds_per_coin_numerator=rate.numerator,
            diamonds_per_coin_denominator=rate.denominator,
            diamond_value_per_1000=money_pb2.Money(
                currency_code=self._policy.currency_code, amount_minor=self._policy.value_per_1000_minor
            ),
            minimum_withdrawal_diamonds=self._policy.minimum_diamonds,
            daily_withdrawal_cap_diamonds=self._policy.daily_cap_diamonds,
            rate_version=rate.version,
        )

    async def update_profile(
        self, request: payouts_pb2.UpdateCreatorProfileRequest
    ) -> payouts_pb2.UpdateCreatorProfileResponse:
        async def operation(conn: asyncpg.Connection) -> payouts_pb2.UpdateCreatorProfileResponse:
            profile = await store.upsert_profile(
                conn, domain.CreatorProfile(request.creator_id, request.kyc_verified, request.payout_destination)
            )
            return payouts_pb2.UpdateCreatorProfileResponse(
                profile=payouts_pb2.CreatorProfile(
                    creator_id=profile.creator_id,
                    kyc_verified=profile.kyc_verified,
                    payout_destination=profile.payout_destination,
                )
            )

        return await idempotency.run_once(self._pool, request, payouts_pb2.UpdateCreatorProfileResponse, operation)

    async def request_withdrawal(
        self, request: payouts_pb2.RequestWithdrawalRequest
    ) -> payouts_pb2.RequestWithdrawalResponse:
        async def operation(conn: asyncpg.Connection) -> payouts_pb2.RequestWithdrawalResponse:
            withdrawal = await self._reserve_withdrawal(conn, request.request_id, request.creator_id, request.diamonds)
            return payouts_pb2.RequestWithdrawalResponse(withdrawal=withdrawal_message(withdrawal))

        return await idempotency.run_once(self._pool, request, payouts_pb2.RequestWithdrawalResponse, operation)

    async def _reserve_withdrawal(
        self, conn: asyncpg.Connection, request_id: str, creator_id: str, diamonds: int
    ) -> store.WithdrawalRow:
        """Checks in the contract's order, then available → reserved and a pending withdrawal, all or nothing.

        The balance row is locked before the cap is summed, so two concurrent withdrawals of one creator cannot
        both slip under the cap (or both spend the same diamonds)."""
        profile = self._policy.check_request(await store.get_profile(conn, creator_id), creator_id, diamonds)
        balances = await store.lock_balances(conn, creator_id) or domain.Balances.zero(creator_id)
        # Credits whose hold is over count now, not only once the maturity worker got to them.
        if balances.pending_diamonds and await mature_due_credits(conn, WITHDRAWAL_MATURITY_LIMIT, creator_id):
            balances = await store.lock_balances(conn, creator_id) or balances
        self._policy.check_daily_cap(await store.diamonds_withdrawn_last_24h(conn, creator_id), diamonds)
        domain.require_available(balances, diamonds)
        withdrawal = store.WithdrawalRow(
            withdrawal_id=new_id("wd"),
            request_id=request_id,
            creator_id=creator_id,
            diamonds=diamonds,
            payout_currency_code=self._policy.currency_code,
            payout_amount_minor=self._policy.payout_minor(diamonds),
            payout_destination=profile.payout_destination,
            status=domain.WithdrawalStatus.PENDING,
            failure_reason="",
            provider_reference=None,
            submitted_at=None,
        )
        transaction_id = new_id("txn")
        await store.record_transaction(
            conn,
            transaction_id=transaction_id,
            kind="withdrawal_reserve",
            reference=withdrawal.withdrawal_id,
            postings=domain.reserve_postings(creator_id, diamonds),
        )
        await store.move_diamonds(conn, creator_id, available_delta=-diamonds, reserved_delta=diamonds)
        await store.insert_withdrawal(conn, withdrawal, transaction_id)
        log.info(
            "withdrawal_requested", withdrawal_id=withdrawal.withdrawal_id, creator_id=creator_id, diamonds=diamonds
        )
        return withdrawal

    async def get_withdrawal(self, withdrawal_id: str, principal: Principal) -> payouts_pb2.Withdrawal:
        """Someone else's withdrawal looks exactly like a missing one: its id reveals nothing to other creators."""
        withdrawal = await store.get_withdrawal(self._pool, withdrawal_id)
        if withdrawal is None or not _may_see(principal, withdrawal.creator_id):
            raise not_found("WITHDRAWAL_NOT_FOUND", f"no withdrawal {withdrawal_id!r}")
        return withdrawal_message(withdrawal)

    # --- withdrawal lifecycle -----------------------------------------------------------------------------------------

    async def cancel_withdrawal(
        self, request: payouts_pb2.CancelWithdrawalRequest, principal: Principal
    ) -> payouts_pb2.CancelWithdrawalResponse:
        """Pending → canceled, its diamonds back to available. Who may cancel is settled before the request_id is
        claimed (a withdrawal's creator never changes), so an intruder's refusal is never stored under it."""
        found = await store.get_withdrawal(self._pool, request.withdrawal_id)
        if found is None or not _may_see(principal, found.creator_id):
            raise not_found("WITHDRAWAL_NOT_FOUND", f"no withdrawal {request.withdrawal_id!r}")
        principal.require_account_access(found.creator_id, privileged_roles=(ROLE_SERVICE,))

        async def operation(conn: asyncpg.Connection) -> payouts_pb2.CancelWithdrawalResponse:
            # Locked, and re-read under the lock: the payout worker may have finished it meanwhile.
            withdrawal = await store.lock_withdrawal(conn, request.withdrawal_id)
            assert withdrawal is not None, "withdrawals are never deleted"
            if domain.must_cancel(withdrawal.status, withdrawal.withdrawal_id):
                withdrawal = await self._cancel(conn, withdrawal)
            return payouts_pb2.CancelWithdrawalResponse(withdrawal=withdrawal_message(withdrawal))

        return await idempotency.run_once(self._pool, request, payouts_pb2.CancelWithdrawalResponse, operation)

    async def _cancel(self, conn: asyncpg.Connection, withdrawal: store.WithdrawalRow) -> store.WithdrawalRow:
        if not await self._provider_lets_go(withdrawal):
            raise domain.not_cancelable(withdrawal.withdrawal_id, "the payout provider is already paying it")
        transaction_id = new_id("txn")
        await store.record_transaction(
            conn,
            transaction_id=transaction_id,
            kind="withdrawal_canceled",
            reference=withdrawal.withdrawal_id,
            postings=domain.returned_postings(withdrawal.creator_id, withdrawal.diamonds),
        )
        await store.move_diamonds(
            conn, withdrawal.creator_id, available_delta=withdrawal.diamonds, reserved_delta=-withdrawal.diamonds
        )
        canceled = await store.mark_canceled(conn, withdrawal.withdrawal_id, transaction_id)
        log.info("withdrawal_canceled", withdrawal_id=withdrawal.withdrawal_id, creator_id=withdrawal.creator_id)
        return canceled

    async def _provider_lets_go(self, withdrawal: store.WithdrawalRow) -> bool:
        """Asked under the withdrawal's row lock, so the payout worker cannot submit it meanwhile."""
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

    async def list_withdrawals(
        self, creator_id: str, page_size: int, page_token: str
    ) -> payouts_pb2.ListWithdrawalsResponse:
        position = domain.decode_page_token(page_token, "withdrawals", creator_id, (int, str))
        before = None if position is None else (domain.from_micros(int(position[0])), str(position[1]))
        rows = await store.list_withdrawals(self._pool, creator_id, before, page_size + 1)
        page, more = rows[:page_size], len(rows) > page_size
        next_token = ""
        if more:
            last = page[-1]
            assert last.created_at is not None
            next_token = domain.encode_page_token(
                "withdrawals", creator_id, [domain.to_micros(last.created_at), last.withdrawal_id]
            )
        return payouts_pb2.ListWithdrawalsResponse(
            withdrawals=[withdrawal_message(row) for row in page], next_page_token=next_token
        )

    # --- statements ---------------------------------------------------------------------------------------------------

    async def list_earnings(
        self, creator_id: str, group_by: domain.EarningsGroupBy, page_size: int, page_token: str
    ) -> payouts_pb2.ListEarningsResponse:
        # The token names its grouping: one handed out by stream means nothing by video (nor by day).
        kind = f"earnings_by_{group_by.value}"
        if group_by is domain.EarningsGroupBy.DAY:
            position = domain.decode_page_token(page_token, kind, creator_id, (str,))
            before = None if position is None else domain.day_start(str(position[0]))
            rows = await store.earnings_by_day(self._pool, creator_id, before, page_size + 1)
        else:
            position = domain.decode_page_token(page_token, kind, creator_id, (int, str))
            after = None if position is None else (domain.from_micros(int(position[0])), str(position[1]))
            rows = await store.earnings_by_target(self._pool, group_by, creator_id, after, page_size + 1)
        page, more = rows[:page_size], len(rows) > page_size
        next_token = ""
        if more:
            last = page[-1]
            next_position: list[str | int] = (
                [last.key]
                if group_by is domain.EarningsGroupBy.DAY
                else [domain.to_micros(last.latest_credit_at), last.key]
            )
            next_token = domain.encode_page_token(kind, creator_id, next_position)
        return payouts_pb2.ListEarningsResponse(
            rows=[
                payouts_pb2.EarningsRow(key=row.key, diamonds=row.diamonds, gift_count=row.gift_count) for row in page
            ],
            next_page_token=next_token,
        )


def _may_see(principal: Principal, creator_id: str) -> bool:
    try:
        principal.require_account_access(creator_id, privileged_roles=OWNER_OR_STAFF)
    except AppError:
        return False
    return True
