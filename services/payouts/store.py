"""All of the payouts service's SQL: the PostgreSQL implementation of services/payouts/ports.py. A
PostgresTransaction runs its statements on one connection inside one database transaction, whose boundaries the use
cases decide (PostgresPayoutsStore.transaction / run_once); the read-only queries run on the pool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TypeVar

import asyncpg

from services.payouts.domain import (
    Balances,
    Clawback,
    ClawbackTaken,
    ClawbackView,
    ClawedCredit,
    CreatorProfile,
    DiamondCredit,
    DueCredit,
    EarningsGroupBy,
    EarningsRow,
    PayoutNotice,
    PendingWithdrawals,
    Postings,
    SettlementRate,
    Withdrawal,
    WithdrawalStatus,
)
from services.payouts.ports import Operation
from services.runtime import idempotency
from services.runtime.database import Connection, Executor
from services.runtime.errors import unavailable
from services.runtime.outbox import Outbox, OutboxRow
from services.runtime.requests import Reply, RequestKey

# The relay's advisory lock key: any constant unlike the other advisory lock keys used on the payouts database.
PAYOUTS_OUTBOX = Outbox("payouts", "payouts_outbox", lock_key=0x7061796F)  # "payo"
PROFILE_COLUMNS = "creator_id, kyc_verified, payout_destination"
BALANCE_COLUMNS = (
    "creator_id, available_diamonds, reserved_diamonds, lifetime_diamonds, pending_diamonds, debt_diamonds,"
    " clawed_back_diamonds"
)
WITHDRAWAL_COLUMNS = (
    "withdrawal_id, request_id, creator_id, diamonds, payout_currency_code, payout_amount_minor, payout_destination,"
    " status, failure_reason, provider_reference, submitted_at, created_at, payout_provider"
)
# A withdrawal the payout worker has not finished: waiting to be handed over, or with the provider.
UNFINISHED = "status IN ('pending', 'submitted')"
# How long a cancel waits for the payout worker to let go of a withdrawal (it holds the row only while it talks to
# the provider) before answering UNAVAILABLE, well within the statement timeout.
WITHDRAWAL_LOCK_TIMEOUT_MS = 5000
# The column of a statement grouped by where the gifts went. Each grouping only has the credits of its own kind of
# target: a video gift is not in the by-stream statement, nor a stream gift in the by-video one.
TARGET_COLUMNS = {EarningsGroupBy.STREAM: "stream_id", EarningsGroupBy.VIDEO: "video_id"}

Result = TypeVar("Result")


class PostgresPayoutsStore:
    # A constraint the data breaks (a CHECK, a unique key, the ledger's balance trigger), a value out of range.
    data_errors: tuple[type[Exception], ...] = (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError)

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTransaction]:
        async with self._pool.acquire() as conn, conn.transaction():
            yield PostgresTransaction(conn)

    async def run_once(self, key: RequestKey, operation: Operation[Result], reply: Reply[Result]) -> Result:
        """The runtime's idempotency: the key claimed and the reply stored in the operation's transaction."""

        async def in_transaction(conn: Connection) -> Result:
            return await operation(PostgresTransaction(conn))

        return await idempotency.run_once(self._pool, key, reply, in_transaction)

    async def current_rate(self) -> SettlementRate | None:
        return await _current_rate(self._pool)

    async def get_balances(self, creator_id: str) -> Balances | None:
        row = await self._pool.fetchrow(
            f"SELECT {BALANCE_COLUMNS} FROM creator_balances WHERE creator_id = $1", creator_id
        )
        return None if row is None else Balances(**dict(row))

    async def get_withdrawal(self, withdrawal_id: str) -> Withdrawal | None:
        row = await self._pool.fetchrow(
            f"SELECT {WITHDRAWAL_COLUMNS} FROM withdrawals WHERE withdrawal_id = $1", withdrawal_id
        )
        return None if row is None else _withdrawal(row)

    async def list_withdrawals(
        self, creator_id: str, before: tuple[datetime, str] | None, limit: int
    ) -> list[Withdrawal]:
        """Newest first; before is the (created_at, withdrawal_id) of the last row of the previous page."""
        created_before, id_before = before if before is not None else (None, None)
        rows = await self._pool.fetch(
            f"SELECT {WITHDRAWAL_COLUMNS} FROM withdrawals WHERE creator_id = $1"
            " AND ($2::timestamptz IS NULL OR (created_at, withdrawal_id) < ($2, $3::text))"
            " ORDER BY created_at DESC, withdrawal_id DESC LIMIT $4",
            creator_id,
            created_before,
            id_before,
            limit,
        )
        return [_withdrawal(row) for row in rows]

    async def pending_withdrawals(self) -> PendingWithdrawals:
        """The unfinished withdrawals, for the metrics: few rows, found through the partial index on them (the
        finished ones, which only grow, are never counted here). With the provider: submitted, or a sandbox payout
        pending with its reference."""
        row = await self._pool.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'pending' AND provider_reference IS NULL) AS queued,"
            " count(*) FILTER (WHERE status = 'submitted' OR provider_reference IS NOT NULL) AS with_provider,"
            " coalesce(extract(epoch FROM now() - min(created_at)), 0) AS oldest"
            f" FROM withdrawals WHERE {UNFINISHED}"
        )
        assert row is not None
        return PendingWithdrawals(row["queued"], row["with_provider"], float(row["oldest"]))

    # --- statements ---------------------------------------------------------------------------------------------------

    async def earnings_by_day(self, creator_id: str, before: datetime | None, limit: int) -> list[EarningsRow]:
        """Per UTC day, newest day first, stream and video gifts alike; before is the start of the last day of the
        previous page."""
        rows = await self._pool.fetch(
            "SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS key, sum(diamonds)::bigint AS diamonds,"
            " count(*) AS gift_count, max(created_at) AS latest_credit_at"
            " FROM diamond_credits WHERE creator_id = $1 AND ($2::timestamptz IS NULL OR created_at < $2)"
            " GROUP BY 1 ORDER BY 1 DESC LIMIT $3",
            creator_id,
            before,
            limit,
        )
        return [EarningsRow(**dict(row)) for row in rows]

    async def earnings_by_target(
        self, group_by: EarningsGroupBy, creator_id: str, after: tuple[datetime, str] | None, limit: int
    ) -> list[EarningsRow]:
        """Per stream or per video, the one with the newest credit first (then by id); after is the (latest credit, id)
        of the last row of the previous page. Totals over the creator's credits, grouped per page."""
        column = TARGET_COLUMNS[group_by]
        latest_after, key_after = after if after is not None else (None, None)
        rows = await self._pool.fetch(
            f"SELECT {column} AS key, sum(diamonds)::bigint AS diamonds, count(*) AS gift_count,"
            " max(created_at) AS latest_credit_at"
            f" FROM diamond_credits WHERE creator_id = $1 AND {column} IS NOT NULL GROUP BY {column}"
            " HAVING $2::timestamptz IS NULL"
            f" OR (max(created_at) < $2 OR (max(created_at) = $2 AND {column} > $3::text))"
            f" ORDER BY latest_credit_at DESC, {column} LIMIT $4",
            creator_id,
            latest_after,
            key_after,
            limit,
        )
        return [EarningsRow(**dict(row)) for row in rows]

    async def list_clawbacks(
        self, creator_id: str, before: tuple[datetime, str] | None, limit: int
    ) -> list[ClawbackView]:
        """A creator's applied clawbacks, newest first, one per reversal and gift; before is the (applied_at,
        "<reversal>/<gift>") of the previous page's last."""
        applied_before, key_before = before if before is not None else (None, None)
        rows = await self._pool.fetch(
            "SELECT reversal_id, gift_transaction_id, coins, diamonds, from_pending, from_available, to_debt,"
            " applied_at AS clawed_back_at"
            " FROM clawbacks WHERE creator_id = $1 AND applied_at IS NOT NULL"
            " AND ($2::timestamptz IS NULL OR (applied_at, reversal_id || '/' || gift_transaction_id) < ($2, $3::text))"
            " ORDER BY applied_at DESC, reversal_id || '/' || gift_transaction_id DESC LIMIT $4",
            creator_id,
            applied_before,
            key_before,
            limit,
        )
        return [ClawbackView(**dict(row)) for row in rows]

    async def settled_gifts_with_waiting_clawbacks(self, limit: int) -> list[str]:
        """Gifts settled whose clawbacks still wait (a settlement of a release without clawbacks credited them)."""
        rows = await self._pool.fetch(
            "SELECT DISTINCT c.gift_transaction_id FROM clawbacks AS c"
            " JOIN diamond_credits AS d USING (gift_transaction_id) WHERE c.applied_at IS NULL LIMIT $1",
            limit,
        )
        return [row["gift_transaction_id"] for row in rows]


class PostgresTransaction:
    """The statements of one database transaction, on its connection."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    # --- settlement rates ---------------------------------------------------------------------------------------------

    async def lock_rates(self) -> None:
        """Held to the end of the transaction, so replicas starting together never take the same version twice."""
        await self._conn.execute("LOCK TABLE settlement_rates IN SHARE ROW EXCLUSIVE MODE")

    async def insert_next_rate(self, numerator: int, denominator: int) -> SettlementRate:
        row = await self._conn.fetchrow(
            "INSERT INTO settlement_rates (version, numerator, denominator)"
            " SELECT coalesce(max(version), 0) + 1, $1, $2 FROM settlement_rates"
            " RETURNING version, numerator, denominator",
            numerator,
            denominator,
        )
        assert row is not None, "INSERT … RETURNING returns the row"
        return SettlementRate(**dict(row))

    async def current_rate(self) -> SettlementRate | None:
        return await _current_rate(self._conn)

    # --- creators -----------------------------------------------------------------------------------------------------

    async def upsert_profile(self, profile: CreatorProfile) -> CreatorProfile:
        row = await self._conn.fetchrow(
            f"INSERT INTO creator_profiles ({PROFILE_COLUMNS}) VALUES ($1, $2, $3)"
            " ON CONFLICT (creator_id) DO UPDATE SET kyc_verified = EXCLUDED.kyc_verified,"
            " payout_destination = EXCLUDED.payout_destination, updated_at = now()"
            f" RETURNING {PROFILE_COLUMNS}",
            profile.creator_id,
            profile.kyc_verified,
            profile.payout_destination,
        )
        assert row is not None, "INSERT … RETURNING returns the row"
        return CreatorProfile(**dict(row))

    async def get_profile(self, creator_id: str) -> CreatorProfile | None:
        row = await self._conn.fetchrow(
            f"SELECT {PROFILE_COLUMNS} FROM creator_profiles WHERE creator_id = $1", creator_id
        )
        return None if row is None else CreatorProfile(**dict(row))

    async def lock_balances(self, creator_id: str) -> Balances | None:
        """Serializes withdrawals of one creator (and their cap check) with each other and with settlement."""
        row = await self._conn.fetchrow(
            f"SELECT {BALANCE_COLUMNS} FROM creator_balances WHERE creator_id = $1 FOR UPDATE", creator_id
        )
        return None if row is None else Balances(**dict(row))

    async def move_diamonds(self, creator_id: str, *, available_delta: int, reserved_delta: int) -> Balances:
        """Applies the creator's side of a withdrawal's postings; the CHECKs refuse any negative balance."""
        row = await self._conn.fetchrow(
            "UPDATE creator_balances SET available_diamonds = available_diamonds + $2,"
            " reserved_diamonds = reserved_diamonds + $3, updated_at = now()"
            f" WHERE creator_id = $1 RETURNING {BALANCE_COLUMNS}",
            creator_id,
            available_delta,
            reserved_delta,
        )
        assert row is not None, f"no balances for creator {creator_id}"
        return Balances(**dict(row))

    # --- ledger -------------------------------------------------------------------------------------------------------

    async def record_transaction(self, *, transaction_id: str, kind: str, reference: str, postings: Postings) -> None:
        """The transaction and all of its postings in one statement (the balance trigger checks per statement)."""
        await self._conn.execute(
            """
            WITH recorded AS (
                INSERT INTO ledger_transactions (transaction_id, kind, reference) VALUES ($1, $2, $3)
            )
            INSERT INTO postings (transaction_id, ledger_account_id, diamonds_delta)
            SELECT $1, p.ledger_account_id, p.diamonds_delta
            FROM unnest($4::text[], $5::bigint[]) AS p (ledger_account_id, diamonds_delta)
            """,
            transaction_id,
            kind,
            reference,
            [account for account, _ in postings],
            [delta for _, delta in postings],
        )

    # --- settlement ---------------------------------------------------------------------------------------------------

    async def admit_to_inbox(self, gift_transaction_ids: list[str]) -> set[str]:
        """The ids not seen before; the others were settled already (or are being settled by a concurrent batch,
        which this statement then waits for). Sorted so concurrent batches take the key locks in the same order."""
        rows = await self._conn.fetch(
            "INSERT INTO inbox (gift_transaction_id) SELECT id FROM unnest($1::text[]) AS id ORDER BY id"
            " ON CONFLICT (gift_transaction_id) DO NOTHING RETURNING gift_transaction_id",
            sorted(gift_transaction_ids),
        )
        return {row["gift_transaction_id"] for row in rows}

    async def lock_carries(self, rate_version: int, creator_ids: list[str]) -> dict[str, int]:
        """The creators' carried fractions at this rate version, locked (rows made on first use), in creator id order
        like every other lock settlement takes, so concurrent batches cannot deadlock."""
        ordered = sorted(creator_ids)
        await self._conn.execute(
            "INSERT INTO settlement_carries (creator_id, rate_version, remainder)"
            " SELECT c.creator_id, $2, 0 FROM unnest($1::text[]) WITH ORDINALITY AS c (creator_id, position)"
            " ORDER BY c.position ON CONFLICT (creator_id, rate_version) DO NOTHING",
            ordered,
            rate_version,
        )
        rows = await self._conn.fetch(
            "SELECT creator_id, remainder FROM settlement_carries"
            " WHERE rate_version = $2 AND creator_id = ANY($1::text[])"
            " ORDER BY creator_id FOR UPDATE",
            ordered,
            rate_version,
        )
        return {row["creator_id"]: row["remainder"] for row in rows}

    async def save_carries(self, rate_version: int, remainders: dict[str, int]) -> None:
        await self._conn.execute(
            "UPDATE settlement_carries AS s SET remainder = c.remainder, updated_at = now()"
            " FROM unnest($1::text[], $2::bigint[]) AS c (creator_id, remainder)"
            " WHERE s.creator_id = c.creator_id AND s.rate_version = $3",
            list(remainders),
            list(remainders.values()),
            rate_version,
        )

    async def insert_credits(
        self,
        *,
        transaction_id: str,
        rate_version: int,
        credits: list[DiamondCredit],
        hold_seconds: int,
    ) -> None:
        """Without a hold a credit is available at once (matured when made); with one it waits until available_at.
        Each credit names its stream or its video, the other column NULL (the table's CHECK)."""
        await self._conn.execute(
            "INSERT INTO diamond_credits"
            " (gift_transaction_id, creator_id, stream_id, video_id, coins, diamonds, paid_coins, bonus_coins,"
            "  rate_version, transaction_id, available_at, matured_at)"
            " SELECT c.gift_transaction_id, c.creator_id, c.stream_id, c.video_id, c.coins, c.diamonds, c.paid_coins,"
            "  c.bonus_coins, $9, $10, now() + make_interval(secs => $11::integer),"
            "  CASE WHEN $11::integer = 0 THEN now() END"
            " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[],"
            "  $8::bigint[]) AS c (gift_transaction_id, creator_id, stream_id, video_id, coins, diamonds, paid_coins,"
            "  bonus_coins)",
            [credit.gift_transaction_id for credit in credits],
            [credit.creator_id for credit in credits],
            [credit.stream_id for credit in credits],
            [credit.video_id for credit in credits],
            [credit.coins for credit in credits],
            [credit.diamonds for credit in credits],
            [credit.paid_coins for credit in credits],
            [credit.bonus_coins for credit in credits],
            rate_version,
            transaction_id,
            hold_seconds,
        )

    async def credit_creators(self, diamonds_per_creator: dict[str, int], *, held: bool) -> list[Balances]:
        """One row update (or first insert) per creator, in the caller's (sorted) order: to pending while a maturity
        hold applies, else to available. Returns the rows as they are now (the caller repays debts from them)."""
        column = "pending_diamonds" if held else "available_diamonds"
        rows = await self._conn.fetch(
            f"INSERT INTO creator_balances (creator_id, {column}, lifetime_diamonds)"
            " SELECT c.creator_id, c.diamonds, c.diamonds"
            " FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS c (creator_id, diamonds, position)"
            " ORDER BY c.position"
            " ON CONFLICT (creator_id) DO UPDATE SET"
            f" {column} = creator_balances.{column} + EXCLUDED.{column},"
            " lifetime_diamonds = creator_balances.lifetime_diamonds + EXCLUDED.lifetime_diamonds, updated_at = now()"
            f" RETURNING {BALANCE_COLUMNS}",
            list(diamonds_per_creator),
            list(diamonds_per_creator.values()),
        )
        return [Balances(**dict(row)) for row in rows]

    async def repay_debts(self, repaid_per_creator: dict[str, int]) -> None:
        """available → debt per creator (rows the caller holds); the CHECKs refuse overpaying either."""
        await self._conn.execute(
            "UPDATE creator_balances AS b SET available_diamonds = b.available_diamonds - r.diamonds,"
            " debt_diamonds = b.debt_diamonds - r.diamonds, updated_at = now()"
            " FROM unnest($1::text[], $2::bigint[]) AS r (creator_id, diamonds) WHERE b.creator_id = r.creator_id",
            list(repaid_per_creator),
            list(repaid_per_creator.values()),
        )

    # --- maturity -----------------------------------------------------------------------------------------------------

    async def lock_due_credits(self, limit: int, creator_id: str | None = None) -> list[DueCredit]:
        """Up to limit pending credits whose hold is over (of one creator, or of anyone), locked. Credits another
        transaction holds are skipped, not waited on: it is maturing them, and waiting could deadlock a withdrawal
        (which holds its creator's balance row) against the maturity worker (which takes credits, then balances)."""
        # Two statements rather than one with "$2 IS NULL OR …", so each keeps a plan on its own partial index.
        # What matures is what clawbacks left of the held diamonds.
        due = (
            "SELECT gift_transaction_id, creator_id, diamonds - held_clawed_back AS diamonds FROM diamond_credits"
            " WHERE matured_at IS NULL"
        )
        locked = " AND available_at <= now() ORDER BY available_at LIMIT $1 FOR UPDATE SKIP LOCKED"
        if creator_id is None:
            rows = await self._conn.fetch(due + locked, limit)
        else:
            rows = await self._conn.fetch(due + " AND creator_id = $2" + locked, limit, creator_id)
        return [DueCredit(**dict(row)) for row in rows]

    async def mark_matured(self, gift_transaction_ids: list[str], transaction_id: str) -> None:
        result = await self._conn.execute(
            "UPDATE diamond_credits SET matured_at = now(), maturity_transaction_id = $2"
            " WHERE gift_transaction_id = ANY($1::text[]) AND matured_at IS NULL",
            gift_transaction_ids,
            transaction_id,
        )
        # The rows are locked by this transaction, so none can have matured meanwhile; if one had, this rolls back.
        assert result == f"UPDATE {len(gift_transaction_ids)}", f"matured {result} of {len(gift_transaction_ids)}"

    async def move_matured(self, diamonds_per_creator: dict[str, int]) -> list[Balances]:
        """pending → available per creator; the CHECKs refuse a negative pending. The rows are locked in creator id
        order first, as settlement locks them, because an UPDATE … FROM join may visit them in any order. Returns the
        rows as they are now (the caller repays debts from them)."""
        await self._conn.execute(
            "SELECT 1 FROM creator_balances WHERE creator_id = ANY($1::text[]) ORDER BY creator_id FOR UPDATE",
            sorted(diamonds_per_creator),
        )
        rows = await self._conn.fetch(
            "UPDATE creator_balances AS b SET pending_diamonds = b.pending_diamonds - c.diamonds,"
            " available_diamonds = b.available_diamonds + c.diamonds, updated_at = now()"
            " FROM unnest($1::text[], $2::bigint[]) AS c (creator_id, diamonds) WHERE b.creator_id = c.creator_id"
            f" RETURNING {', '.join('b.' + column.strip() for column in BALANCE_COLUMNS.split(','))}",
            list(diamonds_per_creator),
            list(diamonds_per_creator.values()),
        )
        # Settlement made each row with the pending diamonds; a missing one would be a bug: roll back, never guess.
        assert len(rows) == len(diamonds_per_creator), f"moved {len(rows)} of {len(diamonds_per_creator)} creators"
        return [Balances(**dict(row)) for row in rows]

    # --- clawbacks ----------------------------------------------------------------------------------------------------

    async def hold_off_reversals(self) -> None:
        """Taken first by every settlement: a reversal being applied (exclusive_of_settlements) waits for it, or it
        for the reversal. Without it a reversal and the settlement of one of its gifts could each miss the other's
        uncommitted row (the credit, the waiting clawback), and the clawback would wait forever. A weak table lock:
        settlements never wait for each other on it."""
        await self._conn.execute("LOCK TABLE clawbacks IN ROW SHARE MODE")

    async def exclusive_of_settlements(self) -> None:
        """Taken first by a reversal: settlements in flight finish (their credits are then seen), new ones wait for
        this transaction (its waiting clawbacks are then seen). Reads of the table go on."""
        await self._conn.execute("LOCK TABLE clawbacks IN EXCLUSIVE MODE")

    async def admit_wallet_event(self, msg_id: str) -> bool:
        """Whether the wallet event is new: applied in this transaction, it is never applied again."""
        admitted = await self._conn.fetchval(
            "INSERT INTO wallet_event_inbox (msg_id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING true", msg_id
        )
        return bool(admitted)

    async def insert_clawbacks(self, purchase_id: str, clawbacks: list[Clawback]) -> list[Clawback]:
        """The clawbacks not recorded before (a reversal's gift is recorded once, whatever redelivers it)."""
        rows = await self._conn.fetch(
            "INSERT INTO clawbacks (reversal_id, gift_transaction_id, purchase_id, coins)"
            " SELECT c.reversal_id, c.gift_transaction_id, $4, c.coins"
            " FROM unnest($1::text[], $2::text[], $3::bigint[]) AS c (reversal_id, gift_transaction_id, coins)"
            " ON CONFLICT DO NOTHING RETURNING reversal_id, gift_transaction_id, coins",
            [c.reversal_id for c in clawbacks],
            [c.gift_transaction_id for c in clawbacks],
            [c.coins for c in clawbacks],
            purchase_id,
        )
        return [Clawback(**dict(row)) for row in rows]

    async def lock_waiting_clawbacks(self, gift_transaction_ids: list[str]) -> list[Clawback]:
        """The clawbacks of these gifts not applied yet, oldest first, locked."""
        rows = await self._conn.fetch(
            "SELECT reversal_id, gift_transaction_id, coins FROM clawbacks"
            " WHERE gift_transaction_id = ANY($1::text[]) AND applied_at IS NULL"
            " ORDER BY received_at, reversal_id, gift_transaction_id FOR UPDATE",
            gift_transaction_ids,
        )
        return [Clawback(**dict(row)) for row in rows]

    async def lock_credits(self, gift_transaction_ids: list[str]) -> dict[str, ClawedCredit]:
        """The settled credits of these gifts, locked (in id order) against maturity and other clawbacks."""
        rows = await self._conn.fetch(
            "SELECT d.gift_transaction_id, d.creator_id, d.rate_version,"
            " CASE WHEN d.matured_at IS NULL THEN d.diamonds - d.held_clawed_back ELSE 0 END AS held_diamonds,"
            " d.coins - coalesce((SELECT sum(c.coins) FROM clawbacks AS c"
            "   WHERE c.gift_transaction_id = d.gift_transaction_id AND c.applied_at IS NOT NULL), 0)::bigint"
            "   AS coins_left"
            " FROM diamond_credits AS d WHERE d.gift_transaction_id = ANY($1::text[])"
            " ORDER BY d.gift_transaction_id FOR UPDATE OF d",
            gift_transaction_ids,
        )
        return {row["gift_transaction_id"]: ClawedCredit(**dict(row)) for row in rows}

    async def rates(self, versions: list[int]) -> dict[int, SettlementRate]:
        rows = await self._conn.fetch(
            "SELECT version, numerator, denominator FROM settlement_rates WHERE version = ANY($1::integer[])", versions
        )
        return {row["version"]: SettlementRate(**dict(row)) for row in rows}

    async def lock_balances_of(self, creator_ids: list[str]) -> dict[str, Balances]:
        rows = await self._conn.fetch(
            f"SELECT {BALANCE_COLUMNS} FROM creator_balances WHERE creator_id = ANY($1::text[])"
            " ORDER BY creator_id FOR UPDATE",
            sorted(creator_ids),
        )
        return {row["creator_id"]: Balances(**dict(row)) for row in rows}

    async def apply_clawbacks(self, taken: list[ClawbackTaken], transaction_id: str) -> None:
        """One statement: each clawback marked applied with what it took, the held diamonds it took off its credit,
        and each creator's balances (pending, available, debt, lifetime clawed back)."""
        await self._conn.execute(
            """
            WITH t AS (
                SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::integer[], $5::bigint[], $6::bigint[],
                    $7::bigint[], $8::bigint[], $10::bigint[])
                    AS t (reversal_id, gift_transaction_id, creator_id, rate_version, diamonds, from_pending,
                          from_available, to_debt, coins)
            ), applied AS (
                UPDATE clawbacks AS c SET coins = t.coins, creator_id = t.creator_id, rate_version = t.rate_version,
                    diamonds = t.diamonds, from_pending = t.from_pending, from_available = t.from_available,
                    to_debt = t.to_debt, transaction_id = $9, applied_at = now()
                FROM t WHERE c.reversal_id = t.reversal_id AND c.gift_transaction_id = t.gift_transaction_id
                    AND c.applied_at IS NULL
            ), held AS (
                UPDATE diamond_credits AS d SET held_clawed_back = d.held_clawed_back + h.diamonds
                FROM (SELECT gift_transaction_id, sum(from_pending) AS diamonds FROM t GROUP BY gift_transaction_id
                      HAVING sum(from_pending) > 0) AS h
                WHERE d.gift_transaction_id = h.gift_transaction_id
            )
            UPDATE creator_balances AS b SET pending_diamonds = b.pending_diamonds - m.from_pending,
                available_diamonds = b.available_diamonds - m.from_available,
                debt_diamonds = b.debt_diamonds + m.to_debt,
                clawed_back_diamonds = b.clawed_back_diamonds + m.diamonds, updated_at = now()
            FROM (SELECT creator_id, sum(diamonds) AS diamonds, sum(from_pending) AS from_pending,
                         sum(from_available) AS from_available, sum(to_debt) AS to_debt
                  FROM t GROUP BY creator_id) AS m
            WHERE b.creator_id = m.creator_id
            """,
            [t.clawback.reversal_id for t in taken],
            [t.clawback.gift_transaction_id for t in taken],
            [t.creator_id for t in taken],
            [t.rate_version for t in taken],
            [t.diamonds for t in taken],
            [t.from_pending for t in taken],
            [t.from_available for t in taken],
            [t.to_debt for t in taken],
            transaction_id,
            [t.clawback.coins for t in taken],
        )

    async def queue_events(self, events: list[OutboxRow]) -> None:
        await PAYOUTS_OUTBOX.insert(self._conn, events)

    async def now(self) -> datetime:
        now: datetime = await self._conn.fetchval("SELECT now()")
        return now

    async def set_account_status(self, account_id: str, frozen: bool, version: int) -> bool:
        """Applies the wallet's status of an account unless a newer version was applied already."""
        applied = await self._conn.fetchval(
            "INSERT INTO wallet_account_status (account_id, frozen, version) VALUES ($1, $2, $3)"
            " ON CONFLICT (account_id) DO UPDATE SET frozen = EXCLUDED.frozen, version = EXCLUDED.version,"
            " updated_at = now() WHERE wallet_account_status.version < EXCLUDED.version RETURNING true",
            account_id,
            frozen,
            version,
        )
        return bool(applied)

    async def account_frozen(self, account_id: str) -> bool:
        frozen = await self._conn.fetchval("SELECT frozen FROM wallet_account_status WHERE account_id = $1", account_id)
        return bool(frozen)

    # --- withdrawals --------------------------------------------------------------------------------------------------

    async def insert_withdrawal(self, withdrawal: Withdrawal, reserve_transaction_id: str) -> None:
        assert withdrawal.status is WithdrawalStatus.PENDING, "withdrawals start pending"
        await self._conn.execute(
            "INSERT INTO withdrawals (withdrawal_id, request_id, creator_id, diamonds, payout_currency_code,"
            " payout_amount_minor, payout_destination, reserve_transaction_id, payout_provider)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            withdrawal.withdrawal_id,
            withdrawal.request_id,
            withdrawal.creator_id,
            withdrawal.diamonds,
            withdrawal.payout_currency_code,
            withdrawal.payout_amount_minor,
            withdrawal.payout_destination,
            reserve_transaction_id,
            withdrawal.payout_provider,
        )

    async def lock_withdrawal(self, withdrawal_id: str) -> Withdrawal | None:
        """The withdrawal, locked against the payout worker; its current status once the worker has let go."""
        await self._conn.execute(f"SET LOCAL lock_timeout = {WITHDRAWAL_LOCK_TIMEOUT_MS}")
        try:
            row = await self._conn.fetchrow(
                f"SELECT {WITHDRAWAL_COLUMNS} FROM withdrawals WHERE withdrawal_id = $1 FOR UPDATE", withdrawal_id
            )
        except asyncpg.LockNotAvailableError:
            raise unavailable("WITHDRAWAL_BUSY", f"withdrawal {withdrawal_id!r} is being paid out; try again") from None
        await self._conn.execute("SET LOCAL lock_timeout = 0")
        return None if row is None else _withdrawal(row)

    async def mark_canceled(self, withdrawal_id: str, finish_transaction_id: str) -> Withdrawal:
        """Pending → canceled (the caller holds the row lock and has returned the diamonds); the provider fields stay as
        they were: a payout canceled before submission never had any."""
        row = await self._conn.fetchrow(
            "UPDATE withdrawals SET status = 'canceled', finish_transaction_id = $2, updated_at = now()"
            f" WHERE withdrawal_id = $1 AND status = 'pending' RETURNING {WITHDRAWAL_COLUMNS}",
            withdrawal_id,
            finish_transaction_id,
        )
        assert row is not None, f"withdrawal {withdrawal_id} was not pending"
        return _withdrawal(row)

    async def diamonds_withdrawn_last_24h(self, creator_id: str) -> int:
        """Pending, submitted and paid withdrawals count toward the cap; failed, canceled and returned ones gave their
        diamonds back."""
        total = await self._conn.fetchval(
            "SELECT coalesce(sum(diamonds), 0) FROM withdrawals WHERE creator_id = $1"
            " AND status IN ('pending', 'submitted', 'paid') AND created_at > now() - interval '24 hours'",
            creator_id,
        )
        return int(total)

    async def lock_next_due_withdrawal(self, payout_provider: str) -> Withdrawal | None:
        """The provider's unfinished withdrawal waiting longest for a look, locked; one another worker holds is
        skipped, not waited on."""
        row = await self._conn.fetchrow(
            f"SELECT {WITHDRAWAL_COLUMNS} FROM withdrawals WHERE {UNFINISHED} AND payout_provider = $1"
            " AND next_check_at <= now() ORDER BY next_check_at LIMIT 1 FOR UPDATE SKIP LOCKED",
            payout_provider,
        )
        return None if row is None else _withdrawal(row)

    async def mark_submitted(self, withdrawal_id: str, check_again_in_seconds: float) -> Withdrawal:
        """Pending → submitted, looked at again after the interval (by then the worker that handed it over has
        recorded the answer, or lost it)."""
        row = await self._conn.fetchrow(
            "UPDATE withdrawals SET status = 'submitted', submitted_at = now(),"
            " next_check_at = clock_timestamp() + make_interval(secs => $2), updated_at = now()"
            f" WHERE withdrawal_id = $1 AND status = 'pending' RETURNING {WITHDRAWAL_COLUMNS}",
            withdrawal_id,
            check_again_in_seconds,
        )
        assert row is not None, f"withdrawal {withdrawal_id} was not pending"
        return _withdrawal(row)

    async def mark_returned(self, withdrawal_id: str, reason: str, return_transaction_id: str) -> bool:
        result = await self._conn.execute(
            "UPDATE withdrawals SET status = 'returned', failure_reason = $2, return_transaction_id = $3,"
            " updated_at = now() WHERE withdrawal_id = $1 AND status = 'paid'",
            withdrawal_id,
            reason,
            return_transaction_id,
        )
        return bool(result == "UPDATE 1")

    async def admit_payout_notification(self, notice: PayoutNotice) -> bool:
        admitted = await self._conn.fetchval(
            "INSERT INTO payout_notifications (payout_provider, notification_id, kind, withdrawal_id)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING true",
            notice.payout_provider,
            notice.notification_id,
            notice.kind,
            notice.withdrawal_id or None,
        )
        return bool(admitted)

    async def record_provider_progress(
        self, withdrawal_id: str, provider_reference: str, check_again_in_seconds: float
    ) -> None:
        """Still with the provider: remember the submission (the first one only) and when to ask again."""
        await self._conn.execute(
            "UPDATE withdrawals SET provider_reference = coalesce(provider_reference, $2),"
            " submitted_at = coalesce(submitted_at, now()),"
            " next_check_at = clock_timestamp() + make_interval(secs => $3), updated_at = now()"
            f" WHERE withdrawal_id = $1 AND {UNFINISHED}",
            withdrawal_id,
            provider_reference,
            check_again_in_seconds,
        )

    async def postpone_check(self, withdrawal_id: str, check_again_in_seconds: float) -> None:
        await self._conn.execute(
            "UPDATE withdrawals SET next_check_at = clock_timestamp() + make_interval(secs => $2), updated_at = now()"
            f" WHERE withdrawal_id = $1 AND {UNFINISHED}",
            withdrawal_id,
            check_again_in_seconds,
        )

    async def finish_withdrawal(
        self,
        withdrawal_id: str,
        *,
        status: WithdrawalStatus,
        failure_reason: str,
        provider_reference: str,
        finish_transaction_id: str,
    ) -> bool:
        """Moves an unfinished withdrawal to its final status; False when it was finished already (nothing changed)."""
        assert status in (WithdrawalStatus.PAID, WithdrawalStatus.FAILED), "finishing needs a final status"
        result = await self._conn.execute(
            "UPDATE withdrawals SET status = $2, failure_reason = $3,"
            " provider_reference = coalesce(provider_reference, $4), submitted_at = coalesce(submitted_at, now()),"
            " finish_transaction_id = $5, updated_at = now()"
            f" WHERE withdrawal_id = $1 AND {UNFINISHED}",
            withdrawal_id,
            status.value,
            failure_reason,
            provider_reference,
            finish_transaction_id,
        )
        return result == "UPDATE 1"


async def _current_rate(conn: Executor) -> SettlementRate | None:
    row = await conn.fetchrow(
        "SELECT version, numerator, denominator FROM settlement_rates ORDER BY version DESC LIMIT 1"
    )
    return None if row is None else SettlementRate(**dict(row))


def _withdrawal(row: asyncpg.Record) -> Withdrawal:
    values = dict(row)
    values["status"] = WithdrawalStatus(values["status"])
    return Withdrawal(**values)
