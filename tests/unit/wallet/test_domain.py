from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from services.runtime.errors import AppError
from services.wallet import domain

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def promotion(promotion_id: str = "p", **overrides: object) -> domain.Promotion:
    values: dict[str, Any] = {  # any: the fields of a Promotion, overridden by each test
        "promotion_id": promotion_id,
        "name": promotion_id,
        "starts_at": NOW - HOUR,
        "ends_at": None,
        "min_package_coins": 0,
        "bonus_percent": None,
        "bonus_coins": None,
        "first_purchase_only": False,
        "max_uses_per_account": 0,
        "created_at": NOW - HOUR,
    }
    values.update(overrides)
    return domain.Promotion(**values)


DEFAULT_PROMOTION = promotion("promo_default", min_package_coins=1321, bonus_percent=5)
PACKAGE_1321 = domain.find_package("coins_1321")
PACKAGE_65 = domain.find_package("coins_65")
NO_HISTORY = domain.PurchaseHistory(purchases=0, uses_by_promotion={})


def test_default_promotion_is_five_percent_rounded_down_from_1321_coins() -> None:
    bonuses = {p.package_id: DEFAULT_PROMOTION.bonus_for(p) for p in domain.DEFAULT_PACKAGES}
    assert bonuses == {
        "coins_65": 0,
        "coins_330": 0,
        "coins_660": 0,
        "coins_1321": 66,
        "coins_3303": 165,
        "coins_6607": 330,
        "coins_16500": 825,
    }


def test_best_promotion_takes_the_largest_bonus_then_the_earliest() -> None:
    fixed = promotion("fixed", bonus_coins=66, created_at=NOW)  # ties with the default, created later
    bigger = promotion("bigger", bonus_coins=100, min_package_coins=1000)
    assert domain.best_promotion([fixed, DEFAULT_PROMOTION], PACKAGE_1321, NOW, NO_HISTORY) == (DEFAULT_PROMOTION, 66)
    assert domain.best_promotion([fixed, DEFAULT_PROMOTION, bigger], PACKAGE_1321, NOW, NO_HISTORY) == (bigger, 100)
    assert domain.best_promotion([DEFAULT_PROMOTION, bigger], PACKAGE_65, NOW, NO_HISTORY) == (None, 0)


def test_promotions_apply_only_within_their_window() -> None:
    later = promotion("later", bonus_coins=10, starts_at=NOW + HOUR)
    over = promotion("over", bonus_coins=10, starts_at=NOW - 2 * HOUR, ends_at=NOW)
    assert domain.best_promotion([later, over], PACKAGE_65, NOW, NO_HISTORY) == (None, 0)
    assert not later.has_ended(NOW) and over.has_ended(NOW)


def test_account_conditions() -> None:
    first = promotion("first", bonus_coins=50, first_purchase_only=True)
    twice = promotion("twice", bonus_coins=20, max_uses_per_account=2)
    returning = domain.PurchaseHistory(purchases=2, uses_by_promotion={"twice": 1})
    used_up = domain.PurchaseHistory(purchases=2, uses_by_promotion={"twice": 2})
    assert domain.best_promotion([first, twice], PACKAGE_65, NOW, NO_HISTORY) == (first, 50)
    assert domain.best_promotion([first, twice], PACKAGE_65, NOW, returning) == (twice, 20)
    assert domain.best_promotion([first, twice], PACKAGE_65, NOW, used_up) == (None, 0)
    # The public package list shows only promotions anyone gets.
    assert domain.best_promotion([first, twice], PACKAGE_65, NOW, None) == (None, 0)


def test_ending_a_promotion() -> None:
    assert domain.ended_now(DEFAULT_PROMOTION, NOW) == NOW
    future = promotion("future", bonus_coins=1, starts_at=NOW + HOUR)
    ends_at = domain.ended_now(future, NOW)
    assert ends_at == future.starts_at
    ended = promotion("future", bonus_coins=1, starts_at=NOW + HOUR, ends_at=ends_at)
    assert ended.has_ended(NOW) and domain.ended_now(ended, NOW) is None


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


def test_frozen_accounts_may_still_purchase() -> None:
    frozen = domain.Account("a", True, "US", domain.AccountStatus.FROZEN)
    assert domain.require_can_purchase(frozen, "a") is frozen


def spender(paid: int, bonus: int, sent: int = 0, limit: int = 0) -> domain.Spender:
    account = domain.Account("a", True, "US", domain.AccountStatus.ACTIVE, domain.SpendingLimit(limit))
    return domain.Spender(account, domain.Balance(paid, bonus), sent, NOW)


def test_spends_use_bonus_coins_first() -> None:
    assert domain.authorize_spend(spender(100, 30), "a", 20) == domain.Split(paid_coins=0, bonus_coins=20)
    assert domain.authorize_spend(spender(100, 30), "a", 50) == domain.Split(paid_coins=20, bonus_coins=30)
    assert domain.authorize_spend(spender(100, 0), "a", 100) == domain.Split(paid_coins=100, bonus_coins=0)
    with pytest.raises(AppError) as caught:
        domain.authorize_spend(spender(100, 30), "a", 131)
    assert caught.value.reason == "INSUFFICIENT_COINS"


def test_spends_past_the_limit_are_refused() -> None:
    assert domain.authorize_spend(spender(1000, 0, sent=90, limit=100), "a", 10).coins == 10
    with pytest.raises(AppError) as caught:
        domain.authorize_spend(spender(1000, 0, sent=90, limit=100), "a", 11)
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SPENDING_LIMIT_REACHED")


def test_lowering_a_limit_is_immediate_raising_waits_a_day() -> None:
    none = domain.SpendingLimit()
    assert none.change_to(500, NOW) == domain.SpendingLimit(500)
    assert domain.SpendingLimit(500).change_to(200, NOW) == domain.SpendingLimit(200)
    raised = domain.SpendingLimit(500).change_to(800, NOW)
    assert raised == domain.SpendingLimit(500, 800, NOW + domain.SPENDING_LIMIT_DELAY)
    removed = domain.SpendingLimit(500).change_to(0, NOW)
    assert removed == domain.SpendingLimit(500, 0, NOW + domain.SPENDING_LIMIT_DELAY)
    # Lowering cancels a pending raise; the pending change applies once its time has come.
    assert raised.change_to(300, NOW + HOUR) == domain.SpendingLimit(300)
    assert raised.in_force(NOW + HOUR) == raised
    assert raised.in_force(NOW + domain.SPENDING_LIMIT_DELAY) == domain.SpendingLimit(800)
    assert removed.in_force(NOW + 25 * HOUR) == domain.SpendingLimit(0)
    assert raised.change_to(500, NOW) == domain.SpendingLimit(500)


def test_debt_freezes_until_a_purchase_covers_it() -> None:
    assert domain.in_debt(domain.Balance(-1, 50)) and not domain.in_debt(domain.Balance(0, 0))
    assert domain.debt_covered(domain.Balance(-100, 0), domain.Balance(0, 0))
    assert not domain.debt_covered(domain.Balance(-100, 0), domain.Balance(-35, 0))
    assert not domain.debt_covered(domain.Balance(10, 0), domain.Balance(75, 0))


def test_giveaway_winners_get_the_bonus_part_first() -> None:
    shares = domain.giveaway_shares(domain.Split(paid_coins=13, bonus_coins=17), 3, 10)
    assert shares == [domain.Split(0, 10), domain.Split(3, 7), domain.Split(10, 0)]


def test_postings_always_balance_and_skip_zero_legs() -> None:
    assert domain.purchase_postings("a", 1321, 66) == [
        ("a", 1321),
        ("a:bonus", 66),
        (domain.SYSTEM_SALES, -1321),
        (domain.SYSTEM_PROMOTIONS, -66),
    ]
    assert domain.purchase_postings("a", 65, 0) == [("a", 65), (domain.SYSTEM_SALES, -65)]
    assert domain.spend_postings("a", domain.Split(20, 10)) == [("a", -20), ("a:bonus", -10), (domain.SYSTEM_SPENT, 30)]
    shares = [domain.Split(0, 10), domain.Split(5, 5)]
    assert domain.giveaway_postings("c", domain.Split(5, 15), ["w1", "w2"], shares) == [
        ("c", -5),
        ("c:bonus", -15),
        ("w1:bonus", 10),
        ("w2", 5),
        ("w2:bonus", 5),
    ]


# --- a batch of spends (SpendCoinsBatch) --------------------------------------------------------------------------


def ask(account_id: str, coins: int) -> domain.SpendAsk:
    request_id = f"spend-{account_id}-{coins}"
    return domain.SpendAsk(request_id, account_id, coins, reference="", fingerprint=request_id.encode())


def reasons(decisions: list[domain.Split | AppError]) -> list[domain.Split | str]:
    """Each decision as its split, or a refusal as its reason."""
    return [d.reason if isinstance(d, AppError) else d for d in decisions]


def test_one_account_several_times_in_a_batch_is_debited_in_order_bonus_first() -> None:
    spenders = {"a": spender(100, 30)}
    decisions = domain.authorize_spends([ask("a", 20), ask("a", 20), ask("a", 50), ask("a", 40)], spenders)
    assert decisions == [
        domain.Split(paid_coins=0, bonus_coins=20),
        domain.Split(paid_coins=10, bonus_coins=10),  # the last 10 bonus coins, then paid
        domain.Split(paid_coins=50, bonus_coins=0),
        domain.Split(paid_coins=40, bonus_coins=0),  # exactly the 40 left
    ]
    assert spenders == {"a": spender(100, 30)}  # the balances read are left alone


def test_a_refusal_in_the_middle_leaves_the_balance_for_the_next_spends() -> None:
    decisions = domain.authorize_spends(
        [ask("a", 30), ask("a", 100), ask("a", 25), ask("a", 6), ask("a", 5)], {"a": spender(50, 10)}
    )
    assert reasons(decisions) == [
        domain.Split(paid_coins=20, bonus_coins=10),
        "INSUFFICIENT_COINS",  # 30 left: refused, and nothing taken
        domain.Split(paid_coins=25, bonus_coins=0),
        "INSUFFICIENT_COINS",  # 5 left
        domain.Split(paid_coins=5, bonus_coins=0),
    ]
    refusal = decisions[1]
    assert isinstance(refusal, AppError)
    assert refusal.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "has 30 coins, 100 needed" in refusal.message


def test_the_spending_limit_counts_the_earlier_spends_of_the_same_batch() -> None:
    decisions = domain.authorize_spends(
        [ask("a", 30), ask("a", 30), ask("a", 20), ask("a", 1)], {"a": spender(1000, 0, sent=50, limit=100)}
    )
    assert reasons(decisions) == [
        domain.Split(paid_coins=30, bonus_coins=0),  # 80 of 100 sent
        "SPENDING_LIMIT_REACHED",  # would make 110; a refusal does not count towards the limit
        domain.Split(paid_coins=20, bonus_coins=0),  # exactly 100
        "SPENDING_LIMIT_REACHED",
    ]


def test_frozen_and_unknown_accounts_are_refused_without_affecting_the_others() -> None:
    frozen = domain.Spender(
        domain.Account("frozen", True, "US", domain.AccountStatus.FROZEN), domain.Balance(500, 0), 0, NOW
    )
    unknown = domain.Spender(None, domain.Balance(), 0, NOW)  # what the store reads for an id without an account
    spenders = {"a": spender(40, 0), "b": spender(0, 15), "frozen": frozen, "ghost": unknown}
    decisions = domain.authorize_spends(
        [ask("a", 10), ask("frozen", 5), ask("ghost", 1), ask("b", 15), ask("a", 30), ask("frozen", 1)], spenders
    )
    assert reasons(decisions) == [
        domain.Split(paid_coins=10, bonus_coins=0),
        "ACCOUNT_FROZEN",
        "ACCOUNT_NOT_ELIGIBLE",
        domain.Split(paid_coins=0, bonus_coins=15),
        domain.Split(paid_coins=30, bonus_coins=0),
        "ACCOUNT_FROZEN",
    ]


def test_a_batch_decides_exactly_as_the_same_spends_made_one_after_the_other() -> None:
    asks = [ask("a", coins) for coins in (7, 40, 3, 90, 12, 1, 60, 2)] + [ask("b", coins) for coins in (5, 5, 5)]
    spenders = {"a": spender(80, 25, sent=10, limit=140), "b": spender(9, 3)}
    one_by_one: list[domain.Split | str] = []
    current = dict(spenders)
    for spend in asks:
        before = current[spend.account_id]
        try:
            split = domain.authorize_spend(before, spend.account_id, spend.coins)
        except AppError as refusal:
            one_by_one.append(refusal.reason)
            continue
        one_by_one.append(split)
        current[spend.account_id] = domain.Spender(
            before.account, before.balance.debited(split), before.sent_last_24h_coins + split.coins, before.now
        )
    assert reasons(domain.authorize_spends(asks, spenders)) == one_by_one
    assert "INSUFFICIENT_COINS" in one_by_one and "SPENDING_LIMIT_REACHED" in one_by_one


# --- card testing -----------------------------------------------------------------------------------------------

LIMITS = domain.DeclineLimits(per_account=3, per_caller=10)
UNDECIDED_WAIT = timedelta(seconds=10)
NO_DECLINES = domain.Declines()


def attempts(
    account: domain.Declines = NO_DECLINES, caller: domain.Declines = NO_DECLINES, undecided: int = 0
) -> domain.PurchaseAttempts:
    return domain.PurchaseAttempts(account, caller, undecided, NOW)


def test_purchases_go_through_short_of_the_limits_or_without_any() -> None:
    short = attempts(domain.Declines(2, NOW - HOUR), domain.Declines(9, NOW - HOUR), undecided=0)
    assert domain.card_testing(short, LIMITS, UNDECIDED_WAIT) is None
    at_limits = attempts(domain.Declines(3, NOW - HOUR), domain.Declines(10, NOW - HOUR))
    assert domain.card_testing(at_limits, domain.DeclineLimits(0, 0), UNDECIDED_WAIT) is None


def test_at_a_limit_the_oldest_counted_decline_leaving_the_window_sets_the_wait() -> None:
    blocked = domain.card_testing(attempts(domain.Declines(3, NOW - 5 * HOUR)), LIMITS, UNDECIDED_WAIT)
    assert blocked == domain.CardTesting(domain.DeclineScope.ACCOUNT, 19 * HOUR)
    error = domain.CardTesting(domain.DeclineScope.ACCOUNT, 19 * HOUR).refusal("amy")
    assert (error.code, error.reason, error.retry_after_seconds) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
        19 * 3600,
    )
    assert not error.is_outcome  # never kept with the request's key


def test_undecided_purchases_count_for_the_account_until_they_are_decided() -> None:
    blocked = domain.card_testing(attempts(domain.Declines(1, NOW - HOUR), undecided=2), LIMITS, UNDECIDED_WAIT)
    assert blocked == domain.CardTesting(domain.DeclineScope.ACCOUNT, UNDECIDED_WAIT)
    # A caller's purchases in flight are not its declines: a backend has many at any moment.
    caller = attempts(caller=domain.Declines(9, NOW - HOUR), undecided=2)
    assert domain.card_testing(caller, LIMITS, UNDECIDED_WAIT) is None


def test_with_both_limits_reached_the_longer_wait_wins() -> None:
    both = attempts(domain.Declines(3, NOW - 20 * HOUR), domain.Declines(10, NOW - 2 * HOUR))
    assert domain.card_testing(both, LIMITS, UNDECIDED_WAIT) == domain.CardTesting(
        domain.DeclineScope.CALLER, 22 * HOUR
    )
