"""The inboxes of providers' notifications (the wallet's rail_notifications, payouts' payout_notifications): each
notification's id is kept so that a provider's retry takes effect once. Providers retry for days, not months (App
Store Server Notifications and Stripe for about 3 days, Pub/Sub for at most 7), so ids older than the retention are
forgotten in bounded batches; a refund's effect never depends on its id alone (a reversal is by the share refunded so
far, a payout's outcome by its status), so even a notice replayed later takes effect at most once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import structlog

log = structlog.get_logger()

FORGOTTEN_PER_PASS = 1000
RETENTION_PASS_INTERVAL_SECONDS = 3600.0


@dataclass(frozen=True)
class NotificationInbox:
    table: str  # a table with a received_at column and an index on it

    async def forget_older_than(self, pool: asyncpg.Pool, days: int, limit: int = FORGOTTEN_PER_PASS) -> int:
        result = await pool.execute(
            f"DELETE FROM {self.table} WHERE ctid IN ("
            f" SELECT ctid FROM {self.table} WHERE received_at < now() - make_interval(days => $1) LIMIT $2)",
            days,
            limit,
        )
        return int(result.split()[-1])


def retention_pass(pool: asyncpg.Pool, inbox: NotificationInbox, days: int) -> Callable[[], Awaitable[bool]]:
    """A periodic pass (ServiceRuntime.add_periodic): one batch, and again at once while a backlog remains."""

    async def one_pass() -> bool:
        forgotten = await inbox.forget_older_than(pool, days)
        if forgotten:
            log.info("notifications_forgotten", table=inbox.table, forgotten=forgotten, retention_days=days)
        if forgotten < FORGOTTEN_PER_PASS:
            return False
        await asyncio.sleep(1.0)  # a backlog goes in steps, leaving the database to the requests in between
        return True

    return one_pass
