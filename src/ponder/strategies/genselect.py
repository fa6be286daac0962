"""`genselect`: generative selection, after the GenSelect step of the AIMO-2 winning solution
(arXiv 2504.16891). Several candidate answers are sampled from the client's conversation; the
model is then shown all of them, numbered, compares them and picks the best one, ending with a
line `Selected: <number>`. The client gets the selected candidate's full text, as it was
written (no new answer is generated, so nothing streams but the working).

The candidates go to the model inside the client's last user turn, after its request, with the
instructions for the selection; the rest of the conversation is kept as it is. A candidate cut
off at the token limit is marked as such. With `selections` above 1, that many selections are
sampled at once and the candidate picked most often wins (a tie goes to the pick made first).
With `rotate` (the default), each of those selections sees the candidates in another order: the
first in the order they were sampled, the second starting from candidate 2, and so on round.
(On GSM8K the 1.5B model's pick followed position: the last candidate in 16 of 30 items, the
third never. Rotated, a pick that follows position falls on a different candidate each time
rather than adding up on one.)
When no selection names a valid candidate, the answer falls back to `showing.best`'s order with no
scores: a candidate that finished over one cut off, then the one whose final answer most
candidates share, then the first.

Calls: `candidates` samples drawn concurrently (one call with a native-`n` backend), then
`selections` selection calls at once: `candidates + selections` calls at the defaults (5), or 2
with native `n`. With native `n`, selections in one order are one call (`rotate` off), and
rotated ones one call each. A failed call fails the request. For the request's `n`, the engine
runs `n` independent selections.
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
from ponder.strategies.context import RequestContext, gather
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
    rotate: bool = Field(
        True,
        description="Show each of several selections the candidates in another order (rotated "
        "by one each time), so that a pick that follows position does not add up on one "
        "candidate; off, they share one prompt (one call with native n)",
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
        judging = helper_sampling(ctx.sampling, config.compare_tokens, config.compare_temperature)
        orders = rotations(len(candidates), config.selections if config.rotate else 1)
        prompts = [self.prompt(messages, [candidates[i] for i in order]) for order in orders]
        if len(prompts) == 1:
            selections = await ctx.sample(prompts[0], config.selections, judging)
        else:
            selections = [c for (c,) in await gather([ctx.sample(p, 1, judging) for p in prompts])]
        shown = [orders[i % len(orders)] for i in range(len(selections))]
        named = [selection(s.content, len(candidates)) for s in selections]
        picks = [None if p is None else order[p] for p, order in zip(named, shown, strict=True)]
        for reply, place, pick in zip(selections, named, picks, strict=True):
            label = "no valid candidate"
            if place is not None and pick is not None:
                moved = f", shown as {place + 1}" if place != pick else ""
                label = f"candidate {pick + 1}{moved}"
            ctx.reason(f"Selection ({label}): {preview(reply.content, 200)}\n")
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
            orders=[[i + 1 for i in order] for order in shown],
            chosen=chosen + 1,
            fallback=fallback,
        )
        return [candidates[chosen]]

    @staticmethod
    def prompt(messages: Sequence[Message], candidates: Sequence[Completion]) -> list[Message]:
        """The conversation with the candidates, numbered in the order given, and the
        instructions for the selection after its request."""
        return after_request(
            messages,
            CANDIDATES_INTRO.format(count=len(candidates)),
            numbered("Candidate", candidates),
            SELECT_PROMPT,
        )


def rotations(count: int, orders: int) -> list[list[int]]:
    """`orders` orders of `count` candidates (0-based), each starting one further on than the
    one before: with as many orders as candidates, every candidate stands once in each place."""
    return [[(start + i) % count for i in range(count)] for start in range(orders)]
