"""Traces end to end: an OTLP/gRPC collector in the test process (opentelemetry-proto's TraceService, nothing else)
receives what the services export. With COINSTREAM_OTLP_ENDPOINT set, a real SendGift is one trace from the
caller's traceparent through the gifts server span, the outbox publish and the settlement credit, joined by links to
the batch that paid it (batch → wallet client call → wallet SpendCoinsBatch server span), and its log lines carry
its trace_id next to its request_id. Without it nothing is exported, even with the standard OTEL_* endpoint
variables pointing at the collector, and log lines still carry request_id."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from coinstream.gifts.v1 import gifts_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from coinstream.testing.servers import stop_process
from tests.support.clients import SERVICE, Clients
from tests.support.factories import make_account
from tests.support.gifts import gift_request, go_live
from tests.support.payouts import wait_for_lifetime
from tests.support.stack import Stack

pytestmark = pytest.mark.slow

SPAN_WAIT_SECONDS = 20.0
# Spans leave a service within 0.1 s of ending, not the SDK's default 5 s.
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100", "COINSTREAM_LOG_LEVEL": "debug"}
SEND_GIFT = "coinstream.gifts.v1.GiftService/SendGift"
SPEND_COINS_BATCH = "coinstream.wallet.v1.WalletService/SpendCoinsBatch"
PUBLISH = "publish gifts.v1.gift_sent"
PROCESS = "process gifts.v1.gift_sent"


@dataclass(frozen=True)
class Collected:
    service: str
    span: trace_pb2.Span

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.span.span_id.hex()

    @property
    def parent_id(self) -> str:
        return self.span.parent_span_id.hex()

    @property
    def linked(self) -> set[str]:
        return {link.span_id.hex() for link in self.span.links}

    def attribute(self, key: str) -> str | int | None:
        for attribute in self.span.attributes:
            if attribute.key == key:
                value = attribute.value
                return value.string_value if value.HasField("string_value") else value.int_value
        return None


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[Collected] = []

    async def Export(  # noqa: N802 - the gRPC method's name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            service = next(a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name")
            for scope_spans in resource_spans.scope_spans:
                self.spans += [Collected(service, span) for span in scope_spans.spans]
        return trace_service_pb2.ExportTraceServiceResponse()

    def named(self, name: str, service: str) -> list[Collected]:
        return [c for c in self.spans if c.span.name == name and c.service == service]


@asynccontextmanager
async def collector() -> AsyncIterator[tuple[Collector, str]]:
    servicer = Collector()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, f"http://127.0.0.1:{port}"
    finally:
        await server.stop(None)


@asynccontextmanager
async def stack_services_with(stack: Stack, env: dict[str, str]) -> AsyncIterator[None]:
    """The stack's three services restarted with env (in parallel), and restarted as they were afterwards."""
    services = ("wallet", "gifts", "payouts")
    try:
        await asyncio.gather(*(asyncio.to_thread(stack.restart_service, name, env) for name in services))
        yield
    finally:
        await asyncio.gather(*(asyncio.to_thread(stack.restart_service, name) for name in services))


def caller_traceparent(index: int) -> tuple[str, str, str]:
    """A caller's own trace for a gift: (traceparent, trace_id, span_id)."""
    trace_id, span_id = os.urandom(16).hex(), f"{index + 1:016x}"
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


async def send_traced_gifts(clients: Clients, stub: gifts_pb2_grpc.GiftServiceStub, count: int) -> list[dict[str, str]]:
    """Gifts from `count` fans to one stream, at once (so they may share batches), each with a traceparent."""
    stream = await go_live(clients)
    fans = [await make_account(clients, package_id="coins_65") for _ in range(count)]
    sent = []
    for index, fan in enumerate(fans):
        traceparent, trace_id, span_id = caller_traceparent(index)
        sent.append({"request": gift_request(fan, stream.stream_id), "trace_id": trace_id, "span_id": span_id})
        sent[-1]["traceparent"] = traceparent
    replies = await asyncio.gather(
        *(
            stub.SendGift(gift["request"], metadata=(*SERVICE, ("traceparent", gift["traceparent"])), timeout=10)
            for gift in sent
        )
    )
    for gift, reply in zip(sent, replies, strict=True):
        gift["gift_transaction_id"] = reply.gift.gift_transaction_id
    await wait_for_lifetime(clients, stream.creator_id, sum(reply.gift.coins for reply in replies))
    return sent


async def test_a_gift_is_one_trace_from_send_gift_to_the_settlement_credit(stack: Stack, clients: Clients) -> None:
    async with (
        collector() as (spans, endpoint),
        stack_services_with(stack, {"COINSTREAM_OTLP_ENDPOINT": endpoint, **FAST_EXPORT}),
    ):
        gifts = await send_traced_gifts(clients, clients.gifts, count=3)
        for gift in gifts:
            chain = await wait_for_chain(spans, gift)
            assert_one_trace_joined_by_links(chain, gift)
        assert_logged_with_trace_id(stack.services["gifts"].log_path, gifts)


@dataclass
class Chain:
    """The spans of one gift, gifts → wallet → gifts' relay → payouts."""

    send_gift: Collected
    batch: Collected
    wallet_client: Collected
    wallet_server: Collected
    publish: Collected
    relay: Collected
    process: Collected
    credit: Collected


async def wait_for_chain(spans: Collector, gift: dict[str, str]) -> Chain:
    deadline = asyncio.get_running_loop().time() + SPAN_WAIT_SECONDS
    while True:
        chain = find_chain(spans, gift)
        if chain is not None:
            return chain
        if asyncio.get_running_loop().time() > deadline:
            names = sorted({(c.service, c.span.name) for c in spans.spans})
            raise AssertionError(f"the trace of {gift['gift_transaction_id']} is incomplete; spans seen: {names}")
        await asyncio.sleep(0.2)


def find_chain(spans: Collector, gift: dict[str, str]) -> Chain | None:
    """Follows parents and links from the gift's SendGift server span; None while a span has not arrived yet."""
    send_gift = one(c for c in spans.named(SEND_GIFT, "gifts") if c.trace_id == gift["trace_id"])
    batch = send_gift and one(c for c in spans.named("batch send_gift", "gifts") if c.span_id in send_gift.linked)
    wallet_client = batch and one(c for c in spans.named(SPEND_COINS_BATCH, "gifts") if c.parent_id == batch.span_id)
    wallet_server = wallet_client and one(
        c for c in spans.named(SPEND_COINS_BATCH, "wallet") if c.parent_id == wallet_client.span_id
    )
    publish = send_gift and one(c for c in spans.named(PUBLISH, "gifts") if c.parent_id == send_gift.span_id)
    relay = publish and one(c for c in spans.named("outbox relay", "gifts") if c.span_id in publish.linked)
    process = publish and one(c for c in spans.named(PROCESS, "payouts") if c.parent_id == publish.span_id)
    credit = process and one(c for c in spans.named("settlement credit", "payouts") if c.span_id in process.linked)
    if not (send_gift and batch and wallet_client and wallet_server and publish and relay and process and credit):
        return None
    return Chain(send_gift, batch, wallet_client, wallet_server, publish, relay, process, credit)


def one(candidates: Iterable[Collected]) -> Collected | None:
    found = list(candidates)
    assert len(found) <= 1, f"{len(found)} spans where one was expected: {[c.span.name for c in found]}"
    return found[0] if found else None


def assert_one_trace_joined_by_links(chain: Chain, gift: dict[str, str]) -> None:
    # The gift's own trace: the caller's, through the server span, the publish and the settlement of this gift.
    assert chain.send_gift.parent_id == gift["span_id"]
    assert chain.send_gift.attribute("coinstream.request_id") == gift["request"].request_id
    assert chain.send_gift.attribute("rpc.grpc.status_code") == grpc.StatusCode.OK.value[0]
    assert {chain.publish.trace_id, chain.process.trace_id} == {gift["trace_id"]}
    assert chain.publish.attribute("messaging.message.id") == gift["gift_transaction_id"]
    assert chain.process.attribute("messaging.message.id") == gift["gift_transaction_id"]
    # Batches serve many gifts: traces of their own, linked both ways to every gift they served.
    assert chain.batch.trace_id != gift["trace_id"] and not chain.batch.parent_id
    assert chain.send_gift.span_id in chain.batch.linked
    assert {chain.wallet_client.trace_id, chain.wallet_server.trace_id} == {chain.batch.trace_id}
    assert chain.wallet_client.span.kind == trace_pb2.Span.SPAN_KIND_CLIENT
    assert chain.wallet_server.span.kind == trace_pb2.Span.SPAN_KIND_SERVER
    assert chain.send_gift.span_id in chain.relay.linked  # the relay's batch links to what the rows stored
    assert chain.publish.span_id in chain.credit.linked
    assert chain.credit.attribute("messaging.batch.message_count")


def assert_logged_with_trace_id(log_path: Path, gifts: list[dict[str, str]]) -> None:
    """Each SendGift's access line (debug here) names its request_id and its trace_id."""
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    by_request = {line.get("request_id"): line for line in lines if line.get("event") == "rpc_ok"}
    for gift in gifts:
        line = by_request.get(gift["request"].request_id)
        assert line is not None, f"no access line for {gift['request'].request_id}"
        assert line["trace_id"] == gift["trace_id"] and line["method"].endswith("/SendGift")


async def test_with_tracing_off_nothing_is_exported_and_logs_keep_request_ids(stack: Stack, clients: Clients) -> None:
    async with collector() as (spans, endpoint):
        # The standard variables alone do not turn tracing on: COINSTREAM_OTLP_ENDPOINT does.
        standard_only = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint}
        replica = await asyncio.to_thread(stack.start_replica, "gifts", {**standard_only, **FAST_EXPORT})
        try:
            async with grpc.aio.insecure_channel(replica.address) as channel:
                gifts = await send_traced_gifts(clients, gifts_pb2_grpc.GiftServiceStub(channel), count=1)
            await asyncio.sleep(1.0)  # ten export intervals, had anything been set up to export
        finally:
            assert replica.process is not None
            await asyncio.to_thread(stop_process, replica.process)
        assert spans.spans == []
    lines = [json.loads(line) for line in replica.log_path.read_text().splitlines() if line.startswith("{")]
    [access] = [line for line in lines if line.get("request_id") == gifts[0]["request"].request_id]
    assert access["event"] == "rpc_ok" and "trace_id" not in access
    assert not any("trace_id" in line for line in lines)
