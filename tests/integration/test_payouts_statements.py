"""Creator statements across days, which the API alone cannot produce in a test (credits are stamped by the
database clock): the real use case and SQL, in process, on a throwaway migrated database holding credits made at
chosen times, including both sides of a UTC midnight, to streams and to videos."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import pytest_asyncio

from services.payouts.domain import EarningsGroupBy, WithdrawalPolicy
from services.payouts.payout_provider import SandboxPayoutProvider
from services.payouts.service import PayoutsService
from services.payouts.store import PostgresPayoutsStore
from services.runtime import database
from services.runtime.errors import AppError
from tests.support.stack import REPO_ROOT, Stack

MIDNIGHT = datetime(2026, 11, 20, tzinfo=UTC)
# (stream, coins, when): two on each side of the 20th's midnight, one on another stream days later.
CREDITS = [
    ("st_a", 10, MIDNIGHT - timedelta(microseconds=1)),
    ("st_a", 20, MIDNIGHT - timedelta(hours=3)),
    ("st_b", 30, MIDNIGHT),
    ("st_a", 40, MIDNIGHT + timedelta(hours=23, minutes=59)),
    ("st_c", 50, MIDNIGHT + timedelta(days=3)),
]
# (video, coins, when): video gifts on both sides of that midnight, two videos whose latest credits tie, and one day
# with video gifts only.
VIDEO_CREDITS = [
    ("vid_x", 5, MIDNIGHT - timedelta(hours=1)),
    ("vid_y", 6, MIDNIGHT + timedelta(hours=1)),
    ("vid_a", 8, MIDNIGHT + timedelta(hours=1)),
    ("vid_x", 7, MIDNIGHT + timedelta(days=2)),
]


@pytest_asyncio.fixture
async def payouts(stack: Stack) -> AsyncIterator[PayoutsService]:
    name = f"payouts_statements_{uuid.uuid4().hex[:8]}"
    stack.postgres.create_database(name)
    pool = await asyncpg.create_pool(stack.postgres.url(name), min_size=1, max_size=2)
    try:
        await database.apply_migrations(pool, REPO_ROOT / "services" / "payouts" / "migrations")
        await insert_credits(pool, "amy")
        await insert_credits(pool, "bob")  # another creator's credits never show
        policy = WithdrawalPolicy(2000, 200_000, 500, "USD")
        yield PayoutsService(
            PostgresPayoutsStore(pool), policy, SandboxPayoutProvider(0.0), provider_timeout_seconds=1.0
        )
    finally:
        await pool.close()


async def insert_credits(pool: asyncpg.Pool, creator_id: str) -> None:
    await pool.execute(
        "INSERT INTO settlement_rates (version, numerator, denominator) VALUES (1, 1, 1) ON CONFLICT DO NOTHING"
    )
    targets = [(stream_id, None, coins, when) for stream_id, coins, when in CREDITS]
    targets += [(None, video_id, coins, when) for video_id, coins, when in VIDEO_CREDITS]
    for stream_id, video_id, coins, when in targets:
        gift_id, transaction_id = f"gtx_{uuid.uuid4().hex}", f"txn_{uuid.uuid4().hex}"
        await pool.execute("INSERT INTO inbox (gift_transaction_id) VALUES ($1)", gift_id)
        await pool.execute(
            "INSERT INTO ledger_transactions (transaction_id, kind, reference) VALUES ($1, 'settlement', 'test')",
            transaction_id,
        )
        await pool.execute(
            "INSERT INTO diamond_credits (gift_transaction_id, creator_id, stream_id, video_id, coins, diamonds,"
            " rate_version, transaction_id, created_at, available_at, matured_at)"
            " VALUES ($1, $2, $3, $7, $4, $4, 1, $5, $6, $6, $6)",
            gift_id,
            creator_id,
            stream_id,
            coins,
            transaction_id,
            when,
            video_id,
        )


async def all_pages(
    payouts: PayoutsService, group_by: EarningsGroupBy, page_size: int
) -> list[list[tuple[str, int, int]]]:
    pages, token = [], ""
    while True:
        response = await payouts.list_earnings("amy", group_by, page_size, token)
        pages.append([(row.key, row.diamonds, row.gift_count) for row in response.items])
        token = response.next_page_token
        if not token:
            return pages


async def test_days_are_utc_newest_first_and_page_exactly(payouts: PayoutsService) -> None:
    # Stream and video gifts alike: the 22nd has video gifts only.
    days = [("2026-11-23", 50, 1), ("2026-11-22", 7, 1), ("2026-11-20", 84, 4), ("2026-11-19", 35, 3)]
    assert await all_pages(payouts, EarningsGroupBy.DAY, 50) == [days]
    assert await all_pages(payouts, EarningsGroupBy.DAY, 1) == [[day] for day in days]
    assert await all_pages(payouts, EarningsGroupBy.DAY, 3) == [days[:3], days[3:]]


async def test_streams_are_ordered_by_their_latest_credit_and_page_exactly(payouts: PayoutsService) -> None:
    # Video gifts are not in it.
    streams = [("st_c", 50, 1), ("st_a", 70, 3), ("st_b", 30, 1)]
    assert await all_pages(payouts, EarningsGroupBy.STREAM, 50) == [streams]
    assert await all_pages(payouts, EarningsGroupBy.STREAM, 1) == [[stream] for stream in streams]


async def test_videos_are_ordered_by_their_latest_credit_then_id_and_page_exactly(payouts: PayoutsService) -> None:
    # Stream gifts are not in it; vid_a and vid_y tie on their latest credit, so the id orders them.
    videos = [("vid_x", 12, 2), ("vid_a", 8, 1), ("vid_y", 6, 1)]
    assert await all_pages(payouts, EarningsGroupBy.VIDEO, 50) == [videos]
    assert await all_pages(payouts, EarningsGroupBy.VIDEO, 1) == [[video] for video in videos]
    assert await all_pages(payouts, EarningsGroupBy.VIDEO, 2) == [videos[:2], videos[2:]]


@pytest.mark.parametrize(
    ("handed_out_by", "used_by"),
    [
        (EarningsGroupBy.DAY, EarningsGroupBy.STREAM),
        (EarningsGroupBy.VIDEO, EarningsGroupBy.STREAM),
        (EarningsGroupBy.STREAM, EarningsGroupBy.VIDEO),
        (EarningsGroupBy.VIDEO, EarningsGroupBy.DAY),
    ],
)
async def test_a_token_of_one_grouping_is_refused_by_another(
    payouts: PayoutsService, handed_out_by: EarningsGroupBy, used_by: EarningsGroupBy
) -> None:
    first = await payouts.list_earnings("amy", handed_out_by, 1, "")
    assert first.next_page_token
    with pytest.raises(AppError) as error:
        await payouts.list_earnings("amy", used_by, 1, first.next_page_token)
    assert [violation.field for violation in error.value.field_violations] == ["page_token"]
