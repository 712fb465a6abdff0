"""SendGifts, the bidirectional stream of gifts for backends, against the real stack: every gift answered once, in
its own response (out of order), with SendGift's outcome — money, gift rows and diamonds exact — and the stream's
own refusals (token, role) as the call's status."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc
import pytest
from coinstream.gifts.v1 import gifts_pb2
from google.rpc import error_details_pb2, status_pb2

from tests.integration.test_batching_gifts import assert_settled_once, fetch
from tests.support.clients import SERVICE, Clients, auth
from tests.support.errors import error_reason
from tests.support.factories import balance_of, buy, create_account, wallet_balance
from tests.support.gifts import gift_request, go_live, summary_of
from tests.support.stack import Stack


async def send_stream(
    clients: Clients, requests: Sequence[gifts_pb2.SendGiftRequest], metadata: object = SERVICE
) -> list[gifts_pb2.SendGiftsResponse]:
    """Writes every request, half-closes, and reads every response (they may come out of order)."""
    call = clients.gifts.SendGifts(metadata=metadata, timeout=60)

    async def write_all() -> None:
        for request in requests:
            await call.write(request)
        await call.done_writing()

    writer = asyncio.create_task(write_all())
    responses = [response async for response in call]
    await writer
    assert await call.code() == grpc.StatusCode.OK
    return responses


def by_request_id(responses: Sequence[gifts_pb2.SendGiftsResponse]) -> dict[str, gifts_pb2.SendGiftsResponse]:
    found = {response.request_id: response for response in responses}
    assert len(found) == len(responses), "a request answered twice"
    return found


def reason_of(status: status_pb2.Status) -> str:
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            assert info.domain == "coinstream"
            return info.reason
    raise AssertionError(f"no ErrorInfo in {status}")


def violated_fields_of(status: status_pb2.Status) -> set[str]:
    fields: set[str] = set()
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            fields |= {violation.field for violation in bad_request.field_violations}
    return fields


async def test_a_stream_of_300_gifts_from_many_senders_completes_each_once(stack: Stack, clients: Clients) -> None:
    stream = await go_live(clients)
    senders = [await create_account(clients, prefix="fan") for _ in range(30)]
    await asyncio.gather(*(buy(clients, sender, "coins_65") for sender in senders))
    # 10 gifts per sender: 5 roses and 5 finger hearts, 30 coins of the 65 bought.
    requests = [
        gift_request(sender, stream.stream_id, gift_id)
        for sender in senders
        for gift_id in ("rose", "finger_heart") * 5
    ]
    responses = by_request_id(await send_stream(clients, requests))

    assert set(responses) == {request.request_id for request in requests}
    assert all(response.WhichOneof("outcome") == "gift" for response in responses.values())
    for request in requests:
        gift = responses[request.request_id].gift.gift
        assert (gift.sender_id, gift.stream_id, gift.gift_id) == (request.sender_id, stream.stream_id, request.gift_id)
    replies = [response.gift for response in responses.values()]
    assert len({reply.gift.gift_transaction_id for reply in replies}) == 300
    assert [(await wallet_balance(clients, sender)).coins for sender in senders] == [65 - 30] * 30
    summary = await summary_of(clients, stream.stream_id)
    assert (summary.total_coins, summary.gift_count) == (30 * 30, 300)
    rows = await fetch(
        stack,
        "gifts",
        "SELECT status, count(*) AS n FROM gift_transactions WHERE stream_id = $1 GROUP BY status",
        stream.stream_id,
    )
    assert {row["status"]: row["n"] for row in rows} == {"completed": 300}
    await assert_settled_once(stack, clients, stream.creator_id, replies)

    # The same requests again, on a new stream: the same receipts, nothing charged twice.
    again = by_request_id(await send_stream(clients, requests[:40]))
    assert {rid: response.gift for rid, response in again.items()} == {
        request.request_id: responses[request.request_id].gift for request in requests[:40]
    }
    assert [(await wallet_balance(clients, sender)).coins for sender in senders] == [65 - 30] * 30


async def test_each_gift_gets_sendgifts_outcome_in_its_own_response(clients: Clients) -> None:
    stream = await go_live(clients)
    rich = await create_account(clients, prefix="rich")
    await buy(clients, rich, "coins_65")
    broke = await create_account(clients, prefix="broke")
    good = gift_request(rich, stream.stream_id, "rose")
    replay = gifts_pb2.SendGiftRequest()
    replay.CopyFrom(good)
    missing_id = gift_request(rich, stream.stream_id, "rose")
    missing_id.request_id = ""
    bad_fields = gift_request(rich, stream.stream_id, "rose", quantity=0)
    unknown_gift = gift_request(rich, stream.stream_id, "no_such_gift")
    too_poor = gift_request(broke, stream.stream_id, "rose")
    reused = gift_request(rich, stream.stream_id, "rose", 2, request_id=good.request_id)
    first = by_request_id(await send_stream(clients, [good, missing_id, bad_fields, unknown_gift, too_poor]))

    assert first[good.request_id].WhichOneof("outcome") == "gift"
    invalid = first[""].error
    assert (invalid.code, reason_of(invalid), violated_fields_of(invalid)) == (
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        "INVALID_ARGUMENT",
        {"request_id"},
    )
    assert violated_fields_of(first[bad_fields.request_id].error) == {"quantity"}
    not_found = first[unknown_gift.request_id].error
    assert (not_found.code, reason_of(not_found)) == (grpc.StatusCode.NOT_FOUND.value[0], "GIFT_NOT_FOUND")
    poor = first[too_poor.request_id].error
    assert (poor.code, reason_of(poor)) == (grpc.StatusCode.FAILED_PRECONDITION.value[0], "INSUFFICIENT_COINS")
    # SendGift answers the same refusal for the same gift.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await clients.gifts.SendGift(gift_request(broke, stream.stream_id, "rose"), metadata=SERVICE)
    assert (refused.value.code(), refused.value.details()) == (grpc.StatusCode.FAILED_PRECONDITION, poor.message)

    # A replay answers the same receipt; another gift under the same request_id is REQUEST_ID_REUSED, as SendGift.
    second = await send_stream(clients, [replay, reused])
    assert second[0].request_id == second[1].request_id == good.request_id
    outcomes = sorted((response.WhichOneof("outcome") for response in second), key=str)
    assert outcomes == ["error", "gift"]
    [receipt] = [response.gift for response in second if response.WhichOneof("outcome") == "gift"]
    [reuse] = [response.error for response in second if response.WhichOneof("outcome") == "error"]
    assert receipt == first[good.request_id].gift
    assert (reuse.code, reason_of(reuse)) == (grpc.StatusCode.ALREADY_EXISTS.value[0], "REQUEST_ID_REUSED")
    assert await wallet_balance(clients, rich) == balance_of(rich, 64)
    assert await wallet_balance(clients, broke) == balance_of(broke, 0)


@pytest.mark.parametrize(
    ("metadata", "code"),
    [
        (None, grpc.StatusCode.UNAUTHENTICATED),
        (auth("a-user", "user"), grpc.StatusCode.PERMISSION_DENIED),
        (auth("an-admin", "admin"), grpc.StatusCode.PERMISSION_DENIED),
    ],
)
async def test_only_a_service_may_open_the_stream(clients: Clients, metadata: object, code: grpc.StatusCode) -> None:
    stream = await go_live(clients)
    sender = await create_account(clients, prefix="fan")
    await buy(clients, sender, "coins_65")
    call = clients.gifts.SendGifts(metadata=metadata, timeout=30)
    # Refused at the stream's start, before any request is read. (Nothing written: a write racing the refusal's
    # trailers is answered INTERNAL by grpc's client itself.)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call.read()
    assert (refused.value.code(), error_reason(refused.value)) == (code, code.name)
    assert await wallet_balance(clients, sender) == balance_of(sender, 65)
    assert (await summary_of(clients, stream.stream_id)).gift_count == 0


async def test_a_sender_faster_than_the_gifts_is_slowed_not_refused(clients: Clients) -> None:
    """Far more requests than the stream takes in flight, written as fast as the stream accepts them: every one is
    answered with its gift, none with a refusal."""
    stream = await go_live(clients)
    sender = await create_account(clients, prefix="fast")
    await buy(clients, sender, "coins_1321")
    requests = [gift_request(sender, stream.stream_id, "rose") for _ in range(600)]
    responses = by_request_id(await send_stream(clients, requests))
    assert all(response.WhichOneof("outcome") == "gift" for response in responses.values())
    assert len(responses) == 600
    assert (await wallet_balance(clients, sender)).coins == 1321 + 66 - 600


async def test_a_stream_cancelled_midway_leaves_each_gift_sent_once_or_not_at_all(clients: Clients) -> None:
    """The client goes away with gifts in flight: those complete on their own (or were never taken in), and sending
    the same requests again answers every one, each gift paid once."""
    stream = await go_live(clients)
    sender = await create_account(clients, prefix="gone")
    await buy(clients, sender, "coins_330")
    requests = [gift_request(sender, stream.stream_id, "rose") for _ in range(200)]
    call = clients.gifts.SendGifts(metadata=SERVICE, timeout=60)
    for request in requests[:150]:
        await call.write(request)
    first = await call.read()
    call.cancel()
    assert isinstance(first, gifts_pb2.SendGiftsResponse) and first.WhichOneof("outcome") == "gift"

    responses = by_request_id(await send_stream(clients, requests))
    assert all(response.WhichOneof("outcome") == "gift" for response in responses.values())
    assert responses[first.request_id].gift == first.gift
    assert len({response.gift.gift.gift_transaction_id for response in responses.values()}) == 200
    assert (await wallet_balance(clients, sender)).coins == 330 - 200
    assert (await summary_of(clients, stream.stream_id)).gift_count == 200
