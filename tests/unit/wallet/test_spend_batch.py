"""SpendCoinsBatch: one transaction, one outcome per spend, each decided as if made alone after the ones before."""

from __future__ import annotations

import grpc
import pytest

from services.runtime.errors import AppError
from services.wallet import domain
from tests.fakes.wallet import FakeTransaction
from tests.unit.wallet.conftest import Wallet, refusal, spend_ask


def reasons(outcomes: list[domain.Spent | AppError]) -> list[str]:
    return [outcome.reason if isinstance(outcome, AppError) else "spent" for outcome in outcomes]


async def test_each_spend_of_a_batch_has_its_own_outcome(wallet: Wallet) -> None:
    fan, other, minor = (
        await wallet.open_account(),
        await wallet.open_account(),
        await wallet.open_account(adult_verified=False),
    )
    await wallet.buy(fan, "coins_65")
    await wallet.buy(other, "coins_65")
    before = wallet.store.transactions_run

    outcomes = await wallet.service.spend_batch(
        [
            spend_ask(fan, 40),
            spend_ask(fan, 30),  # only 25 left after the first: refused, and leaves them for the next
            spend_ask(other, 65),
            spend_ask(minor, 1),
            spend_ask(fan, 25),
        ]
    )

    assert reasons(outcomes) == ["spent", "INSUFFICIENT_COINS", "spent", "ACCOUNT_NOT_ELIGIBLE", "spent"]
    assert wallet.store.transactions_run - before == 1
    spent = [outcome for outcome in outcomes if isinstance(outcome, domain.Spent)]
    assert [s.balance.coins for s in spent] == [25, 0, 0]
    assert await wallet.balance(fan) == await wallet.balance(other) == domain.Balance()


async def test_a_batch_replayed_gets_the_same_outcomes_and_moves_nothing(wallet: Wallet) -> None:
    fan = await wallet.open_account()
    await wallet.buy(fan, "coins_65")
    asks = [spend_ask(fan, 60, "g1"), spend_ask(fan, 10, "g2")]
    first = await wallet.service.spend_batch(asks)
    postings = len(wallet.store.state.postings)

    again = await wallet.service.spend_batch([spend_ask(fan, 60, "g1"), spend_ask(fan, 10, "g2"), spend_ask(fan, 5)])

    assert again[:2] == first
    assert reasons(again) == ["spent", "INSUFFICIENT_COINS", "spent"]
    assert len(wallet.store.state.postings) == postings + 2  # only the new spend (one paid leg, one system leg)
    assert await wallet.balance(fan) == domain.Balance()


async def test_a_reused_request_id_is_refused_alone(wallet: Wallet) -> None:
    fan = await wallet.open_account()
    await wallet.buy(fan, "coins_65")
    await wallet.spend(fan, 5, "g1")

    outcomes = await wallet.service.spend_batch([spend_ask(fan, 6, "g1"), spend_ask(fan, 7, "g2")])

    assert reasons(outcomes) == ["REQUEST_ID_REUSED", "spent"]
    assert await wallet.balance(fan) == domain.Balance(53, 0)


async def test_an_unexpected_failure_rolls_the_whole_batch_back_keys_included(
    wallet: Wallet, monkeypatch: pytest.MonkeyPatch
) -> None:
    fan = await wallet.open_account()
    await wallet.buy(fan, "coins_65")

    async def broken(*args: object) -> None:
        raise ConnectionResetError("the database went away")

    with monkeypatch.context() as patch:
        patch.setattr(FakeTransaction, "record_spends", broken)
        with pytest.raises(ConnectionResetError):
            await wallet.service.spend_batch([spend_ask(fan, 5, "g1"), spend_ask(fan, 500, "g2")])

    assert "g1" not in wallet.store.state.keys and "g2" not in wallet.store.state.keys
    outcomes = await wallet.service.spend_batch([spend_ask(fan, 5, "g1"), spend_ask(fan, 500, "g2")])
    assert reasons(outcomes) == ["spent", "INSUFFICIENT_COINS"]


async def test_a_refusal_kept_by_a_batch_is_what_a_single_spend_gets(wallet: Wallet) -> None:
    fan = await wallet.open_account()
    [outcome] = await wallet.service.spend_batch([spend_ask(fan, 5, "g1")])
    assert isinstance(outcome, AppError) and outcome.code == grpc.StatusCode.FAILED_PRECONDITION

    assert (await refusal(wallet.spend(fan, 5, "g1"))).reason == outcome.reason == "INSUFFICIENT_COINS"
