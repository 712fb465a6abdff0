"""All of the gifts service's SQL. Functions take a connection so the use cases decide the transaction boundaries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import TypeAlias

import asyncpg

from services.gifts.domain import CatalogGift, GiftStatus, LeaderboardPeriod, LiveStream, StreamStatus

Executor: TypeAlias = asyncpg.Connection | asyncpg.Pool


async def list_active_gifts(pool: asyncpg.Pool) -> list[CatalogGift]:
    rows = await pool.fetch(
        "SELECT gift_id, name, coin_price FROM gift_catalog WHERE active ORDER BY coin_price, gift_id"
    )
    return [CatalogGift(**dict(row)) for row in rows]


async def get_active_gift(conn: Executor, gift_id: str) -> CatalogGift | None:
    row = await conn.fetchrow(
        "SELECT gift_id, name, coin_price FROM gift_catalog WHERE gift_id = $1 AND active", gift_id
    )
    return None if row is None else CatalogGift(**dict(row))


async def upsert_gift(conn: asyncpg.Connection, gift: CatalogGift) -> CatalogGift:
    """Adds the gift or changes its name and price; a retired gift is active again."""
    row = await conn.fetchrow(
        "INSERT INTO gift_catalog (gift_id, name, coin_price) VALUES ($1, $2, $3)"
        " ON CONFLICT (gift_id) DO UPDATE SET name = EXCLUDED.name, coin_price = EXCLUDED.coin_price,"
        " active = true, updated_at = now()"
        " RETURNING gift_id, name, coin_price",
        gift.gift_id,
        gift.name,
        gift.coin_price,
    )
    return CatalogGift(**dict(row))


async def retire_gift(conn: asyncpg.Connection, gift_id: str) -> CatalogGift | None:
    """Takes the gift out of the active catalog (a retired one stays as it is); None when there is no such gift."""
    row = await conn.fetchrow(
        "UPDATE gift_catalog SET active = false, updated_at = CASE WHEN active THEN now() ELSE updated_at END"
        " WHERE gift_id = $1 RETURNING gift_id, name, coin_price",
        gift_id,
    )
    return None if row is None else CatalogGift(**dict(row))


STREAM_COLUMNS = "stream_id, creator_id, title, status"


def _stream(row: asyncpg.Record) -> LiveStream:
    return LiveStream(row["stream_id"], row["creator_id"], row["title"], StreamStatus(row["status"]))


async def start_stream(conn: asyncpg.Connection, stream_id: str, creator_id: str, title: str) -> LiveStream | None:
    """Inserts a live stream and its zeroed counters; None when the creator already has a live stream (the partial
    unique index decides, so two racing starts cannot both win)."""
    row = await conn.fetchrow(
        f"""
        WITH started AS (
            INSERT INTO live_streams (stream_id, creator_id, title, status) VALUES ($1, $2, $3, 'live')
            ON CONFLICT (creator_id) WHERE status = 'live' DO NOTHING
            RETURNING {STREAM_COLUMNS}
        ), counters AS (
            INSERT INTO stream_totals (stream_id) SELECT stream_id FROM started
        )
        SELECT {STREAM_COLUMNS} FROM started
        """,
        stream_id,
        creator_id,
        title,
    )
    return None if row is None else _stream(row)


async def get_stream(conn: Executor, stream_id: str) -> LiveStream | None:
    row = await conn.fetchrow(f"SELECT {STREAM_COLUMNS} FROM live_streams WHERE stream_id = $1", stream_id)
    return None if row is None else _stream(row)


async def lock_stream(conn: asyncpg.Connection, stream_id: str) -> LiveStream | None:
    row = await conn.fetchrow(f"SELECT {STREAM_COLUMNS} FROM live_streams WHERE stream_id = $1 FOR UPDATE", stream_id)
    return None if row is None else _stream(row)


async def end_stream(conn: asyncpg.Connection, stream_id: str) -> tuple[LiveStream, datetime]:
    """Ends a live stream; returns it and when it ended."""
    row = await conn.fetchrow(
        "UPDATE live_streams SET status = 'ended', ended_at = now() WHERE stream_id = $1 AND status = 'live'"
        f" RETURNING {STREAM_COLUMNS}, ended_at",
        stream_id,
    )
    assert row is not None, f"stream {stream_id} was not live (lock it first)"
    return _stream(row), row["ended_at"]


@dataclass(frozen=True)
class GiftRow:
    gift_transaction_id: str
    request_id: str
    sender_id: str
    recipient_id: str
    stream_id: str
    gift_id: str
    quantity: int
    coin_price: int
    coins: int
    status: GiftStatus
    wallet_transaction_id: str | None
    sender_balance_coins: int | None
    # Set when the gift completes (0 before): how the wallet paid for it and its place in its combo.
    paid_coins: int = 0
    bonus_coins: int = 0
    combo_count: int = 0


GIFT_COLUMNS = (
    "gift_transaction_id, request_id, sender_id, recipient_id, stream_id, gift_id, quantity, coin_price, coins,"
    " status, wallet_transaction_id, sender_balance_coins, paid_coins, bonus_coins, combo_count"
)


def _gift(row: asyncpg.Record) -> GiftRow:
    values = dict(row)
    values["status"] = GiftStatus(values["status"])
    return GiftRow(**values)


async def insert_gift_transaction(conn: asyncpg.Connection, gift: GiftRow) -> None:
    await conn.execute(
        f"INSERT INTO gift_transactions ({GIFT_COLUMNS})"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        gift.gift_transaction_id,
        gift.request_id,
        gift.sender_id,
        gift.recipient_id,
        gift.stream_id,
        gift.gift_id,
        gift.quantity,
        gift.coin_price,
        gift.coins,
        gift.status.value,
        gift.wallet_transaction_id,
        gift.sender_balance_coins,
        gift.paid_coins,
        gift.bonus_coins,
        gift.combo_count,
    )


async def get_gift_transaction(pool: asyncpg.Pool, gift_transaction_id: str) -> GiftRow:
    row = await pool.fetchrow(
        f"SELECT {GIFT_COLUMNS} FROM gift_transactions WHERE gift_transaction_id = $1", gift_transaction_id
    )
    assert row is not None, f"no gift transaction {gift_transaction_id}"
    return _gift(row)


async def lock_gift_transaction(conn: asyncpg.Connection, gift_transaction_id: str) -> GiftRow:
    row = await conn.fetchrow(
        f"SELECT {GIFT_COLUMNS} FROM gift_transactions WHERE gift_transaction_id = $1 FOR UPDATE",
        gift_transaction_id,
    )
    assert row is not None, f"gift transaction {gift_transaction_id} vanished"
    return _gift(row)


async def complete_gift_transaction(conn: asyncpg.Connection, gift: GiftRow, finished_at: datetime) -> None:
    """Stores the completion fields of gift (status completed, payment, combo) on its pending row."""
    assert gift.status is GiftStatus.COMPLETED, f"{gift.gift_transaction_id} is not completed"
    updated = await conn.execute(
        "UPDATE gift_transactions SET status = 'completed', wallet_transaction_id = $2, sender_balance_coins = $3,"
        " paid_coins = $4, bonus_coins = $5, combo_count = $6, finished_at = $7, updated_at = now()"
        " WHERE gift_transaction_id = $1 AND status = 'pending'",
        gift.gift_transaction_id,
        gift.wallet_transaction_id,
        gift.sender_balance_coins,
        gift.paid_coins,
        gift.bonus_coins,
        gift.combo_count,
        finished_at,
    )
    assert updated == "UPDATE 1", f"gift transaction {gift.gift_transaction_id} was not pending"


async def fail_gift_transaction(conn: asyncpg.Connection, gift_transaction_id: str, failure_reason: str) -> None:
    updated = await conn.execute(
        "UPDATE gift_transactions SET status = 'failed', failure_reason = $2, finished_at = now(), updated_at = now()"
        " WHERE gift_transaction_id = $1 AND status = 'pending'",
        gift_transaction_id,
        failure_reason,
    )
    assert updated == "UPDATE 1", f"gift transaction {gift_transaction_id} was not pending"


async def stale_pending_gifts(pool: asyncpg.Pool, older_than_seconds: float, limit: int) -> list[str]:
    rows = await pool.fetch(
        "SELECT gift_transaction_id FROM gift_transactions WHERE status = 'pending'"
        " AND created_at < now() - make_interval(secs => $1) ORDER BY created_at LIMIT $2",
        older_than_seconds,
        limit,
    )
    return [row["gift_transaction_id"] for row in rows]


async def add_to_stream_counters(conn: asyncpg.Connection, stream_id: str, sender_id: str, coins: int) -> None:
    """One completed gift: the sender's coins on this stream, then the stream's totals (always in this order, so
    concurrent completions on one stream never deadlock)."""
    await conn.execute(
        "INSERT INTO stream_gifters (stream_id, sender_id, coins) VALUES ($1, $2, $3)"
        " ON CONFLICT (stream_id, sender_id) DO UPDATE SET coins = stream_gifters.coins + EXCLUDED.coins",
        stream_id,
        sender_id,
        coins,
    )
    updated = await conn.execute(
        "UPDATE stream_totals SET total_coins = total_coins + $2, gift_count = gift_count + 1 WHERE stream_id = $1",
        stream_id,
        coins,
    )
    assert updated == "UPDATE 1", f"no counters for stream {stream_id}"


@dataclass(frozen=True)
class StreamTotals:
    total_coins: int
    gift_count: int


async def get_stream_totals(conn: Executor, stream_id: str) -> StreamTotals | None:
    row = await conn.fetchrow("SELECT total_coins, gift_count FROM stream_totals WHERE stream_id = $1", stream_id)
    return None if row is None else StreamTotals(row["total_coins"], row["gift_count"])


async def top_gifters(conn: Executor, stream_id: str, limit: int) -> list[tuple[str, int]]:
    rows = await conn.fetch(
        "SELECT sender_id, coins FROM stream_gifters WHERE stream_id = $1 ORDER BY coins DESC, sender_id LIMIT $2",
        stream_id,
        limit,
    )
    return [(row["sender_id"], row["coins"]) for row in rows]


@dataclass(frozen=True)
class ComboState:
    last_sent_at: datetime | None
    combo_count: int


async def lock_combo(conn: asyncpg.Connection, stream_id: str, sender_id: str, gift_id: str) -> ComboState:
    """The last completed gift of this sender, gift and stream, locked until the transaction ends: completions that
    may continue one combo take turns. The row is made first, so even the very first two gifts serialize."""
    await conn.execute(
        "INSERT INTO gift_combos (stream_id, sender_id, gift_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        stream_id,
        sender_id,
        gift_id,
    )
    row = await conn.fetchrow(
        "SELECT last_sent_at, combo_count FROM gift_combos"
        " WHERE stream_id = $1 AND sender_id = $2 AND gift_id = $3 FOR UPDATE",
        stream_id,
        sender_id,
        gift_id,
    )
    return ComboState(row["last_sent_at"], row["combo_count"])


async def save_combo(conn: asyncpg.Connection, gift: GiftRow, sent_at: datetime) -> None:
    await conn.execute(
        "UPDATE gift_combos SET last_sent_at = $4, combo_count = $5"
        " WHERE stream_id = $1 AND sender_id = $2 AND gift_id = $3",
        gift.stream_id,
        gift.sender_id,
        gift.gift_id,
        sent_at,
        gift.combo_count,
    )


async def add_to_gifter_totals(
    conn: asyncpg.Connection, creator_id: str, sender_id: str, coins: int, period_starts: dict[LeaderboardPeriod, date]
) -> None:
    """One completed gift on the creator's leaderboards, one row per period (always in the same order, so
    concurrent completions never deadlock)."""
    await conn.executemany(
        "INSERT INTO gifter_totals (creator_id, period_kind, period_start, sender_id, coins)"
        " VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (creator_id, period_kind, period_start, sender_id)"
        " DO UPDATE SET coins = gifter_totals.coins + EXCLUDED.coins",
        [
            (creator_id, period.value, start, sender_id, coins)
            for period, start in sorted(period_starts.items(), key=lambda item: item[0].value)
        ],
    )


async def top_gifters_to_creator(
    conn: Executor, creator_id: str, period: LeaderboardPeriod, period_start: date, limit: int
) -> list[tuple[str, int]]:
    rows = await conn.fetch(
        "SELECT sender_id, coins FROM gifter_totals WHERE creator_id = $1 AND period_kind = $2 AND period_start = $3"
        " ORDER BY coins DESC, sender_id LIMIT $4",
        creator_id,
        period.value,
        period_start,
        limit,
    )
    return [(row["sender_id"], row["coins"]) for row in rows]


async def insert_outbox_event(
    conn: asyncpg.Connection, msg_id: str, subject: str, payload: bytes, gift_transaction_id: str | None = None
) -> None:
    """Queues an event; msg_id becomes its Nats-Msg-Id (JetStream drops a repeat within its duplicate window)."""
    await conn.execute(
        "INSERT INTO gift_outbox (msg_id, gift_transaction_id, subject, payload) VALUES ($1, $2, $3, $4)",
        msg_id,
        gift_transaction_id,
        subject,
        payload,
    )


# Any constant works; it must only differ from the other advisory lock keys used on the gifts database.
RELAY_LOCK_KEY = 0x67696674  # "gift"


async def try_lock_relay(conn: asyncpg.Connection) -> bool:
    """Whether this transaction is now the only relay (the lock ends with the transaction)."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", RELAY_LOCK_KEY))


async def lock_stream_for_gift(conn: asyncpg.Connection, stream_id: str) -> None:
    """Shares the stream row with other completing gifts but not with EndLiveStream (FOR UPDATE): a gift completing
    while the stream ends is either committed before the end, its GiftSent queued before StreamEnded, or after it."""
    await conn.execute("SELECT 1 FROM live_streams WHERE stream_id = $1 FOR KEY SHARE", stream_id)


@dataclass(frozen=True)
class OutboxEvent:
    outbox_id: int
    msg_id: str
    subject: str
    payload: bytes


async def lock_outbox_batch(conn: asyncpg.Connection, limit: int) -> list[OutboxEvent]:
    """The oldest unpublished events that no other relay holds (SKIP LOCKED lets replicas share the work)."""
    rows = await conn.fetch(
        "SELECT outbox_id, msg_id, subject, payload FROM gift_outbox"
        " ORDER BY outbox_id LIMIT $1 FOR UPDATE SKIP LOCKED",
        limit,
    )
    return [OutboxEvent(row["outbox_id"], row["msg_id"], row["subject"], bytes(row["payload"])) for row in rows]


async def delete_outbox_events(conn: asyncpg.Connection, outbox_ids: list[int]) -> None:
    await conn.execute("DELETE FROM gift_outbox WHERE outbox_id = ANY($1::bigint[])", outbox_ids)
