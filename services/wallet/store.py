"""All of the wallet's SQL: the PostgreSQL implementation of ports.WalletStore. The use cases decide the
transaction boundaries (WalletStore.transaction, run_once); everything inside one goes through PostgresTransaction.

Locking: every movement first locks both buckets of every account it touches, in ledger-account-id order
(lock_buckets), so movements of one account are serialized (what the spending limit and the history's page
arithmetic rely on) and two movements can never deadlock. Account rows are only locked after buckets, or alone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

import asyncpg
from google.protobuf.message import Message

from services.runtime import idempotency
from services.runtime.database import Connection, Executor
from services.runtime.errors import AppError
from services.runtime.outbox import Outbox, OutboxRow
from services.runtime.requests import Reply, RequestKey
from services.wallet.domain import (
    BONUS_SUFFIX,
    DECLINE_WINDOW,
    SPENDING_LIMIT_WINDOW,
    SYSTEM_ACCOUNTS,
    TRACED_USES,
    Account,
    AccountStatus,
    Balance,
    DeclineLimits,
    Declines,
    Funding,
    Lot,
    Movement,
    NewLot,
    NewSpend,
    Postings,
    Promotion,
    Purchase,
    PurchaseAttempts,
    PurchaseConsumption,
    PurchaseHistory,
    PurchaseReversal,
    PurchaseStatus,
    PurchaseView,
    RailReversal,
    ReversedSoFar,
    Spender,
    SpendingLimit,
    Split,
    Store,
    StoreProof,
    Use,
    bonus_bucket,
    buckets,
    paid_bucket,
)
from services.wallet.funding import Allocation, EarlierUse, gift_of
from services.wallet.ports import Operation, Result, WalletTransaction

ACCOUNT_COLUMNS = (
    "account_id, adult_verified, country_code, status,"
    " daily_limit_coins, pending_daily_limit_coins, pending_limit_effective_at"
)
PURCHASE_COLUMNS = (
    "purchase_id, request_id, account_id, package_id, coins, bonus_coins, price_minor, currency_code,"
    " payment_token, status, transaction_id, promotion_id, caller, rail, store_transaction_id, storefront_country,"
    " terms_version"
)
# The relay's advisory lock key: any constant unlike the other advisory lock keys used on the wallet database.
# How often the recovery pass asks a rail again about a purchase waiting for its buyer (3-D Secure): the rail's
# notification normally finishes it first; the pass catches one that never came.
AWAITING_RECHECK_SECONDS = 600.0
WALLET_OUTBOX = Outbox("wallet", "wallet_outbox", lock_key=0x77616C6C)  # "wall"
LOT_COLUMNS = "lot_id, ledger_account_id, purchase_id, coins"
# A LATERAL subquery's columns: the lots of a FROM … WHERE appended to it, as parallel arrays (see _lots_from_arrays).
_LOTS_AS_ARRAYS = (
    "SELECT array_agg(lot_id ORDER BY lot_id) AS lot_ids,"
    " array_agg(ledger_account_id ORDER BY lot_id) AS lot_buckets,"
    " array_agg(purchase_id ORDER BY lot_id) AS lot_purchases,"
    " array_agg(coins ORDER BY lot_id) AS lot_coins"
    " FROM coin_lots"
)
PROMOTION_COLUMNS = (
    "promotion_id, name, starts_at, ends_at, min_package_coins, bonus_percent, bonus_coins, first_purchase_only,"
    " max_uses_per_account, created_at"
)


class PostgresWalletStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[WalletTransaction]:
        async with self._pool.acquire() as proxy, proxy.transaction():
            yield PostgresTransaction(proxy)

    async def run_once(self, key: RequestKey, operation: Operation[Result], reply: Reply[Result]) -> Result:
        return await idempotency.run_once(self._pool, key, reply, lambda proxy: operation(PostgresTransaction(proxy)))

    async def get_account(self, account_id: str) -> Account | None:
        return await _get_account(self._pool, account_id)

    async def get_balance(self, account_id: str) -> Balance:
        return await _get_balance(self._pool, account_id)

    async def balance_as_of(self, account_id: str, as_of: datetime) -> Balance:
        """Each bucket's balance after its last posting at or before as_of (0 before any)."""
        row = await self._pool.fetchrow(
            "SELECT"
            " (SELECT balance_after FROM postings WHERE ledger_account_id = $1 AND created_at <= $3"
            "  ORDER BY created_at DESC, posting_id DESC LIMIT 1) AS paid,"
            " (SELECT balance_after FROM postings WHERE ledger_account_id = $2 AND created_at <= $3"
            "  ORDER BY created_at DESC, posting_id DESC LIMIT 1) AS bonus",
            paid_bucket(account_id),
            bonus_bucket(account_id),
            as_of,
        )
        assert row is not None, "a SELECT without FROM returns one row"
        return Balance(row["paid"] or 0, row["bonus"] or 0)

    async def get_purchase(self, purchase_id: str) -> Purchase:
        row = await self._pool.fetchrow(f"SELECT {PURCHASE_COLUMNS} FROM purchases WHERE purchase_id = $1", purchase_id)
        assert row is not None, f"no purchase {purchase_id}"
        return _purchase(row)

    async def find_purchase(self, purchase_id: str) -> PurchaseView | None:
        """The purchase, when it was made, and what its reversals gave back so far."""
        row = await self._pool.fetchrow(
            f"SELECT {', '.join('p.' + c.strip() for c in PURCHASE_COLUMNS.split(','))}, p.created_at,"
            " coalesce(sum(r.reversed_coins), 0)::bigint AS reversed_coins,"
            " coalesce(sum(r.reversed_bonus_coins), 0)::bigint AS reversed_bonus_coins"
            " FROM purchases AS p LEFT JOIN purchase_reversals AS r USING (purchase_id)"
            " WHERE p.purchase_id = $1 GROUP BY p.purchase_id",
            purchase_id,
        )
        if row is None:
            return None
        values = dict(row)
        created_at = values.pop("created_at")
        reversed_ = Split(values.pop("reversed_coins"), values.pop("reversed_bonus_coins"))
        return PurchaseView(_purchase_from(values), created_at, reversed_)

    async def replay_if_completed(self, key: RequestKey, reply: Reply[Result]) -> Result | None:
        return await idempotency.replay_if_completed(self._pool, key, reply)

    async def load_outcome(self, request_id: str) -> idempotency.StoredRequest:
        return await idempotency.load(self._pool, request_id)

    async def stale_pending_purchases(self, rail: str, older_than_seconds: float, limit: int) -> list[str]:
        # A purchase whose rail transaction is known waits for its buyer (3-D Secure) and the rail's notification:
        # the rail is asked about it again only every AWAITING_RECHECK_SECONDS (record_rail_transaction moves
        # updated_at), not on every pass.
        rows = await self._pool.fetch(
            "SELECT purchase_id FROM purchases WHERE status = 'pending' AND rail = $4"
            " AND created_at < now() - make_interval(secs => $1)"
            " AND (store_transaction_id IS NULL OR updated_at < now() - make_interval(secs => $3))"
            " ORDER BY created_at LIMIT $2",
            older_than_seconds,
            limit,
            AWAITING_RECHECK_SECONDS,
            rail,
        )
        return [row["purchase_id"] for row in rows]

    async def store_purchase_consumption(self, rail: str, store_transaction_id: str) -> PurchaseConsumption | None:
        # One statement, one snapshot: the lots and the reversals are read as of the same moment.
        row = await self._pool.fetchrow(
            "SELECT p.coins + p.bonus_coins AS credited_coins,"
            " (SELECT coalesce(sum(l.coins), 0) FROM coin_lots AS l"
            "   WHERE l.purchase_id = p.purchase_id AND l.coins > 0)::bigint AS unspent_coins,"
            " (SELECT coalesce(sum(r.reversed_coins + r.reversed_bonus_coins), 0) FROM purchase_reversals AS r"
            "   WHERE r.purchase_id = p.purchase_id)::bigint AS reversed_coins"
            " FROM purchases AS p WHERE p.rail = $1 AND p.store_transaction_id = $2 AND p.status = 'completed'",
            rail,
            store_transaction_id,
        )
        return None if row is None else PurchaseConsumption(**dict(row))

    async def unfinished_store_purchases(self, older_than_seconds: float, limit: int) -> list[tuple[str, StoreProof]]:
        rows = await self._pool.fetch(
            "SELECT purchase_id, rail, store_transaction_id, provider_reference, payment_token FROM purchases"
            " WHERE NOT store_finished AND created_at < now() - make_interval(secs => $1) ORDER BY created_at LIMIT $2",
            older_than_seconds,
            limit,
        )
        # What finishing needs: the store, its transaction, the product (kept as the provider's reference) and the
        # purchase token (kept as the payment token).
        return [
            (
                row["purchase_id"],
                StoreProof(
                    Store(row["rail"]),
                    row["store_transaction_id"],
                    row["provider_reference"],
                    None,
                    "",
                    "",
                    needs_finishing=True,
                    purchase_token=row["payment_token"],
                ),
            )
            for row in rows
        ]

    async def open_promotions(self) -> tuple[list[Promotion], datetime]:
        return await _open_promotions(self._pool)

    async def list_promotions(self, before_position: int | None, limit: int) -> list[tuple[int, Promotion]]:
        rows = await self._pool.fetch(
            f"SELECT position, {PROMOTION_COLUMNS} FROM promotions"
            " WHERE ($1::bigint IS NULL OR position < $1) ORDER BY position DESC LIMIT $2",
            before_position,
            limit,
        )
        return [(row["position"], _promotion(row)) for row in rows]

    async def list_history(self, account_id: str, before_posting_id: int | None, limit: int) -> list[Movement]:
        """Newest first. A transaction has at most two postings per account and an account's movements are
        serialized, so the newest 2×limit postings hold the newest limit transactions whole."""
        rows = await self._pool.fetch(
            "WITH mine AS ("
            " SELECT * FROM postings WHERE ledger_account_id IN ($1, $2)"
            "   AND ($3::bigint IS NULL OR posting_id < $3) ORDER BY posting_id DESC LIMIT $4"
            f"), {_MOVEMENTS} ORDER BY g.posting_id DESC LIMIT $5",
            paid_bucket(account_id),
            bonus_bucket(account_id),
            before_posting_id,
            2 * limit,
            limit,
        )
        return [Movement(**dict(row)) for row in rows]


class PostgresTransaction:
    """ports.WalletTransaction on one connection inside a transaction."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def now(self) -> datetime:
        now: datetime = await self._conn.fetchval("SELECT now()")
        return now

    # --- idempotency keys ---------------------------------------------------------------------------------------

    async def claim(self, key: RequestKey) -> idempotency.StoredRequest | None:
        return await idempotency.claim(self._conn, key.request_id, key.method, key.fingerprint)

    async def set_resource(self, request_id: str, resource_id: str) -> None:
        await idempotency.set_resource(self._conn, request_id, resource_id)

    async def record_response(self, request_id: str, response: Message) -> None:
        await idempotency.record_response(self._conn, request_id, response)

    async def record_error(self, request_id: str, error: AppError) -> None:
        await idempotency.record_error(self._conn, request_id, error)

    # --- accounts -----------------------------------------------------------------------------------------------

    async def upsert_account(self, account_id: str, adult_verified: bool, country_code: str) -> Account:
        row = await self._conn.fetchrow(
            "INSERT INTO accounts (account_id, adult_verified, country_code) VALUES ($1, $2, $3)"
            " ON CONFLICT (account_id) DO UPDATE"
            " SET adult_verified = EXCLUDED.adult_verified, country_code = EXCLUDED.country_code, updated_at = now()"
            f" RETURNING {ACCOUNT_COLUMNS}",
            account_id,
            adult_verified,
            country_code,
        )
        await self._conn.execute(
            "INSERT INTO ledger_accounts (ledger_account_id, kind) SELECT unnest($1::text[]), 'user'"
            " ON CONFLICT DO NOTHING",
            buckets(account_id),
        )
        assert row is not None, "an upsert returns its row"
        return _account(row)

    async def get_account(self, account_id: str) -> Account | None:
        return await _get_account(self._conn, account_id)

    async def lock_account(self, account_id: str) -> Account | None:
        """Serializes an account's purchase intents and limit changes (NO KEY: foreign-key checks are not blocked)."""
        row = await self._conn.fetchrow(
            f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id = $1 FOR NO KEY UPDATE", account_id
        )
        return None if row is None else _account(row)

    async def get_accounts(self, account_ids: list[str]) -> dict[str, Account]:
        rows = await self._conn.fetch(
            f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id = ANY($1::text[])", account_ids
        )
        return {row["account_id"]: _account(row) for row in rows}

    async def set_status(self, account_id: str, status: AccountStatus) -> int | None:
        """The account's new status version, or None when it already had that status."""
        version: int | None = await self._conn.fetchval(
            "UPDATE accounts SET status = $2, status_version = status_version + 1, updated_at = now()"
            " WHERE account_id = $1 AND status <> $2 RETURNING status_version",
            account_id,
            status.value,
        )
        return version

    async def queue_events(self, events: list[OutboxRow]) -> None:
        await WALLET_OUTBOX.insert(self._conn, events)

    async def set_spending_limit(self, account_id: str, limit: SpendingLimit) -> Account:
        row = await self._conn.fetchrow(
            "UPDATE accounts SET daily_limit_coins = $2, pending_daily_limit_coins = $3,"
            " pending_limit_effective_at = $4,"
            f" updated_at = now() WHERE account_id = $1 RETURNING {ACCOUNT_COLUMNS}",
            account_id,
            limit.daily_coins,
            limit.pending_daily_coins,
            limit.pending_effective_at,
        )
        assert row is not None, f"account {account_id} vanished"
        return _account(row)

    # --- balances and movements ---------------------------------------------------------------------------------

    async def get_balance(self, account_id: str) -> Balance:
        return await _get_balance(self._conn, account_id)

    async def lock_buckets(self, account_ids: list[str]) -> dict[str, Balance]:
        """Locks both buckets of each account in id order (see the module doc); returns their current balances."""
        ledger_account_ids = sorted({bucket for account_id in account_ids for bucket in buckets(account_id)})
        rows = await self._conn.fetch(
            "SELECT ledger_account_id, coins FROM ledger_accounts WHERE ledger_account_id = ANY($1::text[])"
            " ORDER BY ledger_account_id FOR NO KEY UPDATE",
            ledger_account_ids,
        )
        coins = {row["ledger_account_id"]: row["coins"] for row in rows}
        return {account_id: _balance(account_id, coins) for account_id in account_ids}

    async def read_spenders(self, account_ids: list[str]) -> dict[str, Spender]:
        """The accounts (None when unknown), their balances and what they sent in the limit's rolling window. Call
        with their buckets locked (lock_buckets), in a statement of its own so that it sees everything committed
        before the lock was granted. Only accounts with a limit (now or pending) pay for the rolling-window sum."""
        rows = await self._conn.fetch(
            f"SELECT ids.id, {', '.join('a.' + c.strip() for c in ACCOUNT_COLUMNS.split(','))}, now() AS now,"
            " paid.coins AS paid_coins, bonus.coins AS bonus_coins,"
            " CASE WHEN a.daily_limit_coins > 0 OR a.pending_daily_limit_coins > 0 THEN"
            "  (SELECT coalesce(-sum(p.coins_delta), 0)::bigint FROM transactions AS t JOIN postings AS p"
            "     ON p.transaction_id = t.transaction_id AND p.ledger_account_id IN (ids.id, ids.id || $2)"
            "   WHERE t.account_id = ids.id AND t.kind IN ('spend', 'giveaway')"
            "     AND t.created_at > now() - make_interval(secs => $3))"
            " ELSE 0 END AS sent_last_24h_coins"
            ", lots.*"
            " FROM unnest($1::text[]) AS ids (id)"
            " LEFT JOIN accounts AS a ON a.account_id = ids.id"
            " LEFT JOIN ledger_accounts AS paid ON paid.ledger_account_id = ids.id"
            " LEFT JOIN ledger_accounts AS bonus ON bonus.ledger_account_id = ids.id || $2"
            f" LEFT JOIN LATERAL ({_LOTS_AS_ARRAYS} WHERE ledger_account_id IN (ids.id, ids.id || $2) AND coins > 0)"
            "   AS lots ON true",
            account_ids,
            BONUS_SUFFIX,
            SPENDING_LIMIT_WINDOW.total_seconds(),
        )
        return {
            row["id"]: Spender(
                None if row["account_id"] is None else _account(row),
                Balance(row["paid_coins"] or 0, row["bonus_coins"] or 0),
                int(row["sent_last_24h_coins"]),
                row["now"],
                _lots_from_arrays(row),
            )
            for row in rows
        }

    async def record_movement(
        self,
        *,
        transaction_id: str,
        kind: str,
        request_id: str,
        account_id: str,
        reference: str,
        postings: Postings,
        debt_allowed: bool = False,
    ) -> None:
        """One statement: moves the user buckets' coins, writes the transaction and its postings (each user posting
        with its bucket's balance after). The caller holds the buckets' locks and has checked the amounts; the
        database still refuses a negative user bucket (unless debt is allowed) and an unbalanced transaction."""
        if debt_allowed:
            await self._allow_debt(True)
        moved = await self._conn.fetch(
            """
            WITH legs AS (
                SELECT * FROM unnest($6::text[], $7::bigint[]) AS u (ledger_account_id, coins_delta)
            ), moved AS (
                UPDATE ledger_accounts AS l SET coins = l.coins + legs.coins_delta
                FROM legs WHERE l.ledger_account_id = legs.ledger_account_id AND l.kind = 'user'
                RETURNING l.ledger_account_id, l.coins
            ), recorded AS (
                INSERT INTO transactions (transaction_id, kind, request_id, account_id, reference)
                VALUES ($1, $2, $3, $4, $5)
            ), posted AS (
                -- statement_timestamp(), not now(): the buckets were locked by an earlier statement, so this time
                -- follows every earlier movement of these buckets (now() is the transaction's start, which a
                -- transaction that waited on a lock would backdate); one time for all legs of the transaction.
                INSERT INTO postings (transaction_id, ledger_account_id, coins_delta, balance_after, created_at)
                SELECT $1, legs.ledger_account_id, legs.coins_delta, moved.coins, statement_timestamp()
                FROM legs LEFT JOIN moved USING (ledger_account_id)
            )
            SELECT ledger_account_id FROM moved
            """,
            transaction_id,
            kind,
            request_id,
            account_id,
            reference,
            [ledger_account for ledger_account, _ in postings],
            [delta for _, delta in postings],
        )
        if debt_allowed:
            await self._allow_debt(False)
        user_legs = {ledger_account for ledger_account, _ in postings if ledger_account not in SYSTEM_ACCOUNTS}
        # A user leg without its ledger account would post coins no balance holds: refuse (the transaction rolls back).
        assert {row["ledger_account_id"] for row in moved} == user_legs, f"missing ledger accounts in {postings}"

    async def _allow_debt(self, allowed: bool) -> None:
        """Only a reversal may take a user bucket below zero; the setting ends with the transaction (SET LOCAL)."""
        await self._conn.execute("SELECT set_config('coinstream.allow_debt', $1, true)", "on" if allowed else "off")

    # --- spends -------------------------------------------------------------------------------------------------

    async def claim_spends(self, keys: list[RequestKey]) -> tuple[set[str], set[str]]:
        """One statement: claims the spends' keys (idempotency.claim_statement) and finds which request_ids the
        ledger, which outlives idempotency keys, already holds (a transaction of any kind). Returns (claimed, in the
        ledger).

        The ledger is searched for the caller's request_id as stored before keys were scoped by caller too: a gift
        left pending across that upgrade is retried under the scoped key and must find its earlier spend, not make
        another."""
        claim = idempotency.claim_statement(keys, first_param=3)
        rows = await self._conn.fetch(
            f"WITH claimed AS ({claim.sql})"
            " SELECT request_id, true AS claimed FROM claimed"
            " UNION ALL"
            " SELECT k.request_id, false FROM unnest($1::text[], $2::text[]) AS k (request_id, before_scoping)"
            " WHERE EXISTS (SELECT 1 FROM transactions AS t WHERE t.request_id IN (k.request_id, k.before_scoping))",
            [c.request_id for c in keys],
            [idempotency.unscoped(c.request_id) for c in keys],
            *claim.args,
        )
        return {r["request_id"] for r in rows if r["claimed"]}, {r["request_id"] for r in rows if not r["claimed"]}

    async def earlier_outcomes(
        self, keys: list[RequestKey], claimed: set[str]
    ) -> dict[str, idempotency.StoredRequest | AppError]:
        return await idempotency.earlier_outcomes(self._conn, keys, claimed)

    async def find_spend(self, request_id: str, account_id: str) -> Movement | None:
        """The spend recorded for request_id (or, made before keys were scoped by caller, for its unscoped form),
        with its split and the account's balance right after it."""
        row = await self._conn.fetchrow(
            "WITH mine AS ("
            " SELECT p.* FROM transactions AS t JOIN postings AS p ON p.transaction_id = t.transaction_id"
            " WHERE t.request_id IN ($3, $4) AND t.kind = 'spend' AND t.account_id = $1"
            "   AND p.ledger_account_id IN ($1, $2)"
            f"), {_MOVEMENTS}",
            paid_bucket(account_id),
            bonus_bucket(account_id),
            request_id,
            idempotency.unscoped(request_id),
        )
        return None if row is None else Movement(**dict(row))

    async def record_spends(self, spends: list[NewSpend], outcomes: list[idempotency.Outcome]) -> None:
        """With no new spends, only the outcomes (one statement); else _record_spends."""
        if spends:
            await self._record_spends(spends, outcomes)
        else:
            await idempotency.record_many(self._conn, outcomes)

    async def _record_spends(self, spends: list[NewSpend], outcomes: list[idempotency.Outcome]) -> None:
        """One statement for a batch of spends: each user bucket moved once by the sum of its legs, the
        transactions, every posting in the batch's order with the balance after it, and every request's outcome in
        its key. The caller holds the buckets' locks and computed the balances from them; the bucket totals the
        database arrives at must agree, or nothing is written."""
        legs = [(spend.transaction_id, leg) for spend in spends for leg in spend.legs]
        draws = [(spend.transaction_id, draw) for spend in spends for draw in spend.draws]
        recorded = idempotency.record_statement(outcomes, first_param=14)
        moved = await self._conn.fetch(
            """
            WITH legs AS (
                SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])
                    WITH ORDINALITY AS u (transaction_id, ledger_account_id, coins_delta, balance_after, position)
            ), bucket_moves AS (
                SELECT ledger_account_id, sum(coins_delta) AS coins_delta FROM legs
                WHERE balance_after IS NOT NULL GROUP BY ledger_account_id
            ), moved AS (
                UPDATE ledger_accounts AS l SET coins = l.coins + m.coins_delta
                FROM bucket_moves AS m WHERE l.ledger_account_id = m.ledger_account_id AND l.kind = 'user'
                RETURNING l.ledger_account_id, l.coins
            ), recorded AS (
                INSERT INTO transactions (transaction_id, kind, request_id, account_id, reference)
                SELECT t.transaction_id, 'spend', t.request_id, t.account_id, t.reference
                FROM unnest($5::text[], $6::text[], $7::text[], $8::text[])
                    AS t (transaction_id, request_id, account_id, reference)
            ), posted AS (
                -- statement_timestamp(), as in record_movement: after every earlier movement of these buckets.
                INSERT INTO postings (transaction_id, ledger_account_id, coins_delta, balance_after, created_at)
                SELECT transaction_id, ledger_account_id, coins_delta, balance_after, statement_timestamp()
                FROM legs ORDER BY position
            ), draws AS (
                SELECT * FROM unnest($9::text[], $10::bigint[], $11::text[], $12::text[], $13::bigint[])
                    AS d (transaction_id, lot_id, ledger_account_id, purchase_id, coins)
            ), drawn AS (
                UPDATE coin_lots AS l SET coins = l.coins - d.coins
                FROM (SELECT lot_id, sum(coins) AS coins FROM draws GROUP BY lot_id) AS d WHERE l.lot_id = d.lot_id
                RETURNING l.lot_id
            ), funded AS (
                INSERT INTO coin_funding (transaction_id, lot_id, ledger_account_id, purchase_id, coins, used_for)
                SELECT transaction_id, lot_id, ledger_account_id, purchase_id, coins, 'spend' FROM draws
            ), outcomes AS ("""
            + recorded.sql
            + """)
            SELECT ledger_account_id, coins, (SELECT count(*) FROM drawn) AS lots_drawn FROM moved
            """,
            [transaction_id for transaction_id, _ in legs],
            [leg.ledger_account_id for _, leg in legs],
            [leg.coins_delta for _, leg in legs],
            [leg.balance_after for _, leg in legs],
            [spend.transaction_id for spend in spends],
            [spend.request_id for spend in spends],
            [spend.account_id for spend in spends],
            [spend.reference for spend in spends],
            [transaction_id for transaction_id, _ in draws],
            [draw.lot_id for _, draw in draws],
            [draw.ledger_account_id for _, draw in draws],
            [draw.purchase_id for _, draw in draws],
            [draw.coins for _, draw in draws],
            *recorded.args,
        )
        expected = {leg.ledger_account_id: leg.balance_after for _, leg in legs if leg.balance_after is not None}
        actual = {row["ledger_account_id"]: row["coins"] for row in moved}
        # Raised inside the caller's transaction, so a disagreement (a bug, or a missing bucket) writes nothing.
        assert actual == expected, f"spend batch balances disagree: expected {expected}, database has {actual}"
        lots_drawn = moved[0]["lots_drawn"] if moved else 0
        assert lots_drawn == len({d.lot_id for _, d in draws if d.lot_id is not None}), "a spend drew a missing lot"

    # --- funding ------------------------------------------------------------------------------------------------

    async def lots_of(self, account_ids: list[str]) -> list[Lot]:
        """The unspent lots of the accounts' buckets, oldest first. Call with the buckets locked."""
        ledger_account_ids = [bucket for account_id in account_ids for bucket in buckets(account_id)]
        rows = await self._conn.fetch(
            f"SELECT {LOT_COLUMNS} FROM coin_lots WHERE ledger_account_id = ANY($1::text[]) AND coins > 0"
            " ORDER BY lot_id",
            ledger_account_ids,
        )
        return [Lot(**dict(row)) for row in rows]

    async def purchase_lots(self, purchase_id: str) -> list[Lot]:
        """The purchase's coins still unspent, wherever they are (its buyer's, giveaway winners'), oldest first."""
        rows = await self._conn.fetch(
            f"SELECT {LOT_COLUMNS} FROM coin_lots WHERE purchase_id = $1 AND coins > 0 ORDER BY lot_id", purchase_id
        )
        return [Lot(**dict(row)) for row in rows]

    async def traced_uses(self, purchase_id: str) -> list[EarlierUse]:
        """The purchase's coins used (spent, charged, repaying debt) and not yet reversed, with the gift a spend
        paid for."""
        rows = await self._conn.fetch(
            "SELECT f.funding_id, f.ledger_account_id, f.used_for, t.reference,"
            "  (f.coins - coalesce(sum(a.coins), 0))::bigint AS coins_left"
            " FROM coin_funding AS f JOIN transactions AS t USING (transaction_id)"
            " LEFT JOIN reversal_allocations AS a USING (funding_id)"
            " WHERE f.purchase_id = $1 AND f.used_for = ANY($2::text[])"
            " GROUP BY f.funding_id, t.reference HAVING f.coins > coalesce(sum(a.coins), 0)"
            " ORDER BY f.funding_id",
            purchase_id,
            [use.value for use in TRACED_USES],
        )
        return [
            EarlierUse(
                row["funding_id"],
                row["ledger_account_id"],
                row["coins_left"],
                gift_of(row["reference"]) if row["used_for"] == Use.SPEND.value else None,
            )
            for row in rows
        ]

    async def record_funding(self, transaction_id: str, fundings: list[Funding], new_lots: list[NewLot]) -> None:
        """One statement: the lots drawn (each lowered), their funding rows, and the new lots (made by
        transaction_id). The lots' own CHECK refuses a draw larger than a lot."""
        drawn = await self._conn.fetchval(
            """
            WITH draws AS (
                SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::text[])
                    AS d (transaction_id, lot_id, ledger_account_id, purchase_id, coins, used_for)
            ), drawn AS (
                UPDATE coin_lots AS l SET coins = l.coins - d.coins
                FROM (SELECT lot_id, sum(coins) AS coins FROM draws WHERE lot_id IS NOT NULL GROUP BY lot_id) AS d
                WHERE l.lot_id = d.lot_id
                RETURNING l.lot_id
            ), funded AS (
                INSERT INTO coin_funding (transaction_id, lot_id, ledger_account_id, purchase_id, coins, used_for)
                SELECT transaction_id, lot_id, ledger_account_id, purchase_id, coins, used_for FROM draws
            ), made AS (
                INSERT INTO coin_lots (ledger_account_id, purchase_id, coins, transaction_id)
                SELECT ledger_account_id, purchase_id, coins, $10
                FROM unnest($7::text[], $8::text[], $9::bigint[]) WITH ORDINALITY
                    AS n (ledger_account_id, purchase_id, coins, position)
                ORDER BY position
            )
            SELECT count(*) FROM drawn
            """,
            [f.transaction_id for f in fundings],
            [f.draw.lot_id for f in fundings],
            [f.draw.ledger_account_id for f in fundings],
            [f.draw.purchase_id for f in fundings],
            [f.draw.coins for f in fundings],
            [f.used_for.value for f in fundings],
            [lot.ledger_account_id for lot in new_lots],
            [lot.purchase_id for lot in new_lots],
            [lot.coins for lot in new_lots],
            transaction_id,
        )
        lots = {f.draw.lot_id for f in fundings if f.draw.lot_id is not None}
        assert drawn == len(lots), f"{transaction_id} drew lots that are not there"

    # --- purchases ----------------------------------------------------------------------------------------------

    async def insert_purchase(self, purchase: Purchase) -> None:
        await self._conn.execute(
            f"INSERT INTO purchases ({PURCHASE_COLUMNS})"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
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
            purchase.promotion_id,
            purchase.caller,
            purchase.rail,
            purchase.store_transaction_id,
            purchase.storefront_country,
            purchase.terms_version,
        )

    async def lock_purchase(self, purchase_id: str) -> Purchase | None:
        """NO KEY: it serializes the purchase's completion and reversals, but not the foreign-key checks of the lots
        that name it (a giveaway moving its coins, which locks buckets first, would deadlock a reversal)."""
        row = await self._conn.fetchrow(
            f"SELECT {PURCHASE_COLUMNS} FROM purchases WHERE purchase_id = $1 FOR NO KEY UPDATE", purchase_id
        )
        return None if row is None else _purchase(row)

    async def purchase_history(self, account_id: str) -> PurchaseHistory:
        rows = await self._conn.fetch(
            "SELECT promotion_id, count(*) AS purchases FROM purchases"
            " WHERE account_id = $1 AND status IN ('pending', 'completed') GROUP BY promotion_id",
            account_id,
        )
        return PurchaseHistory(
            purchases=sum(row["purchases"] for row in rows),
            uses_by_promotion={row["promotion_id"]: row["purchases"] for row in rows if row["promotion_id"]},
        )

    async def purchase_attempts(
        self, account_id: str, caller: str, limits: DeclineLimits, undecided_within: timedelta
    ) -> PurchaseAttempts:
        """One statement; each count reads no more than its limit's newest declines, through its own index
        (migration 0007). Call with the account locked, so its pending purchases are the ones committed."""
        row = await self._conn.fetchrow(
            "SELECT by_account.declines AS account_declines, by_account.oldest AS account_oldest,"
            " by_caller.declines AS caller_declines, by_caller.oldest AS caller_oldest,"
            " (SELECT count(*) FROM purchases WHERE account_id = $1 AND status = 'pending'"
            "  AND created_at > now() - make_interval(secs => $6)) AS account_undecided,"
            " now() AS now"
            f" FROM ({_newest_declines('account_id', '$1', '$3')}) AS by_account,"
            f" ({_newest_declines('caller', '$2', '$4')}) AS by_caller",
            account_id,
            caller,
            limits.per_account,
            limits.per_caller,
            DECLINE_WINDOW.total_seconds(),
            undecided_within.total_seconds(),
        )
        assert row is not None, "aggregates without GROUP BY return one row"
        return PurchaseAttempts(
            Declines(row["account_declines"], row["account_oldest"]),
            Declines(row["caller_declines"], row["caller_oldest"]),
            row["account_undecided"],
            row["now"],
        )

    async def finish_purchase(
        self, purchase_id: str, status: PurchaseStatus, provider_reference: str, transaction_id: str | None
    ) -> None:
        await self._conn.execute(
            "UPDATE purchases SET status = $2, provider_reference = $3, transaction_id = $4, updated_at = now()"
            " WHERE purchase_id = $1 AND status = 'pending'",
            purchase_id,
            status.value,
            provider_reference,
            transaction_id,
        )

    async def reopen_declined_purchase(self, purchase_id: str) -> None:
        await self._conn.execute(
            "UPDATE purchases SET status = 'pending', updated_at = now()"
            " WHERE purchase_id = $1 AND status = 'declined'",
            purchase_id,
        )

    async def record_rail_transaction(self, purchase_id: str, rail_transaction_id: str) -> None:
        # updated_at: when the rail was last asked about a purchase left pending (stale_pending_purchases).
        await self._conn.execute(
            "UPDATE purchases SET store_transaction_id = coalesce(store_transaction_id, $2), updated_at = now()"
            " WHERE purchase_id = $1",
            purchase_id,
            rail_transaction_id,
        )

    # --- purchases through rails ------------------------------------------------------------------------------

    async def lock_store_transaction(self, rail: str, store_transaction_id: str) -> Purchase | None:
        # A transaction-scoped advisory lock on the pair: two redeems of one store transaction (by two accounts, at
        # once) and its notifications take turns, so the second finds the first's purchase rather than failing on
        # the unique index.
        await self._conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))", rail, store_transaction_id
        )
        row = await self._conn.fetchrow(
            f"SELECT {PURCHASE_COLUMNS} FROM purchases WHERE rail = $1 AND store_transaction_id = $2",
            rail,
            store_transaction_id,
        )
        return None if row is None else _purchase(row)

    async def record_notification(self, rail: str, notification_id: str, kind: str) -> bool:
        status = await self._conn.execute(
            "INSERT INTO rail_notifications (rail, notification_id, kind) VALUES ($1, $2, $3)"
            " ON CONFLICT (rail, notification_id) DO NOTHING",
            rail,
            notification_id,
            kind,
        )
        return bool(status == "INSERT 0 1")

    async def insert_early_reversal(self, reversal: RailReversal) -> None:
        await self._conn.execute(
            "INSERT INTO early_reversals"
            " (rail, notification_id, store_transaction_id, share_numerator, share_denominator, reason)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            reversal.rail,
            reversal.notification_id,
            reversal.store_transaction_id,
            reversal.share.numerator,
            reversal.share.denominator,
            reversal.reason,
        )

    async def early_reversals(self, rail: str, store_transaction_id: str) -> list[RailReversal]:
        rows = await self._conn.fetch(
            "SELECT notification_id, share_numerator, share_denominator, reason FROM early_reversals"
            " WHERE rail = $1 AND store_transaction_id = $2 ORDER BY received_at, notification_id",
            rail,
            store_transaction_id,
        )
        return [
            RailReversal(
                rail,
                row["notification_id"],
                store_transaction_id,
                Fraction(row["share_numerator"], row["share_denominator"]),
                row["reason"],
            )
            for row in rows
        ]

    async def mark_store_unfinished(self, purchase_id: str) -> None:
        await self._conn.execute("UPDATE purchases SET store_finished = false WHERE purchase_id = $1", purchase_id)

    async def mark_store_finished(self, purchase_id: str) -> None:
        await self._conn.execute("UPDATE purchases SET store_finished = true WHERE purchase_id = $1", purchase_id)

    async def reversed_so_far(self, purchase_id: str) -> ReversedSoFar:
        row = await self._conn.fetchrow(
            "SELECT coalesce(sum(reversed_coins), 0)::bigint AS coins,"
            " coalesce(sum(reversed_bonus_coins), 0)::bigint AS bonus_coins,"
            " (array_agg(transaction_id ORDER BY created_at DESC, transaction_id DESC))[1] AS last_transaction_id"
            " FROM purchase_reversals WHERE purchase_id = $1",
            purchase_id,
        )
        assert row is not None, "an aggregate without GROUP BY returns one row"
        return ReversedSoFar(row["coins"], row["bonus_coins"], row["last_transaction_id"])

    async def insert_reversal(self, reversal: PurchaseReversal, allocations: list[Allocation]) -> None:
        """The reversal and what it traced its coins to, in one statement."""
        await self._conn.execute(
            """
            WITH reversal AS (
                INSERT INTO purchase_reversals (purchase_id, request_id, transaction_id, reason, paid_coins,
                    bonus_coins, reversed_coins, reversed_bonus_coins, removed_coins, clawed_back_coins)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
            )
            INSERT INTO reversal_allocations (transaction_id, funding_id, coins, gift_transaction_id)
            SELECT $3, funding_id, coins, gift_transaction_id
            FROM unnest($11::bigint[], $12::bigint[], $13::text[]) AS a (funding_id, coins, gift_transaction_id)
            """,
            reversal.purchase_id,
            reversal.request_id,
            reversal.transaction_id,
            reversal.reason,
            reversal.taken.paid_coins,
            reversal.taken.bonus_coins,
            reversal.reversed.paid_coins,
            reversal.reversed.bonus_coins,
            reversal.removed_coins,
            reversal.clawed_back_coins,
            [a.funding_id for a in allocations],
            [a.coins for a in allocations],
            [a.gift_transaction_id for a in allocations],
        )

    # --- giveaways ----------------------------------------------------------------------------------------------

    async def insert_giveaway(
        self,
        *,
        giveaway_id: str,
        request_id: str,
        creator_id: str,
        coins_per_winner: int,
        winner_ids: list[str],
        transaction_id: str,
    ) -> None:
        await self._conn.execute(
            "INSERT INTO giveaways (giveaway_id, request_id, creator_id, coins_per_winner, winner_ids, transaction_id)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            giveaway_id,
            request_id,
            creator_id,
            coins_per_winner,
            winner_ids,
            transaction_id,
        )

    # --- promotions ---------------------------------------------------------------------------------------------

    async def insert_promotion(self, promotion: Promotion) -> Promotion:
        row = await self._conn.fetchrow(
            "INSERT INTO promotions (promotion_id, name, starts_at, ends_at, min_package_coins, bonus_percent,"
            " bonus_coins, first_purchase_only, max_uses_per_account)"
            f" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {PROMOTION_COLUMNS}",
            promotion.promotion_id,
            promotion.name,
            promotion.starts_at,
            promotion.ends_at,
            promotion.min_package_coins,
            promotion.bonus_percent,
            promotion.bonus_coins,
            promotion.first_purchase_only,
            promotion.max_uses_per_account,
        )
        assert row is not None, "an INSERT … RETURNING returns its row"
        return _promotion(row)

    async def lock_promotion(self, promotion_id: str) -> Promotion | None:
        row = await self._conn.fetchrow(
            f"SELECT {PROMOTION_COLUMNS} FROM promotions WHERE promotion_id = $1 FOR UPDATE", promotion_id
        )
        return None if row is None else _promotion(row)

    async def set_promotion_end(self, promotion_id: str, ends_at: datetime) -> Promotion:
        row = await self._conn.fetchrow(
            f"UPDATE promotions SET ends_at = $2 WHERE promotion_id = $1 RETURNING {PROMOTION_COLUMNS}",
            promotion_id,
            ends_at,
        )
        assert row is not None, f"promotion {promotion_id} vanished"
        return _promotion(row)

    async def open_promotions(self) -> tuple[list[Promotion], datetime]:
        return await _open_promotions(self._conn)


# --- queries run both inside a transaction and on their own ------------------------------------------------------


async def _get_account(conn: Executor, account_id: str) -> Account | None:
    row = await conn.fetchrow(f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id = $1", account_id)
    return None if row is None else _account(row)


async def _get_balance(conn: Executor, account_id: str) -> Balance:
    rows = await conn.fetch(
        "SELECT ledger_account_id, coins FROM ledger_accounts WHERE ledger_account_id = ANY($1::text[])",
        buckets(account_id),
    )
    return _balance(account_id, {row["ledger_account_id"]: row["coins"] for row in rows})


async def _open_promotions(conn: Executor) -> tuple[list[Promotion], datetime]:
    """Promotions open now, and that now (the database's, which the window was compared with)."""
    rows = await conn.fetch(
        f"SELECT {PROMOTION_COLUMNS}, now() AS now FROM promotions"
        " WHERE starts_at <= now() AND (ends_at IS NULL OR ends_at > now())"
    )
    now: datetime = rows[0]["now"] if rows else await conn.fetchval("SELECT now()")
    return [_promotion(row) for row in rows], now


# Groups an account's postings per transaction (both buckets); a bucket the transaction did not touch shows its
# balance after its previous posting.
_MOVEMENTS = """
    grouped AS (
        SELECT transaction_id, min(posting_id) AS posting_id, min(created_at) AS created_at,
               coalesce(sum(coins_delta) FILTER (WHERE ledger_account_id = $1), 0)::bigint AS paid_delta,
               coalesce(sum(coins_delta) FILTER (WHERE ledger_account_id = $2), 0)::bigint AS bonus_delta,
               max(balance_after) FILTER (WHERE ledger_account_id = $1) AS paid_after,
               max(balance_after) FILTER (WHERE ledger_account_id = $2) AS bonus_after
        FROM mine GROUP BY transaction_id
    )
    SELECT g.posting_id, g.transaction_id, t.kind, t.account_id AS initiator_id, t.reference,
           g.paid_delta, g.bonus_delta,
           coalesce(g.paid_after, (SELECT balance_after FROM postings WHERE ledger_account_id = $1
                                   AND posting_id < g.posting_id ORDER BY posting_id DESC LIMIT 1), 0) AS paid_after,
           coalesce(g.bonus_after, (SELECT balance_after FROM postings WHERE ledger_account_id = $2
                                    AND posting_id < g.posting_id ORDER BY posting_id DESC LIMIT 1), 0) AS bonus_after,
           g.created_at
    FROM grouped AS g JOIN transactions AS t USING (transaction_id)
"""


def _newest_declines(column: str, value: str, limit: str) -> str:
    """A subquery: the newest declined purchases of one account or caller in the card-testing window (the window's
    seconds are $5), as many as the limit counts (LIMIT 0 reads none): how many, and the oldest of them. A declined
    purchase is final, so its updated_at is when it was declined."""
    return (
        "SELECT count(*) AS declines, min(updated_at) AS oldest FROM ("
        f" SELECT updated_at FROM purchases WHERE {column} = {value} AND status = 'declined'"
        f"  AND updated_at > now() - make_interval(secs => $5) ORDER BY updated_at DESC LIMIT {limit}) AS newest"
    )


# --- rows to domain ---------------------------------------------------------------------------------------------


def _account(row: asyncpg.Record) -> Account:
    return Account(
        row["account_id"],
        row["adult_verified"],
        row["country_code"],
        AccountStatus(row["status"]),
        SpendingLimit(row["daily_limit_coins"], row["pending_daily_limit_coins"], row["pending_limit_effective_at"]),
    )


def _lots_from_arrays(row: asyncpg.Record) -> tuple[Lot, ...]:
    if row["lot_ids"] is None:
        return ()
    return tuple(
        Lot(*lot)
        for lot in zip(row["lot_ids"], row["lot_buckets"], row["lot_purchases"], row["lot_coins"], strict=True)
    )


def _balance(account_id: str, coins_by_bucket: dict[str, int]) -> Balance:
    return Balance(coins_by_bucket.get(paid_bucket(account_id), 0), coins_by_bucket.get(bonus_bucket(account_id), 0))


def _purchase(row: asyncpg.Record) -> Purchase:
    return _purchase_from(dict(row))


def _purchase_from(values: dict[str, Any]) -> Purchase:
    values["status"] = PurchaseStatus(values["status"])
    return Purchase(**values)


def _promotion(row: asyncpg.Record) -> Promotion:
    return Promotion(**{key: value for key, value in dict(row).items() if key not in ("position", "now")})
