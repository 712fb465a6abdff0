"""Funding attribution (services/wallet/funding.py): which purchases paid for each movement's coins, and where a
reversal finds a purchase's coins. The rules alone, then random histories of purchases, spends, gifts, giveaways and
whole or partial reversals on the in-memory store, after which the identities hold:

- every bucket's unspent lots hold max(balance, 0) coins;
- every spend and giveaway drew from lots exactly the coins it took;
- every purchase's coins (paid and bonus) = its unspent lots + its funding rows, giveaway transfers aside;
- every reversal gave back its coins from somewhere: removed unspent + clawed back from gifts + charged to the buyer;
- a funding row is never reversed beyond its coins, a purchase never beyond its coins;
- coins issued = coins held + coins spent (the wallet's ledger identity)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import defaultdict

import pytest
from coinstream.wallet.v1 import wallet_pb2 as w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.runtime.errors import AppError
from services.wallet import convert, domain, funding
from services.wallet.domain import Draw, Lot, Split, Use
from tests.fakes.wallet import WalletState
from tests.unit.wallet.conftest import Wallet, new_wallet, spend_ask

_ids = itertools.count(1)


def lot(lot_id: int, bucket: str, purchase: str | None, coins: int) -> Lot:
    return Lot(lot_id, bucket, purchase, coins)


# --- the rules ------------------------------------------------------------------------------------------------------


def test_a_debit_draws_bonus_lots_then_paid_lots_oldest_first() -> None:
    holdings = funding.Holdings("a", [lot(3, "a", "p2", 10), lot(1, "a", "p1", 5), lot(2, "a:bonus", "p1", 4)])

    draws = holdings.take(Split(paid_coins=8, bonus_coins=4))

    assert draws == [Draw(2, "a:bonus", "p1", 4), Draw(1, "a", "p1", 5), Draw(3, "a", "p2", 3)]
    assert holdings.take(Split(paid_coins=7, bonus_coins=0)) == [Draw(3, "a", "p2", 7)]


def test_giveaway_winners_get_the_creators_draws_in_order_bonus_first() -> None:
    draws = [Draw(1, "c:bonus", "p1", 30), Draw(2, "c", "p1", 10), Draw(3, "c", "p2", 20)]
    shares = domain.giveaway_shares(Split(paid_coins=30, bonus_coins=30), 3, 20)

    lots = funding.winner_lots(draws, ["x", "y", "z"], shares)

    assert lots == [
        domain.NewLot("x:bonus", "p1", 20),
        domain.NewLot("y:bonus", "p1", 10),
        domain.NewLot("y", "p1", 10),
        domain.NewLot("z", "p2", 20),
    ]


@given(st.integers(1, 20_000), st.integers(0, 2_000), st.lists(st.integers(1, 5_000), max_size=8))
def test_the_bonus_of_partial_reversals_adds_up_to_the_whole_bonus(coins: int, bonus: int, parts: list[int]) -> None:
    reversed_coins = reversed_bonus = 0
    for part in parts:
        part = min(part, coins - reversed_coins)
        if not part:
            break
        share = funding.reversed_bonus(coins, bonus, reversed_coins, part)
        assert 0 <= share <= bonus
        reversed_coins, reversed_bonus = reversed_coins + part, reversed_bonus + share
    rest = coins - reversed_coins
    if rest:
        reversed_bonus += funding.reversed_bonus(coins, bonus, reversed_coins, rest)
    assert reversed_bonus == bonus


def test_a_reversal_removes_unspent_coins_then_takes_the_newest_uses() -> None:
    lots = [lot(7, "winner", "p", 5), lot(4, "buyer", "p", 10)]
    uses = [
        funding.EarlierUse(1, "buyer", 20, "gift-old"),
        funding.EarlierUse(2, "buyer", 20, "gift-new"),
        funding.EarlierUse(3, "buyer", 20, None),
    ]

    plan = funding.plan_reversal("buyer", Split(paid_coins=50, bonus_coins=0), lots, uses)

    assert plan.removed == [Draw(4, "buyer", "p", 10), Draw(7, "winner", "p", 5)]  # the buyer's lot first
    assert plan.allocations == [
        funding.Allocation(3, 20, None),  # a plain spend: charged to the buyer
        funding.Allocation(2, 15, "gift-new"),
    ]
    assert plan.gifts() == {"gift-new": 15} and plan.charged == Split(20, 0) and plan.coins == 50


def test_a_charge_takes_bonus_as_far_as_it_goes_and_the_rest_from_paid() -> None:
    assert funding.charge_split(Split(1321, 66), domain.Balance(1321, 66)) == Split(1321, 66)
    assert funding.charge_split(Split(1321, 66), domain.Balance(100, 10)) == Split(1377, 10)
    assert funding.charge_split(Split(65, 0), domain.Balance(0, 5)) == Split(65, 0)


def test_a_reversal_posts_its_coins_back_to_sales_and_promotions_from_where_they_were() -> None:
    plan = funding.ReversalPlan(
        removed=[Draw(1, "buyer", "p", 300), Draw(2, "winner:bonus", "p", 16)],
        allocations=[funding.Allocation(9, 1000, "gift-1")],
        charged=Split(21, 50),
    )
    # 1,321 paid + 66 bonus: 316 unspent from lots, 1,000 from the gift's spent coins, 71 charged to the buyer.
    assert funding.reversal_postings("buyer", Split(1321, 66), plan, Split(71, 0)) == [
        ("buyer", -371),
        ("winner:bonus", -16),
        (domain.SYSTEM_SPENT, -1000),
        (domain.SYSTEM_SALES, 1321),
        (domain.SYSTEM_PROMOTIONS, 66),
    ]


def test_coins_found_nowhere_are_charged_to_the_buyer() -> None:
    plan = funding.plan_reversal("buyer", Split(paid_coins=30, bonus_coins=3), [], [])
    assert plan.charged == Split(30, 3) and plan.removed == [] and plan.allocations == []


def test_partial_reversal_beyond_what_is_left_names_coins() -> None:
    with pytest.raises(AppError) as refused:
        domain.coins_to_reverse(330, 300, 31)
    assert [v.field for v in refused.value.field_violations] == ["coins"]
    assert domain.coins_to_reverse(330, 300, 0) == 30


# --- random histories on the in-memory store ------------------------------------------------------------------------

ACCOUNTS = ("a", "b", "c")
PACKAGES = ("coins_65", "coins_330", "coins_1321", "coins_3303")

operation = st.one_of(
    st.tuples(st.just("buy"), st.sampled_from(ACCOUNTS), st.sampled_from(PACKAGES)),
    st.tuples(st.just("spend"), st.sampled_from(ACCOUNTS), st.integers(1, 900)),
    st.tuples(st.just("gift"), st.sampled_from(ACCOUNTS), st.integers(1, 900)),
    st.tuples(st.just("giveaway"), st.sampled_from(ACCOUNTS), st.integers(1, 400)),
    st.tuples(st.just("reverse"), st.integers(0, 20), st.integers(0, 1500)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operation, min_size=1, max_size=25))
def test_random_histories_keep_every_funding_identity(operations: list[tuple[str, object, object]]) -> None:
    asyncio.run(run_history(operations))


async def run_history(operations: list[tuple[str, object, object]]) -> None:
    wallet = new_wallet()
    for account_id in ACCOUNTS:
        await wallet.service.upsert_account(
            convert.upsert_account(
                w.UpsertAccountRequest(request_id=f"up-{account_id}", account_id=account_id, adult_verified=True)
            )
        )
    purchases: list[str] = []
    for op in operations:
        # A refusal (no coins, frozen, nothing left to reverse) moves nothing: the identities say so.
        with contextlib.suppress(AppError):
            await apply(wallet, op, purchases)
        assert funding_violations(wallet.store.state) == []


async def apply(wallet: Wallet, op: tuple[str, object, object], purchases: list[str]) -> None:
    kind, first, second = op
    if kind == "buy":
        assert isinstance(first, str) and isinstance(second, str)
        purchases.append((await wallet.buy(first, second)).purchase_id)
    elif kind in ("spend", "gift"):
        assert isinstance(first, str) and isinstance(second, int)
        reference = f"gift:g{next(_ids)}" if kind == "gift" else "sticker"
        await wallet.service.spend(spend_ask(first, second, reference=reference))
    elif kind == "giveaway":
        assert isinstance(first, str) and isinstance(second, int)
        winners = [account_id for account_id in ACCOUNTS if account_id != first]
        request = w.CreateGiveawayRequest(
            request_id=f"gw-{next(_ids)}", creator_id=first, coins_per_winner=second, winner_ids=winners
        )
        await wallet.service.create_giveaway(convert.make_giveaway(request))
    elif purchases:
        assert isinstance(first, int) and isinstance(second, int)
        request = w.ReversePurchaseRequest(
            request_id=f"rev-{next(_ids)}", purchase_id=purchases[first % len(purchases)], reason="x", coins=second
        )
        await wallet.service.reverse_purchase(convert.reverse_purchase(request))


def funding_violations(state: WalletState) -> list[str]:
    found: list[str] = []
    lots_by_bucket: dict[str, int] = defaultdict(int)
    for each in state.lots.values():
        lots_by_bucket[each.ledger_account_id] += each.coins
    for bucket, coins in state.coins.items():
        if bucket not in domain.SYSTEM_ACCOUNTS and lots_by_bucket[bucket] != max(coins, 0):
            found.append(f"bucket {bucket}: {coins} coins, lots hold {lots_by_bucket[bucket]}")

    drawn: dict[str, int] = defaultdict(int)
    for row in state.funding:
        if row.funding.used_for in (Use.SPEND, Use.GIVEAWAY):
            drawn[row.funding.transaction_id] += row.funding.draw.coins
    for transaction in state.transactions.values():
        if transaction.kind in ("spend", "giveaway"):
            taken = -sum(
                p.coins_delta
                for p in state.postings
                if p.transaction_id == transaction.transaction_id
                and p.ledger_account_id in domain.buckets(transaction.account_id)
            )
            if drawn[transaction.transaction_id] != taken:
                found.append(f"{transaction.transaction_id} took {taken}, drew {drawn[transaction.transaction_id]}")

    for purchase in state.purchases.values():
        if purchase.status is not domain.PurchaseStatus.COMPLETED:
            continue
        for bonus, coins in ((False, purchase.coins), (True, purchase.bonus_coins)):
            held = sum(
                each.coins
                for each in state.lots.values()
                if each.purchase_id == purchase.purchase_id and domain.is_bonus_bucket(each.ledger_account_id) == bonus
            )
            used = sum(
                row.funding.draw.coins
                for row in state.funding
                if row.funding.draw.purchase_id == purchase.purchase_id
                and row.funding.used_for is not Use.GIVEAWAY
                and domain.is_bonus_bucket(row.funding.draw.ledger_account_id) == bonus
            )
            if held + used != coins:
                found.append(f"{purchase.purchase_id} bonus={bonus}: {coins} coins, {held} held + {used} used")
        reversals = [r for r in state.reversals.values() if r.purchase_id == purchase.purchase_id]
        if sum(r.reversed.paid_coins for r in reversals) > purchase.coins:
            found.append(f"{purchase.purchase_id} reversed beyond its coins")

    allocated: dict[int, int] = defaultdict(int)
    for reversal_id, allocation in state.allocations:
        allocated[allocation.funding_id] += allocation.coins
        row = state.funding[allocation.funding_id - 1]
        if row.funding.draw.purchase_id != state.reversals[reversal_id].purchase_id:
            found.append(f"{reversal_id} traced to another purchase's coins")
    for funding_id, coins in allocated.items():
        if coins > state.funding[funding_id - 1].funding.draw.coins:
            found.append(f"funding row {funding_id} reversed beyond its coins")
    for reversal in state.reversals.values():
        allocations = [a for r, a in state.allocations if r == reversal.transaction_id]
        clawed = sum(a.coins for a in allocations if a.gift_transaction_id is not None)
        if clawed != reversal.clawed_back_coins or clawed + reversal.removed_coins > reversal.reversed.coins:
            found.append(f"reversal {reversal.transaction_id}: {reversal}, clawed {clawed}")

    issued = -(state.coins[domain.SYSTEM_SALES] + state.coins[domain.SYSTEM_PROMOTIONS])
    held_coins = sum(c for b, c in state.coins.items() if b not in domain.SYSTEM_ACCOUNTS)
    if issued != held_coins + state.coins[domain.SYSTEM_SPENT]:
        found.append(f"{issued} issued != {held_coins} held + {state.coins[domain.SYSTEM_SPENT]} spent")
    return found
