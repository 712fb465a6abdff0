"""The gift saga under kill -9 and a wallet outage: nothing is charged twice, nothing is left half-done, and
exactly one GiftSent per gift ends up in JetStream. Each test leaves the services running normally."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
import grpc
import pytest
from coinstream.gifts.v1 import gifts_pb2

from tests.conftest import SERVICE, Clients, new_id
from tests.grpc_errors import error_reason
from tests.integration.test_gifts import (
    coins_of,
    gift_request,
    gift_sent_messages,
    go_live,
    make_account,
    summary_of,
)
from tests.stack import Stack

pytestmark = pytest.mark.slow

RECOVERY_TIMEOUT_SECONDS = 30.0
# How a call fails when the server dies under it.
CONNECTION_LOST = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


@contextmanager
def gifts_crashing_at(stack: Stack, point: str) -> Iterator[subprocess.Popen[bytes]]:
    """Gifts restarted with a crash point; afterwards gifts runs normally again, whatever the test did."""
    stack.restart_service("gifts", extra_env={"COINSTREAM_FAULT_POINTS": point})
    faulty = stack.services["gifts"].process
    assert faulty is not None
    try:
        yield faulty
    finally:
        current = stack.services["gifts"].process
        if current is faulty and faulty.poll() is None:
            stack.stop_service("gifts")
        if current is faulty or current is None or current.poll() is not None:
            stack.start_service("gifts")


def restart_after_crash(stack: Stack) -> None:
    assert stack.wait_exit("gifts") == -signal.SIGKILL
    stack.start_service("gifts")


async def send_until_gifts_dies(clients: Clients, request: gifts_pb2.SendGiftRequest) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await clients.gifts.SendGift(request, metadata=SERVICE, timeout=20)
    assert error.value.code() in CONNECTION_LOST


async def retry(clients: Clients, request: gifts_pb2.SendGiftRequest) -> gifts_pb2.SendGiftResponse:
    return await clients.gifts.SendGift(request, metadata=SERVICE, wait_for_ready=True, timeout=20)


async def wait_for_gift_count(clients: Clients, stream_id: str, gift_count: int) -> gifts_pb2.StreamSummary:
    deadline = time.monotonic() + RECOVERY_TIMEOUT_SECONDS
    while True:
        summary = await summary_of(clients, stream_id)
        if summary.gift_count >= gift_count or time.monotonic() > deadline:
            return summary
        await asyncio.sleep(0.2)


async def assert_published_once(stack: Stack, gift_transaction_id: str) -> None:
    assert len(await gift_sent_messages(stack.nats, gift_transaction_id)) == 1
    await asyncio.sleep(1.0)  # give a wrongly repeated publish the time to show up
    assert len(await gift_sent_messages(stack.nats, gift_transaction_id)) == 1


async def test_retry_completes_a_gift_paid_before_the_crash(clients: Clients, stack: Stack) -> None:
    stream = await go_live(clients)
    sender = await make_account(clients, package_id="coins_330")
    request = gift_request(sender, stream.stream_id, "doughnut", 2)
    with gifts_crashing_at(stack, "gifts.after_wallet_debit"):
        await send_until_gifts_dies(clients, request)
        assert await coins_of(clients, sender) == 270  # paid, but the gift is not completed yet
        restart_after_crash(stack)

    reply = await retry(clients, request)
    assert (reply.gift.gift_id, reply.gift.quantity, reply.gift.coins) == ("doughnut", 2, 60)
    assert reply.sender_balance_coins == 270
    assert await retry(clients, request) == reply
    assert await coins_of(clients, sender) == 270  # charged exactly once
    summary = await summary_of(clients, stream.stream_id)
    assert (summary.total_coins, summary.gift_count) == (60, 1)
    await assert_published_once(stack, reply.gift.gift_transaction_id)


@pytest.mark.parametrize(
    ("crash_point", "coins_after_crash"),
    [("gifts.after_gift_recorded", 330), ("gifts.after_wallet_debit", 270)],
    ids=["before-wallet", "after-wallet"],
)
async def test_recovery_alone_completes_a_pending_gift(
    clients: Clients, stack: Stack, crash_point: str, coins_after_crash: int
) -> None:
    stream = await go_live(clients)
    sender = await make_account(clients, package_id="coins_330")
    request = gift_request(sender, stream.stream_id, "doughnut", 2)
    with gifts_crashing_at(stack, crash_point):
        await send_until_gifts_dies(clients, request)
        assert await coins_of(clients, sender) == coins_after_crash
        restart_after_crash(stack)

    summary = await wait_for_gift_count(clients, stream.stream_id, 1)  # no client retry: the recovery pass did it
    assert (summary.total_coins, summary.gift_count) == (60, 1)
    assert [(g.account_id, g.coins) for g in summary.top_gifters] == [(sender, 60)]
    assert await coins_of(clients, sender) == 270
    reply = await retry(clients, request)  # the stored outcome
    assert reply.gift.coins == 60 and reply.sender_balance_coins == 270
    assert await coins_of(clients, sender) == 270
    await assert_published_once(stack, reply.gift.gift_transaction_id)


async def test_event_republished_after_a_crash_is_deduplicated(clients: Clients, stack: Stack) -> None:
    stream = await go_live(clients)
    sender = await make_account(clients, package_id="coins_65")
    request = gift_request(sender, stream.stream_id, "finger_heart", 1)
    with gifts_crashing_at(stack, "gifts.after_events_published"):
        try:
            # The gift completes; the relay then publishes GiftSent and dies before deleting it from the outbox.
            # Whether the response gets out before the process dies is a race.
            await clients.gifts.SendGift(request, metadata=SERVICE, timeout=20)
        except grpc.aio.AioRpcError as error:
            assert error.code() in CONNECTION_LOST
        restart_after_crash(stack)

    reply = await retry(clients, request)
    await assert_published_once(stack, reply.gift.gift_transaction_id)
    # The restarted relay did publish the row again (JetStream dropped the repeat) and only then deleted it.
    connection = await asyncpg.connect(stack.database_url("gifts"))
    try:
        deadline = time.monotonic() + RECOVERY_TIMEOUT_SECONDS
        while await connection.fetchval(
            "SELECT count(*) FROM gift_outbox WHERE gift_transaction_id = $1", reply.gift.gift_transaction_id
        ):
            assert time.monotonic() < deadline, "outbox row never relayed after the restart"
            await asyncio.sleep(0.2)
    finally:
        await connection.close()
    assert await coins_of(clients, sender) == 60


async def test_wallet_outage_leaves_the_gift_pending_until_a_retry(clients: Clients, stack: Stack) -> None:
    stream = await go_live(clients)
    sender = await make_account(clients, package_id="coins_330")
    request = gift_request(sender, stream.stream_id, "hand_hearts", 1)
    stack.stop_service("wallet")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await clients.gifts.SendGift(request, metadata=SERVICE, timeout=20)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_reason(error.value) == "WALLET_UNAVAILABLE"
        assert "same request_id" in (error.value.details() or "")
        assert (await summary_of(clients, stream.stream_id)).gift_count == 0
    finally:
        stack.start_service("wallet")

    reply = await retry_until_wallet_is_back(clients, request)
    assert reply.gift.coins == 100 and reply.sender_balance_coins == 230
    assert await coins_of(clients, sender) == 230
    assert (await summary_of(clients, stream.stream_id)).gift_count == 1
    await assert_published_once(stack, reply.gift.gift_transaction_id)


async def retry_until_wallet_is_back(
    clients: Clients, request: gifts_pb2.SendGiftRequest
) -> gifts_pb2.SendGiftResponse:
    """gifts reconnects to the restarted wallet within its reconnect backoff; until then it says retry."""
    deadline = time.monotonic() + RECOVERY_TIMEOUT_SECONDS
    while True:
        try:
            return await retry(clients, request)
        except grpc.aio.AioRpcError as error:
            if error_reason(error) != "WALLET_UNAVAILABLE" or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


async def test_start_live_stream_replays_while_the_wallet_is_down(stack: Stack, clients: Clients) -> None:
    """A replay needs no answer from the wallet, so it must not fail just because the wallet is unreachable."""
    creator = await make_account(clients)
    request = gifts_pb2.StartLiveStreamRequest(request_id=new_id("req"), creator_id=creator, title="replay me")
    first = await clients.gifts.StartLiveStream(request, metadata=SERVICE)
    stack.stop_service("wallet")
    try:
        again = await clients.gifts.StartLiveStream(request, metadata=SERVICE)
    finally:
        stack.start_service("wallet")
    assert again == first


async def test_a_wallet_outage_under_a_burst_of_gifts_leaves_every_gift_to_the_recovery_pass(
    clients: Clients, stack: Stack
) -> None:
    """Concurrent gifts (batched together) while the wallet is down: every caller hears WALLET_UNAVAILABLE, nothing
    is charged; once the wallet is back the recovery pass alone completes each gift exactly once."""
    stream = await go_live(clients)
    senders = [await make_account(clients, package_id="coins_330") for _ in range(4)]
    requests = [gift_request(senders[number % 4], stream.stream_id, "finger_heart", 1) for number in range(20)]
    stack.stop_service("wallet")
    try:
        replies = await asyncio.gather(
            *(clients.gifts.SendGift(request, metadata=SERVICE, timeout=20) for request in requests),
            return_exceptions=True,
        )
        assert all(isinstance(reply, grpc.aio.AioRpcError) for reply in replies)
        assert {error_reason(reply) for reply in replies} == {"WALLET_UNAVAILABLE"}
    finally:
        stack.start_service("wallet")

    summary = await wait_for_gift_count(clients, stream.stream_id, len(requests))
    assert summary.gift_count == len(requests) and summary.total_coins == 5 * len(requests)
    for sender in senders:
        assert await coins_of(clients, sender) == 330 - 5 * 5  # five gifts of 5 coins each, charged once
    replies = [await retry(clients, request) for request in requests]  # replays of what the recovery pass completed
    assert len({reply.gift.gift_transaction_id for reply in replies}) == len(requests)
    for sender in senders:
        combos = sorted(reply.gift.combo_count for reply in replies if reply.gift.sender_id == sender)
        assert combos == [1, 2, 3, 4, 5]
    await assert_published_once(stack, replies[0].gift.gift_transaction_id)
