"""SendGift against the real stack: gifts paid through the wallet, GiftSent on JetStream, stream summaries; errors,
validation, auth and idempotency. Every test makes its own accounts and streams."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from coinstream.events.v1 import events_pb2
from coinstream.gifts.v1 import gifts_pb2
from coinstream.wallet.v1 import wallet_pb2

from services.runtime.messaging import GIFT_SENT_BATCH_SUBJECT, GIFT_SENT_SUBJECT
from tests.support.clients import SERVICE, Clients, auth, new_id
from tests.support.errors import error_reason, violated_fields
from tests.support.events import gift_sent_messages, messages_on
from tests.support.factories import balance, make_account
from tests.support.gifts import gift_request, go_live, summary_of
from tests.support.payouts import wait_for_lifetime
from tests.support.stack import Stack

# ---------------------------------------------------------------- SendGift


async def test_send_gift_charges_the_sender_and_credits_the_stream(clients: Clients) -> None:
    stream = await go_live(clients)
    sender = await make_account(clients, package_id="coins_330")
    reply = await clients.gifts.SendGift(
        gift_request(sender, stream.stream_id, "finger_heart", 3), metadata=auth(sender)
    )
    gift = reply.gift
    assert gift.gift_transaction_id
    assert (gift.sender_id, gift.recipient_id, gift.stream_id) == (sender, stream.creator_id, stream.stream_id)
    assert (gift.gift_id, gift.quantity, gift.coins) == ("finger_heart", 3, 15)
    assert reply.sender_balance_coins == 330 - 15
    assert await balance(clients, sender) == 330 - 15
    summary = await summary_of(clients, stream.stream_id)
    assert (summary.total_coins, summary.gift_count) == (15, 1)
    assert [(g.account_id, g.coins) for g in summary.top_gifters] == [(sender, 15)]


async def test_service_may_send_a_gift_for_a_user(clients: Clients) -> None:
    stream = await go_live(clients)
    sender = await make_account(clients, package_id="coins_65")
    reply = await clients.gifts.SendGift(gift_request(sender, stream.stream_id, "doughnut"), metadata=SERVICE)
    assert reply.gift.coins == 30 and reply.sender_balance_coins == 35


async def test_gift_sent_is_published_to_jetstream(clients: Clients, stack: Stack) -> None:
    stream = await go_live(clients)
    sender = await make_account(clients, package_id="coins_660")
    reply = await clients.gifts.SendGift(gift_request(sender, stream.stream_id, "corgi", 2), metadata=auth(sender))
    gift = reply.gift

    messages = await gift_sent_messages(stack.nats, gift.gift_transaction_id)
    assert len(messages) == 1
    message = messages[0]
    assert message.subject == GIFT_SENT_SUBJECT
    assert message.headers is not None and message.headers["Nats-Msg-Id"] == gift.gift_transaction_id
    event = events_pb2.GiftSent.FromString(message.data)
    assert event.gift_transaction_id == gift.gift_transaction_id
    assert (event.sender_id, event.recipient_id, event.stream_id) == (sender, stream.creator_id, stream.stream_id)
    assert (event.gift_id, event.quantity, event.coins) == ("corgi", 2, 598)
    assert event.wallet_transaction_id.startswith("txn_")
    assert abs(time.time() - event.sent_at.ToSeconds()) < 120
    history = await clients.wallet.ListTransactions(
        wallet_pb2.ListTransactionsRequest(account_id=sender), metadata=SERVICE
    )
    spend = history.transactions[0]
    assert spend.transaction_id == event.wallet_transaction_id
    assert spend.coins_delta == -598 and spend.reference == f"gift:{gift.gift_transaction_id}"


async def test_gifts_completed_together_go_out_as_one_gift_sent_batch(clients: Clients, stack: Stack) -> None:
    stream = await go_live(clients)
    senders = [await make_account(clients, package_id="coins_65") for _ in range(12)]
    replies = await asyncio.gather(
        *(clients.gifts.SendGift(gift_request(s, stream.stream_id, "rose", 2), metadata=SERVICE) for s in senders)
    )
    ours = {reply.gift.gift_transaction_id for reply in replies}
    await wait_for_lifetime(clients, stream.creator_id, 24)
    batched = [
        event.gift_transaction_id
        for message in await messages_on(stack.nats, GIFT_SENT_BATCH_SUBJECT)
        for event in events_pb2.GiftSentBatch.FromString(message.data).gifts
        if event.gift_transaction_id in ours
    ]
    alone = [
        event.gift_transaction_id
        for event in map(
            events_pb2.GiftSent.FromString, [m.data for m in await messages_on(stack.nats, GIFT_SENT_SUBJECT)]
        )
        if event.gift_transaction_id in ours
    ]
    # The first gift finds the batch lane free and goes alone; the others queue behind it and share a message.
    assert len(batched) >= 2 and sorted(batched + alone) == sorted(ours)
    assert (await wait_for_lifetime(clients, stream.creator_id, 24)).lifetime_diamonds == 24


async def test_send_gift_replay_returns_the_same_response_and_charges_once(clients: Clients) -> None:
    stream = await go_live(clients)
    sender = await make_account(clients, package_id="coins_330")
    request = gift_request(sender, stream.stream_id, "doughnut", 2)
    first = await clients.gifts.SendGift(request, metadata=auth(sender))
    second = await clients.gifts.SendGift(request, metadata=auth(sender))
    assert second == first
    assert await balance(clients, sender) == 330 - 60
    assert (await summary_of(clients, stream.stream_id)).gift_count == 1


async def test_request_id_reused_with_another_payload_is_refused(clients: Clients) -> None:
    stream = await go_live(clients)
    sender = await make_account(clients, package_id="coins_65")
    request = gift_request(sender, stream.stream_id, "rose", 1)
    await clients.gifts.SendGift(request, metadata=auth(sender))
    changed = gift_request(sender, stream.stream_id, "rose", 2, request_id=request.request_id)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await clients.gifts.SendGift(changed, metadata=auth(sender))
    assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_reason(error.value) == "REQUEST_ID_REUSED"
    assert await balance(clients, sender) == 64


async def test_concurrent_duplicates_charge_once(clients: Clients) -> None:
    stream = await go_live(clients)
    sender = await make_account(clients, package_id="coins_330")
    request = gift_request(sender, stream.stream_id, "hand_hearts", 1)
    replies = await asyncio.gather(*(clients.gifts.SendGift(request, metadata=auth(sender)) for _ in range(10)))
    assert all(reply == replies[0] for reply in replies)
    assert replies[0].sender_balance_coins == 230
    assert await balance(clients, sender) == 230
    summary = await summary_of(clients, stream.stream_id)
    assert (summary.total_coins, summary.gift_count) == (100, 1)


async def test_insufficient_coins_comes_from_the_wallet_and_charges_nothing(clients: Clients) -> None:
    stream = await go_live(clients)
    sender = await make_account(clients, package_id="coins_65")
    request = gift_request(sender, stream.stream_id, "hand_hearts", 1)
    for _ in range(2):  # stored: the retry gets the same refusal
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await clients.gifts.SendGift(request, metadata=auth(sender))
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(error.value) == "INSUFFICIENT_COINS"
    assert await balance(clients, sender) == 65
    summary = await summary_of(clients, stream.stream_id)
    assert (summary.total_coins, summary.gift_count, len(summary.top_gifters)) == (0, 0, 0)


async def test_unverified_sender_is_refused_by_the_wallet(clients: Clients) -> None:
    stream = await go_live(clients)
    sender = await make_account(clients, adult_verified=False)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await clients.gifts.SendGift(gift_request(sender, stream.stream_id), metadata=auth(sender))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error.value) == "ACCOUNT_NOT_ELIGIBLE"


async def test_gift_to_unknown_stream_is_not_found(clients: Clients) -> None:
    sender = await make_account(clients, package_id="coins_65")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await clients.gifts.SendGift(gift_request(sender, "str_missing"), metadata=auth(sender))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_reason(error.value) == "STREAM_NOT_FOUND"
    assert await balance(clients, sender) == 65


async def test_gift_to_ended_stream_is_refused(clients: Clients) -> None:
    stream = await go_live(clients)
    await clients.gifts.EndLiveStream(
        gifts_pb2.EndLiveStreamRequest(request_id=new_id("req"), stream_id=stream.stream_id), metadata=SERVICE
    )
    sender = await make_account(clients, package_id="coins_65")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await clients.gifts.SendGift(gift_request(sender, stream.stream_id), metadata=auth(sender))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error.value) == "STREAM_NOT_LIVE"
    assert await balance(clients, sender) == 65


async def test_unknown_gift_is_not_found(clients: Clients) -> None:
    stream = await go_live(clients)
    sender = await make_account(clients, package_id="coins_65")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await clients.gifts.SendGift(gift_request(sender, stream.stream_id, "unicorn"), metadata=auth(sender))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_reason(error.value) == "GIFT_NOT_FOUND"
    assert await balance(clients, sender) == 65


async def test_creator_cannot_gift_own_stream(clients: Clients) -> None:
    creator = await make_account(clients, package_id="coins_65")
    stream = await go_live(clients, creator)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await clients.gifts.SendGift(gift_request(creator, stream.stream_id), metadata=auth(creator))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error.value) == "SELF_GIFT"
    assert await balance(clients, creator) == 65


async def test_user_cannot_send_gift_as_someone_else(clients: Clients) -> None:
    stream = await go_live(clients)
    victim = await make_account(clients, package_id="coins_65")
    intruder = await make_account(clients)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await clients.gifts.SendGift(gift_request(victim, stream.stream_id), metadata=auth(intruder))
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as error:  # an admin is not a sender either
        await clients.gifts.SendGift(gift_request(victim, stream.stream_id), metadata=auth("ops", "admin"))
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await balance(clients, victim) == 65


@pytest.mark.parametrize(
    ("changes", "fields"),
    [
        ({"request_id": ""}, {"request_id"}),
        ({"request_id": "x" * 129}, {"request_id"}),
        ({"sender_id": "not valid!"}, {"sender_id"}),
        ({"stream_id": ""}, {"stream_id"}),
        ({"stream_id": "str_\x00"}, {"stream_id"}),
        ({"gift_id": ""}, {"gift_id"}),
        ({"quantity": 0}, {"quantity"}),
        ({"quantity": 10_001}, {"quantity"}),
        ({"quantity": -3}, {"quantity"}),
        (
            {"request_id": "a b", "sender_id": "", "stream_id": "s" * 129, "gift_id": "ro se", "quantity": 0},
            {"request_id", "sender_id", "stream_id", "gift_id", "quantity"},
        ),
    ],
)
async def test_invalid_send_gift_is_refused_and_changes_nothing(
    clients: Clients, changes: dict[str, object], fields: set[str]
) -> None:
    stream = await go_live(clients)
    sender = await make_account(clients, package_id="coins_65")
    request = gift_request(sender, stream.stream_id)
    for name, value in changes.items():
        setattr(request, name, value)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await clients.gifts.SendGift(request, metadata=SERVICE)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(error.value) == "INVALID_ARGUMENT"
    assert violated_fields(error.value) == fields
    assert await balance(clients, sender) == 65
    assert (await summary_of(clients, stream.stream_id)).gift_count == 0


async def test_largest_quantity_is_accepted(clients: Clients) -> None:
    stream = await go_live(clients)
    sender = await make_account(clients, package_id="coins_16500")
    reply = await clients.gifts.SendGift(gift_request(sender, stream.stream_id, "rose", 10_000), metadata=SERVICE)
    assert reply.gift.coins == 10_000
    assert reply.sender_balance_coins == 16500 + 825 - 10_000  # the package carries a 5% bonus


# ---------------------------------------------------------------- GetStreamSummary


async def test_stream_summary_totals_and_top_gifters(clients: Clients) -> None:
    stream = await go_live(clients)
    senders = [await make_account(clients, package_id="coins_660") for _ in range(12)]
    # Sender i gives i+1 doughnuts, so the ranking is known; senders 0 and 1 tie after an extra gift below.
    await asyncio.gather(
        *(
            clients.gifts.SendGift(gift_request(sender, stream.stream_id, "doughnut", i + 1), metadata=SERVICE)
            for i, sender in enumerate(senders)
        )
    )
    await clients.gifts.SendGift(gift_request(senders[0], stream.stream_id, "doughnut", 1), metadata=SERVICE)

    summary = await summary_of(clients, stream.stream_id)
    assert summary.stream_id == stream.stream_id
    assert summary.total_coins == 30 * (sum(range(1, 13)) + 1)
    assert summary.gift_count == 13
    expected = sorted(
        [(sender, 30 * (i + 1)) for i, sender in enumerate(senders)][1:] + [(senders[0], 60)],
        key=lambda pair: (-pair[1], pair[0]),
    )[:10]
    assert [(g.account_id, g.coins) for g in summary.top_gifters] == expected
    assert len(summary.top_gifters) == 10


async def test_stream_summary_is_open_to_any_user_and_counts_only_completed_gifts(clients: Clients) -> None:
    stream = await go_live(clients)
    poor = await make_account(clients)
    with pytest.raises(grpc.aio.AioRpcError):
        await clients.gifts.SendGift(gift_request(poor, stream.stream_id), metadata=SERVICE)
    reply = await clients.gifts.GetStreamSummary(
        gifts_pb2.GetStreamSummaryRequest(stream_id=stream.stream_id), metadata=auth(new_id("viewer"))
    )
    assert reply.summary == gifts_pb2.StreamSummary(stream_id=stream.stream_id)


async def test_stream_summary_errors(clients: Clients) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await clients.gifts.GetStreamSummary(
            gifts_pb2.GetStreamSummaryRequest(stream_id="str_missing"), metadata=SERVICE
        )
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_reason(error.value) == "STREAM_NOT_FOUND"
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await clients.gifts.GetStreamSummary(gifts_pb2.GetStreamSummaryRequest(stream_id=""), metadata=SERVICE)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error.value) == {"stream_id"}
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await clients.gifts.GetStreamSummary(gifts_pb2.GetStreamSummaryRequest(stream_id="str_missing"))
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
