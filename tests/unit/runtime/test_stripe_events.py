"""The catch-up pass over Stripe's events list: where a sweep goes back to, the list's parameters, and the pass with
Stripe's own StripeClient against the wallet's loopback Stripe (its GET /v1/events): the types asked for, the window,
pages bounded per pass, the watermark after a finished sweep, a failed call, an event it cannot read."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest_asyncio
import stripe

from services.runtime.stripe_events import (
    OVERLAP_SECONDS,
    PAGE_SIZE,
    StripeEventsPass,
    UnreadableEvent,
    list_params,
    sweep_since,
)
from tests.support.rails.stripe import FakeStripe

HOUR = 3600
TYPES = ("charge.refunded", "charge.dispute.created")


def test_the_first_sweep_goes_back_the_whole_window() -> None:
    assert sweep_since(now=100_000, window_seconds=72 * HOUR, previous_start=None, overlap_seconds=300) == (
        100_000 - 72 * HOUR
    )


def test_a_later_sweep_starts_where_the_previous_began_less_the_overlap() -> None:
    assert sweep_since(now=10**6, window_seconds=72 * HOUR, previous_start=10**6 - 900, overlap_seconds=300) == (
        10**6 - 1200
    )


def test_a_sweep_never_goes_back_further_than_the_window() -> None:
    assert sweep_since(now=10**6, window_seconds=HOUR, previous_start=10**6 - 5 * HOUR, overlap_seconds=300) == (
        10**6 - HOUR
    )


def test_list_params_name_the_types_the_window_and_the_cursor() -> None:
    assert list_params(TYPES, 1234, None) == {"types": list(TYPES), "created": {"gte": 1234}, "limit": PAGE_SIZE}
    assert list_params(TYPES, 1234, "evt_9")["starting_after"] == "evt_9"


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeStripe]:
    stripe_fake = FakeStripe()
    await stripe_fake.start()
    try:
        yield stripe_fake
    finally:
        await stripe_fake.stop()


class Applied:
    def __init__(self, unreadable: frozenset[str] = frozenset()) -> None:
        self.ids: list[str] = []
        self._unreadable = unreadable

    async def __call__(self, event: Mapping[str, Any]) -> str:
        if event["id"] in self._unreadable:
            raise UnreadableEvent("no payment_intent")
        assert isinstance(event["data"]["object"], dict)  # plain dicts, as the webhook's JSON
        self.ids.append(str(event["id"]))
        return "applied"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def client_of(fake: FakeStripe, key: str = "") -> stripe.StripeClient:
    return stripe.StripeClient(key or fake.secret_key, base_addresses={"api": fake.url}, max_network_retries=0)


def events_pass(fake: FakeStripe, applied: Applied, clock: Clock, pages: int = 10, key: str = "") -> StripeEventsPass:
    return StripeEventsPass(
        client_of(fake, key), TYPES, applied, window_seconds=72 * HOUR, pages_per_pass=pages, name="test", clock=clock
    )


def record(fake: FakeStripe, kind: str = "charge.refunded", created: int | None = None) -> str:
    event = fake.events.record(kind, {"id": "ch_x", "object": "charge"})
    if created is not None:
        event["created"] = created
    return str(event["id"])


async def test_a_sweep_applies_the_windows_events_of_its_types_newest_first(fake: FakeStripe) -> None:
    clock = Clock(time.time())
    too_old = record(fake, created=int(clock.now) - 73 * HOUR)
    wanted = [record(fake), record(fake, "charge.dispute.created"), record(fake)]
    record(fake, "customer.created")
    applied = Applied()

    assert await events_pass(fake, applied, clock)() is False

    assert applied.ids == wanted[::-1]
    assert too_old not in fake.events.listed


async def test_a_long_sweep_reads_its_pages_per_pass_and_goes_on_in_the_next(fake: FakeStripe) -> None:
    wanted = [record(fake) for _ in range(2 * PAGE_SIZE + 50)]
    applied = Applied()
    sweep = events_pass(fake, applied, Clock(time.time()), pages=2)

    assert await sweep() is True
    assert len(applied.ids) == 2 * PAGE_SIZE and fake.events.list_calls == 2
    assert await sweep() is False
    assert applied.ids == wanted[::-1]


async def test_the_next_sweep_starts_where_the_previous_began_less_the_overlap(fake: FakeStripe) -> None:
    clock = Clock(time.time())
    seen_before = record(fake, created=int(clock.now) - OVERLAP_SECONDS - 60)
    in_the_overlap = record(fake, created=int(clock.now) - 60)
    applied = Applied()
    sweep = events_pass(fake, applied, clock)
    assert await sweep() is False
    clock.now += 900

    assert await sweep() is False

    assert applied.ids == [in_the_overlap, seen_before, in_the_overlap]  # the second sweep's overlap only


async def test_a_failed_call_ends_the_pass_and_the_next_one_starts_again(fake: FakeStripe) -> None:
    first = record(fake)
    applied = Applied()
    refused = events_pass(fake, applied, Clock(time.time()), key="sk_test_revoked")

    assert await refused() is False  # logged; the next interval tries again
    assert applied.ids == []
    assert await events_pass(fake, applied, Clock(time.time()))() is False
    assert applied.ids == [first]


async def test_an_event_it_cannot_read_is_skipped_and_the_rest_applied(fake: FakeStripe) -> None:
    first, broken, last = record(fake), record(fake), record(fake)
    applied = Applied(unreadable=frozenset({broken}))

    assert await events_pass(fake, applied, Clock(time.time()))() is False

    assert applied.ids == [last, first]
