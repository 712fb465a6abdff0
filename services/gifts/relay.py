"""The outbox relay: publishes the events written in the same transaction as each completed gift (GiftSent) or ended
stream (StreamEnded) to JetStream, in outbox order.

At least once: a row is deleted only after JetStream acknowledged it, so a crash in between publishes it again.
Nats-Msg-Id (gift_transaction_id, or "stream_ended:<stream_id>") lets JetStream drop such repeats within its duplicate
window, and consumers dedup by that id beyond it.

One relay at a time publishes (a transaction-level advisory lock; the other replicas' relays stand by), so events
leave in outbox order even with several replicas: the live gift feed relies on a stream's StreamEnded coming after
its gifts.

Traces: each event's publish span continues the trace its outbox row stored (the call that sent the gift), and its
context goes out in the message's `traceparent` header for settlement (services/runtime/tracing.py)."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import nats.errors
import structlog
from nats.js import JetStreamContext
from nats.js.api import PubAck
from prometheus_client import Counter, Gauge

from services.gifts import store
from services.runtime import tracing
from services.runtime.faults import crash_point
from services.runtime.messaging import MATCH_FINISHED_SUBJECT, STREAM_ENDED_SUBJECT

log = structlog.get_logger()

BATCH_SIZE = 200
PUBLISH_TIMEOUT_SECONDS = 5.0
# After a NATS failure, wait at least this long before trying again, however often new gifts wake the relay.
FAILURE_BACKOFF_SECONDS = 2.0
# Events that close something (a stream's feed, a match) go out alone, once everything before them is acknowledged.
CLOSING_SUBJECTS = frozenset({STREAM_ENDED_SUBJECT, MATCH_FINISHED_SUBJECT})

PUBLISHED = Counter("coinstream_outbox_published_total", "Outbox events JetStream acknowledged")
# Polled (measure_backlog): events waiting in the outbox, and how long the oldest has waited. Every replica reports
# the same table: aggregate with max().
BACKLOG = Gauge("coinstream_outbox_backlog", "Events in the outbox not yet published")
OLDEST_AGE = Gauge("coinstream_outbox_oldest_event_age_seconds", "Age of the oldest unpublished outbox event")


class OutboxRelay:
    def __init__(self, pool: asyncpg.Pool, js: JetStreamContext, interval_seconds: float) -> None:
        self._pool = pool
        self._js = js
        self._interval_seconds = interval_seconds
        self._wakeup = asyncio.Event()

    def wake(self) -> None:
        self._wakeup.set()

    async def run_forever(self) -> None:
        while True:
            # Cleared before reading the outbox, so a gift completed meanwhile still wakes the next round.
            self._wakeup.clear()
            published, failed = await self.publish_batch()
            if failed:
                await asyncio.sleep(FAILURE_BACKOFF_SECONDS)
            elif published < BATCH_SIZE:
                await self._sleep_until_woken()

    async def _sleep_until_woken(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), self._interval_seconds)

    async def publish_batch(self) -> tuple[int, bool]:
        """Publishes up to BATCH_SIZE events in outbox order, all of them in flight at once; returns (how many were
        acknowledged, whether NATS failed)."""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await store.try_lock_relay(conn):
                return 0, False  # another replica is relaying; it also picks up our events on its next round
            events = await store.lock_outbox_batch(conn, BATCH_SIZE)
            if not events:
                return 0, False
            traced = tracing.publishing(events)
            acknowledged = 0
            try:
                acknowledged = await self._publish_in_order(events, traced)
            finally:  # the spans end even when publishing is cut short (a crash of NATS, a shutdown)
                traced.finish(acknowledged)
            PUBLISHED.inc(acknowledged)
            if acknowledged:
                crash_point("gifts.after_events_published")
                await store.delete_outbox_events(conn, [event.outbox_id for event in events[:acknowledged]])
        return acknowledged, acknowledged < len(events)

    async def _publish_in_order(self, events: list[store.OutboxEvent], traced: tracing.Publishing) -> int:
        """Runs of gift events go out with every acknowledgement in flight; a StreamEnded (or MatchFinished) waits
        until everything before it is acknowledged and goes alone. A failure inside a run may let later gifts of the
        run be stored before a republished earlier one, but never a stream's end before its gifts (live feeds end
        with it), nor a match's result before its last score update."""
        acknowledged = 0
        for run in runs_ending_at_closing_events(events):
            done = await self._publish(run, traced)
            acknowledged += done
            if done < len(run):
                break
        return acknowledged

    async def _publish(self, events: list[store.OutboxEvent], traced: tracing.Publishing) -> int:
        """Sends every event before awaiting any acknowledgement (one connection keeps them in order); returns how
        many leading events JetStream acknowledged. From the first failure on, the rows stay and go out again on a
        later round (a repeat of one that was stored after all is dropped by its Nats-Msg-Id)."""
        pending: list[asyncio.Future[PubAck]] = []
        try:
            for event in events:
                pending.append(
                    await self._js.publish_async(
                        event.subject,
                        event.payload,
                        headers={"Nats-Msg-Id": event.msg_id, **traced.headers(event)},
                        wait_stall=PUBLISH_TIMEOUT_SECONDS,
                    )
                )
            await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), PUBLISH_TIMEOUT_SECONDS)
        except (nats.errors.Error, TimeoutError, OSError) as error:
            log.warning("gift_events_publish_failed", events=len(events), sent=len(pending), error=repr(error))
        acknowledged = 0
        for event, future in zip(events, pending, strict=False):
            if not future.done() or future.cancelled() or future.exception() is not None:
                log.warning("gift_event_publish_failed", msg_id=event.msg_id, error=_failure(future))
                break
            if future.result().duplicate:
                log.info("gift_event_already_published", msg_id=event.msg_id, seq=future.result().seq)
            acknowledged += 1
        return acknowledged


def _failure(future: asyncio.Future[PubAck]) -> str:
    if not future.done() or future.cancelled():
        return "no acknowledgement in time"
    return repr(future.exception())


def runs_ending_at_closing_events(events: list[store.OutboxEvent]) -> list[list[store.OutboxEvent]]:
    """The events cut into runs: gift and update events, and each StreamEnded or MatchFinished as a run of its own."""
    runs: list[list[store.OutboxEvent]] = [[]]
    for event in events:
        if event.subject in CLOSING_SUBJECTS:
            runs += [[event], []]
        else:
            runs[-1].append(event)
    return [run for run in runs if run]


async def measure_backlog(pool: asyncpg.Pool) -> None:
    """Sets the outbox gauges (a probe of the metrics poller)."""
    backlog = await store.outbox_backlog(pool)
    BACKLOG.set(backlog.events)
    OLDEST_AGE.set(backlog.oldest_age_seconds)
