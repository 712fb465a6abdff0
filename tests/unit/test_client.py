"""The client helpers (coinstream.client) read back what the services send: the status a service makes of an AppError
(services.runtime.errors) decoded by CallError, blocking or grpc.aio; and the demo shows the server's refusal of a
withdrawal instead of second-guessing the payouts rules."""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from grpc.aio import AioRpcError, Metadata
from rich.console import Console

from coinstream.client import CallError, FieldViolation
from devstack.demo import LiveStreamDemo
from services.runtime import errors


def aio_error(error: errors.AppError) -> AioRpcError:
    """The error a grpc.aio call raises when the service answers with error (as its interceptor sends it)."""
    status = error.to_status()
    return AioRpcError(status.code, Metadata(), Metadata(*status.trailing_metadata), status.details)


class BlockingError(grpc.RpcError):
    """What a blocking call raises, reduced to what a client reads: its trailing metadata are (key, value) pairs."""

    def __init__(self, error: errors.AppError) -> None:
        self.status = error.to_status()

    def code(self) -> grpc.StatusCode:
        return self.status.code

    def details(self) -> str:
        return self.status.details

    def trailing_metadata(self) -> Any:
        return self.status.trailing_metadata


@pytest.mark.parametrize("raised", [aio_error, BlockingError])
def test_a_refusal_reads_back_with_its_reason_and_fields(raised: Any) -> None:
    violation = errors.FieldViolation("diamonds", "must be a multiple of 2")
    decoded = CallError.of(raised(errors.invalid_argument([violation])))
    assert (decoded.code, decoded.reason, decoded.domain) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "coinstream",
    )
    assert decoded.field_violations == (FieldViolation("diamonds", "must be a multiple of 2"),)
    assert decoded.violated_fields == {"diamonds"}
    assert decoded.describe() == "INVALID_ARGUMENT INVALID_ARGUMENT: invalid request: diamonds: must be a multiple of 2"


def test_a_rate_limit_reads_back_with_its_retry_delay() -> None:
    decoded = CallError.of(aio_error(errors.rate_limited("slow down", 1.5)))
    assert (decoded.reason, decoded.retry_delay_seconds) == ("RATE_LIMITED", 1.5)


def test_an_error_without_details_has_no_reason() -> None:
    transport = AioRpcError(grpc.StatusCode.UNAVAILABLE, Metadata(), Metadata(), "connection refused")
    decoded = CallError.of(transport)
    assert (decoded.reason, decoded.domain, decoded.field_violations) == (None, None, ())
    assert decoded.describe() == "UNAVAILABLE UNAVAILABLE: connection refused"


def test_the_demo_shows_why_payouts_refuses_a_withdrawal_and_goes_on() -> None:
    refusal = errors.failed_precondition("INSUFFICIENT_DIAMONDS", "1,000 diamonds available")

    def request_withdrawal(request: Any, **_: Any) -> Any:
        raise BlockingError(refusal)

    output = io.StringIO()
    clients = SimpleNamespace(payouts=SimpleNamespace(RequestWithdrawal=request_withdrawal))
    LiveStreamDemo(
        clients, "a-secret-long-enough-for-hs256-keys-xx", Console(file=output, width=200), withdrawal_diamonds=2_000
    ).withdraw()
    assert "payouts refused 2,000 diamonds: INSUFFICIENT_DIAMONDS: 1,000 diamonds available" in output.getvalue()
