"""`bon`: best-of-n. Several candidate answers are sampled from the client's conversation, the
model rates each one from 0 to 10, and the client gets the best candidate (`showing.best`, with
agreement first): one that finished before `max_tokens` over one cut off, then one whose final
answer more candidates share, then the best-rated, then the first. Where the backend reports
log-probabilities, a rating is read as its expected value under them, so equal written ratings
need not tie.

The model's own rating is a weak judge, weaker than the candidates' agreement. On GSM8K the
1.5B wrote 10 for all three candidates in every one of 50 problems, so the shared answer chose
(60.0%, -2.0 points against `none`); when the ratings were read from log-probabilities, with
the rating first, nothing tied and the judge chose: 44.0%, -18.0 [-31.7, -3.0], worse than one
sample. So the rating only chooses among candidates whose answers are equally shared (all
different, or two pairs).

Calls: `candidates` samples drawn concurrently (one call with a native-`n` backend), then one
scoring call per candidate, all at once: `2 * candidates` calls, or `1 + candidates`. A failed
call fails the request. For the request's `n`, the engine runs `n` independent selections.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from pydantic import Field

from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import (
    RatingConfidence,
    SampleTemperature,
    followup,
    helper_sampling,
    rating_sampling,
    read_score,
    varied,
)
from ponder.strategies.context import RequestContext, gather
from ponder.strategies.showing import choose
from ponder.types import Completion, Message

SCORE_PROMPT = (
    "Rate the answer above from 0 (wrong or useless) to 10 (correct and complete). "
    "Reply with only the number."
)


class BestOfNConfig(StrategyConfig):
    candidates: int = Field(3, ge=2, le=16, description="How many candidate answers are sampled")
    temperature: SampleTemperature = 0.7
    score_tokens: int = Field(8, ge=1, description="Token limit of each scoring call")
    confidence: RatingConfidence = True


class BestOfN:
    slug: ClassVar[str] = "bon"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = BestOfNConfig
    draws_n: ClassVar[bool] = False

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, BestOfNConfig)
        self.config = config

    async def run(self, ctx: RequestContext, messages: Sequence[Message]) -> list[Completion]:
        sampling = varied(ctx.sampling, self.config.temperature)
        candidates = await ctx.sample(messages, self.config.candidates, sampling)
        ctx.step("candidates", count=len(candidates))
        scoring = rating_sampling(
            helper_sampling(ctx.sampling, self.config.score_tokens, 0.0),
            self.config.confidence and ctx.backend.capabilities.logprobs,
        )
        ratings = await gather(
            [
                ctx.complete(followup(messages, c.content or "", SCORE_PROMPT), scoring)
                for c in candidates
            ]
        )
        scores = [read_score(r[0], 0, 10) or 0.0 for r in ratings]
        for i, score in enumerate(scores, start=1):
            ctx.reason(f"Candidate {i} scored {score:g}\n")
        chosen = choose(ctx, "scores", candidates, scores, agreement_first=True)
        return [candidates[chosen]]
