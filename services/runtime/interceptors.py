"""One server interceptor for every RPC: readiness, JWT authentication, request logging with request_id,
Prometheus metrics, a trace span per unary call (when tracing is on), and mapping of AppError (and anything
unexpected) to a gRPC status with ErrorInfo."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
import structlog
from google.protobuf.message import DecodeError
from prometheus_client import Counter, Histogram

from services.runtime import tracing
from services.runtime.auth import ROLE_SERVICE, Principal, TokenVerifier, set_current_principal
from services.runtime.authorization import access_of
from services.runtime.batching import LoopLag, overloaded
from services.runtime.errors import (
    AppError,
    FieldViolation,
    database_unavailable,
    invalid_argument,
    rate_limited,
    unavailable,
)
from services.runtime.rate_limits import CallerRateLimiter
from services.runtime.validation import REQUEST_ID_PATTERN

# Health checks and reflection must work without a token (probes, grpcurl).
PUBLIC_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

RPC_TOTAL = Counter("coinstream_rpc_total", "RPCs handled", ["method", "code"])
# By code too: refusals answered in a fraction of a millisecond would hide the latency of the calls that did work.
RPC_SECONDS = Histogram("coinstream_rpc_seconds", "RPC handling time", ["method", "code"])
# Calls refused by admission control before any work (RESOURCE_EXHAUSTED RATE_LIMITED), by cause: too many calls in
# flight, or an event loop running late. Batch queues shed on their own (coinstream_batch_shed_total).
RPC_SHED = Counter("coinstream_rpc_shed_total", "Calls shed by admission control", ["method", "cause"])

log = structlog.get_logger()

# The interceptor wraps every RPC whatever its messages, so its handlers and contexts take any request and response.
# (Quoted: grpc's classes are generic in its stubs only.)
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
# A servicer method's context, as every servicer and this interceptor type it.
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        verifier: TokenVerifier,
        is_ready: Callable[[], bool],
        max_in_flight_unary: int,
        loop_lag: LoopLag,
        queue_budget_seconds: float,
        unshed_methods: frozenset[str] = frozenset(),
        rate_limiter: CallerRateLimiter | None = None,
        max_public_streams: int = 100,
    ) -> None:
        # Overload shedding with the contract's answer (RESOURCE_EXHAUSTED, RATE_LIMITED) rather than a queue that
        # grows until every call times out: when calls wait too long for the event loop (the process is short of
        # CPU), and beyond a count of calls in flight. Streams (live feeds) have limits of their own; the batched
        # hot paths also refuse what would wait too long in their queues.
        self._max_in_flight_unary = max_in_flight_unary
        self._loop_lag = loop_lag
        self._queue_budget_seconds = queue_budget_seconds
        # Calls that carry work already accepted elsewhere (a batch of gifts' spends): refusing one would leave
        # every item of it waiting for a recovery pass instead of lightening the load.
        self._unshed_methods = unshed_methods
        self._in_flight_unary = 0
        self._verifier = verifier
        self._is_ready = is_ready
        self._rate_limiter = rate_limiter or CallerRateLimiter({})
        self._max_public_streams = max_public_streams
        self._public_streams = 0

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:
            return handler
        if method.startswith(PUBLIC_METHOD_PREFIXES):
            return self._bounded_public(handler)
        metadata = dict(handler_call_details.invocation_metadata or ())
        authorization = _text_header(metadata, "authorization")
        traceparent = _text_header(metadata, tracing.TRACEPARENT)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method, authorization, traceparent),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method, authorization),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None and _declares_stream_access(handler.stream_stream):
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_bidirectional(handler.stream_stream, method, authorization),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return _refused_unwrapped(handler, method)

    def _bounded_public(self, handler: Handler) -> Handler:
        """Health and reflection need no token, so anyone who reaches the port may open their streams (Health.Watch,
        reflection's bidirectional stream): at most max_public_streams at once, beyond it RESOURCE_EXHAUSTED."""
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._count_public_stream(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._count_public_stream(handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # unary (Health.Check): over at once; per connection, max_concurrent_streams bounds it

    def _count_public_stream(self, behavior: Any) -> Any:
        async def handle(request: Any, context: Context) -> None:
            if self._public_streams >= self._max_public_streams:
                status = rate_limited("too many health or reflection streams open", 1.0).to_status()
                await context.abort(status.code, status.details, status.trailing_metadata)
            self._public_streams += 1
            try:
                # The servicers differ: health's Watch writes with context.write(), reflection is a generator.
                outcome = behavior(request, context)
                if inspect.isasyncgen(outcome):
                    async for response in outcome:
                        await context.write(response)
                else:
                    await outcome
            finally:
                self._public_streams -= 1

        return handle

    def _admit(self, method: str, authorization: str | None) -> None:
        if not self._is_ready():
            raise unavailable("NOT_READY", "service is starting or stopping; retry shortly")
        principal = self._verifier.verify(authorization)
        set_current_principal(principal)
        self._limit_rate(method, principal)

    def _limit_rate(self, method: str, principal: Principal) -> None:
        if ROLE_SERVICE in principal.roles:
            return  # a trusted backend acting for many users: bounded by the process's admission control
        self._rate_limiter.admit(method.rpartition("/")[2], principal.subject)

    def _shed_cause(self, method: str) -> str | None:
        """Why this call is refused at once to protect the calls already accepted (None: it is not)."""
        if method in self._unshed_methods:
            return None
        if self._in_flight_unary > self._max_in_flight_unary:
            return "in_flight"
        if self._loop_lag.seconds > self._queue_budget_seconds:
            return "loop_lag"
        return None

    def _wrap_unary(self, behavior: Any, method: str, authorization: str | None, traceparent: str | None) -> Any:
        async def handle(request: Any, context: Context) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            request_id = loggable_request_id(request)
            structlog.contextvars.bind_contextvars(method=method, request_id=request_id)
            span = tracing.start_server_span(method, traceparent, request_id)  # None unless tracing is on
            self._in_flight_unary += 1
            try:
                shed_cause = self._shed_cause(method)
                if shed_cause is not None:
                    RPC_SHED.labels(method, shed_cause).inc()
                    raise overloaded()
                self._admit(method, authorization)
                _refuse_undecodable(request)
                return await behavior(request, context)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED  # the client went away; not an OK to count or log
                raise
            except AppError as error:
                code = error.code
                await _abort(context, error, method, started)
            except Exception as error:
                answer = _answer_for_unexpected(error)
                code = answer.code if answer else grpc.StatusCode.INTERNAL
                await _abort_unexpected(context, answer, method, started)
            finally:
                self._in_flight_unary -= 1
                _observe(method, code, started)
                if span is not None:
                    tracing.end_server_span(span, code)
            raise AssertionError("unreachable: abort() raises")

        return handle

    def _wrap_stream(self, behavior: Any, method: str, authorization: str | None) -> Any:
        async def handle(request: Any, context: Context) -> Any:
            structlog.contextvars.bind_contextvars(method=method, request_id=loggable_request_id(request))

            async def responses() -> AsyncIterator[Any]:
                _refuse_undecodable(request)
                async for response in behavior(request, context):
                    yield response

            async for response in self._answered(method, authorization, context, responses):
                yield response

        return handle

    def _wrap_bidirectional(self, behavior: Any, method: str, authorization: str | None) -> Any:
        """A bidirectional stream of independent requests (SendGifts): admitted once, at its start (the token is
        checked then; the stream's own requests each carry their request_id, logged by the servicer), counted once
        when it ends, and an AppError raised by it becomes the call's status. Not shed by the unary in-flight count:
        its flow control is the stream's own (services/runtime/streams.py)."""

        async def handle(request_iterator: Any, context: Context) -> Any:
            structlog.contextvars.bind_contextvars(method=method)

            def responses() -> AsyncIterator[Any]:
                return behavior(_decoded(request_iterator), context)  # type: ignore[no-any-return]

            async for response in self._answered(method, authorization, context, responses):
                yield response

        return handle

    async def _answered(
        self, method: str, authorization: str | None, context: Context, responses: Callable[[], AsyncIterator[Any]]
    ) -> AsyncIterator[Any]:
        """A streaming call's responses, started once the call is admitted; an AppError ends the call with its status,
        anything else with the answer for the unexpected, and the call is counted once when it ends."""
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            self._admit(method, authorization)
            async for response in responses():
                yield response
        except AppError as error:
            code = error.code
            await _abort(context, error, method, started)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED  # the client went away mid-stream: not an OK call in the metrics
            raise
        except Exception as error:
            answer = _answer_for_unexpected(error)
            code = answer.code if answer else grpc.StatusCode.INTERNAL
            await _abort_unexpected(context, answer, method, started)
        finally:
            _observe(method, code, started)


def _declares_stream_access(behavior: Any) -> bool:
    """Whether a bidirectional method declares who may call it by role alone: the only kind of declaration a stream
    of requests can be checked against once, at its start (an owner is named by each request, not by the stream)."""
    access = access_of(behavior)
    return access is not None and access.owner_field is None and not access.resource_owner


async def _decoded(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The stream's requests; one that cannot be parsed ends the call INVALID_ARGUMENT (its request_id, which its
    answer would need, is unreadable)."""
    async for request in requests:
        _refuse_undecodable(request)
        yield request


def _text_header(metadata: dict[str, str | bytes], key: str) -> str | None:
    """A text header's value: only keys ending in -bin carry bytes."""
    value = metadata.get(key)
    return value if isinstance(value, str) else None


class _Undecodable:
    """A request its message type could not parse: a corrupt wire format, or a string field that is not UTF-8."""


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """grpc answers UNKNOWN, with the exception's text, when a request fails to parse: the caller gets INVALID_ARGUMENT
    instead (_refuse_undecodable, once the call is authenticated)."""
    if deserializer is None:
        return None

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except DecodeError:
            return _Undecodable()

    return deserialize


def _refuse_undecodable(request: Any) -> None:
    if isinstance(request, _Undecodable):
        raise invalid_argument([FieldViolation("request", "is not a valid message of this RPC's request type")])


def loggable_request_id(request: Any) -> str | None:
    """The request_id as it may appear in logs: as sent when it is a valid one, else only its length — a caller's
    garbage (or a secret pasted by mistake) never reaches a log line."""
    value = getattr(request, "request_id", None)
    if not isinstance(value, str):
        return None
    return value if REQUEST_ID_PATTERN.fullmatch(value) else f"<invalid, {len(value)} characters>"


def _refused_unwrapped(handler: Handler, method: str) -> Handler:
    """Client-streaming handlers, and bidirectional ones that declare no role-only access, are not wrapped (no
    authentication, limits or error mapping), so serving one as it is would expose it unauthenticated: every call to
    it is refused, loudly, until it is wrapped."""
    log.error("rpc_kind_not_wrapped", method=method)

    async def refuse(request: Any, context: Context) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this kind of RPC is not served")

    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse, handler.request_deserializer, handler.response_serializer)
    return grpc.stream_stream_rpc_method_handler(refuse, handler.request_deserializer, handler.response_serializer)


def answer_for_unexpected(error: Exception) -> AppError:
    """An unexpected exception as one answer inside a stream (SendGifts), logged like a call's: DATABASE_UNAVAILABLE,
    or INTERNAL without the exception's text."""
    answer = _answer_for_unexpected(error)
    return answer or AppError(grpc.StatusCode.INTERNAL, "INTERNAL", "internal error; retry with the same request_id")


def _answer_for_unexpected(error: Exception) -> AppError | None:
    """An exception no use case turned into an answer: the database being unavailable is UNAVAILABLE
    DATABASE_UNAVAILABLE (retry as it is); anything else (None) is a bug, logged with its traceback."""
    answer = database_unavailable(error)
    if answer is not None:
        log.warning("rpc_database_unavailable", error=repr(error))
    else:
        log.exception("rpc_failed_unexpectedly")
    return answer


async def _abort_unexpected(context: Context, answer: AppError | None, method: str, started: float) -> None:
    if answer is not None:
        await _abort(context, answer, method, started)
    # The client gets INTERNAL rather than the exception's text.
    await context.abort(grpc.StatusCode.INTERNAL, "internal error; retry with the same request_id")


async def _abort(context: Context, error: AppError, method: str, started: float) -> None:
    # Shedding refuses hundreds of calls a second at the worst moment for a line each: those are counted in the
    # metrics (coinstream_rpc_total by code, coinstream_rpc_shed_total, coinstream_batch_shed_total) and logged at
    # debug only.
    log_refusal = log.debug if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED else log.info
    log_refusal(
        "rpc_refused",
        code=error.code.name,
        reason=error.reason,
        message=error.message,
        duration_ms=round((time.perf_counter() - started) * 1000, 2),
    )
    status = error.to_status()
    await context.abort(status.code, status.details, status.trailing_metadata)


# The series of each method and code, looked up once: prometheus_client's labels() takes microseconds per call, a
# visible cost on a hot call. Bounded: registered methods only (unknown ones never reach the wrappers) × codes.
_SERIES: dict[tuple[str, grpc.StatusCode], tuple[Any, Any]] = {}


def _observe(method: str, code: grpc.StatusCode, started: float) -> None:
    elapsed = time.perf_counter() - started
    series = _SERIES.get((method, code))
    if series is None:
        series = _SERIES[(method, code)] = (RPC_TOTAL.labels(method, code.name), RPC_SECONDS.labels(method, code.name))
    count, seconds = series
    count.inc()
    seconds.observe(elapsed)
    if code == grpc.StatusCode.OK:
        # Debug only: a line per successful call was a visible share of a hot call's CPU. Refusals and failures
        # are still logged at info and above; every call is counted and timed in the metrics.
        log.debug("rpc_ok", duration_ms=round(elapsed * 1000, 2))
