"""Two replicas of every service under a gift load; one replica of each killed with -9 mid-traffic. Clients retry
each gift with its request_id against the surviving replica; every gift goes through exactly once, the survivors
settle everything (the relay and the settlement consumer are shared safely), and reconcile finds nothing."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc
import pytest
from coinstream.gifts.v1 import gifts_pb2, gifts_pb2_grpc

from coinstream.testing.servers import stop_process
from coinstream.testing.stack import ServiceProcess
from tests.support.clients import SERVICE, Clients
from tests.support.factories import balance, make_account
from tests.support.gifts import gift_request, go_live
from tests.support.invariants import all_violations, wait_until_settled
from tests.support.stack import Stack

pytestmark = pytest.mark.slow

FANS = 8
LOAD_SECONDS = 6.0
CALL_TIMEOUT_SECONDS = 3.0
# Messages the killed payouts replica had fetched are redelivered after the consumer's ack_wait: the replica sets it
# to 3 s for this test (the stack's payouts sets it back to its own when restarted).
SHORT_ACK_WAIT = {"COINSTREAM_PAYOUTS_SETTLEMENT_ACK_WAIT_SECONDS": "3"}
SETTLE_TIMEOUT_SECONDS = 30.0


@asynccontextmanager
async def second_replicas(stack: Stack) -> AsyncIterator[dict[str, ServiceProcess]]:
    """A second process of each service; its gifts calls its own wallet (as a load balancer may route it).
    Afterwards the extra replicas stop and the stack's own processes run again, whatever the test killed."""
    replicas: dict[str, ServiceProcess] = {}
    try:
        replicas["wallet"] = await asyncio.to_thread(stack.start_replica, "wallet")
        replicas["gifts"] = await asyncio.to_thread(
            stack.start_replica, "gifts", {"COINSTREAM_GIFTS_WALLET_ADDRESS": replicas["wallet"].address}
        )
        replicas["payouts"] = await asyncio.to_thread(stack.start_replica, "payouts", SHORT_ACK_WAIT)
        yield replicas
    finally:
        for replica in replicas.values():
            if replica.process is not None:
                await asyncio.to_thread(stop_process, replica.process)
        for service in ("wallet", "gifts", "payouts"):
            process = stack.services[service].process
            if process is None or process.poll() is not None:
                await asyncio.to_thread(stack.start_service, service)


@dataclass
class RetryingFans:
    """Each fan sends roses one after another through either gifts replica; a failed call is retried with the same
    request_id through the other one."""

    stubs: list[gifts_pb2_grpc.GiftServiceStub]
    stream_id: str
    sent: list[gifts_pb2.SendGiftResponse] = field(default_factory=list)
    retries: int = 0

    async def run(self, fans: list[str], seconds: float) -> None:
        stop_at = time.monotonic() + seconds
        await asyncio.gather(*(self._fan(fan, index, stop_at) for index, fan in enumerate(fans)))

    async def _fan(self, fan: str, index: int, stop_at: float) -> None:
        replicas = itertools.cycle(self.stubs[index % 2 :] + self.stubs[: index % 2])
        while time.monotonic() < stop_at:
            request = gift_request(fan, self.stream_id)
            for stub in replicas:
                try:
                    reply = await stub.SendGift(request, metadata=SERVICE, timeout=CALL_TIMEOUT_SECONDS)
                except grpc.aio.AioRpcError:
                    self.retries += 1
                    await asyncio.sleep(0.1)
                    continue
                self.sent.append(reply)
                break


async def test_one_replica_of_each_service_killed_under_load(stack: Stack, clients: Clients) -> None:
    stream = await go_live(clients)
    fans = [await make_account(clients, package_id="coins_1321") for _ in range(FANS)]
    funded = {fan: await balance(clients, fan) for fan in fans}
    async with second_replicas(stack) as replicas:
        channels = [
            grpc.aio.insecure_channel(address) for address in (stack.address("gifts"), replicas["gifts"].address)
        ]
        try:
            load = RetryingFans([gifts_pb2_grpc.GiftServiceStub(channel) for channel in channels], stream.stream_id)
            running = asyncio.create_task(load.run(fans, LOAD_SECONDS))
            await asyncio.sleep(2.0)
            for service in ("gifts", "wallet", "payouts"):  # the stack's own processes; the replicas survive
                await asyncio.to_thread(stack.kill_service, service)
            await running
        finally:
            for channel in channels:
                await channel.close()
        assert load.retries > 0, "no call noticed the replicas going away"
        # The survivors carry on alone: every gift completed, charged once, settled once.
        await wait_until_settled(stack, timeout_seconds=SETTLE_TIMEOUT_SECONDS)
    for service in ("wallet", "gifts", "payouts"):  # the killed ones were restarted by second_replicas
        await asyncio.to_thread(stack.wait_serving, service)
    for fan in fans:
        spent = sum(reply.gift.coins for reply in load.sent if reply.gift.sender_id == fan)
        assert await balance(clients, fan) == funded[fan] - spent
    assert len({reply.gift.gift_transaction_id for reply in load.sent}) == len(load.sent)
    assert await all_violations(stack) == []
