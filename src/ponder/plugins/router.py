"""`router`, a plugin: picks the strategy for each request from what the request is about. One
short classifier call (temperature 0, a few tokens) sorts the last user message into a category
(maths, code, factual, creative, planning, other); a table maps the category to a strategy,
which the server's engine then builds and runs on the conversation as if the client had named
it (`router-model` on a maths word problem runs as `sc-model`).

Why conservative defaults: on the small models Ponder is measured with, only `sc` gained on
maths (a few points, within the noise) while the tree searches, mixtures and tool loops lost,
so every category runs `none` but maths, which runs `sc`. The client gives its own table with
the `table` option (each category it names, over the defaults); every strategy named must be
a known strategy (a 400 otherwise, before any backend call). A classifier reply that names no
category runs the `default` strategy (`none`), and the trace says so.

The router replaces the route's strategy, so nothing may come after it: `router-model` and
`privacy&router-model` run, `router&sc-model` is a 400 (the engine checks `picks_strategy`).
The chosen strategy's own options come from the request's `ponder` field as usual
(`ponder: {"router": {...}, "sc": {"samples": 3}}`).

Calls: one for the classifier, then the chosen strategy's. The classifier's reply and the
choice stream as reasoning and are the trace's `router` step.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated, ClassVar, Literal, get_args

from pydantic import Field

from ponder.errors import InvalidRequest, Unsupported
from ponder.plugins.base import Inner
from ponder.plugins.resources import ENGINE
from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import helper_sampling, last_user_text, preview
from ponder.strategies.context import RequestContext
from ponder.strategies.engine import Engine
from ponder.strategies.resolve import Route
from ponder.types import Completion, Message

Category = Literal["maths", "code", "factual", "creative", "planning", "other"]
CATEGORIES: tuple[Category, ...] = get_args(Category)

DESCRIPTIONS: Mapping[Category, str] = {
    "maths": "arithmetic, a maths word problem, anything to calculate",
    "code": "writing, explaining or fixing a program",
    "factual": "a question of fact with a short answer",
    "creative": "open-ended writing: a story, a poem, an opinion, ideas",
    "planning": "a task of several steps to plan or organise",
    "other": "anything else: a greeting, small talk",
}
DEFAULT_TABLE: Mapping[Category, str] = {c: "sc" if c == "maths" else "none" for c in CATEGORIES}
"""Conservative: `sc` is the one strategy measured to help a small model, and only on maths."""

NAMES: Mapping[str, Category] = {
    **{c: c for c in CATEGORIES},
    "math": "maths",
    "mathematics": "maths",
    "arithmetic": "maths",
    "programming": "code",
    "coding": "code",
    "fact": "factual",
    "lookup": "factual",
    "open-ended": "creative",
    "plan": "planning",
}
"""The words of a classifier reply that name a category."""
_NAME = re.compile(
    r"\b(" + "|".join(sorted(map(re.escape, NAMES), key=len, reverse=True)) + r")\b",
    re.IGNORECASE,
)

CLASSIFY_SYSTEM = "You sort requests into categories. Reply with the category's name only."
CLASSIFY_PROMPT = (
    "Which category fits this request best?\n\n{categories}\n\nThe request:\n{query}\n\n"
    "Reply with one word: {names}."
)
CLASSIFY_MAX_TOKENS = 8
"""The classifier's reply is one word; a few tokens more leave room for a "Category:"."""

Slug = Annotated[str, Field(min_length=1, max_length=64)]


class RouterConfig(StrategyConfig):
    table: dict[Category, Slug] = Field(
        default_factory=dict,
        description="The strategy to run for each category named, over the defaults (maths: "
        "sc, every other category: none)",
    )
    default: Slug = Field(
        "none", description="The strategy to run when the classifier's reply names no category"
    )
    max_query_chars: int = Field(
        2000,
        ge=100,
        le=20_000,
        description="Most characters of the request shown to the classifier (its beginning)",
    )


class Router:
    slug: ClassVar[str] = "router"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = RouterConfig
    wraps: ClassVar[Literal[True]] = True
    picks_strategy: ClassVar[bool] = True
    """It replaces the route's strategy: the engine refuses a strategy after it."""

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, RouterConfig)
        self.config = config

    async def run(
        self, ctx: RequestContext, messages: Sequence[Message], inner: Inner
    ) -> list[Completion]:
        engine = ctx.resources.get(ENGINE)
        if not isinstance(engine, Engine):
            raise Unsupported(
                "the router plugin needs the server's engine, which this server does not lend "
                "its plugins",
                param="model",
            )
        table, default = self.strategies(engine)
        query = last_user_text(messages)[: self.config.max_query_chars]
        sampling = helper_sampling(ctx.sampling, CLASSIFY_MAX_TOKENS)
        (verdict,) = await ctx.complete(classifier_prompt(query), sampling)
        reply = verdict.content or ""
        category = parse_category(reply)
        strategy = table[category] if category is not None else default
        if category is None:
            ctx.reason(f"Router: the classifier's reply names no category; running {strategy}.\n")
        else:
            ctx.reason(f"Router: the request looks like {category}; running {strategy}.\n")
        ctx.step(
            "router",
            reply=preview(reply, 200),
            category=category,
            strategy=strategy,
            fallback=category is None,
        )
        route = Route(ctx.model, (strategy,))
        return await engine.run(route, engine.build(route, ctx.options), ctx, messages)

    def strategies(self, engine: Engine) -> tuple[dict[Category, str], str]:
        """The category -> strategy table and the fallback strategy, as slugs; a 400 naming
        the option when one is not a known strategy."""
        table = {
            c: _strategy(engine, self.config.table.get(c, DEFAULT_TABLE[c]), f"table.{c}")
            for c in CATEGORIES
        }
        return table, _strategy(engine, self.config.default, "default")


def _strategy(engine: Engine, name: str, where: str) -> str:
    param = f"ponder.router.{where}"
    slug = engine.registry.canonical(name)
    if slug is None:
        raise InvalidRequest(f"{param}: unknown strategy {name!r}", param=param)
    if engine.registry.is_plugin(slug):
        raise InvalidRequest(
            f"{param}: {name!r} is a plugin; the router picks a strategy", param=param
        )
    return slug


def classifier_prompt(query: str) -> list[Message]:
    """The classifier's conversation: the categories and the request."""
    categories = "\n".join(f"- {c}: {DESCRIPTIONS[c]}" for c in CATEGORIES)
    names = ", ".join(CATEGORIES)
    text = CLASSIFY_PROMPT.format(categories=categories, query=query, names=names)
    return [Message("system", CLASSIFY_SYSTEM), Message("user", text)]


def parse_category(reply: str) -> Category | None:
    """The category the reply names first (by its name or a synonym), or None."""
    match = _NAME.search(reply)
    return NAMES[match.group(1).lower()] if match else None
