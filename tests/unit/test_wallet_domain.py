from __future__ import annotations

import grpc
import pytest

from services.runtime.errors import AppError
from services.wallet import domain


def test_bonus_is_five_percent_rounded_down_from_1321_coins() -> None:
    rule = domain.BonusRule(min_package_coins=1321, percent=5)
    bonuses = {p.package_id: rule.bonus_coins(p) for p in domain.DEFAULT_PACKAGES}
    assert bonuses == {
        "coins_65": 0,
        "coins_330": 0,
        "coins_660": 0,
        "coins_1321": 66,
        "coins_3303": 165,
        "coins_6607": 330,
        "coins_16500": 825,
    }


def test_unknown_package_is_not_found() -> None:
    with pytest.raises(AppError) as caught:
        domain.find_package("coins_1")
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.NOT_FOUND, "PACKAGE_NOT_FOUND")


@pytest.mark.parametrize(
    ("account", "reason"),
    [
        (None, "ACCOUNT_NOT_ELIGIBLE"),
        (domain.Account("a", False, "US", domain.AccountStatus.ACTIVE), "ACCOUNT_NOT_ELIGIBLE"),
        (domain.Account("a", True, "US", domain.AccountStatus.FROZEN), "ACCOUNT_FROZEN"),
    ],
)
def test_only_adult_active_accounts_transact(account: domain.Account | None, reason: str) -> None:
    with pytest.raises(AppError) as caught:
        domain.require_can_transact(account, "a")
    assert caught.value.reason == reason


def test_postings_always_balance() -> None:
    assert domain.purchase_postings("a", 1321, 66) == [
        ("a", 1387),
        (domain.SYSTEM_SALES, -1321),
        (domain.SYSTEM_PROMOTIONS, -66),
    ]
    assert domain.purchase_postings("a", 65, 0) == [("a", 65), (domain.SYSTEM_SALES, -65)]
    assert domain.spend_postings("a", 30) == [("a", -30), (domain.SYSTEM_SPENT, 30)]


def test_page_tokens_round_trip_and_reject_forgeries() -> None:
    assert domain.decode_page_token("") is None
    assert domain.decode_page_token(domain.encode_page_token(42)) == 42
    for forged in ("bm9wZQ==", "!!!", "cDpfMQ=="):
        with pytest.raises(AppError) as caught:
            domain.decode_page_token(forged)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
