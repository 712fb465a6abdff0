"""A creator's lists over real gRPC and PostgreSQL: withdrawals newest first in pages, statements (ListEarnings) by
stream, video and day; page tokens good only for their own list, forged positions refused; the refusals."""

from __future__ import annotations

import base64
import json

import grpc
import pytest
from coinstream.payouts.v1 import payouts_pb2

from tests.support.clients import ADMIN, SERVICE, Clients, auth, new_id
from tests.support.errors import refused, violated_fields
from tests.support.payouts import (
    cancel,
    earnings,
    fetch,
    fund,
    gift_sent,
    make_eligible,
    publish,
    wait_for_lifetime,
    withdraw,
)
from tests.support.stack import Stack

# Statements over gifts to streams and videos made up here: on the synthetic stack (tests/conftest.py).
pytestmark = pytest.mark.synthetic_events


async def list_withdrawals(
    clients: Clients, creator_id: str, page_size: int = 0, page_token: str = ""
) -> payouts_pb2.ListWithdrawalsResponse:
    request = payouts_pb2.ListWithdrawalsRequest(creator_id=creator_id, page_size=page_size, page_token=page_token)
    return await clients.payouts.ListWithdrawals(request, metadata=SERVICE)


async def list_earnings(
    clients: Clients,
    creator_id: str,
    group_by: payouts_pb2.EarningsGroupBy.ValueType,
    page_size: int = 0,
    page_token: str = "",
    metadata: tuple[tuple[str, str], ...] = SERVICE,
) -> payouts_pb2.ListEarningsResponse:
    request = payouts_pb2.ListEarningsRequest(
        creator_id=creator_id, group_by=group_by, page_size=page_size, page_token=page_token
    )
    return await clients.payouts.ListEarnings(request, metadata=metadata)


def rows(response: payouts_pb2.ListEarningsResponse) -> list[tuple[str, int, int]]:
    return [(row.key, row.diamonds, row.gift_count) for row in response.rows]


# --- ListWithdrawals --------------------------------------------------------------------------------------------------


async def test_withdrawals_are_listed_newest_first_in_pages(clients: Clients) -> None:
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id, destination="sandbox:hold-list")
    await fund(clients, creator_id, 10_000)
    made = [await withdraw(clients, creator_id, 2000) for _ in range(5)]
    await cancel(clients, made[1].withdrawal_id)

    listed: list[payouts_pb2.Withdrawal] = []
    token = ""
    for expected_size in (2, 2, 1):
        page = await list_withdrawals(clients, creator_id, page_size=2, page_token=token)
        assert len(page.withdrawals) == expected_size
        listed += page.withdrawals
        token = page.next_page_token
    assert token == ""
    assert [w.withdrawal_id for w in listed] == [w.withdrawal_id for w in reversed(made)]
    statuses = {w.withdrawal_id: w.status for w in listed}
    assert statuses[made[1].withdrawal_id] == payouts_pb2.WITHDRAWAL_STATUS_CANCELED
    assert (await list_withdrawals(clients, creator_id)).withdrawals == listed  # default page size 50
    assert (await list_withdrawals(clients, new_id("creator"))).withdrawals == []

    for metadata in (auth(creator_id), ADMIN):
        request = payouts_pb2.ListWithdrawalsRequest(creator_id=creator_id, page_size=1)
        assert len((await clients.payouts.ListWithdrawals(request, metadata=metadata)).withdrawals) == 1
    for withdrawal in made:
        if withdrawal.withdrawal_id != made[1].withdrawal_id:
            await cancel(clients, withdrawal.withdrawal_id)


async def test_list_withdrawals_refusals(clients: Clients) -> None:
    creator_id = new_id("creator")
    error = await refused(
        clients.payouts.ListWithdrawals(
            payouts_pb2.ListWithdrawalsRequest(creator_id=creator_id), metadata=auth("intruder")
        )
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    for page_size in (-1, 101):
        error = await refused(list_withdrawals(clients, creator_id, page_size=page_size))
        assert violated_fields(error) == {"page_size"}
    error = await refused(list_withdrawals(clients, "bad/creator", page_size=1000))
    assert violated_fields(error) == {"creator_id", "page_size"}
    for token in ("forged", "eyJrIjoid2l0aGRyYXdhbHMifQ==", "\x00"):
        error = await refused(list_withdrawals(clients, creator_id, page_token=token))
        assert (error.code(), violated_fields(error)) == (grpc.StatusCode.INVALID_ARGUMENT, {"page_token"})


async def test_forged_positions_a_datetime_or_postgresql_cannot_hold_are_refused(clients: Clients) -> None:
    """Found by the fuzzer (test_fuzz.py): a token of the right list and creator whose moment is past year 9999
    (within int64) or whose id holds a NUL or a lone surrogate failed INTERNAL instead of INVALID_ARGUMENT."""
    creator_id = new_id("creator")
    for kind, group_by in (
        ("withdrawals", None),
        ("earnings_by_stream", payouts_pb2.EARNINGS_GROUP_BY_STREAM),
        ("earnings_by_video", payouts_pb2.EARNINGS_GROUP_BY_VIDEO),
    ):
        for position in ([2**62, "x"], [-(2**63), "x"], [2**63 - 1, "x"], [1, "\x00"], [1, "\ud800"]):
            token = base64.urlsafe_b64encode(json.dumps({"k": kind, "c": creator_id, "p": position}).encode()).decode()
            call = (
                list_withdrawals(clients, creator_id, page_token=token)
                if group_by is None
                else list_earnings(clients, creator_id, group_by, page_token=token)
            )
            error = await refused(call)
            assert (error.code(), violated_fields(error)) == (grpc.StatusCode.INVALID_ARGUMENT, {"page_token"}), (
                kind,
                position,
            )


async def test_a_page_token_is_only_good_for_its_own_list(clients: Clients) -> None:
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id, destination="sandbox:hold-token")
    await fund(clients, creator_id, 4000)
    made = [await withdraw(clients, creator_id, 2000) for _ in range(2)]
    token = (await list_withdrawals(clients, creator_id, page_size=1)).next_page_token
    assert token
    error = await refused(list_withdrawals(clients, new_id("creator"), page_token=token))
    assert violated_fields(error) == {"page_token"}
    error = await refused(list_earnings(clients, creator_id, payouts_pb2.EARNINGS_GROUP_BY_DAY, page_token=token))
    assert violated_fields(error) == {"page_token"}
    for withdrawal in made:
        await cancel(clients, withdrawal.withdrawal_id)


# --- ListEarnings -----------------------------------------------------------------------------------------------------


async def test_statement_by_stream_and_by_day(stack: Stack, clients: Clients) -> None:
    creator_id = new_id("creator")
    streams = {name: new_id(f"stream-{name}") for name in ("a", "b", "c")}
    # Settled one after another, so each stream's latest credit is later than the one before.
    for name, amounts in (("a", (5, 30)), ("b", (100,)), ("c", (1, 1, 1)), ("a", (299,))):
        before = (await earnings(clients, creator_id)).lifetime_diamonds
        await publish(stack, [gift_sent(creator_id, coins, stream_id=streams[name]) for coins in amounts])
        await wait_for_lifetime(clients, creator_id, before + sum(amounts))

    by_stream = await list_earnings(clients, creator_id, payouts_pb2.EARNINGS_GROUP_BY_STREAM)
    assert rows(by_stream) == [(streams["a"], 334, 3), (streams["c"], 3, 3), (streams["b"], 100, 1)]
    assert by_stream.next_page_token == ""
    first = await list_earnings(clients, creator_id, payouts_pb2.EARNINGS_GROUP_BY_STREAM, page_size=2)
    assert rows(first) == rows(by_stream)[:2]
    second = await list_earnings(
        clients, creator_id, payouts_pb2.EARNINGS_GROUP_BY_STREAM, page_size=2, page_token=first.next_page_token
    )
    assert (rows(second), second.next_page_token) == (rows(by_stream)[2:], "")

    [today] = await fetch(stack, "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day")
    by_day = await list_earnings(clients, creator_id, payouts_pb2.EARNINGS_GROUP_BY_DAY, metadata=auth(creator_id))
    assert rows(by_day) == [(today["day"], 437, 7)]
    assert by_day.next_page_token == ""
    one = await list_earnings(clients, creator_id, payouts_pb2.EARNINGS_GROUP_BY_DAY, page_size=1, metadata=ADMIN)
    assert (rows(one), one.next_page_token) == (rows(by_day), "")
    assert rows(await list_earnings(clients, new_id("creator"), payouts_pb2.EARNINGS_GROUP_BY_DAY)) == []
    # Statement totals are the creator's lifetime diamonds.
    assert sum(row.diamonds for row in by_stream.rows) == (await earnings(clients, creator_id)).lifetime_diamonds


async def test_statement_by_video_apart_from_streams_and_by_day_with_both(stack: Stack, clients: Clients) -> None:
    creator_id = new_id("creator")
    stream_id, videos = new_id("stream"), {name: new_id(f"video-{name}") for name in ("a", "b")}
    # Settled one after another, so each video's latest credit is later than the one before.
    for target, amounts in (("a", (10, 20)), ("stream", (100,)), ("b", (5,)), ("a", (1,))):
        before = (await earnings(clients, creator_id)).lifetime_diamonds
        to_stream, to_video = (stream_id, "") if target == "stream" else (None, videos[target])
        await publish(
            stack, [gift_sent(creator_id, coins, stream_id=to_stream, video_id=to_video) for coins in amounts]
        )
        await wait_for_lifetime(clients, creator_id, before + sum(amounts))

    by_video = await list_earnings(clients, creator_id, payouts_pb2.EARNINGS_GROUP_BY_VIDEO, metadata=auth(creator_id))
    assert (rows(by_video), by_video.next_page_token) == ([(videos["a"], 31, 3), (videos["b"], 5, 1)], "")
    by_stream = await list_earnings(clients, creator_id, payouts_pb2.EARNINGS_GROUP_BY_STREAM)
    assert rows(by_stream) == [(stream_id, 100, 1)]
    [today] = await fetch(stack, "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day")
    assert rows(await list_earnings(clients, creator_id, payouts_pb2.EARNINGS_GROUP_BY_DAY)) == [(today["day"], 136, 5)]

    first = await list_earnings(clients, creator_id, payouts_pb2.EARNINGS_GROUP_BY_VIDEO, page_size=1)
    assert rows(first) == rows(by_video)[:1]
    error = await refused(
        list_earnings(clients, creator_id, payouts_pb2.EARNINGS_GROUP_BY_STREAM, page_token=first.next_page_token)
    )
    assert (error.code(), violated_fields(error)) == (grpc.StatusCode.INVALID_ARGUMENT, {"page_token"})
    second = await list_earnings(
        clients, creator_id, payouts_pb2.EARNINGS_GROUP_BY_VIDEO, page_size=1, page_token=first.next_page_token
    )
    assert (rows(second), second.next_page_token) == (rows(by_video)[1:], "")
    # Streams and videos together are the creator's lifetime diamonds.
    total = sum(row.diamonds for row in (*by_stream.rows, *by_video.rows))
    assert total == (await earnings(clients, creator_id)).lifetime_diamonds


async def test_list_earnings_refusals(clients: Clients) -> None:
    creator_id = new_id("creator")
    undefined = payouts_pb2.EarningsGroupBy.ValueType(7)  # a number the enum does not define
    for group_by in (payouts_pb2.EARNINGS_GROUP_BY_UNSPECIFIED, undefined):
        error = await refused(list_earnings(clients, creator_id, group_by))
        assert (error.code(), violated_fields(error)) == (grpc.StatusCode.INVALID_ARGUMENT, {"group_by"})
    error = await refused(list_earnings(clients, creator_id, payouts_pb2.EARNINGS_GROUP_BY_DAY, page_size=101))
    assert violated_fields(error) == {"page_size"}
    error = await refused(
        list_earnings(clients, creator_id, payouts_pb2.EARNINGS_GROUP_BY_STREAM, metadata=auth("intruder"))
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    not_a_day = {"k": "earnings_by_day", "c": creator_id, "p": ["2026-13-01"]}
    for group_by, token in (
        (payouts_pb2.EARNINGS_GROUP_BY_STREAM, "forged"),
        (payouts_pb2.EARNINGS_GROUP_BY_DAY, base64.urlsafe_b64encode(json.dumps(not_a_day).encode()).decode()),
    ):
        error = await refused(list_earnings(clients, creator_id, group_by, page_token=token))
        assert violated_fields(error) == {"page_token"}
