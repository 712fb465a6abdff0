"""What the payouts use cases need from the world, as Protocols: the store (a unit of work over the database) and
the payout provider. store.py implements the store on PostgreSQL, tests/fakes/payouts.py in memory; the use cases
(service.py, settlement.py, maturity.py, payout_worker.py) see only these.

A transaction's writes are all or nothing: visible to others once `transaction()` exits normally, dropped when it
raises. Rules the database guards and the use cases rely on, which every store must guard too: a creator balance
never goes negative (pending, available, reserved), every ledger transaction's postings balance
(services.runtime.ledger.balanced), a gift enters the settlement inbox once, a request_id keys one outcome."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Protocol, TypeVar

from services.payouts.domain import (
    Balances,
    Clawback,
    ClawbackTaken,
    ClawbackView,
    ClawedCredit,
    CreatorProfile,
    DiamondCredit,
    DueCredit,
    EarningsGroupBy,
    EarningsRow,
    PayoutNotice,
    PendingWithdrawals,
    Postings,
    SettlementRate,
    Withdrawal,
    WithdrawalStatus,
)
from services.runtime.outbox import OutboxRow
from services.runtime.requests import Reply, RequestKey

Result = TypeVar("Result")


class PayoutsTransaction(Protocol):
    """The writes and locked reads of one database transaction. Locks are held until the transaction ends."""

    # --- settlement rates
    async def lock_rates(self) -> None: ...
    async def insert_next_rate(self, numerator: int, denominator: int) -> SettlementRate: ...
    async def current_rate(self) -> SettlementRate | None: ...

    # --- creators
    async def upsert_profile(self, profile: CreatorProfile) -> CreatorProfile: ...
    async def get_profile(self, creator_id: str) -> CreatorProfile | None: ...
    async def lock_balances(self, creator_id: str) -> Balances | None: ...
    async def move_diamonds(self, creator_id: str, *, available_delta: int, reserved_delta: int) -> Balances: ...

    # --- ledger: one transaction's postings, written together (they must balance)
    async def record_transaction(
        self, *, transaction_id: str, kind: str, reference: str, postings: Postings
    ) -> None: ...

    # --- settlement
    async def admit_to_inbox(self, gift_transaction_ids: list[str]) -> set[str]: ...
    async def lock_carries(self, rate_version: int, creator_ids: list[str]) -> dict[str, int]: ...
    async def save_carries(self, rate_version: int, remainders: dict[str, int]) -> None: ...
    async def insert_credits(
        self, *, transaction_id: str, rate_version: int, credits: list[DiamondCredit], hold_seconds: int
    ) -> None: ...
    async def credit_creators(self, diamonds_per_creator: dict[str, int], *, held: bool) -> list[Balances]:
        """The creators' balances after the credit (the caller repays debts from them)."""
        ...

    async def repay_debts(self, repaid_per_creator: dict[str, int]) -> None: ...

    # --- maturity
    async def lock_due_credits(self, limit: int, creator_id: str | None = None) -> list[DueCredit]: ...
    async def mark_matured(self, gift_transaction_ids: list[str], transaction_id: str) -> None: ...
    async def move_matured(self, diamonds_per_creator: dict[str, int]) -> list[Balances]: ...

    # clawbacks and the wallet's events (clawbacks.py, wallet_events.py)
    async def hold_off_reversals(self) -> None:
        """First in a settlement: serializes it with reversals being applied (exclusive_of_settlements)."""
        ...

    async def exclusive_of_settlements(self) -> None:
        """First in a reversal: no settlement runs meanwhile, so neither misses the other's rows."""
        ...

    async def admit_wallet_event(self, msg_id: str) -> bool: ...
    async def insert_clawbacks(self, purchase_id: str, clawbacks: list[Clawback]) -> list[Clawback]: ...
    async def lock_waiting_clawbacks(self, gift_transaction_ids: list[str]) -> list[Clawback]: ...
    async def lock_credits(self, gift_transaction_ids: list[str]) -> dict[str, ClawedCredit]: ...
    async def rates(self, versions: list[int]) -> dict[int, SettlementRate]: ...
    async def lock_balances_of(self, creator_ids: list[str]) -> dict[str, Balances]: ...
    async def apply_clawbacks(self, taken: list[ClawbackTaken], transaction_id: str) -> None: ...
    async def set_account_status(self, account_id: str, frozen: bool, version: int) -> bool: ...
    async def queue_events(self, events: list[OutboxRow]) -> None:
        """Into the outbox, in this transaction: the relay publishes them once it commits."""
        ...

    async def now(self) -> datetime: ...
    async def account_frozen(self, account_id: str) -> bool: ...

    # --- withdrawals
    async def insert_withdrawal(self, withdrawal: Withdrawal, reserve_transaction_id: str) -> None: ...
    async def lock_withdrawal(self, withdrawal_id: str) -> Withdrawal | None: ...
    async def mark_canceled(self, withdrawal_id: str, finish_transaction_id: str) -> Withdrawal: ...
    async def diamonds_withdrawn_last_24h(self, creator_id: str) -> int: ...
    async def lock_next_due_withdrawal(self, payout_provider: str) -> Withdrawal | None:
        """The provider's pending or submitted withdrawal waiting longest for a look, locked (others' skipped)."""
        ...

    async def mark_submitted(self, withdrawal_id: str, check_again_in_seconds: float) -> Withdrawal:
        """Pending → submitted (the caller holds the row lock): committed before the provider is called."""
        ...

    async def mark_returned(self, withdrawal_id: str, reason: str, return_transaction_id: str) -> bool:
        """Paid → returned; False when it was not paid (nothing changed)."""
        ...

    async def admit_payout_notification(self, notice: PayoutNotice) -> bool:
        """Whether the provider's notification is new: applied in this transaction, it is never applied again."""
        ...

    async def record_provider_progress(
        self, withdrawal_id: str, provider_reference: str, check_again_in_seconds: float
    ) -> None: ...
    async def postpone_check(self, withdrawal_id: str, check_again_in_seconds: float) -> None: ...
    async def finish_withdrawal(
        self,
        withdrawal_id: str,
        *,
        status: WithdrawalStatus,
        failure_reason: str,
        provider_reference: str,
        finish_transaction_id: str,
    ) -> bool: ...


# A use case's work inside one transaction, for PayoutsStore.run_once.
Operation = Callable[[PayoutsTransaction], Awaitable[Result]]


class PayoutsStore(Protocol):
    @property
    def data_errors(self) -> tuple[type[Exception], ...]:
        """The store's errors that the data written can cause (a constraint it breaks, a value out of range), as
        opposed to the store failing (unreachable, restarting): settlement tells a poison event from an outage by
        them."""
        ...

    def transaction(self) -> AbstractAsyncContextManager[PayoutsTransaction]: ...

    async def run_once(self, key: RequestKey, operation: Operation[Result], reply: Reply[Result]) -> Result:
        """Runs operation in one transaction at most once per key and keeps its outcome with the key (the result as
        the RPC's response message, through reply): a replay gets the same result, or the same final error raised
        with the operation's writes undone; the same request_id with another request gets REQUEST_ID_REUSED. Any
        other exception drops everything, key included, so a retry runs anew."""
        ...

    # --- read-only queries (no transaction needed)
    async def current_rate(self) -> SettlementRate | None: ...
    async def get_balances(self, creator_id: str) -> Balances | None: ...
    async def get_withdrawal(self, withdrawal_id: str) -> Withdrawal | None: ...
    async def list_withdrawals(
        self, creator_id: str, before: tuple[datetime, str] | None, limit: int
    ) -> list[Withdrawal]: ...
    async def earnings_by_day(self, creator_id: str, before: datetime | None, limit: int) -> list[EarningsRow]: ...
    async def earnings_by_target(
        self, group_by: EarningsGroupBy, creator_id: str, after: tuple[datetime, str] | None, limit: int
    ) -> list[EarningsRow]: ...
    async def pending_withdrawals(self) -> PendingWithdrawals: ...

    async def list_clawbacks(
        self, creator_id: str, before: tuple[datetime, str] | None, limit: int
    ) -> list[ClawbackView]: ...

    async def settled_gifts_with_waiting_clawbacks(self, limit: int) -> list[str]: ...


# --- the payout provider -----------------------------------------------------------------------------------------
# Whoever turns a withdrawal into real money. Like real ones it is asynchronous: submit() accepts a payout, status()
# later tells whether it was paid or failed. It must be idempotent by withdrawal_id: the payout worker submits again
# when a crash left a submission unrecorded, and the provider must not pay twice. payout_provider.py holds the sandbox,
# rails/ the real ones (Stripe Connect, PayPal Payouts), which also report outcomes later through webhooks.


class PayoutState(Enum):
    PROCESSING = "processing"
    PAID = "paid"
    FAILED = "failed"


@dataclass(frozen=True)
class PayoutResult:
    state: PayoutState
    # The provider's handle on the payout; passed back to status().
    provider_reference: str
    failure_reason: str = ""


class PayoutProvider(Protocol):
    # The rail's name (domain.SANDBOX_RAIL, …): recorded on each withdrawal requested while it is configured.
    name: str

    async def submit(
        self, *, withdrawal_id: str, destination: str, amount_minor: int, currency_code: str
    ) -> PayoutResult: ...

    async def status(self, *, withdrawal_id: str, provider_reference: str) -> PayoutResult: ...

    async def resume(
        self, *, withdrawal_id: str, destination: str, amount_minor: int, currency_code: str
    ) -> PayoutResult:
        """A submission whose answer was lost (a timeout, a 5xx, a crash): the payout the provider made for this
        withdrawal, asked for by the withdrawal id (the idempotency key), or, only when the provider never received
        it, submitted now under the same key. Never a second payout, never a guess."""
        ...

    async def cancel(self, *, withdrawal_id: str, destination: str, provider_reference: str | None) -> bool:
        """Stops the payout if it still can be stopped; True when it was (or never reached the provider), False when
        it is too late. Asked for every cancel of a pending withdrawal, also when we have no record of a submission
        (provider_reference None): a crash may have lost that record, so a real provider must answer from its own
        records by withdrawal_id."""
        ...
