"""Seeded chaos: a random schedule of faults (a service, NATS or PostgreSQL killed with -9 and restarted after a
while) over a random workload (gifts, purchases, withdrawals, purchase reversals), every call retried with its
request_id until it gets a final answer. At the end everything runs again, settlement catches up, and the money
identities (`coinstream reconcile`'s checks) must hold. The seed is printed; the same seed replays the same schedule
of faults and the same mix of operations (their interleaving with the faults, and which purchase a reversal picks,
still depend on timing).

    python -m tests.support.chaos --seconds 300 [--seed N]     # `make soak`: a fresh stack of its own
    tests/integration/test_chaos.py                             # a short run on the suite's stack, in `make test`"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from coinstream.gifts.v1 import gifts_pb2
from coinstream.payouts.v1 import payouts_pb2
from coinstream.wallet.v1 import wallet_pb2

from tests.support.clients import ADMIN, SERVICE, Clients, clients_for, new_id
from tests.support.invariants import all_violations, wait_until_settled
from tests.support.stack import Stack, build_stack

FAULTS = ("wallet", "gifts", "payouts", "nats", "postgres")
# Answers that may change on a retry: the call is tried again with the same request_id.
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
}
CALL_TIMEOUT_SECONDS = 3.0
GIVE_UP_AFTER_SECONDS = 120.0  # a call still failing this long after the faults is a finding, not a retry


@dataclass(frozen=True)
class Fault:
    at_seconds: float
    target: str  # a service, "nats" or "postgres"
    down_seconds: float


def schedule(seed: int, seconds: float) -> list[Fault]:
    """The faults of a run: one every 2–6 s, each down for 0.3–2.5 s, none overlapping."""
    rng = random.Random(f"faults-{seed}")
    faults: list[Fault] = []
    at = rng.uniform(1.0, 3.0)
    while at < seconds:
        fault = Fault(round(at, 2), rng.choice(FAULTS), round(rng.uniform(0.3, 2.5), 2))
        faults.append(fault)
        at += fault.down_seconds + rng.uniform(2.0, 6.0)
    return faults


@dataclass
class Outcomes:
    by_kind: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    gave_up: list[str] = field(default_factory=list)


class Workload:
    """Fans, creators with verified payout profiles and live streams; operations drawn from the seed."""

    def __init__(self, clients: Clients, seed: int) -> None:
        self.clients = clients
        self.rng = random.Random(f"workload-{seed}")
        self.outcomes = Outcomes()
        self.fans: list[str] = []
        self.creators: list[str] = []
        self.streams: list[str] = []
        self.purchases: list[str] = []

    async def prepare(self, fans: int = 12, creators: int = 3) -> None:
        for _ in range(fans):
            fan = await self._account("fan")
            self.fans.append(fan)
            await self._buy(fan)
        for _ in range(creators):
            creator = await self._account("creator")
            await self.clients.payouts.UpdateCreatorProfile(
                payouts_pb2.UpdateCreatorProfileRequest(
                    request_id=new_id("profile"),
                    creator_id=creator,
                    kyc_verified=True,
                    payout_destination=f"sandbox:ok-{creator}",
                ),
                metadata=SERVICE,
            )
            live = await self.clients.gifts.StartLiveStream(
                gifts_pb2.StartLiveStreamRequest(request_id=new_id("live"), creator_id=creator, title="chaos"),
                metadata=SERVICE,
            )
            self.creators.append(creator)
            self.streams.append(live.stream.stream_id)

    async def run(self, seconds: float, workers: int = 8) -> None:
        stop_at = time.monotonic() + seconds
        operations = [self._next_operation() for _ in range(100_000)]  # drawn up front: the seed decides them
        cursor = iter(operations)

        async def worker() -> None:
            for operation in cursor:
                if time.monotonic() >= stop_at:
                    return
                await operation()

        await asyncio.gather(*(worker() for _ in range(workers)))

    def _next_operation(self) -> Callable[[], Awaitable[None]]:
        roll = self.rng.random()
        if roll < 0.70:
            fan, stream = self.rng.choice(self.fans), self.rng.choice(self.streams)
            gift, quantity = self.rng.choice((("rose", 1), ("rose", 5), ("doughnut", 1))), self.rng.randint(1, 3)
            return lambda: self._gift(fan, stream, gift[0], gift[1] * quantity)
        if roll < 0.85:
            fan = self.rng.choice(self.fans)
            return lambda: self._buy(fan)
        if roll < 0.95:
            creator = self.rng.choice(self.creators)
            return lambda: self._withdraw(creator)
        return self._reverse_a_purchase

    async def _account(self, prefix: str) -> str:
        account_id = new_id(prefix)
        request = wallet_pb2.UpsertAccountRequest(
            request_id=new_id("req"), account_id=account_id, adult_verified=True, country_code="US"
        )
        await self._until_final("account", lambda: self.clients.wallet.UpsertAccount(request, metadata=SERVICE))
        return account_id

    async def _buy(self, fan: str) -> None:
        request = wallet_pb2.PurchaseCoinsRequest(
            request_id=new_id("buy"), account_id=fan, package_id="coins_330", payment_token="tok_ok_chaos"
        )
        reply = await self._until_final(
            "purchase", lambda: self.clients.wallet.PurchaseCoins(request, metadata=SERVICE)
        )
        if isinstance(reply, wallet_pb2.PurchaseCoinsResponse):
            self.purchases.append(reply.purchase.purchase_id)

    async def _gift(self, fan: str, stream: str, gift_id: str, quantity: int) -> None:
        request = gifts_pb2.SendGiftRequest(
            request_id=new_id("gift"), sender_id=fan, stream_id=stream, gift_id=gift_id, quantity=quantity
        )
        await self._until_final("gift", lambda: self.clients.gifts.SendGift(request, metadata=SERVICE))

    async def _withdraw(self, creator: str) -> None:
        request = payouts_pb2.RequestWithdrawalRequest(request_id=new_id("wd"), creator_id=creator, diamonds=2000)
        await self._until_final("withdrawal", lambda: self.clients.payouts.RequestWithdrawal(request, metadata=SERVICE))

    async def _reverse_a_purchase(self) -> None:
        if not self.purchases:
            return
        purchase_id = self.purchases.pop(self.rng.randrange(len(self.purchases)))
        request = wallet_pb2.ReversePurchaseRequest(request_id=new_id("rev"), purchase_id=purchase_id, reason="chaos")
        await self._until_final("reversal", lambda: self.clients.wallet.ReversePurchase(request, metadata=ADMIN))

    async def _until_final(self, kind: str, call: Callable[[], Awaitable[object]]) -> object | None:
        """Retries the same request (same request_id) until it succeeds or is refused for good."""
        give_up_at = time.monotonic() + GIVE_UP_AFTER_SECONDS
        while True:
            try:
                reply = await asyncio.wait_for(call(), CALL_TIMEOUT_SECONDS + 1)
            except (grpc.aio.AioRpcError, TimeoutError) as error:
                code = error.code() if isinstance(error, grpc.aio.AioRpcError) else grpc.StatusCode.DEADLINE_EXCEEDED
                if code not in RETRYABLE:
                    self.outcomes.by_kind[f"{kind} refused {code.name}"] += 1
                    return None
                if time.monotonic() > give_up_at:
                    self.outcomes.gave_up.append(f"{kind}: {code.name}")
                    return None
                self.outcomes.retries += 1
                await asyncio.sleep(0.2)
                continue
            self.outcomes.by_kind[f"{kind} ok"] += 1
            return reply


async def inject(stack: Stack, faults: list[Fault], log: Callable[[str], None]) -> None:
    started = time.monotonic()
    for fault in faults:
        await asyncio.sleep(max(0.0, started + fault.at_seconds - time.monotonic()))
        log(f"t={fault.at_seconds:6.2f}s kill -9 {fault.target}, back after {fault.down_seconds} s")
        await asyncio.to_thread(kill, stack, fault.target)
        await asyncio.sleep(fault.down_seconds)
        await asyncio.to_thread(restart, stack, fault.target)


def kill(stack: Stack, target: str) -> None:
    if target == "nats":
        stack.nats.kill()
    elif target == "postgres":
        stack.postgres.kill()
    else:
        stack.kill_service(target)


def restart(stack: Stack, target: str) -> None:
    if target == "nats":
        stack.nats.start()
    elif target == "postgres":
        stack.postgres.start()
    else:
        stack.start_service(target)


async def run_chaos(stack: Stack, clients: Clients, seed: int, seconds: float, log: Callable[[str], None]) -> list[str]:
    """One chaos run; returns the findings (calls given up on, money identity violations): empty when all held."""
    faults = schedule(seed, seconds)
    log(f"chaos seed {seed}: {len(faults)} faults over {seconds:g} s")
    workload = Workload(clients, seed)
    await workload.prepare()
    await asyncio.gather(workload.run(seconds), inject(stack, faults, log))
    for service in ("wallet", "gifts", "payouts"):
        await asyncio.to_thread(stack.wait_serving, service)
    await wait_until_settled(stack, timeout_seconds=120)
    log(f"outcomes: {dict(workload.outcomes.by_kind)}; retries {workload.outcomes.retries}")
    return [f"gave up: {entry}" for entry in workload.outcomes.gave_up] + await all_violations(stack)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="how long the faults and the load go on")
    parser.add_argument("--seed", type=int, default=None, help="replay a run (default: a new random seed)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1_000_000)
    root = Path(tempfile.mkdtemp(prefix="coinstream-soak-"))
    root.chmod(0o755)
    stack = build_stack(root)

    def say(line: str) -> None:
        print(f"soak │ {line}", flush=True)

    try:
        stack.start()
        findings = asyncio.run(_soak(stack, seed, args.seconds, say))
    finally:
        stack.stop()
    if findings:
        say(f"FAILED (seed {seed}; data kept in {root}):")
        for finding in findings:
            print(f"  {finding}")
        return 1
    shutil.rmtree(root, ignore_errors=True)
    say(f"passed: seed {seed}, {args.seconds:g} s, every identity holds")
    return 0


async def _soak(stack: Stack, seed: int, seconds: float, say: Callable[[str], None]) -> list[str]:
    async with clients_for(stack) as clients:
        return await run_chaos(stack, clients, seed, seconds, say)


if __name__ == "__main__":
    sys.exit(main())
