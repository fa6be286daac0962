"""`proxy`, a plugin: the rest of the route runs against the server's pool of upstreams, so
every backend call it makes (each of `proxy&sc-model`'s samples, each step of a search) is
spread over them by weight, in turn, or in failover order, with per-upstream concurrency
caps, upstreams that fail skipped for a cooldown, and a call that fails moving on to the next
upstream (a stream only before its first delta). See `ponder.backends.pool`.

The operator describes the pool in a file (PONDER_PROXY_CONFIG); without it the request is
refused before any backend call. The trace names the upstream of every request
(`proxy_upstream` steps); a failover streams as a line of reasoning.

No backend call of its own: the calls are the rest of the route's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from typing import ClassVar, Literal

from pydantic import Field

from ponder.backends.balance import Choice
from ponder.backends.pool import Served, UpstreamPool
from ponder.backends.pool_config import SETTING
from ponder.plugins.base import Inner
from ponder.plugins.resources import resource
from ponder.strategies.base import StrategyConfig
from ponder.strategies.context import RequestContext
from ponder.types import Completion, Message

SLUG = "proxy"


class ProxyConfig(StrategyConfig):
    strategy: Choice | None = Field(
        None,
        description="How this request's calls choose their upstream: weighted, round_robin "
        "or failover (default: the server's)",
    )
    spread_samples: bool = Field(
        True,
        description="Draw a strategy's samples as separate calls spread over the upstreams, "
        "rather than one call asking one upstream for all of them",
    )


class Proxy:
    slug: ClassVar[str] = SLUG
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = ProxyConfig
    wraps: ClassVar[Literal[True]] = True

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, ProxyConfig)
        self.config = config

    async def run(
        self, ctx: RequestContext, messages: Sequence[Message], inner: Inner
    ) -> list[Completion]:
        pool = resource(ctx, SLUG, UpstreamPool, SETTING)
        choice = self.config.strategy or pool.choice

        def heard(served: Served) -> None:
            ctx.step(
                "proxy_upstream", upstream=served.upstream, model=served.model, error=served.error
            )
            if served.error is not None:
                ctx.reason(f"Upstream {served.upstream} failed ({served.error}).\n")

        client = pool.client(choice, heard, native_n=not self.config.spread_samples)
        ctx.step("proxy", strategy=choice, upstreams=len(pool.upstreams))
        limiter = asyncio.Semaphore(client.capabilities.max_concurrency)
        return await inner(replace(ctx, backend=client, limiter=limiter), messages)
