"""Upgrading a payouts database that already has money in it: 0002 keeps every old credit available (matured) and
the ledger as it was, and the new guards hold for old rows too."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import asyncpg
import pytest

from services.runtime import database
from tests.stack import REPO_ROOT, Stack

PAYOUTS_MIGRATIONS = REPO_ROOT / "services" / "payouts" / "migrations"

SETTLE_ONE_GIFT_BEFORE_0002 = """
INSERT INTO settlement_rates (version, numerator, denominator) VALUES (1, 1, 1);
INSERT INTO inbox (gift_transaction_id) VALUES ('gtx_old');
WITH t AS (INSERT INTO ledger_transactions (transaction_id, kind, reference) VALUES ('txn_old', 'settlement', '1 gift'))
INSERT INTO postings (transaction_id, ledger_account_id, diamonds_delta)
VALUES ('txn_old', 'creator:old:available', 299), ('txn_old', 'system:gift_settlement', -299);
INSERT INTO diamond_credits (gift_transaction_id, creator_id, stream_id, coins, diamonds, rate_version, transaction_id)
VALUES ('gtx_old', 'old', 'st_old', 299, 299, 1, 'txn_old');
INSERT INTO creator_balances (creator_id, available_diamonds, lifetime_diamonds) VALUES ('old', 299, 299);
"""


async def test_upgrade_keeps_old_credits_available_and_guarded(stack: Stack, tmp_path: Path) -> None:
    name = f"payouts_upgrade_{uuid.uuid4().hex[:8]}"
    stack.postgres.create_database(name)
    first_only = tmp_path / "migrations"
    first_only.mkdir()
    shutil.copy(PAYOUTS_MIGRATIONS / "0001_payouts.sql", first_only)
    pool = await asyncpg.create_pool(stack.postgres.url(name), min_size=1, max_size=2)
    try:
        await database.apply_migrations(pool, first_only)
        await pool.execute(SETTLE_ONE_GIFT_BEFORE_0002)
        assert await database.apply_migrations(pool, PAYOUTS_MIGRATIONS) == ["service/0002_economy.sql"]

        credit = await pool.fetchrow(
            "SELECT matured_at IS NOT NULL AS matured, available_at IS NOT NULL AS dated, paid_coins, bonus_coins,"
            " maturity_transaction_id FROM diamond_credits WHERE gift_transaction_id = 'gtx_old'"
        )
        assert dict(credit) == {
            "matured": True,
            "dated": True,
            "paid_coins": 0,
            "bonus_coins": 0,
            "maturity_transaction_id": None,
        }
        balances = await pool.fetchrow("SELECT * FROM creator_balances WHERE creator_id = 'old'")
        assert (balances["available_diamonds"], balances["pending_diamonds"]) == (299, 0)
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await pool.execute("UPDATE diamond_credits SET diamonds = 300 WHERE gift_transaction_id = 'gtx_old'")
        with pytest.raises(asyncpg.CheckViolationError):
            await pool.execute(
                "WITH t AS (INSERT INTO ledger_transactions (transaction_id, kind, reference)"
                " VALUES ('txn_bad', 'refund', 'x'))"
                " INSERT INTO postings (transaction_id, ledger_account_id, diamonds_delta)"
                " VALUES ('txn_bad', 'creator:old:pending', 1), ('txn_bad', 'system:gift_settlement', -1)"
            )
        await pool.execute(
            "WITH t AS (INSERT INTO ledger_transactions (transaction_id, kind, reference)"
            " VALUES ('txn_new', 'maturity', 'x'))"
            " INSERT INTO postings (transaction_id, ledger_account_id, diamonds_delta)"
            " VALUES ('txn_new', 'creator:old:pending', -1), ('txn_new', 'creator:old:available', 1)"
        )
        # Credits inserted without matured_at (the previous release, during a rolling deploy) are matured at once,
        # as that release made them available; settlement always sets it explicitly.
        assert await pool.fetchval(
            "SELECT column_default = 'now()' FROM information_schema.columns"
            " WHERE table_name = 'diamond_credits' AND column_name = 'matured_at'"
        )
    finally:
        await pool.close()
