"""Background workers (outbox relay, settlement consumer, payout worker, recovery passes) never die quietly: a worker
that fails is logged and restarted after a backoff that grows with each consecutive failure (1 s, 2 s, 4 s … up to a
minute). After a few failures in a row its health name `coinstream.worker.<name>` — and `coinstream.workers`, the
aggregate — turns NOT_SERVING, so `coinstream health`, dashboards and probes show it; once it has run a while without
failing it counts as recovered and both turn SERVING again."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from grpc_health.v1 import health, health_pb2
from prometheus_client import Counter, Gauge

# The one shape of a background worker: a name (its health name and log key) and an async function that runs until
# cancelled, supervised by WorkerSupervisor. Periodic work (recovery passes, the match finisher, maturity, metrics
# polls) is one pass made into a worker by periodic(); a worker with its own loop (the outbox relay, the settlement
# consumer) is added as it is.
Worker = Callable[[], Awaitable[None]]
# One pass of periodic work; True means more is due at once (it stopped at a full batch), so the next pass starts
# without waiting.
OnePass = Callable[[], Awaitable[bool | None]]


def periodic(interval_seconds: float, one_pass: OnePass) -> Worker:
    async def run() -> None:
        while True:
            more_due = await one_pass()
            if not more_due:
                await asyncio.sleep(interval_seconds)

    return run


WORKERS_HEALTH_NAME = "coinstream.workers"
WORKER_RESTARTS = Counter(
    "coinstream_worker_restarts_total", "Background workers restarted after a failure", ["worker"]
)
# The health name coinstream.worker.<name> as a metric, for alerts: 1 SERVING, 0 NOT_SERVING (failing).
WORKER_UP = Gauge("coinstream_worker_up", "1 while a background worker is SERVING, 0 while it is failing", ["worker"])

log = structlog.get_logger()


def worker_health_name(worker: str) -> str:
    return f"coinstream.worker.{worker}"


@dataclass(frozen=True)
class SupervisionPolicy:
    first_backoff_seconds: float = 1.0
    max_backoff_seconds: float = 60.0
    # Consecutive failures before the worker's health says NOT_SERVING: one failure may be a blip (a connection
    # lost once); three in a row is a worker that is not working.
    failing_after: int = 3
    # Running this long after a restart without failing counts as recovered.
    healthy_after_seconds: float = 5.0

    def backoff_seconds(self, consecutive_failures: int) -> float:
        exponent = max(0, consecutive_failures - 1)
        if exponent > 32:  # far past the cap; keeps 2**n small
            return self.max_backoff_seconds
        return min(self.max_backoff_seconds, self.first_backoff_seconds * 2.0**exponent)


class WorkerSupervisor:
    def __init__(self, health_servicer: health.aio.HealthServicer, policy: SupervisionPolicy) -> None:
        self._health = health_servicer
        self._policy = policy
        self._failures: dict[str, int] = {}
        self._failing: set[str] = set()
        self._pending_updates: set[asyncio.Task[None]] = set()

    async def declare(self, workers: list[str]) -> None:
        """Every worker starts SERVING (it has not failed yet)."""
        for worker in workers:
            self._failures[worker] = 0
            WORKER_UP.labels(worker).set(1)
            await self._health.set(worker_health_name(worker), health_pb2.HealthCheckResponse.SERVING)
        await self._publish_aggregate()

    def failing(self) -> frozenset[str]:
        return frozenset(self._failing)

    async def supervise(self, name: str, worker: Worker) -> None:
        """Runs the worker until it returns; restarts it after each failure, with a growing backoff."""
        loop = asyncio.get_running_loop()
        while True:
            recovered = loop.call_later(self._policy.healthy_after_seconds, self._recovered, name)
            try:
                await worker()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                recovered.cancel()
                failures = self._failures.get(name, 0) + 1
                self._failures[name] = failures
                WORKER_RESTARTS.labels(name).inc()
                backoff = self._policy.backoff_seconds(failures)
                log.exception("worker_crashed", worker=name, consecutive_failures=failures, restart_in_s=backoff)
                if failures >= self._policy.failing_after and name not in self._failing:
                    self._failing.add(name)
                    log.error("worker_failing", worker=name, consecutive_failures=failures)
                    await self._set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
                await asyncio.sleep(backoff)
            finally:
                recovered.cancel()

    def _recovered(self, name: str) -> None:
        self._failures[name] = 0
        if name in self._failing:
            self._failing.discard(name)
            log.info("worker_recovered", worker=name)
            task = asyncio.ensure_future(self._set(name, health_pb2.HealthCheckResponse.SERVING))
            self._pending_updates.add(task)  # a reference until it ran
            task.add_done_callback(self._pending_updates.discard)

    async def _set(self, name: str, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        WORKER_UP.labels(name).set(1 if status == health_pb2.HealthCheckResponse.SERVING else 0)
        await self._health.set(worker_health_name(name), status)
        await self._publish_aggregate()

    async def _publish_aggregate(self) -> None:
        status = health_pb2.HealthCheckResponse.NOT_SERVING if self._failing else health_pb2.HealthCheckResponse.SERVING
        await self._health.set(WORKERS_HEALTH_NAME, status)
