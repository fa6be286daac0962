"""Log-probabilities of generated tokens, from the logits the engine samples from, in the shape
of OpenAI's `logprobs.content` entries. They are the model's own distribution: before the
temperature, penalties, logit bias or grammar that shape the sampling (as OpenAI reports them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt


def log_softmax(logits: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
    shifted = logits.astype(np.float64) - float(np.max(logits))
    result: npt.NDArray[np.float64] = shifted - np.log(np.exp(shifted).sum())
    return result


def _described(token: int, logprob: float, piece: Callable[[int], bytes]) -> dict[str, Any]:
    raw = piece(token)
    return {
        "token": raw.decode("utf-8", "replace"),
        "logprob": logprob,
        "bytes": list(raw),
    }


def token_entry(
    logprobs: npt.NDArray[np.float64], token: int, top: int, piece: Callable[[int], bytes]
) -> dict[str, Any]:
    """The entry of `token` (drawn from `logprobs`) with the `top` most likely tokens as its
    alternatives, most likely first (ties by token id)."""
    entry = _described(token, float(logprobs[token]), piece)
    alternatives: list[dict[str, Any]] = []
    if top > 0:
        k = min(top, logprobs.shape[0])
        candidates = np.argpartition(-logprobs, k - 1)[:k]
        ranked = sorted(candidates.tolist(), key=lambda t: (-logprobs[t], t))
        alternatives = [_described(t, float(logprobs[t]), piece) for t in ranked]
    entry["top_logprobs"] = alternatives
    return entry
