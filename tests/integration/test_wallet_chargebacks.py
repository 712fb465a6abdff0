"""Chargebacks against the real wallet (and gifts): a reversed purchase takes its coins back once; one spent on gifts
leaves a debt that freezes the account until purchases pay it back; refusals. The wallet's money identities hold
after all of it."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
from coinstream.gifts.v1 import gifts_pb2 as g
from coinstream.wallet.v1 import wallet_pb2 as w
from grpc import StatusCode

from tests.support.clients import ADMIN, SERVICE, Clients, auth, new_id
from tests.support.errors import expect_error, violated_fields
from tests.support.factories import (
    balance_of,
    buy,
    create_account,
    giveaway,
    reversal,
    spend,
    transactions,
    wallet_balance,
)
from tests.support.gifts import live_stream_id
from tests.support.invariants import wallet_violations
from tests.support.payouts import WAIT_SECONDS, earnings, eventually, wait_for_lifetime
from tests.support.stack import Stack


async def ledger_is_sound(stack: Stack) -> None:
    conn = await asyncpg.connect(stack.database_url("wallet"))
    try:
        assert await wallet_violations(conn) == []
    finally:
        await conn.close()


async def account_status(clients: Clients, account_id: str) -> w.AccountStatus.ValueType:
    return (
        await clients.wallet.GetAccount(w.GetAccountRequest(account_id=account_id), metadata=SERVICE)
    ).account.status


async def test_reversing_an_unspent_purchase_takes_its_coins_back_once(clients: Clients) -> None:
    account_id = await create_account(clients)
    kept = await buy(clients, account_id, "coins_330")
    bought = await buy(clients, account_id, "coins_1321")
    request = reversal(bought.purchase.purchase_id)
    reply = await clients.wallet.ReversePurchase(request, metadata=ADMIN)
    assert reply.balance == balance_of(account_id, 330, 0)
    assert reply.account_status == w.ACCOUNT_STATUS_ACTIVE
    assert await clients.wallet.ReversePurchase(request, metadata=ADMIN) == reply  # same request_id: same answer

    again = await clients.wallet.ReversePurchase(reversal(bought.purchase.purchase_id), metadata=ADMIN)
    assert again.transaction_id == reply.transaction_id and again.balance == reply.balance  # nothing moved
    newest = (await transactions(clients, account_id))[0]
    assert (newest.kind, newest.coins_delta, newest.paid_coins_delta, newest.bonus_coins_delta, newest.reference) == (
        w.TRANSACTION_KIND_REVERSAL,
        -1387,
        -1321,
        -66,
        bought.purchase.purchase_id,
    )
    assert kept.purchase.purchase_id != bought.purchase.purchase_id


async def test_concurrent_reversals_of_one_purchase_move_coins_once(clients: Clients) -> None:
    account_id = await create_account(clients)
    bought = await buy(clients, account_id, "coins_660")
    replies = await asyncio.gather(
        *(clients.wallet.ReversePurchase(reversal(bought.purchase.purchase_id), metadata=ADMIN) for _ in range(8))
    )
    assert len({r.transaction_id for r in replies}) == 1
    assert await wallet_balance(clients, account_id) == balance_of(account_id, 0, 0)


async def test_chargeback_after_gifting_takes_the_rest_back_and_claws_the_gift_back_from_the_creator(
    stack: Stack, clients: Clients
) -> None:
    fan = await create_account(clients)
    creator = await create_account(clients, prefix="creator")
    bought = await buy(clients, fan, "coins_1321")  # 1,321 paid + 66 bonus
    stream_id = await live_stream_id(clients, creator)
    gift = await clients.gifts.SendGift(
        g.SendGiftRequest(
            request_id=new_id("gift"), sender_id=fan, stream_id=stream_id, gift_id="disco_ball", quantity=1
        ),
        metadata=auth(fan),
    )
    assert gift.sender_balance_coins == 387  # the gift took the 66 bonus coins first
    await wait_for_lifetime(clients, creator, 1000)

    reversed_ = await clients.wallet.ReversePurchase(reversal(bought.purchase.purchase_id), metadata=ADMIN)
    # The 387 unspent coins come back; the 1,000 the gift took come back from the creator, not the fan.
    assert (reversed_.removed_coins, reversed_.clawed_back_coins, reversed_.charged_coins) == (387, 1000, 0)
    assert reversed_.balance == balance_of(fan, 0, 0) and reversed_.account_status == w.ACCOUNT_STATUS_ACTIVE
    clawed = await eventually(
        lambda: earnings(clients, creator), lambda e: e.clawed_back_diamonds == 1000, seconds=WAIT_SECONDS
    )
    assert (clawed.lifetime_diamonds, clawed.available_diamonds, clawed.debt_diamonds) == (1000, 0, 0)
    await ledger_is_sound(stack)


async def test_chargeback_after_spending_leaves_a_debt_that_purchases_pay_back(stack: Stack, clients: Clients) -> None:
    fan = await create_account(clients)
    winner = await create_account(clients)
    bought = await buy(clients, fan, "coins_1321")  # 1,321 paid + 66 bonus
    await clients.wallet.SpendCoins(
        w.SpendCoinsRequest(request_id=new_id("s"), account_id=fan, coins=1000, reference="sticker"), metadata=SERVICE
    )
    assert await wallet_balance(clients, fan) == balance_of(fan, 387, 0)  # the spend took the 66 bonus coins first

    reversed_ = await clients.wallet.ReversePurchase(reversal(bought.purchase.purchase_id), metadata=ADMIN)
    # Coins spent on something no creator earned from: the fan owes them (the bonus was gone, so from paid coins).
    assert (reversed_.removed_coins, reversed_.clawed_back_coins, reversed_.charged_coins) == (387, 0, 1000)
    assert reversed_.balance == balance_of(fan, -1000, 0)
    assert reversed_.account_status == w.ACCOUNT_STATUS_FROZEN
    assert await account_status(clients, fan) == w.ACCOUNT_STATUS_FROZEN

    await expect_error(
        clients.wallet.SpendCoins(
            w.SpendCoinsRequest(request_id=new_id("s"), account_id=fan, coins=1), metadata=SERVICE
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ACCOUNT_FROZEN",
    )
    await expect_error(
        clients.wallet.CreateGiveaway(
            w.CreateGiveawayRequest(request_id=new_id("gw"), creator_id=fan, coins_per_winner=1, winner_ids=[winner]),
            metadata=SERVICE,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ACCOUNT_FROZEN",
    )

    partial = await buy(clients, fan, "coins_660")  # purchases are allowed while frozen
    assert partial.balance == balance_of(fan, -340, 0)
    assert await account_status(clients, fan) == w.ACCOUNT_STATUS_FROZEN
    covered = await buy(clients, fan, "coins_660")
    assert covered.balance == balance_of(fan, 320, 0)
    assert await account_status(clients, fan) == w.ACCOUNT_STATUS_ACTIVE
    assert (await spend(clients, fan, 20)).balance == balance_of(fan, 300, 0)
    await ledger_is_sound(stack)


async def test_reversal_refusals(clients: Clients) -> None:
    account_id = await create_account(clients)
    declined = w.PurchaseCoinsRequest(
        request_id=new_id("buy"), account_id=account_id, package_id="coins_65", payment_token="tok_declined"
    )
    await expect_error(clients.wallet.PurchaseCoins(declined, metadata=SERVICE), grpc.StatusCode.FAILED_PRECONDITION)
    await expect_error(
        clients.wallet.ReversePurchase(reversal("pur_unknown"), metadata=ADMIN),
        grpc.StatusCode.NOT_FOUND,
        "PURCHASE_NOT_FOUND",
    )
    bought = await buy(clients, account_id, "coins_65")
    for metadata in (SERVICE, auth(account_id)):
        await expect_error(
            clients.wallet.ReversePurchase(reversal(bought.purchase.purchase_id), metadata=metadata),
            grpc.StatusCode.PERMISSION_DENIED,
        )
    error = await expect_error(
        clients.wallet.ReversePurchase(
            w.ReversePurchaseRequest(request_id="bad id", purchase_id="", reason=""), metadata=ADMIN
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violated_fields(error) == {"request_id", "purchase_id", "reason"}
    for coins in (-1, 10_000_000_001):
        request = reversal(bought.purchase.purchase_id)
        request.coins = coins
        error = await expect_error(clients.wallet.ReversePurchase(request, metadata=ADMIN), StatusCode.INVALID_ARGUMENT)
        assert violated_fields(error) == {"coins"}
    assert await wallet_balance(clients, account_id) == balance_of(account_id, 65, 0)


def partial(purchase_id: str, coins: int) -> w.ReversePurchaseRequest:
    request = reversal(purchase_id)
    request.coins = coins
    return request


async def test_partial_refunds_take_unspent_coins_first_and_never_exceed_the_purchase(
    stack: Stack, clients: Clients
) -> None:
    fan = await create_account(clients)
    bought = await buy(clients, fan, "coins_1321")  # 1,321 paid + 66 bonus
    await spend(clients, fan, 100)  # bonus first: 66 bonus + 34 paid, on something that is not a gift
    purchase_id = bought.purchase.purchase_id

    first = await clients.wallet.ReversePurchase(partial(purchase_id, 500), metadata=ADMIN)
    # 500 paid coins, unspent, and their share of the bonus (66 × 500 // 1321 = 24), which was spent: charged.
    assert (first.coins, first.bonus_coins, first.removed_coins, first.clawed_back_coins, first.charged_coins) == (
        500,
        24,
        500,
        0,
        24,
    )
    assert first.balance == balance_of(fan, 1287 - 524, 0) and first.account_status == w.ACCOUNT_STATUS_ACTIVE

    rest = await clients.wallet.ReversePurchase(reversal(purchase_id), metadata=ADMIN)  # coins 0: what is left
    # The 24 charged came out of the purchase's own unspent coins (the buyer's only ones): those are charged again.
    assert (rest.coins, rest.bonus_coins, rest.removed_coins, rest.charged_coins) == (821, 42, 763, 100)
    # Over both: all 1,387 coins; the 100 spent ones are now the buyer's debt, as a whole reversal would leave.
    assert rest.balance == balance_of(fan, -100, 0) and rest.account_status == w.ACCOUNT_STATUS_FROZEN

    error = await expect_error(
        clients.wallet.ReversePurchase(partial(purchase_id, 1), metadata=ADMIN), StatusCode.INVALID_ARGUMENT
    )
    assert violated_fields(error) == {"coins"}
    again = await clients.wallet.ReversePurchase(reversal(purchase_id), metadata=ADMIN)
    assert again.transaction_id == rest.transaction_id and again.coins == 0 and again.balance == rest.balance
    await ledger_is_sound(stack)


async def test_concurrent_partial_refunds_never_exceed_the_purchase(stack: Stack, clients: Clients) -> None:
    fan = await create_account(clients)
    bought = await buy(clients, fan, "coins_330")
    outcomes = await asyncio.gather(
        *(clients.wallet.ReversePurchase(partial(bought.purchase.purchase_id, 100), metadata=ADMIN) for _ in range(6)),
        return_exceptions=True,
    )
    done = [o for o in outcomes if isinstance(o, w.ReversePurchaseResponse)]
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(done) == 3 and len(refused) == 3
    assert all(r.code() == StatusCode.INVALID_ARGUMENT for r in refused)
    assert await wallet_balance(clients, fan) == balance_of(fan, 30, 0)
    await ledger_is_sound(stack)


async def test_a_reversal_takes_its_unspent_coins_back_from_giveaway_winners(stack: Stack, clients: Clients) -> None:
    fan = await create_account(clients)
    winner = await create_account(clients)
    kept = await buy(clients, winner, "coins_65")  # the winner's own coins stay
    bought = await buy(clients, fan, "coins_330")
    await clients.wallet.CreateGiveaway(giveaway(fan, [winner], 200), metadata=SERVICE)
    await spend(clients, winner, 65 + 50)  # first in, first out: the winner's own 65 coins, then 50 of the fan's

    reply = await clients.wallet.ReversePurchase(reversal(bought.purchase.purchase_id), metadata=ADMIN)

    assert (reply.removed_coins, reply.charged_coins) == (130 + 150, 50)  # the winner's 50 were spent: charged
    assert reply.balance == balance_of(fan, -50, 0) and reply.account_status == w.ACCOUNT_STATUS_FROZEN
    assert await wallet_balance(clients, winner) == balance_of(winner, 0, 0)
    assert kept.purchase.coins == 65
    await ledger_is_sound(stack)


async def test_money_identities_hold_after_all_of_it(stack: Stack) -> None:
    await ledger_is_sound(stack)


async def test_get_purchase_shows_its_state_rail_price_and_reversals_to_its_buyer_only(clients: Clients) -> None:
    fan, other = await create_account(clients), await create_account(clients)
    bought = await buy(clients, fan, "coins_1321")
    await clients.wallet.ReversePurchase(partial(bought.purchase.purchase_id, 321), metadata=ADMIN)
    request = w.GetPurchaseRequest(purchase_id=bought.purchase.purchase_id)

    purchase = (await clients.wallet.GetPurchase(request, metadata=auth(fan))).purchase

    assert (purchase.account_id, purchase.status, purchase.rail) == (
        fan,
        w.PURCHASE_STATUS_PARTIALLY_REVERSED,
        "sandbox",
    )
    assert (purchase.price_paid.currency_code, purchase.price_paid.amount_minor) == ("USD", 1999)
    assert (purchase.storefront, purchase.terms_version) == ("US", "1")
    assert (purchase.coins, purchase.bonus_coins, purchase.reversed_coins, purchase.reversed_bonus_coins) == (
        1321,
        66,
        321,
        16,
    )
    assert purchase.created_at.seconds > 0
    assert (await clients.wallet.GetPurchase(request, metadata=SERVICE)).purchase == purchase
    # Someone else's purchase looks exactly like a missing one.
    for purchase_id, caller in ((bought.purchase.purchase_id, other), ("pur_missing", fan)):
        await expect_error(
            clients.wallet.GetPurchase(w.GetPurchaseRequest(purchase_id=purchase_id), metadata=auth(caller)),
            StatusCode.NOT_FOUND,
            "PURCHASE_NOT_FOUND",
        )
