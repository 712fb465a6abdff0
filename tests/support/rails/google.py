"""A loopback stand-in for Google, as the wallet's Google Play rail reaches it: the OAuth token endpoint a service
account's JWT assertion is exchanged at, the Play Developer API (androidpublisher v3: purchases.products get and
consume, purchases.voidedpurchases list, in Google's documented JSON and error shapes), and the certificates Google
signs Pub/Sub push tokens with. The keys are generated here: a service account's (its JSON key file, whose token_uri
points at this fake) and Google's own (push tokens signed with it verify with google-auth, unmodified). Faults are
injected per call kind: a delay (the client times out mid-call) or an error status, the next time only."""

from __future__ import annotations

import asyncio
import base64
import datetime
import itertools
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

from tests.support.rails import Loopback

PACKAGE_NAME = "com.coinstream.test"
PUSH_AUDIENCE = "https://wallet.coinstream.test/notifications/google-play"
PUSH_SERVICE_ACCOUNT = "play-push@coinstream-test.iam.gserviceaccount.com"
API_SERVICE_ACCOUNT = "play-api@coinstream-test.iam.gserviceaccount.com"
GOOGLE_ISSUER = "https://accounts.google.com"
# The audience of a service account's assertion, whatever token_uri it is posted to (google-auth's constant).
OAUTH_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
PLAY_SCOPE = "https://www.googleapis.com/auth/androidpublisher"
API_PREFIX = "/androidpublisher/v3/applications/{package}/purchases"


@dataclass(frozen=True)
class SigningKey:
    """An RSA key with its key id, and a self-signed certificate of it (Google publishes its keys so)."""

    key_id: str
    private_pem: bytes
    certificate_pem: str

    @classmethod
    def generate(cls, name: str) -> SigningKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256())
        )
        private_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cls(secrets.token_hex(20), private_pem, certificate.public_bytes(serialization.Encoding.PEM).decode())

    def sign(self, claims: Mapping[str, Any], key_id: str | None = None) -> str:
        signer = crypt.RSASigner.from_string(self.private_pem, key_id=key_id or self.key_id)
        token: bytes = jwt.encode(signer, dict(claims))
        return token.decode()


@dataclass
class PlayPurchase:
    """A ProductPurchase as Google keeps it (the JSON fields the API answers with)."""

    token: str
    product_id: str
    resource: dict[str, Any]

    @property
    def consumed(self) -> bool:
        return bool(self.resource.get("consumptionState") == 1)


@dataclass
class Fault:
    delay_seconds: float = 0.0
    status: int = 0


@dataclass
class FakeGoogle:
    """Google for one app (PACKAGE_NAME), on a free loopback port once started."""

    service_account: SigningKey = field(default_factory=lambda: SigningKey.generate("play-api"))
    push_key: SigningKey = field(default_factory=lambda: SigningKey.generate("google-push"))
    purchases: dict[str, PlayPurchase] = field(default_factory=dict)
    # Voided purchases in the order Google saw them: (when it saw them, in ms, the VoidedPurchase).
    voided: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    # Every API call: (kind, product id or "", token or "").
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    access_tokens: set[str] = field(default_factory=set)
    url: str = ""
    _faults: dict[str, list[Fault]] = field(default_factory=dict)
    _orders: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _loopback: Loopback = field(default_factory=Loopback)

    # --- the test's side ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_get("/oauth2/v1/certs", self._certs)
        products = API_PREFIX + "/products/{product}/tokens/{token}"
        app.router.add_get(products, self._get)
        app.router.add_post(products, self._post)  # {token}:consume, {token}:acknowledge
        app.router.add_get(API_PREFIX + "/voidedpurchases", self._list_voided)
        self.url = await self._loopback.serve(app)

    async def stop(self) -> None:
        await self._loopback.stop()

    def write_service_account_file(self, path: Path) -> Path:
        """The service account's JSON key as the Cloud console makes it, with token_uri pointing here."""
        path.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": "coinstream-test",
                    "private_key_id": self.service_account.key_id,
                    "private_key": self.service_account.private_pem.decode(),
                    "client_email": API_SERVICE_ACCOUNT,
                    "client_id": "100000000000000000001",
                    "auth_uri": f"{self.url}/auth",
                    "token_uri": f"{self.url}/token",
                    "universe_domain": "googleapis.com",
                }
            )
        )
        path.chmod(0o600)
        return path

    def buy(self, product_id: str, **fields: Any) -> PlayPurchase:
        """A purchase made in the app: purchased, not consumed, of one package; fields override the resource's."""
        token = f"play-token-{secrets.token_urlsafe(24)}"
        order = next(self._orders)
        resource = {
            "kind": "androidpublisher#productPurchase",
            "purchaseTimeMillis": str(int(time.time() * 1000)),
            "purchaseState": 0,
            "consumptionState": 0,
            "orderId": f"GPA.3300-{order:04d}-{secrets.randbelow(10**4):04d}-{secrets.randbelow(10**5):05d}",
            "acknowledgementState": 0,
            "regionCode": "DE",
            **fields,
        }
        purchase = PlayPurchase(token, product_id, resource)
        self.purchases[token] = purchase
        return purchase

    def void(self, purchase: PlayPurchase, reason: int = 7, seen_ms: int | None = None) -> None:
        """Google voids the purchase (7: a chargeback) and lists it among the voided purchases."""
        purchase.resource["purchaseState"] = 1
        voided_ms = seen_ms if seen_ms is not None else int(time.time() * 1000)
        self.voided.append(
            (
                voided_ms,
                {
                    "kind": "androidpublisher#voidedPurchase",
                    "purchaseToken": purchase.token,
                    "orderId": purchase.resource["orderId"],
                    "purchaseTimeMillis": purchase.resource["purchaseTimeMillis"],
                    "voidedTimeMillis": str(voided_ms),
                    "voidedSource": 2,
                    "voidedReason": reason,
                },
            )
        )

    def fail_next(self, kind: str, *, status: int = 0, delay_seconds: float = 0.0) -> None:
        """The next call of this kind ("get", "consume", "voided", "token") answers status, or is delayed."""
        self._faults.setdefault(kind, []).append(Fault(delay_seconds, status))

    def calls_of(self, kind: str, token: str) -> int:
        return sum(1 for call in self.calls if call[0] == kind and call[2] == token)

    def push_token(self, **claims: Any) -> str:
        """A Pub/Sub push's OIDC token as Google signs it for the push service account; claims override."""
        now = int(time.time())
        payload = {
            "aud": PUSH_AUDIENCE,
            "azp": "100000000000000000002",
            "email": PUSH_SERVICE_ACCOUNT,
            "email_verified": True,
            "exp": now + 3600,
            "iat": now,
            "iss": GOOGLE_ISSUER,
            "sub": "100000000000000000002",
            **claims,
        }
        return self.push_key.sign(payload)

    # --- Google's side ------------------------------------------------------------------------------------------

    async def _certs(self, _: web.Request) -> web.Response:
        return web.json_response(
            {self.push_key.key_id: self.push_key.certificate_pem},
            headers={"Cache-Control": "public, max-age=19800, must-revalidate, no-transform"},
        )

    async def _token(self, request: web.Request) -> web.Response:
        """The JWT-bearer grant (RFC 7523): an assertion signed with the service account's key, asking for the Play
        Developer API's scope."""
        if (failed := await self._fault("token")) is not None:
            return failed
        form = parse_qs((await request.read()).decode())
        try:
            claims = jwt.decode(
                form["assertion"][0],
                certs={self.service_account.key_id: self.service_account.certificate_pem},
                audience=OAUTH_TOKEN_AUDIENCE,
            )
        except (KeyError, ValueError):
            return web.json_response(
                {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}, status=400
            )
        grant = form.get("grant_type") == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
        if not grant or claims.get("iss") != API_SERVICE_ACCOUNT or claims.get("scope") != PLAY_SCOPE:
            return web.json_response({"error": "invalid_grant"}, status=400)
        access_token = f"ya29.fake-{secrets.token_urlsafe(16)}"
        self.access_tokens.add(access_token)
        return web.json_response({"access_token": access_token, "expires_in": 3599, "token_type": "Bearer"})

    async def _get(self, request: web.Request) -> web.Response:
        product, token = request.match_info["product"], request.match_info["token"]
        if (refused := await self._refuse("get", request, product, token)) is not None:
            return refused
        purchase = self.purchases.get(token)
        if purchase is None or purchase.product_id != product:
            return _error(400, "The purchase token is invalid.", "invalid")
        return web.json_response(purchase.resource)

    async def _post(self, request: web.Request) -> web.Response:
        product, token_and_verb = request.match_info["product"], request.match_info["token"]
        token, _, verb = token_and_verb.rpartition(":")
        if verb not in ("consume", "acknowledge"):
            return _error(404, "Not found", "notFound")
        if (refused := await self._refuse(verb, request, product, token)) is not None:
            return refused
        purchase = self.purchases.get(token)
        if purchase is None or purchase.product_id != product:
            return _error(400, "The purchase token is invalid.", "invalid")
        if purchase.resource["purchaseState"] != 0:
            return _error(400, "The purchase is not in a valid state to perform the desired operation.", "invalid")
        if verb == "consume":
            if purchase.consumed:
                return _error(400, "The product purchase has already been consumed.", "productAlreadyConsumed")
            purchase.resource["consumptionState"] = 1
        purchase.resource["acknowledgementState"] = 1
        return web.Response(status=204)

    async def _list_voided(self, request: web.Request) -> web.Response:
        if (refused := await self._refuse("voided", request, "", "")) is not None:
            return refused
        query = request.query
        page_size = min(int(query.get("maxResults", "1000")), 1000)
        if "token" in query:
            start_index = int(query["token"])
        else:
            since_ms = int(query.get("startTime", "0"))
            if since_ms < int(time.time() * 1000) - 30 * 86_400_000:
                return _error(400, "startTime is too far in the past.", "invalid")
            start_index = next((i for i, (seen, _) in enumerate(self.voided) if seen >= since_ms), len(self.voided))
        page = [voided for _, voided in self.voided[start_index : start_index + page_size]]
        body: dict[str, Any] = {"pageInfo": {"totalResults": len(page), "resultPerPage": page_size}}
        if page:
            body["voidedPurchases"] = page
        if start_index + page_size < len(self.voided):
            body["tokenPagination"] = {"nextPageToken": str(start_index + page_size)}
        return web.json_response(body)

    async def _refuse(self, kind: str, request: web.Request, product: str, token: str) -> web.Response | None:
        """What every API call goes through first: its fault, the caller's access token, the app."""
        self.calls.append((kind, product, token))
        if (failed := await self._fault(kind)) is not None:
            return failed
        scheme, _, access_token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or access_token not in self.access_tokens:
            return _error(401, "Request had invalid authentication credentials.", "authError")
        if request.match_info["package"] != PACKAGE_NAME:
            return _error(404, "No application was found for the given package name.", "applicationNotFound")
        return None

    async def _fault(self, kind: str) -> web.Response | None:
        pending = self._faults.get(kind)
        if not pending:
            return None
        fault = pending.pop(0)
        if fault.delay_seconds:
            await asyncio.sleep(fault.delay_seconds)
        if fault.status:
            return _error(fault.status, "Backend Error", "backendError")
        return None


def _error(status: int, message: str, reason: str) -> web.Response:
    """Google's JSON error shape."""
    return web.json_response(
        {
            "error": {
                "code": status,
                "message": message,
                "errors": [{"message": message, "domain": "global", "reason": reason}],
            }
        },
        status=status,
    )


def push_body(notification: Mapping[str, Any], message_id: str) -> bytes:
    """A Pub/Sub push of a developer notification, as the push subscription delivers it."""
    data = base64.b64encode(json.dumps(dict(notification)).encode()).decode()
    return json.dumps(
        {
            "message": {
                "data": data,
                "messageId": message_id,
                "message_id": message_id,
                "publishTime": "2026-12-07T20:50:11Z",
            },
            "subscription": "projects/coinstream-test/subscriptions/play-notifications",
        }
    ).encode()


def developer_notification(package_name: str = PACKAGE_NAME, **kind: Any) -> dict[str, Any]:
    """A DeveloperNotification: one of oneTimeProductNotification, voidedPurchaseNotification, testNotification."""
    return {"version": "1.0", "packageName": package_name, "eventTimeMillis": str(int(time.time() * 1000)), **kind}


def voided_notification(purchase: PlayPurchase, refund_type: int = 1) -> dict[str, Any]:
    return developer_notification(
        voidedPurchaseNotification={
            "purchaseToken": purchase.token,
            "orderId": purchase.resource["orderId"],
            "productType": 2,
            "refundType": refund_type,
        }
    )
