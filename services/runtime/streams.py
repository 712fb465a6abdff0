"""Bidirectional streams of independent requests (SendGifts): each request is answered on its own, concurrently,
and each answer goes out as soon as it is ready, so answers come out of order.

Flow control is the stream's own: at most max_in_flight requests are being answered, or their answers waiting to be
written, at once, and while that many are, the request stream is not read. gRPC then stops granting the sender HTTP/2
window, so a sender faster than the answers (or slower to read them) is slowed down, never refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")


@dataclass(frozen=True)
class _Ended:
    """The requests ended (error None: the client half-closed) and every answer was queued before this."""

    error: BaseException | None = None


class _Pump(Generic[RequestT, ResponseT]):
    def __init__(self, answer: Callable[[RequestT], Awaitable[ResponseT]], max_in_flight: int) -> None:
        assert max_in_flight >= 1
        self._answer = answer
        self._slots = asyncio.Semaphore(max_in_flight)
        self.ready: asyncio.Queue[ResponseT | _Ended] = asyncio.Queue()
        self.in_flight: set[asyncio.Task[None]] = set()

    async def read(self, requests: AsyncIterator[RequestT]) -> None:
        """Reads requests while a slot is free, answers each in a task of its own, and queues _Ended once the
        requests are over and every answer is queued."""
        try:
            while True:
                # The slot first: the next request is not read (so not granted window) until one is free.
                await self._slots.acquire()
                try:
                    request = await anext(requests)
                except StopAsyncIteration:
                    self._slots.release()
                    break
                task = asyncio.create_task(self._answer_one(request))
                self.in_flight.add(task)
                task.add_done_callback(self.in_flight.discard)
            # Half-closed: the requests already taken are still answered before the stream ends.
            if self.in_flight:
                await asyncio.wait(set(self.in_flight))
            self.ready.put_nowait(_Ended())
        except Exception as error:  # reading failed (e.g. an undecodable message): the call ends with it
            self.ready.put_nowait(_Ended(error))

    async def _answer_one(self, request: RequestT) -> None:
        # The slot is released once the answer is written (answer_concurrently), not when it is ready: a client that
        # sends but does not read its answers is slowed too, and answers never pile up unbounded here.
        try:
            self.ready.put_nowait(await self._answer(request))
        except Exception as error:  # a bug in answer(): never a silently missing answer
            self.ready.put_nowait(_Ended(error))

    def answer_written(self) -> None:
        self._slots.release()


async def answer_concurrently(
    requests: AsyncIterator[RequestT],
    answer: Callable[[RequestT], Awaitable[ResponseT]],
    max_in_flight: int,
) -> AsyncIterator[ResponseT]:
    """Each request's answer, in the order they are ready. `answer` must answer every request (a refusal too): an
    exception it raises fails the whole call. When the call is cancelled (the client went away), reading stops and
    the answers still being worked out are cancelled: what they started must be safe to finish or drop (SendGift's
    batcher finishes a submitted gift whoever waits for it)."""
    pump: _Pump[RequestT, ResponseT] = _Pump(answer, max_in_flight)
    reader = asyncio.create_task(pump.read(requests))
    try:
        while not isinstance(ready := await pump.ready.get(), _Ended):
            yield ready  # resumed once gRPC took the answer: its slot is free again
            pump.answer_written()
        if ready.error is not None:
            raise ready.error
    finally:
        reader.cancel()
        for task in list(pump.in_flight):
            task.cancel()
