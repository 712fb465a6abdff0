"""The image and deploy/compose.yaml + compose.production.yaml, run for real and used through the published ports
over TLS, as another team's backend would: the money path, a replay, a service process killed under load and
restarted by its restart policy with nothing lost, a graceful `docker compose stop`, and data kept across `down` and
`up`. The tests run in this order on one stack (tests/containers/conftest.py)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import tomllib
import uuid

import grpc
import pytest
from coinstream.gifts.v1 import gifts_pb2
from coinstream.payouts.v1 import payouts_pb2
from coinstream.wallet.v1 import wallet_pb2, wallet_pb2_grpc

from tests.containers.conftest import FIGURES, Clients
from tests.containers.harness import SERVICES, BuiltImage, ComposeStack, docker
from tests.support.stack import REPO_ROOT

CALL_SECONDS = 30.0
# The image may add this much to its base image (python:3.11-slim): the locked runtime dependencies and the code.
IMAGE_ADDED_BUDGET_BYTES = 150 * 1024 * 1024
# compose.yaml's stop_grace_period: the services drain for 10 s after SIGTERM; Docker kills them at 20 s.
STOP_GRACE_SECONDS = 20.0
LOAD_SECONDS = 6.0
FANS_UNDER_LOAD = 8


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class Backend:
    """Calls as a trusted backend (service role) or an admin, with deadlines and waiting for a restarting service."""

    def __init__(self, stack: ComposeStack, clients: Clients) -> None:
        self.clients = clients
        self.service = stack.token("container-tests", "service")
        self.admin = stack.token("container-tests-admin", "admin")

    async def account(self, package_id: str | None = None) -> str:
        account_id = new_id("acct")
        await self.clients.wallet.UpsertAccount(
            wallet_pb2.UpsertAccountRequest(
                request_id=new_id("req"), account_id=account_id, adult_verified=True, country_code="US"
            ),
            metadata=self.service,
            timeout=CALL_SECONDS,
        )
        if package_id:
            await self.clients.wallet.PurchaseCoins(
                wallet_pb2.PurchaseCoinsRequest(
                    request_id=new_id("req"), account_id=account_id, package_id=package_id, payment_token="tok_ok"
                ),
                metadata=self.service,
                timeout=CALL_SECONDS,
            )
        return account_id

    async def coins(self, account_id: str) -> int:
        reply = await self.clients.wallet.GetBalance(
            wallet_pb2.GetBalanceRequest(account_id=account_id), metadata=self.service, timeout=CALL_SECONDS
        )
        return reply.balance.coins

    async def go_live(self, creator_id: str) -> str:
        reply = await self.clients.gifts.StartLiveStream(
            gifts_pb2.StartLiveStreamRequest(request_id=new_id("req"), creator_id=creator_id, title="In a container"),
            metadata=self.service,
            timeout=CALL_SECONDS,
        )
        return reply.stream.stream_id

    async def send(self, request: gifts_pb2.SendGiftRequest) -> gifts_pb2.SendGiftResponse:
        return await self.clients.gifts.SendGift(
            request, metadata=self.service, timeout=CALL_SECONDS, wait_for_ready=True
        )

    async def earnings(self, creator_id: str) -> payouts_pb2.Earnings:
        reply = await self.clients.payouts.GetEarnings(
            payouts_pb2.GetEarningsRequest(creator_id=creator_id), metadata=self.service, timeout=CALL_SECONDS
        )
        return reply.earnings

    async def lifetime_diamonds(self, creator_id: str, at_least: int, seconds: float = 60.0) -> int:
        deadline = time.monotonic() + seconds
        while (lifetime := (await self.earnings(creator_id)).lifetime_diamonds) < at_least:
            assert time.monotonic() < deadline, f"{creator_id}: {lifetime} of {at_least} diamonds settled"
            await asyncio.sleep(0.5)
        return lifetime


def gift(sender_id: str, stream_id: str, gift_id: str = "rose", quantity: int = 1) -> gifts_pb2.SendGiftRequest:
    return gifts_pb2.SendGiftRequest(
        request_id=new_id("req"), sender_id=sender_id, stream_id=stream_id, gift_id=gift_id, quantity=quantity
    )


@pytest.fixture(scope="module")
def backend(compose_stack: ComposeStack, clients: Clients) -> Backend:
    return Backend(compose_stack, clients)


# ---------------------------------------------------------------- the image


def test_the_image_is_labelled_checks_its_health_and_stays_within_its_size_budget(image: BuiltImage) -> None:
    for label in ("source", "version", "revision", "title"):
        assert image.labels.get(f"org.opencontainers.image.{label}"), f"no org.opencontainers.image.{label}"
    assert image.labels["org.opencontainers.image.revision"] != "unknown"
    assert image.config["Healthcheck"]["Test"][-2:] == ["-m", "services.runtime.probe"]  # the health port's setting
    assert "COINSTREAM_GRPC_HEALTH_PORT=8086" in image.config["Env"]
    assert image.config["User"] == "10001:10001"
    assert image.added_bytes <= IMAGE_ADDED_BUDGET_BYTES, f"{image.added_bytes / 1e6:.0f} MB over the base image"


def test_the_image_holds_no_development_tools(image: BuiltImage) -> None:
    script = (
        "import importlib.util, shutil\n"
        "print([m for m in ('devstack', 'tests', 'bench', 'pytest', 'trustme', 'ruff') if importlib.util.find_spec(m)],"
        " shutil.which('coinstream'))"
    )
    done = docker("run", "--rm", "--entrypoint", "python", image.tag, "-c", script)
    assert done.stdout.strip() == "[] None"


def test_the_image_holds_exactly_the_locked_versions(image: BuiltImage) -> None:
    """Reproducible from uv.lock: every distribution in the image is at the version the lockfile pins."""
    script = (
        "import importlib.metadata as m, json\n"
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    )
    installed = json.loads(docker("run", "--rm", "--entrypoint", "python", image.tag, "-c", script).stdout)
    locked = {
        package["name"]: package["version"]
        for package in tomllib.loads((REPO_ROOT / "uv.lock").read_text())["package"]
        if "version" in package
    }
    normalized = {name.lower().replace("_", "-").replace(".", "-"): version for name, version in installed.items()}
    base = {"pip", "setuptools", "wheel"}  # the base image's own Python tooling, outside the venv's lock
    mismatched = {
        name: (version, locked.get(name))
        for name, version in normalized.items()
        if name not in base and locked.get(name) != version
    }
    assert mismatched == {}, mismatched
    assert {"grpcio", "asyncpg", "nats-py"} <= normalized.keys()


# ---------------------------------------------------------------- the money path


async def test_the_money_path_through_the_published_ports(backend: Backend, clients: Clients) -> None:
    """Purchase → gift → diamonds → a withdrawal paid by the (staging) sandbox provider."""
    fan = await backend.account("coins_3303")
    creator = await backend.account()
    assert await backend.coins(fan) == 3303 + 165  # +5 % on packages of 1,321 coins or more
    stream_id = await backend.go_live(creator)
    sent = await backend.send(gift(fan, stream_id, "disco_ball", 2))
    assert (sent.gift.coins, sent.sender_balance_coins) == (2000, 1468)
    assert await backend.lifetime_diamonds(creator, 2000) == 2000
    await clients.payouts.UpdateCreatorProfile(
        payouts_pb2.UpdateCreatorProfileRequest(
            request_id=new_id("req"), creator_id=creator, kyc_verified=True, payout_destination=f"sandbox:ok-{creator}"
        ),
        metadata=backend.admin,
        timeout=CALL_SECONDS,
    )
    withdrawal = (
        await clients.payouts.RequestWithdrawal(
            payouts_pb2.RequestWithdrawalRequest(request_id=new_id("req"), creator_id=creator, diamonds=2000),
            metadata=backend.service,
            timeout=CALL_SECONDS,
        )
    ).withdrawal
    assert (withdrawal.payout.currency_code, withdrawal.payout.amount_minor) == ("USD", 1000)
    deadline = time.monotonic() + 60
    while withdrawal.status == payouts_pb2.WITHDRAWAL_STATUS_PENDING:
        assert time.monotonic() < deadline, f"withdrawal {withdrawal.withdrawal_id} still pending"
        await asyncio.sleep(0.5)
        withdrawal = (
            await clients.payouts.GetWithdrawal(
                payouts_pb2.GetWithdrawalRequest(withdrawal_id=withdrawal.withdrawal_id),
                metadata=backend.service,
                timeout=CALL_SECONDS,
            )
        ).withdrawal
    assert withdrawal.status == payouts_pb2.WITHDRAWAL_STATUS_PAID
    assert (await backend.earnings(creator)).available_diamonds == 0


async def test_a_replayed_gift_returns_the_first_outcome_and_moves_nothing(backend: Backend) -> None:
    fan, creator = await backend.account("coins_330"), await backend.account()
    request = gift(fan, await backend.go_live(creator), "doughnut")
    first = await backend.send(request)
    assert await backend.send(request) == first
    assert await backend.coins(fan) == 300


async def test_calls_without_a_token_or_in_clear_text_are_refused(
    compose_stack: ComposeStack, clients: Clients
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await clients.wallet.ListCoinPackages(wallet_pb2.ListCoinPackagesRequest(), timeout=CALL_SECONDS)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with grpc.aio.insecure_channel(f"127.0.0.1:{compose_stack.ports['WALLET']}") as plaintext:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await wallet_pb2_grpc.WalletServiceStub(plaintext).ListCoinPackages(
                wallet_pb2.ListCoinPackagesRequest(), metadata=compose_stack.token("x", "service"), timeout=5
            )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


# ---------------------------------------------------------------- crashes


@pytest.mark.parametrize("service", SERVICES)
async def test_a_service_killed_under_load_is_restarted_and_loses_nothing(
    service: str, compose_stack: ComposeStack, backend: Backend
) -> None:
    """Fans send gifts (each retried with its own request_id until it succeeds) while the service's process is
    killed with SIGKILL; its restart policy brings it back, and every gift is charged, counted and credited once."""
    creator = await backend.account()
    stream_id = await backend.go_live(creator)
    fans = [await backend.account("coins_1321") for _ in range(FANS_UNDER_LOAD)]
    restarts_before = compose_stack.state(service)["RestartCount"]
    sent: dict[str, int] = {}

    async def fan_loop(fan: str, stop_at: float) -> None:
        for count in itertools.count(1):
            if time.monotonic() >= stop_at:
                sent[fan] = count - 1
                return
            await send_until_answered(backend, gift(fan, stream_id))

    stop_at = time.monotonic() + LOAD_SECONDS
    load = asyncio.gather(*(fan_loop(fan, stop_at) for fan in fans))
    await asyncio.sleep(LOAD_SECONDS / 3)
    compose_stack.kill_service_process(service)
    await load
    state = await asyncio.to_thread(compose_stack.wait_healthy, service)
    assert state["RestartCount"] == restarts_before + 1, state
    total = sum(sent.values())
    assert total > 0
    assert [await backend.coins(fan) for fan in fans] == [1387 - sent[fan] for fan in fans]
    assert await backend.lifetime_diamonds(creator, total) == total
    FIGURES[f"{service} killed under load"] = f"{total} gifts, restarted and healthy"
    reconciled = await asyncio.to_thread(compose_stack.reconcile)
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
    assert json.loads(reconciled.stdout)["ok"] is True


async def send_until_answered(backend: Backend, request: gifts_pb2.SendGiftRequest) -> None:
    """A client's retry: the same request_id until answered (a crash may lose the answer, never the gift)."""
    deadline = time.monotonic() + 90
    while True:
        try:
            await backend.send(request)
            return
        except grpc.aio.AioRpcError as error:
            retryable = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL}
            if error.code() not in retryable or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


# ---------------------------------------------------------------- stop, down and up


def test_compose_stop_drains_every_service_within_the_grace_period(compose_stack: ComposeStack) -> None:
    started = time.monotonic()
    compose_stack.compose("stop", timeout=120)
    seconds = time.monotonic() - started
    exits = {service: compose_stack.state(service)["ExitCode"] for service in SERVICES}
    FIGURES["docker compose stop"] = f"{seconds:.1f} s"
    assert exits == dict.fromkeys(SERVICES, 0)
    assert seconds < STOP_GRACE_SECONDS
    FIGURES["stack up again after stop"] = f"{compose_stack.up():.0f} s"


async def test_data_survives_down_and_up_with_the_volumes_kept(compose_stack: ComposeStack, backend: Backend) -> None:
    fan, creator = await backend.account("coins_330"), await backend.account()
    await backend.send(gift(fan, await backend.go_live(creator), "hand_hearts"))
    await backend.lifetime_diamonds(creator, 100)
    await asyncio.to_thread(compose_stack.compose, "down", timeout=180)
    FIGURES["stack up again after down"] = f"{await asyncio.to_thread(compose_stack.up):.0f} s"
    assert await backend.coins(fan) == 230
    assert (await backend.earnings(creator)).lifetime_diamonds == 100
    # And the stack works on: the same fan gifts again (the creator went live before the down; the stream is live).
    other_creator = await backend.account()
    await backend.send(gift(fan, await backend.go_live(other_creator), "hand_hearts"))
    assert await backend.coins(fan) == 130
