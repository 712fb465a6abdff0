"""Coins bought in Google Play, on the real services: a wallet replica with the rail configured talks to a loopback
Google (tests/support/rails/google.py) through Google's own client and credentials — the service account's assertion
signed and exchanged at the token endpoint, the Play Developer API called over HTTP, Pub/Sub push tokens verified by
google-auth against the certificates the fake publishes. Redeems, consumption, outages, pushed and polled voids, and a
refund reaching the creator the coins were gifted to."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from coinstream.wallet.v1 import wallet_pb2 as w
from coinstream.wallet.v1 import wallet_pb2_grpc
from google.auth import jwt

from coinstream.testing.servers import stop_process
from coinstream.testing.stack import ServiceProcess
from tests.support.clients import SERVICE, Clients, new_id
from tests.support.errors import expect_error
from tests.support.factories import balance, create_account
from tests.support.gifts import live_stream_id, send
from tests.support.invariants import all_violations, wait_until_settled
from tests.support.payouts import earnings, eventually, make_eligible, wait_for_lifetime
from tests.support.rails.google import (
    PACKAGE_NAME,
    PUSH_AUDIENCE,
    PUSH_SERVICE_ACCOUNT,
    FakeGoogle,
    PlayPurchase,
    SigningKey,
    developer_notification,
    push_body,
    voided_notification,
)
from tests.support.stack import Stack

PRODUCT = "com.coinstream.coins1321"  # a console product id, mapped to coins_1321 by COINSTREAM_STORE_PRODUCTS
PACKAGE_PRICE = ("USD", 1999)  # coins_1321's: products.get states no price, so the package's is recorded
NOTIFICATIONS = "/notifications/google-play"


@pytest_asyncio.fixture(scope="module")
async def google() -> AsyncIterator[FakeGoogle]:
    fake = FakeGoogle()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest_asyncio.fixture(scope="module")
async def play_wallet(
    stack: Stack, google: FakeGoogle, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ServiceProcess]:
    """A wallet replica (the stack's database) with Google Play enabled against the fake; its passes run often."""
    key_file = google.write_service_account_file(tmp_path_factory.mktemp("google") / "play-api.json")
    settings = {
        "COINSTREAM_GOOGLE_PLAY_ENABLED": "true",
        "COINSTREAM_GOOGLE_PLAY_PACKAGE_NAME": PACKAGE_NAME,
        "COINSTREAM_GOOGLE_PLAY_SERVICE_ACCOUNT_FILE": str(key_file),
        "COINSTREAM_GOOGLE_PLAY_API_URL": f"{google.url}/",
        "COINSTREAM_GOOGLE_PLAY_API_TIMEOUT_SECONDS": "2",
        "COINSTREAM_GOOGLE_PLAY_PUSH_AUDIENCE": PUSH_AUDIENCE,
        "COINSTREAM_GOOGLE_PLAY_PUSH_SERVICE_ACCOUNT_EMAIL": PUSH_SERVICE_ACCOUNT,
        "COINSTREAM_GOOGLE_PLAY_CERTS_URL": f"{google.url}/oauth2/v1/certs",
        "COINSTREAM_GOOGLE_PLAY_VOIDED_INTERVAL_SECONDS": "0.5",
        "COINSTREAM_WALLET_STORE_FINISH_INTERVAL_SECONDS": "0.5",
        "COINSTREAM_WALLET_STORE_FINISH_AGE_SECONDS": "1",
        "COINSTREAM_WALLET_PAYMENT_TIMEOUT_SECONDS": "5",
        "COINSTREAM_STORE_PRODUCTS": json.dumps({PRODUCT: "coins_1321"}),
    }
    replica: ServiceProcess = await asyncio.to_thread(stack.start_replica, "wallet", settings)
    try:
        yield replica
    finally:
        assert replica.process is not None
        await asyncio.to_thread(stop_process, replica.process)


@pytest_asyncio.fixture(scope="module")
async def play(stack: Stack, play_wallet: ServiceProcess) -> AsyncIterator[wallet_pb2_grpc.WalletServiceStub]:
    channel = stack.aio_channel(play_wallet.address)
    try:
        yield wallet_pb2_grpc.WalletServiceStub(channel)
    finally:
        await channel.close()


@pytest_asyncio.fixture(scope="module")
async def http(play_wallet: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=play_wallet.http_url) as client:
        yield client


def redeem_request(
    account_id: str, purchase: PlayPurchase, request_id: str | None = None
) -> w.RedeemStorePurchaseRequest:
    return w.RedeemStorePurchaseRequest(
        request_id=request_id or new_id("redeem"),
        account_id=account_id,
        store=w.STORE_GOOGLE_PLAY,
        purchase_token=purchase.token,
        product_id=purchase.product_id,
    )


async def redeem(
    play: wallet_pb2_grpc.WalletServiceStub, account_id: str, purchase: PlayPurchase
) -> w.RedeemStorePurchaseResponse:
    return await play.RedeemStorePurchase(redeem_request(account_id, purchase), metadata=SERVICE)


async def push(
    http: httpx.AsyncClient, google: FakeGoogle, notification: dict[str, Any], message_id: str, token: str | None = None
) -> httpx.Response:
    """What the Pub/Sub push subscription delivers: the notification, and Google's OIDC token (or the one given)."""
    bearer = token if token is not None else google.push_token()
    return await http.post(
        NOTIFICATIONS, content=push_body(notification, message_id), headers={"Authorization": f"Bearer {bearer}"}
    )


async def purchase_of(clients: Clients, purchase_id: str) -> w.Purchase:
    reply = await clients.wallet.GetPurchase(w.GetPurchaseRequest(purchase_id=purchase_id), metadata=SERVICE)
    return reply.purchase


async def consumed(purchase: PlayPurchase) -> bool:
    """Whether Google has the purchase consumed, within a few seconds."""

    async def probe() -> bool:
        return purchase.consumed

    return await eventually(probe, bool)


# --- redeeming --------------------------------------------------------------------------------------------------


async def test_a_play_purchase_becomes_coins_and_is_consumed(
    clients: Clients, play: wallet_pb2_grpc.WalletServiceStub, google: FakeGoogle
) -> None:
    account_id = await create_account(clients)
    bought = google.buy(PRODUCT, obfuscatedExternalAccountId=hashlib.sha256(account_id.encode()).hexdigest())

    redeemed = await redeem(play, account_id, bought)

    purchase = redeemed.purchase
    assert (purchase.status, purchase.store, purchase.rail) == (
        w.PURCHASE_STATUS_COMPLETED,
        w.STORE_GOOGLE_PLAY,
        "google_play",
    )
    assert (purchase.package_id, purchase.coins, purchase.account_id) == ("coins_1321", 1321, account_id)
    assert purchase.store_transaction_id == bought.resource["orderId"]
    assert (purchase.price_paid.currency_code, purchase.price_paid.amount_minor) == PACKAGE_PRICE
    assert purchase.storefront == "DE"  # the purchase's regionCode, not the account's country
    assert redeemed.balance.coins == 1321 + purchase.bonus_coins == await balance(clients, account_id)
    assert await purchase_of(clients, purchase.purchase_id) == purchase
    assert await consumed(bought)


async def test_an_order_is_credited_once_whichever_account_redeems_it(
    clients: Clients, play: wallet_pb2_grpc.WalletServiceStub, google: FakeGoogle
) -> None:
    first, second = await create_account(clients), await create_account(clients)
    bought = google.buy(PRODUCT)
    await redeem(play, first, bought)
    await expect_error(
        redeem(play, second, bought), grpc.StatusCode.ALREADY_EXISTS, "STORE_TRANSACTION_ALREADY_REDEEMED"
    )
    assert await balance(clients, second) == 0


async def test_a_replayed_redeem_answers_the_same_and_credits_once(
    clients: Clients, play: wallet_pb2_grpc.WalletServiceStub, google: FakeGoogle
) -> None:
    account_id = await create_account(clients)
    bought = google.buy(PRODUCT)
    request = redeem_request(account_id, bought)
    first = await play.RedeemStorePurchase(request, metadata=SERVICE)
    assert await consumed(bought)
    again = await play.RedeemStorePurchase(request, metadata=SERVICE)  # consuming again is fine
    assert again == first
    assert await balance(clients, account_id) == first.balance.coins


@pytest.mark.parametrize(
    ("case", "fields"),
    [
        ("canceled", {"purchaseState": 1}),
        ("pending", {"purchaseState": 2}),
        ("promo code", {"purchaseType": 1}),
        ("rewarded", {"purchaseType": 2}),
        ("several packages", {"quantity": 2}),
        ("another account's", {"obfuscatedExternalAccountId": "someone-else"}),
    ],
)
async def test_a_purchase_that_is_no_paid_package_of_the_account_moves_nothing(
    clients: Clients,
    play: wallet_pb2_grpc.WalletServiceStub,
    google: FakeGoogle,
    case: str,
    fields: dict[str, Any],
) -> None:
    account_id = await create_account(clients)
    refused = await expect_error(
        redeem(play, account_id, google.buy(PRODUCT, **fields)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "PAYMENT_VERIFICATION_FAILED",
    )
    assert case != "pending" or "pending" in (refused.details() or "")
    assert await balance(clients, account_id) == 0


async def test_a_token_google_does_not_know_moves_nothing(
    clients: Clients, play: wallet_pb2_grpc.WalletServiceStub, google: FakeGoogle
) -> None:
    account_id = await create_account(clients)
    unknown = PlayPurchase("play-token-made-up", PRODUCT, {})
    other_product = google.buy("coins_330")
    await expect_error(
        redeem(play, account_id, unknown), grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_VERIFICATION_FAILED"
    )
    await expect_error(
        redeem(play, account_id, PlayPurchase(other_product.token, PRODUCT, {})),
        grpc.StatusCode.FAILED_PRECONDITION,
        "PAYMENT_VERIFICATION_FAILED",
    )
    assert await balance(clients, account_id) == 0


async def test_google_timing_out_or_failing_mid_call_answers_unavailable_and_a_retry_redeems(
    clients: Clients, play: wallet_pb2_grpc.WalletServiceStub, google: FakeGoogle
) -> None:
    account_id = await create_account(clients)
    bought = google.buy(PRODUCT)
    request = redeem_request(account_id, bought)
    google.fail_next("get", delay_seconds=5)  # past the 2 s the replica gives a call
    await expect_error(
        play.RedeemStorePurchase(request, metadata=SERVICE), grpc.StatusCode.UNAVAILABLE, "PAYMENT_PROVIDER_UNAVAILABLE"
    )
    google.fail_next("get", status=503)
    await expect_error(
        play.RedeemStorePurchase(request, metadata=SERVICE), grpc.StatusCode.UNAVAILABLE, "PAYMENT_PROVIDER_UNAVAILABLE"
    )
    assert await balance(clients, account_id) == 0

    redeemed = await play.RedeemStorePurchase(request, metadata=SERVICE)

    assert redeemed.purchase.status == w.PURCHASE_STATUS_COMPLETED
    assert await balance(clients, account_id) == redeemed.balance.coins > 0


async def test_a_consume_that_fails_is_done_by_the_periodic_pass(
    clients: Clients, play: wallet_pb2_grpc.WalletServiceStub, google: FakeGoogle
) -> None:
    account_id = await create_account(clients)
    bought = google.buy(PRODUCT)
    google.fail_next("consume", status=503)

    redeemed = await redeem(play, account_id, bought)

    assert redeemed.purchase.status == w.PURCHASE_STATUS_COMPLETED  # the coins do not wait for Google
    assert await consumed(bought)
    assert google.calls_of("consume", bought.token) >= 2


# --- notifications ----------------------------------------------------------------------------------------------


async def test_a_pushed_void_reverses_the_purchase_and_its_replay_changes_nothing(
    clients: Clients,
    play: wallet_pb2_grpc.WalletServiceStub,
    http: httpx.AsyncClient,
    google: FakeGoogle,
) -> None:
    account_id = await create_account(clients)
    bought = google.buy(PRODUCT)
    purchase_id = (await redeem(play, account_id, bought)).purchase.purchase_id
    message_id = new_id("pubsub")

    applied = await push(http, google, voided_notification(bought), message_id)
    replayed = await push(http, google, voided_notification(bought), message_id)

    assert (applied.status_code, applied.json()) == (200, {"outcome": "applied"})
    assert (replayed.status_code, replayed.json()) == (200, {"outcome": "duplicate"})
    reversed_ = await purchase_of(clients, purchase_id)
    assert (reversed_.status, reversed_.reversed_coins) == (w.PURCHASE_STATUS_REVERSED, 1321)
    assert await balance(clients, account_id) == 0


async def test_a_forged_push_is_refused_and_moves_nothing(
    clients: Clients,
    play: wallet_pb2_grpc.WalletServiceStub,
    http: httpx.AsyncClient,
    google: FakeGoogle,
) -> None:
    account_id = await create_account(clients)
    bought = google.buy(PRODUCT)
    redeemed = await redeem(play, account_id, bought)
    message_id = new_id("pubsub")
    foreign = SigningKey.generate("not-google")
    forged = {
        "a foreign key under Google's key id": foreign.sign(_claims(google), key_id=google.push_key.key_id),
        "a foreign key of its own": foreign.sign(_claims(google)),
        "another audience": google.push_token(aud="https://elsewhere.example/push"),
        "another service account": google.push_token(email="attacker@evil-project.iam.gserviceaccount.com"),
        "an unverified email": google.push_token(email_verified=False),
        "another issuer": google.push_token(iss="https://evil.example"),
        "expired": google.push_token(iat=1_600_000_000, exp=1_600_003_600),
        "not a JWT": "not-a-token",
    }
    for case, token in forged.items():
        refused = await push(http, google, voided_notification(bought), message_id, token=token)
        assert refused.status_code == 401, case
    unsigned = await http.post(NOTIFICATIONS, content=push_body(voided_notification(bought), message_id))
    assert unsigned.status_code == 401
    assert await balance(clients, account_id) == redeemed.balance.coins
    assert (await purchase_of(clients, redeemed.purchase.purchase_id)).status == w.PURCHASE_STATUS_COMPLETED

    genuine = await push(http, google, voided_notification(bought), message_id)  # the id was not taken by a forgery

    assert genuine.json() == {"outcome": "applied"}
    assert await balance(clients, account_id) == 0


def _claims(google: FakeGoogle) -> dict[str, Any]:
    """The claims of a genuine push token, to be signed by someone else."""
    claims: dict[str, Any] = jwt.decode(google.push_token(), verify=False)
    return claims


async def test_a_push_that_is_not_this_apps_notification_is_refused(
    http: httpx.AsyncClient, google: FakeGoogle
) -> None:
    other_app = await push(
        http, google, developer_notification("com.someone.else", testNotification={"version": "1.0"}), new_id("m")
    )
    assert (other_app.status_code, other_app.json()) == (400, {"error": "a notification of another app"})
    junk = await http.post(NOTIFICATIONS, content=b"{}", headers={"Authorization": f"Bearer {google.push_token()}"})
    assert junk.status_code == 400


async def test_test_and_purchase_notifications_are_recorded_once(http: httpx.AsyncClient, google: FakeGoogle) -> None:
    test_ping = developer_notification(testNotification={"version": "1.0"})
    purchased = developer_notification(
        oneTimeProductNotification={"version": "1.0", "notificationType": 1, "purchaseToken": "t", "sku": PRODUCT}
    )
    for notification in (test_ping, purchased):
        message_id = new_id("pubsub")
        first, again = [await push(http, google, notification, message_id) for _ in range(2)]
        assert (first.status_code, first.json()) == (200, {"outcome": "recorded"})
        assert (again.status_code, again.json()) == (200, {"outcome": "duplicate"})


async def test_a_void_pushed_before_the_redeem_reverses_the_purchase_as_it_is_redeemed(
    clients: Clients,
    play: wallet_pb2_grpc.WalletServiceStub,
    http: httpx.AsyncClient,
    google: FakeGoogle,
) -> None:
    """The notification overtook both the app's redeem and Google's own purchase state (still purchased)."""
    account_id = await create_account(clients)
    bought = google.buy(PRODUCT)
    waiting = await push(http, google, voided_notification(bought), new_id("pubsub"))
    assert waiting.json() == {"outcome": "waiting"}

    redeemed = await redeem(play, account_id, bought)

    assert (redeemed.purchase.status, redeemed.purchase.reversed_coins) == (w.PURCHASE_STATUS_REVERSED, 1321)
    assert redeemed.balance.coins == 0 == await balance(clients, account_id)


async def test_the_voided_purchases_pass_reverses_a_void_no_push_told_of(
    clients: Clients,
    play: wallet_pb2_grpc.WalletServiceStub,
    http: httpx.AsyncClient,
    google: FakeGoogle,
) -> None:
    account_id = await create_account(clients)
    bought = google.buy(PRODUCT)
    purchase_id = (await redeem(play, account_id, bought)).purchase.purchase_id

    google.void(bought, reason=6)  # friendly fraud, listed by the Voided Purchases API and never pushed

    reversed_ = await eventually(
        lambda: purchase_of(clients, purchase_id), lambda p: p.status == w.PURCHASE_STATUS_REVERSED
    )
    assert reversed_.reversed_coins == 1321
    assert await balance(clients, account_id) == 0
    late_push = await push(http, google, voided_notification(bought), new_id("pubsub"))
    assert late_push.json() == {"outcome": "nothing_left"}  # the pass and the push take effect once between them
    await asyncio.sleep(1.5)  # a few more passes list it again
    assert (await purchase_of(clients, purchase_id)).reversed_coins == 1321


async def test_a_refund_of_play_coins_gifted_to_a_creator_is_clawed_back(
    stack: Stack,
    clients: Clients,
    play: wallet_pb2_grpc.WalletServiceStub,
    http: httpx.AsyncClient,
    google: FakeGoogle,
) -> None:
    buyer, creator = await create_account(clients), await create_account(clients, prefix="creator")
    await make_eligible(clients, creator, destination="sandbox:ok-play")
    bought = google.buy(PRODUCT)
    await redeem(play, buyer, bought)
    await send(clients, buyer, await live_stream_id(clients, creator), "disco_ball", 1)  # 1,000 coins
    await wait_for_lifetime(clients, creator, 1000)

    refunded = await push(http, google, voided_notification(bought), new_id("pubsub"))

    assert refunded.json() == {"outcome": "applied"}
    after = await eventually(lambda: earnings(clients, creator), lambda e: e.clawed_back_diamonds >= 1000)
    assert (after.clawed_back_diamonds, after.available_diamonds) == (1000, 0)
    await wait_until_settled(stack)
    assert await all_violations(stack) == []


def test_the_replica_logged_no_key_and_no_token(play_wallet: ServiceProcess, google: FakeGoogle) -> None:
    """The service account's key, the access tokens Google issued, the purchase tokens and the push tokens (JWTs:
    "eyJ") never reach a log line."""
    logged = Path(play_wallet.log_path).read_text(errors="replace")
    assert "google_play_consumed" in logged  # the replica did log its work
    key_body = google.service_account.private_pem.decode().splitlines()[1]
    secrets = [key_body, "PRIVATE KEY", "eyJ", *google.access_tokens, *google.purchases]
    assert [secret for secret in secrets if secret in logged] == []
