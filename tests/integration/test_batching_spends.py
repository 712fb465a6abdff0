"""SpendCoinsBatch against the real wallet: per-spend outcomes (fresh, refused, replayed, reused, one account several
times), the batch and single spends replaying each other, limits and frozen accounts decided within the batch, a bad
batch refused whole. Afterwards, every balance and history is exact."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import grpc
from coinstream.wallet.v1 import wallet_pb2 as w

from tests.support.clients import ADMIN, SERVICE, Clients, auth, new_id, stored_key
from tests.support.errors import expect_error, violated_fields
from tests.support.factories import balance_of, buy, create_account, transactions, wallet_balance
from tests.support.stack import Stack

# ---------------------------------------------------------------- helpers


def spend(account_id: str, coins: int, request_id: str | None = None) -> w.SpendCoinsRequest:
    return w.SpendCoinsRequest(
        request_id=request_id or new_id("spend"), account_id=account_id, coins=coins, reference="test:batch"
    )


async def spend_batch(clients: Clients, spends: Sequence[w.SpendCoinsRequest]) -> list[w.SpendCoinsOutcome]:
    reply = await clients.wallet.SpendCoinsBatch(w.SpendCoinsBatchRequest(spends=spends), metadata=SERVICE)
    assert len(reply.outcomes) == len(spends)
    return list(reply.outcomes)


def refusal(outcome: w.SpendCoinsOutcome) -> tuple[str, str]:
    assert outcome.WhichOneof("outcome") == "refused", outcome
    return outcome.refused.code, outcome.refused.reason


def spent(outcome: w.SpendCoinsOutcome) -> w.SpendCoinsResponse:
    assert outcome.WhichOneof("outcome") == "spent", outcome
    return outcome.spent


# ---------------------------------------------------------------- SpendCoinsBatch


async def test_a_batch_mixes_fresh_refused_replayed_and_reused_spends(clients: Clients) -> None:
    rich = await create_account(clients)
    await buy(clients, rich, "coins_1321")  # 1,321 paid + 66 bonus
    poor = await create_account(clients)
    await buy(clients, poor, "coins_65")
    regular = await create_account(clients)
    await buy(clients, regular, "coins_330")
    bystander = await create_account(clients)
    await buy(clients, bystander, "coins_65")
    unknown = new_id("nobody")
    # Two spends made before the batch, one alone and one in a batch of its own.
    earlier = spend(regular, 30)
    earlier_reply = await clients.wallet.SpendCoins(earlier, metadata=SERVICE)
    reused = spend(regular, 10)
    [reused_outcome] = await spend_batch(clients, [reused])
    assert spent(reused_outcome).balance == balance_of(regular, 290)

    batch = [
        spend(rich, 50),  # 0: all bonus
        spend(poor, 100),  # 1: 65 coins: refused
        earlier,  # 2: a replay
        spend(rich, 1000),  # 3: the last 16 bonus coins, then paid
        spend(unknown, 1),  # 4: no such account
        spend(regular, 11, request_id=reused.request_id),  # 5: a used request_id, other coins
        spend(rich, 400),  # 6: 337 left: refused
        spend(poor, 60),  # 7: still possible after the refusal above
        spend(rich, 300),  # 8: smaller, still possible
        spend(regular, 50),  # 9
    ]
    outcomes = await spend_batch(clients, batch)

    assert [o.WhichOneof("outcome") for o in outcomes] == [
        "spent",
        "refused",
        "spent",
        "spent",
        "refused",
        "refused",
        "refused",
        "spent",
        "spent",
        "spent",
    ]
    rich_spends = [spent(outcomes[i]) for i in (0, 3, 8)]
    assert [(s.paid_coins, s.bonus_coins) for s in rich_spends] == [(0, 50), (984, 16), (300, 0)]
    assert [s.balance for s in rich_spends] == [balance_of(rich, 1321, 16), balance_of(rich, 337), balance_of(rich, 37)]
    assert refusal(outcomes[6]) == ("FAILED_PRECONDITION", "INSUFFICIENT_COINS")
    assert "337" in outcomes[6].refused.message
    assert refusal(outcomes[1]) == ("FAILED_PRECONDITION", "INSUFFICIENT_COINS")
    assert spent(outcomes[7]).balance == balance_of(poor, 5)
    assert spent(outcomes[2]) == earlier_reply  # the stored outcome: same transaction, same balance then
    assert refusal(outcomes[4]) == ("FAILED_PRECONDITION", "ACCOUNT_NOT_ELIGIBLE")
    assert refusal(outcomes[5]) == ("ALREADY_EXISTS", "REQUEST_ID_REUSED")
    assert spent(outcomes[9]).balance == balance_of(regular, 240)
    fresh_ids = [spent(outcomes[i]).transaction_id for i in (0, 3, 7, 8, 9)]
    assert len(set(fresh_ids)) == 5 and earlier_reply.transaction_id not in fresh_ids

    # The ledger agrees, movement by movement; nothing else moved.
    assert await wallet_balance(clients, rich) == balance_of(rich, 37)
    assert await wallet_balance(clients, poor) == balance_of(poor, 5)
    assert await wallet_balance(clients, regular) == balance_of(regular, 240)
    assert await wallet_balance(clients, bystander) == balance_of(bystander, 65)
    assert await wallet_balance(clients, unknown) == balance_of(unknown, 0)
    history = await transactions(clients, rich)
    assert [(t.transaction_id, t.coins_delta, t.paid_coins_delta, t.bonus_coins_delta) for t in history[:3]] == [
        (rich_spends[2].transaction_id, -300, -300, 0),
        (rich_spends[1].transaction_id, -1000, -984, -16),
        (rich_spends[0].transaction_id, -50, 0, -50),
    ]
    assert [t.balance_after for t in history] == [37, 337, 1337, 1387]
    assert [t.kind for t in history] == [w.TRANSACTION_KIND_SPEND] * 3 + [w.TRANSACTION_KIND_PURCHASE]
    assert [t.coins_delta for t in await transactions(clients, poor)] == [-60, 65]
    assert [t.coins_delta for t in await transactions(clients, regular)] == [-50, -10, -30, 330]
    assert await transactions(clients, unknown) == []

    # The whole batch again: every outcome replayed, refusals included, and nothing moves.
    assert await spend_batch(clients, batch) == outcomes
    assert await wallet_balance(clients, rich) == balance_of(rich, 37)
    assert await wallet_balance(clients, poor) == balance_of(poor, 5)
    assert await wallet_balance(clients, regular) == balance_of(regular, 240)


async def test_the_spends_of_a_batch_and_single_spends_replay_each_other(clients: Clients) -> None:
    account_id = await create_account(clients)
    await buy(clients, account_id, "coins_330")
    single = spend(account_id, 20)
    in_batch = spend(account_id, 30)
    single_reply = await clients.wallet.SpendCoins(single, metadata=SERVICE)
    [batched] = await spend_batch(clients, [in_batch])
    assert await clients.wallet.SpendCoins(in_batch, metadata=SERVICE) == spent(batched)
    assert [spent(o) for o in await spend_batch(clients, [single, in_batch])] == [single_reply, spent(batched)]
    assert await wallet_balance(clients, account_id) == balance_of(account_id, 280)


async def test_the_spending_limit_and_a_frozen_account_are_decided_within_the_batch(clients: Clients) -> None:
    limited = await create_account(clients)
    await buy(clients, limited, "coins_330")
    await clients.wallet.SetSpendingLimit(
        w.SetSpendingLimitRequest(request_id=new_id("limit"), account_id=limited, daily_coins=100),
        metadata=auth(limited),
    )  # lowering applies at once
    frozen = await create_account(clients)
    bought = await buy(clients, frozen, "coins_65")
    await clients.wallet.SpendCoins(spend(frozen, 60), metadata=SERVICE)
    await clients.wallet.ReversePurchase(
        w.ReversePurchaseRequest(request_id=new_id("rev"), purchase_id=bought.purchase.purchase_id, reason="cb"),
        metadata=ADMIN,
    )  # 60 coins of debt: frozen
    outcomes = await spend_batch(
        clients,
        [spend(limited, 60), spend(frozen, 1), spend(limited, 50), spend(limited, 40), spend(limited, 1)],
    )
    assert spent(outcomes[0]).balance == balance_of(limited, 270)
    assert refusal(outcomes[1]) == ("FAILED_PRECONDITION", "ACCOUNT_FROZEN")
    assert refusal(outcomes[2]) == ("FAILED_PRECONDITION", "SPENDING_LIMIT_REACHED")  # 60 + 50 > 100
    assert spent(outcomes[3]).balance == balance_of(limited, 230)  # exactly 100 in 24 h
    assert refusal(outcomes[4]) == ("FAILED_PRECONDITION", "SPENDING_LIMIT_REACHED")
    assert await wallet_balance(clients, limited) == balance_of(limited, 230)
    assert await wallet_balance(clients, frozen) == balance_of(frozen, -60)


async def test_spend_batch_is_service_only(clients: Clients) -> None:
    account_id = await create_account(clients)
    await buy(clients, account_id, "coins_65")
    request = w.SpendCoinsBatchRequest(spends=[spend(account_id, 5)])
    for metadata in (auth(account_id), auth(account_id, "admin")):
        await expect_error(
            clients.wallet.SpendCoinsBatch(request, metadata=metadata), grpc.StatusCode.PERMISSION_DENIED
        )
    assert await wallet_balance(clients, account_id) == balance_of(account_id, 65)
    # The refused call took no request_id: the service may make the same spend.
    assert spent((await spend_batch(clients, request.spends))[0]).balance == balance_of(account_id, 60)


async def test_a_bad_batch_is_refused_whole_and_changes_nothing(clients: Clients) -> None:
    account_id = await create_account(clients)
    await buy(clients, account_id, "coins_330")
    valid = spend(account_id, 1)

    too_many = [spend(account_id, 1) for _ in range(1001)]
    error = await expect_error(
        clients.wallet.SpendCoinsBatch(w.SpendCoinsBatchRequest(spends=too_many), metadata=SERVICE),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violated_fields(error) == {"spends"}
    error = await expect_error(
        clients.wallet.SpendCoinsBatch(w.SpendCoinsBatchRequest(), metadata=SERVICE), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert violated_fields(error) == {"spends"}

    duplicate = spend(account_id, 2, request_id=valid.request_id)
    bad_fields = w.SpendCoinsRequest(request_id="has space", account_id=account_id, coins=0)
    error = await expect_error(
        clients.wallet.SpendCoinsBatch(
            w.SpendCoinsBatchRequest(spends=[valid, spend(account_id, 3), duplicate, bad_fields]), metadata=SERVICE
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violated_fields(error) == {"spends[2].request_id", "spends[3].request_id", "spends[3].coins"}

    assert await wallet_balance(clients, account_id) == balance_of(account_id, 330)
    assert [t.kind for t in await transactions(clients, account_id)] == [w.TRANSACTION_KIND_PURCHASE]
    # No request_id of the refused batches was taken: the first one goes through now.
    assert spent((await spend_batch(clients, [valid]))[0]).balance == balance_of(account_id, 329)
    assert spent((await spend_batch(clients, too_many[:1]))[0]).balance == balance_of(account_id, 328)


async def test_a_batch_of_a_thousand_bad_spends_gets_its_first_violations(clients: Clients) -> None:
    """Found by the fuzzer (test_fuzz.py): every violation of a thousand bad spends in the status made it too big for
    gRPC's metadata limit, and the caller got RESOURCE_EXHAUSTED from the transport instead of INVALID_ARGUMENT."""
    bad = [w.SpendCoinsRequest(request_id=f"bad id {i}", account_id="bad id", coins=0) for i in range(1000)]
    error = await expect_error(
        clients.wallet.SpendCoinsBatch(w.SpendCoinsBatchRequest(spends=bad), metadata=SERVICE),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    first = {f"spends[{i}].{name}" for i in range(6) for name in ("request_id", "account_id", "coins")}
    assert violated_fields(error) == first | {"spends[6].request_id", "spends[6].account_id"}
    assert (error.details() or "").endswith("; and 2980 more")


async def test_a_spend_reusing_an_expired_request_id_of_another_account_fails_only_itself(
    stack: Stack, clients: Clients
) -> None:
    """The ledger outlives idempotency keys (test_wallet.py): after the key of a spend expired, its request_id is
    still known to the ledger. Reused for another account's spend inside a batch, that one spend must be refused —
    and the other spends of the batch, other callers' in the case of SpendCoins, go through."""
    owner = await create_account(clients)
    await buy(clients, owner, "coins_65")
    other = await create_account(clients)
    await buy(clients, other, "coins_65")
    first = spend(owner, 5)
    await clients.wallet.SpendCoins(first, metadata=SERVICE)
    conn = await asyncpg.connect(stack.database_url("wallet"))
    try:  # what the retention cleanup does after 8 days
        await conn.execute("DELETE FROM idempotency_keys WHERE request_id = $1", stored_key(first.request_id))
    finally:
        await conn.close()

    reused = spend(other, 7, request_id=first.request_id)
    innocent = spend(other, 10)
    outcomes = await spend_batch(clients, [innocent, reused])
    assert outcomes[1].WhichOneof("outcome") == "refused"
    assert spent(outcomes[0]).balance == balance_of(other, 55)
    assert await wallet_balance(clients, owner) == balance_of(owner, 60)
