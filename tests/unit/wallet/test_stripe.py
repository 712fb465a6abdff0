"""The Stripe rail's pure parts and its use cases on the in-memory store: how a PaymentIntent's state becomes a
charge's outcome, which events do what (webhooks verified by Stripe's own library, signed with its test helper),
the settings production refuses, and a purchase left pending for 3-D Secure then decided by the rail's notice.
(tests/integration/test_rail_stripe.py runs the real library against a loopback Stripe.)"""

from __future__ import annotations

import json
import time
from fractions import Fraction
from pathlib import Path

import grpc
import pytest
import stripe

from services.runtime.batching import BatchPolicy
from services.runtime.http_ingress import Rejected, Unsigned
from services.runtime.requests import StoredRequest
from services.runtime.stripe_events import UnreadableEvent
from services.wallet import domain
from services.wallet.config import WalletSettings
from services.wallet.ports import ChargeResult
from services.wallet.service import WalletService
from services.wallet.stripe_payments import StripeSettings, intent_outcome
from services.wallet.stripe_webhooks import StripeWebhooks, apply_event, stripe_notice, verified_event
from tests.fakes.wallet import FakeWalletStore
from tests.unit.wallet.conftest import Wallet, buy_command, refusal

SECRET = "whsec_" + "ab" * 24
THREE_D_SECURE = "pm_3ds"


# --- a PaymentIntent's state as a charge --------------------------------------------------------------------------


def test_a_succeeded_intent_is_approved_and_names_its_transaction() -> None:
    assert intent_outcome("pi_1", "succeeded", "pi_1_secret_x", "") == ChargeResult(
        True, "pi_1", rail_transaction_id="pi_1"
    )


def test_an_intent_that_needs_its_buyer_is_pending_with_the_client_secret() -> None:
    charge = intent_outcome("pi_1", "requires_action", "pi_1_secret_x", "")
    assert (charge.pending, charge.approved, charge.client_action_secret) == (True, False, "pi_1_secret_x")
    processing = intent_outcome("pi_1", "processing", "pi_1_secret_x", "")
    assert (processing.pending, processing.client_action_secret) == (True, "")  # nothing for the buyer to do


@pytest.mark.parametrize(
    ("status", "error_code", "reason"),
    [("requires_payment_method", "card_declined", "card_declined"), ("canceled", "", "canceled")],
)
def test_a_failed_or_canceled_intent_is_declined(status: str, error_code: str, reason: str) -> None:
    charge = intent_outcome("pi_1", status, "pi_1_secret_x", error_code)
    assert (charge.approved, charge.pending, charge.decline_reason, charge.rail_transaction_id) == (
        False,
        False,
        reason,
        "pi_1",
    )


# --- webhooks -------------------------------------------------------------------------------------------------------


def signed(payload: dict[str, object], timestamp: int | None = None) -> tuple[bytes, str]:
    body = json.dumps(payload)
    return body.encode(), stripe.WebhookSignature.generate_signature_header(body, SECRET, timestamp=timestamp)


def event(kind: str, data_object: dict[str, object], event_id: str = "evt_1") -> dict[str, object]:
    return {"id": event_id, "object": "event", "type": kind, "data": {"object": data_object}}


def test_a_signed_event_verifies_and_reads_back() -> None:
    payload = event("charge.refunded", {"id": "ch_1", "payment_intent": "pi_1", "amount": 100, "amount_refunded": 40})
    body, signature = signed(payload)
    assert verified_event(body, signature, SECRET) == payload


@pytest.mark.parametrize("flaw", ["other secret", "tampered", "stale", "missing"])
def test_an_event_that_does_not_verify_is_unsigned(flaw: str) -> None:
    body, signature = signed(event("charge.dispute.created", {"id": "dp_1", "payment_intent": "pi_1"}))
    if flaw == "other secret":
        signature = stripe.WebhookSignature.generate_signature_header(body.decode(), "whsec_other")
    elif flaw == "tampered":
        body = body.replace(b"pi_1", b"pi_2")
    elif flaw == "stale":
        body, signature = signed(json.loads(body), timestamp=int(time.time()) - 301)
    with pytest.raises(Unsigned):
        verified_event(body, None if flaw == "missing" else signature, SECRET)


@pytest.mark.parametrize("body", ["{not json", "[1, 2]"])
def test_a_signed_body_that_is_no_event_is_rejected(body: str) -> None:
    signature = stripe.WebhookSignature.generate_signature_header(body, SECRET)
    with pytest.raises(Rejected) as refused:
        verified_event(body.encode(), signature, SECRET)
    assert refused.value.status == 400


def test_payment_intent_events_settle_the_purchase_named_in_their_metadata() -> None:
    intent = {"id": "pi_1", "metadata": {"purchase_id": "pur_1", "account_id": "a"}}
    assert stripe_notice(event("payment_intent.succeeded", intent)) == domain.RailPayment(
        "stripe", "evt_1", "pi_1", "pur_1", True
    )
    failed = {**intent, "last_payment_error": {"code": "payment_intent_authentication_failure"}}
    assert stripe_notice(event("payment_intent.payment_failed", failed)) == domain.RailPayment(
        "stripe", "evt_1", "pi_1", "pur_1", False, "payment_intent_authentication_failure"
    )


@pytest.mark.parametrize(("refunded", "share"), [(500, Fraction(1, 4)), (2000, Fraction(1)), (2500, Fraction(1))])
def test_a_refund_reverses_the_share_refunded_so_far(refunded: int, share: Fraction) -> None:
    charge = {"id": "ch_1", "payment_intent": "pi_1", "amount": 2000, "amount_refunded": refunded}
    assert stripe_notice(event("charge.refunded", charge)) == domain.RailReversal(
        "stripe", "evt_1", "pi_1", share, "refund"
    )


def test_a_dispute_reverses_it_whole() -> None:
    dispute = {"id": "dp_1", "charge": "ch_1", "payment_intent": "pi_1", "amount": 2000}
    assert stripe_notice(event("charge.dispute.created", dispute)) == domain.RailReversal(
        "stripe", "evt_1", "pi_1", Fraction(1), "chargeback"
    )


@pytest.mark.parametrize(
    "payload",
    [
        event("charge.refunded", {"id": "ch_1", "payment_intent": "pi_1", "amount": 2000, "amount_refunded": 0}),
        event("charge.dispute.created", {"id": "dp_1", "charge": "ch_1", "payment_intent": None}),
        event("customer.created", {"id": "cus_1"}),
    ],
)
def test_events_with_nothing_to_do_are_only_recorded(payload: dict[str, object]) -> None:
    assert stripe_notice(payload) is None


# --- settings -------------------------------------------------------------------------------------------------------


def write(tmp_path: Path, name: str, content: str) -> str:
    path = tmp_path / name
    path.write_text(content + "\n")
    return str(path)


def test_stripe_needs_its_key_and_webhook_secret_files(tmp_path: Path) -> None:
    assert StripeSettings().problems(production=False) == [
        "COINSTREAM_STRIPE_SECRET_KEY_FILE: unset",
        "COINSTREAM_STRIPE_WEBHOOK_SECRET_FILE: unset",
    ]
    wrong = StripeSettings(
        secret_key_file=write(tmp_path, "key", "pk_live_x"), webhook_secret_file=str(tmp_path / "no")
    )
    problems = wrong.problems(production=False)
    assert len(problems) == 2 and "sk_" in problems[0] and "cannot read it" in problems[1]
    assert "pk_live_x" not in " ".join(problems)


def test_production_refuses_a_test_key_and_another_api(tmp_path: Path) -> None:
    webhook = write(tmp_path, "whsec", SECRET)
    test_mode = StripeSettings(secret_key_file=write(tmp_path, "test", "sk_test_1"), webhook_secret_file=webhook)
    assert test_mode.problems(production=False) == []
    assert test_mode.problems(production=True) == [
        "COINSTREAM_STRIPE_SECRET_KEY_FILE holds a test-mode key: it takes test cards"
    ]
    live = StripeSettings(
        secret_key_file=write(tmp_path, "live", "sk_live_1"), webhook_secret_file=webhook, api_base_url="http://x"
    )
    assert live.problems(production=True) == [
        "COINSTREAM_STRIPE_API_BASE_URL is set: production talks to Stripe's own API"
    ]
    assert (live.secret_key(), live.webhook_secret()) == ("sk_live_1", SECRET)  # without the file's newline


def test_the_wallet_names_stripes_problems_only_when_it_sells_through_stripe(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COINSTREAM_STRIPE_SECRET_KEY_FILE", "COINSTREAM_STRIPE_WEBHOOK_SECRET_FILE"):
        monkeypatch.delenv(name, raising=False)
    assert WalletSettings(payment_provider="none").stripe_problems(production=True) == []
    assert len(WalletSettings(payment_provider="stripe").stripe_problems(production=True)) == 2


def test_the_events_pass_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (StripeSettings().events_interval_seconds, StripeSettings().events_window_hours) == (900.0, 72)
    monkeypatch.setenv("COINSTREAM_STRIPE_EVENTS_INTERVAL_SECONDS", "0.5")
    monkeypatch.setenv("COINSTREAM_STRIPE_EVENTS_WINDOW_HOURS", "24")
    assert (StripeSettings().events_interval_seconds, StripeSettings().events_window_hours) == (0.5, 24)
    monkeypatch.setenv("COINSTREAM_STRIPE_EVENTS_WINDOW_HOURS", "721")  # Stripe keeps events 30 days
    with pytest.raises(ValueError, match="events_window_hours"):
        StripeSettings()


# --- an event's effect, shared by the webhook and the events pass --------------------------------------------------


async def test_an_event_takes_effect_once_by_its_id(wallet: Wallet) -> None:
    other = event("customer.created", {"id": "cus_1"}, event_id="evt_other")
    assert [await apply_event(wallet.service, other) for _ in range(2)] == ["recorded", "duplicate"]


async def test_an_event_it_cannot_read_is_unreadable_for_the_pass_and_rejected_by_the_webhook(wallet: Wallet) -> None:
    broken = event("charge.refunded", {"id": "ch_1", "payment_intent": "pi_1", "amount": 0, "amount_refunded": 5})
    with pytest.raises(UnreadableEvent):
        await apply_event(wallet.service, broken)
    body, signature = signed(broken)
    with pytest.raises(Rejected):
        await StripeWebhooks(wallet.service, SECRET).handle(body, {"stripe-signature": signature})


# --- the use cases --------------------------------------------------------------------------------------------------


async def test_a_wallet_without_a_payment_provider_refuses_purchases(wallet: Wallet) -> None:
    fan = await wallet.open_account()
    service = WalletService(
        wallet.store,
        None,
        payment_timeout_seconds=1,
        spend_batching=BatchPolicy(max_batch_size=200, max_concurrent_batches=1, queue_budget_seconds=1.0),
        decline_limits=domain.DeclineLimits(5, 0),
    )

    error = await refusal(service.purchase(buy_command(fan)))

    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_PROVIDER_NOT_ENABLED")
    assert wallet.store.state.purchases == {}
    assert [key.method for key in wallet.store.state.keys.values()] == ["UpsertAccount"]  # the account's only


async def pending_purchase(wallet: Wallet) -> tuple[str, domain.BuyCoins, domain.Bought]:
    wallet.payments.pending_tokens.add(THREE_D_SECURE)
    fan = await wallet.open_account()
    command = buy_command(fan, payment_token=THREE_D_SECURE)
    return fan, command, await wallet.service.purchase(command)


async def test_a_charge_waiting_for_its_buyer_is_answered_pending_and_nothing_is_kept(wallet: Wallet) -> None:
    fan, command, pending = await pending_purchase(wallet)

    again = await wallet.service.purchase(command)

    assert (pending.pending, pending.client_action_secret) == (True, f"pi_{pending.purchase_id}_secret")
    assert again == pending and await wallet.balance(fan) == domain.Balance()
    purchase = wallet.store.state.purchases[pending.purchase_id]
    assert (purchase.status, purchase.store_transaction_id) == (
        domain.PurchaseStatus.PENDING,
        f"pi_{purchase.purchase_id}",
    )
    assert wallet.store.state.keys[command.key.request_id].as_stored() == StoredRequest(pending.purchase_id, None, None)


async def test_the_rails_notice_completes_a_pending_purchase_once(wallet: Wallet) -> None:
    fan, command, pending = await pending_purchase(wallet)
    intent_id = f"pi_{pending.purchase_id}"
    # The notice may name only the purchase (its transaction id not recorded yet): metadata finds it either way.
    notice = domain.RailPayment("sandbox", "evt_1", intent_id, pending.purchase_id, True)

    outcomes = [await wallet.service.settle_by_rail(notice, "payment_intent.succeeded") for _ in range(2)]

    assert outcomes == [domain.RailPaymentOutcome.COMPLETED, domain.RailPaymentOutcome.DUPLICATE]
    assert await wallet.balance(fan) == domain.Balance(330, 0)
    bought = await wallet.service.purchase(command)  # the request's key now keeps the completed purchase
    assert (bought.pending, bought.balance) == (False, domain.Balance(330, 0))
    later = domain.RailPayment("sandbox", "evt_2", intent_id, pending.purchase_id, True)
    assert await wallet.service.settle_by_rail(later, "payment_intent.succeeded") is (
        domain.RailPaymentOutcome.ALREADY_DECIDED
    )
    assert await wallet.balance(fan) == domain.Balance(330, 0)


async def test_the_rails_failure_notice_declines_a_pending_purchase(wallet: Wallet) -> None:
    fan, command, pending = await pending_purchase(wallet)
    notice = domain.RailPayment("sandbox", "evt_1", f"pi_{pending.purchase_id}", "", False, "authentication failed")

    assert await wallet.service.settle_by_rail(notice, "payment_intent.payment_failed") is (
        domain.RailPaymentOutcome.DECLINED
    )

    error = await refusal(wallet.service.purchase(command))
    assert (error.reason, error.message) == ("PAYMENT_DECLINED", "payment declined: authentication failed")
    assert await wallet.balance(fan) == domain.Balance()


async def test_a_pending_purchase_decided_at_the_rail_is_finished_by_a_retry(wallet: Wallet) -> None:
    fan, command, pending = await pending_purchase(wallet)
    wallet.payments.decide(pending.purchase_id, approved=True)  # the notice got lost: asking the rail finds out

    bought = await wallet.service.purchase(command)

    assert (bought.pending, bought.balance) == (False, domain.Balance(330, 0))


async def test_a_notice_of_no_purchase_of_ours_is_only_recorded(wallet: Wallet) -> None:
    store: FakeWalletStore = wallet.store
    notice = domain.RailPayment("sandbox", "evt_9", "pi_elsewhere", "", True)
    assert await wallet.service.settle_by_rail(notice, "payment_intent.succeeded") is domain.RailPaymentOutcome.UNKNOWN
    assert store.state.notifications == {("sandbox", "evt_9")}


async def test_a_refund_of_a_charge_still_pending_waits_for_its_credit(wallet: Wallet) -> None:
    """Stripe may send charge.refunded (or a dispute) before the payment_intent.succeeded that completes the
    purchase (a webhook retried later, a crash before the charge's answer was kept): the refund waits and the credit
    applies it, so the buyer never keeps coins whose money went back."""
    fan, _, pending = await pending_purchase(wallet)
    intent_id = f"pi_{pending.purchase_id}"
    refund = domain.RailReversal("sandbox", "evt_refund", intent_id, Fraction(1), "refund")

    assert await wallet.service.reverse_by_rail(refund, "charge.refunded") is domain.RailReversalOutcome.WAITING
    paid = domain.RailPayment("sandbox", "evt_paid", intent_id, pending.purchase_id, True)
    assert await wallet.service.settle_by_rail(paid, "payment_intent.succeeded") is domain.RailPaymentOutcome.COMPLETED

    assert await wallet.balance(fan) == domain.Balance()
    assert (await wallet.service.get_purchase(pending.purchase_id)).state is domain.PurchaseState.REVERSED


async def test_a_payment_taken_after_its_decline_is_credited(wallet: Wallet) -> None:
    """3-D Secure failed (declined), then the buyer paid the same PaymentIntent with another card: the money is
    taken, so the coins are given (the request's key keeps the decline it answered then)."""
    fan, command, pending = await pending_purchase(wallet)
    intent_id = f"pi_{pending.purchase_id}"
    failed = domain.RailPayment("sandbox", "evt_failed", intent_id, "", False, "authentication failed")
    await wallet.service.settle_by_rail(failed, "payment_intent.payment_failed")

    paid = domain.RailPayment("sandbox", "evt_paid", intent_id, "", True)
    assert await wallet.service.settle_by_rail(paid, "payment_intent.succeeded") is domain.RailPaymentOutcome.COMPLETED

    assert await wallet.balance(fan) == domain.Balance(330, 0)
    assert (await wallet.service.get_purchase(pending.purchase_id)).state is domain.PurchaseState.COMPLETED
    assert (await refusal(wallet.service.purchase(command))).reason == "PAYMENT_DECLINED"
