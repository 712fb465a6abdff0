"""How the GiftSent events of gifts completed together become outbox rows (services/gifts/events.py): one
GiftSentBatch for the batch, one GiftSent for a lone gift, a traced gift, or every gift in per-gift mode."""

from __future__ import annotations

from datetime import UTC, datetime

from coinstream.events.v1 import events_pb2

from services.gifts import events
from services.gifts.domain import GiftStatus, SentGift
from services.runtime.messaging import GIFT_SENT_BATCH_SUBJECT, GIFT_SENT_SUBJECT

SENT_AT = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def completed(number: int) -> SentGift:
    return SentGift(
        gift_transaction_id=f"gtx_{number}",
        request_id=f"req-{number}",
        sender_id=f"fan{number}",
        recipient_id="creator",
        stream_id="str_1",
        gift_id="rose",
        quantity=number,
        coin_price=1,
        coins=number,
        status=GiftStatus.COMPLETED,
        wallet_transaction_id=f"txn_{number}",
        sender_balance_coins=100,
        paid_coins=number,
        combo_count=1,
    )


def test_gifts_completed_together_share_one_gift_sent_batch() -> None:
    gifts = [completed(n) for n in (1, 2, 3)]
    [row] = events.gift_sent_rows(gifts, SENT_AT, {}, per_gift=False)
    assert (row.subject, row.msg_id, row.gift_transaction_id) == (
        GIFT_SENT_BATCH_SUBJECT,
        "gift_sent_batch:gtx_1",
        "gtx_1",
    )
    batch = events_pb2.GiftSentBatch.FromString(row.payload)
    assert list(batch.gifts) == [events.gift_sent_event(gift, SENT_AT) for gift in gifts]


def test_a_lone_gift_and_every_gift_in_per_gift_mode_get_their_own_gift_sent() -> None:
    [lone] = events.gift_sent_rows([completed(1)], SENT_AT, {}, per_gift=False)
    assert (lone.subject, lone.msg_id) == (GIFT_SENT_SUBJECT, "gtx_1")
    assert events_pb2.GiftSent.FromString(lone.payload) == events.gift_sent_event(completed(1), SENT_AT)
    rows = events.gift_sent_rows([completed(n) for n in (1, 2)], SENT_AT, {}, per_gift=True)
    assert [(row.subject, row.msg_id) for row in rows] == [(GIFT_SENT_SUBJECT, "gtx_1"), (GIFT_SENT_SUBJECT, "gtx_2")]


def test_a_traced_gift_keeps_its_own_message_and_trace() -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    rows = events.gift_sent_rows([completed(n) for n in (1, 2, 3)], SENT_AT, {"req-2": traceparent}, per_gift=False)
    assert [(row.subject, row.msg_id, row.traceparent) for row in rows] == [
        (GIFT_SENT_SUBJECT, "gtx_2", traceparent),
        (GIFT_SENT_BATCH_SUBJECT, "gift_sent_batch:gtx_1", None),
    ]
    assert [g.gift_transaction_id for g in events_pb2.GiftSentBatch.FromString(rows[1].payload).gifts] == [
        "gtx_1",
        "gtx_3",
    ]
