"""The system under test: real PostgreSQL, real nats-server and the three services as real processes on free
loopback ports (devstack/stack.py). Tests may restart a service with extra settings (e.g. a crash point) or kill it
with SIGKILL. A stack either takes real gifts only (the shared one) or also GiftSents the tests make up themselves
(the synthetic one, tests/conftest.py), which records the gifts they name."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from coinstream.testing.servers import NatsCluster, NatsServer, PostgresServer, free_port
from coinstream.testing.stack import ALL_SERVICES, READY_TIMEOUT_SECONDS, REPO_ROOT, ServiceProcess, Stack, tail
from services.runtime import messaging
from services.runtime.messaging import server_urls
from services.runtime.rate_limits import DEFAULT_RATE_LIMITS

__all__ = [
    "ALL_SERVICES",
    "AUDIT_CONSUMER",
    "AUTH_SECRET",
    "READY_TIMEOUT_SECONDS",
    "REPO_ROOT",
    "SERVICES",
    "ServiceProcess",
    "Stack",
    "build_stack",
    "declare_audit_consumer",
    "operator_nats",
    "record_synthetic_gifts",
    "synthetic_gift_ids",
    "tail",
]

# While developing one service, COINSTREAM_TEST_SERVICES=wallet,gifts starts only those (tests of the others fail).
SERVICES = tuple(s for s in os.environ.get("COINSTREAM_TEST_SERVICES", ",".join(ALL_SERVICES)).split(",") if s)
AUTH_SECRET = "test-secret-at-least-32-bytes-long-0123456789"
SUITE_SETTINGS = {
    "COINSTREAM_AUTH_SECRET": AUTH_SECRET,
    "COINSTREAM_LOG_LEVEL": "info",
    # Fast background loops so tests see recovery and settlement quickly.
    "COINSTREAM_GIFTS_RECOVERY_INTERVAL_SECONDS": "0.5",
    "COINSTREAM_GIFTS_RECOVERY_AGE_SECONDS": "1",
    "COINSTREAM_WALLET_RECOVERY_INTERVAL_SECONDS": "0.5",
    "COINSTREAM_WALLET_RECOVERY_AGE_SECONDS": "1",
    "COINSTREAM_PAYOUTS_WORKER_INTERVAL_SECONDS": "0.2",
    "COINSTREAM_PAYOUTS_SANDBOX_SETTLE_SECONDS": "0.5",
    # Matches as short as a second (the contract's minimum is 30 s), finished within 0.2 s of their end.
    "COINSTREAM_GIFTS_MATCH_MIN_DURATION_SECONDS": "1",
    "COINSTREAM_GIFTS_MATCH_FINISH_INTERVAL_SECONDS": "0.2",
    # The gauges read from the database and JetStream, fresh within a second of a change.
    "COINSTREAM_METRICS_POLL_INTERVAL_SECONDS": "1",
    # Three services, PostgreSQL and NATS share two cores with pytest: a call may wait for CPU far longer than in
    # production. Overload shedding is a property of its own (tests/unit/runtime/test_batching.py, make bench), not a
    # random outcome of every functional test.
    "COINSTREAM_ADMISSION_QUEUE_BUDGET_SECONDS": "30",
    # Functional tests send many calls as one user within seconds; per-caller limits have tests of their own
    # (tests/integration/test_caller_limits.py) on processes started with tight ones.
    "COINSTREAM_RATE_LIMITS": json.dumps(
        {rpc: {"per_second": 1_000_000, "burst": 1_000_000} for rpc in DEFAULT_RATE_LIMITS}
    ),
}
AUDIT_CONSUMER = "test-audit"


@dataclass
class SuiteStack(Stack):
    """The suite's stack: NATS gets an audit consumer before any service publishes."""

    # The gifts of the GiftSents the tests published themselves (tests/support/payouts.py), credited with no gift
    # behind them; None on a stack that takes real gifts only.
    synthetic_gift_ids: set[str] | None = None

    def start_servers(self) -> None:
        super().start_servers()
        asyncio.run(declare_audit_consumer(self.nats))


async def operator_nats(server: NatsServer | NatsCluster) -> NatsClient:
    """A client of the stack's NATS with the operator's rights (services/runtime/nats_permissions.py): what the
    tests publish and read directly. Broad, but it cannot delete or purge a stream either. The caller closes it."""
    return await nats.connect(servers=server_urls(server.url), **server.credentials.operator.connect_options())


async def declare_audit_consumer(server: NatsServer | NatsCluster) -> None:
    """With interest retention, JetStream deletes a message once every consumer acked it. This durable consumer
    never acks, so tests can read back every event ever published (as an audit/archive consumer would)."""
    nc = await operator_nats(server)
    try:
        js = nc.jetstream()
        await messaging.ensure_stream(nc, messaging.GIFTS_STREAM_CONFIG)
        await js.add_consumer(
            messaging.GIFTS_STREAM,
            ConsumerConfig(
                durable_name=AUDIT_CONSUMER, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL
            ),
        )
    finally:
        await nc.close()


def synthetic_gift_ids(stack: Stack) -> frozenset[str]:
    """The gifts of the made-up GiftSents this stack was given (none on a stack of real gifts only)."""
    return frozenset((stack.synthetic_gift_ids if isinstance(stack, SuiteStack) else None) or ())


def record_synthetic_gifts(stack: Stack, gift_ids: Iterable[str]) -> None:
    """Called before made-up GiftSents are published. A stack of real gifts refuses them: every money identity must
    hold on it at any moment (tests check them mid-session), and a credit no gift paid for breaks one."""
    recorded = stack.synthetic_gift_ids if isinstance(stack, SuiteStack) else None
    if recorded is None:
        raise AssertionError(
            "made-up GiftSents go to the synthetic stack: mark the test module with"
            " `pytestmark = pytest.mark.synthetic_events` (tests/conftest.py)"
        )
    recorded.update(gift_ids)


def build_stack(root: Path, *, synthetic_events: bool = False) -> Stack:
    """synthetic_events: the stack takes GiftSents the tests make up (and records their gifts)."""
    root.mkdir(parents=True, exist_ok=True)
    return SuiteStack(
        root=root,
        # Tests trade durability for speed (fsync off); the money identities do not depend on it.
        postgres=PostgresServer(root / "postgres" / "data", free_port(), durable=False),
        nats=NatsServer(root / "nats" / "data", free_port()),
        base_env=dict(SUITE_SETTINGS),
        service_names=SERVICES,
        # Scraped by tests/integration/test_observability.py: the dashboards and alerts name only what is exported.
        metrics=True,
        synthetic_gift_ids=set() if synthetic_events else None,
    )
