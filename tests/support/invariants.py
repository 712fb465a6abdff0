"""The money identities after concurrent and faulty runs: the checks of `coinstream reconcile`
(services/reconcile/checks.py), run once settlement has caught up, each discrepancy as one line. On the synthetic
stack (tests/conftest.py) the credits of the GiftSents the tests made up have no gift, by design: only those are
expected."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from services.reconcile.checks import Discrepancy, Thresholds, wallet_funding, wallet_ledger
from services.reconcile.reconciler import dead_lettered_gifts, reconcile
from tests.support.stack import Stack, synthetic_gift_ids

CREDIT_WITHOUT_GIFT = "credit_without_gift"
# Settlement has caught up before the checks (wait_until_settled), so no completed gift may lack its credit.
SETTLED = Thresholds(settlement_grace_seconds=0.0)


def describe(discrepancy: Discrepancy) -> str:
    return f"{discrepancy.check} {discrepancy.subject}: {discrepancy.detail}"


async def wallet_violations(conn: asyncpg.Connection) -> list[str]:
    return [describe(d) for d in [*await wallet_ledger(conn), *await wallet_funding(conn)]]


async def wait_until_settled(stack: Stack, timeout_seconds: float = 30.0) -> None:
    """Waits until every completed gift is in the payouts inbox, or its event in DEAD_LETTERS."""
    gifts = await asyncpg.connect(stack.database_url("gifts"))
    payouts = await asyncpg.connect(stack.database_url("payouts"))
    try:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            dead_lettered = (
                await dead_lettered_gifts(stack.nats.url, stack.nats.credentials.operator, stack.nats_tls())
                or frozenset()
            )
            completed = [
                r["gift_transaction_id"]
                for r in await gifts.fetch(
                    "SELECT gift_transaction_id FROM gift_transactions WHERE status = 'completed'"
                )
                if r["gift_transaction_id"] not in dead_lettered
            ]
            settled = await payouts.fetchval(
                "SELECT count(*) FROM inbox WHERE gift_transaction_id = ANY($1::text[])", completed
            )
            if settled == len(completed):
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"settlement did not catch up: {settled} of {len(completed)} gifts settled")
    finally:
        await gifts.close()
        await payouts.close()


async def all_violations(stack: Stack) -> list[str]:
    await wait_until_settled(stack)
    urls = {name: stack.database_url(name) for name in ("wallet", "gifts", "payouts")}
    dead_lettered = await dead_lettered_gifts(stack.nats.url, stack.nats.credentials.operator, stack.nats_tls())
    report = await reconcile(urls, SETTLED, dead_lettered)
    made_up = synthetic_gift_ids(stack)
    return [
        describe(d)
        for d in report.discrepancies
        if not (d.check == CREDIT_WITHOUT_GIFT and d.subject in made_up)  # no gift behind them is their point
    ]
