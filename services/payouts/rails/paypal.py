"""PayPal Payouts: a withdrawal is a payout batch of one item, on PayPal's REST API with httpx (no maintained SDK
covers Payouts).

- OAuth2 client credentials: POST /v1/oauth2/token, the token kept until shortly before it expires.
- submit: POST /v1/payments/payouts with sender_batch_header.sender_batch_id = the withdrawal id (PayPal pays a
  sender_batch_id once within 30 days, so a 5xx is safe to retry with it), PayPal-Request-Id = the withdrawal id too,
  and one item: recipient_type EMAIL (a destination with an "@") or PAYPAL_ID (a payer id), the amount as a decimal
  string made from the integer minor units, sender_item_id = the withdrawal id.
- resume (the answer was lost): the same request again. PayPal answers the original payout (the request id), or
  refuses the duplicate sender_batch_id with a link to the original payout, which is then read; if it never got the
  first, this one is the payout.
- status: GET /v1/payments/payouts/{payout_batch_id}, the item's transaction_status.
- webhooks (POST /webhooks/paypal): verified offline. RSA-SHA256 (PKCS#1 v1.5) over
  "transmission_id|transmission_time|webhook_id|crc32(body)" with the certificate at PAYPAL-CERT-URL, fetched only
  from an allowed host (over HTTPS; plain HTTP only for a loopback host, the tests' fake) and cached; a transmission
  older than the tolerance is refused. PAYMENT.PAYOUTS-ITEM.SUCCEEDED pays; FAILED, DENIED, BLOCKED fail; RETURNED,
  REFUNDED and CANCELED give the diamonds back (after paying, or instead). UNCLAIMED changes nothing: the item is still
  the recipient's to claim, and PayPal returns it after 30 days (RETURNED, which gives the diamonds back then) —
  giving them back at UNCLAIMED would pay twice if the recipient claims it meanwhile."""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import json
import re
import time
import zlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.payouts import domain
from services.payouts.payout_notices import NoticeOutcome, apply_payout_notice
from services.payouts.ports import PayoutResult, PayoutsStore, PayoutState
from services.payouts.rails.secrets import RailSettingError, missing_files, read_secret_file
from services.runtime.http_ingress import Answer, Rejected, Unsigned

log = structlog.get_logger()

PAYPAL_CERT_HOSTS = ["api.paypal.com", "api.sandbox.paypal.com"]
PAYPAL_LIVE_CERT_HOST = "api.paypal.com"
PAYPAL_LIVE_API = "https://api-m.paypal.com"
WEBHOOK_PATH = "/webhooks/paypal"
PAYER_ID = re.compile(r"^[A-Z0-9]{13}$")
# Currencies PayPal takes without decimals (its currency codes page); the rest have two.
NO_DECIMALS = frozenset({"HUF", "JPY", "TWD"})
# Item states: paid; never paid (the diamonds come back); still with PayPal. Anything else: still with PayPal.
ITEM_PAID = frozenset({"SUCCESS"})
ITEM_NOT_PAID = frozenset({"FAILED", "DENIED", "BLOCKED", "RETURNED", "REFUNDED", "REVERSED", "CANCELED"})
EVENT_PREFIX = "PAYMENT.PAYOUTS-ITEM."
EVENT_OUTCOMES = {
    "SUCCEEDED": domain.PayoutOutcome.PAID,
    "FAILED": domain.PayoutOutcome.FAILED,
    "DENIED": domain.PayoutOutcome.FAILED,
    "BLOCKED": domain.PayoutOutcome.FAILED,
    "RETURNED": domain.PayoutOutcome.RETURNED,
    "REFUNDED": domain.PayoutOutcome.RETURNED,
    "CANCELED": domain.PayoutOutcome.RETURNED,
}
TOKEN_EARLY_RENEWAL_SECONDS = 60
MAX_CACHED_CERTIFICATES = 16


class PayPalSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COINSTREAM_PAYPAL_", extra="ignore", hide_input_in_errors=True)

    # The REST app's client id, and its secret in a file.
    client_id: str = ""
    client_secret_file: str = ""
    # The id PayPal gave the webhook subscription (part of what each webhook's signature covers).
    webhook_id: str = ""
    # PayPal's API (https://api-m.sandbox.paypal.com for its sandbox); the tests point it at a loopback fake.
    api_base: str = PAYPAL_LIVE_API
    # The only hosts a webhook's PAYPAL-CERT-URL may name (JSON list): PayPal's, or the tests' loopback fake.
    # (PayPal's sandbox signs from api.sandbox.paypal.com: a staging deployment against it adds that host.)
    cert_hosts: list[str] = Field(default_factory=lambda: [PAYPAL_LIVE_CERT_HOST])
    # How old a webhook's PAYPAL-TRANSMISSION-TIME may be (a captured webhook replayed later is refused).
    webhook_tolerance_seconds: int = Field(default=300, gt=0, le=86_400)

    def production_problems(self, *, staging: bool = False) -> list[str]:
        """staging: PayPal's sandbox is allowed (test money: withdrawals would be PAID while nobody is paid)."""
        problems = missing_files(
            {
                "COINSTREAM_PAYPAL_CLIENT_ID": self.client_id,
                "COINSTREAM_PAYPAL_CLIENT_SECRET_FILE": self.client_secret_file,
                "COINSTREAM_PAYPAL_WEBHOOK_ID": self.webhook_id,
            }
        )
        allowed = set(PAYPAL_CERT_HOSTS) if staging else {PAYPAL_LIVE_CERT_HOST}
        foreign = sorted(set(self.cert_hosts) - allowed)
        if self.api_base != PAYPAL_LIVE_API and not staging:
            problems.append(
                f"COINSTREAM_PAYPAL_API_BASE is {self.api_base}, not PayPal's live API ({PAYPAL_LIVE_API}): withdrawals"
                " would be marked paid while nobody is (set COINSTREAM_ALLOW_SANDBOX_PROVIDERS=true only on staging)"
            )
        if foreign:
            problems.append(
                f"COINSTREAM_PAYPAL_CERT_HOSTS names {', '.join(foreign)}: only PayPal's hosts may sign its webhooks"
            )
        return problems


# --- the payouts ---------------------------------------------------------------------------------------------------


class PayPalError(Exception):
    """PayPal could not be asked, or answered something we cannot take as an outcome: the outcome stays unknown."""


class PayPalPayoutProvider:
    name = domain.PAYPAL_RAIL

    def __init__(self, http: httpx.AsyncClient, client_id: str, client_secret: str) -> None:
        self._http = http
        self._credentials = (client_id, client_secret)
        self._token = ""
        self._token_expires_at = 0.0
        self._token_lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: PayPalSettings, timeout_seconds: float) -> PayPalPayoutProvider:
        secret = read_secret_file("COINSTREAM_PAYPAL_CLIENT_SECRET_FILE", settings.client_secret_file)
        if not settings.client_id:
            raise RailSettingError("COINSTREAM_PAYPAL_CLIENT_ID is unset")
        return cls(httpx.AsyncClient(base_url=settings.api_base, timeout=timeout_seconds), settings.client_id, secret)

    async def submit(
        self, *, withdrawal_id: str, destination: str, amount_minor: int, currency_code: str
    ) -> PayoutResult:
        return await self._submit(withdrawal_id, destination, amount_minor, currency_code, resuming=False)

    async def _submit(
        self, withdrawal_id: str, destination: str, amount_minor: int, currency_code: str, *, resuming: bool
    ) -> PayoutResult:
        recipient_type = recipient_type_of(destination)
        if recipient_type is None:
            return PayoutResult(PayoutState.FAILED, withdrawal_id, "the destination is no PayPal email or payer id")
        body = payout_request(withdrawal_id, recipient_type, destination, amount_minor, currency_code)
        response = await self._call("POST", "/v1/payments/payouts", json=body, request_id=withdrawal_id)
        if response.status_code == 400 and (original := duplicate_batch_link(_json(response))):
            log.info("paypal_payout_already_made", withdrawal_id=withdrawal_id)  # the sender_batch_id was taken
            return await self._batch_result(original)
        if response.status_code in (400, 422) and (resuming or names_the_sender_batch_id(_json(response))):
            # A payout may exist that this answer does not lead to (its link missing or unreadable, or a refusal of
            # a request PayPal may have taken before): its outcome is unknown, never a failure that gives the
            # diamonds back while PayPal pays. Asked again on the next pass; an operator sees the error.
            log.error("paypal_payout_outcome_unknown", withdrawal_id=withdrawal_id, status=response.status_code)
            raise PayPalError(f"PayPal refused a payout it may have made ({response.status_code}); asking again later")
        if response.status_code in (400, 422):
            # Refused as it stands (a receiver PayPal does not take, an amount out of range): never paid.
            return PayoutResult(
                PayoutState.FAILED, withdrawal_id, f"PayPal refused the payout: {_error_name(response)}"
            )
        batch = _accepted(response)
        return PayoutResult(PayoutState.PROCESSING, str(batch["batch_header"]["payout_batch_id"]))

    async def resume(
        self, *, withdrawal_id: str, destination: str, amount_minor: int, currency_code: str
    ) -> PayoutResult:
        # The same sender_batch_id and request id: PayPal answers the original, or makes it now if it never got it.
        return await self._submit(withdrawal_id, destination, amount_minor, currency_code, resuming=True)

    async def status(self, *, withdrawal_id: str, provider_reference: str) -> PayoutResult:
        return await self._batch_result(f"/v1/payments/payouts/{provider_reference}")

    async def cancel(self, *, withdrawal_id: str, destination: str, provider_reference: str | None) -> bool:
        # Never asked for a submitted one (they cannot be canceled); a pending one never reached PayPal.
        return provider_reference is None

    async def _batch_result(self, path: str) -> PayoutResult:
        return item_result(_accepted(await self._call("GET", path)))

    async def _call(
        self, method: str, path: str, *, json: Mapping[str, Any] | None = None, request_id: str = ""
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {await self._access_token()}"}
        if request_id:
            headers["PayPal-Request-Id"] = request_id
        response = await self._http.request(method, path, json=json, headers=headers)
        if response.status_code == 401:
            self._token = ""  # expired or revoked early: a new one next time
        if response.status_code in (401, 403, 429) or response.status_code >= 500:
            # Ours to fix or to wait out; a 5xx is safe to retry with the same sender_batch_id.
            raise PayPalError(f"PayPal answered {response.status_code} to {method} {urlsplit(path).path}")
        return response

    async def _access_token(self) -> str:
        async with self._token_lock:
            if not self._token or time.monotonic() >= self._token_expires_at:
                response = await self._http.post(
                    "/v1/oauth2/token", data={"grant_type": "client_credentials"}, auth=self._credentials
                )
                if response.status_code != 200:
                    raise PayPalError(f"PayPal refused our client credentials ({response.status_code})")
                token = _json(response)
                self._token = str(token["access_token"])
                expires_in = float(token.get("expires_in", 0))
                self._token_expires_at = time.monotonic() + max(expires_in - TOKEN_EARLY_RENEWAL_SECONDS, 0)
            return self._token

    async def close(self) -> None:
        await self._http.aclose()


def recipient_type_of(destination: str) -> str | None:
    if "@" in destination:
        return "EMAIL"
    return "PAYPAL_ID" if PAYER_ID.match(destination) else None


def decimal_amount(amount_minor: int, currency_code: str) -> str:
    """Integer minor units as PayPal's decimal string, in integers until the string: 1234 USD → "12.34"."""
    assert amount_minor >= 0, amount_minor
    if currency_code in NO_DECIMALS:
        return str(amount_minor)
    units, cents = divmod(amount_minor, 100)
    return f"{units}.{cents:02d}"


def payout_request(
    withdrawal_id: str, recipient_type: str, receiver: str, amount_minor: int, currency_code: str
) -> dict[str, Any]:
    return {
        "sender_batch_header": {"sender_batch_id": withdrawal_id, "email_subject": "You have a payout"},
        "items": [
            {
                "recipient_type": recipient_type,
                "amount": {"value": decimal_amount(amount_minor, currency_code), "currency": currency_code},
                "receiver": receiver,
                "sender_item_id": withdrawal_id,
            }
        ],
    }


def item_result(batch: Mapping[str, Any]) -> PayoutResult:
    """A payout batch of one item, as an outcome: the item's transaction_status (the batch's own while it has no
    item yet: DENIED or CANCELED before any item was made)."""
    header = batch.get("batch_header") or {}
    reference = str(header.get("payout_batch_id", ""))
    items = batch.get("items") or []
    state = str(items[0].get("transaction_status", "")) if items else str(header.get("batch_status", ""))
    if state in ITEM_PAID:
        return PayoutResult(PayoutState.PAID, reference)
    if state in ITEM_NOT_PAID or (not items and state == "DENIED"):
        return PayoutResult(PayoutState.FAILED, reference, f"PayPal: the payout item is {state.lower()}")
    return PayoutResult(PayoutState.PROCESSING, reference)


def names_the_sender_batch_id(error: Mapping[str, Any]) -> bool:
    """PayPal's refusal is about the sender_batch_id: one used before, by a payout that exists."""
    details = error.get("details") or []
    return any(str(d.get("field", "")).upper() == "SENDER_BATCH_ID" for d in details if isinstance(d, Mapping))


def duplicate_batch_link(error: Mapping[str, Any]) -> str:
    """The path of the original payout when PayPal refused a sender_batch_id used before ("" otherwise): its error
    carries a HATEOAS link to it."""
    details = error.get("details") or []
    if not names_the_sender_batch_id(error):
        return ""
    links = [*(error.get("links") or [])]
    for detail in details:
        if isinstance(detail, Mapping):
            links += detail.get("link") or detail.get("links") or []
    for link in links:
        path = urlsplit(str(link.get("href", ""))).path if isinstance(link, Mapping) else ""
        if re.fullmatch(r"/v1/payments/payouts/[A-Za-z0-9_-]+", path):
            return path
    return ""


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        raise PayPalError(f"PayPal answered {response.status_code} with no JSON") from None
    if not isinstance(body, dict):
        raise PayPalError(f"PayPal answered {response.status_code} with no JSON object")
    return body


def _accepted(response: httpx.Response) -> dict[str, Any]:
    if response.status_code not in (200, 201):
        raise PayPalError(f"PayPal answered {response.status_code}: {_error_name(response)}")
    body = _json(response)
    if not isinstance(body.get("batch_header"), Mapping):
        raise PayPalError("PayPal answered a payout without its batch header")
    return body


def _error_name(response: httpx.Response) -> str:
    try:
        return str(_json(response).get("name", "an error"))  # the name only: the message may quote the receiver
    except PayPalError:
        return "an error"


# --- webhooks ---------------------------------------------------------------------------------------------------------


class CertificateFetchError(Exception):
    pass


class PayPalCertificates:
    """The certificates webhooks name, fetched from allowed hosts only and kept (PayPal rotates them rarely)."""

    def __init__(self, http: httpx.AsyncClient, allowed_hosts: list[str]) -> None:
        self._http = http
        self._allowed_hosts = frozenset(host.lower() for host in allowed_hosts)
        self._cache: dict[str, x509.Certificate] = {}

    def check_url(self, url: str) -> None:
        """Refuses (401) a certificate URL on a host we do not trust, or in clear text to anything but loopback."""
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
        except ValueError:
            raise Unsigned("PAYPAL-CERT-URL is not a URL") from None
        if host not in self._allowed_hosts:
            raise Unsigned("PAYPAL-CERT-URL names a host that does not sign PayPal's webhooks")
        if parts.scheme != "https" and not (parts.scheme == "http" and _loopback(host)):
            raise Unsigned("PAYPAL-CERT-URL must be HTTPS")

    async def get(self, url: str) -> x509.Certificate:
        self.check_url(url)
        certificate = self._cache.get(url)
        if certificate is None:
            try:
                response = await self._http.get(url)
            except httpx.HTTPError as error:
                raise CertificateFetchError(f"cannot fetch PayPal's certificate: {type(error).__name__}") from None
            if response.status_code != 200:
                raise CertificateFetchError(f"PayPal's certificate URL answered {response.status_code}")
            try:
                certificate = x509.load_pem_x509_certificate(response.content)
            except ValueError:
                raise Unsigned("PAYPAL-CERT-URL holds no PEM certificate") from None
            if len(self._cache) >= MAX_CACHED_CERTIFICATES:
                self._cache.pop(next(iter(self._cache)))
            self._cache[url] = certificate
        return certificate


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def signed_message(transmission_id: str, transmission_time: str, webhook_id: str, body: bytes) -> bytes:
    return f"{transmission_id}|{transmission_time}|{webhook_id}|{zlib.crc32(body)}".encode()


def verify_signature(certificate: x509.Certificate, signature_b64: str, message: bytes, now: datetime) -> None:
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise Unsigned("PayPal's certificate is not valid now")
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise Unsigned("PayPal's certificate holds no RSA key")
    try:
        key.verify(base64.b64decode(signature_b64, validate=True), message, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, binascii.Error, ValueError):
        raise Unsigned("PAYPAL-TRANSMISSION-SIG does not verify") from None


def notice_from_event(event: Mapping[str, Any]) -> domain.PayoutNotice:
    kind = str(event.get("event_type", ""))
    resource = event.get("resource")
    if not event.get("id") or not isinstance(resource, Mapping):
        raise Rejected("not a PayPal webhook event")
    item = resource.get("payout_item") or {}
    withdrawal_id = str(item.get("sender_item_id") or resource.get("sender_batch_id") or "")
    state = kind.removeprefix(EVENT_PREFIX)
    outcome = EVENT_OUTCOMES.get(state) if kind.startswith(EVENT_PREFIX) else None
    reason = "" if outcome in (None, domain.PayoutOutcome.PAID) else f"PayPal: the payout item was {state.lower()}"
    return domain.PayoutNotice(
        payout_provider=domain.PAYPAL_RAIL,
        notification_id=str(event["id"]),
        kind=kind,
        withdrawal_id=withdrawal_id,
        outcome=outcome,
        reason=reason,
        provider_reference=str(resource.get("payout_batch_id") or ""),
    )


class PayPalWebhook:
    """POST /webhooks/paypal: verified offline (no call to PayPal's verify endpoint), then applied once."""

    def __init__(
        self, store: PayoutsStore, certificates: PayPalCertificates, webhook_id: str, tolerance_seconds: int
    ) -> None:
        self._store, self._certificates = store, certificates
        self._webhook_id, self._tolerance = webhook_id, tolerance_seconds

    @classmethod
    def from_settings(cls, store: PayoutsStore, settings: PayPalSettings, timeout_seconds: float) -> PayPalWebhook:
        if not settings.webhook_id:
            raise RailSettingError("COINSTREAM_PAYPAL_WEBHOOK_ID is unset")
        certificates = PayPalCertificates(httpx.AsyncClient(timeout=timeout_seconds), settings.cert_hosts)
        return cls(store, certificates, settings.webhook_id, settings.webhook_tolerance_seconds)

    async def __call__(self, body: bytes, headers: Mapping[str, str]) -> Answer:
        await self._verify(body, headers)
        try:
            event = json.loads(body)
        except ValueError:
            raise Rejected("not JSON") from None
        if not isinstance(event, Mapping):
            raise Rejected("not a PayPal webhook event")
        outcome = await apply_payout_notice(self._store, notice_from_event(event))
        return Answer({"outcome": outcome.value}, duplicate=outcome is NoticeOutcome.DUPLICATE)

    async def _verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        names = ("paypal-transmission-id", "paypal-transmission-time", "paypal-transmission-sig", "paypal-cert-url")
        transmission_id, transmission_time, signature, cert_url = (headers.get(name, "") for name in names)
        if not all((transmission_id, transmission_time, signature, cert_url)):
            raise Unsigned("a PayPal transmission header is missing")
        if headers.get("paypal-auth-algo", "SHA256withRSA") != "SHA256withRSA":
            raise Unsigned("PAYPAL-AUTH-ALGO is not SHA256withRSA")
        try:
            sent_at = datetime.fromisoformat(transmission_time)
        except ValueError:
            raise Unsigned("PAYPAL-TRANSMISSION-TIME is not a time") from None
        if sent_at.tzinfo is None:
            raise Unsigned("PAYPAL-TRANSMISSION-TIME has no time zone")
        now = datetime.now(UTC)
        if abs((now - sent_at).total_seconds()) > self._tolerance:
            raise Unsigned("PAYPAL-TRANSMISSION-TIME is outside the tolerance")
        self._certificates.check_url(cert_url)  # before any fetch: never reach a host we do not trust
        certificate = await self._certificates.get(cert_url)
        message = signed_message(transmission_id, transmission_time, self._webhook_id, body)
        verify_signature(certificate, signature, message, now)
