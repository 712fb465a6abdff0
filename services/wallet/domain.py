"""Wallet rules with no I/O: coin packages, promotions and their bonus, who may spend, spending limits, card-testing
limits on purchases, and the postings of each movement; and the values the use cases (service.py) take and return:
commands, results, rows.

Ledger accounts: a user has two, its paid bucket '<account_id>' (coins bought with money) and its bonus bucket
'<account_id>:bonus' (coins from promotions); the platform's are 'system:*' (a ':' never appears in user ids).
Every transaction's postings sum to zero, so coins are only ever moved, never made or lost."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import Enum
from fractions import Fraction
from math import ceil

from services.runtime.errors import (
    AppError,
    FieldViolation,
    failed_precondition,
    invalid_argument,
    not_found,
    rate_limited,
)
from services.runtime.ledger import Posting, balanced
from services.runtime.requests import RequestKey

SANDBOX_RAIL = "sandbox"  # the development payment provider
STRIPE_RAIL = "stripe"  # web purchases: Stripe PaymentIntents (stripe_payments.py)

SYSTEM_SALES = "system:sales"  # coins issued against real money
SYSTEM_PROMOTIONS = "system:promotions"  # bonus coins issued by promotions
SYSTEM_SPENT = "system:spent"  # coins spent (on gifts); settled into diamonds by payouts
# Exactly these: a user may be called "system", whose bonus bucket is then "system:bonus".
SYSTEM_ACCOUNTS = frozenset({SYSTEM_SALES, SYSTEM_PROMOTIONS, SYSTEM_SPENT})
BONUS_SUFFIX = ":bonus"

SPENDING_LIMIT_WINDOW = timedelta(hours=24)  # the limit caps coins sent in any window this long (rolling)
SPENDING_LIMIT_DELAY = timedelta(hours=24)  # a raise or removal waits this long, so a binge can't undo the limit
MAX_GIVEAWAY_WINNERS = 1000


def paid_bucket(account_id: str) -> str:
    return account_id


def bonus_bucket(account_id: str) -> str:
    return account_id + BONUS_SUFFIX


def is_bonus_bucket(ledger_account_id: str) -> bool:
    return ledger_account_id.endswith(BONUS_SUFFIX)


def buckets(account_id: str) -> list[str]:
    return [paid_bucket(account_id), bonus_bucket(account_id)]


class AccountStatus(Enum):
    ACTIVE = "active"
    FROZEN = "frozen"


class PurchaseStatus(Enum):
    PENDING = "pending"
    COMPLETED = "completed"
    DECLINED = "declined"


@dataclass(frozen=True)
class SpendingLimit:
    """A self-set cap on coins sent in any rolling 24 h (0 = none), and a raise or removal waiting its turn."""

    daily_coins: int = 0
    pending_daily_coins: int | None = None
    pending_effective_at: datetime | None = None

    def in_force(self, now: datetime) -> SpendingLimit:
        """The pending change applies lazily, the first time anyone looks after it became effective."""
        if self.pending_effective_at is not None and self.pending_effective_at <= now:
            assert self.pending_daily_coins is not None
            return SpendingLimit(self.pending_daily_coins)
        return self

    def change_to(self, daily_coins: int, now: datetime) -> SpendingLimit:
        """Lowering (or setting a first limit) applies at once and cancels a pending raise; raising or removing
        waits 24 h. Asking for the limit already in force just cancels a pending change."""
        current = self.in_force(now)
        if _cap(daily_coins) <= _cap(current.daily_coins):
            return SpendingLimit(daily_coins)
        return SpendingLimit(current.daily_coins, daily_coins, now + SPENDING_LIMIT_DELAY)

    def refuse_if_exceeded(self, account_id: str, sent_last_24h_coins: int, coins: int) -> None:
        if self.daily_coins and sent_last_24h_coins + coins > self.daily_coins:
            raise failed_precondition(
                "SPENDING_LIMIT_REACHED",
                f"account {account_id!r} set a limit of {self.daily_coins} coins per 24 h;"
                f" {sent_last_24h_coins} already spent, {coins} more asked",
            )


def _cap(daily_coins: int) -> float:
    return daily_coins or float("inf")


@dataclass(frozen=True)
class Account:
    account_id: str
    adult_verified: bool
    country_code: str
    status: AccountStatus
    spending_limit: SpendingLimit = field(default_factory=SpendingLimit)

    def seen_at(self, now: datetime) -> Account:
        """The account as a caller sees it at now: its spending limit with any due change applied."""
        return replace(self, spending_limit=self.spending_limit.in_force(now))


@dataclass(frozen=True)
class Balance:
    paid_coins: int = 0
    bonus_coins: int = 0

    @property
    def coins(self) -> int:
        return self.paid_coins + self.bonus_coins

    def debited(self, split: Split) -> Balance:
        return Balance(self.paid_coins - split.paid_coins, self.bonus_coins - split.bonus_coins)

    def credited(self, split: Split) -> Balance:
        return Balance(self.paid_coins + split.paid_coins, self.bonus_coins + split.bonus_coins)


@dataclass(frozen=True)
class Split:
    paid_coins: int
    bonus_coins: int

    @property
    def coins(self) -> int:
        return self.paid_coins + self.bonus_coins


@dataclass(frozen=True)
class CoinPackage:
    package_id: str
    coins: int
    price_minor: int
    currency_code: str = "USD"


DEFAULT_PACKAGES: tuple[CoinPackage, ...] = (
    CoinPackage("coins_65", 65, 99),
    CoinPackage("coins_330", 330, 499),
    CoinPackage("coins_660", 660, 999),
    CoinPackage("coins_1321", 1321, 1999),
    CoinPackage("coins_3303", 3303, 4999),
    CoinPackage("coins_6607", 6607, 9999),
    CoinPackage("coins_16500", 16500, 24999),
)


def find_package(package_id: str) -> CoinPackage:
    for package in DEFAULT_PACKAGES:
        if package.package_id == package_id:
            return package
    raise not_found("PACKAGE_NOT_FOUND", f"no coin package {package_id!r}")


# --- requests ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpsertAccount:
    key: RequestKey
    account_id: str
    adult_verified: bool
    country_code: str


@dataclass(frozen=True)
class ChangeSpendingLimit:
    key: RequestKey
    account_id: str
    daily_coins: int


@dataclass(frozen=True)
class BuyCoins:
    key: RequestKey
    account_id: str
    package_id: str
    payment_token: str
    caller: str  # the authenticated subject asking: the account's owner, or a backend acting for many accounts


@dataclass(frozen=True)
class ReversePurchase:
    key: RequestKey
    purchase_id: str
    reason: str
    coins: int = 0  # of the purchase's paid coins; 0: all of them not reversed yet


@dataclass(frozen=True)
class MakeGiveaway:
    key: RequestKey
    creator_id: str
    winner_ids: tuple[str, ...]
    coins_per_winner: int

    @property
    def total_coins(self) -> int:
        return self.coins_per_winner * len(self.winner_ids)


@dataclass(frozen=True)
class NewPromotion:
    """starts_at None: from now on."""

    key: RequestKey
    name: str
    starts_at: datetime | None
    ends_at: datetime | None
    min_package_coins: int
    bonus_percent: int | None
    bonus_coins: int | None
    first_purchase_only: bool
    max_uses_per_account: int


@dataclass(frozen=True)
class EndPromotion:
    key: RequestKey
    promotion_id: str


# --- results ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spent:
    transaction_id: str
    account_id: str
    balance: Balance  # right after the spend
    split: Split


@dataclass(frozen=True)
class Bought:
    purchase_id: str
    account_id: str
    package_id: str
    coins: int
    bonus_coins: int
    promotion_id: str | None
    balance: Balance  # right after the purchase (while pending: before it, nothing is credited yet)
    # Neither paid nor declined yet: the card needs its holder (3-D Secure), who finishes the payment with this
    # secret; the rail's notification completes the purchase. Never kept with the request's key.
    pending: bool = False
    client_action_secret: str = ""


@dataclass(frozen=True)
class Reversed:
    transaction_id: str
    account_id: str
    balance: Balance
    account_status: AccountStatus
    reversed: Split = Split(0, 0)  # the purchase's paid and bonus coins this reversal gave back
    removed_coins: int = 0  # of them, taken back unspent
    clawed_back_coins: int = 0  # of them, spent on gifts whose diamonds are taken back from the creators
    charged_coins: int = 0  # of them, taken from the buyer's other coins (or owed: a debt)


@dataclass(frozen=True)
class GiveawayMade:
    giveaway_id: str
    creator_id: str
    winner_ids: tuple[str, ...]
    total_coins: int
    balance: Balance  # the creator's, right after


@dataclass(frozen=True)
class PackageOffer:
    package: CoinPackage
    bonus_coins: int  # what anyone buying now would get on top


# --- promotions -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Promotion:
    promotion_id: str
    name: str
    starts_at: datetime
    ends_at: datetime | None
    min_package_coins: int
    bonus_percent: int | None
    bonus_coins: int | None
    first_purchase_only: bool
    max_uses_per_account: int
    created_at: datetime

    def bonus_for(self, package: CoinPackage) -> int:
        if package.coins < self.min_package_coins:
            return 0
        if self.bonus_percent is not None:
            return package.coins * self.bonus_percent // 100  # rounded down, as the contract says
        assert self.bonus_coins is not None
        return self.bonus_coins

    def is_open(self, now: datetime) -> bool:
        return self.starts_at <= now and (self.ends_at is None or now < self.ends_at)

    def has_ended(self, now: datetime) -> bool:
        # ends_at == starts_at: ended before it ever opened.
        return self.ends_at is not None and (self.ends_at <= now or self.ends_at <= self.starts_at)

    def seen_at(self, now: datetime) -> PromotionView:
        return PromotionView(
            promotion_id=self.promotion_id,
            name=self.name,
            starts_at=self.starts_at,
            ends_at=self.ends_at,
            min_package_coins=self.min_package_coins,
            bonus_percent=self.bonus_percent,
            bonus_coins=self.bonus_coins,
            first_purchase_only=self.first_purchase_only,
            max_uses_per_account=self.max_uses_per_account,
            ended=self.has_ended(now),
        )

    @property
    def is_for_everyone(self) -> bool:
        """No condition on the buyer's history, so it can be shown on the public package list."""
        return not self.first_purchase_only and not self.max_uses_per_account


@dataclass(frozen=True)
class PromotionView:
    """A promotion as callers see it at a moment: whether it has ended by then, not when it was created."""

    promotion_id: str
    name: str
    starts_at: datetime
    ends_at: datetime | None
    min_package_coins: int
    bonus_percent: int | None
    bonus_coins: int | None
    first_purchase_only: bool
    max_uses_per_account: int
    ended: bool


@dataclass(frozen=True)
class PurchaseHistory:
    """An account's completed and pending purchases, as far as promotions care."""

    purchases: int
    uses_by_promotion: dict[str, int]


def allows(promotion: Promotion, history: PurchaseHistory | None) -> bool:
    """None: the public view, where only promotions without account conditions count."""
    if history is None:
        return promotion.is_for_everyone
    if promotion.first_purchase_only and history.purchases > 0:
        return False
    uses = history.uses_by_promotion.get(promotion.promotion_id, 0)
    return not promotion.max_uses_per_account or uses < promotion.max_uses_per_account


def best_promotion(
    promotions: list[Promotion], package: CoinPackage, now: datetime, history: PurchaseHistory | None
) -> tuple[Promotion | None, int]:
    """The open promotion giving this package the largest bonus (ties: the earliest created), and that bonus."""
    best: tuple[Promotion | None, int] = (None, 0)
    for promotion in sorted(promotions, key=lambda p: (p.created_at, p.promotion_id)):
        bonus = promotion.bonus_for(package)
        if bonus > best[1] and promotion.is_open(now) and allows(promotion, history):
            best = (promotion, bonus)
    return best


def ended_now(promotion: Promotion, now: datetime) -> datetime | None:
    """EndPromotion's new ends_at, or None when it has already ended (it is returned unchanged)."""
    if promotion.has_ended(now):
        return None
    return max(now, promotion.starts_at)


# --- who may do what --------------------------------------------------------------------------------------------


def require_can_purchase(account: Account | None, account_id: str) -> Account:
    """Purchases need an adult-verified account; a frozen one may buy (that is how it pays its debt back)."""
    if account is None or not account.adult_verified:
        raise failed_precondition("ACCOUNT_NOT_ELIGIBLE", f"account {account_id!r} is not an adult-verified account")
    return account


def require_can_transact(account: Account | None, account_id: str) -> Account:
    """Spends and giveaways need an adult-verified, active account."""
    require_can_purchase(account, account_id)
    assert account is not None
    if account.status is AccountStatus.FROZEN:
        raise failed_precondition("ACCOUNT_FROZEN", f"account {account_id!r} is frozen")
    return account


def require_winners_eligible(winner_ids: list[str], accounts: dict[str, Account]) -> None:
    ineligible = [
        winner_id
        for winner_id in winner_ids
        if (account := accounts.get(winner_id)) is None
        or not account.adult_verified
        or account.status is not AccountStatus.ACTIVE
    ]
    if ineligible:
        shown = ", ".join(ineligible[:10]) + (f" and {len(ineligible) - 10} more" if len(ineligible) > 10 else "")
        raise failed_precondition(
            "ACCOUNT_NOT_ELIGIBLE", f"giveaway winners must be adult-verified active accounts: {shown}"
        )


def insufficient_coins(account_id: str, balance_coins: int, coins: int) -> AppError:
    return failed_precondition(
        "INSUFFICIENT_COINS", f"account {account_id!r} has {balance_coins} coins, {coins} needed"
    )


# --- card testing -----------------------------------------------------------------------------------------------

# Card testers try stolen card numbers through a purchase endpoint, so every declined payment is a signal. Past a
# number of declines in this rolling window, purchases are refused (RATE_LIMITED) until enough of them leave it.
DECLINE_WINDOW = timedelta(hours=24)


class DeclineScope(Enum):
    ACCOUNT = "account"  # the account to be charged, whoever asks for it
    CALLER = "caller"  # the authenticated subject asking, whichever accounts it asks for


@dataclass(frozen=True)
class DeclineLimits:
    """Declined payments allowed in the window before purchases are refused (0: no limit)."""

    per_account: int
    per_caller: int


@dataclass(frozen=True)
class Declines:
    """Declined payments within the window, as far as a limit needs them: the newest ones, counted up to the limit,
    and the oldest of those. With the limit reached, it is the one whose leaving lets the next purchase through."""

    count: int = 0
    oldest_counted_at: datetime | None = None


@dataclass(frozen=True)
class PurchaseAttempts:
    """What the card-testing limits look at, read with the account locked (so no other purchase intent of the
    account is being recorded meanwhile)."""

    account: Declines
    caller: Declines
    account_undecided: int  # the account's purchases still being charged: each may be one more decline
    now: datetime


@dataclass(frozen=True)
class CardTesting:
    """Why a purchase is refused as card testing: the limit that holds it back longest, and how long."""

    scope: DeclineScope
    wait: timedelta

    def refusal(self, account_id: str) -> AppError:
        who = f"account {account_id!r}" if self.scope is DeclineScope.ACCOUNT else "this caller"
        seconds = self.wait.total_seconds()
        return rate_limited(f"too many declined payments for {who} in 24 h; retry in {seconds:.0f} s", seconds)


def card_testing(attempts: PurchaseAttempts, limits: DeclineLimits, undecided_wait: timedelta) -> CardTesting | None:
    """None when a purchase may be charged now. An account's purchases still being charged count as declines (they
    may be): otherwise a tester firing many purchases at once would have them all charged before the first decline
    is recorded. A caller's do not: a backend has many in flight for its users at any moment."""
    holds = [
        CardTesting(scope, wait)
        for scope, declines, limit, undecided in (
            (DeclineScope.ACCOUNT, attempts.account, limits.per_account, attempts.account_undecided),
            (DeclineScope.CALLER, attempts.caller, limits.per_caller, 0),
        )
        if (wait := _declines_wait(declines, limit, undecided, attempts.now, undecided_wait)) is not None
    ]
    return max(holds, key=lambda hold: hold.wait, default=None)


def _declines_wait(
    declines: Declines, limit: int, undecided: int, now: datetime, undecided_wait: timedelta
) -> timedelta | None:
    """How long until one more purchase may be charged (None: it may now). With the limit reached, until the oldest
    counted decline leaves the window; short of it only with undecided purchases, until they are decided (a charge
    takes at most undecided_wait, unless the provider is down)."""
    if not limit or declines.count + undecided < limit:
        return None
    if declines.count < limit:
        return undecided_wait
    assert declines.oldest_counted_at is not None, "counted declines have an oldest"
    return declines.oldest_counted_at + DECLINE_WINDOW - now


# --- funding (the rules are services/wallet/funding.py) --------------------------------------------------------


class Use(Enum):
    """What a funding row's coins were taken out of their lot for."""

    SPEND = "spend"  # SpendCoins; a gift's spend has the reference "gift:<gift_transaction_id>"
    GIVEAWAY = "giveaway"  # moved to a winner's lot, same purchase: a transfer, not a use
    REVERSED = "reversed"  # removed, unspent, by its own purchase's reversal
    CHARGED = "charged"  # taken from the buyer to cover what a reversal could not trace to a creator
    DEBT = "debt"  # a purchase's coins that repaid the buyer's debt on arrival


# Uses that end a coin's life in a wallet: what a reversal of its purchase traces (a giveaway only moves coins).
TRACED_USES = frozenset({Use.SPEND, Use.CHARGED, Use.DEBT})


@dataclass(frozen=True)
class Lot:
    """Coins of one purchase in one bucket; lot_id orders a holder's lots (None: a lot not yet stored)."""

    lot_id: int | None
    ledger_account_id: str  # the bucket: '<account_id>' (paid) or '<account_id>:bonus'
    purchase_id: str | None
    coins: int

    @property
    def holder(self) -> str:
        bucket = self.ledger_account_id
        return bucket[: -len(BONUS_SUFFIX)] if is_bonus_bucket(bucket) else bucket


@dataclass(frozen=True)
class Draw:
    """Coins taken out of a stored lot (lot_id None: a purchase's coins that repaid a debt before reaching one)."""

    lot_id: int | None
    ledger_account_id: str
    purchase_id: str | None
    coins: int


@dataclass(frozen=True)
class NewLot:
    """A lot a movement creates (a purchase's, a giveaway winner's)."""

    ledger_account_id: str
    purchase_id: str | None
    coins: int


@dataclass(frozen=True)
class Funding:
    """A funding row: coins a movement took out of a lot, and what for."""

    transaction_id: str
    draw: Draw
    used_for: Use


@dataclass(frozen=True)
class Spender:
    """What a spend or a giveaway checks, read with the account's buckets locked."""

    account: Account | None
    balance: Balance
    sent_last_24h_coins: int
    now: datetime
    lots: tuple[Lot, ...] = ()  # the coins' lots, oldest first (what a debit draws)


def authorize_spend(spender: Spender, account_id: str, coins: int) -> Split:
    """Checks a spend of coins and splits it: bonus coins first, then paid coins."""
    account = require_can_transact(spender.account, account_id)
    account.spending_limit.in_force(spender.now).refuse_if_exceeded(account_id, spender.sent_last_24h_coins, coins)
    if spender.balance.coins < coins:
        raise insufficient_coins(account_id, spender.balance.coins, coins)
    bonus = min(max(spender.balance.bonus_coins, 0), coins)
    return Split(paid_coins=coins - bonus, bonus_coins=bonus)


SPEND_METHOD = "SpendCoins"  # a spend's key is SpendCoins', alone or in a batch


@dataclass(frozen=True)
class SpendAsk:
    """One spend (SpendCoins, or one of a SpendCoinsBatch)."""

    request_id: str
    account_id: str
    coins: int
    reference: str
    fingerprint: bytes

    @property
    def key(self) -> RequestKey:
        return RequestKey(self.request_id, SPEND_METHOD, self.fingerprint)


def authorize_spends(asks: list[SpendAsk], spenders: dict[str, Spender]) -> list[Split | AppError]:
    """Decides a batch of spends in order, each exactly as if it were made alone after the ones before it: an
    approved spend lowers its account's balance and raises its 24 h total for the next; a refusal changes nothing."""
    running = dict(spenders)
    decisions: list[Split | AppError] = []
    for ask in asks:
        spender = running[ask.account_id]
        try:
            split = authorize_spend(spender, ask.account_id, ask.coins)
        except AppError as refusal:
            decisions.append(refusal)
            continue
        running[ask.account_id] = Spender(
            spender.account, spender.balance.debited(split), spender.sent_last_24h_coins + split.coins, spender.now
        )
        decisions.append(split)
    return decisions


def coins_to_reverse(purchase_coins: int, reversed_before: int, asked: int) -> int:
    """How many of a purchase's paid coins a reversal gives back: asked (0: all those not reversed yet). Repeated
    partial reversals never exceed the purchase."""
    left = purchase_coins - reversed_before
    if asked == 0:
        return left
    if asked > left:
        raise invalid_argument(
            [FieldViolation("coins", f"only {left} of the purchase's {purchase_coins} coins are left to reverse")]
        )
    return asked


def in_debt(balance: Balance) -> bool:
    """Paid coins below zero: a chargeback took back coins already spent. The account is frozen meanwhile."""
    return balance.paid_coins < 0


def debt_covered(before: Balance, after: Balance) -> bool:
    """A purchase that brings a debt back to zero or above unfreezes the account."""
    return in_debt(before) and not in_debt(after)


def giveaway_shares(debit: Split, winner_count: int, coins_per_winner: int) -> list[Split]:
    """Provenance carries over: winners, in the given order, get the debited bonus coins first."""
    shares = []
    for index in range(winner_count):
        bonus = min(max(debit.bonus_coins - index * coins_per_winner, 0), coins_per_winner)
        shares.append(Split(paid_coins=coins_per_winner - bonus, bonus_coins=bonus))
    assert sum(s.coins for s in shares) == debit.coins
    return shares


# --- postings ---------------------------------------------------------------------------------------------------

Postings = list[Posting]


def purchase_postings(account_id: str, coins: int, bonus_coins: int) -> Postings:
    return balanced(
        [
            (paid_bucket(account_id), coins),
            (bonus_bucket(account_id), bonus_coins),
            (SYSTEM_SALES, -coins),
            (SYSTEM_PROMOTIONS, -bonus_coins),
        ]
    )


def spend_postings(account_id: str, split: Split) -> Postings:
    return balanced(
        [
            (paid_bucket(account_id), -split.paid_coins),
            (bonus_bucket(account_id), -split.bonus_coins),
            (SYSTEM_SPENT, split.coins),
        ]
    )


@dataclass(frozen=True)
class Leg:
    """A posting with the balance its user bucket has right after it (None for a system account)."""

    ledger_account_id: str
    coins_delta: int
    balance_after: int | None


def spend_legs(account_id: str, split: Split, after: Balance) -> list[Leg]:
    """The postings of a spend (as spend_postings) with each bucket's balance after it."""
    balance_after = {paid_bucket(account_id): after.paid_coins, bonus_bucket(account_id): after.bonus_coins}
    return [
        Leg(ledger_account, delta, balance_after.get(ledger_account))
        for ledger_account, delta in spend_postings(account_id, split)
    ]


def giveaway_postings(creator_id: str, debit: Split, winner_ids: list[str], shares: list[Split]) -> Postings:
    postings = [(paid_bucket(creator_id), -debit.paid_coins), (bonus_bucket(creator_id), -debit.bonus_coins)]
    for winner_id, share in zip(winner_ids, shares, strict=True):
        postings += [(paid_bucket(winner_id), share.paid_coins), (bonus_bucket(winner_id), share.bonus_coins)]
    return balanced(postings)


# --- what the ledger holds ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Purchase:
    purchase_id: str
    request_id: str
    account_id: str
    package_id: str
    coins: int
    bonus_coins: int
    price_minor: int
    currency_code: str
    payment_token: str
    status: PurchaseStatus
    transaction_id: str | None
    promotion_id: str | None = None
    caller: str | None = None  # who asked for it (None: a purchase recorded before callers were kept)
    rail: str = SANDBOX_RAIL  # where the money came from
    store_transaction_id: str | None = None  # the store's id of it (None: the sandbox, or a card charge)
    storefront_country: str = ""  # ISO 3166-1 alpha-2 ("": recorded before storefronts were kept)
    terms_version: str = ""  # the terms of sale it was made under ("": recorded before they were kept)


class PurchaseState(Enum):
    """A purchase as its buyer and the stores see it: its stored status, and what reversals took back."""

    PENDING = "pending"
    COMPLETED = "completed"
    PARTIALLY_REVERSED = "partially_reversed"
    REVERSED = "reversed"
    FAILED = "failed"


@dataclass(frozen=True)
class PurchaseView:
    purchase: Purchase
    created_at: datetime
    reversed: Split  # the purchase's paid and bonus coins reversals gave back so far

    @property
    def state(self) -> PurchaseState:
        if self.purchase.status is PurchaseStatus.PENDING:
            return PurchaseState.PENDING
        if self.purchase.status is PurchaseStatus.DECLINED:
            return PurchaseState.FAILED
        if self.reversed.paid_coins >= self.purchase.coins:
            return PurchaseState.REVERSED
        return PurchaseState.PARTIALLY_REVERSED if self.reversed.paid_coins else PurchaseState.COMPLETED


@dataclass(frozen=True)
class ReversedSoFar:
    """What earlier reversals of a purchase gave back, and the newest of them (None: none yet)."""

    coins: int
    bonus_coins: int
    last_transaction_id: str | None


@dataclass(frozen=True)
class PurchaseReversal:
    """A reversal as the ledger keeps it."""

    purchase_id: str
    request_id: str
    transaction_id: str
    reason: str
    reversed: Split  # the purchase's paid and bonus coins given back
    taken: Split  # what the buyer's paid and bonus buckets lost (unspent coins there, and the charge)
    removed_coins: int
    clawed_back_coins: int


@dataclass(frozen=True)
class NewSpend:
    """A decided spend, ready to be recorded with the other spends of its batch."""

    transaction_id: str
    request_id: str
    account_id: str
    reference: str
    legs: list[Leg]
    draws: tuple[Draw, ...] = ()  # the lots its coins came from


class TransactionKind(Enum):
    PURCHASE = "purchase"
    SPEND = "spend"
    REVERSAL = "reversal"
    GIVEAWAY_SENT = "giveaway_sent"
    GIVEAWAY_RECEIVED = "giveaway_received"


@dataclass(frozen=True)
class Movement:
    """One account's side of a ledger transaction, as history and replays show it."""

    posting_id: int
    transaction_id: str
    kind: str  # the ledger's kind: purchase, spend, reversal or giveaway
    initiator_id: str
    reference: str
    paid_delta: int
    bonus_delta: int
    paid_after: int
    bonus_after: int
    created_at: datetime

    def kind_seen_by(self, account_id: str) -> TransactionKind:
        """A giveaway is sent by its creator and received by its winners."""
        if self.kind == "giveaway":
            sent = self.initiator_id == account_id
            return TransactionKind.GIVEAWAY_SENT if sent else TransactionKind.GIVEAWAY_RECEIVED
        return TransactionKind(self.kind)

    @property
    def balance_after(self) -> Balance:
        return Balance(self.paid_after, self.bonus_after)

    def as_spend(self, account_id: str) -> Spent:
        """The answer its SpendCoins got (a spend's deltas are negative)."""
        return Spent(self.transaction_id, account_id, self.balance_after, Split(-self.paid_delta, -self.bonus_delta))


# --- purchases through app stores -------------------------------------------------------------------------------


class Store(Enum):
    """An app store coins are bought in; its value is the purchase's rail."""

    APP_STORE = "app_store"
    GOOGLE_PLAY = "google_play"


@dataclass(frozen=True)
class RedeemStorePurchase:
    key: RequestKey
    account_id: str
    store: Store
    signed_transaction: str  # App Store: the StoreKit 2 JWS
    purchase_token: str  # Google Play: the token and its product
    product_id: str
    caller: str


@dataclass(frozen=True)
class StoreProof:
    """What a store's verification established about a purchase made in it (stores.py's verifiers make it)."""

    store: Store
    transaction_id: str  # App Store: transactionId; Google Play: orderId. Credited once, ever.
    product_id: str
    price_paid_minor: int | None  # in currency_code's minor units; None: the store did not say (the package's)
    currency_code: str  # "" when price_paid_minor is None
    storefront_country: str  # ISO 3166-1 alpha-2 ("": the store did not say)
    # Something to do at the store once the coins are credited (Google Play: consume the purchase, or Google refunds
    # it after 3 days); a periodic pass does it for those a crash left undone.
    needs_finishing: bool = False
    purchase_token: str = ""  # Google Play: what finishing needs


@dataclass(frozen=True)
class RailReversal:
    """A rail's notice that a purchase's money went back: a refund, a revocation, a chargeback, a voided purchase.
    share: of the purchase's paid coins, what stands reversed once it applies (1: all) — a rail reports refunds as
    totals so far (Apple's revocation percentage, Stripe's amount refunded), so a notice never adds to another."""

    rail: str
    notification_id: str
    store_transaction_id: str
    share: Fraction
    reason: str

    def __post_init__(self) -> None:
        assert 0 < self.share <= 1, f"a reversal's share is in (0, 1], not {self.share}"


@dataclass(frozen=True)
class RailPayment:
    """A rail's word on a charge it left pending (Stripe's payment_intent.succeeded or .payment_failed): the
    purchase it was made for is found by the rail's transaction id, or by the purchase id the rail carries with it
    (the charge's metadata: a notification may come before the wallet recorded the transaction id)."""

    rail: str
    notification_id: str
    store_transaction_id: str
    purchase_id: str
    approved: bool
    decline_reason: str = ""


class RailPaymentOutcome(Enum):
    COMPLETED = "completed"  # the purchase was credited
    DECLINED = "declined"
    ALREADY_DECIDED = "already_decided"  # the charge's answer or an earlier notification decided it
    UNKNOWN = "unknown"  # no purchase of ours on this rail: another system's payment on the same account
    DUPLICATE = "duplicate"  # this notification took effect before


@dataclass(frozen=True)
class Redeemed:
    """A redeemed store purchase as it stands after its transaction (an early refund may have reversed it), and the
    buyer's balance then."""

    view: PurchaseView
    balance: Balance


class RailReversalOutcome(Enum):
    APPLIED = "applied"  # coins were reversed
    WAITING = "waiting"  # nobody has redeemed the transaction yet: the redeem applies it
    NOTHING_LEFT = "nothing_left"  # the share was reversed already (or the purchase never completed)
    DUPLICATE = "duplicate"  # this notification took effect before


def coins_for_share(coins: int, share: Fraction) -> int:
    """A share of a purchase's paid coins, rounded up: the buyer never keeps a coin of money that went back."""
    return min(coins, ceil(coins * share))


def store_package_id(product_id: str, products: dict[str, str]) -> str:
    """The coin package a store product sells: COINSTREAM_STORE_PRODUCTS maps store product ids to packages; a
    product it does not name is the package of the same id (a store console may use the package ids)."""
    return products.get(product_id, product_id)


CONSUMPTION_MILLIUNITS = 100_000  # 100 %, as the stores count percentages (Apple's consumptionPercentage)


class ConsumptionStatus(Enum):
    NOT_CONSUMED = "not_consumed"
    PARTIALLY_CONSUMED = "partially_consumed"
    FULLY_CONSUMED = "fully_consumed"


@dataclass(frozen=True)
class PurchaseConsumption:
    """What became of a store purchase's coins (paid and bonus), from their provenance: what a store asks before it
    decides a refund. unspent: its lots, in whatever wallet they are now (a giveaway's winner's too: moved, not
    used); reversed: what reversals gave back; the rest was used (spent on gifts, charged, or repaid a debt)."""

    credited_coins: int
    unspent_coins: int
    reversed_coins: int

    def __post_init__(self) -> None:
        assert 0 <= self.unspent_coins + self.reversed_coins <= self.credited_coins, self

    @property
    def used_coins(self) -> int:
        return self.credited_coins - self.reversed_coins - self.unspent_coins

    @property
    def status(self) -> ConsumptionStatus:
        if self.used_coins == 0:
            return ConsumptionStatus.NOT_CONSUMED
        if self.unspent_coins == 0:
            return ConsumptionStatus.FULLY_CONSUMED
        return ConsumptionStatus.PARTIALLY_CONSUMED

    @property
    def used_milliunits(self) -> int:
        """The share of the credited coins used, in milliunits (100,000 = all), rounded down: a store refunding by
        it never refunds less than what was left unused."""
        if self.credited_coins == 0:
            return 0
        return self.used_coins * CONSUMPTION_MILLIUNITS // self.credited_coins
