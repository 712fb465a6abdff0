"""Wallet use cases. Each takes a command or plain values (domain.py), works through the ports (ports.py: the store
as a unit of work, the payment provider, the clock) and returns a domain result. A mutation runs under its request
key in the same transaction as its ledger writes; its result is kept with the key as the RPC's response message
(convert.py's replies), which is what a replay returns."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import TypeVar

import structlog
from prometheus_client import Counter

from services.runtime import limits, pages, recovery
from services.runtime.batching import BatchPolicy, MicroBatcher, in_request_id_rounds
from services.runtime.errors import (
    AppError,
    already_exists,
    failed_precondition,
    not_found,
    request_id_reused,
    unavailable,
)
from services.runtime.faults import crash_point
from services.runtime.ids import new_id
from services.runtime.requests import Outcome, RequestKey, StoredRequest, replayed
from services.wallet import convert, domain, events, funding
from services.wallet.ports import (
    ChargeResult,
    Clock,
    PaymentProvider,
    ProviderUnavailable,
    StoreVerifier,
    SystemClock,
    WalletStore,
    WalletTransaction,
)

log = structlog.get_logger()

# A spend's outcome in a batch: what it spent, or the final refusal SpendCoins would have raised.
SpendOutcome = domain.Spent | AppError

Result = TypeVar("Result")

LOCK_HOLDERS_ROUNDS = 4  # a reversal's rounds of locking holders of its purchase's coins (_lock_holders)

TRANSACTIONS_PAGE = "transactions"  # page tokens of ListTransactions, bound to the account listed
PROMOTIONS_PAGE = "promotions"  # page tokens of ListPromotions (one list for every admin: owner "")
POSITIONS = (1, limits.MAX_INT64)  # both lists resume after a bigint identity (posting_id, position)
LEGACY_KINDS = {TRANSACTIONS_PAGE: "p", PROMOTIONS_PAGE: "m"}  # release 0.1.0's tokens (pages.decode_page_token)

# Card testing: every decline is a signal (its rate is what an operator watches), and each refusal is counted by the
# limit that held the purchase back.
PAYMENTS_DECLINED = Counter("coinstream_wallet_payments_declined_total", "Purchases the payment provider declined")
CARD_TESTING_REFUSALS = Counter(
    "coinstream_wallet_card_testing_refusals_total", "Purchases refused for too many declined payments", ["limit"]
)
for _scope in domain.DeclineScope:  # both series exist from the start, at 0, for rates and alerts
    CARD_TESTING_REFUSALS.labels(_scope.value)


class WalletService:
    def __init__(
        self,
        store: WalletStore,
        payments: PaymentProvider | None,
        payment_timeout_seconds: float,
        spend_batching: BatchPolicy,
        decline_limits: domain.DeclineLimits,
        clock: Clock | None = None,
        on_event_queued: Callable[[], None] = lambda: None,
        terms_version: str = "1",
        stores: Mapping[domain.Store, StoreVerifier] | None = None,
        store_products: Mapping[str, str] | None = None,
    ) -> None:
        self._store = store
        # The app stores whose purchases may be redeemed (none in development), and which coin package each store
        # product sells (COINSTREAM_STORE_PRODUCTS; a product it does not name is the package of its id).
        self._stores = dict(stores or {})
        self._store_products = dict(store_products or {})
        # The terms of sale purchases are made under now (COINSTREAM_TERMS_VERSION), recorded with each.
        self._terms_version = terms_version
        # Wakes the outbox relay so a reversal's or a freeze's event goes out at once rather than at its next poll.
        self._on_event_queued = on_event_queued
        # None: this wallet sells coins only through the app stores (COINSTREAM_PAYMENT_PROVIDER=none).
        self._payments = payments
        self._payment_timeout_seconds = payment_timeout_seconds
        self._card_testing = _CardTestingGuard(decline_limits, timedelta(seconds=payment_timeout_seconds))
        self._clock = clock or SystemClock()
        self._spend_batcher: MicroBatcher[domain.SpendAsk, domain.Spent] = MicroBatcher(
            "spend_coins", self._spend_batch_deduplicated, spend_batching
        )

    # --- accounts -----------------------------------------------------------------------------------------------

    async def upsert_account(self, command: domain.UpsertAccount) -> domain.Account:
        async def operation(tx: WalletTransaction) -> domain.Account:
            account = await tx.upsert_account(command.account_id, command.adult_verified, command.country_code)
            return account.seen_at(self._clock.now())

        return await self._store.run_once(command.key, operation, convert.ACCOUNT_UPSERTED)

    async def get_account(self, account_id: str) -> domain.Account:
        account = await self._store.get_account(account_id)
        if account is None:
            raise not_found("ACCOUNT_NOT_FOUND", f"no account {account_id!r}")
        return account.seen_at(self._clock.now())

    async def get_balance(self, account_id: str, as_of: datetime | None = None) -> domain.Balance:
        if as_of is None:
            return await self._store.get_balance(account_id)
        return await self._store.balance_as_of(account_id, as_of)

    async def set_spending_limit(self, command: domain.ChangeSpendingLimit) -> domain.Account:
        async def operation(tx: WalletTransaction) -> domain.Account:
            account = await tx.lock_account(command.account_id)
            if account is None:
                raise not_found("ACCOUNT_NOT_FOUND", f"no account {command.account_id!r}")
            now = await tx.now()
            limit = account.spending_limit.change_to(command.daily_coins, now)
            updated = await tx.set_spending_limit(command.account_id, limit)
            return updated.seen_at(now)

        return await self._store.run_once(command.key, operation, convert.SPENDING_LIMIT_SET)

    # --- spends -------------------------------------------------------------------------------------------------

    async def spend(self, ask: domain.SpendAsk) -> domain.Spent:
        """A single spend joins whatever batch concurrent spends are forming (see spend_batch)."""
        return await self._spend_batcher.submit(ask)

    async def _spend_batch_deduplicated(self, asks: list[domain.SpendAsk]) -> list[SpendOutcome]:
        """Concurrent SpendCoins calls may repeat a request_id (a client retrying early): see in_request_id_rounds."""

        async def spend_unique(unique: list[domain.SpendAsk]) -> dict[str, SpendOutcome]:
            return dict(zip((ask.request_id for ask in unique), await self.spend_batch(unique), strict=True))

        return await in_request_id_rounds(asks, spend_unique)

    async def spend_batch(self, asks: list[domain.SpendAsk]) -> list[SpendOutcome]:
        """Spends in one transaction, each under its own request_id, each with its own outcome (what it spent or a
        final refusal): one refusal never fails the others, and the spends of one account are decided in the
        order given. Anything unexpected rolls the whole batch back, keys included, so every spend can be retried."""
        keys = [ask.key for ask in asks]
        async with self._store.transaction() as tx:
            claimed, in_ledger = await tx.claim_spends(keys)
            earlier = await tx.earlier_outcomes(keys, claimed)
            outcomes = {request_id: _replayed_spend(stored) for request_id, stored in earlier.items()}
            fresh = [ask for ask in asks if ask.request_id in claimed]
            if fresh:
                outcomes.update(await _spend_fresh(tx, fresh, in_ledger))
        return [outcomes[ask.request_id] for ask in asks]

    # --- giveaways ----------------------------------------------------------------------------------------------

    async def create_giveaway(self, command: domain.MakeGiveaway) -> domain.GiveawayMade:
        """All winners are paid or none: one ledger transaction, one statement for the coins of all of them."""
        creator_id, winner_ids = command.creator_id, list(command.winner_ids)

        async def operation(tx: WalletTransaction) -> domain.GiveawayMade:
            await tx.lock_buckets([creator_id, *winner_ids])
            spender, debit = await _authorize_giveaway(tx, command)
            shares = domain.giveaway_shares(debit, len(winner_ids), command.coins_per_winner)
            giveaway_id, transaction_id = new_id("gwy"), new_id("txn")
            await tx.record_movement(
                transaction_id=transaction_id,
                kind="giveaway",
                request_id=command.key.request_id,
                account_id=creator_id,
                reference=giveaway_id,
                postings=domain.giveaway_postings(creator_id, debit, winner_ids, shares),
            )
            draws = funding.Holdings(creator_id, spender.lots).take(debit)
            await tx.record_funding(
                transaction_id,
                [domain.Funding(transaction_id, d, domain.Use.GIVEAWAY) for d in draws],
                funding.winner_lots(draws, winner_ids, shares),
            )
            await tx.insert_giveaway(
                giveaway_id=giveaway_id,
                request_id=command.key.request_id,
                creator_id=creator_id,
                coins_per_winner=command.coins_per_winner,
                winner_ids=winner_ids,
                transaction_id=transaction_id,
            )
            balance = spender.balance.debited(debit)
            return domain.GiveawayMade(giveaway_id, creator_id, command.winner_ids, debit.coins, balance)

        return await self._store.run_once(command.key, operation, convert.GIVEAWAY_MADE)

    # --- purchases ----------------------------------------------------------------------------------------------

    async def list_packages(self) -> list[domain.PackageOffer]:
        """Each package with the bonus anyone would get now (promotions with account conditions aside)."""
        promotions, now = await self._store.open_promotions()
        return [
            domain.PackageOffer(package, domain.best_promotion(promotions, package, now, None)[1])
            for package in domain.DEFAULT_PACKAGES
        ]

    async def purchase(self, command: domain.BuyCoins) -> domain.Bought:
        """Two steps around the payment provider: record a pending purchase, charge, then credit. A retry, or the
        recovery pass, resumes a pending purchase; the charge is idempotent by purchase_id. A replay or a retry is
        answered from its key before the card-testing limits are looked at: they hold back new charges only. A charge
        waiting for its buyer (3-D Secure) is answered pending and nothing is kept with the key yet: a retry asks the
        rail again, and gets the completed purchase once the rail's notification completed it."""
        payments = self._payments_enabled()
        async with self._store.transaction() as tx:
            stored = await tx.claim(command.key)
            if stored is None:
                stored = await _record_pending_purchase(
                    tx, command, self._card_testing, self._terms_version, payments.rail
                )
        if not stored.in_flight:
            return replayed(stored, convert.BOUGHT)
        assert stored.resource_id is not None
        crash_point("wallet.after_purchase_recorded")
        return await self.complete_purchase(stored.resource_id)

    async def get_purchase(self, purchase_id: str) -> domain.PurchaseView:
        view = await self._store.find_purchase(purchase_id)
        if view is None:
            raise purchase_not_found(purchase_id)
        return view

    async def complete_purchase(self, purchase_id: str) -> domain.Bought:
        purchase = await self._store.get_purchase(purchase_id)
        if purchase.status is domain.PurchaseStatus.PENDING:
            charge = await self._charge(purchase)
            crash_point("wallet.after_charge")
            waiting = await self._settle_purchase(purchase_id, charge)
            self._on_event_queued()  # a purchase that covered a debt unfroze its account
            if waiting is not None:
                return waiting
        return replayed(await self._store.load_outcome(purchase.request_id), convert.BOUGHT)

    def _payments_enabled(self) -> PaymentProvider:
        if self._payments is None:
            raise failed_precondition(
                "PAYMENT_PROVIDER_NOT_ENABLED",
                "this wallet sells coins only through the app stores (RedeemStorePurchase)",
            )
        return self._payments

    async def _charge(self, purchase: domain.Purchase) -> ChargeResult:
        payments = self._payments_enabled()
        if purchase.rail != payments.rail:
            # Made through another provider (a replica configured otherwise, or before a switch): only that one
            # can tell how its charge went; charging it here would be a second charge.
            raise unavailable(
                "PAYMENT_PROVIDER_UNAVAILABLE", f"this purchase is charged through {purchase.rail}; retry later"
            )
        try:
            return await asyncio.wait_for(
                payments.charge(
                    purchase_id=purchase.purchase_id,
                    account_id=purchase.account_id,
                    payment_token=purchase.payment_token,
                    amount_minor=purchase.price_minor,
                    currency_code=purchase.currency_code,
                    rail_transaction_id=purchase.store_transaction_id,
                ),
                self._payment_timeout_seconds,
            )
        except (TimeoutError, OSError, ProviderUnavailable) as error:
            log.warning("payment_provider_unavailable", purchase_id=purchase.purchase_id, error=str(error))
            raise unavailable(
                "PAYMENT_PROVIDER_UNAVAILABLE", "payment provider did not answer; retry with the same request_id"
            ) from None

    async def _settle_purchase(self, purchase_id: str, charge: ChargeResult) -> domain.Bought | None:
        """The charge's outcome applied; the pending answer while it waits for its buyer, None once decided (the
        request's key keeps the answer)."""
        async with self._store.transaction() as tx:
            if charge.rail_transaction_id is not None:
                # The rail's transaction before the purchase, as its notifications take them (reverse_by_rail): a
                # refund of this charge is either applied after this commit or waiting for it, never lost between.
                await tx.lock_store_transaction(self._payments_enabled().rail, charge.rail_transaction_id)
            purchase = await tx.lock_purchase(purchase_id)
            assert purchase is not None, f"purchase {purchase_id} vanished"
            if purchase.status is not domain.PurchaseStatus.PENDING:
                return None  # a concurrent retry, the recovery pass or the rail's notification finished it first
            waiting = await _settle(tx, purchase, charge)
        if not (charge.approved or charge.pending):
            PAYMENTS_DECLINED.inc()  # once committed, by whoever recorded it (the early return above did not)
        return waiting

    async def recover_pending_purchases(self, older_than_seconds: float, batch_size: int = 100) -> int:
        """Finishes purchases a crash or an outage left pending. Returns how many it looked at."""
        rail = self._payments_enabled().rail
        purchase_ids = await self._store.stale_pending_purchases(rail, older_than_seconds, batch_size)
        return await recovery.resume_each("purchase", purchase_ids, self.complete_purchase)

    async def reverse_purchase(self, command: domain.ReversePurchase) -> domain.Reversed:
        """A chargeback or refund of a purchase, whole (coins 0: all that is not reversed yet) or in part: its unspent
        coins are removed first, wherever they are; the rest were used, and are traced (funding.py). Never more
        than the purchase, whatever the request_ids: a whole reversal of a reversed purchase answers the last one."""

        async def operation(tx: WalletTransaction) -> domain.Reversed:
            purchase = await tx.lock_purchase(command.purchase_id)  # serializes the reversals of one purchase
            if purchase is None or purchase.status is not domain.PurchaseStatus.COMPLETED:
                raise purchase_not_found(command.purchase_id)
            so_far = await tx.reversed_so_far(purchase.purchase_id)
            coins = domain.coins_to_reverse(purchase.coins, so_far.coins, command.coins)
            if coins:
                return await _reverse(tx, purchase, so_far, coins, command)
            assert so_far.last_transaction_id is not None, "nothing left to reverse means something was reversed"
            account = await tx.get_account(purchase.account_id)
            assert account is not None
            balance = await tx.get_balance(purchase.account_id)
            return domain.Reversed(so_far.last_transaction_id, purchase.account_id, balance, account.status)

        reversed_ = await self._store.run_once(command.key, operation, convert.REVERSED)
        self._on_event_queued()
        return reversed_

    # --- purchases through app stores and rails' notifications --------------------------------------------------

    async def redeem_store_purchase(self, command: domain.RedeemStorePurchase) -> domain.Redeemed:
        """The coin package of a purchase an app store took the money for, once the store's proof verifies: one
        transaction credits it, once per store transaction ever (whichever account presents it), and applies any
        refund the store announced before anyone redeemed it. The store is asked first, outside any transaction (a
        replay is answered from its key without asking: the store's answer may have changed since, a refund)."""
        replay = await self._store.replay_if_completed(command.key, convert.REDEEMED)
        if replay is not None:
            return replay
        verifier = self._stores.get(command.store)
        if verifier is None:
            raise failed_precondition(
                "STORE_NOT_ENABLED", f"purchases from {command.store.value} are not accepted by this wallet"
            )
        proof = await self._ask_store(command, verifier.verify(command))
        package = domain.find_package(domain.store_package_id(proof.product_id, self._store_products))

        async def operation(tx: WalletTransaction) -> domain.Redeemed:
            # The order every movement and rail notice takes: the store transaction, the buckets, the account row
            # (reverse_by_rail: the transaction, the purchase, the buckets, the account when it freezes).
            if await tx.lock_store_transaction(proof.store.value, proof.transaction_id) is not None:
                raise already_exists(
                    "STORE_TRANSACTION_ALREADY_REDEEMED",
                    f"{proof.store.value} transaction {proof.transaction_id!r} was redeemed before",
                )
            await tx.lock_buckets([command.account_id])
            account = domain.require_can_purchase(await tx.lock_account(command.account_id), command.account_id)
            purchase = await _new_purchase(tx, command.key.request_id, account, package, self._terms_version)
            purchase = store_purchase(purchase, proof, command.caller)
            await tx.insert_purchase(purchase)
            await _credit_purchase(tx, purchase, ChargeResult(True, proof.product_id))
            if proof.needs_finishing:
                await tx.mark_store_unfinished(purchase.purchase_id)
            for notice in await tx.early_reversals(purchase.rail, proof.transaction_id):
                await _reverse_share(tx, purchase, notice)  # the store refunded it before this redeem
            log.info(
                "store_purchase_redeemed",
                purchase_id=purchase.purchase_id,
                account_id=purchase.account_id,
                store=proof.store.value,
                store_transaction_id=proof.transaction_id,
            )
            return await _redeemed(tx, purchase)

        redeemed = await self._store.run_once(command.key, operation, convert.REDEEMED)
        self._on_event_queued()  # an early refund queued a reversal; a purchase may have unfrozen its account
        if proof.needs_finishing:
            await self._finish_at_store(redeemed.view.purchase.purchase_id, proof)
        return redeemed

    async def _ask_store(self, command: domain.RedeemStorePurchase, asking: Awaitable[Result]) -> Result:
        try:
            return await asyncio.wait_for(asking, self._payment_timeout_seconds)
        except (TimeoutError, OSError) as error:
            log.warning("store_unavailable", store=command.store.value, error=str(error))
            raise unavailable(
                "PAYMENT_PROVIDER_UNAVAILABLE", "the store did not answer; retry with the same request_id"
            ) from None

    async def _finish_at_store(self, purchase_id: str, proof: domain.StoreProof) -> bool:
        """Best effort here: what fails is finished by finish_store_purchases (the coins are credited already).
        True once finished."""
        verifier = self._stores[proof.store]
        try:
            await asyncio.wait_for(verifier.finish(proof), self._payment_timeout_seconds)
        except Exception as error:  # noqa: BLE001 - any failure leaves the purchase to the periodic pass
            log.warning("store_finish_deferred", purchase_id=purchase_id, store=proof.store.value, error=str(error))
            return False
        async with self._store.transaction() as tx:
            await tx.mark_store_finished(purchase_id)
        return True

    async def finish_store_purchases(self, older_than_seconds: float, batch_size: int = 100) -> bool:
        """Finishes at their stores the purchases a crash or an outage left credited but unfinished (Google Play
        refunds a purchase not consumed within 3 days). True when more may be due at once: a full batch, all of it
        finished (a store that keeps failing, or one no longer configured, waits for the next interval)."""
        unfinished = await self._store.unfinished_store_purchases(older_than_seconds, batch_size)
        finished = 0
        for purchase_id, proof in unfinished:
            if proof.store in self._stores:
                finished += await self._finish_at_store(purchase_id, proof)
        return len(unfinished) == batch_size and finished == batch_size

    async def reverse_by_rail(self, notice: domain.RailReversal, kind: str) -> domain.RailReversalOutcome:
        """A rail's refund, revocation or chargeback notice: recorded by its id in the transaction that applies it
        (a retry takes effect once), then the purchase of its transaction reversed up to the share it states. A
        notice of a transaction nobody has redeemed, or of a charge not completed yet (3-D Secure, a crash before its
        answer was recorded), waits for the credit, which applies it."""
        async with self._store.transaction() as tx:
            if not await tx.record_notification(notice.rail, notice.notification_id, kind):
                return domain.RailReversalOutcome.DUPLICATE
            purchase = await tx.lock_store_transaction(notice.rail, notice.store_transaction_id)
            if purchase is not None:
                purchase = await tx.lock_purchase(purchase.purchase_id)  # its status is final until this commits
            if purchase is None or purchase.status is domain.PurchaseStatus.PENDING:
                await tx.insert_early_reversal(notice)
                log.info(
                    "rail_reversal_waiting",
                    rail=notice.rail,
                    store_transaction_id=notice.store_transaction_id,
                    notification_id=notice.notification_id,
                )
                return domain.RailReversalOutcome.WAITING
            outcome = await _reverse_share(tx, purchase, notice)
        self._on_event_queued()
        return outcome

    async def store_purchase_consumption(
        self, store: domain.Store, transaction_id: str
    ) -> domain.PurchaseConsumption | None:
        """What the coins of a store transaction's purchase became (a store asks before deciding a refund); None when
        no completed purchase redeemed it."""
        return await self._store.store_purchase_consumption(store.value, transaction_id)

    async def settle_by_rail(self, notice: domain.RailPayment, kind: str) -> domain.RailPaymentOutcome:
        """A rail's word on a charge it left pending (the buyer finished 3-D Secure, or failed it): recorded by its
        id in the transaction that applies it, then the purchase completed or declined as PurchaseCoins' own charge
        would have done (so a retry of the purchase's request gets that answer). A purchase decided already, by
        its charge's answer or the recovery pass, is left as it is."""
        async with self._store.transaction() as tx:
            if not await tx.record_notification(notice.rail, notice.notification_id, kind):
                return domain.RailPaymentOutcome.DUPLICATE
            purchase = await _rail_purchase(tx, notice)
            if purchase is None:
                log.info("rail_payment_unknown", rail=notice.rail, store_transaction_id=notice.store_transaction_id)
                return domain.RailPaymentOutcome.UNKNOWN
            charge = ChargeResult(
                notice.approved,
                notice.store_transaction_id,
                notice.decline_reason,
                rail_transaction_id=notice.store_transaction_id,
            )
            if notice.approved and purchase.status is domain.PurchaseStatus.DECLINED:
                await _credit_a_late_payment(tx, purchase, charge)
                self._on_event_queued()
                return domain.RailPaymentOutcome.COMPLETED
            if purchase.status is not domain.PurchaseStatus.PENDING:
                return domain.RailPaymentOutcome.ALREADY_DECIDED
            await _settle(tx, purchase, charge)
        self._on_event_queued()  # a purchase that covered a debt unfroze its account
        if not notice.approved:
            PAYMENTS_DECLINED.inc()
            return domain.RailPaymentOutcome.DECLINED
        return domain.RailPaymentOutcome.COMPLETED

    async def record_notification(self, rail: str, notification_id: str, kind: str) -> bool:
        """A notification with no effect of ours (a test ping, a type we do not act on), recorded so that it is
        answered the same way again. False when it was recorded before."""
        async with self._store.transaction() as tx:
            return await tx.record_notification(rail, notification_id, kind)

    # --- promotions ---------------------------------------------------------------------------------------------

    async def create_promotion(self, command: domain.NewPromotion) -> domain.PromotionView:
        async def operation(tx: WalletTransaction) -> domain.PromotionView:
            now = await tx.now()
            promotion = await tx.insert_promotion(
                domain.Promotion(
                    promotion_id=new_id("promo"),
                    name=command.name,
                    starts_at=command.starts_at or now,
                    ends_at=command.ends_at,
                    min_package_coins=command.min_package_coins,
                    bonus_percent=command.bonus_percent,
                    bonus_coins=command.bonus_coins,
                    first_purchase_only=command.first_purchase_only,
                    max_uses_per_account=command.max_uses_per_account,
                    created_at=now,
                )
            )
            return promotion.seen_at(now)

        return await self._store.run_once(command.key, operation, convert.PROMOTION_CREATED)

    async def end_promotion(self, command: domain.EndPromotion) -> domain.PromotionView:
        async def operation(tx: WalletTransaction) -> domain.PromotionView:
            promotion = await tx.lock_promotion(command.promotion_id)
            if promotion is None:
                raise not_found("PROMOTION_NOT_FOUND", f"no promotion {command.promotion_id!r}")
            now = await tx.now()
            ends_at = domain.ended_now(promotion, now)
            if ends_at is not None:
                promotion = await tx.set_promotion_end(promotion.promotion_id, ends_at)
            return promotion.seen_at(now)

        return await self._store.run_once(command.key, operation, convert.PROMOTION_ENDED)

    async def list_promotions(self, page_size: int, page_token: str) -> pages.Page[domain.PromotionView]:
        before = _page_position(page_token, PROMOTIONS_PAGE, "")
        rows = await self._store.list_promotions(before, page_size + 1)
        page, more = rows[:page_size], len(rows) > page_size
        now = self._clock.now()
        next_token = pages.encode_page_token(PROMOTIONS_PAGE, "", [page[-1][0]]) if more else ""
        return pages.Page([promotion.seen_at(now) for _, promotion in page], next_token)

    # --- history ------------------------------------------------------------------------------------------------

    async def list_transactions(self, account_id: str, page_size: int, page_token: str) -> pages.Page[domain.Movement]:
        before = _page_position(page_token, TRANSACTIONS_PAGE, account_id)
        movements = await self._store.list_history(account_id, before, page_size + 1)
        page, more = movements[:page_size], len(movements) > page_size
        next_token = pages.encode_page_token(TRANSACTIONS_PAGE, account_id, [page[-1].posting_id]) if more else ""
        return pages.Page(page, next_token)


def purchase_not_found(purchase_id: str) -> AppError:
    """Also the answer for someone else's purchase: its id reveals nothing to other users."""
    return not_found("PURCHASE_NOT_FOUND", f"no purchase {purchase_id!r}")


def _page_position(page_token: str, kind: str, owner: str) -> int | None:
    """The bigint id a page resumes after (None for the first page); INVALID_ARGUMENT for a token this list did
    not hand out to this owner."""
    position = pages.decode_page_token(
        page_token, kind=kind, owner=owner, shape=(int,), int_range=POSITIONS, legacy_kind=LEGACY_KINDS[kind]
    )
    if position is None:
        return None
    resume_after = position[0]
    assert isinstance(resume_after, int)  # the shape checked it
    return resume_after


# --- purchases, step by step ------------------------------------------------------------------------------------


async def _record_pending_purchase(
    tx: WalletTransaction, command: domain.BuyCoins, card_testing: _CardTestingGuard, terms_version: str, rail: str
) -> StoredRequest:
    """The first step: a pending purchase with its bonus decided now (or the refusal, kept with the key)."""
    request_id = command.key.request_id
    try:
        package = domain.find_package(command.package_id)
        # The account lock serializes this account's purchase intents, so first-purchase-only and per-account
        # use limits hold under concurrent purchases, and so do the card-testing limits.
        account = domain.require_can_purchase(await tx.lock_account(command.account_id), command.account_id)
    except AppError as refusal:
        await tx.record_error(request_id, refusal)
        return StoredRequest(resource_id=None, response=None, error=refusal)
    await card_testing.refuse_if_blocked(tx, command)
    purchase = await _new_purchase(tx, request_id, account, package, terms_version)
    purchase = dataclasses.replace(purchase, payment_token=command.payment_token, caller=command.caller, rail=rail)
    await tx.insert_purchase(purchase)
    await tx.set_resource(request_id, purchase.purchase_id)
    return StoredRequest(resource_id=purchase.purchase_id, response=None, error=None)


async def _new_purchase(
    tx: WalletTransaction, request_id: str, account: domain.Account, package: domain.CoinPackage, terms_version: str
) -> domain.Purchase:
    """A pending purchase of the package by the account, with the bonus its promotions give now (the account is
    locked: first-purchase-only and per-account limits hold under concurrent purchases)."""
    promotions, now = await tx.open_promotions()
    history = await tx.purchase_history(account.account_id)
    promotion, bonus_coins = domain.best_promotion(promotions, package, now, history)
    return domain.Purchase(
        purchase_id=new_id("pur"),
        request_id=request_id,
        account_id=account.account_id,
        package_id=package.package_id,
        coins=package.coins,
        bonus_coins=bonus_coins,
        price_minor=package.price_minor,
        currency_code=package.currency_code,
        payment_token="",
        status=domain.PurchaseStatus.PENDING,
        transaction_id=None,
        promotion_id=promotion.promotion_id if promotion else None,
        storefront_country=account.country_code,  # the sandbox's (and the web's) storefront is the buyer's country
        terms_version=terms_version,
    )


def store_purchase(purchase: domain.Purchase, proof: domain.StoreProof, caller: str) -> domain.Purchase:
    """The purchase as its store made it: the store's transaction, the price and storefront the store reports."""
    paid = proof.price_paid_minor is not None
    return dataclasses.replace(
        purchase,
        rail=proof.store.value,
        store_transaction_id=proof.transaction_id,
        price_minor=proof.price_paid_minor if proof.price_paid_minor is not None else purchase.price_minor,
        currency_code=proof.currency_code if paid else purchase.currency_code,
        storefront_country=proof.storefront_country or purchase.storefront_country,
        payment_token=proof.purchase_token,
        caller=caller,
    )


async def _redeemed(tx: WalletTransaction, purchase: domain.Purchase) -> domain.Redeemed:
    locked = await tx.lock_purchase(purchase.purchase_id)
    assert locked is not None
    so_far = await tx.reversed_so_far(purchase.purchase_id)
    view = domain.PurchaseView(locked, await tx.now(), domain.Split(so_far.coins, so_far.bonus_coins))
    return domain.Redeemed(view, await tx.get_balance(purchase.account_id))


async def _reverse_share(
    tx: WalletTransaction, purchase: domain.Purchase, notice: domain.RailReversal
) -> domain.RailReversalOutcome:
    """Reverses the purchase up to the share the notice states, under the notice's own request id."""
    locked = await tx.lock_purchase(purchase.purchase_id)
    assert locked is not None, f"purchase {purchase.purchase_id} vanished"
    so_far = await tx.reversed_so_far(locked.purchase_id)
    coins = domain.coins_for_share(locked.coins, notice.share) - so_far.coins
    if locked.status is not domain.PurchaseStatus.COMPLETED or coins <= 0:
        return domain.RailReversalOutcome.NOTHING_LEFT
    command = domain.ReversePurchase(
        RequestKey(f"{notice.rail}:{notice.notification_id}", "RailReversal", b""),
        locked.purchase_id,
        notice.reason,
        coins,
    )
    await _reverse(tx, locked, so_far, coins, command)
    return domain.RailReversalOutcome.APPLIED


class _CardTestingGuard:
    """Refuses a new purchase (RESOURCE_EXHAUSTED RATE_LIMITED, with the RetryInfo delay) while the account to be
    charged, or the caller asking, has too many declined payments in the last 24 h (domain.card_testing).

    The refusal is raised, never kept with the request's key (RESOURCE_EXHAUSTED is no outcome: AppError.is_outcome),
    so the transaction rolls back with the key's claim: nothing is recorded, nothing charged, and the same request_id
    is a first attempt again once the declines have left the window. Like UNAVAILABLE, or the per-caller token
    buckets' RATE_LIMITED, it only says "not now": kept, it would answer the request for the 7 days and more its key
    lives, long after the block (24 h at most) has ended. Requests that already have a key are answered from it
    before this is looked at (WalletService.purchase)."""

    def __init__(self, limits: domain.DeclineLimits, undecided_wait: timedelta) -> None:
        self._limits = limits
        self._undecided_wait = undecided_wait  # a charge's timeout: by then a pending purchase is decided

    async def refuse_if_blocked(self, tx: WalletTransaction, command: domain.BuyCoins) -> None:
        # Purchases pending for longer than a charge takes wait for their buyer (3-D Secure) or the recovery pass:
        # no charge of theirs is under way, and an account with abandoned ones must still be able to buy.
        attempts = await tx.purchase_attempts(command.account_id, command.caller, self._limits, self._undecided_wait)
        blocked = domain.card_testing(attempts, self._limits, self._undecided_wait)
        if blocked is None:
            return
        CARD_TESTING_REFUSALS.labels(blocked.scope.value).inc()
        log.warning(
            "purchase_refused_card_testing",
            account_id=command.account_id,
            caller=command.caller,
            limit=blocked.scope.value,
            retry_after_seconds=round(blocked.wait.total_seconds()),
        )
        raise blocked.refusal(command.account_id)


async def _settle(tx: WalletTransaction, purchase: domain.Purchase, charge: ChargeResult) -> domain.Bought | None:
    """A pending purchase (locked) with its charge's outcome: credited and its answer kept with its key, declined
    and the refusal kept, or still pending (the pending answer returned, nothing kept: see WalletService.purchase).
    The rail's id of the charge is recorded either way, for the rail's notifications."""
    if charge.rail_transaction_id is not None:
        await tx.record_rail_transaction(purchase.purchase_id, charge.rail_transaction_id)
    if charge.pending:
        return _waiting(purchase, await tx.get_balance(purchase.account_id), charge.client_action_secret)
    if charge.approved:
        bought = await _credit_purchase(tx, purchase, charge)
        await tx.record_response(purchase.request_id, convert.BOUGHT.to_message(bought))
        rail_transaction_id = charge.rail_transaction_id or purchase.store_transaction_id
        if rail_transaction_id is not None:
            for notice in await tx.early_reversals(purchase.rail, rail_transaction_id):
                await _reverse_share(tx, purchase, notice)  # refunded or disputed before the credit
    else:
        await _decline_purchase(tx, purchase, charge)
    return None


async def _credit_a_late_payment(tx: WalletTransaction, purchase: domain.Purchase, charge: ChargeResult) -> None:
    """The buyer paid a charge that had been declined (3-D Secure failed, then another card on the same
    PaymentIntent succeeded): the money is taken, so the coins are given. The request's key keeps the decline it
    answered then; the purchase (GetPurchase) and the balance show the coins."""
    log.warning("rail_paid_a_declined_purchase", purchase_id=purchase.purchase_id, rail=purchase.rail)
    await tx.reopen_declined_purchase(purchase.purchase_id)
    reopened = dataclasses.replace(purchase, status=domain.PurchaseStatus.PENDING)
    await _credit_purchase(tx, reopened, charge)
    for notice in await tx.early_reversals(purchase.rail, charge.rail_transaction_id or ""):
        await _reverse_share(tx, reopened, notice)


def _waiting(purchase: domain.Purchase, balance: domain.Balance, client_action_secret: str) -> domain.Bought:
    return domain.Bought(
        purchase_id=purchase.purchase_id,
        account_id=purchase.account_id,
        package_id=purchase.package_id,
        coins=purchase.coins,
        bonus_coins=purchase.bonus_coins,
        promotion_id=purchase.promotion_id,
        balance=balance,
        pending=True,
        client_action_secret=client_action_secret,
    )


async def _rail_purchase(tx: WalletTransaction, notice: domain.RailPayment) -> domain.Purchase | None:
    """The purchase a rail's payment notice is about, locked: by its transaction, else by the purchase id the rail
    carried (the notice came before the charge's answer was recorded). None when it is no purchase of ours."""
    purchase = await tx.lock_store_transaction(notice.rail, notice.store_transaction_id)
    if purchase is None and notice.purchase_id:
        purchase = await tx.lock_purchase(notice.purchase_id)
    if purchase is None or purchase.rail != notice.rail:
        return None
    if purchase.store_transaction_id not in (None, notice.store_transaction_id):
        return None  # the purchase was charged through another transaction: this one is not its
    return purchase


async def _decline_purchase(tx: WalletTransaction, purchase: domain.Purchase, charge: ChargeResult) -> None:
    await tx.finish_purchase(purchase.purchase_id, domain.PurchaseStatus.DECLINED, charge.provider_reference, None)
    declined = failed_precondition("PAYMENT_DECLINED", f"payment declined: {charge.decline_reason}")
    await tx.record_error(purchase.request_id, declined)


async def _credit_purchase(tx: WalletTransaction, purchase: domain.Purchase, charge: ChargeResult) -> domain.Bought:
    """The coins (and bonus) of a paid purchase; a purchase that covers a chargeback's debt unfreezes the account."""
    account_id = purchase.account_id
    before = (await tx.lock_buckets([account_id]))[account_id]
    transaction_id = new_id("txn")
    await tx.record_movement(
        transaction_id=transaction_id,
        kind="purchase",
        request_id=purchase.request_id,
        account_id=account_id,
        reference=purchase.purchase_id,
        postings=domain.purchase_postings(account_id, purchase.coins, purchase.bonus_coins),
    )
    lots, repaid = funding.purchase_lots(
        account_id, purchase.purchase_id, purchase.coins, purchase.bonus_coins, before.paid_coins
    )
    debt_repaid = domain.Draw(None, domain.paid_bucket(account_id), purchase.purchase_id, repaid)
    await tx.record_funding(
        transaction_id, [domain.Funding(transaction_id, debt_repaid, domain.Use.DEBT)] if repaid else [], lots
    )
    after = before.credited(domain.Split(paid_coins=purchase.coins, bonus_coins=purchase.bonus_coins))
    if domain.debt_covered(before, after):  # the account may spend again
        await _set_status(tx, account_id, domain.AccountStatus.ACTIVE)
    await tx.finish_purchase(
        purchase.purchase_id, domain.PurchaseStatus.COMPLETED, charge.provider_reference, transaction_id
    )
    return domain.Bought(
        purchase_id=purchase.purchase_id,
        account_id=account_id,
        package_id=purchase.package_id,
        coins=purchase.coins,
        bonus_coins=purchase.bonus_coins,
        promotion_id=purchase.promotion_id,
        balance=after,
    )


async def _reverse(
    tx: WalletTransaction,
    purchase: domain.Purchase,
    so_far: domain.ReversedSoFar,
    coins: int,
    command: domain.ReversePurchase,
) -> domain.Reversed:
    buyer = purchase.account_id
    reversing = domain.Split(coins, funding.reversed_bonus(purchase.coins, purchase.bonus_coins, so_far.coins, coins))
    balances, lots = await _lock_holders(tx, buyer, purchase.purchase_id)
    plan = funding.plan_reversal(buyer, reversing, lots, await tx.traced_uses(purchase.purchase_id))
    buyer_lots = funding.after_draws(await tx.lots_of([buyer]), plan.removed)
    before_charge = funding.after_removal(buyer, balances[buyer], plan.removed)
    charge = funding.charge_split(plan.charged, before_charge)
    charged = funding.Holdings(buyer, buyer_lots).take_as_far_as_they_go(charge)
    transaction_id = new_id("txn")
    await tx.record_movement(
        transaction_id=transaction_id,
        kind="reversal",
        request_id=command.key.request_id,
        account_id=buyer,
        reference=purchase.purchase_id,
        postings=funding.reversal_postings(buyer, reversing, plan, charge),
        debt_allowed=True,
    )
    await tx.record_funding(
        transaction_id,
        [domain.Funding(transaction_id, d, domain.Use.REVERSED) for d in plan.removed]
        + [domain.Funding(transaction_id, d, domain.Use.CHARGED) for d in charged],
        [],
    )
    after = before_charge.debited(charge)
    taken = domain.Split(balances[buyer].paid_coins - after.paid_coins, balances[buyer].bonus_coins - after.bonus_coins)
    removed_coins = sum(d.coins for d in plan.removed)
    reversal = domain.PurchaseReversal(
        purchase.purchase_id,
        command.key.request_id,
        transaction_id,
        command.reason,
        reversing,
        taken,
        removed_coins,
        plan.clawed_back_coins,
    )
    await tx.insert_reversal(reversal, plan.allocations)
    # Payouts takes back what the traced gifts earned; the event goes out once this commits.
    await tx.queue_events(events.purchase_reversed(reversal, buyer, plan.gifts(), await tx.now()))
    if domain.in_debt(after):
        await _set_status(tx, buyer, domain.AccountStatus.FROZEN)
    account = await tx.get_account(buyer)
    assert account is not None, f"account {buyer} of a completed purchase vanished"
    log.info(
        "purchase_reversed",
        purchase_id=purchase.purchase_id,
        account_id=buyer,
        coins=reversing.paid_coins,
        bonus_coins=reversing.bonus_coins,
        removed_coins=removed_coins,
        clawed_back_coins=plan.clawed_back_coins,
        charged_coins=charge.coins,
    )
    return domain.Reversed(
        transaction_id, buyer, after, account.status, reversing, removed_coins, plan.clawed_back_coins, charge.coins
    )


async def _lock_holders(
    tx: WalletTransaction, buyer: str, purchase_id: str
) -> tuple[dict[str, domain.Balance], list[domain.Lot]]:
    """Locks the buyer and every holder of the purchase's unspent coins (in id order, as every movement does), and
    returns their balances and the purchase's lots. A holder may give a lot on between the look and the lock: the
    lots are read again under the locks, and a new holder locked too, until no lot is outside them (a few rounds at
    most; a lot still outside after that is not removed, its coins are traced like used ones)."""
    balances: dict[str, domain.Balance] = {}
    lots = await tx.purchase_lots(purchase_id)  # a first look, so the first round locks everyone in id order
    wanted = {lot.holder for lot in lots} | {buyer}
    for _ in range(LOCK_HOLDERS_ROUNDS):
        balances |= await tx.lock_buckets(sorted(wanted - set(balances)))
        lots = await tx.purchase_lots(purchase_id)
        wanted = {lot.holder for lot in lots} | {buyer}
        if wanted <= set(balances):
            break
    return balances, [lot for lot in lots if lot.holder in balances]


async def _set_status(tx: WalletTransaction, account_id: str, status: domain.AccountStatus) -> None:
    """A change of status, and its event: payouts refuses a frozen account's withdrawals from it."""
    version = await tx.set_status(account_id, status)
    if version is not None:
        await tx.queue_events([events.status_changed(account_id, status, version, await tx.now())])


# --- giveaways and spends, step by step -------------------------------------------------------------------------


async def _authorize_giveaway(
    tx: WalletTransaction, command: domain.MakeGiveaway
) -> tuple[domain.Spender, domain.Split]:
    """The creator first (eligible, not frozen), then every winner, then the creator's coins and limit."""
    spender = (await tx.read_spenders([command.creator_id]))[command.creator_id]
    domain.require_can_transact(spender.account, command.creator_id)
    winner_ids = list(command.winner_ids)
    domain.require_winners_eligible(winner_ids, await tx.get_accounts(winner_ids))
    return spender, domain.authorize_spend(spender, command.creator_id, command.total_coins)


async def _spend_fresh(
    tx: WalletTransaction, asks: list[domain.SpendAsk], in_ledger: set[str]
) -> dict[str, SpendOutcome]:
    """The outcomes of spends that just got their keys, stored with them."""
    outcomes: dict[str, SpendOutcome] = {}
    for ask in asks:
        # The ledger outlives idempotency keys: a spend retried after its key expired (a gift left pending for
        # days, say) gets its original answer, not a second charge; a request_id the ledger holds for something
        # else (another account's spend, a purchase) is refused alone, never failing the batch.
        if ask.request_id in in_ledger:
            earlier = await tx.find_spend(ask.request_id, ask.account_id)
            outcomes[ask.request_id] = request_id_reused() if earlier is None else earlier.as_spend(ask.account_id)
    new_asks = [ask for ask in asks if ask.request_id not in in_ledger]
    new_spends = await _decide_spends(tx, new_asks, outcomes) if new_asks else []
    await tx.record_spends(new_spends, [_kept(request_id, outcome) for request_id, outcome in outcomes.items()])
    return outcomes


async def _decide_spends(
    tx: WalletTransaction, asks: list[domain.SpendAsk], outcomes: dict[str, SpendOutcome]
) -> list[domain.NewSpend]:
    """Decides new spends into outcomes and returns the ones to record: every account's buckets are locked (in id
    order) before they are read."""
    account_ids = sorted({ask.account_id for ask in asks})
    await tx.lock_buckets(account_ids)
    spenders = await tx.read_spenders(account_ids)
    balances = {account_id: spender.balance for account_id, spender in spenders.items()}
    holdings = {account_id: funding.Holdings(account_id, spender.lots) for account_id, spender in spenders.items()}
    new_spends: list[domain.NewSpend] = []
    for ask, decision in zip(asks, domain.authorize_spends(asks, spenders), strict=True):
        if isinstance(decision, AppError):
            outcomes[ask.request_id] = decision
            continue
        after = balances[ask.account_id] = balances[ask.account_id].debited(decision)
        spend = domain.NewSpend(
            new_id("txn"),
            ask.request_id,
            ask.account_id,
            ask.reference,
            domain.spend_legs(ask.account_id, decision, after),
            tuple(holdings[ask.account_id].take(decision)),
        )
        new_spends.append(spend)
        outcomes[ask.request_id] = domain.Spent(spend.transaction_id, ask.account_id, after, decision)
    return new_spends


def _replayed_spend(stored: StoredRequest | AppError) -> SpendOutcome:
    if isinstance(stored, AppError):
        return stored
    if stored.in_flight:  # spends decide in the transaction that takes the key, so this is never seen committed
        return unavailable("NOT_READY", "this spend is still being decided; retry with the same request_id")
    try:
        return replayed(stored, convert.SPENT)
    except AppError as error:
        return error


def _kept(request_id: str, outcome: SpendOutcome) -> Outcome:
    """A spend's outcome as its key keeps it."""
    if isinstance(outcome, AppError):
        return Outcome(request_id, error=outcome)
    return Outcome(request_id, response=convert.SPENT.to_message(outcome))
