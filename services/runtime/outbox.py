"""The transactional outbox and its relay: a service writes each event it must publish into its outbox table in the
same database transaction as the change the event tells of, and the relay publishes the rows to JetStream, in outbox
order, after the commit. Gifts (GiftSent, StreamEnded, …) and the wallet (PurchaseReversed, …) use it, each with a
table of its own in its own database.

At least once: a row is deleted only after JetStream acknowledged it, so a crash in between publishes it again.
Nats-Msg-Id (the row's msg_id: a gift_transaction_id, "stream_ended:<stream_id>", a reversal's id) lets JetStream drop
such repeats within its duplicate window, and consumers dedup by that id beyond it.

One relay at a time publishes (a transaction-level advisory lock; the other replicas' relays stand by), so events
leave in outbox order even with several replicas: gifts' live feed relies on a stream's StreamEnded coming after its
gifts.

Traces: each event's publish span continues the trace its outbox row stored (the call that made it), and its context
goes out in the message's `traceparent` header for the consumer (services/runtime/tracing.py)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import asyncpg
import nats.errors
import structlog
from nats.js import JetStreamContext
from nats.js.api import PubAck
from prometheus_client import Counter, Gauge

from services.runtime import tracing
from services.runtime.database import Connection
from services.runtime.faults import crash_point

BATCH_SIZE = 200


@dataclass(frozen=True)
class OutboxRow:
    """An event to publish, queued in the transaction that decided it."""

    msg_id: str  # Nats-Msg-Id: what JetStream and the consumers dedup by
    subject: str
    payload: bytes
    traceparent: str | None = None  # the trace the relay continues (None: tracing was off)


@dataclass(frozen=True)
class OutboxEvent:
    outbox_id: int
    msg_id: str
    subject: str
    payload: bytes
    traceparent: str | None = None


@dataclass(frozen=True)
class OutboxBacklog:
    events: int
    oldest_age_seconds: float  # 0 when empty


@dataclass(frozen=True)
class Outbox:
    """A service's outbox table: (outbox_id identity, msg_id, subject, payload, traceparent, created_at) at least.
    lock_key: the advisory lock of its relay, unlike any other advisory lock key used on that database."""

    service: str  # names the relay's crash point, "<service>.after_events_published"
    table: str
    lock_key: int

    async def insert(self, conn: Connection, events: list[OutboxRow]) -> None:
        """Queues events in the order given (their outbox ids, hence the publishing order, follow it)."""
        await conn.execute(
            f"INSERT INTO {self.table} (msg_id, subject, payload, traceparent)"
            " SELECT msg_id, subject, payload, traceparent"
            " FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[]) WITH ORDINALITY"
            "  AS e (msg_id, subject, payload, traceparent, position)"
            " ORDER BY position",
            [event.msg_id for event in events],
            [event.subject for event in events],
            [event.payload for event in events],
            [event.traceparent for event in events],
        )

    async def try_lock_relay(self, conn: Connection) -> bool:
        """Whether this transaction is now the only relay (the lock ends with the transaction)."""
        return bool(await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", self.lock_key))

    async def lock_batch(self, conn: Connection, limit: int) -> list[OutboxEvent]:
        """The oldest unpublished events that no other relay holds."""
        rows = await conn.fetch(
            f"SELECT outbox_id, msg_id, subject, payload, traceparent FROM {self.table}"
            " ORDER BY outbox_id LIMIT $1 FOR UPDATE SKIP LOCKED",
            limit,
        )
        return [
            OutboxEvent(row["outbox_id"], row["msg_id"], row["subject"], bytes(row["payload"]), row["traceparent"])
            for row in rows
        ]

    async def delete(self, conn: Connection, outbox_ids: list[int]) -> None:
        await conn.execute(f"DELETE FROM {self.table} WHERE outbox_id = ANY($1::bigint[])", outbox_ids)

    async def backlog(self, pool: asyncpg.Pool) -> OutboxBacklog:
        """Events not yet published, and how long the oldest has waited (for the metrics; the outbox stays small
        while the relay keeps up, so the count is cheap)."""
        row = await pool.fetchrow(
            "SELECT count(*) AS events, coalesce(extract(epoch FROM now() - min(created_at)), 0) AS oldest"
            f" FROM {self.table}"
        )
        assert row is not None
        return OutboxBacklog(row["events"], float(row["oldest"]))


log = structlog.get_logger()

PUBLISH_TIMEOUT_SECONDS = 5.0
# After a NATS failure, wait at least this long before trying again, however often new events wake the relay.
FAILURE_BACKOFF_SECONDS = 2.0

PUBLISHED = Counter("coinstream_outbox_published_total", "Outbox events JetStream acknowledged")
# Polled (measure_backlog): events waiting in the outbox, and how long the oldest has waited. Every replica reports
# the same table: aggregate with max().
BACKLOG = Gauge("coinstream_outbox_backlog", "Events in the outbox not yet published")
OLDEST_AGE = Gauge("coinstream_outbox_oldest_event_age_seconds", "Age of the oldest unpublished outbox event")


class OutboxRelay:
    def __init__(
        self,
        pool: asyncpg.Pool,
        js: JetStreamContext,
        outbox: Outbox,
        interval_seconds: float,
        closing_subjects: frozenset[str] = frozenset(),
    ) -> None:
        self._pool = pool
        self._js = js
        self._outbox = outbox
        self._interval_seconds = interval_seconds
        self._closing_subjects = closing_subjects
        self._wakeup = asyncio.Event()

    def wake(self) -> None:
        self._wakeup.set()

    async def run_forever(self) -> None:
        while True:
            # Cleared before reading the outbox, so an event queued meanwhile still wakes the next round.
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
            if not await self._outbox.try_lock_relay(conn):
                return 0, False  # another replica is relaying; it also picks up our events on its next round
            events = await self._outbox.lock_batch(conn, BATCH_SIZE)
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
                crash_point(f"{self._outbox.service}.after_events_published")
                await self._outbox.delete(conn, [event.outbox_id for event in events[:acknowledged]])
        return acknowledged, acknowledged < len(events)

    async def _publish_in_order(self, events: list[OutboxEvent], traced: tracing.Publishing) -> int:
        """Runs of events go out with every acknowledgement in flight; a closing event (gifts' StreamEnded or
        MatchFinished) waits until everything before it is acknowledged and goes alone. A failure inside a run may
        let later events of the run be stored before a republished earlier one, but never a stream's end before its
        gifts (live feeds end with it), nor a match's result before its last score update."""
        acknowledged = 0
        for run in runs_ending_at_closing_events(events, self._closing_subjects):
            done = await self._publish(run, traced)
            acknowledged += done
            if done < len(run):
                break
        return acknowledged

    async def _publish(self, events: list[OutboxEvent], traced: tracing.Publishing) -> int:
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
            log.warning("outbox_publish_failed", events=len(events), sent=len(pending), error=repr(error))
        acknowledged = 0
        for event, future in zip(events, pending, strict=False):
            if not future.done() or future.cancelled() or future.exception() is not None:
                log.warning("outbox_event_publish_failed", msg_id=event.msg_id, error=_failure(future))
                break
            if future.result().duplicate:
                log.info("outbox_event_already_published", msg_id=event.msg_id, seq=future.result().seq)
            acknowledged += 1
        return acknowledged


def _failure(future: asyncio.Future[PubAck]) -> str:
    if not future.done() or future.cancelled():
        return "no acknowledgement in time"
    return repr(future.exception())


def runs_ending_at_closing_events(
    events: list[OutboxEvent], closing_subjects: frozenset[str]
) -> list[list[OutboxEvent]]:
    """The events cut into runs: ordinary events, and each closing event as a run of its own."""
    runs: list[list[OutboxEvent]] = [[]]
    for event in events:
        if event.subject in closing_subjects:
            runs += [[event], []]
        else:
            runs[-1].append(event)
    return [run for run in runs if run]


async def measure_backlog(pool: asyncpg.Pool, outbox: Outbox) -> None:
    """Sets the outbox gauges (a probe of the metrics poller)."""
    backlog = await outbox.backlog(pool)
    BACKLOG.set(backlog.events)
    OLDEST_AGE.set(backlog.oldest_age_seconds)
