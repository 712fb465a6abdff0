"""Promotions as data against the real wallet: the seeded default, bigger and percent promotions, first-purchase and
per-account limits, admin-only idempotent RPCs and their refusals. Promotions are global, so each test ends the ones
it creates (the tests of a file run one at a time)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from coinstream.wallet.v1 import wallet_pb2 as w
from google.protobuf.timestamp_pb2 import Timestamp

from tests.support.clients import ADMIN, SERVICE, Clients, auth, new_id
from tests.support.errors import expect_error, violated_fields
from tests.support.factories import balance_of, buy, create_account, timestamp, transactions, wallet_balance


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
    purchases = [t for t in await transactions(clients, account_id) if t.kind == w.TRANSACTION_KIND_PURCHASE]
    assert [t.bonus_coins_delta for t in purchases] == [825, 1000]
    assert await wallet_balance(clients, account_id) == balance_of(account_id, 33000, 1825)


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
    # As many at once as the card-testing guard lets one account have undecided (5: it counts purchases still being
    # charged as possible declines, so a sixth at the same moment may be held back RATE_LIMITED).
    async with promotion(clients, bonus_coins=9, first_purchase_only=True):
        replies = await asyncio.gather(*(buy(clients, account_id, "coins_65") for _ in range(5)))
    assert sorted(r.purchase.bonus_coins for r in replies) == [0] * 4 + [9]
    assert await wallet_balance(clients, account_id) == balance_of(account_id, 5 * 65, 9)


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
                "starts_at": timestamp(datetime(2030, 1, 2, tzinfo=UTC)),
                "ends_at": timestamp(datetime(2030, 1, 1, tzinfo=UTC)),
            },
            {"ends_at"},
        ),
        ({"name": "ok", "bonus_coins": 1, "ends_at": timestamp(datetime(2020, 1, 1, tzinfo=UTC))}, {"ends_at"}),
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
