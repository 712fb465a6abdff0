"""Small builders for test data through the public API (never by writing to a database directly)."""

from __future__ import annotations

from coinstream.wallet.v1 import wallet_pb2

from tests.conftest import SERVICE, Clients, new_id


async def create_account(clients: Clients, *, adult_verified: bool = True, prefix: str = "user") -> str:
    account_id = new_id(prefix)
    await clients.wallet.UpsertAccount(
        wallet_pb2.UpsertAccountRequest(
            request_id=new_id("req"), account_id=account_id, adult_verified=adult_verified, country_code="US"
        ),
        metadata=SERVICE,
    )
    return account_id


async def buy(clients: Clients, account_id: str, package_id: str = "coins_1321") -> wallet_pb2.PurchaseCoinsResponse:
    return await clients.wallet.PurchaseCoins(
        wallet_pb2.PurchaseCoinsRequest(
            request_id=new_id("buy"), account_id=account_id, package_id=package_id, payment_token="tok_ok_test"
        ),
        metadata=SERVICE,
    )


async def balance(clients: Clients, account_id: str) -> int:
    reply = await clients.wallet.GetBalance(wallet_pb2.GetBalanceRequest(account_id=account_id), metadata=SERVICE)
    return reply.balance.coins


async def wallet_balance(clients: Clients, account_id: str) -> wallet_pb2.Balance:
    """The whole balance: coins and their paid/bonus split."""
    reply = await clients.wallet.GetBalance(wallet_pb2.GetBalanceRequest(account_id=account_id), metadata=SERVICE)
    return reply.balance


async def spend(clients: Clients, account_id: str, coins: int) -> wallet_pb2.SpendCoinsResponse:
    return await clients.wallet.SpendCoins(
        wallet_pb2.SpendCoinsRequest(request_id=new_id("spend"), account_id=account_id, coins=coins, reference="test"),
        metadata=SERVICE,
    )
