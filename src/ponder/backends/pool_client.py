"""`PoolClient`: an upstream pool (`ponder.backends.pool`) as one request's Backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from ponder.backends.base import Capabilities
from ponder.types import Completion, Delta, Message, Sampling

if TYPE_CHECKING:
    from ponder.backends.balance import Choice
    from ponder.backends.pool import Listener, UpstreamPool


class PoolClient:
    """The pool as one request's Backend: calls choose upstreams by `choice`, `listener` hears
    of every upstream request, and with `native_n` off samples are drawn as separate calls
    (so that a strategy's samples spread over the upstreams)."""

    def __init__(
        self, pool: UpstreamPool, choice: Choice, listener: Listener | None, native_n: bool
    ) -> None:
        self.pool = pool
        self.choice: Choice = choice
        self.listener = listener
        self.name = pool.name
        caps = pool.capabilities
        self.capabilities = Capabilities(
            native_n=caps.native_n and native_n,
            logprobs=caps.logprobs,
            tools=caps.tools,
            max_concurrency=caps.max_concurrency,
            continuation=caps.continuation,
            thinking=caps.thinking,
            context_window=caps.context_window,
        )

    async def models(self) -> list[str]:
        return await self.pool.call("", lambda u, _: u.backend.models(), self.choice, None)

    def serves(self, model: str) -> bool:
        return True

    async def ready(self) -> bool:
        for upstream in self.pool.upstreams:
            if await upstream.backend.ready():
                return True
        return False

    async def aclose(self) -> None:
        return None  # the pool is the server's, closed with it

    async def complete(
        self, model: str, messages: Sequence[Message], sampling: Sampling, n: int = 1
    ) -> list[Completion]:
        return await self.pool.call(
            model,
            lambda u, target: u.backend.complete(target, messages, sampling, n),
            self.choice,
            self.listener,
        )

    def stream(
        self, model: str, messages: Sequence[Message], sampling: Sampling, n: int = 1
    ) -> AsyncIterator[Delta]:
        return self.pool.stream_from(
            model,
            lambda u, target: u.backend.stream(target, messages, sampling, n),
            self.choice,
            self.listener,
        )
