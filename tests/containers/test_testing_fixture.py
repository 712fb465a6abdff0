"""coinstream.testing's `containers` flavour (testcontainers): the image built from this checkout, PostgreSQL and NATS
on a network of their own, used as another backend's test would use it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from coinstream.gifts.v1 import gifts_pb2
from coinstream.wallet.v1 import wallet_pb2

from coinstream.testing import Coinstream, start
from tests.containers.conftest import FIGURES
from tests.containers.harness import BuiltImage, env_file_value


@pytest.fixture(scope="module")
def coinstream_in_containers(image: BuiltImage, monkeypatch_module: pytest.MonkeyPatch) -> Iterator[Coinstream]:
    monkeypatch_module.setenv("COINSTREAM_TESTING_IMAGE", image.tag)
    monkeypatch_module.setenv("COINSTREAM_TESTING_POSTGRES_IMAGE", env_file_value("POSTGRES_IMAGE"))
    monkeypatch_module.setenv("COINSTREAM_TESTING_NATS_IMAGE", env_file_value("NATS_IMAGE"))
    # testcontainers' reaper (Ryuk) comes from a registry; the fixture stops what it started itself.
    monkeypatch_module.setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
    import time

    started = time.monotonic()
    with start("containers") as running:
        FIGURES["coinstream.testing containers flavour up"] = f"{time.monotonic() - started:.0f} s"
        yield running


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_the_containers_flavour_runs_a_gift(coinstream_in_containers: Coinstream) -> None:
    coinstream = coinstream_in_containers
    backend = coinstream.metadata("another-backend", "service")
    for account_id in ("fan-1", "creator-1"):
        coinstream.clients.wallet.UpsertAccount(
            wallet_pb2.UpsertAccountRequest(
                request_id=f"acct-{account_id}", account_id=account_id, adult_verified=True, country_code="US"
            ),
            metadata=backend,
        )
    bought = coinstream.clients.wallet.PurchaseCoins(
        wallet_pb2.PurchaseCoinsRequest(
            request_id="buy-1", account_id="fan-1", package_id="coins_330", payment_token="tok_ok"
        ),
        metadata=backend,
    )
    assert bought.balance.coins == 330
    stream = coinstream.clients.gifts.StartLiveStream(
        gifts_pb2.StartLiveStreamRequest(request_id="live-1", creator_id="creator-1", title="Containers"),
        metadata=backend,
    ).stream
    sent = coinstream.clients.gifts.SendGift(
        gifts_pb2.SendGiftRequest(
            request_id="gift-1", sender_id="fan-1", stream_id=stream.stream_id, gift_id="corgi", quantity=1
        ),
        metadata=backend,
    )
    assert (sent.gift.coins, sent.sender_balance_coins) == (299, 31)


async def test_the_containers_flavour_publishes_its_nats(coinstream_in_containers: Coinstream) -> None:
    """Another backend's test may read coinstream's events (the GIFTS stream) from the published NATS port."""
    import nats

    client = await nats.connect(coinstream_in_containers.nats_url)
    try:
        info = await client.jetstream().stream_info("GIFTS")
        assert info.config.subjects == ["gifts.>"]
    finally:
        await client.close()
