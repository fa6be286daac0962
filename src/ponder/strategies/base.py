"""The Strategy protocol."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from ponder.strategies.context import RequestContext
from ponder.types import Completion, Message


class StrategyConfig(BaseModel):
    """Base of every strategy's knobs; unknown knobs are a client error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Strategy(Protocol):
    slug: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]]
    Config: ClassVar[type[StrategyConfig]]
    draws_n: ClassVar[bool]
    """True when the strategy produces the request's `n` choices itself in one run (pass-through);
    otherwise the engine runs it `n` times concurrently, one choice each."""

    async def run(self, ctx: RequestContext, messages: Sequence[Message]) -> list[Completion]:
        """Return `ctx.n` choices for the conversation `messages`."""
        ...


class StrategyFactory(Protocol):
    """What the registry holds: usually a Strategy class, whose class attributes these are."""

    slug: str
    aliases: tuple[str, ...]
    Config: type[StrategyConfig]
    draws_n: bool

    def __call__(self, config: StrategyConfig) -> Strategy: ...
