"""WalletService against the real service and database: every RPC, its refusals, idempotency and concurrency."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable

import grpc
import pytest
from coinstream.wallet.v1 import wallet_pb2 as w
from google.protobuf.message import Message

from tests.conftest import ADMIN, SERVICE, Clients, auth, new_id, stored_key
from tests.factories import balance, buy, create_account
from tests.grpc_errors import error_reason, violated_fields
from tests.stack import Stack


async def expect_error(
    call: Awaitable[object], code: grpc.StatusCode, reason: str | None = None
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    if reason is not None:
        assert error_reason(caught.value) == reason
    return caught.value


# --- accounts -------------------------------------------------------------------------------------------------


async def test_upsert_and_get_account(clients: Clients) -> None:
    account_id = new_id("acct")
    request = w.UpsertAccountRequest(
        request_id=new_id("r"), account_id=account_id, adult_verified=True, country_code="DE"
    )
    created = await clients.wallet.UpsertAccount(request, metadata=SERVICE)
    assert created.account == w.Account(
        account_id=account_id,
        adult_verified=True,
        country_code="DE",
        status=w.ACCOUNT_STATUS_ACTIVE,
        spending_limit=w.SpendingLimit(daily_coins=0),
    )
    fetched = await clients.wallet.GetAccount(w.GetAccountRequest(account_id=account_id), metadata=auth(account_id))
    assert fetched.account == created.account

    update = w.UpsertAccountRequest(
        request_id=new_id("r"), account_id=account_id, adult_verified=False, country_code="FR"
    )
    updated = await clients.wallet.UpsertAccount(update, metadata=ADMIN)
    assert (updated.account.adult_verified, updated.account.country_code) == (False, "FR")


async def test_upsert_account_needs_service_or_admin(clients: Clients) -> None:
    account_id = new_id("acct")
    request = w.UpsertAccountRequest(
        request_id=new_id("r"), account_id=account_id, adult_verified=True, country_code="US"
    )
    await expect_error(
        clients.wallet.UpsertAccount(request, metadata=auth(account_id)), grpc.StatusCode.PERMISSION_DENIED
    )
    await expect_error(
        clients.wallet.GetAccount(w.GetAccountRequest(account_id=account_id), metadata=SERVICE),
        grpc.StatusCode.NOT_FOUND,
        "ACCOUNT_NOT_FOUND",
    )


async def test_unknown_account_has_zero_coins(clients: Clients) -> None:
    account_id = new_id("ghost")
    reply = await clients.wallet.GetBalance(w.GetBalanceRequest(account_id=account_id), metadata=auth(account_id))
    assert reply.balance == w.Balance(account_id=account_id, coins=0)


async def test_user_cannot_read_someone_elses_balance(clients: Clients) -> None:
    owner = await create_account(clients)
    await expect_error(
        clients.wallet.GetBalance(w.GetBalanceRequest(account_id=owner), metadata=auth("someone-else")),
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED",
    )
    await expect_error(
        clients.wallet.ListTransactions(w.ListTransactionsRequest(account_id=owner), metadata=auth("someone-else")),
        grpc.StatusCode.PERMISSION_DENIED,
    )


# --- auth -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer not-a-jwt"),),
        (("authorization", "Basic dXNlcjpwYXNz"),),
    ],
    ids=["missing", "garbage", "wrong-scheme"],
)
async def test_calls_without_a_valid_token_are_unauthenticated(
    clients: Clients, metadata: tuple[tuple[str, str], ...]
) -> None:
    await expect_error(
        clients.wallet.ListCoinPackages(w.ListCoinPackagesRequest(), metadata=metadata),
        grpc.StatusCode.UNAUTHENTICATED,
        "UNAUTHENTICATED",
    )


async def test_expired_or_foreign_tokens_are_unauthenticated(clients: Clients) -> None:
    from services.runtime.auth import mint_token
    from tests.stack import AUTH_SECRET

    expired = mint_token(AUTH_SECRET, "alice", ["user"], ttl_seconds=-60)  # past the 30 s clock leeway
    forged = mint_token("another-secret-that-is-long-enough-0123456789", "alice", ["admin"])
    no_roles = mint_token(AUTH_SECRET, "alice", [])
    for token in (expired, forged, no_roles):
        await expect_error(
            clients.wallet.ListCoinPackages(
                w.ListCoinPackagesRequest(), metadata=(("authorization", f"Bearer {token}"),)
            ),
            grpc.StatusCode.UNAUTHENTICATED,
        )


# --- packages and purchases -----------------------------------------------------------------------------------


async def test_coin_packages_follow_the_economy_defaults(clients: Clients) -> None:
    reply = await clients.wallet.ListCoinPackages(w.ListCoinPackagesRequest(), metadata=auth("anyone"))
    packages = {
        p.package_id: (p.coins, p.bonus_coins, p.price.amount_minor, p.price.currency_code) for p in reply.packages
    }
    assert packages == {
        "coins_65": (65, 0, 99, "USD"),
        "coins_330": (330, 0, 499, "USD"),
        "coins_660": (660, 0, 999, "USD"),
        "coins_1321": (1321, 66, 1999, "USD"),
        "coins_3303": (3303, 165, 4999, "USD"),
        "coins_6607": (6607, 330, 9999, "USD"),
        "coins_16500": (16500, 825, 24999, "USD"),
    }


async def test_purchase_credits_coins_and_bonus(clients: Clients) -> None:
    account_id = await create_account(clients)
    request = w.PurchaseCoinsRequest(
        request_id=new_id("buy"), account_id=account_id, package_id="coins_3303", payment_token="tok_ok_visa"
    )
    reply = await clients.wallet.PurchaseCoins(request, metadata=auth(account_id))
    assert (reply.purchase.package_id, reply.purchase.coins, reply.purchase.bonus_coins) == ("coins_3303", 3303, 165)
    assert reply.balance == w.Balance(account_id=account_id, coins=3468, paid_coins=3303, bonus_coins=165)
    assert await balance(clients, account_id) == 3468


async def test_purchase_replay_returns_the_original_and_credits_once(clients: Clients) -> None:
    account_id = await create_account(clients)
    request = w.PurchaseCoinsRequest(
        request_id=new_id("buy"), account_id=account_id, package_id="coins_330", payment_token="tok_ok"
    )
    first = await clients.wallet.PurchaseCoins(request, metadata=SERVICE)
    again = await clients.wallet.PurchaseCoins(request, metadata=SERVICE)
    assert again == first
    assert await balance(clients, account_id) == 330

    other_payload = w.PurchaseCoinsRequest(
        request_id=request.request_id, account_id=account_id, package_id="coins_660", payment_token="tok_ok"
    )
    await expect_error(
        clients.wallet.PurchaseCoins(other_payload, metadata=SERVICE),
        grpc.StatusCode.ALREADY_EXISTS,
        "REQUEST_ID_REUSED",
    )
    assert await balance(clients, account_id) == 330


async def test_concurrent_duplicate_purchases_credit_once(clients: Clients) -> None:
    account_id = await create_account(clients)
    request = w.PurchaseCoinsRequest(
        request_id=new_id("buy"), account_id=account_id, package_id="coins_65", payment_token="tok_ok"
    )
    replies = await asyncio.gather(*(clients.wallet.PurchaseCoins(request, metadata=SERVICE) for _ in range(10)))
    assert all(reply == replies[0] for reply in replies)
    assert await balance(clients, account_id) == 65


async def test_declined_payment_changes_nothing_and_replays_the_error(clients: Clients) -> None:
    account_id = await create_account(clients)
    request = w.PurchaseCoinsRequest(
        request_id=new_id("buy"), account_id=account_id, package_id="coins_65", payment_token="tok_declined_card"
    )
    for _ in range(2):
        await expect_error(
            clients.wallet.PurchaseCoins(request, metadata=SERVICE),
            grpc.StatusCode.FAILED_PRECONDITION,
            "PAYMENT_DECLINED",
        )
    assert await balance(clients, account_id) == 0


async def test_purchase_refusals(clients: Clients) -> None:
    minor = await create_account(clients, adult_verified=False)
    adult = await create_account(clients)

    def purchase(account_id: str, package_id: str = "coins_65") -> w.PurchaseCoinsRequest:
        return w.PurchaseCoinsRequest(
            request_id=new_id("buy"), account_id=account_id, package_id=package_id, payment_token="tok_ok"
        )

    await expect_error(
        clients.wallet.PurchaseCoins(purchase(minor), metadata=SERVICE),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ACCOUNT_NOT_ELIGIBLE",
    )
    await expect_error(
        clients.wallet.PurchaseCoins(purchase(new_id("nobody")), metadata=SERVICE),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ACCOUNT_NOT_ELIGIBLE",
    )
    await expect_error(
        clients.wallet.PurchaseCoins(purchase(adult, "coins_999999"), metadata=SERVICE),
        grpc.StatusCode.NOT_FOUND,
        "PACKAGE_NOT_FOUND",
    )
    await expect_error(
        clients.wallet.PurchaseCoins(purchase(adult), metadata=auth("not-the-owner")),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert await balance(clients, minor) == 0
    assert await balance(clients, adult) == 0


# --- spends ---------------------------------------------------------------------------------------------------


def spend_request(account_id: str, coins: int, request_id: str | None = None) -> w.SpendCoinsRequest:
    return w.SpendCoinsRequest(
        request_id=request_id or new_id("spend"), account_id=account_id, coins=coins, reference="test:spend"
    )


async def test_spend_debits_and_is_service_only(clients: Clients) -> None:
    account_id = await create_account(clients)
    await buy(clients, account_id, "coins_330")
    await expect_error(
        clients.wallet.SpendCoins(spend_request(account_id, 10), metadata=auth(account_id)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    reply = await clients.wallet.SpendCoins(spend_request(account_id, 30), metadata=SERVICE)
    assert reply.transaction_id
    assert reply.balance == w.Balance(account_id=account_id, coins=300, paid_coins=300)
    assert (reply.paid_coins, reply.bonus_coins) == (30, 0)


async def test_insufficient_coins_is_refused_and_replayed_even_after_a_top_up(clients: Clients) -> None:
    account_id = await create_account(clients)
    await buy(clients, account_id, "coins_65")
    request = spend_request(account_id, 100)
    await expect_error(
        clients.wallet.SpendCoins(request, metadata=SERVICE), grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_COINS"
    )
    await buy(clients, account_id, "coins_65")
    await expect_error(
        clients.wallet.SpendCoins(request, metadata=SERVICE), grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_COINS"
    )
    assert await balance(clients, account_id) == 130


async def test_spend_refused_for_ineligible_accounts(clients: Clients) -> None:
    minor = await create_account(clients, adult_verified=False)
    await expect_error(
        clients.wallet.SpendCoins(spend_request(minor, 1), metadata=SERVICE),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ACCOUNT_NOT_ELIGIBLE",
    )


async def test_concurrent_spends_never_overdraw(clients: Clients) -> None:
    account_id = await create_account(clients)
    await buy(clients, account_id, "coins_1321")  # 1,387 coins with the bonus
    results = await asyncio.gather(
        *(clients.wallet.SpendCoins(spend_request(account_id, 100), metadata=SERVICE) for _ in range(20)),
        return_exceptions=True,
    )
    succeeded = [r for r in results if isinstance(r, w.SpendCoinsResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(succeeded) == 13 and len(refused) == 7
    assert {error_reason(r) for r in refused} == {"INSUFFICIENT_COINS"}
    assert await balance(clients, account_id) == 87


async def test_concurrent_duplicate_spends_debit_once(clients: Clients) -> None:
    account_id = await create_account(clients)
    await buy(clients, account_id, "coins_330")
    request = spend_request(account_id, 7)
    replies = await asyncio.gather(*(clients.wallet.SpendCoins(request, metadata=SERVICE) for _ in range(10)))
    assert len({reply.transaction_id for reply in replies}) == 1
    assert await balance(clients, account_id) == 323


# --- history --------------------------------------------------------------------------------------------------


async def test_transactions_are_listed_newest_first_with_pages(clients: Clients) -> None:
    account_id = await create_account(clients)
    await buy(clients, account_id, "coins_330")
    for coins in (1, 2, 3, 4):
        await clients.wallet.SpendCoins(spend_request(account_id, coins), metadata=SERVICE)

    seen: list[w.Transaction] = []
    page_token = ""
    while True:
        page = await clients.wallet.ListTransactions(
            w.ListTransactionsRequest(account_id=account_id, page_size=2, page_token=page_token),
            metadata=auth(account_id),
        )
        assert len(page.transactions) <= 2
        seen.extend(page.transactions)
        page_token = page.next_page_token
        if not page_token:
            break
    assert [t.coins_delta for t in seen] == [-4, -3, -2, -1, 330]
    assert [t.balance_after for t in seen] == [320, 324, 327, 329, 330]
    assert [t.kind for t in seen] == [w.TRANSACTION_KIND_SPEND] * 4 + [w.TRANSACTION_KIND_PURCHASE]


# --- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "request_message", "fields"),
    [
        (
            "UpsertAccount",
            w.UpsertAccountRequest(request_id="", account_id="bad id", country_code="usa"),
            {"request_id", "account_id", "country_code"},
        ),
        ("GetAccount", w.GetAccountRequest(account_id=""), {"account_id"}),
        ("GetBalance", w.GetBalanceRequest(account_id="x" * 65), {"account_id"}),
        (
            "PurchaseCoins",
            w.PurchaseCoinsRequest(request_id="has space", account_id="ok", package_id="", payment_token=""),
            {"request_id", "package_id", "payment_token"},
        ),
        (
            "SpendCoins",
            w.SpendCoinsRequest(request_id="r" * 129, account_id="ok", coins=-5, reference="x" * 300),
            {"request_id", "coins", "reference"},
        ),
        ("SpendCoins", w.SpendCoinsRequest(request_id="ok", account_id="ok", coins=0), {"coins"}),
        ("ListTransactions", w.ListTransactionsRequest(account_id="ok", page_size=101), {"page_size"}),
        (
            "ListTransactions",
            w.ListTransactionsRequest(account_id="ok", page_size=-1, page_token="nope"),
            {"page_size"},
        ),
        (  # a tampered token whose position is past int64 (was INTERNAL)
            "ListTransactions",
            w.ListTransactionsRequest(account_id="ok", page_token=base64.urlsafe_b64encode(b"p:" + b"9" * 32).decode()),
            {"page_token"},
        ),
    ],
)
async def test_bad_input_is_invalid_argument_with_field_violations(
    clients: Clients,
    method: str,
    request_message: Message,
    fields: set[str],
) -> None:
    error = await expect_error(
        getattr(clients.wallet, method)(request_message, metadata=SERVICE), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert violated_fields(error) == fields


async def test_forged_page_token_is_invalid_argument(clients: Clients) -> None:
    error = await expect_error(
        clients.wallet.ListTransactions(
            w.ListTransactionsRequest(account_id="ok", page_token="bm9wZQ=="), metadata=SERVICE
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violated_fields(error) == {"page_token"}


# Raw request bytes: a string field (account_id) that is not UTF-8, a length past the end, no valid tag at all.
UNPARSABLE_REQUESTS = (b"\x0a\x02\xff\xfe", b"\x0a\x05abc", b"\xff\xff\xff")


async def test_a_request_that_does_not_parse_is_invalid_argument(stack: Stack) -> None:
    """Found by the fuzzer (test_fuzz.py): grpc answered UNKNOWN with the parser's exception text."""
    async with grpc.aio.insecure_channel(stack.address("wallet")) as channel:
        get_balance = channel.unary_unary("/coinstream.wallet.v1.WalletService/GetBalance")
        for raw in UNPARSABLE_REQUESTS:
            error = await expect_error(get_balance(raw, metadata=SERVICE), grpc.StatusCode.INVALID_ARGUMENT)
            assert (error_reason(error), violated_fields(error)) == ("INVALID_ARGUMENT", {"request"})
        await expect_error(get_balance(UNPARSABLE_REQUESTS[0]), grpc.StatusCode.UNAUTHENTICATED)


async def test_bad_input_changes_nothing(clients: Clients) -> None:
    account_id = await create_account(clients)
    await buy(clients, account_id, "coins_65")
    request_id = new_id("spend")
    await expect_error(
        clients.wallet.SpendCoins(
            w.SpendCoinsRequest(request_id=request_id, account_id=account_id, coins=0), metadata=SERVICE
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    # The refused request_id was not consumed: a valid request with it goes through.
    reply = await clients.wallet.SpendCoins(spend_request(account_id, 5, request_id), metadata=SERVICE)
    assert reply.balance.coins == 60


async def test_control_characters_are_invalid_argument(clients: Clients) -> None:
    account_id = await create_account(clients)
    request = w.SpendCoinsRequest(request_id=new_id("spend"), account_id=account_id, coins=1, reference="gift:\x00")
    error = await expect_error(clients.wallet.SpendCoins(request, metadata=SERVICE), grpc.StatusCode.INVALID_ARGUMENT)
    assert violated_fields(error) == {"reference"}


async def test_spend_replayed_after_its_key_expired_gets_its_original_answer(stack: Stack, clients: Clients) -> None:
    """The ledger outlives idempotency keys: a gift left pending past the key retention must not be refused or
    charged twice when its spend is finally retried."""
    import asyncpg

    account_id = await create_account(clients)
    await buy(clients, account_id, "coins_65")
    request = spend_request(account_id, 60)
    first = await clients.wallet.SpendCoins(request, metadata=SERVICE)
    conn = await asyncpg.connect(stack.database_url("wallet"))
    try:  # what the retention cleanup does after 8 days
        await conn.execute("DELETE FROM idempotency_keys WHERE request_id = $1", stored_key(request.request_id))
    finally:
        await conn.close()
    again = await clients.wallet.SpendCoins(request, metadata=SERVICE)
    assert again == first
    assert await balance(clients, account_id) == 5
