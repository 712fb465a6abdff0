"""Reconciliation as a background worker (payouts runs it when COINSTREAM_PAYOUTS_RECONCILE_INTERVAL_SECONDS > 0):
the same checks as `coinstream reconcile`, with the outcome as metrics for alerts and each discrepancy logged."""

from __future__ import annotations

import asyncio

import structlog
from prometheus_client import Gauge

from services.reconcile.checks import Thresholds
from services.reconcile.reconciler import ReconcileSettings, run

DISCREPANCIES = Gauge("coinstream_reconcile_discrepancies", "Discrepancies the last reconciliation found")
DEAD_LETTERED = Gauge("coinstream_reconcile_dead_lettered_gifts", "Gifts whose event waits in DEAD_LETTERS")
LAST_SUCCESS = Gauge("coinstream_reconcile_last_success_timestamp_seconds", "When a reconciliation last completed")

log = structlog.get_logger()


DEFAULT_THRESHOLDS = Thresholds()


async def reconcile_forever(interval_seconds: float, thresholds: Thresholds = DEFAULT_THRESHOLDS) -> None:
    settings = ReconcileSettings()
    while True:
        report = await run(settings, thresholds)
        DISCREPANCIES.set(len(report.discrepancies))
        DEAD_LETTERED.set(len(report.dead_lettered_gifts))
        LAST_SUCCESS.set_to_current_time()
        for discrepancy in report.discrepancies:
            log.error(
                "reconcile_discrepancy", check=discrepancy.check, subject=discrepancy.subject, detail=discrepancy.detail
            )
        log.info(
            "reconciled", discrepancies=len(report.discrepancies), dead_lettered_gifts=len(report.dead_lettered_gifts)
        )
        await asyncio.sleep(interval_seconds)
