"""The catch-up pass over Stripe's events list, shared by the wallet (web purchases) and payouts (Stripe Connect):
Stripe retries a webhook for 3 days, then gives up on it, so each service also lists the recent events of the types
it acts on (GET /v1/events) and applies each exactly as its webhook endpoint would. The effect is deduplicated by
the event id in the transaction that applies it, so an event both pushed and listed takes effect once.

Events read from Stripe's API, with our secret key, over TLS, are authentic as they are: no webhook signature
exists for them (Stripe signs only what it pushes), and none is needed for what we fetched from Stripe ourselves.

Stripe lists newest first; a sweep walks back (starting_after the last event seen) to its start time: the last
window_seconds the first time after start-up (Stripe keeps events 30 days), afterwards where the previous sweep
began, less an overlap for events Stripe makes visible late. A pass reads at most pages_per_pass pages; a longer
sweep goes on at once in the next pass ("more due"). A failed call ends the pass: the next interval starts the sweep
again. Every replica sweeps: each event takes effect once, whoever applies it first."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import stripe
import structlog
from stripe.params import EventListParams

log = structlog.get_logger()

PAGE_SIZE = 100  # Stripe's largest page
OVERLAP_SECONDS = 300
MAX_WINDOW_SECONDS = 30 * 24 * 3600  # Stripe keeps events 30 days

# An event's effect (the webhook endpoint's): its outcome, for the log. UnreadableEvent for one it cannot read.
ApplyEvent = Callable[[Mapping[str, Any]], Awaitable[str]]


class UnreadableEvent(ValueError):
    """An event of a type acted on, without the fields it must have: the webhook answers 400, the pass skips it."""


def sweep_since(*, now: int, window_seconds: int, previous_start: int | None, overlap_seconds: int) -> int:
    """Where a sweep starting now goes back to (Unix seconds): the window after start-up, or the previous sweep's
    start less the overlap, never further back than the window."""
    oldest = now - window_seconds
    if previous_start is None:
        return oldest
    return max(oldest, previous_start - overlap_seconds)


def list_params(types: Sequence[str], since: int, cursor: str | None) -> EventListParams:
    """GET /v1/events' parameters for one page of a sweep."""
    params: EventListParams = {"types": list(types), "created": {"gte": since}, "limit": PAGE_SIZE}
    if cursor is not None:
        params["starting_after"] = cursor
    return params


class StripeEventsPass:
    def __init__(
        self,
        client: stripe.StripeClient,
        types: Sequence[str],
        apply: ApplyEvent,
        *,
        window_seconds: int,
        pages_per_pass: int,
        name: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        assert 0 < window_seconds <= MAX_WINDOW_SECONDS and pages_per_pass > 0 and 0 < len(types) <= 20
        self._events = client.v1.events
        self._types, self._apply, self._name, self._clock = tuple(types), apply, name, clock
        self._window, self._pages_per_pass = window_seconds, pages_per_pass
        self._previous_start: int | None = None  # the in-memory watermark: the last finished sweep's start
        self._sweep_start = 0
        self._since = 0
        self._cursor: str | None = None  # the last event of the sweep read so far (None: a new sweep)

    async def __call__(self) -> bool:
        """One pass: True when the sweep has more pages, to read at once."""
        if self._cursor is None:
            self._start_sweep()
        for _ in range(self._pages_per_pass):
            page = await self._next_page()
            if page is None:
                return False
            for event in page.data:
                await self._apply_one(event.to_dict())
            if not page.has_more or not page.data:
                self._previous_start, self._cursor = self._sweep_start, None  # the sweep is done: the watermark moves
                return False
            self._cursor = page.data[-1].id
        return True

    async def _next_page(self) -> stripe.ListObject[stripe.Event] | None:
        """The sweep's next page; None when Stripe could not be asked (the sweep starts again next interval)."""
        try:
            return await self._events.list_async(list_params(self._types, self._since, self._cursor))
        except stripe.StripeError as error:
            # Its class and status only: Stripe's message may quote a request's parameters.
            log.warning(
                "stripe_events_list_failed", rail=self._name, error=type(error).__name__, http_status=error.http_status
            )
            self._cursor = None
            return None

    def _start_sweep(self) -> None:
        self._sweep_start = int(self._clock())
        self._since = sweep_since(
            now=self._sweep_start,
            window_seconds=self._window,
            previous_start=self._previous_start,
            overlap_seconds=OVERLAP_SECONDS,
        )

    async def _apply_one(self, event: Mapping[str, Any]) -> None:
        try:
            outcome = await self._apply(event)
        except UnreadableEvent as error:
            # Skipped, not retried: the same event would stop every sweep. Stripe's webhook got a 400 for it too.
            log.warning("stripe_event_unreadable", rail=self._name, event_id=event.get("id"), error=str(error))
            return
        if outcome != "duplicate":
            log.info(
                "stripe_event_caught_up",
                rail=self._name,
                event_id=event.get("id"),
                kind=event.get("type"),
                outcome=outcome,
            )
