"""OpenTelemetry traces: off unless COINSTREAM_OTLP_ENDPOINT names an OTLP/gRPC collector. Every span the services
make is made here, so the rest of the code says what it does ("a server call", "a batch", "a publish") and never how.

Off (the default), nothing is set up and every helper returns at once: a module global checked, a shared no-op
context manager returned. On, spans go through the SDK's batching processor to the OTLP exporter in a background
thread; the standard OTEL_* variables tune the rest (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
OTEL_TRACES_SAMPLER and _ARG, OTEL_BSP_*, OTEL_EXPORTER_OTLP_TRACES_{HEADERS,CERTIFICATE,TIMEOUT,COMPRESSION}), and
OTEL_SDK_DISABLED=true turns them off again.

One gift, one trace: the caller's `traceparent` (gRPC metadata, W3C trace context) is the parent of the SendGift
server span; the outbox row stores that span's traceparent; the relay's publish span is its child and goes in the
NATS headers; settlement's process span is the child of that. Batches serve many gifts, so a batch span is the root
of a trace of its own with a link to every item's span (and each item's span links back to its batch): no item is
made the parent of work it shares with 199 others. The wallet call and the wallet's server span are children of the
batch span that made them."""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

TRACEPARENT = "traceparent"
MESSAGE_ID_HEADER = "Nats-Msg-Id"
# A process going away gives its last spans this long to reach the collector (the export thread is a daemon: a
# collector that does not answer never holds a shutdown up for longer).
SHUTDOWN_FLUSH_MILLIS = 2000
# gRPC codes that are the server's failure rather than the caller's (OpenTelemetry's rule for server spans).
SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

# The span's name is the call's "package.Service/Method" already: rpc.service and rpc.method would repeat it, and
# every attribute costs the SDK a few microseconds per span.
RPC_ATTRIBUTES = {"rpc.system": "grpc"}

_PROPAGATOR = TraceContextTextMapPropagator()
_NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()
_NO_METADATA: contextlib.nullcontext[tuple[tuple[str, str], ...]] = contextlib.nullcontext(())
# The process's tracer: None while tracing is off, which every helper checks first.
_tracer: trace.Tracer | None = None
_provider: TracerProvider | None = None


def configure(service_name: str, endpoint: str) -> None:
    """Sets up the exporter when an endpoint is given (http://host:4317 plaintext, https:// TLS); else nothing."""
    if not endpoint or os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return
    # Imported here: a process with tracing off never loads the SDK or the exporter.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {"service.namespace": "coinstream"}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = service_name
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    use(provider)


def use(provider: TracerProvider | None) -> None:
    """Spans go to this provider from now on; None turns tracing off. configure() calls it, tests give their own.
    The process-wide OpenTelemetry provider is left alone: nothing else here makes spans."""
    global _tracer, _provider
    _provider = provider
    _tracer = None if provider is None else provider.get_tracer("coinstream")


def enabled() -> bool:
    return _tracer is not None


def shutdown() -> None:
    """Flushes the spans still queued, for a bounded time."""
    if _provider is not None:
        _provider.force_flush(SHUTDOWN_FLUSH_MILLIS)


# ---- the current span, for logs and for storing a context


def forget_inherited_context() -> None:
    """For a task that works for many callers (a batch's drain): it started with the context of whichever caller
    created it, whose trace its own log lines must not carry."""
    if _tracer is not None:
        otel_context.attach(otel_context.Context())


def current_traceparent() -> str | None:
    """The current span's W3C traceparent, to store with work another task continues later (an outbox row)."""
    if _tracer is None:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get(TRACEPARENT)


def add_trace_ids(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: trace_id and span_id of the current span on every line logged inside one, so that a
    log line leads to its trace and a trace to its lines."""
    if _tracer is None:
        return event_dict
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event_dict["trace_id"] = trace.format_trace_id(span_context.trace_id)
        event_dict["span_id"] = trace.format_span_id(span_context.span_id)
    return event_dict


# ---- gRPC


@dataclass
class ServerSpan:
    span: trace.Span
    token: contextvars.Token[otel_context.Context]


def start_server_span(method: str, traceparent: str | None, request_id: str | None) -> ServerSpan | None:
    """The span of one unary call, current until end_server_span; its parent is the caller's traceparent, if any.
    None when tracing is off."""
    if _tracer is None:
        return None
    parent = _PROPAGATOR.extract({TRACEPARENT: traceparent}) if traceparent else None
    attributes = RPC_ATTRIBUTES if request_id is None else {**RPC_ATTRIBUTES, "coinstream.request_id": request_id}
    span = _tracer.start_span(method.lstrip("/"), parent, SpanKind.SERVER, attributes)
    return ServerSpan(span, otel_context.attach(trace.set_span_in_context(span)))


def end_server_span(server_span: ServerSpan, code: grpc.StatusCode) -> None:
    span = server_span.span
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in SERVER_ERROR_CODES:
        span.set_status(Status(StatusCode.ERROR, code.name))
    otel_context.detach(server_span.token)
    span.end()


def client_call(method: str) -> contextlib.AbstractContextManager[tuple[tuple[str, str], ...]]:
    """Around an outgoing unary call: a client span, and the metadata that carries its context to the server
    (empty when tracing is off)."""
    if _tracer is None:
        return _NO_METADATA
    return _client_span(_tracer, method)


@contextlib.contextmanager
def _client_span(tracer: trace.Tracer, method: str) -> Iterator[tuple[tuple[str, str], ...]]:
    with tracer.start_as_current_span(method.lstrip("/"), kind=SpanKind.CLIENT, attributes=RPC_ATTRIBUTES) as span:
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        try:
            yield tuple(carrier.items())
        except grpc.aio.AioRpcError as error:
            span.set_attribute("rpc.grpc.status_code", error.code().value[0])
            raise
        span.set_attribute("rpc.grpc.status_code", grpc.StatusCode.OK.value[0])


# ---- batches


def current_span() -> trace.Span | None:
    """The span a batch item is submitted under (None when tracing is off): its batch links to it."""
    if _tracer is None:
        return None
    return trace.get_current_span()


def batch(name: str, items: Iterable[trace.Span | None]) -> contextlib.AbstractContextManager[None]:
    """A batch's span, current while it runs: the root of a trace of its own, linked to each item's span, and
    each item's span linked back to it. (Items are read only when tracing is on.)"""
    if _tracer is None:
        return _NO_SPAN
    return _batch_span(_tracer, name, list(items))


@contextlib.contextmanager
def _batch_span(tracer: trace.Tracer, name: str, items: Sequence[trace.Span | None]) -> Iterator[None]:
    item_contexts = [item.get_span_context() for item in items if item is not None]
    links = [Link(span_context) for span_context in item_contexts if span_context.is_valid]
    # An empty context: not the child of whichever caller's task happened to start the batch.
    with tracer.start_as_current_span(
        name, otel_context.Context(), attributes={"coinstream.batch.size": len(items)}, links=links
    ) as span:
        for item in items:
            if item is not None and item.is_recording():
                item.add_link(span.get_span_context())
        yield


# ---- NATS: the outbox relay publishes, settlement consumes


class OutboxMessage(Protocol):
    @property
    def subject(self) -> str: ...
    @property
    def msg_id(self) -> str: ...
    @property
    def traceparent(self) -> str | None: ...


class Publishing:
    """One relay batch's spans: the batch, and a PRODUCER span per event, the child of the context its outbox row
    stored. Off (this class itself), it only passes a stored traceparent on, so that a trace survives a relay that
    does not trace."""

    def headers(self, event: OutboxMessage) -> Mapping[str, str]:
        """The trace context to send in the event's NATS headers."""
        return {TRACEPARENT: event.traceparent} if event.traceparent else {}

    def finish(self, acknowledged: int) -> None:
        """The leading `acknowledged` events were stored by JetStream; the others were not."""


class _TracedPublishing(Publishing):
    def __init__(self, tracer: trace.Tracer, events: Sequence[OutboxMessage]) -> None:
        parents = [_parent_of(event.traceparent) for event in events]
        self._batch = tracer.start_span(
            "outbox relay",
            otel_context.Context(),
            attributes={"messaging.batch.message_count": len(events)},
            links=_links_to(parents),
        )
        batch_link = [Link(self._batch.get_span_context())]
        self._carriers: dict[str, dict[str, str]] = {}
        self._spans: list[trace.Span] = []
        for event, parent in zip(events, parents, strict=True):
            attributes = _message_attributes(event.subject, event.msg_id)
            span = tracer.start_span(f"publish {event.subject}", parent, SpanKind.PRODUCER, attributes, batch_link)
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier, trace.set_span_in_context(span))
            self._carriers[event.msg_id] = carrier
            self._spans.append(span)

    def headers(self, event: OutboxMessage) -> Mapping[str, str]:
        return self._carriers[event.msg_id]

    def finish(self, acknowledged: int) -> None:
        for index, span in enumerate(self._spans):
            if index >= acknowledged:
                span.set_status(Status(StatusCode.ERROR, "not acknowledged by JetStream"))
            span.end()
        self._batch.set_attribute("coinstream.acknowledged", acknowledged)
        self._batch.end()


def publishing(events: Sequence[OutboxMessage]) -> Publishing:
    if _tracer is None:
        return Publishing()
    return _TracedPublishing(_tracer, events)


def consuming(
    name: str, subject: str, headers: Sequence[Mapping[str, str] | None]
) -> contextlib.AbstractContextManager[None]:
    """Around the processing of a batch of messages: its span (current while it runs, the root of a trace of its
    own, linked to every message's context) and a CONSUMER span per message, the child of the context its headers
    carry and linked to the batch, so that each gift's trace reaches the batch that credited it."""
    if _tracer is None:
        return _NO_SPAN
    return _consuming(_tracer, name, subject, headers)


@contextlib.contextmanager
def _consuming(
    tracer: trace.Tracer, name: str, subject: str, headers: Sequence[Mapping[str, str] | None]
) -> Iterator[None]:
    messages = [message_headers or {} for message_headers in headers]
    parents = [_parent_of(message_headers.get(TRACEPARENT)) for message_headers in messages]
    with tracer.start_as_current_span(
        name,
        otel_context.Context(),
        attributes={"messaging.batch.message_count": len(messages)},
        links=_links_to(parents),
    ) as batch_span:
        batch_link = [Link(batch_span.get_span_context())]
        spans = [
            tracer.start_span(
                f"process {subject}",
                parent,
                SpanKind.CONSUMER,
                _message_attributes(subject, message_headers.get(MESSAGE_ID_HEADER)),
                batch_link,
            )
            for message_headers, parent in zip(messages, parents, strict=True)
        ]
        try:
            yield
        finally:
            for span in spans:
                span.end()


def _parent_of(traceparent: str | None) -> otel_context.Context:
    """The context a stored or received traceparent names (an empty one, for a new trace, when there is none)."""
    if not traceparent:
        return otel_context.Context()
    return _PROPAGATOR.extract({TRACEPARENT: traceparent})


def _links_to(parents: Sequence[otel_context.Context]) -> list[Link]:
    span_contexts = [trace.get_current_span(parent).get_span_context() for parent in parents]
    return [Link(span_context) for span_context in span_contexts if span_context.is_valid]


def _message_attributes(subject: str, message_id: str | None) -> dict[str, str]:
    attributes = {"messaging.system": "nats", "messaging.destination.name": subject}
    if message_id is not None:
        attributes["messaging.message.id"] = message_id
    return attributes
