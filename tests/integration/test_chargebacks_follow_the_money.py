"""Chargebacks follow the money, on the real services: a fraud ring buys coins with a stolen card, gifts them to an
accomplice creator directly and through a giveaway's winner, and withdraws; the chargeback takes the diamonds back,
the creator's withdrawn ones become debt, withdrawals are refused until clean gifts repay it. A frozen wallet account
cannot withdraw diamonds either. Reversals survive payouts being down and kill -9 at every new crash point, and are
applied exactly once."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
import nats.js.errors
import pytest
from coinstream.events.v1 import events_pb2
from coinstream.payouts.v1 import payouts_pb2
from coinstream.wallet.v1 import wallet_pb2 as w

from coinstream.testing.servers import stop_process
from services.runtime.messaging import DIAMONDS_CLAWED_BACK_SUBJECT, PAYOUTS_STREAM
from tests.support.clients import ADMIN, SERVICE, Clients, new_id
from tests.support.errors import expect_error
from tests.support.factories import buy, create_account, giveaway, reversal
from tests.support.gifts import live_stream_id, send
from tests.support.invariants import all_violations, wait_until_settled
from tests.support.payouts import (
    earnings,
    eventually,
    make_eligible,
    wait_for_lifetime,
    wait_until_finished,
    withdraw,
)
from tests.support.stack import Stack, operator_nats

# A wallet event a killed payouts had fetched is handed out again after the consumer's ack_wait: short here.
SHORT_ACK_WAIT = {"COINSTREAM_PAYOUTS_SETTLEMENT_ACK_WAIT_SECONDS": "2"}


async def clawed_back(clients: Clients, creator_id: str, diamonds: int) -> payouts_pb2.Earnings:
    return await eventually(lambda: earnings(clients, creator_id), lambda e: e.clawed_back_diamonds >= diamonds)


async def test_a_fraud_ring_keeps_nothing_of_a_stolen_card(stack: Stack, clients: Clients) -> None:
    fraudster, mule = await create_account(clients), await create_account(clients)
    creator = await create_account(clients, prefix="creator")
    await make_eligible(clients, creator, destination="sandbox:ok-fraud")
    stolen = await buy(clients, fraudster, "coins_6607")  # 6,607 + 330 bonus, on a stolen card
    stream_id = await live_stream_id(clients, creator)
    await send(clients, fraudster, stream_id, "disco_ball", 3)  # 3,000 coins straight to the accomplice
    await clients.wallet.CreateGiveaway(giveaway(fraudster, [mule], 2000), metadata=SERVICE)
    await send(clients, mule, stream_id, "disco_ball", 2)  # the giveaway's coins, gifted on by its winner
    await wait_for_lifetime(clients, creator, 5000)
    paid = await wait_until_finished(clients, (await withdraw(clients, creator, 4000)).withdrawal_id)
    assert paid.status == payouts_pb2.WITHDRAWAL_STATUS_PAID  # the same day: no hold in development

    chargeback = await clients.wallet.ReversePurchase(reversal(stolen.purchase.purchase_id), metadata=ADMIN)

    assert (chargeback.clawed_back_coins, chargeback.removed_coins, chargeback.charged_coins) == (5000, 1937, 0)
    after = await clawed_back(clients, creator, 5000)
    # Before: all 5,000 diamonds kept. After: none; the 4,000 already paid out are the creator's debt.
    kept = after.lifetime_diamonds - after.clawed_back_diamonds
    assert (kept, after.available_diamonds, after.debt_diamonds) == (0, 0, 4000)
    await expect_error(withdraw(clients, creator, 2000), grpc.StatusCode.FAILED_PRECONDITION, "CREATOR_IN_DEBT")

    fan = await create_account(clients)
    await buy(clients, fan, "coins_6607")
    await send(clients, fan, stream_id, "disco_ball", 6)  # clean gifts: 4,000 repay the debt, 2,000 stay
    repaid = await eventually(lambda: earnings(clients, creator), lambda e: e.lifetime_diamonds == 11_000)
    assert (repaid.debt_diamonds, repaid.available_diamonds) == (0, 2000)
    assert (await withdraw(clients, creator, 2000)).diamonds == 2000
    statement = await clients.payouts.ListClawbacks(
        payouts_pb2.ListClawbacksRequest(creator_id=creator), metadata=SERVICE
    )
    assert sorted(c.coins for c in statement.clawbacks) == [2000, 3000]
    assert sum(c.debt_diamonds for c in statement.clawbacks) == 4000
    await money_identities_hold(stack)


async def test_a_frozen_wallet_account_cannot_withdraw_until_its_debt_is_covered(
    stack: Stack, clients: Clients
) -> None:
    """A creator who is also a buyer: a chargeback of coins spent on something else freezes the wallet account,
    which payouts learns from the wallet's events; the creator's own diamonds stay, but cannot leave meanwhile."""
    creator, fan = await create_account(clients, prefix="creator"), await create_account(clients)
    await make_eligible(clients, creator, destination="sandbox:ok-frozen")
    await buy(clients, fan, "coins_3303")
    await send(clients, fan, await live_stream_id(clients, creator), "disco_ball", 3)
    await wait_for_lifetime(clients, creator, 3000)
    bought = await buy(clients, creator, "coins_330")
    await clients.wallet.SpendCoins(
        w.SpendCoinsRequest(request_id=new_id("s"), account_id=creator, coins=300, reference="sticker"),
        metadata=SERVICE,
    )
    reversed_ = await clients.wallet.ReversePurchase(reversal(bought.purchase.purchase_id), metadata=ADMIN)
    assert reversed_.account_status == w.ACCOUNT_STATUS_FROZEN

    assert await eventually(lambda: frozen_in_payouts(stack, creator), lambda frozen: frozen is True) is True
    await expect_error(withdraw(clients, creator, 2000), grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_FROZEN")
    await buy(clients, creator, "coins_330")  # covers the 300 owed: active again
    assert await eventually(lambda: frozen_in_payouts(stack, creator), lambda frozen: frozen is False) is False
    assert (await withdraw(clients, creator, 2000)).diamonds == 2000
    found = await earnings(clients, creator)
    assert (found.clawed_back_diamonds, found.debt_diamonds) == (0, 0)  # both rules, nothing counted twice
    await money_identities_hold(stack)


async def test_reversals_made_while_payouts_is_down_are_applied_when_it_returns(stack: Stack, clients: Clients) -> None:
    buyer, creator = await create_account(clients), await create_account(clients, prefix="creator")
    bought = await buy(clients, buyer, "coins_1321")
    stream_id = await live_stream_id(clients, creator)
    stack.stop_service("payouts")
    try:
        # The gift's GiftSent and the reversal's event both wait in JetStream: either may be consumed first.
        await send(clients, buyer, stream_id, "disco_ball", 1)
        await clients.wallet.ReversePurchase(reversal(bought.purchase.purchase_id), metadata=ADMIN)
    finally:
        stack.start_service("payouts")
    after = await clawed_back(clients, creator, 1000)
    assert (after.lifetime_diamonds, after.clawed_back_diamonds, after.available_diamonds) == (1000, 1000, 0)
    told = await eventually(
        lambda: last_clawback_told(stack), lambda event: event is not None and event.creator_id == creator
    )
    assert told is not None and (told.coins, told.diamonds, told.from_available_diamonds) == (1000, 1000, 1000)
    await money_identities_hold(stack)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["payouts.before_clawback_commit", "payouts.after_wallet_event_commit"])
async def test_a_payouts_killed_while_applying_a_reversal_applies_it_once(
    stack: Stack, clients: Clients, point: str
) -> None:
    buyer, creator = await create_account(clients), await create_account(clients, prefix="creator")
    bought = await buy(clients, buyer, "coins_1321")
    await send(clients, buyer, await live_stream_id(clients, creator), "disco_ball", 1)
    await wait_for_lifetime(clients, creator, 1000)
    try:
        stack.restart_service("payouts", extra_env={**SHORT_ACK_WAIT, "COINSTREAM_FAULT_POINTS": point})
        await clients.wallet.ReversePurchase(reversal(bought.purchase.purchase_id), metadata=ADMIN)
        assert stack.wait_exit("payouts") != 0
        stack.start_service("payouts", extra_env=SHORT_ACK_WAIT)
        after = await clawed_back(clients, creator, 1000)
        assert (after.clawed_back_diamonds, after.available_diamonds) == (1000, 0)
        assert await clawback_rows(stack, creator) == 1
    finally:
        stack.restart_service("payouts")
    await money_identities_hold(stack)


@pytest.mark.slow
async def test_a_wallet_killed_after_publishing_a_reversal_publishes_it_again_and_payouts_applies_it_once(
    stack: Stack, clients: Clients
) -> None:
    buyer, creator = await create_account(clients), await create_account(clients, prefix="creator")
    bought = await buy(clients, buyer, "coins_1321")
    await send(clients, buyer, await live_stream_id(clients, creator), "disco_ball", 1)
    await wait_for_lifetime(clients, creator, 1000)
    try:
        stack.restart_service("wallet", extra_env={"COINSTREAM_FAULT_POINTS": "wallet.after_events_published"})
        await clients.wallet.ReversePurchase(reversal(bought.purchase.purchase_id), metadata=ADMIN)
        assert stack.wait_exit("wallet") != 0
    finally:
        stack.restart_service("wallet")
    await clawed_back(clients, creator, 1000)
    assert await eventually(lambda: outbox_rows(stack), lambda rows: rows == 0) == 0  # published again, deleted
    assert (await earnings(clients, creator)).clawed_back_diamonds == 1000
    assert await clawback_rows(stack, creator) == 1
    await money_identities_hold(stack)


async def frozen_in_payouts(stack: Stack, account_id: str) -> bool | None:
    """The wallet account's status as payouts learnt it from the wallet's events (None: no event yet)."""
    conn = await asyncpg.connect(stack.database_url("payouts"))
    try:
        frozen: bool | None = await conn.fetchval(
            "SELECT frozen FROM wallet_account_status WHERE account_id = $1", account_id
        )
        return frozen
    finally:
        await conn.close()


async def last_clawback_told(stack: Stack) -> events_pb2.DiamondsClawedBack | None:
    """The newest DiamondsClawedBack in stream PAYOUTS, what other backends read."""
    nc = await operator_nats(stack.nats)
    try:
        message = await nc.jetstream().get_last_msg(PAYOUTS_STREAM, DIAMONDS_CLAWED_BACK_SUBJECT)
    except nats.js.errors.NotFoundError:
        return None
    finally:
        await nc.close()
    return events_pb2.DiamondsClawedBack.FromString(message.data or b"")


@pytest.mark.slow
async def test_two_payouts_replicas_apply_concurrent_reversals_each_once(stack: Stack, clients: Clients) -> None:
    creator = await create_account(clients, prefix="creator")
    stream_id = await live_stream_id(clients, creator)
    purchases = []
    for _ in range(6):
        buyer = await create_account(clients)
        purchases.append((await buy(clients, buyer, "coins_1321")).purchase.purchase_id)
        await send(clients, buyer, stream_id, "disco_ball", 1)
    await wait_for_lifetime(clients, creator, 6000)
    replica = await asyncio.to_thread(stack.start_replica, "payouts", SHORT_ACK_WAIT)
    try:
        await asyncio.gather(
            *(clients.wallet.ReversePurchase(reversal(purchase_id), metadata=ADMIN) for purchase_id in purchases)
        )
        after = await clawed_back(clients, creator, 6000)
        assert (after.clawed_back_diamonds, after.available_diamonds, after.debt_diamonds) == (6000, 0, 0)
        assert await clawback_rows(stack, creator) == 6
    finally:
        if replica.process is not None:
            await asyncio.to_thread(stop_process, replica.process)
    await money_identities_hold(stack)


async def clawback_rows(stack: Stack, creator_id: str) -> int:
    conn = await asyncpg.connect(stack.database_url("payouts"))
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM clawbacks WHERE creator_id = $1", creator_id)
        return count
    finally:
        await conn.close()


async def outbox_rows(stack: Stack) -> int:
    conn = await asyncpg.connect(stack.database_url("wallet"))
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM wallet_outbox")
        return count
    finally:
        await conn.close()


async def money_identities_hold(stack: Stack) -> None:
    await wait_until_settled(stack)
    assert await all_violations(stack) == []
