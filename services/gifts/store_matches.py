"""The gifts service's SQL for videos, matches and stream goals (store.py has the rest, and the PostgreSQL
implementation of ports.GiftStore that calls these). Functions take a connection so the use cases decide the
transaction boundaries."""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

from services.gifts.domain import LiveStream, Match, MatchSide, MatchStatus, MatchSupporter, StreamGoal, Video
from services.gifts.store import Connection, Executor

# ---------------------------------------------------------------- videos


async def upsert_video(conn: Connection, video: Video) -> Video | None:
    """Registers the video (with zeroed counters) or sets whether it takes gifts; None when it belongs to another
    creator (a video's creator is fixed). One statement, so two racing registrations cannot both set a creator."""
    row = await conn.fetchrow(
        """
        WITH upserted AS (
            INSERT INTO videos (video_id, creator_id, gifts_enabled) VALUES ($1, $2, $3)
            ON CONFLICT (video_id) DO UPDATE SET gifts_enabled = EXCLUDED.gifts_enabled,
                updated_at = CASE WHEN videos.gifts_enabled = EXCLUDED.gifts_enabled THEN videos.updated_at
                                  ELSE now() END
            WHERE videos.creator_id = EXCLUDED.creator_id
            RETURNING video_id, creator_id, gifts_enabled
        ), counters AS (
            INSERT INTO video_totals (video_id) SELECT video_id FROM upserted ON CONFLICT DO NOTHING
        )
        SELECT video_id, creator_id, gifts_enabled FROM upserted
        """,
        video.video_id,
        video.creator_id,
        video.gifts_enabled,
    )
    return None if row is None else Video(row["video_id"], row["creator_id"], row["gifts_enabled"])


async def get_video(conn: Executor, video_id: str) -> Video | None:
    row = await conn.fetchrow("SELECT video_id, creator_id, gifts_enabled FROM videos WHERE video_id = $1", video_id)
    return None if row is None else Video(row["video_id"], row["creator_id"], row["gifts_enabled"])


# ---------------------------------------------------------------- matches

MATCH_COLUMNS = "match_id, status, starts_at, ends_at, winner_stream_ids, finished_at"


async def create_match(conn: Connection, match_id: str, sides: list[LiveStream], duration: timedelta) -> Match:
    """Inserts the match and its sides (in the order given) and puts their streams in it; the streams must be locked
    by this transaction. It starts now by the database's clock — the clock completing gifts are stamped with."""
    row = await conn.fetchrow(
        """
        WITH started AS (
            INSERT INTO matches (match_id, status, starts_at, ends_at)
            SELECT $1, 'active', now, now + $2::interval FROM (SELECT clock_timestamp() AS now) AS clock
            RETURNING match_id, status, starts_at, ends_at, winner_stream_ids, finished_at
        ), sides AS (
            INSERT INTO match_sides (match_id, stream_id, creator_id, position)
            SELECT $1, s.stream_id, s.creator_id, s.position - 1
            FROM unnest($3::text[], $4::text[]) WITH ORDINALITY AS s (stream_id, creator_id, position)
        ), joined AS (
            UPDATE live_streams SET match_id = $1 WHERE stream_id = ANY($3::text[])
        )
        SELECT match_id, status, starts_at, ends_at, winner_stream_ids, finished_at FROM started
        """,
        match_id,
        duration,
        [stream.stream_id for stream in sides],
        [stream.creator_id for stream in sides],
    )
    assert row is not None, "an insert returns its row"
    sides_zero = [MatchSide(stream.stream_id, stream.creator_id, 0) for stream in sides]
    return _match(row, sides_zero)


def _match(row: asyncpg.Record, sides: list[MatchSide]) -> Match:
    return Match(
        row["match_id"],
        tuple(sides),
        MatchStatus(row["status"]),
        row["starts_at"],
        row["ends_at"],
        tuple(row["winner_stream_ids"] or ()),
        row["finished_at"],
    )


async def get_match(conn: Executor, match_id: str) -> Match | None:
    row = await conn.fetchrow(f"SELECT {MATCH_COLUMNS} FROM matches WHERE match_id = $1", match_id)
    return None if row is None else _match(row, await _match_sides(conn, match_id))


async def _match_sides(conn: Executor, match_id: str) -> list[MatchSide]:
    rows = await conn.fetch(
        "SELECT stream_id, creator_id, score_coins FROM match_sides WHERE match_id = $1 ORDER BY position", match_id
    )
    return [MatchSide(row["stream_id"], row["creator_id"], row["score_coins"]) for row in rows]


async def top_match_supporters(conn: Executor, match_id: str, per_side: int) -> list[MatchSupporter]:
    """Up to per_side supporters of each side, side by side in side order, most coins first."""
    rows = await conn.fetch(
        "SELECT stream_id, sender_id, coins FROM ("
        "  SELECT p.stream_id, p.sender_id, p.coins, s.position,"
        "   row_number() OVER (PARTITION BY p.stream_id ORDER BY p.coins DESC, p.sender_id) AS place"
        "  FROM match_supporters AS p JOIN match_sides AS s USING (match_id, stream_id) WHERE p.match_id = $1"
        " ) AS ranked WHERE place <= $2 ORDER BY position, place",
        match_id,
        per_side,
    )
    return [MatchSupporter(row["stream_id"], row["sender_id"], row["coins"]) for row in rows]


async def add_to_match_scores(
    conn: Connection,
    match_ids: list[str],
    stream_coins: list[tuple[str, int]],
    supporter_coins: list[tuple[str, str, int]],
    completed_at: datetime,
) -> list[Match]:
    """Adds a batch's gifts to the scores of the matches their streams are in — those of the matches (locked FOR
    SHARE by lock_pending_gifts) that are active and whose window holds completed_at — and to their supporters.
    Every side of such a match is locked and written (0 added to the sides without gifts), in (match, stream) order:
    batches to one match take turns, so each returns a consistent scoreboard, and its MatchUpdated events are queued
    in commit order. Returns the matches counted in, sides in position order."""
    rows = await conn.fetch(
        "WITH sides AS ("
        "  SELECT s.match_id, s.stream_id, m.starts_at, m.ends_at FROM match_sides AS s"
        "  JOIN matches AS m USING (match_id)"
        "  WHERE s.match_id = ANY($1::text[]) AND m.status = 'active' AND m.starts_at <= $2 AND $2 < m.ends_at"
        "  ORDER BY s.match_id, s.stream_id FOR UPDATE OF s"
        " ), increments AS ("
        "  SELECT * FROM unnest($3::text[], $4::bigint[]) AS i (stream_id, coins)"
        " ), scored AS ("
        "  UPDATE match_sides AS s SET score_coins = s.score_coins + coalesce(i.coins, 0)"
        "  FROM sides LEFT JOIN increments AS i USING (stream_id)"
        "  WHERE (s.match_id, s.stream_id) = (sides.match_id, sides.stream_id)"
        "  RETURNING s.match_id, s.stream_id, s.creator_id, s.position, s.score_coins, sides.starts_at, sides.ends_at"
        " ), supported AS ("
        "  INSERT INTO match_supporters (match_id, stream_id, sender_id, coins)"
        "  SELECT sides.match_id, p.stream_id, p.sender_id, p.coins"
        "  FROM unnest($5::text[], $6::text[], $7::bigint[]) AS p (stream_id, sender_id, coins)"
        "  JOIN sides USING (stream_id) ORDER BY 1, 2, 3"
        "  ON CONFLICT (match_id, stream_id, sender_id) DO UPDATE SET coins = match_supporters.coins + EXCLUDED.coins"
        " )"
        " SELECT * FROM scored ORDER BY match_id, position",
        sorted(set(match_ids)),
        completed_at,
        [stream_id for stream_id, _ in stream_coins],
        [coins for _, coins in stream_coins],
        [stream_id for stream_id, _, _ in supporter_coins],
        [sender_id for _, sender_id, _ in supporter_coins],
        [coins for _, _, coins in supporter_coins],
    )
    matches: dict[str, list[asyncpg.Record]] = {}
    for row in rows:
        matches.setdefault(row["match_id"], []).append(row)
    return [
        Match(
            match_id,
            tuple(MatchSide(r["stream_id"], r["creator_id"], r["score_coins"]) for r in sides),
            MatchStatus.ACTIVE,
            sides[0]["starts_at"],
            sides[0]["ends_at"],
        )
        for match_id, sides in matches.items()
    ]


async def lock_due_match(conn: Connection) -> Match | None:
    """The active match that ended longest ago (by the database's clock), locked FOR UPDATE: this waits for the
    batches counting gifts in it (they share it) to commit, and another finisher waiting for it sees it finished
    and moves on to the next. None when no match is due."""
    row = await conn.fetchrow(
        f"SELECT {MATCH_COLUMNS} FROM matches WHERE status = 'active' AND ends_at <= clock_timestamp()"
        " ORDER BY ends_at, match_id LIMIT 1 FOR UPDATE"
    )
    return None if row is None else _match(row, await _match_sides(conn, row["match_id"]))


async def finish_match(conn: Connection, match_id: str, winner_stream_ids: list[str]) -> datetime:
    """Stamps the locked match finished with its winners (which frees its streams for another match); returns
    when."""
    finished_at = await conn.fetchval(
        "UPDATE matches SET status = 'finished', finished_at = clock_timestamp(), winner_stream_ids = $2"
        " WHERE match_id = $1 AND status = 'active' RETURNING finished_at",
        match_id,
        winner_stream_ids,
    )
    assert isinstance(finished_at, datetime), f"match {match_id} was not active (lock it first)"
    return finished_at


# ---------------------------------------------------------------- stream goals

GOAL_COLUMNS = "goal_id, stream_id, creator_id, target_coins, progress_coins, description, created_at, reached_at"


def _goal(row: asyncpg.Record) -> StreamGoal:
    return StreamGoal(
        row["goal_id"],
        row["stream_id"],
        row["creator_id"],
        row["target_coins"],
        row["progress_coins"],
        row["description"],
        row["created_at"],
        row["reached_at"],
    )


async def replace_goal(
    conn: Connection, goal_id: str, stream: LiveStream, target_coins: int, description: str
) -> StreamGoal:
    """Closes the stream's open goal and opens this one, counting from now by the database's clock (the clock
    completing gifts are stamped with). The stream must be locked by this transaction."""
    # Closed first, by a statement of its own: the CTEs of one statement run in no set order, and the new goal
    # would meet the open one in the unique index.
    await conn.execute(
        "UPDATE stream_goals SET closed_at = clock_timestamp() WHERE stream_id = $1 AND closed_at IS NULL",
        stream.stream_id,
    )
    row = await conn.fetchrow(
        f"""
        WITH opened AS (
            INSERT INTO stream_goals (goal_id, stream_id, creator_id, target_coins, description, created_at)
            VALUES ($1, $2, $3, $4, $5, clock_timestamp())
            RETURNING {GOAL_COLUMNS}
        ), pointed AS (
            UPDATE live_streams SET goal_id = $1 WHERE stream_id = $2
        )
        SELECT {GOAL_COLUMNS} FROM opened
        """,
        goal_id,
        stream.stream_id,
        stream.creator_id,
        target_coins,
        description,
    )
    assert row is not None, "an insert returns its row"
    return _goal(row)


async def get_goal(conn: Executor, goal_id: str) -> StreamGoal | None:
    row = await conn.fetchrow(f"SELECT {GOAL_COLUMNS} FROM stream_goals WHERE goal_id = $1", goal_id)
    return None if row is None else _goal(row)


async def add_to_goals(
    conn: Connection, goal_coins: list[tuple[str, int]], completed_at: datetime
) -> list[tuple[StreamGoal, int]]:
    """Adds a batch's coins to the open goals of their streams (locked in goal order) and stamps reached_at — once —
    on the goals they bring to the target. Returns each goal as after and the coins added."""
    rows = await conn.fetch(
        "WITH locked AS ("
        "  SELECT goal_id FROM stream_goals WHERE goal_id = ANY($1::text[]) AND closed_at IS NULL"
        "  ORDER BY goal_id FOR UPDATE"
        " )"
        " UPDATE stream_goals AS g SET progress_coins = g.progress_coins + i.coins,"
        "  reached_at = coalesce("
        "   g.reached_at, CASE WHEN g.progress_coins + i.coins >= g.target_coins THEN $3::timestamptz END)"
        " FROM locked JOIN unnest($1::text[], $2::bigint[]) AS i (goal_id, coins) USING (goal_id)"
        " WHERE g.goal_id = locked.goal_id RETURNING g.goal_id, g.stream_id, g.creator_id, g.target_coins,"
        "  g.progress_coins, g.description, g.created_at, g.reached_at, i.coins",
        [goal_id for goal_id, _ in goal_coins],
        [coins for _, coins in goal_coins],
        completed_at,
    )
    return [(_goal(row), row["coins"]) for row in rows]
