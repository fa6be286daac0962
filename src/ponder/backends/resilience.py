"""Retries and fallback for remote upstreams.

`ResilientBackend` wraps one or more backends (the configured upstream first, then its
fallbacks). A call that fails with a transient error (`BackendError.retryable`: an upstream
429 or 5xx, a refused or broken connection, a garbled answer) is tried again after a backoff, at
most `retries` times per upstream; an upstream's `Retry-After` is honoured when it is no longer
than `max_wait_s` (a longer one moves on at once). When an upstream's tries are spent, the next
upstream is tried. So one planned call costs at most `(1 + retries)` upstream requests per
upstream, and never more.

A stream is retried or moved to another upstream only while it has yielded nothing: once a
delta has gone on (towards the client), a failure is reported as it is, so an answer is never
stitched together from two attempts.

Everything else fails at once: a rejected request, an unknown model, refused credentials, a
read timeout (the upstream was reached and spent its time), and cancellation.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from ponder.backends.base import Backend, Capabilities
from ponder.errors import BackendError
from ponder.types import Completion, Delta, Message, Sampling

log = logging.getLogger(__name__)

T = TypeVar("T")

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int = 2
    """Tries after the first, per upstream."""
    backoff_s: float = 0.5
    """Delay before the first retry; it doubles each time, with jitter (50-100%)."""
    max_wait_s: float = 10.0
    """The longest wait before a retry; an upstream asking for longer is not waited for."""

    def delay(self, attempt: int, error: BackendError, jitter: float) -> float | None:
        """Seconds to wait before retry number `attempt` (1-based), or None for no retry."""
        if attempt > self.retries:
            return None
        if error.retry_after is not None:
            return error.retry_after if error.retry_after <= self.max_wait_s else None
        return min(self.max_wait_s, self.backoff_s * 2.0 ** (attempt - 1) * jitter)


class ResilientBackend:
    """A backend that retries transient failures and falls back to further upstreams."""

    def __init__(
        self,
        upstreams: Sequence[Backend],
        policy: RetryPolicy,
        *,
        sleep: Sleep = asyncio.sleep,
        jitter: Callable[[], float] = lambda: random.uniform(0.5, 1.0),
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        if not upstreams:
            raise ValueError("ResilientBackend needs at least one upstream")
        self.upstreams = tuple(upstreams)
        self.policy = policy
        self._sleep = sleep
        self._jitter = jitter
        self.on_retry = on_retry
        """Told "retry" or "fallback" each time (the server's metrics listen here)."""
        self.name = self.upstreams[0].name
        self.capabilities: Capabilities = self.upstreams[0].capabilities

    # ---- Backend protocol ------------------------------------------------------------------

    async def models(self) -> list[str]:
        return await self._call(lambda b: b.models())

    def serves(self, model: str) -> bool:
        return self.upstreams[0].serves(model)

    async def ready(self) -> bool:
        for upstream in self.upstreams:
            if await upstream.ready():
                return True
        return False

    async def aclose(self) -> None:
        for upstream in self.upstreams:
            await upstream.aclose()

    async def complete(
        self, model: str, messages: Sequence[Message], sampling: Sampling, n: int = 1
    ) -> list[Completion]:
        return await self._call(lambda b: b.complete(model, messages, sampling, n))

    async def stream(
        self, model: str, messages: Sequence[Message], sampling: Sampling, n: int = 1
    ) -> AsyncIterator[Delta]:
        tries = _Tries()
        while True:
            sent = False
            try:
                async for delta in self.upstreams[tries.upstream].stream(
                    model, messages, sampling, n
                ):
                    sent = True
                    yield delta
                return
            except BackendError as error:
                if sent or not error.retryable:
                    raise
                await self._next(tries, error)

    # ---- internals -------------------------------------------------------------------------

    async def _call(self, call: Callable[[Backend], Awaitable[T]]) -> T:
        tries = _Tries()
        while True:
            try:
                return await call(self.upstreams[tries.upstream])
            except BackendError as error:
                if not error.retryable:
                    raise
                await self._next(tries, error)

    async def _next(self, tries: _Tries, error: BackendError) -> None:
        """After a transient failure: wait and retry the same upstream, or move to the next
        upstream; raise `error` when no try is left."""
        tries.attempt += 1
        wait = self.policy.delay(tries.attempt, error, self._jitter())
        if wait is not None:
            log.info(
                "upstream call failed (%s); retry %d of %d in %.2f s",
                error.message,
                tries.attempt,
                self.policy.retries,
                wait,
            )
            self._notify("retry")
            await self._sleep(wait)
            return
        if tries.upstream + 1 < len(self.upstreams):
            tries.upstream += 1
            tries.attempt = 0
            log.warning(
                "upstream call failed (%s); falling back to upstream %d",
                error.message,
                tries.upstream + 1,
            )
            self._notify("fallback")
            return
        raise error

    def _notify(self, event: str) -> None:
        if self.on_retry is not None:
            self.on_retry(event)


@dataclass
class _Tries:
    """Where one call stands: which upstream it is on, and how many retries it has used there."""

    upstream: int = 0
    attempt: int = 0
