"""Payout rules without I/O: settlement arithmetic and postings, withdrawal checks, the sandbox payout provider,
and the reading of GiftSent events."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

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
    WithdrawalStatus,
)
from services.payouts.payout_provider import SandboxPayoutProvider
from services.payouts.ports import PayoutState
from services.payouts.settlement import decode_gift_sent
from services.runtime import pages
from services.runtime.errors import AppError

POLICY = WithdrawalPolicy(
    minimum_diamonds=2000, daily_cap_diamonds=200_000, value_per_1000_minor=500, currency_code="USD"
)
VERIFIED = CreatorProfile("alice", kyc_verified=True, payout_destination="sandbox:ok-alice")


def reason_of(error: pytest.ExceptionInfo[AppError]) -> str:
    return error.value.reason


# --- settlement -------------------------------------------------------------------------------------------------------


def test_default_rate_turns_each_coin_into_one_diamond() -> None:
    assert SettlementRate(1, 1, 1).credit_with_carry(0, [34_999, 1]) == ([34_999, 1], 0)
    assert not SettlementRate(1, 1, 1).carries_fractions


def test_fractional_rate_carries_the_fraction_to_the_next_gift() -> None:
    rate = SettlementRate(2, 1, 2)
    assert rate.carries_fractions
    # 0.5 + 1 + 1.5 + 149.5: the halves are carried, not dropped.
    assert rate.credit_with_carry(0, [1, 2, 3, 299]) == ([0, 1, 2, 149], 1)
    assert rate.credit_with_carry(1, [1]) == ([1], 0)


def all_coin_sequences(max_length: int, max_coins: int) -> list[list[int]]:
    sequences: list[list[int]] = [[]]
    frontier: list[list[int]] = [[]]
    for _ in range(max_length):
        frontier = [[*seq, coins] for seq in frontier for coins in range(1, max_coins + 1)]
        sequences += frontier
    return sequences


@pytest.mark.parametrize(("numerator", "denominator"), [(1, 1), (1, 2), (7, 10), (2, 3), (3, 7), (5, 4), (1, 1000)])
def test_carried_credits_always_sum_to_the_floor_of_the_total(numerator: int, denominator: int) -> None:
    """Exhaustively over small cases: every split of every sequence of gifts into batches (each batch carrying the
    remainder to the next) credits exactly floor(total coins × rate), never a diamond more or less, and each gift
    gets between floor and ceil of its own share."""
    rate = SettlementRate(1, numerator, denominator)
    for coins in all_coin_sequences(max_length=4, max_coins=4):
        for cut in range(len(coins) + 1):  # two batches: [:cut] and [cut:]
            first, remainder = rate.credit_with_carry(0, coins[:cut])
            second, remainder = rate.credit_with_carry(remainder, coins[cut:])
            diamonds = first + second
            assert sum(diamonds) == sum(coins) * numerator // denominator
            assert remainder == sum(coins) * numerator % denominator
            for gift_coins, gift_diamonds in zip(coins, diamonds, strict=True):
                share = gift_coins * numerator
                assert share // denominator <= gift_diamonds <= -(-share // denominator)


def test_carry_over_many_random_gifts_at_seven_tenths() -> None:
    rng = random.Random(7)
    rate = SettlementRate(1, 7, 10)
    remainder, credited, total = 0, 0, 0
    for _ in range(200):
        batch = [rng.choice((1, 5, 30, 99, 100, 299)) for _ in range(rng.randint(1, 20))]
        diamonds, remainder = rate.credit_with_carry(remainder, batch)
        credited, total = credited + sum(diamonds), total + sum(batch)
        assert credited == total * 7 // 10


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
    credits, remainders = domain.credit_gifts(gifts, SettlementRate(3, 1, 2), {"bob": 0})
    # zed: 2.5 → 2 (carry .5), 3.5 + .5 → 4; amy and bob: 0.5 each, carried.
    assert [credit.diamonds for credit in credits] == [2, 4, 0, 0]
    assert remainders == {"zed": 0, "amy": 1, "bob": 1}
    assert list(domain.diamonds_by_creator(credits).items()) == [("zed", 6)]


def test_credits_start_from_each_creators_carried_remainder() -> None:
    gifts = [GiftToSettle("g1", "amy", "s1", 1, paid_coins=1), GiftToSettle("g2", "bob", "s1", 1, bonus_coins=1)]
    credits, remainders = domain.credit_gifts(gifts, SettlementRate(3, 1, 2), {"amy": 1})
    assert [(c.creator_id, c.diamonds, c.paid_coins, c.bonus_coins) for c in credits] == [
        ("amy", 1, 1, 0),
        ("bob", 0, 0, 1),
    ]
    assert remainders == {"amy": 0, "bob": 1}


def test_video_gifts_are_credited_like_stream_gifts_and_keep_their_video() -> None:
    gifts = [GiftToSettle("g1", "amy", "s1", 3), GiftToSettle("g2", "amy", None, 3, video_id="v1")]
    credits, remainders = domain.credit_gifts(gifts, SettlementRate(3, 1, 2), {})
    # 1.5 → 1 (carry .5), then 1.5 + .5 → 2: one carry per creator, whatever the gift went to.
    assert [(c.stream_id, c.video_id, c.diamonds) for c in credits] == [("s1", None, 1), (None, "v1", 2)]
    assert remainders == {"amy": 0}


@pytest.mark.parametrize(("stream_id", "video_id"), [(None, None), ("s1", "v1")])
def test_a_gift_goes_to_exactly_one_stream_or_video(stream_id: str | None, video_id: str | None) -> None:
    with pytest.raises(AssertionError):
        GiftToSettle("g1", "amy", stream_id, 1, video_id=video_id)
    with pytest.raises(AssertionError):
        domain.DiamondCredit("g1", "amy", stream_id, 1, 1, video_id=video_id)


def test_settlement_postings_balance_against_the_settlement_account() -> None:
    postings = domain.settlement_postings({"amy": 10, "bob": 5})
    assert postings == [
        ("creator:amy:available", 10),
        ("creator:bob:available", 5),
        (domain.SYSTEM_GIFT_SETTLEMENT, -15),
    ]
    assert domain.settlement_postings({}) == []
    assert domain.settlement_postings({"amy": 10}, held=True) == [
        ("creator:amy:pending", 10),
        (domain.SYSTEM_GIFT_SETTLEMENT, -10),
    ]


def test_maturity_moves_pending_to_available_per_creator() -> None:
    totals = domain.totals_by_creator([("bob", 3), ("amy", 2), ("bob", 4), ("cat", 0)])
    assert totals == {"amy": 2, "bob": 7}
    assert domain.maturity_postings(totals) == [
        ("creator:amy:pending", -2),
        ("creator:amy:available", 2),
        ("creator:bob:pending", -7),
        ("creator:bob:available", 7),
    ]


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


def test_only_pending_withdrawals_need_canceling_and_canceled_ones_stay_canceled() -> None:
    assert domain.must_cancel(WithdrawalStatus.PENDING, "wd_1")
    assert not domain.must_cancel(WithdrawalStatus.CANCELED, "wd_1")
    for status in (WithdrawalStatus.PAID, WithdrawalStatus.FAILED):
        with pytest.raises(AppError) as error:
            domain.must_cancel(status, "wd_1")
        assert (error.value.code, reason_of(error)) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "WITHDRAWAL_NOT_CANCELABLE",
        )


# --- pages ------------------------------------------------------------------------------------------------------------


def test_page_positions_are_moments_a_datetime_can_hold() -> None:
    token = pages.encode_page_token("withdrawals", "amy", [1_700_000_000_123_456, "wd_1"])
    assert pages.decode_page_token(
        token, kind="withdrawals", owner="amy", shape=(int, str), int_range=domain.POSITION_MICROS
    ) == [1_700_000_000_123_456, "wd_1"]
    past_year_9999 = pages.encode_page_token("withdrawals", "amy", [2**62, "wd_1"])  # within int64: tampered
    with pytest.raises(AppError) as error:
        pages.decode_page_token(
            past_year_9999, kind="withdrawals", owner="amy", shape=(int, str), int_range=domain.POSITION_MICROS
        )
    assert [violation.field for violation in error.value.field_violations] == ["page_token"]
    assert domain.from_micros(domain.POSITION_MICROS[1]) == datetime.max.replace(tzinfo=UTC)


def test_microsecond_positions_are_exact() -> None:
    moment = datetime(2026, 11, 25, 23, 59, 59, 999_999, tzinfo=UTC)
    assert domain.from_micros(domain.to_micros(moment)) == moment
    assert domain.day_start("2026-11-25") == datetime(2026, 11, 25, tzinfo=UTC)
    with pytest.raises(AppError):
        domain.day_start("2026-13-01")


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


async def test_sandbox_holds_hold_destinations_until_canceled() -> None:
    clock = FakeClock()
    provider = SandboxPayoutProvider(settle_seconds=0.0, clock=clock)
    submitted = await provider.submit(
        withdrawal_id="wd_4", destination="sandbox:hold-alice", amount_minor=1000, currency_code="USD"
    )
    clock.now += 86_400
    result = await provider.status(withdrawal_id="wd_4", provider_reference=submitted.provider_reference)
    assert result.state is PayoutState.PROCESSING
    cancel = provider.cancel
    assert await cancel(withdrawal_id="wd_4", destination="sandbox:hold-alice", provider_reference="x")
    assert await cancel(withdrawal_id="wd_4", destination="sandbox:ok-alice", provider_reference=None)
    assert not await cancel(withdrawal_id="wd_4", destination="sandbox:ok-alice", provider_reference="x")
    assert not await cancel(withdrawal_id="wd_4", destination="sandbox:fail-alice", provider_reference="x")


async def test_sandbox_refuses_references_it_did_not_make() -> None:
    provider = SandboxPayoutProvider(settle_seconds=0.0)
    result = await provider.status(withdrawal_id="wd_3", provider_reference="sandbox:wd_other:1:sandbox:ok")
    assert result.state is PayoutState.FAILED


# --- GiftSent events --------------------------------------------------------------------------------------------------


def gift_sent(**overrides: object) -> bytes:
    fields: dict[str, Any] = dict(  # any: the fields of a GiftSent, overridden by each test
        gift_transaction_id="gtx_1",
        sender_id="fan",
        recipient_id="alice",
        stream_id="st_1",
        gift_id="rose",
        quantity=3,
        coins=3,
    )
    fields.update(overrides)
    return events_pb2.GiftSent(**fields).SerializeToString()


def test_gift_sent_is_read_into_what_settlement_needs() -> None:
    assert decode_gift_sent(gift_sent()) == GiftToSettle("gtx_1", "alice", "st_1", 3)
    assert decode_gift_sent(gift_sent(paid_coins=2, bonus_coins=1, combo_count=4)) == GiftToSettle(
        "gtx_1", "alice", "st_1", 3, paid_coins=2, bonus_coins=1
    )
    assert decode_gift_sent(gift_sent(stream_id="", video_id="clip_9-X")) == GiftToSettle(
        "gtx_1", "alice", None, 3, video_id="clip_9-X"
    )


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        (b"\xff\xff not protobuf", {"payload"}),
        (gift_sent(recipient_id="creator:evil"), {"recipient_id"}),
        (gift_sent(gift_transaction_id="", coins=0), {"gift_transaction_id", "coins"}),
        (gift_sent(stream_id="", coins=-5), {"stream_id", "coins"}),
        (gift_sent(paid_coins=-1, bonus_coins=-2), {"paid_coins", "bonus_coins"}),
        # Exactly one of stream_id and video_id: both, or neither, is refused; a video id is an identifier.
        (gift_sent(video_id="v1"), {"video_id"}),
        (gift_sent(stream_id=""), {"stream_id"}),
        (gift_sent(stream_id="", video_id="bad/video"), {"video_id"}),
        (gift_sent(stream_id="", video_id="v" * 65), {"video_id"}),
    ],
)
def test_unusable_gift_events_are_refused(payload: bytes, fields: set[str]) -> None:
    with pytest.raises(AppError) as error:
        decode_gift_sent(payload)
    assert {violation.field for violation in error.value.field_violations} == fields
