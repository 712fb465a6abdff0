"""All of the payouts service's SQL. Functions take a connection so the use cases decide the transaction boundaries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.payouts.domain import (
    Balances,
    CreatorProfile,
    DiamondCredit,
    Postings,
    SettlementRate,
    WithdrawalStatus,
)

Executor = asyncpg.Connection | asyncpg.Pool

# --- settlement rates -----------------------------------------------------------------------------------------------


async def lock_rates(conn: asyncpg.Connection) -> None:
    """Held to the end of the transaction, so replicas starting together never take the same version twice."""
    await conn.execute("LOCK TABLE settlement_rates IN SHARE ROW EXCLUSIVE MODE")


async def insert_next_rate(conn: asyncpg.Connection, numerator: int, denominator: int) -> SettlementRate:
    row = await conn.fetchrow(
        "INSERT INTO settlement_rates (version, numerator, denominator)"
        " SELECT coalesce(max(version), 0) + 1, $1, $2 FROM settlement_rates"
        " RETURNING version, numerator, denominator",
        numerator,
        denominator,
    )
    return SettlementRate(**dict(row))


async def current_rate(conn: Executor) -> SettlementRate | None:
    row = await conn.fetchrow(
        "SELECT version, numerator, denominator FROM settlement_rates ORDER BY version DESC LIMIT 1"
    )
    return None if row is None else SettlementRate(**dict(row))


# --- creators ---------------------------------------------------------------------------------------------------------

PROFILE_COLUMNS = "creator_id, kyc_verified, payout_destination"
BALANCE_COLUMNS = "creator_id, available_diamonds, reserved_diamonds, lifetime_diamonds"


async def upsert_profile(conn: asyncpg.Connection, profile: CreatorProfile) -> CreatorProfile:
    row = await conn.fetchrow(
        f"INSERT INTO creator_profiles ({PROFILE_COLUMNS}) VALUES ($1, $2, $3)"
        " ON CONFLICT (creator_id) DO UPDATE SET kyc_verified = EXCLUDED.kyc_verified,"
        " payout_destination = EXCLUDED.payout_destination, updated_at = now()"
        f" RETURNING {PROFILE_COLUMNS}",
        profile.creator_id,
        profile.kyc_verified,
        profile.payout_destination,
    )
    return CreatorProfile(**dict(row))


async def get_profile(conn: Executor, creator_id: str) -> CreatorProfile | None:
    row = await conn.fetchrow(f"SELECT {PROFILE_COLUMNS} FROM creator_profiles WHERE creator_id = $1", creator_id)
    return None if row is None else CreatorProfile(**dict(row))


async def get_balances(conn: Executor, creator_id: str) -> Balances | None:
    row = await conn.fetchrow(f"SELECT {BALANCE_COLUMNS} FROM creator_balances WHERE creator_id = $1", creator_id)
    return None if row is None else Balances(**dict(row))


async def lock_balances(conn: asyncpg.Connection, creator_id: str) -> Balances | None:
    """Serializes withdrawals of one creator (and their cap check) with each other and with settlement."""
    row = await conn.fetchrow(
        f"SELECT {BALANCE_COLUMNS} FROM creator_balances WHERE creator_id = $1 FOR UPDATE", creator_id
    )
    return None if row is None else Balances(**dict(row))


async def move_diamonds(
    conn: asyncpg.Connection, creator_id: str, *, available_delta: int, reserved_delta: int
) -> Balances:
    """Applies the creator's side of a withdrawal's postings; the CHECKs refuse any negative balance."""
    row = await conn.fetchrow(
        "UPDATE creator_balances SET available_diamonds = available_diamonds + $2,"
        " reserved_diamonds = reserved_diamonds + $3, updated_at = now()"
        f" WHERE creator_id = $1 RETURNING {BALANCE_COLUMNS}",
        creator_id,
        available_delta,
        reserved_delta,
    )
    assert row is not None, f"no balances for creator {creator_id}"
    return Balances(**dict(row))


# --- ledger -----------------------------------------------------------------------------------------------------------


async def record_transaction(
    conn: asyncpg.Connection, *, transaction_id: str, kind: str, reference: str, postings: Postings
) -> None:
    """The transaction and all of its postings in one statement (the balance trigger checks per statement)."""
    await conn.execute(
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


# --- settlement -------------------------------------------------------------------------------------------------------


async def admit_to_inbox(conn: asyncpg.Connection, gift_transaction_ids: list[str]) -> set[str]:
    """The ids not seen before; the others were settled already (or are being settled by a concurrent batch,
    which this statement then waits for). Sorted so concurrent batches take the key locks in the same order."""
    rows = await conn.fetch(
        "INSERT INTO inbox (gift_transaction_id) SELECT id FROM unnest($1::text[]) AS id ORDER BY id"
        " ON CONFLICT (gift_transaction_id) DO NOTHING RETURNING gift_transaction_id",
        sorted(gift_transaction_ids),
    )
    return {row["gift_transaction_id"] for row in rows}


async def insert_credits(
    conn: asyncpg.Connection, *, transaction_id: str, rate_version: int, credits: list[DiamondCredit]
) -> None:
    await conn.execute(
        "INSERT INTO diamond_credits"
        " (gift_transaction_id, creator_id, stream_id, coins, diamonds, rate_version, transaction_id)"
        " SELECT c.gift_transaction_id, c.creator_id, c.stream_id, c.coins, c.diamonds, $6, $7"
        " FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[])"
        " AS c (gift_transaction_id, creator_id, stream_id, coins, diamonds)",
        [credit.gift_transaction_id for credit in credits],
        [credit.creator_id for credit in credits],
        [credit.stream_id for credit in credits],
        [credit.coins for credit in credits],
        [credit.diamonds for credit in credits],
        rate_version,
        transaction_id,
    )


async def credit_creators(conn: asyncpg.Connection, diamonds_per_creator: dict[str, int]) -> None:
    """One row update (or first insert) per creator, in the caller's (sorted) order."""
    await conn.execute(
        "INSERT INTO creator_balances (creator_id, available_diamonds, lifetime_diamonds)"
        " SELECT c.creator_id, c.diamonds, c.diamonds"
        " FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS c (creator_id, diamonds, position)"
        " ORDER BY c.position"
        " ON CONFLICT (creator_id) DO UPDATE SET"
        " available_diamonds = creator_balances.available_diamonds + EXCLUDED.available_diamonds,"
        " lifetime_diamonds = creator_balances.lifetime_diamonds + EXCLUDED.lifetime_diamonds, updated_at = now()",
        list(diamonds_per_creator),
        list(diamonds_per_creator.values()),
    )


# --- withdrawals ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WithdrawalRow:
    withdrawal_id: str
    request_id: str
    creator_id: str
    diamonds: int
    payout_currency_code: str
    payout_amount_minor: int
    payout_destination: str
    status: WithdrawalStatus
    failure_reason: str
    provider_reference: str | None
    submitted_at: datetime | None


WITHDRAWAL_COLUMNS = (
    "withdrawal_id, request_id, creator_id, diamonds, payout_currency_code, payout_amount_minor, payout_destination,"
    " status, failure_reason, provider_reference, submitted_at"
)


def _withdrawal(row: asyncpg.Record) -> WithdrawalRow:
    values = dict(row)
    values["status"] = WithdrawalStatus(values["status"])
    return WithdrawalRow(**values)


async def insert_withdrawal(conn: asyncpg.Connection, withdrawal: WithdrawalRow, reserve_transaction_id: str) -> None:
    assert withdrawal.status is WithdrawalStatus.PENDING, "withdrawals start pending"
    await conn.execute(
        "INSERT INTO withdrawals (withdrawal_id, request_id, creator_id, diamonds, payout_currency_code,"
        " payout_amount_minor, payout_destination, reserve_transaction_id)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        withdrawal.withdrawal_id,
        withdrawal.request_id,
        withdrawal.creator_id,
        withdrawal.diamonds,
        withdrawal.payout_currency_code,
        withdrawal.payout_amount_minor,
        withdrawal.payout_destination,
        reserve_transaction_id,
    )


async def get_withdrawal(conn: Executor, withdrawal_id: str) -> WithdrawalRow | None:
    row = await conn.fetchrow(f"SELECT {WITHDRAWAL_COLUMNS} FROM withdrawals WHERE withdrawal_id = $1", withdrawal_id)
    return None if row is None else _withdrawal(row)


async def diamonds_withdrawn_last_24h(conn: asyncpg.Connection, creator_id: str) -> int:
    """Pending and paid withdrawals count toward the cap; failed and canceled ones gave their diamonds back."""
    total = await conn.fetchval(
        "SELECT coalesce(sum(diamonds), 0) FROM withdrawals"
        " WHERE creator_id = $1 AND status IN ('pending', 'paid') AND created_at > now() - interval '24 hours'",
        creator_id,
    )
    return int(total)


async def lock_next_due_withdrawal(conn: asyncpg.Connection) -> WithdrawalRow | None:
    """The pending withdrawal waiting longest for a look, locked; one another worker holds is skipped, not waited on."""
    row = await conn.fetchrow(
        f"SELECT {WITHDRAWAL_COLUMNS} FROM withdrawals WHERE status = 'pending' AND next_check_at <= now()"
        " ORDER BY next_check_at LIMIT 1 FOR UPDATE SKIP LOCKED"
    )
    return None if row is None else _withdrawal(row)


async def record_provider_progress(
    conn: asyncpg.Connection, withdrawal_id: str, provider_reference: str, check_again_in_seconds: float
) -> None:
    """Still with the provider: remember the submission (the first one only) and when to ask again."""
    await conn.execute(
        "UPDATE withdrawals SET provider_reference = coalesce(provider_reference, $2),"
        " submitted_at = coalesce(submitted_at, now()),"
        " next_check_at = clock_timestamp() + make_interval(secs => $3), updated_at = now()"
        " WHERE withdrawal_id = $1 AND status = 'pending'",
        withdrawal_id,
        provider_reference,
        check_again_in_seconds,
    )


async def postpone_check(conn: Executor, withdrawal_id: str, check_again_in_seconds: float) -> None:
    await conn.execute(
        "UPDATE withdrawals SET next_check_at = clock_timestamp() + make_interval(secs => $2), updated_at = now()"
        " WHERE withdrawal_id = $1 AND status = 'pending'",
        withdrawal_id,
        check_again_in_seconds,
    )


async def finish_withdrawal(
    conn: asyncpg.Connection,
    withdrawal_id: str,
    *,
    status: WithdrawalStatus,
    failure_reason: str,
    provider_reference: str,
    finish_transaction_id: str,
) -> bool:
    """Moves a pending withdrawal to its final status; False when it was no longer pending (nothing changed)."""
    assert status is not WithdrawalStatus.PENDING, "finishing needs a final status"
    result = await conn.execute(
        "UPDATE withdrawals SET status = $2, failure_reason = $3,"
        " provider_reference = coalesce(provider_reference, $4), submitted_at = coalesce(submitted_at, now()),"
        " finish_transaction_id = $5, updated_at = now()"
        " WHERE withdrawal_id = $1 AND status = 'pending'",
        withdrawal_id,
        status.value,
        failure_reason,
        provider_reference,
        finish_transaction_id,
    )
    return result == "UPDATE 1"
