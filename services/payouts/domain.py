"""Payout rules with no I/O: how gifts become diamonds, who may withdraw how much, and the postings of each movement.

Ledger accounts: each creator has 'creator:<id>:pending', 'creator:<id>:available' and 'creator:<id>:reserved'; the
platform's are 'system:*' (creator ids never contain ':'). Every transaction's postings sum to zero, so diamonds are
only ever moved, never made or lost: settlement moves them from system:gift_settlement to creators (to pending while
a maturity hold is configured, which maturity later moves to available), a withdrawal moves them from available to
reserved, and then either on to system:paid_out or back to available (failed or canceled); a payout the provider gives
back after paying it (returned, a reversed transfer) comes back from system:paid_out to available."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from enum import Enum

from services.runtime.errors import (
    AppError,
    FieldViolation,
    failed_precondition,
    invalid_argument,
    not_found,
)
from services.runtime.ledger import Posting, balanced
from services.runtime.requests import RequestKey

SYSTEM_GIFT_SETTLEMENT = "system:gift_settlement"  # source of every diamond credited for a gift
SYSTEM_PAID_OUT = "system:paid_out"  # diamonds that left as real money
SYSTEM_CLAWED_BACK = "system:clawed_back"  # diamonds taken back: their coins' purchase was reversed

DIAMONDS_PER_VALUE_UNIT = 1000  # the contract prices diamonds per 1,000


def available_account(creator_id: str) -> str:
    return f"creator:{creator_id}:available"


def reserved_account(creator_id: str) -> str:
    return f"creator:{creator_id}:reserved"


def pending_account(creator_id: str) -> str:
    return f"creator:{creator_id}:pending"


def debt_account(creator_id: str) -> str:
    """What a creator owes: clawbacks beyond its diamonds. Its balance is minus the debt; credits repay it first."""
    return f"creator:{creator_id}:debt"


class WithdrawalStatus(Enum):
    PENDING = "pending"
    # Handed to a provider that cannot call it back (SUBMIT_FIRST_RAILS), its outcome not known yet.
    SUBMITTED = "submitted"
    PAID = "paid"
    FAILED = "failed"
    CANCELED = "canceled"
    # Paid, then given back by the provider (a returned PayPal item, a reversed Stripe transfer): diamonds back.
    RETURNED = "returned"


# The payout providers (COINSTREAM_PAYOUT_PROVIDER); each withdrawal records the one that pays it.
SANDBOX_RAIL = "sandbox"
STRIPE_CONNECT_RAIL = "stripe_connect"
PAYPAL_RAIL = "paypal"
# Rails whose payouts cannot be called back once handed over: the withdrawal is recorded SUBMITTED, and committed,
# before the provider is called, so a crash never loses what was handed over, a PENDING one never reached the
# provider (a cancel needs to ask nobody) and a SUBMITTED one cannot be canceled. The sandbox keeps its contract:
# a payout stays PENDING while the provider has it, and a "sandbox:hold…" one can be canceled.
SUBMIT_FIRST_RAILS = frozenset({STRIPE_CONNECT_RAIL, PAYPAL_RAIL})


@dataclass(frozen=True)
class SettlementRate:
    version: int
    numerator: int
    denominator: int

    def __post_init__(self) -> None:
        assert self.numerator > 0 and self.denominator > 0, f"invalid settlement rate {self}"

    @property
    def carries_fractions(self) -> bool:
        """Whether a gift can leave a fraction of a diamond behind (never at a whole-number rate such as 1/1)."""
        return self.denominator > 1

    def credit_with_carry(self, remainder: int, coins: Sequence[int]) -> tuple[list[int], int]:
        """Each gift's diamonds when the fraction left over is carried to the next gift of the same creator.

        remainder is in 1/denominator diamonds (0 <= remainder < denominator). Returns the diamonds per gift and the
        new remainder. The sum telescopes: sum(result) == (remainder + sum(coins) × numerator) // denominator, so
        over all of a creator's gifts at this rate, diamonds == floor(total coins × rate): never lost, never made."""
        assert 0 <= remainder < self.denominator, f"remainder {remainder} out of range for {self}"
        diamonds: list[int] = []
        for gift_coins in coins:
            assert gift_coins > 0, f"gift of {gift_coins} coins"
            diamonds_now, remainder = divmod(remainder + gift_coins * self.numerator, self.denominator)
            diamonds.append(diamonds_now)
        return diamonds, remainder

    def claw_back_with_carry(self, remainder: int, coins: int) -> tuple[int, int]:
        """The diamonds that `coins` of a creator's gifts at this rate earned, taken back through the same carry as
        credit_with_carry (remainder in 1/denominator diamonds). Returns the diamonds and the new remainder, so that
        per creator and rate version the net diamonds stay floor(net coins × rate) exactly, rest carried."""
        assert 0 <= remainder < self.denominator and coins > 0, f"claw back {coins} coins at remainder {remainder}"
        taken, remainder = divmod(remainder - coins * self.numerator, self.denominator)
        return -taken, remainder

    def is_configured_as(self, numerator: int, denominator: int) -> bool:
        return (self.numerator, self.denominator) == (numerator, denominator)


def require_one_target(stream_id: str | None, video_id: str | None) -> None:
    """A gift went to a live stream or to a video: a credit names exactly one of them (the statements group by it)."""
    assert (stream_id is None) != (video_id is None), f"stream_id {stream_id!r} and video_id {video_id!r}"


@dataclass(frozen=True)
class GiftToSettle:
    """The part of a GiftSent event that settlement needs. paid_coins/bonus_coins (the cash behind the gift) are
    kept for the platform's accounting; they may still be 0 while the senders' side does not fill them in.
    Exactly one of stream_id and video_id is set: where the gift was sent."""

    gift_transaction_id: str
    creator_id: str
    stream_id: str | None
    coins: int
    paid_coins: int = 0
    bonus_coins: int = 0
    # When gifts recorded the gift as sent (Unix seconds; 0 when unknown): for the settlement lag metric only.
    sent_at_seconds: float = field(default=0.0, compare=False)
    video_id: str | None = None

    def __post_init__(self) -> None:
        require_one_target(self.stream_id, self.video_id)


@dataclass(frozen=True)
class DiamondCredit:
    """Exactly one of stream_id and video_id is set, as on the gift it credits."""

    gift_transaction_id: str
    creator_id: str
    stream_id: str | None
    coins: int
    diamonds: int
    paid_coins: int = 0
    bonus_coins: int = 0
    video_id: str | None = None

    def __post_init__(self) -> None:
        require_one_target(self.stream_id, self.video_id)


@dataclass(frozen=True)
class DueCredit:
    """A held credit whose hold is over: its diamonds move pending → available."""

    gift_transaction_id: str
    creator_id: str
    diamonds: int


def credit_gifts(
    gifts: Iterable[GiftToSettle], rate: SettlementRate, remainders: dict[str, int]
) -> tuple[list[DiamondCredit], dict[str, int]]:
    """Diamonds per gift, carrying each creator's fraction from gift to gift (see SettlementRate.credit_with_carry).

    remainders holds each creator's carried fraction at this rate version (missing = 0); returns the credits, in the
    gifts' order, and the new remainder of every creator in the batch."""
    gifts_by_creator: dict[str, list[GiftToSettle]] = defaultdict(list)
    for gift in gifts:
        gifts_by_creator[gift.creator_id].append(gift)
    diamonds_by_gift: dict[str, int] = {}
    new_remainders: dict[str, int] = {}
    for creator_id, creator_gifts in gifts_by_creator.items():
        diamonds, new_remainders[creator_id] = rate.credit_with_carry(
            remainders.get(creator_id, 0), [gift.coins for gift in creator_gifts]
        )
        diamonds_by_gift.update(zip((gift.gift_transaction_id for gift in creator_gifts), diamonds, strict=True))
    credits = [
        DiamondCredit(
            gift.gift_transaction_id,
            gift.creator_id,
            gift.stream_id,
            gift.coins,
            diamonds_by_gift[gift.gift_transaction_id],
            gift.paid_coins,
            gift.bonus_coins,
            gift.video_id,
        )
        for creator_gifts in gifts_by_creator.values()
        for gift in creator_gifts
    ]
    return credits, new_remainders


def diamonds_by_creator(credits: Iterable[DiamondCredit]) -> dict[str, int]:
    """One total per creator, so a batch updates each creator's balance row once however many gifts it got.

    Sorted by creator id: every settlement locks balance rows in the same order, so concurrent batches cannot
    deadlock. Creators whose gifts all floored to zero are left out (nothing to post)."""
    return totals_by_creator((credit.creator_id, credit.diamonds) for credit in credits)


Postings = list[Posting]


def settlement_postings(diamonds_per_creator: dict[str, int], *, held: bool = False) -> Postings:
    """To each creator's available account, or to pending while a maturity hold applies."""
    account = pending_account if held else available_account
    postings = [(account(creator_id), diamonds) for creator_id, diamonds in diamonds_per_creator.items()]
    total = sum(diamonds_per_creator.values())
    return balanced([*postings, (SYSTEM_GIFT_SETTLEMENT, -total)])


def maturity_postings(diamonds_per_creator: dict[str, int]) -> Postings:
    """Matured credits: pending → available, creator by creator (one ledger transaction for a whole batch)."""
    postings: Postings = []
    for creator_id, diamonds in diamonds_per_creator.items():
        postings += [(pending_account(creator_id), -diamonds), (available_account(creator_id), diamonds)]
    return balanced(postings)


def totals_by_creator(diamonds_per_credit: Iterable[tuple[str, int]]) -> dict[str, int]:
    """(creator_id, diamonds) pairs summed per creator, sorted by creator id (the lock order), zero totals left out."""
    totals: dict[str, int] = defaultdict(int)
    for creator_id, diamonds in diamonds_per_credit:
        totals[creator_id] += diamonds
    return {creator_id: totals[creator_id] for creator_id in sorted(totals) if totals[creator_id] > 0}


def repayment_postings(repaid_per_creator: dict[str, int]) -> Postings:
    """Debts repaid from available diamonds (credits repay a debt before anything becomes available)."""
    postings: Postings = []
    for creator_id, diamonds in repaid_per_creator.items():
        postings += [(available_account(creator_id), -diamonds), (debt_account(creator_id), diamonds)]
    return balanced(postings)


def reserve_postings(creator_id: str, diamonds: int) -> Postings:
    return balanced([(available_account(creator_id), -diamonds), (reserved_account(creator_id), diamonds)])


def paid_out_postings(creator_id: str, diamonds: int) -> Postings:
    return balanced([(reserved_account(creator_id), -diamonds), (SYSTEM_PAID_OUT, diamonds)])


def returned_postings(creator_id: str, diamonds: int) -> Postings:
    """A failed or canceled withdrawal gives its diamonds back."""
    return balanced([(reserved_account(creator_id), -diamonds), (available_account(creator_id), diamonds)])


def payout_returned_postings(creator_id: str, diamonds: int) -> Postings:
    """A paid payout the provider gave back (returned, reversed): out of system:paid_out again."""
    return balanced([(SYSTEM_PAID_OUT, -diamonds), (available_account(creator_id), diamonds)])


@dataclass(frozen=True)
class CreatorProfile:
    creator_id: str
    kyc_verified: bool
    payout_destination: str


@dataclass(frozen=True)
class UpdateProfile:
    """UpdateCreatorProfile: the profile as it is to be from now on."""

    key: RequestKey
    profile: CreatorProfile


@dataclass(frozen=True)
class Balances:
    creator_id: str
    available_diamonds: int
    reserved_diamonds: int
    lifetime_diamonds: int
    pending_diamonds: int = 0
    debt_diamonds: int = 0  # clawed back beyond what the creator had; repaid by the next credits
    clawed_back_diamonds: int = 0  # lifetime: taken back because their coins' purchase was reversed

    @classmethod
    def zero(cls, creator_id: str) -> Balances:
        return cls(creator_id, 0, 0, 0, 0)

    @property
    def repayable(self) -> int:
        """What of the debt the available diamonds repay now."""
        return min(self.debt_diamonds, self.available_diamonds)


@dataclass(frozen=True)
class WithdrawalPolicy:
    """The economy's withdrawal settings, and the checks a withdrawal request must pass, in the contract's order."""

    minimum_diamonds: int
    daily_cap_diamonds: int
    value_per_1000_minor: int
    currency_code: str

    def __post_init__(self) -> None:
        assert 0 < self.minimum_diamonds <= self.daily_cap_diamonds, f"inconsistent withdrawal limits {self}"
        assert self.value_per_1000_minor > 0, f"invalid diamond value {self}"

    @property
    def diamonds_multiple(self) -> int:
        """The smallest diamond step worth a whole number of minor units (2 at 500 minor units per 1,000)."""
        return DIAMONDS_PER_VALUE_UNIT // math.gcd(DIAMONDS_PER_VALUE_UNIT, self.value_per_1000_minor)

    def payout_minor(self, diamonds: int) -> int:
        assert diamonds % self.diamonds_multiple == 0, f"{diamonds} diamonds are not worth whole minor units"
        return diamonds * self.value_per_1000_minor // DIAMONDS_PER_VALUE_UNIT

    def check_request(self, profile: CreatorProfile | None, creator_id: str, diamonds: int) -> CreatorProfile:
        """The checks that need no balance: eligibility, minimum, whole minor units. Returns the eligible profile."""
        if profile is None or not profile.kyc_verified:
            raise failed_precondition("ACCOUNT_NOT_ELIGIBLE", f"creator {creator_id!r} is not KYC-verified for payouts")
        if diamonds < self.minimum_diamonds:
            raise failed_precondition(
                "BELOW_MINIMUM_WITHDRAWAL", f"the minimum withdrawal is {self.minimum_diamonds} diamonds"
            )
        if diamonds % self.diamonds_multiple:
            # Rounding the payout would create or destroy money, so such amounts are refused instead.
            raise invalid_argument(
                [
                    FieldViolation(
                        "diamonds",
                        f"must be a multiple of {self.diamonds_multiple} so the payout is a whole number of minor"
                        f" units ({self.value_per_1000_minor} per {DIAMONDS_PER_VALUE_UNIT} diamonds)",
                    )
                ]
            )
        return profile

    def check_daily_cap(self, withdrawn_last_24h_diamonds: int, diamonds: int) -> None:
        """Pending and paid withdrawals of the rolling last 24 hours count toward the cap."""
        if withdrawn_last_24h_diamonds + diamonds > self.daily_cap_diamonds:
            left = max(self.daily_cap_diamonds - withdrawn_last_24h_diamonds, 0)
            raise failed_precondition(
                "WITHDRAWAL_LIMIT_EXCEEDED",
                f"at most {self.daily_cap_diamonds} diamonds per 24 hours; {left} left now",
            )


def require_not_frozen(frozen: bool, creator_id: str) -> None:
    """The wallet froze the creator's account (a chargeback left it in debt): no money leaves meanwhile."""
    if frozen:
        raise failed_precondition("ACCOUNT_FROZEN", f"account {creator_id!r} is frozen")


def require_no_debt(balances: Balances) -> None:
    if balances.debt_diamonds:
        raise failed_precondition(
            "CREATOR_IN_DEBT",
            f"creator {balances.creator_id!r} owes {balances.debt_diamonds} diamonds clawed back after a chargeback;"
            " new gifts repay it first",
        )


def require_available(balances: Balances, diamonds: int) -> None:
    if balances.available_diamonds < diamonds:
        raise failed_precondition(
            "INSUFFICIENT_DIAMONDS",
            f"creator {balances.creator_id!r} has {balances.available_diamonds} diamonds available, {diamonds} needed",
        )


@dataclass(frozen=True)
class Rates:
    """The economy as GetRates tells it: the settlement rate in force and the withdrawal policy."""

    settlement: SettlementRate
    withdrawal: WithdrawalPolicy


# --- withdrawal lifecycle ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Withdrawal:
    withdrawal_id: str
    request_id: str
    creator_id: str
    diamonds: int
    payout_currency_code: str
    payout_amount_minor: int
    payout_destination: str
    status: WithdrawalStatus
    failure_reason: str
    provider_reference: str | None
    submitted_at: datetime | None
    created_at: datetime | None = None  # set by the store when it records the withdrawal
    payout_provider: str = SANDBOX_RAIL  # fixed at request time: only its provider's worker pays it

    @property
    def view(self) -> WithdrawalView:
        return WithdrawalView(
            self.withdrawal_id,
            self.creator_id,
            self.diamonds,
            self.payout_currency_code,
            self.payout_amount_minor,
            self.status,
            self.failure_reason,
        )


@dataclass(frozen=True)
class WithdrawalView:
    """A withdrawal as its creator sees it: what the API answers, and all that a withdrawal or cancel keeps with its
    request_id (the destination, the provider's reference and the times stay inside)."""

    withdrawal_id: str
    creator_id: str
    diamonds: int
    payout_currency_code: str
    payout_amount_minor: int
    status: WithdrawalStatus
    failure_reason: str


@dataclass(frozen=True)
class Withdraw:
    """RequestWithdrawal: diamonds from available to a payout. key.request_id (caller-scoped) is recorded with the
    withdrawal."""

    key: RequestKey
    creator_id: str
    diamonds: int


@dataclass(frozen=True)
class CancelWithdrawal:
    key: RequestKey
    withdrawal_id: str


@dataclass(frozen=True)
class PendingWithdrawals:
    queued: int  # not yet submitted to the payout provider
    with_provider: int  # submitted, the provider not yet done
    oldest_age_seconds: float  # 0 when none


def withdrawal_not_found(withdrawal_id: str) -> AppError:
    """Also the answer for someone else's withdrawal: its id reveals nothing to other creators."""
    return not_found("WITHDRAWAL_NOT_FOUND", f"no withdrawal {withdrawal_id!r}")


def must_cancel(status: WithdrawalStatus, withdrawal_id: str) -> bool:
    """Whether a cancel has work to do. A canceled withdrawal is returned as it is (canceling is idempotent by
    state too, whatever the request_id); a submitted, paid or failed one cannot be canceled any more."""
    if status is WithdrawalStatus.PENDING:
        return True
    if status is WithdrawalStatus.CANCELED:
        return False
    if status is WithdrawalStatus.SUBMITTED:
        raise not_cancelable(withdrawal_id, "it was handed to the payout provider")
    raise not_cancelable(withdrawal_id, f"it is {status.value}")


# --- what a payout provider reports later (its webhooks) ---------------------------------------------------------


# A payout the provider is still processing is asked about again less and less often: a PayPal item left unclaimed
# stays so for up to 30 days, and a look every second meanwhile would be a million calls; webhooks tell us sooner.
MAX_LOOK_INTERVAL_SECONDS = 3600.0


def next_look_seconds(check_interval_seconds: float, waited_seconds: float) -> float:
    """When to ask the provider again about a payout it has had for waited_seconds: the check interval at first,
    then a tenth of the time waited so far, at most an hour."""
    return max(check_interval_seconds, min(waited_seconds / 10, MAX_LOOK_INTERVAL_SECONDS))


class PayoutOutcome(Enum):
    PAID = "paid"
    FAILED = "failed"  # never paid: the diamonds come back
    RETURNED = "returned"  # given back after being paid (or before we heard it was): the diamonds come back


@dataclass(frozen=True)
class PayoutNotice:
    """A provider's webhook about one payout, verified: recorded by its id once, with its effect if it has one.
    outcome None: recorded, nothing to do (an event kind that changes no withdrawal, such as a PayPal item left
    unclaimed: it is still the recipient's to claim, and PayPal returns it after 30 days, which gives the diamonds
    back then)."""

    payout_provider: str
    notification_id: str
    kind: str
    withdrawal_id: str
    outcome: PayoutOutcome | None
    reason: str = ""
    provider_reference: str = ""  # the provider's handle on the payout (a transfer id, a payout batch id)


class Transition(Enum):
    PAY = "pay"  # submitted → paid
    FAIL = "fail"  # submitted → failed, diamonds back from reserved
    RETURN = "return"  # paid → returned, diamonds back from system:paid_out


def transition_for(status: WithdrawalStatus, outcome: PayoutOutcome) -> Transition | None:
    """What a provider's outcome does to a withdrawal in this status; None: nothing (it already happened, or the
    withdrawal is not with the provider). Failed and returned both give the diamonds back, once: from reserved while
    it is submitted, from system:paid_out once it is paid; a finished one never moves twice."""
    if status is WithdrawalStatus.SUBMITTED:
        return Transition.PAY if outcome is PayoutOutcome.PAID else Transition.FAIL
    if status is WithdrawalStatus.PAID and outcome is not PayoutOutcome.PAID:
        return Transition.RETURN
    return None


def not_cancelable(withdrawal_id: str, why: str) -> AppError:
    return failed_precondition("WITHDRAWAL_NOT_CANCELABLE", f"withdrawal {withdrawal_id!r} cannot be canceled: {why}")


# --- statements and pages ---------------------------------------------------------------------------------------------


class EarningsGroupBy(Enum):
    DAY = "day"  # key: the UTC day of the credit, "YYYY-MM-DD"; stream and video gifts alike
    STREAM = "stream"  # key: the stream_id; stream gifts only
    VIDEO = "video"  # key: the video_id; video gifts only


@dataclass(frozen=True)
class EarningsRow:
    key: str
    diamonds: int
    gift_count: int
    # The newest credit of the group: the stream order, and the position a page token remembers.
    latest_credit_at: datetime


def to_micros(moment: datetime) -> int:
    """Exact (PostgreSQL keeps microseconds), so a page boundary never skips or repeats a row."""
    return (moment - EPOCH) // timedelta(microseconds=1)


def from_micros(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# Int positions of page tokens are moments (to_micros): within what a datetime holds, or from_micros overflows.
POSITION_MICROS = (to_micros(datetime.min.replace(tzinfo=UTC)), to_micros(datetime.max.replace(tzinfo=UTC)))


def day_start(day_key: str) -> datetime:
    """The UTC midnight starting a "YYYY-MM-DD" day (from a page token: refused if malformed)."""
    try:
        return datetime.combine(date.fromisoformat(day_key), datetime.min.time(), tzinfo=UTC)
    except ValueError:
        raise invalid_argument([FieldViolation("page_token", "is not a token returned by this API")]) from None


# --- clawbacks ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clawback:
    """Coins of a gift whose purchase was reversed (wallet.v1.purchase_reversed): the diamonds they earned go back."""

    reversal_id: str
    gift_transaction_id: str
    coins: int


@dataclass(frozen=True)
class ClawedCredit:
    """A settled gift's credit as a clawback needs it. held_diamonds: what of it is still in the maturity hold and
    not clawed back yet (0 once matured); coins_left: its coins not clawed back yet."""

    gift_transaction_id: str
    creator_id: str
    rate_version: int
    held_diamonds: int
    coins_left: int


@dataclass(frozen=True)
class ClawbackTaken:
    """Where a clawback's diamonds came from: the gift's own held diamonds first, then available ones; the rest is
    debt."""

    clawback: Clawback
    creator_id: str
    rate_version: int
    diamonds: int
    from_pending: int
    from_available: int
    to_debt: int


def take_back(
    clawbacks: Sequence[tuple[Clawback, ClawedCredit]],
    rates: dict[int, SettlementRate],
    remainders: dict[tuple[str, int], int],
    balances: dict[str, Balances],
) -> tuple[list[ClawbackTaken], dict[tuple[str, int], int]]:
    """Applies clawbacks in order, each on the balances the ones before left: the diamonds through the carry of the
    credit's creator and rate version (remainders, missing = 0), from the gift's held diamonds, then available ones,
    the rest as debt. A gift never loses more coins than it paid (whatever the wallet traced to it: a reference a
    caller wrote, a bug): a clawback beyond them takes only the rest, and reconcile shows the difference. Returns what
    each took (its coins as taken) and the new remainders of the (creator, version) pairs it touched."""
    remainders = dict(remainders)
    available = {creator_id: b.available_diamonds for creator_id, b in balances.items()}
    held = {credit.gift_transaction_id: credit.held_diamonds for _, credit in clawbacks}
    coins_left = {credit.gift_transaction_id: credit.coins_left for _, credit in clawbacks}
    taken: list[ClawbackTaken] = []
    touched: set[tuple[str, int]] = set()
    for asked, credit in clawbacks:
        clawback = replace(asked, coins=min(asked.coins, coins_left[credit.gift_transaction_id]))
        coins_left[credit.gift_transaction_id] -= clawback.coins
        pair = (credit.creator_id, credit.rate_version)
        diamonds = 0
        if clawback.coins:
            diamonds, remainders[pair] = rates[credit.rate_version].claw_back_with_carry(
                remainders.get(pair, 0), clawback.coins
            )
            touched.add(pair)
        from_pending = min(diamonds, held[credit.gift_transaction_id])
        held[credit.gift_transaction_id] -= from_pending
        from_available = min(diamonds - from_pending, available.get(credit.creator_id, 0))
        available[credit.creator_id] = available.get(credit.creator_id, 0) - from_available
        to_debt = diamonds - from_pending - from_available
        taken.append(
            ClawbackTaken(
                clawback, credit.creator_id, credit.rate_version, diamonds, from_pending, from_available, to_debt
            )
        )
    return taken, {pair: remainders[pair] for pair in touched}


def clawback_postings(taken: Iterable[ClawbackTaken]) -> Postings:
    """One ledger transaction for a batch of clawbacks: each creator's pending, available and debt accounts give
    them to system:clawed_back."""
    legs: dict[str, int] = defaultdict(int)
    for t in taken:
        legs[pending_account(t.creator_id)] -= t.from_pending
        legs[available_account(t.creator_id)] -= t.from_available
        legs[debt_account(t.creator_id)] -= t.to_debt
        legs[SYSTEM_CLAWED_BACK] += t.diamonds
    return balanced(legs.items())


@dataclass(frozen=True)
class ClawbackView:
    """A clawback as its creator's statement lists it."""

    reversal_id: str
    gift_transaction_id: str
    coins: int
    diamonds: int
    from_pending: int
    from_available: int
    to_debt: int
    clawed_back_at: datetime
