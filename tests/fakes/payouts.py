"""An in-memory payouts store (services/payouts/ports.py) for unit tests of the use cases: no database, no sockets.

It keeps the transaction semantics of the real one — a transaction works on a copy of the state, which becomes the
state when it exits normally and is dropped when it raises; transactions run one at a time, as if serializable —
and refuses what the database refuses and the rules rely on: a negative creator balance, postings that do not
balance (services.runtime.ledger.balanced) or a zero leg, a request_id reused for another request (a replay decodes
the stored response message, or raises the stored final error with the operation's writes undone), a gift settled
twice, a withdrawal's status or request_id breaking its constraints. "now" is a clock the test moves (`advance`)."""

from __future__ import annotations

import asyncio
import copy
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TypeVar

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
from services.payouts.ports import Operation, PayoutResult, PayoutState
from services.runtime import ledger
from services.runtime.errors import AppError, request_id_reused
from services.runtime.outbox import OutboxRow
from services.runtime.requests import Reply, RequestKey, StoredRequest, replayed

Result = TypeVar("Result")
START = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
LEDGER_KINDS = {
    "settlement",
    "maturity",
    "withdrawal_reserve",
    "withdrawal_paid",
    "withdrawal_returned",
    "withdrawal_canceled",
    "clawback",
    "debt_repayment",
    "payout_returned",
}
UNFINISHED = (WithdrawalStatus.PENDING, WithdrawalStatus.SUBMITTED)


class ConstraintViolation(Exception):
    """What the database would refuse (a CHECK, a unique key, a trigger): the transaction is rolled back."""


@dataclass
class StoredCredit:
    credit: DiamondCredit
    rate_version: int
    transaction_id: str
    created_at: datetime
    available_at: datetime
    matured_at: datetime | None
    held_clawed_back: int = 0


@dataclass
class StoredWithdrawal:
    withdrawal: Withdrawal
    next_check_at: datetime
    reserve_transaction_id: str
    finish_transaction_id: str | None = None
    return_transaction_id: str | None = None


@dataclass(frozen=True)
class StoredKey:
    request_hash: bytes
    reply: bytes | None
    error: AppError | None

    def __deepcopy__(self, memo: dict[int, object]) -> StoredKey:
        return self  # never changes once stored (and an exception cannot be deep-copied)


@dataclass
class State:
    """The tables, as the use cases can observe them."""

    now: datetime = START
    rates: list[SettlementRate] = field(default_factory=list)
    profiles: dict[str, CreatorProfile] = field(default_factory=dict)
    balances: dict[str, Balances] = field(default_factory=dict)
    ledger_transactions: dict[str, tuple[str, str]] = field(default_factory=dict)  # id → (kind, reference)
    postings: list[tuple[str, str, int]] = field(default_factory=list)  # (transaction id, account, delta)
    inbox: set[str] = field(default_factory=set)
    carries: dict[tuple[str, int], int] = field(default_factory=dict)  # (creator, rate version) → remainder
    credits: dict[str, StoredCredit] = field(default_factory=dict)
    withdrawals: dict[str, StoredWithdrawal] = field(default_factory=dict)
    keys: dict[str, StoredKey] = field(default_factory=dict)
    wallet_inbox: set[str] = field(default_factory=set)
    # (reversal, gift) → the clawback, and once applied what it took and when
    clawbacks: dict[tuple[str, str], tuple[Clawback, ClawbackTaken | None, datetime | None]] = field(
        default_factory=dict
    )
    account_status: dict[str, tuple[bool, int]] = field(default_factory=dict)  # account → (frozen, version)
    outbox: list[OutboxRow] = field(default_factory=list)
    payout_notifications: set[tuple[str, str]] = field(default_factory=set)  # (provider, notification id)


class FakePayoutsStore:
    data_errors: tuple[type[Exception], ...] = (ConstraintViolation,)

    def __init__(self) -> None:
        self.state = State()
        self._one_at_a_time = asyncio.Lock()

    # --- for tests

    def advance(self, seconds: float) -> None:
        self.state.now += timedelta(seconds=seconds)

    def account_balance(self, account: str) -> int:
        """What the ledger says an account holds: the sum of its postings."""
        return sum(delta for _, posted_to, delta in self.state.postings if posted_to == account)

    def balances_of(self, creator_id: str) -> Balances:
        return self.state.balances.get(creator_id) or Balances.zero(creator_id)

    # --- the port

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[FakeTransaction]:
        async with self._one_at_a_time:
            tx = FakeTransaction(copy.deepcopy(self.state))
            yield tx
            self.state = tx.state

    async def run_once(self, key: RequestKey, operation: Operation[Result], reply: Reply[Result]) -> Result:
        outcome: Result | AppError
        async with self.transaction() as tx:
            stored = tx.state.keys.get(key.request_id)
            if stored is not None:
                return _replay(stored, key, reply)
            before = copy.deepcopy(tx.state)  # the savepoint a final error rolls back to
            try:
                outcome = await operation(tx)
                response = reply.to_message(outcome).SerializeToString()
                tx.state.keys[key.request_id] = StoredKey(key.fingerprint, response, None)
            except AppError as error:
                if not error.is_outcome:
                    raise
                tx.state = before
                tx.state.keys[key.request_id] = StoredKey(key.fingerprint, None, error)
                outcome = error
        if isinstance(outcome, AppError):
            raise outcome
        return outcome

    async def current_rate(self) -> SettlementRate | None:
        return self.state.rates[-1] if self.state.rates else None

    async def get_balances(self, creator_id: str) -> Balances | None:
        return self.state.balances.get(creator_id)

    async def get_withdrawal(self, withdrawal_id: str) -> Withdrawal | None:
        stored = self.state.withdrawals.get(withdrawal_id)
        return None if stored is None else stored.withdrawal

    async def list_withdrawals(
        self, creator_id: str, before: tuple[datetime, str] | None, limit: int
    ) -> list[Withdrawal]:
        rows = [s.withdrawal for s in self.state.withdrawals.values() if s.withdrawal.creator_id == creator_id]
        rows.sort(key=lambda w: (w.created_at or START, w.withdrawal_id), reverse=True)
        if before is not None:
            rows = [w for w in rows if (w.created_at or START, w.withdrawal_id) < before]
        return rows[:limit]

    async def earnings_by_day(self, creator_id: str, before: datetime | None, limit: int) -> list[EarningsRow]:
        credits = [c for c in self._credits_of(creator_id) if before is None or c.created_at < before]
        rows = _grouped(credits, lambda c: c.created_at.strftime("%Y-%m-%d"))
        return sorted(rows, key=lambda row: row.key, reverse=True)[:limit]

    async def earnings_by_target(
        self, group_by: EarningsGroupBy, creator_id: str, after: tuple[datetime, str] | None, limit: int
    ) -> list[EarningsRow]:
        def target(c: StoredCredit) -> str | None:
            return c.credit.stream_id if group_by is EarningsGroupBy.STREAM else c.credit.video_id

        rows = _grouped([c for c in self._credits_of(creator_id) if target(c) is not None], target)
        if after is not None:
            latest, key = after
            rows = [r for r in rows if r.latest_credit_at < latest or (r.latest_credit_at == latest and r.key > key)]
        rows.sort(key=lambda row: row.key)  # then, stable: the newest latest credit first, ties by key
        return sorted(rows, key=lambda row: row.latest_credit_at, reverse=True)[:limit]

    async def list_clawbacks(
        self, creator_id: str, before: tuple[datetime, str] | None, limit: int
    ) -> list[ClawbackView]:
        rows = [
            ClawbackView(
                t.clawback.reversal_id,
                t.clawback.gift_transaction_id,
                t.clawback.coins,
                t.diamonds,
                t.from_pending,
                t.from_available,
                t.to_debt,
                applied_at,
            )
            for _, t, applied_at in self.state.clawbacks.values()
            if t is not None and applied_at is not None and t.creator_id == creator_id
        ]
        rows.sort(key=lambda r: (r.clawed_back_at, f"{r.reversal_id}/{r.gift_transaction_id}"), reverse=True)
        if before is not None:
            rows = [r for r in rows if (r.clawed_back_at, f"{r.reversal_id}/{r.gift_transaction_id}") < before]
        return rows[:limit]

    async def settled_gifts_with_waiting_clawbacks(self, limit: int) -> list[str]:
        waiting = {c.gift_transaction_id for c, taken, _ in self.state.clawbacks.values() if taken is None}
        return sorted(gift for gift in waiting if gift in self.state.credits)[:limit]

    async def pending_withdrawals(self) -> PendingWithdrawals:
        pending = [s.withdrawal for s in self.state.withdrawals.values() if s.withdrawal.status in UNFINISHED]
        oldest = min((w.created_at or START for w in pending), default=self.state.now)
        queued = [w for w in pending if w.status is WithdrawalStatus.PENDING and w.provider_reference is None]
        return PendingWithdrawals(
            queued=len(queued),
            with_provider=len(pending) - len(queued),
            oldest_age_seconds=(self.state.now - oldest).total_seconds(),
        )

    def _credits_of(self, creator_id: str) -> list[StoredCredit]:
        return [c for c in self.state.credits.values() if c.credit.creator_id == creator_id]


class FakeTransaction:
    def __init__(self, state: State) -> None:
        self.state = state

    # --- settlement rates

    async def lock_rates(self) -> None:
        pass  # transactions run one at a time

    async def insert_next_rate(self, numerator: int, denominator: int) -> SettlementRate:
        rate = SettlementRate(len(self.state.rates) + 1, numerator, denominator)
        self.state.rates.append(rate)
        return rate

    async def current_rate(self) -> SettlementRate | None:
        return self.state.rates[-1] if self.state.rates else None

    # --- creators

    async def upsert_profile(self, profile: CreatorProfile) -> CreatorProfile:
        if not 1 <= len(profile.payout_destination) <= 256:
            raise ConstraintViolation(f"payout_destination of {len(profile.payout_destination)} characters")
        self.state.profiles[profile.creator_id] = profile
        return profile

    async def get_profile(self, creator_id: str) -> CreatorProfile | None:
        return self.state.profiles.get(creator_id)

    async def lock_balances(self, creator_id: str) -> Balances | None:
        return self.state.balances.get(creator_id)

    async def move_diamonds(self, creator_id: str, *, available_delta: int, reserved_delta: int) -> Balances:
        balances = self.state.balances[creator_id]
        return self._set_balances(
            replace(
                balances,
                available_diamonds=balances.available_diamonds + available_delta,
                reserved_diamonds=balances.reserved_diamonds + reserved_delta,
            )
        )

    def _set_balances(self, balances: Balances) -> Balances:
        amounts = (
            balances.available_diamonds,
            balances.reserved_diamonds,
            balances.pending_diamonds,
            balances.lifetime_diamonds,
            balances.debt_diamonds,
            balances.clawed_back_diamonds,
        )
        if min(amounts) < 0:
            raise ConstraintViolation(f"negative balance {balances}")
        self.state.balances[balances.creator_id] = balances
        return balances

    # --- ledger

    async def record_transaction(self, *, transaction_id: str, kind: str, reference: str, postings: Postings) -> None:
        if transaction_id in self.state.ledger_transactions or kind not in LEDGER_KINDS:
            raise ConstraintViolation(f"ledger transaction {transaction_id} ({kind})")
        if ledger.balanced(postings) != postings:  # raises UnbalancedTransaction when they do not sum to zero
            raise ConstraintViolation(f"a zero leg in {postings}")
        self.state.ledger_transactions[transaction_id] = (kind, reference)
        self.state.postings += [(transaction_id, account, delta) for account, delta in postings]

    # --- settlement

    async def admit_to_inbox(self, gift_transaction_ids: list[str]) -> set[str]:
        new = set(gift_transaction_ids) - self.state.inbox
        self.state.inbox |= new
        return new

    async def lock_carries(self, rate_version: int, creator_ids: list[str]) -> dict[str, int]:
        return {creator_id: self.state.carries.get((creator_id, rate_version), 0) for creator_id in creator_ids}

    async def save_carries(self, rate_version: int, remainders: dict[str, int]) -> None:
        for creator_id, remainder in remainders.items():
            if remainder < 0:
                raise ConstraintViolation(f"negative remainder for {creator_id}")
            self.state.carries[(creator_id, rate_version)] = remainder

    async def insert_credits(
        self, *, transaction_id: str, rate_version: int, credits: list[DiamondCredit], hold_seconds: int
    ) -> None:
        now = self.state.now
        for credit in credits:
            if credit.gift_transaction_id not in self.state.inbox or credit.gift_transaction_id in self.state.credits:
                raise ConstraintViolation(f"credit of gift {credit.gift_transaction_id}")
            if credit.coins <= 0 or credit.diamonds < 0 or transaction_id not in self.state.ledger_transactions:
                raise ConstraintViolation(f"credit {credit}")
            self.state.credits[credit.gift_transaction_id] = StoredCredit(
                credit,
                rate_version,
                transaction_id,
                created_at=now,
                available_at=now + timedelta(seconds=hold_seconds),
                matured_at=now if hold_seconds == 0 else None,
            )

    async def credit_creators(self, diamonds_per_creator: dict[str, int], *, held: bool) -> list[Balances]:
        credited = []
        for creator_id, diamonds in diamonds_per_creator.items():
            balances = self.state.balances.get(creator_id) or Balances.zero(creator_id)
            if held:
                balances = replace(balances, pending_diamonds=balances.pending_diamonds + diamonds)
            else:
                balances = replace(balances, available_diamonds=balances.available_diamonds + diamonds)
            credited.append(
                self._set_balances(replace(balances, lifetime_diamonds=balances.lifetime_diamonds + diamonds))
            )
        return credited

    async def repay_debts(self, repaid_per_creator: dict[str, int]) -> None:
        for creator_id, diamonds in repaid_per_creator.items():
            balances = self.state.balances[creator_id]
            self._set_balances(
                replace(
                    balances,
                    available_diamonds=balances.available_diamonds - diamonds,
                    debt_diamonds=balances.debt_diamonds - diamonds,
                )
            )

    # --- maturity

    async def lock_due_credits(self, limit: int, creator_id: str | None = None) -> list[DueCredit]:
        due = [
            stored
            for stored in self.state.credits.values()
            if stored.matured_at is None
            and stored.available_at <= self.state.now
            and creator_id in (None, stored.credit.creator_id)
        ]
        due.sort(key=lambda stored: stored.available_at)
        return [
            DueCredit(
                stored.credit.gift_transaction_id,
                stored.credit.creator_id,
                stored.credit.diamonds - stored.held_clawed_back,
            )
            for stored in due[:limit]
        ]

    async def mark_matured(self, gift_transaction_ids: list[str], transaction_id: str) -> None:
        for gift_transaction_id in gift_transaction_ids:
            stored = self.state.credits[gift_transaction_id]
            assert stored.matured_at is None, f"credit {gift_transaction_id} matured twice"
            stored.matured_at = self.state.now

    async def move_matured(self, diamonds_per_creator: dict[str, int]) -> list[Balances]:
        moved = []
        for creator_id, diamonds in diamonds_per_creator.items():
            balances = self.state.balances[creator_id]
            moved.append(
                self._set_balances(
                    replace(
                        balances,
                        pending_diamonds=balances.pending_diamonds - diamonds,
                        available_diamonds=balances.available_diamonds + diamonds,
                    )
                )
            )
        return moved

    # --- clawbacks

    async def hold_off_reversals(self) -> None:
        """Transactions run one at a time here."""

    async def exclusive_of_settlements(self) -> None:
        """Transactions run one at a time here."""

    async def admit_wallet_event(self, msg_id: str) -> bool:
        if msg_id in self.state.wallet_inbox:
            return False
        self.state.wallet_inbox.add(msg_id)
        return True

    async def insert_clawbacks(self, purchase_id: str, clawbacks: list[Clawback]) -> list[Clawback]:
        fresh = []
        for clawback in clawbacks:
            key = (clawback.reversal_id, clawback.gift_transaction_id)
            if key not in self.state.clawbacks:
                if clawback.coins <= 0:
                    raise ConstraintViolation(f"clawback {clawback}")
                self.state.clawbacks[key] = (clawback, None, None)
                fresh.append(clawback)
        return fresh

    async def lock_waiting_clawbacks(self, gift_transaction_ids: list[str]) -> list[Clawback]:
        wanted = set(gift_transaction_ids)
        return [c for c, taken, _ in self.state.clawbacks.values() if taken is None and c.gift_transaction_id in wanted]

    async def lock_credits(self, gift_transaction_ids: list[str]) -> dict[str, ClawedCredit]:
        found = {}
        for gift_id in sorted(gift_transaction_ids):
            stored = self.state.credits.get(gift_id)
            if stored is not None:
                held = stored.credit.diamonds - stored.held_clawed_back if stored.matured_at is None else 0
                taken = sum(
                    t.clawback.coins
                    for _, t, _ in self.state.clawbacks.values()
                    if t and t.clawback.gift_transaction_id == gift_id
                )
                left = stored.credit.coins - taken
                found[gift_id] = ClawedCredit(gift_id, stored.credit.creator_id, stored.rate_version, held, left)
        return found

    async def rates(self, versions: list[int]) -> dict[int, SettlementRate]:
        return {rate.version: rate for rate in self.state.rates if rate.version in versions}

    async def lock_balances_of(self, creator_ids: list[str]) -> dict[str, Balances]:
        return {c: self.state.balances[c] for c in sorted(creator_ids) if c in self.state.balances}

    async def apply_clawbacks(self, taken: list[ClawbackTaken], transaction_id: str) -> None:
        if transaction_id not in self.state.ledger_transactions:
            raise ConstraintViolation(f"clawbacks of an unrecorded transaction {transaction_id}")
        for t in taken:
            key = (t.clawback.reversal_id, t.clawback.gift_transaction_id)
            _, applied, _ = self.state.clawbacks[key]
            assert applied is None, f"clawback {key} applied twice"
            self.state.clawbacks[key] = (t.clawback, t, self.state.now)  # its coins as taken
            stored = self.state.credits[t.clawback.gift_transaction_id]
            if t.from_pending:
                if stored.matured_at is not None or stored.held_clawed_back + t.from_pending > stored.credit.diamonds:
                    raise ConstraintViolation(f"held diamonds of {stored}")
                stored.held_clawed_back += t.from_pending
            balances = self.state.balances.get(t.creator_id)
            if balances is None:
                assert t.diamonds == 0, f"a clawback of {t.diamonds} diamonds from a creator never credited"
                continue
            self._set_balances(
                replace(
                    balances,
                    pending_diamonds=balances.pending_diamonds - t.from_pending,
                    available_diamonds=balances.available_diamonds - t.from_available,
                    debt_diamonds=balances.debt_diamonds + t.to_debt,
                    clawed_back_diamonds=balances.clawed_back_diamonds + t.diamonds,
                )
            )

    async def queue_events(self, events: list[OutboxRow]) -> None:
        self.state.outbox.extend(events)

    async def now(self) -> datetime:
        return self.state.now

    async def set_account_status(self, account_id: str, frozen: bool, version: int) -> bool:
        current = self.state.account_status.get(account_id)
        if current is not None and current[1] >= version:
            return False
        self.state.account_status[account_id] = (frozen, version)
        return True

    async def account_frozen(self, account_id: str) -> bool:
        return self.state.account_status.get(account_id, (False, 0))[0]

    # --- withdrawals

    async def insert_withdrawal(self, withdrawal: Withdrawal, reserve_transaction_id: str) -> None:
        taken = {stored.withdrawal.request_id for stored in self.state.withdrawals.values()}
        if withdrawal.withdrawal_id in self.state.withdrawals or withdrawal.request_id in taken:
            raise ConstraintViolation(f"withdrawal {withdrawal.withdrawal_id} / request {withdrawal.request_id}")
        if withdrawal.diamonds <= 0 or withdrawal.payout_amount_minor <= 0:
            raise ConstraintViolation(f"withdrawal {withdrawal}")
        recorded = replace(withdrawal, created_at=self.state.now)
        self.state.withdrawals[withdrawal.withdrawal_id] = StoredWithdrawal(
            recorded, next_check_at=self.state.now, reserve_transaction_id=reserve_transaction_id
        )

    async def lock_withdrawal(self, withdrawal_id: str) -> Withdrawal | None:
        stored = self.state.withdrawals.get(withdrawal_id)
        return None if stored is None else stored.withdrawal

    async def mark_canceled(self, withdrawal_id: str, finish_transaction_id: str) -> Withdrawal:
        stored = self.state.withdrawals[withdrawal_id]
        assert stored.withdrawal.status is WithdrawalStatus.PENDING, f"withdrawal {withdrawal_id} was not pending"
        stored.withdrawal = replace(stored.withdrawal, status=WithdrawalStatus.CANCELED)
        stored.finish_transaction_id = finish_transaction_id
        return stored.withdrawal

    async def diamonds_withdrawn_last_24h(self, creator_id: str) -> int:
        since = self.state.now - timedelta(hours=24)
        return sum(
            stored.withdrawal.diamonds
            for stored in self.state.withdrawals.values()
            if stored.withdrawal.creator_id == creator_id
            and stored.withdrawal.status in (*UNFINISHED, WithdrawalStatus.PAID)
            and (stored.withdrawal.created_at or START) > since
        )

    async def lock_next_due_withdrawal(self, payout_provider: str) -> Withdrawal | None:
        due = [
            stored
            for stored in self.state.withdrawals.values()
            if stored.withdrawal.status in UNFINISHED
            and stored.withdrawal.payout_provider == payout_provider
            and stored.next_check_at <= self.state.now
        ]
        return min(due, key=lambda stored: stored.next_check_at).withdrawal if due else None

    async def mark_submitted(self, withdrawal_id: str, check_again_in_seconds: float) -> Withdrawal:
        stored = self.state.withdrawals[withdrawal_id]
        assert stored.withdrawal.status is WithdrawalStatus.PENDING, f"withdrawal {withdrawal_id} was not pending"
        stored.withdrawal = replace(stored.withdrawal, status=WithdrawalStatus.SUBMITTED, submitted_at=self.state.now)
        stored.next_check_at = self.state.now + timedelta(seconds=check_again_in_seconds)
        return stored.withdrawal

    async def mark_returned(self, withdrawal_id: str, reason: str, return_transaction_id: str) -> bool:
        stored = self.state.withdrawals[withdrawal_id]
        if stored.withdrawal.status is not WithdrawalStatus.PAID:
            return False
        if not reason:
            raise ConstraintViolation("a returned withdrawal needs its reason")
        stored.withdrawal = replace(stored.withdrawal, status=WithdrawalStatus.RETURNED, failure_reason=reason)
        stored.return_transaction_id = return_transaction_id
        return True

    async def admit_payout_notification(self, notice: PayoutNotice) -> bool:
        key = (notice.payout_provider, notice.notification_id)
        if key in self.state.payout_notifications:
            return False
        self.state.payout_notifications.add(key)
        return True

    async def record_provider_progress(
        self, withdrawal_id: str, provider_reference: str, check_again_in_seconds: float
    ) -> None:
        stored = self.state.withdrawals[withdrawal_id]
        if stored.withdrawal.status not in UNFINISHED:
            return
        stored.withdrawal = replace(
            stored.withdrawal,
            provider_reference=stored.withdrawal.provider_reference or provider_reference,
            submitted_at=stored.withdrawal.submitted_at or self.state.now,
        )
        stored.next_check_at = self.state.now + timedelta(seconds=check_again_in_seconds)

    async def postpone_check(self, withdrawal_id: str, check_again_in_seconds: float) -> None:
        stored = self.state.withdrawals[withdrawal_id]
        if stored.withdrawal.status in UNFINISHED:
            stored.next_check_at = self.state.now + timedelta(seconds=check_again_in_seconds)

    async def finish_withdrawal(
        self,
        withdrawal_id: str,
        *,
        status: WithdrawalStatus,
        failure_reason: str,
        provider_reference: str,
        finish_transaction_id: str,
    ) -> bool:
        assert status in (WithdrawalStatus.PAID, WithdrawalStatus.FAILED), "finishing needs a final status"
        stored = self.state.withdrawals[withdrawal_id]
        if stored.withdrawal.status not in UNFINISHED:
            return False
        if (status is WithdrawalStatus.FAILED) != (failure_reason != ""):
            raise ConstraintViolation(f"status {status} with failure reason {failure_reason!r}")
        stored.withdrawal = replace(
            stored.withdrawal,
            status=status,
            failure_reason=failure_reason,
            provider_reference=stored.withdrawal.provider_reference or provider_reference,
            submitted_at=stored.withdrawal.submitted_at or self.state.now,
        )
        stored.finish_transaction_id = finish_transaction_id
        return True


def _replay(stored: StoredKey, key: RequestKey, reply: Reply[Result]) -> Result:
    if stored.request_hash != key.fingerprint:
        raise request_id_reused()
    return replayed(StoredRequest(None, stored.reply, stored.error), reply)


def _grouped(credits: list[StoredCredit], key: Callable[[StoredCredit], str | None]) -> list[EarningsRow]:
    groups: dict[str, list[StoredCredit]] = defaultdict(list)
    for stored in credits:
        group = key(stored)
        assert group is not None
        groups[group].append(stored)
    return [
        EarningsRow(
            group,
            sum(stored.credit.diamonds for stored in members),
            len(members),
            max(stored.created_at for stored in members),
        )
        for group, members in groups.items()
    ]


class ScriptedPayoutProvider:
    """A payout provider that answers what the test tells it: the state each submission and status look returns,
    whether a cancel may still stop the payout, or an outage (raises). name: the sandbox's by default (its flow:
    pending while the provider has it); a submit-first rail's (domain.SUBMIT_FIRST_RAILS) for theirs. It remembers
    the payouts it made by withdrawal id, so a resumed submission finds them (lost_answers: the next submissions are
    made, then raise as if their answer was lost)."""

    def __init__(self, name: str = "sandbox") -> None:
        self.name = name
        self.lost_answers = 0
        self.made: dict[str, str] = {}
        self.resumed: list[str] = []
        self.submit_state = PayoutState.PROCESSING
        self.status_state = PayoutState.PAID
        self.failure_reason = "the bank refused the payout"
        self.lets_go = True
        self.down = False
        self.submitted: list[str] = []

    async def submit(
        self, *, withdrawal_id: str, destination: str, amount_minor: int, currency_code: str
    ) -> PayoutResult:
        self._answer()
        self.submitted.append(withdrawal_id)
        self.made.setdefault(withdrawal_id, f"ref-{withdrawal_id}")
        if self.lost_answers:
            self.lost_answers -= 1
            raise TimeoutError("the answer was lost")
        return self._result(self.submit_state, self.made[withdrawal_id])

    async def resume(
        self, *, withdrawal_id: str, destination: str, amount_minor: int, currency_code: str
    ) -> PayoutResult:
        self._answer()
        self.resumed.append(withdrawal_id)
        if withdrawal_id in self.made:
            return self._result(self.status_state, self.made[withdrawal_id])
        return await self.submit(
            withdrawal_id=withdrawal_id, destination=destination, amount_minor=amount_minor, currency_code=currency_code
        )

    async def status(self, *, withdrawal_id: str, provider_reference: str) -> PayoutResult:
        self._answer()
        return self._result(self.status_state, provider_reference)

    async def cancel(self, *, withdrawal_id: str, destination: str, provider_reference: str | None) -> bool:
        self._answer()
        return self.lets_go

    def _answer(self) -> None:
        if self.down:
            raise ConnectionError("the payout provider is down")

    def _result(self, state: PayoutState, reference: str) -> PayoutResult:
        reason = self.failure_reason if state is PayoutState.FAILED else ""
        return PayoutResult(state, reference, reason)
