"""A loopback Stripe for the wallet's web purchases: the PaymentIntents endpoints the wallet calls (create-and-confirm,
retrieve), speaking Stripe's documented JSON and form encoding, honouring Idempotency-Key as Stripe does (a key's
first completed answer is answered again; a key still in use is a 409; a key reused with other parameters a 400), and
counting the PaymentIntents made per key. What a payment does is chosen by its PaymentMethod id, as with Stripe's own
test cards:

- pm_card_visa (or any other pm_…): succeeded;
- pm_card_threeDSecure2Required: requires_action (the buyer must pass 3-D Secure), with a client secret;
- pm_card_chargeDeclined / pm_card_chargeDeclinedInsufficientFunds: a 402 card_error, leaving a PaymentIntent in
  requires_payment_method;
- pm_fake_server_error: the key's first request is a 500 before anything is done (not kept with the key);
- pm_fake_server_error_after_charge: the payment succeeds, then the answer is a 500, kept with the key as Stripe keeps
  it (asking again under the key gets the 500 again; search by metadata finds the PaymentIntent);
- pm_fake_slow: the payment succeeds at once, but the answer comes after slow_seconds;
- anything not pm_…: a 400 resource_missing.

Its events list (GET /v1/events, tests/support/rails/stripe_events.py) shows the events a test records with
events.record. Webhook events are made as Stripe sends them and signed with the library's own test helper
(stripe.WebhookSignature.generate_signature_header) with a secret made per fake; the wallet verifies them with
stripe.Webhook.construct_event, unmodified."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import stripe
from aiohttp import web

from tests.support.rails import Loopback
from tests.support.rails.stripe_events import StripeEvents

THREE_D_SECURE = "pm_card_threeDSecure2Required"
DECLINED = "pm_card_chargeDeclined"
INSUFFICIENT_FUNDS = "pm_card_chargeDeclinedInsufficientFunds"
SERVER_ERROR = "pm_fake_server_error"
ERROR_AFTER_CHARGE = "pm_fake_server_error_after_charge"
SLOW = "pm_fake_slow"
VISA = "pm_card_visa"


@dataclass
class FakeStripe:
    secret_key: str = field(default_factory=lambda: "sk_test_" + secrets.token_hex(12))
    webhook_secret: str = field(default_factory=lambda: "whsec_" + secrets.token_hex(24))
    slow_seconds: float = 3.0
    intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    # PaymentIntents made per Idempotency-Key (the purchase id): 1 for a purchase charged once, however often asked.
    created_per_key: Counter[str] = field(default_factory=Counter)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) of every call, in order
    # Its events (GET /v1/events, the wallet's catch-up pass: not in requests, which it would fill every interval).
    events: StripeEvents = field(default_factory=StripeEvents)
    _answers: dict[str, tuple[dict[str, str], int, dict[str, Any]]] = field(default_factory=dict)
    _in_use: set[str] = field(default_factory=set)
    _failed_once: set[str] = field(default_factory=set)
    _loopback: Loopback = field(default_factory=Loopback)
    url: str = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/payment_intents", self._create)
        app.router.add_get("/v1/payment_intents/search", self._search)
        app.router.add_get("/v1/payment_intents/{intent}", self._retrieve)
        app.router.add_get("/v1/events", self._list_events)
        self.url = await self._loopback.serve(app)

    async def stop(self) -> None:
        await self._loopback.stop()

    def settings_env(self, directory: Path) -> dict[str, str]:
        """A wallet's settings for this Stripe: its secrets written to files, as a Secret is mounted."""
        key_file, webhook_file = directory / "stripe-secret-key", directory / "stripe-webhook-secret"
        key_file.write_text(self.secret_key + "\n")
        webhook_file.write_text(self.webhook_secret + "\n")
        return {
            "COINSTREAM_PAYMENT_PROVIDER": "stripe",
            "COINSTREAM_STRIPE_SECRET_KEY_FILE": str(key_file),
            "COINSTREAM_STRIPE_WEBHOOK_SECRET_FILE": str(webhook_file),
            "COINSTREAM_STRIPE_API_BASE_URL": self.url,
            # The library's own retries would hide the 500 the tests make: each call is one request here.
            "COINSTREAM_STRIPE_MAX_NETWORK_RETRIES": "0",
        }

    # --- the API ------------------------------------------------------------------------------------------------

    async def _create(self, request: web.Request) -> web.Response:
        self.requests.append(("POST", request.path))
        if (refused := self._refuse_unauthorized(request)) is not None:
            return refused
        params = dict(await request.post())
        key = request.headers.get("Idempotency-Key", "")
        if not key:
            return _error(400, "invalid_request_error", "this fake wants an Idempotency-Key on every create")
        if key in self._in_use:
            return _error(409, "idempotency_error", "There is currently another in-progress request using this key")
        if key in self._answers:
            first_params, status, body = self._answers[key]
            if first_params != params:
                return _error(400, "idempotency_error", "Keys can only be used with the same parameters")
            return web.json_response(body, status=status, headers={"Idempotent-Replayed": "true"})
        method = str(params.get("payment_method", ""))
        if method == SERVER_ERROR and key not in self._failed_once:
            self._failed_once.add(key)
            return _error(500, "api_error", "Something went wrong on Stripe's end")
        self._in_use.add(key)
        try:
            status, body = self._confirm(key, params, method)
            if method == ERROR_AFTER_CHARGE:
                status, body = 500, _error_body("api_error", "Something went wrong on Stripe's end")
            self._answers[key] = (params, status, body)
            if method == SLOW:
                await asyncio.sleep(self.slow_seconds)
        finally:
            self._in_use.discard(key)
        return web.json_response(body, status=status)

    def _confirm(self, key: str, params: dict[str, Any], method: str) -> tuple[int, dict[str, Any]]:
        if not method.startswith("pm_"):
            return 400, _error_body(
                "invalid_request_error", f"No such PaymentMethod: '{method}'", code="resource_missing"
            )
        intent = self._new_intent(key, params)
        if method == THREE_D_SECURE:
            intent["status"] = "requires_action"
            intent["next_action"] = {"type": "use_stripe_sdk", "use_stripe_sdk": {}}
            return 200, intent
        if method in (DECLINED, INSUFFICIENT_FUNDS):
            decline_code = "insufficient_funds" if method == INSUFFICIENT_FUNDS else "generic_decline"
            failure = {"type": "card_error", "code": "card_declined", "decline_code": decline_code}
            intent["status"] = "requires_payment_method"
            intent["last_payment_error"] = {**failure, "message": "Your card was declined."}
            body = _error_body("card_error", "Your card was declined.", code="card_declined")
            body["error"].update(decline_code=decline_code, payment_intent=intent)
            return 402, body
        intent["status"] = "succeeded"
        return 200, intent

    def _new_intent(self, key: str, params: dict[str, Any]) -> dict[str, Any]:
        self.created_per_key[key] += 1
        intent_id = "pi_" + secrets.token_hex(12)
        intent = {
            "id": intent_id,
            "object": "payment_intent",
            "amount": int(params["amount"]),
            "amount_received": 0,
            "currency": params["currency"],
            "client_secret": f"{intent_id}_secret_{secrets.token_hex(12)}",
            "confirmation_method": "automatic",
            "created": int(time.time()),
            "livemode": False,
            "metadata": {name[9:-1]: value for name, value in params.items() if name.startswith("metadata[")},
            "payment_method": params.get("payment_method"),
            "last_payment_error": None,
            "next_action": None,
            "latest_charge": "ch_" + secrets.token_hex(12),
            "status": "requires_confirmation",
        }
        self.intents[intent_id] = intent
        return intent

    async def _search(self, request: web.Request) -> web.Response:
        """Only the query the wallet makes: metadata['purchase_id']:'…' (found at once: no indexing lag here)."""
        self.requests.append(("GET", request.path))
        if (refused := self._refuse_unauthorized(request)) is not None:
            return refused
        match = re.fullmatch(r"metadata\['purchase_id'\]:'([^']*)'", request.query.get("query", ""))
        if match is None:
            return _error(400, "invalid_request_error", "this fake searches by metadata['purchase_id'] only")
        found = [i for i in self.intents.values() if i["metadata"].get("purchase_id") == match.group(1)]
        return web.json_response(
            {"object": "search_result", "data": found, "has_more": False, "next_page": None, "url": request.path}
        )

    async def _retrieve(self, request: web.Request) -> web.Response:
        self.requests.append(("GET", request.path))
        if (refused := self._refuse_unauthorized(request)) is not None:
            return refused
        intent = self.intents.get(request.match_info["intent"])
        if intent is None:
            return _error(404, "invalid_request_error", "No such payment_intent", code="resource_missing")
        return web.json_response(intent)

    async def _list_events(self, request: web.Request) -> web.Response:
        return self._refuse_unauthorized(request) or self.events.answer(request)

    def _refuse_unauthorized(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {self.secret_key}":
            return _error(401, "invalid_request_error", "Invalid API Key provided")
        return None

    # --- what happens at Stripe outside the wallet's calls, and the webhooks it sends ---------------------------

    def intent_of(self, purchase_id: str) -> dict[str, Any]:
        [intent] = [i for i in self.intents.values() if i["metadata"].get("purchase_id") == purchase_id]
        return intent

    def buyer_passes_3ds(self, intent_id: str) -> dict[str, Any]:
        intent = self.intents[intent_id]
        intent.update(status="succeeded", next_action=None, amount_received=intent["amount"])
        return intent

    def buyer_fails_3ds(self, intent_id: str) -> dict[str, Any]:
        intent = self.intents[intent_id]
        failure = {"type": "card_error", "code": "payment_intent_authentication_failure"}
        intent.update(status="requires_payment_method", next_action=None, last_payment_error=failure)
        return intent

    def charge(self, intent_id: str, amount_refunded: int = 0) -> dict[str, Any]:
        intent = self.intents[intent_id]
        return {
            "id": intent["latest_charge"],
            "object": "charge",
            "amount": intent["amount"],
            "amount_refunded": amount_refunded,
            "currency": intent["currency"],
            "payment_intent": intent_id,
            "refunded": amount_refunded == intent["amount"],
            "status": "succeeded",
        }

    def dispute(self, intent_id: str) -> dict[str, Any]:
        intent = self.intents[intent_id]
        return {
            "id": "dp_" + secrets.token_hex(12),
            "object": "dispute",
            "amount": intent["amount"],
            "charge": intent["latest_charge"],
            "currency": intent["currency"],
            "payment_intent": intent_id,
            "reason": "fraudulent",
            "status": "needs_response",
        }


def body_of(event: dict[str, Any]) -> str:
    """A recorded event (FakeStripe.events) as its webhook's body."""
    return json.dumps(event)


def event(kind: str, data_object: dict[str, Any], event_id: str | None = None) -> str:
    """A webhook's body, as Stripe sends it (a snapshot event), of an event the events list does not show."""
    return json.dumps(
        {
            "id": event_id or "evt_" + secrets.token_hex(12),
            "object": "event",
            "api_version": stripe.api_version,
            "created": int(time.time()),
            "data": {"object": data_object},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": kind,
        }
    )


def signature(body: str, secret: str, timestamp: int | None = None) -> str:
    """The Stripe-Signature header Stripe would send, made by the library's own helper."""
    return stripe.WebhookSignature.generate_signature_header(body, secret, timestamp=timestamp)


def _error_body(kind: str, message: str, code: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"type": kind, "message": message}
    if code:
        error["code"] = code
    return {"error": error}


def _error(status: int, kind: str, message: str, code: str | None = None) -> web.Response:
    return web.json_response(_error_body(kind, message, code), status=status)
