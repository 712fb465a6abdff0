"""Wallet use cases. Each mutation runs under its request_id's idempotency key in the same transaction as its
ledger writes; responses are protobuf messages because they are what an idempotent replay must return."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import asyncpg
import structlog
from coinstream.type.v1 import money_pb2
from coinstream.wallet.v1 import wallet_pb2

from services.runtime import idempotency, recovery
from services.runtime.batching import BatchPolicy, MicroBatcher, in_request_id_rounds
from services.runtime.errors import (
    AppError,
    failed_precondition,
    not_found,
    request_id_reused,
    unavailable,
)
from services.runtime.faults import crash_point
from services.wallet import domain, store
from services.wallet.payments import ChargeResult, PaymentProvider

log = structlog.get_logger()

# A spend's outcome in a batch: its response, or the final refusal SpendCoins would have raised.
SpendOutcome = wallet_pb2.SpendCoinsResponse | AppError

_STATUS_TO_PROTO = {
    domain.AccountStatus.ACTIVE: wallet_pb2.ACCOUNT_STATUS_ACTIVE,
    domain.AccountStatus.FROZEN: wallet_pb2.ACCOUNT_STATUS_FROZEN,
}
_KIND_TO_PROTO = {
    "purchase": wallet_pb2.TRANSACTION_KIND_PURCHASE,
    "spend": wallet_pb2.TRANSACTION_KIND_SPEND,
    "reversal": wallet_pb2.TRANSACTION_KIND_REVERSAL,
}


def account_message(account: domain.Account, now: datetime | None = None) -> wallet_pb2.Account:
    limit = account.spending_limit.in_force(now or datetime.now(UTC))
    message = wallet_pb2.Account(
        account_id=account.account_id,
        adult_verified=account.adult_verified,
        country_code=account.country_code,
        status=_STATUS_TO_PROTO[account.status],
        spending_limit=wallet_pb2.SpendingLimit(daily_coins=limit.daily_coins),
    )
    if limit.pending_effective_at is not None:
        assert limit.pending_daily_coins is not None
        message.spending_limit.pending.daily_coins = limit.pending_daily_coins
        message.spending_limit.pending.effective_at.FromDatetime(limit.pending_effective_at)
    return message


def balance_message(account_id: str, balance: domain.Balance) -> wallet_pb2.Balance:
    return wallet_pb2.Balance(
        account_id=account_id, coins=balance.coins, paid_coins=balance.paid_coins, bonus_coins=balance.bonus_coins
    )


def promotion_message(promotion: domain.Promotion, now: datetime) -> wallet_pb2.Promotion:
    message = wallet_pb2.Promotion(
        promotion_id=promotion.promotion_id,
        name=promotion.name,
        min_package_coins=promotion.min_package_coins,
        first_purchase_only=promotion.first_purchase_only,
        max_uses_per_account=promotion.max_uses_per_account,
        status=wallet_pb2.PROMOTION_STATUS_ENDED if promotion.has_ended(now) else wallet_pb2.PROMOTION_STATUS_ACTIVE,
    )
    message.starts_at.FromDatetime(promotion.starts_at)
    if promotion.ends_at is not None:
        message.ends_at.FromDatetime(promotion.ends_at)
    if promotion.bonus_percent is not None:
        message.bonus_percent = promotion.bonus_percent
    else:
        assert promotion.bonus_coins is not None
        message.bonus_coins = promotion.bonus_coins
    return message


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class WalletService:
    def __init__(
        self, pool: asyncpg.Pool, payments: PaymentProvider, payment_timeout_seconds: float, spend_batching: BatchPolicy
    ) -> None:
        self._pool = pool
        self._payments = payments
        self._payment_timeout_seconds = payment_timeout_seconds
        self._spend_batcher: MicroBatcher[wallet_pb2.SpendCoinsRequest, wallet_pb2.SpendCoinsResponse] = MicroBatcher(
            "spend_coins", self._spend_batch_deduplicated, spend_batching
        )

    # --- accounts -----------------------------------------------------------------------------------------------

    async def upsert_account(self, request: wallet_pb2.UpsertAccountRequest) -> wallet_pb2.UpsertAccountResponse:
        async def operation(conn: asyncpg.Connection) -> wallet_pb2.UpsertAccountResponse:
            account = await store.upsert_account(conn, request.account_id, request.adult_verified, request.country_code)
            return wallet_pb2.UpsertAccountResponse(account=account_message(account))

        return await idempotency.run_once(self._pool, request, wallet_pb2.UpsertAccountResponse, operation)

    async def get_account(self, account_id: str) -> wallet_pb2.Account:
        account = await store.get_account(self._pool, account_id)
        if account is None:
            raise not_found("ACCOUNT_NOT_FOUND", f"no account {account_id!r}")
        return account_message(account)

    async def get_balance(self, account_id: str, as_of: datetime | None = None) -> wallet_pb2.Balance:
        if as_of is None:
            balance = await store.get_balance(self._pool, account_id)
        else:
            balance = await store.balance_as_of(self._pool, account_id, as_of)
        return balance_message(account_id, balance)

    async def set_spending_limit(
        self, request: wallet_pb2.SetSpendingLimitRequest
    ) -> wallet_pb2.SetSpendingLimitResponse:
        async def operation(conn: asyncpg.Connection) -> wallet_pb2.SetSpendingLimitResponse:
            account = await store.lock_account(conn, request.account_id)
            if account is None:
                raise not_found("ACCOUNT_NOT_FOUND", f"no account {request.account_id!r}")
            now = await conn.fetchval("SELECT now()")
            limit = account.spending_limit.change_to(request.daily_coins, now)
            updated = await store.set_spending_limit(conn, request.account_id, limit)
            return wallet_pb2.SetSpendingLimitResponse(account=account_message(updated, now))

        return await idempotency.run_once(self._pool, request, wallet_pb2.SetSpendingLimitResponse, operation)

    # --- spends -------------------------------------------------------------------------------------------------

    async def spend(self, request: wallet_pb2.SpendCoinsRequest) -> wallet_pb2.SpendCoinsResponse:
        """A single spend joins whatever batch concurrent spends are forming (see spend_batch)."""
        return await self._spend_batcher.submit(request)

    async def _spend_batch_deduplicated(self, requests: list[wallet_pb2.SpendCoinsRequest]) -> list[SpendOutcome]:
        """Concurrent SpendCoins calls may repeat a request_id (a client retrying early): see in_request_id_rounds."""

        async def spend_unique(unique: list[wallet_pb2.SpendCoinsRequest]) -> dict[str, SpendOutcome]:
            return dict(zip((r.request_id for r in unique), await self.spend_batch(unique), strict=True))

        return await in_request_id_rounds(requests, spend_unique)

    async def spend_batch(self, requests: list[wallet_pb2.SpendCoinsRequest]) -> list[SpendOutcome]:
        """Spends in one transaction, each under its own request_id, each with its own outcome (a response or a
        final refusal): one refusal never fails the others, and the spends of one account are decided in the
        order given. Anything unexpected rolls the whole batch back, keys included, so every spend can be retried."""
        claims = [
            idempotency.Claim(r.request_id, "SpendCoins", idempotency.request_hash("SpendCoins", r)) for r in requests
        ]
        async with self._pool.acquire() as conn, conn.transaction():
            claimed, in_ledger = await store.claim_spends(conn, claims)
            earlier = await idempotency.earlier_outcomes(conn, claims, claimed)
            outcomes = {request_id: _replayed_spend(stored) for request_id, stored in earlier.items()}
            fresh = [request for request in requests if request.request_id in claimed]
            if fresh:
                outcomes.update(await _spend_fresh(conn, fresh, in_ledger))
        return [outcomes[request.request_id] for request in requests]

    # --- giveaways ----------------------------------------------------------------------------------------------

    async def create_giveaway(self, request: wallet_pb2.CreateGiveawayRequest) -> wallet_pb2.CreateGiveawayResponse:
        """All winners are paid or none: one ledger transaction, one statement for the coins of all of them."""
        creator_id, winner_ids = request.creator_id, list(request.winner_ids)

        async def operation(conn: asyncpg.Connection) -> wallet_pb2.CreateGiveawayResponse:
            await store.lock_buckets(conn, [creator_id, *winner_ids])
            spender, debit = await _authorize_giveaway(conn, request)
            shares = domain.giveaway_shares(debit, len(winner_ids), request.coins_per_winner)
            giveaway_id, transaction_id = new_id("gwy"), new_id("txn")
            await store.record_movement(
                conn,
                transaction_id=transaction_id,
                kind="giveaway",
                request_id=request.request_id,
                account_id=creator_id,
                reference=giveaway_id,
                postings=domain.giveaway_postings(creator_id, debit, winner_ids, shares),
            )
            await store.insert_giveaway(
                conn,
                giveaway_id=giveaway_id,
                request_id=request.request_id,
                creator_id=creator_id,
                coins_per_winner=request.coins_per_winner,
                winner_ids=winner_ids,
                transaction_id=transaction_id,
            )
            return wallet_pb2.CreateGiveawayResponse(
                giveaway=wallet_pb2.Giveaway(giveaway_id=giveaway_id, total_coins=debit.coins, winner_ids=winner_ids),
                balance=balance_message(creator_id, spender.balance.debited(debit)),
            )

        return await idempotency.run_once(self._pool, request, wallet_pb2.CreateGiveawayResponse, operation)

    # --- purchases ----------------------------------------------------------------------------------------------

    async def list_packages(self) -> list[wallet_pb2.CoinPackage]:
        """Each package with the bonus anyone would get now (promotions with account conditions aside)."""
        promotions, now = await store.open_promotions(self._pool)
        return [
            wallet_pb2.CoinPackage(
                package_id=package.package_id,
                coins=package.coins,
                bonus_coins=domain.best_promotion(promotions, package, now, None)[1],
                price=money_pb2.Money(currency_code=package.currency_code, amount_minor=package.price_minor),
            )
            for package in domain.DEFAULT_PACKAGES
        ]

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
            # The account lock serializes this account's purchase intents, so first-purchase-only and per-account
            # use limits hold under concurrent purchases.
            domain.require_can_purchase(await store.lock_account(conn, request.account_id), request.account_id)
        except AppError as refusal:
            await idempotency.record_error(conn, request.request_id, refusal)
            return idempotency.StoredRequest(resource_id=None, response=None, error=refusal)
        promotions, now = await store.open_promotions(conn)
        history = await store.purchase_history(conn, request.account_id)
        promotion, bonus_coins = domain.best_promotion(promotions, package, now, history)
        purchase = store.PurchaseRow(
            purchase_id=new_id("pur"),
            request_id=request.request_id,
            account_id=request.account_id,
            package_id=package.package_id,
            coins=package.coins,
            bonus_coins=bonus_coins,
            price_minor=package.price_minor,
            currency_code=package.currency_code,
            payment_token=request.payment_token,
            status=domain.PurchaseStatus.PENDING,
            transaction_id=None,
            promotion_id=promotion.promotion_id if promotion else None,
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
            assert purchase is not None, f"purchase {purchase_id} vanished"
            if purchase.status is not domain.PurchaseStatus.PENDING:
                return  # a concurrent retry or the recovery pass finished it first
            if not charge.approved:
                await store.finish_purchase(
                    conn, purchase_id, domain.PurchaseStatus.DECLINED, charge.provider_reference, None
                )
                declined = failed_precondition("PAYMENT_DECLINED", f"payment declined: {charge.decline_reason}")
                await idempotency.record_error(conn, purchase.request_id, declined)
                return
            before = (await store.lock_buckets(conn, [purchase.account_id]))[purchase.account_id]
            transaction_id = new_id("txn")
            await store.record_movement(
                conn,
                transaction_id=transaction_id,
                kind="purchase",
                request_id=purchase.request_id,
                account_id=purchase.account_id,
                reference=purchase_id,
                postings=domain.purchase_postings(purchase.account_id, purchase.coins, purchase.bonus_coins),
            )
            after = before.credited(domain.Split(paid_coins=purchase.coins, bonus_coins=purchase.bonus_coins))
            if domain.debt_covered(before, after):  # the account may spend again
                await store.set_status(conn, purchase.account_id, domain.AccountStatus.ACTIVE)
            await store.finish_purchase(
                conn, purchase_id, domain.PurchaseStatus.COMPLETED, charge.provider_reference, transaction_id
            )
            await idempotency.record_response(conn, purchase.request_id, _purchase_response(purchase, after))

    async def recover_pending_purchases(self, older_than_seconds: float, batch_size: int = 100) -> int:
        """Finishes purchases a crash or an outage left pending. Returns how many it looked at."""
        purchase_ids = await store.stale_pending_purchases(self._pool, older_than_seconds, batch_size)
        return await recovery.resume_each("purchase", purchase_ids, self.complete_purchase)

    async def reverse_purchase(self, request: wallet_pb2.ReversePurchaseRequest) -> wallet_pb2.ReversePurchaseResponse:
        """A chargeback: takes the purchase's coins back, into debt if they were spent (the account is then frozen
        until purchases cover it). A purchase is reversed at most once, whatever the request_id."""

        async def operation(conn: asyncpg.Connection) -> wallet_pb2.ReversePurchaseResponse:
            purchase = await store.lock_purchase(conn, request.purchase_id)
            if purchase is None or purchase.status is not domain.PurchaseStatus.COMPLETED:
                raise not_found("PURCHASE_NOT_FOUND", f"no completed purchase {request.purchase_id!r}")
            account_id = purchase.account_id
            transaction_id = await store.find_reversal(conn, purchase.purchase_id)
            if transaction_id is None:
                transaction_id = await self._reverse(conn, purchase, request)
            account = await store.get_account(conn, account_id)
            assert account is not None
            return wallet_pb2.ReversePurchaseResponse(
                transaction_id=transaction_id,
                balance=balance_message(account_id, await store.get_balance(conn, account_id)),
                account_status=_STATUS_TO_PROTO[account.status],
            )

        return await idempotency.run_once(self._pool, request, wallet_pb2.ReversePurchaseResponse, operation)

    async def _reverse(
        self, conn: asyncpg.Connection, purchase: store.PurchaseRow, request: wallet_pb2.ReversePurchaseRequest
    ) -> str:
        account_id = purchase.account_id
        before = (await store.lock_buckets(conn, [account_id]))[account_id]
        split = domain.reversal_split(purchase.coins, purchase.bonus_coins, before)
        transaction_id = new_id("txn")
        await store.allow_debt(conn, True)
        await store.record_movement(
            conn,
            transaction_id=transaction_id,
            kind="reversal",
            request_id=request.request_id,
            account_id=account_id,
            reference=purchase.purchase_id,
            postings=domain.reversal_postings(account_id, purchase.coins, purchase.bonus_coins, split),
        )
        await store.allow_debt(conn, False)
        await store.insert_reversal(
            conn,
            purchase_id=purchase.purchase_id,
            request_id=request.request_id,
            transaction_id=transaction_id,
            reason=request.reason,
            paid_coins=split.paid_coins,
            bonus_coins=split.bonus_coins,
        )
        if domain.in_debt(before.debited(split)):
            await store.set_status(conn, account_id, domain.AccountStatus.FROZEN)
        log.info("purchase_reversed", purchase_id=purchase.purchase_id, account_id=account_id, **vars(split))
        return transaction_id

    # --- promotions ---------------------------------------------------------------------------------------------

    async def create_promotion(
        self, request: wallet_pb2.CreatePromotionRequest, starts_at: datetime | None, ends_at: datetime | None
    ) -> wallet_pb2.CreatePromotionResponse:
        async def operation(conn: asyncpg.Connection) -> wallet_pb2.CreatePromotionResponse:
            now = await conn.fetchval("SELECT now()")
            bonus = request.WhichOneof("bonus")
            promotion = await store.insert_promotion(
                conn,
                domain.Promotion(
                    promotion_id=new_id("promo"),
                    name=request.name,
                    starts_at=starts_at or now,
                    ends_at=ends_at,
                    min_package_coins=request.min_package_coins,
                    bonus_percent=request.bonus_percent if bonus == "bonus_percent" else None,
                    bonus_coins=request.bonus_coins if bonus == "bonus_coins" else None,
                    first_purchase_only=request.first_purchase_only,
                    max_uses_per_account=request.max_uses_per_account,
                    created_at=now,
                ),
            )
            return wallet_pb2.CreatePromotionResponse(promotion=promotion_message(promotion, now))

        return await idempotency.run_once(self._pool, request, wallet_pb2.CreatePromotionResponse, operation)

    async def end_promotion(self, request: wallet_pb2.EndPromotionRequest) -> wallet_pb2.EndPromotionResponse:
        async def operation(conn: asyncpg.Connection) -> wallet_pb2.EndPromotionResponse:
            promotion = await store.lock_promotion(conn, request.promotion_id)
            if promotion is None:
                raise not_found("PROMOTION_NOT_FOUND", f"no promotion {request.promotion_id!r}")
            now = await conn.fetchval("SELECT now()")
            ends_at = domain.ended_now(promotion, now)
            if ends_at is not None:
                promotion = await store.set_promotion_end(conn, promotion.promotion_id, ends_at)
            return wallet_pb2.EndPromotionResponse(promotion=promotion_message(promotion, now))

        return await idempotency.run_once(self._pool, request, wallet_pb2.EndPromotionResponse, operation)

    async def list_promotions(self, page_size: int, page_token: str) -> wallet_pb2.ListPromotionsResponse:
        before = domain.decode_page_token(page_token, kind="m")
        rows = await store.list_promotions(self._pool, before, page_size + 1)
        page, more = rows[:page_size], len(rows) > page_size
        now = datetime.now(UTC)
        return wallet_pb2.ListPromotionsResponse(
            promotions=[promotion_message(promotion, now) for _, promotion in page],
            next_page_token=domain.encode_page_token(page[-1][0], kind="m") if more else "",
        )

    # --- history ------------------------------------------------------------------------------------------------

    async def list_transactions(
        self, account_id: str, page_size: int, page_token: str
    ) -> wallet_pb2.ListTransactionsResponse:
        before = domain.decode_page_token(page_token)
        movements = await store.list_history(self._pool, account_id, before, page_size + 1)
        page, more = movements[:page_size], len(movements) > page_size
        return wallet_pb2.ListTransactionsResponse(
            transactions=[_transaction_message(account_id, movement) for movement in page],
            next_page_token=domain.encode_page_token(page[-1].posting_id) if more else "",
        )


async def _authorize_giveaway(
    conn: asyncpg.Connection, request: wallet_pb2.CreateGiveawayRequest
) -> tuple[domain.Spender, domain.Split]:
    """The creator first (eligible, not frozen), then every winner, then the creator's coins and limit."""
    spender = await store.read_spender(conn, request.creator_id)
    domain.require_can_transact(spender.account, request.creator_id)
    winner_ids = list(request.winner_ids)
    domain.require_winners_eligible(winner_ids, await store.get_accounts(conn, winner_ids))
    total_coins = request.coins_per_winner * len(winner_ids)
    return spender, domain.authorize_spend(spender, request.creator_id, total_coins)


async def _spend_fresh(
    conn: asyncpg.Connection, requests: list[wallet_pb2.SpendCoinsRequest], in_ledger: set[str]
) -> dict[str, SpendOutcome]:
    """The outcomes of requests that just got their keys, stored with them."""
    outcomes: dict[str, SpendOutcome] = {}
    for request in requests:
        # The ledger outlives idempotency keys: a spend retried after its key expired (a gift left pending for
        # days, say) gets its original answer, not a second charge; a request_id the ledger holds for something
        # else (another account's spend, a purchase) is refused alone, never failing the batch.
        if request.request_id in in_ledger:
            earlier = await store.find_spend(conn, request.request_id, request.account_id)
            outcomes[request.request_id] = (
                request_id_reused() if earlier is None else _spend_response(request.account_id, earlier)
            )
    asks = [
        domain.SpendAsk(r.request_id, r.account_id, r.coins, r.reference)
        for r in requests
        if r.request_id not in in_ledger
    ]
    new_spends = await _decide_spends(conn, asks, outcomes) if asks else []
    stored = [_spend_outcome(request_id, outcome) for request_id, outcome in outcomes.items()]
    if new_spends:
        await store.record_spends(conn, new_spends, stored)
    else:
        await idempotency.record_many(conn, stored)
    return outcomes


async def _decide_spends(
    conn: asyncpg.Connection,
    asks: list[domain.SpendAsk],
    outcomes: dict[str, SpendOutcome],
) -> list[store.NewSpend]:
    """Decides new spends into outcomes and returns the ones to record: every account's buckets are locked (in id
    order) before they are read."""
    account_ids = sorted({ask.account_id for ask in asks})
    await store.lock_buckets(conn, account_ids)
    spenders = await store.read_spenders(conn, account_ids)
    balances = {account_id: spender.balance for account_id, spender in spenders.items()}
    new_spends: list[store.NewSpend] = []
    for ask, decision in zip(asks, domain.authorize_spends(asks, spenders), strict=True):
        if isinstance(decision, AppError):
            outcomes[ask.request_id] = decision
            continue
        after = balances[ask.account_id] = balances[ask.account_id].debited(decision)
        spend = store.NewSpend(
            new_id("txn"),
            ask.request_id,
            ask.account_id,
            ask.reference,
            domain.spend_legs(ask.account_id, decision, after),
        )
        new_spends.append(spend)
        outcomes[ask.request_id] = wallet_pb2.SpendCoinsResponse(
            transaction_id=spend.transaction_id,
            balance=balance_message(ask.account_id, after),
            paid_coins=decision.paid_coins,
            bonus_coins=decision.bonus_coins,
        )
    return new_spends


def _replayed_spend(stored: idempotency.StoredRequest | AppError) -> SpendOutcome:
    if isinstance(stored, AppError):
        return stored
    if stored.in_flight:  # spends decide in the transaction that takes the key, so this is never seen committed
        return unavailable("NOT_READY", "this spend is still being decided; retry with the same request_id")
    try:
        return idempotency.replay(stored, wallet_pb2.SpendCoinsResponse)
    except AppError as error:
        return error


def _spend_outcome(request_id: str, outcome: SpendOutcome) -> idempotency.Outcome:
    if isinstance(outcome, AppError):
        return idempotency.Outcome(request_id, error=outcome)
    return idempotency.Outcome(request_id, response=outcome)


def _spend_response(account_id: str, spend: store.Movement) -> wallet_pb2.SpendCoinsResponse:
    return wallet_pb2.SpendCoinsResponse(
        transaction_id=spend.transaction_id,
        balance=balance_message(account_id, domain.Balance(spend.paid_after, spend.bonus_after)),
        paid_coins=-spend.paid_delta,
        bonus_coins=-spend.bonus_delta,
    )


def _purchase_response(purchase: store.PurchaseRow, after: domain.Balance) -> wallet_pb2.PurchaseCoinsResponse:
    return wallet_pb2.PurchaseCoinsResponse(
        purchase=wallet_pb2.Purchase(
            purchase_id=purchase.purchase_id,
            package_id=purchase.package_id,
            coins=purchase.coins,
            bonus_coins=purchase.bonus_coins,
            promotion_id=purchase.promotion_id or "",
        ),
        balance=balance_message(purchase.account_id, after),
    )


def _transaction_kind(account_id: str, movement: store.Movement) -> wallet_pb2.TransactionKind.ValueType:
    if movement.kind == "giveaway":
        sent = movement.initiator_id == account_id
        return wallet_pb2.TRANSACTION_KIND_GIVEAWAY_SENT if sent else wallet_pb2.TRANSACTION_KIND_GIVEAWAY_RECEIVED
    return _KIND_TO_PROTO[movement.kind]


def _transaction_message(account_id: str, movement: store.Movement) -> wallet_pb2.Transaction:
    message = wallet_pb2.Transaction(
        transaction_id=movement.transaction_id,
        kind=_transaction_kind(account_id, movement),
        coins_delta=movement.paid_delta + movement.bonus_delta,
        balance_after=movement.paid_after + movement.bonus_after,
        reference=movement.reference,
        paid_coins_delta=movement.paid_delta,
        bonus_coins_delta=movement.bonus_delta,
    )
    message.created_at.FromDatetime(movement.created_at)
    return message
