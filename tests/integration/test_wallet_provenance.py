"""Coin provenance against the real wallet: spends take bonus coins first and record the split, the database refuses
what would break the ledger, balances as of a past moment, history pages that keep each transaction whole, the
migration that made existing balances paid coins, and an account named "system"."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from coinstream.events.v1 import events_pb2
from coinstream.wallet.v1 import wallet_pb2 as w
from google.protobuf.timestamp_pb2 import Timestamp

from services.runtime import database
from services.runtime.messaging import ACCOUNT_STATUS_CHANGED_SUBJECT
from tests.support.clients import SERVICE, Clients, auth, new_id, stored_key
from tests.support.errors import expect_error, violated_fields
from tests.support.factories import (
    balance_of,
    buy,
    create_account,
    giveaway,
    spend,
    timestamp,
    transactions,
    wallet_balance,
)
from tests.support.invariants import wallet_violations
from tests.support.stack import REPO_ROOT, Stack

# --- provenance -----------------------------------------------------------------------------------------------


async def test_spends_use_bonus_coins_first_and_record_the_split(clients: Clients) -> None:
    account_id = await create_account(clients)
    bought = await buy(clients, account_id, "coins_1321")
    assert bought.balance == balance_of(account_id, 1321, 66)
    assert bought.purchase.promotion_id == "promo_default"

    first = await spend(clients, account_id, 50)
    assert (first.paid_coins, first.bonus_coins) == (0, 50)
    assert first.balance == balance_of(account_id, 1321, 16)
    second = await spend(clients, account_id, 100)
    assert (second.paid_coins, second.bonus_coins) == (84, 16)
    assert second.balance == balance_of(account_id, 1237, 0)
    assert await wallet_balance(clients, account_id) == balance_of(account_id, 1237, 0)

    moves = [
        (t.kind, t.coins_delta, t.paid_coins_delta, t.bonus_coins_delta, t.balance_after)
        for t in await transactions(clients, account_id)
    ]
    assert moves == [
        (w.TRANSACTION_KIND_SPEND, -100, -84, -16, 1237),
        (w.TRANSACTION_KIND_SPEND, -50, 0, -50, 1337),
        (w.TRANSACTION_KIND_PURCHASE, 1387, 1321, 66, 1387),
    ]


async def test_a_spend_replayed_after_its_key_expired_keeps_its_split(stack: Stack, clients: Clients) -> None:
    account_id = await create_account(clients)
    await buy(clients, account_id, "coins_1321")
    request = w.SpendCoinsRequest(request_id=new_id("spend"), account_id=account_id, coins=70, reference="test:replay")
    first = await clients.wallet.SpendCoins(request, metadata=SERVICE)
    await spend(clients, account_id, 5)  # later movements must not change the replayed answer
    conn = await asyncpg.connect(stack.database_url("wallet"))
    try:
        await conn.execute("DELETE FROM idempotency_keys WHERE request_id = $1", stored_key(request.request_id))
    finally:
        await conn.close()
    again = await clients.wallet.SpendCoins(request, metadata=SERVICE)
    assert again == first
    assert (again.paid_coins, again.bonus_coins) == (4, 66)
    assert again.balance == balance_of(account_id, 1317, 0)


async def test_the_database_refuses_a_negative_user_bucket_unless_debt_is_allowed(
    stack: Stack, clients: Clients
) -> None:
    account_id = await create_account(clients)
    conn = await asyncpg.connect(stack.database_url("wallet"))
    try:
        for bucket in (account_id, f"{account_id}:bonus"):
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute("UPDATE ledger_accounts SET coins = -1 WHERE ledger_account_id = $1", bucket)
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute("SELECT set_config('coinstream.allow_debt', 'on', true)")
        await conn.execute("UPDATE ledger_accounts SET coins = -1 WHERE ledger_account_id = $1", account_id)
        await transaction.rollback()
    finally:
        await conn.close()


async def test_the_database_refuses_an_unbalanced_ledger_transaction(stack: Stack, clients: Clients) -> None:
    account_id = await create_account(clients)
    conn = await asyncpg.connect(stack.database_url("wallet"))
    transaction_id = new_id("txn")
    record = (
        "WITH t AS (INSERT INTO transactions (transaction_id, kind, request_id, account_id, reference)"
        " VALUES ($1, 'spend', $1, $2, 'test'))"
        " INSERT INTO postings (transaction_id, ledger_account_id, coins_delta) VALUES ($1, $3, -5), ($1, $4, 4)"
    )
    try:
        with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
            await conn.execute(record, transaction_id, account_id, "system:spent", "system:sales")
        assert await conn.fetchval("SELECT count(*) FROM transactions WHERE transaction_id = $1", transaction_id) == 0
    finally:
        await conn.close()


# --- point-in-time balance ------------------------------------------------------------------------------------


async def balance_at(clients: Clients, account_id: str, moment: datetime) -> w.Balance:
    request = w.GetBalanceRequest(account_id=account_id, as_of=timestamp(moment))
    return (await clients.wallet.GetBalance(request, metadata=auth(account_id))).balance


async def test_balance_as_of_a_past_moment(clients: Clients) -> None:
    account_id = await create_account(clients)
    await buy(clients, account_id, "coins_1321")
    await spend(clients, account_id, 100)
    spent, bought = await transactions(clients, account_id)
    bought_at = bought.created_at.ToDatetime(tzinfo=UTC)
    spent_at = spent.created_at.ToDatetime(tzinfo=UTC)
    assert await balance_at(clients, account_id, bought_at - timedelta(microseconds=1)) == balance_of(account_id, 0, 0)
    assert await balance_at(clients, account_id, bought_at) == balance_of(account_id, 1321, 66)
    assert await balance_at(clients, account_id, spent_at) == balance_of(account_id, 1287, 0)
    assert await balance_at(clients, account_id, datetime.now(UTC) + timedelta(days=1)) == balance_of(
        account_id, 1287, 0
    )
    ghost = new_id("ghost")
    assert await balance_at(clients, ghost, datetime.now(UTC)) == balance_of(ghost, 0, 0)
    bad = w.GetBalanceRequest(account_id=account_id, as_of=Timestamp(seconds=10**12))
    error = await expect_error(clients.wallet.GetBalance(bad, metadata=SERVICE), grpc.StatusCode.INVALID_ARGUMENT)
    assert violated_fields(error) == {"as_of"}


# --- history and the migration ---------------------------------------------------------------------------------


async def test_history_pages_keep_each_transaction_whole(clients: Clients) -> None:
    """Transactions post to one or both buckets of an account; pages of any size must neither split nor skip one."""
    account_id = await create_account(clients)
    winner = await create_account(clients)
    await buy(clients, account_id, "coins_1321")  # both buckets
    for coins in (10, 30, 40):  # bonus only twice, then the last 26 bonus + 14 paid
        await spend(clients, account_id, coins)
    await clients.wallet.CreateGiveaway(giveaway(account_id, [winner], 5), metadata=SERVICE)  # paid only
    await buy(clients, account_id, "coins_65")  # paid only
    everything = await transactions(clients, account_id)
    assert [t.coins_delta for t in everything] == [65, -5, -40, -30, -10, 1387]
    assert [t.balance_after for t in everything] == [1367, 1302, 1307, 1347, 1377, 1387]
    for size in (1, 2, 3, 4):
        seen: list[w.Transaction] = []
        token = ""
        while True:
            page = await clients.wallet.ListTransactions(
                w.ListTransactionsRequest(account_id=account_id, page_size=size, page_token=token), metadata=SERVICE
            )
            seen += page.transactions
            token = page.next_page_token
            if not token:
                break
        assert seen == everything, f"page size {size}"


async def test_migration_keeps_existing_balances_as_paid_coins(stack: Stack) -> None:
    name = f"wallet_upgrade_{new_id('db').replace('-', '_')}"
    stack.postgres.create_database(name)
    files = database.migration_files(REPO_ROOT / "services" / "wallet" / "migrations")
    conn = await asyncpg.connect(stack.postgres.url(name))
    try:
        upgrade_from = next(i for i, (migration, _) in enumerate(files) if migration.endswith("0002_economy.sql"))
        for _, path in files[:upgrade_from]:
            await conn.execute(path.read_text())
        await conn.execute(
            """
            INSERT INTO accounts (account_id, adult_verified, country_code) VALUES ('old', true, 'US');
            INSERT INTO ledger_accounts (ledger_account_id, kind, coins) VALUES ('old', 'user', 1387);
            INSERT INTO transactions (transaction_id, kind, request_id, account_id, reference)
                VALUES ('txn_old', 'purchase', 'req_old', 'old', 'pur_old');
            INSERT INTO postings (transaction_id, ledger_account_id, coins_delta, balance_after) VALUES
                ('txn_old', 'old', 1387, 1387), ('txn_old', 'system:sales', -1321, NULL),
                ('txn_old', 'system:promotions', -66, NULL);
            INSERT INTO purchases (purchase_id, request_id, account_id, package_id, coins, bonus_coins, price_minor,
                currency_code, payment_token, status, transaction_id)
                VALUES ('pur_old', 'req_old', 'old', 'coins_1321', 1321, 66, 1999, 'USD', 'tok_ok', 'completed',
                        'txn_old');
            """
        )
        for _, path in files[upgrade_from:]:
            await conn.execute(path.read_text())
        buckets = await conn.fetch(
            "SELECT ledger_account_id, coins FROM ledger_accounts WHERE kind = 'user' ORDER BY 1"
        )
        assert [(r["ledger_account_id"], r["coins"]) for r in buckets] == [("old", 1387), ("old:bonus", 0)]
        assert (
            await conn.fetchval("SELECT promotion_id FROM purchases WHERE purchase_id = 'pur_old'") == "promo_default"
        )
        # Funding attribution (0005): coins held from before are one lot of no purchase.
        lots = await conn.fetch("SELECT ledger_account_id, purchase_id, coins FROM coin_lots")
        assert [tuple(r) for r in lots] == [("old", None, 1387)]
        assert await wallet_violations(conn) == []
    finally:
        await conn.close()


async def test_accounts_frozen_before_wallet_events_are_announced_to_payouts(stack: Stack) -> None:
    """Migration 0006 announces the accounts already frozen (version 1) through the outbox, so payouts refuses their
    withdrawals too; the payload it writes byte by byte is a real AccountStatusChanged."""
    name = f"wallet_events_{new_id('db').replace('-', '_')}"
    stack.postgres.create_database(name)
    files = database.migration_files(REPO_ROOT / "services" / "wallet" / "migrations")
    upgrade_from = next(i for i, (migration, _) in enumerate(files) if migration.endswith("0006_wallet_events.sql"))
    conn = await asyncpg.connect(stack.postgres.url(name))
    try:
        for _, path in files[:upgrade_from]:
            await conn.execute(path.read_text())
        frozen_id = "frozen-" + "x" * 57  # 64 characters, the longest id
        await conn.execute(
            "INSERT INTO accounts (account_id, adult_verified, country_code, status)"
            " VALUES ($1, true, 'US', 'frozen'), ('active-one', true, 'US', 'active')",
            frozen_id,
        )
        for _, path in files[upgrade_from:]:
            await conn.execute(path.read_text())
        rows = await conn.fetch("SELECT msg_id, subject, payload FROM wallet_outbox")
        assert [(r["msg_id"], r["subject"]) for r in rows] == [
            (f"account_status:{frozen_id}:1", ACCOUNT_STATUS_CHANGED_SUBJECT)
        ]
        event = events_pb2.AccountStatusChanged.FromString(bytes(rows[0]["payload"]))
        assert (event.account_id, event.frozen, event.version) == (frozen_id, True, 1)
        assert await conn.fetchval("SELECT status_version FROM accounts WHERE account_id = $1", frozen_id) == 1
    finally:
        await conn.close()


async def test_an_account_named_system_is_an_ordinary_user(clients: Clients) -> None:
    """Its bonus bucket is "system:bonus", which must not be mistaken for a platform account."""
    await clients.wallet.UpsertAccount(
        w.UpsertAccountRequest(request_id=new_id("r"), account_id="system", adult_verified=True, country_code="US"),
        metadata=SERVICE,
    )
    await buy(clients, "system", "coins_1321")
    spent = await clients.wallet.SpendCoins(
        w.SpendCoinsRequest(request_id=new_id("spend"), account_id="system", coins=100, reference="test"),
        metadata=SERVICE,
    )
    assert (spent.bonus_coins, spent.paid_coins) == (66, 34)
    assert (spent.balance.paid_coins, spent.balance.bonus_coins) == (1287, 0)
