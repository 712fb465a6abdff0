"""POST /webhooks/stripe on the wallet's HTTP port (services/runtime/http_ingress.py): Stripe's events about web
purchases, verified by Stripe's own library (the Stripe-Signature header: HMAC-SHA256 of "timestamp.body" with the
endpoint's signing secret, within 5 minutes), each taking effect once by its event id (evt_…), recorded in the
transaction that applies it.

- payment_intent.succeeded completes the pending purchase (3-D Secure finished); payment_intent.payment_failed
  declines it;
- charge.refunded reverses the purchase to the share refunded so far (Stripe reports the total: a partial refund
  then a full one reverse half, then the rest);
- charge.dispute.created reverses it whole (a chargeback: the coins' gifts are clawed back from their creators);
- any other type is recorded and answered 200 (Stripe stops sending what it gets a 2xx for).

apply_event is the effect of an authentic event, shared with the catch-up pass over Stripe's events list
(services/runtime/stripe_events.py), which applies the events of ACTED_ON that a webhook never delivered."""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from typing import Any

import stripe

from services.runtime.http_ingress import Answer, Rejected, Unsigned
from services.runtime.stripe_events import UnreadableEvent
from services.wallet.domain import STRIPE_RAIL, RailPayment, RailReversal
from services.wallet.service import WalletService

PATH = "/webhooks/stripe"
TOLERANCE_SECONDS = 300  # Stripe's default: an older signature is refused (a replayed capture of a webhook)

StripeNotice = RailPayment | RailReversal | None


# The event types the wallet acts on: the catch-up pass lists these (every other type is only recorded).
ACTED_ON = ("payment_intent.succeeded", "payment_intent.payment_failed", "charge.refunded", "charge.dispute.created")


class StripeWebhooks:
    def __init__(self, wallet: WalletService, signing_secret: str) -> None:
        self._wallet = wallet
        self._signing_secret = signing_secret

    async def handle(self, body: bytes, headers: Mapping[str, str]) -> Answer:
        event = verified_event(body, headers.get("stripe-signature"), self._signing_secret)
        try:
            outcome = await apply_event(self._wallet, event)
        except UnreadableEvent as error:
            raise Rejected(str(error)) from None
        return Answer({"outcome": outcome}, duplicate=outcome == "duplicate")


async def apply_event(wallet: WalletService, event: Mapping[str, Any]) -> str:
    """An authentic event's effect, once by its id (the webhook's, after its signature verified, and the catch-up
    pass's, for events read from Stripe's API): its outcome, "duplicate" for one applied before."""
    try:
        event_id, kind, notice = str(event["id"]), str(event["type"]), stripe_notice(event)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as error:
        raise UnreadableEvent(f"not a Stripe event we take ({type(error).__name__})") from None
    if isinstance(notice, RailPayment):
        return (await wallet.settle_by_rail(notice, kind)).value
    if isinstance(notice, RailReversal):
        return (await wallet.reverse_by_rail(notice, kind)).value
    return "recorded" if await wallet.record_notification(STRIPE_RAIL, event_id, kind) else "duplicate"


def verified_event(body: bytes, signature: str | None, signing_secret: str) -> dict[str, Any]:
    """The event, once Stripe's library verified its signature (and its age); Unsigned (401) when it does not
    verify, Rejected (400) when a signed body is no JSON object."""
    if not signature:
        raise Unsigned("no Stripe-Signature")
    try:
        event = stripe.Webhook.construct_event(body, signature, signing_secret, tolerance=TOLERANCE_SECONDS)
    except stripe.SignatureVerificationError:
        raise Unsigned("the Stripe-Signature does not verify") from None
    except (ValueError, AttributeError, TypeError):  # not UTF-8, not JSON, or JSON but not an object
        raise Rejected("the body is not a Stripe event") from None
    values: dict[str, Any] = event.to_dict()
    return values


def stripe_notice(event: Mapping[str, Any]) -> StripeNotice:
    """What a verified event asks of the wallet (None: nothing but recording it). A KeyError or TypeError for an
    event of a type we act on without the fields it must have."""
    event_id, kind, data = event["id"], event["type"], event["data"]["object"]
    if kind in ("payment_intent.succeeded", "payment_intent.payment_failed"):
        metadata = data.get("metadata") or {}
        succeeded = kind == "payment_intent.succeeded"
        failure = data.get("last_payment_error") or {}
        reason = "" if succeeded else str(failure.get("code") or "payment_failed")
        return RailPayment(STRIPE_RAIL, event_id, data["id"], str(metadata.get("purchase_id", "")), succeeded, reason)
    if kind == "charge.refunded":
        amount, refunded = int(data["amount"]), int(data["amount_refunded"])
        if not data.get("payment_intent") or refunded <= 0:
            return None
        share = Fraction(min(refunded, amount), amount)
        return RailReversal(STRIPE_RAIL, event_id, data["payment_intent"], share, "refund")
    if kind == "charge.dispute.created":
        if not data.get("payment_intent"):
            return None  # a charge made without a PaymentIntent: none of our purchases
        return RailReversal(STRIPE_RAIL, event_id, data["payment_intent"], Fraction(1), "chargeback")
    return None
