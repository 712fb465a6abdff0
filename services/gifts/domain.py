"""Gift rules with no I/O: who may go live, when a gift may be sent, what it costs, and which wallet answers are
final. A gift is a saga across two services: recorded here as pending, paid by a wallet spend whose request_id is
derived from the gift, then completed (or failed) here. Retrying the spend with the same derived request_id makes
the wallet answer with its stored outcome, so a gift is never paid twice.

Also the values the use cases (service.py, saga.py) take and return: the mutating RPCs' commands, each carrying its
idempotency key (built by convert.py from the caller-scoped request), and their results."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import Enum

import grpc

from services.runtime import limits
from services.runtime.errors import AppError, failed_precondition, not_found
from services.runtime.requests import RequestKey

MIN_QUANTITY = 1
MAX_QUANTITY = limits.MAX_GIFT_QUANTITY
MAX_TITLE_LENGTH = 200
TOP_GIFTERS_LIMIT = 10
MAX_GIFT_NAME_LENGTH = 100
MIN_COIN_PRICE = 1
MAX_COIN_PRICE = limits.MAX_GIFT_COIN_PRICE
# A gift continues its sender's combo when it completes within this long of the previous one (same gift, stream).
COMBO_WINDOW = timedelta(seconds=10)
LEADERBOARD_DEFAULT_PAGE_SIZE = 10
LEADERBOARD_MAX_PAGE_SIZE = 100
# The all-time leaderboard is stored as one period starting here.
ALL_TIME_START = date(1970, 1, 1)
# The wallet's spend request_id and reference for a gift, e.g. "gift:gtx_0f3c…".
WALLET_SPEND_PREFIX = limits.GIFT_SPEND_PREFIX
# Codes with which the wallet refuses a spend for good (with ErrorInfo: INSUFFICIENT_COINS, ACCOUNT_FROZEN, …).
# Anything else (UNAVAILABLE, DEADLINE_EXCEEDED, a bad token…) may not have been decided yet: the gift stays pending.
FINAL_WALLET_REFUSAL_CODES = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND})


class StreamStatus(Enum):
    LIVE = "live"
    ENDED = "ended"


class GiftStatus(Enum):
    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True)
class CatalogGift:
    gift_id: str
    name: str
    coin_price: int


@dataclass(frozen=True)
class LiveStream:
    stream_id: str
    creator_id: str
    title: str
    status: StreamStatus
    # The match the stream is in (until that match is finished), and the stream's open goal.
    match_id: str | None = None
    goal_id: str | None = None


class TargetKind(Enum):
    """Where a gift goes: a live stream or a posted video."""

    STREAM = "stream"
    VIDEO = "video"


@dataclass(frozen=True)
class Video:
    video_id: str
    creator_id: str
    gifts_enabled: bool


@dataclass(frozen=True)
class WalletAccount:
    """What the gifts service needs to know about a wallet account."""

    account_id: str
    adult_verified: bool


def require_can_go_live(account: WalletAccount | None, creator_id: str) -> None:
    """The contract: a stream's creator must be an adult-verified account."""
    if account is None or not account.adult_verified:
        raise failed_precondition("ACCOUNT_NOT_ELIGIBLE", f"account {creator_id!r} is not an adult-verified account")


def stream_already_live(creator_id: str) -> AppError:
    return failed_precondition("STREAM_ALREADY_LIVE", f"creator {creator_id!r} already has a live stream")


def stream_not_found(stream_id: str) -> AppError:
    return not_found("STREAM_NOT_FOUND", f"no stream {stream_id!r}")


def require_stream(stream: LiveStream | None, stream_id: str) -> LiveStream:
    if stream is None:
        raise stream_not_found(stream_id)
    return stream


def require_giftable(
    stream: LiveStream | None, stream_id: str, gift: CatalogGift | None, gift_id: str, sender_id: str
) -> tuple[LiveStream, CatalogGift]:
    """A gift goes to a live stream, is in the active catalog and is not sent by the stream's own creator."""
    stream = require_stream(stream, stream_id)
    if stream.status is not StreamStatus.LIVE:
        raise stream_not_live(stream_id)
    if gift is None:
        raise gift_not_found(gift_id)
    if sender_id == stream.creator_id:
        raise failed_precondition("SELF_GIFT", "creators cannot send gifts to their own stream")
    return stream, gift


def require_giftable_video(
    video: Video | None, video_id: str, gift: CatalogGift | None, gift_id: str, sender_id: str
) -> tuple[Video, CatalogGift]:
    """A video gift goes to a registered video that takes gifts, is in the active catalog and is not sent by the
    video's own creator."""
    if video is None:
        raise video_not_found(video_id)
    if not video.gifts_enabled:
        raise failed_precondition("VIDEO_NOT_GIFTABLE", f"video {video_id!r} does not take gifts")
    if gift is None:
        raise gift_not_found(gift_id)
    if sender_id == video.creator_id:
        raise failed_precondition("SELF_GIFT", "creators cannot send gifts to their own video")
    return video, gift


def video_not_found(video_id: str) -> AppError:
    return not_found("VIDEO_NOT_FOUND", f"no video {video_id!r}")


def require_same_video_creator(existing: Video | None, creator_id: str) -> None:
    """A video's creator receives its gifts: changing it would send later gifts' money elsewhere, so it is fixed."""
    if existing is not None and existing.creator_id != creator_id:
        raise failed_precondition(
            "VIDEO_CREATOR_MISMATCH", f"video {existing.video_id!r} belongs to another creator; its creator is fixed"
        )


def gift_coins(coin_price: int, quantity: int) -> int:
    assert coin_price > 0, f"gift price must be positive, got {coin_price}"
    assert MIN_QUANTITY <= quantity <= MAX_QUANTITY, f"quantity out of range: {quantity}"
    return coin_price * quantity


def wallet_spend_request_id(gift_transaction_id: str) -> str:
    """The same for every attempt at paying one gift: that is what makes paying it idempotent."""
    return WALLET_SPEND_PREFIX + gift_transaction_id


def is_final_wallet_refusal(error: AppError) -> bool:
    return error.code in FINAL_WALLET_REFUSAL_CODES


def gift_not_found(gift_id: str) -> AppError:
    return not_found("GIFT_NOT_FOUND", f"no gift {gift_id!r} in the catalog")


def require_catalog_gift(gift: CatalogGift | None, gift_id: str) -> CatalogGift:
    if gift is None:
        raise gift_not_found(gift_id)
    return gift


# ---------------------------------------------------------------- combos


@dataclass(frozen=True, order=True)
class ComboKey:
    """Gifts continue a combo per sender, gift and target (a stream or a video)."""

    target_kind: str  # a TargetKind value (a string, so keys sort)
    target_id: str
    sender_id: str
    gift_id: str


@dataclass(frozen=True)
class ComboState:
    """The last completed gift of a combo key: when it completed and its place in its combo (0: none yet)."""

    last_sent_at: datetime | None
    combo_count: int


def assign_combo_counts(
    keys: Sequence[ComboKey], states: dict[ComboKey, ComboState], sent_at: datetime
) -> tuple[list[int], dict[ComboKey, ComboState]]:
    """The combo_count of each gift of a batch, completed in this order at sent_at, and each key's new state: gifts
    of one key in one batch continue each other's combo, exactly as if they had completed one after the other."""
    current = dict(states)
    counts = []
    for key in keys:
        previous = current[key]
        count = next_combo_count(previous.last_sent_at, previous.combo_count, sent_at)
        current[key] = ComboState(sent_at, count)
        counts.append(count)
    return counts, {key: current[key] for key in set(keys)}


def next_combo_count(previous_sent_at: datetime | None, previous_count: int, sent_at: datetime) -> int:
    """The n-th gift of a combo: the previous count + 1 when the previous completed gift of the same sender, gift and
    stream is at most COMBO_WINDOW old, else 1. A previous gift stamped later than this one (clocks of two replicas)
    counts as close, not as a new combo."""
    if previous_sent_at is None or previous_count < 1:
        return 1
    if sent_at - previous_sent_at <= COMBO_WINDOW:
        return previous_count + 1
    return 1


# ---------------------------------------------------------------- leaderboards


class LeaderboardPeriod(Enum):
    DAY = "day"
    WEEK = "week"
    ALL_TIME = "all_time"


def period_start(period: LeaderboardPeriod, moment: datetime) -> date:
    """The first day of the period holding moment: its UTC day, the Monday of its ISO week, or ALL_TIME_START."""
    day = moment.astimezone(UTC).date()
    if period is LeaderboardPeriod.DAY:
        return day
    if period is LeaderboardPeriod.WEEK:
        return day - timedelta(days=day.weekday())
    return ALL_TIME_START


def period_starts(moment: datetime) -> dict[LeaderboardPeriod, date]:
    """Every period a gift completed at moment counts towards."""
    return {period: period_start(period, moment) for period in LeaderboardPeriod}


@dataclass(frozen=True)
class CountedGift:
    """What the counters need of a completed gift: exactly one of stream_id and video_id is set."""

    stream_id: str | None
    creator_id: str
    sender_id: str
    coins: int
    video_id: str | None = None


@dataclass(frozen=True)
class LeaderboardIncrement:
    creator_id: str
    period: LeaderboardPeriod
    period_start: date
    sender_id: str
    coins: int


def leaderboard_increments(gifts: Sequence[CountedGift], moment: datetime) -> list[LeaderboardIncrement]:
    """A batch's gifts, completed at moment, summed per creator, period and sender, in key order."""
    sums: dict[tuple[str, LeaderboardPeriod, date, str], int] = {}
    for gift in gifts:
        for period, start in period_starts(moment).items():
            key = (gift.creator_id, period, start, gift.sender_id)
            sums[key] = sums.get(key, 0) + gift.coins
    ordered = sorted(sums.items(), key=lambda item: (item[0][0], item[0][1].value, *item[0][2:]))
    return [LeaderboardIncrement(*key, coins) for key, coins in ordered]


def target_of(gift: CountedGift, kind: TargetKind) -> str | None:
    return gift.stream_id if kind is TargetKind.STREAM else gift.video_id


def gifter_increments(gifts: Sequence[CountedGift], kind: TargetKind) -> list[tuple[str, str, int]]:
    """(target_id, sender_id, coins) summed per target of that kind (streams or videos) and sender, in key order."""
    sums: dict[tuple[str, str], int] = {}
    for gift in gifts:
        if (target := target_of(gift, kind)) is not None:
            sums[(target, gift.sender_id)] = sums.get((target, gift.sender_id), 0) + gift.coins
    return sorted((target, sender_id, coins) for (target, sender_id), coins in sums.items())


def total_increments(gifts: Sequence[CountedGift], kind: TargetKind) -> list[tuple[str, int, int]]:
    """(target_id, coins, gift_count) summed per target of that kind (streams or videos), in id order."""
    sums: dict[str, tuple[int, int]] = {}
    for gift in gifts:
        if (target := target_of(gift, kind)) is not None:
            coins, count = sums.get(target, (0, 0))
            sums[target] = (coins + gift.coins, count + 1)
    return sorted((target, coins, count) for target, (coins, count) in sums.items())


@dataclass(frozen=True)
class RankedGifter:
    account_id: str
    coins: int
    rank: int


def rank_gifters(gifters: Sequence[tuple[str, int]]) -> list[RankedGifter]:
    """Competition ranking (1, 2, 2, 4) of gifters already sorted by coins, most first."""
    ranked: list[RankedGifter] = []
    for position, (account_id, coins) in enumerate(gifters, start=1):
        assert not ranked or ranked[-1].coins >= coins, "gifters must be sorted by coins, most first"
        rank = ranked[-1].rank if ranked and ranked[-1].coins == coins else position
        ranked.append(RankedGifter(account_id, coins, rank))
    return ranked


# ---------------------------------------------------------------- live gift feed


def stream_not_live(stream_id: str) -> AppError:
    return failed_precondition("STREAM_NOT_LIVE", f"stream {stream_id!r} has ended")


def require_watchable(stream: LiveStream | None, stream_id: str) -> LiveStream:
    stream = require_stream(stream, stream_id)
    if stream.status is not StreamStatus.LIVE:
        raise stream_not_live(stream_id)
    return stream


def too_many_watchers_for_caller(limit: int) -> AppError:
    return AppError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", f"at most {limit} gift feeds at once per caller"
    )


def too_many_watchers() -> AppError:
    return AppError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", "too many gift feed watchers on this server; retry shortly"
    )


def watcher_too_slow() -> AppError:
    return AppError(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", "watcher too slow; resubscribe")


def feed_interrupted() -> AppError:
    return AppError(
        grpc.StatusCode.UNAVAILABLE,
        "FEED_UNAVAILABLE",
        "the gift feed lost its connection to NATS and may have missed gifts; resubscribe",
    )


def payment_split(coins: int, paid_coins: int, bonus_coins: int) -> tuple[int, int]:
    """How the wallet paid a gift: paid + bonus = coins, or 0 and 0 from a wallet that does not report the split.
    Anything else is a bug on one side: the gift then stays pending (and alerts) rather than carry a wrong split."""
    assert paid_coins >= 0 and bonus_coins >= 0, f"negative split {paid_coins}+{bonus_coins}"
    assert paid_coins + bonus_coins in (0, coins), f"split {paid_coins}+{bonus_coins} of a {coins}-coin gift"
    return paid_coins, bonus_coins


# ---------------------------------------------------------------- matches

MIN_MATCH_SIDES = 2
MAX_MATCH_SIDES = 4
# The contract's bounds on a match's duration (deployments may narrow or widen them: GiftsSettings).
MIN_MATCH_DURATION = timedelta(seconds=30)
MAX_MATCH_DURATION = timedelta(minutes=60)
TOP_SUPPORTERS_PER_SIDE = 10


class MatchStatus(Enum):
    ACTIVE = "active"
    FINISHED = "finished"


@dataclass(frozen=True)
class MatchSide:
    stream_id: str
    creator_id: str
    score_coins: int


@dataclass(frozen=True)
class Match:
    match_id: str
    sides: tuple[MatchSide, ...]  # in the order the match was started with
    status: MatchStatus
    starts_at: datetime
    ends_at: datetime
    winner_stream_ids: tuple[str, ...] = ()
    finished_at: datetime | None = None


@dataclass(frozen=True)
class MatchSupporter:
    stream_id: str
    account_id: str
    coins: int


def require_matchable(streams: dict[str, LiveStream], stream_ids: Sequence[str]) -> list[LiveStream]:
    """The sides of a new match, in the order asked (distinct ids): existing live streams, none in a match. A creator
    has one live stream at most, so distinct live streams have distinct creators."""
    sides = []
    for stream_id in stream_ids:
        stream = require_stream(streams.get(stream_id), stream_id)
        if stream.status is not StreamStatus.LIVE:
            raise stream_not_live(stream_id)
        if stream.match_id is not None:
            raise failed_precondition("STREAM_IN_MATCH", f"stream {stream_id!r} is in match {stream.match_id!r}")
        sides.append(stream)
    assert len({stream.creator_id for stream in sides}) == len(sides), f"one creator twice in {stream_ids}"
    return sides


def match_not_found(match_id: str) -> AppError:
    return not_found("MATCH_NOT_FOUND", f"no match {match_id!r}")


def match_winners(sides: Sequence[MatchSide]) -> tuple[str, ...]:
    """The sides with the highest score, in side order: several on a tie (all of them when nobody scored)."""
    best = max(side.score_coins for side in sides)
    return tuple(side.stream_id for side in sides if side.score_coins == best)


# ---------------------------------------------------------------- stream goals

MIN_GOAL_TARGET = 1
MAX_GOAL_TARGET = 1_000_000_000
MAX_GOAL_DESCRIPTION_LENGTH = 200


@dataclass(frozen=True)
class StreamGoal:
    goal_id: str
    stream_id: str
    creator_id: str
    target_coins: int
    progress_coins: int
    description: str
    created_at: datetime
    reached_at: datetime | None = None


def require_goal_settable(stream: LiveStream | None, stream_id: str) -> LiveStream:
    """Goals are set on live streams (an ended stream takes no more gifts)."""
    stream = require_stream(stream, stream_id)
    if stream.status is not StreamStatus.LIVE:
        raise stream_not_live(stream_id)
    return stream


def goal_just_reached(goal: StreamGoal, added_coins: int) -> bool:
    """Whether the coins just added (goal is as after them) are what first brought its progress to the target."""
    return goal.reached_at is not None and goal.progress_coins - added_coins < goal.target_coins


# ---------------------------------------------------------------- the gift saga's records


@dataclass(frozen=True)
class SentGift:
    """One SendGift's gift (a row of gift_transactions): recorded pending, then completed or failed."""

    gift_transaction_id: str
    request_id: str
    sender_id: str
    recipient_id: str
    # Exactly one of stream_id and video_id is set: where the gift goes.
    stream_id: str | None
    gift_id: str
    quantity: int
    coin_price: int
    coins: int
    status: GiftStatus
    wallet_transaction_id: str | None
    sender_balance_coins: int | None
    # Set when the gift completes (0 before): how the wallet paid for it and its place in its combo.
    paid_coins: int = 0
    bonus_coins: int = 0
    combo_count: int = 0
    failure_reason: str | None = None
    video_id: str | None = None

    @property
    def target(self) -> tuple[TargetKind, str]:
        if self.video_id is not None:
            return TargetKind.VIDEO, self.video_id
        assert self.stream_id is not None, f"{self.gift_transaction_id} goes nowhere"
        return TargetKind.STREAM, self.stream_id

    def receipt(self) -> GiftReceipt:
        """A completed gift's answer (the sender's balance is the wallet's, right after paying for it)."""
        assert self.sender_balance_coins is not None, f"{self.gift_transaction_id} is not paid"
        return GiftReceipt(
            gift_transaction_id=self.gift_transaction_id,
            sender_id=self.sender_id,
            recipient_id=self.recipient_id,
            stream_id=self.stream_id,
            video_id=self.video_id,
            gift_id=self.gift_id,
            quantity=self.quantity,
            coins=self.coins,
            combo_count=self.combo_count,
            sender_balance_coins=self.sender_balance_coins,
        )


@dataclass(frozen=True)
class GiftContext:
    """What deciding new SendGift requests needs: their streams and videos, their active catalog gifts, and the gifts
    recorded under their request_ids whose idempotency keys are gone (a retry after the key expired)."""

    streams: dict[str, LiveStream]
    videos: dict[str, Video]
    catalog: dict[str, CatalogGift]
    gifts_without_key: dict[str, SentGift]


@dataclass(frozen=True)
class CompletionLocks:
    """What locking a batch's gifts for completion locked: the gifts still pending, and the last match and the open
    goal of each of their streams (by stream_id), as of the streams' lock."""

    pending: set[str]
    last_matches: dict[str, str]
    goals: dict[str, str]


@dataclass(frozen=True)
class OutboxRow:
    """An event to publish, queued in the transaction that decided it (the relay publishes it after commit)."""

    msg_id: str
    subject: str
    payload: bytes
    gift_transaction_id: str | None = None
    # The trace the relay continues when it publishes the event (None: tracing was off).
    traceparent: str | None = None


@dataclass(frozen=True)
class Totals:
    """A stream's or a video's counters."""

    total_coins: int
    gift_count: int


@dataclass(frozen=True)
class SpendAsk:
    """One spend of a wallet batch: request_id and reference are the gift's wallet_spend_request_id."""

    request_id: str
    account_id: str
    coins: int
    reference: str


@dataclass(frozen=True)
class Spend:
    """The wallet's receipt for a spend."""

    wallet_transaction_id: str
    balance_coins: int
    # How the wallet paid: bonus coins first, then paid coins (both 0 from a wallet that does not report the split).
    paid_coins: int
    bonus_coins: int


@dataclass(frozen=True)
class StreamSummary:
    stream_id: str
    totals: Totals
    top_gifters: list[tuple[str, int]]
    active_match_id: str | None
    goal: StreamGoal | None


@dataclass(frozen=True)
class VideoSummary:
    video_id: str
    totals: Totals
    top_gifters: list[tuple[str, int]]


@dataclass(frozen=True)
class MatchView:
    """A match as GetMatch shows it: the scoreboard and each side's top supporters."""

    match: Match
    top_supporters: list[MatchSupporter]


# ---------------------------------------------------------------- commands and their results


@dataclass(frozen=True)
class UpsertGift:
    """Adds a gift to the catalog, or changes one (bringing a retired one back). Result: the CatalogGift."""

    key: RequestKey
    gift: CatalogGift


@dataclass(frozen=True)
class RetireGift:
    """Takes a gift out of the catalog (gifts already sent keep it). Result: the CatalogGift."""

    key: RequestKey
    gift_id: str


@dataclass(frozen=True)
class StartStream:
    """Result: the new LiveStream."""

    key: RequestKey
    creator_id: str
    title: str


@dataclass(frozen=True)
class EndStream:
    """Result: the LiveStream, ended (now or before)."""

    key: RequestKey
    stream_id: str


@dataclass(frozen=True)
class UpsertVideo:
    """Registers a video, or turns its gifts on or off (its creator is fixed). Result: the Video."""

    key: RequestKey
    video: Video


@dataclass(frozen=True)
class StartMatch:
    """Result: the new Match, its sides in the order asked."""

    key: RequestKey
    stream_ids: tuple[str, ...]
    duration: timedelta


@dataclass(frozen=True)
class SetGoal:
    """Replaces a live stream's open goal with a new one. Result: the new StreamGoal."""

    key: RequestKey
    stream_id: str
    target_coins: int
    description: str


@dataclass(frozen=True)
class SendGift:
    """quantity × gift_id from sender_id to a live stream or a video (target). Result: a GiftReceipt."""

    key: RequestKey
    sender_id: str
    target: tuple[TargetKind, str]
    gift_id: str
    quantity: int

    @property
    def request_id(self) -> str:  # what the batcher groups retries by (batching.HasRequestId)
        return self.key.request_id


@dataclass(frozen=True)
class GiftReceipt:
    """What SendGift answers: the completed gift, and its sender's balance right after paying for it."""

    gift_transaction_id: str
    sender_id: str
    recipient_id: str
    # Exactly one of stream_id and video_id is set: where the gift went.
    stream_id: str | None
    video_id: str | None
    gift_id: str
    quantity: int
    coins: int
    combo_count: int
    sender_balance_coins: int
