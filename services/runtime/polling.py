"""Gauges that describe state outside the process (the outbox table, the JetStream consumer, the dead-letter stream,
pending withdrawals) are read by probes that one background worker runs every
COINSTREAM_METRICS_POLL_INTERVAL_SECONDS while a metrics port is open. A probe that cannot reach its source is
counted and logged, not a failing worker: the database or NATS being down has alerts of its own, and the gauges
keep their last values until a poll succeeds again."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import asyncpg
import nats.errors
import structlog
from prometheus_client import Counter

Probe = Callable[[], Awaitable[None]]

# Each probe is one query or one JetStream request: far quicker than this unless its source is in trouble.
PROBE_TIMEOUT_SECONDS = 5.0
UNREACHABLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, nats.errors.Error)

PROBE_FAILURES = Counter(
    "coinstream_metrics_probe_failures_total", "Polls of a gauge's source (database, JetStream) that failed", ["probe"]
)

log = structlog.get_logger()


async def poll_once(probes: Mapping[str, Probe]) -> None:
    for name, probe in probes.items():
        try:
            await asyncio.wait_for(probe(), PROBE_TIMEOUT_SECONDS)
        except UNREACHABLE as error:
            PROBE_FAILURES.labels(name).inc()
            log.warning("metrics_probe_failed", probe=name, error=repr(error))
