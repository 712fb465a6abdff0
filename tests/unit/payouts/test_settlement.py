"""Settlement of gifts into diamonds, and the maturity hold, against the in-memory store."""

from __future__ import annotations

import pytest

from services.payouts import domain
from services.payouts.domain import GiftToSettle
from services.runtime.ledger import UnbalancedTransaction
from tests.fakes.payouts import ConstraintViolation
from tests.unit.payouts.helpers import Payouts, assert_ledger_agrees


async def test_a_batch_credits_each_creator_at_the_rate_and_balances_the_ledger() -> None:
    payouts = await Payouts().start()
    assert await payouts.gifts("amy", 10, 25) == 2
    assert await payouts.gifts("bob", 7) == 1
    assert payouts.balances("amy") == (35, 0, 0)
    assert payouts.balances("bob") == (7, 0, 0)
    assert payouts.store.account_balance(domain.SYSTEM_GIFT_SETTLEMENT) == -42
    assert_ledger_agrees(payouts.store)


async def test_one_batch_of_many_creators_is_one_ledger_transaction() -> None:
    payouts = await Payouts().start()
    gifts = [GiftToSettle(f"g{n}", creator, "st_1", 5) for n, creator in enumerate(["amy", "bob", "amy", "cat"])]
    assert await payouts.settlement.settle(gifts) == 4
    assert list(payouts.store.state.ledger_transactions.values()) == [("settlement", "4 gifts")]
    assert [payouts.balances(creator)[0] for creator in ("amy", "bob", "cat")] == [10, 5, 5]


async def test_fractions_are_floored_per_gift_and_carried_to_the_creators_next_batch() -> None:
    payouts = await Payouts().start(1, 2)  # half a diamond per coin
    for _ in range(3):
        await payouts.gifts("amy", 1)  # 0.5 each: 0, then 1 (0.5 + 0.5), then 0 with 0.5 carried
    await payouts.gifts("bob", 3)  # bob's fraction is his own: 1.5 → 1, 0.5 carried
    credits = [stored.credit.diamonds for stored in payouts.store.state.credits.values()]
    assert credits == [0, 1, 0, 1]
    assert payouts.balances("amy")[0] == 1 and payouts.balances("bob")[0] == 1
    rate_version = payouts.store.state.rates[-1].version
    assert payouts.store.state.carries == {("amy", rate_version): 1, ("bob", rate_version): 1}
    await payouts.gifts("amy", 1)  # the carried half and this one make a diamond
    assert payouts.balances("amy")[0] == 2
    assert_ledger_agrees(payouts.store)


async def test_over_many_batches_a_creator_gets_the_floor_of_all_coins_times_the_rate() -> None:
    payouts = await Payouts().start(7, 10)
    batches = [[3], [1, 1, 1], [99, 5], [2], [13, 13, 13, 13]]
    for coins in batches:
        await payouts.gifts("amy", *coins)
    total_coins = sum(sum(coins) for coins in batches)
    assert payouts.balances("amy")[0] == total_coins * 7 // 10
    assert_ledger_agrees(payouts.store)


async def test_a_new_rate_version_starts_with_no_carried_fraction() -> None:
    payouts = await Payouts().start(1, 2)
    await payouts.gifts("amy", 1)
    rate = await payouts.service.adopt_configured_rate(1, 3)
    assert rate.version == 2
    assert await payouts.service.adopt_configured_rate(1, 3) == rate  # unchanged: no new version
    await payouts.gifts("amy", 2)  # 2/3 of a diamond at version 2: the half of version 1 does not add to it
    assert payouts.balances("amy")[0] == 0


async def test_a_gift_delivered_again_is_ignored() -> None:
    payouts = await Payouts().start()
    gift = GiftToSettle("gtx_1", "amy", "st_1", 10)
    assert await payouts.settlement.settle([gift]) == 1
    assert await payouts.settlement.settle([gift]) == 0
    assert await payouts.settlement.settle([gift, GiftToSettle("gtx_2", "amy", "st_1", 5)]) == 1
    assert payouts.balances("amy")[0] == 15
    assert_ledger_agrees(payouts.store)


async def test_the_same_gift_twice_in_one_batch_counts_once() -> None:
    payouts = await Payouts().start()
    gift = GiftToSettle("gtx_1", "amy", "st_1", 10)
    assert await payouts.settlement.settle([gift, gift]) == 1
    assert payouts.balances("amy")[0] == 10


async def test_a_failed_batch_leaves_nothing_behind_and_settles_on_retry() -> None:
    payouts = Payouts()  # no rate adopted yet: settling is a bug, and the transaction rolls back
    with pytest.raises(AssertionError):
        await payouts.gifts("amy", 10)
    assert payouts.store.state.inbox == set()
    await payouts.start()
    assert await payouts.settlement.settle([GiftToSettle("gtx_0", "amy", "st_1", 10)]) == 1
    assert payouts.balances("amy")[0] == 10


async def test_gifts_that_all_floor_to_zero_move_no_diamonds() -> None:
    payouts = await Payouts().start(1, 1000)
    assert await payouts.gifts("amy", 1, 1) == 2
    assert payouts.balances("amy") == (0, 0, 0)
    assert payouts.store.state.postings == []


# --- the maturity hold ------------------------------------------------------------------------------------------------


async def test_held_credits_stay_pending_until_their_hold_is_over() -> None:
    payouts = await Payouts(hold_seconds=60).start()
    await payouts.gifts("amy", 30)
    assert payouts.balances("amy") == (0, 0, 30)
    payouts.store.advance(59)
    assert await payouts.maturity.mature_once() == 0
    payouts.store.advance(1)
    await payouts.gifts("amy", 5)  # settled now: its own hold starts now
    assert await payouts.maturity.mature_once() == 1
    assert payouts.balances("amy") == (30, 0, 5)
    assert await payouts.maturity.mature_once() == 0  # a credit matures once
    payouts.store.advance(60)
    assert await payouts.maturity.mature_once() == 1
    assert payouts.balances("amy") == (35, 0, 0)
    assert_ledger_agrees(payouts.store)


async def test_maturity_moves_a_batch_of_creators_in_one_ledger_transaction() -> None:
    payouts = await Payouts(hold_seconds=1).start()
    await payouts.gifts("amy", 3, 4)
    await payouts.gifts("bob", 5)
    payouts.store.advance(1)
    assert await payouts.maturity.mature_once() == 3
    maturity = [kind for kind, _ in payouts.store.state.ledger_transactions.values() if kind == "maturity"]
    assert maturity == ["maturity"]
    assert (payouts.balances("amy"), payouts.balances("bob")) == ((7, 0, 0), (5, 0, 0))


async def test_a_withdrawal_counts_credits_whose_hold_is_over_before_the_worker_moves_them() -> None:
    payouts = await Payouts(hold_seconds=60).start()
    await payouts.verified("amy")
    await payouts.gifts("amy", 2000)
    await payouts.gifts("bob", 10)  # someone else's due credit stays for the worker
    payouts.store.advance(60)
    withdrawal = await payouts.withdraw("amy", 2000)
    assert withdrawal.diamonds == 2000
    assert payouts.balances("amy") == (0, 2000, 0)
    assert payouts.balances("bob") == (0, 0, 10)
    assert_ledger_agrees(payouts.store)


def test_a_failure_the_data_can_cause_is_told_from_an_outage() -> None:
    settlement = Payouts().settlement
    assert settlement.could_be_the_events(ConstraintViolation("negative balance"))
    assert settlement.could_be_the_events(UnbalancedTransaction("postings do not sum to zero"))
    assert settlement.could_be_the_events(AssertionError("a rule"))
    assert not settlement.could_be_the_events(ConnectionError("the database restarted"))
