"""Per-key rate limits and the concurrency cap held across processes and replicas through
Redis (`PONDER_REDIS_URL`).

Each decision is one Lua script, so it is atomic however many replicas ask at once, and it
reads the clock with Redis `TIME`, so replicas whose clocks differ still agree. Every call has
a timeout (`PONDER_REDIS_TIMEOUT_S`): a Redis that fails or hangs never holds a request. Then
`PONDER_LIMITS_ON_REDIS_ERROR` decides: `open` lets the request through (a warning at most once
a minute, and `ponder_limit_backend_errors_total`), `closed` answers 503.

Redis keys hold key names (never the keys themselves): `ponder:ratelimit:<name>`, a hash with
the bucket's tokens and time, and `ponder:inflight`, a sorted set of leases (lease id, score =
its expiry), so the slots of a replica that crashed come free when their leases expire.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Literal

try:
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError
except ImportError as exc:  # an optional dependency
    message = "PONDER_REDIS_URL needs the redis package: pip install 'ponder[redis]'"
    raise ImportError(message) from exc

from ponder.errors import LimitsUnavailable, Overloaded
from ponder.keys import Principal
from ponder.proxy.limits import Admission, per_minute, rate_limited

log = logging.getLogger(__name__)

WARN_EVERY_S = 60.0
"""At most one warning about a failing Redis per this many seconds."""

TOKEN_BUCKET = """
local capacity = tonumber(ARGV[1])
local rate = capacity / 60.0
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'time')
local tokens = tonumber(state[1])
local last = tonumber(state[2])
if tokens == nil or last == nil then
  tokens = capacity
  last = now
end
tokens = math.min(capacity, tokens + math.max(0, now - last) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'time', tostring(now))
redis.call('PEXPIRE', KEYS[1], 61000)
return {allowed, tostring(wait)}
"""
"""One request from a key's bucket: KEYS[1] the bucket, ARGV[1] its capacity (the per-minute
rate; it refills at rate/60 a second). Returns {1 or 0, seconds until a token is back}. A
bucket untouched for a minute is full again, so it expires then."""

TAKE_LEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3]) * 1000))
  return 1
end
return 0
"""
"""Take a slot: KEYS[1] the lease set, ARGV[1] the lease id, ARGV[2] the cap, ARGV[3] the
lease's seconds. Expired leases go first. Returns 1 (taken) or 0 (the cap is reached)."""


class RedisLimits:
    """The Redis connection of the shared limits: every call within `timeout_s`, and what a
    failure means (`on_error`)."""

    def __init__(
        self,
        url: str,
        timeout_s: float,
        on_error: Literal["open", "closed"] = "open",
        prefix: str = "ponder:",
    ) -> None:
        self.timeout_s = timeout_s
        self.on_error = on_error
        self.prefix = prefix
        self.client: Redis = Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),  # the timeout bounds the call; no retries within it
        )
        self.count_error: Callable[[], None] = lambda: None
        """Called on each failed call (the app counts `ponder_limit_backend_errors_total`)."""
        self._warned_at: float | None = None
        self._pending: set[asyncio.Task[None]] = set()

    async def call(self, what: str, op: Callable[[], Awaitable[Any]]) -> Any | None:
        """`op()` within the timeout. On a failure: None when the policy is open, else
        `LimitsUnavailable`."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await op()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(what, exc)
            return None

    def _failed(self, what: str, exc: BaseException) -> None:
        self.count_error()
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            action = "letting requests through" if self.on_error == "open" else "refusing them"
            log.warning(
                "Redis of the shared limits failed (%s: %s); %s (PONDER_LIMITS_ON_REDIS_ERROR=%s)",
                what,
                type(exc).__name__ if isinstance(exc, TimeoutError) else exc,
                action,
                self.on_error,
            )
        if self.on_error == "closed":
            raise LimitsUnavailable(
                f"the {what} cannot be checked: Redis, where Ponder's replicas share them, "
                "failed or did not answer in time; retry later",
                retry_after=1,
            ) from None

    def in_background(self, op: Coroutine[Any, Any, None]) -> None:
        """Run `op` without waiting for it (`aclose` does)."""
        task = asyncio.get_running_loop().create_task(op)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def aclose(self) -> None:
        """Finish what runs in the background, then close the connections."""
        if self._pending:
            await asyncio.wait(self._pending, timeout=self.timeout_s * 2)
        await self.client.aclose()


class SharedRateLimiter:
    """`RateLimiter` across replicas: a token bucket per key name in Redis, with the same
    limits (`per_minute`), the same 429 and `Retry-After`."""

    def __init__(self, redis: RedisLimits, default_per_minute: int = 0) -> None:
        self.redis = redis
        self.default_per_minute = default_per_minute
        self._script = redis.client.register_script(TOKEN_BUCKET)

    async def take(self, principal: Principal) -> None:
        """Take one request from the key's shared bucket, or raise `RateLimited` (429)."""
        limit = per_minute(principal, self.default_per_minute)
        if limit <= 0:
            return
        key = f"{self.redis.prefix}ratelimit:{principal.name}"
        result = await self.redis.call(
            "rate limits", lambda: self._script(keys=[key], args=[limit])
        )
        if result is None or int(result[0]) == 1:
            return
        raise rate_limited(limit, float(result[1]))


class SharedAdmission(Admission):
    """`Admission` whose cap holds across replicas: a request first takes a slot of this
    process (and its bounded queue), then a lease in Redis, polling until `timeout_s` while the
    shared cap is reached. A lease expires after `lease_s`, so a crashed replica's slots come
    free; keep it above the longest a request may run."""

    def __init__(
        self,
        redis: RedisLimits,
        limit: int,
        max_queued: int,
        timeout_s: float,
        lease_s: float,
        poll_s: float = 0.05,
    ) -> None:
        super().__init__(limit, max_queued, timeout_s)
        self.redis = redis
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.key = f"{redis.prefix}inflight"
        self._take = redis.client.register_script(TAKE_LEASE)
        self._leases: list[str] = []
        self._unleased = 0
        """Slots taken while Redis failed (policy open): they hold no lease."""

    async def acquire(self) -> None:
        """Take a slot here and a lease in Redis, or raise `Overloaded` (or
        `LimitsUnavailable`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        await super().acquire()
        lease = uuid.uuid4().hex
        try:
            while True:
                taken = await self.redis.call(
                    "concurrency cap",
                    lambda: self._take(keys=[self.key], args=[lease, self.limit, self.lease_s]),
                )
                if taken is None:
                    self._unleased += 1
                    return
                if int(taken) == 1:
                    self._leases.append(lease)
                    return
                if loop.time() + self.poll_s > deadline:
                    raise Overloaded(
                        f"Ponder's replicas are at their shared limit of {self.limit} "
                        f"concurrent requests and none came free within {self.timeout_s:g} s; "
                        "retry later",
                        retry_after=1,
                    )
                await asyncio.sleep(self.poll_s)
        except BaseException:
            super().release()
            raise

    def release(self) -> None:
        """Give the slot back here at once, and its lease in Redis in the background."""
        super().release()
        if self._leases:  # leases are interchangeable: any one of this process's will do
            lease = self._leases.pop()
            self.redis.in_background(self._give_back(lease))
        elif self._unleased:
            self._unleased -= 1

    async def _give_back(self, lease: str) -> None:
        try:
            async with asyncio.timeout(self.redis.timeout_s):
                await self.redis.client.zrem(self.key, lease)
        except (RedisError, OSError, TimeoutError) as exc:  # it expires in `lease_s`
            self.redis.count_error()
            log.debug("could not give a lease back to Redis: %s", exc)
