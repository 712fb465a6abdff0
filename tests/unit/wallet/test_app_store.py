"""The App Store rail's pure parts and its settings: Apple's prices and storefronts in the wallet's terms, which
transactions become a StoreProof, refund shares, the consumption a purchase's provenance reports, the roots it reads
(DER or PEM), and what COINSTREAM_APP_STORE_* refuses — in production above all. The verifier itself runs
app-store-server-library, unmodified, on chains and signatures made here."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import grpc
import pytest
from appstoreserverlibrary.models.JWSTransactionDecodedPayload import JWSTransactionDecodedPayload
from appstoreserverlibrary.models.LibraryUtility import _get_cattrs_converter
from pydantic import ValidationError

from coinstream.testing.servers import free_port
from services.runtime.errors import AppError
from services.runtime.requests import RequestKey
from services.wallet.domain import ConsumptionStatus, PurchaseConsumption, RedeemStorePurchase, Store, StoreProof
from services.wallet.stores import app_store
from services.wallet.stores.app_store import AppStoreSettings
from tests.support.rails import apple

ALLOWANCES = ("COINSTREAM_ENVIRONMENT", "COINSTREAM_ALLOW_SANDBOX_PROVIDERS")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("COINSTREAM_APP_STORE_")] + list(ALLOWANCES):
        monkeypatch.delenv(name, raising=False)


def decoded(payload: dict[str, Any]) -> JWSTransactionDecodedPayload:
    """A transaction as the library decodes it (what the verifier hands over once the signature checked)."""
    converter = _get_cattrs_converter(JWSTransactionDecodedPayload)
    transaction: JWSTransactionDecodedPayload = converter.structure(payload, JWSTransactionDecodedPayload)
    return transaction


def refusal(error: pytest.ExceptionInfo[AppError]) -> str:
    return error.value.reason


# --- prices, storefronts, proofs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("price", "currency", "expected"),
    [
        (990, "USD", (99, "USD")),  # 0.99 USD
        (19_990, "EUR", (1999, "EUR")),
        (160_000, "JPY", (160, "JPY")),  # no minor unit
        (1_500_000, "KRW", (1500, "KRW")),
        (3_250, "KWD", (3250, "KWD")),  # three decimals: milliunits are its minor units
        (1_995, "USD", (200, "USD")),  # half a cent, rounded up to a whole one
        (None, "USD", (None, "")),
        (990, None, (None, "")),
        (990, "usd", (None, "")),
    ],
)
def test_apple_prices_become_minor_units(price: int | None, currency: str | None, expected: Any) -> None:
    assert app_store.price_paid_minor(price, currency) == expected


def test_storefronts_become_alpha_2_countries_and_unknown_ones_nothing() -> None:
    assert [app_store.storefront_country(s) for s in ("USA", "JPN", "GBR", "XKS", "ZZZ", None)] == [
        "US",
        "JP",
        "GB",
        "XK",
        "",
        "",
    ]
    assert all(len(a3) == 3 and len(a2) == 2 for a3, a2 in app_store.STOREFRONT_COUNTRIES.items())


def test_a_consumable_becomes_the_proof_the_wallet_credits() -> None:
    payload = apple.transaction("2000000001", "coins_330", price=4_990, currency="GBP", storefront="GBR")

    proof = app_store.transaction_proof(decoded(payload))

    assert proof == StoreProof(Store.APP_STORE, "2000000001", "coins_330", 499, "GBP", "GB", needs_finishing=False)


@pytest.mark.parametrize(
    "change",
    [
        {"revocationDate": apple.now_ms(), "revocationReason": 1},
        {"type": "Non-Consumable"},
        {"type": "Auto-Renewable Subscription"},
        {"quantity": 3},
        {"transactionId": None},
        {"price": -10},
    ],
)
def test_what_is_no_paid_coin_package_is_refused(change: dict[str, Any]) -> None:
    payload = {**apple.transaction("2000000002", "coins_330"), **change}

    with pytest.raises(AppError) as refused:
        app_store.transaction_proof(decoded({k: v for k, v in payload.items() if v is not None}))

    assert refusal(refused) == "PAYMENT_VERIFICATION_FAILED"


def test_a_refund_takes_back_apples_revocation_percentage_else_everything() -> None:
    genuine = apple.transaction("2000000003", "coins_330")
    assert app_store.revoked_share(decoded(apple.refunded(genuine))) == 1
    assert app_store.revoked_share(decoded(apple.refunded(genuine, 12_500))) == Fraction(1, 8)
    with pytest.raises(AppError):
        app_store.revoked_share(decoded(apple.refunded(genuine, 100_001)))


def test_the_consumption_reported_is_what_the_coins_became() -> None:
    untouched, some, spent = (
        PurchaseConsumption(1000, 1000, 0),
        PurchaseConsumption(3, 1, 0),
        PurchaseConsumption(8, 0, 2),
    )

    assert [c.status for c in (untouched, some, spent)] == [
        ConsumptionStatus.NOT_CONSUMED,
        ConsumptionStatus.PARTIALLY_CONSUMED,
        ConsumptionStatus.FULLY_CONSUMED,
    ]
    assert [c.used_milliunits for c in (untouched, some, spent)] == [0, 66_666, 75_000]  # rounded down
    request = app_store.consumption_request(some)
    assert (request.customerConsented, request.rawDeliveryStatus, request.consumptionPercentage) == (
        True,
        "DELIVERED",
        66_666,
    )
    never_credited = app_store.consumption_request(None)
    assert (never_credited.rawDeliveryStatus, never_credited.consumptionPercentage) == ("UNDELIVERED_OTHER", None)


# --- the verifier on Apple's library ------------------------------------------------------------------------------


async def test_the_verifier_accepts_apples_chain_only_for_this_app_and_environment(tmp_path: Path) -> None:
    chain = apple.signing_chain()
    (tmp_path / "root.pem").write_bytes(chain.root_pem)
    settings = AppStoreSettings(
        enabled=True,
        environment="Sandbox",
        bundle_id=apple.BUNDLE_ID,
        app_apple_id=apple.APP_APPLE_ID,
        root_certificate_files=f" {tmp_path / 'root.pem'} ",
    )
    verifier = app_store.app_store_verifier(settings)
    genuine = apple.transaction("2000000004", "coins_65")

    proof = await verifier.verify(redeem_of(chain.sign(genuine)))

    assert proof.transaction_id == "2000000004"
    for forged in (
        apple.signing_chain("Forger").sign(genuine),
        chain.sign({**genuine, "bundleId": "com.example.other"}),
        chain.sign({**genuine, "environment": "Production"}),
        apple.tampered(chain.sign(genuine), productId="coins_16500"),
        "not.a.jws",
    ):
        with pytest.raises(AppError) as refused:
            await verifier.verify(redeem_of(forged))
        assert refusal(refused) == "PAYMENT_VERIFICATION_FAILED"
        assert "eyJ" not in refused.value.message  # never the signed proof itself


async def test_an_ocsp_outage_is_unavailable_not_a_refusal(tmp_path: Path) -> None:
    """Online checks ask the chain's OCSP responder: one that does not answer is Apple's outage (retry later), not
    a forgery."""
    chain = apple.signing_chain(ocsp_url=f"http://127.0.0.1:{free_port()}/ocsp")  # nobody listens there
    (tmp_path / "root.cer").write_bytes(chain.root_der)
    settings = AppStoreSettings(
        bundle_id=apple.BUNDLE_ID,
        environment="Sandbox",
        online_checks=True,
        root_certificate_files=str(tmp_path / "root.cer"),
    )

    with pytest.raises(AppError) as refused:
        await app_store.app_store_verifier(settings).verify(redeem_of(chain.sign(apple.transaction("2", "coins_65"))))

    assert (refused.value.code, refused.value.reason) == (grpc.StatusCode.UNAVAILABLE, "PAYMENT_PROVIDER_UNAVAILABLE")


def redeem_of(signed_transaction: str) -> RedeemStorePurchase:
    key = RequestKey("r", "RedeemStorePurchase", b"")
    return RedeemStorePurchase(key, "account", Store.APP_STORE, signed_transaction, "", "", "caller")


def test_roots_are_read_as_der_from_der_and_pem_files_and_a_bad_file_names_its_setting(tmp_path: Path) -> None:
    first, second = apple.signing_chain("One"), apple.signing_chain("Two")
    (tmp_path / "one.cer").write_bytes(first.root_der)
    (tmp_path / "two.pem").write_bytes(second.root_pem)
    (tmp_path / "junk.pem").write_bytes(b"not a certificate")
    files = f"{tmp_path / 'one.cer'},{tmp_path / 'two.pem'}"

    assert app_store.root_certificates(AppStoreSettings(root_certificate_files=files)) == [
        first.root_der,
        second.root_der,
    ]
    for bad in ("junk.pem", "missing.cer"):
        with pytest.raises(app_store.AppStoreSettingError, match="COINSTREAM_APP_STORE_ROOT_CERTIFICATE_FILES"):
            app_store.root_certificates(AppStoreSettings(root_certificate_files=str(tmp_path / bad)))


# --- settings -----------------------------------------------------------------------------------------------------

PRODUCTION_APP_STORE = {
    "COINSTREAM_ENVIRONMENT": "production",
    "COINSTREAM_APP_STORE_ENABLED": "true",
    "COINSTREAM_APP_STORE_ENVIRONMENT": "Production",
    "COINSTREAM_APP_STORE_BUNDLE_ID": apple.BUNDLE_ID,
    "COINSTREAM_APP_STORE_APP_APPLE_ID": str(apple.APP_APPLE_ID),
    "COINSTREAM_APP_STORE_ROOT_CERTIFICATE_FILES": "/etc/coinstream/AppleRootCA-G3.cer",
    "COINSTREAM_APP_STORE_API_KEY_ID": "KEY123",
    "COINSTREAM_APP_STORE_API_ISSUER_ID": "issuer",
    "COINSTREAM_APP_STORE_API_PRIVATE_KEY_FILE": "/etc/coinstream/SubscriptionKey.p8",
}


def production(monkeypatch: pytest.MonkeyPatch, **changes: str | None) -> AppStoreSettings:
    for name, value in {**PRODUCTION_APP_STORE, **changes}.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    return AppStoreSettings()


def test_production_starts_with_apples_production_environment_and_online_checks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = production(monkeypatch)
    assert (settings.apple_environment.value, settings.online_checks_enabled) == ("Production", True)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"COINSTREAM_APP_STORE_ENVIRONMENT": "Sandbox"}, "COINSTREAM_APP_STORE_ENVIRONMENT"),
        ({"COINSTREAM_APP_STORE_ENVIRONMENT": "Xcode"}, "COINSTREAM_APP_STORE_ENVIRONMENT"),
        ({"COINSTREAM_APP_STORE_ENVIRONMENT": "LocalTesting"}, "COINSTREAM_APP_STORE_ENVIRONMENT"),
        ({"COINSTREAM_APP_STORE_ROOT_CERTIFICATE_FILES": None}, "COINSTREAM_APP_STORE_ROOT_CERTIFICATE_FILES"),
        ({"COINSTREAM_APP_STORE_BUNDLE_ID": None}, "COINSTREAM_APP_STORE_BUNDLE_ID"),
        ({"COINSTREAM_APP_STORE_APP_APPLE_ID": None}, "COINSTREAM_APP_STORE_APP_APPLE_ID"),
        ({"COINSTREAM_APP_STORE_API_PRIVATE_KEY_FILE": None}, "COINSTREAM_APP_STORE_API_PRIVATE_KEY_FILE"),
        ({"COINSTREAM_APP_STORE_API_KEY_ID": None}, "COINSTREAM_APP_STORE_API_KEY_ID"),
        ({"COINSTREAM_APP_STORE_ONLINE_CHECKS": "false"}, "COINSTREAM_APP_STORE_ONLINE_CHECKS"),
        ({"COINSTREAM_APP_STORE_API_BASE_URL": "http://127.0.0.1:9"}, "COINSTREAM_APP_STORE_API_BASE_URL"),
    ],
)
def test_production_refuses_an_app_store_that_would_credit_unpaid_purchases_or_cannot_answer_apple(
    monkeypatch: pytest.MonkeyPatch, changes: dict[str, str | None], named: str
) -> None:
    with pytest.raises(ValidationError, match=named):
        production(monkeypatch, **changes)


def test_a_staging_deployment_may_take_apples_sandbox_visibly(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = production(
        monkeypatch, COINSTREAM_APP_STORE_ENVIRONMENT="Sandbox", COINSTREAM_ALLOW_SANDBOX_PROVIDERS="true"
    )
    assert (settings.environment, settings.online_checks_enabled) == ("Sandbox", False)


def test_a_disabled_app_store_needs_nothing_and_an_enabled_one_its_app_everywhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COINSTREAM_ENVIRONMENT", "production")
    assert AppStoreSettings().enabled is False  # production without the App Store: nothing asked of it
    monkeypatch.setenv("COINSTREAM_ENVIRONMENT", "development")
    monkeypatch.setenv("COINSTREAM_APP_STORE_ENABLED", "true")
    monkeypatch.setenv("COINSTREAM_APP_STORE_ENVIRONMENT", "Sandbox")
    with pytest.raises(ValidationError) as refused:
        AppStoreSettings()
    assert "COINSTREAM_APP_STORE_BUNDLE_ID" in str(refused.value)
    assert "COINSTREAM_APP_STORE_ROOT_CERTIFICATE_FILES" in str(refused.value)


def test_no_consumption_answers_without_the_customers_consent(tmp_path: Path) -> None:
    key_file = apple.ServerApiKey().write(tmp_path / "key.p8")
    configured = {"api_key_id": "K", "api_issuer_id": "I", "api_private_key_file": str(key_file)}
    assert app_store.consumption_reporter(AppStoreSettings(bundle_id="b", environment="Sandbox", **configured)) is None
    consented = AppStoreSettings(
        bundle_id="b", environment="Sandbox", customers_consent_to_consumption_data=True, **configured
    )
    assert app_store.consumption_reporter(consented) is not None


@pytest.mark.parametrize("environment", ["Xcode", "LocalTesting"])
def test_not_even_staging_takes_an_environment_that_signs_nothing(
    monkeypatch: pytest.MonkeyPatch, environment: str
) -> None:
    with pytest.raises(ValidationError, match="not signed"):
        production(monkeypatch, COINSTREAM_APP_STORE_ENVIRONMENT=environment, COINSTREAM_ALLOW_SANDBOX_PROVIDERS="true")
