"""The live gift feed: one core-NATS subscription per process fans GiftSent and StreamEnded — and the updates of
matches and goals — out to the watchers of each stream, in the order the relay published them. The subscription
exists while the process has watchers (and a minute after the last one left), so a process nobody watches through
receives no events.

Core NATS, not a JetStream consumer: JetStream publishes reach core subscribers too, and a consumer would hold
messages in the interest-retention GIFTS stream. One subscription for both subjects keeps their order (nats-py
runs each subscription's callbacks in its own task, so two subscriptions could deliver a StreamEnded before the
GiftSent published just before it).

The hub never awaits a watcher: each watcher has its own bounded buffer, and one that falls behind by a whole
buffer is ended (RESOURCE_EXHAUSTED, RATE_LIMITED) instead of holding memory or slowing gifting and other watchers.
A relay that republishes after a crash makes JetStream drop the repeat, but core subscribers see it again, so the
hub drops event ids (gift ids, update ids) it already routed to a stream."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum

import nats.errors
import structlog
from coinstream.events.v1 import events_pb2
from coinstream.gifts.v1 import gifts_pb2
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services.gifts import domain, events
from services.runtime import messaging

log = structlog.get_logger()

# Gift ids remembered per watched stream to drop republished events (a relay republishes at most a batch of 200).
DEDUP_IDS_PER_STREAM = 1_000
# Messages NATS may buffer for our callback before it drops them (the callback never waits, so this is slack).
SUBSCRIPTION_PENDING_MESSAGES = 65_536
SUBSCRIPTION_PENDING_BYTES = 64 * 1024 * 1024
CONNECTION_CHECK_INTERVAL_SECONDS = 1.0
# The subscription is kept this long after the last watcher left, so a watcher coming and going does not make the
# server add and drop interest over and over.
IDLE_SUBSCRIPTION_SECONDS = 60.0
SUBSCRIBE_TIMEOUT_SECONDS = 5  # an int: nats-py declares flush(timeout: int)


def gift_event(sent: events_pb2.GiftSent) -> gifts_pb2.WatchStreamGiftsResponse:
    gift = gifts_pb2.GiftTransaction(
        gift_transaction_id=sent.gift_transaction_id,
        sender_id=sent.sender_id,
        recipient_id=sent.recipient_id,
        stream_id=sent.stream_id,
        gift_id=sent.gift_id,
        quantity=sent.quantity,
        coins=sent.coins,
        combo_count=sent.combo_count,
    )
    return gifts_pb2.WatchStreamGiftsResponse(event=gifts_pb2.GiftEvent(gift=gift, sent_at=sent.sent_at))


def match_event(update: events_pb2.MatchUpdated | events_pb2.MatchFinished) -> gifts_pb2.WatchStreamGiftsResponse:
    """A match's scoreboard as of an update, or its result."""
    finished = isinstance(update, events_pb2.MatchFinished)
    match = gifts_pb2.Match(
        match_id=update.match_id,
        sides=[
            gifts_pb2.MatchSide(stream_id=s.stream_id, creator_id=s.creator_id, score_coins=s.score_coins)
            for s in update.sides
        ],
        status=gifts_pb2.MATCH_STATUS_FINISHED if finished else gifts_pb2.MATCH_STATUS_ACTIVE,
        starts_at=update.starts_at,
        ends_at=update.ends_at,
        winner_stream_ids=update.winner_stream_ids if isinstance(update, events_pb2.MatchFinished) else [],
    )
    return gifts_pb2.WatchStreamGiftsResponse(match=match)


def goal_event(update: events_pb2.GoalUpdated) -> gifts_pb2.WatchStreamGiftsResponse:
    return gifts_pb2.WatchStreamGiftsResponse(goal=events.public_goal(update.goal))


class _State(Enum):
    OPEN = "open"
    ENDED = "ended"  # the stream ended: deliver what is buffered, then finish with OK
    TOO_SLOW = "too_slow"  # the buffer overflowed: finish with RATE_LIMITED at once
    INTERRUPTED = "interrupted"  # NATS was disconnected: deliver what is buffered, then finish with UNAVAILABLE


class Watcher:
    """One WatchStreamGifts call: a bounded buffer filled by the hub and drained by the call."""

    def __init__(self, stream_id: str, capacity: int, stuck_grace_seconds: float, with_updates: bool = False) -> None:
        self.stream_id = stream_id
        # Whether the call asked for match and goal updates too (gifts and the end always).
        self.with_updates = with_updates
        self._capacity = capacity
        self._stuck_grace_seconds = stuck_grace_seconds
        self._events: deque[gifts_pb2.WatchStreamGiftsResponse] = deque()
        self._state = _State.OPEN
        self._wakeup = asyncio.Event()
        self._task = asyncio.current_task()

    def offer(self, event: gifts_pb2.WatchStreamGiftsResponse) -> None:
        """Never waits: a full buffer ends the watcher instead."""
        if self._state is not _State.OPEN:
            return
        if len(self._events) >= self._capacity:
            self._state = _State.TOO_SLOW
            self._events.clear()
            self._wakeup.set()
            # A call stuck writing to a client that stopped reading never gets to see TOO_SLOW: cancel it.
            asyncio.get_running_loop().call_later(self._stuck_grace_seconds, self._cancel_if_running)
            log.info("gift_watcher_too_slow", stream_id=self.stream_id)
            return
        self._events.append(event)
        self._wakeup.set()

    def end(self) -> None:
        self._close(_State.ENDED)

    def interrupt(self) -> None:
        self._close(_State.INTERRUPTED)

    def _close(self, state: _State) -> None:
        if self._state is _State.OPEN:
            self._state = state
            self._wakeup.set()

    async def next(self) -> gifts_pb2.WatchStreamGiftsResponse | None:
        """The next event; None once the stream ended and everything before its end was delivered."""
        while True:
            if self._state is _State.TOO_SLOW:
                raise domain.watcher_too_slow()
            if self._events:
                return self._events.popleft()
            if self._state is _State.ENDED:
                return None
            if self._state is _State.INTERRUPTED:
                raise domain.feed_interrupted()
            self._wakeup.clear()
            await self._wakeup.wait()

    def _cancel_if_running(self) -> None:
        if self._task is not None and not self._task.done():
            log.info("gift_watcher_cancelled_while_stuck", stream_id=self.stream_id)
            self._task.cancel()


class _RecentIds:
    """The last `limit` ids seen, for dedup in constant memory."""

    def __init__(self, limit: int) -> None:
        self._order: deque[str] = deque()
        self._ids: set[str] = set()
        self._limit = limit

    def add(self, item: str) -> bool:
        """True when item is new."""
        if item in self._ids:
            return False
        self._ids.add(item)
        self._order.append(item)
        if len(self._order) > self._limit:
            self._ids.discard(self._order.popleft())
        return True


# Watchers one caller (a user token) may hold at once in a process; trusted backends are bounded by the process's.
DEFAULT_MAX_WATCHERS_PER_CALLER = 20


class GiftFeed:
    def __init__(
        self,
        max_watchers: int,
        watcher_queue_size: int,
        stuck_grace_seconds: float,
        max_watchers_per_caller: int = DEFAULT_MAX_WATCHERS_PER_CALLER,
    ) -> None:
        self._max_watchers = max_watchers
        # One caller (a user token) may not take the whole process's watchers: a viewer needs a few at most.
        self._max_watchers_per_caller = max_watchers_per_caller
        self._watchers_by_caller: Counter[str] = Counter()
        self._watcher_queue_size = watcher_queue_size
        self._stuck_grace_seconds = stuck_grace_seconds
        self._watchers: dict[str, set[Watcher]] = {}
        self._recent: dict[str, _RecentIds] = {}
        # Per watched stream: the coins of the last update delivered of each match (all sides) and goal. Both only
        # grow, so an update below it is an old one a relay published again after a newer one: it is dropped.
        self._progress: dict[str, dict[str, int]] = {}
        self._watcher_count = 0
        self._nats: NatsClient | None = None
        self._subscription: Subscription | None = None
        self._subscribing = asyncio.Lock()
        self._idle_since = time.monotonic()

    def use(self, nc: NatsClient) -> None:
        """The connection to subscribe on, once someone watches (until then the process receives no events: every
        gift of every stream would otherwise cost NATS and this process a delivery for nobody)."""
        self._nats = nc

    async def ensure_subscribed(self) -> None:
        """Returns once NATS has registered the subscription (a flush after it), so every event published from
        then on reaches the hub. nats-py renews the subscription after a reconnect."""
        assert self._nats is not None, "use() first"
        async with self._subscribing:
            try:
                if self._subscription is None:
                    self._subscription = await self._nats.subscribe(
                        messaging.GIFT_FEED_SUBJECTS,
                        cb=self._on_message,
                        pending_msgs_limit=SUBSCRIPTION_PENDING_MESSAGES,
                        pending_bytes_limit=SUBSCRIPTION_PENDING_BYTES,
                    )
                    log.info("gift_feed_subscribed")
                await self._nats.flush(timeout=SUBSCRIBE_TIMEOUT_SECONDS)
            except (nats.errors.Error, TimeoutError):
                raise domain.feed_interrupted() from None

    async def watch_connection(self) -> None:
        """Worker. Core NATS delivers nothing to a disconnected subscriber, so after a disconnection (another
        replica's relay may have published meanwhile) every watcher may have missed gifts: end them with UNAVAILABLE
        so they resubscribe, rather than let them show a feed with holes."""
        assert self._nats is not None, "subscribe() first"
        seen_reconnects = self._nats.stats["reconnects"]
        while True:
            await asyncio.sleep(CONNECTION_CHECK_INTERVAL_SECONDS)
            reconnects = self._nats.stats["reconnects"]
            if reconnects != seen_reconnects or not self._nats.is_connected:
                self.interrupt_all()
            seen_reconnects = reconnects
            await self._unsubscribe_when_idle()

    async def _unsubscribe_when_idle(self) -> None:
        async with self._subscribing:
            idle_for = time.monotonic() - self._idle_since
            if self._subscription is None or self._watcher_count or idle_for < IDLE_SUBSCRIPTION_SECONDS:
                return
            subscription, self._subscription = self._subscription, None
        try:
            await subscription.unsubscribe()
            log.info("gift_feed_unsubscribed", idle_seconds=round(idle_for))
        except nats.errors.Error as error:
            log.warning("gift_feed_unsubscribe_failed", error=repr(error))

    def interrupt_all(self) -> None:
        if self._watcher_count:
            log.warning("gift_feed_interrupted", watchers=self._watcher_count)
        for watchers in self._watchers.values():
            for watcher in watchers:
                watcher.interrupt()

    @property
    def watcher_count(self) -> int:
        return self._watcher_count

    @contextmanager
    def watch(self, stream_id: str, caller: str | None = None, *, with_updates: bool = False) -> Iterator[Watcher]:
        """Registers a watcher of stream_id for the duration of the block (RATE_LIMITED when the process is full,
        or when caller — None for a trusted backend — already has its share)."""
        if self._watcher_count >= self._max_watchers:
            raise domain.too_many_watchers()
        if caller is not None and self._watchers_by_caller[caller] >= self._max_watchers_per_caller:
            raise domain.too_many_watchers_for_caller(self._max_watchers_per_caller)
        if self._nats is not None and not self._nats.is_connected:
            raise domain.feed_interrupted()
        watcher = Watcher(stream_id, self._watcher_queue_size, self._stuck_grace_seconds, with_updates)
        self._watchers.setdefault(stream_id, set()).add(watcher)
        self._recent.setdefault(stream_id, _RecentIds(DEDUP_IDS_PER_STREAM))
        self._progress.setdefault(stream_id, {})
        self._watcher_count += 1
        if caller is not None:
            self._watchers_by_caller[caller] += 1
        try:
            yield watcher
        finally:
            self._watcher_count -= 1
            if caller is not None:
                self._watchers_by_caller[caller] -= 1
                if not self._watchers_by_caller[caller]:
                    del self._watchers_by_caller[caller]
            watchers = self._watchers[stream_id]
            watchers.discard(watcher)
            if not watchers:
                del self._watchers[stream_id]
                del self._recent[stream_id]
                del self._progress[stream_id]
            if not self._watcher_count:
                self._idle_since = time.monotonic()

    async def _on_message(self, msg: Msg) -> None:
        try:
            self.route(msg.subject, msg.data)
        except Exception:
            # One undecodable message must not stop the feed of every stream.
            log.exception("gift_feed_message_dropped", subject=msg.subject)

    def route(self, subject: str, payload: bytes) -> None:
        """Hands one published event to the watchers of its stream(s), without waiting for any of them."""
        if subject == messaging.GIFT_SENT_SUBJECT:
            self._deliver_gift(events_pb2.GiftSent.FromString(payload))
        elif subject == messaging.GIFT_SENT_BATCH_SUBJECT:
            for sent in events_pb2.GiftSentBatch.FromString(payload).gifts:
                self._deliver_gift(sent)
        elif subject == messaging.STREAM_ENDED_SUBJECT:
            self._end_stream(events_pb2.StreamEnded.FromString(payload).stream_id)
        elif subject == messaging.MATCH_UPDATED_SUBJECT:
            updated = events_pb2.MatchUpdated.FromString(payload)
            sides = [side.stream_id for side in updated.sides]
            total = sum(side.score_coins for side in updated.sides)
            self._deliver_update(sides, f"match_updated:{updated.update_id}", (updated.match_id, total), updated)
        elif subject == messaging.MATCH_FINISHED_SUBJECT:
            finished = events_pb2.MatchFinished.FromString(payload)
            sides = [side.stream_id for side in finished.sides]
            self._deliver_update(sides, f"match_finished:{finished.match_id}", None, finished)
        elif subject == messaging.GOAL_UPDATED_SUBJECT:
            goal = events_pb2.GoalUpdated.FromString(payload)
            progress = (goal.goal.goal_id, goal.goal.progress_coins)
            self._deliver_update([goal.goal.stream_id], f"goal_updated:{goal.update_id}", progress, goal)

    def _deliver_gift(self, sent: events_pb2.GiftSent) -> None:
        if sent.stream_id:  # video gifts have no live feed
            self._deliver([sent.stream_id], sent.gift_transaction_id, lambda: gift_event(sent))

    def _deliver(
        self,
        stream_ids: list[str],
        event_id: str,
        make_event: Callable[[], gifts_pb2.WatchStreamGiftsResponse],
        *,
        updates_only: bool = False,
    ) -> None:
        """Offers the event to the watchers of each stream once (event_id drops a republished event), made only
        when someone watches; updates_only: to the watchers that asked for match and goal updates."""
        event = None
        for stream_id in stream_ids:
            watchers = self._watchers.get(stream_id)
            if not watchers or not self._recent[stream_id].add(event_id):
                continue
            event = event or make_event()
            for watcher in list(watchers):
                if watcher.with_updates or not updates_only:
                    watcher.offer(event)

    def _deliver_update(
        self,
        stream_ids: list[str],
        event_id: str,
        progress: tuple[str, int] | None,
        update: events_pb2.MatchUpdated | events_pb2.MatchFinished | events_pb2.GoalUpdated,
    ) -> None:
        """A match or goal update; progress (its match or goal, and its coins) drops one older than what was shown."""
        if progress is not None:
            stream_ids = [stream_id for stream_id in stream_ids if self._is_newer(stream_id, *progress)]
        if isinstance(update, events_pb2.GoalUpdated):
            self._deliver(stream_ids, event_id, lambda: goal_event(update), updates_only=True)
        else:
            self._deliver(stream_ids, event_id, lambda: match_event(update), updates_only=True)

    def _is_newer(self, stream_id: str, key: str, coins: int) -> bool:
        shown = self._progress.get(stream_id)
        if shown is None:  # nobody watches the stream
            return False
        if coins < shown.get(key, 0):
            return False
        shown[key] = coins
        return True

    def _end_stream(self, stream_id: str) -> None:
        for watcher in list(self._watchers.get(stream_id, ())):
            watcher.end()
