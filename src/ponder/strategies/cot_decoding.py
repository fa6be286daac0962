"""`cot_decoding`: chain-of-thought decoding (Wang & Zhou 2024, "Chain-of-Thought Reasoning
Without Prompting", arXiv:2402.10200). Greedy decoding often answers at once; among the other
likely first tokens are paths that reason first, and the model is more confident of the answer
at the end of those.

The strategy asks for the `k` most likely first tokens of the answer (one call for one token
with `k` alternatives), continues each of them greedily (temperature 0), all `k` at once (the
embedded engine decodes them in the same batches), and scores each path by the model's
confidence in its answer: the mean, over the tokens of the final answer (found as
`ponder.answers` finds it; over every token when the path commits to none), of the margin
between the probabilities of the most likely and the second most likely token at that step.
The client gets the most confident path. With `aggregate`, the confidences of the paths that
give the same answer are summed, and the client gets the most confident path of the answer
with the highest sum.

Calls: 1 + k, the k concurrent. Needs a backend that continues an answer from a given start
and reports log-probabilities (`Capabilities.continuation` and `logprobs`); elsewhere a 400.
The answer carries its path's text and its continuation call's usage (the probe's and the other
paths' tokens count as reasoning); no log-probabilities. Greedy paths are the same on every
run, so each of a request's `n` choices is the same path.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import Field

from ponder.answers import extract_answer, normalize_number
from ponder.strategies.base import StrategyConfig
from ponder.strategies.common import preview
from ponder.strategies.context import RequestContext, gather
from ponder.types import Completion, Message, Sampling

ALTERNATIVES = 2
"""Alternatives each path's tokens are reported with: the top two give the margin."""

_NUMBER = re.compile(r"-?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?")
_NUMERIC_KEY = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")


class CoTDecodingConfig(StrategyConfig):
    k: int = Field(
        5, ge=1, le=10, description="How many of the most likely first tokens to branch on"
    )
    aggregate: bool = Field(
        False,
        description="Sum the confidences of the paths that give the same answer, and answer "
        "with the most confident path of the answer with the highest sum",
    )


@dataclass(frozen=True, slots=True)
class Scored:
    """A path's confidence and what it was read from."""

    confidence: float
    """Mean top-1 minus top-2 probability margin over the scored tokens (0 with none)."""
    answer: str | None
    """The path's final answer, normalized (`extract_answer`)."""
    span: tuple[int, int] | None
    """Where the answer is in the path's token text; None: every token was scored."""
    tokens: int
    """How many tokens were scored."""


@dataclass(frozen=True, slots=True)
class Path:
    first: str
    """The first token the path was forced to start with."""
    first_logprob: float
    completion: Completion
    """The greedy continuation after `first`."""
    scored: Scored

    @property
    def text(self) -> str:
        return self.first + (self.completion.content or "")


def margin(alternatives: Sequence[float]) -> float:
    """Probability of the most likely token minus that of the second (from log-probabilities);
    0 for an unknown distribution."""
    probs = sorted((math.exp(lp) for lp in alternatives), reverse=True)
    if not probs:
        return 0.0
    return probs[0] - (probs[1] if len(probs) > 1 else 0.0)


def answer_span(text: str) -> tuple[int, int] | None:
    """Where in `text` its final answer (`extract_answer`) is written: the last number that
    normalizes to it, or the last place its words appear; None when there is no answer or it
    is not written as such (a fraction written in LaTeX)."""
    key = extract_answer(text)
    if key is None:
        return None
    if _NUMERIC_KEY.fullmatch(key):
        for found in reversed(list(_NUMBER.finditer(text))):
            if normalize_number(found.group()) == key:
                start = found.start() + len(found.group()) - len(found.group().lstrip("$ "))
                return start, found.end()
        return None
    words = key.split()
    if not words:
        return None
    pattern = r"\s+".join(re.escape(w) for w in words)
    if words[0][0].isalnum():
        pattern = r"\b" + pattern
    if words[-1][-1].isalnum():
        pattern += r"\b"
    flags = 0 if len(key) == 1 else re.IGNORECASE  # a choice letter, as written
    matches = list(re.finditer(pattern, text, flags))
    return (matches[-1].start(), matches[-1].end()) if matches else None


def score_path(tokens: Sequence[tuple[str, float]]) -> Scored:
    """Score a path given as (token text, margin) per token: the mean margin over the tokens
    that overlap its answer's span, or over every token when no span is found."""
    text = "".join(t for t, _ in tokens)
    span = answer_span(text)
    chosen: list[float] = []
    at = 0
    for token, m in tokens:
        start, at = at, at + len(token)
        if span is None or (start < span[1] and at > span[0] and at > start):
            chosen.append(m)
    confidence = sum(chosen) / len(chosen) if chosen else 0.0
    return Scored(confidence, extract_answer(text), span, len(chosen))


def path_tokens(
    first: str, first_margin: float, continuation: Completion
) -> list[tuple[str, float]]:
    """A path's tokens with their margins: the forced first token, then the continuation's
    (from its `logprobs.content`)."""
    tokens = [(first, first_margin)] if first else []
    for entry in (continuation.logprobs or {}).get("content") or ():
        tokens.append((str(entry.get("token", "")), margin(_alternatives(entry))))
    return tokens


def _alternatives(entry: Mapping[str, Any]) -> list[float]:
    top = entry.get("top_logprobs") or [entry]
    return [float(t["logprob"]) for t in top]


def choose(paths: Sequence[Path], aggregate: bool) -> tuple[int, dict[str, float]]:
    """The index of the answer path, and (with `aggregate`) the summed confidence per answer.
    Ties go to the earlier path (the more likely first token)."""
    if not aggregate:
        return max(range(len(paths)), key=lambda i: (paths[i].scored.confidence, -i)), {}
    totals: dict[str, float] = {}
    for p in paths:
        key = p.scored.answer or ""
        totals[key] = totals.get(key, 0.0) + p.scored.confidence
    order = [p.scored.answer or "" for p in paths]
    best = max(totals, key=lambda a: (totals[a], -order.index(a)))
    members = [i for i, p in enumerate(paths) if (p.scored.answer or "") == best]
    return max(members, key=lambda i: (paths[i].scored.confidence, -i)), totals


class CoTDecoding:
    slug: ClassVar[str] = "cot_decoding"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = CoTDecodingConfig
    draws_n: ClassVar[bool] = False

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, CoTDecodingConfig)
        self.config = config

    async def run(self, ctx: RequestContext, messages: Sequence[Message]) -> list[Completion]:
        ctx.require("continuation", "logprobs")
        candidates = await ctx.next_tokens(messages, "", self.config.k)
        firsts = _usable(candidates)
        first_margin = margin([lp for _, lp in candidates])
        ctx.step("first_tokens", tokens=[t for t, _ in firsts], logprobs=[lp for _, lp in firsts])
        if firsts:
            listed = ", ".join(f"{t!r} ({math.exp(lp):.2f})" for t, lp in firsts)
            ctx.reason(f"Branching on the first tokens {listed}\n")
        else:
            ctx.reason("No first tokens to branch on: one greedy path.\n")
            firsts = [("", 0.0)]
        sampling = _path_sampling(ctx.sampling)
        continuations = await gather(
            [ctx.continue_from(messages, first, sampling) for first, _ in firsts]
        )
        paths = [
            Path(first, lp, c, score_path(path_tokens(first, first_margin, c)))
            for (first, lp), (c,) in zip(firsts, continuations, strict=True)
        ]
        chosen, totals = choose(paths, self.config.aggregate)
        for i, p in enumerate(paths, start=1):
            ctx.reason(
                f"Path {i} (starts {p.first!r}): answer {p.scored.answer!r}, confidence "
                f"{p.scored.confidence:.3f}: {preview(p.text, 100)}\n"
            )
        if totals:
            ctx.reason(
                "By answer: "
                + ", ".join(
                    f"{a!r} {v:.3f}" for a, v in sorted(totals.items(), key=lambda t: -t[1])
                )
                + "\n"
            )
        ctx.reason(f"Answering with path {chosen + 1}.\n")
        ctx.step(
            "paths",
            paths=[
                {
                    "first": p.first,
                    "answer": p.scored.answer,
                    "confidence": round(p.scored.confidence, 6),
                    "scored_tokens": p.scored.tokens,
                    "answer_found": p.scored.span is not None,
                }
                for p in paths
            ],
            chosen=chosen,
            by_answer={a: round(v, 6) for a, v in totals.items()},
        )
        best = paths[chosen]
        return [
            Completion(
                content=best.text,
                finish_reason=best.completion.finish_reason,
                usage=best.completion.usage,
                stop_sequence=best.completion.stop_sequence,
            )
        ]


def _usable(candidates: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """The candidates a path can start with: text that is whole characters (a token that is
    part of a character's bytes cannot be sent on its own), once each."""
    seen: set[str] = set()
    out = []
    for token, logprob in candidates:
        if token and "\ufffd" not in token and token not in seen:
            seen.add(token)
            out.append((token, logprob))
    return out


def _path_sampling(sampling: Sampling) -> Sampling:
    """Greedy, with the top two alternatives of every token; the client's token limit, stop
    strings and seed; no tools or response format."""
    return sampling.with_(
        temperature=0.0,
        top_p=None,
        logprobs=True,
        top_logprobs=ALTERNATIVES,
        tools=(),
        tool_choice=None,
        response_format=None,
    )
