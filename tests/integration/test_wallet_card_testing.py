"""Card testing against the real wallet: past a number of declined payments in 24 h (sandbox tokens `tok_declined…`),
PurchaseCoins is refused RESOURCE_EXHAUSTED RATE_LIMITED with a RetryInfo, per account whoever asks for it, and per
caller on a wallet process started with a per-caller limit (there is none by default); a refusal records nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable

import asyncpg
import grpc
import pytest
import pytest_asyncio
from coinstream.wallet.v1 import wallet_pb2 as w
from coinstream.wallet.v1 import wallet_pb2_grpc

from coinstream.testing.servers import stop_process
from coinstream.testing.stack import ServiceProcess
from tests.support.clients import SERVICE, SERVICE_SUBJECT, Clients, auth, new_id, stored_key
from tests.support.errors import expect_error, retry_delay_seconds
from tests.support.factories import balance, create_account
from tests.support.stack import Stack

PER_ACCOUNT = 5  # the default: tests/support/stack.py leaves it
PER_CALLER = 3  # on the replica below only
DAY_SECONDS = 24 * 3600


def purchase(account_id: str, payment_token: str = "tok_ok_cards") -> w.PurchaseCoinsRequest:
    return w.PurchaseCoinsRequest(
        request_id=new_id("buy"), account_id=account_id, package_id="coins_65", payment_token=payment_token
    )


def declined_purchase(account_id: str) -> w.PurchaseCoinsRequest:
    return purchase(account_id, "tok_declined_cards")


async def expect_declined(call: Awaitable[object]) -> None:
    await expect_error(call, grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_DECLINED")


async def expect_rate_limited(call: Awaitable[object]) -> float:
    """The refusal's RetryInfo delay, in seconds."""
    refused = await expect_error(call, grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    delay = retry_delay_seconds(refused)
    assert delay is not None, "a RATE_LIMITED refusal says when to retry"
    return delay


async def test_an_account_past_its_declines_is_refused_whoever_asks(clients: Clients) -> None:
    account_id = await create_account(clients)
    owner = auth(account_id)
    for index in range(PER_ACCOUNT):  # the owner and a backend in turn: the account's declines add up
        caller = (owner, SERVICE)[index % 2]
        await expect_declined(clients.wallet.PurchaseCoins(declined_purchase(account_id), metadata=caller))

    for caller in (owner, SERVICE, auth(new_id("another-backend"), "service")):
        delay = await expect_rate_limited(clients.wallet.PurchaseCoins(purchase(account_id), metadata=caller))
        # Until the first decline, a few seconds ago, leaves the 24 h window.
        assert DAY_SECONDS - 120 < delay <= DAY_SECONDS

    assert await balance(clients, account_id) == 0
    other = await create_account(clients)  # the backend itself is not held back
    assert (await clients.wallet.PurchaseCoins(purchase(other), metadata=SERVICE)).balance.coins == 65


async def test_a_refusal_records_nothing_and_earlier_requests_still_replay(stack: Stack, clients: Clients) -> None:
    account_id = await create_account(clients)
    declined = [declined_purchase(account_id) for _ in range(PER_ACCOUNT)]
    for request in declined:
        await expect_declined(clients.wallet.PurchaseCoins(request, metadata=SERVICE))
    refused = purchase(account_id)

    for _ in range(2):  # the same request_id again: refused again, not answered from a kept key
        await expect_rate_limited(clients.wallet.PurchaseCoins(refused, metadata=SERVICE))
    await expect_declined(clients.wallet.PurchaseCoins(declined[0], metadata=SERVICE))  # its kept outcome

    conn = await asyncpg.connect(stack.database_url("wallet"))
    try:
        purchases = await conn.fetch("SELECT caller, status FROM purchases WHERE account_id = $1", account_id)
        kept = await conn.fetchval(
            "SELECT count(*) FROM idempotency_keys WHERE request_id = $1", stored_key(refused.request_id)
        )
    finally:
        await conn.close()
    assert [(row["caller"], row["status"]) for row in purchases] == [(SERVICE_SUBJECT, "declined")] * PER_ACCOUNT
    assert kept == 0
    assert await balance(clients, account_id) == 0


@pytest_asyncio.fixture(scope="module")
async def limited_wallet(stack: Stack) -> AsyncIterator[wallet_pb2_grpc.WalletServiceStub]:
    """A wallet process with a per-caller limit, on the suite's database: a replica of the suite's wallet."""
    settings = {"COINSTREAM_WALLET_MAX_DECLINES_PER_CALLER": str(PER_CALLER)}
    replica: ServiceProcess = await asyncio.to_thread(stack.start_replica, "wallet", settings)
    try:
        async with stack.aio_channel(replica.address) as channel:
            yield wallet_pb2_grpc.WalletServiceStub(channel)
    finally:
        assert replica.process is not None
        await asyncio.to_thread(stop_process, replica.process)


@pytest.mark.slow
async def test_a_caller_past_its_declines_is_refused_for_every_account(
    clients: Clients, limited_wallet: wallet_pb2_grpc.WalletServiceStub
) -> None:
    reseller = auth(new_id("reseller"), "service")  # a backend of its own: the suite's backend is not held back
    for _ in range(PER_CALLER):  # one decline per account: none comes near its own limit
        account_id = await create_account(clients)
        await expect_declined(limited_wallet.PurchaseCoins(declined_purchase(account_id), metadata=reseller))
    newcomer = await create_account(clients)

    delay = await expect_rate_limited(limited_wallet.PurchaseCoins(purchase(newcomer), metadata=reseller))

    assert DAY_SECONDS - 120 < delay <= DAY_SECONDS
    # Its owner is another caller (the suite's own backend may be past this replica's limit: other tests' declines).
    bought = await limited_wallet.PurchaseCoins(purchase(newcomer), metadata=auth(newcomer))
    assert bought.balance.coins == 65
