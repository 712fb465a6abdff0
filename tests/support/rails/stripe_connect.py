"""A loopback Stripe for Connect payouts: the parts of the API the stripe_connect rail calls, speaking Stripe's
documented JSON (transfers, their list by transfer_group, errors), and webhooks signed the way Stripe signs them
(stripe.WebhookSignature, with a secret generated per fake).

Its events list (GET /v1/events) shows the events a test publishes (tests/support/rails/stripe_events.py).

It honours Idempotency-Key as Stripe does (the same key answers the first response again and makes nothing new) and
counts the transfers made per key, so a test sees a withdrawal paid once. It can lose its next answer: the transfer is
made, then the answer comes too late (a timeout) or as a 500; or be down (503 to everything, nothing done)."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import stripe
from aiohttp import web

from tests.support.rails import Loopback
from tests.support.rails.stripe_events import StripeEvents

SECRET_KEY = "sk_test_" + secrets.token_hex(12)
# Destinations the fake refuses as Stripe does a connected account it cannot pay.
REFUSED_ACCOUNT_PREFIX = "acct_refuse"


@dataclass
class FakeStripe:
    secret_key: str = SECRET_KEY
    webhook_secret: str = field(default_factory=lambda: "whsec_" + secrets.token_hex(16))
    transfers: dict[str, dict[str, Any]] = field(default_factory=dict)
    transfers_per_key: Counter[str] = field(default_factory=Counter)
    # What the next transfer request gets after the transfer is made: "timeout" (an answer later than any client
    # waits) or "500"; None: the answer.
    lose_next_answer: str | None = None
    answer_delay_seconds: float = 30.0
    # An outage: every call answers 503 and does nothing.
    down: bool = False
    # Its events list (GET /v1/events): the events a test records with events.record (or publish).
    events: StripeEvents = field(default_factory=StripeEvents)
    _answers: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)  # idempotency key → answer
    _loopback: Loopback = field(default_factory=Loopback)
    url: str = ""

    async def start(self) -> FakeStripe:
        app = web.Application()
        app.router.add_post("/v1/transfers", self._create_transfer)
        app.router.add_get("/v1/transfers", self._list_transfers)
        app.router.add_get("/v1/transfers/{transfer_id}", self._retrieve_transfer)
        app.router.add_get("/v1/events", self._list_events)
        self.url = await self._loopback.serve(app)
        return self

    async def stop(self) -> None:
        await self._loopback.stop()

    # --- what a test does as Stripe would

    def transfer_of(self, withdrawal_id: str) -> dict[str, Any]:
        [transfer] = [t for t in self.transfers.values() if t["transfer_group"] == withdrawal_id]
        return transfer

    def reverse(self, withdrawal_id: str) -> dict[str, Any]:
        """Reverses the withdrawal's transfer in full (as a platform does from its dashboard); returns it."""
        transfer = self.transfer_of(withdrawal_id)
        transfer.update(reversed=True, amount_reversed=transfer["amount"])
        return transfer

    def event(self, kind: str, subject: dict[str, Any], event_id: str = "") -> bytes:
        event = {
            "id": event_id or "evt_" + secrets.token_hex(12),
            "object": "event",
            "api_version": "2025-01-27.acacia",
            "created": int(time.time()),
            "livemode": False,
            "pending_webhooks": 1,
            "type": kind,
            "data": {"object": subject},
        }
        return json.dumps(event).encode()

    def publish(self, kind: str, subject: dict[str, Any]) -> bytes:
        """An event Stripe made, listed by GET /v1/events from now on: its webhook's body (delivered or not)."""
        return json.dumps(self.events.record(kind, subject)).encode()

    def signed(self, body: bytes, *, secret: str = "", timestamp: int | None = None) -> dict[str, str]:
        header = stripe.WebhookSignature.generate_signature_header(
            body.decode(), secret or self.webhook_secret, timestamp
        )
        return {"Stripe-Signature": header, "Content-Type": "application/json"}

    # --- the API

    def _authorized(self, request: web.Request) -> bool:
        if self.down:
            raise web.HTTPServiceUnavailable(
                text=json.dumps(_error_body("api_error", "")), content_type="application/json"
            )
        return request.headers.get("Authorization") == f"Bearer {self.secret_key}"

    async def _create_transfer(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "invalid_request_error", "api_key_invalid")
        key = request.headers.get("Idempotency-Key", "")
        if key in self._answers:  # Stripe replays the first answer, whatever it was
            status, body = self._answers[key]
            return web.json_response(body, status=status, headers={"Idempotent-Replayed": "true"})
        form = await request.post()
        destination = str(form["destination"])
        if destination.startswith(REFUSED_ACCOUNT_PREFIX):
            answer: tuple[int, dict[str, Any]] = (400, _error_body("invalid_request_error", "account_invalid"))
        else:
            transfer = self._make_transfer(form, destination)
            self.transfers_per_key[key] += 1
            answer = (200, transfer)
        self._answers[key] = answer
        lost, self.lose_next_answer = self.lose_next_answer, None
        if lost == "timeout":
            await asyncio.sleep(self.answer_delay_seconds)
        if lost == "500":
            return _error(500, "api_error", "")
        return web.json_response(answer[1], status=answer[0])

    def _make_transfer(self, form: Any, destination: str) -> dict[str, Any]:
        transfer_id = "tr_" + secrets.token_hex(12)
        transfer = {
            "id": transfer_id,
            "object": "transfer",
            "amount": int(form["amount"]),
            "amount_reversed": 0,
            "currency": str(form["currency"]),
            "destination": destination,
            "transfer_group": str(form.get("transfer_group", "")),
            "metadata": {"withdrawal_id": str(form.get("metadata[withdrawal_id]", ""))},
            "reversed": False,
            "reversals": {
                "object": "list",
                "data": [],
                "has_more": False,
                "url": f"/v1/transfers/{transfer_id}/reversals",
            },
            "created": int(time.time()),
            "livemode": False,
        }
        self.transfers[transfer_id] = transfer
        return transfer

    async def _list_transfers(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "invalid_request_error", "api_key_invalid")
        group = request.query.get("transfer_group")
        found = [t for t in self.transfers.values() if group is None or t["transfer_group"] == group]
        return web.json_response({"object": "list", "data": found, "has_more": False, "url": "/v1/transfers"})

    async def _retrieve_transfer(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "invalid_request_error", "api_key_invalid")
        transfer = self.transfers.get(request.match_info["transfer_id"])
        if transfer is None:
            return _error(404, "invalid_request_error", "resource_missing")
        return web.json_response(transfer)

    async def _list_events(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "invalid_request_error", "api_key_invalid")
        return self.events.answer(request)


def _error_body(kind: str, code: str) -> dict[str, Any]:
    return {"error": {"type": kind, "code": code, "message": f"{code} (fake Stripe)"}}


def _error(status: int, kind: str, code: str) -> web.Response:
    return web.json_response(_error_body(kind, code), status=status)
