"""Runs a resolved route: one strategy, a pipeline of them, or several side by side, inside its
plugins (the first outermost)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from ponder.errors import InvalidRequest
from ponder.plugins.base import Inner, Plugin
from ponder.strategies.base import Strategy
from ponder.strategies.context import RequestContext, Sink, gather
from ponder.strategies.registry import Registry
from ponder.strategies.resolve import Route
from ponder.types import Completion, Delta, Message

PIPE_PROMPT = (
    "Review the answer above for mistakes and give your final answer to the original request."
)


class Engine:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def build(self, route: Route, options: Mapping[str, Any]) -> list[Strategy]:
        """Instantiate the route's strategies with the client's options (validated here, so
        bad options fail before any backend call)."""
        return [self.registry.create(slug, _options_for(options, slug)) for slug in route.slugs]

    def build_plugins(self, route: Route, options: Mapping[str, Any]) -> list[Plugin]:
        """Instantiate the route's plugins with the client's options, as `build` does. A plugin
        that picks the strategy itself (`picks_strategy`) must be the last one, with no
        strategy after it."""
        for i, slug in enumerate(route.plugins):
            if not getattr(self.registry.factory(slug), "picks_strategy", False):
                continue
            if i != len(route.plugins) - 1 or route.slugs != ("none",):
                raise InvalidRequest(
                    f"the plugin {slug!r} picks the strategy itself, so it comes last, with no "
                    f"strategy after it (as in '{slug}-<model>')",
                    param="model",
                )
        return [
            self.registry.create_plugin(slug, _options_for(options, slug)) for slug in route.plugins
        ]

    async def run(
        self,
        route: Route,
        strategies: Sequence[Strategy],
        ctx: RequestContext,
        messages: Sequence[Message],
        plugins: Sequence[Plugin] = (),
    ) -> list[Completion]:
        """Return `ctx.n` choices per strategy branch, indexed from `ctx.choice_index`: the
        first plugin runs around the second, ..., around the strategies."""

        def layer(i: int) -> Inner:
            async def rest(c: RequestContext, m: Sequence[Message]) -> list[Completion]:
                if i == len(plugins):
                    return await self._strategies(route, strategies, c, m)
                return await plugins[i].run(c, m, layer(i + 1))

            return rest

        return await layer(0)(ctx, messages)

    async def _strategies(
        self,
        route: Route,
        strategies: Sequence[Strategy],
        ctx: RequestContext,
        messages: Sequence[Message],
    ) -> list[Completion]:
        if route.mode == "parallel":
            runs = [
                _draw(s, ctx.for_choice(ctx.choice_index + i * ctx.n, ctx.n), messages)
                for i, s in enumerate(strategies)
            ]
            return [c for choices in await gather(runs) for c in choices]
        if route.mode == "pipeline":
            return await gather(
                [
                    _pipeline(strategies, ctx.for_choice(ctx.choice_index + i), messages)
                    for i in range(ctx.n)
                ]
            )
        return await _draw(strategies[0], ctx, messages)


def _options_for(options: Mapping[str, Any], slug: str) -> Mapping[str, Any]:
    value = options.get(slug)
    return value if isinstance(value, Mapping) else {}


async def _draw(
    strategy: Strategy, ctx: RequestContext, messages: Sequence[Message]
) -> list[Completion]:
    """`ctx.n` choices: in one run when the strategy draws them itself, else n concurrent runs."""
    if strategy.draws_n or ctx.n == 1:
        return list(await strategy.run(ctx, messages))
    runs = [strategy.run(ctx.for_choice(ctx.choice_index + i), messages) for i in range(ctx.n)]
    return [choices[0] for choices in await gather(runs)]


async def _pipeline(
    strategies: Sequence[Strategy], ctx: RequestContext, messages: Sequence[Message]
) -> Completion:
    """Each strategy reviews the previous one's answer. Only the last one streams its answer;
    the earlier ones' answers stream as reasoning."""
    current = list(messages)
    shown = ctx.sink if ctx.shows_reasoning else None
    quiet = replace(ctx, sink=_as_reasoning(shown) if shown is not None else None)
    for i, strategy in enumerate(strategies):
        last = i == len(strategies) - 1
        (answer,) = await strategy.run(ctx if last else quiet, current)
        if last:
            return answer
        ctx.step("pipeline", strategy=strategy.slug, answer=answer.content)
        current = [
            *messages,
            Message(role="assistant", content=answer.content or ""),
            Message(role="user", content=PIPE_PROMPT),
        ]
    raise AssertionError("a pipeline has at least one strategy")


def _as_reasoning(sink: Sink) -> Sink:
    """A sink that passes answer text on as reasoning and drops the end of the choice."""

    def forward(delta: Delta) -> None:
        text = (delta.reasoning or "") + (delta.content or "")
        if text:
            sink(Delta(index=delta.index, reasoning=text))

    return forward
