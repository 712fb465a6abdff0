"""ReversePurchase (a chargeback): the purchase's coins taken back, into debt if spent; debt freezes the account
until a purchase covers it."""

from __future__ import annotations

import grpc
import pytest
from coinstream.wallet.v1 import wallet_pb2 as w

from services.wallet import convert, domain
from tests.fakes.wallet import ConstraintViolation
from tests.unit.wallet.conftest import Wallet, refusal


async def test_reversing_an_unspent_purchase_takes_its_coins_back(wallet: Wallet) -> None:
    fan = await wallet.open_account()
    bought = await wallet.buy(fan, "coins_330")

    reversal = await wallet.reverse(bought.purchase_id)

    assert reversal.balance == domain.Balance() == await wallet.balance(fan)
    assert reversal.account_status is domain.AccountStatus.ACTIVE
    assert wallet.store.state.transactions[reversal.transaction_id].kind == "reversal"


async def test_reversing_spent_coins_leaves_a_debt_that_freezes_the_account(wallet: Wallet) -> None:
    fan = await wallet.open_account()
    bought = await wallet.buy(fan, "coins_330")
    await wallet.spend(fan, 300)

    reversal = await wallet.reverse(bought.purchase_id)

    assert reversal.balance == domain.Balance(paid_coins=-300, bonus_coins=0)
    assert reversal.account_status is domain.AccountStatus.FROZEN == await wallet.status(fan)
    assert (await refusal(wallet.spend(fan, 1))).reason == "ACCOUNT_FROZEN"
    # A frozen account may still buy; a purchase that covers the debt unfreezes it.
    await wallet.buy(fan, "coins_65")
    assert await wallet.status(fan) is domain.AccountStatus.FROZEN
    await wallet.buy(fan, "coins_330")
    assert await wallet.status(fan) is domain.AccountStatus.ACTIVE
    assert await wallet.balance(fan) == domain.Balance(95, 0)
    await wallet.spend(fan, 95)


async def test_the_bonus_comes_back_from_the_bonus_bucket_as_far_as_it_goes(wallet: Wallet) -> None:
    fan = await wallet.open_account()
    bought = await wallet.buy(fan, "coins_1321")  # 66 bonus
    await wallet.spend(fan, 50)  # bonus first: 16 bonus coins left

    reversal = await wallet.reverse(bought.purchase_id)

    # 16 from the bonus bucket (it never goes negative), the other 50 + 1321 from the paid bucket.
    assert reversal.balance == domain.Balance(paid_coins=-50, bonus_coins=0)
    assert wallet.store.state.reversals[reversal.transaction_id].taken == domain.Split(1371, 16)


async def test_a_purchase_is_reversed_at_most_once_whatever_the_request_id(wallet: Wallet) -> None:
    fan = await wallet.open_account()
    bought = await wallet.buy(fan, "coins_330")

    first = await wallet.reverse(bought.purchase_id, request_id="rev-1")
    replayed = await wallet.reverse(bought.purchase_id, request_id="rev-1")
    another = await wallet.reverse(bought.purchase_id, request_id="rev-2")

    assert replayed == first
    assert another.transaction_id == first.transaction_id and another.balance == domain.Balance()
    assert len(wallet.store.state.reversals) == 1


async def test_only_completed_purchases_can_be_reversed(wallet: Wallet) -> None:
    fan = await wallet.open_account()
    wallet.payments.declined_tokens.add("tok_ok")
    await refusal(wallet.buy(fan, "coins_65"))
    [declined] = wallet.store.state.purchases

    for purchase_id in (declined, "pur_unknown"):
        error = await refusal(wallet.reverse(purchase_id))
        assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "PURCHASE_NOT_FOUND")


async def test_the_fake_store_refuses_a_negative_bucket_unless_debt_is_allowed(wallet: Wallet) -> None:
    """The fake's guard (the database's trigger, which the integration tests prove), which the spend rules rely on."""
    fan = await wallet.open_account()
    overdraft = domain.spend_postings(fan, domain.Split(1, 0))

    with pytest.raises(ConstraintViolation):
        async with wallet.store.transaction() as tx:
            await tx.record_movement(
                transaction_id="txn-1", kind="spend", request_id="r-1", account_id=fan, reference="", postings=overdraft
            )
    async with wallet.store.transaction() as tx:
        await tx.record_movement(
            transaction_id="txn-2",
            kind="reversal",
            request_id="r-2",
            account_id=fan,
            reference="",
            postings=overdraft,
            debt_allowed=True,
        )
    assert await wallet.balance(fan) == domain.Balance(-1, 0)


async def test_a_purchase_reads_its_state_from_pending_to_reversed(wallet: Wallet) -> None:
    fan = await wallet.open_account()
    bought = await wallet.buy(fan, "coins_1321")
    view = await wallet.service.get_purchase(bought.purchase_id)
    assert view.state is domain.PurchaseState.COMPLETED
    assert (view.purchase.rail, view.purchase.storefront_country, view.purchase.terms_version) == ("sandbox", "US", "1")
    assert (view.purchase.price_minor, view.purchase.currency_code) == (1999, "USD")

    await wallet.service.reverse_purchase(
        convert.reverse_purchase(
            w.ReversePurchaseRequest(request_id="part", purchase_id=bought.purchase_id, reason="refund", coins=321)
        )
    )
    partly = await wallet.service.get_purchase(bought.purchase_id)
    assert (partly.state, partly.reversed) == (domain.PurchaseState.PARTIALLY_REVERSED, domain.Split(321, 16))
    await wallet.reverse(bought.purchase_id)
    whole = await wallet.service.get_purchase(bought.purchase_id)
    assert (whole.state, whole.reversed) == (domain.PurchaseState.REVERSED, domain.Split(1321, 66))


async def test_a_declined_purchase_reads_failed_and_an_unknown_one_is_not_found(wallet: Wallet) -> None:
    fan = await wallet.open_account()
    wallet.payments.declined_tokens.add("tok_ok")
    await refusal(wallet.buy(fan, "coins_65"))
    [declined] = wallet.store.state.purchases
    assert (await wallet.service.get_purchase(declined)).state is domain.PurchaseState.FAILED
    assert (await refusal(wallet.service.get_purchase("pur_unknown"))).reason == "PURCHASE_NOT_FOUND"
