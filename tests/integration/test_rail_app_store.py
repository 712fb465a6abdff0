"""The App Store rail on a real wallet: a replica of the suite's wallet with the App Store enabled (Sandbox, the
suite's own Apple-shaped root, bundle id and app id), StoreKit 2 transactions and App Store Server Notifications V2
signed the way Apple signs them (tests/support/rails/apple.py) and verified by app-store-server-library unmodified,
and a loopback App Store Server API for the consumption answers. Refunds reach the creators a buyer's gifts paid."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from coinstream.wallet.v1 import wallet_pb2 as w
from coinstream.wallet.v1 import wallet_pb2_grpc

from coinstream.testing.servers import stop_process
from services.wallet.stores.app_store import app_account_token
from tests.support.clients import SERVICE, Clients, new_id
from tests.support.errors import expect_error
from tests.support.factories import create_account, spend, wallet_balance
from tests.support.gifts import live_stream_id, send
from tests.support.payouts import earnings, eventually, wait_for_lifetime
from tests.support.rails import apple
from tests.support.stack import Stack

PRODUCT = "com.example.coinstream.coins1321"  # sells coins_1321 (COINSTREAM_STORE_PRODUCTS below)
PACKAGE_COINS = 1321
NOTIFICATIONS = "/notifications/app-store"


@dataclass
class AppleWallet:
    """The wallet replica that takes App Store purchases, Apple's signing chain, and the fake Server API."""

    wallet: wallet_pb2_grpc.WalletServiceStub
    http_url: str
    chain: apple.SigningChain
    server_api: apple.FakeServerApi
    log_path: Path

    def logged(self, event: str) -> list[dict[str, Any]]:
        """The replica's log lines (JSON) of this event."""
        lines = [json.loads(line) for line in self.log_path.read_text().splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("event") == event]

    def signed_transaction(self, transaction_id: str, **changes: Any) -> str:
        return self.chain.sign(apple.transaction(transaction_id, PRODUCT, **changes))

    async def redeem(
        self, account_id: str, signed: str, request_id: str | None = None
    ) -> w.RedeemStorePurchaseResponse:
        return await self.wallet.RedeemStorePurchase(
            w.RedeemStorePurchaseRequest(
                request_id=request_id or new_id("redeem"),
                account_id=account_id,
                store=w.STORE_APP_STORE,
                signed_transaction=signed,
            ),
            metadata=SERVICE,
        )

    async def notify(self, payload: dict[str, Any], chain: apple.SigningChain | None = None) -> httpx.Response:
        return await self.post(json.dumps({"signedPayload": (chain or self.chain).sign(payload)}).encode())

    async def post(self, body: bytes) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.http_url) as http:
            return await http.post(NOTIFICATIONS, content=body)

    async def refund(self, transaction_id: str, revocation_percentage: int | None = None) -> httpx.Response:
        """Apple's REFUND notification of the transaction (a partial one with a revocation percentage)."""
        return await self.notify(self.refund_notification(transaction_id, revocation_percentage))

    def refund_notification(self, transaction_id: str, revocation_percentage: int | None = None) -> dict[str, Any]:
        revoked = apple.refunded(apple.transaction(transaction_id, PRODUCT), revocation_percentage)
        return apple.notification("REFUND", self.chain.sign(revoked))

    async def swept(self, signed_payload: str) -> None:
        """Until the history pass has read the payload and handled it: a later sweep began after the page that
        served it (a sweep handles a page's notifications before it asks for anything else)."""

        start = len(self.server_api.history_requests)

        async def handled() -> bool:
            requests = self.server_api.history_requests[start:]
            served = next((i for i, r in enumerate(requests) if signed_payload in r.served), None)
            return served is not None and any(r.pagination_token is None for r in requests[served + 1 :])

        assert await eventually(handled, bool), "the history pass never handled the payload"


@pytest_asyncio.fixture(scope="module")
async def apple_wallet(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AppleWallet]:
    folder = tmp_path_factory.mktemp("app-store")
    chain, key = apple.signing_chain(), apple.ServerApiKey()
    root_file = folder / "AppleRootCA-G3.cer"
    root_file.write_bytes(chain.root_der)
    server_api = apple.FakeServerApi(key)
    settings = {
        "COINSTREAM_APP_STORE_ENABLED": "true",
        "COINSTREAM_APP_STORE_ENVIRONMENT": apple.ENVIRONMENT,
        "COINSTREAM_APP_STORE_BUNDLE_ID": apple.BUNDLE_ID,
        "COINSTREAM_APP_STORE_APP_APPLE_ID": str(apple.APP_APPLE_ID),
        "COINSTREAM_APP_STORE_ROOT_CERTIFICATE_FILES": str(root_file),
        "COINSTREAM_APP_STORE_API_KEY_ID": key.key_id,
        "COINSTREAM_APP_STORE_API_ISSUER_ID": key.issuer_id,
        "COINSTREAM_APP_STORE_API_PRIVATE_KEY_FILE": str(key.write(folder / "SubscriptionKey.p8")),
        "COINSTREAM_APP_STORE_API_BASE_URL": await server_api.start(),
        "COINSTREAM_APP_STORE_CUSTOMERS_CONSENT_TO_CONSUMPTION_DATA": "true",
        # The pass over Apple's notification history, every half second, three pages of a sweep at most per pass.
        "COINSTREAM_APP_STORE_HISTORY_INTERVAL_SECONDS": "0.5",
        "COINSTREAM_APP_STORE_HISTORY_PAGES_PER_PASS": "3",
        "COINSTREAM_STORE_PRODUCTS": json.dumps({PRODUCT: "coins_1321"}),
    }
    replica = await asyncio.to_thread(stack.start_replica, "wallet", settings)
    try:
        async with stack.aio_channel(replica.address) as channel:
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            yield AppleWallet(stub, replica.http_url, chain, server_api, replica.log_path)
    finally:
        assert replica.process is not None
        await asyncio.to_thread(stop_process, replica.process)
        await server_api.stop()


async def get_purchase(clients: Clients, purchase_id: str) -> w.Purchase:
    reply = await clients.wallet.GetPurchase(w.GetPurchaseRequest(purchase_id=purchase_id), metadata=SERVICE)
    return reply.purchase


async def coins(clients: Clients, account_id: str) -> int:
    return (await wallet_balance(clients, account_id)).coins


async def test_a_verified_transaction_credits_its_package_once_per_request(
    clients: Clients, apple_wallet: AppleWallet
) -> None:
    account_id, transaction_id = await create_account(clients), apple.new_transaction_id()
    signed = apple_wallet.signed_transaction(transaction_id, price=3_000_000, currency="JPY", storefront="JPN")
    request_id = new_id("redeem")

    redeemed = await apple_wallet.redeem(account_id, signed, request_id)
    replayed = await apple_wallet.redeem(account_id, signed, request_id)

    purchase = redeemed.purchase
    assert (purchase.coins, purchase.status) == (PACKAGE_COINS, w.PURCHASE_STATUS_COMPLETED)
    assert redeemed.balance.coins == purchase.coins + purchase.bonus_coins == await coins(clients, account_id)
    assert replayed == redeemed
    found = await get_purchase(clients, purchase.purchase_id)
    assert (found.rail, found.store, found.store_transaction_id) == ("app_store", w.STORE_APP_STORE, transaction_id)
    assert (found.price_paid.currency_code, found.price_paid.amount_minor, found.storefront) == ("JPY", 3000, "JP")
    assert (found.account_id, found.status, found.package_id) == (account_id, w.PURCHASE_STATUS_COMPLETED, "coins_1321")


async def test_a_transaction_credits_coins_once_whoever_presents_it(
    clients: Clients, apple_wallet: AppleWallet
) -> None:
    buyer, other = await create_account(clients), await create_account(clients)
    signed = apple_wallet.signed_transaction(apple.new_transaction_id())
    credited = (await apple_wallet.redeem(buyer, signed)).balance.coins

    for account_id in (buyer, other):  # a new request_id each time: not a replay
        await expect_error(
            apple_wallet.redeem(account_id, signed),
            grpc.StatusCode.ALREADY_EXISTS,
            "STORE_TRANSACTION_ALREADY_REDEEMED",
        )

    assert (await coins(clients, buyer), await coins(clients, other)) == (credited, 0)


async def test_a_transaction_bought_for_an_account_is_redeemed_by_that_account_only(
    clients: Clients, apple_wallet: AppleWallet
) -> None:
    """The app sets appAccountToken to app_account_token(account id): a leaked signed transaction is the buyer's."""
    buyer, other = await create_account(clients), await create_account(clients)
    genuine = apple.transaction(apple.new_transaction_id(), PRODUCT, appAccountToken=app_account_token(buyer))
    signed = apple_wallet.chain.sign(genuine)

    await expect_error(
        apple_wallet.redeem(other, signed), grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_VERIFICATION_FAILED"
    )

    assert (await apple_wallet.redeem(buyer, signed)).balance.coins > 0
    assert await coins(clients, other) == 0


@pytest.mark.parametrize(
    "forgery",
    ["foreign_chain", "wrong_bundle", "tampered_payload", "production_transaction", "refunded", "non_consumable"],
)
async def test_what_apple_did_not_sign_for_this_app_is_refused_and_moves_nothing(
    clients: Clients, apple_wallet: AppleWallet, forgery: str
) -> None:
    account_id, transaction_id = await create_account(clients), apple.new_transaction_id()
    genuine = apple.transaction(transaction_id, PRODUCT)
    signed = {
        "foreign_chain": lambda: apple.signing_chain("Forger").sign(genuine),
        "wrong_bundle": lambda: apple_wallet.chain.sign({**genuine, "bundleId": "com.example.other"}),
        "tampered_payload": lambda: apple.tampered(apple_wallet.chain.sign(genuine), productId="coins_16500"),
        "production_transaction": lambda: apple_wallet.chain.sign({**genuine, "environment": "Production"}),
        "refunded": lambda: apple_wallet.chain.sign(apple.refunded(genuine)),
        "non_consumable": lambda: apple_wallet.chain.sign({**genuine, "type": "Non-Consumable"}),
    }[forgery]()

    await expect_error(
        apple_wallet.redeem(account_id, signed), grpc.StatusCode.FAILED_PRECONDITION, "PAYMENT_VERIFICATION_FAILED"
    )

    assert await coins(clients, account_id) == 0
    # Nothing was recorded of the transaction: Apple's own signature of it still redeems.
    redeemed = await apple_wallet.redeem(account_id, apple_wallet.chain.sign(genuine))
    assert redeemed.purchase.store_transaction_id == transaction_id


@pytest.mark.parametrize("kind", ["REFUND", "REVOKE"])
async def test_a_refund_reverses_the_purchase_and_its_replay_changes_nothing(
    clients: Clients, apple_wallet: AppleWallet, kind: str
) -> None:
    account_id, transaction_id = await create_account(clients), apple.new_transaction_id()
    purchase = (await apple_wallet.redeem(account_id, apple_wallet.signed_transaction(transaction_id))).purchase
    revoked = apple.refunded(apple.transaction(transaction_id, PRODUCT))
    refund = apple.notification(kind, apple_wallet.chain.sign(revoked))

    first, again = await apple_wallet.notify(refund), await apple_wallet.notify(refund)

    assert (first.status_code, first.json()) == (200, {"outcome": "applied"})
    assert (again.status_code, again.json()) == (200, {"outcome": "duplicate"})
    found = await get_purchase(clients, purchase.purchase_id)
    assert (found.status, found.reversed_coins, found.reversed_bonus_coins) == (
        w.PURCHASE_STATUS_REVERSED,
        PACKAGE_COINS,
        purchase.bonus_coins,
    )
    assert await coins(clients, account_id) == 0


async def test_a_partial_refund_reverses_its_share(clients: Clients, apple_wallet: AppleWallet) -> None:
    account_id, transaction_id = await create_account(clients), apple.new_transaction_id()
    purchase = (await apple_wallet.redeem(account_id, apple_wallet.signed_transaction(transaction_id))).purchase

    answer = await apple_wallet.refund(transaction_id, revocation_percentage=25_000)  # 25 %, in milliunits

    assert answer.status_code == 200
    found = await get_purchase(clients, purchase.purchase_id)
    assert (found.status, found.reversed_coins) == (w.PURCHASE_STATUS_PARTIALLY_REVERSED, 331)  # 1,321 / 4, up
    assert (await apple_wallet.refund(transaction_id)).json() == {"outcome": "applied"}  # then all of it
    assert (await get_purchase(clients, purchase.purchase_id)).status == w.PURCHASE_STATUS_REVERSED


async def test_a_notification_apple_did_not_sign_is_refused_and_moves_nothing(
    clients: Clients, apple_wallet: AppleWallet
) -> None:
    account_id, transaction_id = await create_account(clients), apple.new_transaction_id()
    purchase = (await apple_wallet.redeem(account_id, apple_wallet.signed_transaction(transaction_id))).purchase
    credited = await coins(clients, account_id)
    forger = apple.signing_chain("Forger")
    revoked = apple.refunded(apple.transaction(transaction_id, PRODUCT))
    genuine_refund = apple.notification("REFUND", apple_wallet.chain.sign(revoked))

    forged = await apple_wallet.notify(apple.notification("REFUND", forger.sign(revoked)), chain=forger)
    forged_inside = await apple_wallet.notify(apple.notification("REFUND", forger.sign(revoked)))
    other_app = await apple_wallet.notify({**genuine_refund, "data": {**genuine_refund["data"], "bundleId": "x.y"}})
    tampered_payload = apple.tampered(apple_wallet.chain.sign(genuine_refund), notificationUUID="x")
    tampered = await apple_wallet.post(json.dumps({"signedPayload": tampered_payload}).encode())
    not_json, not_a_notification = await apple_wallet.post(b"{"), await apple_wallet.post(b'{"payload": 1}')

    assert [r.status_code for r in (forged, forged_inside, other_app, tampered)] == [401, 401, 401, 401]
    assert [r.status_code for r in (not_json, not_a_notification)] == [400, 400]
    assert await coins(clients, account_id) == credited
    assert (await get_purchase(clients, purchase.purchase_id)).status == w.PURCHASE_STATUS_COMPLETED
    # The genuine notification, with the very notificationUUID the forgeries carried, still applies.
    assert (await apple_wallet.notify(genuine_refund)).json() == {"outcome": "applied"}


async def test_a_refund_before_the_redeem_leaves_the_purchase_reversed(
    clients: Clients, apple_wallet: AppleWallet
) -> None:
    account_id, transaction_id = await create_account(clients), apple.new_transaction_id()
    signed = apple_wallet.signed_transaction(transaction_id)  # bought, and refunded before the app redeemed it

    early = await apple_wallet.refund(transaction_id)
    redeemed = await apple_wallet.redeem(account_id, signed)

    assert (early.status_code, early.json()) == (200, {"outcome": "waiting"})
    assert redeemed.purchase.status == w.PURCHASE_STATUS_REVERSED
    assert redeemed.balance.coins == 0 == await coins(clients, account_id)


async def test_a_refund_of_coins_gifted_takes_the_diamonds_back_from_the_creator(
    clients: Clients, apple_wallet: AppleWallet
) -> None:
    buyer, creator = await create_account(clients), await create_account(clients, prefix="creator")
    transaction_id = apple.new_transaction_id()
    await apple_wallet.redeem(buyer, apple_wallet.signed_transaction(transaction_id))
    await send(clients, buyer, await live_stream_id(clients, creator), "disco_ball", 1)  # 1,000 coins
    await wait_for_lifetime(clients, creator, 1000)

    assert (await apple_wallet.refund(transaction_id)).json() == {"outcome": "applied"}

    after = await eventually(lambda: earnings(clients, creator), lambda e: e.clawed_back_diamonds >= 1000)
    assert (after.lifetime_diamonds, after.clawed_back_diamonds, after.available_diamonds) == (1000, 1000, 0)
    assert await coins(clients, buyer) == 0


async def test_a_consumption_request_is_answered_with_what_the_coins_became(
    clients: Clients, apple_wallet: AppleWallet
) -> None:
    account_id, transaction_id = await create_account(clients), apple.new_transaction_id()
    redeemed = await apple_wallet.redeem(account_id, apple_wallet.signed_transaction(transaction_id))
    credited = redeemed.purchase.coins + redeemed.purchase.bonus_coins
    await spend(clients, account_id, 500)
    revoked = apple.transaction(transaction_id, PRODUCT)
    request = apple.notification(
        "CONSUMPTION_REQUEST", apple_wallet.chain.sign(revoked), consumptionRequestReason="UNINTENDED_PURCHASE"
    )

    first, again = await apple_wallet.notify(request), await apple_wallet.notify(request)

    assert (first.json(), again.json()) == ({"outcome": "recorded"}, {"outcome": "duplicate"})
    sent = apple_wallet.server_api.consumption[transaction_id]
    assert sent[0] == {
        "customerConsented": True,
        "sampleContentProvided": False,
        "deliveryStatus": "DELIVERED",
        "consumptionPercentage": 500 * 100_000 // credited,
    }
    assert apple_wallet.server_api.unauthorized == 0
    assert await coins(clients, account_id) == credited - 500  # asking moves nothing


async def test_notifications_that_move_nothing_are_recorded_once(clients: Clients, apple_wallet: AppleWallet) -> None:
    account_id, transaction_id = await create_account(clients), apple.new_transaction_id()
    await apple_wallet.redeem(account_id, apple_wallet.signed_transaction(transaction_id))
    credited = await coins(clients, account_id)
    signed = apple_wallet.signed_transaction(transaction_id)
    test = apple.notification("TEST", None)
    declined = apple.notification("REFUND_DECLINED", signed)
    reversed_refund = apple.notification("REFUND_REVERSED", signed)
    charged = apple.notification("ONE_TIME_CHARGE", signed)

    answers = [await apple_wallet.notify(n) for n in (test, declined, reversed_refund, charged, test)]

    assert [(a.status_code, a.json()["outcome"]) for a in answers] == [(200, "recorded")] * 4 + [(200, "duplicate")]
    assert await coins(clients, account_id) == credited


# --- the notification history pass --------------------------------------------------------------------------------


async def until_status(clients: Clients, purchase_id: str, status: int) -> w.Purchase:
    found = await eventually(lambda: get_purchase(clients, purchase_id), lambda p: p.status == status)
    assert found.status == status
    return found


async def test_a_refund_apple_never_delivered_is_applied_by_the_history_pass(
    clients: Clients, apple_wallet: AppleWallet
) -> None:
    account_id, transaction_id = await create_account(clients), apple.new_transaction_id()
    purchase = (await apple_wallet.redeem(account_id, apple_wallet.signed_transaction(transaction_id))).purchase
    refund = apple_wallet.refund_notification(transaction_id)

    apple_wallet.server_api.add_to_history(apple_wallet.chain.sign(refund))  # its pushes all failed

    found = await until_status(clients, purchase.purchase_id, w.PURCHASE_STATUS_REVERSED)
    assert (found.reversed_coins, found.reversed_bonus_coins) == (PACKAGE_COINS, purchase.bonus_coins)
    assert await coins(clients, account_id) == 0
    # The push that finally arrives (the same notificationUUID) finds it applied.
    assert (await apple_wallet.notify(refund)).json() == {"outcome": "duplicate"}
    requests = apple_wallet.server_api.history_requests
    assert all(r.body["onlyFailures"] is True for r in requests)
    assert apple_wallet.server_api.unauthorized == 0


async def test_a_notification_both_pushed_and_in_the_history_takes_effect_once(
    clients: Clients, apple_wallet: AppleWallet
) -> None:
    account_id, transaction_id = await create_account(clients), apple.new_transaction_id()
    purchase = (await apple_wallet.redeem(account_id, apple_wallet.signed_transaction(transaction_id))).purchase
    refund = apple_wallet.refund_notification(transaction_id, revocation_percentage=50_000)  # half
    signed = apple_wallet.chain.sign(refund)

    pushed = await apple_wallet.post(json.dumps({"signedPayload": signed}).encode())
    applied_by_the_pass = len(apple_wallet.logged("app_store_history_notification_applied"))
    apple_wallet.server_api.add_to_history(signed)  # Apple never saw our 2xx: it keeps retrying, and lists it
    await apple_wallet.swept(signed)

    assert pushed.json() == {"outcome": "applied"}
    # The pass found it a duplicate (it logs what it applied: nothing more).
    assert len(apple_wallet.logged("app_store_history_notification_applied")) == applied_by_the_pass
    found = await get_purchase(clients, purchase.purchase_id)
    assert (found.status, found.reversed_coins) == (w.PURCHASE_STATUS_PARTIALLY_REVERSED, (PACKAGE_COINS + 1) // 2)
    after_push = await coins(clients, account_id)
    await apple_wallet.swept(signed)  # read again by a later sweep (the overlap): still nothing more
    assert await coins(clients, account_id) == after_push
    assert (await get_purchase(clients, purchase.purchase_id)).reversed_coins == (PACKAGE_COINS + 1) // 2


async def test_a_forged_payload_in_the_history_is_skipped_and_the_rest_applied(
    clients: Clients, apple_wallet: AppleWallet
) -> None:
    account_id = await create_account(clients)
    forged_id, genuine_id = apple.new_transaction_id(), apple.new_transaction_id()
    forged_purchase = (await apple_wallet.redeem(account_id, apple_wallet.signed_transaction(forged_id))).purchase
    genuine_purchase = (await apple_wallet.redeem(account_id, apple_wallet.signed_transaction(genuine_id))).purchase
    forger = apple.signing_chain("Forger")
    revoked = apple.refunded(apple.transaction(forged_id, PRODUCT))
    forged = forger.sign(apple.notification("REFUND", forger.sign(revoked)))
    genuine = apple_wallet.chain.sign(apple_wallet.refund_notification(genuine_id))
    real_refund = apple_wallet.chain.sign(apple_wallet.refund_notification(forged_id))
    tampered = apple.tampered(real_refund, notificationUUID="x")  # its signature no longer matches

    for payload in (forged, tampered, "not a JWS", genuine):
        apple_wallet.server_api.add_to_history(payload)  # on one page, the genuine refund last

    await until_status(clients, genuine_purchase.purchase_id, w.PURCHASE_STATUS_REVERSED)
    await apple_wallet.swept(forged)
    assert (await get_purchase(clients, forged_purchase.purchase_id)).status == w.PURCHASE_STATUS_COMPLETED
    assert await coins(clients, account_id) == forged_purchase.coins + forged_purchase.bonus_coins
    refusals = apple_wallet.logged("app_store_history_notification_refused")
    assert {line["status"] for line in refusals} == {401}
    log = apple_wallet.log_path.read_text()
    assert all(payload not in log for payload in (forged, tampered, genuine))  # bearer proofs: never logged


async def test_the_history_pass_follows_the_pagination_token(clients: Clients, apple_wallet: AppleWallet) -> None:
    account_id = await create_account(clients)
    transaction_ids = [apple.new_transaction_id(), apple.new_transaction_id()]
    purchases = [
        (await apple_wallet.redeem(account_id, apple_wallet.signed_transaction(t))).purchase for t in transaction_ids
    ]
    payloads = [apple_wallet.chain.sign(apple_wallet.refund_notification(t)) for t in transaction_ids]
    server_api = apple_wallet.server_api
    server_api.page_size = 1
    try:
        for payload in payloads:
            server_api.add_to_history(payload)
        for purchase in purchases:
            await until_status(clients, purchase.purchase_id, w.PURCHASE_STATUS_REVERSED)
    finally:
        server_api.page_size = 20

    pages = {p: next(r for r in server_api.history_requests if p in r.served) for p in payloads}
    assert pages[payloads[1]].pagination_token is not None  # the second page, asked for with Apple's token
    assert pages[payloads[0]] is not pages[payloads[1]]
    assert await coins(clients, account_id) == 0
