"""Dead letters: a GiftSent that settlement cannot process is never dropped. After a bounded number of deliveries
(at once when it cannot even be read) it is copied — payload untouched, the reason and its origin in headers — to
the DEAD_LETTERS stream, and only then terminated in GIFTS. An operator lists them and, once the cause is fixed,
replays one: it goes back to its original subject, and the settlement inbox credits its gift exactly once however
often it is replayed.

Crash safety: the copy carries Nats-Msg-Id "dead:<stream>:<sequence>", so a crash between the copy and the term (the
event is redelivered and copied again) leaves one dead letter — if the redelivery comes within the stream's
duplicate window (2 minutes; later, a second copy, which a replay then settles no more than once); a replay
publishes before it deletes the dead letter, so a crash in between leaves the dead letter to replay again, which the
inbox then ignores."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime

from coinstream.events.v1 import events_pb2
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import Counter, Gauge

from services.runtime.messaging import DEAD_LETTERS_STREAM, GIFT_SENT_DEAD_LETTER_SUBJECT, GIFT_SENT_SUBJECT
from services.runtime.tracing import TRACEPARENT

REASON_HEADER = "Coinstream-Dead-Letter-Reason"
ORIGINAL_SUBJECT_HEADER = "Coinstream-Original-Subject"
ORIGINAL_SEQUENCE_HEADER = "Coinstream-Original-Sequence"
ORIGINAL_MSG_ID_HEADER = "Coinstream-Original-Msg-Id"
DELIVERIES_HEADER = "Coinstream-Deliveries"
# get_msg's "next at or after a sequence" needs a subject filter: every subject of the stream.
ALL_SUBJECTS = ">"
MAX_REASON_LENGTH = 1000
MAX_LISTED = 1000

DEAD_LETTERED = Counter("coinstream_payouts_dead_letters_total", "GiftSent events moved to the dead-letter stream")
# Polled (measure_dead_letters): what waits in DEAD_LETTERS now — gifts whose diamonds nobody has credited.
WAITING = Gauge("coinstream_payouts_dead_letters_waiting", "Dead letters in DEAD_LETTERS waiting for a replay")


@dataclass(frozen=True)
class DeadLetter:
    sequence: int  # in DEAD_LETTERS: the ID an operator replays
    reason: str
    original_subject: str
    original_sequence: int
    original_msg_id: str
    deliveries: int
    dead_lettered_at: datetime | None
    gift_transaction_id: str  # "" when the payload cannot be read
    payload: bytes


async def dead_letter(js: JetStreamContext, message: Msg, reason: str, gift: events_pb2.GiftSent | None = None) -> None:
    """Copies the message to DEAD_LETTERS (raises if JetStream did not store it: the caller then leaves the message
    to be redelivered rather than terminating it). With gift, one gift of a GiftSentBatch message instead: copied as
    the GiftSent it would have been on its own (so a replay settles just it), the batch's other gifts unaffected."""
    metadata = message.metadata
    dead_id = f"dead:{metadata.stream}:{metadata.sequence.stream}"
    original_subject, original_msg_id = message.subject, (message.headers or {}).get("Nats-Msg-Id", "")
    payload = message.data
    if gift is not None:
        dead_id = f"{dead_id}:{gift.gift_transaction_id}"
        original_subject, original_msg_id = GIFT_SENT_SUBJECT, gift.gift_transaction_id
        payload = gift.SerializeToString()
    headers = {
        "Nats-Msg-Id": dead_id,
        REASON_HEADER: reason[:MAX_REASON_LENGTH],
        ORIGINAL_SUBJECT_HEADER: original_subject,
        ORIGINAL_SEQUENCE_HEADER: str(metadata.sequence.stream),
        ORIGINAL_MSG_ID_HEADER: original_msg_id,
        DELIVERIES_HEADER: str(metadata.num_delivered),
    }
    # The gift's trace goes with it, so a replay continues it.
    traceparent = (message.headers or {}).get(TRACEPARENT)
    if traceparent:
        headers[TRACEPARENT] = traceparent
    await js.publish(GIFT_SENT_DEAD_LETTER_SUBJECT, payload, stream=DEAD_LETTERS_STREAM, headers=headers)
    DEAD_LETTERED.inc()


async def list_dead_letters(js: JetStreamContext, limit: int = MAX_LISTED) -> list[DeadLetter]:
    """The oldest dead letters first, up to limit (none while payouts has not yet created the stream)."""
    try:
        info = await js.stream_info(DEAD_LETTERS_STREAM)
    except NotFoundError:
        return []
    found: list[DeadLetter] = []
    sequence = info.state.first_seq
    while sequence and sequence <= info.state.last_seq and len(found) < limit:
        try:
            # The next stored one at or after sequence: replayed dead letters leave gaps.
            stored = await js.get_msg(DEAD_LETTERS_STREAM, seq=sequence, subject=ALL_SUBJECTS, next=True)
        except NotFoundError:
            break
        assert stored.seq is not None
        found.append(_read(stored.seq, stored.headers or {}, stored.data or b"", stored.time))
        sequence = stored.seq + 1
    return found


async def replay(js: JetStreamContext, sequence: int) -> DeadLetter:
    """Publishes the dead letter's payload to its original subject, then removes it from DEAD_LETTERS. Raises
    NotFoundError for an unknown sequence (replayed already, or never there)."""
    stored = await js.get_msg(DEAD_LETTERS_STREAM, seq=sequence)
    letter = _read(sequence, stored.headers or {}, stored.data or b"", stored.time)
    # A new Nats-Msg-Id: the original one may still be inside the duplicate window, which would swallow the replay.
    headers = {"Nats-Msg-Id": f"replay:{sequence}"}
    traceparent = (stored.headers or {}).get(TRACEPARENT)
    if traceparent:
        headers[TRACEPARENT] = traceparent
    await js.publish(letter.original_subject, letter.payload, headers=headers)
    await js.delete_msg(DEAD_LETTERS_STREAM, sequence)
    return letter


def _read(sequence: int, headers: dict[str, str], payload: bytes, stored_at: datetime | None) -> DeadLetter:
    gift_transaction_id = ""
    if headers.get(ORIGINAL_SUBJECT_HEADER, GIFT_SENT_SUBJECT) == GIFT_SENT_SUBJECT:  # not a whole GiftSentBatch
        with contextlib.suppress(DecodeError):
            gift_transaction_id = events_pb2.GiftSent.FromString(payload).gift_transaction_id
    return DeadLetter(
        sequence=sequence,
        reason=headers.get(REASON_HEADER, ""),
        original_subject=headers.get(ORIGINAL_SUBJECT_HEADER, ""),
        original_sequence=int(headers.get(ORIGINAL_SEQUENCE_HEADER, "0") or 0),
        original_msg_id=headers.get(ORIGINAL_MSG_ID_HEADER, ""),
        deliveries=int(headers.get(DELIVERIES_HEADER, "0") or 0),
        dead_lettered_at=stored_at,
        gift_transaction_id=gift_transaction_id,
        payload=payload,
    )


async def measure_dead_letters(js: JetStreamContext) -> None:
    """Sets the dead-letter gauge from the stream's state (a probe of the metrics poller)."""
    try:
        info = await js.stream_info(DEAD_LETTERS_STREAM)
    except NotFoundError:  # payouts has not created it yet: nothing dead-lettered
        WAITING.set(0)
        return
    WAITING.set(info.state.messages)
