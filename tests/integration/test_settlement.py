"""Settlement of GiftSent events (published straight to JetStream, as the gifts service does) into creator diamonds:
exactly once per gift however often it is delivered, aggregated per creator per batch, at a versioned rate,
and always on a balanced ledger."""

from __future__ import annotations

import random

import asyncpg
import pytest
from coinstream.payouts.v1 import payouts_pb2

from tests.support.clients import SERVICE, Clients, new_id
from tests.support.payouts import (
    assert_ledger_consistent,
    fetch,
    gift_sent,
    publish,
    publish_raw,
    wait_for_dead_letter,
    wait_for_lifetime,
)
from tests.support.stack import Stack

# Settlement is fed GiftSents made up here (duplicates, garbage, odd targets): on the synthetic stack.
pytestmark = pytest.mark.synthetic_events


async def current_rate_version(clients: Clients) -> int:
    return (await clients.payouts.GetRates(payouts_pb2.GetRatesRequest(), metadata=SERVICE)).rates.rate_version


async def test_gift_credits_its_creator_without_a_profile(stack: Stack, clients: Clients) -> None:
    creator_id = new_id("creator")
    event = gift_sent(creator_id, 299)
    await publish(stack, [event])
    found = await wait_for_lifetime(clients, creator_id, 299)
    assert (found.available_diamonds, found.reserved_diamonds, found.lifetime_diamonds) == (299, 0, 299)

    [credit] = await fetch(
        stack,
        "SELECT creator_id, stream_id, coins, diamonds, rate_version FROM diamond_credits"
        " WHERE gift_transaction_id = $1",
        event.gift_transaction_id,
    )
    assert dict(credit) == {
        "creator_id": creator_id,
        "stream_id": event.stream_id,
        "coins": 299,
        "diamonds": 299,
        "rate_version": await current_rate_version(clients),
    }


async def test_redelivered_gift_is_settled_once(stack: Stack, clients: Clients) -> None:
    creator_id = new_id("creator")
    event = gift_sent(creator_id, 100)
    # The same Nats-Msg-Id within the duplicate window: JetStream itself drops the copy.
    assert await publish(stack, [event, event]) == [False, True]
    # A different Nats-Msg-Id (e.g. after the window, or a republish by a recovering gifts service): only the inbox
    # stands between this copy and a second credit. Twice more, in one batch.
    await publish(stack, [event, event], message_ids=[new_id("copy"), new_id("copy")])
    # Gifts settle in stream order, so once this later gift is in, every copy above has been looked at.
    await publish(stack, [gift_sent(creator_id, 1)])
    found = await wait_for_lifetime(clients, creator_id, 101)
    assert (found.available_diamonds, found.lifetime_diamonds) == (101, 101)
    [row] = await fetch(
        stack, "SELECT count(*) FROM diamond_credits WHERE gift_transaction_id = $1", event.gift_transaction_id
    )
    assert row["count"] == 1


async def test_thousands_of_gifts_to_one_creator_are_settled_exactly_and_in_batches(
    stack: Stack, clients: Clients
) -> None:
    creator_id = new_id("creator")
    events = [gift_sent(creator_id, random.choice((1, 5, 30, 100, 299))) for _ in range(2000)]
    total = sum(event.coins for event in events)
    await publish(stack, events)
    found = await wait_for_lifetime(clients, creator_id, total)
    assert (found.available_diamonds, found.lifetime_diamonds) == (total, total)

    [credits] = await fetch(
        stack,
        "SELECT count(*) AS gifts, sum(diamonds) AS diamonds FROM diamond_credits WHERE creator_id = $1",
        creator_id,
    )
    assert (credits["gifts"], credits["diamonds"]) == (2000, total)
    # One posting (and one balance update) per batch, not per gift.
    [postings] = await fetch(
        stack, "SELECT count(*) FROM postings WHERE ledger_account_id = $1", f"creator:{creator_id}:available"
    )
    assert 4 <= postings["count"] < 2000  # at most 500 gifts per batch
    await assert_ledger_consistent(stack)


async def test_many_creators_in_one_batch_each_get_their_own(stack: Stack, clients: Clients) -> None:
    creators = [new_id("creator") for _ in range(50)]
    events = [gift_sent(creator_id, coins) for creator_id in creators for coins in (1, 30, 500)]
    random.shuffle(events)
    await publish(stack, events)
    for creator_id in creators:
        found = await wait_for_lifetime(clients, creator_id, 531)
        assert (found.available_diamonds, found.lifetime_diamonds) == (531, 531)
    await assert_ledger_consistent(stack)


async def test_unreadable_events_are_set_aside_without_blocking_settlement(stack: Stack, clients: Clients) -> None:
    creator_id = new_id("creator")
    bad_creator = gift_sent("not:an-identifier", 10)
    no_coins = gift_sent(creator_id, 0)
    await publish_raw(
        stack,
        [b"\x08\x96\x01 definitely not a GiftSent \xff", bad_creator.SerializeToString(), no_coins.SerializeToString()],
        [new_id("garbage"), bad_creator.gift_transaction_id, no_coins.gift_transaction_id],
    )
    await publish(stack, [gift_sent(creator_id, 5)])
    found = await wait_for_lifetime(clients, creator_id, 5)
    assert found.lifetime_diamonds == 5
    rows = await fetch(
        stack,
        "SELECT gift_transaction_id FROM inbox WHERE gift_transaction_id = ANY($1::text[])",
        [bad_creator.gift_transaction_id, no_coins.gift_transaction_id],
    )
    assert rows == []


async def test_video_gift_is_credited_like_a_stream_gift(stack: Stack, clients: Clients) -> None:
    creator_id = new_id("creator")
    to_video, to_stream = gift_sent(creator_id, 120, video_id=new_id("video")), gift_sent(creator_id, 30)
    await publish(stack, [to_video, to_stream])
    found = await wait_for_lifetime(clients, creator_id, 150)
    assert (found.available_diamonds, found.lifetime_diamonds) == (150, 150)

    credits = await fetch(
        stack,
        "SELECT gift_transaction_id, stream_id, video_id, coins, diamonds, rate_version FROM diamond_credits"
        " WHERE creator_id = $1 ORDER BY coins DESC",
        creator_id,
    )
    rate_version = await current_rate_version(clients)
    assert [dict(credit) for credit in credits] == [
        {
            "gift_transaction_id": to_video.gift_transaction_id,
            "stream_id": None,
            "video_id": to_video.video_id,
            "coins": 120,
            "diamonds": 120,
            "rate_version": rate_version,
        },
        {
            "gift_transaction_id": to_stream.gift_transaction_id,
            "stream_id": to_stream.stream_id,
            "video_id": None,
            "coins": 30,
            "diamonds": 30,
            "rate_version": rate_version,
        },
    ]
    # Delivered again under another Nats-Msg-Id: the inbox settles a video gift once too.
    await publish(stack, [to_video], message_ids=[new_id("copy")])
    await publish(stack, [gift_sent(creator_id, 1, video_id=to_video.video_id)])
    assert (await wait_for_lifetime(clients, creator_id, 151)).lifetime_diamonds == 151
    await assert_ledger_consistent(stack)


async def test_gift_to_both_a_stream_and_a_video_or_to_neither_is_dead_lettered(stack: Stack, clients: Clients) -> None:
    creator_id = new_id("creator")
    both = gift_sent(creator_id, 10, stream_id=new_id("stream"), video_id=new_id("video"))
    neither = gift_sent(creator_id, 20, stream_id="")
    await publish(stack, [both, neither])
    await publish(stack, [gift_sent(creator_id, 5, video_id=new_id("video"))])
    assert (await wait_for_lifetime(clients, creator_id, 5)).lifetime_diamonds == 5

    for event, field in ((both, "video_id"), (neither, "stream_id")):
        letter = await wait_for_dead_letter(stack, event.gift_transaction_id)
        assert letter.reason.startswith("unreadable GiftSent") and f"{field}: " in letter.reason
        assert (letter.gift_transaction_id, letter.payload) == (event.gift_transaction_id, event.SerializeToString())
    rows = await fetch(
        stack,
        "SELECT gift_transaction_id FROM inbox WHERE gift_transaction_id = ANY($1::text[])",
        [both.gift_transaction_id, neither.gift_transaction_id],
    )
    assert rows == []
    assert (await fetch(stack, "SELECT count(*) FROM diamond_credits WHERE creator_id = $1", creator_id))[0][0] == 1


async def test_database_refuses_unbalanced_negative_or_edited_ledger_entries(stack: Stack) -> None:
    conn = await asyncpg.connect(stack.database_url("payouts"))
    record = (
        "WITH t AS (INSERT INTO ledger_transactions (transaction_id, kind, reference)"
        " VALUES ($1, 'settlement', 'test'))"
        " INSERT INTO postings (transaction_id, ledger_account_id, diamonds_delta)"
        " VALUES ($1, 'system:gift_settlement', -100), ($1, 'system:paid_out', $2)"
    )
    try:
        with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
            await conn.execute(record, new_id("txn"), 99)
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO creator_balances (creator_id, available_diamonds) VALUES ($1, -1)", new_id("creator")
            )
        for edit in (
            "UPDATE postings SET diamonds_delta = 0 WHERE transaction_id = $1",
            "DELETE FROM ledger_transactions WHERE transaction_id = $1",
        ):
            transaction = conn.transaction()
            await transaction.start()
            try:
                transaction_id = new_id("txn")
                await conn.execute(record, transaction_id, 100)  # balanced, and rolled back below
                with pytest.raises(asyncpg.RaiseError, match="append-only"):
                    await conn.execute(edit, transaction_id)
            finally:
                await transaction.rollback()
    finally:
        await conn.close()


@pytest.mark.slow
async def test_rate_change_is_a_new_version_stored_on_each_credit(stack: Stack, clients: Clients) -> None:
    before = await current_rate_version(clients)
    creator_id = new_id("creator")
    half_rate = {"COINSTREAM_PAYOUTS_RATE_NUMERATOR": "1", "COINSTREAM_PAYOUTS_RATE_DENOMINATOR": "2"}
    try:
        stack.restart_service("payouts", extra_env=half_rate)
        rates = (await clients.payouts.GetRates(payouts_pb2.GetRatesRequest(), metadata=SERVICE)).rates
        assert (rates.diamonds_per_coin_numerator, rates.diamonds_per_coin_denominator) == (1, 2)
        assert rates.rate_version == before + 1
        stack.restart_service("payouts", extra_env=half_rate)  # unchanged: no new version
        assert await current_rate_version(clients) == before + 1

        events = [gift_sent(creator_id, coins) for coins in (1, 3, 100)]
        await publish(stack, events)
        found = await wait_for_lifetime(clients, creator_id, 52)
        assert found.lifetime_diamonds == 52  # 104 coins × 1/2: the halves are carried, not dropped
        rows = await fetch(stack, "SELECT DISTINCT rate_version FROM diamond_credits WHERE creator_id = $1", creator_id)
        assert [row["rate_version"] for row in rows] == [before + 1]
    finally:
        stack.restart_service("payouts")
    assert await current_rate_version(clients) == before + 2  # back to 1/1, as a newer version
    await assert_ledger_consistent(stack)
