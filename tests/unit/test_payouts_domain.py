"""Payout rules without I/O: settlement arithmetic and postings, withdrawal checks, the sandbox payout provider,
and the reading of GiftSent events."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from coinstream.events.v1 import events_pb2

from services.payouts import domain
from services.payouts.domain import (
    Balances,
    CreatorProfile,
    GiftToSettle,
    SettlementRate,
    WithdrawalPolicy,
)
from services.payouts.payout_provider import PayoutState, SandboxPayoutProvider
from services.payouts.settlement import decode_gift_sent
from services.runtime.errors import AppError

POLICY = WithdrawalPolicy(
    minimum_diamonds=2000, daily_cap_diamonds=200_000, value_per_1000_minor=500, currency_code="USD"
)
VERIFIED = CreatorProfile("alice", kyc_verified=True, payout_destination="sandbox:ok-alice")


def reason_of(error: pytest.ExceptionInfo[AppError]) -> str:
    return error.value.reason


# --- settlement -------------------------------------------------------------------------------------------------------


def test_default_rate_turns_each_coin_into_one_diamond() -> None:
    assert SettlementRate(1, 1, 1).diamonds_for(34_999) == 34_999


def test_fractional_rate_floors_each_gift() -> None:
    rate = SettlementRate(2, 1, 2)
    assert [rate.diamonds_for(coins) for coins in (1, 2, 3, 299)] == [0, 1, 1, 149]


def test_rate_must_be_positive() -> None:
    with pytest.raises(AssertionError):
        SettlementRate(1, 0, 1)


def test_diamonds_are_totalled_per_creator_in_sorted_order_without_zero_totals() -> None:
    gifts = [
        GiftToSettle("g1", "zed", "s1", 5),
        GiftToSettle("g2", "amy", "s1", 1),
        GiftToSettle("g3", "zed", "s2", 7),
        GiftToSettle("g4", "bob", "s3", 1),
    ]
    credits = domain.credit_gifts(gifts, SettlementRate(3, 1, 2))
    assert [credit.diamonds for credit in credits] == [2, 0, 3, 0]
    assert list(domain.diamonds_by_creator(credits).items()) == [("zed", 5)]


def test_settlement_postings_balance_against_the_settlement_account() -> None:
    postings = domain.settlement_postings({"amy": 10, "bob": 5})
    assert postings == [
        ("creator:amy:available", 10),
        ("creator:bob:available", 5),
        (domain.SYSTEM_GIFT_SETTLEMENT, -15),
    ]
    assert domain.settlement_postings({}) == []


@pytest.mark.parametrize(
    ("make_postings", "expected"),
    [
        (domain.reserve_postings, [("creator:amy:available", -4), ("creator:amy:reserved", 4)]),
        (domain.paid_out_postings, [("creator:amy:reserved", -4), (domain.SYSTEM_PAID_OUT, 4)]),
        (domain.returned_postings, [("creator:amy:reserved", -4), ("creator:amy:available", 4)]),
    ],
)
def test_withdrawal_postings_move_diamonds_without_making_any(
    make_postings: Callable[[str, int], domain.Postings], expected: domain.Postings
) -> None:
    postings = make_postings("amy", 4)
    assert postings == expected
    assert sum(delta for _, delta in postings) == 0


# --- withdrawals ------------------------------------------------------------------------------------------------------


def test_payout_of_default_value_is_half_a_cent_per_diamond() -> None:
    assert POLICY.diamonds_multiple == 2
    assert POLICY.payout_minor(2000) == 1000  # 2,000 diamonds = $10.00
    assert POLICY.payout_minor(200_000) == 100_000


@pytest.mark.parametrize(("value_per_1000", "multiple"), [(500, 2), (1000, 1), (333, 1000), (250, 4), (2000, 1)])
def test_diamond_multiple_is_the_smallest_step_worth_whole_minor_units(value_per_1000: int, multiple: int) -> None:
    policy = WithdrawalPolicy(1, 10, value_per_1000, "USD")
    assert policy.diamonds_multiple == multiple
    assert multiple * value_per_1000 % 1000 == 0


@pytest.mark.parametrize(
    "profile", [None, CreatorProfile("alice", kyc_verified=False, payout_destination="sandbox:ok-alice")]
)
def test_withdrawal_needs_a_kyc_verified_profile(profile: CreatorProfile | None) -> None:
    with pytest.raises(AppError) as error:
        POLICY.check_request(profile, "alice", 2000)
    assert reason_of(error) == "ACCOUNT_NOT_ELIGIBLE"
    assert error.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_eligibility_is_checked_before_the_minimum() -> None:
    with pytest.raises(AppError) as error:
        POLICY.check_request(None, "alice", 1)
    assert reason_of(error) == "ACCOUNT_NOT_ELIGIBLE"


def test_withdrawal_below_minimum_is_refused() -> None:
    with pytest.raises(AppError) as error:
        POLICY.check_request(VERIFIED, "alice", 1998)
    assert reason_of(error) == "BELOW_MINIMUM_WITHDRAWAL"


def test_withdrawal_not_worth_whole_minor_units_is_invalid() -> None:
    with pytest.raises(AppError) as error:
        POLICY.check_request(VERIFIED, "alice", 2001)
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [violation.field for violation in error.value.field_violations] == ["diamonds"]
    assert "multiple of 2" in error.value.field_violations[0].description


def test_eligible_withdrawal_returns_the_profile() -> None:
    assert POLICY.check_request(VERIFIED, "alice", 2000) is VERIFIED


def test_daily_cap_counts_what_was_withdrawn_in_the_last_24h() -> None:
    POLICY.check_daily_cap(150_000, 50_000)
    with pytest.raises(AppError) as error:
        POLICY.check_daily_cap(150_000, 50_002)
    assert reason_of(error) == "WITHDRAWAL_LIMIT_EXCEEDED"
    assert "50000 left" in error.value.message


def test_withdrawal_larger_than_available_is_refused() -> None:
    domain.require_available(Balances("alice", 2000, 0, 2000), 2000)
    with pytest.raises(AppError) as error:
        domain.require_available(Balances("alice", 2000, 5000, 7000), 2002)
    assert reason_of(error) == "INSUFFICIENT_DIAMONDS"


def test_policy_refuses_inconsistent_limits() -> None:
    with pytest.raises(AssertionError):
        WithdrawalPolicy(minimum_diamonds=10, daily_cap_diamonds=5, value_per_1000_minor=500, currency_code="USD")


# --- sandbox payout provider ------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_sandbox_pays_ok_destinations_after_the_settle_time() -> None:
    clock = FakeClock()
    provider = SandboxPayoutProvider(settle_seconds=2.0, clock=clock)
    submitted = await provider.submit(
        withdrawal_id="wd_1", destination="sandbox:ok-alice", amount_minor=1000, currency_code="USD"
    )
    assert submitted.state is PayoutState.PROCESSING
    clock.now += 1.9
    assert (
        await provider.status(withdrawal_id="wd_1", provider_reference=submitted.provider_reference)
    ).state is PayoutState.PROCESSING
    clock.now += 0.1
    assert (
        await provider.status(withdrawal_id="wd_1", provider_reference=submitted.provider_reference)
    ).state is PayoutState.PAID


@pytest.mark.parametrize(
    ("destination", "reason"),
    [("sandbox:fail-bob", "sandbox destination refused the payout"), ("iban:DE00", "unknown sandbox destination")],
)
async def test_sandbox_fails_other_destinations(destination: str, reason: str) -> None:
    provider = SandboxPayoutProvider(settle_seconds=0.0)
    submitted = await provider.submit(
        withdrawal_id="wd_2", destination=destination, amount_minor=1000, currency_code="USD"
    )
    result = await provider.status(withdrawal_id="wd_2", provider_reference=submitted.provider_reference)
    assert (result.state, result.failure_reason) == (PayoutState.FAILED, reason)


async def test_sandbox_refuses_references_it_did_not_make() -> None:
    provider = SandboxPayoutProvider(settle_seconds=0.0)
    result = await provider.status(withdrawal_id="wd_3", provider_reference="sandbox:wd_other:1:sandbox:ok")
    assert result.state is PayoutState.FAILED


# --- GiftSent events --------------------------------------------------------------------------------------------------


def gift_sent(**overrides: object) -> bytes:
    fields: dict[str, object] = dict(
        gift_transaction_id="gtx_1",
        sender_id="fan",
        recipient_id="alice",
        stream_id="st_1",
        gift_id="rose",
        quantity=3,
        coins=3,
    )
    fields.update(overrides)
    return events_pb2.GiftSent(**fields).SerializeToString()  # type: ignore[arg-type]


def test_gift_sent_is_read_into_what_settlement_needs() -> None:
    assert decode_gift_sent(gift_sent()) == GiftToSettle("gtx_1", "alice", "st_1", 3)


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        (b"\xff\xff not protobuf", {"payload"}),
        (gift_sent(recipient_id="creator:evil"), {"recipient_id"}),
        (gift_sent(gift_transaction_id="", coins=0), {"gift_transaction_id", "coins"}),
        (gift_sent(stream_id="", coins=-5), {"stream_id", "coins"}),
    ],
)
def test_unusable_gift_events_are_refused(payload: bytes, fields: set[str]) -> None:
    with pytest.raises(AppError) as error:
        decode_gift_sent(payload)
    assert {violation.field for violation in error.value.field_violations} == fields
