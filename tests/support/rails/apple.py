"""Apple, as the tests play it: a certificate chain shaped as Apple's (root → intermediate → leaf, EC P-256, with
Apple's marker extensions and key identifiers, so that app-store-server-library's strict X.509 checks pass with no
change), StoreKit 2 transactions and App Store Server Notifications V2 signed with its leaf (ES256, the three
certificates in the x5c header), and a loopback App Store Server API that takes consumption information and hands
out the notification history only with a bearer token signed by the In-App Purchase key the tests made."""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from tests.support.rails import Loopback

BUNDLE_ID = "com.example.coinstream"
APP_APPLE_ID = 1_234_567_890
ENVIRONMENT = "Sandbox"
# Apple's markers: a Mac App Store and iTunes Store receipt signing leaf, an Apple Worldwide Developer Relations
# intermediate.
LEAF_OID = x509.ObjectIdentifier("1.2.840.113635.100.6.11.1")
INTERMEDIATE_OID = x509.ObjectIdentifier("1.2.840.113635.100.6.2.1")
ASN1_NULL = b"\x05\x00"


@dataclass(frozen=True)
class SigningChain:
    root: x509.Certificate
    intermediate: x509.Certificate
    leaf: x509.Certificate
    leaf_key: ec.EllipticCurvePrivateKey

    @property
    def root_der(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.DER)

    @property
    def root_pem(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.PEM)

    def x5c(self) -> list[str]:
        return [
            base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
            for cert in (self.leaf, self.intermediate, self.root)
        ]

    def sign(self, payload: dict[str, Any]) -> str:
        """A JWS as Apple signs them: ES256 by the leaf, the chain in x5c."""
        return jwt.encode(payload, self.leaf_key, algorithm="ES256", headers={"x5c": self.x5c()})


def signing_chain(name: str = "Test Apple", ocsp_url: str | None = None) -> SigningChain:
    """ocsp_url: where the intermediate and the leaf say their OCSP responder is (Apple's certificates say so; the
    library's online checks ask it)."""
    root_key, intermediate_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _certificate(f"{name} Root CA - G3", root_key, None, None, ca=True)
    intermediate_name, leaf_name = f"{name} Worldwide Developer Relations CA", f"{name} App Store Receipt Signing"
    intermediate = _certificate(
        intermediate_name, intermediate_key, root, root_key, ca=True, marker=INTERMEDIATE_OID, ocsp_url=ocsp_url
    )
    leaf = _certificate(
        leaf_name, leaf_key, intermediate, intermediate_key, ca=False, marker=LEAF_OID, ocsp_url=ocsp_url
    )
    return SigningChain(root, intermediate, leaf, leaf_key)


def _certificate(
    common_name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey | None,
    *,
    ca: bool,
    marker: x509.ObjectIdentifier | None = None,
    ocsp_url: str | None = None,
) -> x509.Certificate:
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name), x509.NameAttribute(NameOID.COUNTRY_NAME, "US")]
    )
    now = datetime.now(UTC)
    signer = issuer_key or key  # a root signs itself
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None if issuer is None or not ca else 0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
    )
    if marker is not None:
        builder = builder.add_extension(x509.UnrecognizedExtension(marker, ASN1_NULL), critical=False)
    if ocsp_url is not None:
        responder = x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url))
        builder = builder.add_extension(x509.AuthorityInformationAccess([responder]), critical=False)
    return builder.sign(signer, hashes.SHA256())


def now_ms() -> int:
    return int(time.time() * 1000)


def new_transaction_id() -> str:
    """Apple's transaction ids are digits."""
    return str(uuid.uuid4().int % 10**15 + 2 * 10**15)


def transaction(
    transaction_id: str,
    product_id: str,
    *,
    bundle_id: str = BUNDLE_ID,
    environment: str = ENVIRONMENT,
    price: int | None = 19_990,
    currency: str = "USD",
    storefront: str = "USA",
    product_type: str = "Consumable",
    **extra: Any,
) -> dict[str, Any]:
    """A JWSTransactionDecodedPayload as Apple signs it (price in milliunits)."""
    signed_at = now_ms()
    payload: dict[str, Any] = {
        "transactionId": transaction_id,
        "originalTransactionId": transaction_id,
        "bundleId": bundle_id,
        "productId": product_id,
        "purchaseDate": signed_at - 1000,
        "originalPurchaseDate": signed_at - 1000,
        "quantity": 1,
        "type": product_type,
        "inAppOwnershipType": "PURCHASED",
        "signedDate": signed_at,
        "environment": environment,
        "transactionReason": "PURCHASE",
        "storefront": storefront,
        "storefrontId": "143441",
        "currency": currency,
        "appTransactionId": "704289572311",
        **extra,
    }
    if price is not None:
        payload["price"] = price
    return payload


def refunded(payload: dict[str, Any], revocation_percentage: int | None = None) -> dict[str, Any]:
    """The transaction as a REFUND notification carries it: revoked now, for a reason, by a share (milliunits)."""
    revoked = {**payload, "revocationDate": now_ms(), "revocationReason": 0, "signedDate": now_ms()}
    if revocation_percentage is not None:
        revoked |= {"revocationPercentage": revocation_percentage, "revocationType": "REFUND_PRORATED"}
    return revoked


def notification(
    notification_type: str,
    signed_transaction: str | None,
    *,
    bundle_id: str = BUNDLE_ID,
    environment: str = ENVIRONMENT,
    notification_id: str | None = None,
    **data: Any,
) -> dict[str, Any]:
    """A ResponseBodyV2DecodedPayload."""
    body: dict[str, Any] = {
        "appAppleId": APP_APPLE_ID,
        "bundleId": bundle_id,
        "bundleVersion": "1.0",
        "environment": environment,
        **data,
    }
    if signed_transaction is not None:
        body["signedTransactionInfo"] = signed_transaction
    return {
        "notificationType": notification_type,
        "notificationUUID": notification_id or str(uuid.uuid4()),
        "data": body,
        "version": "2.0",
        "signedDate": now_ms(),
    }


def tampered(signed: str, **changes: Any) -> str:
    """The same JWS with its payload changed and the signature kept: what a forger can do without the leaf's key."""
    header, payload, signature = signed.split(".")
    decoded = jwt.decode(signed, options={"verify_signature": False}) | changes
    forged = base64.urlsafe_b64encode(json.dumps(decoded).encode()).rstrip(b"=").decode()
    assert forged != payload
    return f"{header}.{forged}.{signature}"


# --- the App Store Server API -------------------------------------------------------------------------------------


@dataclass
class ServerApiKey:
    """An In-App Purchase key as App Store Connect hands it out: an id, its issuer, a P-256 key in a .p8 (PKCS#8)."""

    key_id: str = "TESTKEY123"
    issuer_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    private_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def write(self, path: Path) -> Path:
        path.write_bytes(
            self.private_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        path.chmod(0o600)
        return path


@dataclass(frozen=True)
class HistoryEntry:
    """A notification of Apple's notification history: its signedPayload, when Apple first tried to send it, and
    whether any attempt got a 2xx (onlyFailures leaves those out)."""

    signed_payload: str
    sent_ms: int
    delivered: bool = False


@dataclass(frozen=True)
class HistoryRequest:
    """A Get Notification History request the fake answered: its body, its paginationToken, the payloads served."""

    body: dict[str, Any]
    pagination_token: str | None
    served: list[str]


class FakeServerApi:
    """The App Store Server API: Send Consumption Information (PUT /inApps/v2/transactions/consumption/{id}),
    answering 202 as Apple does, and Get Notification History (POST /inApps/v1/notifications/history: the entries
    sent between startDate and endDate, failures only when asked, page_size a page, hasMore and an opaque
    paginationToken); 401 unless the bearer token is an ES256 JWT signed by the key, with its kid, issuer, audience
    and bundle id."""

    def __init__(self, key: ServerApiKey, bundle_id: str = BUNDLE_ID) -> None:
        self._key, self._bundle_id = key, bundle_id
        self.consumption: dict[str, list[dict[str, Any]]] = {}
        self.unauthorized = 0
        self.history: list[HistoryEntry] = []
        self.page_size = 20  # Apple's
        self.history_requests: list[HistoryRequest] = []
        self._pages: dict[str, tuple[int, dict[str, Any]]] = {}  # paginationToken → (offset, the request's body)
        app = web.Application()
        app.router.add_put("/inApps/v2/transactions/consumption/{transaction_id}", self._consumption)
        app.router.add_post("/inApps/v1/notifications/history", self._notification_history)
        self._app = app
        self._loopback = Loopback()
        self.url = ""

    async def start(self) -> str:
        self.url = await self._loopback.serve(self._app)
        return self.url

    async def stop(self) -> None:
        await self._loopback.stop()

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer":
            return False
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(
                token,
                self._key.private_key.public_key(),
                algorithms=["ES256"],
                audience="appstoreconnect-v1",
                issuer=self._key.issuer_id,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.PyJWTError:
            return False
        return header.get("kid") == self._key.key_id and claims.get("bid") == self._bundle_id

    async def _consumption(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            self.unauthorized += 1
            return web.Response(status=401)
        body = await request.json()
        self.consumption.setdefault(request.match_info["transaction_id"], []).append(body)
        return web.Response(status=202)

    def add_to_history(self, signed_payload: str, *, delivered: bool = False) -> None:
        self.history.append(HistoryEntry(signed_payload, now_ms(), delivered))

    async def _notification_history(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            self.unauthorized += 1
            return web.Response(status=401)
        body = await request.json()
        token = request.query.get("paginationToken")
        if token is None:
            offset = 0
        elif token in self._pages and self._pages[token][1] == body:  # a token goes with its own request
            offset = self._pages.pop(token)[0]
        else:
            return web.json_response({"errorCode": 4000008, "errorMessage": "Invalid pagination token."}, status=400)
        only_failures = bool(body.get("onlyFailures"))
        matching = [
            entry.signed_payload
            for entry in self.history
            if body["startDate"] <= entry.sent_ms < body["endDate"] and not (only_failures and entry.delivered)
        ]
        page = matching[offset : offset + self.page_size]
        attempts = [{"attemptDate": now_ms(), "sendAttemptResult": "TIMED_OUT"}]
        answer: dict[str, Any] = {
            "notificationHistory": [{"signedPayload": payload, "sendAttempts": attempts} for payload in page],
            "hasMore": offset + len(page) < len(matching),
        }
        if answer["hasMore"]:
            answer["paginationToken"] = next_token = str(uuid.uuid4())
            self._pages[next_token] = (offset + len(page), body)
        self.history_requests.append(HistoryRequest(body, token, page))
        return web.json_response(answer)
