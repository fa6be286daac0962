"""`sc`: self-consistency. Several answers are sampled from the client's conversation as it
is, each one's final answer is extracted, and the answer most samples agree on wins; the
client gets the full response of the first sample that gave it. A sample cut off by
`max_tokens` has no final answer (its last number is a step, not a result), so it does not
vote; when no sample has an answer, the first sample is returned as it is.

`samples` backend calls drawn concurrently (one call with a native-`n` backend). A failed call
does not fail the request: the vote runs over the samples that came back, and only when every
call fails is the error returned. For the request's `n`, the engine runs `n` independent votes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from pydantic import Field

from ponder.answers import majority_vote
from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import SampleTemperature, cut_off, varied, voice
from ponder.strategies.context import RequestContext
from ponder.types import Completion, Message

NO_ANSWER = "(no answer)"
CUT_OFF = "(cut off at max_tokens: no vote)"


class SelfConsistencyConfig(StrategyConfig):
    samples: int = Field(5, ge=1, le=64, description="How many answers are sampled and voted on")
    temperature: SampleTemperature = 0.7


class SelfConsistency:
    slug: ClassVar[str] = "sc"
    aliases: ClassVar[tuple[str, ...]] = ("self_consistency",)
    Config: ClassVar[type[StrategyConfig]] = SelfConsistencyConfig
    draws_n: ClassVar[bool] = False

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, SelfConsistencyConfig)
        self.config = config

    async def run(self, ctx: RequestContext, messages: Sequence[Message]) -> list[Completion]:
        sampling = varied(ctx.sampling, self.config.temperature)
        samples = await ctx.sample(messages, self.config.samples, sampling, tolerate_failures=True)
        answers = [voice(s) for s in samples]
        for i, (sample, answer) in enumerate(zip(samples, answers, strict=True), start=1):
            shown = answer if answer is not None else NO_ANSWER
            ctx.reason(f"Sample {i}: {CUT_OFF if cut_off(sample) else shown}\n")
        vote = majority_vote(answers)
        ctx.reason(
            f"Vote: {vote.winner if vote.winner is not None else NO_ANSWER} "
            f"({vote.count} of {len(samples)})\n"
        )
        ctx.step(
            "vote",
            tally=vote.tally,
            winner=vote.winner,
            samples=self.config.samples,
            survivors=len(samples),
            cut_off=sum(cut_off(s) for s in samples),
        )
        return [samples[vote.first]]


class MajorityVotingConfig(SelfConsistencyConfig):
    samples: int = Field(6, ge=1, le=64, description="How many answers are sampled and voted on")
    temperature: SampleTemperature = 0.6


class MajorityVoting(SelfConsistency):
    """`majority_voting`: the same vote as `sc`, with the defaults its name stands for elsewhere
    (6 samples at temperature 0.6), so that a client moving its model names over gets the same
    number of samples."""

    slug: ClassVar[str] = "majority_voting"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = MajorityVotingConfig
