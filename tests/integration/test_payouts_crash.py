"""kill -9 of the payouts service at its most delicate moments leaves nothing half-done: gifts committed but not
acked are redelivered and counted once; a payout submitted but not recorded is submitted again and paid once."""

from __future__ import annotations

import asyncpg
import pytest
from coinstream.payouts.v1 import payouts_pb2

from tests.support.clients import Clients, new_id
from tests.support.payouts import (
    assert_ledger_consistent,
    earnings,
    eventually,
    fund,
    gift_sent,
    make_eligible,
    publish,
    settlement_consumer_idle,
    wait_for_lifetime,
    wait_until_finished,
    withdraw,
)
from tests.support.stack import Stack

# Gifts published straight to JetStream while payouts crashes: on the synthetic stack (tests/conftest.py).
pytestmark = [pytest.mark.slow, pytest.mark.synthetic_events]

# JetStream hands unacked messages out again only after ack_wait (30 s by default); shorten it for these tests.
SHORT_ACK_WAIT = {"COINSTREAM_PAYOUTS_SETTLEMENT_ACK_WAIT_SECONDS": "2"}


async def fetch_value(stack: Stack, sql: str, *args: object) -> object:
    conn = await asyncpg.connect(stack.database_url("payouts"))
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def test_crash_between_settlement_commit_and_ack_counts_gifts_once(stack: Stack, clients: Clients) -> None:
    creator_id = new_id("creator")
    events = [gift_sent(creator_id, coins) for coins in (1, 5, 30, 100, 299, 500, 1000)]
    total = sum(event.coins for event in events)
    # Nothing else in flight, so the batch the crash point fires on is ours.
    assert await eventually(lambda: settlement_consumer_idle(stack), bool)
    try:
        stack.restart_service(
            "payouts", extra_env={**SHORT_ACK_WAIT, "COINSTREAM_FAULT_POINTS": "payouts.after_settlement_commit"}
        )
        await publish(stack, events)
        assert stack.wait_exit("payouts") != 0
        # The batch was committed before the crash, yet none of it was acked.
        settled_before_crash = await fetch_value(
            stack, "SELECT count(*) FROM diamond_credits WHERE creator_id = $1", creator_id
        )
        assert settled_before_crash >= 1

        stack.start_service("payouts", extra_env=SHORT_ACK_WAIT)
        await wait_for_lifetime(clients, creator_id, total)
        assert await eventually(lambda: settlement_consumer_idle(stack), bool), "redelivered gifts were not acked"
        found = await earnings(clients, creator_id)
        assert (found.available_diamonds, found.lifetime_diamonds) == (total, total)
        assert await fetch_value(
            stack, "SELECT count(*) FROM diamond_credits WHERE creator_id = $1", creator_id
        ) == len(events)
        await assert_ledger_consistent(stack)
    finally:
        stack.restart_service("payouts")


async def test_crash_after_payout_submission_pays_once(stack: Stack, clients: Clients) -> None:
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id, destination="sandbox:ok-crash")
    await fund(clients, creator_id, 6000)
    try:
        stack.restart_service("payouts", extra_env={"COINSTREAM_FAULT_POINTS": "payouts.after_payout_submitted"})
        withdrawal = await withdraw(clients, creator_id, 4000)
        assert stack.wait_exit("payouts") != 0
        # The provider took the payout, but the crash lost our record of it: the withdrawal is pending, unsubmitted.
        assert await fetch_value(
            stack,
            "SELECT provider_reference IS NULL AND status = 'pending' FROM withdrawals WHERE withdrawal_id = $1",
            withdrawal.withdrawal_id,
        )

        stack.start_service("payouts")
        paid = await wait_until_finished(clients, withdrawal.withdrawal_id)
        assert paid.status == payouts_pb2.WITHDRAWAL_STATUS_PAID
        found = await earnings(clients, creator_id)
        assert (found.available_diamonds, found.reserved_diamonds, found.lifetime_diamonds) == (2000, 0, 6000)
        assert (
            await fetch_value(
                stack,
                "SELECT count(*) FROM ledger_transactions WHERE reference = $1 AND kind = 'withdrawal_paid'",
                withdrawal.withdrawal_id,
            )
            == 1
        )
        await assert_ledger_consistent(stack)
    finally:
        stack.restart_service("payouts")
