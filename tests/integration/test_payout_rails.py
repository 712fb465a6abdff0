"""The real payout rails against loopback fakes of Stripe and PayPal (tests/support/rails/): a payouts replica of
the shared stack configured with each provider pays the withdrawals requested through it (each withdrawal records its
provider, so the stack's own payouts process, with the sandbox, never touches them), through SUBMITTED, once per
withdrawal even when the provider's answer is lost; failed and returned payouts give the diamonds back once; webhooks
verify with the providers' real signatures (Stripe's library, PayPal's RSA certificate) and apply once."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from coinstream.payouts.v1 import payouts_pb2, payouts_pb2_grpc

from coinstream.testing.servers import stop_process
from coinstream.testing.stack import ServiceProcess
from tests.support.clients import SERVICE, Clients, new_id
from tests.support.errors import error_reason, refused
from tests.support.payouts import (
    assert_ledger_consistent,
    earnings,
    eventually,
    fetch,
    fund,
    get_withdrawal,
    make_eligible,
)
from tests.support.rails.paypal import FakePayPal, new_key
from tests.support.rails.stripe_connect import FakeStripe
from tests.support.stack import Stack

pytestmark = pytest.mark.slow

S = payouts_pb2
# Short provider calls and frequent looks, so a lost answer is asked about again within a second or two.
FAST_WORKER = {
    "COINSTREAM_PAYOUTS_PROVIDER_TIMEOUT_SECONDS": "1",
    "COINSTREAM_PAYOUTS_WORKER_INTERVAL_SECONDS": "0.3",
}


@dataclass
class Rail:
    replica: ServiceProcess
    payouts: payouts_pb2_grpc.PayoutServiceStub
    http: httpx.AsyncClient
    secrets: tuple[str, ...]

    async def withdraw(self, creator_id: str, diamonds: int) -> S.Withdrawal:
        request = S.RequestWithdrawalRequest(request_id=new_id("req"), creator_id=creator_id, diamonds=diamonds)
        return (await self.payouts.RequestWithdrawal(request, metadata=SERVICE)).withdrawal

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return await self.http.post(f"{self.replica.http_url}{path}", content=body, headers=headers)


async def started_rail(stack: Stack, env: dict[str, str], secrets: tuple[str, ...]) -> Rail:
    replica = await asyncio.to_thread(stack.start_replica, "payouts", {**FAST_WORKER, **env})
    channel = stack.aio_channel(replica.address)
    return Rail(replica, payouts_pb2_grpc.PayoutServiceStub(channel), httpx.AsyncClient(timeout=10), secrets)


async def stopped(rail: Rail) -> None:
    await rail.http.aclose()
    if rail.replica.process is not None:
        await asyncio.to_thread(stop_process, rail.replica.process)
    logged = rail.replica.log_path.read_text(errors="replace")
    assert not [secret for secret in rail.secrets if secret in logged], "a rail's secret reached the log"


def secret_file(directory: Path, name: str, value: str) -> str:
    path = directory / name
    path.write_text(value + "\n")
    return str(path)


@pytest_asyncio.fixture(scope="module")
async def stripe(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[FakeStripe, Rail]]:
    fake = await FakeStripe(answer_delay_seconds=3.0).start()
    directory = tmp_path_factory.mktemp("stripe")
    env = {
        "COINSTREAM_PAYOUT_PROVIDER": "stripe_connect",
        "COINSTREAM_STRIPE_CONNECT_SECRET_KEY_FILE": secret_file(directory, "secret_key", fake.secret_key),
        "COINSTREAM_STRIPE_CONNECT_WEBHOOK_SECRET_FILE": secret_file(directory, "webhook", fake.webhook_secret),
        "COINSTREAM_STRIPE_CONNECT_API_BASE": fake.url,
        "COINSTREAM_STRIPE_CONNECT_EVENTS_INTERVAL_SECONDS": "0.5",  # the catch-up pass over its events list
    }
    rail = await started_rail(stack, env, (fake.secret_key, fake.webhook_secret))
    try:
        yield fake, rail
    finally:
        await stopped(rail)
        await fake.stop()


@pytest_asyncio.fixture(scope="module")
async def paypal(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[FakePayPal, Rail]]:
    fake = await FakePayPal(answer_delay_seconds=3.0).start()
    directory = tmp_path_factory.mktemp("paypal")
    env = {
        "COINSTREAM_PAYOUT_PROVIDER": "paypal",
        "COINSTREAM_PAYPAL_CLIENT_ID": fake.client_id,
        "COINSTREAM_PAYPAL_CLIENT_SECRET_FILE": secret_file(directory, "client_secret", fake.client_secret),
        "COINSTREAM_PAYPAL_WEBHOOK_ID": fake.webhook_id,
        "COINSTREAM_PAYPAL_API_BASE": fake.url,
        "COINSTREAM_PAYPAL_CERT_HOSTS": '["127.0.0.1"]',
    }
    rail = await started_rail(stack, env, (fake.client_secret,))
    try:
        yield fake, rail
    finally:
        await stopped(rail)
        await fake.stop()


# --- helpers ---------------------------------------------------------------------------------------------------------


async def creator_with(clients: Clients, destination: str, diamonds: int = 6000) -> str:
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id, destination=destination)
    await fund(clients, creator_id, diamonds)
    return creator_id


async def status_becomes(clients: Clients, withdrawal_id: str, status: int, seconds: float = 20.0) -> S.Withdrawal:
    found = await eventually(lambda: get_withdrawal(clients, withdrawal_id), lambda w: w.status == status, seconds)
    assert S.WithdrawalStatus.Name(found.status) == S.WithdrawalStatus.Name(status), found
    return found


async def balances(clients: Clients, creator_id: str) -> tuple[int, int]:
    found = await earnings(clients, creator_id)
    return found.available_diamonds, found.reserved_diamonds


async def ledger_kinds(stack: Stack, withdrawal_id: str) -> list[str]:
    rows = await fetch(
        stack, "SELECT kind FROM ledger_transactions WHERE reference = $1 ORDER BY created_at, kind", withdrawal_id
    )
    return [row["kind"] for row in rows]


async def stored_status(stack: Stack, withdrawal_id: str) -> str:
    [row] = await fetch(stack, "SELECT status FROM withdrawals WHERE withdrawal_id = $1", withdrawal_id)
    return str(row["status"])


async def notifications(stack: Stack, notification_id: str) -> int:
    rows = await fetch(stack, "SELECT 1 FROM payout_notifications WHERE notification_id = $1", notification_id)
    return len(rows)


async def cancel_refused(rail: Rail, withdrawal_id: str) -> None:
    request = S.CancelWithdrawalRequest(request_id=new_id("req"), withdrawal_id=withdrawal_id)
    error = await refused(rail.payouts.CancelWithdrawal(request, metadata=SERVICE))
    assert (error.code(), error_reason(error)) == (grpc.StatusCode.FAILED_PRECONDITION, "WITHDRAWAL_NOT_CANCELABLE")


def event_id(body: bytes) -> str:
    found: Any = json.loads(body)
    return str(found["id"])


async def list_calls(fake: FakeStripe) -> int:
    return fake.events.list_calls


def connected_account(prefix: str) -> str:
    """A Stripe connected account id of its own (the fake refuses those starting acct_refuse)."""
    return f"acct_{prefix}{secrets.token_hex(6)}"


# --- Stripe Connect --------------------------------------------------------------------------------------------------


async def test_stripe_pays_a_withdrawal_with_one_transfer(
    stack: Stack, clients: Clients, stripe: tuple[FakeStripe, Rail]
) -> None:
    fake, rail = stripe
    account = connected_account("")
    creator_id = await creator_with(clients, account)
    withdrawal = await rail.withdraw(creator_id, 4000)
    paid = await status_becomes(clients, withdrawal.withdrawal_id, S.WITHDRAWAL_STATUS_PAID)
    assert paid.failure_reason == ""
    transfer = fake.transfer_of(withdrawal.withdrawal_id)
    assert (transfer["amount"], transfer["currency"], transfer["destination"]) == (2000, "usd", account)
    assert transfer["metadata"] == {"withdrawal_id": withdrawal.withdrawal_id}
    assert fake.transfers_per_key[withdrawal.withdrawal_id] == 1
    assert await balances(clients, creator_id) == (2000, 0)
    assert await ledger_kinds(stack, withdrawal.withdrawal_id) == ["withdrawal_reserve", "withdrawal_paid"]
    await assert_ledger_consistent(stack)


async def test_stripe_answer_lost_mid_submit_is_asked_for_and_paid_once(
    stack: Stack, clients: Clients, stripe: tuple[FakeStripe, Rail]
) -> None:
    fake, rail = stripe
    creator_id = await creator_with(clients, connected_account("lostanswer"))
    fake.lose_next_answer = "timeout"  # the transfer is made; its answer comes after the client gave up
    withdrawal = await rail.withdraw(creator_id, 2000)
    await status_becomes(clients, withdrawal.withdrawal_id, S.WITHDRAWAL_STATUS_SUBMITTED)
    await status_becomes(clients, withdrawal.withdrawal_id, S.WITHDRAWAL_STATUS_PAID)
    assert fake.transfers_per_key[withdrawal.withdrawal_id] == 1
    assert len([t for t in fake.transfers.values() if t["transfer_group"] == withdrawal.withdrawal_id]) == 1
    assert await balances(clients, creator_id) == (4000, 0)
    await assert_ledger_consistent(stack)


async def test_stripe_outage_keeps_a_submitted_withdrawal_uncancelable_until_stripe_answers(
    stack: Stack, clients: Clients, stripe: tuple[FakeStripe, Rail]
) -> None:
    fake, rail = stripe
    creator_id = await creator_with(clients, connected_account("outage"))
    fake.down = True
    try:
        withdrawal = await rail.withdraw(creator_id, 2000)
        await status_becomes(clients, withdrawal.withdrawal_id, S.WITHDRAWAL_STATUS_SUBMITTED)
        await cancel_refused(rail, withdrawal.withdrawal_id)
        await asyncio.sleep(1.5)  # looked at again and again: never guessed, never canceled
        assert (await get_withdrawal(clients, withdrawal.withdrawal_id)).status == S.WITHDRAWAL_STATUS_SUBMITTED
        assert await balances(clients, creator_id) == (4000, 2000)
    finally:
        fake.down = False
    await status_becomes(clients, withdrawal.withdrawal_id, S.WITHDRAWAL_STATUS_PAID)
    assert fake.transfers_per_key[withdrawal.withdrawal_id] == 1
    await assert_ledger_consistent(stack)


async def test_stripe_refusing_the_transfer_fails_the_withdrawal_with_its_diamonds_back(
    stack: Stack, clients: Clients, stripe: tuple[FakeStripe, Rail]
) -> None:
    _, rail = stripe
    creator_id = await creator_with(clients, connected_account("refuse"))
    withdrawal = await rail.withdraw(creator_id, 2000)
    failed = await status_becomes(clients, withdrawal.withdrawal_id, S.WITHDRAWAL_STATUS_FAILED)
    assert "account_invalid" in failed.failure_reason
    assert await balances(clients, creator_id) == (6000, 0)
    assert await ledger_kinds(stack, withdrawal.withdrawal_id) == ["withdrawal_reserve", "withdrawal_returned"]
    await assert_ledger_consistent(stack)


async def test_stripe_reversed_transfer_gives_the_diamonds_back_once(
    stack: Stack, clients: Clients, stripe: tuple[FakeStripe, Rail]
) -> None:
    fake, rail = stripe
    creator_id = await creator_with(clients, connected_account("reversed"))
    withdrawal = await rail.withdraw(creator_id, 4000)
    await status_becomes(clients, withdrawal.withdrawal_id, S.WITHDRAWAL_STATUS_PAID)
    body = fake.event("transfer.reversed", fake.reverse(withdrawal.withdrawal_id))
    headers = fake.signed(body)
    answer = await rail.post("/webhooks/stripe", body, headers)
    assert (answer.status_code, answer.json()) == (200, {"outcome": "applied"})
    returned = await get_withdrawal(clients, withdrawal.withdrawal_id)
    assert returned.status == S.WITHDRAWAL_STATUS_FAILED  # the API's status for a payout given back
    assert "reversed" in returned.failure_reason
    assert await stored_status(stack, withdrawal.withdrawal_id) == "returned"
    assert await balances(clients, creator_id) == (6000, 0)

    replayed = await rail.post("/webhooks/stripe", body, headers)  # Stripe's retry of the same event
    assert (replayed.status_code, replayed.json()) == (200, {"outcome": "duplicate"})
    again = fake.event("transfer.updated", fake.transfer_of(withdrawal.withdrawal_id))  # another event, same news
    assert (await rail.post("/webhooks/stripe", again, fake.signed(again))).json() == {"outcome": "no_effect"}
    assert await balances(clients, creator_id) == (6000, 0)
    kinds = await ledger_kinds(stack, withdrawal.withdrawal_id)
    assert sorted(kinds) == ["payout_returned", "withdrawal_paid", "withdrawal_reserve"]
    await assert_ledger_consistent(stack)


async def test_stripe_reversed_transfer_whose_webhook_never_came_gives_the_diamonds_back_once(
    stack: Stack, clients: Clients, stripe: tuple[FakeStripe, Rail]
) -> None:
    fake, rail = stripe
    creator_id = await creator_with(clients, connected_account("caughtup"))
    withdrawal = await rail.withdraw(creator_id, 4000)
    await status_becomes(clients, withdrawal.withdrawal_id, S.WITHDRAWAL_STATUS_PAID)

    body = fake.publish("transfer.reversed", fake.reverse(withdrawal.withdrawal_id))  # listed, never pushed

    returned = await status_becomes(clients, withdrawal.withdrawal_id, S.WITHDRAWAL_STATUS_FAILED)
    assert "reversed" in returned.failure_reason
    assert await stored_status(stack, withdrawal.withdrawal_id) == "returned"
    assert await balances(clients, creator_id) == (6000, 0)
    swept = fake.events.list_calls
    assert (
        await eventually(lambda: list_calls(fake), lambda calls: calls >= swept + 2, seconds=10) >= swept + 2
    )  # listed again: once
    late = await rail.post("/webhooks/stripe", body, fake.signed(body))  # Stripe's webhook after all
    assert (late.status_code, late.json()) == (200, {"outcome": "duplicate"})
    assert await notifications(stack, event_id(body)) == 1
    assert await balances(clients, creator_id) == (6000, 0)
    kinds = await ledger_kinds(stack, withdrawal.withdrawal_id)
    assert sorted(kinds) == ["payout_returned", "withdrawal_paid", "withdrawal_reserve"]
    await assert_ledger_consistent(stack)


async def test_stripe_forged_webhooks_are_refused_and_move_nothing(
    stack: Stack, clients: Clients, stripe: tuple[FakeStripe, Rail]
) -> None:
    fake, rail = stripe
    creator_id = await creator_with(clients, connected_account("forged"))
    withdrawal = await rail.withdraw(creator_id, 2000)
    await status_becomes(clients, withdrawal.withdrawal_id, S.WITHDRAWAL_STATUS_PAID)
    reversed_transfer = {**fake.transfer_of(withdrawal.withdrawal_id), "reversed": True}
    forgeries = {
        "another secret": lambda body: fake.signed(body, secret="whsec_" + "0" * 32),
        "a stale timestamp": lambda body: fake.signed(body, timestamp=int(datetime.now(UTC).timestamp()) - 400),
        "no signature": lambda body: {"Content-Type": "application/json"},
    }
    for forgery, sign in forgeries.items():
        body = fake.event("transfer.reversed", reversed_transfer)
        answer = await rail.post("/webhooks/stripe", body, sign(body))
        assert answer.status_code == 401, forgery
        assert await notifications(stack, event_id(body)) == 0, forgery
    garbage = b"not json"
    assert (await rail.post("/webhooks/stripe", garbage, fake.signed(garbage))).status_code == 400
    assert await stored_status(stack, withdrawal.withdrawal_id) == "paid"
    assert await balances(clients, creator_id) == (4000, 0)


# --- PayPal Payouts --------------------------------------------------------------------------------------------------


def email(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}@example.com"


async def test_paypal_pays_a_withdrawal_with_one_batch(
    stack: Stack, clients: Clients, paypal: tuple[FakePayPal, Rail]
) -> None:
    fake, rail = paypal
    receiver = email("creator")
    creator_id = await creator_with(clients, receiver)
    withdrawal = await rail.withdraw(creator_id, 4000)
    await status_becomes(clients, withdrawal.withdrawal_id, S.WITHDRAWAL_STATUS_PAID)
    batch = fake.batch_of(withdrawal.withdrawal_id)
    item = batch["items"][0]["payout_item"]
    assert (item["recipient_type"], item["receiver"], item["amount"]) == (
        "EMAIL",
        receiver,
        {"value": "20.00", "currency": "USD"},
    )
    assert item["sender_item_id"] == withdrawal.withdrawal_id
    assert fake.batches_per_sender_batch_id[withdrawal.withdrawal_id] == 1
    assert await balances(clients, creator_id) == (2000, 0)
    await assert_ledger_consistent(stack)


@pytest.mark.parametrize("lost", ["timeout", "500"])
async def test_paypal_answer_lost_mid_submit_is_asked_for_and_paid_once(
    stack: Stack, clients: Clients, paypal: tuple[FakePayPal, Rail], lost: str
) -> None:
    fake, rail = paypal
    creator_id = await creator_with(clients, email("lost"))
    fake.lose_next_answer = lost  # the batch is made; its answer never arrives whole
    # After a 500, the retry meets the sender_batch_id refusal and follows its link to the original batch.
    fake.honour_request_id = lost == "timeout"
    try:
        withdrawal = await rail.withdraw(creator_id, 2000)
        await status_becomes(clients, withdrawal.withdrawal_id, S.WITHDRAWAL_STATUS_SUBMITTED)
        await status_becomes(clients, withdrawal.withdrawal_id, S.WITHDRAWAL_STATUS_PAID)
    finally:
        fake.honour_request_id = True
    assert fake.batches_per_sender_batch_id[withdrawal.withdrawal_id] == 1
    assert await balances(clients, creator_id) == (4000, 0)
    await assert_ledger_consistent(stack)


async def test_paypal_denied_payout_fails_with_the_diamonds_back(
    stack: Stack, clients: Clients, paypal: tuple[FakePayPal, Rail]
) -> None:
    _, rail = paypal
    creator_id = await creator_with(clients, email("denied"))
    withdrawal = await rail.withdraw(creator_id, 2000)
    failed = await status_becomes(clients, withdrawal.withdrawal_id, S.WITHDRAWAL_STATUS_FAILED)
    assert "denied" in failed.failure_reason
    assert await balances(clients, creator_id) == (6000, 0)
    await assert_ledger_consistent(stack)


async def test_paypal_unclaimed_payout_waits_then_its_return_gives_the_diamonds_back_once(
    stack: Stack, clients: Clients, paypal: tuple[FakePayPal, Rail]
) -> None:
    fake, rail = paypal
    creator_id = await creator_with(clients, email("unclaimed"))
    withdrawal = await rail.withdraw(creator_id, 2000)
    await status_becomes(clients, withdrawal.withdrawal_id, S.WITHDRAWAL_STATUS_SUBMITTED)
    await cancel_refused(rail, withdrawal.withdrawal_id)

    # Unclaimed: still the recipient's to claim, so nothing moves yet.
    unclaimed = fake.event("PAYMENT.PAYOUTS-ITEM.UNCLAIMED", fake.batch_of(withdrawal.withdrawal_id)["items"][0])
    answer = await rail.post("/webhooks/paypal", unclaimed, fake.signed(unclaimed))
    assert (answer.status_code, answer.json()) == (200, {"outcome": "no_effect"})
    assert (await get_withdrawal(clients, withdrawal.withdrawal_id)).status == S.WITHDRAWAL_STATUS_SUBMITTED
    assert await balances(clients, creator_id) == (4000, 2000)

    # 30 days later PayPal returns it.
    returned = fake.event("PAYMENT.PAYOUTS-ITEM.RETURNED", fake.set_item_status(withdrawal.withdrawal_id, "RETURNED"))
    headers = fake.signed(returned)
    answer = await rail.post("/webhooks/paypal", returned, headers)
    assert (answer.status_code, answer.json()) == (200, {"outcome": "applied"})
    failed = await get_withdrawal(clients, withdrawal.withdrawal_id)
    assert (failed.status, failed.failure_reason) == (
        S.WITHDRAWAL_STATUS_FAILED,
        "PayPal: the payout item was returned",
    )
    assert await balances(clients, creator_id) == (6000, 0)
    replayed = await rail.post("/webhooks/paypal", returned, headers)
    assert (replayed.status_code, replayed.json()) == (200, {"outcome": "duplicate"})
    assert await balances(clients, creator_id) == (6000, 0)
    await assert_ledger_consistent(stack)


async def test_paypal_payout_returned_after_it_was_paid_gives_the_diamonds_back_once(
    stack: Stack, clients: Clients, paypal: tuple[FakePayPal, Rail]
) -> None:
    fake, rail = paypal
    creator_id = await creator_with(clients, email("refunded"))
    withdrawal = await rail.withdraw(creator_id, 4000)
    await status_becomes(clients, withdrawal.withdrawal_id, S.WITHDRAWAL_STATUS_PAID)
    item = fake.set_item_status(withdrawal.withdrawal_id, "RETURNED")
    for attempt in range(2):  # PayPal's retry: the same event id, signed again
        body = fake.event("PAYMENT.PAYOUTS-ITEM.RETURNED", item, event_id=f"WH-RETURNED-{withdrawal.withdrawal_id}")
        answer = await rail.post("/webhooks/paypal", body, fake.signed(body))
        assert answer.json() == {"outcome": "duplicate" if attempt else "applied"}
    assert await stored_status(stack, withdrawal.withdrawal_id) == "returned"
    assert await balances(clients, creator_id) == (6000, 0)
    assert (await ledger_kinds(stack, withdrawal.withdrawal_id)).count("payout_returned") == 1
    await assert_ledger_consistent(stack)


async def test_paypal_forged_webhooks_are_refused_and_move_nothing(
    stack: Stack, clients: Clients, paypal: tuple[FakePayPal, Rail]
) -> None:
    fake, rail = paypal
    creator_id = await creator_with(clients, email("forged"))
    withdrawal = await rail.withdraw(creator_id, 2000)
    await status_becomes(clients, withdrawal.withdrawal_id, S.WITHDRAWAL_STATUS_PAID)
    item = {**fake.batch_of(withdrawal.withdrawal_id)["items"][0], "transaction_status": "RETURNED"}
    localhost_cert = fake.cert_url.replace("127.0.0.1", "localhost")  # the same certificate, on a host not allowed
    forgeries = {
        "another key": lambda body: fake.signed(body, key=new_key()),
        "a foreign cert host": lambda body: fake.signed(body, cert_url="https://api.paypal.com.evil.example/cert.pem"),
        "a cert host not allowed": lambda body: fake.signed(body, cert_url=localhost_cert),
        "a stale transmission": lambda body: fake.signed(body, sent_at=datetime.now(UTC) - timedelta(minutes=10)),
        "no signature": lambda body: {"Content-Type": "application/json"},
    }
    for forgery, sign in forgeries.items():
        body = fake.event("PAYMENT.PAYOUTS-ITEM.RETURNED", item)
        answer = await rail.post("/webhooks/paypal", body, sign(body))
        assert answer.status_code == 401, forgery
        assert await notifications(stack, event_id(body)) == 0, forgery
    tampered = fake.event("PAYMENT.PAYOUTS-ITEM.RETURNED", item)
    headers = fake.signed(tampered)
    assert (await rail.post("/webhooks/paypal", tampered.replace(b"RETURNED", b"REFUNDED"), headers)).status_code == 401
    assert await stored_status(stack, withdrawal.withdrawal_id) == "paid"
    assert await balances(clients, creator_id) == (4000, 0)
