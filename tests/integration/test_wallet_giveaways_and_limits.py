"""Creator giveaways and self-set spending limits against the real wallet: every winner paid with provenance or
nothing moved, refusals, a thousand winners in one transaction; limits over 24 hours, raised late and lowered at
once, set by the owner only, never passed by concurrent spends; giveaways and spends crossing without deadlock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from coinstream.wallet.v1 import wallet_pb2 as w

from tests.support.clients import ADMIN, SERVICE, Clients, auth, new_id
from tests.support.errors import error_reason, expect_error, violated_fields
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
from tests.support.stack import Stack

# --- giveaways ------------------------------------------------------------------------------------------------


async def test_giveaway_pays_every_winner_and_carries_provenance(clients: Clients) -> None:
    creator = await create_account(clients, prefix="creator")
    winners = [await create_account(clients) for _ in range(3)]
    await buy(clients, creator, "coins_1321")  # 1,321 paid + 66 bonus
    request = giveaway(creator, winners, 30)
    reply = await clients.wallet.CreateGiveaway(request, metadata=auth(creator))
    assert reply.giveaway.giveaway_id and reply.giveaway.total_coins == 90
    assert list(reply.giveaway.winner_ids) == winners
    assert reply.balance == balance_of(creator, 1297, 0)  # 66 bonus first, then 24 paid
    assert await clients.wallet.CreateGiveaway(request, metadata=auth(creator)) == reply

    assert [await wallet_balance(clients, winner) for winner in winners] == [
        balance_of(winners[0], 0, 30),
        balance_of(winners[1], 0, 30),
        balance_of(winners[2], 24, 6),
    ]
    sent = (await transactions(clients, creator))[0]
    assert (sent.kind, sent.coins_delta, sent.paid_coins_delta, sent.bonus_coins_delta, sent.reference) == (
        w.TRANSACTION_KIND_GIVEAWAY_SENT,
        -90,
        -24,
        -66,
        reply.giveaway.giveaway_id,
    )
    received = (await transactions(clients, winners[2]))[0]
    assert (received.kind, received.coins_delta, received.balance_after) == (
        w.TRANSACTION_KIND_GIVEAWAY_RECEIVED,
        30,
        30,
    )


async def test_giveaway_with_one_ineligible_winner_moves_nothing(clients: Clients) -> None:
    creator = await create_account(clients, prefix="creator")
    eligible = [await create_account(clients) for _ in range(2)]
    minor = await create_account(clients, adult_verified=False)
    frozen = await create_account(clients)
    frozen_purchase = await buy(clients, frozen, "coins_65")
    await spend(clients, frozen, 60)
    await clients.wallet.ReversePurchase(reversal(frozen_purchase.purchase.purchase_id), metadata=ADMIN)
    await buy(clients, creator, "coins_660")

    for odd_one in (minor, new_id("nobody"), frozen):
        error = await expect_error(
            clients.wallet.CreateGiveaway(giveaway(creator, [*eligible, odd_one], 10), metadata=SERVICE),
            grpc.StatusCode.FAILED_PRECONDITION,
            "ACCOUNT_NOT_ELIGIBLE",
        )
        assert odd_one in (error.details() or "")
    assert await wallet_balance(clients, creator) == balance_of(creator, 660, 0)
    assert [await wallet_balance(clients, e) for e in eligible] == [balance_of(e, 0, 0) for e in eligible]


async def test_giveaway_refusals(clients: Clients) -> None:
    creator = await create_account(clients, prefix="creator")
    winner = await create_account(clients)
    await buy(clients, creator, "coins_65")
    await expect_error(
        clients.wallet.CreateGiveaway(giveaway(creator, [winner], 66), metadata=SERVICE),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INSUFFICIENT_COINS",
    )
    await expect_error(
        clients.wallet.CreateGiveaway(giveaway(creator, [winner], 1), metadata=auth(winner)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    minor = await create_account(clients, adult_verified=False)
    await expect_error(
        clients.wallet.CreateGiveaway(giveaway(minor, [winner], 1), metadata=SERVICE),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ACCOUNT_NOT_ELIGIBLE",
    )
    assert await wallet_balance(clients, creator) == balance_of(creator, 65, 0)


@pytest.mark.parametrize(
    ("winners", "coins_per_winner", "violations"),
    [
        ([], 1, {"winner_ids"}),
        ([f"w{i}" for i in range(1001)], 1, {"winner_ids"}),
        # A thousand bad winners: only the first violations, or the status outgrows gRPC's metadata limit (fuzzer).
        ([f"bad id {i}" for i in range(1000)], 1, {f"winner_ids[{i}]" for i in range(20)}),
        (["a", "b", "a"], 1, {"winner_ids[2]"}),
        (["a", "creator-x", "bad id"], 1, {"winner_ids[1]", "winner_ids[2]"}),
        (["a"], 0, {"coins_per_winner"}),
        (["a"], 1_000_001, {"coins_per_winner"}),
    ],
)
async def test_bad_giveaways_are_invalid_argument(
    clients: Clients, winners: list[str], coins_per_winner: int, violations: set[str]
) -> None:
    error = await expect_error(
        clients.wallet.CreateGiveaway(giveaway("creator-x", winners, coins_per_winner), metadata=SERVICE),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violated_fields(error) == violations


async def test_giveaway_to_a_thousand_winners_is_one_transaction(stack: Stack, clients: Clients) -> None:
    creator = await create_account(clients, prefix="creator")
    winners: list[str] = []
    for _ in range(10):
        winners += await asyncio.gather(*(create_account(clients) for _ in range(100)))
    await buy(clients, creator, "coins_1321")
    reply = await clients.wallet.CreateGiveaway(giveaway(creator, winners, 1), metadata=SERVICE)
    assert reply.giveaway.total_coins == 1000 and reply.balance == balance_of(creator, 387, 0)
    assert await wallet_balance(clients, winners[65]) == balance_of(winners[65], 0, 1)
    assert await wallet_balance(clients, winners[66]) == balance_of(winners[66], 1, 0)
    conn = await asyncpg.connect(stack.database_url("wallet"))
    try:
        postings = await conn.fetchval(
            "SELECT count(*) FROM postings AS p JOIN transactions AS t USING (transaction_id) WHERE t.reference = $1",
            reply.giveaway.giveaway_id,
        )
    finally:
        await conn.close()
    assert postings == 1002  # creator's two buckets and one bucket per winner


# --- spending limits ------------------------------------------------------------------------------------------


async def set_limit(clients: Clients, account_id: str, daily_coins: int) -> w.Account:
    request = w.SetSpendingLimitRequest(request_id=new_id("limit"), account_id=account_id, daily_coins=daily_coins)
    return (await clients.wallet.SetSpendingLimit(request, metadata=auth(account_id))).account


async def test_spending_limit_caps_spends_and_giveaways_over_24_hours(clients: Clients) -> None:
    account_id = await create_account(clients)
    winner = await create_account(clients)
    await buy(clients, account_id, "coins_1321")
    account = await set_limit(clients, account_id, 100)
    assert account.spending_limit == w.SpendingLimit(daily_coins=100)
    await spend(clients, account_id, 60)
    await expect_error(
        clients.wallet.SpendCoins(
            w.SpendCoinsRequest(request_id=new_id("s"), account_id=account_id, coins=41), metadata=SERVICE
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "SPENDING_LIMIT_REACHED",
    )
    await clients.wallet.CreateGiveaway(giveaway(account_id, [winner], 30), metadata=auth(account_id))
    await expect_error(
        clients.wallet.CreateGiveaway(giveaway(account_id, [winner], 11), metadata=auth(account_id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "SPENDING_LIMIT_REACHED",
    )
    await spend(clients, account_id, 10)
    assert (await wallet_balance(clients, account_id)).coins == 1287


async def test_raising_a_limit_waits_24_hours_and_lowering_is_immediate(stack: Stack, clients: Clients) -> None:
    account_id = await create_account(clients)
    await buy(clients, account_id, "coins_1321")
    await set_limit(clients, account_id, 100)
    raised = await set_limit(clients, account_id, 500)
    assert raised.spending_limit.daily_coins == 100
    assert raised.spending_limit.pending.daily_coins == 500
    effective_at = raised.spending_limit.pending.effective_at.ToDatetime(tzinfo=UTC)
    assert abs(effective_at - (datetime.now(UTC) + timedelta(hours=24))) < timedelta(minutes=1)
    await spend(clients, account_id, 100)
    await expect_error(
        clients.wallet.SpendCoins(
            w.SpendCoinsRequest(request_id=new_id("s"), account_id=account_id, coins=1), metadata=SERVICE
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "SPENDING_LIMIT_REACHED",
    )
    # A day passes (the pending change is backdated rather than waited for).
    conn = await asyncpg.connect(stack.database_url("wallet"))
    try:
        await conn.execute(
            "UPDATE accounts SET pending_limit_effective_at = now() - interval '1 second' WHERE account_id = $1",
            account_id,
        )
    finally:
        await conn.close()
    fetched = await clients.wallet.GetAccount(w.GetAccountRequest(account_id=account_id), metadata=auth(account_id))
    assert fetched.account.spending_limit == w.SpendingLimit(daily_coins=500)
    await spend(clients, account_id, 400)

    removal = await set_limit(clients, account_id, 0)
    assert removal.spending_limit.daily_coins == 500 and removal.spending_limit.HasField("pending")
    assert removal.spending_limit.pending.daily_coins == 0
    lowered = await set_limit(clients, account_id, 50)  # immediate, and cancels the pending removal
    assert lowered.spending_limit == w.SpendingLimit(daily_coins=50)


async def test_spending_limit_is_set_by_the_owner_only(clients: Clients) -> None:
    account_id = await create_account(clients)
    request = w.SetSpendingLimitRequest(request_id=new_id("limit"), account_id=account_id, daily_coins=10)
    for metadata in (SERVICE, ADMIN, auth("someone-else")):
        await expect_error(
            clients.wallet.SetSpendingLimit(request, metadata=metadata), grpc.StatusCode.PERMISSION_DENIED
        )
    bad = w.SetSpendingLimitRequest(request_id=new_id("limit"), account_id=account_id, daily_coins=-1)
    error = await expect_error(
        clients.wallet.SetSpendingLimit(bad, metadata=auth(account_id)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert violated_fields(error) == {"daily_coins"}
    first = await clients.wallet.SetSpendingLimit(request, metadata=auth(account_id))
    assert await clients.wallet.SetSpendingLimit(request, metadata=auth(account_id)) == first


async def test_concurrent_spends_never_pass_the_limit(clients: Clients) -> None:
    account_id = await create_account(clients)
    await buy(clients, account_id, "coins_3303")
    await set_limit(clients, account_id, 100)
    results = await asyncio.gather(
        *(
            clients.wallet.SpendCoins(
                w.SpendCoinsRequest(request_id=new_id("s"), account_id=account_id, coins=7), metadata=SERVICE
            )
            for _ in range(30)
        ),
        return_exceptions=True,
    )
    succeeded = [r for r in results if isinstance(r, w.SpendCoinsResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(succeeded) == 14 and len(refused) == 16  # 14 × 7 = 98 ≤ 100
    assert {error_reason(r) for r in refused} == {"SPENDING_LIMIT_REACHED"}
    assert (await wallet_balance(clients, account_id)).coins == 3468 - 98


async def test_concurrent_giveaways_and_spends_over_the_same_accounts_do_not_deadlock(clients: Clients) -> None:
    accounts = [await create_account(clients) for _ in range(4)]
    for account_id in accounts:
        await buy(clients, account_id, "coins_660")
    calls = []
    for round_ in range(5):
        for index, creator in enumerate(accounts):
            others = [a for a in accounts if a != creator]
            winners = others if (round_ + index) % 2 else list(reversed(others))
            calls.append(clients.wallet.CreateGiveaway(giveaway(creator, winners, 3), metadata=SERVICE))
            calls.append(spend(clients, creator, 2))
    await asyncio.gather(*calls)
    balances = [(await wallet_balance(clients, a)).coins for a in accounts]
    assert balances == [660 - 5 * (9 + 2) + 5 * 3 * 3] * 4
