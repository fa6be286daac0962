"""`moa`: mixture of agents. Several drafts are sampled from the client's conversation, the
model critiques them side by side, and then writes one final answer from the drafts and the
critique; that answer streams to a streaming client.

Calls: `drafts` samples drawn concurrently (one call with a native-`n` backend), one critique,
one synthesis: `drafts + 2` calls, or 3. A failed call fails the request. For the request's
`n`, the engine runs `n` independent mixtures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from pydantic import Field

from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import (
    SampleTemperature,
    followup,
    helper_sampling,
    preview,
    varied,
)
from ponder.strategies.context import RequestContext
from ponder.types import Completion, Message

CRITIQUE_PROMPT = (
    "Above are several draft answers to my request. For each draft, list its strengths "
    "and its weaknesses: mistakes, gaps and unclear parts."
)
SYNTHESIS_PROMPT = (
    "Using the drafts and the critique above, write the one best final answer to my original "
    "request. Reply with the answer only, without mentioning the drafts or the critique."
)


class MixtureOfAgentsConfig(StrategyConfig):
    drafts: int = Field(3, ge=2, le=8, description="How many draft answers are sampled")
    temperature: SampleTemperature = 0.7
    critique_tokens: int = Field(512, ge=1, description="Token limit of the critique call")


def drafts_text(drafts: Sequence[str]) -> str:
    """The drafts as "Draft 1: ...\\n\\nDraft 2: ..."."""
    return "\n\n".join(f"Draft {i}: {d}" for i, d in enumerate(drafts, start=1))


class MixtureOfAgents:
    slug: ClassVar[str] = "moa"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = MixtureOfAgentsConfig
    draws_n: ClassVar[bool] = False

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, MixtureOfAgentsConfig)
        self.config = config

    async def run(self, ctx: RequestContext, messages: Sequence[Message]) -> list[Completion]:
        sampling = varied(ctx.sampling, self.config.temperature)
        drafts = [d.content or "" for d in await ctx.sample(messages, self.config.drafts, sampling)]
        for i, draft in enumerate(drafts, start=1):
            ctx.reason(f"Draft {i}: {preview(draft, 80)}\n")
        ctx.step("drafts", drafts=drafts)
        # The drafts and the critique come in as assistant turns, so user and assistant turns
        # keep alternating (some chat templates refuse two user turns in a row).
        asked = followup(messages, drafts_text(drafts), CRITIQUE_PROMPT)
        (critique,) = await ctx.complete(
            asked, helper_sampling(ctx.sampling, self.config.critique_tokens, 0.0)
        )
        review = critique.content or ""
        ctx.reason(f"Critique: {preview(review, 200)}\n")
        ctx.step("critique", critique=review)
        return await ctx.final(followup(asked, review, SYNTHESIS_PROMPT), ctx.sampling)
