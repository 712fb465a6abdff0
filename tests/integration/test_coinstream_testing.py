"""coinstream.testing's `processes` flavour, as another backend's test suite uses it: a pytest run of its own (in a
subprocess, so the fixture's coinstream and its gRPC channels never share this worker with the rest of the suite)
over a project holding the README's example and the tests below, with the `coinstream` fixture the package registers
with pytest. (The `containers` flavour: tests/containers/, in make test-containers.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.readme import readme_example

PROJECT_TESTS = """
import uuid

import grpc
import pytest
from coinstream.gifts.v1 import gifts_pb2
from coinstream.wallet.v1 import wallet_pb2

from coinstream.testing import Coinstream


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def test_the_fixture_runs_the_money_path_for_another_backend(coinstream: Coinstream) -> None:
    assert coinstream.flavour == "processes"
    backend = coinstream.metadata("another-backend", "service")
    wallet, gifts = coinstream.clients.wallet, coinstream.clients.gifts
    fan, creator = new_id("fan"), new_id("creator")
    for account_id in (fan, creator):
        wallet.UpsertAccount(
            wallet_pb2.UpsertAccountRequest(
                request_id=new_id("req"), account_id=account_id, adult_verified=True, country_code="US"
            ),
            metadata=backend,
        )
    bought = wallet.PurchaseCoins(
        wallet_pb2.PurchaseCoinsRequest(
            request_id=new_id("req"), account_id=fan, package_id="coins_65", payment_token="tok_ok"
        ),
        metadata=backend,
    )
    assert bought.balance.coins == 65
    stream = gifts.StartLiveStream(
        gifts_pb2.StartLiveStreamRequest(request_id=new_id("req"), creator_id=creator, title="Plugin"),
        metadata=coinstream.metadata(creator),  # the creator's own token (role user)
    ).stream
    sent = gifts.SendGift(
        gifts_pb2.SendGiftRequest(
            request_id=new_id("req"), sender_id=fan, stream_id=stream.stream_id, gift_id="doughnut", quantity=2
        ),
        metadata=coinstream.metadata(fan),
    )
    assert sent.sender_balance_coins == 5


def test_tokens_are_checked_by_the_fixtures_coinstream(coinstream: Coinstream) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        coinstream.clients.wallet.GetBalance(
            wallet_pb2.GetBalanceRequest(account_id="someone-else"), metadata=coinstream.metadata("a-user")
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
"""


def test_another_projects_suite_passes_with_the_fixture(tmp_path: Path) -> None:
    (tmp_path / "test_readme_example.py").write_text(readme_example())
    (tmp_path / "test_backend.py").write_text(PROJECT_TESTS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COINSTREAM_", "PYTEST_"))}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "3 passed" in done.stdout
