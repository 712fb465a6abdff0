"""Promotions: the bonus a purchase gets, decided when the purchase is recorded."""

from __future__ import annotations

from datetime import datetime, timedelta

import grpc
from coinstream.wallet.v1 import wallet_pb2 as w

from services.wallet import convert, domain
from tests.unit.wallet.conftest import Wallet, new_id, refusal


async def create_promotion(
    wallet: Wallet,
    *,
    bonus_coins: int = 0,
    bonus_percent: int = 0,
    first_purchase_only: bool = False,
    max_uses_per_account: int = 0,
    starts_at: datetime | None = None,
) -> domain.PromotionView:
    request = w.CreatePromotionRequest(
        request_id=new_id("promo"),
        name="test",
        first_purchase_only=first_purchase_only,
        max_uses_per_account=max_uses_per_account,
    )
    if bonus_coins:
        request.bonus_coins = bonus_coins
    else:
        request.bonus_percent = bonus_percent
    return await wallet.service.create_promotion(convert.new_promotion(request, starts_at, None))


async def end_promotion(wallet: Wallet, promotion_id: str) -> domain.PromotionView:
    request = w.EndPromotionRequest(request_id=new_id("end"), promotion_id=promotion_id)
    return await wallet.service.end_promotion(convert.end_promotion(request))


async def test_the_default_promotion_gives_five_percent_from_1321_coins(wallet: Wallet) -> None:
    fan = await wallet.open_account()

    small, large = await wallet.buy(fan, "coins_660"), await wallet.buy(fan, "coins_1321")

    assert (small.bonus_coins, small.promotion_id) == (0, None)
    assert (large.bonus_coins, large.promotion_id) == (66, "promo_default")
    assert await wallet.balance(fan) == domain.Balance(660 + 1321, 66)
    offers = {offer.package.package_id: offer.bonus_coins for offer in await wallet.service.list_packages()}
    assert offers["coins_660"] == 0 and offers["coins_1321"] == 66 and offers["coins_16500"] == 825


async def test_the_largest_bonus_wins_and_account_conditions_apply(wallet: Wallet) -> None:
    welcome = await create_promotion(wallet, bonus_coins=100, first_purchase_only=True)
    fan = await wallet.open_account()

    first, second = await wallet.buy(fan, "coins_65"), await wallet.buy(fan, "coins_65")

    assert (first.bonus_coins, first.promotion_id) == (100, welcome.promotion_id)
    assert (second.bonus_coins, second.promotion_id) == (0, None)
    # The public list shows only what anyone would get: not a first-purchase bonus.
    offers = {offer.package.package_id: offer.bonus_coins for offer in await wallet.service.list_packages()}
    assert offers["coins_65"] == 0


async def test_a_promotion_is_used_at_most_its_uses_per_account(wallet: Wallet) -> None:
    twice = await create_promotion(wallet, bonus_percent=10, max_uses_per_account=2)
    fan = await wallet.open_account()

    bonuses = [(await wallet.buy(fan, "coins_330")).bonus_coins for _ in range(3)]

    assert bonuses == [33, 33, 0]
    assert wallet.store.state.purchases and twice.max_uses_per_account == 2


async def test_promotions_apply_only_within_their_window_and_end_on_request(wallet: Wallet) -> None:
    now = wallet.clock.now()
    later = await create_promotion(wallet, bonus_coins=7, starts_at=now + timedelta(hours=1))
    fan = await wallet.open_account()
    assert (await wallet.buy(fan, "coins_65")).bonus_coins == 0

    wallet.clock.advance(timedelta(hours=1))
    assert (await wallet.buy(fan, "coins_65")).bonus_coins == 7
    ended = await end_promotion(wallet, later.promotion_id)
    assert ended.ended and ended.ends_at == wallet.clock.now()
    assert (await wallet.buy(fan, "coins_65")).bonus_coins == 0
    assert (await end_promotion(wallet, later.promotion_id)) == ended  # already ended: unchanged
    error = await refusal(end_promotion(wallet, "promo_nope"))
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "PROMOTION_NOT_FOUND")


async def test_creating_a_promotion_is_idempotent(wallet: Wallet) -> None:
    request = w.CreatePromotionRequest(request_id="promo-1", name="once", bonus_coins=1)
    first = await wallet.service.create_promotion(convert.new_promotion(request, None, None))
    wallet.clock.advance(timedelta(minutes=1))

    again = await wallet.service.create_promotion(convert.new_promotion(request, None, None))

    assert again == first and not first.ended
    assert len(wallet.store.state.promotions) == 2  # the default one, and this one once


async def test_promotions_are_listed_newest_first_in_pages(wallet: Wallet) -> None:
    created = [await create_promotion(wallet, bonus_coins=n) for n in (1, 2, 3)]

    first = await wallet.service.list_promotions(2, "")
    second = await wallet.service.list_promotions(2, first.next_page_token)

    listed = [p.promotion_id for p in first.items + second.items]
    assert listed == [p.promotion_id for p in reversed(created)] + ["promo_default"]
    assert second.next_page_token == ""
    # A token is bound to its list: a transactions token does not page promotions.
    fan = await wallet.open_account()
    for _ in range(2):
        await wallet.buy(fan, "coins_65")
    history = await wallet.service.list_transactions(fan, 1, "")
    error = await refusal(wallet.service.list_promotions(2, history.next_page_token))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
