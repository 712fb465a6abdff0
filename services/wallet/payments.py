"""Payment providers. A charge is idempotent by purchase_id, so a purchase left pending by a crash can be
charged again safely: the provider answers with the first charge's result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ChargeResult:
    approved: bool
    provider_reference: str
    decline_reason: str = ""


class PaymentProvider(Protocol):
    async def charge(
        self, *, purchase_id: str, payment_token: str, amount_minor: int, currency_code: str
    ) -> ChargeResult: ...


class SandboxPaymentProvider:
    """Development provider from the contract: tokens starting with 'tok_ok' are approved; every other token is
    declined ('tok_declined…' being the documented one). Stateless, hence trivially idempotent."""

    async def charge(
        self, *, purchase_id: str, payment_token: str, amount_minor: int, currency_code: str
    ) -> ChargeResult:
        reference = f"sandbox_charge_{purchase_id}"
        if payment_token.startswith("tok_ok"):
            return ChargeResult(approved=True, provider_reference=reference)
        reason = "card declined" if payment_token.startswith("tok_declined") else "unknown sandbox token"
        return ChargeResult(approved=False, provider_reference=reference, decline_reason=reason)
