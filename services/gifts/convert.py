"""protobuf ⇄ domain for the gifts service, enums included: the one place the API's messages are built from domain
records (the servicer's answers, and the responses the use cases store for idempotent replays). Events have theirs
in events.py."""

from __future__ import annotations

from coinstream.gifts.v1 import gifts_pb2

from services.gifts import domain, events

_STREAM_STATUS_TO_PROTO = {
    domain.StreamStatus.LIVE: gifts_pb2.STREAM_STATUS_LIVE,
    domain.StreamStatus.ENDED: gifts_pb2.STREAM_STATUS_ENDED,
}

_MATCH_STATUS_TO_PROTO = {
    domain.MatchStatus.ACTIVE: gifts_pb2.MATCH_STATUS_ACTIVE,
    domain.MatchStatus.FINISHED: gifts_pb2.MATCH_STATUS_FINISHED,
}

LEADERBOARD_PERIODS = {
    gifts_pb2.LEADERBOARD_PERIOD_DAY: domain.LeaderboardPeriod.DAY,
    gifts_pb2.LEADERBOARD_PERIOD_WEEK: domain.LeaderboardPeriod.WEEK,
    gifts_pb2.LEADERBOARD_PERIOD_ALL_TIME: domain.LeaderboardPeriod.ALL_TIME,
}


def stream_message(stream: domain.LiveStream) -> gifts_pb2.LiveStream:
    return gifts_pb2.LiveStream(
        stream_id=stream.stream_id,
        creator_id=stream.creator_id,
        title=stream.title,
        status=_STREAM_STATUS_TO_PROTO[stream.status],
    )


def video_message(video: domain.Video) -> gifts_pb2.Video:
    return gifts_pb2.Video(video_id=video.video_id, creator_id=video.creator_id, gifts_enabled=video.gifts_enabled)


def match_message(match: domain.Match) -> gifts_pb2.Match:
    message = gifts_pb2.Match(
        match_id=match.match_id,
        sides=[
            gifts_pb2.MatchSide(stream_id=s.stream_id, creator_id=s.creator_id, score_coins=s.score_coins)
            for s in match.sides
        ],
        status=_MATCH_STATUS_TO_PROTO[match.status],
        winner_stream_ids=list(match.winner_stream_ids),
    )
    message.starts_at.FromDatetime(match.starts_at)
    message.ends_at.FromDatetime(match.ends_at)
    return message


def goal_message(goal: domain.StreamGoal) -> gifts_pb2.StreamGoal:
    return events.public_goal(events.goal_message(goal))


def gift_catalog_message(gift: domain.CatalogGift) -> gifts_pb2.Gift:
    return gifts_pb2.Gift(gift_id=gift.gift_id, name=gift.name, coin_price=gift.coin_price)


def gift_message(gift: domain.SentGift) -> gifts_pb2.GiftTransaction:
    return gifts_pb2.GiftTransaction(
        gift_transaction_id=gift.gift_transaction_id,
        sender_id=gift.sender_id,
        recipient_id=gift.recipient_id,
        stream_id=gift.stream_id or "",
        gift_id=gift.gift_id,
        quantity=gift.quantity,
        coins=gift.coins,
        combo_count=gift.combo_count,
        video_id=gift.video_id or "",
    )


def send_gift_response(gift: domain.SentGift) -> gifts_pb2.SendGiftResponse:
    """A completed gift's answer (the sender's balance is the wallet's, right after paying for it)."""
    assert gift.sender_balance_coins is not None, f"{gift.gift_transaction_id} is not paid"
    return gifts_pb2.SendGiftResponse(gift=gift_message(gift), sender_balance_coins=gift.sender_balance_coins)


def gifters_message(gifters: list[tuple[str, int]]) -> list[gifts_pb2.Gifter]:
    return [gifts_pb2.Gifter(account_id=account_id, coins=coins) for account_id, coins in gifters]


def stream_summary_message(summary: domain.StreamSummary) -> gifts_pb2.StreamSummary:
    message = gifts_pb2.StreamSummary(
        stream_id=summary.stream_id,
        total_coins=summary.totals.total_coins,
        gift_count=summary.totals.gift_count,
        top_gifters=gifters_message(summary.top_gifters),
        active_match_id=summary.active_match_id or "",
    )
    if summary.goal is not None:
        message.goal.CopyFrom(goal_message(summary.goal))
    return message


def video_summary_message(summary: domain.VideoSummary) -> gifts_pb2.VideoSummary:
    return gifts_pb2.VideoSummary(
        video_id=summary.video_id,
        total_coins=summary.totals.total_coins,
        gift_count=summary.totals.gift_count,
        top_gifters=gifters_message(summary.top_gifters),
    )


def get_match_response(view: domain.MatchView) -> gifts_pb2.GetMatchResponse:
    return gifts_pb2.GetMatchResponse(
        match=match_message(view.match),
        top_supporters=[
            gifts_pb2.MatchSupporter(stream_id=s.stream_id, account_id=s.account_id, coins=s.coins)
            for s in view.top_supporters
        ],
    )


def leaderboard_entries(ranked: list[domain.RankedGifter]) -> list[gifts_pb2.LeaderboardEntry]:
    return [gifts_pb2.LeaderboardEntry(account_id=e.account_id, coins=e.coins, rank=e.rank) for e in ranked]
