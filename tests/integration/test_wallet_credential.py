"""gifts calls the wallet with a credential it is given — a token file — instead of one it mints with the
verification key: a gifts process started that way pays with the token the file holds, read again when it changes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from coinstream.gifts.v1 import gifts_pb2_grpc

from coinstream.testing.servers import stop_process
from coinstream.testing.stack import ServiceProcess
from services.runtime.auth import mint_token
from tests.support.clients import Clients, auth
from tests.support.factories import balance, make_account
from tests.support.gifts import gift_request, go_live
from tests.support.payouts import eventually
from tests.support.stack import AUTH_SECRET, Stack

pytestmark = pytest.mark.slow

ROSE_COINS = 1


def write_token(path: Path, ttl_seconds: int) -> None:
    path.write_text(mint_token(AUTH_SECRET, "coinstream-gifts", ["service"], ttl_seconds=ttl_seconds))


@pytest_asyncio.fixture(scope="module")
async def token_file(stack: Stack) -> Path:
    return stack.root / "gifts-wallet-token"  # written by the test: none yet when gifts starts


@pytest_asyncio.fixture(scope="module")
async def gifts_with_token_file(stack: Stack, token_file: Path) -> AsyncIterator[gifts_pb2_grpc.GiftServiceStub]:
    # No shared secret to mint with: only the file can authorize the calls to the wallet.
    settings = {"COINSTREAM_GIFTS_WALLET_TOKEN_FILE": str(token_file)}
    replica: ServiceProcess = await asyncio.to_thread(stack.start_replica, "gifts", settings)
    channel = grpc.aio.insecure_channel(replica.address)
    try:
        yield gifts_pb2_grpc.GiftServiceStub(channel)
    finally:
        await channel.close()
        assert replica.process is not None
        await asyncio.to_thread(stop_process, replica.process)


async def test_gifts_pay_with_the_token_the_file_holds_once_it_is_written(
    clients: Clients, gifts_with_token_file: gifts_pb2_grpc.GiftServiceStub, token_file: Path
) -> None:
    stream = await go_live(clients)
    fan = await make_account(clients, package_id="coins_65")
    with pytest.raises(grpc.aio.AioRpcError) as no_token_yet:
        await gifts_with_token_file.SendGift(gift_request(fan, stream.stream_id), metadata=auth(fan))
    assert no_token_yet.value.code() == grpc.StatusCode.UNAVAILABLE
    write_token(token_file, ttl_seconds=900)
    await asyncio.sleep(1.5)  # the file is looked at once a second
    await gifts_with_token_file.SendGift(gift_request(fan, stream.stream_id), metadata=auth(fan))
    # The first gift stayed pending and is finished by a recovery pass: each rose charged once.
    await eventually(lambda: balance(clients, fan), lambda coins: coins == 65 - 2 * ROSE_COINS, 30)
