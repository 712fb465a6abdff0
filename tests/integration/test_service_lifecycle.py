"""Start-up and shutdown of a service process: NOT_SERVING (and UNAVAILABLE to RPCs) until its database answers,
SERVING once it does, liveness SERVING throughout, and a clean exit on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import grpc
import pytest
from coinstream.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coinstream.testing.servers import free_port
from tests.support.clients import SERVICE, auth
from tests.support.errors import error_reason
from tests.support.stack import REPO_ROOT, Stack

pytestmark = pytest.mark.slow

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health(address: str, service: str = "") -> int | None:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
            return reply.status
        except grpc.RpcError:
            return None


def wait_for_health(address: str, expected: int, timeout_seconds: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if health(address) == expected:
            return
        time.sleep(0.1)
    raise AssertionError(f"{address} never reported {expected}")


def start_wallet(
    stack: Stack, tmp_path: Path, database_url: str, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = stack.service_env("wallet")
    env.update(
        {
            "COINSTREAM_WALLET_PORT": str(port),
            "COINSTREAM_WALLET_DATABASE_URL": database_url,
            "COINSTREAM_DB_CONNECT_TIMEOUT_SECONDS": "120",
            **(extra_env or {}),
        }
    )
    log = open(tmp_path / "wallet.log", "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "services.wallet"], cwd=REPO_ROOT, env=env, stdout=log, stderr=log
    )
    return process, f"127.0.0.1:{port}"


def test_not_serving_until_the_database_answers_then_clean_shutdown(stack: Stack, tmp_path: Path) -> None:
    # A database that isn't there yet: the service must wait for it, saying NOT_SERVING meanwhile.
    missing = f"postgresql://postgres@127.0.0.1:{free_port()}/coinstream_wallet"
    process, address = start_wallet(stack, tmp_path, missing)
    try:
        wait_for_health(address, NOT_SERVING)
        assert health(address, "coinstream.liveness") == SERVING
        with grpc.insecure_channel(address) as channel:
            with pytest.raises(grpc.RpcError) as caught:
                wallet_pb2_grpc.WalletServiceStub(channel).ListCoinPackages(
                    wallet_pb2.ListCoinPackagesRequest(), metadata=auth("alice"), timeout=2
                )
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_serving_once_ready_and_exits_cleanly_on_sigterm(stack: Stack, tmp_path: Path) -> None:
    process, address = start_wallet(stack, tmp_path, stack.database_url("wallet"))
    try:
        wait_for_health(address, SERVING)
        with grpc.insecure_channel(address) as channel:
            packages = wallet_pb2_grpc.WalletServiceStub(channel).ListCoinPackages(
                wallet_pb2.ListCoinPackagesRequest(), metadata=auth("alice"), timeout=5
            )
        assert len(packages.packages) == 7
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert "shutdown_complete" in (tmp_path / "wallet.log").read_text()


async def test_overload_is_shed_with_rate_limited(stack: Stack, tmp_path: Path) -> None:
    """Beyond max_in_flight_unary_rpcs calls are refused at once with the contract's RATE_LIMITED: with a limit of 1,
    an upsert held in flight behind a row lock the test takes leaves no room for another call."""
    process, address = start_wallet(
        stack, tmp_path, stack.database_url("wallet"), {"COINSTREAM_MAX_IN_FLIGHT_UNARY_RPCS": "1"}
    )
    account = wallet_pb2.UpsertAccountRequest(
        request_id=f"lifecycle-{time.time_ns()}", account_id=f"held-{time.time_ns()}", country_code="US"
    )
    try:
        wait_for_health(address, SERVING)
        async with grpc.aio.insecure_channel(address) as channel:
            wallet = wallet_pb2_grpc.WalletServiceStub(channel)
            await wallet.UpsertAccount(account, metadata=SERVICE)
            conn = await asyncpg.connect(stack.database_url("wallet"))
            try:
                async with conn.transaction():
                    await conn.execute("SELECT 1 FROM accounts WHERE account_id = $1 FOR UPDATE", account.account_id)
                    account.request_id += "-again"
                    held = asyncio.ensure_future(wallet.UpsertAccount(account, metadata=SERVICE, timeout=30))
                    await _until_waiting_for_a_lock(conn)
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await wallet.ListCoinPackages(wallet_pb2.ListCoinPackagesRequest(), metadata=auth("alice"))
                    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert error_reason(caught.value) == "RATE_LIMITED"
            finally:
                await conn.close()
            await held  # the lock gone, the call held in flight completes
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)


async def _until_waiting_for_a_lock(conn: asyncpg.Connection, timeout_seconds: float = 20.0) -> None:
    """Until a session waits on a lock this connection holds (the held upsert, not some other service's wait)."""
    deadline = time.monotonic() + timeout_seconds
    blocked = "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))"
    while not await conn.fetchval(blocked, conn.get_server_pid()):
        assert time.monotonic() < deadline, "the upsert never waited for the row lock"
        await asyncio.sleep(0.05)


def test_a_limit_of_zero_in_flight_calls_is_refused_at_start(stack: Stack, tmp_path: Path) -> None:
    """0 would shed every call: the process refuses it at start, naming the setting, rather than serve nothing."""
    process, _ = start_wallet(
        stack, tmp_path, stack.database_url("wallet"), {"COINSTREAM_MAX_IN_FLIGHT_UNARY_RPCS": "0"}
    )
    assert process.wait(30) != 0
    assert "max_in_flight_unary_rpcs" in (tmp_path / "wallet.log").read_text()
