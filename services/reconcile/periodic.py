"""Reconciliation as a background worker (payouts runs it when COINSTREAM_PAYOUTS_RECONCILE_INTERVAL_SECONDS > 0):
the same checks as `coinstream reconcile`, with the outcome as metrics for alerts and each discrepancy logged."""

from __future__ import annotations

import asyncpg
import structlog
from prometheus_client import Gauge

from services.reconcile.checks import Thresholds
from services.reconcile.reconciler import ReconcileSettings, run

DISCREPANCIES = Gauge("coinstream_reconcile_discrepancies", "Discrepancies the last reconciliation found")
DEAD_LETTERED = Gauge("coinstream_reconcile_dead_lettered_gifts", "Gifts whose event waits in DEAD_LETTERS")
LAST_SUCCESS = Gauge("coinstream_reconcile_last_success_timestamp_seconds", "When a reconciliation last completed")

LOGGED_DISCREPANCIES = 20

log = structlog.get_logger()


DEFAULT_THRESHOLDS = Thresholds()


async def reconcile_once(settings: ReconcileSettings, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> None:
    """One run. Another service's database being unreachable is not this worker failing (it would turn payouts'
    worker health NOT_SERVING): it is logged, and the last-success timestamp goes stale for the alert."""
    try:
        report = await run(settings, thresholds)
    except (OSError, asyncpg.PostgresError) as error:
        log.warning("reconcile_failed", error=repr(error))
        return
    DISCREPANCIES.set(len(report.discrepancies))
    DEAD_LETTERED.set(len(report.dead_lettered_gifts))
    LAST_SUCCESS.set_to_current_time()
    # The first few in full (the rest are in `coinstream reconcile`): a broken identity can mean thousands of lines.
    for discrepancy in report.discrepancies[:LOGGED_DISCREPANCIES]:
        log.error(
            "reconcile_discrepancy", check=discrepancy.check, subject=discrepancy.subject, detail=discrepancy.detail
        )
    log.info("reconciled", discrepancies=len(report.discrepancies), dead_lettered_gifts=len(report.dead_lettered_gifts))
