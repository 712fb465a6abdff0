"""The rails' pure parts and their webhooks' verification, with real keys and signatures (Stripe's own library, an
RSA key and a self-signed certificate for PayPal) and the in-memory store: nothing listens."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pydantic
import pytest
from cryptography import x509

from services.payouts import domain
from services.payouts.config import PayoutsSettings
from services.payouts.ports import PayoutState
from services.payouts.rails import paypal, stripe_connect
from services.runtime import stripe_events
from services.runtime.http_ingress import Rejected, Unsigned
from tests.fakes.payouts import FakePayoutsStore
from tests.support.rails.paypal import FakePayPal, new_key, self_signed
from tests.support.rails.stripe_connect import FakeStripe
from tests.unit.runtime.test_production_mode import SAFE_PRODUCTION

# --- PayPal: money, recipients, answers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("minor", "currency", "value"),
    [(2000, "USD", "20.00"), (1, "EUR", "0.01"), (1234567, "USD", "12345.67"), (500, "JPY", "500"), (0, "USD", "0.00")],
)
def test_amounts_are_decimal_strings_of_integer_minor_units(minor: int, currency: str, value: str) -> None:
    assert paypal.decimal_amount(minor, currency) == value


def test_the_recipient_type_follows_the_destination() -> None:
    assert paypal.recipient_type_of("amy@example.com") == "EMAIL"
    assert paypal.recipient_type_of("N8ZRDK6ZDXFHW") == "PAYPAL_ID"
    assert paypal.recipient_type_of("bank:amy") is None


def batch(state: str, items: bool = True) -> dict[str, object]:
    header = {"payout_batch_id": "B1", "batch_status": state}
    return {"batch_header": header, "items": [{"transaction_status": state}] if items else []}


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("SUCCESS", PayoutState.PAID),
        ("PENDING", PayoutState.PROCESSING),
        ("UNCLAIMED", PayoutState.PROCESSING),
        ("ONHOLD", PayoutState.PROCESSING),
        ("FAILED", PayoutState.FAILED),
        ("DENIED", PayoutState.FAILED),
        ("RETURNED", PayoutState.FAILED),
        ("BLOCKED", PayoutState.FAILED),
    ],
)
def test_a_batchs_item_status_is_its_outcome(state: str, expected: PayoutState) -> None:
    assert paypal.item_result(batch(state)).state is expected
    assert paypal.item_result(batch(state)).provider_reference == "B1"


def test_a_duplicate_sender_batch_id_answers_the_original_payouts_path() -> None:
    href = "https://api-m.paypal.com/v1/payments/payouts/T4RDDPCMVVQUY"
    refusal = {
        "name": "USER_BUSINESS_ERROR",
        "details": [{"field": "SENDER_BATCH_ID", "issue": "Batch with given sender_batch_id already exists"}],
        "links": [{"href": href, "rel": "self", "method": "GET"}],
    }
    assert paypal.duplicate_batch_link(refusal) == "/v1/payments/payouts/T4RDDPCMVVQUY"
    other = {"name": "VALIDATION_ERROR", "details": [{"field": "items[0].receiver"}], "links": refusal["links"]}
    assert paypal.duplicate_batch_link(other) == ""


def paypal_answering(status: int, body: dict[str, object]) -> paypal.PayPalPayoutProvider:
    """The provider against httpx's own in-process transport, answering every payout request the same way."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/oauth2/token":
            return httpx.Response(200, json={"access_token": "token", "expires_in": 3600})
        return httpx.Response(status, json=body)

    client = httpx.AsyncClient(base_url="https://paypal.test", transport=httpx.MockTransport(answer))
    return paypal.PayPalPayoutProvider(client, "client", "secret")


PAYOUT = {"withdrawal_id": "wd_1", "destination": "creator@example.com", "amount_minor": 1000, "currency_code": "USD"}
NO_LINK_DUPLICATE = {"name": "USER_BUSINESS_ERROR", "details": [{"field": "SENDER_BATCH_ID"}]}
INVALID_RECEIVER = {"name": "VALIDATION_ERROR", "details": [{"field": "items[0].receiver"}]}


async def test_a_refusal_that_may_hide_a_payout_made_is_an_unknown_outcome_never_a_failure() -> None:
    """A duplicate sender_batch_id without a readable link to the original, or any refusal of a resumed request
    (the first may have been taken), must not fail the withdrawal (its diamonds would come back while PayPal pays)."""
    with pytest.raises(paypal.PayPalError):
        await paypal_answering(400, NO_LINK_DUPLICATE).submit(**PAYOUT)
    with pytest.raises(paypal.PayPalError):
        await paypal_answering(422, INVALID_RECEIVER).resume(**PAYOUT)
    refused = await paypal_answering(422, INVALID_RECEIVER).submit(**PAYOUT)  # a first request, refused as it is
    assert refused.state is PayoutState.FAILED


# --- PayPal: webhooks -------------------------------------------------------------------------------------------------


def test_a_signature_verifies_with_the_certificates_key_and_not_another() -> None:
    key = new_key()
    certificate = x509.load_pem_x509_certificate(self_signed(key))
    body = b'{"id": "WH-1"}'
    message = paypal.signed_message("t-1", "2026-12-07T20:00:00Z", "WH-ID", body)
    signature = base64.b64encode(key.sign(message, paypal.padding.PKCS1v15(), paypal.hashes.SHA256())).decode()
    now = datetime.now(UTC)
    paypal.verify_signature(certificate, signature, message, now)
    with pytest.raises(Unsigned):
        paypal.verify_signature(certificate, signature, message.replace(b"WH-ID", b"WH-OTHER"), now)
    with pytest.raises(Unsigned):
        paypal.verify_signature(certificate, signature, message, now + timedelta(days=60))  # certificate expired
    with pytest.raises(Unsigned):
        paypal.verify_signature(certificate, "not base64!", message, now)


@pytest.mark.parametrize(
    "url",
    [
        "https://api.paypal.com.evil.example/cert.pem",
        "https://evil.example/v1/notifications/certs/CERT-1",
        "http://api.paypal.com/v1/notifications/certs/CERT-1",  # in clear text
        "not a url at all",
    ],
)
def test_certificate_urls_outside_the_allowed_hosts_are_refused_unfetched(url: str) -> None:
    certificates = paypal.PayPalCertificates(paypal.httpx.AsyncClient(), ["api.paypal.com", "127.0.0.1"])
    with pytest.raises(Unsigned):
        certificates.check_url(url)
    certificates.check_url("https://api.paypal.com/v1/notifications/certs/CERT-1")
    certificates.check_url("http://127.0.0.1:8080/v1/notifications/certs/CERT-1")  # the tests' loopback fake


@pytest.mark.parametrize(
    ("event_type", "outcome"),
    [
        ("PAYMENT.PAYOUTS-ITEM.SUCCEEDED", domain.PayoutOutcome.PAID),
        ("PAYMENT.PAYOUTS-ITEM.FAILED", domain.PayoutOutcome.FAILED),
        ("PAYMENT.PAYOUTS-ITEM.DENIED", domain.PayoutOutcome.FAILED),
        ("PAYMENT.PAYOUTS-ITEM.BLOCKED", domain.PayoutOutcome.FAILED),
        ("PAYMENT.PAYOUTS-ITEM.RETURNED", domain.PayoutOutcome.RETURNED),
        ("PAYMENT.PAYOUTS-ITEM.REFUNDED", domain.PayoutOutcome.RETURNED),
        ("PAYMENT.PAYOUTS-ITEM.UNCLAIMED", None),
        ("PAYMENT.PAYOUTS-ITEM.HELD", None),
        ("PAYMENT.PAYOUTSBATCH.SUCCESS", None),
    ],
)
def test_paypal_events_as_notices(event_type: str, outcome: domain.PayoutOutcome | None) -> None:
    event = {
        "id": "WH-7",
        "event_type": event_type,
        "resource": {"payout_batch_id": "B1", "payout_item": {"sender_item_id": "wd_1"}},
    }
    found = paypal.notice_from_event(event)
    assert (found.withdrawal_id, found.outcome, found.provider_reference) == ("wd_1", outcome, "B1")
    with pytest.raises(Rejected):
        paypal.notice_from_event({"event_type": event_type})


async def test_a_paypal_webhook_verifies_offline_and_applies_once() -> None:
    fake = await FakePayPal().start()
    store = FakePayoutsStore()
    certificates = paypal.PayPalCertificates(paypal.httpx.AsyncClient(), ["127.0.0.1"])
    webhook = paypal.PayPalWebhook(store, certificates, fake.webhook_id, tolerance_seconds=300)
    try:
        item = {"transaction_status": "SUCCESS", "payout_batch_id": "B1", "payout_item": {"sender_item_id": "wd_x"}}
        body = fake.event("PAYMENT.PAYOUTS-ITEM.SUCCEEDED", item)
        headers = {name.lower(): value for name, value in fake.signed(body).items()}
        assert (await webhook(body, headers)).body == {"outcome": "no_effect"}  # no such withdrawal here
        assert (await webhook(body, headers)).duplicate
        stale = {k.lower(): v for k, v in fake.signed(body, sent_at=datetime.now(UTC) - timedelta(hours=1)).items()}
        with pytest.raises(Unsigned):
            await webhook(body, stale)
    finally:
        await fake.stop()


# --- Stripe -----------------------------------------------------------------------------------------------------------


def transfer(reversed_: bool = False) -> dict[str, object]:
    return {
        "id": "tr_1",
        "object": "transfer",
        "amount": 1000,
        "amount_reversed": 1000 if reversed_ else 0,
        "reversed": reversed_,
        "transfer_group": "wd_1",
        "metadata": {"withdrawal_id": "wd_1"},
    }


@pytest.mark.parametrize(
    ("kind", "subject", "outcome"),
    [
        ("transfer.created", transfer(), domain.PayoutOutcome.PAID),
        ("transfer.reversed", transfer(reversed_=True), domain.PayoutOutcome.RETURNED),
        ("transfer.reversed", {**transfer(), "amount_reversed": 400}, None),  # a partial reversal: an operator's
        ("payout.failed", {"id": "po_1", "object": "payout"}, None),  # the connected account's own bank payout
    ],
)
def test_stripe_events_as_notices(kind: str, subject: dict[str, object], outcome: domain.PayoutOutcome | None) -> None:
    found = stripe_connect.notice_from_event({"id": "evt_1", "type": kind, "data": {"object": subject}})
    assert found.outcome is outcome
    assert found.withdrawal_id == ("wd_1" if subject["object"] == "transfer" else "")


async def test_a_stripe_webhook_is_verified_by_the_library() -> None:
    fake = FakeStripe()
    store = FakePayoutsStore()
    webhook = stripe_connect.StripeWebhook(
        store, stripe_connect.stripe.StripeClient("unused"), fake.webhook_secret, tolerance_seconds=300
    )
    body = fake.event("transfer.created", transfer())
    signed = {"stripe-signature": fake.signed(body)["Stripe-Signature"]}
    assert (await webhook(body, signed)).body == {"outcome": "no_effect"}
    stale = {
        "stripe-signature": fake.signed(body, timestamp=int(datetime.now(UTC).timestamp()) - 301)["Stripe-Signature"]
    }
    forged = {"stripe-signature": fake.signed(body, secret="whsec_other")["Stripe-Signature"]}
    for headers in (stale, forged, {}):
        with pytest.raises(Unsigned):
            await webhook(body, headers)
    tampered = json.dumps({**json.loads(body), "type": "transfer.reversed"}).encode()
    with pytest.raises(Unsigned):
        await webhook(tampered, signed)


async def test_a_signed_stripe_event_without_an_id_is_rejected_and_unreadable_for_the_events_pass() -> None:
    fake = FakeStripe()
    store = FakePayoutsStore()
    webhook = stripe_connect.StripeWebhook(
        store, stripe_connect.stripe.StripeClient("unused"), fake.webhook_secret, tolerance_seconds=300
    )
    body = json.dumps({"id": "", "type": "transfer.reversed", "data": {"object": transfer(reversed_=True)}}).encode()
    with pytest.raises(Rejected):
        await webhook(body, {"stripe-signature": fake.signed(body)["Stripe-Signature"]})
    with pytest.raises(stripe_events.UnreadableEvent):
        await stripe_connect.apply_event(store, json.loads(body))


def test_the_stripe_events_pass_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = stripe_connect.StripeConnectSettings()
    assert (defaults.events_interval_seconds, defaults.events_window_hours, defaults.events_pages_per_pass) == (
        900.0,
        72,
        10,
    )
    monkeypatch.setenv("COINSTREAM_STRIPE_CONNECT_EVENTS_INTERVAL_SECONDS", "0.5")
    assert stripe_connect.StripeConnectSettings().events_interval_seconds == 0.5


# --- settings -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "named"),
    [
        (
            "stripe_connect",
            ["COINSTREAM_STRIPE_CONNECT_SECRET_KEY_FILE", "COINSTREAM_STRIPE_CONNECT_WEBHOOK_SECRET_FILE"],
        ),
        (
            "paypal",
            ["COINSTREAM_PAYPAL_CLIENT_ID", "COINSTREAM_PAYPAL_CLIENT_SECRET_FILE", "COINSTREAM_PAYPAL_WEBHOOK_ID"],
        ),
    ],
)
def test_production_refuses_a_real_provider_without_its_credentials(
    provider: str, named: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COINSTREAM_PAYOUT_PROVIDER", provider)
    problems = PayoutsSettings().payout_rail_problems()
    assert [problem.split(" ")[0] for problem in problems] == named
    assert not [problem for problem in problems if "sandbox" in problem]


def test_production_refuses_paypal_certificates_from_other_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COINSTREAM_PAYPAL_CERT_HOSTS", '["api.paypal.com", "127.0.0.1"]')
    assert any("127.0.0.1" in problem for problem in paypal.PayPalSettings().production_problems())


def test_production_refuses_the_providers_test_modes_unless_staging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Withdrawals paid in a provider's test mode would be PAID while nobody is paid."""
    test_key = tmp_path / "key"
    test_key.write_text("sk_test_123\n")
    stripe_test = stripe_connect.StripeConnectSettings(secret_key_file=str(test_key), webhook_secret_file="/w")
    assert any("test-mode key" in problem for problem in stripe_test.production_problems())
    other_api = stripe_connect.StripeConnectSettings(
        secret_key_file="/k", webhook_secret_file="/w", api_base="http://x"
    )
    assert any("API_BASE" in problem for problem in other_api.production_problems())
    sandbox = paypal.PayPalSettings(
        client_id="c",
        client_secret_file="/s",
        webhook_id="w",
        api_base="https://api-m.sandbox.paypal.com",
        cert_hosts=["api.sandbox.paypal.com"],
    )
    assert len(sandbox.production_problems()) == 2  # the API and the certificates' host
    for staging in (stripe_test, other_api, sandbox):
        assert staging.production_problems(staging=True) == []


def test_a_missing_secret_file_stops_the_start_naming_its_setting() -> None:
    with pytest.raises(paypal.RailSettingError, match="COINSTREAM_PAYPAL_CLIENT_SECRET_FILE=/nonexistent"):
        paypal.PayPalPayoutProvider.from_settings(
            paypal.PayPalSettings(client_id="c", client_secret_file="/nonexistent"), 1.0
        )


def test_a_production_payouts_with_stripe_and_its_secret_files_starts_and_without_them_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in SAFE_PRODUCTION.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("COINSTREAM_PAYOUT_PROVIDER", "stripe_connect")
    with pytest.raises(pydantic.ValidationError) as refused:
        PayoutsSettings()
    assert "COINSTREAM_STRIPE_CONNECT_SECRET_KEY_FILE is unset" in str(refused.value)
    assert "sandbox" not in str(refused.value)
    monkeypatch.setenv("COINSTREAM_STRIPE_CONNECT_SECRET_KEY_FILE", "/var/run/secrets/stripe/secret-key")
    monkeypatch.setenv("COINSTREAM_STRIPE_CONNECT_WEBHOOK_SECRET_FILE", "/var/run/secrets/stripe/webhook-secret")
    assert PayoutsSettings().payout_provider == "stripe_connect"
