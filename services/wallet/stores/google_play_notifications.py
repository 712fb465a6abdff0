"""Google Play's real-time developer notifications at POST /notifications/google-play: a Pub/Sub push subscription
delivers each one, signed by an OIDC token (Authorization: Bearer) that Google issues for the push service account.

The token is verified first, with google-auth (google.auth.jwt.decode: RS256 signature by one of Google's keys, expiry,
the audience configured on the subscription), then its issuer and the push service account's email: anyone can have
Google sign a token for any audience, so the email is what says the push is ours. Google's keys (X.509 certificates
by key id) are fetched from the certs URL and cached as Google's Cache-Control says; a key id not among them fetches
them again (keys rotate), at most once a minute.

Then the push is deduplicated by its Pub/Sub messageId, in the transaction that applies it (service.py):
- voidedPurchaseNotification of a one-time product: the purchase of its orderId is reversed whole (ours are of one
  package: google_play.py), or waits for its redeem;
- oneTimeProductNotification (purchased, canceled), testNotification, and anything else: recorded; the app redeems
  its purchases itself (RedeemStorePurchase), and a canceled pending purchase credited nothing.
A notification of another app's package is refused 400."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import aiohttp
import google.auth.exceptions
import structlog
from google.auth import jwt

from services.runtime.http_ingress import Answer, Rejected, Unsigned
from services.wallet.domain import RailReversal, RailReversalOutcome
from services.wallet.stores.google_play import RAIL, RailNotices

log = structlog.get_logger()

PATH = "/notifications/google-play"
ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
# DeveloperNotification: voidedPurchaseNotification.productType, oneTimeProductNotification.notificationType.
ONE_TIME_PRODUCT = 2
ONE_TIME_PRODUCT_KINDS = {1: "one_time_product_purchased", 2: "one_time_product_canceled"}

CLOCK_SKEW_SECONDS = 30
CERTS_MIN_REFETCH_SECONDS = 60.0  # an unknown key id fetches the certs again at most this often
CERTS_DEFAULT_MAX_AGE_SECONDS = 3600.0
CERTS_MAX_AGE_BOUNDS_SECONDS = (60.0, 86_400.0)
CERTS_FETCH_TIMEOUT_SECONDS = 10.0


class GoogleCerts:
    """Google's token-signing certificates by key id, from the certs URL, cached for as long as its Cache-Control
    max-age says (within bounds). A fetch that fails raises (the push is answered 5xx and retried) unless the cached
    certificates still hold the key id asked for."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._certs: dict[str, str] = {}
        self._expires_at = 0.0
        self._fetched_at = -CERTS_MIN_REFETCH_SECONDS
        self._lock = asyncio.Lock()

    async def for_key(self, key_id: str | None) -> Mapping[str, str]:
        async with self._lock:
            now = time.monotonic()
            stale = now >= self._expires_at
            unknown = key_id is not None and key_id not in self._certs
            if stale or (unknown and now - self._fetched_at >= CERTS_MIN_REFETCH_SECONDS):
                try:
                    certs, max_age = await self._download()
                except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                    if key_id is None or key_id not in self._certs:
                        raise
                    log.warning("google_certs_fetch_failed", error=type(error).__name__, using="cached")
                else:
                    self._certs, self._fetched_at, self._expires_at = certs, now, now + max_age
                    log.info("google_certs_fetched", key_ids=sorted(certs), max_age_s=max_age)
            return dict(self._certs)

    async def _download(self) -> tuple[dict[str, str], float]:
        """The certificates by key id, and for how many seconds they may be kept."""
        timeout = aiohttp.ClientTimeout(total=CERTS_FETCH_TIMEOUT_SECONDS)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(self._url) as response:
            response.raise_for_status()
            certs = await response.json(content_type=None)
            max_age = cache_max_age_seconds(response.headers.get("Cache-Control", ""))
        if not isinstance(certs, dict) or not all(isinstance(v, str) for v in certs.values()):
            raise ValueError("the certs URL answered no map of key ids to certificates")
        return certs, max_age


def cache_max_age_seconds(cache_control: str) -> float:
    found = re.search(r"max-age=(\d+)", cache_control)
    if found is None:
        return CERTS_DEFAULT_MAX_AGE_SECONDS
    low, high = CERTS_MAX_AGE_BOUNDS_SECONDS
    return min(high, max(low, float(found.group(1))))


class PushTokenVerifier:
    """The OIDC token of a Pub/Sub push: Google's signature, not expired, for this audience, issued to the push
    service account. audience or email "" leaves that claim unchecked (development; production refuses it)."""

    def __init__(self, certs: GoogleCerts, audience: str, service_account_email: str) -> None:
        self._certs = certs
        self._audience = audience
        self._email = service_account_email

    async def verify(self, authorization: str) -> None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unsigned("no bearer token")
        token = token.strip()
        try:
            key_id = jwt.decode_header(token).get("kid")  # type: ignore[no-untyped-call]
        except (google.auth.exceptions.GoogleAuthError, ValueError):
            raise Unsigned("the push token is not a JWT") from None
        certs = await self._certs.for_key(key_id if isinstance(key_id, str) else None)
        try:
            claims = jwt.decode(  # type: ignore[no-untyped-call]
                token, certs=certs, audience=self._audience or None, clock_skew_in_seconds=CLOCK_SKEW_SECONDS
            )
        except (google.auth.exceptions.GoogleAuthError, ValueError):
            # A foreign key, an unknown key id, a bad signature, expired, another audience: the reason stays here,
            # since a forger learns from it.
            raise Unsigned("the push token does not verify") from None
        if claims.get("iss") not in ISSUERS:
            raise Unsigned("the push token is not Google's")
        if self._email and (claims.get("email") != self._email or claims.get("email_verified") is not True):
            raise Unsigned("the push token is not the push service account's")


@dataclass(frozen=True)
class PlayNotification:
    """A DeveloperNotification as the wallet acts on it: its Pub/Sub message id, what kind it is, and the reversal
    it asks for (None: recorded only)."""

    message_id: str
    kind: str
    reversal: RailReversal | None = None


def read_push(body: bytes, package_name: str) -> PlayNotification:
    """The DeveloperNotification a Pub/Sub push carries; Rejected (400) for anything that is not one of this app."""
    try:
        push = json.loads(body)
        message = push["message"]
        message_id = message.get("messageId") or message.get("message_id")
        notification = json.loads(base64.b64decode(message["data"], validate=True))
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise Rejected("not a Pub/Sub push of a developer notification") from None
    if not isinstance(message_id, str) or not message_id or not isinstance(notification, dict):
        raise Rejected("not a Pub/Sub push of a developer notification")
    if notification.get("packageName") != package_name:
        raise Rejected("a notification of another app")
    voided = notification.get("voidedPurchaseNotification")
    if isinstance(voided, dict):
        return PlayNotification(message_id, "voided_purchase", voided_push_reversal(message_id, voided))
    one_time = notification.get("oneTimeProductNotification")
    if isinstance(one_time, dict):
        kind = ONE_TIME_PRODUCT_KINDS.get(one_time.get("notificationType", 0), "one_time_product")
        return PlayNotification(message_id, kind)
    if "testNotification" in notification:
        return PlayNotification(message_id, "test")
    if "subscriptionNotification" in notification:
        return PlayNotification(message_id, "subscription")  # we sell no subscriptions
    return PlayNotification(message_id, "other")


def voided_push_reversal(message_id: str, voided: Mapping[str, Any]) -> RailReversal | None:
    """A pushed void of a one-time product reverses its order whole: a quantity-based partial refund (refundType 2)
    cannot leave part of a purchase of ours, each being of one package. None for a subscription's."""
    if voided.get("productType") != ONE_TIME_PRODUCT:
        return None
    order_id = voided.get("orderId")
    if not isinstance(order_id, str) or not order_id:
        raise Rejected("a voided purchase without its order id")
    refund = "partial refund" if voided.get("refundType") == 2 else "refund"
    return RailReversal(RAIL, message_id, order_id, Fraction(1), f"google play voided purchase ({refund})")


class GooglePlayNotifications:
    """The endpoint's handler (services/runtime/http_ingress.py): the token, then the push, then its effect."""

    def __init__(self, wallet: RailNotices, tokens: PushTokenVerifier, package_name: str) -> None:
        self._wallet = wallet
        self._tokens = tokens
        self._package_name = package_name

    async def __call__(self, body: bytes, headers: Mapping[str, str]) -> Answer:
        await self._tokens.verify(headers.get("authorization", ""))
        notification = read_push(body, self._package_name)
        if notification.reversal is not None:
            outcome = await self._wallet.reverse_by_rail(notification.reversal, notification.kind)
            log.info(
                "google_play_notification",
                message_id=notification.message_id,
                kind=notification.kind,
                order_id=notification.reversal.store_transaction_id,
                outcome=outcome.value,
            )
            return Answer({"outcome": outcome.value}, duplicate=outcome is RailReversalOutcome.DUPLICATE)
        recorded = await self._wallet.record_notification(RAIL, notification.message_id, notification.kind)
        log.info("google_play_notification", message_id=notification.message_id, kind=notification.kind)
        return Answer({"outcome": "recorded" if recorded else "duplicate"}, duplicate=not recorded)
