"""Payout rules with no I/O: how gifts become diamonds, who may withdraw how much, and the postings of each movement.

Ledger accounts: each creator has 'creator:<id>:available' and 'creator:<id>:reserved'; the platform's are
'system:*' (creator ids never contain ':'). Every transaction's postings sum to zero, so diamonds are only ever
moved, never made or lost: settlement moves them from system:gift_settlement to creators, a withdrawal moves them
from available to reserved, and then either on to system:paid_out or back to available."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from services.runtime.errors import (
    FieldViolation,
    failed_precondition,
    invalid_argument,
)

SYSTEM_GIFT_SETTLEMENT = "system:gift_settlement"  # source of every diamond credited for a gift
SYSTEM_PAID_OUT = "system:paid_out"  # diamonds that left as real money

DIAMONDS_PER_VALUE_UNIT = 1000  # the contract prices diamonds per 1,000


def available_account(creator_id: str) -> str:
    return f"creator:{creator_id}:available"


def reserved_account(creator_id: str) -> str:
    return f"creator:{creator_id}:reserved"


class WithdrawalStatus(Enum):
    PENDING = "pending"
    PAID = "paid"
    FAILED = "failed"
    CANCELED = "canceled"


@dataclass(frozen=True)
class SettlementRate:
    version: int
    numerator: int
    denominator: int

    def __post_init__(self) -> None:
        assert self.numerator > 0 and self.denominator > 0, f"invalid settlement rate {self}"

    def diamonds_for(self, coins: int) -> int:
        """Floored per gift. With the default 1/1 rate nothing is lost; with a fractional rate the remainder of each
        gift is dropped (a per-creator carry of the remainder is a known follow-up)."""
        return coins * self.numerator // self.denominator

    def is_configured_as(self, numerator: int, denominator: int) -> bool:
        return (self.numerator, self.denominator) == (numerator, denominator)


@dataclass(frozen=True)
class GiftToSettle:
    """The part of a GiftSent event that settlement needs."""

    gift_transaction_id: str
    creator_id: str
    stream_id: str
    coins: int


@dataclass(frozen=True)
class DiamondCredit:
    gift_transaction_id: str
    creator_id: str
    stream_id: str
    coins: int
    diamonds: int


def credit_gifts(gifts: Iterable[GiftToSettle], rate: SettlementRate) -> list[DiamondCredit]:
    return [
        DiamondCredit(
            gift.gift_transaction_id, gift.creator_id, gift.stream_id, gift.coins, rate.diamonds_for(gift.coins)
        )
        for gift in gifts
    ]


def diamonds_by_creator(credits: Iterable[DiamondCredit]) -> dict[str, int]:
    """One total per creator, so a batch updates each creator's balance row once however many gifts it got.

    Sorted by creator id: every settlement locks balance rows in the same order, so concurrent batches cannot
    deadlock. Creators whose gifts all floored to zero are left out (nothing to post)."""
    totals: dict[str, int] = defaultdict(int)
    for credit in credits:
        totals[credit.creator_id] += credit.diamonds
    return {creator_id: totals[creator_id] for creator_id in sorted(totals) if totals[creator_id] > 0}


Postings = list[tuple[str, int]]


def settlement_postings(diamonds_per_creator: dict[str, int]) -> Postings:
    postings = [(available_account(creator_id), diamonds) for creator_id, diamonds in diamonds_per_creator.items()]
    total = sum(diamonds_per_creator.values())
    return _balanced([*postings, (SYSTEM_GIFT_SETTLEMENT, -total)]) if total else []


def reserve_postings(creator_id: str, diamonds: int) -> Postings:
    return _balanced([(available_account(creator_id), -diamonds), (reserved_account(creator_id), diamonds)])


def paid_out_postings(creator_id: str, diamonds: int) -> Postings:
    return _balanced([(reserved_account(creator_id), -diamonds), (SYSTEM_PAID_OUT, diamonds)])


def returned_postings(creator_id: str, diamonds: int) -> Postings:
    return _balanced([(reserved_account(creator_id), -diamonds), (available_account(creator_id), diamonds)])


def _balanced(postings: Postings) -> Postings:
    assert sum(delta for _, delta in postings) == 0, f"unbalanced postings {postings}"
    assert all(delta != 0 for _, delta in postings), f"zero posting in {postings}"
    return postings


@dataclass(frozen=True)
class CreatorProfile:
    creator_id: str
    kyc_verified: bool
    payout_destination: str


@dataclass(frozen=True)
class Balances:
    creator_id: str
    available_diamonds: int
    reserved_diamonds: int
    lifetime_diamonds: int

    @classmethod
    def zero(cls, creator_id: str) -> Balances:
        return cls(creator_id, 0, 0, 0)


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


def require_available(balances: Balances, diamonds: int) -> None:
    if balances.available_diamonds < diamonds:
        raise failed_precondition(
            "INSUFFICIENT_DIAMONDS",
            f"creator {balances.creator_id!r} has {balances.available_diamonds} diamonds available, {diamonds} needed",
        )
