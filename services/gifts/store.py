"""All of the gifts service's SQL. Functions take a connection so the use cases decide the transaction boundaries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import TypeAlias

import asyncpg

from services.gifts.domain import (
    CatalogGift,
    ComboKey,
    ComboState,
    GiftStatus,
    LeaderboardIncrement,
    LeaderboardPeriod,
    LiveStream,
    StreamStatus,
)
from services.runtime import idempotency

Executor: TypeAlias = asyncpg.Connection | asyncpg.Pool


async def list_active_gifts(pool: asyncpg.Pool) -> list[CatalogGift]:
    rows = await pool.fetch(
        "SELECT gift_id, name, coin_price FROM gift_catalog WHERE active ORDER BY coin_price, gift_id"
    )
    return [CatalogGift(**dict(row)) for row in rows]


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
    failure_reason: str | None = None


GIFT_COLUMNS = (
    "gift_transaction_id, request_id, sender_id, recipient_id, stream_id, gift_id, quantity, coin_price, coins,"
    " status, wallet_transaction_id, sender_balance_coins, paid_coins, bonus_coins, combo_count, failure_reason"
)


def _gift(row: asyncpg.Record) -> GiftRow:
    values = dict(row)
    values["status"] = GiftStatus(values["status"])
    return GiftRow(**values)


@dataclass(frozen=True)
class GiftContext:
    """What deciding new SendGift requests needs: their streams, their active catalog gifts, and the gifts recorded
    under their request_ids whose idempotency keys are gone (a retry after the key expired)."""

    streams: dict[str, LiveStream]
    catalog: dict[str, CatalogGift]
    gifts_without_key: dict[str, GiftRow]


async def read_gift_context(
    conn: Executor, stream_ids: list[str], gift_ids: list[str], request_ids: list[str]
) -> GiftContext:
    """One round trip for the three reads."""
    rows = await conn.fetch(
        "SELECT 'stream' AS kind, stream_id AS id, creator_id, title, status, NULL AS name, NULL::bigint AS coin_price"
        " FROM live_streams WHERE stream_id = ANY($1::text[])"
        " UNION ALL"
        " SELECT 'gift', gift_id, NULL, NULL, NULL, name, coin_price FROM gift_catalog"
        " WHERE gift_id = ANY($2::text[]) AND active"
        " UNION ALL"
        " SELECT 'earlier', g.gift_transaction_id, NULL, NULL, NULL, NULL, NULL FROM gift_transactions AS g"
        " WHERE g.request_id = ANY($3::text[])"
        "  AND NOT EXISTS (SELECT 1 FROM idempotency_keys AS k WHERE k.request_id = g.request_id)",
        stream_ids,
        gift_ids,
        request_ids,
    )
    streams, catalog, earlier_ids = {}, {}, []
    for row in rows:
        if row["kind"] == "stream":
            streams[row["id"]] = LiveStream(row["id"], row["creator_id"], row["title"], StreamStatus(row["status"]))
        elif row["kind"] == "gift":
            catalog[row["id"]] = CatalogGift(row["id"], row["name"], row["coin_price"])
        else:
            earlier_ids.append(row["id"])
    earlier = await get_gift_transactions(conn, earlier_ids) if earlier_ids else {}
    return GiftContext(streams, catalog, {gift.request_id: gift for gift in earlier.values()})


async def claim_and_record_pending_gifts(
    conn: Executor, claims: list[idempotency.Claim], decided: list[idempotency.Outcome], gifts: list[GiftRow]
) -> set[str]:
    """One statement, so one atomic step without a transaction of our own: claims every request_id (a refusal is
    stored with its key, an accepted request with its gift as the key's resource) and records as pending the gifts
    of the requests that got their key. Returns those request_ids; the others were made before."""
    claim = idempotency.claim_statement(claims, decided, first_param=10)
    rows = await conn.fetch(
        f"WITH claimed AS ({claim.sql})"
        " , recorded AS ("
        "  INSERT INTO gift_transactions (gift_transaction_id, request_id, sender_id, recipient_id, stream_id,"
        "   gift_id, quantity, coin_price, coins, status)"
        "  SELECT g.*, 'pending' FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],"
        "   $7::integer[], $8::bigint[], $9::bigint[])"
        "   AS g (gift_transaction_id, request_id, sender_id, recipient_id, stream_id, gift_id, quantity, coin_price,"
        "         coins)"
        "  WHERE g.request_id IN (SELECT request_id FROM claimed))"
        " SELECT request_id FROM claimed",
        *_columns(
            gifts,
            "gift_transaction_id",
            "request_id",
            "sender_id",
            "recipient_id",
            "stream_id",
            "gift_id",
            "quantity",
            "coin_price",
            "coins",
        ),
        *claim.args,
    )
    return {row["request_id"] for row in rows}


def _columns(rows: list[GiftRow], *names: str) -> list[list[object]]:
    """Column arrays for unnest(), one per field name."""
    return [[getattr(row, name) for row in rows] for name in names]


async def get_gift_transactions(conn: Executor, gift_transaction_ids: list[str]) -> dict[str, GiftRow]:
    rows = await conn.fetch(
        f"SELECT {GIFT_COLUMNS} FROM gift_transactions WHERE gift_transaction_id = ANY($1::text[])",
        gift_transaction_ids,
    )
    return {row["gift_transaction_id"]: _gift(row) for row in rows}


async def lock_pending_gifts(
    conn: asyncpg.Connection, gift_transaction_ids: list[str], stream_ids: list[str]
) -> set[str]:
    """Locks those of these gifts that are still pending (in id order) and returns their ids — a gift that a
    concurrent batch, retry or recovery pass finished first is left alone — and shares their streams with other
    completing gifts but not with EndLiveStream (FOR UPDATE): a gift completing while its stream ends is either
    committed before the end, its GiftSent queued before StreamEnded, or after it."""
    rows = await conn.fetch(
        "WITH streams AS ("
        "  SELECT stream_id FROM live_streams WHERE stream_id = ANY($2::text[]) ORDER BY stream_id FOR KEY SHARE)"
        " SELECT gift_transaction_id FROM gift_transactions WHERE gift_transaction_id = ANY($1::text[])"
        " AND status = 'pending' AND (SELECT count(*) FROM streams) >= 0"
        " ORDER BY gift_transaction_id FOR UPDATE",
        gift_transaction_ids,
        sorted(set(stream_ids)),
    )
    return {row["gift_transaction_id"] for row in rows}


async def finish_gifts(
    conn: asyncpg.Connection,
    completed: list[GiftRow],
    finished_at: datetime,
    combos: dict[ComboKey, ComboState],
    failures: list[tuple[str, str]],
    outcomes: list[idempotency.Outcome],
) -> None:
    """One statement for rows this transaction has locked already: the completed gifts (payment, combo), their
    combos' new state, the failed gifts (gift_transaction_id, failure_reason), and every request's stored outcome."""
    assert all(gift.status is GiftStatus.COMPLETED for gift in completed), "finish_gifts() takes completed gifts"
    keys = sorted(combos)
    recorded = idempotency.record_statement(outcomes, first_param=16)
    row = await conn.fetchrow(
        "WITH completed AS ("
        "  UPDATE gift_transactions AS g SET status = 'completed', wallet_transaction_id = c.wallet_transaction_id,"
        "   sender_balance_coins = c.sender_balance_coins, paid_coins = c.paid_coins, bonus_coins = c.bonus_coins,"
        "   combo_count = c.combo_count, finished_at = $7, updated_at = now()"
        "  FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::integer[])"
        "   AS c (gift_transaction_id, wallet_transaction_id, sender_balance_coins, paid_coins, bonus_coins,"
        "         combo_count)"
        "  WHERE g.gift_transaction_id = c.gift_transaction_id AND g.status = 'pending' RETURNING 1"
        " ), combos AS ("
        "  UPDATE gift_combos AS c SET last_sent_at = n.last_sent_at, combo_count = n.combo_count"
        "  FROM unnest($8::text[], $9::text[], $10::text[], $11::timestamptz[], $12::integer[])"
        "   AS n (stream_id, sender_id, gift_id, last_sent_at, combo_count)"
        "  WHERE (c.stream_id, c.sender_id, c.gift_id) = (n.stream_id, n.sender_id, n.gift_id)"
        " ), failed AS ("
        "  UPDATE gift_transactions AS g SET status = 'failed', failure_reason = f.reason, finished_at = now(),"
        "   updated_at = now() FROM unnest($13::text[], $14::text[]) AS f (gift_transaction_id, reason)"
        "  WHERE g.gift_transaction_id = f.gift_transaction_id AND g.status = $15 RETURNING 1"
        f" ), outcomes AS ({recorded.sql})"
        " SELECT (SELECT count(*) FROM completed) AS completed, (SELECT count(*) FROM failed) AS failed",
        *_columns(
            completed,
            "gift_transaction_id",
            "wallet_transaction_id",
            "sender_balance_coins",
            "paid_coins",
            "bonus_coins",
            "combo_count",
        ),
        finished_at,
        [key.stream_id for key in keys],
        [key.sender_id for key in keys],
        [key.gift_id for key in keys],
        [combos[key].last_sent_at for key in keys],
        [combos[key].combo_count for key in keys],
        [gift_transaction_id for gift_transaction_id, _ in failures],
        [reason for _, reason in failures],
        GiftStatus.PENDING.value,
        *recorded.args,
    )
    # The gifts were locked as pending by this transaction: anything else is a bug, and rolls everything back.
    assert (row["completed"], row["failed"]) == (len(completed), len(failures)), f"{dict(row)}: gifts not pending"


async def stale_pending_gifts(pool: asyncpg.Pool, older_than_seconds: float, limit: int) -> list[str]:
    rows = await pool.fetch(
        "SELECT gift_transaction_id FROM gift_transactions WHERE status = 'pending'"
        " AND created_at < now() - make_interval(secs => $1) ORDER BY created_at LIMIT $2",
        older_than_seconds,
        limit,
    )
    return [row["gift_transaction_id"] for row in rows]


async def add_to_stream_counters(
    conn: asyncpg.Connection, gifters: list[tuple[str, str, int]], totals: list[tuple[str, int, int]]
) -> None:
    """A batch's completed gifts on their streams: coins per (stream, sender), then (coins, gifts) per stream.
    Each row is written once per batch, in key order, so concurrent batches never deadlock; the totals row, every
    gift's hot spot on a busy stream, is written last and so held the shortest."""
    await conn.execute(
        "INSERT INTO stream_gifters (stream_id, sender_id, coins)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) ORDER BY 1, 2"
        " ON CONFLICT (stream_id, sender_id) DO UPDATE SET coins = stream_gifters.coins + EXCLUDED.coins",
        [stream_id for stream_id, _, _ in gifters],
        [sender_id for _, sender_id, _ in gifters],
        [coins for _, _, coins in gifters],
    )
    # An upsert rather than an UPDATE … FROM, whose row order the planner may choose; every stream has its row.
    await conn.execute(
        "INSERT INTO stream_totals (stream_id, total_coins, gift_count)"
        " SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[]) ORDER BY 1"
        " ON CONFLICT (stream_id) DO UPDATE SET total_coins = stream_totals.total_coins + EXCLUDED.total_coins,"
        " gift_count = stream_totals.gift_count + EXCLUDED.gift_count",
        [stream_id for stream_id, _, _ in totals],
        [coins for _, coins, _ in totals],
        [count for _, _, count in totals],
    )


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


async def lock_combos(conn: asyncpg.Connection, keys: list[ComboKey]) -> dict[ComboKey, ComboState]:
    """The last completed gift of each (stream, sender, gift), locked until the transaction ends, so completions that
    may continue one combo take turns. One statement makes missing rows and locks every row, in key order."""
    ordered = sorted(set(keys))
    rows = await conn.fetch(
        "INSERT INTO gift_combos (stream_id, sender_id, gift_id)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) ORDER BY 1, 2, 3"
        # The no-op update locks an existing row and returns it as it is.
        " ON CONFLICT (stream_id, sender_id, gift_id) DO UPDATE SET combo_count = gift_combos.combo_count"
        " RETURNING stream_id, sender_id, gift_id, last_sent_at, combo_count",
        [key.stream_id for key in ordered],
        [key.sender_id for key in ordered],
        [key.gift_id for key in ordered],
    )
    return {
        ComboKey(row["stream_id"], row["sender_id"], row["gift_id"]): ComboState(
            row["last_sent_at"], row["combo_count"]
        )
        for row in rows
    }


async def add_to_gifter_totals(conn: asyncpg.Connection, increments: list[LeaderboardIncrement]) -> None:
    """A batch's completed gifts on their creators' leaderboards: one row per (creator, period, sender), written
    once and in key order, so concurrent batches never deadlock."""
    await conn.execute(
        "INSERT INTO gifter_totals (creator_id, period_kind, period_start, sender_id, coins)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::date[], $4::text[], $5::bigint[]) ORDER BY 1, 2, 3, 4"
        " ON CONFLICT (creator_id, period_kind, period_start, sender_id)"
        " DO UPDATE SET coins = gifter_totals.coins + EXCLUDED.coins",
        [i.creator_id for i in increments],
        [i.period.value for i in increments],
        [i.period_start for i in increments],
        [i.sender_id for i in increments],
        [i.coins for i in increments],
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
    conn: asyncpg.Connection, msg_id: str, subject: str, payload: bytes, traceparent: str | None = None
) -> None:
    """Queues an event; msg_id becomes its Nats-Msg-Id (JetStream drops a repeat within its duplicate window)."""
    await insert_outbox_events(conn, [OutboxRow(msg_id, subject, payload, traceparent=traceparent)])


@dataclass(frozen=True)
class OutboxRow:
    msg_id: str
    subject: str
    payload: bytes
    gift_transaction_id: str | None = None
    # The trace the relay continues when it publishes the event (None: tracing was off).
    traceparent: str | None = None


async def insert_outbox_events(conn: asyncpg.Connection, events: list[OutboxRow]) -> None:
    """Queues events in the order given (their outbox ids, hence the publishing order, follow it)."""
    await conn.execute(
        "INSERT INTO gift_outbox (msg_id, gift_transaction_id, subject, payload, traceparent)"
        " SELECT msg_id, gift_transaction_id, subject, payload, traceparent"
        " FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[]) WITH ORDINALITY"
        "  AS e (msg_id, gift_transaction_id, subject, payload, traceparent, position)"
        " ORDER BY position",
        [event.msg_id for event in events],
        [event.gift_transaction_id for event in events],
        [event.subject for event in events],
        [event.payload for event in events],
        [event.traceparent for event in events],
    )


# Any constant works; it must only differ from the other advisory lock keys used on the gifts database.
RELAY_LOCK_KEY = 0x67696674  # "gift"


async def try_lock_relay(conn: asyncpg.Connection) -> bool:
    """Whether this transaction is now the only relay (the lock ends with the transaction)."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", RELAY_LOCK_KEY))


@dataclass(frozen=True)
class OutboxEvent:
    outbox_id: int
    msg_id: str
    subject: str
    payload: bytes
    traceparent: str | None = None


async def lock_outbox_batch(conn: asyncpg.Connection, limit: int) -> list[OutboxEvent]:
    """The oldest unpublished events that no other relay holds (SKIP LOCKED lets replicas share the work)."""
    rows = await conn.fetch(
        "SELECT outbox_id, msg_id, subject, payload, traceparent FROM gift_outbox"
        " ORDER BY outbox_id LIMIT $1 FOR UPDATE SKIP LOCKED",
        limit,
    )
    return [
        OutboxEvent(row["outbox_id"], row["msg_id"], row["subject"], bytes(row["payload"]), row["traceparent"])
        for row in rows
    ]


@dataclass(frozen=True)
class OutboxBacklog:
    events: int
    oldest_age_seconds: float  # 0 when empty


async def outbox_backlog(pool: asyncpg.Pool) -> OutboxBacklog:
    """Events not yet published, and how long the oldest has waited (for the metrics; the outbox stays small
    while the relay keeps up, so the count is cheap)."""
    row = await pool.fetchrow(
        "SELECT count(*) AS events, coalesce(extract(epoch FROM now() - min(created_at)), 0) AS oldest FROM gift_outbox"
    )
    assert row is not None
    return OutboxBacklog(row["events"], float(row["oldest"]))


async def delete_outbox_events(conn: asyncpg.Connection, outbox_ids: list[int]) -> None:
    await conn.execute("DELETE FROM gift_outbox WHERE outbox_id = ANY($1::bigint[])", outbox_ids)
