"""The events payouts publishes through its outbox (services/runtime/outbox.py), as the rows to queue: diamonds clawed
back from a creator (payouts.v1.diamonds_clawed_back), for other backends to tell the creator or flag the case."""

from __future__ import annotations

from datetime import datetime

from coinstream.events.v1 import events_pb2
from google.protobuf import timestamp_pb2

from services.payouts import domain
from services.runtime import tracing
from services.runtime.messaging import DIAMONDS_CLAWED_BACK_SUBJECT
from services.runtime.outbox import OutboxRow


def diamonds_clawed_back(taken: list[domain.ClawbackTaken], clawed_back_at: datetime) -> list[OutboxRow]:
    """One event per gift clawed back, Nats-Msg-Id "clawback:<reversal>:<gift>"."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(clawed_back_at)
    traceparent = tracing.current_traceparent()
    return [
        OutboxRow(
            f"clawback:{t.clawback.reversal_id}:{t.clawback.gift_transaction_id}",
            DIAMONDS_CLAWED_BACK_SUBJECT,
            events_pb2.DiamondsClawedBack(
                creator_id=t.creator_id,
                gift_transaction_id=t.clawback.gift_transaction_id,
                reversal_id=t.clawback.reversal_id,
                coins=t.clawback.coins,
                diamonds=t.diamonds,
                from_pending_diamonds=t.from_pending,
                from_available_diamonds=t.from_available,
                debt_diamonds=t.to_debt,
                clawed_back_at=stamp,
            ).SerializeToString(),
            traceparent=traceparent,
        )
        for t in taken
    ]
