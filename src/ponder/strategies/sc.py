"""`sc`: self-consistency. Several answers are sampled from the client's conversation as it
is, each one's final answer is extracted, and the answer most samples agree on wins; the
client gets the full response of the first sample that gave it. A sample cut off by
`max_tokens` has no final answer (its last number is a step, not a result), so it does not
vote; when no sample has an answer, the first sample is returned as it is.

A tie (two or more answers share the most votes, as when every sample says something else)
carries no information about which is right. With `tie_break: greedy` (the default) one more
answer is asked for at temperature 0, the model's own best guess, and decides: it wins if its
answer is among the tied ones, or if no answer had two votes; else the first of the tied ones
stays. A single sample at 0.7 is right less often than the greedy answer (52% against 63% on
GSM8K with Qwen2.5-Coder 1.5B, 20% against 33% with the 0.5B), and on the weaker model the
samples scattered in most items (`benchmarks/RESULTS.md`). The extra call is made only on a
tie. `tie_break: first` keeps the first of the tied answers, with no extra call.

`samples` backend calls drawn concurrently (one call with a native-`n` backend). A failed call
does not fail the request: the vote runs over the samples that came back, and only when every
call fails is the error returned. For the request's `n`, the engine runs `n` independent votes.

With `adaptive`, the samples come in waves and sampling stops once the vote is settled
(Adaptive-Consistency: Aggarwal et al. 2023, "Let's Sample Step by Step: Adaptive-Consistency
for Efficient Reasoning and Coding with LLMs"): after each wave, the probability that the
leading answer beats the runner-up, P(x > 1/2) for x ~ Beta(leader + 1, runner-up + 1)
(`confidence.majority_posterior`), is compared with `confidence`; `samples` is the most drawn.
Each wave is as large as the fewest samples that could settle the vote if all agreed with the
leader (at least `wave`), since no smaller wave can: so the waves draw the samples one-at-a-time
sampling would, in fewer rounds. At the default 0.9, 3 to 0 stops (0.9375), as do 5 to 1 and
6 to 2; 4 to 1 does not (0.891). (At 0.95, the Adaptive-Consistency paper's, 4 to 0 or 6 to 1.
Replayed on four recorded GSM8K and arithmetic runs, `benchmarks/adaptive_replay.py`, 0.9 gave
the accuracy of 0.95 within 0.1 points in each, with 2-8% fewer tokens.) One call per wave with
a native-`n` backend, else one call per sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

from pydantic import Field

from ponder.answers import Vote, majority_vote
from ponder.errors import PonderError
from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import SampleTemperature, cut_off, varied, voice
from ponder.strategies.confidence import majority_posterior, more_to_settle, top_two
from ponder.strategies.context import RequestContext
from ponder.types import Completion, Message, Sampling

NO_ANSWER = "(no answer)"
CUT_OFF = "(cut off at max_tokens: no vote)"


class SelfConsistencyConfig(StrategyConfig):
    samples: int = Field(
        5,
        ge=1,
        le=64,
        description="How many answers are sampled and voted on (with `adaptive`, the most)",
    )
    temperature: SampleTemperature = 0.7
    adaptive: bool = Field(
        False,
        description="Sample in waves and stop once the leading answer wins with probability "
        "`confidence` (Adaptive-Consistency)",
    )
    confidence: float = Field(
        0.9,
        ge=0.5,
        le=0.999,
        description="With `adaptive`: how sure the vote must be that the leading answer beats "
        "the runner-up before sampling stops",
    )
    wave: int = Field(
        1,
        ge=1,
        le=64,
        description="With `adaptive`: the fewest samples drawn at once (each wave draws at "
        "least the samples that could settle the vote)",
    )
    tie_break: Literal["greedy", "first"] = Field(
        "greedy",
        description="When answers tie for the most votes: `greedy` asks once more at "
        "temperature 0 and its answer decides; `first` keeps the first of the tied answers",
    )


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
        if self.config.adaptive:
            return await self._adaptive(ctx, messages, sampling)
        samples = await ctx.sample(messages, self.config.samples, sampling, tolerate_failures=True)
        answers = [voice(s) for s in samples]
        for i, (sample, answer) in enumerate(zip(samples, answers, strict=True), start=1):
            _show(ctx, i, sample, answer)
        return [await self._voted(ctx, messages, samples, answers)]

    async def _adaptive(
        self, ctx: RequestContext, messages: Sequence[Message], sampling: Sampling
    ) -> list[Completion]:
        config = self.config
        samples: list[Completion] = []
        answers: list[str | None] = []
        drawn, posterior, waves = 0, 0.0, 0
        while drawn < config.samples:
            vote = majority_vote(answers)
            need = more_to_settle(*top_two(vote.tally, vote.winner), config.confidence)
            size = min(config.samples - drawn, max(config.wave, need))
            try:
                got = await ctx.sample(messages, size, sampling, tolerate_failures=True)
            except PonderError as exc:
                if not samples:
                    raise
                # the backend (or the call budget) gave out: vote over what came back
                ctx.step("wave_failed", wave=waves + 1, drawn=size, error=str(exc))
                break
            drawn += size
            waves += 1
            for sample in got:
                samples.append(sample)
                answers.append(voice(sample))
                _show(ctx, len(samples), sample, answers[-1])
            vote = majority_vote(answers)
            leader, runner_up = top_two(vote.tally, vote.winner)
            posterior = majority_posterior(leader, runner_up)
            settled = vote.winner is not None and posterior >= config.confidence
            ctx.reason(
                f"Wave {waves}: {vote.winner if vote.winner is not None else NO_ANSWER} leads "
                f"{leader} to {runner_up}; P(it wins) = {posterior:.3f}"
                + (f" >= {config.confidence:g}: stop\n" if settled else "\n")
            )
            ctx.step(
                "wave",
                wave=waves,
                drawn=size,
                tally=vote.tally,
                leader=vote.winner,
                posterior=round(posterior, 6),
                settled=settled,
            )
            if settled:
                break
        voted = await self._voted(
            ctx, messages, samples, answers, drawn=drawn, waves=waves, posterior=round(posterior, 6)
        )
        return [voted]

    async def _voted(
        self,
        ctx: RequestContext,
        messages: Sequence[Message],
        samples: Sequence[Completion],
        answers: Sequence[str | None],
        **trace: object,
    ) -> Completion:
        """The vote over the samples' answers, shown and traced (with `trace`'s fields), and
        the answer it decides."""
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
            **trace,
        )
        return await self._decided(ctx, messages, samples, vote)

    async def _decided(
        self,
        ctx: RequestContext,
        messages: Sequence[Message],
        samples: Sequence[Completion],
        vote: Vote,
    ) -> Completion:
        """The answer the client gets: the first sample of the winning answer, unless answers
        tie for the most votes and `tie_break` is greedy (see the module's docstring)."""
        leaders = vote.leaders
        if self.config.tie_break == "first" or len(leaders) < 2:
            return samples[vote.first]
        try:
            (greedy,) = await ctx.sample(messages, 1, ctx.sampling.with_(temperature=0.0))
        except PonderError as exc:  # the vote's answer stands
            ctx.step("tie_break", leaders=leaders, error=str(exc))
            return samples[vote.first]
        answer = voice(greedy)
        decides = vote.decided_by(answer)
        shown = CUT_OFF if cut_off(greedy) else (answer if answer is not None else NO_ANSWER)
        ctx.reason(
            f"Tie between {', '.join(leaders)}; the greedy answer, {shown}, "
            + ("decides\n" if decides else f"is not among them: {vote.winner} stays\n")
        )
        ctx.step("tie_break", leaders=leaders, greedy=answer, decided=decides)
        return greedy if decides else samples[vote.first]


def _show(ctx: RequestContext, i: int, sample: Completion, answer: str | None) -> None:
    shown = answer if answer is not None else NO_ANSWER
    ctx.reason(f"Sample {i}: {CUT_OFF if cut_off(sample) else shown}\n")


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
