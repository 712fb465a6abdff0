"""SpendCoins' rules: bonus coins first, never more than the balance, never from a frozen or ineligible account,
within the owner's spending limit, and at most once per request_id."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc

from services.wallet import domain
from tests.unit.wallet.conftest import Wallet, refusal, spend_ask


async def test_a_spend_takes_bonus_coins_first_then_paid_coins(wallet: Wallet) -> None:
    fan = await wallet.open_account()
    await wallet.buy(fan, "coins_1321")  # +5 %: 66 bonus coins
    assert await wallet.balance(fan) == domain.Balance(paid_coins=1321, bonus_coins=66)

    spent = await wallet.spend(fan, 100)

    assert spent.split == domain.Split(paid_coins=34, bonus_coins=66)
    assert spent.balance == domain.Balance(paid_coins=1287, bonus_coins=0) == await wallet.balance(fan)
    assert spent.account_id == fan and spent.transaction_id


async def test_a_spend_past_the_balance_is_refused_and_changes_nothing(wallet: Wallet) -> None:
    fan = await wallet.open_account()
    await wallet.buy(fan, "coins_65")
    ask = spend_ask(fan, 66)

    error = await refusal(wallet.service.spend(ask))

    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_COINS")
    assert await wallet.balance(fan) == domain.Balance(65, 0)
    # The refusal is the request's outcome: asked again after buying more, it is refused again.
    await wallet.buy(fan, "coins_65")
    assert (await refusal(wallet.service.spend(ask))).reason == "INSUFFICIENT_COINS"
    assert await wallet.balance(fan) == domain.Balance(130, 0)


async def test_frozen_unknown_and_unverified_accounts_cannot_spend(wallet: Wallet) -> None:
    frozen = await wallet.open_account()
    bought = await wallet.buy(frozen, "coins_330")
    await wallet.spend(frozen, 300)
    await wallet.reverse(bought.purchase_id)  # into debt: frozen
    minor = await wallet.open_account(adult_verified=False)

    assert (await refusal(wallet.spend(frozen, 1))).reason == "ACCOUNT_FROZEN"
    assert (await refusal(wallet.spend(minor, 1))).reason == "ACCOUNT_NOT_ELIGIBLE"
    assert (await refusal(wallet.spend("nobody", 1))).reason == "ACCOUNT_NOT_ELIGIBLE"


async def test_the_spending_limit_caps_any_rolling_24_hours(wallet: Wallet) -> None:
    fan = await wallet.open_account()
    await wallet.buy(fan, "coins_330")
    await wallet.set_limit(fan, 50)

    await wallet.spend(fan, 40)
    error = await refusal(wallet.spend(fan, 11))
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SPENDING_LIMIT_REACHED")
    await wallet.spend(fan, 10)  # exactly up to the limit

    wallet.clock.advance(timedelta(hours=24))  # the first spends leave the window
    await wallet.spend(fan, 50)
    assert await wallet.balance(fan) == domain.Balance(230, 0)


async def test_raising_the_limit_waits_a_day_lowering_it_is_immediate(wallet: Wallet) -> None:
    fan = await wallet.open_account()
    await wallet.buy(fan, "coins_330")
    await wallet.set_limit(fan, 10)

    raised = await wallet.set_limit(fan, 100)
    assert raised.spending_limit.daily_coins == 10
    assert raised.spending_limit.pending_daily_coins == 100
    assert (await refusal(wallet.spend(fan, 11))).reason == "SPENDING_LIMIT_REACHED"

    wallet.clock.advance(domain.SPENDING_LIMIT_DELAY)
    seen = await wallet.service.get_account(fan)
    assert seen.spending_limit == domain.SpendingLimit(100)
    await wallet.spend(fan, 90)
    lowered = await wallet.set_limit(fan, 5)
    assert lowered.spending_limit == domain.SpendingLimit(5)


async def test_a_replayed_spend_gets_its_first_answer_and_spends_once(wallet: Wallet) -> None:
    fan = await wallet.open_account()
    await wallet.buy(fan, "coins_330")
    ask = spend_ask(fan, 30, request_id="gift-1")

    first = await wallet.service.spend(ask)
    await wallet.spend(fan, 100)  # the balance moves on
    again = await wallet.service.spend(spend_ask(fan, 30, request_id="gift-1"))

    assert again == first
    assert await wallet.balance(fan) == domain.Balance(200, 0)


async def test_a_request_id_reused_for_another_spend_is_refused(wallet: Wallet) -> None:
    fan = await wallet.open_account()
    await wallet.buy(fan, "coins_330")
    await wallet.spend(fan, 30, request_id="gift-1")

    error = await refusal(wallet.spend(fan, 31, request_id="gift-1"))

    assert (error.code, error.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    assert await wallet.balance(fan) == domain.Balance(300, 0)


async def test_the_ledger_answers_a_spend_whose_key_expired(wallet: Wallet) -> None:
    """Idempotency keys are forgotten after days; the ledger is not, so a late retry is not a second charge."""
    fan = await wallet.open_account()
    bought = await wallet.buy(fan, "coins_330", request_id="buy-1")
    first = await wallet.spend(fan, 30, request_id="gift-1")
    del wallet.store.state.keys["gift-1"], wallet.store.state.keys["buy-1"]

    assert await wallet.spend(fan, 30, request_id="gift-1") == first
    # A request_id the ledger holds for something else (here the purchase) is refused, not spent.
    assert (await refusal(wallet.spend(fan, 1, request_id="buy-1"))).reason == "REQUEST_ID_REUSED"
    assert await wallet.balance(fan) == domain.Balance(300, 0) and bought.coins == 330


async def test_concurrent_spends_join_one_batch_and_repeats_share_an_outcome(wallet: Wallet) -> None:
    fan = await wallet.open_account()
    await wallet.buy(fan, "coins_330")
    before = wallet.store.transactions_run

    results = await asyncio.gather(
        wallet.spend(fan, 10, request_id="a"),
        wallet.spend(fan, 10, request_id="a"),  # a client retrying early
        wallet.spend(fan, 20, request_id="b"),
    )

    assert results[0] == results[1] and results[2].balance == domain.Balance(300, 0)
    assert wallet.store.transactions_run - before == 1
