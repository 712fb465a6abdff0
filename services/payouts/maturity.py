"""The maturity hold: diamonds of a gift stay in the creator's pending account until the credit's available_at
(COINSTREAM_DIAMOND_HOLD_SECONDS after settlement), then move to available.

Moving is one transaction per batch: the due credits are locked, marked matured and their diamonds posted
pending → available, so a credit matures exactly once however many workers, replicas or withdrawals race for it
(a credit another transaction holds is skipped, and its marking is checked by the database). The worker moves
everything due; a withdrawal also matures its own creator's due credits first, so it never waits on the worker."""

from __future__ import annotations

import asyncio

import asyncpg
import structlog
from prometheus_client import Counter

from services.payouts import domain, store
from services.payouts.ids import new_id

DIAMONDS_MATURED = Counter("coinstream_payouts_diamonds_matured_total", "Diamonds moved from pending to available")

log = structlog.get_logger()


async def mature_due_credits(conn: asyncpg.Connection, limit: int, creator_id: str | None = None) -> int:
    """Matures up to limit due credits (of one creator, or of anyone) in the caller's transaction; returns how
    many credits that was."""
    due = await store.lock_due_credits(conn, limit, creator_id)
    if not due:
        return 0
    diamonds_per_creator = domain.totals_by_creator((credit.creator_id, credit.diamonds) for credit in due)
    transaction_id = new_id("txn")
    await store.record_transaction(
        conn,
        transaction_id=transaction_id,
        kind="maturity",
        reference=f"{len(due)} credits",
        postings=domain.maturity_postings(diamonds_per_creator),
    )
    await store.mark_matured(conn, [credit.gift_transaction_id for credit in due], transaction_id)
    await store.move_matured(conn, diamonds_per_creator)
    DIAMONDS_MATURED.inc(sum(diamonds_per_creator.values()))
    return len(due)


class MaturityWorker:
    def __init__(self, pool: asyncpg.Pool, *, batch_size: int, interval_seconds: float) -> None:
        self._pool = pool
        self._batch_size = batch_size
        self._interval_seconds = interval_seconds

    async def run_forever(self) -> None:
        while True:
            matured = await self.mature_once()
            if matured < self._batch_size:  # a full batch means more may be due: go on at once
                await asyncio.sleep(self._interval_seconds)

    async def mature_once(self) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            matured = await mature_due_credits(conn, self._batch_size)
        if matured:
            log.info("credits_matured", credits=matured)
        return matured
