"""CreateGiveaway: the creator pays every winner or none, provenance (bonus coins) carrying over."""

from __future__ import annotations

from coinstream.wallet.v1 import wallet_pb2 as w

from services.wallet import convert, domain
from tests.unit.wallet.conftest import Wallet, new_id, refusal


async def give(
    wallet: Wallet, creator_id: str, winner_ids: list[str], coins_per_winner: int, request_id: str | None = None
) -> domain.GiveawayMade:
    request = w.CreateGiveawayRequest(
        request_id=request_id or new_id("gw"),
        creator_id=creator_id,
        coins_per_winner=coins_per_winner,
        winner_ids=winner_ids,
    )
    return await wallet.service.create_giveaway(convert.make_giveaway(request))


async def test_winners_are_paid_in_order_bonus_coins_first(wallet: Wallet) -> None:
    creator = await wallet.open_account("creator")
    winners = [await wallet.open_account("winner") for _ in range(3)]
    await wallet.buy(creator, "coins_1321")  # 1321 paid + 66 bonus

    giveaway = await give(wallet, creator, winners, 50)

    assert giveaway.total_coins == 150 and giveaway.winner_ids == tuple(winners)
    assert giveaway.balance == domain.Balance(paid_coins=1321 - 84, bonus_coins=0) == await wallet.balance(creator)
    assert [await wallet.balance(winner) for winner in winners] == [
        domain.Balance(0, 50),
        domain.Balance(34, 16),
        domain.Balance(50, 0),
    ]
    assert wallet.store.state.giveaways[giveaway.giveaway_id].winner_ids == tuple(winners)


async def test_a_giveaway_is_refused_whole(wallet: Wallet) -> None:
    creator = await wallet.open_account("creator")
    winner = await wallet.open_account("winner")
    minor = await wallet.open_account(adult_verified=False)
    await wallet.buy(creator, "coins_65")

    assert (await refusal(give(wallet, creator, [winner], 66))).reason == "INSUFFICIENT_COINS"
    assert (await refusal(give(wallet, creator, [winner, minor], 1))).reason == "ACCOUNT_NOT_ELIGIBLE"
    assert (await refusal(give(wallet, creator, [winner, "nobody"], 1))).reason == "ACCOUNT_NOT_ELIGIBLE"
    assert (await refusal(give(wallet, minor, [winner], 1))).reason == "ACCOUNT_NOT_ELIGIBLE"
    assert await wallet.balance(creator) == domain.Balance(65, 0)
    assert await wallet.balance(winner) == domain.Balance()
    assert not wallet.store.state.giveaways


async def test_a_frozen_creator_cannot_give_and_a_frozen_winner_cannot_receive(wallet: Wallet) -> None:
    creator, frozen = await wallet.open_account("creator"), await wallet.open_account()
    await wallet.buy(creator, "coins_65")
    bought = await wallet.buy(frozen, "coins_65")
    await wallet.spend(frozen, 65)
    await wallet.reverse(bought.purchase_id)

    assert (await refusal(give(wallet, frozen, [creator], 1))).reason == "ACCOUNT_FROZEN"
    assert (await refusal(give(wallet, creator, [frozen], 1))).reason == "ACCOUNT_NOT_ELIGIBLE"


async def test_a_giveaway_counts_towards_the_spending_limit(wallet: Wallet) -> None:
    creator, winner = await wallet.open_account("creator"), await wallet.open_account("winner")
    await wallet.buy(creator, "coins_330")
    await wallet.set_limit(creator, 100)
    await give(wallet, creator, [winner], 60)

    assert (await refusal(wallet.spend(creator, 41))).reason == "SPENDING_LIMIT_REACHED"
    assert (await refusal(give(wallet, creator, [winner], 41))).reason == "SPENDING_LIMIT_REACHED"
    await wallet.spend(creator, 40)


async def test_a_replayed_giveaway_pays_once(wallet: Wallet) -> None:
    creator, winner = await wallet.open_account("creator"), await wallet.open_account("winner")
    await wallet.buy(creator, "coins_65")

    first = await give(wallet, creator, [winner], 10, request_id="gw-1")
    again = await give(wallet, creator, [winner], 10, request_id="gw-1")

    assert again == first and await wallet.balance(winner) == domain.Balance(10, 0)
    assert (await refusal(give(wallet, creator, [winner], 11, request_id="gw-1"))).reason == "REQUEST_ID_REUSED"
