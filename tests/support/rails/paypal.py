"""A loopback PayPal for Payouts: OAuth2 client credentials, payout batches of one item and their details, speaking
PayPal's documented JSON, plus its webhooks signed the way PayPal signs them — RSA-SHA256 over
"transmission_id|transmission_time|webhook_id|crc32(body)" with a key generated per fake, whose self-signed
certificate the fake serves at its own "cert URL".

It honours PayPal-Request-Id (the same id answers the first response again) and sender_batch_id (a batch id used
before is refused with a link to the original payout), and counts the batches made per sender_batch_id. It can lose
its next answer: the batch is made, then the answer comes too late (a timeout) or as a 500. An item's outcome
follows its receiver: "unclaimed…@" stays UNCLAIMED, "denied…@" is DENIED, anything else SUCCESS once asked about."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tests.support.rails import Loopback


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def self_signed(key: rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "messageverificationcerts.paypal.com")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


@dataclass
class FakePayPal:
    client_id: str = field(default_factory=lambda: "client-" + secrets.token_hex(8))
    client_secret: str = field(default_factory=lambda: "secret-" + secrets.token_hex(16))
    webhook_id: str = field(default_factory=lambda: "WH-ID-" + secrets.token_hex(8).upper())
    key: rsa.RSAPrivateKey = field(default_factory=new_key)
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)  # payout_batch_id → batch
    batches_per_sender_batch_id: Counter[str] = field(default_factory=Counter)
    lose_next_answer: str | None = None  # "timeout" or "500"
    answer_delay_seconds: float = 30.0
    # False: PayPal-Request-Id is ignored, so a retry meets the sender_batch_id's duplicate refusal and its link.
    honour_request_id: bool = True
    _answers: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)  # PayPal-Request-Id → answer
    _tokens: set[str] = field(default_factory=set)
    _loopback: Loopback = field(default_factory=Loopback)
    url: str = ""

    async def start(self) -> FakePayPal:
        self._certificate = self_signed(self.key)
        app = web.Application()
        app.router.add_post("/v1/oauth2/token", self._token)
        app.router.add_post("/v1/payments/payouts", self._create_payout)
        app.router.add_get("/v1/payments/payouts/{batch_id}", self._get_payout)
        app.router.add_get("/v1/notifications/certs/{name}", self._serve_certificate)
        self.url = await self._loopback.serve(app)
        return self

    async def stop(self) -> None:
        await self._loopback.stop()

    @property
    def cert_url(self) -> str:
        return f"{self.url}/v1/notifications/certs/CERT-360caa42-fca2a594-a5cafa77"

    # --- what a test does as PayPal would

    def batch_of(self, withdrawal_id: str) -> dict[str, Any]:
        [batch] = [
            b
            for b in self.batches.values()
            if b["batch_header"]["sender_batch_header"]["sender_batch_id"] == withdrawal_id
        ]
        return batch

    def set_item_status(self, withdrawal_id: str, status: str) -> dict[str, Any]:
        item: dict[str, Any] = self.batch_of(withdrawal_id)["items"][0]
        item["transaction_status"] = status
        return item

    def event(self, event_type: str, item: dict[str, Any], event_id: str = "") -> bytes:
        event = {
            "id": event_id or "WH-" + secrets.token_hex(10).upper(),
            "create_time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "resource_type": "payouts_item",
            "event_version": "1.0",
            "event_type": event_type,
            "summary": f"A payout item is {item['transaction_status'].lower()}",
            "resource": item,
            "links": [],
        }
        return json.dumps(event).encode()

    def signed(
        self,
        body: bytes,
        *,
        key: rsa.RSAPrivateKey | None = None,
        cert_url: str = "",
        sent_at: datetime | None = None,
    ) -> dict[str, str]:
        """The headers PayPal sends with a webhook, signed with the fake's key (or another one, for forgeries)."""
        transmission_id = secrets.token_hex(16)
        transmission_time = (sent_at or datetime.now(UTC)).isoformat().replace("+00:00", "Z")
        message = f"{transmission_id}|{transmission_time}|{self.webhook_id}|{zlib.crc32(body)}".encode()
        signature = (key or self.key).sign(message, padding.PKCS1v15(), hashes.SHA256())
        return {
            "PAYPAL-TRANSMISSION-ID": transmission_id,
            "PAYPAL-TRANSMISSION-TIME": transmission_time,
            "PAYPAL-TRANSMISSION-SIG": base64.b64encode(signature).decode(),
            "PAYPAL-CERT-URL": cert_url or self.cert_url,
            "PAYPAL-AUTH-ALGO": "SHA256withRSA",
            "Content-Type": "application/json",
        }

    # --- the API

    async def _token(self, request: web.Request) -> web.Response:
        expected = "Basic " + base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        form = await request.post()
        if request.headers.get("Authorization") != expected or form.get("grant_type") != "client_credentials":
            return web.json_response(
                {"error": "invalid_client", "error_description": "Client Authentication failed"}, status=401
            )
        token = "A21AA" + secrets.token_hex(16)
        self._tokens.add(token)
        scope = "https://uri.paypal.com/payments/payouts"
        return web.json_response(
            {
                "scope": scope,
                "access_token": token,
                "token_type": "Bearer",
                "app_id": "APP-80W284485P519543T",
                "expires_in": 32400,
            }
        )

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization", "").removeprefix("Bearer ") in self._tokens

    async def _create_payout(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "AUTHENTICATION_FAILURE")
        request_id = request.headers.get("PayPal-Request-Id", "") if self.honour_request_id else ""
        if request_id and request_id in self._answers:
            status, body = self._answers[request_id]
            return web.json_response(body, status=status)
        payout = await request.json()
        sender_batch_id = payout["sender_batch_header"]["sender_batch_id"]
        existing = [
            b
            for b in self.batches.values()
            if b["batch_header"]["sender_batch_header"]["sender_batch_id"] == sender_batch_id
        ]
        if existing:
            return web.json_response(self._duplicate(existing[0]), status=400)
        batch = self._make_batch(payout)
        self.batches_per_sender_batch_id[sender_batch_id] += 1
        answer = {"batch_header": {k: v for k, v in batch["batch_header"].items() if k != "amount"}, "links": []}
        if request_id:
            self._answers[request_id] = (201, answer)
        lost, self.lose_next_answer = self.lose_next_answer, None
        if lost == "timeout":
            await asyncio.sleep(self.answer_delay_seconds)
        if lost == "500":
            return _error(500, "INTERNAL_SERVICE_ERROR")
        return web.json_response(answer, status=201)

    def _make_batch(self, payout: dict[str, Any]) -> dict[str, Any]:
        batch_id = secrets.token_hex(7).upper()[:13]
        [item] = payout["items"]
        receiver = str(item["receiver"])
        status = (
            "UNCLAIMED"
            if receiver.startswith("unclaimed")
            else "DENIED"
            if receiver.startswith("denied")
            else "SUCCESS"
        )
        batch = {
            "batch_header": {
                "payout_batch_id": batch_id,
                "batch_status": "PENDING",
                "time_created": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "sender_batch_header": payout["sender_batch_header"],
                "amount": item["amount"],
            },
            "items": [
                {
                    "payout_item_id": secrets.token_hex(7).upper()[:13],
                    "transaction_id": secrets.token_hex(8).upper(),
                    "transaction_status": status,
                    "payout_batch_id": batch_id,
                    "payout_item_fee": {"currency": item["amount"]["currency"], "value": "0.00"},
                    "payout_item": {
                        "recipient_type": item["recipient_type"],
                        "amount": item["amount"],
                        "receiver": receiver,
                        "sender_item_id": item.get("sender_item_id", ""),
                    },
                    "time_processed": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                }
            ],
            "links": [],
        }
        self.batches[batch_id] = batch
        return batch

    def _duplicate(self, original: dict[str, Any]) -> dict[str, Any]:
        href = f"{self.url}/v1/payments/payouts/{original['batch_header']['payout_batch_id']}"
        return {
            "name": "USER_BUSINESS_ERROR",
            "message": "User business error.",
            "debug_id": secrets.token_hex(6),
            "information_link": "https://developer.paypal.com/docs/api/payments.payouts-batch/#errors",
            "details": [
                {
                    "field": "SENDER_BATCH_ID",
                    "location": "body",
                    "issue": "Batch with given sender_batch_id already exists",
                    "link": [{"href": href, "rel": "self", "method": "GET", "encType": "application/json"}],
                }
            ],
            "links": [],
        }

    async def _get_payout(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "AUTHENTICATION_FAILURE")
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return _error(404, "INVALID_RESOURCE_ID")
        done = batch["items"][0]["transaction_status"] in ("SUCCESS", "FAILED", "DENIED", "RETURNED")
        batch["batch_header"]["batch_status"] = "SUCCESS" if done else "PROCESSING"
        return web.json_response(batch)

    async def _serve_certificate(self, _: web.Request) -> web.Response:
        return web.Response(body=self._certificate, content_type="application/x-pem-file")


def _error(status: int, name: str) -> web.Response:
    return web.json_response(
        {"name": name, "message": f"{name} (fake PayPal)", "debug_id": secrets.token_hex(6)}, status=status
    )
