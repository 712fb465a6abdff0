"""PayoutService over real gRPC: every RPC's happy path, its errors, validation, auth and idempotency; withdrawals
paid and failed by the sandbox payout provider. Diamonds arrive through real gifts, settled (tests/support/payouts.py
fund)."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
import pytest
from coinstream.payouts.v1 import payouts_pb2

from tests.support.clients import ADMIN, SERVICE, Clients, auth, new_id, stored_key
from tests.support.errors import error_reason, refused, violated_fields
from tests.support.payouts import (
    assert_ledger_consistent,
    earnings,
    fund,
    make_eligible,
    wait_until_finished,
    withdraw,
)
from tests.support.stack import Stack


def profile_request(
    creator_id: str, request_id: str | None = None, destination: str = "sandbox:ok-x", kyc_verified: bool = True
) -> payouts_pb2.UpdateCreatorProfileRequest:
    return payouts_pb2.UpdateCreatorProfileRequest(
        request_id=request_id or new_id("req"),
        creator_id=creator_id,
        kyc_verified=kyc_verified,
        payout_destination=destination,
    )


def withdrawal_request(
    creator_id: str, diamonds: int, request_id: str | None = None
) -> payouts_pb2.RequestWithdrawalRequest:
    return payouts_pb2.RequestWithdrawalRequest(
        request_id=request_id or new_id("req"), creator_id=creator_id, diamonds=diamonds
    )


# --- GetRates ---------------------------------------------------------------------------------------------------------


async def test_rates_are_the_contract_defaults(clients: Clients) -> None:
    response = await clients.payouts.GetRates(payouts_pb2.GetRatesRequest(), metadata=auth(new_id("viewer")))
    rates = response.rates
    assert (rates.diamonds_per_coin_numerator, rates.diamonds_per_coin_denominator) == (1, 1)
    assert (rates.diamond_value_per_1000.currency_code, rates.diamond_value_per_1000.amount_minor) == ("USD", 500)
    assert rates.minimum_withdrawal_diamonds == 2000
    assert rates.daily_withdrawal_cap_diamonds == 200_000
    assert rates.rate_version >= 1


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer not-a-jwt"),), (("authorization", "Basic x"),)])
async def test_calls_without_a_valid_token_are_unauthenticated(
    clients: Clients, metadata: tuple[tuple[str, str], ...]
) -> None:
    error = await refused(clients.payouts.GetRates(payouts_pb2.GetRatesRequest(), metadata=metadata))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    error = await refused(
        clients.payouts.GetEarnings(payouts_pb2.GetEarningsRequest(creator_id="someone"), metadata=metadata)
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


# --- GetEarnings ------------------------------------------------------------------------------------------------------


async def test_unknown_creator_has_zero_earnings(clients: Clients) -> None:
    creator_id = new_id("creator")
    found = await earnings(clients, creator_id)
    assert found == payouts_pb2.Earnings(creator_id=creator_id)


async def test_earnings_are_visible_to_owner_service_and_admin_only(clients: Clients) -> None:
    creator_id = new_id("creator")
    await fund(clients, creator_id, 1234)
    for metadata in (auth(creator_id), SERVICE, ADMIN):
        response = await clients.payouts.GetEarnings(
            payouts_pb2.GetEarningsRequest(creator_id=creator_id), metadata=metadata
        )
        assert (response.earnings.available_diamonds, response.earnings.lifetime_diamonds) == (1234, 1234)
    error = await refused(
        clients.payouts.GetEarnings(payouts_pb2.GetEarningsRequest(creator_id=creator_id), metadata=auth("intruder"))
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("creator_id", ["", "has space", "creator:x", "x" * 65])
async def test_earnings_need_a_valid_creator_id(clients: Clients, creator_id: str) -> None:
    error = await refused(
        clients.payouts.GetEarnings(payouts_pb2.GetEarningsRequest(creator_id=creator_id), metadata=SERVICE)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == {"creator_id"}


# --- UpdateCreatorProfile ---------------------------------------------------------------------------------------------


async def test_profile_update_is_idempotent(clients: Clients) -> None:
    creator_id = new_id("creator")
    request = profile_request(creator_id, destination="sandbox:ok-first")
    first = await clients.payouts.UpdateCreatorProfile(request, metadata=SERVICE)
    assert first.profile == payouts_pb2.CreatorProfile(
        creator_id=creator_id, kyc_verified=True, payout_destination="sandbox:ok-first"
    )
    assert await clients.payouts.UpdateCreatorProfile(request, metadata=SERVICE) == first

    changed = profile_request(creator_id, request_id=request.request_id, destination="sandbox:ok-other")
    error = await refused(clients.payouts.UpdateCreatorProfile(changed, metadata=SERVICE))
    assert (error.code(), error_reason(error)) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")

    updated = await clients.payouts.UpdateCreatorProfile(
        profile_request(creator_id, destination="sandbox:ok-second", kyc_verified=False), metadata=ADMIN
    )
    assert (updated.profile.kyc_verified, updated.profile.payout_destination) == (False, "sandbox:ok-second")


async def test_profile_update_needs_service_or_admin(clients: Clients) -> None:
    creator_id = new_id("creator")
    error = await refused(clients.payouts.UpdateCreatorProfile(profile_request(creator_id), metadata=auth(creator_id)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_invalid_profile_update_reports_every_field_and_changes_nothing(stack: Stack, clients: Clients) -> None:
    request = payouts_pb2.UpdateCreatorProfileRequest(
        request_id="bad id!", creator_id="bad/creator", kyc_verified=True, payout_destination=""
    )
    error = await refused(clients.payouts.UpdateCreatorProfile(request, metadata=SERVICE))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == {"request_id", "creator_id", "payout_destination"}

    creator_id = new_id("creator")
    too_long = profile_request(creator_id, destination="x" * 257)
    error = await refused(clients.payouts.UpdateCreatorProfile(too_long, metadata=SERVICE))
    assert violated_fields(error) == {"payout_destination"}
    conn = await asyncpg.connect(stack.database_url("payouts"))
    try:
        assert await conn.fetchval("SELECT count(*) FROM creator_profiles WHERE creator_id = $1", creator_id) == 0
        key = stored_key(too_long.request_id)
        assert await conn.fetchval("SELECT count(*) FROM idempotency_keys WHERE request_id = $1", key) == 0
    finally:
        await conn.close()


# --- RequestWithdrawal: refusals --------------------------------------------------------------------------------------


async def test_invalid_withdrawal_reports_every_field(clients: Clients) -> None:
    request = payouts_pb2.RequestWithdrawalRequest(request_id="", creator_id="", diamonds=0)
    error = await refused(clients.payouts.RequestWithdrawal(request, metadata=SERVICE))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == {"request_id", "creator_id", "diamonds"}
    for diamonds in (-2000, 10**15):
        error = await refused(
            clients.payouts.RequestWithdrawal(withdrawal_request(new_id("creator"), diamonds), metadata=SERVICE)
        )
        assert violated_fields(error) == {"diamonds"}


async def test_withdrawal_needs_a_kyc_verified_profile(clients: Clients) -> None:
    creator_id = new_id("creator")
    error = await refused(clients.payouts.RequestWithdrawal(withdrawal_request(creator_id, 2000), metadata=SERVICE))
    assert (error.code(), error_reason(error)) == (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_NOT_ELIGIBLE")
    await clients.payouts.UpdateCreatorProfile(profile_request(creator_id, kyc_verified=False), metadata=SERVICE)
    error = await refused(clients.payouts.RequestWithdrawal(withdrawal_request(creator_id, 2000), metadata=SERVICE))
    assert error_reason(error) == "ACCOUNT_NOT_ELIGIBLE"


async def test_withdrawal_below_minimum_is_refused(clients: Clients) -> None:
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id)
    error = await refused(clients.payouts.RequestWithdrawal(withdrawal_request(creator_id, 1998), metadata=SERVICE))
    assert (error.code(), error_reason(error)) == (grpc.StatusCode.FAILED_PRECONDITION, "BELOW_MINIMUM_WITHDRAWAL")


async def test_withdrawal_must_be_worth_whole_cents(clients: Clients) -> None:
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id)
    await fund(clients, creator_id, 3000)
    request = withdrawal_request(creator_id, 2001)
    for _ in range(2):  # the replay of a stored INVALID_ARGUMENT keeps its field violations
        error = await refused(clients.payouts.RequestWithdrawal(request, metadata=SERVICE))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(error) == {"diamonds"}
    assert (await earnings(clients, creator_id)).available_diamonds == 3000


async def test_withdrawal_larger_than_available_is_refused(clients: Clients) -> None:
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id)
    error = await refused(clients.payouts.RequestWithdrawal(withdrawal_request(creator_id, 2000), metadata=SERVICE))
    assert (error.code(), error_reason(error)) == (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_DIAMONDS")
    await fund(clients, creator_id, 3000)
    error = await refused(clients.payouts.RequestWithdrawal(withdrawal_request(creator_id, 3002), metadata=SERVICE))
    assert error_reason(error) == "INSUFFICIENT_DIAMONDS"
    found = await earnings(clients, creator_id)
    assert (found.available_diamonds, found.reserved_diamonds) == (3000, 0)


async def test_withdrawals_are_capped_per_rolling_24_hours(clients: Clients) -> None:
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id, destination="sandbox:ok-capped")
    await fund(clients, creator_id, 260_000, gifts=3)
    first = await withdraw(clients, creator_id, 150_000)
    assert (await wait_until_finished(clients, first.withdrawal_id)).status == payouts_pb2.WITHDRAWAL_STATUS_PAID
    # Paid withdrawals still count: 150,000 + 50,002 > 200,000.
    error = await refused(clients.payouts.RequestWithdrawal(withdrawal_request(creator_id, 50_002), metadata=SERVICE))
    assert (error.code(), error_reason(error)) == (grpc.StatusCode.FAILED_PRECONDITION, "WITHDRAWAL_LIMIT_EXCEEDED")
    second = await withdraw(clients, creator_id, 50_000)  # exactly up to the cap
    assert second.status == payouts_pb2.WITHDRAWAL_STATUS_PENDING
    error = await refused(clients.payouts.RequestWithdrawal(withdrawal_request(creator_id, 2000), metadata=SERVICE))
    assert error_reason(error) == "WITHDRAWAL_LIMIT_EXCEEDED"
    await wait_until_finished(clients, second.withdrawal_id)
    found = await earnings(clients, creator_id)
    assert (found.available_diamonds, found.reserved_diamonds, found.lifetime_diamonds) == (60_000, 0, 260_000)


async def test_failed_withdrawals_do_not_count_toward_the_cap(clients: Clients) -> None:
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id, destination="sandbox:fail-capped")
    await fund(clients, creator_id, 200_000)
    failed = await withdraw(clients, creator_id, 200_000)
    assert (await wait_until_finished(clients, failed.withdrawal_id)).status == payouts_pb2.WITHDRAWAL_STATUS_FAILED
    again = await withdraw(clients, creator_id, 200_000)
    assert again.status == payouts_pb2.WITHDRAWAL_STATUS_PENDING
    await wait_until_finished(clients, again.withdrawal_id)


async def test_withdrawal_is_for_the_owner_or_a_service(clients: Clients) -> None:
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id)
    await fund(clients, creator_id, 4000)
    for metadata in (auth("intruder"), ADMIN):
        error = await refused(
            clients.payouts.RequestWithdrawal(withdrawal_request(creator_id, 2000), metadata=metadata)
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    own = await withdraw(clients, creator_id, 2000, metadata=auth(creator_id))
    assert own.creator_id == creator_id
    await wait_until_finished(clients, own.withdrawal_id)


# --- RequestWithdrawal: idempotency -----------------------------------------------------------------------------------


async def test_withdrawal_replay_returns_the_same_withdrawal_and_moves_nothing(clients: Clients) -> None:
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id, destination="sandbox:fail-replay")  # stays withdrawable afterwards
    await fund(clients, creator_id, 5000)
    request = withdrawal_request(creator_id, 2000)
    first = await clients.payouts.RequestWithdrawal(request, metadata=SERVICE)
    replayed = await clients.payouts.RequestWithdrawal(request, metadata=SERVICE)
    assert replayed == first
    found = await earnings(clients, creator_id)
    assert found.available_diamonds + found.reserved_diamonds == 5000
    assert found.available_diamonds in (3000, 5000)  # 5000 once the sandbox failed it and returned the diamonds

    other = withdrawal_request(creator_id, 2002, request_id=request.request_id)
    error = await refused(clients.payouts.RequestWithdrawal(other, metadata=SERVICE))
    assert (error.code(), error_reason(error)) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    await wait_until_finished(clients, first.withdrawal.withdrawal_id)


async def test_refused_withdrawal_replays_its_refusal(clients: Clients) -> None:
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id)
    request = withdrawal_request(creator_id, 2000)
    error = await refused(clients.payouts.RequestWithdrawal(request, metadata=SERVICE))
    assert error_reason(error) == "INSUFFICIENT_DIAMONDS"
    await fund(clients, creator_id, 2000)
    # The same request_id keeps its original outcome, though it would succeed now.
    error = await refused(clients.payouts.RequestWithdrawal(request, metadata=SERVICE))
    assert error_reason(error) == "INSUFFICIENT_DIAMONDS"
    assert (await earnings(clients, creator_id)).available_diamonds == 2000


async def test_concurrent_replays_reserve_once(clients: Clients) -> None:
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id, destination="sandbox:ok-concurrent")
    await fund(clients, creator_id, 10_000)
    request = withdrawal_request(creator_id, 2000)
    responses = await asyncio.gather(*(clients.payouts.RequestWithdrawal(request, metadata=SERVICE) for _ in range(8)))
    assert len({response.withdrawal.withdrawal_id for response in responses}) == 1
    await wait_until_finished(clients, responses[0].withdrawal.withdrawal_id)
    found = await earnings(clients, creator_id)
    assert (found.available_diamonds, found.reserved_diamonds) == (8000, 0)


async def test_concurrent_withdrawals_never_overdraw(clients: Clients) -> None:
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id, destination="sandbox:ok-race")
    await fund(clients, creator_id, 5000)
    outcomes = await asyncio.gather(
        *(clients.payouts.RequestWithdrawal(withdrawal_request(creator_id, 2000), metadata=SERVICE) for _ in range(8)),
        return_exceptions=True,
    )
    granted = [outcome for outcome in outcomes if isinstance(outcome, payouts_pb2.RequestWithdrawalResponse)]
    refusals = {error_reason(outcome) for outcome in outcomes if isinstance(outcome, grpc.aio.AioRpcError)}
    assert (len(granted), refusals) == (2, {"INSUFFICIENT_DIAMONDS"})
    for response in granted:
        await wait_until_finished(clients, response.withdrawal.withdrawal_id)
    found = await earnings(clients, creator_id)
    assert (found.available_diamonds, found.reserved_diamonds) == (1000, 0)


# --- paying out -------------------------------------------------------------------------------------------------------


async def test_withdrawal_to_a_good_destination_is_paid(stack: Stack, clients: Clients) -> None:
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id, destination="sandbox:ok-paid")
    await fund(clients, creator_id, 5000, gifts=5)
    withdrawal = await withdraw(clients, creator_id, 4000)
    assert withdrawal.withdrawal_id
    assert (withdrawal.creator_id, withdrawal.diamonds) == (creator_id, 4000)
    assert (withdrawal.payout.currency_code, withdrawal.payout.amount_minor) == ("USD", 2000)  # $20.00
    assert withdrawal.status == payouts_pb2.WITHDRAWAL_STATUS_PENDING
    reserved = await earnings(clients, creator_id)
    if reserved.reserved_diamonds:  # unless the sandbox paid already
        assert (reserved.available_diamonds, reserved.reserved_diamonds) == (1000, 4000)

    paid = await wait_until_finished(clients, withdrawal.withdrawal_id)
    assert paid.status == payouts_pb2.WITHDRAWAL_STATUS_PAID
    assert paid.failure_reason == ""
    assert paid.payout == withdrawal.payout
    found = await earnings(clients, creator_id)
    assert (found.available_diamonds, found.reserved_diamonds, found.lifetime_diamonds) == (1000, 0, 5000)
    await assert_ledger_consistent(stack)


@pytest.mark.parametrize(
    ("destination", "reason"),
    [
        ("sandbox:fail-bank-closed", "sandbox destination refused the payout"),
        ("bank:DE89370400440532013000", "unknown sandbox destination"),
    ],
)
async def test_failed_payout_returns_the_diamonds(
    stack: Stack, clients: Clients, destination: str, reason: str
) -> None:
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id, destination=destination)
    await fund(clients, creator_id, 3000)
    withdrawal = await withdraw(clients, creator_id, 2000)
    failed = await wait_until_finished(clients, withdrawal.withdrawal_id)
    assert (failed.status, failed.failure_reason) == (payouts_pb2.WITHDRAWAL_STATUS_FAILED, reason)
    found = await earnings(clients, creator_id)
    assert (found.available_diamonds, found.reserved_diamonds, found.lifetime_diamonds) == (3000, 0, 3000)
    await assert_ledger_consistent(stack)


# --- GetWithdrawal ----------------------------------------------------------------------------------------------------


async def test_withdrawal_is_visible_to_its_creator_service_and_admin(clients: Clients) -> None:
    creator_id = new_id("creator")
    await make_eligible(clients, creator_id)
    await fund(clients, creator_id, 2000)
    withdrawal = await withdraw(clients, creator_id, 2000)
    request = payouts_pb2.GetWithdrawalRequest(withdrawal_id=withdrawal.withdrawal_id)
    for metadata in (auth(creator_id), SERVICE, ADMIN):
        found = (await clients.payouts.GetWithdrawal(request, metadata=metadata)).withdrawal
        assert (found.withdrawal_id, found.creator_id, found.diamonds) == (withdrawal.withdrawal_id, creator_id, 2000)
    # Another creator cannot even learn that it exists.
    error = await refused(clients.payouts.GetWithdrawal(request, metadata=auth("someone-else")))
    assert (error.code(), error_reason(error)) == (grpc.StatusCode.NOT_FOUND, "WITHDRAWAL_NOT_FOUND")
    await wait_until_finished(clients, withdrawal.withdrawal_id)


async def test_unknown_withdrawal_is_not_found(clients: Clients) -> None:
    request = payouts_pb2.GetWithdrawalRequest(withdrawal_id="wd_does_not_exist")
    error = await refused(clients.payouts.GetWithdrawal(request, metadata=SERVICE))
    assert (error.code(), error_reason(error)) == (grpc.StatusCode.NOT_FOUND, "WITHDRAWAL_NOT_FOUND")


@pytest.mark.parametrize("withdrawal_id", ["", "w" * 129])
async def test_withdrawal_id_must_be_given(clients: Clients, withdrawal_id: str) -> None:
    error = await refused(
        clients.payouts.GetWithdrawal(payouts_pb2.GetWithdrawalRequest(withdrawal_id=withdrawal_id), metadata=SERVICE)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == {"withdrawal_id"}
