"""The payouts servicer on the in-memory store: who may call what (declared on every RPC), before input is checked;
others' withdrawals hidden from users; protobuf ⇄ domain, enums included; page tokens."""

from __future__ import annotations

from typing import Any, TypeVar

import grpc
import pytest
from coinstream.payouts.v1 import payouts_pb2

from services.payouts import convert, domain
from services.payouts.servicer import PayoutsServicer
from services.runtime.auth import ROLE_ADMIN, ROLE_SERVICE, ROLE_USER, Principal, set_current_principal
from services.runtime.authorization import undeclared_rpcs
from services.runtime.errors import AppError
from services.runtime.requests import Reply
from tests.unit.payouts.helpers import Payouts

CONTEXT: Any = None  # the servicer never uses its gRPC context


def as_caller(subject: str, *roles: str) -> None:
    set_current_principal(Principal(subject, frozenset(roles)))


async def servicer_with_withdrawal() -> tuple[PayoutsServicer, str]:
    payouts = await Payouts().start()
    await payouts.verified("amy")
    await payouts.gifts("amy", 10_000)
    withdrawal = await payouts.withdraw("amy", 2000)
    return PayoutsServicer(payouts.service), withdrawal.withdrawal_id


async def error_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(AppError) as error:
        await call
    return error.value.code, error.value.reason


def test_every_rpc_declares_who_may_call_it() -> None:
    assert undeclared_rpcs(PayoutsServicer(Payouts().service)) == []


async def test_a_users_own_withdrawal_is_theirs_to_read_and_cancel() -> None:
    servicer, withdrawal_id = await servicer_with_withdrawal()
    as_caller("amy", ROLE_USER)
    read = await servicer.GetWithdrawal(payouts_pb2.GetWithdrawalRequest(withdrawal_id=withdrawal_id), CONTEXT)
    assert (read.withdrawal.creator_id, read.withdrawal.diamonds) == ("amy", 2000)
    cancel = payouts_pb2.CancelWithdrawalRequest(request_id="c1", withdrawal_id=withdrawal_id)
    canceled = await servicer.CancelWithdrawal(cancel, CONTEXT)
    assert canceled.withdrawal.status == payouts_pb2.WITHDRAWAL_STATUS_CANCELED


async def test_someone_elses_withdrawal_looks_missing_to_a_user() -> None:
    servicer, withdrawal_id = await servicer_with_withdrawal()
    as_caller("bob", ROLE_USER)
    not_found = (grpc.StatusCode.NOT_FOUND, "WITHDRAWAL_NOT_FOUND")
    get = payouts_pb2.GetWithdrawalRequest(withdrawal_id=withdrawal_id)
    assert await error_of(servicer.GetWithdrawal(get, CONTEXT)) == not_found
    cancel = payouts_pb2.CancelWithdrawalRequest(request_id="c1", withdrawal_id=withdrawal_id)
    assert await error_of(servicer.CancelWithdrawal(cancel, CONTEXT)) == not_found
    missing = payouts_pb2.GetWithdrawalRequest(withdrawal_id="wd_missing")
    assert await error_of(servicer.GetWithdrawal(missing, CONTEXT)) == not_found


async def test_staff_may_read_any_withdrawal_but_only_a_backend_may_cancel_one() -> None:
    servicer, withdrawal_id = await servicer_with_withdrawal()
    cancel = payouts_pb2.CancelWithdrawalRequest(request_id="c1", withdrawal_id=withdrawal_id)
    as_caller("ops", ROLE_ADMIN)
    await servicer.GetWithdrawal(payouts_pb2.GetWithdrawalRequest(withdrawal_id=withdrawal_id), CONTEXT)
    assert (await error_of(servicer.CancelWithdrawal(cancel, CONTEXT)))[0] == grpc.StatusCode.PERMISSION_DENIED
    as_caller("backend", ROLE_SERVICE)
    canceled = await servicer.CancelWithdrawal(cancel, CONTEXT)
    assert canceled.withdrawal.status == payouts_pb2.WITHDRAWAL_STATUS_CANCELED


async def test_a_caller_who_may_not_act_is_refused_before_the_input_is_checked() -> None:
    servicer, _ = await servicer_with_withdrawal()
    as_caller("bob", ROLE_USER)
    invalid = payouts_pb2.RequestWithdrawalRequest(request_id="", creator_id="amy", diamonds=0)
    assert (await error_of(servicer.RequestWithdrawal(invalid, CONTEXT)))[0] == grpc.StatusCode.PERMISSION_DENIED
    profile = payouts_pb2.UpdateCreatorProfileRequest(request_id="", creator_id="bob")
    assert (await error_of(servicer.UpdateCreatorProfile(profile, CONTEXT)))[0] == grpc.StatusCode.PERMISSION_DENIED
    earnings = payouts_pb2.GetEarningsRequest(creator_id="amy")
    assert (await error_of(servicer.GetEarnings(earnings, CONTEXT)))[0] == grpc.StatusCode.PERMISSION_DENIED


async def test_a_creator_reads_earnings_and_rates() -> None:
    servicer, _ = await servicer_with_withdrawal()
    as_caller("amy", ROLE_USER)
    earnings = (await servicer.GetEarnings(payouts_pb2.GetEarningsRequest(creator_id="amy"), CONTEXT)).earnings
    assert (earnings.available_diamonds, earnings.reserved_diamonds, earnings.lifetime_diamonds) == (8000, 2000, 10000)
    rates = (await servicer.GetRates(payouts_pb2.GetRatesRequest(), CONTEXT)).rates
    assert (rates.diamonds_per_coin_numerator, rates.rate_version, rates.minimum_withdrawal_diamonds) == (1, 1, 2000)
    assert (rates.diamond_value_per_1000.currency_code, rates.diamond_value_per_1000.amount_minor) == ("USD", 500)


async def test_request_ids_are_scoped_to_their_caller() -> None:
    servicer, _ = await servicer_with_withdrawal()

    def request() -> payouts_pb2.RequestWithdrawalRequest:
        return payouts_pb2.RequestWithdrawalRequest(request_id="same", creator_id="amy", diamonds=2000)

    as_caller("amy", ROLE_USER)
    mine = await servicer.RequestWithdrawal(request(), CONTEXT)
    as_caller("backend", ROLE_SERVICE)
    theirs = await servicer.RequestWithdrawal(request(), CONTEXT)
    assert mine.withdrawal.withdrawal_id != theirs.withdrawal.withdrawal_id


async def test_withdrawals_page_newest_first_and_a_token_serves_only_its_creator() -> None:
    payouts = await Payouts().start()
    await payouts.verified("amy")
    await payouts.gifts("amy", 10_000)
    made = []
    for _ in range(3):
        made.append((await payouts.withdraw("amy", 2000)).withdrawal_id)
        payouts.store.advance(1)
    servicer = PayoutsServicer(payouts.service)
    as_caller("backend", ROLE_SERVICE)
    listed, token = [], ""
    while True:
        request = payouts_pb2.ListWithdrawalsRequest(creator_id="amy", page_size=2, page_token=token)
        page = await servicer.ListWithdrawals(request, CONTEXT)
        listed.append([withdrawal.withdrawal_id for withdrawal in page.withdrawals])
        token = page.next_page_token
        if not token:
            break
    assert listed == [made[::-1][:2], made[:1]]
    first = await servicer.ListWithdrawals(payouts_pb2.ListWithdrawalsRequest(creator_id="amy", page_size=1), CONTEXT)
    stolen = payouts_pb2.ListWithdrawalsRequest(creator_id="bob", page_size=1, page_token=first.next_page_token)
    assert await error_of(servicer.ListWithdrawals(stolen, CONTEXT)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )


async def test_earnings_are_listed_by_the_requested_grouping() -> None:
    payouts = await Payouts().start()
    await payouts.gifts("amy", 10, 5)
    servicer = PayoutsServicer(payouts.service)
    as_caller("amy", ROLE_USER)
    request = payouts_pb2.ListEarningsRequest(creator_id="amy", group_by=payouts_pb2.EARNINGS_GROUP_BY_STREAM)
    page = await servicer.ListEarnings(request, CONTEXT)
    assert [(row.key, row.diamonds, row.gift_count) for row in page.rows] == [("st_1", 15, 2)]
    unspecified = payouts_pb2.ListEarningsRequest(creator_id="amy")
    assert (await error_of(servicer.ListEarnings(unspecified, CONTEXT)))[0] == grpc.StatusCode.INVALID_ARGUMENT


# The API has no status for a returned payout: payouts.proto's FAILED covers it (its diamonds are back).
SHOWN_AS = {domain.WithdrawalStatus.RETURNED: domain.WithdrawalStatus.FAILED}


@pytest.mark.parametrize("status", list(domain.WithdrawalStatus))
def test_every_withdrawal_status_has_its_protobuf_value(status: domain.WithdrawalStatus) -> None:
    withdrawal = domain.Withdrawal("wd_1", "r", "amy", 2000, "USD", 1000, "bank", status, "", None, None)
    message = convert.withdrawal_message(withdrawal.view)
    shown = SHOWN_AS.get(status, status)
    assert payouts_pb2.WithdrawalStatus.Name(message.status) == f"WITHDRAWAL_STATUS_{shown.name}"
    assert convert.STATUS_FROM_PROTO[message.status] is shown


def test_every_earnings_grouping_has_its_protobuf_value() -> None:
    for group_by in domain.EarningsGroupBy:
        value = payouts_pb2.EarningsGroupBy.Value(f"EARNINGS_GROUP_BY_{group_by.name}")
        assert convert.group_by(value) is group_by
    assert convert.group_by(payouts_pb2.EARNINGS_GROUP_BY_UNSPECIFIED) is None


# --- what a request_id keeps ------------------------------------------------------------------------------------------


Result = TypeVar("Result")


def kept_and_read(reply: Reply[Result], result: Result) -> Result:
    """A result as a replay sees it: kept as the response message's bytes, read back."""
    return reply.from_bytes(reply.to_message(result).SerializeToString())


def test_every_reply_reads_back_the_result_it_kept() -> None:
    for profile in (domain.CreatorProfile("amy", True, "bank:amy"), domain.CreatorProfile("bob", False, "")):
        assert kept_and_read(convert.PROFILE_UPDATED, profile) == profile
    for status in set(domain.WithdrawalStatus) - set(SHOWN_AS):  # a request or cancel never answers a returned one
        withdrawal = domain.WithdrawalView("wd_1", "amy", 2002, "USD", 1001, status, "the bank refused")
        assert kept_and_read(convert.WITHDRAWAL_REQUESTED, withdrawal) == withdrawal
        assert kept_and_read(convert.WITHDRAWAL_CANCELED, withdrawal) == withdrawal


async def test_a_replayed_request_answers_the_response_bytes_kept_with_its_key() -> None:
    payouts = await Payouts().start()
    await payouts.verified("amy")
    await payouts.gifts("amy", 10_000)
    withdrawal_id = (await payouts.withdraw("amy", 2000)).withdrawal_id
    servicer = PayoutsServicer(payouts.service)
    ran: list[str] = []  # the request_ids whose operation ran (a replay must not run it again)
    run_once = payouts.store.run_once

    async def counting_run_once(key: Any, operation: Any, reply: Any) -> Any:
        async def counted(tx: Any) -> Any:
            ran.append(key.request_id.rpartition("/")[2])
            return await operation(tx)

        return await run_once(key, counted, reply)

    payouts.store.run_once = counting_run_once  # a spy on the fake's port
    as_caller("backend", ROLE_SERVICE)
    requests: list[Any] = [
        (
            servicer.RequestWithdrawal,
            payouts_pb2.RequestWithdrawalRequest(request_id="w", creator_id="amy", diamonds=2000),
        ),
        (servicer.CancelWithdrawal, payouts_pb2.CancelWithdrawalRequest(request_id="c", withdrawal_id=withdrawal_id)),
        (
            servicer.UpdateCreatorProfile,
            payouts_pb2.UpdateCreatorProfileRequest(request_id="p", creator_id="bob", payout_destination="bank:bob"),
        ),
    ]
    for rpc, request in requests:
        first = await rpc(request, CONTEXT)
        request.request_id = request.request_id.rpartition("/")[2]  # the servicer scoped it to the caller in place
        again = await rpc(request, CONTEXT)
        assert again.SerializeToString() == first.SerializeToString()
    assert ran == ["w", "c", "p"]  # each operation once: the second calls were answered from their keys
