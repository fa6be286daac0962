"""Admission control: a cap on concurrent chat requests with a bounded queue, and per-key rate
limits. Both answer at once when they refuse (no work, no backend call), with `Retry-After`.

They run after the key is checked, so a flood of unauthenticated requests is turned away with
a 401 and never takes a queue place or a key's rate. Both hold per process; with
`PONDER_REDIS_URL`, `ponder.proxy.shared_limits` holds them across replicas instead.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ponder.errors import Overloaded, RateLimited
from ponder.keys import Principal


class Admission:
    """At most `limit` requests run at once; up to `max_queued` more wait, each at most
    `timeout_s`. Beyond that a request is refused with a 503 at once."""

    def __init__(self, limit: int, max_queued: int, timeout_s: float) -> None:
        self.limit = limit
        self.max_queued = max_queued
        self.timeout_s = timeout_s
        self._slots = asyncio.Semaphore(limit)
        self.running = 0
        self.waiting = 0

    async def acquire(self) -> None:
        """Take a slot (waiting in the queue if need be), or raise `Overloaded`. A caller that
        is cancelled while waiting takes no slot."""
        if self._slots.locked() and self.waiting >= self.max_queued:
            raise Overloaded(
                f"Ponder is at its limit of {self.limit} concurrent requests and its queue "
                "is full; retry later",
                retry_after=1,
            )
        self.waiting += 1
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._slots.acquire()
        except TimeoutError:
            raise Overloaded(
                f"no slot came free within {self.timeout_s:g} s "
                f"({self.limit} requests are running); retry later",
                retry_after=1,
            ) from None
        finally:
            self.waiting -= 1
        self.running += 1

    def release(self) -> None:
        self.running -= 1
        self._slots.release()


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class RateLimiter:
    """A token bucket per key: `per_minute` requests a minute on average, in bursts of up to
    `per_minute`. A key's own limit (`Principal.rate_limit_per_minute`) replaces the default;
    0 means no limit."""

    default_per_minute: int = 0
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def check(self, principal: Principal) -> None:
        """Take one request from the key's bucket, or raise `RateLimited` (429)."""
        limit = per_minute(principal, self.default_per_minute)
        if limit <= 0:
            return
        now = self.clock()
        rate = limit / 60.0  # tokens per second
        # One bucket per configured key: the number of buckets is bounded by the key count.
        bucket = self._buckets.setdefault(principal.name, _Bucket(float(limit), now))
        bucket.tokens = min(float(limit), bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return
        raise rate_limited(limit, (1.0 - bucket.tokens) / rate)

    async def take(self, principal: Principal) -> None:
        """`check`, as the routes call every rate limiter (the shared one is async)."""
        self.check(principal)


def per_minute(principal: Principal, default: int) -> int:
    """The key's rate limit: its own, else the server's (0: no limit)."""
    limit = principal.rate_limit_per_minute
    return default if limit is None else limit


def rate_limited(limit: int, wait: float) -> RateLimited:
    """The 429 for a key over its `limit` a minute that gets a token back in `wait` s."""
    return RateLimited(
        f"rate limit of {limit} requests per minute reached for this key; "
        f"retry in {math.ceil(wait)} s",
        retry_after=wait,
    )
