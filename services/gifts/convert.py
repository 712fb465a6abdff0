"""protobuf ⇄ domain for the gifts service, in one place: requests into the use cases' commands, their results into
responses, enums both ways, and the Reply of each idempotent RPC (its result kept as the response message, so a
replay decodes the stored message and answers the identical response). Events have theirs in events.py.

A replay's result holds what its response holds: what the API does not show (a goal's creator, a stream's match and
goal, a match's finish time) comes back empty, and converts to the identical response."""

from __future__ import annotations

from datetime import UTC

from coinstream.gifts.v1 import gifts_pb2

from services.gifts import domain, events
from services.runtime.requests import MessageReply, RequestKey

STREAM_STATUS_TO_PROTO = {
    domain.StreamStatus.LIVE: gifts_pb2.STREAM_STATUS_LIVE,
    domain.StreamStatus.ENDED: gifts_pb2.STREAM_STATUS_ENDED,
}
STREAM_STATUS_FROM_PROTO = {proto: status for status, proto in STREAM_STATUS_TO_PROTO.items()}

MATCH_STATUS_TO_PROTO = {
    domain.MatchStatus.ACTIVE: gifts_pb2.MATCH_STATUS_ACTIVE,
    domain.MatchStatus.FINISHED: gifts_pb2.MATCH_STATUS_FINISHED,
}
MATCH_STATUS_FROM_PROTO = {proto: status for status, proto in MATCH_STATUS_TO_PROTO.items()}

LEADERBOARD_PERIODS = {
    gifts_pb2.LEADERBOARD_PERIOD_DAY: domain.LeaderboardPeriod.DAY,
    gifts_pb2.LEADERBOARD_PERIOD_WEEK: domain.LeaderboardPeriod.WEEK,
    gifts_pb2.LEADERBOARD_PERIOD_ALL_TIME: domain.LeaderboardPeriod.ALL_TIME,
}


# ---------------------------------------------------------------- requests (caller-scoped) into commands


def upsert_gift(request: gifts_pb2.UpsertGiftRequest) -> domain.UpsertGift:
    return domain.UpsertGift(RequestKey.of(request), catalog_gift_from_message(request.gift))


def retire_gift(request: gifts_pb2.RetireGiftRequest) -> domain.RetireGift:
    return domain.RetireGift(RequestKey.of(request), request.gift_id)


def start_stream(request: gifts_pb2.StartLiveStreamRequest) -> domain.StartStream:
    return domain.StartStream(RequestKey.of(request), request.creator_id, request.title)


def end_stream(request: gifts_pb2.EndLiveStreamRequest) -> domain.EndStream:
    return domain.EndStream(RequestKey.of(request), request.stream_id)


def send_gift(request: gifts_pb2.SendGiftRequest) -> domain.SendGift:
    """The target is the video when video_id is set, else the stream (the servicer checked that one is)."""
    if request.video_id:
        target = (domain.TargetKind.VIDEO, request.video_id)
    else:
        target = (domain.TargetKind.STREAM, request.stream_id)
    return domain.SendGift(RequestKey.of(request), request.sender_id, target, request.gift_id, request.quantity)


def upsert_video(request: gifts_pb2.UpsertVideoRequest) -> domain.UpsertVideo:
    return domain.UpsertVideo(
        RequestKey.of(request), domain.Video(request.video_id, request.creator_id, request.gifts_enabled)
    )


def start_match(request: gifts_pb2.StartMatchRequest) -> domain.StartMatch:
    return domain.StartMatch(RequestKey.of(request), tuple(request.stream_ids), request.duration.ToTimedelta())


def set_goal(request: gifts_pb2.SetStreamGoalRequest) -> domain.SetGoal:
    return domain.SetGoal(RequestKey.of(request), request.stream_id, request.target_coins, request.description)


# ---------------------------------------------------------------- domain ⇄ messages


def stream_message(stream: domain.LiveStream) -> gifts_pb2.LiveStream:
    return gifts_pb2.LiveStream(
        stream_id=stream.stream_id,
        creator_id=stream.creator_id,
        title=stream.title,
        status=STREAM_STATUS_TO_PROTO[stream.status],
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
        status=MATCH_STATUS_TO_PROTO[match.status],
        winner_stream_ids=list(match.winner_stream_ids),
    )
    message.starts_at.FromDatetime(match.starts_at)
    message.ends_at.FromDatetime(match.ends_at)
    return message


def goal_message(goal: domain.StreamGoal) -> gifts_pb2.StreamGoal:
    return events.public_goal(events.goal_message(goal))


def gift_catalog_message(gift: domain.CatalogGift) -> gifts_pb2.Gift:
    return gifts_pb2.Gift(gift_id=gift.gift_id, name=gift.name, coin_price=gift.coin_price)


def catalog_gift_from_message(message: gifts_pb2.Gift) -> domain.CatalogGift:
    return domain.CatalogGift(message.gift_id, message.name, message.coin_price)


def stream_from_message(message: gifts_pb2.LiveStream) -> domain.LiveStream:
    return domain.LiveStream(
        message.stream_id, message.creator_id, message.title, STREAM_STATUS_FROM_PROTO[message.status]
    )


def video_from_message(message: gifts_pb2.Video) -> domain.Video:
    return domain.Video(message.video_id, message.creator_id, message.gifts_enabled)


def match_from_message(message: gifts_pb2.Match) -> domain.Match:
    return domain.Match(
        match_id=message.match_id,
        sides=tuple(domain.MatchSide(s.stream_id, s.creator_id, s.score_coins) for s in message.sides),
        status=MATCH_STATUS_FROM_PROTO[message.status],
        starts_at=message.starts_at.ToDatetime(tzinfo=UTC),
        ends_at=message.ends_at.ToDatetime(tzinfo=UTC),
        winner_stream_ids=tuple(message.winner_stream_ids),
    )


def goal_from_message(message: gifts_pb2.StreamGoal) -> domain.StreamGoal:
    return domain.StreamGoal(
        goal_id=message.goal_id,
        stream_id=message.stream_id,
        creator_id="",  # not in the API's goal
        target_coins=message.target_coins,
        progress_coins=message.progress_coins,
        description=message.description,
        created_at=message.created_at.ToDatetime(tzinfo=UTC),
        reached_at=message.reached_at.ToDatetime(tzinfo=UTC) if message.HasField("reached_at") else None,
    )


def send_gift_response(receipt: domain.GiftReceipt) -> gifts_pb2.SendGiftResponse:
    gift = gifts_pb2.GiftTransaction(
        gift_transaction_id=receipt.gift_transaction_id,
        sender_id=receipt.sender_id,
        recipient_id=receipt.recipient_id,
        stream_id=receipt.stream_id or "",
        gift_id=receipt.gift_id,
        quantity=receipt.quantity,
        coins=receipt.coins,
        combo_count=receipt.combo_count,
        video_id=receipt.video_id or "",
    )
    return gifts_pb2.SendGiftResponse(gift=gift, sender_balance_coins=receipt.sender_balance_coins)


def gift_receipt(message: gifts_pb2.SendGiftResponse) -> domain.GiftReceipt:
    gift = message.gift
    return domain.GiftReceipt(
        gift_transaction_id=gift.gift_transaction_id,
        sender_id=gift.sender_id,
        recipient_id=gift.recipient_id,
        stream_id=gift.stream_id or None,
        video_id=gift.video_id or None,
        gift_id=gift.gift_id,
        quantity=gift.quantity,
        coins=gift.coins,
        combo_count=gift.combo_count,
        sender_balance_coins=message.sender_balance_coins,
    )


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


# ---------------------------------------------------------------- what idempotent RPCs keep with their keys


GIFT_UPSERTED: MessageReply[domain.CatalogGift, gifts_pb2.UpsertGiftResponse] = MessageReply(
    gifts_pb2.UpsertGiftResponse,
    lambda gift: gifts_pb2.UpsertGiftResponse(gift=gift_catalog_message(gift)),
    lambda message: catalog_gift_from_message(message.gift),
)
GIFT_RETIRED: MessageReply[domain.CatalogGift, gifts_pb2.RetireGiftResponse] = MessageReply(
    gifts_pb2.RetireGiftResponse,
    lambda gift: gifts_pb2.RetireGiftResponse(gift=gift_catalog_message(gift)),
    lambda message: catalog_gift_from_message(message.gift),
)
STREAM_STARTED: MessageReply[domain.LiveStream, gifts_pb2.StartLiveStreamResponse] = MessageReply(
    gifts_pb2.StartLiveStreamResponse,
    lambda stream: gifts_pb2.StartLiveStreamResponse(stream=stream_message(stream)),
    lambda message: stream_from_message(message.stream),
)
STREAM_ENDED: MessageReply[domain.LiveStream, gifts_pb2.EndLiveStreamResponse] = MessageReply(
    gifts_pb2.EndLiveStreamResponse,
    lambda stream: gifts_pb2.EndLiveStreamResponse(stream=stream_message(stream)),
    lambda message: stream_from_message(message.stream),
)
GIFT_SENT = MessageReply(gifts_pb2.SendGiftResponse, send_gift_response, gift_receipt)
VIDEO_UPSERTED: MessageReply[domain.Video, gifts_pb2.UpsertVideoResponse] = MessageReply(
    gifts_pb2.UpsertVideoResponse,
    lambda upserted: gifts_pb2.UpsertVideoResponse(video=video_message(upserted)),
    lambda message: video_from_message(message.video),
)
MATCH_STARTED: MessageReply[domain.Match, gifts_pb2.StartMatchResponse] = MessageReply(
    gifts_pb2.StartMatchResponse,
    lambda started: gifts_pb2.StartMatchResponse(match=match_message(started)),
    lambda message: match_from_message(message.match),
)
GOAL_SET: MessageReply[domain.StreamGoal, gifts_pb2.SetStreamGoalResponse] = MessageReply(
    gifts_pb2.SetStreamGoalResponse,
    lambda new_goal: gifts_pb2.SetStreamGoalResponse(goal=goal_message(new_goal)),
    lambda message: goal_from_message(message.goal),
)
