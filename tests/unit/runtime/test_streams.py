"""answer_concurrently (SendGifts' flow control) with a fake answer function: no servers, only asyncio. At most
max_in_flight requests are being answered, and the requests are not read further meanwhile; answers come as they are
ready; a half-close still delivers every answer; a cancelled call stops reading and drops its waits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from services.runtime.streams import answer_concurrently

pytestmark = pytest.mark.timeout(30)


class Requests:
    """Requests 0..count-1 as a client stream, counting how many the server has read."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.read = 0

    def __aiter__(self) -> AsyncIterator[int]:
        return self._each()

    async def _each(self) -> AsyncIterator[int]:
        for request in range(self.count):
            self.read += 1
            yield request


class HeldAnswers:
    """Answers each request once the test releases it."""

    def __init__(self) -> None:
        self.releases: dict[int, asyncio.Event] = {}
        self.started: list[int] = []
        self.cancelled: list[int] = []

    async def answer(self, request: int) -> str:
        self.started.append(request)
        release = self.releases.setdefault(request, asyncio.Event())
        try:
            await release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(request)
            raise
        return f"answer {request}"

    def release(self, request: int) -> None:
        self.releases.setdefault(request, asyncio.Event()).set()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_no_more_than_max_in_flight_are_read_and_answers_come_as_they_are_ready() -> None:
    requests, held = Requests(10), HeldAnswers()
    answers = answer_concurrently(aiter(requests), held.answer, max_in_flight=3)
    first = asyncio.ensure_future(anext(answers))
    await settle()
    # Three being answered, and the fourth not even read: the client's window is not given back.
    assert (requests.read, held.started) == (3, [0, 1, 2])
    held.release(2)
    assert await first == "answer 2"  # out of order: whichever is ready first
    await settle()
    assert requests.read == 3  # its slot is free once the answer is written: when the next one is asked for
    second = asyncio.ensure_future(anext(answers))
    await settle()
    assert (requests.read, held.started) == (4, [0, 1, 2, 3])
    for request in range(10):
        held.release(request)
    rest = [await second, *[answer async for answer in answers]]
    assert sorted(rest) == sorted(f"answer {request}" for request in range(10) if request != 2)


async def test_a_half_close_still_delivers_the_answers_in_flight() -> None:
    requests, held = Requests(2), HeldAnswers()
    answers = answer_concurrently(aiter(requests), held.answer, max_in_flight=5)
    collected = asyncio.ensure_future(_all(answers))
    await settle()
    assert requests.read == 2 and not collected.done()  # the requests ended; their answers are awaited
    held.release(1)
    held.release(0)
    assert await collected == ["answer 1", "answer 0"]


async def test_a_cancelled_call_stops_reading_and_drops_its_waits() -> None:
    requests, held = Requests(10), HeldAnswers()
    answers = answer_concurrently(aiter(requests), held.answer, max_in_flight=2)
    call = asyncio.ensure_future(_all(answers))
    await settle()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await settle()
    assert requests.read == 2 and sorted(held.cancelled) == [0, 1]


async def test_a_failed_read_fails_the_call() -> None:
    async def broken() -> AsyncIterator[int]:
        yield 1
        raise ValueError("undecodable")

    async def answer(request: int) -> int:
        return request

    with pytest.raises(ValueError, match="undecodable"):
        await _all(answer_concurrently(broken(), answer, max_in_flight=4))


async def _all(answers: AsyncIterator[str] | AsyncIterator[int]) -> list[object]:
    return [answer async for answer in answers]
