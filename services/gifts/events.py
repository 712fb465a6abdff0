"""The events the gifts service publishes through its outbox: GiftSent, StreamEnded, and the updates of matches and
goals. Subjects (GiftSent's is shared with payouts: runtime/messaging.py), Nats-Msg-Ids and payloads in one place, as
the outbox rows to queue; the relay publishes them, the live feed routes them."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime

from coinstream.events.v1 import events_pb2
from coinstream.gifts.v1 import gifts_pb2
from google.protobuf.message import Message

from services.gifts import domain
from services.runtime import tracing
from services.runtime.messaging import (
    GIFT_SENT_BATCH_SUBJECT,
    GIFT_SENT_SUBJECT,
    GOAL_REACHED_SUBJECT,
    GOAL_UPDATED_SUBJECT,
    MATCH_FINISHED_SUBJECT,
    MATCH_UPDATED_SUBJECT,
    STREAM_ENDED_SUBJECT,
)

# Events that close something (a stream's feed, a match) go out alone, once everything before them is acknowledged
# (runtime/outbox.py): a live feed ends with its stream's StreamEnded, and a match's result follows its last update.
CLOSING_SUBJECTS = frozenset({STREAM_ENDED_SUBJECT, MATCH_FINISHED_SUBJECT})


def new_update_id() -> str:
    """Each update event is its own message (JetStream must not drop one as a repeat of another)."""
    return uuid.uuid4().hex


def _sides(sides: Iterable[domain.MatchSide]) -> list[events_pb2.MatchSide]:
    return [
        events_pb2.MatchSide(stream_id=s.stream_id, creator_id=s.creator_id, score_coins=s.score_coins) for s in sides
    ]


def _row(subject: str, msg_id: str, event: Message) -> domain.OutboxRow:
    """The event as an outbox row, carrying the trace of the call that queued it (none in a worker)."""
    return domain.OutboxRow(msg_id, subject, event.SerializeToString(), traceparent=tracing.current_traceparent())


def match_updated(match: domain.Match) -> domain.OutboxRow:
    """A match's scoreboard as of now."""
    update_id = new_update_id()
    event = events_pb2.MatchUpdated(match_id=match.match_id, sides=_sides(match.sides), update_id=update_id)
    event.starts_at.FromDatetime(match.starts_at)
    event.ends_at.FromDatetime(match.ends_at)
    return _row(MATCH_UPDATED_SUBJECT, f"match_updated:{update_id}", event)


def match_finished(match: domain.Match) -> domain.OutboxRow:
    """A finished match: one id per match, so JetStream and consumers keep one."""
    assert match.status is domain.MatchStatus.FINISHED and match.finished_at is not None, f"{match.match_id} is active"
    event = events_pb2.MatchFinished(
        match_id=match.match_id, sides=_sides(match.sides), winner_stream_ids=list(match.winner_stream_ids)
    )
    event.starts_at.FromDatetime(match.starts_at)
    event.ends_at.FromDatetime(match.ends_at)
    event.finished_at.FromDatetime(match.finished_at)
    return _row(MATCH_FINISHED_SUBJECT, f"match_finished:{match.match_id}", event)


def goal_message(goal: domain.StreamGoal) -> events_pb2.StreamGoal:
    message = events_pb2.StreamGoal(
        goal_id=goal.goal_id,
        stream_id=goal.stream_id,
        creator_id=goal.creator_id,
        target_coins=goal.target_coins,
        progress_coins=goal.progress_coins,
        description=goal.description,
    )
    message.created_at.FromDatetime(goal.created_at)
    if goal.reached_at is not None:
        message.reached_at.FromDatetime(goal.reached_at)
    return message


def public_goal(goal: events_pb2.StreamGoal) -> gifts_pb2.StreamGoal:
    """The API's StreamGoal (SetStreamGoal, GetStreamSummary, the live feed) of the event's."""
    public = gifts_pb2.StreamGoal(
        goal_id=goal.goal_id,
        stream_id=goal.stream_id,
        target_coins=goal.target_coins,
        progress_coins=goal.progress_coins,
        description=goal.description,
        created_at=goal.created_at,
    )
    if goal.HasField("reached_at"):
        public.reached_at.CopyFrom(goal.reached_at)
    return public


def goal_updated(goal: domain.StreamGoal) -> domain.OutboxRow:
    update_id = new_update_id()
    event = events_pb2.GoalUpdated(goal=goal_message(goal), update_id=update_id)
    return _row(GOAL_UPDATED_SUBJECT, f"goal_updated:{update_id}", event)


def goal_reached(goal: domain.StreamGoal) -> domain.OutboxRow:
    """One id per goal: it is reached once."""
    assert goal.reached_at is not None, f"goal {goal.goal_id} is not reached"
    return _row(GOAL_REACHED_SUBJECT, f"goal_reached:{goal.goal_id}", events_pb2.GoalReached(goal=goal_message(goal)))


def gift_sent_event(gift: domain.SentGift, sent_at: datetime) -> events_pb2.GiftSent:
    assert gift.wallet_transaction_id is not None, f"{gift.gift_transaction_id} is not paid"
    event = events_pb2.GiftSent(
        gift_transaction_id=gift.gift_transaction_id,
        sender_id=gift.sender_id,
        recipient_id=gift.recipient_id,
        stream_id=gift.stream_id or "",
        video_id=gift.video_id or "",
        gift_id=gift.gift_id,
        quantity=gift.quantity,
        coins=gift.coins,
        wallet_transaction_id=gift.wallet_transaction_id,
        paid_coins=gift.paid_coins,
        bonus_coins=gift.bonus_coins,
        combo_count=gift.combo_count,
    )
    event.sent_at.FromDatetime(sent_at)
    return event


def gift_sent_rows(
    gifts: list[domain.SentGift], sent_at: datetime, trace_parents: Mapping[str, str], *, per_gift: bool
) -> list[domain.OutboxRow]:
    """The GiftSent events of gifts completed together, as outbox rows: one GiftSentBatch for all of them, so that
    JetStream stores, delivers, acks and deletes one message per batch rather than per gift — except where one
    message per gift is wanted: per_gift (the contract's gifts.v1.gift_sent, for other consumers of it), a traced
    gift (its message carries its own call's trace on to settlement), and a lone gift (nothing to share)."""
    rows: list[domain.OutboxRow] = []
    batched: list[events_pb2.GiftSent] = []
    for gift in gifts:
        event = gift_sent_event(gift, sent_at)
        traceparent = trace_parents.get(gift.request_id)
        if per_gift or traceparent is not None:
            rows.append(_gift_sent_row(event, traceparent))
        else:
            batched.append(event)
    if len(batched) == 1:
        rows.append(_gift_sent_row(batched[0], None))
    elif batched:
        first = batched[0].gift_transaction_id
        payload = events_pb2.GiftSentBatch(gifts=batched).SerializeToString()
        # The first gift's id names the batch: each gift completes once, so no other batch can start with it.
        rows.append(domain.OutboxRow(f"gift_sent_batch:{first}", GIFT_SENT_BATCH_SUBJECT, payload, first))
    return rows


def _gift_sent_row(event: events_pb2.GiftSent, traceparent: str | None) -> domain.OutboxRow:
    gift_transaction_id = event.gift_transaction_id
    return domain.OutboxRow(
        gift_transaction_id, GIFT_SENT_SUBJECT, event.SerializeToString(), gift_transaction_id, traceparent
    )


def stream_ended(stream: domain.LiveStream, ended_at: datetime) -> domain.OutboxRow:
    """One id per stream: it ends once. Queued with the stream's gifts, so published after every one of them."""
    event = events_pb2.StreamEnded(stream_id=stream.stream_id, creator_id=stream.creator_id)
    event.ended_at.FromDatetime(ended_at)
    return _row(STREAM_ENDED_SUBJECT, f"stream_ended:{stream.stream_id}", event)
