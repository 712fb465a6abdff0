"""Card testing: past a number of declined payments in a rolling 24 h, per account charged and per caller asking,
PurchaseCoins is refused RESOURCE_EXHAUSTED RATE_LIMITED with the delay until the oldest counted decline leaves the
window; the refusal records and charges nothing, and earlier requests still replay."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from prometheus_client import REGISTRY

from services.runtime.errors import AppError
from services.wallet import domain
from tests.unit.wallet.conftest import PAYMENT_TIMEOUT, Wallet, buy_command, new_wallet, refusal

PER_ACCOUNT, PER_CALLER = 3, 5
BACKEND = "shop-backend"  # a service caller, acting for many accounts
DECLINED = "tok_declined"
DAY = timedelta(hours=24)


@pytest.fixture
def wallet() -> Wallet:
    limited = new_wallet(domain.DeclineLimits(per_account=PER_ACCOUNT, per_caller=PER_CALLER))
    limited.payments.declined_tokens.add(DECLINED)
    return limited


async def decline(wallet: Wallet, account_id: str, caller: str | None = None) -> None:
    error = await refusal(wallet.service.purchase(buy_command(account_id, caller=caller, payment_token=DECLINED)))
    assert error.reason == "PAYMENT_DECLINED"


async def rate_limited(wallet: Wallet, command: domain.BuyCoins) -> AppError:
    error = await refusal(wallet.service.purchase(command))
    assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED"), error
    return error


def refusals_counted(limit: domain.DeclineScope) -> float:
    value = REGISTRY.get_sample_value("coinstream_wallet_card_testing_refusals_total", {"limit": limit.value})
    assert value is not None
    return value


async def test_an_account_past_its_declines_is_refused_until_the_oldest_leaves_the_window(wallet: Wallet) -> None:
    fan = await wallet.open_account()
    for _ in range(PER_ACCOUNT):
        await decline(wallet, fan)
        wallet.clock.advance(timedelta(hours=1))
    refusals_before = refusals_counted(domain.DeclineScope.ACCOUNT)

    error = await rate_limited(wallet, buy_command(fan))

    # Declined at 0 h, 1 h and 2 h; now is 3 h: the first leaves the window at 24 h.
    assert error.retry_after_seconds == (DAY - timedelta(hours=3)).total_seconds()
    assert f"account {fan!r}" in error.message
    assert refusals_counted(domain.DeclineScope.ACCOUNT) == refusals_before + 1


async def test_a_refusal_records_and_charges_nothing_and_its_request_may_succeed_later(wallet: Wallet) -> None:
    fan = await wallet.open_account()
    for _ in range(PER_ACCOUNT):
        await decline(wallet, fan)
    purchases, charges = dict(wallet.store.state.purchases), dict(wallet.payments.charges)
    command = buy_command(fan, "coins_65")

    await rate_limited(wallet, command)

    assert wallet.store.state.purchases == purchases and wallet.payments.charges == charges
    assert command.key.request_id not in wallet.store.state.keys  # not kept: a retry is a first attempt
    assert await wallet.balance(fan) == domain.Balance()
    wallet.clock.advance(DAY - timedelta(seconds=1))
    error = await rate_limited(wallet, command)  # a second short of the window: still refused, and says so
    assert error.retry_after_seconds == 1
    wallet.clock.advance(timedelta(seconds=1))
    bought = await wallet.service.purchase(command)
    assert bought.balance == domain.Balance(65, 0) == await wallet.balance(fan)


async def test_the_window_slides_one_decline_at_a_time(wallet: Wallet) -> None:
    fan = await wallet.open_account()
    for _ in range(PER_ACCOUNT):
        await decline(wallet, fan)
        wallet.clock.advance(timedelta(hours=6))
    # Declined at 0 h, 6 h, 12 h; at 24 h the first has left, so one more attempt goes through (and is declined).
    wallet.clock.advance(timedelta(hours=6))
    await decline(wallet, fan)

    error = await rate_limited(wallet, buy_command(fan))

    assert error.retry_after_seconds == timedelta(hours=6).total_seconds()  # the 6 h decline leaves at 30 h


async def test_a_service_caller_is_refused_for_a_blocked_account_but_not_for_others(wallet: Wallet) -> None:
    fan, other = await wallet.open_account(), await wallet.open_account()
    for _ in range(PER_ACCOUNT):
        await decline(wallet, fan)  # the owner's own attempts

    error = await rate_limited(wallet, buy_command(fan, caller=BACKEND))

    assert f"account {fan!r}" in error.message
    bought = await wallet.service.purchase(buy_command(other, caller=BACKEND))  # the backend itself is not held back
    assert bought.account_id == other


async def test_a_caller_past_its_declines_is_refused_for_every_account(wallet: Wallet) -> None:
    fans = [await wallet.open_account() for _ in range(PER_CALLER)]
    for fan in fans:  # one decline each: no account comes near its own limit
        await decline(wallet, fan, caller=BACKEND)
        wallet.clock.advance(timedelta(minutes=10))
    newcomer = await wallet.open_account()
    refusals_before = refusals_counted(domain.DeclineScope.CALLER)

    error = await rate_limited(wallet, buy_command(newcomer, caller=BACKEND))

    assert error.retry_after_seconds == (DAY - timedelta(minutes=50)).total_seconds()
    assert "this caller" in error.message
    assert refusals_counted(domain.DeclineScope.CALLER) == refusals_before + 1
    bought = await wallet.service.purchase(buy_command(newcomer))  # the newcomer buying for itself
    assert bought.account_id == newcomer


async def test_with_both_limits_reached_the_one_that_holds_longer_sets_the_delay(wallet: Wallet) -> None:
    fan, b, c = [await wallet.open_account() for _ in range(3)]
    await decline(wallet, fan)  # 0 h: the owner
    wallet.clock.advance(timedelta(hours=1))
    for other in (b, c, b, c):  # 1 h: the backend, for other accounts
        await decline(wallet, other, caller=BACKEND)
    wallet.clock.advance(timedelta(hours=1))
    await decline(wallet, fan, caller=BACKEND)  # 2 h: the backend's fifth
    wallet.clock.advance(timedelta(hours=1))
    await decline(wallet, fan)  # 3 h: the account's third

    by_backend = await rate_limited(wallet, buy_command(fan, caller=BACKEND))
    by_owner = await rate_limited(wallet, buy_command(fan))

    # The account's oldest counted decline (0 h) leaves at 24 h, the backend's (1 h) at 25 h; the owner has two.
    assert (by_backend.retry_after_seconds, "this caller" in by_backend.message) == (22 * 3600, True)
    assert (by_owner.retry_after_seconds, f"account {fan!r}" in by_owner.message) == (21 * 3600, True)


async def test_purchases_still_being_charged_count_towards_the_account_limit(wallet: Wallet) -> None:
    fan = await wallet.open_account()
    await decline(wallet, fan)
    wallet.payments.outage = TimeoutError()  # the provider does not answer: purchases stay pending
    for _ in range(PER_ACCOUNT - 1):
        assert (await refusal(wallet.buy(fan))).reason == "PAYMENT_PROVIDER_UNAVAILABLE"
    wallet.payments.outage = None

    error = await rate_limited(wallet, buy_command(fan))

    assert error.retry_after_seconds == PAYMENT_TIMEOUT.total_seconds()  # pending ones are decided by then
    wallet.clock.advance(timedelta(seconds=31))
    assert await wallet.service.recover_pending_purchases(older_than_seconds=30) == PER_ACCOUNT - 1
    assert (await wallet.buy(fan, "coins_65")).balance.coins == 2 * 330 + 65  # approved: only one decline


async def test_purchases_waiting_for_their_buyer_do_not_hold_the_account_back(wallet: Wallet) -> None:
    """A purchase left waiting for 3-D Secure (the buyer closed the page) is no charge under way: once older than a
    charge takes, it no longer counts, and an account with many abandoned ones still buys."""
    fan = await wallet.open_account()
    wallet.payments.pending_tokens.add("tok_3ds")
    for _ in range(PER_ACCOUNT):
        assert (await wallet.service.purchase(buy_command(fan, payment_token="tok_3ds"))).pending
    await rate_limited(wallet, buy_command(fan))  # just made: they may still be being charged

    wallet.clock.advance(PAYMENT_TIMEOUT + timedelta(seconds=1))

    assert (await wallet.buy(fan, "coins_65")).balance.coins == 65


async def test_earlier_requests_replay_their_outcomes_while_the_account_is_blocked(wallet: Wallet) -> None:
    fan = await wallet.open_account()
    completed = buy_command(fan, "coins_65")
    bought = await wallet.service.purchase(completed)
    wallet.payments.outage = TimeoutError()
    pending = buy_command(fan, "coins_330")
    await refusal(wallet.service.purchase(pending))
    wallet.payments.outage = None
    declined = buy_command(fan, payment_token=DECLINED)
    await refusal(wallet.service.purchase(declined))
    await decline(wallet, fan)
    await rate_limited(wallet, buy_command(fan))  # 2 declines + 1 pending: at the limit of 3

    assert await wallet.service.purchase(completed) == bought
    assert (await refusal(wallet.service.purchase(declined))).reason == "PAYMENT_DECLINED"
    resumed = await wallet.service.purchase(pending)  # admitted before the block: its charge goes on
    assert resumed.balance == domain.Balance(65 + 330, 0) == await wallet.balance(fan)
    assert len(wallet.payments.charges) == 4


async def test_declines_are_counted_once_each(wallet: Wallet) -> None:
    fan = await wallet.open_account()
    before = REGISTRY.get_sample_value("coinstream_wallet_payments_declined_total")
    command = buy_command(fan, payment_token=DECLINED)
    for _ in range(2):  # the replay answers from the key: no second decline
        assert (await refusal(wallet.service.purchase(command))).reason == "PAYMENT_DECLINED"
    assert REGISTRY.get_sample_value("coinstream_wallet_payments_declined_total") == (before or 0) + 1


async def test_limits_of_zero_never_refuse() -> None:
    unlimited = new_wallet(domain.DeclineLimits(per_account=0, per_caller=0))
    unlimited.payments.declined_tokens.add(DECLINED)
    fan = await unlimited.open_account()
    for _ in range(10):
        await decline(unlimited, fan, caller=BACKEND)
    assert (await unlimited.buy(fan)).balance.coins == 330
