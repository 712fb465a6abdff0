"""Fixtures: one real stack per test session (PostgreSQL, nats-server, wallet, gifts, payouts on free ports),
async gRPC stubs on the session's event loop, and token helpers. Tests isolate themselves with unique ids."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from coinstream.gifts.v1 import gifts_pb2_grpc
from coinstream.payouts.v1 import payouts_pb2_grpc
from coinstream.wallet.v1 import wallet_pb2_grpc

from services.runtime.auth import mint_token
from services.runtime.idempotency import caller_scoped
from tests.invariants import all_violations
from tests.stack import ALL_SERVICES, AUTH_SECRET, SERVICES, Stack, build_stack

CONTAINER_TESTS = Path(__file__).parent / "containers"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """tests/containers needs Docker: `make test-containers` runs it (COINSTREAM_CONTAINER_TESTS=1), `make test`
    never does."""
    if collection_path == CONTAINER_TESTS and os.environ.get("COINSTREAM_CONTAINER_TESTS") != "1":
        return True
    return None


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    root = Path(tempfile.mkdtemp(prefix="coinstream-test-"))
    root.chmod(0o755)  # the unprivileged postgres user must reach its data directory
    test_stack = build_stack(root)
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
    must still hold across the three databases (tests/invariants.py)."""
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


@dataclass
class Clients:
    wallet: wallet_pb2_grpc.WalletServiceStub
    gifts: gifts_pb2_grpc.GiftServiceStub
    payouts: payouts_pb2_grpc.PayoutServiceStub


@pytest_asyncio.fixture(scope="session")
async def clients(stack: Stack) -> AsyncIterator[Clients]:
    async with clients_for(stack) as stubs:
        yield stubs


@asynccontextmanager
async def clients_for(stack: Stack) -> AsyncIterator[Clients]:
    channels = {name: stack.aio_channel(stack.address(name)) for name in ("wallet", "gifts", "payouts")}
    try:
        yield Clients(
            wallet=wallet_pb2_grpc.WalletServiceStub(channels["wallet"]),
            gifts=gifts_pb2_grpc.GiftServiceStub(channels["gifts"]),
            payouts=payouts_pb2_grpc.PayoutServiceStub(channels["payouts"]),
        )
    finally:
        for channel in channels.values():
            await channel.close()


def auth(subject: str, *roles: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying a freshly minted token."""
    return (("authorization", f"Bearer {mint_token(AUTH_SECRET, subject, list(roles or ('user',)))}"),)


SERVICE_SUBJECT = "test-backend"
SERVICE = auth(SERVICE_SUBJECT, "service")
ADMIN = auth("test-admin", "admin")


def stored_key(request_id: str, subject: str = SERVICE_SUBJECT) -> str:
    """The request_id as the services store it: in its caller's namespace (request_ids are unique per caller)."""
    return caller_scoped(subject, request_id)


def new_id(prefix: str = "id") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
