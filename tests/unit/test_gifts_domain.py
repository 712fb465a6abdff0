"""The gifts service's pure rules: who may go live, when a gift may be sent, what it costs, which wallet answers
end a gift for good."""

from __future__ import annotations

import grpc
import pytest

from services.gifts import domain
from services.runtime.errors import AppError
from services.runtime.validation import REQUEST_ID_PATTERN

CREATOR = "creator-1"
SENDER = "sender-1"
LIVE = domain.LiveStream("str_1", CREATOR, "hello", domain.StreamStatus.LIVE)
ENDED = domain.LiveStream("str_1", CREATOR, "hello", domain.StreamStatus.ENDED)
ROSE = domain.CatalogGift("rose", "Rose", 1)


def refusal(error: pytest.ExceptionInfo[AppError]) -> tuple[grpc.StatusCode, str]:
    return error.value.code, error.value.reason


class TestGoingLive:
    def test_adult_verified_creator_may_go_live(self) -> None:
        domain.require_can_go_live(domain.WalletAccount(CREATOR, adult_verified=True), CREATOR)

    @pytest.mark.parametrize("account", [None, domain.WalletAccount(CREATOR, adult_verified=False)])
    def test_unknown_or_unverified_creator_is_not_eligible(self, account: domain.WalletAccount | None) -> None:
        with pytest.raises(AppError) as error:
            domain.require_can_go_live(account, CREATOR)
        assert refusal(error) == (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_NOT_ELIGIBLE")

    def test_second_live_stream_is_refused(self) -> None:
        error = domain.stream_already_live(CREATOR)
        assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "STREAM_ALREADY_LIVE")

    def test_unknown_stream_is_not_found(self) -> None:
        with pytest.raises(AppError) as error:
            domain.require_stream(None, "str_missing")
        assert refusal(error) == (grpc.StatusCode.NOT_FOUND, "STREAM_NOT_FOUND")


class TestSendingGifts:
    def test_gift_to_a_live_stream_is_allowed(self) -> None:
        assert domain.require_giftable(LIVE, "str_1", ROSE, "rose", SENDER) == (LIVE, ROSE)

    @pytest.mark.parametrize(
        ("stream", "gift", "sender_id", "expected"),
        [
            (None, ROSE, SENDER, (grpc.StatusCode.NOT_FOUND, "STREAM_NOT_FOUND")),
            (ENDED, ROSE, SENDER, (grpc.StatusCode.FAILED_PRECONDITION, "STREAM_NOT_LIVE")),
            (LIVE, None, SENDER, (grpc.StatusCode.NOT_FOUND, "GIFT_NOT_FOUND")),
            (LIVE, ROSE, CREATOR, (grpc.StatusCode.FAILED_PRECONDITION, "SELF_GIFT")),
            # When several rules fail, the stream is judged first, then the gift, then the sender.
            (None, None, CREATOR, (grpc.StatusCode.NOT_FOUND, "STREAM_NOT_FOUND")),
            (ENDED, None, CREATOR, (grpc.StatusCode.FAILED_PRECONDITION, "STREAM_NOT_LIVE")),
            (LIVE, None, CREATOR, (grpc.StatusCode.NOT_FOUND, "GIFT_NOT_FOUND")),
        ],
    )
    def test_refusals(
        self,
        stream: domain.LiveStream | None,
        gift: domain.CatalogGift | None,
        sender_id: str,
        expected: tuple[grpc.StatusCode, str],
    ) -> None:
        with pytest.raises(AppError) as error:
            domain.require_giftable(stream, "str_1", gift, "rose", sender_id)
        assert refusal(error) == expected
        assert error.value.is_outcome  # stored under the request_id: a retry gets the same refusal

    @pytest.mark.parametrize(
        ("coin_price", "quantity", "coins"),
        [(1, 1, 1), (5, 3, 15), (34_999, domain.MAX_QUANTITY, 349_990_000)],
    )
    def test_coins_are_price_times_quantity(self, coin_price: int, quantity: int, coins: int) -> None:
        assert domain.gift_coins(coin_price, quantity) == coins

    @pytest.mark.parametrize(("coin_price", "quantity"), [(0, 1), (1, 0), (1, domain.MAX_QUANTITY + 1), (-5, 2)])
    def test_coins_of_an_impossible_gift_is_a_bug(self, coin_price: int, quantity: int) -> None:
        with pytest.raises(AssertionError):
            domain.gift_coins(coin_price, quantity)


class TestWalletSpend:
    def test_spend_request_id_is_derived_from_the_gift_and_stable(self) -> None:
        first = domain.wallet_spend_request_id("gtx_0123456789abcdef0123456789abcdef")
        assert first == "gift:gtx_0123456789abcdef0123456789abcdef"
        assert first == domain.wallet_spend_request_id("gtx_0123456789abcdef0123456789abcdef")
        assert REQUEST_ID_PATTERN.fullmatch(first)  # the wallet validates it like any request_id

    @pytest.mark.parametrize(
        ("code", "reason"),
        [
            (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_COINS"),
            (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_NOT_ELIGIBLE"),
            (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_FROZEN"),
            (grpc.StatusCode.NOT_FOUND, "ACCOUNT_NOT_FOUND"),
        ],
    )
    def test_refusals_that_end_a_gift(self, code: grpc.StatusCode, reason: str) -> None:
        assert domain.is_final_wallet_refusal(AppError(code, reason, "no"))

    @pytest.mark.parametrize(
        "code",
        [
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.INTERNAL,
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            # The derived request_id reused with another payload would be our bug, not the sender's: never final.
            grpc.StatusCode.ALREADY_EXISTS,
        ],
    )
    def test_answers_that_leave_a_gift_pending(self, code: grpc.StatusCode) -> None:
        assert not domain.is_final_wallet_refusal(AppError(code, "SOMETHING", "later"))
