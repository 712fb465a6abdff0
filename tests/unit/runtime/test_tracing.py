"""services/runtime/tracing.py in process, spans kept in memory: off by default (nothing set up, no-op helpers, a
stored trace context still passed on), and on, the shapes the services rely on — a server span continuing the
caller's traceparent, a batch linked both ways to its items, an outbox event's publish span continuing the stored
context and settlement's process span continuing the publish."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.runtime import tracing
from services.runtime.batching import BatchPolicy, MicroBatcher

CALLER_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@dataclass(frozen=True)
class Event:
    subject: str
    msg_id: str
    traceparent: str | None


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    try:
        yield exporter
    finally:
        tracing.use(None)


def by_name(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def test_off_by_default_and_without_an_endpoint() -> None:
    tracing.configure("gifts", "")
    assert not tracing.enabled()
    assert tracing.start_server_span("/a.B/C", CALLER_TRACEPARENT, "req-1") is None
    assert tracing.current_traceparent() is None
    assert tracing.current_span() is None
    with tracing.client_call("/a.B/C") as metadata:
        assert metadata == ()
    assert tracing.add_trace_ids(None, "info", {"event": "x"}) == {"event": "x"}
    # A relay that does not trace still passes on the context its outbox row stored.
    publishing = tracing.publishing([Event("s", "m1", CALLER_TRACEPARENT), Event("s", "m2", None)])
    assert publishing.headers(Event("s", "m1", CALLER_TRACEPARENT)) == {"traceparent": CALLER_TRACEPARENT}
    assert publishing.headers(Event("s", "m2", None)) == {}


def test_otel_sdk_disabled_wins_over_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    tracing.configure("gifts", "http://127.0.0.1:4317")
    assert not tracing.enabled()


def test_a_server_span_continues_the_callers_trace_and_names_the_call(spans: InMemorySpanExporter) -> None:
    server_span = tracing.start_server_span("/coinstream.gifts.v1.GiftService/SendGift", CALLER_TRACEPARENT, "req-1")
    assert server_span is not None
    logged = tracing.add_trace_ids(None, "info", {"event": "x"})
    tracing.end_server_span(server_span, grpc.StatusCode.UNAVAILABLE)
    [span] = spans.get_finished_spans()
    assert span.name == "coinstream.gifts.v1.GiftService/SendGift" and span.kind is SpanKind.SERVER
    assert span.parent is not None and trace.format_span_id(span.parent.span_id) == "b7ad6b7169203331"
    assert trace.format_trace_id(span.context.trace_id) == logged["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert span.attributes is not None
    assert (span.attributes["rpc.system"], span.attributes["coinstream.request_id"]) == ("grpc", "req-1")
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert not span.status.is_ok
    assert trace.get_current_span() is trace.INVALID_SPAN  # detached again


async def test_a_batch_is_a_trace_of_its_own_linked_both_ways_to_its_items(spans: InMemorySpanExporter) -> None:
    async def process(items: list[str]) -> list[str]:
        with tracing.client_call("/coinstream.wallet.v1.WalletService/SpendCoinsBatch") as metadata:
            assert [key for key, _ in metadata] == ["traceparent"]
        return items

    batcher: MicroBatcher[str, str] = MicroBatcher("test", process, BatchPolicy(10, 1, 30.0))
    tracer = trace.get_tracer("test", tracer_provider=spans_provider())

    async def call(item: str) -> str:
        with tracer.start_as_current_span(f"call {item}"):
            return await batcher.submit(item)

    await asyncio.gather(*(call(item) for item in ("first", "second", "third")))  # one batch of three
    [batch] = by_name(spans, "batch test")
    assert batch.parent is None  # not the child of whichever call started its task
    assert len(batch.links) == 3
    for item in ("first", "second", "third"):
        [call_span] = by_name(spans, f"call {item}")
        assert call_span.context.span_id in {link.context.span_id for link in batch.links}
        assert [link.context.span_id for link in call_span.links] == [batch.context.span_id]
    [client] = by_name(spans, "coinstream.wallet.v1.WalletService/SpendCoinsBatch")
    assert client.kind is SpanKind.CLIENT
    assert client.parent is not None and client.parent.span_id == batch.context.span_id


def spans_provider() -> TracerProvider:
    assert tracing._provider is not None
    return tracing._provider


def test_publish_continues_the_stored_trace_and_settlement_the_publish(spans: InMemorySpanExporter) -> None:
    events = [Event("gifts.v1.gift_sent", "gtx_1", CALLER_TRACEPARENT), Event("gifts.v1.gift_sent", "gtx_2", None)]
    publishing = tracing.publishing(events)
    headers = [{"Nats-Msg-Id": event.msg_id, **publishing.headers(event)} for event in events]
    publishing.finish(acknowledged=1)
    with tracing.consuming("settlement credit", "gifts.v1.gift_sent", headers):
        in_credit = tracing.add_trace_ids(None, "info", {})
    publishes = by_name(spans, "publish gifts.v1.gift_sent")
    processes = by_name(spans, "process gifts.v1.gift_sent")
    [relay] = by_name(spans, "outbox relay")
    [credit] = by_name(spans, "settlement credit")
    stored = publishes[0]
    assert trace.format_trace_id(stored.context.trace_id) == "0af7651916cd43dd8448eb211c80319c"
    assert stored.kind is SpanKind.PRODUCER and stored.status.is_ok and not publishes[1].status.is_ok
    assert publishes[1].parent is None  # no stored context: a trace of its own
    assert [link.context.span_id for link in relay.links] == [int("b7ad6b7169203331", 16)]
    for publish, process in zip(publishes, processes, strict=True):
        assert process.kind is SpanKind.CONSUMER
        assert process.parent is not None and process.parent.span_id == publish.context.span_id
        assert [link.context.span_id for link in process.links] == [credit.context.span_id]
    assert {link.context.span_id for link in credit.links} == {p.context.span_id for p in publishes}
    assert in_credit["trace_id"] == trace.format_trace_id(credit.context.trace_id)
