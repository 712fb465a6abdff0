"""kill -9 of a payouts replica paying through Stripe Connect right after the transfer was made, before its answer was
recorded: the withdrawal was committed SUBMITTED before the call, so the next replica asks Stripe by the withdrawal id
and records the one transfer, never making a second. (A module of its own: no other Stripe replica may take the
withdrawal before the crash.)"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest
from coinstream.payouts.v1 import payouts_pb2 as S
from coinstream.payouts.v1 import payouts_pb2_grpc

from coinstream.testing.servers import stop_process
from tests.support.clients import SERVICE, Clients, new_id
from tests.support.payouts import assert_ledger_consistent, earnings, eventually, fetch, fund, make_eligible
from tests.support.rails.stripe_connect import FakeStripe
from tests.support.stack import Stack

pytestmark = pytest.mark.slow


async def test_a_crash_after_the_transfer_never_pays_twice(stack: Stack, clients: Clients, tmp_path: Path) -> None:
    fake = await FakeStripe().start()
    (tmp_path / "key").write_text(fake.secret_key)
    (tmp_path / "whsec").write_text(fake.webhook_secret)
    env = {
        "COINSTREAM_PAYOUT_PROVIDER": "stripe_connect",
        "COINSTREAM_STRIPE_CONNECT_SECRET_KEY_FILE": str(tmp_path / "key"),
        "COINSTREAM_STRIPE_CONNECT_WEBHOOK_SECRET_FILE": str(tmp_path / "whsec"),
        "COINSTREAM_STRIPE_CONNECT_API_BASE": fake.url,
        "COINSTREAM_PAYOUTS_PROVIDER_TIMEOUT_SECONDS": "1",
        "COINSTREAM_PAYOUTS_WORKER_INTERVAL_SECONDS": "0.3",
    }
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id, destination=f"acct_crash{secrets.token_hex(6)}")
    await fund(clients, creator_id, 6000)
    crashing = await asyncio.to_thread(
        stack.start_replica, "payouts", {**env, "COINSTREAM_FAULT_POINTS": "payouts.after_payout_submitted"}
    )
    try:
        async with stack.aio_channel(crashing.address) as channel:
            request = S.RequestWithdrawalRequest(request_id=new_id("req"), creator_id=creator_id, diamonds=4000)
            reply = await payouts_pb2_grpc.PayoutServiceStub(channel).RequestWithdrawal(request, metadata=SERVICE)
        withdrawal_id = reply.withdrawal.withdrawal_id
        assert crashing.process is not None
        assert await asyncio.to_thread(crashing.process.wait, 30) != 0
        # Stripe made the transfer; the crash lost its answer, not the record that it was handed over.
        [row] = await fetch(
            stack, "SELECT status, provider_reference FROM withdrawals WHERE withdrawal_id = $1", withdrawal_id
        )
        assert (row["status"], row["provider_reference"]) == ("submitted", None)
        assert fake.transfers_per_key[withdrawal_id] == 1

        recovering = await asyncio.to_thread(stack.start_replica, "payouts", env)
        try:
            [row] = await eventually(
                lambda: fetch(
                    stack, "SELECT status, provider_reference FROM withdrawals WHERE withdrawal_id = $1", withdrawal_id
                ),
                lambda rows: rows[0]["status"] != "submitted",
            )
            assert (row["status"], row["provider_reference"]) == ("paid", fake.transfer_of(withdrawal_id)["id"])
        finally:
            if recovering.process is not None:
                await asyncio.to_thread(stop_process, recovering.process)
        assert fake.transfers_per_key[withdrawal_id] == 1
        assert len(fake.transfers) == 1
        found = await earnings(clients, creator_id)
        assert (found.available_diamonds, found.reserved_diamonds) == (2000, 0)
        await assert_ledger_consistent(stack)
    finally:
        if crashing.process is not None and crashing.process.poll() is None:
            await asyncio.to_thread(stop_process, crashing.process)
        await fake.stop()
