"""Payouts use cases behind the RPCs. Each mutation runs under its request_id's idempotency key in the same
transaction as its ledger writes; responses are protobuf messages because they are what an idempotent replay returns.
Settlement of gifts lives in settlement.py, the payout of withdrawals in payout_worker.py."""

from __future__ import annotations

import uuid

import asyncpg
import structlog
from coinstream.payouts.v1 import payouts_pb2
from coinstream.type.v1 import money_pb2

from services.payouts import domain, store
from services.runtime import idempotency
from services.runtime.auth import ROLE_ADMIN, ROLE_SERVICE, Principal
from services.runtime.errors import AppError, not_found

log = structlog.get_logger()

_STATUS_TO_PROTO = {
    domain.WithdrawalStatus.PENDING: payouts_pb2.WITHDRAWAL_STATUS_PENDING,
    domain.WithdrawalStatus.PAID: payouts_pb2.WITHDRAWAL_STATUS_PAID,
    domain.WithdrawalStatus.FAILED: payouts_pb2.WITHDRAWAL_STATUS_FAILED,
    domain.WithdrawalStatus.CANCELED: payouts_pb2.WITHDRAWAL_STATUS_CANCELED,
}
OWNER_OR_STAFF = (ROLE_SERVICE, ROLE_ADMIN)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


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
    def __init__(self, pool: asyncpg.Pool, policy: domain.WithdrawalPolicy) -> None:
        self._pool = pool
        self._policy = policy

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

        return await idempotency.run_once(
            self._pool,
            request_id=request.request_id,
            method="UpdateCreatorProfile",
            request=request,
            response_type=payouts_pb2.UpdateCreatorProfileResponse,
            operation=operation,
        )

    async def request_withdrawal(
        self, request: payouts_pb2.RequestWithdrawalRequest
    ) -> payouts_pb2.RequestWithdrawalResponse:
        async def operation(conn: asyncpg.Connection) -> payouts_pb2.RequestWithdrawalResponse:
            withdrawal = await self._reserve_withdrawal(conn, request.request_id, request.creator_id, request.diamonds)
            return payouts_pb2.RequestWithdrawalResponse(withdrawal=withdrawal_message(withdrawal))

        return await idempotency.run_once(
            self._pool,
            request_id=request.request_id,
            method="RequestWithdrawal",
            request=request,
            response_type=payouts_pb2.RequestWithdrawalResponse,
            operation=operation,
        )

    async def _reserve_withdrawal(
        self, conn: asyncpg.Connection, request_id: str, creator_id: str, diamonds: int
    ) -> store.WithdrawalRow:
        """Checks in the contract's order, then available → reserved and a pending withdrawal, all or nothing.

        The balance row is locked before the cap is summed, so two concurrent withdrawals of one creator cannot
        both slip under the cap (or both spend the same diamonds)."""
        profile = self._policy.check_request(await store.get_profile(conn, creator_id), creator_id, diamonds)
        balances = await store.lock_balances(conn, creator_id) or domain.Balances.zero(creator_id)
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


def _may_see(principal: Principal, creator_id: str) -> bool:
    try:
        principal.require_account_access(creator_id, privileged_roles=OWNER_OR_STAFF)
    except AppError:
        return False
    return True
