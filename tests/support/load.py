"""A gift load that rides out faults: fans sending roses one after another, each call retried with its request_id
until it succeeds, every failure recorded with how long it took to come back."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import grpc
from coinstream.gifts.v1 import gifts_pb2

from tests.support.clients import SERVICE, Clients
from tests.support.gifts import gift_request

# A call the server does not answer ends here; a refused one comes back well within it.
CALL_TIMEOUT_SECONDS = 2.0


@dataclass
class GiftLoad:
    """Fans sending roses one after another, each retried with its request_id until it succeeds."""

    clients: Clients
    stream_id: str
    fans: list[str]
    sent: list[gifts_pb2.SendGiftResponse] = field(default_factory=list)
    failures: list[tuple[grpc.StatusCode, float]] = field(default_factory=list)  # code, seconds until it came back

    async def run(self, seconds: float) -> None:
        stop_at = time.monotonic() + seconds
        await asyncio.gather(*(self._fan(fan, stop_at) for fan in self.fans))

    async def _fan(self, fan: str, stop_at: float) -> None:
        while time.monotonic() < stop_at:
            request = gift_request(fan, self.stream_id)
            while True:
                started = time.monotonic()
                try:
                    reply = await self.clients.gifts.SendGift(request, metadata=SERVICE, timeout=CALL_TIMEOUT_SECONDS)
                except grpc.aio.AioRpcError as error:
                    self.failures.append((error.code(), time.monotonic() - started))
                    await asyncio.sleep(0.2)
                    continue
                self.sent.append(reply)
                break
