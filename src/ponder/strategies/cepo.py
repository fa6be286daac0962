"""`cepo`: planning and optimization, after Cerebras's CePO. One attempt writes a plan for the
client's request, carries the plan out several times at once, then compares those executions,
works out where they disagree, and writes a refined answer. Several attempts run at once, the
model rates each refined answer from 0 to 10 (all at once), and the client gets the best one,
chosen as `bon` chooses (`showing.best`): finished before `max_tokens` over cut off, then the higher
rating, then the final answer more attempts share, then the earlier. Where the backend reports
log-probabilities, a rating is read as its expected value under them (a judge that writes 8 or
10 for nearly everything is still more or less sure of it).

The plan, the executions and each refined answer go to the model inside the client's last user
turn, after its request, with the instructions for that call; the rest of the conversation
(system prompt, earlier turns) is kept as it is. An execution or answer cut off at the token
limit is marked as such. The refinement call writes its comparison first and its answer after a
`REFINED ANSWER:` line; the client gets what follows the last such line (the whole text when
there is none), and the comparison streams as reasoning.

Calls: per attempt, one plan, `executions` samples drawn at once (one call with a native-`n`
backend) and one refinement; the attempts run at once; then one rating per attempt, all at
once (none with a single attempt). At the defaults (3 attempts, 3 executions) that is
3 x (1 + 3 + 1) + 3 = 18 calls, or 3 x 3 + 3 = 12 with native `n`. The plans and the
executions use the strategy's temperature when the client's is none or 0, so that attempts
differ; the refinements use the client's sampling. A failed call fails the request. For the
request's `n`, the engine runs `n` independent selections.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
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
)
from ponder.strategies.context import RequestContext, gather
from ponder.strategies.showing import REQUESTED_FORM, after_request, choose, marked, numbered
from ponder.types import Completion, Message

PLAN_PROMPT = (
    "Do not answer my request yet. Write a short plan for solving it: the steps to take, in "
    "order, and what each step must work out. Write only the plan."
)
PLAN_INTRO = "A plan for solving my request above:"
EXECUTE_PROMPT = (
    "Follow this plan to answer my request: carry out each step in full, showing its working, "
    "and end with the final answer."
)
EXECUTIONS_INTRO = "Here are {count} executions of the plan, written independently:"
MARKER = "REFINED ANSWER:"
REFINE_PROMPT = (
    "Compare the executions: say where they disagree with each other, with the plan or with my "
    "request, and work out which is right. Then, on a line of its own, write "
    f"`{MARKER}` and after it the one best answer to my request: complete, with its working, "
    f"{REQUESTED_FORM}, without mentioning the plan or the executions."
)
ANSWER_INTRO = "Here is a proposed answer to my request above:"
RATE_PROMPT = (
    "Rate this answer from 0 (wrong or useless) to 10 (correct and complete). Reply with only "
    "the number."
)

_MARKER_LINE = re.compile(rf"^[ \t#*`]*{re.escape(MARKER)}[*`]*", re.IGNORECASE | re.MULTILINE)
# "Therefore, the refined answer is:" ending a line, the answer on the lines after it: how
# Qwen2.5-Coder 1.5B wrote the marker when it wrote one at all (no `REFINED ANSWER:` line in 12
# of 12 refinements on a GSM8K probe)
_MARKER_PHRASE = re.compile(
    r"^[^\n]*\brefined answer(?:\s+is)?\s*:[ \t*`]*$", re.IGNORECASE | re.MULTILINE
)


class PlanningOptimizationConfig(StrategyConfig):
    attempts: int = Field(
        3, ge=1, le=8, description="How many plan-execute-refine attempts run at once"
    )
    executions: int = Field(
        3, ge=2, le=8, description="How many times each plan is carried out, at once"
    )
    temperature: SampleTemperature = 0.7
    plan_tokens: int = Field(256, ge=16, le=8192, description="Token limit of each plan")
    score_tokens: int = Field(8, ge=1, description="Token limit of each rating call")
    confidence: RatingConfidence = True


def split_refinement(text: str) -> tuple[str, str]:
    """The comparison and the answer of a refinement: the answer follows the last marker (a
    line that starts with `MARKER`, or one that ends with "refined answer is:"; when nothing
    follows it, the text before it is the answer); without a marker the whole text is the
    answer."""
    found = sorted(
        [*_MARKER_LINE.finditer(text), *_MARKER_PHRASE.finditer(text)], key=lambda m: m.start()
    )
    if not found:
        return "", text.strip()
    before, after = text[: found[-1].start()].strip(), text[found[-1].end() :].strip()
    return (before, after) if after else ("", before)


class PlanningOptimization:
    slug: ClassVar[str] = "cepo"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = PlanningOptimizationConfig
    draws_n: ClassVar[bool] = False

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, PlanningOptimizationConfig)
        self.config = config

    async def run(self, ctx: RequestContext, messages: Sequence[Message]) -> list[Completion]:
        numbers = range(1, self.config.attempts + 1)
        answers = await gather([self.attempt(ctx, messages, a) for a in numbers])
        if len(answers) == 1:
            return answers
        scores = await self.rate(ctx, messages, answers)
        for a, score in zip(numbers, scores, strict=True):
            ctx.reason(f"Attempt {a} rated {score:g}\n")
        chosen = choose(ctx, "scores", answers, scores)
        return [answers[chosen]]

    async def attempt(
        self, ctx: RequestContext, messages: Sequence[Message], number: int
    ) -> Completion:
        """Plan, carry the plan out `executions` times at once, compare and refine: the refined
        answer."""
        temperature = ctx.sampling.temperature or self.config.temperature
        (planned,) = await ctx.complete(
            after_request(messages, PLAN_PROMPT),
            helper_sampling(ctx.sampling, self.config.plan_tokens, temperature),
        )
        plan = planned.content or ""
        ctx.reason(f"Attempt {number} plan: {preview(plan, 80)}\n")
        with_plan = (PLAN_INTRO, plan)
        executions = await ctx.sample(
            after_request(messages, *with_plan, EXECUTE_PROMPT),
            self.config.executions,
            varied(ctx.sampling, self.config.temperature),
        )
        for i, execution in enumerate(executions, start=1):
            ctx.reason(f"Attempt {number} execution {i}: {preview(execution.content, 60)}\n")
        intro = EXECUTIONS_INTRO.format(count=len(executions))
        (refined,) = await ctx.complete(
            after_request(
                messages, *with_plan, intro, numbered("Execution", executions), REFINE_PROMPT
            ),
            ctx.sampling,
        )
        review, answer = split_refinement(refined.content or "")
        if review:
            ctx.reason(f"Attempt {number} review: {preview(review, 120)}\n")
        ctx.reason(f"Attempt {number} answer: {preview(answer, 80)}\n")
        ctx.step(
            "attempt",
            attempt=number,
            plan=plan,
            executions=[e.content or "" for e in executions],
            review=review,
            answer=answer,
        )
        return replace(refined, content=answer)

    async def rate(
        self, ctx: RequestContext, messages: Sequence[Message], answers: Sequence[Completion]
    ) -> list[float]:
        """The model's rating of each answer, 0 to 10 (0 when it gives no number; its expected
        value where it comes with log-probabilities), all at once."""
        scoring = rating_sampling(
            helper_sampling(ctx.sampling, self.config.score_tokens, 0.0),
            self.config.confidence and ctx.backend.capabilities.logprobs,
        )
        replies = await gather(
            [
                ctx.complete(
                    after_request(messages, ANSWER_INTRO, marked(a), RATE_PROMPT),
                    scoring,
                )
                for a in answers
            ]
        )
        return [read_score(r[0], 0, 10) or 0.0 for r in replies]
