"""Per-caller rate limits: a token bucket per (RPC, subject), so one user cannot take a process's share of the
expensive and money-moving calls. Exceeding one answers RESOURCE_EXHAUSTED / RATE_LIMITED with a RetryInfo saying
when the next call would be admitted.

Limits are per process: with N replicas a caller may get up to N times the rate (a shared limiter would need a
store every call waits on). Callers with the service role — trusted backends acting for many users — are bounded by
the process's admission control instead, as for live-feed watchers."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pydantic import BaseModel, Field

from services.runtime.errors import AppError, rate_limited


class RateLimit(BaseModel):
    """Sustained calls per second, and how many may come at once after a quiet spell."""

    per_second: float = Field(gt=0)
    burst: int = Field(ge=1)


# RPC name (as in the contract) → limit. Gifts are the hot path a person sends by tapping; purchases and giveaways
# move real money or many accounts; statements and earnings are the expensive reads; a creator sets a goal now and
# then (each one is a row and an event).
DEFAULT_RATE_LIMITS: dict[str, RateLimit] = {
    "SendGift": RateLimit(per_second=20, burst=50),
    "SetStreamGoal": RateLimit(per_second=0.5, burst=10),
    "PurchaseCoins": RateLimit(per_second=1, burst=5),
    "CreateGiveaway": RateLimit(per_second=0.2, burst=3),
    "RequestWithdrawal": RateLimit(per_second=0.2, burst=3),
    "ListEarnings": RateLimit(per_second=2, burst=10),
    "ListTransactions": RateLimit(per_second=5, burst=20),
}

# Buckets kept at most (least recently used forgotten first): memory stays bounded under a flood of subjects, and
# a forgotten bucket is a full one, which costs a returning caller at most one burst.
MAX_TRACKED_CALLERS = 100_000


@dataclass
class TokenBucket:
    limit: RateLimit
    tokens: float
    updated_at: float

    def take(self, now: float) -> float:
        """0 when a token was taken; else the seconds until one will be there (nothing taken)."""
        self.tokens = min(float(self.limit.burst), self.tokens + (now - self.updated_at) * self.limit.per_second)
        self.updated_at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.limit.per_second


class CallerRateLimiter:
    def __init__(
        self,
        limits: Mapping[str, RateLimit],
        max_callers: int = MAX_TRACKED_CALLERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = dict(limits)
        self._max_callers = max_callers
        self._clock = clock
        self._buckets: OrderedDict[tuple[str, str], TokenBucket] = OrderedDict()

    def admit(self, rpc: str, subject: str) -> None:
        """Raises RATE_LIMITED when subject has used up its calls of rpc for now."""
        limit = self._limits.get(rpc)
        if limit is None:
            return
        wait = self._bucket(rpc, subject, limit).take(self._clock())
        if wait:
            raise _limited(rpc, wait)

    def _bucket(self, rpc: str, subject: str, limit: RateLimit) -> TokenBucket:
        key = (rpc, subject)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(limit, float(limit.burst), self._clock())
            self._buckets[key] = bucket
            if len(self._buckets) > self._max_callers:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket


def _limited(rpc: str, wait_seconds: float) -> AppError:
    return rate_limited(f"too many {rpc} calls from this caller; retry in {wait_seconds:.2f} s", wait_seconds)
