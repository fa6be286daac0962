"""Entropix-style adaptive sampling: each next token is chosen by a rule that reads the shape of
the model's next-token distribution.

Entropy H = -Σ p log p and varentropy V = Σ p (log p + H)² (in nats, nats²) place the step in
one of four cases:

- low H, low V (`argmax`): the model is sure; take the most likely token;
- high H, low V (`explore`): many tokens are about as likely; sample at a higher temperature;
- low H, high V (`branch`): a few candidates stand out from a long tail; sample among the
  `branch_top_k` most likely at a moderate temperature;
- high H, high V (`resample`): the model is lost; sample at a high temperature within a top-p
  cut.

"High" means at or above the threshold. Everything here is pure numpy, so that the engine
spends one pass over one logits row per adaptive sequence and step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ponder.backends.base import AdaptiveSettings
from ponder.backends.llamacpp.logprobs import log_softmax

__all__ = ["ACTIONS", "Action", "AdaptiveSampler", "AdaptiveSettings", "Draw"]

Action = Literal["argmax", "explore", "branch", "resample"]
ACTIONS: tuple[Action, ...] = ("argmax", "explore", "branch", "resample")


@dataclass(frozen=True, slots=True)
class Draw:
    """How one action samples: temperature 0 is the argmax; top_k 0 keeps every token."""

    temperature: float
    top_k: int = 0
    top_p: float = 1.0


def entropy_varentropy(logprobs: npt.NDArray[np.float64]) -> tuple[float, float]:
    """Entropy and varentropy (nats) of a distribution given as log-probabilities."""
    probs = np.exp(logprobs)
    finite = np.isfinite(logprobs)
    terms = logprobs if finite.all() else np.where(finite, logprobs, 0.0)
    entropy = -float((probs * terms).sum())
    deviation = terms + entropy
    varentropy = float((probs * deviation * deviation).sum())
    return entropy, max(varentropy, 0.0)


def decide(entropy: float, varentropy: float, settings: AdaptiveSettings) -> Action:
    uncertain = entropy >= settings.entropy_threshold
    uneven = varentropy >= settings.varentropy_threshold
    if uncertain:
        return "resample" if uneven else "explore"
    return "branch" if uneven else "argmax"


def draw_for(action: Action, settings: AdaptiveSettings) -> Draw:
    if action == "explore":
        return Draw(settings.explore_temperature)
    if action == "branch":
        return Draw(settings.branch_temperature, top_k=settings.branch_top_k)
    if action == "resample":
        return Draw(settings.resample_temperature, top_p=settings.resample_top_p)
    return Draw(0.0)


def draw(logprobs: npt.NDArray[np.float64], how: Draw, rng: np.random.Generator) -> int:
    """One token from `logprobs`, filtered by top-k then top-p and scaled by the temperature."""
    if how.temperature <= 0:
        return int(np.argmax(logprobs))
    candidates = np.flatnonzero(np.isfinite(logprobs))
    if candidates.size == 0:
        return int(np.argmax(logprobs))
    if 0 < how.top_k < candidates.size:
        best = np.argpartition(-logprobs[candidates], how.top_k - 1)[: how.top_k]
        candidates = candidates[best]
    scaled = logprobs[candidates] / how.temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if how.top_p < 1.0:
        candidates, probs = _nucleus(candidates, probs, how.top_p)
    cumulative = np.cumsum(probs)
    index = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    return int(candidates[min(index, candidates.size - 1)])


def _nucleus(
    candidates: npt.NDArray[np.intp], probs: npt.NDArray[np.float64], top_p: float
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """The smallest most-likely head of `candidates` whose probability reaches `top_p`,
    renormalized. Sorts only as many of the most likely as it needs, not the vocabulary."""
    size = 64
    while True:
        if size >= probs.size:
            order = np.argsort(-probs, kind="stable")
        else:
            head = np.argpartition(-probs, size - 1)[:size]
            order = head[np.argsort(-probs[head], kind="stable")]
        cumulative = np.cumsum(probs[order])
        if cumulative[-1] >= top_p or size >= probs.size:
            break
        size *= 4
    keep = order[: int(np.searchsorted(cumulative, top_p)) + 1]
    return candidates[keep], probs[keep] / probs[keep].sum()


class AdaptiveSampler:
    """One sequence's adaptive rule: its own random stream and its count of each action."""

    def __init__(self, settings: AdaptiveSettings, seed: int) -> None:
        self.settings = settings
        self.rng = np.random.default_rng(seed)
        self.counts: dict[str, int] = dict.fromkeys(ACTIONS, 0)

    def choose(self, logits: npt.NDArray[np.floating[Any]]) -> tuple[int, Action]:
        """The next token from these (already shaped) logits, and the action that chose it."""
        logprobs = log_softmax(logits)
        action = decide(*entropy_varentropy(logprobs), self.settings)
        self.counts[action] += 1
        return draw(logprobs, draw_for(action, self.settings), self.rng), action
