"""NATS and PostgreSQL killed with kill -9 in the middle of a gift load, and restarted: clients retrying with the
same request_ids get every gift through exactly once, calls fail fast while a dependency is down (no hang past
their deadline), the services recover by themselves, and every gift is settled — `coinstream reconcile`'s checks
find nothing (the session's end checks them again)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest

from tests.support.clients import Clients
from tests.support.factories import balance, make_account
from tests.support.gifts import go_live
from tests.support.invariants import all_violations
from tests.support.load import CALL_TIMEOUT_SECONDS, GiftLoad
from tests.support.stack import Stack

pytestmark = pytest.mark.slow

FANS = 8
LOAD_SECONDS = 8.0
OUTAGE_SECONDS = 2.5
# A refused call comes back well within its deadline; one the server never answered ends at the deadline.
FAIL_FAST_MARGIN_SECONDS = 1.0


async def run_load_with_outage(
    stack: Stack, clients: Clients, kill: Callable[[], None], restart: Callable[[], None]
) -> GiftLoad:
    stream = await go_live(clients)
    fans = [await make_account(clients, package_id="coins_1321") for _ in range(FANS)]
    funded = {fan: await balance(clients, fan) for fan in fans}  # the package and its promotional bonus
    load = GiftLoad(clients, stream.stream_id, fans)
    running = asyncio.create_task(load.run(LOAD_SECONDS))
    await asyncio.sleep(1.5)
    await asyncio.to_thread(kill)
    await asyncio.sleep(OUTAGE_SECONDS)
    await asyncio.to_thread(restart)
    await running
    for fan in fans:
        spent = sum(reply.gift.coins for reply in load.sent if reply.gift.sender_id == fan)
        assert await balance(clients, fan) == funded[fan] - spent  # each gift charged exactly once
    assert len({reply.gift.gift_transaction_id for reply in load.sent}) == len(load.sent)
    return load


async def test_nats_killed_and_restarted_mid_traffic_loses_and_doubles_nothing(stack: Stack, clients: Clients) -> None:
    load = await run_load_with_outage(stack, clients, stack.nats.kill, stack.nats.start)
    # Gifts do not need NATS (events wait in the outbox): nobody noticed the outage.
    assert load.failures == []
    assert await all_violations(stack) == []


async def test_postgres_killed_and_restarted_mid_traffic_fails_fast_then_recovers(
    stack: Stack, clients: Clients
) -> None:
    load = await run_load_with_outage(stack, clients, stack.postgres.kill, stack.postgres.start)
    assert load.failures, "no call noticed PostgreSQL going away"
    codes = {code for code, _ in load.failures}
    assert codes <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}, codes
    slowest = max(seconds for _, seconds in load.failures)
    assert slowest <= CALL_TIMEOUT_SECONDS + FAIL_FAST_MARGIN_SECONDS
    for service in ("wallet", "gifts", "payouts"):
        await asyncio.to_thread(stack.wait_serving, service)
    assert await all_violations(stack) == []
