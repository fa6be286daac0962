"""Confidence math shared by adaptive `sc` and `deepconf`: when a vote is settled, how sure the
model was of each token it wrote, and a vote weighted by that sureness.

- `majority_posterior` and `more_to_settle`: the Beta stopping rule of Adaptive-Consistency
  (Aggarwal et al. 2023, "Let's Sample Step by Step: Adaptive-Consistency for Efficient
  Reasoning and Coding with LLMs").
- `token_confidence`, `group_confidences`, `trace_confidence`: the confidence measures of
  DeepConf (Fu et al. 2025, "Deep Think with Confidence"), read from OpenAI-style
  `logprobs.content` entries ({"token", "logprob", "top_logprobs": [{"token", "logprob"}]}).
- `weighted_vote`: a plurality vote in which each answer counts with its trace's weight.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Any, Literal

Measure = Literal["lowest_group", "tail", "mean"]
"""Which of a trace's confidence measures filters and weighs it."""


# ---- when a vote is settled ----------------------------------------------------------------


def majority_posterior(leader: int, runner_up: int) -> float:
    """The probability that the leading answer is more likely than the runner-up, given `leader`
    and `runner_up` votes: P(x > 1/2) for x ~ Beta(leader + 1, runner_up + 1), the share of the
    two answers' probability that is the leader's under a uniform prior (the Beta criterion of
    Adaptive-Consistency). With whole counts it is an exact binomial sum:
    sum_{j=0}^{leader} C(n, j) / 2^n, n = leader + runner_up + 1."""
    if leader < 0 or runner_up < 0:
        raise ValueError("vote counts are not negative")
    n = leader + runner_up + 1
    return sum(math.comb(n, j) for j in range(leader + 1)) / (1 << n)


def more_to_settle(leader: int, runner_up: int, confidence: float) -> int:
    """The fewest further votes that can settle the vote: how many more votes for the leader
    bring `majority_posterior` to `confidence` (0 when it is there already). No fewer samples
    can settle it: a vote for any other answer only lowers the leader's posterior."""
    more = 0
    while majority_posterior(leader + more, runner_up) < confidence:
        more += 1
    return more


def top_two(counts: Mapping[str, int], leader: str | None) -> tuple[int, int]:
    """(votes of `leader`, votes of the strongest other answer); (0, 0) without a leader."""
    if leader is None:
        return 0, 0
    others = [c for answer, c in counts.items() if answer != leader]
    return counts.get(leader, 0), max(others, default=0)


# ---- how sure the model was ----------------------------------------------------------------


def token_confidence(entry: Mapping[str, Any], top_k: int) -> float:
    """A token's confidence: minus the mean log-probability of its `top_k` most likely
    alternatives (DeepConf's C_i). A peaked distribution has one alternative near 0 and the
    rest far below, so it scores high; a flat one scores low. An entry without alternatives is
    scored on its own log-probability."""
    alternatives = list(entry.get("top_logprobs") or ())[:top_k] or [entry]
    return -fmean(float(a["logprob"]) for a in alternatives)


def token_confidences(entries: Iterable[Mapping[str, Any]], top_k: int) -> list[float]:
    return [token_confidence(e, top_k) for e in entries]


def group_confidences(confidences: Sequence[float], window: int) -> list[float]:
    """The mean confidence of every run of `window` consecutive tokens (DeepConf's group
    confidence, over overlapping windows); a trace shorter than one window is one group of
    all its tokens, and a trace without tokens has none."""
    if not confidences:
        return []
    if len(confidences) < window:
        return [fmean(confidences)]
    return [fmean(confidences[i : i + window]) for i in range(len(confidences) - window + 1)]


@dataclass(frozen=True, slots=True)
class TraceConfidence:
    """A trace's confidence measures (all 0 for a trace without tokens)."""

    tokens: int
    mean: float
    """Mean token confidence over the whole trace."""
    lowest_group: float
    """The lowest group confidence: the trace's weakest stretch of `window` tokens."""
    tail: float
    """Mean token confidence over the last `tail` tokens, where the answer is written."""

    def of(self, measure: Measure) -> float:
        if measure == "lowest_group":
            return self.lowest_group
        if measure == "tail":
            return self.tail
        return self.mean


def trace_confidence(confidences: Sequence[float], window: int, tail: int) -> TraceConfidence:
    """The measures of a trace whose tokens had `confidences`."""
    if not confidences:
        return TraceConfidence(0, 0.0, 0.0, 0.0)
    return TraceConfidence(
        tokens=len(confidences),
        mean=fmean(confidences),
        lowest_group=min(group_confidences(confidences, window)),
        tail=fmean(confidences[-tail:]),
    )


def logprob_entries(logprobs: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """The `content` entries of a choice's or a delta's `logprobs`."""
    return list((logprobs or {}).get("content") or ())


# ---- a vote weighted by confidence ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WeightedVote:
    winner: str | None
    """The answer with the most weight (None when no trace had an answer)."""
    weights: dict[str, float]
    """Each answer's summed weight."""
    counts: dict[str, int]
    """How many traces gave each answer."""

    @property
    def total(self) -> float:
        return sum(self.weights.values())


def weighted_vote(answers: Sequence[str | None], weights: Sequence[float]) -> WeightedVote:
    """Each answer scores the sum of its traces' weights; the highest wins, a tie going to the
    answer more traces gave, then to the one that came first. Traces without an answer do not
    vote."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, (answer, weight) in enumerate(zip(answers, weights, strict=True)):
        if answer is None:
            continue
        sums[answer] = sums.get(answer, 0.0) + weight
        counts[answer] = counts.get(answer, 0) + 1
        first.setdefault(answer, i)
    if not sums:
        return WeightedVote(None, {}, {})
    winner = max(sums, key=lambda a: (sums[a], counts[a], -first[a]))
    return WeightedVote(winner, sums, counts)
