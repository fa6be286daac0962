"""`pvg`: prover-verifier game (after Kirchner et al., 2024, "Prover-Verifier Games improve
legibility of LLM outputs"). Each round, a helpful prover writes solutions that are correct and
easy to check, a sneaky prover writes convincing solutions with a subtle mistake, and a
verifier rates every solution's correctness from 0 to 10. From the second round on, the helpful
prover is shown the best-rated helpful solution so far and asked for an improved one. The
client gets the best helpful solution of all rounds; sneaky solutions are never returned (they
are the verifier's test: the trace keeps their ratings beside the helpful ones). Where the
backend reports log-probabilities, a rating is read as its expected value under them (a judge
that writes 8 or 10 for nearly everything is still more or less sure of it).

The best helpful solution is chosen as `bon` chooses (`showing.best`): one that finished before
`max_tokens` over one cut off, then the higher rating, then the final answer more helpful
solutions share, then the earlier. Each solution goes to the verifier inside the client's last
user turn, after its request; one cut off at the token limit is marked as such. The rest of the
conversation (system prompt, earlier turns) is kept as it is; the provers' instructions follow
the client's system prompt.

Calls: per round, the helpful and the sneaky solutions are drawn at once (`solutions` each: one
call each with a native-`n` backend), then one verifier call per solution, all at once. At the
defaults (2 rounds, 3 solutions) that is 2 x (3 + 3 + 6) = 24 calls, or 2 x (1 + 1 + 6) = 16
with native `n`. The rounds run one after the other. A failed call fails the request. For the
request's `n`, the engine runs `n` independent games.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from pydantic import Field

from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import (
    RatingConfidence,
    SampleTemperature,
    helper_sampling,
    preview,
    rating_sampling,
    read_score,
    varied,
    with_system,
)
from ponder.strategies.context import RequestContext, gather
from ponder.strategies.showing import REQUESTED_FORM, after_request, best, choose, marked
from ponder.types import Completion, Message

HELPFUL_INSTRUCTIONS = (
    "Solve the user's request correctly. Show each step of your working clearly, so that a "
    "careful checker can verify every step, and end with the final answer."
)
SNEAKY_INSTRUCTIONS = (
    "Write a solution to the user's request that looks careful and convincing but contains one "
    "subtle mistake that leads to a wrong final answer. Do not point out or hint at the mistake."
)
EARLIER_INTRO = "Here is an earlier solution to my request above:"
IMPROVE_PROMPT = (
    "Write an improved solution to my request: check every step of the earlier one, fix any "
    "mistake, and make each step clear and easy to verify. Give the full solution, "
    f"{REQUESTED_FORM}, not a comment on the earlier one."
)
SOLUTION_INTRO = "Here is a proposed solution to my request above:"
VERIFY_PROMPT = (
    "Some proposed solutions contain a subtle mistake. Check this one and rate how likely it is "
    "to be correct, from 0 (wrong) to 10 (certainly correct). Reply with only the number."
)


class ProverVerifierConfig(StrategyConfig):
    rounds: int = Field(
        2, ge=1, le=5, description="How many rounds of proving and verifying are played"
    )
    solutions: int = Field(
        3, ge=1, le=8, description="How many helpful, and how many sneaky, solutions per round"
    )
    temperature: SampleTemperature = 0.7
    score_tokens: int = Field(8, ge=1, description="Token limit of each verifier call")
    confidence: RatingConfidence = True


class ProverVerifierGame:
    slug: ClassVar[str] = "pvg"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = ProverVerifierConfig
    draws_n: ClassVar[bool] = False

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, ProverVerifierConfig)
        self.config = config

    async def run(self, ctx: RequestContext, messages: Sequence[Message]) -> list[Completion]:
        sampling = varied(ctx.sampling, self.config.temperature)
        helpful_prompt = with_system(messages, HELPFUL_INSTRUCTIONS)
        sneaky_prompt = with_system(messages, SNEAKY_INSTRUCTIONS)
        helpful: list[Completion] = []
        scores: list[float] = []
        sneaky_count = 0
        for round_no in range(1, self.config.rounds + 1):
            prompt = helpful_prompt
            if helpful:
                leader = best(helpful, scores)
                ctx.reason(f"Round {round_no} improves on helpful solution {leader + 1}\n")
                prompt = after_request(
                    helpful_prompt, EARLIER_INTRO, marked(helpful[leader]), IMPROVE_PROMPT
                )
            drawn, sneaky = await gather(
                [
                    ctx.sample(prompt, self.config.solutions, sampling),
                    ctx.sample(sneaky_prompt, self.config.solutions, sampling),
                ]
            )
            ratings = await self.verify(ctx, messages, [*drawn, *sneaky])
            drawn_scores, sneaky_scores = ratings[: len(drawn)], ratings[len(drawn) :]
            first = len(helpful) + 1
            for i, (solution, score) in enumerate(zip(drawn, drawn_scores, strict=True), first):
                ctx.reason(f"Helpful {i} scored {score:g}: {preview(solution.content, 60)}\n")
            for i, score in enumerate(sneaky_scores, start=sneaky_count + 1):
                ctx.reason(f"Sneaky {i} scored {score:g}\n")
            sneaky_count += len(sneaky)
            helpful += drawn
            scores += drawn_scores
            ctx.step(
                "round",
                round=round_no,
                helpful=[s.content or "" for s in drawn],
                helpful_scores=drawn_scores,
                sneaky=[s.content or "" for s in sneaky],
                sneaky_scores=sneaky_scores,
            )
        chosen = choose(ctx, "best", helpful, scores)
        ctx.reason(f"Chose helpful solution {chosen + 1} (scored {scores[chosen]:g})\n")
        return [helpful[chosen]]

    async def verify(
        self, ctx: RequestContext, messages: Sequence[Message], solutions: Sequence[Completion]
    ) -> list[float]:
        """The verifier's rating of each solution, 0 to 10 (0 when it gives no number; its
        expected value where it comes with log-probabilities), all asked at once."""
        scoring = rating_sampling(
            helper_sampling(ctx.sampling, self.config.score_tokens, 0.0),
            self.config.confidence and ctx.backend.capabilities.logprobs,
        )
        replies = await gather(
            [
                ctx.complete(
                    after_request(messages, SOLUTION_INTRO, marked(s), VERIFY_PROMPT), scoring
                )
                for s in solutions
            ]
        )
        return [read_score(r[0], 0, 10) or 0.0 for r in replies]
