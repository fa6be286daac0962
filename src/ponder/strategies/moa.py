"""`moa`: mixture of agents. Several drafts are sampled from the client's conversation, the
model critiques them side by side, and then writes one final answer from the drafts and the
critique; that answer streams to a streaming client.

The drafts, and then the critique, go to the model inside the client's last user turn, after its
request, with the instructions for that call; the rest of the conversation is kept as it is.
(Given the drafts as an assistant turn of their own, Qwen2.5-Coder 1.5B did not see them as
drafts: its critique asked for them to be provided, in 5 of 5 GSM8K items.) A draft cut off at
the token limit is marked as such, so that the critique does not take its last line for its
answer.

The drafts are shown with those whose final answer most drafts share first (answers read as `sc`
reads them; drafts cut off before an answer last; otherwise in the order drawn). The 1.5B's
synthesis follows the first draft it is shown: on GSM8K its answer was Draft 1's in 20 of 26
items, among them two where Drafts 2 and 3 agreed on the right answer and Draft 1 alone was
wrong. Where no two drafts agree, as with free text, the order is the order drawn.

Calls: `drafts` samples drawn concurrently (one call with a native-`n` backend), one critique,
one synthesis: `drafts + 2` calls, or 3. A failed call fails the request. For the request's
`n`, the engine runs `n` independent mixtures.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import ClassVar

from pydantic import Field

from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import SampleTemperature, helper_sampling, preview, varied, voice
from ponder.strategies.context import RequestContext
from ponder.strategies.showing import REQUESTED_FORM, after_request, announce, numbered
from ponder.types import Completion, Message

DRAFTS_INTRO = "Here are {count} draft answers to my request above, written independently:"
CRITIQUE_PROMPT = (
    "Do not answer my request yourself yet. For each draft, check its facts, steps and "
    "calculations, and list its strengths and its weaknesses: mistakes, gaps and unclear parts."
)
REVIEW_INTRO = "A review of the drafts:"
SYNTHESIS_PROMPT = (
    "Using the drafts and the review, write the one best answer to my request: complete, with "
    f"its working, {REQUESTED_FORM}. Do not mention the drafts or the review."
)


class MixtureOfAgentsConfig(StrategyConfig):
    drafts: int = Field(3, ge=2, le=8, description="How many draft answers are sampled")
    temperature: SampleTemperature = 0.7
    critique_tokens: int = Field(512, ge=1, description="Token limit of the critique call")


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
        drafts = most_shared_first(await ctx.sample(messages, self.config.drafts, sampling))
        announce(ctx, "drafts", "Draft", drafts)
        listed = (DRAFTS_INTRO.format(count=len(drafts)), numbered("Draft", drafts))
        (critique,) = await ctx.complete(
            after_request(messages, *listed, CRITIQUE_PROMPT),
            helper_sampling(ctx.sampling, self.config.critique_tokens, 0.0),
        )
        review = critique.content or ""
        ctx.reason(f"Critique: {preview(review, 200)}\n")
        ctx.step("critique", critique=review)
        synthesis = after_request(messages, *listed, REVIEW_INTRO, review, SYNTHESIS_PROMPT)
        return await ctx.final(synthesis, ctx.sampling)


def most_shared_first(drafts: Sequence[Completion]) -> list[Completion]:
    """`drafts`, those whose final answer (`voice`) the most drafts share first, in the order
    drawn otherwise; a draft without an answer (cut off before it) counts none."""
    answers = [voice(d) for d in drafts]
    shared = Counter(a for a in answers if a is not None)
    counts = [shared[a] if a is not None else 0 for a in answers]
    return [drafts[i] for i in sorted(range(len(drafts)), key=lambda i: -counts[i])]
