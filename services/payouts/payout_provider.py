"""Payout providers: whoever turns a withdrawal into real money. Like real ones they are asynchronous: submit()
accepts a payout, status() later tells whether it was paid or failed.

A provider must be idempotent by withdrawal_id: the payout worker submits again when a crash left a submission
unrecorded, and the provider must not pay twice."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol


class PayoutState(Enum):
    PROCESSING = "processing"
    PAID = "paid"
    FAILED = "failed"


@dataclass(frozen=True)
class PayoutResult:
    state: PayoutState
    # The provider's handle on the payout; passed back to status().
    provider_reference: str
    failure_reason: str = ""


class PayoutProvider(Protocol):
    async def submit(
        self, *, withdrawal_id: str, destination: str, amount_minor: int, currency_code: str
    ) -> PayoutResult: ...

    async def status(self, *, withdrawal_id: str, provider_reference: str) -> PayoutResult: ...


SANDBOX_OK_PREFIX = "sandbox:ok"
SANDBOX_FAIL_PREFIX = "sandbox:fail"


class SandboxPayoutProvider:
    """Development provider from the contract: destinations starting with 'sandbox:ok' are paid settle_seconds after
    submission; 'sandbox:fail…' fails; anything else fails as an unknown destination.

    Stateless: the reference carries the submission time and the destination, and status() derives everything from
    it. A resubmission (after a crash) restarts the settle clock but always reaches the same outcome."""

    def __init__(self, settle_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self._settle_seconds = settle_seconds
        self._clock = clock

    async def submit(
        self, *, withdrawal_id: str, destination: str, amount_minor: int, currency_code: str
    ) -> PayoutResult:
        submitted_ms = int(self._clock() * 1000)
        return PayoutResult(PayoutState.PROCESSING, f"sandbox:{withdrawal_id}:{submitted_ms}:{destination}")

    async def status(self, *, withdrawal_id: str, provider_reference: str) -> PayoutResult:
        submitted_ms, destination = _parse_reference(withdrawal_id, provider_reference)
        if submitted_ms is None:
            return PayoutResult(PayoutState.FAILED, provider_reference, "unknown sandbox payout reference")
        if destination.startswith(SANDBOX_FAIL_PREFIX):
            return PayoutResult(PayoutState.FAILED, provider_reference, "sandbox destination refused the payout")
        if not destination.startswith(SANDBOX_OK_PREFIX):
            return PayoutResult(PayoutState.FAILED, provider_reference, "unknown sandbox destination")
        if self._clock() * 1000 - submitted_ms < self._settle_seconds * 1000:
            return PayoutResult(PayoutState.PROCESSING, provider_reference)
        return PayoutResult(PayoutState.PAID, provider_reference)


def _parse_reference(withdrawal_id: str, provider_reference: str) -> tuple[int | None, str]:
    """(submission time in ms, destination); (None, "") when the reference is not one this sandbox made."""
    prefix = f"sandbox:{withdrawal_id}:"
    submitted, _, destination = provider_reference.removeprefix(prefix).partition(":")
    if not provider_reference.startswith(prefix) or not submitted.isdigit():
        return None, ""
    return int(submitted), destination
