"""The machine's own limits, measured in the same run as the scenarios: a bare grpc.aio echo (what one RPC costs
with no work behind it) and a bare asyncpg guarded debit (what one durable money movement costs in PostgreSQL)."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import grpc
import uvloop

from coinstream.testing.servers import free_port

ECHO_SERVICE = "bench.Echo"
ECHO_METHOD = f"/{ECHO_SERVICE}/Echo"
STREAM_ECHO_METHOD = f"/{ECHO_SERVICE}/StreamEcho"
ECHO_START_TIMEOUT_SECONDS = 30.0
STARTING_BALANCE = 10**12
OK = "OK"


# -- echo ------------------------------------------------------------------------------------------------------


class EchoServer:
    """A grpc.aio server in a spawned process: bytes in, the same bytes out, nothing else. `Echo` is unary;
    `StreamEcho` is bidirectional and answers each message as it arrives (the bare cost of a streamed message)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process = multiprocessing.get_context("spawn").Process(
            target=serve_echo, args=(self.port,), name="bench-echo", daemon=True
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def __enter__(self) -> EchoServer:
        self.process.start()
        deadline = time.monotonic() + ECHO_START_TIMEOUT_SECONDS
        with grpc.insecure_channel(self.address) as channel:
            echo = channel.unary_unary(ECHO_METHOD)
            while True:
                try:
                    echo(b"ping", timeout=1.0)
                    return self
                except grpc.RpcError:
                    if time.monotonic() > deadline or not self.process.is_alive():
                        raise RuntimeError("the echo server did not start") from None
                    time.sleep(0.1)

    def __exit__(self, *_exc: object) -> None:
        self.process.terminate()
        self.process.join(10)


def serve_echo(port: int) -> None:
    uvloop.run(_serve_echo(port))


async def _serve_echo(port: int) -> None:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        ECHO_SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(_echo),
            "StreamEcho": grpc.stream_stream_rpc_method_handler(_stream_echo),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def _echo(request: bytes, _context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    return request


async def _stream_echo(
    requests: AsyncIterator[bytes], _context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


# -- guarded debit ---------------------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (id integer PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0));
CREATE TABLE IF NOT EXISTS ledger (
    id bigserial PRIMARY KEY,
    account_id integer NOT NULL,
    coins_delta bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""
# The guard is in the statement: a debit that would overdraw updates no row, exactly as a money service must.
DEBIT = "UPDATE accounts SET balance = balance - 1 WHERE id = $1 AND balance >= 1"
POST = "INSERT INTO ledger (account_id, coins_delta) VALUES ($1, -1)"


async def prepare_debits(dsn: str, accounts: int) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SCHEMA)
        await conn.execute(
            "INSERT INTO accounts (id, balance) SELECT g, $2 FROM generate_series(1, $1) AS g"
            " ON CONFLICT (id) DO NOTHING",
            accounts,
            STARTING_BALANCE,
        )
        return {"accounts": await conn.fetchval("SELECT count(*) FROM accounts")}
    finally:
        await conn.close()


async def guarded_debits(
    dsn: str,
    connections: int,
    seconds: float,
    records: list[tuple[str, float, float, float, str]],
    clock: Callable[[], float],
) -> None:
    """`connections` closed loops, each a transaction of one guarded UPDATE plus one ledger INSERT, committed with
    PostgreSQL's defaults (synchronous_commit on, fsync on)."""
    pool = await asyncpg.create_pool(dsn, min_size=connections, max_size=connections)
    accounts = await pool.fetchval("SELECT count(*) FROM accounts")
    stop_at = clock() + seconds

    async def debiter(conn: asyncpg.Connection, pick: random.Random) -> None:
        while (sent := clock()) < stop_at:
            account = pick.randint(1, accounts)
            async with conn.transaction():
                debited = await conn.execute(DEBIT, account)
                if debited == "UPDATE 1":
                    await conn.execute(POST, account)
            records.append(("debit", sent, sent, clock(), OK if debited == "UPDATE 1" else "INSUFFICIENT"))

    async def one_connection(seed: int) -> None:
        async with pool.acquire() as conn:
            await debiter(conn, random.Random(seed))

    try:
        await asyncio.gather(*(one_connection(seed) for seed in range(connections)))
    finally:
        await pool.close()
