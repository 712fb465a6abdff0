"""The wallet's use cases on the in-memory store (tests/fakes/wallet.py): no database, no server.

Commands are built from the RPCs' requests through convert.py, as the servicer builds them, so a request's
fingerprint (what REQUEST_ID_REUSED compares) is the real one."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import timedelta

import pytest
from coinstream.wallet.v1 import wallet_pb2 as w

from services.runtime.batching import BatchPolicy
from services.runtime.errors import AppError
from services.wallet import convert, domain
from services.wallet.service import WalletService
from tests.fakes.wallet import FakeClock, FakePayments, FakeWalletStore

_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}"


@dataclass
class Wallet:
    """The use cases with the fakes they run on, and shorthands for the usual requests."""

    service: WalletService
    store: FakeWalletStore
    payments: FakePayments
    clock: FakeClock

    async def open_account(self, prefix: str = "acct", *, adult_verified: bool = True) -> str:
        account_id = new_id(prefix)
        request = w.UpsertAccountRequest(
            request_id=new_id("req"), account_id=account_id, adult_verified=adult_verified, country_code="US"
        )
        await self.service.upsert_account(convert.upsert_account(request))
        return account_id

    async def buy(self, account_id: str, package_id: str = "coins_330", request_id: str | None = None) -> domain.Bought:
        return await self.service.purchase(buy_command(account_id, package_id, request_id))

    async def spend(self, account_id: str, coins: int, request_id: str | None = None) -> domain.Spent:
        return await self.service.spend(spend_ask(account_id, coins, request_id))

    async def balance(self, account_id: str) -> domain.Balance:
        return await self.service.get_balance(account_id)

    async def status(self, account_id: str) -> domain.AccountStatus:
        return (await self.service.get_account(account_id)).status

    async def set_limit(self, account_id: str, daily_coins: int) -> domain.Account:
        request = w.SetSpendingLimitRequest(request_id=new_id("limit"), account_id=account_id, daily_coins=daily_coins)
        return await self.service.set_spending_limit(convert.change_spending_limit(request))

    async def reverse(self, purchase_id: str, request_id: str | None = None) -> domain.Reversed:
        request = w.ReversePurchaseRequest(
            request_id=request_id or new_id("rev"), purchase_id=purchase_id, reason="chargeback"
        )
        return await self.service.reverse_purchase(convert.reverse_purchase(request))


def buy_command(
    account_id: str,
    package_id: str = "coins_330",
    request_id: str | None = None,
    *,
    caller: str | None = None,
    payment_token: str = "tok_ok",
) -> domain.BuyCoins:
    """A purchase asked by caller (default: the account's owner, buying for itself)."""
    request = w.PurchaseCoinsRequest(
        request_id=request_id or new_id("buy"),
        account_id=account_id,
        package_id=package_id,
        payment_token=payment_token,
    )
    return convert.buy_coins(request, caller or account_id)


def spend_ask(account_id: str, coins: int, request_id: str | None = None, reference: str = "gift") -> domain.SpendAsk:
    request = w.SpendCoinsRequest(
        request_id=request_id or new_id("spend"), account_id=account_id, coins=coins, reference=reference
    )
    return convert.spend_ask(request)


async def refusal(call: Awaitable[object]) -> AppError:
    """The AppError a use case call raises (the test fails if it returns)."""
    with pytest.raises(AppError) as caught:
        await call
    return caught.value


# The settings' defaults (services/wallet/config.py): 5 declines per account in 24 h, none per caller.
DEFAULT_DECLINE_LIMITS = domain.DeclineLimits(per_account=5, per_caller=0)
PAYMENT_TIMEOUT = timedelta(seconds=1)


def new_wallet(decline_limits: domain.DeclineLimits = DEFAULT_DECLINE_LIMITS) -> Wallet:
    clock = FakeClock()
    store = FakeWalletStore(clock)
    payments = FakePayments()
    batching = BatchPolicy(max_batch_size=200, max_concurrent_batches=1, queue_budget_seconds=1.0)
    service = WalletService(
        store,
        payments,
        payment_timeout_seconds=PAYMENT_TIMEOUT.total_seconds(),
        spend_batching=batching,
        decline_limits=decline_limits,
        clock=clock,
    )
    return Wallet(service, store, payments, clock)


@pytest.fixture
def wallet() -> Wallet:
    return new_wallet()
