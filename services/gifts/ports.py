"""What the gifts use cases need from the world, as Protocols: the store as a unit of work (store.py is the
PostgreSQL implementation, tests/fakes/gifts.py an in-memory one), the wallet (wallet_client.py), and the live feed
(feed.py). The use cases (service.py, saga.py) depend on these alone.

The store's operations keep the shape of their SQL: each is one round trip (a statement, or a few for the
completion's locks), so the use cases decide the transactions and the number of round trips stays visible here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from datetime import date, datetime, timedelta
from typing import Protocol, TypeVar

from coinstream.gifts.v1 import gifts_pb2

from services.gifts.domain import (
    CatalogGift,
    ComboKey,
    ComboState,
    CompletionLocks,
    GiftContext,
    LeaderboardIncrement,
    LeaderboardPeriod,
    LiveStream,
    Match,
    MatchSupporter,
    OutboxRow,
    SentGift,
    Spend,
    SpendAsk,
    StreamGoal,
    TargetKind,
    Totals,
    Video,
    WalletAccount,
)
from services.runtime.errors import AppError
from services.runtime.requests import Outcome, Reply, RequestKey, StoredRequest

Result = TypeVar("Result")

# What a gift feed's watcher yields: the RPC's message itself, built once per event for every watcher (feed.py), so
# the use case passes it through as it is.
FeedEvent = gifts_pb2.WatchStreamGiftsResponse


class Reads(Protocol):
    """Read-only queries, each one statement: on the pool (GiftStore) or inside a snapshot or transaction."""

    async def get_stream(self, stream_id: str) -> LiveStream | None: ...

    async def get_video(self, video_id: str) -> Video | None: ...

    async def get_totals(self, kind: TargetKind, target_id: str) -> Totals | None: ...

    async def top_gifters(self, kind: TargetKind, target_id: str, limit: int) -> list[tuple[str, int]]: ...

    async def get_goal(self, goal_id: str) -> StreamGoal | None: ...

    async def get_match(self, match_id: str) -> Match | None: ...

    async def top_match_supporters(self, match_id: str, per_side: int) -> list[MatchSupporter]: ...


class Transaction(Reads, Protocol):
    """One database transaction: its writes are seen by others once it commits, and dropped if it raises. Row locks
    ("lock_…") are held until it ends; writers of several rows lock them in one order (see store.py)."""

    # ---- catalog, streams, videos
    async def upsert_gift(self, gift: CatalogGift) -> CatalogGift: ...

    async def retire_gift(self, gift_id: str) -> CatalogGift | None: ...

    async def start_stream(self, stream_id: str, creator_id: str, title: str) -> LiveStream | None: ...

    async def lock_stream(self, stream_id: str) -> LiveStream | None: ...

    async def lock_streams(self, stream_ids: list[str]) -> dict[str, LiveStream]: ...

    async def end_stream(self, stream_id: str) -> tuple[LiveStream, datetime]: ...

    async def upsert_video(self, video: Video) -> Video | None: ...

    # ---- matches and goals
    async def create_match(self, match_id: str, sides: list[LiveStream], duration: timedelta) -> Match: ...

    async def lock_due_match(self) -> Match | None: ...

    async def finish_match(self, match_id: str, winner_stream_ids: list[str]) -> datetime: ...

    async def replace_goal(
        self, goal_id: str, stream: LiveStream, target_coins: int, description: str
    ) -> StreamGoal: ...

    # ---- completing a batch of gifts (the saga's step 3)
    async def lock_pending_gifts(self, gift_transaction_ids: list[str], stream_ids: list[str]) -> CompletionLocks: ...

    async def lock_active_matches(self, match_ids: list[str]) -> set[str]: ...

    async def lock_combos(self, keys: list[ComboKey]) -> tuple[dict[ComboKey, ComboState], datetime]: ...

    async def finish_gifts(
        self,
        completed: list[SentGift],
        finished_at: datetime,
        combos: dict[ComboKey, ComboState],
        failures: list[tuple[str, str]],
        outcomes: list[Outcome],
    ) -> None: ...

    async def add_to_gifter_totals(self, increments: list[LeaderboardIncrement]) -> None: ...

    async def add_to_counters(
        self, kind: TargetKind, gifters: list[tuple[str, str, int]], totals: list[tuple[str, int, int]]
    ) -> None: ...

    async def add_to_match_scores(
        self,
        match_ids: list[str],
        stream_coins: list[tuple[str, int]],
        supporter_coins: list[tuple[str, str, int]],
        completed_at: datetime,
    ) -> list[Match]: ...

    async def add_to_goals(
        self, goal_coins: list[tuple[str, int]], completed_at: datetime
    ) -> list[tuple[StreamGoal, int]]: ...

    # ---- events
    async def insert_outbox_events(self, events: list[OutboxRow]) -> None: ...


# A use case's work inside one transaction, for GiftStore.run_once.
Operation = Callable[[Transaction], Awaitable[Result]]


class GiftStore(Reads, Protocol):
    """The gifts database. Its own methods run outside any transaction (each one statement, atomic by itself)."""

    def transaction(self) -> AbstractAsyncContextManager[Transaction]: ...

    def snapshot(self) -> AbstractAsyncContextManager[Reads]:
        """A read-only snapshot (repeatable read): reads that must agree with each other."""
        ...

    async def run_once(self, key: RequestKey, operation: Operation[Result], reply: Reply[Result]) -> Result:
        """Runs a one-transaction mutation at most once per key and keeps its outcome with it: the result (as its
        reply's message), or a final error (AppError.is_outcome, the operation's writes dropped). A repeat with the
        same key answers the kept outcome; with the same request_id but another request, REQUEST_ID_REUSED."""
        ...

    async def replay_if_completed(self, key: RequestKey, reply: Reply[Result]) -> Result | None:
        """The kept outcome of a completed request (raised if an error), or None: for a use case that must ask
        another service before its transaction, since a replay needs no answer from it."""
        ...

    async def list_active_gifts(self) -> list[CatalogGift]: ...

    async def top_gifters_to_creator(
        self, creator_id: str, period: LeaderboardPeriod, period_start: date, limit: int
    ) -> list[tuple[str, int]]: ...

    # ---- the gift saga outside its completing transaction (steps 1 and 2, recovery)
    async def read_gift_context(
        self, stream_ids: list[str], video_ids: list[str], gift_ids: list[str], request_ids: list[str]
    ) -> GiftContext: ...

    async def claim_and_record_pending_gifts(
        self, claims: list[RequestKey], decided: list[Outcome], gifts: list[SentGift]
    ) -> set[str]:
        """One atomic statement: claims every request_id (a refusal stored with its key, an accepted request with
        its gift as the key's resource) and records the gifts of the requests that got their key as pending.
        Returns those request_ids."""
        ...

    async def earlier_outcomes(
        self, claims: list[RequestKey], claimed: set[str]
    ) -> dict[str, StoredRequest | AppError]: ...

    async def load_outcomes(self, request_ids: list[str]) -> dict[str, StoredRequest]: ...

    async def get_gift_transactions(self, gift_transaction_ids: list[str]) -> dict[str, SentGift]: ...

    async def stale_pending_gifts(self, older_than_seconds: float, limit: int) -> list[str]: ...


class Wallet(Protocol):
    """The wallet service, as the gifts service uses it."""

    async def get_account(self, account_id: str) -> WalletAccount | None:
        """None when the wallet has no such account; raises UNAVAILABLE when it cannot tell."""
        ...

    async def spend_batch(self, asks: Sequence[SpendAsk]) -> list[Spend | AppError]:
        """One call for many spends, each answered with a Spend or the wallet's refusal (final or not:
        domain.is_final_wallet_refusal). Raises UNAVAILABLE when the outcome of the whole batch is unknown."""
        ...


class Watcher(Protocol):
    async def next(self) -> FeedEvent | None: ...


class LiveFeed(Protocol):
    """The live gift feed (feed.GiftFeed)."""

    def watch(
        self, stream_id: str, caller: str | None = None, *, with_updates: bool = False
    ) -> AbstractContextManager[Watcher]: ...

    async def ensure_subscribed(self) -> None: ...
