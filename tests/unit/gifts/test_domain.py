"""The gifts service's pure rules: who may go live, when a gift may be sent, what it costs, which wallet answers
end a gift for good, combos, leaderboard periods and ranks; and the in-process fan-out of the live gift feed."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta, timezone

import grpc
import pytest
from coinstream.events.v1 import events_pb2

from services.gifts import domain
from services.gifts.events import CLOSING_SUBJECTS
from services.gifts.feed import GiftFeed, Watcher
from services.runtime.errors import AppError
from services.runtime.messaging import GIFT_SENT_SUBJECT, STREAM_ENDED_SUBJECT
from services.runtime.outbox import OutboxEvent, runs_ending_at_closing_events
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


# ---------------------------------------------------------------- economy depth: combos, leaderboards, catalog, feed

T0 = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


class TestCombos:
    def test_first_gift_starts_a_combo(self) -> None:
        assert domain.next_combo_count(None, 0, T0) == 1

    @pytest.mark.parametrize("gap_seconds", [0, 1, 9.999, 10])
    def test_gift_within_ten_seconds_continues_the_combo(self, gap_seconds: float) -> None:
        assert domain.next_combo_count(T0, 4, T0 + timedelta(seconds=gap_seconds)) == 5

    @pytest.mark.parametrize("gap_seconds", [10.001, 11, 3600])
    def test_gift_after_ten_seconds_starts_a_new_combo(self, gap_seconds: float) -> None:
        assert domain.next_combo_count(T0, 4, T0 + timedelta(seconds=gap_seconds)) == 1

    def test_previous_gift_stamped_later_by_another_clock_continues_the_combo(self) -> None:
        assert domain.next_combo_count(T0, 2, T0 - timedelta(milliseconds=30)) == 3


class TestLeaderboardPeriods:
    def test_day_is_the_utc_calendar_day(self) -> None:
        late_in_new_york = datetime(2026, 11, 25, 23, 30, tzinfo=timezone(timedelta(hours=-5)))  # 04:30 UTC on 26th
        assert domain.period_start(domain.LeaderboardPeriod.DAY, late_in_new_york) == date(2026, 11, 26)
        assert domain.period_start(domain.LeaderboardPeriod.DAY, T0) == date(2026, 11, 25)

    @pytest.mark.parametrize(
        ("moment", "monday"),
        [
            (datetime(2026, 11, 23, 0, 0, tzinfo=UTC), date(2026, 11, 23)),  # Monday 00:00 starts the week
            (datetime(2026, 11, 29, 23, 59, 59, tzinfo=UTC), date(2026, 11, 23)),  # Sunday night still belongs to it
            (datetime(2026, 11, 30, 0, 0, tzinfo=UTC), date(2026, 11, 30)),
            (datetime(2027, 1, 1, 12, 0, tzinfo=UTC), date(2026, 12, 28)),  # ISO week across the new year
        ],
    )
    def test_week_starts_on_monday_utc(self, moment: datetime, monday: date) -> None:
        assert domain.period_start(domain.LeaderboardPeriod.WEEK, moment) == monday

    def test_all_time_is_one_period(self) -> None:
        assert domain.period_start(domain.LeaderboardPeriod.ALL_TIME, T0) == domain.ALL_TIME_START

    def test_a_gift_counts_for_every_period(self) -> None:
        assert domain.period_starts(T0) == {
            domain.LeaderboardPeriod.DAY: date(2026, 11, 25),
            domain.LeaderboardPeriod.WEEK: date(2026, 11, 23),
            domain.LeaderboardPeriod.ALL_TIME: domain.ALL_TIME_START,
        }


class TestRanking:
    def test_competition_ranking_shares_ranks_and_skips(self) -> None:
        ranked = domain.rank_gifters([("a", 50), ("b", 30), ("c", 30), ("d", 10), ("e", 10), ("f", 10), ("g", 1)])
        assert [(r.account_id, r.rank) for r in ranked] == [
            ("a", 1),
            ("b", 2),
            ("c", 2),
            ("d", 4),
            ("e", 4),
            ("f", 4),
            ("g", 7),
        ]

    def test_empty_and_all_tied(self) -> None:
        assert domain.rank_gifters([]) == []
        assert [r.rank for r in domain.rank_gifters([("a", 5), ("b", 5), ("c", 5)])] == [1, 1, 1]

    def test_unsorted_input_is_a_bug(self) -> None:
        with pytest.raises(AssertionError):
            domain.rank_gifters([("a", 1), ("b", 2)])


class TestPaymentSplit:
    @pytest.mark.parametrize(("paid", "bonus"), [(100, 0), (0, 100), (60, 40), (0, 0)])
    def test_split_of_the_whole_gift_or_not_reported(self, paid: int, bonus: int) -> None:
        assert domain.payment_split(100, paid, bonus) == (paid, bonus)

    @pytest.mark.parametrize(("paid", "bonus"), [(99, 0), (60, 41), (-1, 101), (0, 1)])
    def test_any_other_split_is_a_bug(self, paid: int, bonus: int) -> None:
        with pytest.raises(AssertionError):
            domain.payment_split(100, paid, bonus)


class TestCatalogAndFeedRules:
    def test_unknown_catalog_gift_is_not_found(self) -> None:
        assert domain.require_catalog_gift(ROSE, "rose") == ROSE
        with pytest.raises(AppError) as error:
            domain.require_catalog_gift(None, "unicorn")
        assert refusal(error) == (grpc.StatusCode.NOT_FOUND, "GIFT_NOT_FOUND")
        assert error.value.is_outcome

    def test_only_a_live_stream_can_be_watched(self) -> None:
        assert domain.require_watchable(LIVE, "str_1") == LIVE
        with pytest.raises(AppError) as error:
            domain.require_watchable(ENDED, "str_1")
        assert refusal(error) == (grpc.StatusCode.FAILED_PRECONDITION, "STREAM_NOT_LIVE")
        with pytest.raises(AppError) as error:
            domain.require_watchable(None, "str_1")
        assert refusal(error) == (grpc.StatusCode.NOT_FOUND, "STREAM_NOT_FOUND")

    def test_watcher_limits_are_rate_limited(self) -> None:
        for error in (domain.too_many_watchers(), domain.watcher_too_slow()):
            assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
            assert not error.is_outcome


def gift_sent(stream_id: str, gift_transaction_id: str, combo_count: int = 1) -> bytes:
    return events_pb2.GiftSent(
        gift_transaction_id=gift_transaction_id,
        sender_id=SENDER,
        recipient_id=CREATOR,
        stream_id=stream_id,
        gift_id="rose",
        quantity=1,
        coins=1,
        combo_count=combo_count,
        paid_coins=1,
    ).SerializeToString()


def stream_ended(stream_id: str) -> bytes:
    return events_pb2.StreamEnded(stream_id=stream_id, creator_id=CREATOR).SerializeToString()


async def next_gift_id(watcher: Watcher) -> str:
    """The gift id of the watcher's next event (one that has not ended)."""
    event = await watcher.next()
    assert event is not None, "the watcher ended"
    return event.event.gift.gift_transaction_id


async def drain(watcher: Watcher) -> list[str]:
    """Every gift id the watcher yields until the stream ends."""
    ids = []
    while (event := await asyncio.wait_for(watcher.next(), 1.0)) is not None:
        ids.append(event.event.gift.gift_transaction_id)
    return ids


class TestFeedHub:
    """The in-process fan-out, without NATS: route() is what the subscription callback calls."""

    async def test_routes_each_stream_to_its_watchers_in_order_and_ends_them_after_what_came_before(self) -> None:
        feed = GiftFeed(max_watchers=10, watcher_queue_size=10, stuck_grace_seconds=1.0)
        with feed.watch("s1") as first, feed.watch("s1") as second, feed.watch("s2") as other:
            for gift_id in ("g1", "g2", "g3"):
                feed.route(GIFT_SENT_SUBJECT, gift_sent("s1", gift_id))
            feed.route(GIFT_SENT_SUBJECT, gift_sent("s2", "x1"))
            feed.route(STREAM_ENDED_SUBJECT, stream_ended("s1"))
            feed.route(GIFT_SENT_SUBJECT, gift_sent("s1", "late"))  # after the end: nobody gets it
            assert await drain(first) == ["g1", "g2", "g3"]
            assert await drain(second) == ["g1", "g2", "g3"]
            assert await next_gift_id(other) == "x1"
            assert feed.watcher_count == 3
        assert feed.watcher_count == 0

    async def test_event_carries_the_gift_and_its_combo(self) -> None:
        feed = GiftFeed(max_watchers=10, watcher_queue_size=10, stuck_grace_seconds=1.0)
        with feed.watch("s1") as watcher:
            feed.route(GIFT_SENT_SUBJECT, gift_sent("s1", "g1", combo_count=7))
            event = await watcher.next()
        assert event is not None
        assert event.event.gift.combo_count == 7
        assert (event.event.gift.sender_id, event.event.gift.recipient_id) == (SENDER, CREATOR)

    async def test_republished_gift_is_delivered_once(self) -> None:
        feed = GiftFeed(max_watchers=10, watcher_queue_size=10, stuck_grace_seconds=1.0)
        with feed.watch("s1") as watcher:
            for gift_id in ("g1", "g2", "g1", "g2", "g3"):
                feed.route(GIFT_SENT_SUBJECT, gift_sent("s1", gift_id))
            feed.route(STREAM_ENDED_SUBJECT, stream_ended("s1"))
            assert await drain(watcher) == ["g1", "g2", "g3"]

    async def test_slow_watcher_is_ended_without_touching_the_others(self) -> None:
        feed = GiftFeed(max_watchers=10, watcher_queue_size=3, stuck_grace_seconds=60.0)
        with feed.watch("s1") as slow, feed.watch("s1") as fast:
            received = []
            for number in range(10):
                feed.route(GIFT_SENT_SUBJECT, gift_sent("s1", f"g{number}"))
                received.append(await next_gift_id(fast))
            assert received == [f"g{number}" for number in range(10)]
            with pytest.raises(AppError) as error:
                await slow.next()  # overflowed at the 4th event: its buffer is dropped, it ends at once
            assert refusal(error) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")

    async def test_slow_watcher_stuck_in_a_write_is_cancelled_after_the_grace(self) -> None:
        feed = GiftFeed(max_watchers=10, watcher_queue_size=1, stuck_grace_seconds=0.05)
        stuck_forever = asyncio.Event()

        async def stuck_call() -> None:
            with feed.watch("s1"):
                await stuck_forever.wait()  # as a call blocked writing to a client that stopped reading

        call = asyncio.create_task(stuck_call())
        await asyncio.sleep(0)
        feed.route(GIFT_SENT_SUBJECT, gift_sent("s1", "g1"))
        feed.route(GIFT_SENT_SUBJECT, gift_sent("s1", "g2"))
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(call, 1.0)
        assert feed.watcher_count == 0

    async def test_interrupted_feed_delivers_what_it_has_then_asks_to_resubscribe(self) -> None:
        feed = GiftFeed(max_watchers=10, watcher_queue_size=10, stuck_grace_seconds=1.0)
        with feed.watch("s1") as first, feed.watch("s2") as second:
            feed.route(GIFT_SENT_SUBJECT, gift_sent("s1", "g1"))
            feed.interrupt_all()
            feed.route(GIFT_SENT_SUBJECT, gift_sent("s1", "g2"))  # after the gap: not delivered on this watcher
            assert await next_gift_id(first) == "g1"
            for watcher in (first, second):
                with pytest.raises(AppError) as error:
                    await watcher.next()
                assert refusal(error) == (grpc.StatusCode.UNAVAILABLE, "FEED_UNAVAILABLE")
                assert not error.value.is_outcome

    async def test_watchers_per_process_are_limited(self) -> None:
        feed = GiftFeed(max_watchers=2, watcher_queue_size=10, stuck_grace_seconds=1.0)
        with feed.watch("s1"), feed.watch("s2"):
            with pytest.raises(AppError) as error, feed.watch("s3"):
                pass
            assert refusal(error) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
        with feed.watch("s3"):  # freed on exit
            assert feed.watcher_count == 1

    async def test_watchers_per_caller_are_limited_and_a_backend_is_not(self) -> None:
        feed = GiftFeed(max_watchers=10, watcher_queue_size=10, stuck_grace_seconds=1.0, max_watchers_per_caller=2)
        with feed.watch("s1", "alice"), feed.watch("s2", "alice"):
            with pytest.raises(AppError) as error, feed.watch("s3", "alice"):
                pass
            assert refusal(error) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
            with feed.watch("s3", "bob"), feed.watch("s4"), feed.watch("s5"), feed.watch("s6"):  # others unaffected
                assert feed.watcher_count == 6
        with feed.watch("s3", "alice"):  # her share freed on exit
            assert feed.watcher_count == 1

    async def test_unknown_subjects_and_unwatched_streams_are_ignored(self) -> None:
        feed = GiftFeed(max_watchers=10, watcher_queue_size=10, stuck_grace_seconds=1.0)
        feed.route(GIFT_SENT_SUBJECT, gift_sent("nobody-watches", "g1"))
        feed.route(STREAM_ENDED_SUBJECT, stream_ended("nobody-watches"))
        feed.route("gifts.v1.something_new", b"\x00garbage")
        assert feed.watcher_count == 0


# ---------------------------------------------------------------- a batch of completed gifts


class TestBatchOfGifts:
    ROSES = domain.ComboKey("stream", "str_1", SENDER, "rose")
    HEARTS = domain.ComboKey("stream", "str_1", SENDER, "finger_heart")
    OTHER_SENDER = domain.ComboKey("stream", "str_1", "sender-2", "rose")

    def test_gifts_of_one_combo_in_a_batch_continue_each_other_in_order(self) -> None:
        states = {
            self.ROSES: domain.ComboState(None, 0),  # never sent
            self.HEARTS: domain.ComboState(T0 - timedelta(seconds=5), 3),  # a combo still running
            self.OTHER_SENDER: domain.ComboState(T0 - timedelta(seconds=11), 9),  # a combo that lapsed
        }
        keys = [self.ROSES, self.HEARTS, self.ROSES, self.OTHER_SENDER, self.ROSES, self.HEARTS, self.OTHER_SENDER]
        counts, new_states = domain.assign_combo_counts(keys, states, T0)
        assert counts == [1, 4, 2, 1, 3, 5, 2]
        assert new_states == {
            self.ROSES: domain.ComboState(T0, 3),
            self.HEARTS: domain.ComboState(T0, 5),
            self.OTHER_SENDER: domain.ComboState(T0, 2),
        }
        assert states[self.ROSES] == domain.ComboState(None, 0)  # the states read are left alone

    def test_only_the_keys_of_the_batch_get_a_new_state(self) -> None:
        states = {self.ROSES: domain.ComboState(None, 0), self.HEARTS: domain.ComboState(T0, 2)}
        counts, new_states = domain.assign_combo_counts([self.ROSES], states, T0)
        assert (counts, new_states) == ([1], {self.ROSES: domain.ComboState(T0, 1)})

    def test_counters_are_summed_per_row_in_key_order(self) -> None:
        gifts = [
            domain.CountedGift("str_2", "creator-2", "sender-b", 5),
            domain.CountedGift("str_1", CREATOR, "sender-b", 1),
            domain.CountedGift("str_1", CREATOR, "sender-a", 30),
            domain.CountedGift("str_1", CREATOR, "sender-b", 100),
            domain.CountedGift("str_2", "creator-2", "sender-b", 1),
        ]
        assert domain.gifter_increments(gifts, domain.TargetKind.STREAM) == [
            ("str_1", "sender-a", 30),
            ("str_1", "sender-b", 101),
            ("str_2", "sender-b", 6),
        ]
        assert domain.total_increments(gifts, domain.TargetKind.STREAM) == [("str_1", 131, 3), ("str_2", 6, 2)]

    def test_leaderboards_get_one_increment_per_creator_period_and_sender(self) -> None:
        gifts = [
            domain.CountedGift("str_1", CREATOR, "sender-b", 1),
            domain.CountedGift("str_2", "creator-0", "sender-b", 5),
            domain.CountedGift("str_1", CREATOR, "sender-a", 30),
            domain.CountedGift("str_1", CREATOR, "sender-b", 100),
        ]
        day, week, all_time = date(2026, 11, 25), date(2026, 11, 23), domain.ALL_TIME_START
        period = domain.LeaderboardPeriod
        assert domain.leaderboard_increments(gifts, T0) == [
            domain.LeaderboardIncrement("creator-0", period.ALL_TIME, all_time, "sender-b", 5),
            domain.LeaderboardIncrement("creator-0", period.DAY, day, "sender-b", 5),
            domain.LeaderboardIncrement("creator-0", period.WEEK, week, "sender-b", 5),
            domain.LeaderboardIncrement(CREATOR, period.ALL_TIME, all_time, "sender-a", 30),
            domain.LeaderboardIncrement(CREATOR, period.ALL_TIME, all_time, "sender-b", 101),
            domain.LeaderboardIncrement(CREATOR, period.DAY, day, "sender-a", 30),
            domain.LeaderboardIncrement(CREATOR, period.DAY, day, "sender-b", 101),
            domain.LeaderboardIncrement(CREATOR, period.WEEK, week, "sender-a", 30),
            domain.LeaderboardIncrement(CREATOR, period.WEEK, week, "sender-b", 101),
        ]

    def test_an_empty_batch_changes_no_counter(self) -> None:
        assert domain.leaderboard_increments([], T0) == []
        assert domain.gifter_increments([], domain.TargetKind.STREAM) == []
        assert domain.total_increments([], domain.TargetKind.STREAM) == []


def test_the_relay_sends_each_stream_end_alone_after_the_events_before_it() -> None:
    def event(outbox_id: int, subject: str) -> OutboxEvent:
        return OutboxEvent(outbox_id, f"m{outbox_id}", subject, b"")

    events = [
        event(1, GIFT_SENT_SUBJECT),
        event(2, GIFT_SENT_SUBJECT),
        event(3, STREAM_ENDED_SUBJECT),
        event(4, STREAM_ENDED_SUBJECT),
        event(5, GIFT_SENT_SUBJECT),
    ]
    runs = runs_ending_at_closing_events(events, CLOSING_SUBJECTS)
    assert [[e.outbox_id for e in run] for run in runs] == [[1, 2], [3], [4], [5]]
