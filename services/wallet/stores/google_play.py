"""Google Play through the Google Play Developer API (androidpublisher v3), with Google's own client
(google-api-python-client) and service-account credentials (google-auth): RedeemStorePurchase's check of a purchase
token and its consumption afterwards (GooglePlayVerifier), and the periodic pass over the Voided Purchases API
(VoidedPurchasesPass), which catches the refunds and chargebacks no notification told about. The real-time developer
notifications endpoint is google_play_notifications.py.

What Google leaves to the app, decided here:
- coins are consumables: a credited purchase is consumed (which acknowledges it; a purchase neither acknowledged nor
  consumed within 3 days is refunded by Google), and consuming again is fine;
- only money buys coins: canceled and pending purchases, promo-code and rewarded (ad-watching) ones are refused, and a
  license tester's test purchase is refused in production unless staging opts in;
- one purchase is one package: a purchase of several (multi-quantity) is refused, so every voided purchase of ours
  is voided whole (its share is 1, whatever Google says of the refunded quantity);
- a purchase made for an account (the app's obfuscatedAccountId: the account id, or its SHA-256 in hex) is redeemed
  by that account only.
The purchase token travels in the API's URLs, so no error text of Google's client is logged or answered here."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol, Self

import google.auth.exceptions
import httplib2  # type: ignore[import-untyped]  # Google's client and its transport ship no types
import structlog
from google.oauth2 import service_account
from google_auth_httplib2 import AuthorizedHttp  # type: ignore[import-untyped]
from googleapiclient import discovery  # type: ignore[import-untyped]
from googleapiclient.errors import HttpError  # type: ignore[import-untyped]
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.runtime.errors import AppError, failed_precondition, unavailable
from services.wallet.domain import (
    RailReversal,
    RailReversalOutcome,
    RedeemStorePurchase,
    Store,
    StoreProof,
)

log = structlog.get_logger()

RAIL = Store.GOOGLE_PLAY.value
SCOPE = "https://www.googleapis.com/auth/androidpublisher"
API_URL = "https://androidpublisher.googleapis.com/"
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"

# ProductPurchase fields (androidpublisher v3).
PURCHASED, CANCELED, PENDING = 0, 1, 2  # purchaseState
TEST_PURCHASE, PROMO_PURCHASE, REWARDED_PURCHASE = 0, 1, 2  # purchaseType, absent for a purchase paid as usual
CONSUMED = 1  # consumptionState
# VoidedPurchase.voidedReason, by its number.
VOIDED_REASONS = (
    "other",
    "remorse",
    "not_received",
    "defective",
    "accidental_purchase",
    "fraud",
    "friendly_fraud",
    "chargeback",
    "unacknowledged_purchase",
)
# The API's answers that say the token is no purchase of this app's product (bad, unknown, expired): a verification
# failure. Any other failure (credentials, quota, Google's outage) is the store being unavailable.
REFUSED_STATUSES = frozenset({400, 404, 410})
# ISO 4217 currencies whose minor unit is not a hundredth (Google states prices in micros of the unit).
ZERO_DECIMAL_CURRENCIES = frozenset(
    {"BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF"}
)
THREE_DECIMAL_CURRENCIES = frozenset({"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"})

# The Voided Purchases API: how far back it reaches, and its largest page.
VOIDED_LOOKBACK_MS = 30 * 86_400_000
VOIDED_PAGE_SIZE = 1000
ONE_TIME_PRODUCTS = 0  # voidedpurchases.list's type: in-app products only (we sell no subscriptions)


class GooglePlaySettings(BaseSettings):
    """Google Play purchases (COINSTREAM_GOOGLE_PLAY_*), off unless enabled; part of WalletSettings.
    The key file's content is read at start and never logged; these settings hold only its path."""

    model_config = SettingsConfigDict(env_prefix="COINSTREAM_GOOGLE_PLAY_", extra="ignore", hide_input_in_errors=True)

    enabled: bool = False
    # The app's package name (applicationId): the purchases verified and the notifications taken are of it only.
    package_name: str = ""
    # The JSON key of a service account the Play Console granted the app's "View financial data" and "Manage orders
    # and subscriptions" permissions.
    service_account_file: str = ""
    # The Play Developer API's address (tests: a loopback fake). The OAuth token endpoint is the key's token_uri.
    api_url: str = API_URL
    # One API call's limit; it should stay under COINSTREAM_WALLET_PAYMENT_TIMEOUT_SECONDS, which answers the buyer.
    api_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    # Real-time developer notifications, a Pub/Sub push subscription with authentication: the audience set on it
    # (by default Google uses the push endpoint's URL) and the service account it pushes as.
    push_audience: str = ""
    push_service_account_email: str = ""
    # Where Google publishes the certificates it signs push tokens with (tests: their own).
    certs_url: str = GOOGLE_CERTS_URL
    # The pass over the Voided Purchases API (refunds and chargebacks Google does not push): every interval, at most
    # this many pages of 1,000 per pass (the API allows 6,000 queries a day), each sweep going back to the previous
    # sweep's start less the overlap (30 days after a start).
    voided_interval_seconds: float = Field(default=900.0, gt=0, le=86_400)
    voided_pages_per_pass: int = Field(default=10, ge=1, le=100)
    voided_overlap_seconds: float = Field(default=3600.0, ge=0, le=7 * 86_400)

    @model_validator(mode="after")
    def _enabled_needs_its_app_and_key(self) -> Self:
        if self.enabled:
            missing = [self.env_name(f) for f in ("package_name", "service_account_file") if not getattr(self, f)]
            if missing:
                raise ValueError(f"COINSTREAM_GOOGLE_PLAY_ENABLED=true needs {' and '.join(missing)}")
        return self

    def production_problems(self) -> list[str]:
        if not self.enabled:
            return []
        required = {  # (the app and its key are required wherever it is enabled)
            "push_audience": "without it any Google-signed token would do",
            "push_service_account_email": "without it a token Google signed for anyone's service account would do",
        }
        problems = [
            f"{self.env_name(field)} is unset ({why})" for field, why in required.items() if not getattr(self, field)
        ]
        # Another address would be believed: another API's answers, another key set's push tokens.
        problems += [
            f"{self.env_name(field)} is {getattr(self, field)}: production asks Google's own ({google})"
            for field, google in (("api_url", API_URL), ("certs_url", GOOGLE_CERTS_URL))
            if getattr(self, field) != google
        ]
        return problems

    @classmethod
    def env_name(cls, field: str) -> str:
        return f"{cls.model_config.get('env_prefix', '')}{field}".upper()


class GooglePlayKeyError(ValueError):
    """The service account key cannot be used; the message names the setting and never holds the key."""


class PlayApiError(Exception):
    """A Play Developer API call that did not succeed. status: Google's HTTP status; None when Google could not be
    reached (a timeout, a connection, the token endpoint)."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status

    @property
    def refused(self) -> bool:
        return self.status in REFUSED_STATUSES

    def as_app_error(self) -> AppError:
        if self.refused:
            return verification_failed("Google Play knows no such purchase of this product in this app")
        return unavailable("PAYMENT_PROVIDER_UNAVAILABLE", "Google Play did not answer; retry with the same request_id")


def verification_failed(message: str) -> AppError:
    return failed_precondition("PAYMENT_VERIFICATION_FAILED", message)


def load_credentials(path: str, setting: str) -> service_account.Credentials:
    """The service account's credentials from its JSON key file (read once, at start)."""
    try:
        info = json.loads(Path(path).read_text())
        from_info = service_account.Credentials.from_service_account_info
        credentials: service_account.Credentials = from_info(info, scopes=[SCOPE])  # type: ignore[no-untyped-call]
        return credentials
    except OSError as error:
        raise GooglePlayKeyError(f"{setting}: cannot read {path!r}: {error.strerror or error}") from None
    except (ValueError, TypeError, AttributeError) as error:  # not JSON, not a key, fields missing or malformed
        reason = type(error).__name__  # its message might quote the file
        raise GooglePlayKeyError(f"{setting}: {path!r} is not a service account JSON key ({reason})") from None


@dataclass(frozen=True)
class VoidedPage:
    purchases: list[Mapping[str, Any]]
    next_page_token: str | None


class PlayApi(Protocol):
    """The Play Developer API calls the wallet makes (PlayDeveloperApi; tests may stand in)."""

    async def product_purchase(self, product_id: str, purchase_token: str) -> Mapping[str, Any]: ...

    async def consume(self, product_id: str, purchase_token: str) -> None: ...

    async def voided_purchases(self, start_time_ms: int, page_token: str | None) -> VoidedPage: ...


class PlayDeveloperApi:
    """The Play Developer API of one app (its package name). The client is synchronous and httplib2, under it, is
    not thread-safe: each call runs in a thread of its own, on an HTTP connection of its own, with the timeout."""

    def __init__(
        self, credentials: service_account.Credentials, package_name: str, api_url: str, timeout_seconds: float
    ) -> None:
        self._credentials = credentials
        self._package_name = package_name
        self._timeout_seconds = timeout_seconds
        # Static discovery: the API's description ships with the client, so building it fetches nothing.
        service = discovery.build(
            "androidpublisher",
            "v3",
            http=self._http(),
            static_discovery=True,
            client_options={"api_endpoint": api_url},
        )
        self._products = service.purchases().products()
        self._voided = service.purchases().voidedpurchases()

    async def product_purchase(self, product_id: str, purchase_token: str) -> Mapping[str, Any]:
        purchase = await self._call(
            self._products.get(packageName=self._package_name, productId=product_id, token=purchase_token)
        )
        return purchase if isinstance(purchase, Mapping) else {}

    async def consume(self, product_id: str, purchase_token: str) -> None:
        await self._call(
            self._products.consume(packageName=self._package_name, productId=product_id, token=purchase_token)
        )

    async def voided_purchases(self, start_time_ms: int, page_token: str | None) -> VoidedPage:
        page = await self._call(
            self._voided.list(
                packageName=self._package_name,
                startTime=str(start_time_ms),  # ignored by Google when a page token is given
                maxResults=VOIDED_PAGE_SIZE,
                type=ONE_TIME_PRODUCTS,
                token=page_token,
            )
        )
        page = page if isinstance(page, Mapping) else {}
        return VoidedPage(
            list(page.get("voidedPurchases") or []), (page.get("tokenPagination") or {}).get("nextPageToken")
        )

    def _http(self) -> AuthorizedHttp:
        return AuthorizedHttp(self._credentials, http=httplib2.Http(timeout=self._timeout_seconds))

    async def _call(self, request: Any) -> Any:
        try:
            return await asyncio.to_thread(request.execute, http=self._http(), num_retries=0)
        except HttpError as error:
            raise PlayApiError(error.status_code, f"Google Play answered {error.status_code}") from None
        except (OSError, httplib2.HttpLib2Error, google.auth.exceptions.GoogleAuthError) as error:
            # Timeouts and connections (OSError), the token endpoint refusing or unreachable (GoogleAuthError).
            raise PlayApiError(None, f"Google Play could not be reached ({type(error).__name__})") from error


class GooglePlayVerifier:
    """ports.StoreVerifier for Google Play: a purchase token is checked with purchases.products.get, and the
    purchase consumed with purchases.products.consume once its coins are credited."""

    def __init__(self, api: PlayApi, *, accept_test_purchases: bool) -> None:
        self._api = api
        self._accept_test_purchases = accept_test_purchases

    async def verify(self, redeem: RedeemStorePurchase) -> StoreProof:
        try:
            purchase = await self._api.product_purchase(redeem.product_id, redeem.purchase_token)
        except PlayApiError as error:
            log.warning("google_play_verify_failed", status=error.status, product_id=redeem.product_id)
            raise error.as_app_error() from None
        return play_proof(purchase, redeem, accept_test_purchases=self._accept_test_purchases)

    async def finish(self, proof: StoreProof) -> None:
        try:
            await self._api.consume(proof.product_id, proof.purchase_token)
        except PlayApiError as error:
            if not (error.refused and await self._nothing_to_consume(proof)):
                raise
        log.info("google_play_consumed", order_id=proof.transaction_id)

    async def _nothing_to_consume(self, proof: StoreProof) -> bool:
        """After a refused consume: whether the purchase needs none any more — consumed already (a retry of ours),
        canceled (refunded: Google refunds nothing twice), or its token gone."""
        try:
            purchase = await self._api.product_purchase(proof.product_id, proof.purchase_token)
        except PlayApiError as error:
            return error.refused
        return purchase.get("consumptionState") == CONSUMED or purchase.get("purchaseState") == CANCELED


def play_proof(purchase: Mapping[str, Any], redeem: RedeemStorePurchase, *, accept_test_purchases: bool) -> StoreProof:
    """What a ProductPurchase proves, or PAYMENT_VERIFICATION_FAILED for anything but one paid package of this
    product, bought for this account."""
    state = purchase.get("purchaseState")
    if state == PENDING:
        raise verification_failed("the purchase is pending at Google Play: redeem it once it is paid")
    if state != PURCHASED:
        raise verification_failed("the purchase was canceled at Google Play")
    purchase_type = purchase.get("purchaseType")
    if purchase_type in (PROMO_PURCHASE, REWARDED_PURCHASE):
        raise verification_failed("a promo code or rewarded purchase is not paid for: it buys no coins")
    if purchase_type == TEST_PURCHASE and not accept_test_purchases:
        raise verification_failed("a license tester's test purchase is not accepted in production")
    if purchase.get("productId", redeem.product_id) != redeem.product_id:
        raise verification_failed("the purchase token is of another product")
    if int(purchase.get("quantity") or 1) != 1:
        raise verification_failed("a purchase of several packages at once is not accepted: one package at a time")
    buyer = purchase.get("obfuscatedExternalAccountId")
    if buyer and not names_account(buyer, redeem.account_id):
        raise verification_failed("the purchase was made for another account")
    order_id = purchase.get("orderId")
    if not isinstance(order_id, str) or not order_id:
        raise verification_failed("Google Play gave the purchase no order id")
    price_minor, currency_code = price_paid(purchase)
    return StoreProof(
        store=Store.GOOGLE_PLAY,
        transaction_id=order_id,
        product_id=redeem.product_id,
        price_paid_minor=price_minor,
        currency_code=currency_code,
        storefront_country=storefront(purchase.get("regionCode")),
        needs_finishing=True,
        purchase_token=redeem.purchase_token,
    )


def names_account(obfuscated_account_id: str, account_id: str) -> bool:
    """Whether the app's obfuscatedAccountId names the account: its id, or the SHA-256 of its id in hex (Google asks
    for an id that reveals nothing)."""
    return obfuscated_account_id in (account_id, hashlib.sha256(account_id.encode()).hexdigest())


def price_paid(purchase: Mapping[str, Any]) -> tuple[int | None, str]:
    """The price the buyer paid in its currency's minor units, when Google states it (priceAmountMicros and
    priceCurrencyCode; purchases.products.get does not today): (None, "") otherwise, and the package's price is kept."""
    micros, currency_code = purchase.get("priceAmountMicros"), purchase.get("priceCurrencyCode")
    if micros is None or not isinstance(currency_code, str) or len(currency_code) != 3:
        return None, ""
    try:
        amount_micros = int(micros)
    except (TypeError, ValueError):
        return None, ""
    if amount_micros < 0:
        return None, ""
    currency_code = currency_code.upper()
    digits = 0 if currency_code in ZERO_DECIMAL_CURRENCIES else 3 if currency_code in THREE_DECIMAL_CURRENCIES else 2
    return (amount_micros * 10**digits + 500_000) // 1_000_000, currency_code  # to the nearest minor unit


def storefront(region_code: object) -> str:
    """regionCode (ISO 3166-1 alpha-2) as a storefront country; "" for anything else."""
    if isinstance(region_code, str) and len(region_code) == 2 and region_code.isascii() and region_code.isalpha():
        return region_code.upper()
    return ""


# --- voided purchases -------------------------------------------------------------------------------------------


class RailNotices(Protocol):
    """What the Google Play entrypoints (the voided purchases pass, the notifications endpoint) ask of the wallet's
    use cases (service.WalletService)."""

    async def reverse_by_rail(self, notice: RailReversal, kind: str) -> RailReversalOutcome: ...

    async def record_notification(self, rail: str, notification_id: str, kind: str) -> bool: ...


def voided_reversal(voided: Mapping[str, Any]) -> RailReversal | None:
    """The reversal a voided purchase of the Voided Purchases API makes: the whole purchase (ours are of one
    package), under an id of its order — so the pass, again and again, and the push of the same void take effect
    once between them (a second full reversal finds nothing left). None without an order id."""
    order_id = voided.get("orderId")
    if not isinstance(order_id, str) or not order_id:
        return None
    return RailReversal(
        rail=RAIL,
        notification_id=f"voided:{order_id}",
        store_transaction_id=order_id,
        share=Fraction(1),
        reason=f"google play voided purchase ({voided_reason(voided.get('voidedReason'))})",
    )


def voided_reason(reason: object) -> str:
    if isinstance(reason, int) and 0 <= reason < len(VOIDED_REASONS):
        return VOIDED_REASONS[reason]
    return "unknown"


def now_ms() -> int:
    return int(time.time() * 1000)


class VoidedPurchasesPass:
    """One pass over the Voided Purchases API: Google does not notify every refund, chargeback or revocation. Each
    sweep lists what Google saw voided since the previous sweep began (less an overlap, for what Google records
    late), the first one since start-up the last 30 days; a pass reads at most pages_per_pass pages, and a sweep
    longer than that goes on at once in the next pass (returning True, "more due"). A failed call starts the
    sweep again. Every replica sweeps: each void takes effect once whoever finds it first."""

    def __init__(
        self,
        api: PlayApi,
        wallet: RailNotices,
        *,
        pages_per_pass: int,
        overlap_ms: int,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        assert pages_per_pass > 0 and overlap_ms >= 0
        self._api = api
        self._wallet = wallet
        self._pages_per_pass = pages_per_pass
        self._overlap_ms = overlap_ms
        self._clock_ms = clock_ms
        self._since_ms: int | None = None  # where the next sweep starts (None: 30 days back)
        self._sweep_started_ms = 0
        self._page_token: str | None = None

    async def __call__(self) -> bool:
        if self._page_token is None:  # a new sweep
            self._sweep_started_ms = self._clock_ms()
        # Google refuses a start older than 30 days: a minute's margin for the time the request takes.
        oldest_ms = self._sweep_started_ms - VOIDED_LOOKBACK_MS + 60_000
        start_ms = max(oldest_ms, self._since_ms or oldest_ms)
        for _ in range(self._pages_per_pass):
            try:
                page = await self._api.voided_purchases(start_ms, self._page_token)
            except PlayApiError:
                self._page_token = None
                raise
            for voided in page.purchases:
                await self._reverse(voided)
            self._page_token = page.next_page_token
            if self._page_token is None:
                self._since_ms = self._sweep_started_ms - self._overlap_ms
                return False
        return True

    async def _reverse(self, voided: Mapping[str, Any]) -> None:
        reversal = voided_reversal(voided)
        if reversal is None:
            log.warning("google_play_voided_without_order", voided_time_ms=voided.get("voidedTimeMillis"))
            return
        outcome = await self._wallet.reverse_by_rail(reversal, "voided_purchase")
        if outcome is not RailReversalOutcome.DUPLICATE:
            log.info(
                "google_play_voided_purchase",
                order_id=reversal.store_transaction_id,
                reason=reversal.reason,
                outcome=outcome.value,
            )
