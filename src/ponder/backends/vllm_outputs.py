"""Between Ponder's types and vLLM's: sampling as `SamplingParams` keywords, and the engine's
cumulative outputs as deltas, log-probabilities and tool calls included. Pure functions and
classes that need no vLLM (the backend is `ponder.backends.vllm`)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from ponder.backends.tool_calls import ToolCallParser, closing_deltas
from ponder.types import Delta, FinishReason, Sampling


def top_logprobs(s: Sampling) -> int | None:
    """Alternatives to report per token; None: no logprobs at all."""
    return (s.top_logprobs or 0) if s.logprobs else None


def sampling_kwargs(
    s: Sampling, n: int = 1, default_max_tokens: int | None = None
) -> dict[str, Any]:
    """`SamplingParams` keywords for `s`. What `s` leaves unset keeps vLLM's default, except
    `max_tokens`: vLLM's default is 16, so it falls back to `default_max_tokens`. Tools are
    the prompt's (the chat template shows them), not the sampler's."""
    optional = {
        "temperature": s.temperature,
        "top_p": s.top_p,
        "max_tokens": s.max_tokens if s.max_tokens is not None else default_max_tokens,
        "seed": s.seed,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "logprobs": top_logprobs(s),
        "stop": list(s.stop) or None,
    }
    return {"n": n} | {k: v for k, v in optional.items() if v is not None}


def structured_output(s: Sampling) -> dict[str, Any] | None:
    """What `response_format` constrains the output to, as keywords of vLLM's structured-output
    parameters (`StructuredOutputsParams`, `GuidedDecodingParams` before it); None: free text.
    A `json_schema` without a schema asks for any JSON object, as `json_object` does."""
    fmt = s.response_format or {}
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        if schema:
            return {"json": dict(schema)}
        return {"json_object": True}
    if fmt.get("type") == "json_object":
        return {"json_object": True}
    return None


def finish_of(reason: str | None) -> FinishReason:
    return "length" if reason == "length" else "stop"


def logprobs_content(
    token_ids: Sequence[int], logprobs: Sequence[Mapping[int, Any]], top_n: int
) -> list[dict[str, Any]]:
    """vLLM's per-token `{token_id: Logprob}` maps as OpenAI `logprobs.content` entries."""

    def entry(lp: Any) -> dict[str, Any]:
        token = lp.decoded_token or ""
        return {"token": token, "logprob": float(lp.logprob), "bytes": list(token.encode())}

    out = []
    for token_id, candidates in zip(token_ids, logprobs, strict=False):
        if (chosen := candidates.get(token_id)) is not None:
            ranked = sorted(candidates.values(), key=lambda lp: lp.rank or 0)[:top_n]
            out.append({**entry(chosen), "top_logprobs": [entry(lp) for lp in ranked]})
    return out


class CumulativeDeltas:
    """Turns vLLM's cumulative `CompletionOutput`s (each holds a choice's whole text so far;
    with n > 1 they may come one choice at a time) into deltas of new text, and exactly one
    finishing delta per choice."""

    def __init__(self, top_logprobs: int | None = None) -> None:
        self._top = top_logprobs
        self._text: dict[int, str] = {}
        self._tokens: dict[int, int] = {}
        self._finished: set[int] = set()

    @property
    def completion_tokens(self) -> int:
        return sum(self._tokens.values())

    def feed(self, outputs: Iterable[Any]) -> list[Delta]:
        deltas = []
        for c in outputs:
            i = c.index
            if i in self._finished:
                continue
            seen, seen_tokens = self._text.get(i, ""), self._tokens.get(i, 0)
            new = ""
            if c.text.startswith(seen):  # vLLM holds back text a stop string may remove
                new, self._text[i] = c.text[len(seen) :], c.text
            lp = None
            if self._top is not None and c.logprobs:
                ids, lps = c.token_ids[seen_tokens:], c.logprobs[seen_tokens:]
                lp = {"content": logprobs_content(ids, lps, self._top)} if len(ids) else None
            self._tokens[i] = max(seen_tokens, len(c.token_ids))
            if new or lp:
                deltas.append(Delta(index=i, content=new or None, logprobs=lp))
            if c.finish_reason is not None:
                self._finished.add(i)
                deltas.append(Delta(index=i, finish_reason=finish_of(c.finish_reason)))
        return deltas

    def finish(self, n: int) -> list[Delta]:
        """Finishing deltas for the choices the engine never finished."""
        return [Delta(index=i, finish_reason="stop") for i in range(n) if i not in self._finished]


class ToolCallDeltas:
    """Takes the tool calls out of a stream's deltas, choice by choice (`ToolCallParser`):
    content goes on as the parser lets it, and a choice's finish comes after what the parser
    held back and its calls, as `tool_calls` where it made any."""

    def __init__(self, names: Collection[str]) -> None:
        self._names = names
        self._parsers: dict[int, ToolCallParser] = {}

    def feed(self, delta: Delta) -> list[Delta]:
        parser = self._parsers.setdefault(delta.index, ToolCallParser(self._names))
        if delta.finish_reason is None:
            text = parser.feed(delta.content or "")
            if not text and not delta.logprobs:
                return []
            return [replace(delta, content=text or None)]
        closing, called = closing_deltas(parser, delta.index)
        return [*closing, replace(delta, finish_reason="tool_calls") if called else delta]


def cached_tokens(output: Any) -> int:
    """The prompt tokens vLLM served from its prefix cache for one request (0 where the
    version does not say)."""
    value = getattr(output, "num_cached_tokens", None)
    return value if isinstance(value, int) and value > 0 else 0
