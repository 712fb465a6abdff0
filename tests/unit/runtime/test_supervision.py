"""Worker supervision without servers: restarts with a growing, bounded backoff; NOT_SERVING after consecutive
failures; SERVING again once a restarted worker has run a while."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from grpc_health.v1 import health, health_pb2

from services.runtime.supervision import (
    WORKERS_HEALTH_NAME,
    SupervisionPolicy,
    WorkerSupervisor,
    worker_health_name,
)

pytestmark = pytest.mark.timeout(30)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
FAST = SupervisionPolicy(
    first_backoff_seconds=0.01, max_backoff_seconds=0.04, failing_after=3, healthy_after_seconds=0.2
)


def test_backoff_doubles_from_the_first_delay_up_to_the_cap() -> None:
    policy = SupervisionPolicy(first_backoff_seconds=1.0, max_backoff_seconds=60.0)
    assert [policy.backoff_seconds(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert policy.backoff_seconds(10_000) == 60


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


async def status(servicer: health.aio.HealthServicer, name: str) -> int:
    reply = await servicer.Check(health_pb2.HealthCheckRequest(service=name), None)
    return reply.status


async def test_a_worker_failing_repeatedly_turns_not_serving_then_recovers() -> None:
    servicer = health.aio.HealthServicer()
    supervisor = WorkerSupervisor(servicer, FAST)
    await supervisor.declare(["relay"])
    assert await status(servicer, worker_health_name("relay")) == SERVING
    broken = asyncio.Event()
    broken.set()
    runs = 0

    async def relay() -> None:
        nonlocal runs
        runs += 1
        if broken.is_set():
            raise RuntimeError("NATS said no")
        await asyncio.sleep(3600)

    task = asyncio.create_task(supervisor.supervise("relay", relay))
    await until(lambda: "relay" in supervisor.failing())
    assert runs >= FAST.failing_after
    assert (await status(servicer, worker_health_name("relay")), await status(servicer, WORKERS_HEALTH_NAME)) == (
        NOT_SERVING,
        NOT_SERVING,
    )

    broken.clear()
    await until(lambda: "relay" not in supervisor.failing())
    await asyncio.sleep(0.05)  # the health update runs as its own task
    assert (await status(servicer, worker_health_name("relay")), await status(servicer, WORKERS_HEALTH_NAME)) == (
        SERVING,
        SERVING,
    )
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_single_failure_restarts_the_worker_without_turning_it_not_serving() -> None:
    servicer = health.aio.HealthServicer()
    supervisor = WorkerSupervisor(servicer, FAST)
    await supervisor.declare(["maturity"])
    runs = 0

    async def maturity() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise ConnectionResetError("one blip")

    await supervisor.supervise("maturity", maturity)  # returns once the worker returns
    assert runs == 2 and supervisor.failing() == frozenset()
    assert await status(servicer, WORKERS_HEALTH_NAME) == SERVING
