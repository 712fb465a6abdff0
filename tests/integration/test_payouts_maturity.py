"""Gift diamonds in payouts over real gRPC, PostgreSQL and NATS: the maturity hold (pending until it ends, matured by
a withdrawal, across restarts and races, changed only by maturing once) and exact rounding at a fractional rate; the
payouts ledger consistent after each."""

from __future__ import annotations

import asyncio
import random

import asyncpg
import grpc
import pytest
from coinstream.payouts.v1 import payouts_pb2

from tests.support.clients import SERVICE, Clients, new_id
from tests.support.errors import error_reason, refused
from tests.support.payouts import (
    assert_ledger_consistent,
    cancel,
    earnings,
    eventually,
    fetch,
    gift_sent,
    make_eligible,
    publish,
    wait_for_lifetime,
    withdraw,
)
from tests.support.stack import Stack

# Held gifts published straight to JetStream with their paid/bonus split: on the synthetic stack.
pytestmark = pytest.mark.synthetic_events

HOLD_SECONDS = 2


# --- maturity hold ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_held_diamonds_are_pending_until_the_hold_ends(stack: Stack, clients: Clients) -> None:
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id, destination="sandbox:hold-matured")
    try:
        stack.restart_service("payouts", {"COINSTREAM_DIAMOND_HOLD_SECONDS": str(HOLD_SECONDS)})
        await publish(stack, [gift_sent(creator_id, 3000, paid_coins=2500, bonus_coins=500)])
        held = await wait_for_lifetime(clients, creator_id, 3000)
        assert (held.pending_diamonds, held.available_diamonds, held.lifetime_diamonds) == (3000, 0, 3000)
        # Pending diamonds cannot be withdrawn.
        error = await refused(
            clients.payouts.RequestWithdrawal(
                payouts_pb2.RequestWithdrawalRequest(request_id=new_id("req"), creator_id=creator_id, diamonds=2000),
                metadata=SERVICE,
            )
        )
        assert (error.code(), error_reason(error)) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_DIAMONDS")
        # Maturing is the only change a credit allows, and only with its amounts untouched.
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await fetch(
                stack,
                "UPDATE diamond_credits SET diamonds = diamonds + 1, matured_at = now(),"
                " maturity_transaction_id = transaction_id WHERE creator_id = $1",
                creator_id,
            )
        await assert_ledger_consistent(stack)

        matured = await eventually(
            lambda: earnings(clients, creator_id), lambda found: found.pending_diamonds == 0, seconds=HOLD_SECONDS + 10
        )
        assert (matured.pending_diamonds, matured.available_diamonds, matured.lifetime_diamonds) == (0, 3000, 3000)
        [credit] = await fetch(
            stack,
            "SELECT available_at - created_at AS hold, matured_at >= available_at AS on_time, maturity_transaction_id,"
            " paid_coins, bonus_coins FROM diamond_credits WHERE creator_id = $1",
            creator_id,
        )
        assert credit["hold"].total_seconds() == HOLD_SECONDS
        assert credit["on_time"] and credit["maturity_transaction_id"] is not None
        assert (credit["paid_coins"], credit["bonus_coins"]) == (2500, 500)
        withdrawal = await withdraw(clients, creator_id, 2000)
        assert withdrawal.status == payouts_pb2.WITHDRAWAL_STATUS_PENDING
        await cancel(clients, withdrawal.withdrawal_id)
        await assert_ledger_consistent(stack)
    finally:
        stack.restart_service("payouts")


@pytest.mark.slow
async def test_withdrawal_matures_its_own_due_credits(stack: Stack, clients: Clients) -> None:
    """With the maturity worker asleep, a withdrawal after the hold still finds its diamonds available."""
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id, destination="sandbox:hold-lazy")
    try:
        stack.restart_service(
            "payouts",
            {
                "COINSTREAM_DIAMOND_HOLD_SECONDS": str(HOLD_SECONDS),
                "COINSTREAM_PAYOUTS_MATURITY_INTERVAL_SECONDS": "3600",
            },
        )
        await publish(stack, [gift_sent(creator_id, coins) for coins in (1000, 2000)])
        await wait_for_lifetime(clients, creator_id, 3000)
        await asyncio.sleep(HOLD_SECONDS + 0.5)
        assert (await earnings(clients, creator_id)).pending_diamonds == 3000  # nobody moved them yet
        withdrawal = await withdraw(clients, creator_id, 2000)
        found = await earnings(clients, creator_id)
        assert (found.pending_diamonds, found.available_diamonds, found.reserved_diamonds) == (0, 1000, 2000)
        await cancel(clients, withdrawal.withdrawal_id)
        await assert_ledger_consistent(stack)
    finally:
        stack.restart_service("payouts")


@pytest.mark.slow
async def test_credits_held_before_a_restart_without_hold_still_mature(stack: Stack, clients: Clients) -> None:
    creator_id = new_id("creator")
    try:
        stack.restart_service("payouts", {"COINSTREAM_DIAMOND_HOLD_SECONDS": str(HOLD_SECONDS)})
        await publish(stack, [gift_sent(creator_id, 500)])
        await wait_for_lifetime(clients, creator_id, 500)
    finally:
        stack.restart_service("payouts")
    await publish(stack, [gift_sent(creator_id, 100)])  # no hold any more: available at once
    found = await eventually(
        lambda: earnings(clients, creator_id), lambda found: found.available_diamonds == 600, seconds=HOLD_SECONDS + 10
    )
    assert (found.pending_diamonds, found.available_diamonds, found.lifetime_diamonds) == (0, 600, 600)
    await assert_ledger_consistent(stack)


@pytest.mark.slow
async def test_maturity_races_settlement_and_withdrawals_without_losing_a_diamond(
    stack: Stack, clients: Clients
) -> None:
    """Many creators, gifts still arriving while earlier ones mature, and withdrawals maturing their own credits
    at the same time as the maturity worker: every credit matures once and the ledger stays exact."""
    creators = [new_id("creator") for _ in range(12)]
    for creator_id in creators:
        await make_eligible(clients, creator_id, destination="sandbox:hold-race")
    try:
        stack.restart_service("payouts", {"COINSTREAM_DIAMOND_HOLD_SECONDS": "1"})
        for _ in range(4):
            await publish(stack, [gift_sent(creator_id, 1000) for creator_id in creators for _ in range(3)])
            await asyncio.sleep(0.7)
        for creator_id in creators:
            await wait_for_lifetime(clients, creator_id, 12_000)
        await asyncio.sleep(1.0)
        outcomes = await asyncio.gather(
            *(withdraw(clients, creator_id, 2000) for creator_id in creators for _ in range(2)),
            publish(stack, [gift_sent(creator_id, 500) for creator_id in creators]),
            return_exceptions=True,
        )
        assert [o for o in outcomes if isinstance(o, BaseException)] == []
        for creator_id in creators:
            found = await eventually(
                lambda creator_id=creator_id: earnings(clients, creator_id),
                lambda found: found.pending_diamonds == 0 and found.lifetime_diamonds == 12_500,
            )
            assert (found.available_diamonds, found.reserved_diamonds) == (8500, 4000)
        await assert_ledger_consistent(stack)
    finally:
        stack.restart_service("payouts")
    for withdrawal in [o for o in outcomes if isinstance(o, payouts_pb2.Withdrawal)]:
        await cancel(clients, withdrawal.withdrawal_id)
    await assert_ledger_consistent(stack)


async def test_database_lets_a_credit_change_only_by_maturing_once(stack: Stack, clients: Clients) -> None:
    creator_id = new_id("creator")
    event = gift_sent(creator_id, 10)
    await publish(stack, [event])
    await wait_for_lifetime(clients, creator_id, 10)
    for edit in (
        "UPDATE diamond_credits SET diamonds = diamonds + 1 WHERE gift_transaction_id = $1",
        # Settled without a hold, so it matured when it was made.
        "UPDATE diamond_credits SET matured_at = now(), maturity_transaction_id = transaction_id"
        " WHERE gift_transaction_id = $1",
        "DELETE FROM diamond_credits WHERE gift_transaction_id = $1",
    ):
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await fetch(stack, edit, event.gift_transaction_id)
    assert (await earnings(clients, creator_id)).lifetime_diamonds == 10


# --- exact rounding ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_seven_tenths_over_a_thousand_random_gifts_is_exact(stack: Stack, clients: Clients) -> None:
    rng = random.Random(20261125)
    creators = [new_id("creator") for _ in range(2)]
    events = [gift_sent(rng.choice(creators), rng.choice((1, 3, 5, 7, 30, 99, 100, 299))) for _ in range(1000)]
    coins = {creator_id: sum(e.coins for e in events if e.recipient_id == creator_id) for creator_id in creators}
    try:
        stack.restart_service(
            "payouts", {"COINSTREAM_PAYOUTS_RATE_NUMERATOR": "7", "COINSTREAM_PAYOUTS_RATE_DENOMINATOR": "10"}
        )
        rates = (await clients.payouts.GetRates(payouts_pb2.GetRatesRequest(), metadata=SERVICE)).rates
        assert (rates.diamonds_per_coin_numerator, rates.diamonds_per_coin_denominator) == (7, 10)
        # Several publishes, so the gifts settle in several batches and the carry crosses batch boundaries.
        for start in range(0, len(events), 250):
            await publish(stack, events[start : start + 250])

        async def credited() -> int:
            [row] = await fetch(
                stack, "SELECT count(*) FROM diamond_credits WHERE creator_id = ANY($1::text[])", creators
            )
            return int(row["count"])

        assert await eventually(credited, lambda count: count == 1000) == 1000
        for creator_id in creators:
            found = await earnings(clients, creator_id)
            exact = coins[creator_id] * 7 // 10
            assert (found.lifetime_diamonds, found.available_diamonds) == (exact, exact)
            [carry] = await fetch(
                stack,
                "SELECT remainder FROM settlement_carries WHERE creator_id = $1 AND rate_version = $2",
                creator_id,
                rates.rate_version,
            )
            assert carry["remainder"] == coins[creator_id] * 7 % 10
        [batches] = await fetch(
            stack,
            "SELECT count(DISTINCT transaction_id) FROM diamond_credits WHERE creator_id = ANY($1::text[])",
            creators,
        )
        assert batches["count"] > 1
        await assert_ledger_consistent(stack)
    finally:
        stack.restart_service("payouts")
    rates = (await clients.payouts.GetRates(payouts_pb2.GetRatesRequest(), metadata=SERVICE)).rates
    assert (rates.diamonds_per_coin_numerator, rates.diamonds_per_coin_denominator) == (1, 1)
