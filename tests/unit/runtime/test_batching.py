"""The runtime MicroBatcher with a fake batch function: no servers, only asyncio. Batches form without a timer,
respect their size and concurrency limits, give each caller its own outcome, finish items whose callers left, and
refuse new items only once the batches ahead of them would, by the fitted batch cost, take longer than the budget
(time is a fake clock the batches move on: no timing in these tests)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import pytest
from prometheus_client import REGISTRY

from services.runtime.batching import (
    MIN_OBSERVATIONS,
    BatchCostModel,
    BatchPolicy,
    MicroBatcher,
    in_request_id_rounds,
)
from services.runtime.errors import AppError, failed_precondition

pytestmark = pytest.mark.timeout(30)  # a batcher that leaves a caller waiting fails here, not at the suite's limit

# Loop iterations a batch needs to run and answer when nothing else holds it up (a generous bound: no timer).
STEPS = 20


class FakeProcess:
    """A batch function that records each batch, answers item * 10 (or what outcome says), and can be held: a batch
    whose index is in `held` waits until that gate is released."""

    def __init__(self, outcome: Callable[[int], int | BaseException] = lambda item: item * 10) -> None:
        self.outcome = outcome
        self.batches: list[list[int]] = []
        self.finished: list[int] = []
        self.held: dict[int, asyncio.Event] = {}
        self.running = 0
        self.peak_running = 0

    def hold(self, batch_index: int) -> asyncio.Event:
        return self.held.setdefault(batch_index, asyncio.Event())

    async def __call__(self, items: list[int]) -> list[int | BaseException]:
        index = len(self.batches)
        self.batches.append(list(items))
        self.running += 1
        self.peak_running = max(self.peak_running, self.running)
        try:
            if index in self.held:
                await self.held[index].wait()
            else:
                await asyncio.sleep(0)  # a real batch awaits I/O at least once
            self.finished.extend(items)
            return [self.outcome(item) for item in items]
        finally:
            self.running -= 1


def batcher(process: FakeProcess, max_batch_size: int = 100, max_concurrent_batches: int = 1) -> MicroBatcher:
    return MicroBatcher("test", process, BatchPolicy(max_batch_size, max_concurrent_batches, 1.0))


async def steps(count: int = STEPS) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def until(condition: Callable[[], bool]) -> None:
    """Lets the loop run (without any clock) until condition holds; fails if it never does."""
    for _ in range(STEPS):
        if condition():
            return
        await asyncio.sleep(0)
    assert condition()


async def test_a_lone_item_is_processed_at_once() -> None:
    process = FakeProcess()
    lone = asyncio.create_task(batcher(process).submit(7))
    # Only zero-length yields: a batch waiting for a timer would never finish here.
    await until(lone.done)
    assert lone.result() == 70
    assert process.batches == [[7]]


async def test_items_arriving_while_a_batch_is_in_flight_form_the_next_batch() -> None:
    process = FakeProcess()
    release = process.hold(0)
    micro = batcher(process)
    first = asyncio.create_task(micro.submit(0))
    await until(lambda: process.batches == [[0]])
    waiting = [asyncio.create_task(micro.submit(item)) for item in range(1, 6)]
    await steps()
    assert process.batches == [[0]]  # nothing else starts while the one allowed batch runs
    release.set()
    assert await asyncio.gather(first, *waiting) == [0, 10, 20, 30, 40, 50]
    assert process.batches == [[0], [1, 2, 3, 4, 5]]


async def test_batches_never_exceed_max_batch_size() -> None:
    process = FakeProcess()
    release = process.hold(0)
    micro = batcher(process, max_batch_size=3)
    first = asyncio.create_task(micro.submit(0))
    await until(lambda: len(process.batches) == 1)
    waiting = [asyncio.create_task(micro.submit(item)) for item in range(1, 11)]
    await steps()
    release.set()
    assert await asyncio.gather(first, *waiting) == [item * 10 for item in range(11)]
    assert process.batches == [[0], [1, 2, 3], [4, 5, 6], [7, 8, 9], [10]]


async def test_at_most_max_concurrent_batches_run_at_once() -> None:
    process = FakeProcess()
    gates = [process.hold(index) for index in range(2)]
    micro = batcher(process, max_batch_size=2, max_concurrent_batches=2)
    first = asyncio.create_task(micro.submit(0))
    await until(lambda: len(process.batches) == 1)
    second = asyncio.create_task(micro.submit(1))
    await until(lambda: len(process.batches) == 2)
    assert process.running == 2
    waiting = [asyncio.create_task(micro.submit(item)) for item in range(2, 9)]
    await steps()
    assert process.batches == [[0], [1]]  # both batches in flight: the rest queue
    gates[0].set()
    await until(lambda: first.done() and len(process.batches) >= 3)
    assert process.running <= 2
    gates[1].set()
    assert await asyncio.gather(second, *waiting) == [item * 10 for item in range(1, 9)]
    assert process.peak_running == 2
    assert all(len(batch) <= 2 for batch in process.batches)
    assert sorted(item for batch in process.batches for item in batch) == list(range(9))


async def test_a_second_batch_starts_beside_the_first_only_once_the_queue_is_deep() -> None:
    process = FakeProcess()
    gates = [process.hold(index) for index in range(2)]
    micro = MicroBatcher("test", process, BatchPolicy(10, 2, 1.0, concurrent_min_queue=3))
    first = asyncio.create_task(micro.submit(0))
    await until(lambda: process.running == 1)
    shallow = [asyncio.create_task(micro.submit(item)) for item in (1, 2)]
    await steps()
    assert process.batches == [[0]]  # two queued: not worth a batch of their own beside the running one
    deep = asyncio.create_task(micro.submit(3))
    await until(lambda: process.running == 2)
    assert process.batches == [[0], [1, 2, 3]]  # the third made the queue deep: a second batch takes it
    later = [asyncio.create_task(micro.submit(item)) for item in (4, 5)]
    gates[0].set()
    gates[1].set()
    assert await asyncio.gather(first, *shallow, deep, *later) == [item * 10 for item in range(6)]
    assert process.peak_running == 2
    # The queue left behind was shallow: one batch took it, not one per drain.
    assert process.batches[2:] == [[4, 5]]


async def test_each_caller_gets_its_own_outcome() -> None:
    broken = ValueError("item 3 is broken")
    refused = failed_precondition("INSUFFICIENT_COINS", "item 4 is refused")
    outcomes: dict[int, BaseException] = {3: broken, 4: refused}
    process = FakeProcess(lambda item: outcomes.get(item, item * 10))
    release = process.hold(0)
    micro = batcher(process)
    first = asyncio.create_task(micro.submit(0))
    await until(lambda: len(process.batches) == 1)
    waiting = [asyncio.create_task(micro.submit(item)) for item in range(1, 7)]
    await steps()
    release.set()
    results = await asyncio.gather(first, *waiting, return_exceptions=True)
    assert results == [0, 10, 20, broken, refused, 50, 60]
    assert process.batches == [[0], [1, 2, 3, 4, 5, 6]]  # one batch held the failures and the successes


async def test_a_failed_batch_fails_each_of_its_callers_and_the_next_batch_runs() -> None:
    failure = RuntimeError("database went away")
    process = FakeProcess()
    release = process.hold(0)
    calls = 0

    async def fail_second_batch(items: list[int]) -> list[int | BaseException]:
        nonlocal calls
        calls += 1
        if calls == 2:
            process.batches.append(list(items))
            raise failure
        return await process(items)

    micro = MicroBatcher("test", fail_second_batch, BatchPolicy(3, 1, 1.0))
    first = asyncio.create_task(micro.submit(0))
    await until(lambda: len(process.batches) == 1)
    waiting = [asyncio.create_task(micro.submit(item)) for item in range(1, 6)]
    await steps()
    release.set()
    results = await asyncio.gather(first, *waiting, return_exceptions=True)
    assert process.batches == [[0], [1, 2, 3], [4, 5]]
    assert results == [0, failure, failure, failure, 40, 50]


async def test_a_miscounted_batch_fails_its_callers_instead_of_leaving_them_waiting() -> None:
    async def one_outcome_short(items: list[int]) -> list[int]:
        return [item * 10 for item in items[1:]]

    micro = MicroBatcher("test", one_outcome_short, BatchPolicy(10, 1, 1.0))
    results = await asyncio.wait_for(asyncio.gather(micro.submit(1), return_exceptions=True), timeout=5)
    assert len(results) == 1 and isinstance(results[0], AssertionError)


async def test_a_caller_that_stops_waiting_does_not_stop_its_item() -> None:
    process = FakeProcess()
    release = process.hold(0)
    micro = batcher(process)
    running = asyncio.create_task(micro.submit(0))
    await until(lambda: len(process.batches) == 1)
    queued = asyncio.create_task(micro.submit(1))
    other = asyncio.create_task(micro.submit(2))
    await steps()
    running.cancel()  # its item is in the batch in flight
    queued.cancel()  # its item is still queued
    await steps()
    assert running.cancelled() and queued.cancelled()
    release.set()
    assert await other == 20
    assert process.batches == [[0], [1, 2]]
    assert process.finished == [0, 1, 2]


async def test_an_item_queued_as_the_last_batch_ends_still_gets_a_batch() -> None:
    """The step in which a drain finds the queue empty and the arrival of a new item may be adjacent in the loop:
    the new item must start a batch of its own rather than wait for one that has already stopped."""
    process = FakeProcess()
    release = process.hold(0)
    micro = batcher(process)
    first = asyncio.create_task(micro.submit(0))
    await until(lambda: len(process.batches) == 1)
    release.set()  # the drain's wake-up is queued first ...
    late = asyncio.create_task(micro.submit(1))  # ... and this submit right after it, in the same loop iteration
    assert await first == 0
    assert await asyncio.wait_for(late, timeout=5) == 10
    assert process.batches == [[0], [1]]


# -- the fitted batch cost and admission by predicted wait ------------------------------------------------------

# A batch's duration in these tests: a fixed cost per batch and a cost per item.
FIXED_SECONDS = 0.004
SECONDS_PER_ITEM = 0.0001


def line(size: int) -> float:
    return FIXED_SECONDS + SECONDS_PER_ITEM * size


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TimedProcess(FakeProcess):
    """A FakeProcess whose batches take seconds(size) on a fake clock, moved on as a batch ends (after any hold): the
    batcher measures exactly that duration, and a held batch has used none of its time until the test moves it."""

    def __init__(self, clock: FakeClock, seconds: Callable[[int], float] = line) -> None:
        super().__init__()
        self.clock = clock
        self.seconds = seconds

    async def __call__(self, items: list[int]) -> list[int | BaseException]:
        outcomes = await super().__call__(items)
        self.clock.now += self.seconds(len(items))
        return outcomes


def timed_batcher(
    process: TimedProcess, max_batch_size: int = 100, max_concurrent_batches: int = 1, budget_seconds: float = 0.05
) -> MicroBatcher:
    policy = BatchPolicy(max_batch_size, max_concurrent_batches, budget_seconds)
    return MicroBatcher("test", process, policy, clock=process.clock)


async def run_batches(micro: MicroBatcher, process: FakeProcess, sizes: list[int]) -> None:
    """One batch of each size in turn: each size's items are all queued before its batch starts."""
    for size in sizes:
        await asyncio.gather(*(micro.submit(item) for item in range(size)))
    assert [len(batch) for batch in process.batches[-len(sizes) :]] == sizes


def predicted_wait_gauge() -> float | None:
    return REGISTRY.get_sample_value("coinstream_batch_predicted_wait_seconds", {"batcher": "test"})


def test_the_cost_model_fits_a_known_line_from_exact_observations() -> None:
    model = BatchCostModel()
    for size in [1, 10, 50, 200, 20, 5, 120]:
        model.observe(size, line(size))
    assert model.ready
    assert model.fixed_seconds == pytest.approx(FIXED_SECONDS)
    assert model.seconds_per_item == pytest.approx(SECONDS_PER_ITEM)
    assert model.seconds_for(100) == pytest.approx(line(100))


def test_the_cost_model_is_ready_only_after_a_few_batches() -> None:
    model = BatchCostModel()
    for size in range(1, MIN_OBSERVATIONS):
        model.observe(size, line(size))
        assert not model.ready
    model.observe(MIN_OBSERVATIONS, line(MIN_OBSERVATIONS))
    assert model.ready


def test_the_cost_model_falls_back_to_the_mean_when_every_batch_had_the_same_size() -> None:
    model = BatchCostModel()
    for seconds in [0.01, 0.03]:
        model.observe(200, seconds)
    assert model.seconds_per_item == 0.0
    assert 0.01 < model.seconds_for(1) == model.seconds_for(200) < 0.03


def test_the_cost_model_never_fits_a_negative_cost() -> None:
    bigger_was_faster = BatchCostModel()
    bigger_was_faster.observe(10, 0.05)
    bigger_was_faster.observe(100, 0.01)
    assert bigger_was_faster.seconds_per_item == 0.0
    assert bigger_was_faster.fixed_seconds == pytest.approx(0.03, rel=0.1)  # the (weighted) mean

    steeper_than_the_origin = BatchCostModel()
    steeper_than_the_origin.observe(10, 0.001)
    steeper_than_the_origin.observe(100, 0.1)
    assert steeper_than_the_origin.fixed_seconds == 0.0
    assert steeper_than_the_origin.seconds_per_item > 0.0


async def test_admission_accepts_while_the_predicted_wait_fits_the_budget_and_refuses_beyond_it() -> None:
    process = TimedProcess(FakeClock())
    micro = timed_batcher(process, max_batch_size=100, budget_seconds=0.05)
    await run_batches(micro, process, [1, 10, 50, 100, 20])
    release = process.hold(len(process.batches))
    first = asyncio.create_task(micro.submit(0))
    await until(lambda: process.running == 1)
    assert micro.predicted_wait_seconds() == pytest.approx(line(1))  # what is left of the held batch

    # Behind the held batch (4.1 ms left), three full batches of 100 (14 ms each) still fit the 50 ms budget ...
    accepted = [asyncio.create_task(micro.submit(item)) for item in range(400)]
    await steps()
    assert not any(task.done() for task in accepted)
    # ... a fourth does not: the next item is refused at once, without waiting to see.
    assert micro.predicted_wait_seconds() == pytest.approx(line(1) + 4 * line(100))
    with pytest.raises(AppError) as refused:
        await micro.submit(400)
    assert (refused.value.code, refused.value.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    assert predicted_wait_gauge() == pytest.approx(line(1) + 4 * line(100))

    release.set()
    assert await asyncio.gather(first, *accepted) == [0] + [item * 10 for item in range(400)]
    assert process.batches[-4:] == [list(range(start, start + 100)) for start in range(0, 400, 100)]
    assert await micro.submit(7) == 70  # the queue drained: accepted again
    assert predicted_wait_gauge() == 0.0


async def test_an_idle_batcher_never_refuses_a_lone_item_however_slow_its_batches() -> None:
    process = TimedProcess(FakeClock(), seconds=lambda size: 10.0 + size)  # every batch far beyond the budget
    micro = timed_batcher(process, budget_seconds=0.05)
    await run_batches(micro, process, [1, 2, 3, 4, 5])
    assert micro.predicted_wait_seconds() == 0.0
    assert await micro.submit(7) == 70


async def test_an_item_is_admitted_while_a_lane_is_idle_and_refused_once_every_lane_is_busy_too_long() -> None:
    process = TimedProcess(FakeClock(), seconds=lambda size: 10.0 + size)
    micro = timed_batcher(process, max_batch_size=1, max_concurrent_batches=2, budget_seconds=0.05)
    await run_batches(micro, process, [1, 1, 1, 1, 1])
    gates = [process.hold(len(process.batches) + index) for index in range(4)]
    first = asyncio.create_task(micro.submit(1))
    await until(lambda: process.running == 1)
    second = asyncio.create_task(micro.submit(2))  # the other lane is idle: it starts at once
    await until(lambda: process.running == 2)
    # Both lanes hold a batch expected to run 11 s: an item that rides in the next batch of either lane waits no
    # longer for the others queued with it, so two are admitted (the wait budget is at least one batch's time) ...
    queued = [asyncio.create_task(micro.submit(item)) for item in (3, 4)]
    await steps()
    assert not any(task.done() for task in queued)
    with pytest.raises(AppError) as refused:  # ... a third would wait behind a full batch as well
        await micro.submit(5)
    assert refused.value.reason == "RATE_LIMITED"
    for gate in gates:
        gate.set()
    assert await asyncio.gather(first, second, *queued) == [10, 20, 30, 40]


async def test_an_item_that_fits_in_the_next_batch_is_admitted_however_long_the_running_batch_takes() -> None:
    process = TimedProcess(FakeClock(), seconds=lambda size: 0.2 + 0.001 * size)  # batches far beyond the budget
    micro = timed_batcher(process, max_batch_size=100, budget_seconds=0.05)
    await run_batches(micro, process, [1, 10, 50, 100, 20])
    release = process.hold(len(process.batches))
    first = asyncio.create_task(micro.submit(0))
    await until(lambda: process.running == 1)
    queued = [asyncio.create_task(micro.submit(item)) for item in range(1, 101)]  # the next batch, full
    await steps()
    assert not any(task.done() for task in queued)
    with pytest.raises(AppError):  # one more would wait behind that full batch too
        await micro.submit(101)
    release.set()
    assert await asyncio.gather(first, *queued) == [item * 10 for item in range(101)]


async def test_nothing_is_refused_before_a_few_batches_were_observed() -> None:
    process = TimedProcess(FakeClock(), seconds=lambda size: 10.0)
    micro = timed_batcher(process, max_batch_size=100, budget_seconds=0.05)
    release = process.hold(0)
    first = asyncio.create_task(micro.submit(0))
    await until(lambda: process.running == 1)
    queued = [asyncio.create_task(micro.submit(item)) for item in range(1, 1000)]
    await steps()
    assert not any(task.done() for task in queued)  # ten full batches queued, none refused: no fit to go by
    release.set()
    assert await asyncio.gather(first, *queued) == [item * 10 for item in range(1000)]


async def test_one_slow_batch_among_fast_ones_does_not_refuse_a_short_queue() -> None:
    process = TimedProcess(FakeClock())
    micro = timed_batcher(process, max_batch_size=100, budget_seconds=0.05)
    await run_batches(micro, process, [1, 10, 50, 100, 20, 5])
    process.seconds = lambda size: 1.0  # a batch stalled for 20 budgets (a lock wait, a pause) ...
    await run_batches(micro, process, [5])
    process.seconds = line

    release = process.hold(len(process.batches))
    first = asyncio.create_task(micro.submit(0))
    await until(lambda: process.running == 1)
    # ... and the queue behind the next one, two full batches and a part: admitted.
    queued = [asyncio.create_task(micro.submit(item)) for item in range(250)]
    await steps()
    assert not any(task.done() for task in queued)
    assert micro.predicted_wait_seconds() < 0.05
    release.set()
    assert await asyncio.gather(first, *queued) == [0] + [item * 10 for item in range(250)]


# -- repeats of one request_id within a batch ------------------------------------------------------------------


@dataclass(frozen=True)
class Ask:
    request_id: str
    coins: int


async def test_a_repeated_request_id_is_decided_once_and_a_different_repeat_waits_for_the_next_round() -> None:
    rounds: list[list[Ask]] = []
    stored: dict[str, Ask] = {}

    async def process_unique(unique: list[Ask]) -> dict[str, str]:
        rounds.append(unique)
        outcomes = {}
        for ask in unique:
            first = stored.setdefault(ask.request_id, ask)  # the key: whoever claimed it first owns it
            outcomes[ask.request_id] = f"spent {ask.coins}" if first == ask else "REQUEST_ID_REUSED"
        return outcomes

    asks = [Ask("a", 1), Ask("a", 2), Ask("a", 1), Ask("b", 5)]
    assert await in_request_id_rounds(asks, process_unique) == ["spent 1", "REQUEST_ID_REUSED", "spent 1", "spent 5"]
    assert rounds == [[Ask("a", 1), Ask("b", 5)], [Ask("a", 2)]]


async def test_a_true_retry_behind_a_different_request_gets_its_own_stored_outcome() -> None:
    stored = {"a": Ask("a", 1)}  # decided by an earlier batch

    async def process_unique(unique: list[Ask]) -> dict[str, str]:
        return {ask.request_id: "replayed" if stored[ask.request_id] == ask else "REQUEST_ID_REUSED" for ask in unique}

    assert await in_request_id_rounds([Ask("a", 2), Ask("a", 1)], process_unique) == ["REQUEST_ID_REUSED", "replayed"]
