"""The maturity hold: diamonds of a gift stay in the creator's pending account until the credit's available_at
(COINSTREAM_DIAMOND_HOLD_SECONDS after settlement), then move to available.

Moving is one transaction per batch: the due credits are locked, marked matured and their diamonds posted
pending → available, so a credit matures exactly once however many workers, replicas or withdrawals race for it
(a credit another transaction holds is skipped, and its marking is checked by the database). The worker moves
everything due; a withdrawal also matures its own creator's due credits first, so it never waits on the worker."""

from __future__ import annotations

import structlog
from prometheus_client import Counter

from services.payouts import domain
from services.payouts.clawbacks import repay_debts
from services.payouts.ports import PayoutsStore, PayoutsTransaction
from services.runtime.ids import new_id

DIAMONDS_MATURED = Counter("coinstream_payouts_diamonds_matured_total", "Diamonds moved from pending to available")

log = structlog.get_logger()


async def mature_due_credits(tx: PayoutsTransaction, limit: int, creator_id: str | None = None) -> int:
    """Matures up to limit due credits (of one creator, or of anyone) in the caller's transaction; returns how
    many credits that was."""
    due = await tx.lock_due_credits(limit, creator_id)
    if not due:
        return 0
    diamonds_per_creator = domain.totals_by_creator((credit.creator_id, credit.diamonds) for credit in due)
    transaction_id = new_id("txn")
    await tx.record_transaction(
        transaction_id=transaction_id,
        kind="maturity",
        reference=f"{len(due)} credits",
        postings=domain.maturity_postings(diamonds_per_creator),
    )
    await tx.mark_matured([credit.gift_transaction_id for credit in due], transaction_id)
    await repay_debts(tx, await tx.move_matured(diamonds_per_creator))
    DIAMONDS_MATURED.inc(sum(diamonds_per_creator.values()))
    return len(due)


class MaturityWorker:
    def __init__(self, store: PayoutsStore, *, batch_size: int) -> None:
        self._store = store
        self._batch_size = batch_size

    async def run_once(self) -> bool:
        """One pass (ServiceRuntime.add_periodic); True when it matured a full batch, so more may be due at once."""
        return await self.mature_once() >= self._batch_size

    async def mature_once(self) -> int:
        async with self._store.transaction() as tx:
            matured = await mature_due_credits(tx, self._batch_size)
        if matured:
            log.info("credits_matured", credits=matured)
        return matured
