"""The Plugin protocol.

A plugin wraps the rest of its route: `run` gets the request's context, the conversation and
`inner`, which runs the rest (the plugins after it, then the strategies) and returns the
request's choices. A plugin changes what `inner` sees (the messages, or the sampling through
`dataclasses.replace(ctx, sampling=...)`), what comes back, or both, and may call the backend
itself through `ctx` (those calls are metered and budgeted like a strategy's). Its own working
streams as reasoning (`ctx.reason`).

Plugins register in the strategies' registry, under their own slugs, and are told apart by
`wraps = True`. In a model name they come first, joined by "&": `p1&p2&strategy-model` runs
p1 around p2 around the strategy (`none` when there is none).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import ClassVar, Literal, Protocol

from ponder.strategies.base import StrategyConfig
from ponder.strategies.context import RequestContext, Sink
from ponder.types import Completion, Delta, Message

Inner = Callable[[RequestContext, Sequence[Message]], Awaitable[list[Completion]]]
"""The rest of the route: run it on a context and a conversation, get the request's choices."""


class Plugin(Protocol):
    slug: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]]
    Config: ClassVar[type[StrategyConfig]]
    wraps: ClassVar[Literal[True]]

    async def run(
        self, ctx: RequestContext, messages: Sequence[Message], inner: Inner
    ) -> list[Completion]:
        """Return the request's choices, from `inner` or on its own."""
        ...


class PluginFactory(Protocol):
    """What the registry holds for a plugin: usually its class."""

    slug: str
    aliases: tuple[str, ...]
    Config: type[StrategyConfig]
    wraps: Literal[True]

    def __call__(self, config: StrategyConfig) -> Plugin: ...


def reasoning_only(sink: Sink) -> Sink:
    """A sink that passes the rest of the route's reasoning on and holds its answer back, for
    a plugin that sends the answer itself once it has checked or changed it."""

    def forward(delta: Delta) -> None:
        if delta.reasoning:
            sink(Delta(index=delta.index, reasoning=delta.reasoning))

    return forward
