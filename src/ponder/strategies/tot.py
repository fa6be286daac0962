"""`tot`: tree of thoughts. A breadth-first beam search over partial solutions: each node is
the list of reasoning steps so far (the root has none). At every level each node in the beam
proposes `breadth` possible next steps, the model rates every new partial solution from 1 to
10 (where the backend reports log-probabilities, the rating is its expected value under them:
the 1.5B wrote only 5 or 8 on GSM8K, so most ties fell to the order), and the `beam`
best-rated ones (earlier first on a tie) make the next beam. After `depth` levels the model
answers the client's conversation as it is, with the best path in its system
prompt to check, use and finish; that call streams to a streaming client.

A proposed step is kept as one step: a "Step N:" label the model wrote is dropped (the path
numbers its steps itself), and what follows a second step's label is cut, as is an unfinished
last sentence of a step cut off at `thought_tokens`. (On GSM8K, Qwen2.5-Coder 1.5B often wrote
several labelled steps in one proposal, cut off mid-word, which the path then showed as "Step
1: Step 1: ..."; asked at the end only for "the final answer", it copied a guess its second
step had made, and two short steps do not solve a GSM8K problem: the last call finishes it.
Asked to "continue" a path whose steps had already reached the answer, it applied the last
step once more, so 1000 pieces less a quarter, less a third of the rest, became 334 instead
of 500; and asked for the answer by a prompt of Ponder's, it wrote "The answer is N." with
the request's placeholder. The last call is the request itself, as `none` sends it, with the
path beside it: on four probe items, two right instead of one. A path can still end "The answer
is N." (a step that answered with the placeholder), and the answer copied it in 1 of 16 items
of the fourth round: the path's instructions ask for the actual result in place of any
placeholder, as the other strategies' answer-writing calls do.)

Calls: at each level, one sampling of `breadth` next steps per node in the beam (`breadth`
calls, or one with a native-`n` backend), all nodes at once; then one scoring call per new
step, all at once; then one final call. With the defaults and no native `n`:
3 + 3 + 6 + 6 + 1 = 19 calls. A failed call fails the request. For the request's `n`, the
engine runs `n` independent searches.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

from pydantic import Field

from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import (
    RatingConfidence,
    SampleTemperature,
    cut_off,
    followup,
    helper_sampling,
    preview,
    rating_sampling,
    read_score,
    with_system,
    without_step_label,
)
from ponder.strategies.context import RequestContext, gather
from ponder.strategies.showing import REQUESTED_FORM_OF_USER
from ponder.types import Completion, Message

TOT_INSTRUCTIONS = (
    "Work towards solving the user's latest request one step at a time. Each reply must be "
    "exactly one short step of reasoning (one or two sentences) that comes after the steps "
    "already written, not the whole solution and not the final answer."
)
NEXT_STEP_PROMPT = "Write only the next single step of reasoning."
VALUE_PROMPT = (
    "The steps above are a partial solution to my request. How promising are they for reaching "
    "a correct answer, from 1 (a dead end) to 10 (certainly on the right track)? "
    "Reply with only the number."
)
FINAL_INSTRUCTIONS = (
    "Below are steps towards solving the user's latest request, chosen by proposing and rating "
    "possible steps. They may contain mistakes. Reply to the request with the complete "
    "solution: check each of these steps, use those that are right, finish the solution, and "
    f"give the final answer {REQUESTED_FORM_OF_USER}.\n\nSteps:\n"
)
_NEXT_STEP = re.compile(r"\n\s*\**\s*step\s*\d+\s*[:.)]", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")


class TreeOfThoughtsConfig(StrategyConfig):
    breadth: int = Field(3, ge=1, le=8, description="How many next steps each node proposes")
    depth: int = Field(2, ge=1, le=5, description="How many levels of steps are searched")
    beam: int = Field(2, ge=1, le=8, description="How many best-rated nodes each level keeps")
    temperature: SampleTemperature = 0.7
    thought_tokens: int = Field(128, ge=1, description="Token limit of each proposed step")
    score_tokens: int = Field(8, ge=1, description="Token limit of each scoring call")
    confidence: RatingConfidence = True


def one_step(proposal: Completion) -> str:
    """A proposed step as one step: without the model's own "Step N:" label, cut before the
    label of a second step, and, when cut off at the token limit, without its unfinished last
    sentence (unless that is all there is)."""
    text = without_step_label(proposal.content or "")
    following = _NEXT_STEP.search(text)
    if following is not None:
        return text[: following.start()].strip()
    if cut_off(proposal):
        ends = [m.end() for m in _SENTENCE_END.finditer(text)]
        if ends:
            text = text[: ends[-1]]
    return text.strip()


def steps_text(steps: Sequence[str]) -> str:
    """A node's steps as the text of an assistant turn: "Step 1: ...\\nStep 2: ..."."""
    return "\n".join(f"Step {i}: {step}" for i, step in enumerate(steps, start=1))


class TreeOfThoughts:
    slug: ClassVar[str] = "tot"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = TreeOfThoughtsConfig
    draws_n: ClassVar[bool] = False

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, TreeOfThoughtsConfig)
        self.config = config

    def _expansion_prompt(self, messages: Sequence[Message], steps: Sequence[str]) -> list[Message]:
        instructed = with_system(messages, TOT_INSTRUCTIONS)
        if not steps:
            return instructed
        return followup(instructed, steps_text(steps), NEXT_STEP_PROMPT)

    async def run(self, ctx: RequestContext, messages: Sequence[Message]) -> list[Completion]:
        cfg = self.config
        thinking = helper_sampling(
            ctx.sampling, cfg.thought_tokens, ctx.sampling.temperature or cfg.temperature
        )
        scoring = rating_sampling(
            helper_sampling(ctx.sampling, cfg.score_tokens, 0.0),
            cfg.confidence and ctx.backend.capabilities.logprobs,
        )
        beam: list[list[str]] = [[]]
        best_score = 0.0
        for level in range(1, cfg.depth + 1):
            expansions = await gather(
                [
                    ctx.sample(self._expansion_prompt(messages, node), cfg.breadth, thinking)
                    for node in beam
                ]
            )
            children = [
                [*node, one_step(c)]
                for node, proposed in zip(beam, expansions, strict=True)
                for c in proposed
            ]
            ratings = await gather(
                [
                    ctx.complete(followup(messages, steps_text(child), VALUE_PROMPT), scoring)
                    for child in children
                ]
            )
            scores = [read_score(r[0], 1, 10) or 1.0 for r in ratings]
            kept = sorted(range(len(children)), key=lambda i: -scores[i])[: cfg.beam]
            beam = [children[i] for i in kept]
            best_score = scores[kept[0]]
            ctx.reason(f"Level {level}: best score {best_score:g}: {preview(beam[0][-1], 80)}\n")
            ctx.step(
                "level",
                depth=level,
                steps=[child[-1] for child in children],
                scores=scores,
                kept=kept,
            )
        best = beam[0]
        ctx.step("best_path", steps=best, score=best_score)
        final = with_system(messages, FINAL_INSTRUCTIONS + steps_text(best))
        return await ctx.final(final, ctx.sampling)
