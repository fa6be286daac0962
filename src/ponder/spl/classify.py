"""Classifying a query into one of the fixed problem types, with one cheap model call.

The answer is cached per tenant and query (`Store.cache_type`), so an identical query is never
classified twice. The model is asked for the type name only; the first known name in its reply
wins (spaces or hyphens are accepted for underscores), and anything else means `FALLBACK_TYPE`.
"""

from __future__ import annotations

import asyncio
import re

from ponder.spl_store import FALLBACK_TYPE, PROBLEM_TYPES, Store
from ponder.strategies.common import helper_sampling
from ponder.strategies.context import RequestContext
from ponder.types import Message

CLASSIFY_MAX_TOKENS = 16
QUERY_LIMIT = 2000
"""Characters of the query shown to the classifier: the start says what kind of problem it is."""

CLASSIFY_PROMPT = (
    "Classify the problem below into exactly one of these problem types:\n"
    "{types}\n\n"
    "Reply with the type name only.\n\n"
    "Problem:\n{query}"
)

_TYPE_PATTERNS = {
    name: re.compile(
        r"(?<![a-z0-9])" + r"[\s_-]+".join(map(re.escape, name.split("_"))) + r"(?![a-z0-9])"
    )
    for name in PROBLEM_TYPES
}


def type_list() -> str:
    return "\n".join(f"- {name}: {description}" for name, description in PROBLEM_TYPES.items())


def classification_messages(query: str) -> list[Message]:
    """The classifier's conversation: one user turn, without the client's conversation."""
    prompt = CLASSIFY_PROMPT.format(types=type_list(), query=query[:QUERY_LIMIT])
    return [Message("user", prompt)]


def parse_type(reply: str | None) -> str:
    """The known type named earliest in `reply` (the longer name where two start at the same
    place), else `FALLBACK_TYPE`."""
    text = (reply or "").lower()
    found: list[tuple[int, int, str]] = []
    for name, pattern in _TYPE_PATTERNS.items():
        match = pattern.search(text)
        if match is not None:
            found.append((match.start(), -len(match.group()), name))
    return min(found)[2] if found else FALLBACK_TYPE


async def classify(ctx: RequestContext, store: Store, query: str) -> tuple[str, bool]:
    """The query's problem type, and whether it came from the cache. An empty query is
    `FALLBACK_TYPE` without a call."""
    if not query.strip():
        return FALLBACK_TYPE, False
    cached = await asyncio.to_thread(store.cached_type, ctx.tenant, query)
    if cached is not None and cached in PROBLEM_TYPES:
        return cached, True
    (reply,) = await ctx.complete(
        classification_messages(query), helper_sampling(ctx.sampling, CLASSIFY_MAX_TOKENS)
    )
    problem_type = parse_type(reply.content)
    await asyncio.to_thread(store.cache_type, ctx.tenant, query, problem_type)
    return problem_type, False
