"""Everything the wallet's use cases (service.py) call outside themselves, as Protocols: the store as a unit of work,
the payment provider, the clock, and how a result is kept with its idempotency key. store.py implements the store
on PostgreSQL, tests/fakes/wallet.py in memory; payments.py holds the sandbox provider."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

from google.protobuf.message import Message

from services.runtime.errors import AppError
from services.runtime.outbox import OutboxRow
from services.runtime.requests import Outcome, Reply, RequestKey, StoredRequest
from services.wallet.domain import (
    Account,
    AccountStatus,
    Balance,
    DeclineLimits,
    Funding,
    Lot,
    Movement,
    NewLot,
    NewSpend,
    Postings,
    Promotion,
    Purchase,
    PurchaseAttempts,
    PurchaseConsumption,
    PurchaseHistory,
    PurchaseReversal,
    PurchaseStatus,
    PurchaseView,
    RailReversal,
    RedeemStorePurchase,
    ReversedSoFar,
    Spender,
    SpendingLimit,
    StoreProof,
)
from services.wallet.funding import Allocation, EarlierUse

Result = TypeVar("Result")


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


# --- payments ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChargeResult:
    """A charge's outcome: approved, declined, or pending (neither yet: the card needs its holder, 3-D Secure; the
    rail's notification decides it later). rail_transaction_id is the rail's own id of the charge (Stripe's
    PaymentIntent), recorded as the purchase's store_transaction_id so that the rail's notifications find it;
    client_action_secret is what the buyer's page needs to finish a pending charge (answered, never stored)."""

    approved: bool
    provider_reference: str
    decline_reason: str = ""
    pending: bool = False
    client_action_secret: str = ""
    rail_transaction_id: str | None = None

    def __post_init__(self) -> None:
        assert not (self.approved and self.pending), "a charge is approved or pending, not both"


class ProviderUnavailable(Exception):
    """The payment provider could not say how a charge went (a timeout, a 5xx, a refused connection): the purchase
    stays pending, for a retry or the recovery pass. The message is logged; it holds no secret."""


class PaymentProvider(Protocol):
    """Charges a purchase. Idempotent by purchase_id: a purchase left pending by a crash can be charged again
    safely, the provider answering with the first charge's result. rail_transaction_id: the rail's id of the
    purchase's charge, once known (a charge left pending): the provider asks for its state rather than charging.
    Raises ProviderUnavailable when it cannot tell."""

    rail: str  # the purchases' rail (domain.Purchase.rail)

    async def charge(
        self,
        *,
        purchase_id: str,
        account_id: str,
        payment_token: str,
        amount_minor: int,
        currency_code: str,
        rail_transaction_id: str | None = None,
    ) -> ChargeResult: ...


class StoreVerifier(Protocol):
    """An app store's check of a purchase made in it. verify raises PAYMENT_VERIFICATION_FAILED
    (FAILED_PRECONDITION) for anything not a paid purchase of this app, UNAVAILABLE when the store cannot be asked;
    finish does what the store needs once the coins are credited (idempotent: it may run again)."""

    async def verify(self, redeem: RedeemStorePurchase) -> StoreProof: ...

    async def finish(self, proof: StoreProof) -> None: ...


# --- the store --------------------------------------------------------------------------------------------------


class WalletTransaction(Protocol):
    """What a use case does inside one database transaction. Locks taken here are held until it ends: movements
    lock both buckets of every account they touch first (lock_buckets, always in id order), so movements of one
    account are serialized and never deadlock."""

    async def now(self) -> datetime:
        """The transaction's time (the database's clock, as the rows it writes)."""
        ...

    # idempotency keys (services.runtime.idempotency's semantics)
    async def claim(self, key: RequestKey) -> StoredRequest | None:
        """None when this transaction now holds the key; else what the earlier request left (REQUEST_ID_REUSED
        raised when it asked something else)."""
        ...

    async def set_resource(self, request_id: str, resource_id: str) -> None: ...

    async def record_response(self, request_id: str, response: Message) -> None: ...

    async def record_error(self, request_id: str, error: AppError) -> None: ...

    # accounts
    async def upsert_account(self, account_id: str, adult_verified: bool, country_code: str) -> Account: ...

    async def get_account(self, account_id: str) -> Account | None: ...

    async def lock_account(self, account_id: str) -> Account | None:
        """Serializes an account's purchase intents and limit changes."""
        ...

    async def get_accounts(self, account_ids: list[str]) -> dict[str, Account]: ...

    async def set_status(self, account_id: str, status: AccountStatus) -> int | None:
        """The account's new status version (each change gets the next), or None when it had that status already."""
        ...

    async def queue_events(self, events: list[OutboxRow]) -> None:
        """Into the outbox, in this transaction: the relay publishes them once it commits."""
        ...

    async def set_spending_limit(self, account_id: str, limit: SpendingLimit) -> Account: ...

    # balances and movements
    async def get_balance(self, account_id: str) -> Balance: ...

    async def lock_buckets(self, account_ids: list[str]) -> dict[str, Balance]:
        """Locks both buckets of each account (in id order); their balances now."""
        ...

    async def read_spenders(self, account_ids: list[str]) -> dict[str, Spender]:
        """Each account (None when unknown), its balance, what it sent in the limit's window, and now. Call with
        the buckets locked."""
        ...

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
        """A ledger transaction: moves the buckets and writes its postings. Refuses a user bucket going below zero
        unless debt_allowed (only a chargeback may), an unbalanced transaction and a user leg without a bucket."""
        ...

    # spends
    async def claim_spends(self, keys: list[RequestKey]) -> tuple[set[str], set[str]]:
        """Claims the keys of a batch of spends in one go. Returns (the request_ids claimed now, the request_ids
        the ledger already holds a transaction for: it outlives the keys)."""
        ...

    async def earlier_outcomes(self, keys: list[RequestKey], claimed: set[str]) -> dict[str, StoredRequest | AppError]:
        """For the keys not claimed now: what the earlier request left behind, or REQUEST_ID_REUSED."""
        ...

    async def find_spend(self, request_id: str, account_id: str) -> Movement | None: ...

    async def record_spends(self, spends: list[NewSpend], outcomes: list[Outcome]) -> None:
        """Records a batch's new spends (possibly none) and every claimed request's outcome, in one go."""
        ...

    # purchases
    async def insert_purchase(self, purchase: Purchase) -> None: ...

    async def lock_purchase(self, purchase_id: str) -> Purchase | None: ...

    async def purchase_history(self, account_id: str) -> PurchaseHistory: ...

    async def purchase_attempts(
        self, account_id: str, caller: str, limits: DeclineLimits, undecided_within: timedelta
    ) -> PurchaseAttempts:
        """What the card-testing limits look at: the declined payments of the account and of the caller in the
        window (domain.Declines: the newest, as many as each limit counts; none for a limit of 0), the account's
        purchases pending and made within undecided_within (still being charged; an older one waits for its
        buyer, 3-D Secure, or for the recovery pass), and now. Call with the account locked (lock_account)."""
        ...

    async def finish_purchase(
        self, purchase_id: str, status: PurchaseStatus, provider_reference: str, transaction_id: str | None
    ) -> None: ...

    async def reopen_declined_purchase(self, purchase_id: str) -> None:
        """A declined purchase pending again: its rail took the money after all (completed by the caller next)."""
        ...

    async def record_rail_transaction(self, purchase_id: str, rail_transaction_id: str) -> None:
        """The rail's id of a purchase's charge, as its store_transaction_id (lock_store_transaction finds the
        purchase by it); also when the purchase stays pending, which marks it as waiting for its buyer or rail."""
        ...

    # purchases through rails
    async def lock_store_transaction(self, rail: str, store_transaction_id: str) -> Purchase | None:
        """Serializes everything about one store transaction (redeems by any account, its notifications) until the
        transaction ends; returns the purchase that redeemed it, if any."""
        ...

    async def record_notification(self, rail: str, notification_id: str, kind: str) -> bool:
        """False when the notification was recorded before (it took effect then)."""
        ...

    async def insert_early_reversal(self, reversal: RailReversal) -> None: ...

    async def early_reversals(self, rail: str, store_transaction_id: str) -> list[RailReversal]: ...

    async def mark_store_unfinished(self, purchase_id: str) -> None: ...

    async def mark_store_finished(self, purchase_id: str) -> None: ...

    async def reversed_so_far(self, purchase_id: str) -> ReversedSoFar: ...

    async def insert_reversal(self, reversal: PurchaseReversal, allocations: list[Allocation]) -> None:
        """The reversal and the earlier uses it traced its coins to."""
        ...

    # funding (funding.py)
    async def lots_of(self, account_ids: list[str]) -> list[Lot]:
        """The unspent lots of the accounts' buckets, oldest first. Call with the buckets locked."""
        ...

    async def purchase_lots(self, purchase_id: str) -> list[Lot]:
        """The purchase's unspent lots, whoever holds them, oldest first."""
        ...

    async def traced_uses(self, purchase_id: str) -> list[EarlierUse]:
        """The purchase's coins used (spent, charged, repaying debt) and not yet reversed."""
        ...

    async def record_funding(self, transaction_id: str, fundings: list[Funding], new_lots: list[NewLot]) -> None:
        """After the movement's transaction: the lots it drew, their funding rows, and the lots it made."""
        ...

    # giveaways
    async def insert_giveaway(
        self,
        *,
        giveaway_id: str,
        request_id: str,
        creator_id: str,
        coins_per_winner: int,
        winner_ids: list[str],
        transaction_id: str,
    ) -> None: ...

    # promotions
    async def insert_promotion(self, promotion: Promotion) -> Promotion:
        """Stored with the database's created_at."""
        ...

    async def lock_promotion(self, promotion_id: str) -> Promotion | None: ...

    async def set_promotion_end(self, promotion_id: str, ends_at: datetime) -> Promotion: ...

    async def open_promotions(self) -> tuple[list[Promotion], datetime]:
        """Promotions open now, and that now."""
        ...


# A use case's work inside one transaction, for WalletStore.run_once.
Operation = Callable[[WalletTransaction], Awaitable[Result]]


class WalletStore(Protocol):
    """The wallet's database: transactions (a unit of work each) and the read-only queries."""

    def transaction(self) -> AbstractAsyncContextManager[WalletTransaction]:
        """Everything done through the yielded object commits together when the block exits normally, and is
        dropped if it raises."""
        ...

    async def run_once(self, key: RequestKey, operation: Operation[Result], reply: Reply[Result]) -> Result:
        """Runs operation in one transaction at most once per key and keeps its outcome with the key: a replay
        gets the same result, or the same error raised. A final error (AppError.is_outcome) is kept with the
        operation's writes dropped; any other exception drops everything, key included, so a retry runs anew."""
        ...

    async def get_account(self, account_id: str) -> Account | None: ...

    async def get_balance(self, account_id: str) -> Balance: ...

    async def balance_as_of(self, account_id: str, as_of: datetime) -> Balance: ...

    async def get_purchase(self, purchase_id: str) -> Purchase: ...

    async def find_purchase(self, purchase_id: str) -> PurchaseView | None:
        """The purchase, when it was made, and what reversals gave back so far."""
        ...

    async def load_outcome(self, request_id: str) -> StoredRequest:
        """What a request left with its key, read by the code that just completed it."""
        ...

    async def replay_if_completed(self, key: RequestKey, reply: Reply[Result]) -> Result | None:
        """A completed request's kept outcome (raised when an error), or None: before asking another party."""
        ...

    async def stale_pending_purchases(self, rail: str, older_than_seconds: float, limit: int) -> list[str]:
        """The rail's purchases left pending, oldest first: those with a rail transaction (waiting for their buyer)
        only once in a while (store.AWAITING_RECHECK_SECONDS)."""
        ...

    async def store_purchase_consumption(self, rail: str, store_transaction_id: str) -> PurchaseConsumption | None:
        """What became of the coins of the completed purchase that redeemed the store transaction (None: none)."""
        ...

    async def unfinished_store_purchases(self, older_than_seconds: float, limit: int) -> list[tuple[str, StoreProof]]:
        """Store purchases credited and still to be finished at their store (StoreProof.needs_finishing)."""
        ...

    async def open_promotions(self) -> tuple[list[Promotion], datetime]: ...

    async def list_promotions(self, before_position: int | None, limit: int) -> list[tuple[int, Promotion]]:
        """Newest first, with each one's position (what a page token resumes after)."""
        ...

    async def list_history(self, account_id: str, before_posting_id: int | None, limit: int) -> list[Movement]:
        """The account's movements, newest first, each with the posting id a page token resumes after."""
        ...
