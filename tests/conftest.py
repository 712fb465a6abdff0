"""Fixtures: real stacks (PostgreSQL, nats-server, wallet, gifts, payouts on free ports) and async gRPC stubs on the
session's event loop. What tests share besides fixtures is in tests/support/.

`stack` and `clients` are the shared stack's, which every test module uses and which holds real gifts only, so every
money identity holds on it at any moment. A module that publishes GiftSents of its own (made up, malformed, replayed:
tests/support/payouts.py) is marked `pytestmark = pytest.mark.synthetic_events`, and its `stack` and `clients` are
those of a second stack, started for the first such module a process runs: the credits of those events have no gift
behind them, which the shared stack must never hold. Each stack's money identities are checked when the session ends
(on the synthetic one, a credit of a made-up event may lack its gift; nothing else)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import pytest
import pytest_asyncio

from tests.support.clients import Clients, clients_for
from tests.support.invariants import all_violations
from tests.support.stack import ALL_SERVICES, AUTH_SECRET, SERVICES, Stack, build_stack

CONTAINER_TESTS = Path(__file__).parent / "containers"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """tests/containers needs Docker: `make test-containers` runs it (COINSTREAM_CONTAINER_TESTS=1), `make test`
    never does."""
    if collection_path == CONTAINER_TESTS and os.environ.get("COINSTREAM_CONTAINER_TESTS") != "1":
        return True
    return None


SYNTHETIC_EVENTS = "synthetic_events"


@pytest.fixture(scope="session")
def shared_stack() -> Iterator[Stack]:
    yield from running_stack("coinstream-test-", synthetic_events=False)


@pytest.fixture(scope="session")
def synthetic_stack() -> Iterator[Stack]:
    """Started only when a module marked synthetic_events asks for it: at most one more stack per worker process."""
    yield from running_stack("coinstream-test-synthetic-", synthetic_events=True)


@pytest_asyncio.fixture(scope="session")
async def shared_clients(shared_stack: Stack) -> AsyncIterator[Clients]:
    async with clients_for(shared_stack) as stubs:
        yield stubs


@pytest_asyncio.fixture(scope="session")
async def synthetic_clients(synthetic_stack: Stack) -> AsyncIterator[Clients]:
    async with clients_for(synthetic_stack) as stubs:
        yield stubs


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Stack:
    """The module's stack: the synthetic one for a module marked synthetic_events, else the shared one."""
    return cast(Stack, request.getfixturevalue(f"{stack_kind(request)}_stack"))


@pytest.fixture(scope="module")
def clients(request: pytest.FixtureRequest) -> Clients:
    """Stubs of the module's stack (see stack)."""
    return cast(Clients, request.getfixturevalue(f"{stack_kind(request)}_clients"))


def stack_kind(request: pytest.FixtureRequest) -> str:
    return "synthetic" if request.node.get_closest_marker(SYNTHETIC_EVENTS) else "shared"


def running_stack(prefix: str, *, synthetic_events: bool) -> Iterator[Stack]:
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)  # the unprivileged postgres user must reach its data directory
    test_stack = build_stack(root, synthetic_events=synthetic_events)
    try:
        test_stack.start()
        yield test_stack
        assert_money_identities_hold(test_stack)
        assert_no_secret_was_logged(test_stack)
    finally:
        test_stack.stop()
        if os.environ.get("COINSTREAM_KEEP_TEST_DATA") != "1":
            shutil.rmtree(root, ignore_errors=True)


def assert_money_identities_hold(test_stack: Stack) -> None:
    """After every test of the session — concurrent, replayed and crashed ones included — the money identities
    must still hold across the three databases (tests/support/invariants.py; on the synthetic stack, the credits of
    made-up GiftSents lack their gifts, as they should)."""
    if set(SERVICES) != set(ALL_SERVICES):
        return  # a partial stack (COINSTREAM_TEST_SERVICES) cannot see the whole money path
    for name in ALL_SERVICES:
        test_stack.wait_serving(name)
    violations = asyncio.run(all_violations(test_stack))
    assert violations == [], "money identities broken after the session:\n" + "\n".join(violations)


# What the suite sends that must never reach a log line: signed tokens (a JWT starts with base64 of '{"'), payment
# tokens, payout destinations, and the signing secret itself.
SECRET_MARKERS = ("eyJ", "tok_ok", "tok_declined", "sandbox:ok", "sandbox:fail", "sandbox:hold", AUTH_SECRET)


def assert_no_secret_was_logged(test_stack: Stack) -> None:
    """Every line every service logged during the whole session, searched for the secrets the tests sent and for
    the stack's NATS passwords (in nats-server's log too)."""
    nats_passwords = tuple(test_stack.nats.credentials.passwords.values())
    service_logs = sorted(test_stack.root.glob("*.log"))
    leaks = [
        f"{log.name}: {line.strip()[:300]}"
        for log in [*service_logs, test_stack.nats.log_path]
        for line in log.read_text(errors="replace").splitlines()
        if any(marker in line for marker in (*SECRET_MARKERS, *nats_passwords))
    ]
    assert leaks == [], "secrets in the service logs:\n" + "\n".join(leaks[:20])
