"""Web purchases through Stripe, on a wallet replica with COINSTREAM_PAYMENT_PROVIDER=stripe against a loopback Stripe
(tests/support/rails/stripe.py) that speaks the PaymentIntents API: the library's StripeClient calls it unmodified, and
the webhooks are signed with the library's own test helper and verified by stripe.Webhook.construct_event in the
wallet. A card paid at once, a card that needs 3-D Secure (pending, then completed by payment_intent.succeeded), a
declined card, Stripe failing or slow mid-call (charged once, whatever the retries), webhooks that do not verify,
refunds and a dispute whose coins paid for a gift (the creator's diamonds clawed back); events whose webhook never
came, applied by the catch-up pass over Stripe's events list, once also when their webhook does come."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from coinstream.payouts.v1 import payouts_pb2
from coinstream.wallet.v1 import wallet_pb2 as w
from coinstream.wallet.v1 import wallet_pb2_grpc
from grpc import StatusCode

from coinstream.testing.servers import stop_process
from coinstream.testing.stack import ServiceProcess
from tests.support.clients import SERVICE, Clients, new_id
from tests.support.errors import expect_error
from tests.support.factories import create_account
from tests.support.gifts import live_stream_id, send
from tests.support.payouts import earnings, eventually, wait_for_lifetime
from tests.support.rails import stripe as fake_stripe
from tests.support.rails.stripe import (
    DECLINED,
    ERROR_AFTER_CHARGE,
    SERVER_ERROR,
    SLOW,
    THREE_D_SECURE,
    VISA,
    FakeStripe,
)
from tests.support.rails.stripe_events import StripeEvents
from tests.support.stack import Stack

PACKAGE, COINS, BONUS, PRICE = "coins_1321", 1321, 66, 1999  # the suite's default promotion gives +5 %
PAYMENT_TIMEOUT_SECONDS = 2.0
EVENTS_INTERVAL_SECONDS = 0.5


@dataclass
class StripeWallet:
    stripe: FakeStripe
    wallet: wallet_pb2_grpc.WalletServiceStub
    http: httpx.AsyncClient  # the replica's HTTP port
    replica: ServiceProcess
    settings: dict[str, str]  # the replica's own settings (another replica with them sells through the same Stripe)

    async def buy(self, account_id: str, payment_method: str, request_id: str | None = None) -> w.PurchaseCoinsResponse:
        return await self.wallet.PurchaseCoins(purchase(account_id, payment_method, request_id), metadata=SERVICE)

    async def webhook(self, kind: str, data_object: dict[str, object], event_id: str | None = None) -> httpx.Response:
        body = fake_stripe.event(kind, data_object, event_id)
        return await self.post(body, fake_stripe.signature(body, self.stripe.webhook_secret))

    async def deliver(self, event: dict[str, Any]) -> httpx.Response:
        """The webhook of an event Stripe recorded (its events list shows it too)."""
        body = fake_stripe.body_of(event)
        return await self.post(body, fake_stripe.signature(body, self.stripe.webhook_secret))

    async def post(self, body: str, signature: str | None) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers["Stripe-Signature"] = signature
        return await self.http.post("/webhooks/stripe", content=body.encode(), headers=headers)

    async def purchase_of(self, purchase_id: str) -> w.Purchase:
        reply = await self.wallet.GetPurchase(w.GetPurchaseRequest(purchase_id=purchase_id), metadata=SERVICE)
        return reply.purchase


def purchase(account_id: str, payment_method: str, request_id: str | None = None) -> w.PurchaseCoinsRequest:
    return w.PurchaseCoinsRequest(
        request_id=request_id or new_id("buy"), account_id=account_id, package_id=PACKAGE, payment_token=payment_method
    )


@pytest_asyncio.fixture(scope="module")
async def stripe_wallet(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[StripeWallet]:
    """A wallet replica selling through the loopback Stripe, on the suite's database (its sandbox wallet leaves the
    Stripe purchases alone: each recovers only its own rail's)."""
    stripe = FakeStripe(slow_seconds=2 * PAYMENT_TIMEOUT_SECONDS)
    await stripe.start()
    secrets_dir: Path = tmp_path_factory.mktemp("stripe")
    settings = {
        **stripe.settings_env(secrets_dir),
        "COINSTREAM_WALLET_PAYMENT_TIMEOUT_SECONDS": str(PAYMENT_TIMEOUT_SECONDS),
        # The catch-up pass over Stripe's events list, often enough for a test to wait for it.
        "COINSTREAM_STRIPE_EVENTS_INTERVAL_SECONDS": str(EVENTS_INTERVAL_SECONDS),
    }
    replica: ServiceProcess = await asyncio.to_thread(stack.start_replica, "wallet", settings)
    try:
        async with stack.aio_channel(replica.address) as channel, httpx.AsyncClient(base_url=replica.http_url) as http:
            yield StripeWallet(stripe, wallet_pb2_grpc.WalletServiceStub(channel), http, replica, settings)
    finally:
        assert replica.process is not None
        await asyncio.to_thread(stop_process, replica.process)
        await stripe.stop()
    # Neither the API key, the webhook secret nor any client secret reached the replica's log.
    logged = replica.log_path.read_text(errors="replace")
    assert stripe.secret_key not in logged and stripe.webhook_secret not in logged
    assert "_secret_" not in logged


async def test_a_card_paid_at_once_credits_the_coins_through_one_payment_intent(stripe_wallet: StripeWallet) -> None:
    buyer = await create_account_for(stripe_wallet)
    request = purchase(buyer, VISA)

    bought = await stripe_wallet.wallet.PurchaseCoins(request, metadata=SERVICE)
    again = await stripe_wallet.wallet.PurchaseCoins(request, metadata=SERVICE)

    purchase_id = bought.purchase.purchase_id
    assert bought.purchase.status == w.PURCHASE_STATUS_COMPLETED and not bought.client_action_secret
    assert (bought.balance.paid_coins, bought.balance.bonus_coins) == (COINS, BONUS)
    assert again == bought
    intent = stripe_wallet.stripe.intent_of(purchase_id)
    assert stripe_wallet.stripe.created_per_key[purchase_id] == 1
    assert (intent["amount"], intent["currency"], intent["payment_method"]) == (PRICE, "usd", VISA)
    assert intent["metadata"] == {"purchase_id": purchase_id, "account_id": buyer}
    found = await stripe_wallet.purchase_of(purchase_id)
    assert (found.status, found.rail, found.store_transaction_id) == (
        w.PURCHASE_STATUS_COMPLETED,
        "stripe",
        intent["id"],
    )
    assert (found.price_paid.amount_minor, found.price_paid.currency_code) == (PRICE, "USD")


async def test_3d_secure_leaves_the_purchase_pending_until_stripe_says_it_succeeded(
    stripe_wallet: StripeWallet,
) -> None:
    buyer = await create_account_for(stripe_wallet)
    request = purchase(buyer, THREE_D_SECURE)

    pending = await stripe_wallet.wallet.PurchaseCoins(request, metadata=SERVICE)

    purchase_id = pending.purchase.purchase_id
    intent = stripe_wallet.stripe.intent_of(purchase_id)
    assert pending.purchase.status == w.PURCHASE_STATUS_PENDING
    assert pending.client_action_secret == intent["client_secret"]
    assert pending.balance.coins == 0
    # A retry while the buyer is at 3-D Secure asks Stripe for the PaymentIntent: still pending, never a new one.
    retried = await stripe_wallet.wallet.PurchaseCoins(request, metadata=SERVICE)
    assert (retried.purchase.status, retried.client_action_secret) == (
        w.PURCHASE_STATUS_PENDING,
        intent["client_secret"],
    )
    asked = ("GET", f"/v1/payment_intents/{intent['id']}")
    assert stripe_wallet.stripe.requests[-1] == asked
    assert (await stripe_wallet.purchase_of(purchase_id)).status == w.PURCHASE_STATUS_PENDING
    # The recovery pass (every 0.5 s, for purchases older than 1 s here) leaves a purchase waiting for its buyer to
    # the webhook: it asks Stripe about it again only every store.AWAITING_RECHECK_SECONDS.
    await asyncio.sleep(2)
    assert stripe_wallet.stripe.requests.count(asked) == 1

    succeeded = stripe_wallet.stripe.buyer_passes_3ds(intent["id"])
    event_id = new_id("evt")
    first = await stripe_wallet.webhook("payment_intent.succeeded", succeeded, event_id)
    replayed = await stripe_wallet.webhook("payment_intent.succeeded", succeeded, event_id)

    assert (first.status_code, first.json()) == (200, {"outcome": "completed"})
    assert (replayed.status_code, replayed.json()) == (200, {"outcome": "duplicate"})
    assert (await stripe_wallet.purchase_of(purchase_id)).status == w.PURCHASE_STATUS_COMPLETED
    assert await balance_for(stripe_wallet, buyer) == COINS + BONUS
    # The purchase's request now answers the completed purchase; another event of the same success changes nothing.
    completed = await stripe_wallet.wallet.PurchaseCoins(request, metadata=SERVICE)
    assert completed.purchase.status == w.PURCHASE_STATUS_COMPLETED and not completed.client_action_secret
    assert (completed.balance.paid_coins, completed.balance.bonus_coins) == (COINS, BONUS)
    late = await stripe_wallet.webhook("payment_intent.succeeded", succeeded)
    assert late.json() == {"outcome": "already_decided"}
    assert await balance_for(stripe_wallet, buyer) == COINS + BONUS
    assert stripe_wallet.stripe.created_per_key[purchase_id] == 1


async def test_a_failed_3d_secure_declines_the_purchase(stripe_wallet: StripeWallet) -> None:
    buyer = await create_account_for(stripe_wallet)
    request = purchase(buyer, THREE_D_SECURE)
    pending = await stripe_wallet.wallet.PurchaseCoins(request, metadata=SERVICE)
    intent = stripe_wallet.stripe.intent_of(pending.purchase.purchase_id)

    failed = await stripe_wallet.webhook(
        "payment_intent.payment_failed", stripe_wallet.stripe.buyer_fails_3ds(intent["id"])
    )

    assert failed.json() == {"outcome": "declined"}
    assert (await stripe_wallet.purchase_of(pending.purchase.purchase_id)).status == w.PURCHASE_STATUS_FAILED
    await expect_error(
        stripe_wallet.wallet.PurchaseCoins(request, metadata=SERVICE),
        StatusCode.FAILED_PRECONDITION,
        "PAYMENT_DECLINED",
    )
    assert await balance_for(stripe_wallet, buyer) == 0


@pytest.mark.parametrize("payment_method", [DECLINED, "pm_card_chargeDeclinedInsufficientFunds"])
async def test_a_declined_card_is_payment_declined(stripe_wallet: StripeWallet, payment_method: str) -> None:
    buyer = await create_account_for(stripe_wallet)
    request = purchase(buyer, payment_method)

    error = await expect_error(
        stripe_wallet.wallet.PurchaseCoins(request, metadata=SERVICE),
        StatusCode.FAILED_PRECONDITION,
        "PAYMENT_DECLINED",
    )
    again = await expect_error(
        stripe_wallet.wallet.PurchaseCoins(request, metadata=SERVICE),
        StatusCode.FAILED_PRECONDITION,
        "PAYMENT_DECLINED",
    )

    assert "card_declined" in (error.details() or "") and again.details() == error.details()
    [intent] = [i for i in stripe_wallet.stripe.intents.values() if i["metadata"].get("account_id") == buyer]
    assert intent["status"] == "requires_payment_method"
    assert stripe_wallet.stripe.created_per_key[intent["metadata"]["purchase_id"]] == 1
    assert await balance_for(stripe_wallet, buyer) == 0


async def test_stripe_failing_mid_call_is_unavailable_and_the_retry_charges_once(stripe_wallet: StripeWallet) -> None:
    buyer = await create_account_for(stripe_wallet)
    request = purchase(buyer, SERVER_ERROR)

    await expect_error(
        stripe_wallet.wallet.PurchaseCoins(request, metadata=SERVICE),
        StatusCode.UNAVAILABLE,
        "PAYMENT_PROVIDER_UNAVAILABLE",
    )
    bought = await stripe_wallet.wallet.PurchaseCoins(request, metadata=SERVICE)

    assert bought.purchase.status == w.PURCHASE_STATUS_COMPLETED
    assert bought.balance.coins == COINS + BONUS
    assert stripe_wallet.stripe.created_per_key[bought.purchase.purchase_id] == 1


async def test_a_payment_stripe_took_before_failing_is_found_by_its_purchase_and_credited_once(
    stripe_wallet: StripeWallet,
) -> None:
    """Stripe keeps a 5xx with its Idempotency-Key: asking again would get the 500 again, so the wallet looks the
    PaymentIntent up by the purchase id in its metadata."""
    buyer = await create_account_for(stripe_wallet)
    request = purchase(buyer, ERROR_AFTER_CHARGE)

    bought = await stripe_wallet.wallet.PurchaseCoins(request, metadata=SERVICE)

    assert bought.purchase.status == w.PURCHASE_STATUS_COMPLETED and bought.balance.coins == COINS + BONUS
    create, search = ("POST", "/v1/payment_intents"), ("GET", "/v1/payment_intents/search")
    assert stripe_wallet.stripe.requests[-2:] == [create, search]
    purchase_id = bought.purchase.purchase_id
    assert stripe_wallet.stripe.created_per_key[purchase_id] == 1
    found = await stripe_wallet.purchase_of(purchase_id)
    assert found.store_transaction_id == stripe_wallet.stripe.intent_of(purchase_id)["id"]


async def test_stripe_answering_too_late_is_unavailable_and_the_recovery_pass_completes_it_once(
    stripe_wallet: StripeWallet,
) -> None:
    buyer = await create_account_for(stripe_wallet)
    request = purchase(buyer, SLOW)
    started = time.monotonic()

    await expect_error(
        stripe_wallet.wallet.PurchaseCoins(request, metadata=SERVICE),
        StatusCode.UNAVAILABLE,
        "PAYMENT_PROVIDER_UNAVAILABLE",
    )

    assert time.monotonic() - started < stripe_wallet.stripe.slow_seconds
    # Stripe took the payment; the wallet's recovery pass asks again under the same key and credits it, once.
    credited = await eventually(lambda: balance_for(stripe_wallet, buyer), lambda coins: coins > 0, seconds=30)
    assert credited == COINS + BONUS
    bought = await stripe_wallet.wallet.PurchaseCoins(request, metadata=SERVICE)
    assert bought.purchase.status == w.PURCHASE_STATUS_COMPLETED
    assert stripe_wallet.stripe.created_per_key[bought.purchase.purchase_id] == 1
    found = await stripe_wallet.purchase_of(bought.purchase.purchase_id)
    assert found.store_transaction_id == stripe_wallet.stripe.intent_of(bought.purchase.purchase_id)["id"]


@pytest.mark.slow
async def test_a_wallet_killed_after_stripe_charged_is_credited_once_by_the_recovery_pass(
    stack: Stack, stripe_wallet: StripeWallet
) -> None:
    crashing = {**stripe_wallet.settings, "COINSTREAM_FAULT_POINTS": "wallet.after_charge"}
    replica: ServiceProcess = await asyncio.to_thread(stack.start_replica, "wallet", crashing)
    buyer = await create_account_for(stripe_wallet)
    try:
        async with stack.aio_channel(replica.address) as channel:
            await expect_error(
                wallet_pb2_grpc.WalletServiceStub(channel).PurchaseCoins(purchase(buyer, VISA), metadata=SERVICE),
                StatusCode.UNAVAILABLE,
            )
        assert replica.process is not None and await asyncio.to_thread(replica.process.wait, 30) != 0
    finally:
        assert replica.process is not None
        await asyncio.to_thread(stop_process, replica.process)

    # The surviving replica's recovery pass asks Stripe again under the purchase's key: the first payment, once.
    credited = await eventually(lambda: balance_for(stripe_wallet, buyer), lambda coins: coins > 0, seconds=30)
    assert credited == COINS + BONUS
    [intent] = [i for i in stripe_wallet.stripe.intents.values() if i["metadata"].get("account_id") == buyer]
    assert stripe_wallet.stripe.created_per_key[intent["metadata"]["purchase_id"]] == 1


async def test_a_webhook_that_does_not_verify_moves_nothing(stripe_wallet: StripeWallet) -> None:
    buyer = await create_account_for(stripe_wallet)
    bought = await stripe_wallet.buy(buyer, VISA)
    intent_id = stripe_wallet.stripe.intent_of(bought.purchase.purchase_id)["id"]
    body = fake_stripe.event("charge.dispute.created", stripe_wallet.stripe.dispute(intent_id))
    secret = stripe_wallet.stripe.webhook_secret
    tampered = body.replace('"needs_response"', '"won"')

    answers = [
        await stripe_wallet.post(body, fake_stripe.signature(body, "whsec_" + "0" * 48)),  # another endpoint's secret
        await stripe_wallet.post(tampered, fake_stripe.signature(body, secret)),  # signed, then changed
        await stripe_wallet.post(body, fake_stripe.signature(body, secret, int(time.time()) - 301)),  # stale
        await stripe_wallet.post(body, None),
    ]
    not_json = "{not json"
    unreadable = await stripe_wallet.post(not_json, fake_stripe.signature(not_json, secret))

    assert [answer.status_code for answer in answers] == [401] * 4
    assert unreadable.status_code == 400
    found = await stripe_wallet.purchase_of(bought.purchase.purchase_id)
    assert (found.status, found.reversed_coins) == (w.PURCHASE_STATUS_COMPLETED, 0)
    assert await balance_for(stripe_wallet, buyer) == COINS + BONUS


async def test_refunds_reverse_the_share_refunded_so_far(stripe_wallet: StripeWallet) -> None:
    buyer = await create_account_for(stripe_wallet)
    bought = await stripe_wallet.buy(buyer, VISA)
    purchase_id = bought.purchase.purchase_id
    intent_id = stripe_wallet.stripe.intent_of(purchase_id)["id"]
    half = stripe_wallet.stripe.charge(intent_id, amount_refunded=PRICE // 2)
    event_id = new_id("evt")

    partial = await stripe_wallet.webhook("charge.refunded", half, event_id)
    again = await stripe_wallet.webhook("charge.refunded", half, event_id)

    assert (partial.status_code, partial.json(), again.json()) == (
        200,
        {"outcome": "applied"},
        {"outcome": "duplicate"},
    )
    found = await stripe_wallet.purchase_of(purchase_id)
    assert found.status == w.PURCHASE_STATUS_PARTIALLY_REVERSED
    assert found.reversed_coins == -(-COINS * (PRICE // 2) // PRICE)  # rounded up: no coin of money gone back kept

    full = await stripe_wallet.webhook("charge.refunded", stripe_wallet.stripe.charge(intent_id, amount_refunded=PRICE))

    assert full.json() == {"outcome": "applied"}
    found = await stripe_wallet.purchase_of(purchase_id)
    assert (found.status, found.reversed_coins, found.reversed_bonus_coins) == (
        w.PURCHASE_STATUS_REVERSED,
        COINS,
        BONUS,
    )
    assert await balance_for(stripe_wallet, buyer) == 0


async def test_a_dispute_of_coins_spent_on_a_gift_claws_the_creators_diamonds_back(
    stripe_wallet: StripeWallet, clients: Clients
) -> None:
    buyer, creator = await create_account(clients), await create_account(clients, prefix="creator")
    bought = await stripe_wallet.buy(buyer, VISA)
    await send(clients, buyer, await live_stream_id(clients, creator), "disco_ball", 1)  # 1,000 coins
    await wait_for_lifetime(clients, creator, 1000)
    intent_id = stripe_wallet.stripe.intent_of(bought.purchase.purchase_id)["id"]

    disputed = await stripe_wallet.webhook("charge.dispute.created", stripe_wallet.stripe.dispute(intent_id))

    assert (disputed.status_code, disputed.json()) == (200, {"outcome": "applied"})
    found = await stripe_wallet.purchase_of(bought.purchase.purchase_id)
    assert (found.status, found.reversed_coins) == (w.PURCHASE_STATUS_REVERSED, COINS)
    after: payouts_pb2.Earnings = await eventually(
        lambda: earnings(clients, creator), lambda e: e.clawed_back_diamonds >= 1000
    )
    assert (after.lifetime_diamonds, after.clawed_back_diamonds, after.available_diamonds) == (1000, 1000, 0)


async def test_other_events_are_recorded_once(stripe_wallet: StripeWallet) -> None:
    event_id = new_id("evt")
    first = await stripe_wallet.webhook("customer.created", {"id": new_id("cus"), "object": "customer"}, event_id)
    again = await stripe_wallet.webhook("customer.created", {"id": new_id("cus"), "object": "customer"}, event_id)
    assert (first.status_code, first.json(), again.json()) == (200, {"outcome": "recorded"}, {"outcome": "duplicate"})


# --- the catch-up pass over Stripe's events list ------------------------------------------------------------------


async def test_a_refund_whose_webhook_never_came_is_applied_by_the_events_pass(stripe_wallet: StripeWallet) -> None:
    buyer = await create_account_for(stripe_wallet)
    bought = await stripe_wallet.buy(buyer, VISA)
    purchase_id = bought.purchase.purchase_id
    intent_id = stripe_wallet.stripe.intent_of(purchase_id)["id"]

    refunded = stripe_wallet.stripe.events.record(
        "charge.refunded", stripe_wallet.stripe.charge(intent_id, amount_refunded=PRICE)
    )

    found = await eventually(
        lambda: stripe_wallet.purchase_of(purchase_id), lambda p: p.status == w.PURCHASE_STATUS_REVERSED, seconds=15
    )
    assert (found.reversed_coins, found.reversed_bonus_coins) == (COINS, BONUS)
    assert await balance_for(stripe_wallet, buyer) == 0
    late = await stripe_wallet.deliver(refunded)  # Stripe's webhook after all: the event took effect already
    assert (late.status_code, late.json()) == (200, {"outcome": "duplicate"})


async def test_events_both_delivered_and_listed_take_effect_once(stripe_wallet: StripeWallet) -> None:
    buyer = await create_account_for(stripe_wallet)
    bought = await stripe_wallet.buy(buyer, VISA)
    purchase_id = bought.purchase.purchase_id
    intent_id = stripe_wallet.stripe.intent_of(purchase_id)["id"]
    events = stripe_wallet.stripe.events

    # Pushed first, then listed: the pass finds it recorded.
    half = events.record("charge.refunded", stripe_wallet.stripe.charge(intent_id, amount_refunded=PRICE // 2))
    pushed = await stripe_wallet.deliver(half)
    assert await eventually(lambda: listed(events, half["id"]), bool, seconds=15)
    await asyncio.sleep(2 * EVENTS_INTERVAL_SECONDS)

    assert pushed.json() == {"outcome": "applied"}
    found = await stripe_wallet.purchase_of(purchase_id)
    assert (found.status, found.reversed_coins) == (
        w.PURCHASE_STATUS_PARTIALLY_REVERSED,
        -(-COINS * (PRICE // 2) // PRICE),
    )
    # Listed first, then pushed: the webhook finds it recorded.
    disputed = events.record("charge.dispute.created", stripe_wallet.stripe.dispute(intent_id))
    found = await eventually(
        lambda: stripe_wallet.purchase_of(purchase_id), lambda p: p.status == w.PURCHASE_STATUS_REVERSED, seconds=15
    )
    late = await stripe_wallet.deliver(disputed)

    assert late.json() == {"outcome": "duplicate"}
    assert (found.reversed_coins, found.reversed_bonus_coins) == (COINS, BONUS)
    assert await balance_for(stripe_wallet, buyer) == 0


async def test_a_3d_secure_payment_whose_webhook_never_came_is_completed_by_the_events_pass(
    stripe_wallet: StripeWallet,
) -> None:
    buyer = await create_account_for(stripe_wallet)
    pending = await stripe_wallet.buy(buyer, THREE_D_SECURE)
    purchase_id = pending.purchase.purchase_id
    intent = stripe_wallet.stripe.intent_of(purchase_id)
    assert pending.purchase.status == w.PURCHASE_STATUS_PENDING

    succeeded = stripe_wallet.stripe.events.record(
        "payment_intent.succeeded", stripe_wallet.stripe.buyer_passes_3ds(intent["id"])
    )

    # The recovery pass would ask Stripe about it only after store.AWAITING_RECHECK_SECONDS (10 minutes): the
    # events pass completes it.
    found = await eventually(
        lambda: stripe_wallet.purchase_of(purchase_id), lambda p: p.status == w.PURCHASE_STATUS_COMPLETED, seconds=15
    )
    assert found.store_transaction_id == intent["id"]
    assert await balance_for(stripe_wallet, buyer) == COINS + BONUS
    assert (await stripe_wallet.deliver(succeeded)).json() == {"outcome": "duplicate"}
    assert stripe_wallet.stripe.created_per_key[purchase_id] == 1


async def listed(events: StripeEvents, event_id: str) -> bool:
    return event_id in events.listed


async def test_the_sandbox_wallet_serves_no_stripe_webhooks(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.services["wallet"].http_url) as http:
        answer = await http.post("/webhooks/stripe", content=b"{}")
    assert answer.status_code == 404


async def create_account_for(stripe_wallet: StripeWallet) -> str:
    account_id = new_id("buyer")
    await stripe_wallet.wallet.UpsertAccount(
        w.UpsertAccountRequest(request_id=new_id("req"), account_id=account_id, adult_verified=True, country_code="US"),
        metadata=SERVICE,
    )
    return account_id


async def balance_for(stripe_wallet: StripeWallet, account_id: str) -> int:
    reply = await stripe_wallet.wallet.GetBalance(w.GetBalanceRequest(account_id=account_id), metadata=SERVICE)
    return reply.balance.coins
