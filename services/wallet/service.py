"""Wallet use cases. Each mutation runs under its request_id's idempotency key in the same transaction as its
ledger writes; responses are protobuf messages because they are what an idempotent replay must return."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import structlog
from coinstream.type.v1 import money_pb2
from coinstream.wallet.v1 import wallet_pb2

from services.runtime import idempotency, recovery
from services.runtime.errors import (
    AppError,
    failed_precondition,
    not_found,
    unavailable,
)
from services.runtime.faults import crash_point
from services.wallet import domain, store
from services.wallet.payments import ChargeResult, PaymentProvider

log = structlog.get_logger()

_STATUS_TO_PROTO = {
    domain.AccountStatus.ACTIVE: wallet_pb2.ACCOUNT_STATUS_ACTIVE,
    domain.AccountStatus.FROZEN: wallet_pb2.ACCOUNT_STATUS_FROZEN,
}
_KIND_TO_PROTO = {"purchase": wallet_pb2.TRANSACTION_KIND_PURCHASE, "spend": wallet_pb2.TRANSACTION_KIND_SPEND}


def account_message(account: domain.Account) -> wallet_pb2.Account:
    return wallet_pb2.Account(
        account_id=account.account_id,
        adult_verified=account.adult_verified,
        country_code=account.country_code,
        status=_STATUS_TO_PROTO[account.status],
    )


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class WalletService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        payments: PaymentProvider,
        bonus_rule: domain.BonusRule,
        payment_timeout_seconds: float,
    ) -> None:
        self._pool = pool
        self._payments = payments
        self._bonus_rule = bonus_rule
        self._payment_timeout_seconds = payment_timeout_seconds

    async def upsert_account(self, request: wallet_pb2.UpsertAccountRequest) -> wallet_pb2.UpsertAccountResponse:
        async def operation(conn: asyncpg.Connection) -> wallet_pb2.UpsertAccountResponse:
            account = await store.upsert_account(conn, request.account_id, request.adult_verified, request.country_code)
            return wallet_pb2.UpsertAccountResponse(account=account_message(account))

        return await idempotency.run_once(
            self._pool,
            request_id=request.request_id,
            method="UpsertAccount",
            request=request,
            response_type=wallet_pb2.UpsertAccountResponse,
            operation=operation,
        )

    async def get_account(self, account_id: str) -> wallet_pb2.Account:
        account = await store.get_account(self._pool, account_id)
        if account is None:
            raise not_found("ACCOUNT_NOT_FOUND", f"no account {account_id!r}")
        return account_message(account)

    async def get_balance(self, account_id: str) -> wallet_pb2.Balance:
        return wallet_pb2.Balance(account_id=account_id, coins=await store.get_balance(self._pool, account_id))

    def list_packages(self) -> list[wallet_pb2.CoinPackage]:
        return [
            wallet_pb2.CoinPackage(
                package_id=package.package_id,
                coins=package.coins,
                bonus_coins=self._bonus_rule.bonus_coins(package),
                price=money_pb2.Money(currency_code=package.currency_code, amount_minor=package.price_minor),
            )
            for package in domain.DEFAULT_PACKAGES
        ]

    async def spend(self, request: wallet_pb2.SpendCoinsRequest) -> wallet_pb2.SpendCoinsResponse:
        async def operation(conn: asyncpg.Connection) -> wallet_pb2.SpendCoinsResponse:
            # The ledger outlives idempotency keys: a spend retried after its key expired (a gift left pending
            # for days, say) must get its original answer, not be charged again or refused.
            earlier = await store.find_spend(conn, request.request_id, request.account_id)
            if earlier is not None:
                transaction_id, balance_after = earlier
                balance = wallet_pb2.Balance(account_id=request.account_id, coins=balance_after)
                return wallet_pb2.SpendCoinsResponse(transaction_id=transaction_id, balance=balance)
            transaction_id = new_id("txn")
            balance_after = await store.debit_for_spend(
                conn,
                transaction_id=transaction_id,
                request_id=request.request_id,
                account_id=request.account_id,
                coins=request.coins,
                reference=request.reference,
                postings=domain.spend_postings(request.account_id, request.coins),
            )
            if balance_after is None:
                raise await self._why_spend_refused(conn, request.account_id, request.coins)
            balance = wallet_pb2.Balance(account_id=request.account_id, coins=balance_after)
            return wallet_pb2.SpendCoinsResponse(transaction_id=transaction_id, balance=balance)

        return await idempotency.run_once(
            self._pool,
            request_id=request.request_id,
            method="SpendCoins",
            request=request,
            response_type=wallet_pb2.SpendCoinsResponse,
            operation=operation,
        )

    async def _why_spend_refused(self, conn: asyncpg.Connection, account_id: str, coins: int) -> AppError:
        domain.require_can_transact(await store.get_account(conn, account_id), account_id)
        return domain.insufficient_coins(account_id, await store.get_balance(conn, account_id), coins)

    async def purchase(self, request: wallet_pb2.PurchaseCoinsRequest) -> wallet_pb2.PurchaseCoinsResponse:
        """Two steps around the payment provider: record a pending purchase, charge, then credit. A retry, or the
        recovery pass, resumes a pending purchase; the charge is idempotent by purchase_id."""
        hashed = idempotency.request_hash("PurchaseCoins", request)
        async with self._pool.acquire() as conn, conn.transaction():
            stored = await idempotency.claim(conn, request.request_id, "PurchaseCoins", hashed)
            if stored is None:
                stored = await self._record_pending_purchase(conn, request)
        if not stored.in_flight:
            return idempotency.replay(stored, wallet_pb2.PurchaseCoinsResponse)
        assert stored.resource_id is not None
        crash_point("wallet.after_purchase_recorded")
        return await self.complete_purchase(stored.resource_id)

    async def _record_pending_purchase(
        self, conn: asyncpg.Connection, request: wallet_pb2.PurchaseCoinsRequest
    ) -> idempotency.StoredRequest:
        try:
            package = domain.find_package(request.package_id)
            domain.require_can_transact(await store.get_account(conn, request.account_id), request.account_id)
        except AppError as refusal:
            await idempotency.record_error(conn, request.request_id, refusal)
            return idempotency.StoredRequest(resource_id=None, response=None, error=refusal)
        purchase = store.PurchaseRow(
            purchase_id=new_id("pur"),
            request_id=request.request_id,
            account_id=request.account_id,
            package_id=package.package_id,
            coins=package.coins,
            bonus_coins=self._bonus_rule.bonus_coins(package),
            price_minor=package.price_minor,
            currency_code=package.currency_code,
            payment_token=request.payment_token,
            status=domain.PurchaseStatus.PENDING,
            transaction_id=None,
        )
        await store.insert_purchase(conn, purchase)
        await idempotency.set_resource(conn, request.request_id, purchase.purchase_id)
        return idempotency.StoredRequest(resource_id=purchase.purchase_id, response=None, error=None)

    async def complete_purchase(self, purchase_id: str) -> wallet_pb2.PurchaseCoinsResponse:
        purchase = await store.get_purchase(self._pool, purchase_id)
        if purchase.status is domain.PurchaseStatus.PENDING:
            charge = await self._charge(purchase)
            crash_point("wallet.after_charge")
            await self._settle_purchase(purchase_id, charge)
        stored = await idempotency.load(self._pool, purchase.request_id)
        return idempotency.replay(stored, wallet_pb2.PurchaseCoinsResponse)

    async def _charge(self, purchase: store.PurchaseRow) -> ChargeResult:
        try:
            return await asyncio.wait_for(
                self._payments.charge(
                    purchase_id=purchase.purchase_id,
                    payment_token=purchase.payment_token,
                    amount_minor=purchase.price_minor,
                    currency_code=purchase.currency_code,
                ),
                self._payment_timeout_seconds,
            )
        except (TimeoutError, OSError) as error:
            log.warning("payment_provider_unavailable", purchase_id=purchase.purchase_id, error=str(error))
            raise unavailable(
                "PAYMENT_PROVIDER_UNAVAILABLE", "payment provider did not answer; retry with the same request_id"
            ) from None

    async def _settle_purchase(self, purchase_id: str, charge: ChargeResult) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            purchase = await store.lock_purchase(conn, purchase_id)
            if purchase.status is not domain.PurchaseStatus.PENDING:
                return  # a concurrent retry or the recovery pass finished it first
            if not charge.approved:
                await store.finish_purchase(
                    conn, purchase_id, domain.PurchaseStatus.DECLINED, charge.provider_reference, None
                )
                declined = failed_precondition("PAYMENT_DECLINED", f"payment declined: {charge.decline_reason}")
                await idempotency.record_error(conn, purchase.request_id, declined)
                return
            transaction_id = new_id("txn")
            balance_after = await store.credit_for_purchase(
                conn,
                transaction_id=transaction_id,
                request_id=purchase.request_id,
                account_id=purchase.account_id,
                reference=purchase_id,
                postings=domain.purchase_postings(purchase.account_id, purchase.coins, purchase.bonus_coins),
            )
            await store.finish_purchase(
                conn, purchase_id, domain.PurchaseStatus.COMPLETED, charge.provider_reference, transaction_id
            )
            await idempotency.record_response(conn, purchase.request_id, _purchase_response(purchase, balance_after))

    async def recover_pending_purchases(self, older_than_seconds: float, batch_size: int = 100) -> int:
        """Finishes purchases a crash or an outage left pending. Returns how many it looked at."""
        purchase_ids = await store.stale_pending_purchases(self._pool, older_than_seconds, batch_size)
        return await recovery.resume_each("purchase", purchase_ids, self.complete_purchase)

    async def list_transactions(
        self, account_id: str, page_size: int, page_token: str
    ) -> wallet_pb2.ListTransactionsResponse:
        before = domain.decode_page_token(page_token)
        entries = await store.list_history(self._pool, account_id, before, page_size + 1)
        page, more = entries[:page_size], len(entries) > page_size
        response = wallet_pb2.ListTransactionsResponse(
            transactions=[_transaction_message(entry) for entry in page],
            next_page_token=domain.encode_page_token(page[-1].posting_id) if more else "",
        )
        return response


def _purchase_response(purchase: store.PurchaseRow, balance_after: int) -> wallet_pb2.PurchaseCoinsResponse:
    return wallet_pb2.PurchaseCoinsResponse(
        purchase=wallet_pb2.Purchase(
            purchase_id=purchase.purchase_id,
            package_id=purchase.package_id,
            coins=purchase.coins,
            bonus_coins=purchase.bonus_coins,
        ),
        balance=wallet_pb2.Balance(account_id=purchase.account_id, coins=balance_after),
    )


def _transaction_message(entry: store.HistoryEntry) -> wallet_pb2.Transaction:
    message = wallet_pb2.Transaction(
        transaction_id=entry.transaction_id,
        kind=_KIND_TO_PROTO[entry.kind],
        coins_delta=entry.coins_delta,
        balance_after=entry.balance_after,
        reference=entry.reference,
    )
    message.created_at.FromDatetime(entry.created_at)
    return message
