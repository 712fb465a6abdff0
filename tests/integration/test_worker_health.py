"""A background worker that keeps failing turns its health name NOT_SERVING (with `coinstream.workers`, the
aggregate `coinstream health` shows), while the service stays ready; when the fault goes away it recovers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runtime.supervision import WORKERS_HEALTH_NAME, worker_health_name
from tests.support.stack import Stack

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
PAYOUT_WORKER = worker_health_name("payouts")


async def health(address: str, service: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=2
        )
        return reply.status


async def wait_for(address: str, service: str, expected: int, timeout_seconds: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_seconds
    while asyncio.get_running_loop().time() < deadline:
        if await health(address, service) == expected:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{service} never became {health_pb2.HealthCheckResponse.ServingStatus.Name(expected)}")


@asynccontextmanager
async def withdrawals_table_missing(stack: Stack) -> AsyncIterator[None]:
    """The payout worker's table gone (a bad deploy, say): every pass of the worker fails."""
    conn = await asyncpg.connect(stack.database_url("payouts"))
    await conn.execute("ALTER TABLE withdrawals RENAME TO withdrawals_away")
    try:
        yield
    finally:
        await conn.execute("ALTER TABLE withdrawals_away RENAME TO withdrawals")
        await conn.close()


async def test_a_failing_worker_shows_not_serving_and_recovers(stack: Stack) -> None:
    address = stack.address("payouts")
    assert (await health(address, PAYOUT_WORKER), await health(address, WORKERS_HEALTH_NAME)) == (SERVING, SERVING)
    async with withdrawals_table_missing(stack):
        # Three failures in a row, with 1 s and 2 s of backoff between them.
        await wait_for(address, PAYOUT_WORKER, NOT_SERVING, timeout_seconds=20)
        assert await health(address, WORKERS_HEALTH_NAME) == NOT_SERVING
        assert await health(address, "") == SERVING  # still ready: its RPCs and other workers are fine
        assert await health(address, worker_health_name("settlement")) == SERVING
    # Restarted after at most 4 s more of backoff, then healthy once it ran 5 s without failing.
    await wait_for(address, PAYOUT_WORKER, SERVING, timeout_seconds=30)
    assert await health(address, WORKERS_HEALTH_NAME) == SERVING
