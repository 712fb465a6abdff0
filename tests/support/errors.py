"""Failed calls: expecting one, and reading the contract's error details (ErrorInfo reason, BadRequest field
violations, RetryInfo) off it."""

from __future__ import annotations

from collections.abc import Awaitable

import grpc
import pytest

from coinstream.client import CallError


def error_reason(error: grpc.aio.AioRpcError) -> str | None:
    """The ErrorInfo reason (None without one), read by the client's one decoder (coinstream.client.CallError)."""
    failure = CallError.of(error)
    assert failure.reason is None or failure.domain == "coinstream"
    return failure.reason


def violated_fields(error: grpc.aio.AioRpcError) -> set[str]:
    return CallError.of(error).violated_fields


def retry_delay_seconds(error: grpc.aio.AioRpcError) -> float | None:
    return CallError.of(error).retry_delay_seconds


async def expect_error(
    call: Awaitable[object], code: grpc.StatusCode, reason: str | None = None
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    if reason is not None:
        assert error_reason(caught.value) == reason, caught.value.details()
    return caught.value


async def refused(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    """The error a call that must fail ended with."""
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    return error.value
