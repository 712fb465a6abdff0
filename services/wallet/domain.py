"""Wallet rules with no I/O: coin packages and their bonus, who may spend, and the postings of each movement.

Ledger accounts: a user's is its account_id; the platform's are 'system:*' (a ':' never appears in user ids).
Every transaction's postings sum to zero, so coins are only ever moved, never made or lost."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from enum import Enum

from services.runtime.errors import (
    AppError,
    FieldViolation,
    failed_precondition,
    invalid_argument,
    not_found,
)

SYSTEM_SALES = "system:sales"  # coins issued against real money
SYSTEM_PROMOTIONS = "system:promotions"  # bonus coins issued by promotions
SYSTEM_SPENT = "system:spent"  # coins spent (on gifts); settled into diamonds by payouts


class AccountStatus(Enum):
    ACTIVE = "active"
    FROZEN = "frozen"


class PurchaseStatus(Enum):
    PENDING = "pending"
    COMPLETED = "completed"
    DECLINED = "declined"


@dataclass(frozen=True)
class Account:
    account_id: str
    adult_verified: bool
    country_code: str
    status: AccountStatus


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


@dataclass(frozen=True)
class BonusRule:
    min_package_coins: int
    percent: int

    def bonus_coins(self, package: CoinPackage) -> int:
        if package.coins < self.min_package_coins:
            return 0
        return package.coins * self.percent // 100  # rounded down, as the contract says


def find_package(package_id: str) -> CoinPackage:
    for package in DEFAULT_PACKAGES:
        if package.package_id == package_id:
            return package
    raise not_found("PACKAGE_NOT_FOUND", f"no coin package {package_id!r}")


def require_can_transact(account: Account | None, account_id: str) -> Account:
    """Purchases and spends need an adult-verified, active account."""
    if account is None or not account.adult_verified:
        raise failed_precondition("ACCOUNT_NOT_ELIGIBLE", f"account {account_id!r} is not an adult-verified account")
    if account.status is AccountStatus.FROZEN:
        raise failed_precondition("ACCOUNT_FROZEN", f"account {account_id!r} is frozen")
    return account


def insufficient_coins(account_id: str, balance_coins: int, coins: int) -> AppError:
    return failed_precondition(
        "INSUFFICIENT_COINS", f"account {account_id!r} has {balance_coins} coins, {coins} needed"
    )


Postings = list[tuple[str, int]]


def purchase_postings(account_id: str, coins: int, bonus_coins: int) -> Postings:
    postings = [(account_id, coins + bonus_coins), (SYSTEM_SALES, -coins)]
    if bonus_coins:
        postings.append((SYSTEM_PROMOTIONS, -bonus_coins))
    return _balanced(postings)


def spend_postings(account_id: str, coins: int) -> Postings:
    return _balanced([(account_id, -coins), (SYSTEM_SPENT, coins)])


def _balanced(postings: Postings) -> Postings:
    assert sum(delta for _, delta in postings) == 0, f"unbalanced postings {postings}"
    assert all(delta != 0 for _, delta in postings), f"zero posting in {postings}"
    return postings


def encode_page_token(last_posting_id: int) -> str:
    return base64.urlsafe_b64encode(f"p:{last_posting_id}".encode()).decode()


def decode_page_token(token: str) -> int | None:
    """None for the first page; INVALID_ARGUMENT for anything we did not hand out."""
    if not token:
        return None
    try:
        kind, _, value = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if kind == "p" and value.isdigit():
            return int(value)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise invalid_argument([FieldViolation("page_token", "is not a token returned by this API")])
