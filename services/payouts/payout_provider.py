"""The sandbox payout provider (the port, PayoutProvider, is in ports.py with every other port)."""

from __future__ import annotations

import time
from collections.abc import Callable

from services.payouts.domain import SANDBOX_RAIL
from services.payouts.ports import PayoutResult, PayoutState

SANDBOX_OK_PREFIX = "sandbox:ok"
SANDBOX_FAIL_PREFIX = "sandbox:fail"
SANDBOX_HOLD_PREFIX = "sandbox:hold"


class SandboxPayoutProvider:
    """Development provider from the contract: destinations starting with 'sandbox:ok' are paid settle_seconds after
    submission; 'sandbox:fail…' fails; 'sandbox:hold…' stays processing until canceled (it can always be canceled);
    anything else fails as an unknown destination. Other payouts can be canceled only before their submission.

    Stateless: the reference carries the submission time and the destination, and status() derives everything from
    it. A resubmission (after a crash) restarts the settle clock but always reaches the same outcome."""

    name = SANDBOX_RAIL

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
        if destination.startswith(SANDBOX_HOLD_PREFIX):
            return PayoutResult(PayoutState.PROCESSING, provider_reference)
        if destination.startswith(SANDBOX_FAIL_PREFIX):
            return PayoutResult(PayoutState.FAILED, provider_reference, "sandbox destination refused the payout")
        if not destination.startswith(SANDBOX_OK_PREFIX):
            return PayoutResult(PayoutState.FAILED, provider_reference, "unknown sandbox destination")
        if self._clock() * 1000 - submitted_ms < self._settle_seconds * 1000:
            return PayoutResult(PayoutState.PROCESSING, provider_reference)
        return PayoutResult(PayoutState.PAID, provider_reference)

    async def resume(
        self, *, withdrawal_id: str, destination: str, amount_minor: int, currency_code: str
    ) -> PayoutResult:
        # Stateless: a submission again reaches the same outcome (the payout worker resubmits it the same way).
        return await self.submit(
            withdrawal_id=withdrawal_id, destination=destination, amount_minor=amount_minor, currency_code=currency_code
        )

    async def cancel(self, *, withdrawal_id: str, destination: str, provider_reference: str | None) -> bool:
        # Stateless, so "submitted" is what our record says: a submission lost to a crash counts as none here.
        return destination.startswith(SANDBOX_HOLD_PREFIX) or provider_reference is None


def _parse_reference(withdrawal_id: str, provider_reference: str) -> tuple[int | None, str]:
    """(submission time in ms, destination); (None, "") when the reference is not one this sandbox made."""
    prefix = f"sandbox:{withdrawal_id}:"
    submitted, _, destination = provider_reference.removeprefix(prefix).partition(":")
    if not provider_reference.startswith(prefix) or not submitted.isdigit():
        return None, ""
    return int(submitted), destination
