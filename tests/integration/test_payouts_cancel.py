"""CancelWithdrawal over real gRPC, PostgreSQL and NATS: a held or not yet submitted payout canceled with its diamonds
returned once, a finished or submitted one kept, for the owner or a service only, and canceled withdrawals free
again under the cap; the payouts ledger consistent after each."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from coinstream.payouts.v1 import payouts_pb2

from tests.support.clients import ADMIN, SERVICE, Clients, auth, new_id
from tests.support.errors import error_reason, refused, violated_fields
from tests.support.payouts import (
    assert_ledger_consistent,
    cancel,
    earnings,
    eventually,
    fetch,
    fund,
    get_withdrawal,
    make_eligible,
    wait_until_finished,
    withdraw,
)
from tests.support.stack import Stack


def cancel_request(withdrawal_id: str, request_id: str | None = None) -> payouts_pb2.CancelWithdrawalRequest:
    return payouts_pb2.CancelWithdrawalRequest(request_id=request_id or new_id("req"), withdrawal_id=withdrawal_id)


async def submitted(stack: Stack, withdrawal_id: str) -> bool:
    [row] = await fetch(stack, "SELECT provider_reference FROM withdrawals WHERE withdrawal_id = $1", withdrawal_id)
    return row["provider_reference"] is not None


# --- CancelWithdrawal -------------------------------------------------------------------------------------------------


async def test_held_payout_stays_pending_until_canceled(stack: Stack, clients: Clients) -> None:
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id, destination="sandbox:hold-forever")
    await fund(clients, creator_id, 5000)
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
    await fund(clients, creator_id, 4000)
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
    await fund(clients, creator_id, 3000)
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
    await fund(clients, creator_id, 2000)
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
    await fund(clients, creator_id, 2000)
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


async def test_cancel_is_for_the_owner_or_a_service(clients: Clients) -> None:
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id, destination="sandbox:hold-auth")
    await fund(clients, creator_id, 2000)
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
    await fund(clients, creator_id, 200_000)
    first = await withdraw(clients, creator_id, 200_000)
    await fund(clients, creator_id, 2000)
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
