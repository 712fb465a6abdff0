"""`make test-containers`: the image and the compose stack, for real. Refuses to run (exit status 2, saying what is
missing) without a Docker engine and Compose v2; `make test` never collects this directory (tests/conftest.py)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from coinstream.gifts.v1 import gifts_pb2_grpc
from coinstream.payouts.v1 import payouts_pb2_grpc
from coinstream.wallet.v1 import wallet_pb2_grpc

from tests.containers.harness import BuiltImage, ComposeStack, DockerMissing, build_image, preflight
from tests.support.clients import Clients

# Durations and sizes for the run's summary (pytest_terminal_summary).
FIGURES: dict[str, str] = {}


def pytest_sessionstart(session: pytest.Session) -> None:
    try:
        FIGURES["engine"] = preflight()
    except DockerMissing as missing:
        pytest.exit(f"make test-containers: {missing}", returncode=2)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.write_sep("-", "containers")
        for name, value in FIGURES.items():
            terminalreporter.write_line(f"{name}: {value}")


@pytest.fixture(scope="session")
def image() -> BuiltImage:
    built = build_image()
    FIGURES["image build"] = f"{built.seconds:.0f} s ({built.tag})"
    FIGURES["image size"] = (
        f"{built.size_bytes / 1e6:.0f} MB, of which {built.added_bytes / 1e6:.0f} MB over its base image"
    )
    return built


@pytest.fixture(scope="session")
def compose_stack(image: BuiltImage) -> Iterator[ComposeStack]:
    root = Path(tempfile.mkdtemp(prefix="coinstream-containers-"))
    root.chmod(0o755)  # the containers read the certificates and the token from here
    stack = ComposeStack(root)
    try:
        FIGURES["stack up (healthy)"] = f"{stack.up():.0f} s, project {stack.project}"
        FIGURES["database TLS"] = "verify-full" if stack.database_tls else "off (the PostgreSQL image has no SSL)"
        yield stack
    except AssertionError:
        print(stack.logs())
        raise
    finally:
        stack.compose("down", "-v", "--remove-orphans", check=False, timeout=300)
        shutil.rmtree(root, ignore_errors=True)


@pytest_asyncio.fixture(scope="session")
async def clients(compose_stack: ComposeStack) -> AsyncIterator[Clients]:
    """Stubs over TLS to the published ports (the channels reconnect after a container restarts)."""
    channels = {service: compose_stack.channel(service) for service in ("wallet", "gifts", "payouts")}
    try:
        yield Clients(
            wallet_pb2_grpc.WalletServiceStub(channels["wallet"]),
            gifts_pb2_grpc.GiftServiceStub(channels["gifts"]),
            payouts_pb2_grpc.PayoutServiceStub(channels["payouts"]),
        )
    finally:
        for channel in channels.values():
            await channel.close()
