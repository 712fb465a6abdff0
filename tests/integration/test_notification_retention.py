"""Providers' notification ids are forgotten after the retention (COINSTREAM_NOTIFICATION_RETENTION_DAYS), in bounded
batches, and only those: the inboxes of the wallet and payouts do not grow for ever."""

from __future__ import annotations

import asyncpg
import pytest

from services.runtime.notification_inbox import NotificationInbox
from tests.support.clients import new_id
from tests.support.stack import Stack

INBOXES = {
    "wallet": ("rail_notifications", "rail"),
    "payouts": ("payout_notifications", "payout_provider"),
}


@pytest.mark.parametrize("service", sorted(INBOXES))
async def test_ids_older_than_the_retention_are_forgotten_in_batches(stack: Stack, service: str) -> None:
    table, provider_column = INBOXES[service]
    pool = await asyncpg.create_pool(stack.database_url(service), min_size=1, max_size=2)
    assert pool is not None
    try:
        kept, old = new_id("kept"), [new_id("old") for _ in range(3)]
        for notification_id, age_days in [(kept, 89), *((n, 91) for n in old)]:
            await pool.execute(
                f"INSERT INTO {table} ({provider_column}, notification_id, kind, received_at)"
                " VALUES ('test', $1, 'TEST', now() - make_interval(days => $2))",
                notification_id,
                age_days,
            )
        inbox = NotificationInbox(table)

        first = await inbox.forget_older_than(pool, 90, limit=2)
        second = await inbox.forget_older_than(pool, 90, limit=2)

        assert (first, second) == (2, 1)
        left = await pool.fetch(
            f"SELECT notification_id FROM {table} WHERE {provider_column} = 'test' AND notification_id = ANY($1)",
            [kept, *old],
        )
        assert [row["notification_id"] for row in left] == [kept]
    finally:
        await pool.close()
