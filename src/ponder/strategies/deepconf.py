"""`deepconf`: a vote over sampled traces that listens to how sure the model was as it wrote
them (Fu et al. 2025, "Deep Think with Confidence"). Each token's confidence is minus the mean
log-probability of its `top_logprobs` most likely alternatives; a trace's lowest group
confidence is its weakest stretch of `window` tokens, its tail confidence the mean over its
last `tail` tokens (`confidence.trace_confidence`). The backend must report log-probabilities
(`Capabilities.logprobs`); without them the request is a 400.

- `offline`: `samples` traces are drawn at once (one call with a native-`n` backend); the
  `keep` share most confident by `measure` vote, each answer weighing the sum of its traces'
  confidence, so a few sure traces can outvote more unsure ones.
- `online`: `warmup` traces are drawn at once; the threshold is the lowest group confidence of
  the least confident of their `keep` share. More traces are then streamed, several at once,
  and a trace is cut (its stream closed) as soon as the mean confidence of its last `window`
  tokens falls below the threshold: a cut trace, and a warmup trace below the threshold, does
  not vote. Sampling stops once the vote is settled (the Beta rule of adaptive `sc`, over the
  voting traces), or at `samples` traces in all. What cut traces and traces never drawn would
  have cost is traced as an estimate of the tokens saved.

Traces cut off by `max_tokens`, or without a final answer, do not vote. The client gets the most
confident voting trace of the winning answer (the most confident trace when none voted), with
log-probabilities only when it asked for them. A failed call does not fail the request unless
every call of the warmup (or of the offline draw) fails. For the request's `n`, the engine runs
`n` independent votes.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, replace
from statistics import fmean
from typing import ClassVar, Literal, cast

from pydantic import Field

from ponder.backends.assemble import Assembler
from ponder.errors import PonderError, Unsupported
from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import SampleTemperature, cut_off, varied, voice
from ponder.strategies.confidence import (
    Measure,
    TraceConfidence,
    logprob_entries,
    majority_posterior,
    more_to_settle,
    token_confidence,
    token_confidences,
    top_two,
    trace_confidence,
    weighted_vote,
)
from ponder.strategies.context import RequestContext
from ponder.tokens import count_prompt_tokens
from ponder.types import Completion, Delta, Message, Sampling, Usage

NO_ANSWER = "(no answer)"


class DeepConfConfig(StrategyConfig):
    mode: Literal["offline", "online"] = Field(
        "online",
        description="offline: draw every trace, then filter and vote; online: cut unsure "
        "traces while they are written, and stop once the vote is settled",
    )
    samples: int = Field(8, ge=1, le=64, description="How many traces are drawn at most")
    warmup: int = Field(
        4, ge=1, le=64, description="Online: traces drawn first, to set the threshold"
    )
    keep: float = Field(
        0.9,
        gt=0,
        le=1,
        description="The share of traces, most confident first, that vote (online: that the "
        "warmup's threshold lets through)",
    )
    measure: Measure = Field(
        "lowest_group",
        description="The trace confidence that filters (offline) and weighs the votes",
    )
    top_logprobs: int = Field(
        5, ge=1, le=20, description="Alternatives per token that a token's confidence averages"
    )
    window: int = Field(32, ge=1, le=4096, description="Tokens in a group (sliding window)")
    tail: int = Field(64, ge=1, le=4096, description="Tokens at the end that tail confidence reads")
    confidence: float = Field(
        0.95,
        ge=0.5,
        le=0.999,
        description="Online: how sure the vote must be that the leading answer beats the "
        "runner-up before sampling stops",
    )
    wave: int = Field(
        1,
        ge=1,
        le=64,
        description="Online: the fewest traces streamed at once after the warmup (each wave "
        "streams at least the traces that could settle the vote)",
    )
    temperature: SampleTemperature = 0.7


@dataclass(frozen=True, slots=True)
class Trace:
    completion: Completion
    answer: str | None
    confidence: TraceConfidence
    cut_at: int | None = None
    """Online: the tokens received when the trace was cut (None: it ran to its end)."""


class DeepConf:
    slug: ClassVar[str] = "deepconf"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = DeepConfConfig
    draws_n: ClassVar[bool] = False

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, DeepConfConfig)
        self.config = config

    async def run(self, ctx: RequestContext, messages: Sequence[Message]) -> list[Completion]:
        backend = ctx.backend
        if not backend.capabilities.logprobs:
            raise Unsupported(
                f"deepconf needs token log-probabilities, which the backend {backend.name!r} "
                "does not give",
                param="model",
            )
        wanted = max(self.config.top_logprobs, ctx.sampling.top_logprobs or 0)
        sampling = varied(ctx.sampling, self.config.temperature).with_(
            logprobs=True, top_logprobs=wanted
        )
        if self.config.mode == "offline":
            chosen = await self._offline(ctx, messages, sampling)
        else:
            chosen = await self._online(ctx, messages, sampling)
        if not ctx.sampling.logprobs:
            chosen = replace(chosen, logprobs=None)
        return [chosen]

    # ---- offline -------------------------------------------------------------------------------

    async def _offline(
        self, ctx: RequestContext, messages: Sequence[Message], sampling: Sampling
    ) -> Completion:
        config = self.config
        drawn = await ctx.sample(messages, config.samples, sampling, tolerate_failures=True)
        traces = [self._measured(c) for c in drawn]
        scores = [t.confidence.of(config.measure) for t in traces]
        threshold = kept_threshold(scores, config.keep)
        voting = [score >= threshold for score in scores]
        for i, (trace, votes) in enumerate(zip(traces, voting, strict=True), start=1):
            ctx.reason(
                f"Trace {i}: {_shown(trace)}, confidence {scores[i - 1]:.3f}"
                f"{'' if votes else ' (dropped)'}\n"
            )
        ctx.step(
            "traces",
            measure=config.measure,
            threshold=round(threshold, 6),
            traces=[_detail(t, v) for t, v in zip(traces, voting, strict=True)],
        )
        return self._vote(ctx, traces, voting, drawn=len(traces))

    # ---- online --------------------------------------------------------------------------------

    async def _online(
        self, ctx: RequestContext, messages: Sequence[Message], sampling: Sampling
    ) -> Completion:
        config = self.config
        warmup = min(config.warmup, config.samples)
        drawn_warmup = await ctx.sample(messages, warmup, sampling, tolerate_failures=True)
        traces = [self._measured(c) for c in drawn_warmup]
        threshold = kept_threshold([t.confidence.lowest_group for t in traces], config.keep)
        voting = [t.confidence.lowest_group >= threshold for t in traces]
        for i, (trace, votes) in enumerate(zip(traces, voting, strict=True), start=1):
            ctx.reason(
                f"Warmup trace {i}: {_shown(trace)}, lowest group confidence "
                f"{trace.confidence.lowest_group:.3f}{'' if votes else ' (below: no vote)'}\n"
            )
        ctx.reason(f"Threshold: {threshold:.3f}\n")
        ctx.step(
            "warmup",
            threshold=round(threshold, 6),
            traces=[_detail(t, v) for t, v in zip(traces, voting, strict=True)],
        )
        drawn, waves = warmup, 0
        while True:
            counted = weighted_vote(
                [t.answer if v else None for t, v in zip(traces, voting, strict=True)],
                [t.confidence.of(config.measure) for t in traces],
            )
            leader, runner_up = top_two(counted.counts, counted.winner)
            posterior = majority_posterior(leader, runner_up)
            settled = counted.winner is not None and posterior >= config.confidence
            ctx.reason(
                f"{counted.winner if counted.winner is not None else NO_ANSWER} leads "
                f"{leader} to {runner_up}; P(it wins) = {posterior:.3f}"
                + (f" >= {config.confidence:g}: stop\n" if settled else "\n")
            )
            if settled or drawn >= config.samples:
                break
            need = more_to_settle(leader, runner_up, config.confidence)
            size = min(config.samples - drawn, max(config.wave, need))
            results = await asyncio.gather(
                *(self._streamed(ctx, messages, sampling, threshold) for _ in range(size)),
                return_exceptions=True,
            )
            new = [r for r in results if isinstance(r, Trace)]
            failures = [r for r in results if isinstance(r, BaseException)]
            for failure in failures:
                if not isinstance(failure, PonderError):
                    raise failure  # a bug, not a backend failure: never swallowed
            if not new:
                # the backend (or the call budget) gave out: vote over what came back
                ctx.step("wave_failed", wave=waves + 1, drawn=size, error=str(failures[0]))
                break
            drawn += size
            waves += 1
            for trace in new:
                votes = trace.cut_at is None and trace.confidence.lowest_group >= threshold
                traces.append(trace)
                voting.append(votes)
                ctx.reason(f"Trace {len(traces)}: {_streamed_line(trace, votes)}\n")
            flags = voting[len(voting) - len(new) :]
            ctx.step(
                "wave",
                wave=waves,
                streamed=size,
                failed=len(failures),
                traces=[_detail(t, v) for t, v in zip(new, flags, strict=True)],
            )
        self._savings(ctx, traces, drawn)
        return self._vote(ctx, traces, voting, drawn=drawn)

    async def _streamed(
        self,
        ctx: RequestContext,
        messages: Sequence[Message],
        sampling: Sampling,
        threshold: float,
    ) -> Trace:
        """One trace, streamed and cut as soon as its last `window` tokens' mean confidence
        falls below `threshold`."""
        window, top = self.config.window, self.config.top_logprobs
        assembler = Assembler(1)
        confidences: list[float] = []
        received = 0
        cut = False
        # ctx.stream is an async generator: closing it ends the backend's stream
        deltas = cast(AsyncGenerator[Delta, None], ctx.stream(messages, sampling))
        try:
            async for delta in deltas:
                assembler.add(delta)
                entries = logprob_entries(delta.logprobs)
                received += len(entries)
                for entry in entries:
                    confidences.append(token_confidence(entry, top))
                    if len(confidences) >= window and fmean(confidences[-window:]) < threshold:
                        cut = True
                        break
                if cut:
                    break
        finally:
            await deltas.aclose()
        (completion,) = assembler.completions()
        if not cut:
            return Trace(
                completion,
                voice(completion),
                trace_confidence(confidences, window, self.config.tail),
            )
        # a cut stream never reports its usage: what it cost is counted here, its output as
        # the tokens whose log-probabilities came
        usage = Usage(count_prompt_tokens(messages), received)
        ctx.meter.record(usage)
        return Trace(
            replace(completion, usage=usage),
            None,
            trace_confidence(confidences, window, self.config.tail),
            cut_at=received,
        )

    def _savings(self, ctx: RequestContext, traces: Sequence[Trace], drawn: int) -> None:
        """Trace what the cuts and the early stop saved: each cut trace the tokens a finished
        trace takes on average beyond what it had written, each trace never drawn all of
        them (an estimate: a trace's length is known only once it is written)."""
        finished = [t.completion.usage.completion_tokens for t in traces if t.cut_at is None]
        cut = [t.cut_at for t in traces if t.cut_at is not None]
        if not finished:
            return
        average = fmean(finished)
        saved = sum(max(0.0, average - c) for c in cut) + (self.config.samples - drawn) * average
        if cut or drawn < self.config.samples:
            ctx.reason(
                f"Cut {len(cut)} trace(s) after {sum(cut)} tokens; stopped at {drawn} of "
                f"{self.config.samples}: about {round(saved)} tokens saved\n"
            )
        ctx.step(
            "savings",
            drawn=drawn,
            cut=len(cut),
            cut_tokens=sum(cut),
            finished_mean_tokens=round(average, 3),
            tokens_saved_estimate=round(saved),
        )

    # ---- shared --------------------------------------------------------------------------------

    def _measured(self, completion: Completion) -> Trace:
        confidences = token_confidences(
            logprob_entries(completion.logprobs), self.config.top_logprobs
        )
        return Trace(
            completion,
            voice(completion),
            trace_confidence(confidences, self.config.window, self.config.tail),
        )

    def _vote(
        self, ctx: RequestContext, traces: Sequence[Trace], voting: Sequence[bool], drawn: int
    ) -> Completion:
        """The confidence-weighted vote of the traces that may vote; the most confident trace
        of the winning answer (the most confident trace not cut when none voted)."""
        measure = self.config.measure
        scores = [t.confidence.of(measure) for t in traces]
        vote = weighted_vote(
            [t.answer if v else None for t, v in zip(traces, voting, strict=True)], scores
        )
        ranked = sorted(range(len(traces)), key=lambda i: -scores[i])
        finished = [i for i in ranked if traces[i].cut_at is None] or ranked
        chosen = next(
            (i for i in finished if voting[i] and traces[i].answer == vote.winner), finished[0]
        )
        if vote.winner is None:
            ctx.reason(f"Vote: {NO_ANSWER}\n")
        else:
            ctx.reason(
                f"Vote: {vote.winner} (weight {vote.weights[vote.winner]:.3f} of "
                f"{vote.total:.3f}, {vote.counts[vote.winner]} of {sum(voting)} votes)\n"
            )
        ctx.step(
            "vote",
            winner=vote.winner,
            weights={a: round(w, 6) for a, w in vote.weights.items()},
            tally=vote.counts,
            samples=self.config.samples,
            drawn=drawn,
            survivors=len(traces),
            voters=sum(voting),
            chosen=chosen,
        )
        return traces[chosen].completion


def kept_threshold(scores: Sequence[float], keep: float) -> float:
    """The score of the least confident of the `keep` share of `scores` (at least one), most
    confident first: the traces scoring at least this are kept. -inf without scores."""
    if not scores:
        return -math.inf
    count = max(1, math.floor(keep * len(scores) + 1e-9))
    return sorted(scores, reverse=True)[count - 1]


def _shown(trace: Trace) -> str:
    if cut_off(trace.completion):
        return "(cut off at max_tokens: no vote)"
    return trace.answer if trace.answer is not None else NO_ANSWER


def _streamed_line(trace: Trace, votes: bool) -> str:
    if trace.cut_at is not None:
        return f"cut after {trace.cut_at} tokens: its confidence fell below the threshold"
    suffix = "" if votes else " (below: no vote)"
    return f"{_shown(trace)}, lowest group confidence {trace.confidence.lowest_group:.3f}{suffix}"


def _detail(trace: Trace, votes: bool) -> dict[str, object]:
    c = trace.confidence
    return {
        "answer": trace.answer,
        "tokens": c.tokens,
        "lowest_group": round(c.lowest_group, 6),
        "tail": round(c.tail, 6),
        "mean": round(c.mean, 6),
        "votes": votes,
        "cut_at": trace.cut_at,
    }
