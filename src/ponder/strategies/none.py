"""`none`: pass the request through to the backend unchanged."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from ponder.strategies.base import StrategyConfig
from ponder.strategies.context import RequestContext
from ponder.types import Completion, Message


class PassThrough:
    slug: ClassVar[str] = "none"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = StrategyConfig
    draws_n: ClassVar[bool] = True

    def __init__(self, config: StrategyConfig) -> None:
        self.config = config

    async def run(self, ctx: RequestContext, messages: Sequence[Message]) -> list[Completion]:
        return await ctx.final(messages, n=ctx.n)
