"""`coinstream reconcile` (python -m services.reconcile): 0 and a clean report on the suite's stack, and each kind of
discrepancy found — planted inside a transaction that is rolled back, so the stack stays consistent, or, for a credit
of a GiftSent no gift sent, made up on the synthetic stack (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime, timedelta

import asyncpg

from coinstream.testing.servers import free_port, stop_process
from services.reconcile.checks import (
    Thresholds,
    completed_gifts,
    credits_without_gifts,
    gift_payments,
    stuck_work,
    wallet_ledger,
)
from tests.support.clients import Clients, new_id
from tests.support.factories import buy, create_account
from tests.support.gifts import live_stream_id
from tests.support.invariants import wait_until_settled
from tests.support.payouts import gift_sent, publish, wait_for_lifetime
from tests.support.stack import REPO_ROOT, Stack


async def run_reconcile(
    stack: Stack, *args: str, module: str = "services.reconcile", command: str = "", **urls: str
) -> subprocess.CompletedProcess[str]:
    """The command as an operator runs it (`python -m services.reconcile`, or `coinstream reconcile` through
    devstack.cli), against the stack's databases or the URLs given by service name."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COINSTREAM_")}
    for name in ("wallet", "gifts", "payouts"):
        env[f"COINSTREAM_{name.upper()}_DATABASE_URL"] = urls.get(name) or stack.database_url(name)
    env.update(stack.operator_environment())  # NATS as an operator: reconcile reads the dead letters
    argv = [sys.executable, "-m", module, *([command] if command else []), *args]
    return await asyncio.to_thread(
        subprocess.run, argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )


async def test_reconcile_reports_no_discrepancy_on_a_consistent_stack(stack: Stack, clients: Clients) -> None:
    await buy(clients, await create_account(clients))
    await wait_until_settled(stack)
    done = await run_reconcile(stack, "--json", "--settlement-grace-seconds", "0")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert (report["ok"], report["discrepancies"], report["dead_letters_unknown"]) == (True, [], False)

    text = await run_reconcile(stack, module="devstack.cli", command="reconcile")
    assert text.returncode == 0 and "0 discrepancies" in text.stdout, text.stdout + text.stderr


async def test_reconcile_exits_2_when_a_database_is_unreachable(stack: Stack) -> None:
    done = await run_reconcile(stack, wallet="postgresql://postgres@127.0.0.1:1/nowhere")
    assert done.returncode == 2 and "cannot read the databases" in done.stderr


async def test_a_balance_that_drifted_from_its_postings_is_reported(stack: Stack, clients: Clients) -> None:
    account_id = await create_account(clients)
    await buy(clients, account_id)
    conn = await asyncpg.connect(stack.database_url("wallet"))
    try:
        async with conn.transaction():
            assert await wallet_ledger(conn) == []
            await conn.execute("UPDATE ledger_accounts SET coins = coins + 5 WHERE ledger_account_id = $1", account_id)
            found = {(d.check, d.subject) for d in await wallet_ledger(conn)}
            assert found == {("wallet_ledger", account_id), ("wallet_ledger", "coins issued")}
            raise Rollback
    except Rollback:
        pass
    finally:
        await conn.close()


async def test_a_completed_gift_without_its_wallet_spend_is_reported(stack: Stack, clients: Clients) -> None:
    stream_id = await live_stream_id(clients)
    wallet = await asyncpg.connect(stack.database_url("wallet"))
    gifts = await asyncpg.connect(stack.database_url("gifts"))
    gift_id = new_id("gtx")
    try:
        async with gifts.transaction():
            await gifts.execute(
                "INSERT INTO gift_transactions (gift_transaction_id, request_id, sender_id, recipient_id, stream_id,"
                " gift_id, quantity, coin_price, coins, status, wallet_transaction_id, sender_balance_coins,"
                " finished_at, combo_count)"
                " SELECT $1, $1, 'nobody', creator_id, stream_id, 'rose', 1, 1, 1, 'completed', 'txn_none', 0, now(), 1"
                " FROM live_streams WHERE stream_id = $2",
                gift_id,
                stream_id,
            )
            settled = Thresholds(settlement_grace_seconds=0)  # the planted gift is not "recent"
            completed = await completed_gifts(gifts, settled)
            assert completed[gift_id] == (1, False)
            found = [d for d in await gift_payments(wallet, gifts, completed, settled) if d.subject == gift_id]
            # Within the grace it may be a gift completing between the two databases' reads: not reported yet.
            graced = await gift_payments(wallet, gifts, await completed_gifts(gifts, Thresholds()), Thresholds())
            assert gift_id not in {d.subject for d in graced}
            assert [d.check for d in found] == ["gift_payment"]
            raise Rollback
    except Rollback:
        pass
    finally:
        await wallet.close()
        await gifts.close()


async def test_a_credit_without_a_completed_gift_is_reported_once_past_the_grace(
    stack: Stack, clients: Clients
) -> None:
    stream_id = await live_stream_id(clients)
    gifts = await asyncpg.connect(stack.database_url("gifts"))
    payouts = await asyncpg.connect(stack.database_url("payouts"))
    unknown, failed, recent = new_id("gtx"), new_id("gtx"), new_id("gtx")
    two_minutes_ago = datetime.now(UTC) - timedelta(minutes=2)
    try:
        async with gifts.transaction(), payouts.transaction():
            await plant_failed_gift(gifts, failed, stream_id)
            await plant_credit(payouts, unknown, credited_at=two_minutes_ago)
            await plant_credit(payouts, failed, credited_at=two_minutes_ago)
            await plant_credit(payouts, recent)
            completed = await completed_gifts(gifts, Thresholds())
            found = {
                d.subject: (d.check, d.detail)
                for d in await credits_without_gifts(gifts, payouts, completed, Thresholds())
                if d.subject in (unknown, failed, recent)
            }
            # The recent one may be of a gift that completed after gifts was read: not reported within the grace.
            credited = "credited 7 diamonds for 7 coins to creator creator-planted"
            assert found == {
                unknown: ("credit_without_gift", f"{credited}; gifts has no such gift"),
                failed: ("credit_without_gift", f"{credited}; the gift is failed"),
            }
            no_grace = Thresholds(settlement_grace_seconds=0)
            reported = {d.subject for d in await credits_without_gifts(gifts, payouts, completed, no_grace)}
            assert {unknown, failed, recent} <= reported
            raise Rollback
    except Rollback:
        pass
    finally:
        await gifts.close()
        await payouts.close()


async def plant_failed_gift(gifts: asyncpg.Connection, gift_id: str, stream_id: str) -> None:
    await gifts.execute(
        "INSERT INTO gift_transactions (gift_transaction_id, request_id, sender_id, recipient_id, stream_id,"
        " gift_id, quantity, coin_price, coins, status, failure_reason, finished_at)"
        " SELECT $1, $1, 'nobody', creator_id, stream_id, 'rose', 7, 1, 7, 'failed', 'planted', now()"
        " FROM live_streams WHERE stream_id = $2",
        gift_id,
        stream_id,
    )


async def plant_credit(payouts: asyncpg.Connection, gift_id: str, credited_at: datetime | None = None) -> None:
    """A settled gift's rows as settlement writes them (its postings aside), for a gift gifts never had."""
    transaction_id = new_id("txn")
    await payouts.execute("INSERT INTO inbox (gift_transaction_id) VALUES ($1)", gift_id)
    await payouts.execute(
        "INSERT INTO ledger_transactions (transaction_id, kind, reference) VALUES ($1, 'settlement', 'planted')",
        transaction_id,
    )
    await payouts.execute(
        "INSERT INTO diamond_credits (gift_transaction_id, creator_id, stream_id, coins, diamonds, rate_version,"
        " transaction_id, created_at)"
        " SELECT $1, 'creator-planted', 'stream-planted', 7, 7, max(version), $2, coalesce($3, now())"
        " FROM settlement_rates",
        gift_id,
        transaction_id,
        credited_at,
    )


async def test_reconcile_reports_the_credit_of_a_made_up_gift_sent(
    synthetic_stack: Stack, synthetic_clients: Clients
) -> None:
    """End to end, as an operator sees it: a GiftSent no gift sent, settled like any other, then reported."""
    made_up = gift_sent(new_id("creator"), 7)
    await publish(synthetic_stack, [made_up])
    await wait_for_lifetime(synthetic_clients, made_up.recipient_id, 7)

    within_grace = await run_reconcile(synthetic_stack, "--json")
    assert made_up.gift_transaction_id not in credits_reported(within_grace), within_grace.stdout
    past_grace = await run_reconcile(synthetic_stack, "--json", "--settlement-grace-seconds", "0")
    assert past_grace.returncode == 1, past_grace.stdout + past_grace.stderr
    assert credits_reported(past_grace)[made_up.gift_transaction_id] == (
        f"credited 7 diamonds for 7 coins to creator {made_up.recipient_id}; gifts has no such gift"
    )


def credits_reported(done: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The credit_without_gift discrepancies of a --json report: detail by gift."""
    report = json.loads(done.stdout)
    return {d["subject"]: d["detail"] for d in report["discrepancies"] if d["check"] == "credit_without_gift"}


async def test_work_pending_longer_than_the_threshold_is_reported(stack: Stack, clients: Clients) -> None:
    stream_id = await live_stream_id(clients)
    connections = {name: await asyncpg.connect(stack.database_url(name)) for name in ("wallet", "gifts", "payouts")}
    gifts = connections["gifts"]
    gift_id = new_id("gtx")
    try:
        async with gifts.transaction():
            await gifts.execute(
                "INSERT INTO gift_transactions (gift_transaction_id, request_id, sender_id, recipient_id, stream_id,"
                " gift_id, quantity, coin_price, coins, status, created_at)"
                " SELECT $1, $1, 'nobody', creator_id, stream_id, 'rose', 1, 1, 1, 'pending', $3"
                " FROM live_streams WHERE stream_id = $2",
                gift_id,
                stream_id,
                datetime.now(UTC) - timedelta(hours=2),
            )
            stuck = await stuck_work(connections, Thresholds(stuck_after_seconds=3600))
            assert [(d.check, d.subject) for d in stuck if d.subject == gift_id] == [("stuck_work", gift_id)]
            raise Rollback
    except Rollback:
        pass
    finally:
        for conn in connections.values():
            await conn.close()


class Rollback(Exception):
    """Raised inside a transaction to roll back what a test planted."""


async def test_payouts_reconciles_periodically_and_exports_the_discrepancy_count(stack: Stack) -> None:
    metrics_port = free_port()
    replica = await asyncio.to_thread(
        stack.start_replica,
        "payouts",
        {
            "COINSTREAM_PAYOUTS_RECONCILE_INTERVAL_SECONDS": "0.5",
            "COINSTREAM_PAYOUTS_METRICS_PORT": str(metrics_port),
            "COINSTREAM_WALLET_DATABASE_URL": stack.database_url("wallet"),
            "COINSTREAM_GIFTS_DATABASE_URL": stack.database_url("gifts"),
        },
    )
    try:
        for _ in range(100):
            metrics = await asyncio.to_thread(scrape, f"http://127.0.0.1:{metrics_port}/metrics")
            if "coinstream_reconcile_discrepancies" in metrics and "last_success_timestamp_seconds 0.0" not in metrics:
                break
            await asyncio.sleep(0.2)
        assert "\ncoinstream_reconcile_discrepancies 0.0" in metrics, metrics
        assert "\ncoinstream_reconcile_last_success_timestamp_seconds 0.0" not in metrics
    finally:
        assert replica.process is not None
        await asyncio.to_thread(stop_process, replica.process)


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback metrics of our own process
        return str(response.read().decode())
