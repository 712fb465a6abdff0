"""kill -9 of the wallet in the middle of a purchase: after a restart the purchase is finished exactly once,
by the client's retry or by the recovery pass alone."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from coinstream.wallet.v1 import wallet_pb2 as w

from tests.support.clients import SERVICE, Clients, new_id
from tests.support.factories import balance, create_account
from tests.support.stack import Stack

pytestmark = pytest.mark.slow


async def purchase_while_crashing(
    stack: Stack, clients: Clients, fault_point: str
) -> tuple[str, w.PurchaseCoinsRequest]:
    account_id = await create_account(clients)
    stack.restart_service("wallet", {"COINSTREAM_FAULT_POINTS": fault_point})
    request = w.PurchaseCoinsRequest(
        request_id=new_id("buy"), account_id=account_id, package_id="coins_330", payment_token="tok_ok"
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await clients.wallet.PurchaseCoins(request, metadata=SERVICE, timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert stack.wait_exit("wallet") == -9
    return account_id, request


@pytest.mark.parametrize("fault_point", ["wallet.after_purchase_recorded", "wallet.after_charge"])
async def test_client_retry_finishes_a_crashed_purchase_once(stack: Stack, clients: Clients, fault_point: str) -> None:
    try:
        account_id, request = await purchase_while_crashing(stack, clients, fault_point)
    finally:
        stack.start_service("wallet")
    first = await clients.wallet.PurchaseCoins(request, metadata=SERVICE)
    again = await clients.wallet.PurchaseCoins(request, metadata=SERVICE)
    assert first == again
    assert first.balance.coins == 330
    assert await balance(clients, account_id) == 330


async def test_recovery_finishes_a_crashed_purchase_without_a_retry(stack: Stack, clients: Clients) -> None:
    try:
        account_id, request = await purchase_while_crashing(stack, clients, "wallet.after_charge")
    finally:
        stack.start_service("wallet")
    for _ in range(100):
        if await balance(clients, account_id) == 330:
            break
        await asyncio.sleep(0.1)
    assert await balance(clients, account_id) == 330
    reply = await clients.wallet.PurchaseCoins(request, metadata=SERVICE)
    assert reply.balance.coins == 330
    assert await balance(clients, account_id) == 330
