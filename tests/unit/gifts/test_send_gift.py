"""SendGift's money rules on fakes: a gift is paid once and completes; replays answer the stored outcome; refusals
cost nothing; a wallet outage leaves the gift pending until a retry or the recovery pass finishes it."""

from __future__ import annotations

import asyncio

import grpc

from services.gifts import domain
from services.gifts.domain import GiftStatus, TargetKind, Totals
from services.runtime.messaging import GIFT_SENT_BATCH_SUBJECT, GIFT_SENT_SUBJECT
from tests.unit.gifts.world import LION, ROSE, World, refused, send_command


async def a_stream() -> tuple[World, str]:
    world = World()
    await world.catalog(ROSE, LION)
    return world, await world.live_stream("creator")


async def test_a_gift_debits_its_sender_once_and_completes() -> None:
    world, stream_id = await a_stream()
    fan = world.fan("fan", 100)
    response = await world.send(fan, ROSE, stream_id=stream_id, quantity=3)
    assert world.wallet.debits(fan) == [15]
    assert response.sender_balance_coins == 85 == world.wallet.balances[fan]
    assert (response.coins, response.combo_count, response.recipient_id) == (15, 1, "creator")
    gift = world.gift(response.gift_transaction_id)
    assert gift.status is GiftStatus.COMPLETED and gift.wallet_transaction_id is not None
    assert (gift.paid_coins, gift.bonus_coins) == (15, 0)
    assert world.store.tables.totals[(TargetKind.STREAM, stream_id)] == Totals(15, 1)
    (sent,) = world.store.events(GIFT_SENT_SUBJECT)
    assert sent.msg_id == sent.gift_transaction_id == gift.gift_transaction_id
    assert world.woken >= 1  # the relay is told at once


async def test_a_replay_answers_the_same_response_and_pays_nothing_more() -> None:
    world, stream_id = await a_stream()
    fan = world.fan("fan", 100)
    command = send_command(fan, ROSE, stream_id=stream_id)
    first = await world.gifts.send_gift(command)
    world.clock.advance(60)
    again = await world.gifts.send_gift(command)
    assert again == first
    assert world.wallet.debits(fan) == [5]
    assert len(world.store.tables.gifts) == 1


async def test_a_request_id_reused_for_another_gift_is_refused() -> None:
    world, stream_id = await a_stream()
    fan = world.fan("fan", 100)
    await world.send(fan, ROSE, stream_id=stream_id, request_id="r1")
    assert await refused(world.send(fan, LION, stream_id=stream_id, request_id="r1")) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "REQUEST_ID_REUSED",
    )
    assert world.wallet.debits(fan) == [5]


async def test_a_retry_in_the_same_batch_shares_the_gift() -> None:
    world, stream_id = await a_stream()
    fan = world.fan("fan", 100)
    command = send_command(fan, ROSE, stream_id=stream_id)
    committed = world.store.transactions
    first, second = await asyncio.gather(world.gifts.send_gift(command), world.gifts.send_gift(command))
    assert first == second
    assert world.wallet.debits(fan) == [5]
    # One batch (its intent, then its completion): sent one after the other, the retry would cost a third.
    assert world.store.transactions - committed == 2


async def test_insufficient_coins_fail_the_gift_and_count_nothing() -> None:
    world, stream_id = await a_stream()
    fan = world.fan("fan", 10)
    command = send_command(fan, LION, stream_id=stream_id)
    assert await refused(world.gifts.send_gift(command)) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_COINS")
    gift = world.only_gift()
    assert (gift.status, gift.failure_reason) == (GiftStatus.FAILED, "INSUFFICIENT_COINS")
    assert world.wallet.balances[fan] == 10
    assert world.store.tables.totals[(TargetKind.STREAM, stream_id)] == Totals(0, 0)
    assert world.store.events(GIFT_SENT_SUBJECT) == []
    # The refusal is the command's outcome: a retry gets it again, even once the fan could pay.
    world.wallet.balances[fan] = 1_000
    assert await refused(world.gifts.send_gift(command)) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_COINS")
    assert world.wallet.debits(fan) == []


async def test_refusals_before_the_wallet_record_no_gift() -> None:
    world, stream_id = await a_stream()
    fan = world.fan("fan", 100)
    retired = domain.CatalogGift("comet", "Comet", 3)
    await world.catalog(retired)
    await world.retire("comet")
    assert await refused(world.send(fan, retired, stream_id=stream_id)) == (grpc.StatusCode.NOT_FOUND, "GIFT_NOT_FOUND")
    assert await refused(world.send("creator", ROSE, stream_id=stream_id)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "SELF_GIFT",
    )
    assert await refused(world.send(fan, ROSE, stream_id="str_nope")) == (grpc.StatusCode.NOT_FOUND, "STREAM_NOT_FOUND")
    await world.end_stream(stream_id)
    assert await refused(world.send(fan, ROSE, stream_id=stream_id)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "STREAM_NOT_LIVE",
    )
    assert world.wallet.calls == 0
    assert world.store.tables.gifts == {}


async def test_a_refusal_before_the_wallet_is_replayed() -> None:
    world, stream_id = await a_stream()
    fan = world.fan("fan", 100)
    command = send_command(fan, ROSE, stream_id="str_nope", request_id="r1")
    assert await refused(world.gifts.send_gift(command)) == (grpc.StatusCode.NOT_FOUND, "STREAM_NOT_FOUND")
    assert await refused(world.gifts.send_gift(command)) == (grpc.StatusCode.NOT_FOUND, "STREAM_NOT_FOUND")


async def test_a_wallet_outage_leaves_the_gift_pending_until_a_retry_finishes_it() -> None:
    world, stream_id = await a_stream()
    fan = world.fan("fan", 100)
    command = send_command(fan, ROSE, stream_id=stream_id)
    world.wallet.down = True
    assert await refused(world.gifts.send_gift(command)) == (grpc.StatusCode.UNAVAILABLE, "WALLET_UNAVAILABLE")
    assert world.only_gift().status is GiftStatus.PENDING
    world.wallet.down = False
    response = await world.gifts.send_gift(command)
    assert response.gift_transaction_id == world.only_gift().gift_transaction_id
    assert world.only_gift().status is GiftStatus.COMPLETED
    assert world.wallet.debits(fan) == [5]


async def test_the_recovery_pass_finishes_a_gift_whose_payment_answer_was_lost() -> None:
    world, stream_id = await a_stream()
    fan = world.fan("fan", 100)
    command = send_command(fan, ROSE, stream_id=stream_id)
    world.wallet.answers_lost = True  # the wallet debits, the answer never arrives
    assert await refused(world.gifts.send_gift(command)) == (grpc.StatusCode.UNAVAILABLE, "WALLET_UNAVAILABLE")
    world.wallet.answers_lost = False
    assert await world.gifts.recover_pending_gifts(older_than_seconds=30) == 0  # not stale yet
    world.clock.advance(31)
    world.wallet.down = True
    # Found but not resolved while the wallet is down: the pass reports nothing done, so its worker waits its
    # interval rather than running again at once.
    assert await world.gifts.recover_pending_gifts(older_than_seconds=30) == 0
    assert world.only_gift().status is GiftStatus.PENDING
    world.wallet.down = False
    assert await world.gifts.recover_pending_gifts(older_than_seconds=30) == 1
    gift = world.only_gift()
    assert gift.status is GiftStatus.COMPLETED and gift.sender_balance_coins == 95
    assert world.wallet.debits(fan) == [5]  # the repeated spend was answered from the wallet's stored outcome
    assert (await world.gifts.send_gift(command)).gift_transaction_id == gift.gift_transaction_id
    assert await world.gifts.recover_pending_gifts(older_than_seconds=30) == 0


async def test_a_retry_after_the_key_expired_is_answered_from_the_gift() -> None:
    world, stream_id = await a_stream()
    fan = world.fan("fan", 100)
    command = send_command(fan, ROSE, stream_id=stream_id, request_id="r1")
    first = await world.gifts.send_gift(command)
    world.store.forget_key("r1")
    assert await world.gifts.send_gift(command) == first
    other = send_command(fan, LION, stream_id=stream_id, request_id="r1")
    assert await refused(world.gifts.send_gift(other)) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    assert world.wallet.debits(fan) == [5]


async def test_a_batch_pays_every_gift_once_and_counts_them_all() -> None:
    world, stream_id = await a_stream()
    fans = [world.fan(f"fan{i}", 100) for i in range(5)]
    broke = world.fan("broke", 1)
    responses = await asyncio.gather(
        *(world.send(fan, ROSE, stream_id=stream_id) for fan in fans),
        world.send(broke, ROSE, stream_id=stream_id),
        return_exceptions=True,
    )
    assert [type(r).__name__ for r in responses[:5]] == ["GiftReceipt"] * 5
    assert world.store.tables.totals[(TargetKind.STREAM, stream_id)] == Totals(25, 5)
    assert all(world.wallet.debits(fan) == [5] for fan in fans) and world.wallet.debits(broke) == []
    # Their GiftSents go out as one GiftSentBatch, each exactly what it would be on its own.
    assert world.store.events(GIFT_SENT_SUBJECT) == []
    (batch,) = world.store.events(GIFT_SENT_BATCH_SUBJECT)
    sent = world.store.gifts_sent()
    assert [event.sender_id for event in sent] == fans
    assert batch.msg_id == f"gift_sent_batch:{sent[0].gift_transaction_id}"
    assert all(event.coins == 5 and event.recipient_id == "creator" and event.stream_id == stream_id for event in sent)


async def test_per_gift_events_queue_one_gift_sent_per_gift() -> None:
    world = World(per_gift_events=True)
    await world.catalog(ROSE)
    stream_id = await world.live_stream("creator")
    fans = [world.fan(f"fan{i}", 100) for i in range(5)]
    await asyncio.gather(*(world.send(fan, ROSE, stream_id=stream_id) for fan in fans))
    rows = world.store.events(GIFT_SENT_SUBJECT)
    assert world.store.events(GIFT_SENT_BATCH_SUBJECT) == []
    assert [row.msg_id for row in rows] == [event.gift_transaction_id for event in world.store.gifts_sent()]
    assert len(rows) == 5


async def test_gifts_within_the_combo_window_continue_the_combo() -> None:
    world, stream_id = await a_stream()
    fan = world.fan("fan", 100)
    counts = [(await world.send(fan, ROSE, stream_id=stream_id)).combo_count for _ in range(3)]
    world.clock.advance(domain.COMBO_WINDOW.total_seconds() + 1)
    counts.append((await world.send(fan, ROSE, stream_id=stream_id)).combo_count)
    assert counts == [1, 2, 3, 1]


async def test_a_gift_counts_on_its_creators_leaderboards() -> None:
    world, stream_id = await a_stream()
    await world.send(world.fan("big", 1_000), LION, stream_id=stream_id)
    await world.send(world.fan("small", 100), ROSE, stream_id=stream_id)
    for period in domain.LeaderboardPeriod:
        ranked = await world.gifts.get_leaderboard("creator", period, 10)
        assert [(r.account_id, r.coins, r.rank) for r in ranked] == [("big", 500, 1), ("small", 5, 2)]
    world.clock.advance(2 * 86_400)
    assert await world.gifts.get_leaderboard("creator", domain.LeaderboardPeriod.DAY, 10) == []
