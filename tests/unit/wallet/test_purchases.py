"""PurchaseCoins: a pending purchase, the charge, then the coins; declines, outages and retries."""

from __future__ import annotations

from datetime import timedelta

import grpc

from services.runtime.requests import RequestKey
from services.wallet import domain
from tests.unit.wallet.conftest import Wallet, buy_command, refusal


async def test_a_purchase_goes_from_pending_to_completed_and_credits_its_coins(wallet: Wallet) -> None:
    fan = await wallet.open_account()

    bought = await wallet.buy(fan, "coins_330")

    assert (bought.coins, bought.bonus_coins, bought.promotion_id) == (330, 0, None)
    assert bought.balance == domain.Balance(330, 0) == await wallet.balance(fan)
    purchase = wallet.store.state.purchases[bought.purchase_id]
    assert purchase.status is domain.PurchaseStatus.COMPLETED and purchase.transaction_id
    assert purchase.price_minor == 499 and wallet.store.state.provider_references[bought.purchase_id]
    assert list(wallet.payments.charges) == [bought.purchase_id]


async def test_a_replayed_purchase_is_not_charged_or_credited_again(wallet: Wallet) -> None:
    fan = await wallet.open_account()
    first = await wallet.buy(fan, "coins_330", request_id="buy-1")

    again = await wallet.buy(fan, "coins_330", request_id="buy-1")

    assert again == first
    assert len(wallet.payments.charges) == 1 and await wallet.balance(fan) == domain.Balance(330, 0)
    error = await refusal(wallet.buy(fan, "coins_65", request_id="buy-1"))
    assert (error.code, error.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")


async def test_a_declined_payment_credits_nothing_and_is_the_final_answer(wallet: Wallet) -> None:
    fan = await wallet.open_account()
    wallet.payments.declined_tokens.add("tok_ok")
    command = buy_command(fan, "coins_330")

    error = await refusal(wallet.service.purchase(command))

    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_DECLINED")
    [purchase] = wallet.store.state.purchases.values()
    assert purchase.status is domain.PurchaseStatus.DECLINED and purchase.transaction_id is None
    wallet.payments.declined_tokens.clear()  # the card works now; the request keeps its answer
    assert (await refusal(wallet.service.purchase(command))).reason == "PAYMENT_DECLINED"
    assert await wallet.balance(fan) == domain.Balance()


async def test_a_provider_outage_leaves_the_purchase_pending_for_a_retry(wallet: Wallet) -> None:
    fan = await wallet.open_account()
    command = buy_command(fan, "coins_330")
    wallet.payments.outage = TimeoutError()

    error = await refusal(wallet.service.purchase(command))

    assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "PAYMENT_PROVIDER_UNAVAILABLE")
    [purchase] = wallet.store.state.purchases.values()
    assert purchase.status is domain.PurchaseStatus.PENDING and await wallet.balance(fan) == domain.Balance()
    wallet.payments.outage = None
    bought = await wallet.service.purchase(command)  # the same request resumes the same purchase
    assert bought.purchase_id == purchase.purchase_id and await wallet.balance(fan) == domain.Balance(330, 0)


async def test_the_recovery_pass_finishes_stale_pending_purchases(wallet: Wallet) -> None:
    fan = await wallet.open_account()
    wallet.payments.outage = OSError("connection refused")
    await refusal(wallet.buy(fan, "coins_65"))
    wallet.payments.outage = None

    assert await wallet.service.recover_pending_purchases(older_than_seconds=30) == 0  # too young yet
    wallet.clock.advance(timedelta(seconds=31))
    assert await wallet.service.recover_pending_purchases(older_than_seconds=30) == 1

    assert await wallet.balance(fan) == domain.Balance(65, 0)
    assert await wallet.service.recover_pending_purchases(older_than_seconds=30) == 0


async def test_purchases_need_an_adult_verified_account_and_a_known_package(wallet: Wallet) -> None:
    minor = await wallet.open_account(adult_verified=False)
    adult = await wallet.open_account()
    command = buy_command(minor)

    assert (await refusal(wallet.service.purchase(command))).reason == "ACCOUNT_NOT_ELIGIBLE"
    assert (await refusal(wallet.buy("nobody"))).reason == "ACCOUNT_NOT_ELIGIBLE"
    error = await refusal(wallet.buy(adult, "coins_999999"))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "PACKAGE_NOT_FOUND")
    assert not wallet.store.state.purchases and not wallet.payments.charges
    # The refusal is kept with the key, even once the account is verified.
    await wallet.service.upsert_account(
        domain.UpsertAccount(RequestKey("verify", "UpsertAccount", b"v"), minor, True, "US")
    )
    assert (await refusal(wallet.service.purchase(command))).reason == "ACCOUNT_NOT_ELIGIBLE"
