"""Upgrading a payouts database that already has money in it: 0002 keeps every old credit available (matured) and
the ledger as it was, and the new guards hold for old rows too; 0003 keeps every old credit on its stream and
guards the video of new ones like the rest of a credit."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import asyncpg
import pytest

from services.runtime import database
from tests.support.stack import REPO_ROOT, Stack

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


def migrations_from(first: str) -> list[str]:
    """What apply_migrations applies to a database that has every payouts migration before `first`."""
    return [f"service/{path.name}" for path in sorted(PAYOUTS_MIGRATIONS.glob("*.sql")) if path.name >= first]


async def database_migrated_before(stack: Stack, tmp_path: Path, first_missing: str) -> asyncpg.Pool:
    """A new database with the payouts migrations that come before `first_missing` (and the runtime's) applied."""
    name = f"payouts_upgrade_{uuid.uuid4().hex[:8]}"
    stack.postgres.create_database(name)
    earlier = tmp_path / "migrations"
    earlier.mkdir()
    for path in sorted(PAYOUTS_MIGRATIONS.glob("*.sql")):
        if path.name < first_missing:
            shutil.copy(path, earlier)
    pool = await asyncpg.create_pool(stack.postgres.url(name), min_size=1, max_size=2)
    await database.apply_migrations(pool, earlier)
    return pool


async def test_upgrade_keeps_old_credits_available_and_guarded(stack: Stack, tmp_path: Path) -> None:
    pool = await database_migrated_before(stack, tmp_path, "0002_economy.sql")
    try:
        await pool.execute(SETTLE_ONE_GIFT_BEFORE_0002)
        assert await database.apply_migrations(pool, PAYOUTS_MIGRATIONS) == migrations_from("0002_economy.sql")

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


# After 0003: a video gift's credit still in its maturity hold, and the maturity transaction that may mature it.
SETTLE_ONE_HELD_VIDEO_GIFT = """
INSERT INTO inbox (gift_transaction_id) VALUES ('gtx_video'), ('gtx_bad');
WITH t AS (INSERT INTO ledger_transactions (transaction_id, kind, reference) VALUES ('txn_video', 'settlement', '1'))
INSERT INTO postings (transaction_id, ledger_account_id, diamonds_delta)
VALUES ('txn_video', 'creator:old:pending', 5), ('txn_video', 'system:gift_settlement', -5);
INSERT INTO diamond_credits
    (gift_transaction_id, creator_id, video_id, coins, diamonds, rate_version, transaction_id, matured_at)
VALUES ('gtx_video', 'old', 'vid_1', 5, 5, 1, 'txn_video', NULL);
WITH t AS (INSERT INTO ledger_transactions (transaction_id, kind, reference) VALUES ('txn_mature', 'maturity', '1'))
INSERT INTO postings (transaction_id, ledger_account_id, diamonds_delta)
VALUES ('txn_mature', 'creator:old:pending', -5), ('txn_mature', 'creator:old:available', 5);
"""
INSERT_CREDIT_WITH_TARGET = (
    "INSERT INTO diamond_credits (gift_transaction_id, creator_id, stream_id, video_id, coins, diamonds, rate_version,"
    " transaction_id) VALUES ('gtx_bad', 'old', $1, $2, 1, 1, 1, 'txn_video')"
)
MATURE_VIDEO_CREDIT = (
    "UPDATE diamond_credits SET matured_at = now(), maturity_transaction_id = 'txn_mature'{also}"
    " WHERE gift_transaction_id = 'gtx_video'"
)


async def test_upgrade_keeps_old_credits_on_their_stream_and_guards_videos(stack: Stack, tmp_path: Path) -> None:
    pool = await database_migrated_before(stack, tmp_path, "0003_video_gifts.sql")
    try:
        await pool.execute(SETTLE_ONE_GIFT_BEFORE_0002)
        assert await database.apply_migrations(pool, PAYOUTS_MIGRATIONS) == migrations_from("0003_video_gifts.sql")
        old = await pool.fetchrow(
            "SELECT stream_id, video_id FROM diamond_credits WHERE gift_transaction_id = 'gtx_old'"
        )
        assert dict(old) == {"stream_id": "st_old", "video_id": None}

        await pool.execute(SETTLE_ONE_HELD_VIDEO_GIFT)
        for stream_id, video_id in (("st_1", "vid_1"), (None, None)):
            with pytest.raises(asyncpg.CheckViolationError, match="diamond_credits_one_target"):
                await pool.execute(INSERT_CREDIT_WITH_TARGET, stream_id, video_id)
        # Maturing may not move a credit to another video (nor to a stream); maturing alone may go ahead.
        for change in (", video_id = 'vid_2'", ", video_id = NULL, stream_id = 'st_1'"):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await pool.execute(MATURE_VIDEO_CREDIT.format(also=change))
        assert await pool.execute(MATURE_VIDEO_CREDIT.format(also="")) == "UPDATE 1"
        by_video = await pool.fetchval("SELECT indexdef FROM pg_indexes WHERE indexname = 'diamond_credits_by_video'")
        assert by_video.endswith("(creator_id, video_id) WHERE (video_id IS NOT NULL)")
    finally:
        await pool.close()
