"""Many concurrent SendGift calls joining batches against the real stack, and a kill -9 in the middle of a batch of
gifts (finished by retries or by the recovery pass). Afterwards, every balance, combo, counter and settlement is
exact."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence

import asyncpg
import grpc
import pytest
from coinstream.events.v1 import events_pb2
from coinstream.gifts.v1 import gifts_pb2
from coinstream.wallet.v1 import wallet_pb2 as w

from services.runtime.config import RuntimeSettings
from services.runtime.messaging import GIFT_SENT_BATCH_SUBJECT
from tests.support.clients import SERVICE, Clients, new_id, stored_key
from tests.support.crashes import CONNECTION_LOST, gifts_crashing_at, restart_after_crash, retry
from tests.support.errors import error_reason
from tests.support.events import messages_on
from tests.support.factories import balance_of, buy, create_account, transactions, wallet_balance
from tests.support.gifts import end_stream, gift_request, go_live, summary_of
from tests.support.payouts import earnings, eventually
from tests.support.stack import Stack

GIFT_PRICES = {"rose": 1, "finger_heart": 5, "doughnut": 30, "hand_hearts": 100}
SETTLEMENT_SECONDS = 30.0


# ---------------------------------------------------------------- helpers


async def send_all(clients: Clients, requests: Sequence[gifts_pb2.SendGiftRequest]) -> list[object]:
    """Every request in flight at once; each call's response or its error."""
    return await asyncio.gather(
        *(clients.gifts.SendGift(request, metadata=SERVICE, timeout=30) for request in requests),
        return_exceptions=True,
    )


def split(results: list[object], groups: Sequence[Sequence[object]]) -> list[list[object]]:
    """The results of concatenated groups of requests, group by group."""
    parts, start = [], 0
    for group in groups:
        parts.append(results[start : start + len(group)])
        start += len(group)
    return parts


def gift_refusal(result: object) -> tuple[grpc.StatusCode, str | None]:
    assert isinstance(result, grpc.aio.AioRpcError), result
    return result.code(), error_reason(result)


def assert_combos_count_one_to_n(replies: Sequence[gifts_pb2.SendGiftResponse]) -> None:
    """Per (sender, gift, stream) the combo counts of its completed gifts are 1..n: none twice, none skipped."""
    counts: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for reply in replies:
        counts[(reply.gift.sender_id, reply.gift.gift_id, reply.gift.stream_id)].append(reply.gift.combo_count)
    for key, found in counts.items():
        assert sorted(found) == list(range(1, len(found) + 1)), key


async def fetch(stack: Stack, service: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(stack.database_url(service))
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def assert_settled_once(
    stack: Stack, clients: Clients, creator_id: str, replies: Sequence[gifts_pb2.SendGiftResponse]
) -> None:
    """Each completed gift credited to its creator exactly once (diamond_credits is keyed by gift), nothing else."""
    expected = {reply.gift.gift_transaction_id: reply.gift.coins for reply in replies}
    sql = "SELECT gift_transaction_id, coins, diamonds FROM diamond_credits WHERE creator_id = $1"
    credits = await eventually(
        lambda: fetch(stack, "payouts", sql, creator_id), lambda rows: len(rows) >= len(expected), SETTLEMENT_SECONDS
    )
    assert {row["gift_transaction_id"]: row["coins"] for row in credits} == expected
    lifetime = sum(row["diamonds"] for row in credits)
    found = await eventually(
        lambda: earnings(clients, creator_id), lambda e: e.lifetime_diamonds >= lifetime, SETTLEMENT_SECONDS
    )
    assert found.lifetime_diamonds == lifetime


# ---------------------------------------------------------------- many concurrent SendGift calls


async def test_many_concurrent_gifts_each_get_their_own_outcome(stack: Stack, clients: Clients) -> None:
    stream = await go_live(clients)
    ended = await go_live(clients)
    await end_stream(clients, ended.stream_id)
    combo_fan = await create_account(clients, prefix="combo")
    await buy(clients, combo_fan, "coins_3303")  # 3,303 paid + 165 bonus
    short_fan = await create_account(clients, prefix="short")
    await buy(clients, short_fan, "coins_330")  # 11 doughnuts
    broke_fan = await create_account(clients, prefix="broke")
    fans = [await create_account(clients, prefix="fan") for _ in range(10)]
    await asyncio.gather(*(buy(clients, fan, "coins_65") for fan in fans))

    combo = [gift_request(combo_fan, stream.stream_id, "doughnut") for _ in range(70)]
    short = [gift_request(short_fan, stream.stream_id, "doughnut") for _ in range(20)]
    broke = [gift_request(broke_fan, stream.stream_id, "rose") for _ in range(10)]
    fan_gifts = [gift_request(fan, stream.stream_id, "finger_heart") for fan in fans for _ in range(5)]
    to_ended = [gift_request(fan, ended.stream_id, "rose") for fan in fans]
    replays = fan_gifts[::3] + combo[::5]  # the same requests again, in flight at the same time
    groups = [combo, short, broke, fan_gifts, to_ended, replays]
    requests = [request for group in groups for request in group]
    # 191 calls at once. The suite's admission budget (tests/support/stack.py) is far above the time they queue, so
    # none is shed: every call gets the outcome of its own gift.
    outcomes = await send_all(clients, requests)
    combo_results, short_results, broke_results, fan_results, ended_results, replay_results = split(outcomes, groups)

    def replies(found: list[object]) -> list[gifts_pb2.SendGiftResponse]:
        assert all(isinstance(f, gifts_pb2.SendGiftResponse) for f in found), [
            f for f in found if not isinstance(f, gifts_pb2.SendGiftResponse)
        ]
        return [f for f in found if isinstance(f, gifts_pb2.SendGiftResponse)]

    assert not [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError) and error_reason(o) == "RATE_LIMITED"]
    combo_replies, fan_replies = replies(combo_results), replies(fan_results)
    short_replies = [r for r in short_results if isinstance(r, gifts_pb2.SendGiftResponse)]
    assert len(short_replies) == 11
    refused = [r for r in short_results if not isinstance(r, gifts_pb2.SendGiftResponse)] + broke_results
    assert [gift_refusal(r) for r in refused] == [(grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_COINS")] * 19
    assert [gift_refusal(r) for r in ended_results] == [(grpc.StatusCode.FAILED_PRECONDITION, "STREAM_NOT_LIVE")] * 10

    # Replays sent concurrently with their originals, and once more afterwards: the very same outcome, one gift each.
    originals = [outcomes[requests.index(r)] for r in replays]
    assert replay_results == originals
    assert await send_all(clients, replays) == originals
    completed = combo_replies + short_replies + fan_replies
    assert len({reply.gift.gift_transaction_id for reply in completed}) == 70 + 11 + 50

    # Each sender charged exactly for its completed gifts, the spends decided one after the other.
    assert await wallet_balance(clients, combo_fan) == balance_of(combo_fan, 1368)  # 3,468 - 70 × 30, bonus first
    assert sorted(r.sender_balance_coins for r in combo_replies) == list(range(1368, 3468, 30))
    assert sorted(r.sender_balance_coins for r in short_replies) == list(range(0, 330, 30))
    assert [await wallet_balance(clients, account) for account in (short_fan, broke_fan)] == [
        balance_of(short_fan, 0),
        balance_of(broke_fan, 0),
    ]
    assert [(await wallet_balance(clients, fan)).coins for fan in fans] == [40] * 10
    spends = [t for t in await transactions(clients, combo_fan) if t.kind == w.TRANSACTION_KIND_SPEND]
    assert len(spends) == 70 and {t.coins_delta for t in spends} == {-30}
    assert sum(t.bonus_coins_delta for t in spends) == -165

    assert_combos_count_one_to_n(completed)
    assert sorted(r.gift.combo_count for r in combo_replies) == list(range(1, 71))
    summary = await summary_of(clients, stream.stream_id)
    total = sum(reply.gift.coins for reply in completed)
    assert (summary.total_coins, summary.gift_count) == (total, 131) == (2100 + 330 + 250, 131)
    assert (summary.top_gifters[0].account_id, summary.top_gifters[0].coins) == (combo_fan, 2100)
    assert (await summary_of(clients, ended.stream_id)).gift_count == 0
    statuses = await fetch(
        stack,
        "gifts",
        "SELECT status, count(*) AS gifts FROM gift_transactions WHERE stream_id = ANY($1::text[]) GROUP BY status",
        [stream.stream_id, ended.stream_id],
    )
    assert {row["status"]: row["gifts"] for row in statuses} == {"completed": 131, "failed": 19}
    # The gifts of one batch share their intent transaction's timestamp: the calls were taken many at a time.
    [intents] = await fetch(
        stack,
        "gifts",
        "SELECT count(DISTINCT created_at) AS batches, max(n) AS largest FROM ("
        " SELECT created_at, count(*) OVER (PARTITION BY created_at) AS n FROM gift_transactions WHERE stream_id = $1"
        ") AS g",
        stream.stream_id,
    )
    assert intents["largest"] > 1 and intents["batches"] < 150

    await assert_settled_once(stack, clients, stream.creator_id, completed)


async def test_concurrent_gifts_reusing_a_request_id_for_another_gift_get_one_gift(clients: Clients) -> None:
    stream = await go_live(clients)
    sender = await create_account(clients, prefix="fan")
    await buy(clients, sender, "coins_330")
    firsts = [gift_request(sender, stream.stream_id, "rose") for _ in range(20)]
    seconds = [gift_request(sender, stream.stream_id, "rose", 2, request_id=r.request_id) for r in firsts]
    # Each pair in flight at once: in one batch or in two, one gift is sent and the other call is refused.
    results = await send_all(clients, [request for pair in zip(firsts, seconds, strict=True) for request in pair])
    charged = 0
    for index, pair in enumerate(zip(results[::2], results[1::2], strict=True)):
        sent = [r for r in pair if isinstance(r, gifts_pb2.SendGiftResponse)]
        assert len(sent) == 1, pair
        [other] = [r for r in pair if r is not sent[0]]
        assert gift_refusal(other) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
        winner = firsts[index] if pair[0] is sent[0] else seconds[index]
        assert sent[0].gift.quantity == winner.quantity
        assert await retry(clients, winner) == sent[0]
        charged += sent[0].gift.coins
    assert await wallet_balance(clients, sender) == balance_of(sender, 330 - charged)
    summary = await summary_of(clients, stream.stream_id)
    assert (summary.total_coins, summary.gift_count) == (charged, 20)


# ---------------------------------------------------------------- a crash in the middle of a batch


async def funded_senders(clients: Clients, count: int) -> list[str]:
    senders = [await create_account(clients, prefix="fan") for _ in range(count)]
    await asyncio.gather(*(buy(clients, sender, "coins_330") for sender in senders))
    return senders


def crash_batch(senders: list[str], stream_id: str) -> list[gifts_pb2.SendGiftRequest]:
    """~20 gifts from several senders: combos of one gift, and one sender mixing two gifts."""
    plan = [("doughnut", 5), ("rose", 5), ("finger_heart", 3), ("doughnut", 2), ("hand_hearts", 2), ("doughnut", 3)]
    owners = [senders[0], senders[1], senders[2], senders[2], senders[3], senders[4]]
    return [
        gift_request(sender, stream_id, gift_id)
        for sender, (gift_id, count) in zip(owners, plan, strict=True)
        for _ in range(count)
    ]


def coins_by_sender(requests: Sequence[gifts_pb2.SendGiftRequest]) -> dict[str, int]:
    coins: dict[str, int] = defaultdict(int)
    for request in requests:
        coins[request.sender_id] += GIFT_PRICES[request.gift_id] * request.quantity
    return coins


async def lock_waiters(stack: Stack) -> list[int]:
    """The gifts database's backends waiting for a lock."""
    rows = await fetch(
        stack,
        "gifts",
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    return [row["pid"] for row in rows]


async def send_as_one_batch(
    stack: Stack, clients: Clients, requests: Sequence[gifts_pb2.SendGiftRequest]
) -> list[object]:
    """Sends the requests so that gifts takes them as one batch, and returns each call's result.

    Calls arriving at an idle gifts service start batches at once (the first one alone), so first every batch slot
    open to a shallow queue is taken by a call that blocks on a lock this test holds: an uncommitted idempotency key
    of its request_id. The requests then queue. Cancelling one blocked statement fails that call's batch, and its
    slot takes the whole queue as its next batch. The blocking calls are never recorded: their keys go with the
    connections."""
    env, defaults = stack.service_env("gifts"), RuntimeSettings.model_fields
    in_flight = int(env.get("COINSTREAM_BATCH_MAX_IN_FLIGHT", defaults["batch_max_in_flight"].default))
    min_queue = int(env.get("COINSTREAM_BATCH_CONCURRENT_MIN_QUEUE", defaults["batch_concurrent_min_queue"].default))
    # A batch beside a running one starts only for a deep queue: below it, one slot takes everything.
    assert min_queue <= 1 or len(requests) < min_queue, "that many requests would start a second batch"
    slots = in_flight if min_queue <= 1 else 1
    blockers = [gift_request(new_id("blocker"), requests[0].stream_id) for _ in range(slots)]
    holder = await asyncpg.connect(stack.database_url("gifts"))
    held = holder.transaction()
    await held.start()
    try:
        await holder.executemany(
            "INSERT INTO idempotency_keys (request_id, method, request_hash) VALUES ($1, 'SendGift', '\\x00')",
            [(stored_key(blocker.request_id),) for blocker in blockers],
        )
        blocked = []
        for count, blocker in enumerate(blockers, start=1):  # one at a time: one slot each
            blocked.append(asyncio.ensure_future(send_all(clients, [blocker])))
            waiters = await eventually(lambda: lock_waiters(stack), lambda pids, n=count: len(pids) >= n, 10)
            assert len(waiters) == count, waiters
        sent = asyncio.ensure_future(send_all(clients, requests))
        await asyncio.sleep(1.0)  # every request reaches the queue
        await holder.fetchval("SELECT pg_cancel_backend($1)", waiters[0])
        results = await sent
        await asyncio.gather(*blocked)
        return results
    finally:
        await held.rollback()
        await holder.close()


async def send_until_gifts_dies(
    stack: Stack, clients: Clients, requests: Sequence[gifts_pb2.SendGiftRequest]
) -> dict[str, asyncpg.Record]:
    """Sends the requests as one batch to a gifts service that dies at a crash point; returns the gifts recorded."""
    results = await send_as_one_batch(stack, clients, requests)
    assert {r.code() if isinstance(r, grpc.aio.AioRpcError) else r for r in results} <= CONNECTION_LOST
    return await gift_rows(stack, requests)


async def gift_rows(stack: Stack, requests: Sequence[gifts_pb2.SendGiftRequest]) -> dict[str, asyncpg.Record]:
    rows = await fetch(
        stack,
        "gifts",
        "SELECT request_id, gift_transaction_id, status FROM gift_transactions WHERE request_id = ANY($1::text[])",
        [stored_key(r.request_id) for r in requests],
    )
    return {row["request_id"].rpartition("/")[2]: row for row in rows}


async def assert_each_gift_completed_once(
    stack: Stack, clients: Clients, stream: gifts_pb2.LiveStream, requests: Sequence[gifts_pb2.SendGiftRequest]
) -> list[gifts_pb2.SendGiftResponse]:
    """Every request retried with its request_id (all at once): one completed gift each, each sender charged exactly
    once per gift, combos 1..n, stream totals exact, each gift settled once. Returns the replies."""
    replies = await asyncio.gather(*(retry(clients, request) for request in requests))
    assert await asyncio.gather(*(retry(clients, request) for request in requests)) == replies
    assert len({reply.gift.gift_transaction_id for reply in replies}) == len(requests)
    rows = await gift_rows(stack, requests)
    assert {rid: row["status"] for rid, row in rows.items()} == {r.request_id: "completed" for r in requests}
    assert {r.request_id: reply.gift.gift_transaction_id for r, reply in zip(requests, replies, strict=True)} == {
        rid: row["gift_transaction_id"] for rid, row in rows.items()
    }
    for sender, coins in coins_by_sender(requests).items():
        assert await wallet_balance(clients, sender) == balance_of(sender, 330 - coins)
        spends = [t for t in await transactions(clients, sender) if t.kind == w.TRANSACTION_KIND_SPEND]
        assert len(spends) == sum(1 for r in requests if r.sender_id == sender)
    assert_combos_count_one_to_n(replies)
    summary = await summary_of(clients, stream.stream_id)
    assert (summary.total_coins, summary.gift_count) == (sum(coins_by_sender(requests).values()), len(requests))
    await assert_settled_once(stack, clients, stream.creator_id, replies)
    return replies


@pytest.mark.slow
async def test_a_crash_after_a_batch_is_paid_is_finished_by_retries_exactly_once(
    stack: Stack, clients: Clients
) -> None:
    """kill -9 between the batch's wallet call and its completion; the callers retry with their request_ids."""
    stream = await go_live(clients)
    senders = await funded_senders(clients, 5)
    requests = crash_batch(senders, stream.stream_id)
    with gifts_crashing_at(stack, "gifts.after_wallet_debit"):
        recorded = await send_until_gifts_dies(stack, clients, requests)
        # Dead between the wallet debit and the completion of the one batch: every gift paid, none completed.
        assert {rid: row["status"] for rid, row in recorded.items()} == {r.request_id: "pending" for r in requests}
        for sender, coins in coins_by_sender(requests).items():
            assert (await wallet_balance(clients, sender)).coins == 330 - coins
        restart_after_crash(stack)

    await assert_each_gift_completed_once(stack, clients, stream, requests)


@pytest.mark.slow
async def test_a_crash_before_a_batch_is_paid_is_finished_by_the_recovery_pass(stack: Stack, clients: Clients) -> None:
    """kill -9 right after the batch's intents are recorded; no caller retries until the recovery pass is done."""
    stream = await go_live(clients)
    senders = await funded_senders(clients, 5)
    requests = crash_batch(senders, stream.stream_id)
    with gifts_crashing_at(stack, "gifts.after_gift_recorded"):
        recorded = await send_until_gifts_dies(stack, clients, requests)
        # Dead right after recording the intents of the one batch: nothing paid yet.
        assert {rid: row["status"] for rid, row in recorded.items()} == {r.request_id: "pending" for r in requests}
        assert [(await wallet_balance(clients, sender)).coins for sender in senders] == [330] * 5
        restart_after_crash(stack)

    # No retry: the recovery pass (every 0.5 s for gifts pending over 1 s in the suite) finishes the whole batch.
    completed = await eventually(
        lambda: gift_rows(stack, requests),
        lambda rows: {row["status"] for row in rows.values()} == {"completed"},
        SETTLEMENT_SECONDS,
    )
    assert {rid: row["status"] for rid, row in completed.items()} == {r.request_id: "completed" for r in requests}
    for sender, coins in coins_by_sender(requests).items():
        assert (await wallet_balance(clients, sender)).coins == 330 - coins
    summary = await summary_of(clients, stream.stream_id)
    assert (summary.total_coins, summary.gift_count) == (sum(coins_by_sender(requests).values()), len(requests))

    # The callers retry later: each gets the gift the recovery pass completed, and nothing more is charged.
    replies = await assert_each_gift_completed_once(stack, clients, stream, requests)
    assert [reply.gift.gift_transaction_id for reply in replies] == [
        recorded[r.request_id]["gift_transaction_id"] for r in requests
    ]


@pytest.mark.slow
async def test_a_batch_event_published_again_after_a_crash_is_kept_once_and_settled_once(
    stack: Stack, clients: Clients
) -> None:
    """kill -9 after the relay published a batch's GiftSentBatch and before it deleted the outbox row: the restarted
    relay publishes the same message again, JetStream drops it by its Nats-Msg-Id, and payouts credits each gift
    once."""
    stream = await go_live(clients)
    senders = await funded_senders(clients, 5)
    requests = crash_batch(senders, stream.stream_id)
    with gifts_crashing_at(stack, "gifts.after_events_published"):
        results = await send_as_one_batch(stack, clients, requests)
        # The batch completed before the relay died; whether each answer got out first is a race.
        assert all(not isinstance(r, grpc.aio.AioRpcError) or r.code() in CONNECTION_LOST for r in results)
        restart_after_crash(stack)

    replies = await assert_each_gift_completed_once(stack, clients, stream, requests)
    ours = {reply.gift.gift_transaction_id for reply in replies}
    batches = [
        message
        for message in await messages_on(stack.nats, GIFT_SENT_BATCH_SUBJECT)
        if ours & {event.gift_transaction_id for event in events_pb2.GiftSentBatch.FromString(message.data).gifts}
    ]
    assert len(batches) == 1, "the batch's event was kept once"
    assert {event.gift_transaction_id for event in events_pb2.GiftSentBatch.FromString(batches[0].data).gifts} == ours
    outbox = await fetch(
        stack, "gifts", "SELECT count(*) AS rows FROM gift_outbox WHERE gift_transaction_id = ANY($1)", list(ours)
    )
    assert outbox[0]["rows"] == 0, "the restarted relay deleted the row once JetStream had it"
