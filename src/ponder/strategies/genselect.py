"""`genselect`: generative selection, after the GenSelect step of the AIMO-2 winning solution
(arXiv 2504.16891). Several candidate answers are sampled from the client's conversation; the
model is then shown all of them, numbered, compares them and picks the best one, ending with a
line `Selected: <number>`. The client gets the selected candidate's full text, as it was
written (no new answer is generated, so nothing streams but the working).

The candidates go to the model inside the client's last user turn, after its request, with the
instructions for the selection; the rest of the conversation is kept as it is. A candidate cut
off at the token limit is marked as such. With `selections` above 1, that many selections are
sampled at once and the candidate picked most often wins (a tie goes to the pick made first).
When no selection names a valid candidate, the answer falls back to `showing.best`'s order with no
scores: a candidate that finished over one cut off, then the one whose final answer most
candidates share, then the first.

Calls: `candidates` samples drawn concurrently (one call with a native-`n` backend), then
`selections` selection calls at once (one with native `n`): `candidates + selections` calls
at the defaults (5), or 2 with native `n`. A failed call fails the request. For the request's
`n`, the engine runs `n` independent selections.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from pydantic import Field

from ponder.answers import majority_vote
from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import (
    SampleTemperature,
    helper_sampling,
    preview,
    varied,
)
from ponder.strategies.context import RequestContext
from ponder.strategies.showing import after_request, announce, best, numbered, selection
from ponder.types import Completion, Message

CANDIDATES_INTRO = "Here are {count} candidate answers to my request above, written independently:"
SELECT_PROMPT = (
    "Do not write a new answer. Compare the candidates: for each one, check its reasoning, "
    "steps and calculations against my request and say where it goes wrong, if anywhere. Then "
    "decide which candidate answers my request best. End with one last line, `Selected: N`, "
    "where N is the number of that candidate."
)


class GenSelectConfig(StrategyConfig):
    candidates: int = Field(4, ge=2, le=16, description="How many candidate answers are sampled")
    temperature: SampleTemperature = 0.7
    compare_tokens: int = Field(
        1024, ge=1, description="Token limit of each selection call (the comparison and its pick)"
    )
    compare_temperature: float = Field(
        0.3, ge=0, le=2, description="Temperature of the selection calls"
    )
    selections: int = Field(
        1,
        ge=1,
        le=8,
        description="How many selections are sampled at once; the candidate picked most often "
        "wins (use a compare_temperature above 0 for more than 1)",
    )


class GenSelect:
    slug: ClassVar[str] = "genselect"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = GenSelectConfig
    draws_n: ClassVar[bool] = False

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, GenSelectConfig)
        self.config = config

    async def run(self, ctx: RequestContext, messages: Sequence[Message]) -> list[Completion]:
        config = self.config
        sampling = varied(ctx.sampling, config.temperature)
        candidates = await ctx.sample(messages, config.candidates, sampling)
        announce(ctx, "candidates", "Candidate", candidates)
        prompt = after_request(
            messages,
            CANDIDATES_INTRO.format(count=len(candidates)),
            numbered("Candidate", candidates),
            SELECT_PROMPT,
        )
        judging = helper_sampling(ctx.sampling, config.compare_tokens, config.compare_temperature)
        selections = await ctx.sample(prompt, config.selections, judging)
        picks = [selection(s.content, len(candidates)) for s in selections]
        for reply, pick in zip(selections, picks, strict=True):
            named = f"candidate {pick + 1}" if pick is not None else "no valid candidate"
            ctx.reason(f"Selection ({named}): {preview(reply.content, 200)}\n")
        vote = majority_vote([None if p is None else str(p) for p in picks])
        fallback = vote.winner is None
        if vote.winner is None:
            chosen = best(candidates, [0.0] * len(candidates))
            ctx.reason(f"No valid selection: falling back to candidate {chosen + 1}\n")
        else:
            chosen = int(vote.winner)
        ctx.step(
            "selection",
            selections=[s.content or "" for s in selections],
            picks=[None if p is None else p + 1 for p in picks],
            chosen=chosen + 1,
            fallback=fallback,
        )
        return [candidates[chosen]]
