"""In-memory fakes of the gifts service's ports (services/gifts/ports.py): the store, the wallet, the live feed and a
clock, for unit tests of the use cases without servers.

FakeGiftStore keeps PostgreSQL's observable results, not its SQL: a transaction works on a copy of the tables that
replaces them on a clean exit and is dropped on an exception (transactions take turns, so there are no races to
lock against); run_once keeps outcomes under the commands' keys (a result as its reply's message bytes, a final
error with the operation's writes dropped); and the constraints the rules rely on are checked on every write (one
live stream per creator, one open goal per stream, a gift's status and payment agree, unique request_ids, wallet
transactions and event ids). The clock is FakeClock's — the database's clock_timestamp() — so a test can move time
across a combo window, a match's end or the recovery age."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from coinstream.events.v1 import events_pb2
from coinstream.gifts.v1 import gifts_pb2

from services.gifts.domain import (
    CatalogGift,
    ComboKey,
    ComboState,
    CompletionLocks,
    GiftContext,
    GiftStatus,
    LeaderboardIncrement,
    LeaderboardPeriod,
    LiveStream,
    Match,
    MatchSide,
    MatchStatus,
    MatchSupporter,
    OutboxRow,
    SentGift,
    Spend,
    SpendAsk,
    StreamGoal,
    StreamStatus,
    TargetKind,
    Totals,
    Video,
    WalletAccount,
)
from services.gifts.ports import Operation, Result
from services.runtime.errors import AppError, failed_precondition, not_found, request_id_reused, unavailable
from services.runtime.ids import new_id
from services.runtime.messaging import GIFT_SENT_BATCH_SUBJECT, GIFT_SENT_SUBJECT
from services.runtime.requests import Outcome, Reply, RequestKey, StoredRequest, replayed

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


class FakeClock:
    """The database's clock (and the service's): still unless a test moves it."""

    def __init__(self, start: datetime = T0) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)


# ---------------------------------------------------------------- the tables


@dataclass
class _Stream:
    stream: LiveStream  # match_id: the last match the stream joined (active or not)
    ended_at: datetime | None = None


@dataclass
class _Key:
    method: str
    hashed: bytes
    resource_id: str | None = None
    response: bytes | None = None
    error: AppError | None = None

    def __deepcopy__(self, memo: dict[int, object]) -> _Key:
        return dataclasses.replace(self)  # every field is immutable (an AppError is never changed once raised)

    def stored(self) -> StoredRequest:
        return StoredRequest(self.resource_id, self.response, self.error)


@dataclass
class _Goal:
    goal: StreamGoal
    closed: bool = False


@dataclass
class Tables:
    """The gifts database's rows, by primary key."""

    catalog: dict[str, tuple[CatalogGift, bool]] = field(default_factory=dict)  # gift_id → (gift, active)
    streams: dict[str, _Stream] = field(default_factory=dict)
    videos: dict[str, Video] = field(default_factory=dict)
    totals: dict[tuple[TargetKind, str], Totals] = field(default_factory=dict)
    gifters: dict[tuple[TargetKind, str, str], int] = field(default_factory=dict)  # (kind, target, sender) → coins
    gifts: dict[str, SentGift] = field(default_factory=dict)
    gift_created_at: dict[str, datetime] = field(default_factory=dict)
    keys: dict[str, _Key] = field(default_factory=dict)
    combos: dict[ComboKey, ComboState] = field(default_factory=dict)
    gifter_totals: dict[tuple[str, LeaderboardPeriod, date, str], int] = field(default_factory=dict)
    matches: dict[str, Match] = field(default_factory=dict)
    supporters: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (match, stream, sender) → coins
    goals: dict[str, _Goal] = field(default_factory=dict)
    outbox: list[OutboxRow] = field(default_factory=list)

    def check(self) -> None:
        """The constraints of the migrations that the use cases rely on."""
        live = [s.stream.creator_id for s in self.streams.values() if s.stream.status is StreamStatus.LIVE]
        assert len(live) == len(set(live)), "live_streams_one_live_per_creator"
        open_goals = [g.goal.stream_id for g in self.goals.values() if not g.closed]
        assert len(open_goals) == len(set(open_goals)), "one open goal per stream"
        request_ids = [gift.request_id for gift in self.gifts.values()]
        assert len(request_ids) == len(set(request_ids)), "gift_transactions.request_id UNIQUE"
        wallet_ids = [g.wallet_transaction_id for g in self.gifts.values() if g.wallet_transaction_id is not None]
        assert len(wallet_ids) == len(set(wallet_ids)), "gift_transactions.wallet_transaction_id UNIQUE"
        for gift in self.gifts.values():
            _check_gift(gift)
        msg_ids = [row.msg_id for row in self.outbox]
        assert len(msg_ids) == len(set(msg_ids)), "gift_outbox_msg_id_unique"
        gift_events = [row.gift_transaction_id for row in self.outbox if row.gift_transaction_id is not None]
        assert len(gift_events) == len(set(gift_events)), "gift_outbox.gift_transaction_id UNIQUE"
        assert all(t.total_coins >= 0 and t.gift_count >= 0 for t in self.totals.values())


def _check_gift(gift: SentGift) -> None:
    where = gift.gift_transaction_id
    assert gift.coins == gift.coin_price * gift.quantity > 0, f"{where}: coins = coin_price * quantity"
    assert gift.sender_id != gift.recipient_id, f"{where}: sender_id <> recipient_id"
    assert (gift.stream_id is None) != (gift.video_id is None), f"{where}: one target"
    completed = gift.status is GiftStatus.COMPLETED
    assert completed == (gift.wallet_transaction_id is not None and gift.sender_balance_coins is not None), where
    assert completed == (gift.combo_count > 0), f"{where}: combo_count when completed"
    assert (gift.status is GiftStatus.FAILED) == (gift.failure_reason is not None), f"{where}: failure_reason"
    assert gift.sender_balance_coins is None or gift.sender_balance_coins >= 0, f"{where}: balance >= 0"
    assert gift.paid_coins + gift.bonus_coins in (0, gift.coins), f"{where}: split within coins"


# ---------------------------------------------------------------- reads and transactions


class FakeReads:
    def __init__(self, tables: Tables, clock: FakeClock) -> None:
        self._t = tables
        self._clock = clock

    def _live_view(self, row: _Stream) -> LiveStream:
        """The stream as store.STREAM_COLUMNS reads it: its match only while that match is active."""
        match = self._t.matches.get(row.stream.match_id or "")
        active = match is not None and match.status is MatchStatus.ACTIVE
        return dataclasses.replace(row.stream, match_id=row.stream.match_id if active else None)

    async def get_stream(self, stream_id: str) -> LiveStream | None:
        row = self._t.streams.get(stream_id)
        return None if row is None else self._live_view(row)

    async def get_video(self, video_id: str) -> Video | None:
        return self._t.videos.get(video_id)

    async def get_totals(self, kind: TargetKind, target_id: str) -> Totals | None:
        return self._t.totals.get((kind, target_id))

    async def top_gifters(self, kind: TargetKind, target_id: str, limit: int) -> list[tuple[str, int]]:
        rows = [(s, c) for (k, t, s), c in self._t.gifters.items() if (k, t) == (kind, target_id)]
        return sorted(rows, key=lambda row: (-row[1], row[0]))[:limit]

    async def get_goal(self, goal_id: str) -> StreamGoal | None:
        row = self._t.goals.get(goal_id)
        return None if row is None else row.goal

    async def get_match(self, match_id: str) -> Match | None:
        return self._t.matches.get(match_id)

    async def top_match_supporters(self, match_id: str, per_side: int) -> list[MatchSupporter]:
        match = self._t.matches.get(match_id)
        if match is None:
            return []
        ranked: list[MatchSupporter] = []
        for side in match.sides:
            rows = [(s, c) for (m, st, s), c in self._t.supporters.items() if (m, st) == (match_id, side.stream_id)]
            for sender_id, coins in sorted(rows, key=lambda row: (-row[1], row[0]))[:per_side]:
                ranked.append(MatchSupporter(side.stream_id, sender_id, coins))
        return ranked


class FakeTransaction(FakeReads):
    # ---- catalog, streams, videos
    async def upsert_gift(self, gift: CatalogGift) -> CatalogGift:
        self._t.catalog[gift.gift_id] = (gift, True)
        return gift

    async def retire_gift(self, gift_id: str) -> CatalogGift | None:
        if gift_id not in self._t.catalog:
            return None
        gift, _ = self._t.catalog[gift_id]
        self._t.catalog[gift_id] = (gift, False)
        return gift

    async def start_stream(self, stream_id: str, creator_id: str, title: str) -> LiveStream | None:
        live = [s for s in self._t.streams.values() if s.stream.creator_id == creator_id]
        if any(s.stream.status is StreamStatus.LIVE for s in live):
            return None
        stream = LiveStream(stream_id, creator_id, title, StreamStatus.LIVE)
        self._t.streams[stream_id] = _Stream(stream)
        self._t.totals[(TargetKind.STREAM, stream_id)] = Totals(0, 0)
        return stream

    async def lock_stream(self, stream_id: str) -> LiveStream | None:
        return await self.get_stream(stream_id)

    async def lock_streams(self, stream_ids: list[str]) -> dict[str, LiveStream]:
        return {sid: self._live_view(self._t.streams[sid]) for sid in sorted(set(stream_ids)) if sid in self._t.streams}

    async def end_stream(self, stream_id: str) -> tuple[LiveStream, datetime]:
        row = self._t.streams[stream_id]
        assert row.stream.status is StreamStatus.LIVE, f"stream {stream_id} was not live (lock it first)"
        row.stream = dataclasses.replace(row.stream, status=StreamStatus.ENDED)
        row.ended_at = self._clock.now()
        return self._live_view(row), row.ended_at

    async def upsert_video(self, video: Video) -> Video | None:
        existing = self._t.videos.get(video.video_id)
        if existing is not None and existing.creator_id != video.creator_id:
            return None
        self._t.videos[video.video_id] = video
        self._t.totals.setdefault((TargetKind.VIDEO, video.video_id), Totals(0, 0))
        return video

    # ---- matches and goals
    async def create_match(self, match_id: str, sides: list[LiveStream], duration: timedelta) -> Match:
        now = self._clock.now()
        match = Match(
            match_id,
            tuple(MatchSide(s.stream_id, s.creator_id, 0) for s in sides),
            MatchStatus.ACTIVE,
            now,
            now + duration,
        )
        self._t.matches[match_id] = match
        for side in sides:
            row = self._t.streams[side.stream_id]
            row.stream = dataclasses.replace(row.stream, match_id=match_id)
        return match

    async def lock_due_match(self) -> Match | None:
        due = [m for m in self._t.matches.values() if m.status is MatchStatus.ACTIVE and m.ends_at <= self._clock.now()]
        return min(due, key=lambda m: (m.ends_at, m.match_id), default=None)

    async def finish_match(self, match_id: str, winner_stream_ids: list[str]) -> datetime:
        match = self._t.matches[match_id]
        assert match.status is MatchStatus.ACTIVE, f"match {match_id} was not active (lock it first)"
        finished_at = self._clock.now()
        self._t.matches[match_id] = dataclasses.replace(
            match, status=MatchStatus.FINISHED, winner_stream_ids=tuple(winner_stream_ids), finished_at=finished_at
        )
        return finished_at

    async def replace_goal(self, goal_id: str, stream: LiveStream, target_coins: int, description: str) -> StreamGoal:
        for row in self._t.goals.values():
            if row.goal.stream_id == stream.stream_id:
                row.closed = True
        goal = StreamGoal(goal_id, stream.stream_id, stream.creator_id, target_coins, 0, description, self._clock.now())
        self._t.goals[goal_id] = _Goal(goal)
        row = self._t.streams[stream.stream_id]
        row.stream = dataclasses.replace(row.stream, goal_id=goal_id)
        return goal

    # ---- completing a batch of gifts
    async def lock_pending_gifts(self, gift_transaction_ids: list[str], stream_ids: list[str]) -> CompletionLocks:
        pending = {g for g in gift_transaction_ids if self._t.gifts[g].status is GiftStatus.PENDING}
        streams = [self._t.streams[s].stream for s in set(stream_ids) if s in self._t.streams]
        last_matches = {s.stream_id: s.match_id for s in streams if s.match_id is not None}
        goals = {s.stream_id: s.goal_id for s in streams if s.goal_id is not None}
        return CompletionLocks(pending, last_matches, goals)

    async def lock_active_matches(self, match_ids: list[str]) -> set[str]:
        return {m for m in match_ids if m in self._t.matches and self._t.matches[m].status is MatchStatus.ACTIVE}

    async def lock_combos(self, keys: list[ComboKey]) -> tuple[dict[ComboKey, ComboState], datetime]:
        assert keys, "lock_combos() needs keys"
        for key in keys:
            self._t.combos.setdefault(key, ComboState(None, 0))
        return {key: self._t.combos[key] for key in keys}, self._clock.now()

    async def finish_gifts(
        self,
        completed: list[SentGift],
        finished_at: datetime,
        combos: dict[ComboKey, ComboState],
        failures: list[tuple[str, str]],
        outcomes: list[Outcome],
    ) -> None:
        for gift in completed:
            assert gift.status is GiftStatus.COMPLETED, "finish_gifts() takes completed gifts"
            assert self._t.gifts[gift.gift_transaction_id].status is GiftStatus.PENDING, "gifts not pending"
            self._t.gifts[gift.gift_transaction_id] = gift
        self._t.combos.update(combos)
        for gift_transaction_id, reason in failures:
            pending = self._t.gifts[gift_transaction_id]
            assert pending.status is GiftStatus.PENDING, "gifts not pending"
            self._t.gifts[gift_transaction_id] = dataclasses.replace(
                pending, status=GiftStatus.FAILED, failure_reason=reason
            )
        for outcome in outcomes:
            _record(self._t.keys[outcome.request_id], outcome)

    async def add_to_gifter_totals(self, increments: list[LeaderboardIncrement]) -> None:
        for i in increments:
            key = (i.creator_id, i.period, i.period_start, i.sender_id)
            self._t.gifter_totals[key] = self._t.gifter_totals.get(key, 0) + i.coins

    async def add_to_counters(
        self, kind: TargetKind, gifters: list[tuple[str, str, int]], totals: list[tuple[str, int, int]]
    ) -> None:
        for target, sender_id, coins in gifters:
            self._t.gifters[(kind, target, sender_id)] = self._t.gifters.get((kind, target, sender_id), 0) + coins
        for target, coins, count in totals:
            before = self._t.totals.get((kind, target), Totals(0, 0))
            self._t.totals[(kind, target)] = Totals(before.total_coins + coins, before.gift_count + count)

    async def add_to_match_scores(
        self,
        match_ids: list[str],
        stream_coins: list[tuple[str, int]],
        supporter_coins: list[tuple[str, str, int]],
        completed_at: datetime,
    ) -> list[Match]:
        """The SQL's window rule: a match counts gifts completed at starts_at <= t < ends_at while it is active."""
        coins = dict(stream_coins)
        counted: list[Match] = []
        for match_id in sorted(set(match_ids)):
            match = self._t.matches[match_id]
            if match.status is not MatchStatus.ACTIVE or not match.starts_at <= completed_at < match.ends_at:
                continue
            sides = tuple(
                dataclasses.replace(s, score_coins=s.score_coins + coins.get(s.stream_id, 0)) for s in match.sides
            )
            self._t.matches[match_id] = match = dataclasses.replace(match, sides=sides)
            in_match = {s.stream_id for s in sides}
            for stream_id, sender_id, added in supporter_coins:
                if stream_id in in_match:
                    key = (match_id, stream_id, sender_id)
                    self._t.supporters[key] = self._t.supporters.get(key, 0) + added
            counted.append(match)
        return counted

    async def add_to_goals(
        self, goal_coins: list[tuple[str, int]], completed_at: datetime
    ) -> list[tuple[StreamGoal, int]]:
        added: list[tuple[StreamGoal, int]] = []
        for goal_id, coins in goal_coins:
            row = self._t.goals[goal_id]
            if row.closed:
                continue
            progress = row.goal.progress_coins + coins
            reached = row.goal.reached_at or (completed_at if progress >= row.goal.target_coins else None)
            row.goal = dataclasses.replace(row.goal, progress_coins=progress, reached_at=reached)
            added.append((row.goal, coins))
        return added

    # ---- events
    async def insert_outbox_events(self, events: list[OutboxRow]) -> None:
        self._t.outbox.extend(events)


def _record(key: _Key, outcome: Outcome) -> None:
    """idempotency.record_statement on one key."""
    key.resource_id = outcome.resource_id or key.resource_id
    key.response = None if outcome.response is None else outcome.response.SerializeToString()
    key.error = outcome.error


# ---------------------------------------------------------------- the store


class FakeGiftStore(FakeReads):
    """ports.GiftStore in memory. `tables` is the committed state, for tests to look at (and seed)."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.tables = Tables()
        super().__init__(self.tables, self.clock)
        self._turn = asyncio.Lock()
        self.transactions = 0  # committed ones

    def _commit(self, tables: Tables) -> None:
        tables.check()
        self.tables = self._t = tables
        self.transactions += 1

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[FakeTransaction]:
        async with self._turn:
            working = copy.deepcopy(self.tables)
            yield FakeTransaction(working, self.clock)
            self._commit(working)

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[FakeReads]:
        yield FakeReads(copy.deepcopy(self.tables), self.clock)

    async def run_once(self, key: RequestKey, operation: Operation[Result], reply: Reply[Result]) -> Result:
        request_id = key.request_id
        async with self._turn:
            earlier = self.tables.keys.get(request_id)
            if earlier is not None:
                if earlier.hashed != key.fingerprint:
                    raise request_id_reused()
                return replayed(earlier.stored(), reply)
            keyed = copy.deepcopy(self.tables)
            kept = keyed.keys[request_id] = _Key(key.method, key.fingerprint)
            working = copy.deepcopy(keyed)
            try:
                result = await operation(FakeTransaction(working, self.clock))
            except AppError as error:
                if not error.is_outcome:
                    raise
                kept.error = error  # the operation's writes dropped, the refusal kept with the key
                self._commit(keyed)
                raise
            working.keys[request_id].response = reply.to_message(result).SerializeToString()
            self._commit(working)
        return result

    async def replay_if_completed(self, key: RequestKey, reply: Reply[Result]) -> Result | None:
        kept = self.tables.keys.get(key.request_id)
        if kept is None:
            return None
        if kept.hashed != key.fingerprint:
            raise request_id_reused()
        stored = kept.stored()
        return None if stored.in_flight else replayed(stored, reply)

    async def list_active_gifts(self) -> list[CatalogGift]:
        active = [gift for gift, is_active in self.tables.catalog.values() if is_active]
        return sorted(active, key=lambda gift: (gift.coin_price, gift.gift_id))

    async def top_gifters_to_creator(
        self, creator_id: str, period: LeaderboardPeriod, period_start: date, limit: int
    ) -> list[tuple[str, int]]:
        rows = [
            (s, c)
            for (cr, p, ps, s), c in self.tables.gifter_totals.items()
            if (cr, p, ps) == (creator_id, period, period_start)
        ]
        return sorted(rows, key=lambda row: (-row[1], row[0]))[:limit]

    async def read_gift_context(
        self, stream_ids: list[str], video_ids: list[str], gift_ids: list[str], request_ids: list[str]
    ) -> GiftContext:
        t = self.tables
        streams = {
            s: LiveStream(s, row.stream.creator_id, row.stream.title, row.stream.status)
            for s in stream_ids
            if (row := t.streams.get(s)) is not None
        }
        videos = {v: t.videos[v] for v in video_ids if v in t.videos}
        catalog = {g: t.catalog[g][0] for g in gift_ids if g in t.catalog and t.catalog[g][1]}
        without_key = {
            gift.request_id: gift
            for gift in t.gifts.values()
            if gift.request_id in request_ids and gift.request_id not in t.keys
        }
        return GiftContext(streams, videos, catalog, without_key)

    async def claim_and_record_pending_gifts(
        self, claims: list[RequestKey], decided: list[Outcome], gifts: list[SentGift]
    ) -> set[str]:
        assert len({claim.request_id for claim in claims}) == len(claims), "a batch must not hold a request_id twice"
        async with self._turn:
            tables = copy.deepcopy(self.tables)
            outcomes = {outcome.request_id: outcome for outcome in decided}
            claimed = set()
            for claim in sorted(claims, key=lambda claim: claim.request_id):
                if claim.request_id in tables.keys:
                    continue
                key = tables.keys[claim.request_id] = _Key(claim.method, claim.fingerprint)
                _record(key, outcomes.get(claim.request_id, Outcome(claim.request_id)))
                claimed.add(claim.request_id)
            for gift in gifts:
                if gift.request_id in claimed:
                    assert gift.status is GiftStatus.PENDING
                    tables.gifts[gift.gift_transaction_id] = gift
                    tables.gift_created_at[gift.gift_transaction_id] = self.clock.now()
            self._commit(tables)
        return claimed

    async def earlier_outcomes(
        self, claims: list[RequestKey], claimed: set[str]
    ) -> dict[str, StoredRequest | AppError]:
        earlier: dict[str, StoredRequest | AppError] = {}
        for claim in claims:
            if claim.request_id in claimed:
                continue
            key = self.tables.keys.get(claim.request_id)
            earlier[claim.request_id] = (
                key.stored() if key is not None and key.hashed == claim.fingerprint else request_id_reused()
            )
        return earlier

    async def load_outcomes(self, request_ids: list[str]) -> dict[str, StoredRequest]:
        return {request_id: self.tables.keys[request_id].stored() for request_id in request_ids}

    async def get_gift_transactions(self, gift_transaction_ids: list[str]) -> dict[str, SentGift]:
        return {g: self.tables.gifts[g] for g in gift_transaction_ids if g in self.tables.gifts}

    async def stale_pending_gifts(self, older_than_seconds: float, limit: int) -> list[str]:
        cutoff = self.clock.now() - timedelta(seconds=older_than_seconds)
        stale = [
            (created_at, g)
            for g, created_at in self.tables.gift_created_at.items()
            if self.tables.gifts[g].status is GiftStatus.PENDING and created_at < cutoff
        ]
        return [g for _, g in sorted(stale)[:limit]]

    # ---- for tests
    def forget_key(self, request_id: str) -> None:
        """The idempotency key expired (the cleanup deletes completed keys after the retention)."""
        del self.tables.keys[request_id]

    def events(self, subject: str) -> list[OutboxRow]:
        return [row for row in self.tables.outbox if row.subject == subject]

    def gifts_sent(self) -> list[events_pb2.GiftSent]:
        """Every GiftSent queued, on its own or in a GiftSentBatch, in outbox order."""
        sent: list[events_pb2.GiftSent] = []
        for row in self.tables.outbox:
            if row.subject == GIFT_SENT_SUBJECT:
                sent.append(events_pb2.GiftSent.FromString(row.payload))
            elif row.subject == GIFT_SENT_BATCH_SUBJECT:
                sent += events_pb2.GiftSentBatch.FromString(row.payload).gifts
        return sent


# ---------------------------------------------------------------- the wallet


@dataclass
class FakeWallet:
    """ports.Wallet: balances per account, spends idempotent by request_id (a repeat answers the stored outcome),
    never a negative balance. `down` makes every call fail UNAVAILABLE before the wallet decides anything;
    `answers_lost` lets the wallet decide and then loses its answer (the caller cannot tell)."""

    balances: dict[str, int] = field(default_factory=dict)
    adult_verified: set[str] = field(default_factory=set)
    frozen: set[str] = field(default_factory=set)
    down: bool = False
    answers_lost: bool = False
    spends: dict[str, Spend | AppError] = field(default_factory=dict)  # by request_id
    debited: list[tuple[str, int]] = field(default_factory=list)  # (account_id, coins), in order
    calls: int = 0

    def open_account(self, account_id: str, coins: int = 0, *, adult_verified: bool = False) -> None:
        self.balances[account_id] = coins
        if adult_verified:
            self.adult_verified.add(account_id)

    async def get_account(self, account_id: str) -> WalletAccount | None:
        self._answer_or_fail()
        if account_id not in self.balances:
            return None
        return WalletAccount(account_id, account_id in self.adult_verified)

    async def spend_batch(self, asks: Sequence[SpendAsk]) -> list[Spend | AppError]:
        self.calls += 1
        self._answer_or_fail()
        outcomes = [self._spend(ask) for ask in asks]
        if self.answers_lost:
            raise _wallet_unavailable()
        return outcomes

    def _answer_or_fail(self) -> None:
        if self.down:
            raise _wallet_unavailable()

    def _spend(self, ask: SpendAsk) -> Spend | AppError:
        if ask.request_id not in self.spends:
            self.spends[ask.request_id] = self._decide(ask)
        return self.spends[ask.request_id]

    def _decide(self, ask: SpendAsk) -> Spend | AppError:
        balance = self.balances.get(ask.account_id)
        if balance is None:
            return not_found("ACCOUNT_NOT_FOUND", f"no account {ask.account_id!r}")
        if ask.account_id in self.frozen:
            return failed_precondition("ACCOUNT_FROZEN", "the account is frozen")
        if balance < ask.coins:
            return failed_precondition("INSUFFICIENT_COINS", f"{balance} coins, {ask.coins} asked")
        self.balances[ask.account_id] = balance - ask.coins
        self.debited.append((ask.account_id, ask.coins))
        return Spend(new_id("wtx"), balance - ask.coins, paid_coins=ask.coins, bonus_coins=0)

    def debits(self, account_id: str) -> list[int]:
        """The coins the wallet took from an account, one entry per debit."""
        return [coins for debited, coins in self.debited if debited == account_id]


def _wallet_unavailable() -> AppError:
    return unavailable("WALLET_UNAVAILABLE", "the wallet did not answer; retry with the same request_id")


# ---------------------------------------------------------------- the live feed


class FakeWatcher:
    def __init__(self) -> None:
        self.events: asyncio.Queue[gifts_pb2.WatchStreamGiftsResponse | None] = asyncio.Queue()

    async def next(self) -> gifts_pb2.WatchStreamGiftsResponse | None:
        return await self.events.get()


@dataclass
class FakeFeed:
    """ports.LiveFeed: watchers by stream; a test offers events (or None, the end) to them."""

    watchers: dict[str, list[FakeWatcher]] = field(default_factory=dict)
    subscribed: int = 0

    @contextmanager
    def watch(self, stream_id: str, caller: str | None = None, *, with_updates: bool = False) -> Iterator[FakeWatcher]:
        watcher = FakeWatcher()
        self.watchers.setdefault(stream_id, []).append(watcher)
        try:
            yield watcher
        finally:
            self.watchers[stream_id].remove(watcher)

    async def ensure_subscribed(self) -> None:
        self.subscribed += 1
