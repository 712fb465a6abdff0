"""The servicer's shape: every RPC declares who may call it; replies survive being kept as their response message."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TypeVar

from services.runtime.authorization import undeclared_rpcs
from services.wallet import convert, domain
from services.wallet.ports import Reply
from services.wallet.servicer import WalletServicer
from tests.unit.wallet.conftest import Wallet

MOMENT = datetime(2026, 1, 2, 3, 4, 5, 678_901, tzinfo=UTC)


def test_every_rpc_declares_who_may_call_it(wallet: Wallet) -> None:
    assert undeclared_rpcs(WalletServicer(wallet.service)) == []


def test_every_kept_reply_reads_back_as_the_result_it_kept() -> None:
    """A replay decodes the stored response message: it must give back exactly what the first call returned."""
    balance = domain.Balance(paid_coins=-5, bonus_coins=7)
    limit = domain.SpendingLimit(10, 0, MOMENT)
    account = domain.Account("amy", True, "US", domain.AccountStatus.FROZEN, limit)
    promotion = domain.PromotionView("promo_1", "p", MOMENT, None, 5, None, 9, True, 2, ended=True)
    assert kept_and_read(convert.ACCOUNT_UPSERTED, account) == account
    unlimited = domain.Account("bob", False, "FR", domain.AccountStatus.ACTIVE)
    assert kept_and_read(convert.SPENDING_LIMIT_SET, unlimited) == unlimited
    spent = domain.Spent("txn_1", "amy", balance, domain.Split(3, 4))
    assert kept_and_read(convert.SPENT, spent) == spent
    for bought in (
        domain.Bought("pur_1", "amy", "coins_65", 65, 0, None, balance),
        domain.Bought("pur_2", "amy", "coins_1321", 1321, 66, "promo_default", balance),
    ):
        assert kept_and_read(convert.BOUGHT, bought) == bought
    reversed_ = domain.Reversed("txn_2", "amy", balance, domain.AccountStatus.FROZEN)
    assert kept_and_read(convert.REVERSED, reversed_) == reversed_
    giveaway = domain.GiveawayMade("gwy_1", "amy", ("b", "c"), 20, balance)
    assert kept_and_read(convert.GIVEAWAY_MADE, giveaway) == giveaway
    assert kept_and_read(convert.PROMOTION_CREATED, promotion) == promotion
    open_ended = domain.PromotionView("promo_2", "q", MOMENT, MOMENT, 0, 5, None, False, 0, False)
    assert kept_and_read(convert.PROMOTION_ENDED, open_ended) == open_ended


Result = TypeVar("Result")


def kept_and_read(reply: Reply[Result], result: Result) -> Result:
    return reply.from_bytes(reply.to_message(result).SerializeToString())
