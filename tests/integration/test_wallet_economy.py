"""Economy depth against the real wallet (and gifts): coin provenance, promotions as data, chargebacks, creator
giveaways, self-set spending limits and point-in-time balances, each with its refusals, idempotency and
concurrency. Promotions are global, so each test ends the ones it creates (tests run one at a time)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from coinstream.gifts.v1 import gifts_pb2 as g
from coinstream.wallet.v1 import wallet_pb2 as w
from google.protobuf.timestamp_pb2 import Timestamp

from services.runtime import database
from tests.conftest import ADMIN, SERVICE, Clients, auth, new_id, stored_key
from tests.factories import buy, create_account, spend, wallet_balance
from tests.grpc_errors import error_reason, violated_fields
from tests.invariants import wallet_violations
from tests.stack import REPO_ROOT, Stack


async def expect_error(
    call: Awaitable[object], code: grpc.StatusCode, reason: str | None = None
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    if reason is not None:
        assert error_reason(caught.value) == reason, caught.value.details()
    return caught.value


def bal(account_id: str, paid: int, bonus: int) -> w.Balance:
    return w.Balance(account_id=account_id, coins=paid + bonus, paid_coins=paid, bonus_coins=bonus)


async def history(clients: Clients, account_id: str) -> list[w.Transaction]:
    reply = await clients.wallet.ListTransactions(
        w.ListTransactionsRequest(account_id=account_id, page_size=100), metadata=SERVICE
    )
    return list(reply.transactions)


async def ledger_is_sound(stack: Stack) -> None:
    conn = await asyncpg.connect(stack.database_url("wallet"))
    try:
        assert await wallet_violations(conn) == []
    finally:
        await conn.close()


# --- provenance -----------------------------------------------------------------------------------------------


async def test_spends_use_bonus_coins_first_and_record_the_split(clients: Clients) -> None:
    account_id = await create_account(clients)
    bought = await buy(clients, account_id, "coins_1321")
    assert bought.balance == bal(account_id, 1321, 66)
    assert bought.purchase.promotion_id == "promo_default"

    first = await spend(clients, account_id, 50)
    assert (first.paid_coins, first.bonus_coins) == (0, 50)
    assert first.balance == bal(account_id, 1321, 16)
    second = await spend(clients, account_id, 100)
    assert (second.paid_coins, second.bonus_coins) == (84, 16)
    assert second.balance == bal(account_id, 1237, 0)
    assert await wallet_balance(clients, account_id) == bal(account_id, 1237, 0)

    moves = [
        (t.kind, t.coins_delta, t.paid_coins_delta, t.bonus_coins_delta, t.balance_after)
        for t in await history(clients, account_id)
    ]
    assert moves == [
        (w.TRANSACTION_KIND_SPEND, -100, -84, -16, 1237),
        (w.TRANSACTION_KIND_SPEND, -50, 0, -50, 1337),
        (w.TRANSACTION_KIND_PURCHASE, 1387, 1321, 66, 1387),
    ]


async def test_a_spend_replayed_after_its_key_expired_keeps_its_split(stack: Stack, clients: Clients) -> None:
    account_id = await create_account(clients)
    await buy(clients, account_id, "coins_1321")
    request = w.SpendCoinsRequest(request_id=new_id("spend"), account_id=account_id, coins=70, reference="test:replay")
    first = await clients.wallet.SpendCoins(request, metadata=SERVICE)
    await spend(clients, account_id, 5)  # later movements must not change the replayed answer
    conn = await asyncpg.connect(stack.database_url("wallet"))
    try:
        await conn.execute("DELETE FROM idempotency_keys WHERE request_id = $1", stored_key(request.request_id))
    finally:
        await conn.close()
    again = await clients.wallet.SpendCoins(request, metadata=SERVICE)
    assert again == first
    assert (again.paid_coins, again.bonus_coins) == (4, 66)
    assert again.balance == bal(account_id, 1317, 0)


async def test_the_database_refuses_a_negative_user_bucket_unless_debt_is_allowed(
    stack: Stack, clients: Clients
) -> None:
    account_id = await create_account(clients)
    conn = await asyncpg.connect(stack.database_url("wallet"))
    try:
        for bucket in (account_id, f"{account_id}:bonus"):
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute("UPDATE ledger_accounts SET coins = -1 WHERE ledger_account_id = $1", bucket)
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute("SELECT set_config('coinstream.allow_debt', 'on', true)")
        await conn.execute("UPDATE ledger_accounts SET coins = -1 WHERE ledger_account_id = $1", account_id)
        await transaction.rollback()
    finally:
        await conn.close()


async def test_the_database_refuses_an_unbalanced_ledger_transaction(stack: Stack, clients: Clients) -> None:
    account_id = await create_account(clients)
    conn = await asyncpg.connect(stack.database_url("wallet"))
    transaction_id = new_id("txn")
    record = (
        "WITH t AS (INSERT INTO transactions (transaction_id, kind, request_id, account_id, reference)"
        " VALUES ($1, 'spend', $1, $2, 'test'))"
        " INSERT INTO postings (transaction_id, ledger_account_id, coins_delta) VALUES ($1, $3, -5), ($1, $4, 4)"
    )
    try:
        with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
            await conn.execute(record, transaction_id, account_id, "system:spent", "system:sales")
        assert await conn.fetchval("SELECT count(*) FROM transactions WHERE transaction_id = $1", transaction_id) == 0
    finally:
        await conn.close()


# --- promotions -----------------------------------------------------------------------------------------------


@asynccontextmanager
async def promotion(clients: Clients, **fields: Any) -> AsyncIterator[w.Promotion]:  # any: its fields
    request = w.CreatePromotionRequest(request_id=new_id("promo"), name=new_id("promo"), **fields)
    created = await clients.wallet.CreatePromotion(request, metadata=ADMIN)
    try:
        yield created.promotion
    finally:
        await end_promotion(clients, created.promotion.promotion_id)


async def end_promotion(clients: Clients, promotion_id: str) -> w.Promotion:
    request = w.EndPromotionRequest(request_id=new_id("end"), promotion_id=promotion_id)
    return (await clients.wallet.EndPromotion(request, metadata=ADMIN)).promotion


async def package_bonus(clients: Clients, package_id: str) -> int:
    reply = await clients.wallet.ListCoinPackages(w.ListCoinPackagesRequest(), metadata=auth("anyone"))
    return next(p.bonus_coins for p in reply.packages if p.package_id == package_id)


async def test_the_default_promotion_is_seeded(clients: Clients) -> None:
    reply = await clients.wallet.ListPromotions(w.ListPromotionsRequest(page_size=100), metadata=ADMIN)
    token = reply.next_page_token
    promotions = list(reply.promotions)
    while token:
        page = await clients.wallet.ListPromotions(w.ListPromotionsRequest(page_token=token), metadata=ADMIN)
        promotions += page.promotions
        token = page.next_page_token
    default = next(p for p in promotions if p.promotion_id == "promo_default")
    assert (default.min_package_coins, default.bonus_percent, default.status) == (1321, 5, w.PROMOTION_STATUS_ACTIVE)
    assert not default.HasField("ends_at") and not default.first_purchase_only and default.max_uses_per_account == 0


async def test_a_bigger_promotion_wins_and_ending_it_keeps_past_purchases(clients: Clients) -> None:
    account_id = await create_account(clients)
    async with promotion(clients, min_package_coins=16500, bonus_coins=1000) as big:
        assert big.status == w.PROMOTION_STATUS_ACTIVE and big.bonus_coins == 1000
        assert await package_bonus(clients, "coins_16500") == 1000
        assert await package_bonus(clients, "coins_6607") == 330  # below its minimum: the default still applies
        during = await buy(clients, account_id, "coins_16500")
        assert (during.purchase.bonus_coins, during.purchase.promotion_id) == (1000, big.promotion_id)

        ended = await end_promotion(clients, big.promotion_id)
        assert ended.status == w.PROMOTION_STATUS_ENDED and ended.HasField("ends_at")
        assert await end_promotion(clients, big.promotion_id) == ended  # ending twice changes nothing

    after = await buy(clients, account_id, "coins_16500")
    assert (after.purchase.bonus_coins, after.purchase.promotion_id) == (825, "promo_default")
    assert await package_bonus(clients, "coins_16500") == 825
    purchases = [t for t in await history(clients, account_id) if t.kind == w.TRANSACTION_KIND_PURCHASE]
    assert [t.bonus_coins_delta for t in purchases] == [825, 1000]
    assert await wallet_balance(clients, account_id) == bal(account_id, 33000, 1825)


async def test_percent_promotions_round_down_and_wait_for_their_window(clients: Clients) -> None:
    account_id = await create_account(clients)
    later = Timestamp()
    later.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
    async with promotion(clients, bonus_percent=33), promotion(clients, bonus_coins=500, starts_at=later) as waiting:
        assert waiting.status == w.PROMOTION_STATUS_ACTIVE  # waiting for its window to open
        reply = await buy(clients, account_id, "coins_65")
        assert reply.purchase.bonus_coins == 21  # 65 × 33 % = 21.45
        ended = await end_promotion(clients, waiting.promotion_id)  # ended before it ever opened
        assert ended.status == w.PROMOTION_STATUS_ENDED


async def test_first_purchase_only_and_per_account_use_limits(clients: Clients) -> None:
    account_id = await create_account(clients)
    async with (
        promotion(clients, bonus_coins=7, first_purchase_only=True) as first,
        promotion(clients, bonus_coins=3, max_uses_per_account=2) as twice,
    ):
        assert await package_bonus(clients, "coins_65") == 0  # account conditions: not on the public list
        bonuses = [(await buy(clients, account_id, "coins_65")).purchase for _ in range(4)]
        assert [(p.bonus_coins, p.promotion_id) for p in bonuses] == [
            (7, first.promotion_id),
            (3, twice.promotion_id),
            (3, twice.promotion_id),
            (0, ""),
        ]


async def test_concurrent_first_purchases_get_the_first_purchase_bonus_once(clients: Clients) -> None:
    account_id = await create_account(clients)
    async with promotion(clients, bonus_coins=9, first_purchase_only=True):
        replies = await asyncio.gather(*(buy(clients, account_id, "coins_65") for _ in range(8)))
    assert sorted(r.purchase.bonus_coins for r in replies) == [0] * 7 + [9]
    assert await wallet_balance(clients, account_id) == bal(account_id, 8 * 65, 9)


async def test_promotion_rpcs_are_admin_only_and_idempotent(clients: Clients) -> None:
    request = w.CreatePromotionRequest(request_id=new_id("promo"), name="nope", bonus_coins=1)
    for metadata in (SERVICE, auth("alice")):
        await expect_error(
            clients.wallet.CreatePromotion(request, metadata=metadata), grpc.StatusCode.PERMISSION_DENIED
        )
        await expect_error(
            clients.wallet.ListPromotions(w.ListPromotionsRequest(), metadata=metadata),
            grpc.StatusCode.PERMISSION_DENIED,
        )
        await expect_error(
            clients.wallet.EndPromotion(
                w.EndPromotionRequest(request_id=new_id("end"), promotion_id="promo_default"), metadata=metadata
            ),
            grpc.StatusCode.PERMISSION_DENIED,
        )
    request = w.CreatePromotionRequest(
        request_id=new_id("promo"), name="replayed", bonus_coins=1, min_package_coins=10**9
    )
    first = await clients.wallet.CreatePromotion(request, metadata=ADMIN)
    assert await clients.wallet.CreatePromotion(request, metadata=ADMIN) == first
    await end_promotion(clients, first.promotion.promotion_id)
    await expect_error(
        clients.wallet.EndPromotion(
            w.EndPromotionRequest(request_id=new_id("end"), promotion_id="promo_nope"), metadata=ADMIN
        ),
        grpc.StatusCode.NOT_FOUND,
        "PROMOTION_NOT_FOUND",
    )
    newest = await clients.wallet.ListPromotions(w.ListPromotionsRequest(page_size=1), metadata=ADMIN)
    assert [p.promotion_id for p in newest.promotions] == [first.promotion.promotion_id]
    assert newest.promotions[0].status == w.PROMOTION_STATUS_ENDED and newest.next_page_token


async def test_bad_promotion_listing_and_ending_are_invalid_argument(clients: Clients) -> None:
    for request, fields in (
        (w.ListPromotionsRequest(page_size=101), {"page_size"}),
        (w.ListPromotionsRequest(page_token=base64.urlsafe_b64encode(b"p:1").decode()), {"page_token"}),
    ):
        error = await expect_error(
            clients.wallet.ListPromotions(request, metadata=ADMIN), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert violated_fields(error) == fields
    error = await expect_error(
        clients.wallet.EndPromotion(w.EndPromotionRequest(request_id="", promotion_id=""), metadata=ADMIN),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violated_fields(error) == {"request_id", "promotion_id"}


def _ts(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


@pytest.mark.parametrize(
    ("fields", "violations"),
    [
        ({"name": ""}, {"name", "bonus_percent"}),
        ({"name": "x" * 101, "bonus_percent": 0}, {"name", "bonus_percent"}),
        ({"name": "ok", "bonus_percent": 101}, {"bonus_percent"}),
        ({"name": "ok", "bonus_coins": 1_000_001, "min_package_coins": -1}, {"bonus_coins", "min_package_coins"}),
        ({"name": "ok", "bonus_coins": 1, "max_uses_per_account": -1}, {"max_uses_per_account"}),
        (
            {
                "name": "ok",
                "bonus_coins": 1,
                "starts_at": _ts(datetime(2030, 1, 2, tzinfo=UTC)),
                "ends_at": _ts(datetime(2030, 1, 1, tzinfo=UTC)),
            },
            {"ends_at"},
        ),
        ({"name": "ok", "bonus_coins": 1, "ends_at": _ts(datetime(2020, 1, 1, tzinfo=UTC))}, {"ends_at"}),
    ],
)
async def test_bad_promotions_are_invalid_argument(
    clients: Clients,
    fields: dict[str, Any],  # any: CreatePromotionRequest's fields
    violations: set[str],
) -> None:
    request = w.CreatePromotionRequest(request_id=new_id("promo"), **fields)
    error = await expect_error(
        clients.wallet.CreatePromotion(request, metadata=ADMIN), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert violated_fields(error) == violations


# --- chargebacks ----------------------------------------------------------------------------------------------


def reversal(purchase_id: str, request_id: str | None = None) -> w.ReversePurchaseRequest:
    return w.ReversePurchaseRequest(
        request_id=request_id or new_id("rev"), purchase_id=purchase_id, reason="chargeback cb_123"
    )


async def account_status(clients: Clients, account_id: str) -> w.AccountStatus.ValueType:
    return (
        await clients.wallet.GetAccount(w.GetAccountRequest(account_id=account_id), metadata=SERVICE)
    ).account.status


async def test_reversing_an_unspent_purchase_takes_its_coins_back_once(clients: Clients) -> None:
    account_id = await create_account(clients)
    kept = await buy(clients, account_id, "coins_330")
    bought = await buy(clients, account_id, "coins_1321")
    request = reversal(bought.purchase.purchase_id)
    reply = await clients.wallet.ReversePurchase(request, metadata=ADMIN)
    assert reply.balance == bal(account_id, 330, 0)
    assert reply.account_status == w.ACCOUNT_STATUS_ACTIVE
    assert await clients.wallet.ReversePurchase(request, metadata=ADMIN) == reply  # same request_id: same answer

    again = await clients.wallet.ReversePurchase(reversal(bought.purchase.purchase_id), metadata=ADMIN)
    assert again.transaction_id == reply.transaction_id and again.balance == reply.balance  # nothing moved
    newest = (await history(clients, account_id))[0]
    assert (newest.kind, newest.coins_delta, newest.paid_coins_delta, newest.bonus_coins_delta, newest.reference) == (
        w.TRANSACTION_KIND_REVERSAL,
        -1387,
        -1321,
        -66,
        bought.purchase.purchase_id,
    )
    assert kept.purchase.purchase_id != bought.purchase.purchase_id


async def test_concurrent_reversals_of_one_purchase_move_coins_once(clients: Clients) -> None:
    account_id = await create_account(clients)
    bought = await buy(clients, account_id, "coins_660")
    replies = await asyncio.gather(
        *(clients.wallet.ReversePurchase(reversal(bought.purchase.purchase_id), metadata=ADMIN) for _ in range(8))
    )
    assert len({r.transaction_id for r in replies}) == 1
    assert await wallet_balance(clients, account_id) == bal(account_id, 0, 0)


async def start_stream(clients: Clients, creator_id: str) -> str:
    reply = await clients.gifts.StartLiveStream(
        g.StartLiveStreamRequest(request_id=new_id("live"), creator_id=creator_id, title="chargeback"),
        metadata=auth(creator_id),
    )
    return reply.stream.stream_id


async def test_chargeback_after_gifting_leaves_a_debt_that_purchases_pay_back(stack: Stack, clients: Clients) -> None:
    fan = await create_account(clients)
    creator = await create_account(clients, prefix="creator")
    winner = await create_account(clients)
    bought = await buy(clients, fan, "coins_1321")  # 1,321 paid + 66 bonus
    stream_id = await start_stream(clients, creator)
    gift = await clients.gifts.SendGift(
        g.SendGiftRequest(
            request_id=new_id("gift"), sender_id=fan, stream_id=stream_id, gift_id="disco_ball", quantity=1
        ),
        metadata=auth(fan),
    )
    assert gift.sender_balance_coins == 387
    assert await wallet_balance(clients, fan) == bal(fan, 387, 0)  # the gift took the 66 bonus coins first

    reversed_ = await clients.wallet.ReversePurchase(reversal(bought.purchase.purchase_id), metadata=ADMIN)
    assert reversed_.balance == bal(fan, -1000, 0)  # the bonus was gone, so all 1,387 came from paid coins
    assert reversed_.account_status == w.ACCOUNT_STATUS_FROZEN
    assert await account_status(clients, fan) == w.ACCOUNT_STATUS_FROZEN

    await expect_error(
        clients.wallet.SpendCoins(
            w.SpendCoinsRequest(request_id=new_id("s"), account_id=fan, coins=1), metadata=SERVICE
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ACCOUNT_FROZEN",
    )
    await expect_error(
        clients.wallet.CreateGiveaway(
            w.CreateGiveawayRequest(request_id=new_id("gw"), creator_id=fan, coins_per_winner=1, winner_ids=[winner]),
            metadata=SERVICE,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ACCOUNT_FROZEN",
    )

    partial = await buy(clients, fan, "coins_660")  # purchases are allowed while frozen
    assert partial.balance == bal(fan, -340, 0)
    assert await account_status(clients, fan) == w.ACCOUNT_STATUS_FROZEN
    covered = await buy(clients, fan, "coins_660")
    assert covered.balance == bal(fan, 320, 0)
    assert await account_status(clients, fan) == w.ACCOUNT_STATUS_ACTIVE
    assert (await spend(clients, fan, 20)).balance == bal(fan, 300, 0)
    await ledger_is_sound(stack)


async def test_reversal_refusals(clients: Clients) -> None:
    account_id = await create_account(clients)
    declined = w.PurchaseCoinsRequest(
        request_id=new_id("buy"), account_id=account_id, package_id="coins_65", payment_token="tok_declined"
    )
    await expect_error(clients.wallet.PurchaseCoins(declined, metadata=SERVICE), grpc.StatusCode.FAILED_PRECONDITION)
    await expect_error(
        clients.wallet.ReversePurchase(reversal("pur_unknown"), metadata=ADMIN),
        grpc.StatusCode.NOT_FOUND,
        "PURCHASE_NOT_FOUND",
    )
    bought = await buy(clients, account_id, "coins_65")
    for metadata in (SERVICE, auth(account_id)):
        await expect_error(
            clients.wallet.ReversePurchase(reversal(bought.purchase.purchase_id), metadata=metadata),
            grpc.StatusCode.PERMISSION_DENIED,
        )
    error = await expect_error(
        clients.wallet.ReversePurchase(
            w.ReversePurchaseRequest(request_id="bad id", purchase_id="", reason=""), metadata=ADMIN
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violated_fields(error) == {"request_id", "purchase_id", "reason"}
    assert await wallet_balance(clients, account_id) == bal(account_id, 65, 0)


# --- giveaways ------------------------------------------------------------------------------------------------


def giveaway(creator_id: str, winners: list[str], coins_per_winner: int) -> w.CreateGiveawayRequest:
    return w.CreateGiveawayRequest(
        request_id=new_id("gw"), creator_id=creator_id, coins_per_winner=coins_per_winner, winner_ids=winners
    )


async def test_giveaway_pays_every_winner_and_carries_provenance(clients: Clients) -> None:
    creator = await create_account(clients, prefix="creator")
    winners = [await create_account(clients) for _ in range(3)]
    await buy(clients, creator, "coins_1321")  # 1,321 paid + 66 bonus
    request = giveaway(creator, winners, 30)
    reply = await clients.wallet.CreateGiveaway(request, metadata=auth(creator))
    assert reply.giveaway.giveaway_id and reply.giveaway.total_coins == 90
    assert list(reply.giveaway.winner_ids) == winners
    assert reply.balance == bal(creator, 1297, 0)  # 66 bonus first, then 24 paid
    assert await clients.wallet.CreateGiveaway(request, metadata=auth(creator)) == reply

    assert [await wallet_balance(clients, winner) for winner in winners] == [
        bal(winners[0], 0, 30),
        bal(winners[1], 0, 30),
        bal(winners[2], 24, 6),
    ]
    sent = (await history(clients, creator))[0]
    assert (sent.kind, sent.coins_delta, sent.paid_coins_delta, sent.bonus_coins_delta, sent.reference) == (
        w.TRANSACTION_KIND_GIVEAWAY_SENT,
        -90,
        -24,
        -66,
        reply.giveaway.giveaway_id,
    )
    received = (await history(clients, winners[2]))[0]
    assert (received.kind, received.coins_delta, received.balance_after) == (
        w.TRANSACTION_KIND_GIVEAWAY_RECEIVED,
        30,
        30,
    )


async def test_giveaway_with_one_ineligible_winner_moves_nothing(clients: Clients) -> None:
    creator = await create_account(clients, prefix="creator")
    eligible = [await create_account(clients) for _ in range(2)]
    minor = await create_account(clients, adult_verified=False)
    frozen = await create_account(clients)
    frozen_purchase = await buy(clients, frozen, "coins_65")
    await spend(clients, frozen, 60)
    await clients.wallet.ReversePurchase(reversal(frozen_purchase.purchase.purchase_id), metadata=ADMIN)
    await buy(clients, creator, "coins_660")

    for odd_one in (minor, new_id("nobody"), frozen):
        error = await expect_error(
            clients.wallet.CreateGiveaway(giveaway(creator, [*eligible, odd_one], 10), metadata=SERVICE),
            grpc.StatusCode.FAILED_PRECONDITION,
            "ACCOUNT_NOT_ELIGIBLE",
        )
        assert odd_one in (error.details() or "")
    assert await wallet_balance(clients, creator) == bal(creator, 660, 0)
    assert [await wallet_balance(clients, e) for e in eligible] == [bal(e, 0, 0) for e in eligible]


async def test_giveaway_refusals(clients: Clients) -> None:
    creator = await create_account(clients, prefix="creator")
    winner = await create_account(clients)
    await buy(clients, creator, "coins_65")
    await expect_error(
        clients.wallet.CreateGiveaway(giveaway(creator, [winner], 66), metadata=SERVICE),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INSUFFICIENT_COINS",
    )
    await expect_error(
        clients.wallet.CreateGiveaway(giveaway(creator, [winner], 1), metadata=auth(winner)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    minor = await create_account(clients, adult_verified=False)
    await expect_error(
        clients.wallet.CreateGiveaway(giveaway(minor, [winner], 1), metadata=SERVICE),
        grpc.StatusCode.FAILED_PRECONDITION,
        "ACCOUNT_NOT_ELIGIBLE",
    )
    assert await wallet_balance(clients, creator) == bal(creator, 65, 0)


@pytest.mark.parametrize(
    ("winners", "coins_per_winner", "violations"),
    [
        ([], 1, {"winner_ids"}),
        ([f"w{i}" for i in range(1001)], 1, {"winner_ids"}),
        # A thousand bad winners: only the first violations, or the status outgrows gRPC's metadata limit (fuzzer).
        ([f"bad id {i}" for i in range(1000)], 1, {f"winner_ids[{i}]" for i in range(20)}),
        (["a", "b", "a"], 1, {"winner_ids[2]"}),
        (["a", "creator-x", "bad id"], 1, {"winner_ids[1]", "winner_ids[2]"}),
        (["a"], 0, {"coins_per_winner"}),
        (["a"], 1_000_001, {"coins_per_winner"}),
    ],
)
async def test_bad_giveaways_are_invalid_argument(
    clients: Clients, winners: list[str], coins_per_winner: int, violations: set[str]
) -> None:
    error = await expect_error(
        clients.wallet.CreateGiveaway(giveaway("creator-x", winners, coins_per_winner), metadata=SERVICE),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violated_fields(error) == violations


async def test_giveaway_to_a_thousand_winners_is_one_transaction(stack: Stack, clients: Clients) -> None:
    creator = await create_account(clients, prefix="creator")
    winners: list[str] = []
    for _ in range(10):
        winners += await asyncio.gather(*(create_account(clients) for _ in range(100)))
    await buy(clients, creator, "coins_1321")
    reply = await clients.wallet.CreateGiveaway(giveaway(creator, winners, 1), metadata=SERVICE)
    assert reply.giveaway.total_coins == 1000 and reply.balance == bal(creator, 387, 0)
    assert await wallet_balance(clients, winners[65]) == bal(winners[65], 0, 1)
    assert await wallet_balance(clients, winners[66]) == bal(winners[66], 1, 0)
    conn = await asyncpg.connect(stack.database_url("wallet"))
    try:
        postings = await conn.fetchval(
            "SELECT count(*) FROM postings AS p JOIN transactions AS t USING (transaction_id) WHERE t.reference = $1",
            reply.giveaway.giveaway_id,
        )
    finally:
        await conn.close()
    assert postings == 1002  # creator's two buckets and one bucket per winner


# --- spending limits ------------------------------------------------------------------------------------------


async def set_limit(clients: Clients, account_id: str, daily_coins: int) -> w.Account:
    request = w.SetSpendingLimitRequest(request_id=new_id("limit"), account_id=account_id, daily_coins=daily_coins)
    return (await clients.wallet.SetSpendingLimit(request, metadata=auth(account_id))).account


async def test_spending_limit_caps_spends_and_giveaways_over_24_hours(clients: Clients) -> None:
    account_id = await create_account(clients)
    winner = await create_account(clients)
    await buy(clients, account_id, "coins_1321")
    account = await set_limit(clients, account_id, 100)
    assert account.spending_limit == w.SpendingLimit(daily_coins=100)
    await spend(clients, account_id, 60)
    await expect_error(
        clients.wallet.SpendCoins(
            w.SpendCoinsRequest(request_id=new_id("s"), account_id=account_id, coins=41), metadata=SERVICE
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "SPENDING_LIMIT_REACHED",
    )
    await clients.wallet.CreateGiveaway(giveaway(account_id, [winner], 30), metadata=auth(account_id))
    await expect_error(
        clients.wallet.CreateGiveaway(giveaway(account_id, [winner], 11), metadata=auth(account_id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "SPENDING_LIMIT_REACHED",
    )
    await spend(clients, account_id, 10)
    assert (await wallet_balance(clients, account_id)).coins == 1287


async def test_raising_a_limit_waits_24_hours_and_lowering_is_immediate(stack: Stack, clients: Clients) -> None:
    account_id = await create_account(clients)
    await buy(clients, account_id, "coins_1321")
    await set_limit(clients, account_id, 100)
    raised = await set_limit(clients, account_id, 500)
    assert raised.spending_limit.daily_coins == 100
    assert raised.spending_limit.pending.daily_coins == 500
    effective_at = raised.spending_limit.pending.effective_at.ToDatetime(tzinfo=UTC)
    assert abs(effective_at - (datetime.now(UTC) + timedelta(hours=24))) < timedelta(minutes=1)
    await spend(clients, account_id, 100)
    await expect_error(
        clients.wallet.SpendCoins(
            w.SpendCoinsRequest(request_id=new_id("s"), account_id=account_id, coins=1), metadata=SERVICE
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "SPENDING_LIMIT_REACHED",
    )
    # A day passes (the pending change is backdated rather than waited for).
    conn = await asyncpg.connect(stack.database_url("wallet"))
    try:
        await conn.execute(
            "UPDATE accounts SET pending_limit_effective_at = now() - interval '1 second' WHERE account_id = $1",
            account_id,
        )
    finally:
        await conn.close()
    fetched = await clients.wallet.GetAccount(w.GetAccountRequest(account_id=account_id), metadata=auth(account_id))
    assert fetched.account.spending_limit == w.SpendingLimit(daily_coins=500)
    await spend(clients, account_id, 400)

    removal = await set_limit(clients, account_id, 0)
    assert removal.spending_limit.daily_coins == 500 and removal.spending_limit.HasField("pending")
    assert removal.spending_limit.pending.daily_coins == 0
    lowered = await set_limit(clients, account_id, 50)  # immediate, and cancels the pending removal
    assert lowered.spending_limit == w.SpendingLimit(daily_coins=50)


async def test_spending_limit_is_set_by_the_owner_only(clients: Clients) -> None:
    account_id = await create_account(clients)
    request = w.SetSpendingLimitRequest(request_id=new_id("limit"), account_id=account_id, daily_coins=10)
    for metadata in (SERVICE, ADMIN, auth("someone-else")):
        await expect_error(
            clients.wallet.SetSpendingLimit(request, metadata=metadata), grpc.StatusCode.PERMISSION_DENIED
        )
    bad = w.SetSpendingLimitRequest(request_id=new_id("limit"), account_id=account_id, daily_coins=-1)
    error = await expect_error(
        clients.wallet.SetSpendingLimit(bad, metadata=auth(account_id)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert violated_fields(error) == {"daily_coins"}
    first = await clients.wallet.SetSpendingLimit(request, metadata=auth(account_id))
    assert await clients.wallet.SetSpendingLimit(request, metadata=auth(account_id)) == first


async def test_concurrent_spends_never_pass_the_limit(clients: Clients) -> None:
    account_id = await create_account(clients)
    await buy(clients, account_id, "coins_3303")
    await set_limit(clients, account_id, 100)
    results = await asyncio.gather(
        *(
            clients.wallet.SpendCoins(
                w.SpendCoinsRequest(request_id=new_id("s"), account_id=account_id, coins=7), metadata=SERVICE
            )
            for _ in range(30)
        ),
        return_exceptions=True,
    )
    succeeded = [r for r in results if isinstance(r, w.SpendCoinsResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(succeeded) == 14 and len(refused) == 16  # 14 × 7 = 98 ≤ 100
    assert {error_reason(r) for r in refused} == {"SPENDING_LIMIT_REACHED"}
    assert (await wallet_balance(clients, account_id)).coins == 3468 - 98


# --- point-in-time balance ------------------------------------------------------------------------------------


async def balance_at(clients: Clients, account_id: str, moment: datetime) -> w.Balance:
    request = w.GetBalanceRequest(account_id=account_id, as_of=_ts(moment))
    return (await clients.wallet.GetBalance(request, metadata=auth(account_id))).balance


async def test_balance_as_of_a_past_moment(clients: Clients) -> None:
    account_id = await create_account(clients)
    await buy(clients, account_id, "coins_1321")
    await spend(clients, account_id, 100)
    spent, bought = await history(clients, account_id)
    bought_at = bought.created_at.ToDatetime(tzinfo=UTC)
    spent_at = spent.created_at.ToDatetime(tzinfo=UTC)
    assert await balance_at(clients, account_id, bought_at - timedelta(microseconds=1)) == bal(account_id, 0, 0)
    assert await balance_at(clients, account_id, bought_at) == bal(account_id, 1321, 66)
    assert await balance_at(clients, account_id, spent_at) == bal(account_id, 1287, 0)
    assert await balance_at(clients, account_id, datetime.now(UTC) + timedelta(days=1)) == bal(account_id, 1287, 0)
    ghost = new_id("ghost")
    assert await balance_at(clients, ghost, datetime.now(UTC)) == bal(ghost, 0, 0)
    bad = w.GetBalanceRequest(account_id=account_id, as_of=Timestamp(seconds=10**12))
    error = await expect_error(clients.wallet.GetBalance(bad, metadata=SERVICE), grpc.StatusCode.INVALID_ARGUMENT)
    assert violated_fields(error) == {"as_of"}


async def test_money_identities_hold_after_all_of_it(stack: Stack) -> None:
    await ledger_is_sound(stack)


# --- history, locking order and the migration -----------------------------------------------------------------


async def test_history_pages_keep_each_transaction_whole(clients: Clients) -> None:
    """Transactions post to one or both buckets of an account; pages of any size must neither split nor skip one."""
    account_id = await create_account(clients)
    winner = await create_account(clients)
    await buy(clients, account_id, "coins_1321")  # both buckets
    for coins in (10, 30, 40):  # bonus only twice, then the last 26 bonus + 14 paid
        await spend(clients, account_id, coins)
    await clients.wallet.CreateGiveaway(giveaway(account_id, [winner], 5), metadata=SERVICE)  # paid only
    await buy(clients, account_id, "coins_65")  # paid only
    everything = await history(clients, account_id)
    assert [t.coins_delta for t in everything] == [65, -5, -40, -30, -10, 1387]
    assert [t.balance_after for t in everything] == [1367, 1302, 1307, 1347, 1377, 1387]
    for size in (1, 2, 3, 4):
        seen: list[w.Transaction] = []
        token = ""
        while True:
            page = await clients.wallet.ListTransactions(
                w.ListTransactionsRequest(account_id=account_id, page_size=size, page_token=token), metadata=SERVICE
            )
            seen += page.transactions
            token = page.next_page_token
            if not token:
                break
        assert seen == everything, f"page size {size}"


async def test_concurrent_giveaways_and_spends_over_the_same_accounts_do_not_deadlock(clients: Clients) -> None:
    accounts = [await create_account(clients) for _ in range(4)]
    for account_id in accounts:
        await buy(clients, account_id, "coins_660")
    calls = []
    for round_ in range(5):
        for index, creator in enumerate(accounts):
            others = [a for a in accounts if a != creator]
            winners = others if (round_ + index) % 2 else list(reversed(others))
            calls.append(clients.wallet.CreateGiveaway(giveaway(creator, winners, 3), metadata=SERVICE))
            calls.append(spend(clients, creator, 2))
    await asyncio.gather(*calls)
    balances = [(await wallet_balance(clients, a)).coins for a in accounts]
    assert balances == [660 - 5 * (9 + 2) + 5 * 3 * 3] * 4


async def test_migration_keeps_existing_balances_as_paid_coins(stack: Stack) -> None:
    name = f"wallet_upgrade_{new_id('db').replace('-', '_')}"
    stack.postgres.create_database(name)
    files = database.migration_files(REPO_ROOT / "services" / "wallet" / "migrations")
    conn = await asyncpg.connect(stack.postgres.url(name))
    try:
        for migration, path in files:
            if migration.endswith("0002_economy.sql"):
                continue
            await conn.execute(path.read_text())
        await conn.execute(
            """
            INSERT INTO accounts (account_id, adult_verified, country_code) VALUES ('old', true, 'US');
            INSERT INTO ledger_accounts (ledger_account_id, kind, coins) VALUES ('old', 'user', 1387);
            INSERT INTO transactions (transaction_id, kind, request_id, account_id, reference)
                VALUES ('txn_old', 'purchase', 'req_old', 'old', 'pur_old');
            INSERT INTO postings (transaction_id, ledger_account_id, coins_delta, balance_after) VALUES
                ('txn_old', 'old', 1387, 1387), ('txn_old', 'system:sales', -1321, NULL),
                ('txn_old', 'system:promotions', -66, NULL);
            INSERT INTO purchases (purchase_id, request_id, account_id, package_id, coins, bonus_coins, price_minor,
                currency_code, payment_token, status, transaction_id)
                VALUES ('pur_old', 'req_old', 'old', 'coins_1321', 1321, 66, 1999, 'USD', 'tok_ok', 'completed',
                        'txn_old');
            """
        )
        upgrade = next(path for migration, path in files if migration.endswith("0002_economy.sql"))
        await conn.execute(upgrade.read_text())
        buckets = await conn.fetch(
            "SELECT ledger_account_id, coins FROM ledger_accounts WHERE kind = 'user' ORDER BY 1"
        )
        assert [(r["ledger_account_id"], r["coins"]) for r in buckets] == [("old", 1387), ("old:bonus", 0)]
        assert (
            await conn.fetchval("SELECT promotion_id FROM purchases WHERE purchase_id = 'pur_old'") == "promo_default"
        )
        assert await wallet_violations(conn) == []
    finally:
        await conn.close()


async def test_an_account_named_system_is_an_ordinary_user(clients: Clients) -> None:
    """Its bonus bucket is "system:bonus", which must not be mistaken for a platform account."""
    await clients.wallet.UpsertAccount(
        w.UpsertAccountRequest(request_id=new_id("r"), account_id="system", adult_verified=True, country_code="US"),
        metadata=SERVICE,
    )
    await buy(clients, "system", "coins_1321")
    spent = await clients.wallet.SpendCoins(
        w.SpendCoinsRequest(request_id=new_id("spend"), account_id="system", coins=100, reference="test"),
        metadata=SERVICE,
    )
    assert (spent.bonus_coins, spent.paid_coins) == (66, 34)
    assert (spent.balance.paid_coins, spent.balance.bonus_coins) == (1287, 0)
