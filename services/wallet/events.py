"""The events the wallet publishes through its outbox (services/runtime/outbox.py), as the rows to queue: a reversed
purchase with the gifts its coins paid for (payouts claws back their diamonds), and an account frozen or active again
(payouts refuses a frozen account's withdrawals). Subjects are runtime/messaging.py's; payloads coinstream.events.v1."""

from __future__ import annotations

from datetime import datetime

from coinstream.events.v1 import events_pb2
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from services.runtime import tracing
from services.runtime.messaging import ACCOUNT_STATUS_CHANGED_SUBJECT, PURCHASE_REVERSED_SUBJECT
from services.runtime.outbox import OutboxRow
from services.wallet import domain

# A reversal traced to many gifts (up to one per coin of its purchase) goes out in parts, each well under NATS's
# payload limit (1 MB): 500 gifts of ~50 bytes.
GIFTS_PER_PART = 500


def purchase_reversed(
    reversal: domain.PurchaseReversal, account_id: str, gifts: dict[str, int], reversed_at: datetime
) -> list[OutboxRow]:
    """One event per part of at most GIFTS_PER_PART gifts (one part when none), Nats-Msg-Id "<reversal>:<part>"."""
    funded = [events_pb2.FundedGift(gift_transaction_id=gift, coins=coins) for gift, coins in gifts.items()]
    parts = [funded[start : start + GIFTS_PER_PART] for start in range(0, len(funded), GIFTS_PER_PART)] or [[]]
    return [
        _row(
            PURCHASE_REVERSED_SUBJECT,
            f"{reversal.transaction_id}:{number}",
            events_pb2.PurchaseReversed(
                reversal_id=reversal.transaction_id,
                purchase_id=reversal.purchase_id,
                account_id=account_id,
                coins=reversal.reversed.paid_coins,
                bonus_coins=reversal.reversed.bonus_coins,
                gifts=part,
                part=number,
                parts=len(parts),
                reversed_at=_timestamp(reversed_at),
            ),
        )
        for number, part in enumerate(parts, start=1)
    ]


def status_changed(account_id: str, status: domain.AccountStatus, version: int, changed_at: datetime) -> OutboxRow:
    return _row(
        ACCOUNT_STATUS_CHANGED_SUBJECT,
        f"account_status:{account_id}:{version}",
        events_pb2.AccountStatusChanged(
            account_id=account_id,
            frozen=status is domain.AccountStatus.FROZEN,
            version=version,
            changed_at=_timestamp(changed_at),
        ),
    )


def _row(subject: str, msg_id: str, event: Message) -> OutboxRow:
    """The event as an outbox row, carrying the trace of the call that queued it."""
    return OutboxRow(msg_id, subject, event.SerializeToString(), traceparent=tracing.current_traceparent())


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp
