"""The gifts service's SQL (with store_matches.py: videos, matches, goals). Functions take a connection so the use
cases decide the transaction boundaries; postgres_store.py makes them the ports.GiftStore the use cases call."""

from __future__ import annotations

from datetime import date, datetime
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from services.gifts.domain import (
    CatalogGift,
    ComboKey,
    ComboState,
    CompletionLocks,
    GiftContext,
    GiftStatus,
    LeaderboardIncrement,
    LeaderboardPeriod,
    LiveStream,
    OutboxRow,
    SentGift,
    StreamStatus,
    TargetKind,
    Totals,
    Video,
)
from services.runtime import idempotency
from services.runtime.outbox import Outbox

# A connection of its own or one of the pool's (what pool.acquire() gives); an Executor runs one statement.
Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy
Executor: TypeAlias = Connection | asyncpg.Pool


async def list_active_gifts(pool: asyncpg.Pool) -> list[CatalogGift]:
    rows = await pool.fetch(
        "SELECT gift_id, name, coin_price FROM gift_catalog WHERE active ORDER BY coin_price, gift_id"
    )
    return [CatalogGift(**dict(row)) for row in rows]


async def upsert_gift(conn: Connection, gift: CatalogGift) -> CatalogGift:
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
    assert row is not None, "an upsert returns its row"
    return CatalogGift(**dict(row))


async def retire_gift(conn: Connection, gift_id: str) -> CatalogGift | None:
    """Takes the gift out of the active catalog (a retired one stays as it is); None when there is no such gift."""
    row = await conn.fetchrow(
        "UPDATE gift_catalog SET active = false, updated_at = CASE WHEN active THEN now() ELSE updated_at END"
        " WHERE gift_id = $1 RETURNING gift_id, name, coin_price",
        gift_id,
    )
    return None if row is None else CatalogGift(**dict(row))


# live_streams.match_id is the last match the stream joined: the stream is in it while that match is active. (The
# finisher never writes live_streams: a row lock there would queue it behind an EndLiveStream waiting for a gift
# batch that waits for the finisher's own lock on the match.) For reads; a writer deciding by it reads the match
# after locking the stream (lock_streams).
STREAM_COLUMNS = (
    "stream_id, creator_id, title, status, goal_id, (SELECT m.match_id FROM matches AS m"
    " WHERE m.match_id = live_streams.match_id AND m.status = 'active') AS match_id"
)


def _stream(row: asyncpg.Record) -> LiveStream:
    return LiveStream(
        row["stream_id"], row["creator_id"], row["title"], StreamStatus(row["status"]), row["match_id"], row["goal_id"]
    )


async def start_stream(conn: Connection, stream_id: str, creator_id: str, title: str) -> LiveStream | None:
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
        SELECT * FROM started
        """,
        stream_id,
        creator_id,
        title,
    )
    return None if row is None else _stream(row)


async def get_stream(conn: Executor, stream_id: str) -> LiveStream | None:
    row = await conn.fetchrow(f"SELECT {STREAM_COLUMNS} FROM live_streams WHERE stream_id = $1", stream_id)
    return None if row is None else _stream(row)


async def lock_stream(conn: Connection, stream_id: str) -> LiveStream | None:
    row = await conn.fetchrow(f"SELECT {STREAM_COLUMNS} FROM live_streams WHERE stream_id = $1 FOR UPDATE", stream_id)
    return None if row is None else _stream(row)


async def lock_streams(conn: Connection, stream_ids: list[str]) -> dict[str, LiveStream]:
    """Locks the streams (in id order, like every other writer of several streams) against gifts completing to them,
    ending, and joining another match or goal, until the transaction ends; each with the match it is in. Which of
    their last matches are active is read by a statement of its own, after the lock: one that started while this
    waited (and made the stream busy) is in its snapshot, where it would be missing from the locking statement's."""
    rows = await conn.fetch(
        "SELECT stream_id, creator_id, title, status, goal_id, match_id AS last_match_id FROM live_streams"
        " WHERE stream_id = ANY($1::text[]) ORDER BY stream_id FOR UPDATE",
        sorted(set(stream_ids)),
    )
    last_matches = [row["last_match_id"] for row in rows if row["last_match_id"] is not None]
    active = await conn.fetch(
        "SELECT match_id FROM matches WHERE match_id = ANY($1::text[]) AND status = 'active'", last_matches
    )
    active_ids = {row["match_id"] for row in active}
    return {
        row["stream_id"]: LiveStream(
            row["stream_id"],
            row["creator_id"],
            row["title"],
            StreamStatus(row["status"]),
            row["last_match_id"] if row["last_match_id"] in active_ids else None,
            row["goal_id"],
        )
        for row in rows
    }


async def end_stream(conn: Connection, stream_id: str) -> tuple[LiveStream, datetime]:
    """Ends a live stream; returns it and when it ended."""
    row = await conn.fetchrow(
        "UPDATE live_streams SET status = 'ended', ended_at = now() WHERE stream_id = $1 AND status = 'live'"
        f" RETURNING {STREAM_COLUMNS}, ended_at",
        stream_id,
    )
    assert row is not None, f"stream {stream_id} was not live (lock it first)"
    return _stream(row), row["ended_at"]


GIFT_COLUMNS = (
    "gift_transaction_id, request_id, sender_id, recipient_id, stream_id, gift_id, quantity, coin_price, coins,"
    " status, wallet_transaction_id, sender_balance_coins, paid_coins, bonus_coins, combo_count, failure_reason,"
    " video_id"
)


def _gift(row: asyncpg.Record) -> SentGift:
    values = dict(row)
    values["status"] = GiftStatus(values["status"])
    return SentGift(**values)


async def read_gift_context(
    conn: Executor, stream_ids: list[str], video_ids: list[str], gift_ids: list[str], request_ids: list[str]
) -> GiftContext:
    """One round trip for the four reads."""
    rows = await conn.fetch(
        "SELECT 'stream' AS kind, stream_id AS id, creator_id, title, status, NULL AS name, NULL::bigint AS coin_price,"
        "  NULL::boolean AS gifts_enabled"
        " FROM live_streams WHERE stream_id = ANY($1::text[])"
        " UNION ALL"
        " SELECT 'video', video_id, creator_id, NULL, NULL, NULL, NULL, gifts_enabled FROM videos"
        " WHERE video_id = ANY($4::text[])"
        " UNION ALL"
        " SELECT 'gift', gift_id, NULL, NULL, NULL, name, coin_price, NULL FROM gift_catalog"
        " WHERE gift_id = ANY($2::text[]) AND active"
        " UNION ALL"
        " SELECT 'earlier', g.gift_transaction_id, NULL, NULL, NULL, NULL, NULL, NULL FROM gift_transactions AS g"
        " WHERE g.request_id = ANY($3::text[])"
        "  AND NOT EXISTS (SELECT 1 FROM idempotency_keys AS k WHERE k.request_id = g.request_id)",
        stream_ids,
        gift_ids,
        request_ids,
        video_ids,
    )
    streams, videos, catalog, earlier_ids = {}, {}, {}, []
    for row in rows:
        if row["kind"] == "stream":
            streams[row["id"]] = LiveStream(row["id"], row["creator_id"], row["title"], StreamStatus(row["status"]))
        elif row["kind"] == "video":
            videos[row["id"]] = Video(row["id"], row["creator_id"], row["gifts_enabled"])
        elif row["kind"] == "gift":
            catalog[row["id"]] = CatalogGift(row["id"], row["name"], row["coin_price"])
        else:
            earlier_ids.append(row["id"])
    earlier = await get_gift_transactions(conn, earlier_ids) if earlier_ids else {}
    return GiftContext(streams, videos, catalog, {gift.request_id: gift for gift in earlier.values()})


async def claim_and_record_pending_gifts(
    conn: Executor, claims: list[idempotency.Claim], decided: list[idempotency.Outcome], gifts: list[SentGift]
) -> set[str]:
    """One statement, so one atomic step without a transaction of our own: claims every request_id (a refusal is
    stored with its key, an accepted request with its gift as the key's resource) and records as pending the gifts
    of the requests that got their key. Returns those request_ids; the others were made before."""
    claim = idempotency.claim_statement(claims, decided, first_param=11)
    rows = await conn.fetch(
        f"WITH claimed AS ({claim.sql})"
        " , recorded AS ("
        "  INSERT INTO gift_transactions (gift_transaction_id, request_id, sender_id, recipient_id, stream_id,"
        "   gift_id, quantity, coin_price, coins, video_id, status)"
        "  SELECT g.*, 'pending' FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],"
        "   $7::integer[], $8::bigint[], $9::bigint[], $10::text[])"
        "   AS g (gift_transaction_id, request_id, sender_id, recipient_id, stream_id, gift_id, quantity, coin_price,"
        "         coins, video_id)"
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
            "video_id",
        ),
        *claim.args,
    )
    return {row["request_id"] for row in rows}


def _columns(rows: list[SentGift], *names: str) -> list[list[object]]:
    """Column arrays for unnest(), one per field name."""
    return [[getattr(row, name) for row in rows] for name in names]


async def get_gift_transactions(conn: Executor, gift_transaction_ids: list[str]) -> dict[str, SentGift]:
    rows = await conn.fetch(
        f"SELECT {GIFT_COLUMNS} FROM gift_transactions WHERE gift_transaction_id = ANY($1::text[])",
        gift_transaction_ids,
    )
    return {row["gift_transaction_id"]: _gift(row) for row in rows}


async def lock_pending_gifts(
    conn: Connection, gift_transaction_ids: list[str], stream_ids: list[str]
) -> CompletionLocks:
    """Locks those of these gifts that are still pending (in id order) — a gift that a concurrent batch, retry or
    recovery pass finished first is left alone — and shares their streams with other completing gifts but not with
    EndLiveStream, StartMatch or SetStreamGoal (FOR UPDATE): a gift completing while its stream ends is either
    committed before the end, its GiftSent queued before StreamEnded, or after it; likewise a match or goal starts
    before or after the batch. The stream rows come back as they are once locked (a start that committed while this
    waited included), so their match_id and goal_id are the ones in force until this transaction ends. Order:
    streams, then gifts (then lock_active_matches)."""
    rows = await conn.fetch(
        "WITH streams AS ("
        "  SELECT stream_id, match_id, goal_id FROM live_streams WHERE stream_id = ANY($2::text[])"
        "  ORDER BY stream_id FOR KEY SHARE"
        " ), gifts AS ("
        "  SELECT gift_transaction_id FROM gift_transactions WHERE gift_transaction_id = ANY($1::text[])"
        "  AND status = 'pending'"
        # Streams before gifts: forced by this (never false) condition, evaluated before any gift is locked.
        "  AND (SELECT count(*) FROM streams) >= 0"
        "  ORDER BY gift_transaction_id FOR UPDATE)"
        " SELECT 'gift' AS kind, gift_transaction_id AS id, NULL AS stream_id FROM gifts"
        " UNION ALL SELECT 'match', match_id, stream_id FROM streams WHERE match_id IS NOT NULL"
        " UNION ALL SELECT 'goal', goal_id, stream_id FROM streams WHERE goal_id IS NOT NULL",
        gift_transaction_ids,
        sorted(set(stream_ids)),
    )
    locks = CompletionLocks(set(), {}, {})
    for row in rows:
        if row["kind"] == "gift":
            locks.pending.add(row["id"])
        elif row["kind"] == "match":
            locks.last_matches[row["stream_id"]] = row["id"]
        else:
            locks.goals[row["stream_id"]] = row["id"]
    return locks


async def lock_active_matches(conn: Connection, match_ids: list[str]) -> set[str]:
    """Of these matches, the active ones, shared (FOR SHARE, in id order) with other completing batches but not
    with the finisher (FOR UPDATE): a match finishes only once every batch that counts gifts in it has committed.
    A statement of its own, after the streams' lock: its snapshot includes every match started before that lock
    (a match read in the streams' statement could be missing from its older snapshot)."""
    rows = await conn.fetch(
        "SELECT match_id FROM matches WHERE match_id = ANY($1::text[]) AND status = 'active'"
        " ORDER BY match_id FOR SHARE",
        sorted(set(match_ids)),
    )
    return {row["match_id"] for row in rows}


async def finish_gifts(
    conn: Connection,
    completed: list[SentGift],
    finished_at: datetime,
    combos: dict[ComboKey, ComboState],
    failures: list[tuple[str, str]],
    outcomes: list[idempotency.Outcome],
) -> None:
    """One statement for rows this transaction has locked already: the completed gifts (payment, combo), their
    combos' new state, the failed gifts (gift_transaction_id, failure_reason), and every request's stored outcome."""
    assert all(gift.status is GiftStatus.COMPLETED for gift in completed), "finish_gifts() takes completed gifts"
    keys = sorted(combos)
    recorded = idempotency.record_statement(outcomes, first_param=17)
    row = await conn.fetchrow(
        "WITH completed AS ("
        "  UPDATE gift_transactions AS g SET status = 'completed', wallet_transaction_id = c.wallet_transaction_id,"
        "   sender_balance_coins = c.sender_balance_coins, paid_coins = c.paid_coins, bonus_coins = c.bonus_coins,"
        "   combo_count = c.combo_count, finished_at = $7, updated_at = now()"
        "  FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::integer[])"
        "   AS c (gift_transaction_id, wallet_transaction_id, sender_balance_coins, paid_coins, bonus_coins,"
        "         combo_count)"
        "  WHERE g.gift_transaction_id = c.gift_transaction_id AND g.status = 'pending' RETURNING 1"
        " ), combo_keys AS ("
        "  SELECT * FROM unnest($8::text[], $9::text[], $10::text[], $11::text[], $12::timestamptz[], $13::integer[])"
        "   AS n (target_kind, target_id, sender_id, gift_id, last_sent_at, combo_count)"
        " ), stream_combos_saved AS ("
        "  UPDATE gift_combos AS c SET last_sent_at = n.last_sent_at, combo_count = n.combo_count FROM combo_keys AS n"
        "  WHERE n.target_kind = 'stream'"
        "   AND (c.stream_id, c.sender_id, c.gift_id) = (n.target_id, n.sender_id, n.gift_id)"
        " ), video_combos_saved AS ("
        "  UPDATE video_combos AS c SET last_sent_at = n.last_sent_at, combo_count = n.combo_count FROM combo_keys AS n"
        "  WHERE n.target_kind = 'video'"
        "   AND (c.video_id, c.sender_id, c.gift_id) = (n.target_id, n.sender_id, n.gift_id)"
        " ), failed AS ("
        "  UPDATE gift_transactions AS g SET status = 'failed', failure_reason = f.reason, finished_at = now(),"
        "   updated_at = now() FROM unnest($14::text[], $15::text[]) AS f (gift_transaction_id, reason)"
        "  WHERE g.gift_transaction_id = f.gift_transaction_id AND g.status = $16 RETURNING 1"
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
        [key.target_kind for key in keys],
        [key.target_id for key in keys],
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
    assert row is not None, "a SELECT of two counts returns a row"
    assert (row["completed"], row["failed"]) == (len(completed), len(failures)), f"{dict(row)}: gifts not pending"


async def stale_pending_gifts(pool: asyncpg.Pool, older_than_seconds: float, limit: int) -> list[str]:
    rows = await pool.fetch(
        "SELECT gift_transaction_id FROM gift_transactions WHERE status = 'pending'"
        " AND created_at < now() - make_interval(secs => $1) ORDER BY created_at LIMIT $2",
        older_than_seconds,
        limit,
    )
    return [row["gift_transaction_id"] for row in rows]


# The counter tables of each kind of target, and the name of their target's id column.
_COUNTER_TABLES = {
    TargetKind.STREAM: ("stream_gifters", "stream_totals", "stream_id"),
    TargetKind.VIDEO: ("video_gifters", "video_totals", "video_id"),
}


async def add_to_counters(
    conn: Connection,
    kind: TargetKind,
    gifters: list[tuple[str, str, int]],
    totals: list[tuple[str, int, int]],
) -> None:
    """A batch's completed gifts on their streams (or videos): coins per (target, sender), then (coins, gifts) per
    target. Each row is written once per batch, in key order, so concurrent batches never deadlock; the totals row,
    every gift's hot spot on a busy stream, is written last and so held the shortest."""
    gifters_table, totals_table, id_column = _COUNTER_TABLES[kind]
    await conn.execute(
        f"INSERT INTO {gifters_table} ({id_column}, sender_id, coins)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) ORDER BY 1, 2"
        f" ON CONFLICT ({id_column}, sender_id) DO UPDATE SET coins = {gifters_table}.coins + EXCLUDED.coins",
        [target for target, _, _ in gifters],
        [sender_id for _, sender_id, _ in gifters],
        [coins for _, _, coins in gifters],
    )
    # An upsert rather than an UPDATE … FROM, whose row order the planner may choose; every target has its row.
    await conn.execute(
        f"INSERT INTO {totals_table} ({id_column}, total_coins, gift_count)"
        " SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[]) ORDER BY 1"
        f" ON CONFLICT ({id_column}) DO UPDATE SET total_coins = {totals_table}.total_coins + EXCLUDED.total_coins,"
        f" gift_count = {totals_table}.gift_count + EXCLUDED.gift_count",
        [target for target, _, _ in totals],
        [coins for _, coins, _ in totals],
        [count for _, _, count in totals],
    )


async def get_totals(conn: Executor, kind: TargetKind, target_id: str) -> Totals | None:
    _, totals_table, id_column = _COUNTER_TABLES[kind]
    row = await conn.fetchrow(f"SELECT total_coins, gift_count FROM {totals_table} WHERE {id_column} = $1", target_id)
    return None if row is None else Totals(row["total_coins"], row["gift_count"])


async def top_gifters(conn: Executor, kind: TargetKind, target_id: str, limit: int) -> list[tuple[str, int]]:
    gifters_table, _, id_column = _COUNTER_TABLES[kind]
    rows = await conn.fetch(
        f"SELECT sender_id, coins FROM {gifters_table} WHERE {id_column} = $1 ORDER BY coins DESC, sender_id LIMIT $2",
        target_id,
        limit,
    )
    return [(row["sender_id"], row["coins"]) for row in rows]


# The combo table of each kind of target, and the name of its target's id column.
_COMBO_TABLES = {TargetKind.STREAM: ("gift_combos", "stream_id"), TargetKind.VIDEO: ("video_combos", "video_id")}


async def lock_combos(conn: Connection, keys: list[ComboKey]) -> tuple[dict[ComboKey, ComboState], datetime]:
    """The last completed gift of each (target, sender, gift), locked until the transaction ends, so completions that
    may continue one combo take turns, and the database's clock once they are all locked: the batch's completion
    time. One clock for every replica, read after the locks of the batch's matches, decides which match a gift counts
    in. One statement per kind of target makes missing rows and locks every row, streams first, in key order."""
    states: dict[ComboKey, ComboState] = {}
    clock: datetime | None = None
    for kind in TargetKind:
        ordered = sorted({key for key in keys if key.target_kind == kind.value})
        if not ordered:
            continue
        table, id_column = _COMBO_TABLES[kind]
        rows = await conn.fetch(
            f"INSERT INTO {table} ({id_column}, sender_id, gift_id)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) ORDER BY 1, 2, 3"
            # The no-op update locks an existing row and returns it as it is.
            f" ON CONFLICT ({id_column}, sender_id, gift_id) DO UPDATE SET combo_count = {table}.combo_count"
            f" RETURNING {id_column} AS target_id, sender_id, gift_id, last_sent_at, combo_count,"
            "  clock_timestamp() AS now",
            [key.target_id for key in ordered],
            [key.sender_id for key in ordered],
            [key.gift_id for key in ordered],
        )
        for row in rows:
            key = ComboKey(kind.value, row["target_id"], row["sender_id"], row["gift_id"])
            states[key] = ComboState(row["last_sent_at"], row["combo_count"])
            clock = row["now"] if clock is None else max(clock, row["now"])
    assert clock is not None, "lock_combos() needs keys"
    return states, clock


async def add_to_gifter_totals(conn: Connection, increments: list[LeaderboardIncrement]) -> None:
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


async def insert_outbox_events(conn: Connection, events: list[OutboxRow]) -> None:
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


# The relay's advisory lock key: any constant unlike the other advisory lock keys used on the gifts database.
GIFT_OUTBOX = Outbox("gifts", "gift_outbox", lock_key=0x67696674)  # "gift"
