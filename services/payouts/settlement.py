"""Settlement of gifts into creator diamonds: the durable JetStream consumer of GiftSent (one gift per message) and
GiftSentBatch (the gifts of one SendGift batch per message), and the batch use case.

Exactly-once effect from at-least-once delivery: a batch is one database transaction in which only gifts entering
the inbox for the first time are credited; messages are acked only after that commit. A crash before the commit
settles nothing (JetStream redelivers); a crash after it but before the acks makes JetStream redeliver gifts the
inbox then ignores. An event that cannot be settled — unreadable, or failing on its own delivery after delivery —
goes to the dead-letter stream (services/payouts/dead_letters.py) instead of being dropped; a bad gift of a batch
goes there alone, as its own GiftSent, and its message is acked once the batch's other gifts are settled."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import structlog
from coinstream.events.v1 import events_pb2
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from prometheus_client import Counter, Gauge, Histogram

from services.payouts import dead_letters, domain
from services.payouts.clawbacks import apply_waiting_clawbacks, repay_debts
from services.payouts.ports import PayoutsStore, PayoutsTransaction
from services.runtime import limits, tracing
from services.runtime.errors import AppError, FieldViolation, invalid_argument
from services.runtime.faults import crash_point
from services.runtime.ids import new_id
from services.runtime.messaging import (
    DEAD_LETTERS_STREAM_CONFIG,
    GIFT_SENT_BATCH_SUBJECT,
    GIFT_SENT_SUBJECT,
    GIFTS_STREAM,
    SETTLEMENT_CONSUMER,
    ensure_settlement_consumer,
    ensure_stream,
    fetch,
    quietly,
)
from services.runtime.validation import Validator

RETRY_PAUSE_SECONDS = 1.0
# Deliveries after which an event that fails on its own is dead-lettered. Redeliveries during an outage count
# toward it too (JetStream counts deliveries, not causes), but an outage alone never dead-letters an event.
DEFAULT_MAX_DELIVERIES = 5
# Failures that can come from one event's data besides the store's data errors (a constraint it breaks, a value out
# of range): a rule it trips (an assertion, an arithmetic error, an unbalanced ledger transaction). Anything else —
# the database unreachable or restarting, a lost connection, a deadlock, a missing table after a bad deploy — says
# nothing about the events, and is retried for as long as it lasts without counting towards dead-lettering.
RULE_ERRORS: tuple[type[Exception], ...] = (AssertionError, ArithmeticError, ValueError)

GIFTS_SETTLED = Counter("coinstream_payouts_gifts_settled_total", "Gifts credited to creators (first delivery only)")
DUPLICATE_GIFTS = Counter("coinstream_payouts_duplicate_gifts_total", "GiftSent deliveries already settled")
REJECTED_EVENTS = Counter(
    "coinstream_payouts_rejected_events_total", "GiftSent messages that could not be read (dead-lettered)"
)
DIAMONDS_CREDITED = Counter("coinstream_payouts_diamonds_credited_total", "Diamonds credited to creators")
# From the moment gifts recorded a gift as sent (GiftSent.sent_at) to the commit that credited it here: how long a
# creator waits to see a gift's diamonds. Across two hosts' clocks, so a skew between them shifts it.
SETTLEMENT_LAG = Histogram(
    "coinstream_settlement_lag_seconds",
    "GiftSent recorded to diamonds credited",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
# Polled from JetStream (measure_consumer): the durable consumer every payouts replica shares, so every replica
# reports the same values (aggregate with max()).
CONSUMER_PENDING = Gauge(
    "coinstream_consumer_pending_messages", "Messages in the stream not yet delivered to the consumer", ["consumer"]
)
CONSUMER_ACK_PENDING = Gauge(
    "coinstream_consumer_ack_pending_messages", "Messages delivered and not yet acknowledged", ["consumer"]
)
CONSUMER_REDELIVERED = Gauge(
    "coinstream_consumer_redelivered_messages", "Messages delivered more than once, not yet acknowledged", ["consumer"]
)

log = structlog.get_logger()


async def declare_settlement_consumer(nc: NatsClient, ack_wait_seconds: float, replicas: int = 1) -> None:
    """The runtime's consumer, with the configured ack_wait (an existing consumer is updated to it), and the
    dead-letter stream it writes to."""
    await ensure_settlement_consumer(nc, replicas, ack_wait_seconds)
    await ensure_stream(nc, DEAD_LETTERS_STREAM_CONFIG, replicas)


def decode_gift_sent(data: bytes) -> domain.GiftToSettle:
    """Raises AppError (INVALID_ARGUMENT) for a payload that is not a GiftSent settlement can use."""
    try:
        event = events_pb2.GiftSent.FromString(data)
    except DecodeError as error:
        raise _unreadable(f"is not a coinstream.events.v1.GiftSent: {error}") from error
    return gift_to_settle(event)


def decode_gift_sent_batch(data: bytes) -> list[events_pb2.GiftSent]:
    """The GiftSents of a GiftSentBatch, unchecked (each is checked on its own: one bad gift fails only itself).
    Raises AppError (INVALID_ARGUMENT) for a payload that is not a GiftSentBatch."""
    try:
        return list(events_pb2.GiftSentBatch.FromString(data).gifts)
    except DecodeError as error:
        raise _unreadable(f"is not a coinstream.events.v1.GiftSentBatch: {error}") from error


def _unreadable(problem: str) -> AppError:
    return invalid_argument([FieldViolation("payload", problem)])


def gift_to_settle(event: events_pb2.GiftSent) -> domain.GiftToSettle:
    """Raises AppError (INVALID_ARGUMENT) for a GiftSent settlement cannot use."""
    check = Validator()
    check.opaque_id(event.gift_transaction_id, "gift_transaction_id")
    # Creator ids name ledger accounts ('creator:<id>:…'), so they must be real identifiers.
    check.identifier(event.recipient_id, "recipient_id")
    _check_target(check, event)
    check.int_range(event.coins, "coins", minimum=1, maximum=limits.MAX_GIFT_COINS)
    # Kept for accounting only; paid + bonus = coins is not required yet (senders' side may still send 0 and 0).
    check.int_range(event.paid_coins, "paid_coins", minimum=0, maximum=limits.MAX_GIFT_COINS)
    check.int_range(event.bonus_coins, "bonus_coins", minimum=0, maximum=limits.MAX_GIFT_COINS)
    check.raise_if_invalid()
    return domain.GiftToSettle(
        event.gift_transaction_id,
        event.recipient_id,
        event.stream_id or None,
        event.coins,
        paid_coins=event.paid_coins,
        bonus_coins=event.bonus_coins,
        sent_at_seconds=event.sent_at.seconds + event.sent_at.nanos / 1e9,
        video_id=event.video_id or None,
    )


def _check_target(check: Validator, event: events_pb2.GiftSent) -> None:
    """Exactly one of stream_id and video_id (events from before video gifts all have a stream_id). Stream ids are
    made by gifts, so only bounded; video ids come from the content backend as identifiers, and are checked as such."""
    if event.stream_id and event.video_id:
        check.fail("video_id", "must be empty when stream_id is set: a gift goes to a stream or a video, not both")
    elif event.video_id:
        check.identifier(event.video_id, "video_id")
    elif event.stream_id:
        check.opaque_id(event.stream_id, "stream_id")
    else:
        check.fail("stream_id", "one of stream_id and video_id is required")


class Settlement:
    def __init__(self, store: PayoutsStore, *, hold_seconds: int = 0) -> None:
        self._store = store
        # Diamonds of gifts settled now stay pending this long (0: available at once).
        self._hold_seconds = hold_seconds

    def could_be_the_events(self, error: Exception) -> bool:
        """Whether a failed settlement may be the gifts' fault (so retrying them one by one, and dead-lettering one
        that keeps failing, makes sense), rather than the store's."""
        return isinstance(error, (*self._store.data_errors, *RULE_ERRORS))

    async def settle(self, gifts: list[domain.GiftToSettle]) -> int:
        """Credits the gifts not settled before, in one transaction; returns how many that was."""
        by_id: dict[str, domain.GiftToSettle] = {}
        for gift in gifts:
            by_id.setdefault(gift.gift_transaction_id, gift)  # the same gift twice in one batch counts once
        async with self._store.transaction() as tx:
            await tx.hold_off_reversals()  # before any other lock (clawbacks.py: the lock order)
            new_ids = await tx.admit_to_inbox(list(by_id))
            if not new_ids:
                return 0
            rate = await tx.current_rate()
            assert rate is not None, "a rate version is recorded before settlement starts"
            credits = await self._credit(tx, rate, [by_id[gift_id] for gift_id in sorted(new_ids)])
            await self._record(tx, rate, credits)
        _observe_lag([by_id[gift_id] for gift_id in new_ids])
        return len(credits)

    @staticmethod
    async def _credit(
        tx: PayoutsTransaction, rate: domain.SettlementRate, gifts: list[domain.GiftToSettle]
    ) -> list[domain.DiamondCredit]:
        """Each gift's diamonds, carrying each creator's fraction of a diamond from batch to batch (in this
        transaction, under the carry rows' locks) so that no fraction is ever lost or made up."""
        if not rate.carries_fractions:
            credits, _ = domain.credit_gifts(gifts, rate, {})
            return credits
        remainders = await tx.lock_carries(rate.version, list({gift.creator_id for gift in gifts}))
        credits, new_remainders = domain.credit_gifts(gifts, rate, remainders)
        await tx.save_carries(rate.version, new_remainders)
        return credits

    async def _record(
        self, tx: PayoutsTransaction, rate: domain.SettlementRate, credits: list[domain.DiamondCredit]
    ) -> None:
        diamonds_per_creator = domain.diamonds_by_creator(credits)
        held = self._hold_seconds > 0
        transaction_id = new_id("txn")
        await tx.record_transaction(
            transaction_id=transaction_id,
            kind="settlement",
            reference=f"{len(credits)} gifts",
            postings=domain.settlement_postings(diamonds_per_creator, held=held),
        )
        await tx.insert_credits(
            transaction_id=transaction_id,
            rate_version=rate.version,
            credits=credits,
            hold_seconds=self._hold_seconds,
        )
        balances = await tx.credit_creators(diamonds_per_creator, held=held)
        if not held:
            await repay_debts(tx, balances)  # held diamonds repay it when they mature
        # Reversals that came before their gifts were settled are applied now, in the credit's transaction.
        await apply_waiting_clawbacks(tx, [credit.gift_transaction_id for credit in credits])
        DIAMONDS_CREDITED.inc(sum(diamonds_per_creator.values()))


class SettlementConsumer:
    """Pulls GiftSent in batches from the durable consumer and settles each batch before acking it."""

    def __init__(
        self,
        js: JetStreamContext,
        settlement: Settlement,
        *,
        batch_size: int,
        fetch_timeout_seconds: float,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
    ) -> None:
        self._js = js
        self._max_deliveries = max_deliveries
        self._settlement = settlement
        self._batch_size = batch_size
        self._fetch_timeout_seconds = fetch_timeout_seconds

    async def run_forever(self) -> None:
        # durable= must be explicit: pull_subscribe ignores ConsumerConfig.durable_name (nats.py #603).
        # Bound, not subscribed by subject: the consumer filters both GiftSent subjects (messaging.py).
        subscription = await self._js.pull_subscribe_bind(durable=SETTLEMENT_CONSUMER, stream=GIFTS_STREAM)
        try:
            while True:
                messages = await fetch(subscription, self._batch_size, self._fetch_timeout_seconds)
                if messages:
                    await self._handle(messages)
        finally:
            await quietly(subscription.unsubscribe())

    async def _handle(self, messages: list[Msg]) -> None:
        # Tracing on: a span for the batch's credit, linked to every gift's trace, and one per message in its trace.
        with tracing.consuming("settlement credit", GIFT_SENT_SUBJECT, [message.headers for message in messages]):
            await self._settle_messages(messages)

    async def _settle_messages(self, messages: list[Msg]) -> None:
        carried: list[_Carried] = []
        to_retry: list[Msg] = []  # a dead-letter copy failed: delivered again later, whatever else of it settles
        to_ack: list[Msg] = []
        for message in messages:
            gifts, complete = await self._read(message)
            carried += gifts
            if not complete:
                to_retry.append(message)
            elif gifts:
                to_ack.append(message)
            else:  # all of it is in DEAD_LETTERS
                await quietly(message.term())
        if carried:
            try:
                settled = await self._settlement.settle([gift.gift for gift in carried])
            except Exception as error:
                if not self._settlement.could_be_the_events(error):
                    log.warning("settlement_batch_failed", messages=len(messages), error=repr(error))
                    await self._retry_later(to_ack + to_retry)
                    return
                # One event (or a bug it triggers) may fail a whole batch: each gift on its own, so only it is held
                # back.
                log.exception("settlement_batch_failed", messages=len(messages))
                settled, failed = await self._settle_one_by_one(carried)
                to_retry += [message for message in to_ack if id(message) in failed]
                to_ack = [message for message in to_ack if id(message) not in failed]
            else:
                crash_point("payouts.after_settlement_commit")
            self._count(len(carried), settled, len(to_ack))
        await self._ack(to_ack)
        if to_retry:
            await self._retry_later(to_retry)

    async def _read(self, message: Msg) -> tuple[list[_Carried], bool]:
        """The gifts the message carries that can be settled, and whether the rest of it (what cannot be read) is
        safely in DEAD_LETTERS. A message that cannot be read at all is dead-lettered whole; a bad gift of a batch is
        dead-lettered on its own, and the message is acked with the batch's other gifts."""
        batch = message.subject == GIFT_SENT_BATCH_SUBJECT
        try:
            if batch:
                events = decode_gift_sent_batch(message.data)
            else:
                return [_Carried(message, decode_gift_sent(message.data), None)], True
        except AppError as error:
            kind = "GiftSentBatch" if batch else "GiftSent"
            if await self._dead_letter(message, f"unreadable {kind}: {error.message}"):
                REJECTED_EVENTS.inc()
                return [], True
            return [], False
        carried: list[_Carried] = []
        complete = True
        for event in events:
            try:
                carried.append(_Carried(message, gift_to_settle(event), event))
            except AppError as error:
                if await self._dead_letter(message, f"unreadable GiftSent: {error.message}", event):
                    REJECTED_EVENTS.inc()
                else:
                    complete = False
        return carried, complete

    async def _settle_one_by_one(self, carried: list[_Carried]) -> tuple[int, set[int]]:
        """Settles each gift in a transaction of its own; returns how many were new, and the (ids of the) messages
        to deliver again because one of their gifts failed and is not dead-lettered (yet)."""
        settled = 0
        failed: set[int] = set()
        for gift in carried:
            try:
                settled += await self._settlement.settle([gift.gift])
            except Exception as error:
                message = gift.message
                if (
                    self._settlement.could_be_the_events(error)
                    and message.metadata.num_delivered >= self._max_deliveries
                ):
                    reason = f"settlement failed on delivery {message.metadata.num_delivered}: {error!r}"
                    if await self._dead_letter(message, reason, gift.event):
                        continue
                else:
                    log.warning(
                        "gift_settlement_failed", gift_transaction_id=gift.gift.gift_transaction_id, error=repr(error)
                    )
                failed.add(id(message))
        return settled, failed

    @staticmethod
    def _count(gifts: int, settled: int, messages: int) -> None:
        GIFTS_SETTLED.inc(settled)
        DUPLICATE_GIFTS.inc(gifts - settled)
        log.info("gifts_settled", messages=messages, gifts=gifts, settled=settled)

    @staticmethod
    async def _ack(messages: list[Msg]) -> None:
        for message in messages:
            # Fire-and-forget is enough: a lost ack only means a redelivery, which the inbox ignores.
            await quietly(message.ack())

    @staticmethod
    async def _retry_later(messages: list[Msg]) -> None:
        """Not acked, so nothing is lost: handed back for another try after a pause."""
        for message in messages:
            await quietly(message.nak(delay=RETRY_PAUSE_SECONDS))
        await asyncio.sleep(RETRY_PAUSE_SECONDS)

    async def _dead_letter(self, message: Msg, reason: str, gift: events_pb2.GiftSent | None = None) -> bool:
        """Copies an event settlement cannot process — the message, or one gift of a batch — to DEAD_LETTERS (for
        `coinstream dead-letters`), loudly; the caller then terminates or acks the message. False when the copy
        failed: the caller hands the message back, to be delivered again."""
        try:
            await dead_letters.dead_letter(self._js, message, reason, gift)
        except NatsError as error:
            log.warning("dead_letter_failed", error=repr(error))
            return False
        log.error(
            "gift_event_dead_lettered",
            reason=reason,
            stream_sequence=message.metadata.sequence.stream,
            message_id=(message.headers or {}).get("Nats-Msg-Id"),
            gift_transaction_id=gift.gift_transaction_id if gift is not None else None,
        )
        # A crash here: the event is delivered again and copied again, which the copy's Nats-Msg-Id makes a no-op
        # (within the stream's duplicate window).
        crash_point("payouts.after_dead_letter_copied")
        return True


@dataclass(frozen=True)
class _Carried:
    """A gift to settle and the message that carries it: its own GiftSent (event None), or a GiftSentBatch, in which
    case event is the gift's GiftSent, dead-lettered alone if it must be."""

    message: Msg
    gift: domain.GiftToSettle
    event: events_pb2.GiftSent | None


def _observe_lag(gifts: list[domain.GiftToSettle]) -> None:
    now = time.time()
    for gift in gifts:
        if gift.sent_at_seconds:
            SETTLEMENT_LAG.observe(max(0.0, now - gift.sent_at_seconds))


async def measure_consumer(js: JetStreamContext) -> None:
    """Sets the settlement consumer's gauges from JetStream (a probe of the metrics poller)."""
    info = await js.consumer_info(GIFTS_STREAM, SETTLEMENT_CONSUMER)
    CONSUMER_PENDING.labels(SETTLEMENT_CONSUMER).set(info.num_pending or 0)
    CONSUMER_ACK_PENDING.labels(SETTLEMENT_CONSUMER).set(info.num_ack_pending or 0)
    CONSUMER_REDELIVERED.labels(SETTLEMENT_CONSUMER).set(info.num_redelivered or 0)
