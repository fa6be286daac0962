"""`autothink`: an adaptive reasoning budget. One cheap call rates the question's difficulty
(easy, medium or hard); the rating sets how many samples are drawn and voted on (as `sc` does)
and how many tokens each may spend thinking. An easy question costs one short answer; a hard
one several long ones.

1 + samples backend calls (the rating, then one answer for an easy question, or the vote's
samples drawn at once). A rating the model does not give in one of the three words counts as
medium, and the trace says so.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import SampleTemperature, helper_sampling
from ponder.strategies.context import RequestContext
from ponder.strategies.sc import SelfConsistency, SelfConsistencyConfig
from ponder.types import Completion, Message

Difficulty = Literal["easy", "medium", "hard"]
LEVELS: tuple[Difficulty, ...] = ("easy", "medium", "hard")

RATE_PROMPT = (
    "How hard is the last question of this conversation for a careful solver? Answer with one "
    "word: EASY (a fact or one step), MEDIUM (a few steps) or HARD (many steps, or easy to get "
    "wrong).\n\nQuestion:\n{question}"
)
RATING_TOKENS = 4
_WORD = re.compile(r"\b(easy|medium|hard)\b", re.IGNORECASE)


def read_difficulty(text: str | None) -> Difficulty | None:
    """The first of the three words in the rating, if any."""
    found = _WORD.search(text or "")
    if found is None:
        return None
    word = found.group(1).lower()
    return next(level for level in LEVELS if level == word)


Samples = Annotated[int, Field(ge=1, le=64)]
Budget = Annotated[int, Field(ge=16, le=32768)]


class AutoThinkConfig(StrategyConfig):
    samples: tuple[Samples, Samples, Samples] = Field(
        (1, 3, 5), description="Samples voted on for an easy, a medium and a hard question"
    )
    thinking_tokens: tuple[Budget, Budget, Budget] = Field(
        (256, 512, 1024),
        description="Most tokens each sample may spend for an easy, a medium and a hard "
        "question (the client's max_tokens still caps them)",
    )
    temperature: SampleTemperature = 0.7


class AutoThink:
    slug: ClassVar[str] = "autothink"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = AutoThinkConfig
    draws_n: ClassVar[bool] = False

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, AutoThinkConfig)
        self.config = config

    async def run(self, ctx: RequestContext, messages: Sequence[Message]) -> list[Completion]:
        question = next((m.text for m in reversed(messages) if m.role == "user"), "")
        prompt = [Message("user", RATE_PROMPT.format(question=question))]
        (rating,) = await ctx.complete(prompt, helper_sampling(ctx.sampling, RATING_TOKENS))
        read = read_difficulty(rating.content)
        difficulty: Difficulty = read or "medium"
        level = LEVELS.index(difficulty)
        samples = self.config.samples[level]
        budget = self.config.thinking_tokens[level]
        cap = ctx.sampling.max_tokens
        max_tokens = min(budget, cap) if cap is not None else budget
        ctx.step(
            "autothink",
            rating=rating.content,
            difficulty=difficulty,
            understood=read is not None,
            samples=samples,
            max_tokens=max_tokens,
        )
        ctx.reason(
            f"Difficulty: {difficulty}"
            f"{'' if read is not None else ' (the rating was unclear)'}: "
            f"{samples} sample{'s' if samples > 1 else ''} of at most {max_tokens} tokens\n"
        )
        sampling = ctx.sampling.with_(max_tokens=max_tokens)
        if samples == 1:
            return await ctx.final(messages, sampling)
        vote = SelfConsistency(
            SelfConsistencyConfig(samples=samples, temperature=self.config.temperature)
        )
        return await vote.run(replace(ctx, sampling=sampling), messages)
