"""Token buckets per (RPC, caller): bursts, refill, the wait they announce, and bounded memory."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from services.runtime.errors import AppError
from services.runtime.rate_limits import CallerRateLimiter, RateLimit


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: FakeClock, max_callers: int = 100) -> CallerRateLimiter:
    return CallerRateLimiter({"SendGift": RateLimit(per_second=2, burst=3)}, max_callers=max_callers, clock=clock)


def refused(limits: CallerRateLimiter, subject: str = "alice", rpc: str = "SendGift") -> AppError:
    with pytest.raises(AppError) as error:
        limits.admit(rpc, subject)
    return error.value


def test_a_burst_is_admitted_then_refused_with_the_wait_until_the_next_token() -> None:
    clock = FakeClock()
    limits = limiter(clock)
    for _ in range(3):
        limits.admit("SendGift", "alice")
    error = refused(limits)
    assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    assert error.retry_after_seconds == pytest.approx(0.5)
    clock.now += 0.25
    assert refused(limits).retry_after_seconds == pytest.approx(0.25)  # a refusal takes nothing
    clock.now += 0.25
    limits.admit("SendGift", "alice")


def test_tokens_refill_up_to_the_burst_only() -> None:
    clock = FakeClock()
    limits = limiter(clock)
    clock.now += 3600
    for _ in range(3):
        limits.admit("SendGift", "alice")
    refused(limits)


def test_callers_and_rpcs_have_their_own_buckets() -> None:
    limits = limiter(FakeClock())
    for _ in range(3):
        limits.admit("SendGift", "alice")
    refused(limits, "alice")
    limits.admit("SendGift", "bob")
    for _ in range(10):
        limits.admit("GetBalance", "alice")  # no limit configured


def test_forgotten_callers_come_back_with_a_full_bucket_and_memory_stays_bounded() -> None:
    limits = limiter(FakeClock(), max_callers=2)
    for _ in range(3):
        limits.admit("SendGift", "alice")
    limits.admit("SendGift", "bob")
    limits.admit("SendGift", "carol")  # alice is the least recently used: forgotten
    assert len(limits._buckets) == 2
    limits.admit("SendGift", "alice")


def test_the_refusal_carries_retry_info() -> None:
    error = AppError(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", "slow down", retry_after_seconds=1.5)
    (details,) = [value for key, value in error.to_status().trailing_metadata if key == "grpc-status-details-bin"]
    infos = []
    for detail in status_pb2.Status.FromString(details).details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            infos.append(info.retry_delay.ToNanoseconds())
    assert infos == [1_500_000_000]
