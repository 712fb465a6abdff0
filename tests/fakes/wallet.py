"""An in-memory wallet store (services/wallet/ports.py's WalletStore) for unit tests of the use cases.

Same transaction semantics as PostgreSQL: a transaction works on a copy of the state, which replaces the state only
when its block exits normally (an exception drops it); transactions run one at a time, which stands in for the
row locks (every use case locks what it changes). It enforces what the database enforces and the rules rely on:
no user bucket pushed below zero unless the transaction allows debt, every ledger transaction balanced with no zero
leg and no account twice (services.runtime.ledger.balanced), unique request_ids (idempotency keys, ledger
transactions, purchases, reversals, giveaways), no lot drawn below zero, rows referring to existing accounts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from google.protobuf.message import Message

from services.runtime import idempotency
from services.runtime.errors import AppError, request_id_reused
from services.runtime.ledger import UnbalancedTransaction, balanced
from services.runtime.outbox import OutboxRow
from services.runtime.requests import Reply, RequestKey, replayed
from services.wallet.domain import (
    DECLINE_WINDOW,
    SPENDING_LIMIT_WINDOW,
    SYSTEM_ACCOUNTS,
    TRACED_USES,
    Account,
    AccountStatus,
    Balance,
    DeclineLimits,
    Declines,
    Funding,
    Lot,
    Movement,
    NewLot,
    NewSpend,
    Postings,
    Promotion,
    Purchase,
    PurchaseAttempts,
    PurchaseHistory,
    PurchaseReversal,
    PurchaseStatus,
    PurchaseView,
    RailReversal,
    ReversedSoFar,
    Spender,
    SpendingLimit,
    Split,
    Use,
    bonus_bucket,
    buckets,
    paid_bucket,
)
from services.wallet.funding import Allocation, EarlierUse, gift_of
from services.wallet.ports import ChargeResult, Operation, Result

DEFAULT_PROMOTION = Promotion(
    promotion_id="promo_default",
    name="+5% on packages of 1,321 coins or more",
    starts_at=datetime(2020, 1, 1, tzinfo=UTC),
    ends_at=None,
    min_package_coins=1321,
    bonus_percent=5,
    bonus_coins=None,
    first_purchase_only=False,
    max_uses_per_account=0,
    created_at=datetime(2020, 1, 1, tzinfo=UTC),
)


class ConstraintViolation(Exception):
    """What the database would refuse (a check, a unique key, a foreign key, a trigger)."""


class FakeClock:
    def __init__(self, now: datetime = datetime(2026, 1, 1, 12, tzinfo=UTC)) -> None:
        self._now = now

    def now(self) -> datetime:
        return self._now

    def advance(self, by: timedelta) -> None:
        self._now += by


@dataclass(frozen=True)
class StoredKey:
    method: str
    fingerprint: bytes
    resource_id: str | None = None
    response: bytes | None = None
    error: AppError | None = None

    def as_stored(self) -> idempotency.StoredRequest:
        return idempotency.StoredRequest(self.resource_id, self.response, self.error)


@dataclass(frozen=True)
class LedgerTransaction:
    transaction_id: str
    kind: str
    request_id: str
    account_id: str
    reference: str
    created_at: datetime


@dataclass(frozen=True)
class Posting:
    posting_id: int
    transaction_id: str
    ledger_account_id: str
    coins_delta: int
    balance_after: int | None  # user buckets only
    created_at: datetime


@dataclass(frozen=True)
class FundingRow:
    funding_id: int
    funding: Funding


@dataclass(frozen=True)
class Giveaway:
    giveaway_id: str
    request_id: str
    creator_id: str
    coins_per_winner: int
    winner_ids: tuple[str, ...]
    transaction_id: str


@dataclass
class WalletState:
    """The tables. Rows are immutable values, so copying the containers copies the state."""

    accounts: dict[str, Account] = field(default_factory=dict)
    coins: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SYSTEM_ACCOUNTS, 0))  # ledger accounts
    transactions: dict[str, LedgerTransaction] = field(default_factory=dict)
    postings: list[Posting] = field(default_factory=list)
    purchases: dict[str, Purchase] = field(default_factory=dict)
    purchases_created_at: dict[str, datetime] = field(default_factory=dict)
    purchases_updated_at: dict[str, datetime] = field(default_factory=dict)  # a declined one's: when it was declined
    provider_references: dict[str, str] = field(default_factory=dict)
    reversals: dict[str, PurchaseReversal] = field(default_factory=dict)  # by transaction_id
    allocations: list[tuple[str, Allocation]] = field(default_factory=list)  # (reversal transaction_id, allocation)
    lots: dict[int, Lot] = field(default_factory=dict)  # by lot_id, the order they were made in
    funding: list[FundingRow] = field(default_factory=list)
    status_versions: dict[str, int] = field(default_factory=dict)
    outbox: list[OutboxRow] = field(default_factory=list)
    giveaways: dict[str, Giveaway] = field(default_factory=dict)
    promotions: dict[int, Promotion] = field(default_factory=dict)  # by position
    keys: dict[str, StoredKey] = field(default_factory=dict)
    notifications: set[tuple[str, str]] = field(default_factory=set)  # (rail, notification_id)
    early_reversals: list[RailReversal] = field(default_factory=list)

    def copy(self) -> WalletState:
        return WalletState(
            accounts=dict(self.accounts),
            coins=dict(self.coins),
            transactions=dict(self.transactions),
            postings=list(self.postings),
            purchases=dict(self.purchases),
            purchases_created_at=dict(self.purchases_created_at),
            purchases_updated_at=dict(self.purchases_updated_at),
            provider_references=dict(self.provider_references),
            reversals=dict(self.reversals),
            allocations=list(self.allocations),
            lots=dict(self.lots),
            funding=list(self.funding),
            status_versions=dict(self.status_versions),
            outbox=list(self.outbox),
            giveaways=dict(self.giveaways),
            promotions=dict(self.promotions),
            keys=dict(self.keys),
            notifications=set(self.notifications),
            early_reversals=list(self.early_reversals),
        )

    def balance(self, account_id: str) -> Balance:
        return Balance(self.coins.get(paid_bucket(account_id), 0), self.coins.get(bonus_bucket(account_id), 0))

    def promotion(self, promotion_id: str) -> tuple[int, Promotion] | None:
        return next(((p, promo) for p, promo in self.promotions.items() if promo.promotion_id == promotion_id), None)


class FakeWalletStore:
    """ports.WalletStore in memory. `state` is what is committed; `transactions_run` counts transactions begun."""

    def __init__(self, clock: FakeClock | None = None, *, default_promotion: bool = True) -> None:
        self.clock = clock or FakeClock()
        self.state = WalletState()
        if default_promotion:
            self.state.promotions[1] = DEFAULT_PROMOTION
        self.transactions_run = 0
        self._one_at_a_time = asyncio.Lock()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[FakeTransaction]:
        async with self._one_at_a_time:
            self.transactions_run += 1
            tx = FakeTransaction(self.state.copy(), self.clock.now())
            yield tx
            if not tx.aborted:  # reached only when the block did not raise
                self.state = tx.state

    async def run_once(self, key: RequestKey, operation: Operation[Result], reply: Reply[Result]) -> Result:
        outcome: Result | AppError
        async with self.transaction() as tx:
            stored = await tx.claim(key)
            if stored is not None:
                return replayed(stored, reply)
            savepoint = tx.state.copy()
            try:
                outcome = await operation(tx)
                await tx.record_response(key.request_id, reply.to_message(outcome))
            except AppError as error:
                if not error.is_outcome:
                    raise
                tx.state = savepoint  # the operation's writes go, the key stays and keeps the error
                await tx.record_error(key.request_id, error)
                outcome = error
        if isinstance(outcome, AppError):
            raise outcome
        return outcome

    async def get_account(self, account_id: str) -> Account | None:
        return self.state.accounts.get(account_id)

    async def get_balance(self, account_id: str) -> Balance:
        return self.state.balance(account_id)

    async def balance_as_of(self, account_id: str, as_of: datetime) -> Balance:
        def last(bucket: str) -> int:
            earlier = [p for p in self.state.postings if p.ledger_account_id == bucket and p.created_at <= as_of]
            latest = max(earlier, key=lambda p: (p.created_at, p.posting_id), default=None)
            return 0 if latest is None or latest.balance_after is None else latest.balance_after

        return Balance(last(paid_bucket(account_id)), last(bonus_bucket(account_id)))

    async def get_purchase(self, purchase_id: str) -> Purchase:
        return self.state.purchases[purchase_id]

    async def find_purchase(self, purchase_id: str) -> PurchaseView | None:
        purchase = self.state.purchases.get(purchase_id)
        if purchase is None:
            return None
        mine = [r for r in self.state.reversals.values() if r.purchase_id == purchase_id]
        reversed_ = Split(sum(r.reversed.paid_coins for r in mine), sum(r.reversed.bonus_coins for r in mine))
        return PurchaseView(purchase, self.state.purchases_created_at[purchase_id], reversed_)

    async def load_outcome(self, request_id: str) -> idempotency.StoredRequest:
        return self.state.keys[request_id].as_stored()

    async def stale_pending_purchases(self, rail: str, older_than_seconds: float, limit: int) -> list[str]:
        cutoff = self.clock.now() - timedelta(seconds=older_than_seconds)
        pending = [
            (self.state.purchases_created_at[p.purchase_id], p.purchase_id)
            for p in self.state.purchases.values()
            if p.status is PurchaseStatus.PENDING
            and p.rail == rail
            and self.state.purchases_created_at[p.purchase_id] < cutoff
        ]
        return [purchase_id for _, purchase_id in sorted(pending)[:limit]]

    async def open_promotions(self) -> tuple[list[Promotion], datetime]:
        return _open_promotions(self.state, self.clock.now())

    async def list_promotions(self, before_position: int | None, limit: int) -> list[tuple[int, Promotion]]:
        positions = sorted(
            (p for p in self.state.promotions if before_position is None or p < before_position), reverse=True
        )
        return [(position, self.state.promotions[position]) for position in positions[:limit]]

    async def list_history(self, account_id: str, before_posting_id: int | None, limit: int) -> list[Movement]:
        mine = [
            p
            for p in self.state.postings
            if p.ledger_account_id in buckets(account_id)
            and (before_posting_id is None or p.posting_id < before_posting_id)
        ]
        newest = sorted(mine, key=lambda p: p.posting_id, reverse=True)[: 2 * limit]
        movements = _movements(self.state, account_id, newest)
        return sorted(movements, key=lambda m: m.posting_id, reverse=True)[:limit]


class FakeTransaction:
    """ports.WalletTransaction on a working copy of the state."""

    def __init__(self, state: WalletState, now: datetime) -> None:
        self.state = state
        self._now = now  # PostgreSQL's now(): the transaction's start, the same for all of it
        # A refused statement aborts a PostgreSQL transaction: it can then only roll back, even if the error is caught.
        self.aborted = False

    def _refuse(self, what: str) -> ConstraintViolation:
        self.aborted = True
        return ConstraintViolation(what)

    async def now(self) -> datetime:
        return self._now

    # --- idempotency keys ---------------------------------------------------------------------------------------

    async def claim(self, key: RequestKey) -> idempotency.StoredRequest | None:
        stored = self.state.keys.get(key.request_id)
        if stored is None:
            self.state.keys[key.request_id] = StoredKey(key.method, key.fingerprint)
            return None
        if stored.fingerprint != key.fingerprint:
            raise request_id_reused()
        return stored.as_stored()

    async def set_resource(self, request_id: str, resource_id: str) -> None:
        self.state.keys[request_id] = replace(self.state.keys[request_id], resource_id=resource_id)

    async def record_response(self, request_id: str, response: Message) -> None:
        self._record_outcome(request_id, response.SerializeToString(), None)

    async def record_error(self, request_id: str, error: AppError) -> None:
        self._record_outcome(request_id, None, error)

    def _record_outcome(self, request_id: str, response: bytes | None, error: AppError | None) -> None:
        self.state.keys[request_id] = replace(self.state.keys[request_id], response=response, error=error)

    # --- accounts -----------------------------------------------------------------------------------------------

    async def upsert_account(self, account_id: str, adult_verified: bool, country_code: str) -> Account:
        existing = self.state.accounts.get(account_id)
        if existing is None:
            account = Account(account_id, adult_verified, country_code, AccountStatus.ACTIVE)
        else:
            account = replace(existing, adult_verified=adult_verified, country_code=country_code)
        self.state.accounts[account_id] = account
        for bucket in buckets(account_id):
            self.state.coins.setdefault(bucket, 0)
        return account

    async def get_account(self, account_id: str) -> Account | None:
        return self.state.accounts.get(account_id)

    async def lock_account(self, account_id: str) -> Account | None:
        return self.state.accounts.get(account_id)

    async def get_accounts(self, account_ids: list[str]) -> dict[str, Account]:
        return {a: self.state.accounts[a] for a in account_ids if a in self.state.accounts}

    async def set_status(self, account_id: str, status: AccountStatus) -> int | None:
        account = self.state.accounts[account_id]
        if account.status is status:
            return None
        self.state.accounts[account_id] = replace(account, status=status)
        self.state.status_versions[account_id] = version = self.state.status_versions.get(account_id, 0) + 1
        return version

    async def queue_events(self, events: list[OutboxRow]) -> None:
        self.state.outbox.extend(events)

    async def set_spending_limit(self, account_id: str, limit: SpendingLimit) -> Account:
        if limit.daily_coins < 0 or (limit.pending_daily_coins is None) != (limit.pending_effective_at is None):
            raise self._refuse(f"spending limit {limit}")
        account = replace(self.state.accounts[account_id], spending_limit=limit)
        self.state.accounts[account_id] = account
        return account

    # --- balances and movements ---------------------------------------------------------------------------------

    async def get_balance(self, account_id: str) -> Balance:
        return self.state.balance(account_id)

    async def lock_buckets(self, account_ids: list[str]) -> dict[str, Balance]:
        return {account_id: self.state.balance(account_id) for account_id in account_ids}

    async def read_spenders(self, account_ids: list[str]) -> dict[str, Spender]:
        return {
            account_id: Spender(
                self.state.accounts.get(account_id),
                self.state.balance(account_id),
                self._sent_in_window(account_id),
                self._now,
                tuple(await self.lots_of([account_id])),
            )
            for account_id in account_ids
        }

    def _sent_in_window(self, account_id: str) -> int:
        """As the store's query: only accounts with a limit (now or pending) are summed."""
        account = self.state.accounts.get(account_id)
        if account is None or not (account.spending_limit.daily_coins or account.spending_limit.pending_daily_coins):
            return 0
        since = self._now - SPENDING_LIMIT_WINDOW
        sending = {
            t.transaction_id
            for t in self.state.transactions.values()
            if t.account_id == account_id and t.kind in ("spend", "giveaway") and t.created_at > since
        }
        return -sum(
            p.coins_delta
            for p in self.state.postings
            if p.transaction_id in sending and p.ledger_account_id in buckets(account_id)
        )

    async def record_movement(
        self,
        *,
        transaction_id: str,
        kind: str,
        request_id: str,
        account_id: str,
        reference: str,
        postings: Postings,
        debt_allowed: bool = False,
    ) -> None:
        self._require_balanced(postings)
        self._insert_transaction(LedgerTransaction(transaction_id, kind, request_id, account_id, reference, self._now))
        for ledger_account, delta in postings:
            after = self._move(ledger_account, delta, debt_allowed)
            self._post(transaction_id, ledger_account, delta, after)

    def _require_balanced(self, postings: Postings) -> None:
        """What the ledger's triggers and checks refuse: unbalanced, an account twice, a zero leg."""
        try:
            moving = balanced(postings)
        except UnbalancedTransaction as error:
            raise self._refuse(str(error)) from None
        if moving != list(postings):
            raise self._refuse(f"a zero leg in {postings}")

    def _insert_transaction(self, transaction: LedgerTransaction) -> None:
        if transaction.kind not in ("purchase", "spend", "reversal", "giveaway"):
            raise self._refuse(f"transaction kind {transaction.kind!r}")
        if transaction.transaction_id in self.state.transactions:
            raise self._refuse(f"transaction {transaction.transaction_id} twice")
        if any(t.request_id == transaction.request_id for t in self.state.transactions.values()):
            raise self._refuse(f"a second ledger transaction for request {transaction.request_id}")
        if transaction.account_id not in self.state.accounts:
            raise self._refuse(f"no account {transaction.account_id}")
        self.state.transactions[transaction.transaction_id] = transaction

    def _move(self, ledger_account: str, delta: int, debt_allowed: bool) -> int | None:
        """A bucket's balance after delta (None for a system account), refused below zero as the trigger does."""
        if ledger_account not in self.state.coins:
            raise self._refuse(f"no ledger account {ledger_account}")
        before = self.state.coins[ledger_account]
        self.state.coins[ledger_account] = after = before + delta
        if ledger_account in SYSTEM_ACCOUNTS:
            return None
        if after < 0 and after < before and not debt_allowed:
            raise self._refuse(f"user ledger account {ledger_account} would go to {after} coins")
        return after

    def _post(self, transaction_id: str, ledger_account: str, delta: int, balance_after: int | None) -> None:
        posting_id = len(self.state.postings) + 1
        self.state.postings.append(Posting(posting_id, transaction_id, ledger_account, delta, balance_after, self._now))

    # --- spends -------------------------------------------------------------------------------------------------

    async def claim_spends(self, keys: list[RequestKey]) -> tuple[set[str], set[str]]:
        if len({key.request_id for key in keys}) != len(keys):
            raise self._refuse("a batch must not hold a request_id twice")
        in_ledger = {
            key.request_id
            for key in keys
            if any(
                t.request_id in (key.request_id, idempotency.unscoped(key.request_id))
                for t in self.state.transactions.values()
            )
        }
        claimed = set()
        for key in sorted(keys, key=lambda k: k.request_id):
            if key.request_id not in self.state.keys:
                self.state.keys[key.request_id] = StoredKey(key.method, key.fingerprint)
                claimed.add(key.request_id)
        return claimed, in_ledger

    async def earlier_outcomes(
        self, keys: list[RequestKey], claimed: set[str]
    ) -> dict[str, idempotency.StoredRequest | AppError]:
        earlier: dict[str, idempotency.StoredRequest | AppError] = {}
        for key in keys:
            if key.request_id in claimed:
                continue
            stored = self.state.keys.get(key.request_id)
            matches = stored is not None and stored.fingerprint == key.fingerprint
            earlier[key.request_id] = stored.as_stored() if stored is not None and matches else request_id_reused()
        return earlier

    async def find_spend(self, request_id: str, account_id: str) -> Movement | None:
        spend = next(
            (
                t
                for t in self.state.transactions.values()
                if t.request_id in (request_id, idempotency.unscoped(request_id))
                and t.kind == "spend"
                and t.account_id == account_id
            ),
            None,
        )
        if spend is None:
            return None
        mine = [
            p
            for p in self.state.postings
            if p.transaction_id == spend.transaction_id and p.ledger_account_id in buckets(account_id)
        ]
        return next(iter(_movements(self.state, account_id, mine)), None)

    async def record_spends(self, spends: list[NewSpend], outcomes: list[idempotency.Outcome]) -> None:
        """As the store's one statement: each bucket moved by the sum of its legs, which must arrive at the balances
        the legs carry; every posting in the batch's order; every outcome in its key."""
        for spend in spends:
            self._require_balanced([(leg.ledger_account_id, leg.coins_delta) for leg in spend.legs])
            self._insert_transaction(
                LedgerTransaction(
                    spend.transaction_id, "spend", spend.request_id, spend.account_id, spend.reference, self._now
                )
            )
        legs = [(spend.transaction_id, leg) for spend in spends for leg in spend.legs]
        for _, leg in legs:
            self._move(leg.ledger_account_id, leg.coins_delta, debt_allowed=False)
        expected = {leg.ledger_account_id: leg.balance_after for _, leg in legs if leg.balance_after is not None}
        actual = {bucket: self.state.coins[bucket] for bucket in expected}
        assert actual == expected, f"spend batch balances disagree: expected {expected}, store has {actual}"
        for transaction_id, leg in legs:
            self._post(transaction_id, leg.ledger_account_id, leg.coins_delta, leg.balance_after)
        for spend in spends:
            self._fund([Funding(spend.transaction_id, draw, Use.SPEND) for draw in spend.draws])
        for outcome in outcomes:
            response = None if outcome.response is None else outcome.response.SerializeToString()
            self._record_outcome(outcome.request_id, response, outcome.error)

    # --- purchases ----------------------------------------------------------------------------------------------

    async def insert_purchase(self, purchase: Purchase) -> None:
        if purchase.purchase_id in self.state.purchases or any(
            p.request_id == purchase.request_id for p in self.state.purchases.values()
        ):
            raise self._refuse(f"purchase {purchase.purchase_id} or its request twice")
        if purchase.account_id not in self.state.accounts:
            raise self._refuse(f"no account {purchase.account_id}")
        if (purchase.promotion_id is None) != (purchase.bonus_coins == 0) or purchase.coins <= 0:
            raise self._refuse(f"purchase {purchase}")
        self.state.purchases[purchase.purchase_id] = purchase
        self.state.purchases_created_at[purchase.purchase_id] = self._now
        self.state.purchases_updated_at[purchase.purchase_id] = self._now

    async def lock_purchase(self, purchase_id: str) -> Purchase | None:
        return self.state.purchases.get(purchase_id)

    async def purchase_history(self, account_id: str) -> PurchaseHistory:
        counted = [
            p
            for p in self.state.purchases.values()
            if p.account_id == account_id and p.status in (PurchaseStatus.PENDING, PurchaseStatus.COMPLETED)
        ]
        uses: dict[str, int] = {}
        for purchase in counted:
            if purchase.promotion_id:
                uses[purchase.promotion_id] = uses.get(purchase.promotion_id, 0) + 1
        return PurchaseHistory(purchases=len(counted), uses_by_promotion=uses)

    async def purchase_attempts(
        self, account_id: str, caller: str, limits: DeclineLimits, undecided_within: timedelta
    ) -> PurchaseAttempts:
        pending = [
            p
            for p in self.state.purchases.values()
            if p.account_id == account_id
            and p.status is PurchaseStatus.PENDING
            and self.state.purchases_created_at[p.purchase_id] > self._now - undecided_within
        ]
        return PurchaseAttempts(
            self._newest_declines(lambda p: p.account_id == account_id, limits.per_account),
            self._newest_declines(lambda p: p.caller == caller, limits.per_caller),
            len(pending),
            self._now,
        )

    def _newest_declines(self, whose: Callable[[Purchase], bool], limit: int) -> Declines:
        """As the store's query: the newest declines in the window, as many as the limit counts."""
        since = self._now - DECLINE_WINDOW
        declined_at = sorted(
            (
                self.state.purchases_updated_at[p.purchase_id]
                for p in self.state.purchases.values()
                if whose(p)
                and p.status is PurchaseStatus.DECLINED
                and self.state.purchases_updated_at[p.purchase_id] > since
            ),
            reverse=True,
        )[:limit]
        return Declines(len(declined_at), min(declined_at, default=None))

    async def finish_purchase(
        self, purchase_id: str, status: PurchaseStatus, provider_reference: str, transaction_id: str | None
    ) -> None:
        purchase = self.state.purchases[purchase_id]
        if purchase.status is not PurchaseStatus.PENDING:
            return
        if (status is PurchaseStatus.COMPLETED) != (transaction_id is not None):
            raise self._refuse(f"purchase {purchase_id} {status} with transaction {transaction_id}")
        self.state.purchases[purchase_id] = replace(purchase, status=status, transaction_id=transaction_id)
        self.state.purchases_updated_at[purchase_id] = self._now
        self.state.provider_references[purchase_id] = provider_reference

    async def reopen_declined_purchase(self, purchase_id: str) -> None:
        purchase = self.state.purchases[purchase_id]
        if purchase.status is PurchaseStatus.DECLINED:
            self.state.purchases[purchase_id] = replace(purchase, status=PurchaseStatus.PENDING)

    async def lock_store_transaction(self, rail: str, store_transaction_id: str) -> Purchase | None:
        found = [
            p for p in self.state.purchases.values() if (p.rail, p.store_transaction_id) == (rail, store_transaction_id)
        ]
        return found[0] if found else None

    async def record_notification(self, rail: str, notification_id: str, kind: str) -> bool:
        if (rail, notification_id) in self.state.notifications:
            return False
        self.state.notifications.add((rail, notification_id))
        return True

    async def insert_early_reversal(self, reversal: RailReversal) -> None:
        self.state.early_reversals.append(reversal)

    async def early_reversals(self, rail: str, store_transaction_id: str) -> list[RailReversal]:
        return [
            r for r in self.state.early_reversals if (r.rail, r.store_transaction_id) == (rail, store_transaction_id)
        ]

    async def record_rail_transaction(self, purchase_id: str, rail_transaction_id: str) -> None:
        purchase = self.state.purchases[purchase_id]
        if purchase.store_transaction_id is None:
            self.state.purchases[purchase_id] = replace(purchase, store_transaction_id=rail_transaction_id)
        self.state.purchases_updated_at[purchase_id] = self._now

    async def reversed_so_far(self, purchase_id: str) -> ReversedSoFar:
        mine = [r for r in self.state.reversals.values() if r.purchase_id == purchase_id]
        return ReversedSoFar(
            sum(r.reversed.paid_coins for r in mine),
            sum(r.reversed.bonus_coins for r in mine),
            mine[-1].transaction_id if mine else None,
        )

    async def insert_reversal(self, reversal: PurchaseReversal, allocations: list[Allocation]) -> None:
        if reversal.transaction_id in self.state.reversals or any(
            r.request_id == reversal.request_id for r in self.state.reversals.values()
        ):
            raise self._refuse(f"reversal {reversal.transaction_id} or its request twice")
        if (
            reversal.transaction_id not in self.state.transactions
            or min(reversal.reversed.paid_coins, reversal.reversed.bonus_coins, reversal.removed_coins) < 0
        ):
            raise self._refuse(f"reversal {reversal}")
        self.state.reversals[reversal.transaction_id] = reversal
        for allocation in allocations:
            if allocation.coins <= 0:
                raise self._refuse(f"allocation {allocation}")
            self.state.allocations.append((reversal.transaction_id, allocation))

    # --- funding ------------------------------------------------------------------------------------------------

    async def lots_of(self, account_ids: list[str]) -> list[Lot]:
        wanted = {bucket for account_id in account_ids for bucket in buckets(account_id)}
        return [lot for lot in self.state.lots.values() if lot.ledger_account_id in wanted and lot.coins > 0]

    async def purchase_lots(self, purchase_id: str) -> list[Lot]:
        return [lot for lot in self.state.lots.values() if lot.purchase_id == purchase_id and lot.coins > 0]

    async def traced_uses(self, purchase_id: str) -> list[EarlierUse]:
        reversed_coins: dict[int, int] = {}
        for _, allocation in self.state.allocations:
            reversed_coins[allocation.funding_id] = reversed_coins.get(allocation.funding_id, 0) + allocation.coins
        uses = []
        for row in self.state.funding:
            f = row.funding
            left = f.draw.coins - reversed_coins.get(row.funding_id, 0)
            if f.draw.purchase_id != purchase_id or f.used_for not in TRACED_USES or left <= 0:
                continue
            reference = self.state.transactions[f.transaction_id].reference
            gift = gift_of(reference) if f.used_for is Use.SPEND else None
            uses.append(EarlierUse(row.funding_id, f.draw.ledger_account_id, left, gift))
        return uses

    async def record_funding(self, transaction_id: str, fundings: list[Funding], new_lots: list[NewLot]) -> None:
        self._fund(fundings)
        for new in new_lots:
            if new.coins < 0 or new.ledger_account_id not in self.state.coins:
                raise self._refuse(f"lot {new}")
            lot_id = max(self.state.lots, default=0) + 1
            self.state.lots[lot_id] = Lot(lot_id, new.ledger_account_id, new.purchase_id, new.coins)

    def _fund(self, fundings: list[Funding]) -> None:
        """The lots drawn, each refused below zero (the lots' CHECK), and the funding rows."""
        for funding in fundings:
            if funding.transaction_id not in self.state.transactions or funding.draw.coins <= 0:
                raise self._refuse(f"funding {funding}")
            lot_id = funding.draw.lot_id
            if lot_id is not None:
                lot = self.state.lots.get(lot_id)
                if lot is None or lot.coins < funding.draw.coins:
                    raise self._refuse(f"draw {funding.draw} from lot {lot}")
                self.state.lots[lot_id] = replace(lot, coins=lot.coins - funding.draw.coins)
            self.state.funding.append(FundingRow(len(self.state.funding) + 1, funding))

    # --- giveaways ----------------------------------------------------------------------------------------------

    async def insert_giveaway(
        self,
        *,
        giveaway_id: str,
        request_id: str,
        creator_id: str,
        coins_per_winner: int,
        winner_ids: list[str],
        transaction_id: str,
    ) -> None:
        if any(g.request_id == request_id for g in self.state.giveaways.values()) or not 1 <= len(winner_ids) <= 1000:
            raise self._refuse(f"giveaway {giveaway_id}")
        giveaway = Giveaway(giveaway_id, request_id, creator_id, coins_per_winner, tuple(winner_ids), transaction_id)
        self.state.giveaways[giveaway_id] = giveaway

    # --- promotions ---------------------------------------------------------------------------------------------

    async def insert_promotion(self, promotion: Promotion) -> Promotion:
        if (promotion.bonus_percent is None) == (promotion.bonus_coins is None) or (
            promotion.ends_at is not None and promotion.ends_at < promotion.starts_at
        ):
            raise self._refuse(f"promotion {promotion}")
        if self.state.promotion(promotion.promotion_id) is not None:
            raise self._refuse(f"promotion {promotion.promotion_id} twice")
        stored = replace(promotion, created_at=self._now)  # the column's default, now()
        self.state.promotions[max(self.state.promotions, default=0) + 1] = stored
        return stored

    async def lock_promotion(self, promotion_id: str) -> Promotion | None:
        found = self.state.promotion(promotion_id)
        return None if found is None else found[1]

    async def set_promotion_end(self, promotion_id: str, ends_at: datetime) -> Promotion:
        found = self.state.promotion(promotion_id)
        assert found is not None, f"promotion {promotion_id} vanished"
        position, promotion = found
        self.state.promotions[position] = ended = replace(promotion, ends_at=ends_at)
        return ended

    async def open_promotions(self) -> tuple[list[Promotion], datetime]:
        return _open_promotions(self.state, self._now)


def _open_promotions(state: WalletState, now: datetime) -> tuple[list[Promotion], datetime]:
    return [p for p in state.promotions.values() if p.is_open(now)], now


def _movements(state: WalletState, account_id: str, postings: list[Posting]) -> list[Movement]:
    """As the store's _MOVEMENTS: the account's postings grouped per transaction; a bucket the transaction did not
    touch shows its balance after its previous posting."""
    by_transaction: dict[str, list[Posting]] = {}
    for posting in postings:
        by_transaction.setdefault(posting.transaction_id, []).append(posting)
    movements = []
    for transaction_id, legs in by_transaction.items():
        first = min(p.posting_id for p in legs)
        transaction = state.transactions[transaction_id]

        def delta(bucket: str, legs: list[Posting] = legs) -> int:
            return sum(p.coins_delta for p in legs if p.ledger_account_id == bucket)

        def after(bucket: str, legs: list[Posting] = legs, first: int = first) -> int:
            own = [p.balance_after for p in legs if p.ledger_account_id == bucket and p.balance_after is not None]
            if own:
                return max(own)
            earlier = [p for p in state.postings if p.ledger_account_id == bucket and p.posting_id < first]
            previous = max(earlier, key=lambda p: p.posting_id, default=None)
            return 0 if previous is None or previous.balance_after is None else previous.balance_after

        paid, bonus = paid_bucket(account_id), bonus_bucket(account_id)
        movements.append(
            Movement(
                posting_id=first,
                transaction_id=transaction_id,
                kind=transaction.kind,
                initiator_id=transaction.account_id,
                reference=transaction.reference,
                paid_delta=delta(paid),
                bonus_delta=delta(bonus),
                paid_after=after(paid),
                bonus_after=after(bonus),
                created_at=min(p.created_at for p in legs),
            )
        )
    return movements


# --- other ports ------------------------------------------------------------------------------------------------


class FakePayments:
    """ports.PaymentProvider: approves every token unless told otherwise; remembers each charge. A charge is
    idempotent by purchase_id, as the contract asks of providers."""

    def __init__(self) -> None:
        self.charges: dict[str, ChargeResult] = {}
        self.declined_tokens: set[str] = set()
        # Tokens whose charge waits for the card holder (3-D Secure) until decide() settles it, as a rail would.
        self.pending_tokens: set[str] = set()
        self.outage: BaseException | None = None  # raised by every charge while set

    rail = "sandbox"

    async def charge(
        self,
        *,
        purchase_id: str,
        account_id: str,
        payment_token: str,
        amount_minor: int,
        currency_code: str,
        rail_transaction_id: str | None = None,
    ) -> ChargeResult:
        if self.outage is not None:
            raise self.outage
        if purchase_id not in self.charges:
            if payment_token in self.pending_tokens:
                reference = f"pi_{purchase_id}"
                self.charges[purchase_id] = ChargeResult(
                    False,
                    reference,
                    pending=True,
                    client_action_secret=f"{reference}_secret",
                    rail_transaction_id=reference,
                )
            else:
                approved = payment_token not in self.declined_tokens
                reason = "" if approved else "card declined"
                self.charges[purchase_id] = ChargeResult(approved, f"fake_{purchase_id}", reason)
        assert rail_transaction_id in (None, self.charges[purchase_id].rail_transaction_id)
        return self.charges[purchase_id]

    def decide(self, purchase_id: str, approved: bool) -> None:
        """The card holder finished (or failed) a pending charge."""
        reference = f"pi_{purchase_id}"
        reason = "" if approved else "authentication failed"
        self.charges[purchase_id] = ChargeResult(approved, reference, reason, rail_transaction_id=reference)
