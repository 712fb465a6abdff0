"""Per-caller limits on a wallet process started with tight ones: one user's token bucket runs dry without slowing
anyone else, the refusal says when to retry (RetryInfo) and moves nothing; trusted backends (service role) are
exempt. Health and reflection streams, open to anyone who reaches the port, are bounded too."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from coinstream.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coinstream.testing.servers import stop_process
from coinstream.testing.stack import ServiceProcess
from tests.support.clients import SERVICE, Clients, auth, new_id
from tests.support.errors import error_reason, retry_delay_seconds
from tests.support.factories import balance, create_account
from tests.support.stack import Stack

pytestmark = pytest.mark.slow

PURCHASE_BURST = 2
TIGHT_LIMITS = {
    "COINSTREAM_RATE_LIMITS": json.dumps({"PurchaseCoins": {"per_second": 0.05, "burst": PURCHASE_BURST}}),
    "COINSTREAM_MAX_PUBLIC_STREAMS": "2",
}


@pytest_asyncio.fixture(scope="module")
async def limited_replica(stack: Stack) -> AsyncIterator[ServiceProcess]:
    replica: ServiceProcess = await asyncio.to_thread(stack.start_replica, "wallet", TIGHT_LIMITS)
    try:
        yield replica
    finally:
        assert replica.process is not None
        await asyncio.to_thread(stop_process, replica.process)


@pytest_asyncio.fixture(scope="module")
async def limited_wallet(limited_replica: ServiceProcess) -> AsyncIterator[wallet_pb2_grpc.WalletServiceStub]:
    channel = grpc.aio.insecure_channel(limited_replica.address)
    try:
        yield wallet_pb2_grpc.WalletServiceStub(channel)
    finally:
        await channel.close()


def purchase(account_id: str) -> wallet_pb2.PurchaseCoinsRequest:
    return wallet_pb2.PurchaseCoinsRequest(
        request_id=new_id("buy"), account_id=account_id, package_id="coins_65", payment_token="tok_ok_limits"
    )


async def test_a_user_over_its_rate_is_refused_with_retry_info_and_charged_nothing(
    clients: Clients, limited_wallet: wallet_pb2_grpc.WalletServiceStub
) -> None:
    account_id = await create_account(clients)
    as_owner = auth(account_id)
    for _ in range(PURCHASE_BURST):
        await limited_wallet.PurchaseCoins(purchase(account_id), metadata=as_owner)
    bought = await balance(clients, account_id)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await limited_wallet.PurchaseCoins(purchase(account_id), metadata=as_owner)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_reason(refused.value) == "RATE_LIMITED"
    delay = retry_delay_seconds(refused.value)
    assert delay is not None and 0 < delay <= 1 / 0.05
    assert await balance(clients, account_id) == bought


async def test_one_users_limit_leaves_others_and_backends_alone(
    clients: Clients, limited_wallet: wallet_pb2_grpc.WalletServiceStub
) -> None:
    greedy, other = await create_account(clients), await create_account(clients)
    for _ in range(PURCHASE_BURST):
        await limited_wallet.PurchaseCoins(purchase(greedy), metadata=auth(greedy))
    with pytest.raises(grpc.aio.AioRpcError):
        await limited_wallet.PurchaseCoins(purchase(greedy), metadata=auth(greedy))
    await limited_wallet.PurchaseCoins(purchase(other), metadata=auth(other))
    for _ in range(PURCHASE_BURST + 2):  # a trusted backend buys for many users: the process bounds it, not a bucket
        await limited_wallet.PurchaseCoins(purchase(greedy), metadata=SERVICE)


async def test_public_streams_are_bounded(limited_replica: ServiceProcess) -> None:
    async with grpc.aio.insecure_channel(limited_replica.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest(service="")) for _ in range(2)]
        for watch in watches:
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        third = health.Watch(health_pb2.HealthCheckRequest(service=""))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await third.read()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        watches[0].cancel()
        await asyncio.sleep(0.5)
        again = health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await again.read()).status == health_pb2.HealthCheckResponse.SERVING
        again.cancel()
        watches[1].cancel()
