"""`re2`: re-reading. The question is put to the model twice in the same turn, which helps
smaller models attend to details they skimmed on the first read.

One backend call; the request's `n` choices are drawn by that call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from pydantic import Field

from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import rewrite_last_user
from ponder.strategies.context import RequestContext
from ponder.types import Completion, Message

REREAD = "Read the question again: "


class ReReadConfig(StrategyConfig):
    rereads: int = Field(1, ge=1, le=3, description="How many extra times the question is read")


class ReRead:
    slug: ClassVar[str] = "re2"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = ReReadConfig
    draws_n: ClassVar[bool] = True

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, ReReadConfig)
        self.config = config

    async def run(self, ctx: RequestContext, messages: Sequence[Message]) -> list[Completion]:
        rereads = self.config.rereads

        def reread(question: str) -> str:
            return question + "".join(f"\n{REREAD}{question}" for _ in range(rereads))

        ctx.step("reread", rereads=rereads)
        return await ctx.final(rewrite_last_user(messages, reread), n=ctx.n)
