"""The service interceptor on an in-process grpc.aio server (no databases): RPC kinds it does not wrap —
client-streaming and bidirectional — are refused rather than served without authentication."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from services.runtime.auth import TokenVerifier
from services.runtime.batching import LoopLag
from services.runtime.config import RuntimeSettings
from services.runtime.interceptors import ServiceInterceptor

pytestmark = pytest.mark.timeout(30)


async def echo_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


async def count(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    return str(len([request async for request in requests])).encode()


async def ping(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


HANDLERS = grpc.method_handlers_generic_handler(
    "test.Kinds",
    {
        "Chat": grpc.stream_stream_rpc_method_handler(echo_stream),
        "Upload": grpc.stream_unary_rpc_method_handler(count),
        "Ping": grpc.unary_unary_rpc_method_handler(ping),
    },
)


async def test_streaming_kinds_the_interceptor_does_not_wrap_are_refused() -> None:
    interceptor = ServiceInterceptor(TokenVerifier(RuntimeSettings()), lambda: True, 100, LoopLag(), 1.0)
    server = grpc.aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers((HANDLERS,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for method, call in (
                ("Chat", channel.stream_stream("/test.Kinds/Chat")),
                ("Upload", channel.stream_unary("/test.Kinds/Upload")),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    # No request messages: a client still writing when the server refuses reports its own failed
                    # write (INTERNAL) instead of the server's status.
                    reply = call(iter(()))
                    if method == "Chat":
                        async for _ in reply:
                            pass
                    else:
                        await reply
                assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED, method
            # A unary call is wrapped: without a token it is refused as unauthenticated.
            with pytest.raises(grpc.aio.AioRpcError) as unauthenticated:
                await channel.unary_unary("/test.Kinds/Ping")(b"x")
            assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await server.stop(None)
