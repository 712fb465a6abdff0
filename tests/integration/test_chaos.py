"""A short seeded chaos run on the suite's stack (tests/support/chaos.py; `make soak` runs a long one): services, NATS
and PostgreSQL killed with -9 and restarted under gifts, purchases, withdrawals and reversals; afterwards every call
has its final answer and every money identity holds. COINSTREAM_CHAOS_SEED replays another schedule."""

from __future__ import annotations

import os

import pytest

from tests.support.chaos import run_chaos
from tests.support.clients import Clients
from tests.support.stack import Stack

pytestmark = pytest.mark.slow

# A fixed schedule in `make test`, so that the suite is repeatable; `make soak` draws a new one each run.
DEFAULT_SEED = 20261129
SECONDS = 20.0


async def test_seeded_chaos_leaves_every_coin_and_diamond_accounted_for(stack: Stack, clients: Clients) -> None:
    seed = int(os.environ.get("COINSTREAM_CHAOS_SEED", DEFAULT_SEED))
    findings = await run_chaos(stack, clients, seed, SECONDS, print)
    assert findings == [], f"chaos seed {seed}:\n" + "\n".join(findings)
