"""Choosing the strategies for a query, and putting them into the conversation.

Ranking: score = 0.6 * relevance + 0.4 * smoothed success rate, where relevance is the TF-IDF
cosine of the query to the strategy text (over the candidates being ranked). Ties go to the
higher success rate, then the older strategy (lower id). In learning mode one candidate, the
least tried, takes one of the places, so that new strategies get the trials that can promote
them.

The strategies reach the model as a clearly delimited reference block after the client's
system prompt, which stays first and verbatim: the client's instructions keep precedence.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ponder.spl_store import StrategyRecord
from ponder.strategies.common import with_system
from ponder.types import Message
from ponder.vectors import Vector, similarities, vector

RELEVANCE_WEIGHT = 0.6
SUCCESS_WEIGHT = 0.4

REFERENCE_BLOCK = (
    "### Reference: problem-solving strategies (problem type: {problem_type})\n"
    "These notes worked on similar problems. Use them where they help; "
    "any other instructions take precedence.\n"
    "{strategies}\n"
    "### End of reference"
)
"""The block added to the system prompt. `{strategies}` is the STRATEGY_ITEMs, a blank line
between them."""
STRATEGY_ITEM = "Strategy {i}:\n{text}"


_STEP_NUMBER = re.compile(r"^\s*\d+[.)]\s*", re.MULTILINE)


def strategy_vector(text: str) -> Vector:
    """A strategy's text vector without its step numbers, which every numbered strategy
    shares and which would otherwise match any number in a query."""
    return vector(_STEP_NUMBER.sub("", text))


@dataclass(frozen=True, slots=True)
class Ranked:
    strategy: StrategyRecord
    relevance: float
    score: float


def rank(query: str, strategies: Sequence[StrategyRecord]) -> list[Ranked]:
    """`strategies` best first."""
    if not strategies:
        return []
    relevance = similarities(vector(query), [strategy_vector(s.text) for s in strategies])
    ranked = [
        Ranked(s, float(r), RELEVANCE_WEIGHT * float(r) + SUCCESS_WEIGHT * s.smoothed_rate)
        for s, r in zip(strategies, relevance, strict=True)
    ]
    ranked.sort(key=lambda x: (-x.score, -x.strategy.smoothed_rate, x.strategy.id))
    return ranked


def select(
    query: str, strategies: Sequence[StrategyRecord], limit: int, learning: bool
) -> list[Ranked]:
    """At most `limit` strategies, best first. Candidates are only considered in learning mode,
    and then at most one: the least attempted (ties: the better ranked)."""
    if limit <= 0:
        return []
    ranked = rank(query, strategies)
    active = [r for r in ranked if r.strategy.status == "active"]
    if not learning:
        return active[:limit]
    candidates = [r for r in ranked if r.strategy.status == "candidate"]
    if not candidates:
        return active[:limit]
    trial = min(candidates, key=lambda r: r.strategy.attempts)  # stable: better ranked first
    chosen = {id(r) for r in [*active[: limit - 1], trial]}
    return [r for r in ranked if id(r) in chosen]


def reference_block(problem_type: str, texts: Sequence[str]) -> str:
    """The block with the strategies numbered ("Strategy 1:" and its text; the texts are
    usually numbered steps themselves), a blank line between them."""
    items = "\n\n".join(STRATEGY_ITEM.format(i=i, text=t.strip()) for i, t in enumerate(texts, 1))
    return REFERENCE_BLOCK.format(problem_type=problem_type, strategies=items)


def with_strategies(
    messages: Sequence[Message], problem_type: str, texts: Sequence[str]
) -> list[Message]:
    """The conversation with the reference block after the client's system prompt (or as the
    system prompt when there is none); unchanged when no strategy was selected."""
    if not texts:
        return list(messages)
    return with_system(messages, reference_block(problem_type, texts))
