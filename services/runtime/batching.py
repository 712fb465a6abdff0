"""Micro-batching of concurrent calls: each call submits one item and awaits its own outcome, while the work is done
per batch (one transaction, one downstream call) to pay a round trip once for many items.

Flush policy: a batch starts at once when fewer than max_concurrent_batches are in flight; otherwise items gather
in the queue and the next batch takes up to max_batch_size of them as soon as a running one finishes. There is no
timer, so an idle system answers a lone call at once, and no unbounded queue: admission refuses an item that would
wait longer than the queueing budget (RESOURCE_EXHAUSTED RATE_LIMITED), so the calls accepted stay fast when the
offered load exceeds what the batches can carry."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeAlias, TypeVar

import structlog
from opentelemetry.trace import Span
from prometheus_client import Counter, Histogram

from services.runtime import tracing
from services.runtime.errors import AppError, rate_limited

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

# Each item's outcome: its result, or the exception its caller gets (an AppError for a refusal).
Outcome: TypeAlias = ResultT | BaseException
ProcessBatch: TypeAlias = Callable[[list[ItemT]], Awaitable[Sequence[ResultT | BaseException]]]

BATCH_SIZE = Histogram(
    "coinstream_batch_size", "Items per batch", ["batcher"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
)
BATCH_SECONDS = Histogram("coinstream_batch_seconds", "Time to process one batch", ["batcher"])
# How quickly the estimate of a batch's duration follows changes in load.
DURATION_SMOOTHING = 0.2
SHED_TOTAL = Counter("coinstream_batch_shed_total", "Items refused because they would wait too long", ["batcher"])

log = structlog.get_logger()


# How long a shed caller is told to wait (RetryInfo): long enough for a burst to pass, short enough not to idle.
OVERLOAD_RETRY_AFTER_SECONDS = 0.5


def overloaded() -> AppError:
    return rate_limited("server overloaded; retry later", OVERLOAD_RETRY_AFTER_SECONDS)


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int
    max_concurrent_batches: int
    queue_budget_seconds: float


@dataclass
class _Pending(Generic[ItemT, ResultT]):
    item: ItemT
    future: asyncio.Future[ResultT]
    enqueued_at: float
    # The submitter's span (None when tracing is off): the batch's span links to it.
    span: Span | None = None


class MicroBatcher(Generic[ItemT, ResultT]):
    def __init__(
        self,
        name: str,
        process: ProcessBatch[ItemT, ResultT],
        policy: BatchPolicy,
    ) -> None:
        assert policy.max_batch_size >= 1 and policy.max_concurrent_batches >= 1
        self._name = name
        self._process = process
        self._max_batch_size = policy.max_batch_size
        self._max_concurrent_batches = policy.max_concurrent_batches
        self._queue_budget_seconds = policy.queue_budget_seconds
        self._queue: deque[_Pending[ItemT, ResultT]] = deque()
        # Batches in flight, counted by _drain itself: it stops counting in the same step in which it finds the
        # queue empty, so an item queued right after is never left without a batch to take it.
        self._draining = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._batch_seconds_estimate = 0.0

    async def submit(self, item: ItemT) -> ResultT:
        """The item's outcome once its batch is done. The item is processed even if the caller stops waiting
        (every item is idempotent work, so finishing it is always safe)."""
        if self.standing_wait_seconds() > self._queue_budget_seconds:
            SHED_TOTAL.labels(self._name).inc()
            raise overloaded()
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        # A caller that stopped waiting never reads its outcome; reading it here keeps asyncio from warning.
        future.add_done_callback(lambda done: done.cancelled() or done.exception())
        self._queue.append(_Pending(item, future, time.perf_counter(), tracing.current_span()))
        if self._draining < self._max_concurrent_batches:
            self._draining += 1
            task = asyncio.create_task(self._drain(), name=f"batch:{self._name}")
            self._tasks.add(task)  # a reference, so the task is not garbage-collected while it runs
            task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(future)

    def standing_wait_seconds(self) -> float:
        """How long the oldest queued item has waited so far, once the queue stands: a new item queued behind it
        waits at least as long.
        Up to a batch duration is the normal wait (the next batch takes the queue when the running one ends), and
        one slow batch may take twice the usual; longer, the queue is standing — more arrives than batches carry
        away — and its wait is what counts."""
        if not self._queue:
            return 0.0
        waited = time.perf_counter() - self._queue[0].enqueued_at
        return waited if waited > 2 * self._batch_seconds_estimate else 0.0

    async def _drain(self) -> None:
        """Runs batches until the queue is empty; each running drain is one batch in flight."""
        # This task was started by whichever call found no batch running: its request_id is not the batch's.
        structlog.contextvars.unbind_contextvars("request_id", "method")
        tracing.forget_inherited_context()
        try:
            await self._drain_queue()
        finally:
            self._draining -= 1

    async def _drain_queue(self) -> None:
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(self._max_batch_size, len(self._queue)))]
            started = time.perf_counter()
            with tracing.batch(f"batch {self._name}", (pending.span for pending in batch)):
                outcomes = await self._run(batch)
            elapsed = time.perf_counter() - started
            self._batch_seconds_estimate += DURATION_SMOOTHING * (elapsed - self._batch_seconds_estimate)
            BATCH_SIZE.labels(self._name).observe(len(batch))
            BATCH_SECONDS.labels(self._name).observe(elapsed)
            for pending, outcome in zip(batch, outcomes, strict=True):
                _settle(pending.future, outcome)

    async def _run(self, batch: list[_Pending[ItemT, ResultT]]) -> Sequence[Outcome[ResultT]]:
        try:
            outcomes = await self._process([pending.item for pending in batch])
            assert len(outcomes) == len(batch), f"{self._name}: {len(outcomes)} outcomes for {len(batch)} items"
            return outcomes
        except Exception as error:  # the whole batch failed: every caller gets the failure
            if not isinstance(error, AppError):
                log.exception("batch_failed", batcher=self._name, size=len(batch))
            return [error] * len(batch)
        except BaseException as error:  # cancelled (shutdown): no caller may be left waiting for good
            for pending in batch:
                pending.future.cancel()
            raise error


def _settle(future: asyncio.Future[ResultT], outcome: Outcome[ResultT]) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class LoopLag:
    """How late the event loop runs a timer, smoothed. When the process is short of CPU, every call waits about
    this long before any handler sees it, so admission refuses calls while it exceeds the queueing budget. (Calls
    still queued inside gRPC's core are not seen here: this is a floor of their wait, not all of it.)"""

    # A wake-up every 25 ms: fine enough to see a stall of a few tens of ms, rare enough to cost ~nothing.
    INTERVAL_SECONDS = 0.025
    SMOOTHING = 0.3

    def __init__(self) -> None:
        self.seconds = 0.0

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(self.INTERVAL_SECONDS)
            lag = max(0.0, loop.time() - started - self.INTERVAL_SECONDS)
            self.seconds += self.SMOOTHING * (lag - self.seconds)


class HasRequestId(Protocol):
    @property
    def request_id(self) -> str: ...


RequestT = TypeVar("RequestT", bound=HasRequestId)


async def in_request_id_rounds(
    requests: Sequence[RequestT], process_unique: Callable[[list[RequestT]], Awaitable[dict[str, ResultT]]]
) -> list[ResultT]:
    """Processes a batch whose requests may repeat a request_id (a client retrying early), one outcome per request.
    Each round hands process_unique the first request of every request_id still unanswered; an identical repeat
    shares its outcome, a different one waits for the next round — where the stored key decides (the original
    outcome for a true retry, REQUEST_ID_REUSED for another request), whichever of the two came first."""
    outcomes: dict[int, ResultT] = {}
    unanswered = list(range(len(requests)))
    while unanswered:
        firsts: dict[str, int] = {}
        for index in unanswered:
            firsts.setdefault(requests[index].request_id, index)
        decided = await process_unique([requests[index] for index in firsts.values()])
        waiting = []
        for index in unanswered:
            request = requests[index]
            if request == requests[firsts[request.request_id]]:
                outcomes[index] = decided[request.request_id]
            else:
                waiting.append(index)
        unanswered = waiting
    return [outcomes[index] for index in range(len(requests))]
