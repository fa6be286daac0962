"""A pool of upstreams behind one Backend: load balancing, failover, health and caps.

`UpstreamPool` spreads calls over several upstreams (each an `OpenAICompatBackend`, or any
Backend) and extends what `ResilientBackend` does for one upstream and its fallbacks:

- Choice (`ponder.backends.balance`): `weighted` (smooth weighted round-robin, deterministic),
  `round_robin` (each in turn), or `failover` (the first usable one, in the configured order).
- Caps: at most `max_concurrency` calls in flight per upstream; when the chosen one is full
  the next usable one is taken, and when every usable one is full the call waits for a slot.
- Health: an upstream that fails with a transient error (`BackendError.retryable`: a 429 or
  5xx, a connection that failed or broke, a garbled answer) is down for `cooldown_s` (or its
  `Retry-After`, when longer) and skipped; the call moves on to the next usable upstream at
  once. After the cooldown it is tried again, first with GET /models when `health_check` is
  on. When every upstream is down, the one that went down first is tried rather than none.
- Retries: when every usable upstream has failed a call, it waits as the `RetryPolicy` says
  (backoff, `Retry-After` up to `max_wait_s`) and starts another round, at most `retries`
  times; then it fails with the last error's class and a message that says how many
  upstreams were tried (never their keys or addresses). A non-transient error (a rejected
  request, an unknown model) is raised at once.
- Streams move to another upstream only while nothing has been yielded: text that reached
  the client is never repeated or stitched together from two upstreams.

`client()` gives a per-request view (`pool_client.PoolClient`): another choice of strategy, a
listener told which upstream served (or failed) each request, and whether samples may use
native `n`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import TypeVar

from ponder.backends.balance import Balancer, Choice
from ponder.backends.base import Backend, Capabilities
from ponder.backends.pool_client import PoolClient
from ponder.backends.resilience import RetryPolicy, Sleep
from ponder.errors import BackendError
from ponder.types import Completion, Delta, Message, Sampling

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Upstream:
    """One member of the pool. `name` is how logs and traces refer to it (never its URL or
    key); `models` maps the model names clients use to the upstream's own."""

    name: str
    backend: Backend
    weight: int = 1
    max_concurrency: int = 16
    models: Mapping[str, str] = field(default_factory=dict)

    def model_for(self, model: str) -> str:
        return self.models.get(model, model)


@dataclass(frozen=True, slots=True)
class Served:
    """One upstream request of a pool call: who got it, under which model name, and the
    error code it failed with (None when it answered)."""

    upstream: str
    model: str
    error: str | None = None


Listener = Callable[[Served], None]


@dataclass
class _Health:
    in_flight: int = 0
    down_at: float | None = None
    """When it last failed with a transient error (None: it is up)."""
    until: float = 0.0
    """The end of its cooldown."""
    order: int = 0
    """Which failure of the pool took it down (the earliest is tried when all are down)."""


@dataclass
class _Tries:
    """Where one call stands: the upstreams tried in this round and ever, the requests made."""

    tried: set[str] = field(default_factory=set)
    ever: set[str] = field(default_factory=set)
    rounds: int = 0
    requests: int = 0
    last: BackendError | None = None


class UpstreamPool:
    """Several upstreams as one Backend (see the module's notes)."""

    name = "pool"

    def __init__(
        self,
        upstreams: Sequence[Upstream],
        *,
        choice: Choice = "weighted",
        cooldown_s: float = 30.0,
        health_check: bool = False,
        policy: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        jitter: Callable[[], float] = lambda: random.uniform(0.5, 1.0),
    ) -> None:
        if not upstreams:
            raise ValueError("an upstream pool needs at least one upstream")
        names = [u.name for u in upstreams]
        if len(set(names)) != len(names):
            raise ValueError("the upstreams of a pool need distinct names")
        if any(u.max_concurrency < 1 for u in upstreams):
            raise ValueError("an upstream's max_concurrency must be at least 1")
        self.upstreams = tuple(upstreams)
        self.choice: Choice = choice
        self.cooldown_s = cooldown_s
        self.health_check = health_check
        self.policy = policy or RetryPolicy()
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._health = {u.name: _Health() for u in self.upstreams}
        self._position = {u.name: i for i, u in enumerate(self.upstreams)}
        self._balancer = Balancer([u.weight for u in self.upstreams])
        self._freed = asyncio.Event()
        self._downs = itertools.count()
        caps = [u.backend.capabilities for u in self.upstreams]
        self.capabilities = Capabilities(
            native_n=all(c.native_n for c in caps),
            logprobs=all(c.logprobs for c in caps),
            tools=all(c.tools for c in caps),
            max_concurrency=sum(u.max_concurrency for u in self.upstreams),
            continuation=all(c.continuation for c in caps),
            thinking=all(c.thinking for c in caps),
            context_window=_smallest(c.context_window for c in caps),
        )

    # ---- what the pool shows ---------------------------------------------------------------

    def in_flight(self, name: str) -> int:
        return self._health[name].in_flight

    def is_down(self, name: str) -> bool:
        return not self._up(self._health[name], self._clock())

    def client(
        self,
        choice: Choice | None = None,
        listener: Listener | None = None,
        *,
        native_n: bool = True,
    ) -> PoolClient:
        """A view of the pool for one request (see `PoolClient`)."""
        return PoolClient(self, choice or self.choice, listener, native_n)

    # ---- Backend protocol ------------------------------------------------------------------

    async def models(self) -> list[str]:
        return await self.client().models()

    def serves(self, model: str) -> bool:
        return True  # the upstreams decide; an unknown model comes back as a 404

    async def ready(self) -> bool:
        return await self.client().ready()

    async def aclose(self) -> None:
        for upstream in self.upstreams:
            await upstream.backend.aclose()

    async def complete(
        self, model: str, messages: Sequence[Message], sampling: Sampling, n: int = 1
    ) -> list[Completion]:
        return await self.client().complete(model, messages, sampling, n)

    def stream(
        self, model: str, messages: Sequence[Message], sampling: Sampling, n: int = 1
    ) -> AsyncIterator[Delta]:
        return self.client().stream(model, messages, sampling, n)

    # ---- routing a call --------------------------------------------------------------------

    async def call(
        self,
        model: str,
        call: Callable[[Upstream, str], Awaitable[T]],
        choice: Choice,
        listener: Listener | None,
    ) -> T:
        """`call(upstream, its model name)` on upstreams chosen by `choice`, moving on after
        transient failures."""
        tries = _Tries()
        while True:
            upstream = await self._acquire(tries, choice)
            target = upstream.model_for(model)
            try:
                result = await call(upstream, target)
            except BackendError as error:
                failure = error
            else:
                self._served(upstream, target, listener)
                return result
            finally:
                self._release(upstream)
            await self._after(tries, upstream, target, failure, listener)

    async def stream_from(
        self,
        model: str,
        open_stream: Callable[[Upstream, str], AsyncIterator[Delta]],
        choice: Choice,
        listener: Listener | None,
    ) -> AsyncIterator[Delta]:
        """`call` for a stream: another upstream is tried only while nothing was yielded."""
        tries = _Tries()
        while True:
            upstream = await self._acquire(tries, choice)
            target = upstream.model_for(model)
            sent = False
            deltas = open_stream(upstream, target)
            try:
                async for delta in deltas:
                    sent = True
                    yield delta
            except BackendError as error:
                if sent:
                    self._failed(upstream, target, error, listener)
                    raise
                failure = error
            else:
                self._served(upstream, target, listener)
                return
            finally:
                if isinstance(deltas, AsyncGenerator):
                    await deltas.aclose()
                self._release(upstream)
            await self._after(tries, upstream, target, failure, listener)

    async def _after(
        self,
        tries: _Tries,
        upstream: Upstream,
        target: str,
        error: BackendError,
        listener: Listener | None,
    ) -> None:
        """After a failed request: return to try another upstream (after the policy's wait
        when a round is over), or raise."""
        self._failed(upstream, target, error, listener)
        if not error.retryable:
            raise error
        tries.last = error
        if not self._candidates(tries, self._clock()):
            await self._next_round(tries)

    async def _next_round(self, tries: _Tries) -> None:
        """Every usable upstream failed this call: wait as the policy says and start another
        round, or raise when the policy allows no more."""
        error = tries.last
        assert error is not None  # a round ends with a failure
        tries.rounds += 1
        wait = self.policy.delay(tries.rounds, error, self._jitter())
        if wait is None:
            raise self._exhausted(tries, error) from error
        log.info("every usable upstream failed; retry round %d in %.2f s", tries.rounds, wait)
        await self._sleep(wait)
        tries.tried.clear()

    def _exhausted(self, tries: _Tries, last: BackendError) -> BackendError:
        total = len(self.upstreams)
        tried = len(tries.ever)
        requests = "1 request" if tries.requests == 1 else f"{tries.requests} requests"
        scope = (
            f"all {total} upstreams"
            if tried == total
            else f"{tried} of {total} upstreams (the others are cooling down after failures)"
        )
        return type(last)(
            f"no upstream could answer: {scope} tried, {requests}; the last error: {last.message}",
            retry_after=last.retry_after,
        )

    # ---- choosing --------------------------------------------------------------------------

    async def _acquire(self, tries: _Tries, choice: Choice) -> Upstream:
        """Take a slot on the next upstream to try, waiting while every candidate is full."""
        while True:
            now = self._clock()
            candidates = self._candidates(tries, now)
            if not candidates:  # others' failures took them down while this call waited
                await self._next_round(tries)
                continue
            open_ = [u for u in candidates if self._has_room(u)]
            if not open_:
                freed = self._freed
                await freed.wait()
                continue
            positions = [self._position[u.name] for u in open_]
            upstream = self.upstreams[self._balancer.pick(positions, choice)]
            health = self._health[upstream.name]
            health.in_flight += 1
            back = health.down_at is not None and self._up(health, now)
            if back and self.health_check and not await self._check(upstream):
                continue
            tries.tried.add(upstream.name)
            tries.ever.add(upstream.name)
            tries.requests += 1
            return upstream

    def _candidates(self, tries: _Tries, now: float) -> list[Upstream]:
        """The upstreams this call may try next: those up and not yet tried in this round;
        when none is up and the round has tried none, the one that went down first."""
        untried = [u for u in self.upstreams if u.name not in tries.tried]
        up = [u for u in untried if self._up(self._health[u.name], now)]
        if up or tries.tried:
            return up
        return [min(untried, key=lambda u: self._health[u.name].order)]

    def _has_room(self, upstream: Upstream) -> bool:
        return self._health[upstream.name].in_flight < upstream.max_concurrency

    async def _check(self, upstream: Upstream) -> bool:
        """Ask an upstream back from its cooldown for GET /models before a call; a failing
        one is down for another cooldown (its slot freed)."""
        try:
            ready = await upstream.backend.ready()
        except BaseException:
            self._release(upstream)
            raise
        if ready:
            self._health[upstream.name].down_at = None  # other calls need not check it again
        else:
            self._release(upstream)
            self._down(upstream, None)
            log.warning("upstream %s failed its health check", upstream.name)
        return ready

    # ---- health ----------------------------------------------------------------------------

    @staticmethod
    def _up(health: _Health, now: float) -> bool:
        return health.down_at is None or now >= health.until

    def _release(self, upstream: Upstream) -> None:
        self._health[upstream.name].in_flight -= 1
        freed, self._freed = self._freed, asyncio.Event()
        freed.set()

    def _served(self, upstream: Upstream, target: str, listener: Listener | None) -> None:
        health = self._health[upstream.name]
        if health.down_at is not None:
            log.info("upstream %s is back", upstream.name)
        health.down_at = None
        if listener is not None:
            listener(Served(upstream.name, target))

    def _failed(
        self, upstream: Upstream, target: str, error: BackendError, listener: Listener | None
    ) -> None:
        if error.retryable:
            self._down(upstream, error)
        if listener is not None:
            listener(Served(upstream.name, target, error.code or type(error).__name__))

    def _down(self, upstream: Upstream, error: BackendError | None) -> None:
        now = self._clock()
        cooldown = max(self.cooldown_s, (error.retry_after or 0.0) if error else 0.0)
        health = self._health[upstream.name]
        health.down_at = now
        health.until = now + cooldown
        health.order = next(self._downs)
        if error is not None:
            log.warning(
                "upstream %s is down for %.0f s: %s", upstream.name, cooldown, error.message
            )


def _smallest(windows: Iterable[int | None]) -> int | None:
    """The window every upstream holds (a call may go to any): the smallest, or None when one
    does not say."""
    known = list(windows)
    return None if not known or None in known else min(w for w in known if w is not None)
