"""Funding attribution, with no I/O: which purchases paid for the coins each movement takes, and where a reversed
purchase's coins went.

Every coin a user holds sits in a **lot**: so many coins of one bucket (paid or bonus) of one holder, from one
purchase (None: coins held before attribution began, migration 0005). A purchase makes a paid lot and, with a
promotion, a bonus lot; a giveaway moves coins out of the creator's lots into new lots of the winners that keep
their purchases. Whatever takes coins out of a bucket draws its lots oldest first (first in, first out) and records
each draw: a **funding** row, append-only, naming the purchase, the coins and what they were used for.

So for every purchase: its coins = the coins its lots still hold + its funding rows, giveaway transfers aside (their
coins live on in the winners' lots). That is what a reversal reads: the purchase's unspent coins (its lots, wherever
they are) are removed first; the rest were used, and each use is traced, newest first: a gift's coins are clawed back
from the creator who earned them; any other use (a plain spend, covering debt) is charged to the buyer, as are coins
used before attribution began. A bucket's lots always hold max(balance, 0) coins: a bucket in debt has none."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import structlog

from services.runtime import limits
from services.runtime.ledger import balanced
from services.wallet.domain import (
    SYSTEM_PROMOTIONS,
    SYSTEM_SALES,
    SYSTEM_SPENT,
    Balance,
    Draw,
    Lot,
    NewLot,
    Postings,
    Split,
    bonus_bucket,
    is_bonus_bucket,
    paid_bucket,
)

log = structlog.get_logger()


def gift_of(reference: str) -> str | None:
    """The gift a spend paid for (gifts spend with the reference "gift:<gift_transaction_id>"), else None."""
    prefix = limits.GIFT_SPEND_PREFIX
    return reference[len(prefix) :] if reference.startswith(prefix) else None


def draw(lots: Sequence[Lot], coins: int) -> tuple[list[Draw], list[Lot]]:
    """Takes coins from the lots in the order given (oldest first), as far as they go. Returns the draws and the
    lots left (emptied ones dropped)."""
    draws: list[Draw] = []
    left: list[Lot] = []
    wanted = coins
    for lot in lots:
        taken = min(lot.coins, wanted)
        if taken:
            assert lot.lot_id is not None, "only stored lots are drawn"
            draws.append(Draw(lot.lot_id, lot.ledger_account_id, lot.purchase_id, taken))
            wanted -= taken
        if lot.coins > taken:
            left.append(replace(lot, coins=lot.coins - taken))
    return draws, left


class Holdings:
    """One account's lots, oldest first per bucket: what its spends and giveaways draw from, in order."""

    def __init__(self, account_id: str, lots: Iterable[Lot]) -> None:
        self.account_id = account_id
        mine = sorted(lots, key=lambda lot: lot.lot_id or 0)
        self._paid = [lot for lot in mine if lot.ledger_account_id == paid_bucket(account_id)]
        self._bonus = [lot for lot in mine if lot.ledger_account_id == bonus_bucket(account_id)]

    def take(self, split: Split) -> list[Draw]:
        """The lots behind a debit of split (bonus coins from bonus lots, paid from paid). Every coin of a
        non-negative bucket is in a lot, so an authorized debit finds them all; should lots ever be short (a bug, or
        coins written past the wallet), the rest is drawn from no lot and no purchase rather than refusing the spend,
        and reconcile reports the bucket (wallet_funding)."""
        draws: list[Draw] = []
        for bucket, wanted in (
            (bonus_bucket(self.account_id), split.bonus_coins),
            (paid_bucket(self.account_id), split.paid_coins),
        ):
            found = self._draw(bucket, wanted)
            short = wanted - sum(d.coins for d in found)
            if short:
                log.warning("funding_lots_short", ledger_account_id=bucket, coins=short)
                found.append(Draw(None, bucket, None, short))
            draws += found
        return draws

    def _draw(self, bucket: str, coins: int) -> list[Draw]:
        if is_bonus_bucket(bucket):
            found, self._bonus = draw(self._bonus, coins)
        else:
            found, self._paid = draw(self._paid, coins)
        return found

    def take_as_far_as_they_go(self, split: Split) -> list[Draw]:
        """For a charge that may leave the bucket in debt: what the lots hold, no more."""
        return self._draw(bonus_bucket(self.account_id), split.bonus_coins) + self._draw(
            paid_bucket(self.account_id), split.paid_coins
        )


def winner_lots(draws: Sequence[Draw], winner_ids: Sequence[str], shares: Sequence[Split]) -> list[NewLot]:
    """A giveaway's coins keep their purchases: the creator's draws (bonus draws first, as domain.giveaway_shares
    deals bonus coins first) are dealt out to the winners in order, each draw split where a share ends."""
    pieces = [d for d in draws if is_bonus_bucket(d.ledger_account_id)] + [
        d for d in draws if not is_bonus_bucket(d.ledger_account_id)
    ]
    lots: list[NewLot] = []
    position, used = 0, 0  # the draw being dealt, and how much of it is dealt already
    for winner_id, share in zip(winner_ids, shares, strict=True):
        for bucket, wanted in (
            (bonus_bucket(winner_id), share.bonus_coins),
            (paid_bucket(winner_id), share.paid_coins),
        ):
            while wanted:
                piece = pieces[position]
                dealt = min(piece.coins - used, wanted)
                lots.append(NewLot(bucket, piece.purchase_id, dealt))
                wanted -= dealt
                used += dealt
                if used == piece.coins:
                    position, used = position + 1, 0
    assert sum(lot.coins for lot in lots) == sum(d.coins for d in draws), "a giveaway deals out exactly its coins"
    return _merged(lots)


def _merged(lots: list[NewLot]) -> list[NewLot]:
    """Adjacent pieces of the same purchase in the same bucket as one lot."""
    merged: list[NewLot] = []
    for lot in lots:
        last = merged[-1] if merged else None
        if last and (last.ledger_account_id, last.purchase_id) == (lot.ledger_account_id, lot.purchase_id):
            merged[-1] = replace(last, coins=last.coins + lot.coins)
        else:
            merged.append(lot)
    return merged


def purchase_lots(
    account_id: str, purchase_id: str, coins: int, bonus_coins: int, paid_before: int
) -> tuple[list[NewLot], int]:
    """A completed purchase's lots, and the coins of it that repay a debt first (paid_before < 0): those never reach
    a lot (a bucket in debt holds none)."""
    repaid = min(coins, max(-paid_before, 0))
    lots = [
        NewLot(paid_bucket(account_id), purchase_id, coins - repaid),
        NewLot(bonus_bucket(account_id), purchase_id, bonus_coins),
    ]
    return [lot for lot in lots if lot.coins], repaid


# --- reversals ----------------------------------------------------------------------------------------------------


def reversed_bonus(purchase_coins: int, purchase_bonus: int, reversed_before: int, coins: int) -> int:
    """The bonus that goes with reversing `coins` more of a purchase's paid coins: in proportion, rounded down on the
    running total, so a purchase reversed in parts gives back exactly its whole bonus once all of it is reversed."""
    total_after = purchase_bonus * (reversed_before + coins) // purchase_coins
    return total_after - purchase_bonus * reversed_before // purchase_coins


@dataclass(frozen=True)
class EarlierUse:
    """A funding row of the purchase being reversed, with what of it earlier reversals left."""

    funding_id: int
    ledger_account_id: str  # whose bucket the coins were used from
    coins_left: int
    gift_transaction_id: str | None  # the gift a spend paid for (None: any other use)


@dataclass(frozen=True)
class Allocation:
    """Coins of a reversal traced to one earlier use of the purchase's coins."""

    funding_id: int
    coins: int
    gift_transaction_id: str | None  # set: these coins' diamonds are clawed back from the gift's creator


@dataclass(frozen=True)
class ReversalPlan:
    """Where the reversed coins come from: removed from lots (unspent), clawed back from gifts, or charged to the
    buyer (any other use, and coins that cannot be traced)."""

    removed: list[Draw]
    allocations: list[Allocation]
    charged: Split  # taken from the buyer's buckets (the paid bucket may go into debt)

    @property
    def clawed_back_coins(self) -> int:
        return sum(a.coins for a in self.allocations if a.gift_transaction_id is not None)

    def gifts(self) -> dict[str, int]:
        """Clawed-back coins per gift, in allocation order."""
        per_gift: dict[str, int] = defaultdict(int)
        for allocation in self.allocations:
            if allocation.gift_transaction_id is not None:
                per_gift[allocation.gift_transaction_id] += allocation.coins
        return dict(per_gift)

    @property
    def coins(self) -> int:
        return sum(d.coins for d in self.removed) + self.clawed_back_coins + self.charged.coins


def charge_split(charged: Split, balance: Balance) -> Split:
    """What a charge takes from each of the buyer's buckets: its bonus coins from the bonus bucket as far as it goes
    (a bonus bucket never goes negative), everything else from the paid bucket, which may go into debt."""
    bonus = min(charged.bonus_coins, max(balance.bonus_coins, 0))
    return Split(paid_coins=charged.coins - bonus, bonus_coins=bonus)


def plan_reversal(
    buyer_id: str,
    reversing: Split,
    lots: Sequence[Lot],
    uses: Sequence[EarlierUse],
) -> ReversalPlan:
    """Reversing paid and bonus coins of a purchase: each bucket's coins come first from the purchase's lots (the
    buyer's first, then other holders', oldest first), then from its uses, newest first (a partial reversal takes
    back the latest gifts, those most likely still in the creator's hold). A gift's coins are clawed back from its
    creator (payouts, from the event); any other use, and coins found nowhere, are charged to the buyer."""
    removed: list[Draw] = []
    allocations: list[Allocation] = []
    charged = {False: 0, True: 0}  # by bucket: is it the bonus one
    for bonus, wanted in ((True, reversing.bonus_coins), (False, reversing.paid_coins)):
        mine = [lot for lot in lots if is_bonus_bucket(lot.ledger_account_id) == bonus]
        ordered = sorted(mine, key=lambda lot: (lot.holder != buyer_id, lot.lot_id or 0))
        draws, _ = draw(ordered, wanted)
        removed += draws
        wanted -= sum(d.coins for d in draws)
        for use in sorted(uses, key=lambda u: -u.funding_id):
            if not wanted:
                break
            if is_bonus_bucket(use.ledger_account_id) != bonus or not use.coins_left:
                continue
            taken = min(use.coins_left, wanted)
            gift = use.gift_transaction_id
            allocations.append(Allocation(use.funding_id, taken, gift))
            if gift is None:
                charged[bonus] += taken
            wanted -= taken
        charged[bonus] += wanted  # not traced: coins used before attribution began
    return ReversalPlan(removed, allocations, Split(paid_coins=charged[False], bonus_coins=charged[True]))


def after_draws(lots: Sequence[Lot], draws: Sequence[Draw]) -> list[Lot]:
    """The lots with the draws taken out (emptied ones dropped)."""
    drawn: dict[int | None, int] = defaultdict(int)
    for d in draws:
        drawn[d.lot_id] += d.coins
    left = [replace(lot, coins=lot.coins - drawn[lot.lot_id]) for lot in lots]
    return [lot for lot in left if lot.coins]


def after_removal(buyer_id: str, balance: Balance, removed: Sequence[Draw]) -> Balance:
    """The buyer's balance once a reversal removed its unspent coins (of the draws, those in the buyer's buckets)."""
    paid = sum(d.coins for d in removed if d.ledger_account_id == paid_bucket(buyer_id))
    bonus = sum(d.coins for d in removed if d.ledger_account_id == bonus_bucket(buyer_id))
    return Balance(balance.paid_coins - paid, balance.bonus_coins - bonus)


def reversal_postings(buyer_id: str, reversing: Split, plan: ReversalPlan, charge: Split) -> Postings:
    """The purchase's coins go back to where they were issued from (sales, promotions); they come from the lots
    they were still in, from the buyer's buckets (the charge), and from the coins spent on the gifts traced (their
    diamonds are clawed back in payouts)."""
    legs: dict[str, int] = defaultdict(int)
    for d in plan.removed:
        legs[d.ledger_account_id] -= d.coins
    legs[paid_bucket(buyer_id)] -= charge.paid_coins
    legs[bonus_bucket(buyer_id)] -= charge.bonus_coins
    legs[SYSTEM_SPENT] -= plan.clawed_back_coins
    legs[SYSTEM_SALES] += reversing.paid_coins
    legs[SYSTEM_PROMOTIONS] += reversing.bonus_coins
    return balanced(legs.items())
