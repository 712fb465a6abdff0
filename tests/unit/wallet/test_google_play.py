"""Google Play's rules without Google (services/wallet/stores/google_play*.py): what a ProductPurchase proves, the
price and storefront read off it, consuming again, the voided purchases pass's sweeps, a push's notification, its
OIDC token (signed here with generated keys, verified by google-auth), and the rail's settings."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pydantic
import pytest

from services.runtime.errors import AppError
from services.runtime.http_ingress import Rejected, Unsigned
from services.runtime.requests import RequestKey
from services.wallet.config import WalletSettings
from services.wallet.domain import RailReversal, RailReversalOutcome, RedeemStorePurchase, Store
from services.wallet.stores import google_play_notifications as notifications
from services.wallet.stores.google_play import (
    GooglePlayKeyError,
    GooglePlaySettings,
    GooglePlayVerifier,
    PlayApiError,
    VoidedPage,
    VoidedPurchasesPass,
    load_credentials,
    play_proof,
    price_paid,
    storefront,
    voided_reversal,
)
from tests.support.rails.google import (
    PACKAGE_NAME,
    PUSH_AUDIENCE,
    PUSH_SERVICE_ACCOUNT,
    FakeGoogle,
    SigningKey,
    developer_notification,
    push_body,
)

ACCOUNT = "acct-1"
PRODUCT = "coins_1321"
PURCHASED = {"purchaseState": 0, "consumptionState": 0, "orderId": "GPA.1234-5678-9012-34567", "regionCode": "de"}


def redeem(account_id: str = ACCOUNT, product_id: str = PRODUCT) -> RedeemStorePurchase:
    return RedeemStorePurchase(
        RequestKey("redeem-1", "RedeemStorePurchase", b""),
        account_id,
        Store.GOOGLE_PLAY,
        "",
        "token-1",
        product_id,
        "c",
    )


def refusal_of(purchase: Mapping[str, Any], *, accept_test_purchases: bool = False) -> str:
    with pytest.raises(AppError) as refused:
        play_proof(purchase, redeem(), accept_test_purchases=accept_test_purchases)
    assert (refused.value.code, refused.value.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "PAYMENT_VERIFICATION_FAILED",
    )
    return refused.value.message


# --- what a purchase proves -------------------------------------------------------------------------------------


def test_a_paid_purchase_proves_its_order_its_storefront_and_what_finishing_needs() -> None:
    proof = play_proof(PURCHASED, redeem(), accept_test_purchases=False)
    assert (proof.store, proof.transaction_id, proof.product_id) == (Store.GOOGLE_PLAY, PURCHASED["orderId"], PRODUCT)
    assert (proof.price_paid_minor, proof.currency_code, proof.storefront_country) == (None, "", "DE")
    assert (proof.needs_finishing, proof.purchase_token) == (True, "token-1")


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"purchaseState": 1}, "canceled"),
        ({"purchaseState": 2}, "pending"),
        ({"purchaseType": 1}, "promo code"),
        ({"purchaseType": 2}, "rewarded"),
        ({"purchaseType": 0}, "test purchase"),
        ({"productId": "coins_65"}, "another product"),
        ({"quantity": 3}, "several packages"),
        ({"obfuscatedExternalAccountId": "acct-2"}, "another account"),
        ({"orderId": ""}, "no order id"),
    ],
)
def test_anything_but_one_paid_package_for_the_account_is_refused(fields: dict[str, Any], says: str) -> None:
    assert says in refusal_of({**PURCHASED, **fields})


def test_a_test_purchase_is_accepted_where_test_purchases_are() -> None:
    test_purchase = {**PURCHASED, "purchaseType": 0}
    assert play_proof(test_purchase, redeem(), accept_test_purchases=True).transaction_id == PURCHASED["orderId"]


@pytest.mark.parametrize("named_as", [ACCOUNT, hashlib.sha256(ACCOUNT.encode()).hexdigest()])
def test_a_purchase_made_for_the_account_names_it_by_its_id_or_their_hash(named_as: str) -> None:
    purchase = {**PURCHASED, "obfuscatedExternalAccountId": named_as, "quantity": 1, "productId": PRODUCT}
    assert play_proof(purchase, redeem(), accept_test_purchases=False).transaction_id == PURCHASED["orderId"]


@pytest.mark.parametrize(
    ("micros", "currency", "paid"),
    [
        ("1990000", "USD", (199, "USD")),
        (1_234_500, "eur", (123, "EUR")),  # 1.2345 EUR to the nearest cent
        ("120000000", "JPY", (120, "JPY")),
        ("1234500", "KWD", (1235, "KWD")),  # three decimals, half up
        (None, "USD", (None, "")),
        ("1990000", None, (None, "")),
        ("-1", "USD", (None, "")),
        ("lots", "USD", (None, "")),
    ],
)
def test_the_price_paid_is_read_from_micros_in_the_currencys_minor_unit(
    micros: object, currency: object, paid: tuple[int | None, str]
) -> None:
    assert price_paid({"priceAmountMicros": micros, "priceCurrencyCode": currency}) == paid


@pytest.mark.parametrize(("region", "country"), [("de", "DE"), ("US", "US"), ("DEU", ""), (None, ""), ("1A", "")])
def test_the_storefront_is_the_purchases_region(region: object, country: str) -> None:
    assert storefront(region) == country


# --- finishing ----------------------------------------------------------------------------------------------------


class StubApi:
    """The Play API as the verifier and the pass see it: answers and failures set by the test."""

    def __init__(self, purchase: Mapping[str, Any] | None = None, consume_error: PlayApiError | None = None) -> None:
        self.purchase = purchase
        self.consume_error = consume_error
        self.pages: list[VoidedPage | PlayApiError] = []
        self.listed: list[tuple[int, str | None]] = []

    async def product_purchase(self, product_id: str, purchase_token: str) -> Mapping[str, Any]:
        if self.purchase is None:
            raise PlayApiError(404, "Google Play answered 404")
        return self.purchase

    async def consume(self, product_id: str, purchase_token: str) -> None:
        if self.consume_error is not None:
            raise self.consume_error

    async def voided_purchases(self, start_time_ms: int, page_token: str | None) -> VoidedPage:
        self.listed.append((start_time_ms, page_token))
        page = self.pages.pop(0)
        if isinstance(page, PlayApiError):
            raise page
        return page


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (PlayApiError(400, "x"), grpc.StatusCode.FAILED_PRECONDITION),
        (PlayApiError(503, "x"), grpc.StatusCode.UNAVAILABLE),
    ],
)
async def test_google_refusing_a_token_fails_verification_and_an_outage_is_unavailable(
    error: PlayApiError, code: grpc.StatusCode
) -> None:
    class Failing(StubApi):
        async def product_purchase(self, product_id: str, purchase_token: str) -> Mapping[str, Any]:
            raise error

    with pytest.raises(AppError) as refused:
        await GooglePlayVerifier(Failing(), accept_test_purchases=False).verify(redeem())
    assert refused.value.code == code
    assert PlayApiError(None, "x").as_app_error().code == grpc.StatusCode.UNAVAILABLE  # unreachable: retry later


@pytest.mark.parametrize(
    "state", [{"consumptionState": 1}, {"purchaseState": 1}, None], ids=["consumed", "refunded", "token gone"]
)
async def test_a_refused_consume_of_a_purchase_needing_none_is_finished(state: dict[str, int] | None) -> None:
    api = StubApi({**PURCHASED, **state} if state else None, consume_error=PlayApiError(400, "already consumed"))
    proof = play_proof(PURCHASED, redeem(), accept_test_purchases=False)
    await GooglePlayVerifier(api, accept_test_purchases=False).finish(proof)


@pytest.mark.parametrize("error", [PlayApiError(400, "refused"), PlayApiError(503, "down"), PlayApiError(None, "x")])
async def test_a_consume_that_did_not_happen_raises_for_the_periodic_pass(error: PlayApiError) -> None:
    api = StubApi(PURCHASED, consume_error=error)
    proof = play_proof(PURCHASED, redeem(), accept_test_purchases=False)
    with pytest.raises(PlayApiError):
        await GooglePlayVerifier(api, accept_test_purchases=False).finish(proof)


# --- the voided purchases pass --------------------------------------------------------------------------------------


class Notices:
    def __init__(self) -> None:
        self.reversals: list[RailReversal] = []

    async def reverse_by_rail(self, notice: RailReversal, kind: str) -> RailReversalOutcome:
        seen = any(r.notification_id == notice.notification_id for r in self.reversals)
        self.reversals.append(notice)
        return RailReversalOutcome.DUPLICATE if seen else RailReversalOutcome.APPLIED

    async def record_notification(self, rail: str, notification_id: str, kind: str) -> bool:
        return True


def voided(order_id: str, reason: int = 7) -> dict[str, Any]:
    return {"orderId": order_id, "purchaseToken": f"t-{order_id}", "voidedTimeMillis": "1", "voidedReason": reason}


def test_a_voided_purchase_reverses_its_order_whole_under_an_id_of_the_order() -> None:
    assert voided_reversal(voided("GPA.1", reason=6)) == RailReversal(
        "google_play", "voided:GPA.1", "GPA.1", Fraction(1), "google play voided purchase (friendly_fraud)"
    )
    assert voided_reversal({"voidedReason": 7}) is None


async def test_a_sweep_reads_its_pages_within_the_bound_and_the_next_starts_where_it_began_less_the_overlap() -> None:
    now = [100 * 86_400_000]
    api, wallet = StubApi(), Notices()
    sweep = VoidedPurchasesPass(api, wallet, pages_per_pass=2, overlap_ms=5_000, clock_ms=lambda: now[0])
    api.pages = [VoidedPage([voided("A")], "p2"), VoidedPage([voided("B")], "p3"), VoidedPage([voided("A")], None)]

    assert await sweep() is True  # two pages read, a third due at once
    now[0] += 10_000
    assert await sweep() is False  # the sweep ended
    thirty_days_back = 100 * 86_400_000 - 30 * 86_400_000 + 60_000
    assert api.listed == [(thirty_days_back, None), (thirty_days_back, "p2"), (thirty_days_back, "p3")]
    assert [r.store_transaction_id for r in wallet.reversals] == ["A", "B", "A"]

    api.pages = [VoidedPage([], None)]
    now[0] += 900_000
    assert await sweep() is False
    assert api.listed[-1] == (100 * 86_400_000 - 5_000, None)  # since the first sweep began, less the overlap


async def test_a_failed_call_starts_the_sweep_again() -> None:
    now = 100 * 86_400_000
    api = StubApi()
    sweep = VoidedPurchasesPass(api, Notices(), pages_per_pass=5, overlap_ms=0, clock_ms=lambda: now)
    api.pages = [VoidedPage([voided("A")], "p2"), PlayApiError(503, "down"), VoidedPage([], None)]
    with pytest.raises(PlayApiError):
        await sweep()
    assert await sweep() is False
    assert [token for _, token in api.listed] == [None, "p2", None]


# --- pushes ---------------------------------------------------------------------------------------------------------


def test_a_pushed_void_of_a_one_time_product_reverses_its_order_whole() -> None:
    for refund_type in (1, 2):  # a quantity-based partial refund of a one-package purchase is all of it
        body = push_body(
            developer_notification(
                voidedPurchaseNotification={
                    "purchaseToken": "t",
                    "orderId": "GPA.9",
                    "productType": 2,
                    "refundType": refund_type,
                }
            ),
            "m-1",
        )
        notification = notifications.read_push(body, PACKAGE_NAME)
        assert notification.reversal is not None
        assert (notification.kind, notification.reversal.notification_id) == ("voided_purchase", "m-1")
        assert (notification.reversal.store_transaction_id, notification.reversal.share) == ("GPA.9", 1)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ({"testNotification": {"version": "1.0"}}, "test"),
        (
            {"oneTimeProductNotification": {"notificationType": 1, "purchaseToken": "t", "sku": "x"}},
            "one_time_product_purchased",
        ),
        (
            {"oneTimeProductNotification": {"notificationType": 2, "purchaseToken": "t", "sku": "x"}},
            "one_time_product_canceled",
        ),
        ({"subscriptionNotification": {"notificationType": 4}}, "subscription"),
        (
            {"voidedPurchaseNotification": {"purchaseToken": "t", "orderId": "GPA.1", "productType": 1}},
            "voided_purchase",
        ),
    ],
)
def test_other_notifications_are_recorded_only(kind: dict[str, Any], expected: str) -> None:
    notification = notifications.read_push(push_body(developer_notification(**kind), "m-2"), PACKAGE_NAME)
    assert (notification.kind, notification.reversal) == (expected, None)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"message": {"messageId": "m"}}',
        b'{"message": {"data": "%%%", "messageId": "m"}}',
        json.dumps({"message": {"data": "bm90IGpzb24=", "messageId": "m"}}).encode(),  # "not json"
        push_body(developer_notification(testNotification={}), ""),
        push_body(developer_notification("com.other.app", testNotification={}), "m"),
        push_body(developer_notification(voidedPurchaseNotification={"productType": 2}), "m"),
    ],
)
def test_a_push_that_is_not_a_notification_of_this_app_is_rejected(body: bytes) -> None:
    with pytest.raises(Rejected) as rejected:
        notifications.read_push(body, PACKAGE_NAME)
    assert rejected.value.status == 400


class KnownCerts(notifications.GoogleCerts):
    def __init__(self, key: SigningKey) -> None:
        super().__init__("http://unused")
        self.fetches = 0
        self.max_age_seconds = 3600.0
        self.down = False
        self._key = key

    async def _download(self) -> tuple[dict[str, str], float]:  # what the certs URL would answer
        self.fetches += 1
        if self.down:
            raise aiohttp.ClientConnectionError("certs URL unreachable")
        return {self._key.key_id: self._key.certificate_pem}, self.max_age_seconds


@pytest.fixture(scope="module")
def google() -> FakeGoogle:
    return FakeGoogle()  # its keys and tokens only: not started


async def test_a_push_token_verifies_only_when_google_signed_it_for_us(google: FakeGoogle) -> None:
    certs = KnownCerts(google.push_key)
    tokens = notifications.PushTokenVerifier(certs, PUSH_AUDIENCE, PUSH_SERVICE_ACCOUNT)
    await tokens.verify(f"Bearer {google.push_token()}")
    foreign = SigningKey.generate("foreign")
    forged = [
        foreign.sign(
            {"aud": PUSH_AUDIENCE, "iss": "https://accounts.google.com", "iat": 1, "exp": 2**40}, google.push_key.key_id
        ),
        google.push_token(aud="https://elsewhere.example"),
        google.push_token(email="someone@else.iam.gserviceaccount.com"),
        google.push_token(iss="accounts.example.com"),
        google.push_token(exp=1_600_000_000, iat=1_599_990_000),
        "a.b",
    ]
    for token in forged:
        with pytest.raises(Unsigned):
            await tokens.verify(f"Bearer {token}")
    with pytest.raises(Unsigned):
        await tokens.verify(google.push_token())  # no Bearer scheme
    unchecked_email = notifications.PushTokenVerifier(certs, PUSH_AUDIENCE, "")
    await unchecked_email.verify(f"Bearer {google.push_token(email='anyone@example.com')}")


async def test_an_unknown_key_id_fetches_the_certs_again_at_most_once_a_minute(google: FakeGoogle) -> None:
    certs = KnownCerts(google.push_key)
    assert google.push_key.key_id in await certs.for_key(google.push_key.key_id)
    assert google.push_key.key_id in await certs.for_key(google.push_key.key_id)
    assert certs.fetches == 1  # cached
    assert google.push_key.key_id in await certs.for_key("rotated-key")
    assert certs.fetches == 1  # fetched less than a minute ago: not again


async def test_stale_certs_still_serve_their_key_ids_while_the_certs_url_is_down(google: FakeGoogle) -> None:
    certs = KnownCerts(google.push_key)
    certs.max_age_seconds = 0  # stale at once: every call fetches
    await certs.for_key(google.push_key.key_id)
    certs.down = True
    assert google.push_key.key_id in await certs.for_key(google.push_key.key_id)
    with pytest.raises(aiohttp.ClientError):  # a key id they lack: the push is answered 5xx, and retried
        await certs.for_key("rotated-key")
    assert certs.fetches == 3


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("public, max-age=19800, must-revalidate", 19800),
        ("no-cache", 3600),
        ("max-age=5", 60),
        ("max-age=9999999", 86_400),
    ],
)
def test_the_certs_are_cached_as_google_says_within_bounds(header: str, seconds: float) -> None:
    assert notifications.cache_max_age_seconds(header) == seconds


# --- settings and the key ---------------------------------------------------------------------------------------------


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("COINSTREAM_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_enabling_google_play_needs_its_app_and_key(clean_environment: pytest.MonkeyPatch) -> None:
    assert GooglePlaySettings().enabled is False
    clean_environment.setenv("COINSTREAM_GOOGLE_PLAY_ENABLED", "true")
    with pytest.raises(pydantic.ValidationError) as refused:
        GooglePlaySettings()
    assert "COINSTREAM_GOOGLE_PLAY_PACKAGE_NAME and COINSTREAM_GOOGLE_PLAY_SERVICE_ACCOUNT_FILE" in str(refused.value)


def test_production_refuses_google_play_without_the_push_audience_and_account(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    for name, value in {
        "ENABLED": "true",
        "PACKAGE_NAME": PACKAGE_NAME,
        "SERVICE_ACCOUNT_FILE": "/etc/coinstream/play.json",
    }.items():
        clean_environment.setenv(f"COINSTREAM_GOOGLE_PLAY_{name}", value)
    problems = WalletSettings().google_play.production_problems()
    assert [problem.split(" ")[0] for problem in problems] == [
        "COINSTREAM_GOOGLE_PLAY_PUSH_AUDIENCE",
        "COINSTREAM_GOOGLE_PLAY_PUSH_SERVICE_ACCOUNT_EMAIL",
    ]
    clean_environment.setenv("COINSTREAM_GOOGLE_PLAY_PUSH_AUDIENCE", PUSH_AUDIENCE)
    clean_environment.setenv("COINSTREAM_GOOGLE_PLAY_PUSH_SERVICE_ACCOUNT_EMAIL", PUSH_SERVICE_ACCOUNT)
    assert WalletSettings().google_play.production_problems() == []
    assert GooglePlaySettings(enabled=False).production_problems() == []
    # Another address would be believed: the tests' loopback Google has no place in production.
    clean_environment.setenv("COINSTREAM_GOOGLE_PLAY_CERTS_URL", "http://127.0.0.1:1/certs")
    clean_environment.setenv("COINSTREAM_GOOGLE_PLAY_API_URL", "http://127.0.0.1:1/")
    problems = WalletSettings().google_play.production_problems()
    assert [problem.split(" ")[0] for problem in problems] == [
        "COINSTREAM_GOOGLE_PLAY_API_URL",
        "COINSTREAM_GOOGLE_PLAY_CERTS_URL",
    ]


def test_test_purchases_buy_coins_in_development_and_on_staging_only(clean_environment: pytest.MonkeyPatch) -> None:
    assert WalletSettings().accepts_test_purchases is True
    production = WalletSettings.model_construct(environment="production", allow_sandbox_providers=False)
    assert production.accepts_test_purchases is False
    staging = WalletSettings.model_construct(environment="production", allow_sandbox_providers=True)
    assert staging.accepts_test_purchases is True


def test_a_key_file_that_cannot_be_used_is_named_and_never_quoted(tmp_path: Path, google: FakeGoogle) -> None:
    setting = "COINSTREAM_GOOGLE_PLAY_SERVICE_ACCOUNT_FILE"
    with pytest.raises(GooglePlayKeyError, match=f"{setting}: cannot read"):
        load_credentials(str(tmp_path / "missing.json"), setting)
    broken = tmp_path / "broken.json"
    key = google.service_account.private_pem.decode()
    broken.write_text(json.dumps({"type": "service_account", "private_key": key[:200]}))
    with pytest.raises(GooglePlayKeyError) as refused:
        load_credentials(str(broken), setting)
    assert setting in str(refused.value) and key.splitlines()[1][:20] not in str(refused.value)
    good = google.write_service_account_file(tmp_path / "good.json")
    assert load_credentials(str(good), setting).service_account_email.startswith("play-api@")
