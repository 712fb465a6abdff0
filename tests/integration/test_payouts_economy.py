"""Economy depth in payouts, over real gRPC, PostgreSQL and NATS: the maturity hold on gift diamonds, exact rounding
at a fractional rate, the withdrawal lifecycle (cancel, list) and creator statements; each rule with its refusals,
and the payouts ledger consistent after each."""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections.abc import Awaitable

import asyncpg
import grpc
import pytest
from coinstream.payouts.v1 import payouts_pb2

from tests.conftest import ADMIN, SERVICE, Clients, auth, new_id
from tests.grpc_errors import error_reason, violated_fields
from tests.integration.payouts_helpers import (
    assert_ledger_consistent,
    earnings,
    eventually,
    fund,
    get_withdrawal,
    gift_sent,
    make_eligible,
    publish,
    wait_for_lifetime,
    wait_until_finished,
    withdraw,
)
from tests.stack import Stack

HOLD_SECONDS = 2


async def refused(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    return error.value


async def fetch(stack: Stack, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(stack.database_url("payouts"))
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def cancel(
    clients: Clients,
    withdrawal_id: str,
    request_id: str | None = None,
    metadata: tuple[tuple[str, str], ...] = SERVICE,
) -> payouts_pb2.Withdrawal:
    request = payouts_pb2.CancelWithdrawalRequest(request_id=request_id or new_id("req"), withdrawal_id=withdrawal_id)
    return (await clients.payouts.CancelWithdrawal(request, metadata=metadata)).withdrawal


def cancel_request(withdrawal_id: str, request_id: str | None = None) -> payouts_pb2.CancelWithdrawalRequest:
    return payouts_pb2.CancelWithdrawalRequest(request_id=request_id or new_id("req"), withdrawal_id=withdrawal_id)


async def submitted(stack: Stack, withdrawal_id: str) -> bool:
    [row] = await fetch(stack, "SELECT provider_reference FROM withdrawals WHERE withdrawal_id = $1", withdrawal_id)
    return row["provider_reference"] is not None


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


# --- maturity hold ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_held_diamonds_are_pending_until_the_hold_ends(stack: Stack, clients: Clients) -> None:
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id, destination="sandbox:hold-matured")
    try:
        stack.restart_service("payouts", {"COINSTREAM_DIAMOND_HOLD_SECONDS": str(HOLD_SECONDS)})
        await publish(stack, [gift_sent(creator_id, 3000, paid_coins=2500, bonus_coins=500)])
        held = await wait_for_lifetime(clients, creator_id, 3000)
        assert (held.pending_diamonds, held.available_diamonds, held.lifetime_diamonds) == (3000, 0, 3000)
        # Pending diamonds cannot be withdrawn.
        error = await refused(
            clients.payouts.RequestWithdrawal(
                payouts_pb2.RequestWithdrawalRequest(request_id=new_id("req"), creator_id=creator_id, diamonds=2000),
                metadata=SERVICE,
            )
        )
        assert (error.code(), error_reason(error)) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_DIAMONDS")
        # Maturing is the only change a credit allows, and only with its amounts untouched.
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await fetch(
                stack,
                "UPDATE diamond_credits SET diamonds = diamonds + 1, matured_at = now(),"
                " maturity_transaction_id = transaction_id WHERE creator_id = $1",
                creator_id,
            )
        await assert_ledger_consistent(stack)

        matured = await eventually(
            lambda: earnings(clients, creator_id), lambda found: found.pending_diamonds == 0, seconds=HOLD_SECONDS + 10
        )
        assert (matured.pending_diamonds, matured.available_diamonds, matured.lifetime_diamonds) == (0, 3000, 3000)
        [credit] = await fetch(
            stack,
            "SELECT available_at - created_at AS hold, matured_at >= available_at AS on_time, maturity_transaction_id,"
            " paid_coins, bonus_coins FROM diamond_credits WHERE creator_id = $1",
            creator_id,
        )
        assert credit["hold"].total_seconds() == HOLD_SECONDS
        assert credit["on_time"] and credit["maturity_transaction_id"] is not None
        assert (credit["paid_coins"], credit["bonus_coins"]) == (2500, 500)
        withdrawal = await withdraw(clients, creator_id, 2000)
        assert withdrawal.status == payouts_pb2.WITHDRAWAL_STATUS_PENDING
        await cancel(clients, withdrawal.withdrawal_id)
        await assert_ledger_consistent(stack)
    finally:
        stack.restart_service("payouts")


@pytest.mark.slow
async def test_withdrawal_matures_its_own_due_credits(stack: Stack, clients: Clients) -> None:
    """With the maturity worker asleep, a withdrawal after the hold still finds its diamonds available."""
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id, destination="sandbox:hold-lazy")
    try:
        stack.restart_service(
            "payouts",
            {
                "COINSTREAM_DIAMOND_HOLD_SECONDS": str(HOLD_SECONDS),
                "COINSTREAM_PAYOUTS_MATURITY_INTERVAL_SECONDS": "3600",
            },
        )
        await publish(stack, [gift_sent(creator_id, coins) for coins in (1000, 2000)])
        await wait_for_lifetime(clients, creator_id, 3000)
        await asyncio.sleep(HOLD_SECONDS + 0.5)
        assert (await earnings(clients, creator_id)).pending_diamonds == 3000  # nobody moved them yet
        withdrawal = await withdraw(clients, creator_id, 2000)
        found = await earnings(clients, creator_id)
        assert (found.pending_diamonds, found.available_diamonds, found.reserved_diamonds) == (0, 1000, 2000)
        await cancel(clients, withdrawal.withdrawal_id)
        await assert_ledger_consistent(stack)
    finally:
        stack.restart_service("payouts")


@pytest.mark.slow
async def test_credits_held_before_a_restart_without_hold_still_mature(stack: Stack, clients: Clients) -> None:
    creator_id = new_id("creator")
    try:
        stack.restart_service("payouts", {"COINSTREAM_DIAMOND_HOLD_SECONDS": str(HOLD_SECONDS)})
        await publish(stack, [gift_sent(creator_id, 500)])
        await wait_for_lifetime(clients, creator_id, 500)
    finally:
        stack.restart_service("payouts")
    await publish(stack, [gift_sent(creator_id, 100)])  # no hold any more: available at once
    found = await eventually(
        lambda: earnings(clients, creator_id), lambda found: found.available_diamonds == 600, seconds=HOLD_SECONDS + 10
    )
    assert (found.pending_diamonds, found.available_diamonds, found.lifetime_diamonds) == (0, 600, 600)
    await assert_ledger_consistent(stack)


@pytest.mark.slow
async def test_maturity_races_settlement_and_withdrawals_without_losing_a_diamond(
    stack: Stack, clients: Clients
) -> None:
    """Many creators, gifts still arriving while earlier ones mature, and withdrawals maturing their own credits
    at the same time as the maturity worker: every credit matures once and the ledger stays exact."""
    creators = [new_id("creator") for _ in range(12)]
    for creator_id in creators:
        await make_eligible(clients, creator_id, destination="sandbox:hold-race")
    try:
        stack.restart_service("payouts", {"COINSTREAM_DIAMOND_HOLD_SECONDS": "1"})
        for _ in range(4):
            await publish(stack, [gift_sent(creator_id, 1000) for creator_id in creators for _ in range(3)])
            await asyncio.sleep(0.7)
        for creator_id in creators:
            await wait_for_lifetime(clients, creator_id, 12_000)
        await asyncio.sleep(1.0)
        outcomes = await asyncio.gather(
            *(withdraw(clients, creator_id, 2000) for creator_id in creators for _ in range(2)),
            publish(stack, [gift_sent(creator_id, 500) for creator_id in creators]),
            return_exceptions=True,
        )
        assert [o for o in outcomes if isinstance(o, BaseException)] == []
        for creator_id in creators:
            found = await eventually(
                lambda creator_id=creator_id: earnings(clients, creator_id),
                lambda found: found.pending_diamonds == 0 and found.lifetime_diamonds == 12_500,
            )
            assert (found.available_diamonds, found.reserved_diamonds) == (8500, 4000)
        await assert_ledger_consistent(stack)
    finally:
        stack.restart_service("payouts")
    for withdrawal in [o for o in outcomes if isinstance(o, payouts_pb2.Withdrawal)]:
        await cancel(clients, withdrawal.withdrawal_id)
    await assert_ledger_consistent(stack)


async def test_database_lets_a_credit_change_only_by_maturing_once(stack: Stack, clients: Clients) -> None:
    creator_id = new_id("creator")
    event = gift_sent(creator_id, 10)
    await publish(stack, [event])
    await wait_for_lifetime(clients, creator_id, 10)
    for edit in (
        "UPDATE diamond_credits SET diamonds = diamonds + 1 WHERE gift_transaction_id = $1",
        # Settled without a hold, so it matured when it was made.
        "UPDATE diamond_credits SET matured_at = now(), maturity_transaction_id = transaction_id"
        " WHERE gift_transaction_id = $1",
        "DELETE FROM diamond_credits WHERE gift_transaction_id = $1",
    ):
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await fetch(stack, edit, event.gift_transaction_id)
    assert (await earnings(clients, creator_id)).lifetime_diamonds == 10


# --- exact rounding ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_seven_tenths_over_a_thousand_random_gifts_is_exact(stack: Stack, clients: Clients) -> None:
    rng = random.Random(20261125)
    creators = [new_id("creator") for _ in range(2)]
    events = [gift_sent(rng.choice(creators), rng.choice((1, 3, 5, 7, 30, 99, 100, 299))) for _ in range(1000)]
    coins = {creator_id: sum(e.coins for e in events if e.recipient_id == creator_id) for creator_id in creators}
    try:
        stack.restart_service(
            "payouts", {"COINSTREAM_PAYOUTS_RATE_NUMERATOR": "7", "COINSTREAM_PAYOUTS_RATE_DENOMINATOR": "10"}
        )
        rates = (await clients.payouts.GetRates(payouts_pb2.GetRatesRequest(), metadata=SERVICE)).rates
        assert (rates.diamonds_per_coin_numerator, rates.diamonds_per_coin_denominator) == (7, 10)
        # Several publishes, so the gifts settle in several batches and the carry crosses batch boundaries.
        for start in range(0, len(events), 250):
            await publish(stack, events[start : start + 250])

        async def credited() -> int:
            [row] = await fetch(
                stack, "SELECT count(*) FROM diamond_credits WHERE creator_id = ANY($1::text[])", creators
            )
            return int(row["count"])

        assert await eventually(credited, lambda count: count == 1000) == 1000
        for creator_id in creators:
            found = await earnings(clients, creator_id)
            exact = coins[creator_id] * 7 // 10
            assert (found.lifetime_diamonds, found.available_diamonds) == (exact, exact)
            [carry] = await fetch(
                stack,
                "SELECT remainder FROM settlement_carries WHERE creator_id = $1 AND rate_version = $2",
                creator_id,
                rates.rate_version,
            )
            assert carry["remainder"] == coins[creator_id] * 7 % 10
        [batches] = await fetch(
            stack,
            "SELECT count(DISTINCT transaction_id) FROM diamond_credits WHERE creator_id = ANY($1::text[])",
            creators,
        )
        assert batches["count"] > 1
        await assert_ledger_consistent(stack)
    finally:
        stack.restart_service("payouts")
    rates = (await clients.payouts.GetRates(payouts_pb2.GetRatesRequest(), metadata=SERVICE)).rates
    assert (rates.diamonds_per_coin_numerator, rates.diamonds_per_coin_denominator) == (1, 1)


# --- CancelWithdrawal -------------------------------------------------------------------------------------------------


async def test_held_payout_stays_pending_until_canceled(stack: Stack, clients: Clients) -> None:
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id, destination="sandbox:hold-forever")
    await fund(stack, clients, creator_id, 5000)
    withdrawal = await withdraw(clients, creator_id, 2000)
    assert await eventually(lambda: submitted(stack, withdrawal.withdrawal_id), bool)
    await asyncio.sleep(1.0)  # twice the sandbox's settle time: an ok destination would have been paid by now
    assert (await get_withdrawal(clients, withdrawal.withdrawal_id)).status == payouts_pb2.WITHDRAWAL_STATUS_PENDING

    request = cancel_request(withdrawal.withdrawal_id)
    canceled = await clients.payouts.CancelWithdrawal(request, metadata=auth(creator_id))
    assert canceled.withdrawal.status == payouts_pb2.WITHDRAWAL_STATUS_CANCELED
    assert (canceled.withdrawal.withdrawal_id, canceled.withdrawal.diamonds) == (withdrawal.withdrawal_id, 2000)
    assert canceled.withdrawal.failure_reason == ""
    assert (await get_withdrawal(clients, withdrawal.withdrawal_id)) == canceled.withdrawal
    found = await earnings(clients, creator_id)
    assert (found.available_diamonds, found.reserved_diamonds, found.lifetime_diamonds) == (5000, 0, 5000)

    # The same request again: the same answer, nothing moved. A new request: the canceled withdrawal, unchanged.
    assert await clients.payouts.CancelWithdrawal(request, metadata=auth(creator_id)) == canceled
    assert await cancel(clients, withdrawal.withdrawal_id) == canceled.withdrawal
    returned = await fetch(
        stack,
        "SELECT count(*) FROM ledger_transactions WHERE reference = $1 AND kind = 'withdrawal_canceled'",
        withdrawal.withdrawal_id,
    )
    assert returned[0]["count"] == 1
    assert (await earnings(clients, creator_id)).available_diamonds == 5000

    other = await withdraw(clients, creator_id, 2000)
    reused = cancel_request(other.withdrawal_id, request_id=request.request_id)  # by the same caller
    error = await refused(clients.payouts.CancelWithdrawal(reused, metadata=auth(creator_id)))
    assert (error.code(), error_reason(error)) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    await cancel(clients, other.withdrawal_id)
    await assert_ledger_consistent(stack)


async def test_concurrent_cancels_return_the_diamonds_once(stack: Stack, clients: Clients) -> None:
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id, destination="sandbox:hold-race")
    await fund(stack, clients, creator_id, 4000)
    withdrawal = await withdraw(clients, creator_id, 4000)
    outcomes = await asyncio.gather(*(cancel(clients, withdrawal.withdrawal_id) for _ in range(8)))
    assert {outcome.status for outcome in outcomes} == {payouts_pb2.WITHDRAWAL_STATUS_CANCELED}
    found = await earnings(clients, creator_id)
    assert (found.available_diamonds, found.reserved_diamonds) == (4000, 0)
    await assert_ledger_consistent(stack)


@pytest.mark.parametrize(
    ("destination", "status"),
    [
        ("sandbox:ok-done", payouts_pb2.WITHDRAWAL_STATUS_PAID),
        ("sandbox:fail-done", payouts_pb2.WITHDRAWAL_STATUS_FAILED),
    ],
)
async def test_finished_withdrawal_cannot_be_canceled(
    stack: Stack, clients: Clients, destination: str, status: payouts_pb2.WithdrawalStatus.ValueType
) -> None:
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id, destination=destination)
    await fund(stack, clients, creator_id, 3000)
    withdrawal = await withdraw(clients, creator_id, 2000)
    finished = await wait_until_finished(clients, withdrawal.withdrawal_id)
    assert finished.status == status
    request = cancel_request(withdrawal.withdrawal_id)
    for _ in range(2):  # the refusal is the request's outcome: replayed as it was
        error = await refused(clients.payouts.CancelWithdrawal(request, metadata=SERVICE))
        assert (error.code(), error_reason(error)) == (grpc.StatusCode.FAILED_PRECONDITION, "WITHDRAWAL_NOT_CANCELABLE")
    assert await get_withdrawal(clients, withdrawal.withdrawal_id) == finished
    await assert_ledger_consistent(stack)


@pytest.mark.slow
async def test_submitted_payout_to_an_ok_destination_cannot_be_canceled(stack: Stack, clients: Clients) -> None:
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id, destination="sandbox:ok-slow")
    await fund(stack, clients, creator_id, 2000)
    try:
        stack.restart_service("payouts", {"COINSTREAM_PAYOUTS_SANDBOX_SETTLE_SECONDS": "3600"})
        withdrawal = await withdraw(clients, creator_id, 2000)
        assert await eventually(lambda: submitted(stack, withdrawal.withdrawal_id), bool)
        error = await refused(
            clients.payouts.CancelWithdrawal(cancel_request(withdrawal.withdrawal_id), metadata=SERVICE)
        )
        assert (error.code(), error_reason(error)) == (grpc.StatusCode.FAILED_PRECONDITION, "WITHDRAWAL_NOT_CANCELABLE")
        assert (await earnings(clients, creator_id)).reserved_diamonds == 2000
    finally:
        stack.restart_service("payouts")
    # Back at the usual settle time, the provider reports it paid.
    paid = await wait_until_finished(clients, withdrawal.withdrawal_id)
    assert paid.status == payouts_pb2.WITHDRAWAL_STATUS_PAID
    await assert_ledger_consistent(stack)


@pytest.mark.slow
async def test_ok_payout_can_be_canceled_before_submission(stack: Stack, clients: Clients) -> None:
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id, destination="sandbox:ok-early")
    await fund(stack, clients, creator_id, 2000)
    try:
        # The payout worker looks once at start, then sleeps: a withdrawal made now is not submitted.
        stack.restart_service("payouts", {"COINSTREAM_PAYOUTS_WORKER_INTERVAL_SECONDS": "3600"})
        withdrawal = await withdraw(clients, creator_id, 2000)
        canceled = await cancel(clients, withdrawal.withdrawal_id)
        assert canceled.status == payouts_pb2.WITHDRAWAL_STATUS_CANCELED
        assert not await submitted(stack, withdrawal.withdrawal_id)
    finally:
        stack.restart_service("payouts")
    found = await earnings(clients, creator_id)
    assert (found.available_diamonds, found.reserved_diamonds) == (2000, 0)
    await assert_ledger_consistent(stack)


async def test_cancel_is_for_the_owner_or_a_service(stack: Stack, clients: Clients) -> None:
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id, destination="sandbox:hold-auth")
    await fund(stack, clients, creator_id, 2000)
    withdrawal = await withdraw(clients, creator_id, 2000)
    # Someone else's withdrawal looks like a missing one.
    for withdrawal_id, metadata in ((withdrawal.withdrawal_id, auth("intruder")), ("wd_does_not_exist", SERVICE)):
        error = await refused(clients.payouts.CancelWithdrawal(cancel_request(withdrawal_id), metadata=metadata))
        assert (error.code(), error_reason(error)) == (grpc.StatusCode.NOT_FOUND, "WITHDRAWAL_NOT_FOUND")
    error = await refused(clients.payouts.CancelWithdrawal(cancel_request(withdrawal.withdrawal_id), metadata=ADMIN))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    error = await refused(
        clients.payouts.CancelWithdrawal(payouts_pb2.CancelWithdrawalRequest(request_id="bad id!"), metadata=SERVICE)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == {"request_id", "withdrawal_id"}
    assert (await get_withdrawal(clients, withdrawal.withdrawal_id)).status == payouts_pb2.WITHDRAWAL_STATUS_PENDING
    await cancel(clients, withdrawal.withdrawal_id, metadata=auth(creator_id))


async def test_canceled_withdrawals_do_not_count_toward_the_cap(stack: Stack, clients: Clients) -> None:
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id, destination="sandbox:hold-cap")
    await fund(stack, clients, creator_id, 200_000)
    first = await withdraw(clients, creator_id, 200_000)
    await fund(stack, clients, creator_id, 2000)
    error = await refused(
        clients.payouts.RequestWithdrawal(
            payouts_pb2.RequestWithdrawalRequest(request_id=new_id("req"), creator_id=creator_id, diamonds=2000),
            metadata=SERVICE,
        )
    )
    assert error_reason(error) == "WITHDRAWAL_LIMIT_EXCEEDED"  # the pending one counts
    await cancel(clients, first.withdrawal_id)
    again = await withdraw(clients, creator_id, 200_000)
    assert again.status == payouts_pb2.WITHDRAWAL_STATUS_PENDING
    await cancel(clients, again.withdrawal_id)
    await assert_ledger_consistent(stack)


# --- ListWithdrawals --------------------------------------------------------------------------------------------------


async def test_withdrawals_are_listed_newest_first_in_pages(stack: Stack, clients: Clients) -> None:
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id, destination="sandbox:hold-list")
    await fund(stack, clients, creator_id, 10_000)
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


async def test_a_page_token_is_only_good_for_its_own_list(stack: Stack, clients: Clients) -> None:
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id, destination="sandbox:hold-token")
    await fund(stack, clients, creator_id, 4000)
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
