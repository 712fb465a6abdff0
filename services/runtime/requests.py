"""What every mutating RPC's use case receives and keeps, without protobuf or a database: its idempotency key and how
its result is kept with that key.

The servicer turns the (caller-scoped) request message into a RequestKey — request_id, RPC, fingerprint of all it
asks — and the use case takes a domain command carrying it. A store runs the command at most once per key
(idempotency.run_once on PostgreSQL; an in-memory fake in the tests) and keeps the result as the RPC's
response message (a Reply), so that a replay returns the identical response, even across releases."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from google.protobuf.message import Message

from services.runtime.errors import AppError

Result = TypeVar("Result")
ResponseT = TypeVar("ResponseT", bound=Message)


class MutatingRequest(Protocol):
    """What idempotency reads of a request: the request_id that every mutating request carries (the contract), and
    its serialized form for the fingerprint. Every generated *Request message with a request_id field is one."""

    request_id: str

    def SerializeToString(self, *, deterministic: bool = ...) -> bytes: ...


@dataclass(frozen=True)
class RequestKey:
    """A mutating request's idempotency key: its request_id (already scoped to the caller), its RPC, and a
    fingerprint of everything it asks. The same request_id with another fingerprint is REQUEST_ID_REUSED."""

    request_id: str
    method: str
    fingerprint: bytes

    @classmethod
    def of(cls, request: MutatingRequest) -> RequestKey:
        method = method_name(request)
        return cls(request.request_id, method, fingerprint(method, request))


def method_name(request: MutatingRequest) -> str:
    """The RPC a request belongs to, by the contract's naming (FooRequest is the request of Foo)."""
    return type(request).__name__.removesuffix("Request")


def fingerprint(method: str, request: MutatingRequest) -> bytes:
    return hashlib.sha256(method.encode() + b"\0" + request.SerializeToString(deterministic=True)).digest()


@dataclass(frozen=True)
class StoredRequest:
    """What a key holds: the resource it is working on, and once decided, the response or the final error."""

    resource_id: str | None
    response: bytes | None
    error: AppError | None

    @property
    def in_flight(self) -> bool:
        return self.response is None and self.error is None


@dataclass(frozen=True)
class Outcome:
    """What a request of a batch ended with: a response, a final error, or (both None) the resource it works on."""

    request_id: str
    response: Message | None = None
    error: AppError | None = None
    resource_id: str | None = None


class Reply(Protocol[Result]):
    """How a use case's result is kept with its key: as the RPC's response message."""

    def to_message(self, result: Result) -> Message: ...

    def from_bytes(self, stored: bytes) -> Result: ...


@dataclass(frozen=True)
class MessageReply(Generic[Result, ResponseT]):
    """A Reply: the result kept as its RPC's response message, converted both ways (a service's convert.py holds one
    per RPC)."""

    message_type: type[ResponseT]
    encode: Callable[[Result], ResponseT]
    decode: Callable[[ResponseT], Result]

    def to_message(self, result: Result) -> ResponseT:
        return self.encode(result)

    def from_bytes(self, stored: bytes) -> Result:
        return self.decode(self.message_type.FromString(stored))


def replayed(stored: StoredRequest, reply: Reply[Result]) -> Result:
    """What a completed request left with its key, again: the same result, or the same error raised."""
    if stored.error is not None:
        raise stored.error
    assert stored.response is not None, "a replay needs a completed request"
    return reply.from_bytes(stored.response)
