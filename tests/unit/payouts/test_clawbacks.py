"""Clawbacks against the in-memory store: a reversed purchase's coins take back the diamonds their gifts earned —
from the gift's held diamonds first, then available ones, the rest as debt that later diamonds repay first; a
creator in debt, or whose wallet account is frozen, cannot withdraw; each wallet event applies exactly once; a
reversal that comes before its gift's settlement waits for it. Random histories keep the identities exact."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import pytest
from coinstream.events.v1 import events_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from services.payouts import domain
from services.payouts.clawbacks import WalletEvents, recover_waiting_clawbacks
from services.runtime.errors import AppError
from services.runtime.messaging import DIAMONDS_CLAWED_BACK_SUBJECT
from tests.unit.payouts.helpers import Payouts, assert_ledger_agrees

_ids = itertools.count(1)


async def reverse(payouts: Payouts, *gifts: tuple[str, int], msg_id: str = "") -> int:
    reversal_id = f"rev{next(_ids)}"
    clawbacks = [domain.Clawback(reversal_id, gift, coins) for gift, coins in gifts]
    return await WalletEvents(payouts.store).purchase_reversed(msg_id or f"{reversal_id}:1", "pur_1", clawbacks)


def earnings(payouts: Payouts, creator_id: str) -> tuple[int, int, int, int]:
    """(available, pending, debt, clawed back) diamonds."""
    b = payouts.store.balances_of(creator_id)
    return b.available_diamonds, b.pending_diamonds, b.debt_diamonds, b.clawed_back_diamonds


async def refusal(call: object) -> AppError:
    with pytest.raises(AppError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def test_a_clawback_takes_available_diamonds_then_leaves_a_debt_that_new_gifts_repay_first() -> None:
    payouts = await Payouts().start()
    await payouts.gifts("amy", 3000, 1500)  # gtx_0, gtx_1
    await payouts.verified("amy")
    await payouts.withdraw("amy", 4000)
    assert earnings(payouts, "amy") == (500, 0, 0, 0)

    assert await reverse(payouts, ("gtx_0", 3000)) == 1
    assert earnings(payouts, "amy") == (0, 0, 2500, 3000)
    assert (await refusal(payouts.withdraw("amy", 2000))).reason == "CREATOR_IN_DEBT"

    await payouts.gifts("amy", 1000)  # repays 1000 of the 2500
    assert earnings(payouts, "amy") == (0, 0, 1500, 3000)
    await payouts.gifts("amy", 4000)
    assert earnings(payouts, "amy") == (2500, 0, 0, 3000)
    assert (await payouts.withdraw("amy", 2000)).diamonds == 2000
    assert_ledger_agrees(payouts.store)


async def test_held_diamonds_of_the_gift_go_first_and_maturity_moves_only_the_rest() -> None:
    payouts = await Payouts(hold_seconds=3600).start()
    await payouts.gifts("amy", 100)  # gtx_0, held
    await payouts.gifts("amy", 50)  # gtx_1, held
    await reverse(payouts, ("gtx_0", 30))
    assert earnings(payouts, "amy") == (0, 120, 0, 30)  # out of gtx_0's own hold

    payouts.store.advance(3601)
    await payouts.maturity.mature_once()
    assert earnings(payouts, "amy") == (120, 0, 0, 30)
    await reverse(payouts, ("gtx_0", 70), ("gtx_1", 50))  # both matured now: from available
    assert earnings(payouts, "amy") == (0, 0, 0, 150)
    assert_ledger_agrees(payouts.store)


async def test_held_diamonds_repay_a_debt_when_they_mature() -> None:
    payouts = await Payouts(hold_seconds=3600).start()
    await payouts.gifts("amy", 3000)  # gtx_0
    payouts.store.advance(3601)
    await payouts.maturity.mature_once()
    await payouts.verified("amy")
    await payouts.withdraw("amy", 2000)
    await payouts.gifts("amy", 500)  # gtx_1, held
    await reverse(payouts, ("gtx_0", 3000))  # matured: 1000 available, 2000 into debt; gtx_1's hold untouched
    assert earnings(payouts, "amy") == (0, 500, 2000, 3000)
    payouts.store.advance(3601)
    await payouts.maturity.mature_once()
    assert earnings(payouts, "amy") == (0, 0, 1500, 3000)
    assert_ledger_agrees(payouts.store)


async def test_each_clawback_is_told_to_other_backends_from_the_outbox() -> None:
    payouts = await Payouts().start()
    await payouts.gifts("amy", 100, 50)
    await reverse(payouts, ("gtx_0", 100), ("gtx_1", 20))
    told = [events_pb2.DiamondsClawedBack.FromString(row.payload) for row in payouts.store.state.outbox]
    assert [row.subject for row in payouts.store.state.outbox] == [DIAMONDS_CLAWED_BACK_SUBJECT] * 2
    assert [(e.creator_id, e.gift_transaction_id, e.coins, e.diamonds) for e in told] == [
        ("amy", "gtx_0", 100, 100),
        ("amy", "gtx_1", 20, 20),
    ]
    assert (told[1].from_available_diamonds, told[1].debt_diamonds) == (20, 0)


async def test_a_reversal_before_its_gift_is_settled_is_applied_by_the_settlement() -> None:
    payouts = await Payouts().start()
    assert await reverse(payouts, ("gtx_0", 40)) == 0  # not settled yet: waits
    assert earnings(payouts, "amy") == (0, 0, 0, 0)
    await payouts.gifts("amy", 100)  # gtx_0
    assert earnings(payouts, "amy") == (60, 0, 0, 40)
    assert_ledger_agrees(payouts.store)


async def test_a_recovery_pass_applies_clawbacks_left_waiting_on_settled_gifts() -> None:
    """As a settlement of the release before clawbacks would leave them: recorded, the gift settled, not applied."""
    payouts = await Payouts().start()
    await payouts.gifts("amy", 100)
    async with payouts.store.transaction() as tx:
        await tx.insert_clawbacks("pur_1", [domain.Clawback("rev_old", "gtx_0", 60)])
    assert earnings(payouts, "amy") == (100, 0, 0, 0)
    assert await recover_waiting_clawbacks(payouts.store) is False  # less than a full batch
    assert earnings(payouts, "amy") == (40, 0, 0, 60)
    assert await payouts.store.settled_gifts_with_waiting_clawbacks(10) == []
    assert_ledger_agrees(payouts.store)


async def test_a_gift_never_loses_more_coins_than_it_paid() -> None:
    """Whatever the wallet traced to a gift (a reference a caller wrote, a bug), payouts takes back at most the gift's
    coins; the rest is not taken, and reconcile reports the difference."""
    payouts = await Payouts().start()
    await payouts.gifts("amy", 100, 50)
    await reverse(payouts, ("gtx_0", 70))
    await reverse(payouts, ("gtx_0", 70))  # 30 left of the gift's 100
    await reverse(payouts, ("gtx_0", 5))  # nothing left
    assert earnings(payouts, "amy") == (50, 0, 0, 100)
    taken = sorted(t.clawback.coins for _, t, _ in payouts.store.state.clawbacks.values() if t is not None)
    assert taken == [0, 30, 70]
    assert_ledger_agrees(payouts.store)


async def test_each_wallet_event_applies_once() -> None:
    payouts = await Payouts().start()
    await payouts.gifts("amy", 100)
    clawback = [domain.Clawback("rev_x", "gtx_0", 100)]
    events = WalletEvents(payouts.store)
    assert await events.purchase_reversed("rev_x:1", "pur_1", clawback) == 1
    assert await events.purchase_reversed("rev_x:1", "pur_1", clawback) == 0  # redelivered
    assert await events.purchase_reversed("rev_x:1-again", "pur_1", clawback) == 0  # the same gift of that reversal
    assert earnings(payouts, "amy") == (0, 0, 0, 100)


async def test_a_frozen_wallet_account_cannot_withdraw_and_the_newest_status_wins() -> None:
    payouts = await Payouts().start()
    await payouts.gifts("amy", 5000)
    await payouts.verified("amy")
    events = WalletEvents(payouts.store)
    await events.account_status_changed("s2", "amy", frozen=True, version=2)
    await events.account_status_changed("s1", "amy", frozen=False, version=1)  # older, arriving late: ignored
    assert (await refusal(payouts.withdraw("amy", 2000))).reason == "ACCOUNT_FROZEN"
    await events.account_status_changed("s3", "amy", frozen=False, version=3)
    assert (await payouts.withdraw("amy", 2000)).diamonds == 2000


async def test_a_returned_withdrawal_repays_a_debt_first() -> None:
    payouts = await Payouts().start()
    await payouts.gifts("amy", 3000)
    await payouts.verified("amy")
    withdrawal = await payouts.withdraw("amy", 2000)
    await reverse(payouts, ("gtx_0", 3000))  # 1000 available, 2000 into debt (the rest is reserved)
    assert earnings(payouts, "amy") == (0, 0, 2000, 3000)
    await payouts.cancel(withdrawal.withdrawal_id)
    assert earnings(payouts, "amy") == (0, 0, 0, 3000)
    assert_ledger_agrees(payouts.store)


# --- random histories ----------------------------------------------------------------------------------------------

step = st.one_of(
    st.tuples(st.just("gift"), st.sampled_from(["amy", "bob"]), st.integers(1, 400)),
    st.tuples(st.just("claw"), st.integers(0, 30), st.integers(1, 400)),
    st.tuples(st.just("mature"), st.just(0), st.just(0)),
    st.tuples(st.just("withdraw"), st.sampled_from(["amy", "bob"]), st.integers(1, 3)),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(step, max_size=30), st.sampled_from([(1, 1), (7, 10), (1, 3)]), st.sampled_from([0, 60]))
def test_random_histories_keep_the_clawback_identities(
    steps: list[tuple[str, object, int]], rate: tuple[int, int], hold: int
) -> None:
    asyncio.run(run_history(steps, rate, hold))


async def run_history(steps: list[tuple[str, object, int]], rate: tuple[int, int], hold: int) -> None:
    payouts = await Payouts(hold_seconds=hold).start(*rate)
    for creator in ("amy", "bob"):
        await payouts.verified(creator)
    clawed: dict[str, int] = {}  # coins clawed back per gift so far
    for kind, first, amount in steps:
        if kind == "gift":
            assert isinstance(first, str)
            await payouts.gifts(first, amount)
        elif kind == "claw" and payouts.store.state.inbox:
            gifts = sorted(payouts.store.state.inbox)
            gift = gifts[int(first) % len(gifts)]
            coins = min(amount, payouts.store.state.credits[gift].credit.coins - clawed.get(gift, 0))
            if coins > 0:
                await reverse(payouts, (gift, coins))
                clawed[gift] = clawed.get(gift, 0) + coins
        elif kind == "mature":
            payouts.store.advance(61)
            await payouts.maturity.mature_once()
        elif kind == "withdraw":
            assert isinstance(first, str)
            with contextlib.suppress(AppError):  # too few diamonds, in debt: refused, nothing moves
                await payouts.withdraw(first, 2000 * amount)
        assert_ledger_agrees(payouts.store)
        assert_net_diamonds_are_the_floor_of_net_coins(payouts, clawed)


def assert_net_diamonds_are_the_floor_of_net_coins(payouts: Payouts, clawed: dict[str, int]) -> None:
    """Per creator (one rate version here): credited − clawed-back diamonds = floor((coins − clawed coins) × rate)."""
    rate = payouts.store.state.rates[-1]
    for creator in ("amy", "bob"):
        mine = [c for c in payouts.store.state.credits.values() if c.credit.creator_id == creator]
        coins = sum(c.credit.coins for c in mine) - sum(clawed.get(c.credit.gift_transaction_id, 0) for c in mine)
        net = sum(c.credit.diamonds for c in mine) - payouts.store.balances_of(creator).clawed_back_diamonds
        assert net == coins * rate.numerator // rate.denominator, creator
        carry = payouts.store.state.carries.get((creator, rate.version), 0)
        assert carry == (coins * rate.numerator) % rate.denominator or not rate.carries_fractions, creator


async def test_a_withdrawal_not_yet_submitted_fails_when_a_chargeback_left_its_creator_in_debt() -> None:
    payouts = await Payouts().start()
    await payouts.gifts("amy", 3000)
    await payouts.verified("amy")
    withdrawal = await payouts.withdraw("amy", 2000)  # reserved; the worker has not submitted it yet
    await reverse(payouts, ("gtx_0", 3000))  # 1000 available taken, 2000 into debt
    assert await payouts.worker.process_due_withdrawals() == 1
    assert payouts.provider.submitted == []  # never reached the payout provider
    stored = payouts.store.state.withdrawals[withdrawal.withdrawal_id].withdrawal
    assert stored.status is domain.WithdrawalStatus.FAILED and "clawed back" in stored.failure_reason
    assert earnings(payouts, "amy") == (0, 0, 0, 3000)  # its diamonds came back and repaid the debt
    assert_ledger_agrees(payouts.store)


async def test_a_withdrawal_not_yet_submitted_fails_when_the_account_is_frozen() -> None:
    payouts = await Payouts().start()
    await payouts.gifts("amy", 3000)
    await payouts.verified("amy")
    withdrawal = await payouts.withdraw("amy", 2000)
    await WalletEvents(payouts.store).account_status_changed("s1", "amy", frozen=True, version=1)
    await payouts.worker.process_due_withdrawals()
    stored = payouts.store.state.withdrawals[withdrawal.withdrawal_id].withdrawal
    assert stored.status is domain.WithdrawalStatus.FAILED and "frozen" in stored.failure_reason
    assert earnings(payouts, "amy") == (3000, 0, 0, 0)
