"""coinstream.testing's `processes` flavour, as another backend's test uses it: the `coinstream` fixture the package
registers with pytest (a stack of its own, not the suite's), its token factory and its clients. (The `containers`
flavour: tests/containers/test_testing_fixture.py, in make test-containers.)"""

from __future__ import annotations

import grpc
import pytest
from coinstream.gifts.v1 import gifts_pb2
from coinstream.wallet.v1 import wallet_pb2

from coinstream.testing import Coinstream
from tests.conftest import new_id


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
