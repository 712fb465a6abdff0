"""Payment providers: the sandbox the contract documents. A real provider implements ports.PaymentProvider
(stripe_payments.py: Stripe's PaymentIntents, for web purchases)."""

from __future__ import annotations

from services.wallet.domain import SANDBOX_RAIL
from services.wallet.ports import ChargeResult


class SandboxPaymentProvider:
    """Development provider from the contract: tokens starting with 'tok_ok' are approved; every other token is
    declined ('tok_declined…' being the documented one). Stateless, hence trivially idempotent."""

    rail = SANDBOX_RAIL

    async def charge(
        self,
        *,
        purchase_id: str,
        account_id: str,
        payment_token: str,
        amount_minor: int,
        currency_code: str,
        rail_transaction_id: str | None = None,
    ) -> ChargeResult:
        reference = f"sandbox_charge_{purchase_id}"
        if payment_token.startswith("tok_ok"):
            return ChargeResult(approved=True, provider_reference=reference)
        reason = "card declined" if payment_token.startswith("tok_declined") else "unknown sandbox token"
        return ChargeResult(approved=False, provider_reference=reference, decline_reason=reason)
