"""Accounts, balances in time, and the transaction history with its page tokens."""

from __future__ import annotations

from datetime import timedelta

import grpc
from coinstream.wallet.v1 import wallet_pb2 as w

from services.runtime import pages
from services.wallet import convert, domain
from tests.unit.wallet.conftest import Wallet, refusal


async def test_an_account_is_created_updated_and_read(wallet: Wallet) -> None:
    fan = await wallet.open_account()
    update = w.UpsertAccountRequest(request_id="upd-1", account_id=fan, adult_verified=False, country_code="FR")

    updated = await wallet.service.upsert_account(convert.upsert_account(update))

    assert (updated.adult_verified, updated.country_code, updated.status) == (False, "FR", domain.AccountStatus.ACTIVE)
    assert await wallet.service.get_account(fan) == updated
    assert await wallet.service.upsert_account(convert.upsert_account(update)) == updated  # replayed
    error = await refusal(wallet.service.get_account("nobody"))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")
    assert await wallet.balance("nobody") == domain.Balance()


async def test_setting_a_limit_on_an_unknown_account_is_not_found(wallet: Wallet) -> None:
    error = await refusal(wallet.set_limit("nobody", 10))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND")


async def test_a_balance_as_of_a_moment_is_the_one_after_its_last_posting(wallet: Wallet) -> None:
    fan = await wallet.open_account()
    before_anything = wallet.clock.now()
    wallet.clock.advance(timedelta(seconds=1))
    await wallet.buy(fan, "coins_330")
    after_purchase = wallet.clock.now()
    wallet.clock.advance(timedelta(seconds=1))
    await wallet.spend(fan, 30)

    assert await wallet.service.get_balance(fan, before_anything) == domain.Balance()
    assert await wallet.service.get_balance(fan, after_purchase) == domain.Balance(330, 0)
    assert await wallet.service.get_balance(fan, wallet.clock.now()) == domain.Balance(300, 0)


async def test_history_is_listed_newest_first_in_pages(wallet: Wallet) -> None:
    fan, winner = await wallet.open_account(), await wallet.open_account()
    await wallet.buy(fan, "coins_1321")
    for coins in (1, 2, 3):
        await wallet.spend(fan, coins)

    seen: list[domain.Movement] = []
    token = ""
    while True:
        page = await wallet.service.list_transactions(fan, 2, token)
        seen.extend(page.items)
        token = page.next_page_token
        if not token:
            break

    assert [m.paid_delta + m.bonus_delta for m in seen] == [-3, -2, -1, 1321 + 66]
    assert [m.paid_after + m.bonus_after for m in seen] == [1381, 1384, 1386, 1387]
    assert [m.kind_seen_by(fan) for m in seen] == [domain.TransactionKind.SPEND] * 3 + [domain.TransactionKind.PURCHASE]
    assert (await wallet.service.list_transactions(winner, 10, "")).items == []


async def test_a_history_token_pages_only_the_account_it_was_handed_out_for(wallet: Wallet) -> None:
    fan, other = await wallet.open_account(), await wallet.open_account()
    for account_id in (fan, fan, other):
        await wallet.buy(account_id, "coins_65")
    token = (await wallet.service.list_transactions(fan, 1, "")).next_page_token

    for forged in (token, "bm9wZQ==", pages.encode_page_token("transactions", other, [2**63])):
        error = await refusal(wallet.service.list_transactions(other, 1, forged))
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [violation.field for violation in error.field_violations] == ["page_token"]
