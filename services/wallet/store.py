"""All of the wallet's SQL. Functions take a connection so the use cases decide the transaction boundaries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.wallet.domain import Account, AccountStatus, Postings, PurchaseStatus

ACCOUNT_COLUMNS = "account_id, adult_verified, country_code, status"


def _account(row: asyncpg.Record) -> Account:
    return Account(row["account_id"], row["adult_verified"], row["country_code"], AccountStatus(row["status"]))


async def upsert_account(conn: asyncpg.Connection, account_id: str, adult_verified: bool, country_code: str) -> Account:
    row = await conn.fetchrow(
        "INSERT INTO accounts (account_id, adult_verified, country_code) VALUES ($1, $2, $3)"
        " ON CONFLICT (account_id) DO UPDATE"
        " SET adult_verified = EXCLUDED.adult_verified, country_code = EXCLUDED.country_code, updated_at = now()"
        f" RETURNING {ACCOUNT_COLUMNS}",
        account_id,
        adult_verified,
        country_code,
    )
    await conn.execute(
        "INSERT INTO ledger_accounts (ledger_account_id, kind) VALUES ($1, 'user') ON CONFLICT DO NOTHING",
        account_id,
    )
    return _account(row)


async def get_account(conn: asyncpg.Connection | asyncpg.Pool, account_id: str) -> Account | None:
    row = await conn.fetchrow(f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id = $1", account_id)
    return None if row is None else _account(row)


async def get_balance(conn: asyncpg.Connection | asyncpg.Pool, account_id: str) -> int:
    coins = await conn.fetchval(
        "SELECT coins FROM ledger_accounts WHERE ledger_account_id = $1 AND kind = 'user'", account_id
    )
    return coins or 0


async def find_spend(conn: asyncpg.Connection, request_id: str, account_id: str) -> tuple[str, int] | None:
    """The spend recorded for request_id: its transaction id and the account's balance right after it."""
    row = await conn.fetchrow(
        "SELECT t.transaction_id, p.balance_after FROM transactions AS t"
        " JOIN postings AS p ON p.transaction_id = t.transaction_id AND p.ledger_account_id = t.account_id"
        " WHERE t.request_id = $1 AND t.kind = 'spend' AND t.account_id = $2",
        request_id,
        account_id,
    )
    return None if row is None else (row["transaction_id"], row["balance_after"])


async def debit_for_spend(
    conn: asyncpg.Connection,
    *,
    transaction_id: str,
    request_id: str,
    account_id: str,
    coins: int,
    reference: str,
    postings: Postings,
) -> int | None:
    """One statement: debit an eligible account that has the coins, write the transaction and its postings.

    Returns the balance after, or None when nothing moved (missing, ineligible, frozen or short of coins)."""
    return await conn.fetchval(
        """
        WITH debited AS (
            UPDATE ledger_accounts AS l SET coins = l.coins - $4
            FROM accounts AS a
            WHERE l.ledger_account_id = $3 AND a.account_id = $3
              AND a.adult_verified AND a.status = 'active' AND l.coins >= $4
            RETURNING l.coins
        ), recorded AS (
            INSERT INTO transactions (transaction_id, kind, request_id, account_id, reference)
            SELECT $1, 'spend', $2, $3, $5 FROM debited
        ), posted AS (
            INSERT INTO postings (transaction_id, ledger_account_id, coins_delta, balance_after)
            SELECT $1, p.ledger_account_id, p.coins_delta,
                   CASE WHEN p.ledger_account_id = $3 THEN d.coins END
            FROM debited AS d, unnest($6::text[], $7::bigint[]) AS p (ledger_account_id, coins_delta)
        )
        SELECT coins FROM debited
        """,
        transaction_id,
        request_id,
        account_id,
        coins,
        reference,
        [account for account, _ in postings],
        [delta for _, delta in postings],
    )


async def credit_for_purchase(
    conn: asyncpg.Connection,
    *,
    transaction_id: str,
    request_id: str,
    account_id: str,
    reference: str,
    postings: Postings,
) -> int:
    """Credits the user's side of the postings and writes the transaction; returns the balance after."""
    user_delta = next(delta for account, delta in postings if account == account_id)
    balance_after = await conn.fetchval(
        """
        WITH credited AS (
            UPDATE ledger_accounts SET coins = coins + $4 WHERE ledger_account_id = $3 RETURNING coins
        ), recorded AS (
            INSERT INTO transactions (transaction_id, kind, request_id, account_id, reference)
            VALUES ($1, 'purchase', $2, $3, $5)
        ), posted AS (
            INSERT INTO postings (transaction_id, ledger_account_id, coins_delta, balance_after)
            SELECT $1, p.ledger_account_id, p.coins_delta,
                   CASE WHEN p.ledger_account_id = $3 THEN c.coins END
            FROM credited AS c, unnest($6::text[], $7::bigint[]) AS p (ledger_account_id, coins_delta)
        )
        SELECT coins FROM credited
        """,
        transaction_id,
        request_id,
        account_id,
        user_delta,
        reference,
        [account for account, _ in postings],
        [delta for _, delta in postings],
    )
    assert balance_after is not None, f"no ledger account for {account_id}"
    return int(balance_after)


@dataclass(frozen=True)
class PurchaseRow:
    purchase_id: str
    request_id: str
    account_id: str
    package_id: str
    coins: int
    bonus_coins: int
    price_minor: int
    currency_code: str
    payment_token: str
    status: PurchaseStatus
    transaction_id: str | None


PURCHASE_COLUMNS = (
    "purchase_id, request_id, account_id, package_id, coins, bonus_coins, price_minor, currency_code,"
    " payment_token, status, transaction_id"
)


def _purchase(row: asyncpg.Record) -> PurchaseRow:
    values = dict(row)
    values["status"] = PurchaseStatus(values["status"])
    return PurchaseRow(**values)


async def insert_purchase(conn: asyncpg.Connection, purchase: PurchaseRow) -> None:
    await conn.execute(
        f"INSERT INTO purchases ({PURCHASE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        purchase.purchase_id,
        purchase.request_id,
        purchase.account_id,
        purchase.package_id,
        purchase.coins,
        purchase.bonus_coins,
        purchase.price_minor,
        purchase.currency_code,
        purchase.payment_token,
        purchase.status.value,
        purchase.transaction_id,
    )


async def get_purchase(pool: asyncpg.Pool, purchase_id: str) -> PurchaseRow:
    row = await pool.fetchrow(f"SELECT {PURCHASE_COLUMNS} FROM purchases WHERE purchase_id = $1", purchase_id)
    assert row is not None, f"no purchase {purchase_id}"
    return _purchase(row)


async def lock_purchase(conn: asyncpg.Connection, purchase_id: str) -> PurchaseRow:
    row = await conn.fetchrow(
        f"SELECT {PURCHASE_COLUMNS} FROM purchases WHERE purchase_id = $1 FOR UPDATE", purchase_id
    )
    assert row is not None, f"purchase {purchase_id} vanished"
    return _purchase(row)


async def finish_purchase(
    conn: asyncpg.Connection,
    purchase_id: str,
    status: PurchaseStatus,
    provider_reference: str,
    transaction_id: str | None,
) -> None:
    await conn.execute(
        "UPDATE purchases SET status = $2, provider_reference = $3, transaction_id = $4, updated_at = now()"
        " WHERE purchase_id = $1 AND status = 'pending'",
        purchase_id,
        status.value,
        provider_reference,
        transaction_id,
    )


async def stale_pending_purchases(pool: asyncpg.Pool, older_than_seconds: float, limit: int) -> list[str]:
    rows = await pool.fetch(
        "SELECT purchase_id FROM purchases WHERE status = 'pending'"
        " AND created_at < now() - make_interval(secs => $1) ORDER BY created_at LIMIT $2",
        older_than_seconds,
        limit,
    )
    return [row["purchase_id"] for row in rows]


@dataclass(frozen=True)
class HistoryEntry:
    posting_id: int
    transaction_id: str
    kind: str
    coins_delta: int
    balance_after: int
    reference: str
    created_at: datetime


async def list_history(
    pool: asyncpg.Pool, account_id: str, before_posting_id: int | None, limit: int
) -> list[HistoryEntry]:
    rows = await pool.fetch(
        "SELECT p.posting_id, p.transaction_id, t.kind, p.coins_delta, p.balance_after, t.reference, p.created_at"
        " FROM postings AS p JOIN transactions AS t USING (transaction_id)"
        " WHERE p.ledger_account_id = $1 AND ($2::bigint IS NULL OR p.posting_id < $2)"
        " ORDER BY p.posting_id DESC LIMIT $3",
        account_id,
        before_posting_id,
        limit,
    )
    return [HistoryEntry(**dict(row)) for row in rows]
