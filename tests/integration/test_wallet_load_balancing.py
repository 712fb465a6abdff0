"""gifts spreads its calls over every wallet its address names (round_robin), instead of pinning one long-lived
connection to one pod; and a wallet that closes old connections (max connection age) costs gifts nothing."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest
from coinstream.gifts.v1 import gifts_pb2_grpc

from coinstream.testing.servers import free_port, stop_process
from coinstream.testing.stack import ServiceProcess
from tests.support.clients import Clients, auth
from tests.support.factories import balance, make_account
from tests.support.gifts import gift_request, go_live
from tests.support.stack import Stack

pytestmark = pytest.mark.slow

SPEND_BATCHES = re.compile(
    r'^coinstream_rpc_total\{code="OK",method="/coinstream.wallet.v1.WalletService/SpendCoinsBatch"\} (\S+)$', re.M
)


def spend_batches_served(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        found = SPEND_BATCHES.search(reply.read().decode())
    return float(found.group(1)) if found else 0.0


@asynccontextmanager
async def replicas(stack: Stack, *starts: tuple[str, dict[str, str]]) -> AsyncIterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    try:
        for service, env in starts:
            started.append(await asyncio.to_thread(stack.start_replica, service, env))
        yield started
    finally:
        for replica in started:
            assert replica.process is not None
            await asyncio.to_thread(stop_process, replica.process)


@asynccontextmanager
async def gifts_calling(stack: Stack, wallet_address: str) -> AsyncIterator[gifts_pb2_grpc.GiftServiceStub]:
    """A gifts process of its own whose wallet is at wallet_address, and a client of it."""
    async with (
        replicas(stack, ("gifts", {"COINSTREAM_GIFTS_WALLET_ADDRESS": wallet_address})) as (gifts,),
        grpc.aio.insecure_channel(gifts.address) as channel,
    ):
        yield gifts_pb2_grpc.GiftServiceStub(channel)


async def send_gifts(clients: Clients, gifts: gifts_pb2_grpc.GiftServiceStub, count: int, pause_seconds: float) -> str:
    """One rose at a time from a new fan (each gift its own batch, so its own wallet call); returns the fan."""
    stream = await go_live(clients)
    fan = await make_account(clients, package_id="coins_65")
    for _ in range(count):
        await gifts.SendGift(gift_request(fan, stream.stream_id), metadata=auth(fan), timeout=30)
        await asyncio.sleep(pause_seconds)
    return fan


async def test_gifts_calls_every_wallet_its_address_names(stack: Stack, clients: Clients) -> None:
    ports = [free_port(), free_port()]
    wallets = [("wallet", {"COINSTREAM_WALLET_METRICS_PORT": str(port)}) for port in ports]
    async with replicas(stack, *wallets) as (first, second):
        async with gifts_calling(stack, f"ipv4:127.0.0.1:{first.port},127.0.0.1:{second.port}") as gifts:
            fan = await send_gifts(clients, gifts, 10, pause_seconds=0)
        served = [spend_batches_served(port) for port in ports]
    assert await balance(clients, fan) == 65 - 10
    assert all(count >= 2 for count in served), served


async def test_a_wallet_closing_old_connections_costs_gifts_no_call(stack: Stack, clients: Clients) -> None:
    short_lived = {"COINSTREAM_GRPC_MAX_CONNECTION_AGE_SECONDS": "0.5"}
    async with (
        replicas(stack, ("wallet", short_lived)) as (wallet,),
        gifts_calling(stack, f"dns:///localhost:{wallet.port}") as gifts,
    ):
        fan = await send_gifts(clients, gifts, 8, pause_seconds=0.3)  # across several connection lifetimes
    assert await balance(clients, fan) == 65 - 8
