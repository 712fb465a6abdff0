"""request_ids are unique per caller (the token's sub): two callers choosing the same one never collide, and no
caller can learn whether another used one; a retry from the same caller still gets the original outcome."""

from __future__ import annotations

import asyncpg
import grpc
import pytest
from coinstream.wallet.v1 import wallet_pb2

from tests.support.clients import SERVICE, Clients, auth, new_id, stored_key
from tests.support.errors import error_reason
from tests.support.factories import balance, create_account, make_account
from tests.support.gifts import gift_request, go_live
from tests.support.stack import Stack


def purchase(request_id: str, account_id: str, package_id: str = "coins_65") -> wallet_pb2.PurchaseCoinsRequest:
    return wallet_pb2.PurchaseCoinsRequest(
        request_id=request_id, account_id=account_id, package_id=package_id, payment_token="tok_ok_scope"
    )


async def test_two_users_with_one_request_id_each_get_their_own_purchase(clients: Clients) -> None:
    shared = new_id("shared")
    alice, bob = await create_account(clients), await create_account(clients)
    for_alice = await clients.wallet.PurchaseCoins(purchase(shared, alice), metadata=auth(alice))
    for_bob = await clients.wallet.PurchaseCoins(purchase(shared, bob, "coins_330"), metadata=auth(bob))
    assert for_alice.purchase.purchase_id != for_bob.purchase.purchase_id
    assert (await balance(clients, alice), await balance(clients, bob)) == (65, 330)
    replayed = await clients.wallet.PurchaseCoins(purchase(shared, alice), metadata=auth(alice))
    assert replayed == for_alice
    assert await balance(clients, alice) == 65


async def test_a_caller_cannot_probe_another_callers_request_id(clients: Clients) -> None:
    """Reusing one's own key with another payload is refused; the same key from someone else is simply new."""
    shared = new_id("shared")
    alice, bob = await create_account(clients), await create_account(clients)
    await clients.wallet.PurchaseCoins(purchase(shared, alice), metadata=auth(alice))
    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await clients.wallet.PurchaseCoins(purchase(shared, alice, "coins_330"), metadata=auth(alice))
    assert reused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_reason(reused.value) == "REQUEST_ID_REUSED"
    await clients.wallet.PurchaseCoins(purchase(shared, bob, "coins_330"), metadata=auth(bob))
    assert await balance(clients, bob) == 330


async def test_two_backends_with_one_request_id_each_spend(clients: Clients) -> None:
    shared = new_id("spend")
    account_id = await create_account(clients)
    await clients.wallet.PurchaseCoins(purchase(new_id("buy"), account_id), metadata=auth(account_id))
    for backend in ("backend-a", "backend-b"):
        await clients.wallet.SpendCoins(
            wallet_pb2.SpendCoinsRequest(request_id=shared, account_id=account_id, coins=10, reference="test:scope"),
            metadata=auth(backend, "service"),
        )
    assert await balance(clients, account_id) == 65 - 2 * 10


async def test_gifts_from_two_fans_with_one_request_id_both_complete(clients: Clients) -> None:
    stream = await go_live(clients)
    shared = new_id("gift")
    fans = [await make_account(clients, package_id="coins_65") for _ in range(2)]
    replies = [
        await clients.gifts.SendGift(gift_request(fan, stream.stream_id, request_id=shared), metadata=auth(fan))
        for fan in fans
    ]
    assert len({reply.gift.gift_transaction_id for reply in replies}) == 2
    assert [reply.gift.sender_id for reply in replies] == fans


async def test_a_spend_made_before_keys_were_scoped_is_found_by_its_retry(stack: Stack, clients: Clients) -> None:
    """Upgrading: a gift left pending across it is retried under the scoped key; the wallet must find the spend the
    earlier version recorded under the bare request_id (and its key gone), not charge again."""
    account_id = await create_account(clients)
    await clients.wallet.PurchaseCoins(purchase(new_id("buy"), account_id), metadata=auth(account_id))
    request = wallet_pb2.SpendCoinsRequest(
        request_id=f"gift:{new_id('gtx')}", account_id=account_id, coins=30, reference="test:before-scoping"
    )
    first = await clients.wallet.SpendCoins(request, metadata=SERVICE)
    conn = await asyncpg.connect(stack.database_url("wallet"))
    try:  # as the earlier version left it: the ledger row under the bare request_id, the key expired
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")  # past the append-only trigger
            await conn.execute(
                "UPDATE transactions SET request_id = $2 WHERE request_id = $1",
                stored_key(request.request_id),
                request.request_id,
            )
            await conn.execute("DELETE FROM idempotency_keys WHERE request_id = $1", stored_key(request.request_id))
    finally:
        await conn.close()
    again = await clients.wallet.SpendCoins(request, metadata=SERVICE)
    assert again.transaction_id == first.transaction_id
    assert await balance(clients, account_id) == 65 - 30
