"""Small builders for test data through the public API (never by writing to a database directly): wallet accounts
and their coins, and the requests and answers the wallet tests compare."""

from __future__ import annotations

from datetime import datetime

from coinstream.wallet.v1 import wallet_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from tests.support.clients import SERVICE, Clients, new_id


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


async def make_account(clients: Clients, *, adult_verified: bool = True, package_id: str | None = None) -> str:
    """A fresh wallet account, with the coins of one package bought when package_id is given."""
    account_id = await create_account(clients, adult_verified=adult_verified, prefix="acct")
    if package_id is not None:
        await buy(clients, account_id, package_id)
    return account_id


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


async def transactions(clients: Clients, account_id: str) -> list[wallet_pb2.Transaction]:
    """An account's movements, newest first (the tests stay within one page)."""
    reply = await clients.wallet.ListTransactions(
        wallet_pb2.ListTransactionsRequest(account_id=account_id, page_size=100), metadata=SERVICE
    )
    assert not reply.next_page_token
    return list(reply.transactions)


def balance_of(account_id: str, paid: int, bonus: int = 0) -> wallet_pb2.Balance:
    """The balance an account must have: its paid and bonus coins."""
    return wallet_pb2.Balance(account_id=account_id, coins=paid + bonus, paid_coins=paid, bonus_coins=bonus)


def giveaway(creator_id: str, winners: list[str], coins_per_winner: int) -> wallet_pb2.CreateGiveawayRequest:
    return wallet_pb2.CreateGiveawayRequest(
        request_id=new_id("gw"), creator_id=creator_id, coins_per_winner=coins_per_winner, winner_ids=winners
    )


def reversal(purchase_id: str, request_id: str | None = None) -> wallet_pb2.ReversePurchaseRequest:
    """An admin's chargeback of a purchase."""
    return wallet_pb2.ReversePurchaseRequest(
        request_id=request_id or new_id("rev"), purchase_id=purchase_id, reason="chargeback cb_123"
    )


def timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp
