"""The service interceptor on an in-process grpc.aio server (no databases): RPC kinds it does not wrap —
client-streaming, and bidirectional streams that declare no role-only access — are refused rather than served without
authentication; a declared bidirectional stream (SendGifts) is authenticated, authorized and error-mapped."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest

from services.runtime.auth import ROLE_SERVICE, TokenVerifier, mint_token
from services.runtime.authorization import allow_roles
from services.runtime.batching import LoopLag
from services.runtime.config import RuntimeSettings
from services.runtime.errors import failed_precondition
from services.runtime.interceptors import ServiceInterceptor

pytestmark = pytest.mark.timeout(30)


async def echo_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


async def count(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    return str(len([request async for request in requests])).encode()


async def ping(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


def auth(subject: str, role: str) -> tuple[tuple[str, str], ...]:
    secret = RuntimeSettings().auth_secret.get_secret_value()  # what the interceptor's verifier checks against
    return (("authorization", f"Bearer {mint_token(secret, subject, [role])}"),)


class Declared:
    """A servicer's bidirectional method declared for the service role, as SendGifts is."""

    @allow_roles(ROLE_SERVICE)
    async def Echo(  # noqa: N802 (an RPC's name)
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async for request in requests:
            if request == b"refuse":
                raise failed_precondition("REFUSED", "refused as asked")
            yield request


HANDLERS = grpc.method_handlers_generic_handler(
    "test.Kinds",
    {
        "Echo": grpc.stream_stream_rpc_method_handler(Declared().Echo),
        "Chat": grpc.stream_stream_rpc_method_handler(echo_stream),
        "Upload": grpc.stream_unary_rpc_method_handler(count),
        "Ping": grpc.unary_unary_rpc_method_handler(ping),
    },
)


@asynccontextmanager
async def serving_kinds() -> AsyncIterator[grpc.aio.Channel]:
    """A server with the interceptor in front of HANDLERS, and a channel to it."""
    interceptor = ServiceInterceptor(TokenVerifier(RuntimeSettings()), lambda: True, 100, LoopLag(), 1.0)
    server = grpc.aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers((HANDLERS,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(None)


async def test_streaming_kinds_the_interceptor_does_not_wrap_are_refused() -> None:
    async with serving_kinds() as channel:
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


async def test_a_declared_bidirectional_stream_is_authenticated_authorized_and_error_mapped() -> None:
    async with serving_kinds() as channel:
        echo = channel.stream_stream("/test.Kinds/Echo")
        for metadata, code in (
            ((), grpc.StatusCode.UNAUTHENTICATED),
            (auth("a-user", "user"), grpc.StatusCode.PERMISSION_DENIED),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await echo(metadata=metadata).read()  # refused at the start, before any request is read
            assert refused.value.code() == code
        service = auth("a-backend", ROLE_SERVICE)
        assert [reply async for reply in echo(iter([b"a", b"b"]), metadata=service)] == [b"a", b"b"]
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            async for _ in echo(iter([b"a", b"refuse"]), metadata=service):
                pass
        assert (failed.value.code(), failed.value.details()) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "refused as asked",
        )
