"""Chargebacks follow the money into payouts: the wallet's events (wallet.v1.purchase_reversed,
wallet.v1.account_status_changed) applied exactly once, the clawback of the diamonds a reversed purchase's coins
earned, and the repayment of a creator's debt from later diamonds.

A clawback takes, per gift, the diamonds its reversed coins earned at the gift's own rate version, through the
carry settlement uses (domain.take_back), so that per creator and rate version the net diamonds stay floor(net coins ×
rate): from the gift's diamonds still in the hold first, then available ones; what cannot be taken is debt. A
reversal that arrives before its gift is settled waits and is applied by the settlement that credits the gift. Every
way diamonds become available (a credit without a hold, a matured credit, a withdrawal given back) repays a debt first.

Locks, in the order every transaction here takes them: the clawbacks table (a reversal excludes settlements, which
hold it shared: otherwise each could miss the other's uncommitted rows, and a clawback would wait forever for a gift
already settled), the gifts' credits, the carries (per rate version, creators in id order), the creators' balance
rows (in id order) — the order settlement, maturity and withdrawals also follow."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import structlog
from prometheus_client import Counter

from services.payouts import domain, events
from services.payouts.ports import PayoutsStore, PayoutsTransaction
from services.runtime.faults import crash_point
from services.runtime.ids import new_id

DIAMONDS_CLAWED_BACK = Counter(
    "coinstream_payouts_diamonds_clawed_back_total", "Diamonds taken back because their coins' purchase was reversed"
)
DEBT_CREATED = Counter("coinstream_payouts_debt_diamonds_total", "Clawed-back diamonds a creator did not have (debt)")
DEBT_REPAID = Counter("coinstream_payouts_debt_repaid_diamonds_total", "Creator debt repaid from later diamonds")

log = structlog.get_logger()


class WalletEvents:
    """The use cases behind payouts' consumer of the wallet's events, each exactly once by its Nats-Msg-Id."""

    def __init__(self, store: PayoutsStore, on_event_queued: Callable[[], None] = lambda: None) -> None:
        self._store = store
        # Wakes the outbox relay: DiamondsClawedBack goes out at once rather than at its next poll.
        self._on_event_queued = on_event_queued

    async def purchase_reversed(self, msg_id: str, purchase_id: str, clawbacks: list[domain.Clawback]) -> int:
        """Records the reversal's gifts and claws back those already settled; returns how many were applied now."""
        async with self._store.transaction() as tx:
            await tx.exclusive_of_settlements()
            if not await tx.admit_wallet_event(msg_id):
                return 0
            recorded = await tx.insert_clawbacks(purchase_id, clawbacks)
            taken = await apply_waiting_clawbacks(tx, [c.gift_transaction_id for c in recorded])
            crash_point("payouts.before_clawback_commit")
        self._on_event_queued()
        log.info("purchase_reversal_applied", msg_id=msg_id, gifts=len(recorded), clawed_back_now=len(taken))
        return len(taken)

    async def account_status_changed(self, msg_id: str, account_id: str, *, frozen: bool, version: int) -> None:
        async with self._store.transaction() as tx:
            if await tx.admit_wallet_event(msg_id) and await tx.set_account_status(account_id, frozen, version):
                log.info("wallet_account_status_applied", account_id=account_id, frozen=frozen, version=version)


RECOVERY_BATCH_SIZE = 500


async def recover_waiting_clawbacks(store: PayoutsStore) -> bool:
    """A recovery pass: clawbacks still waiting on gifts that are settled by now. Settlement applies them itself; this
    catches those a settlement of the release before clawbacks (during a rolling upgrade) left behind. True when a
    full batch was applied, so more may wait."""
    gifts = await store.settled_gifts_with_waiting_clawbacks(RECOVERY_BATCH_SIZE)
    if not gifts:
        return False
    async with store.transaction() as tx:
        await tx.exclusive_of_settlements()
        taken = await apply_waiting_clawbacks(tx, gifts)
    if taken:
        log.warning("waiting_clawbacks_recovered", clawbacks=len(taken))
    return len(gifts) >= RECOVERY_BATCH_SIZE


async def apply_waiting_clawbacks(
    tx: PayoutsTransaction, gift_transaction_ids: list[str]
) -> list[domain.ClawbackTaken]:
    """Applies the clawbacks waiting on these gifts whose credits exist (the others wait for their settlement)."""
    if not gift_transaction_ids:
        return []
    waiting = await tx.lock_waiting_clawbacks(gift_transaction_ids)
    if not waiting:
        return []
    credits = await tx.lock_credits(sorted({c.gift_transaction_id for c in waiting}))
    ready = [(c, credits[c.gift_transaction_id]) for c in waiting if c.gift_transaction_id in credits]
    if not ready:
        return []
    rates = await tx.rates(sorted({credit.rate_version for _, credit in ready}))
    remainders = await _lock_carries(tx, rates, [credit for _, credit in ready])
    balances = await tx.lock_balances_of(sorted({credit.creator_id for _, credit in ready}))
    taken, new_remainders = domain.take_back(ready, rates, remainders, balances)
    for (asked, _), took in zip(ready, taken, strict=True):
        if took.clawback.coins < asked.coins:  # the wallet traced more coins to the gift than it paid: a bug, or forged
            log.error(
                "clawback_beyond_gift",
                gift_transaction_id=asked.gift_transaction_id,
                asked=asked.coins,
                taken=took.clawback.coins,
                reversal_id=asked.reversal_id,
            )
    transaction_id = new_id("txn")
    await tx.record_transaction(
        transaction_id=transaction_id,
        kind="clawback",
        reference=f"{len(taken)} gifts",
        postings=domain.clawback_postings(taken),
    )
    for version, rate in rates.items():
        if rate.carries_fractions:
            await tx.save_carries(version, {c: r for (c, v), r in new_remainders.items() if v == version})
    await tx.apply_clawbacks(taken, transaction_id)
    await tx.queue_events(events.diamonds_clawed_back(taken, await tx.now()))
    _count(taken)
    return taken


async def _lock_carries(
    tx: PayoutsTransaction, rates: dict[int, domain.SettlementRate], credits: list[domain.ClawedCredit]
) -> dict[tuple[str, int], int]:
    """The carried fractions of the credits' (creator, rate version) pairs, locked; a whole-number rate keeps none."""
    remainders: dict[tuple[str, int], int] = {}
    for version in sorted(rates):
        if not rates[version].carries_fractions:
            continue
        creators = sorted({credit.creator_id for credit in credits if credit.rate_version == version})
        for creator_id, remainder in (await tx.lock_carries(version, creators)).items():
            remainders[(creator_id, version)] = remainder
    return remainders


async def repay_debts(tx: PayoutsTransaction, balances: Iterable[domain.Balances]) -> None:
    """Diamonds that just became available repay their creator's debt first (rows the caller holds)."""
    repaid = {b.creator_id: b.repayable for b in sorted(balances, key=lambda b: b.creator_id) if b.repayable}
    if not repaid:
        return
    await tx.record_transaction(
        transaction_id=new_id("txn"),
        kind="debt_repayment",
        reference=f"{len(repaid)} creators",
        postings=domain.repayment_postings(repaid),
    )
    await tx.repay_debts(repaid)
    DEBT_REPAID.inc(sum(repaid.values()))
    log.info("creator_debts_repaid", repaid=repaid)


def _count(taken: list[domain.ClawbackTaken]) -> None:
    DIAMONDS_CLAWED_BACK.inc(sum(t.diamonds for t in taken))
    DEBT_CREATED.inc(sum(t.to_debt for t in taken))
    for t in taken:
        log.info(
            "diamonds_clawed_back",
            gift_transaction_id=t.clawback.gift_transaction_id,
            reversal_id=t.clawback.reversal_id,
            creator_id=t.creator_id,
            coins=t.clawback.coins,
            diamonds=t.diamonds,
            from_pending=t.from_pending,
            from_available=t.from_available,
            to_debt=t.to_debt,
        )
