"""Micro-batching of concurrent calls: each call submits one item and awaits its own outcome, while the work is done
per batch (one transaction, one downstream call) to pay a round trip once for many items.

Flush policy: a batch starts at once when none is in flight, and another beside it (up to max_concurrent_batches)
only while concurrent_min_queue items or more are queued; otherwise items gather in the queue and the next batch
takes up to max_batch_size of them as soon as a running one finishes. There is no
timer, so an idle system answers a lone call at once.

Admission: there is no unbounded queue. Each batcher fits how long a batch of n items takes (a + b·n, from the
batches it ran) and, as an item arrives, predicts its wait before its own batch starts: what is left of the running
batches plus the full batches queued ahead of it. An item whose predicted wait exceeds the queueing budget is refused
at once (RESOURCE_EXHAUSTED RATE_LIMITED), so under overload the calls accepted stay fast and the refused ones learn
it without waiting; a lone item on an idle batcher is never refused."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeAlias, TypeVar

import structlog
from opentelemetry.trace import Span
from prometheus_client import Counter, Gauge, Histogram

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
SHED_TOTAL = Counter("coinstream_batch_shed_total", "Items refused because they would wait too long", ["batcher"])
PREDICTED_WAIT_SECONDS = Gauge(
    "coinstream_batch_predicted_wait_seconds",
    "Predicted wait in the queue of the item submitted last (refused above the queueing budget)",
    ["batcher"],
)

log = structlog.get_logger()


# How long a shed caller is told to wait (RetryInfo): long enough for a burst to pass, short enough not to idle.
OVERLOAD_RETRY_AFTER_SECONDS = 0.5


def overloaded() -> AppError:
    return rate_limited("server overloaded; retry later", OVERLOAD_RETRY_AFTER_SECONDS)


# The weight of each new batch in the fitted cost: about the last ten batches decide, so a lasting change of speed
# (a slower database) shows within a second under load, while any one batch has a tenth of the say.
COST_SMOOTHING = 0.1
# Batches seen before admission trusts the fit: a cold process knows too little of its speed, and a wrong guess
# would refuse a warm-up burst. Until then nothing is refused.
MIN_OBSERVATIONS = 5
# A batch counts as at most this many times (at least this fraction of) what the fit predicted for its size: one
# batch stalled by a lock wait or a pause must not make every queue after it look too slow to admit, while a lasting
# change still moves the fit, a bounded step each batch.
OUTLIER_FACTOR = 3.0
# Below this variance (relative to the mean size squared) the sizes seen are all alike: rounding, not a slope.
SAME_SIZE_RELATIVE_VARIANCE = 1e-9


class BatchCostModel:
    """How long a batch of n items takes, T(n) ≈ a + b·n: a fixed cost per batch (round trips, a transaction) and a
    cost per item, fitted by least squares over exponentially weighted sums of the observed (size, seconds) pairs.
    Pure arithmetic, no clock: the batcher feeds it what it measured."""

    def __init__(self, smoothing: float = COST_SMOOTHING, min_observations: int = MIN_OBSERVATIONS) -> None:
        self._keep = 1.0 - smoothing
        self._min_observations = min_observations
        self.observations = 0
        # Weighted sums of 1, n, t, n², n·t (n a batch's size, t its seconds).
        self._sum_1 = self._sum_n = self._sum_t = self._sum_nn = self._sum_nt = 0.0
        self.fixed_seconds = 0.0  # a
        self.seconds_per_item = 0.0  # b

    @property
    def ready(self) -> bool:
        """Whether enough batches were seen for the fit to be trusted."""
        return self.observations >= self._min_observations

    def seconds_for(self, size: int) -> float:
        return self.fixed_seconds + self.seconds_per_item * size

    def observe(self, size: int, seconds: float) -> None:
        seconds = self._within_outlier_bounds(size, seconds)
        keep = self._keep
        self._sum_1 = keep * self._sum_1 + 1.0
        self._sum_n = keep * self._sum_n + size
        self._sum_t = keep * self._sum_t + seconds
        self._sum_nn = keep * self._sum_nn + size * size
        self._sum_nt = keep * self._sum_nt + size * seconds
        self.observations += 1
        self.fixed_seconds, self.seconds_per_item = self._fit()

    def _within_outlier_bounds(self, size: int, seconds: float) -> float:
        predicted = self.seconds_for(size)
        if not self.ready or predicted <= 0:  # nothing trustworthy to compare with yet
            return seconds
        return min(max(seconds, predicted / OUTLIER_FACTOR), predicted * OUTLIER_FACTOR)

    def _fit(self) -> tuple[float, float]:
        """(a, b) of the weighted least-squares line, kept to a ≥ 0 and b ≥ 0: a negative one is noise (a batch
        never takes less than nothing, a bigger one never less than a smaller one), and a line that rises with n
        keeps the prediction of the queue ahead of an item monotonic."""
        mean_n = self._sum_n / self._sum_1
        mean_t = self._sum_t / self._sum_1
        variance_n = self._sum_nn / self._sum_1 - mean_n * mean_n
        if variance_n <= SAME_SIZE_RELATIVE_VARIANCE * mean_n * mean_n:
            return mean_t, 0.0  # every batch had the same size: nothing tells the two costs apart, so the mean
        slope = (self._sum_nt / self._sum_1 - mean_n * mean_t) / variance_n
        if slope < 0:
            return mean_t, 0.0  # the best flat line
        intercept = mean_t - slope * mean_n
        if intercept < 0:
            return 0.0, self._sum_nt / self._sum_nn  # the best line through the origin
        return intercept, slope


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int
    max_concurrent_batches: int
    queue_budget_seconds: float
    # Items queued before a further batch starts beside a running one: a deep queue is worth a second batch that
    # overlaps the first one's waits on I/O, a shallow one is not (it would only split the next batch in two, each
    # paying the fixed cost of a batch on the same CPUs).
    concurrent_min_queue: int = 1


@dataclass
class _Pending(Generic[ItemT, ResultT]):
    item: ItemT
    future: asyncio.Future[ResultT]
    # The submitter's span (None when tracing is off): the batch's span links to it.
    span: Span | None = None


@dataclass(eq=False)  # compared by identity: two batches of one size started at once are still two
class _Running:
    size: int
    started_at: float


class MicroBatcher(Generic[ItemT, ResultT]):
    def __init__(
        self,
        name: str,
        process: ProcessBatch[ItemT, ResultT],
        policy: BatchPolicy,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        assert policy.max_batch_size >= 1 and policy.max_concurrent_batches >= 1
        self._name = name
        self._process = process
        self._max_batch_size = policy.max_batch_size
        self._max_concurrent_batches = policy.max_concurrent_batches
        self._concurrent_min_queue = max(1, policy.concurrent_min_queue)
        self._queue_budget_seconds = policy.queue_budget_seconds
        self._queue: deque[_Pending[ItemT, ResultT]] = deque()
        # Batches in flight, counted by _drain itself: it stops counting in the same step in which it finds the
        # queue empty, so an item queued right after is never left without a batch to take it.
        self._draining = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._clock = clock
        self._cost = BatchCostModel()
        # Looked up once: labels() costs microseconds, and submit() runs for every gift.
        self._predicted_wait_gauge = PREDICTED_WAIT_SECONDS.labels(name)
        self._running: list[_Running] = []

    async def submit(self, item: ItemT) -> ResultT:
        """The item's outcome once its batch is done. The item is processed even if the caller stops waiting
        (every item is idempotent work, so finishing it is always safe)."""
        predicted_wait = self.predicted_wait_seconds()
        self._predicted_wait_gauge.set(predicted_wait)
        if predicted_wait > self.wait_budget_seconds():
            SHED_TOTAL.labels(self._name).inc()
            raise overloaded()
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        # A caller that stopped waiting never reads its outcome; reading it here keeps asyncio from warning.
        future.add_done_callback(lambda done: done.cancelled() or done.exception())
        self._queue.append(_Pending(item, future, tracing.current_span()))
        if self._may_start_batch():
            self._draining += 1
            task = asyncio.create_task(self._drain(), name=f"batch:{self._name}")
            self._tasks.add(task)  # a reference, so the task is not garbage-collected while it runs
            task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(future)

    def _may_start_batch(self) -> bool:
        """A batch starts at once on an idle batcher; another one beside those running only when the queue is deep."""
        if self._draining >= self._max_concurrent_batches:
            return False
        return self._draining == 0 or len(self._queue) >= self._concurrent_min_queue

    def wait_budget_seconds(self) -> float:
        """The longest predicted wait admitted: the queueing budget, but never less than one full batch's time. An
        item that still fits in the next batch waits for the running one however many others join it, so refusing it
        would shorten nobody's wait (measured: a 50 ms budget refused a third of a closed loop's gifts, whose batches
        run ~200 ms, and cut its throughput by a fifth); only an item that would wait behind a full batch is worth
        refusing."""
        return max(self._queue_budget_seconds, self._cost.seconds_for(self._max_batch_size))

    def predicted_wait_seconds(self) -> float:
        """How long an item submitted now would wait before its own batch starts: until a lane (one of
        max_concurrent_batches) is free of the running batches and of the full batches queued ahead of it, each
        taking what the fitted cost says. 0 until the cost model is ready: no refusal on a guess."""
        if not self._cost.ready:
            return 0.0
        lanes = sorted(self._seconds_until_lanes_free())
        # The items ahead fill whole batches; the new item rides in the one after them.
        full_batches_ahead = len(self._queue) // self._max_batch_size
        rounds, extra = divmod(full_batches_ahead, self._max_concurrent_batches)
        # Each lane frees within one full batch's time (a running batch holds at most max_batch_size items and
        # the cost rises with size), so the queued batches go round the lanes in the order they free: the new
        # item's batch takes lane `extra` after `rounds` full batches on each.
        return lanes[extra] + rounds * self._cost.seconds_for(self._max_batch_size)

    def _seconds_until_lanes_free(self) -> list[float]:
        """Per lane, the fitted duration of its running batch minus its time so far (0 for a batch already past its
        estimate: it ends any moment, and one slow batch must not refuse the queue behind it), 0 for an idle lane (one
        that waits for a deep queue too: below concurrent_min_queue the wait is under one full batch's time, which the
        wait budget always admits)."""
        now = self._clock()
        busy = [max(0.0, self._cost.seconds_for(run.size) - (now - run.started_at)) for run in self._running]
        return busy + [0.0] * (self._max_concurrent_batches - len(busy))

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
        # A drain beside others stops once the queue is shallow again; the last one stops only when it is empty.
        # (Checked and counted down with no await in between: an item queued after never finds no drain.)
        while self._queue and (self._draining == 1 or len(self._queue) >= self._concurrent_min_queue):
            batch = [self._queue.popleft() for _ in range(min(self._max_batch_size, len(self._queue)))]
            running = _Running(len(batch), self._clock())
            self._running.append(running)
            try:
                with tracing.batch(f"batch {self._name}", (pending.span for pending in batch)):
                    outcomes = await self._run(batch)
            finally:
                self._running.remove(running)
            elapsed = self._clock() - running.started_at
            self._cost.observe(len(batch), elapsed)
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
