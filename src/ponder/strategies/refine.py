"""`refine`: self-refine. The model drafts an answer, critiques it, and revises it with the
critique in hand, for up to `rounds` rounds. A round whose critique finds nothing to fix
(it answers with the `NO_ISSUES` marker) ends the loop early with the current answer.

Backend calls, one after another (each depends on the previous one): the draft, then per round
a critique and a revision, so `1 + 2 * rounds` when every critique finds something, and `2k`
when the critique of round `k` finds nothing. The draft and the revisions use the client's
sampling; the critiques use the strategy's own temperature and token limit. The last round's
revision is the answer and streams token by token. For the request's `n`, the engine runs `n`
independent refinements.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from pydantic import Field

from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import followup, helper_sampling, preview
from ponder.strategies.context import RequestContext
from ponder.types import Completion, Message

NO_ISSUES = "NO ISSUES"

CRITIQUE_PROMPT = (
    "Review your answer above for mistakes, gaps and omissions: check every fact, step and "
    "calculation against the original request. If there is nothing to fix, reply with exactly "
    f"{NO_ISSUES} and nothing else. Otherwise list each problem briefly and say how to fix it. "
    "Do not write the corrected answer yet."
)

REVISE_PROMPT = (
    "A reviewer found these problems in your answer above:\n\n{critique}\n\n"
    "Write an improved, complete answer to the original request that fixes them. "
    "Reply with the answer only, without mentioning the review."
)

PREVIEW_CHARS = 200


class SelfRefineConfig(StrategyConfig):
    rounds: int = Field(2, ge=1, le=5, description="At most this many critique-revise rounds")
    critique_tokens: int = Field(256, ge=16, le=8192, description="Token limit of each critique")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature of critiques")


class SelfRefine:
    slug: ClassVar[str] = "refine"
    aliases: ClassVar[tuple[str, ...]] = ("self_refine",)
    Config: ClassVar[type[StrategyConfig]] = SelfRefineConfig
    draws_n: ClassVar[bool] = False

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, SelfRefineConfig)
        self.config = config

    async def run(self, ctx: RequestContext, messages: Sequence[Message]) -> list[Completion]:
        rounds = self.config.rounds
        critique_sampling = helper_sampling(
            ctx.sampling, self.config.critique_tokens, self.config.temperature
        )
        (current,) = await ctx.complete(messages)
        ctx.reason(f"Draft: {preview(current.content, PREVIEW_CHARS)}\n")
        ctx.step("draft", answer=current.content)

        for r in range(1, rounds + 1):
            answer = current.content or ""
            (critique,) = await ctx.complete(
                followup(messages, answer, CRITIQUE_PROMPT), critique_sampling
            )
            notes = (critique.content or "").strip()
            ctx.reason(f"Critique {r}: {preview(notes, PREVIEW_CHARS)}\n")
            done = finds_nothing(notes)
            ctx.step("critique", round=r, critique=notes, no_issues=done)
            if done:
                return [current]

            revise = followup(messages, answer, REVISE_PROMPT.format(critique=notes))
            ctx.reason(f"Revision {r}\n")
            if r == rounds:
                (current,) = await ctx.final(revise)
            else:
                (current,) = await ctx.complete(revise)
            ctx.step("revision", round=r, answer=current.content)
        return [current]


def finds_nothing(critique: str) -> bool:
    """Whether the critique is the NO_ISSUES marker (not merely mentions "no issues with X")."""
    return critique.upper().strip(" .!*`\"'\n").startswith(NO_ISSUES) and len(critique) < 40
