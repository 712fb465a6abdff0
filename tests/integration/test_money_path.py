"""The whole money path across the three real services: coins → gifts → diamonds → cash, under concurrency,
followed each time by the money identities of tests/support/invariants.py."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from coinstream.gifts.v1 import gifts_pb2 as g
from coinstream.payouts.v1 import payouts_pb2 as p

from tests.support.clients import SERVICE, Clients, auth, new_id
from tests.support.errors import error_reason
from tests.support.factories import balance, buy, create_account
from tests.support.gifts import live_stream_id
from tests.support.invariants import all_violations
from tests.support.payouts import wait_for_diamonds
from tests.support.stack import Stack


def gift_request(sender_id: str, stream_id: str, gift_id: str, quantity: int = 1) -> g.SendGiftRequest:
    return g.SendGiftRequest(
        request_id=new_id("gift"), sender_id=sender_id, stream_id=stream_id, gift_id=gift_id, quantity=quantity
    )


async def earnings(clients: Clients, creator_id: str) -> p.Earnings:
    reply = await clients.payouts.GetEarnings(p.GetEarningsRequest(creator_id=creator_id), metadata=auth(creator_id))
    return reply.earnings


async def wait_for_withdrawal(clients: Clients, creator_id: str, withdrawal_id: str) -> p.Withdrawal:
    for _ in range(200):
        reply = await clients.payouts.GetWithdrawal(
            p.GetWithdrawalRequest(withdrawal_id=withdrawal_id), metadata=auth(creator_id)
        )
        if reply.withdrawal.status != p.WITHDRAWAL_STATUS_PENDING:
            return reply.withdrawal
        await asyncio.sleep(0.05)
    return reply.withdrawal


async def verified_creator(clients: Clients, destination_prefix: str) -> str:
    creator_id = await create_account(clients, prefix="creator")
    await clients.payouts.UpdateCreatorProfile(
        p.UpdateCreatorProfileRequest(
            request_id=new_id("profile"),
            creator_id=creator_id,
            kyc_verified=True,
            payout_destination=f"{destination_prefix}-{creator_id}",
        ),
        metadata=SERVICE,
    )
    return creator_id


async def assert_invariants(stack: Stack) -> None:
    violations = await all_violations(stack)
    assert violations == [], "\n".join(violations)


@pytest.mark.parametrize(
    ("destination", "final_status"),
    [("sandbox:ok", p.WITHDRAWAL_STATUS_PAID), ("sandbox:fail", p.WITHDRAWAL_STATUS_FAILED)],
    ids=["paid", "failed"],
)
async def test_purchase_to_withdrawal(stack: Stack, clients: Clients, destination: str, final_status: int) -> None:
    creator_id = await verified_creator(clients, destination)
    fan = await create_account(clients, prefix="fan")
    await buy(clients, fan, "coins_3303")  # 3,303 + 165 bonus = 3,468 coins
    stream_id = await live_stream_id(clients, creator_id)

    sent = [
        await clients.gifts.SendGift(gift_request(fan, stream_id, gift, qty), metadata=auth(fan))
        for gift, qty in (("corgi", 10), ("doughnut", 5), ("rose", 28))
    ]  # 2,990 + 150 + 28 = 3,168
    assert [s.gift.coins for s in sent] == [2990, 150, 28]
    assert sent[-1].sender_balance_coins == 300
    assert await balance(clients, fan) == 300

    summary = await clients.gifts.GetStreamSummary(g.GetStreamSummaryRequest(stream_id=stream_id), metadata=auth(fan))
    assert (summary.summary.total_coins, summary.summary.gift_count) == (3168, 3)
    assert [(t.account_id, t.coins) for t in summary.summary.top_gifters] == [(fan, 3168)]

    settled = await wait_for_diamonds(clients, creator_id, 3168)
    assert (settled.available_diamonds, settled.reserved_diamonds, settled.lifetime_diamonds) == (3168, 0, 3168)

    requested = await clients.payouts.RequestWithdrawal(
        p.RequestWithdrawalRequest(request_id=new_id("wd"), creator_id=creator_id, diamonds=2000),
        metadata=auth(creator_id),
    )
    assert requested.withdrawal.payout.amount_minor == 1000 and requested.withdrawal.payout.currency_code == "USD"
    reserved = await earnings(clients, creator_id)
    assert (reserved.available_diamonds, reserved.reserved_diamonds) in {(1168, 2000), (1168, 0), (3168, 0)}

    finished = await wait_for_withdrawal(clients, creator_id, requested.withdrawal.withdrawal_id)
    assert finished.status == final_status
    after = await earnings(clients, creator_id)
    expected_available = 1168 if final_status == p.WITHDRAWAL_STATUS_PAID else 3168
    assert (after.available_diamonds, after.reserved_diamonds, after.lifetime_diamonds) == (expected_available, 0, 3168)

    await clients.gifts.EndLiveStream(
        g.EndLiveStreamRequest(request_id=new_id("end"), stream_id=stream_id), metadata=auth(creator_id)
    )
    await assert_invariants(stack)


async def test_fifty_concurrent_gifts_against_a_short_balance(stack: Stack, clients: Clients) -> None:
    creator_id = await verified_creator(clients, "sandbox:ok")
    fan = await create_account(clients, prefix="fan")
    await buy(clients, fan, "coins_330")  # covers 11 doughnuts of 30 coins
    stream_id = await live_stream_id(clients, creator_id)

    results = await asyncio.gather(
        *(clients.gifts.SendGift(gift_request(fan, stream_id, "doughnut"), metadata=SERVICE) for _ in range(50)),
        return_exceptions=True,
    )
    sent = [r for r in results if isinstance(r, g.SendGiftResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(sent) == 11 and len(refused) == 39, [
        r for r in results if not isinstance(r, (g.SendGiftResponse, grpc.aio.AioRpcError))
    ]
    assert {(r.code(), error_reason(r)) for r in refused} == {
        (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_COINS")
    }
    assert sorted(s.sender_balance_coins for s in sent) == list(range(0, 330, 30))
    assert await balance(clients, fan) == 0

    settled = await wait_for_diamonds(clients, creator_id, 330)
    assert (settled.available_diamonds, settled.lifetime_diamonds) == (330, 330)
    summary = await clients.gifts.GetStreamSummary(g.GetStreamSummaryRequest(stream_id=stream_id), metadata=SERVICE)
    assert (summary.summary.total_coins, summary.summary.gift_count) == (330, 11)
    await assert_invariants(stack)


async def test_many_fans_many_gifts_concurrently(stack: Stack, clients: Clients) -> None:
    creator_id = await verified_creator(clients, "sandbox:ok")
    stream_id = await live_stream_id(clients, creator_id)
    fans = [await create_account(clients, prefix="fan") for _ in range(5)]
    await asyncio.gather(*(buy(clients, fan, "coins_660") for fan in fans))

    requests = [
        gift_request(fan, stream_id, gift)
        for fan in fans
        for gift in ("rose", "finger_heart", "doughnut", "hand_hearts") * 3
    ]
    # Each request also retried concurrently: duplicates must not charge twice.
    results = await asyncio.gather(*(clients.gifts.SendGift(r, metadata=SERVICE) for r in requests + requests))
    assert results[: len(requests)] == results[len(requests) :]
    per_fan = (1 + 5 + 30 + 100) * 3
    assert [await balance(clients, fan) for fan in fans] == [660 - per_fan] * 5

    settled = await wait_for_diamonds(clients, creator_id, per_fan * 5)
    assert settled.lifetime_diamonds == per_fan * 5
    await assert_invariants(stack)
