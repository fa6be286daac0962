"""Turn a stream of deltas back into whole choices."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ponder.errors import BackendError
from ponder.types import Completion, Delta, FinishReason, ToolCall, Usage


def split_usage(
    usage: Usage, texts: Sequence[str], own: Sequence[int | None] | None = None
) -> list[Usage]:
    """One call's usage spread over its choices: the prompt (and cached) tokens on the first,
    and to each choice its own output tokens, as the backend counted them (`own`) where it
    counted every choice and they add up; else the call's total shared out in proportion to
    each choice's text (an estimate, exact in sum)."""
    n = len(texts)
    if n == 0:
        return []
    total = usage.completion_tokens
    counts: list[int]
    known = [c for c in own or () if c is not None]
    if len(known) == n and sum(known) == total:
        counts = known
    else:
        weights = [len(t) for t in texts]
        if not any(weights):
            weights = [1] * n
        whole = sum(weights)
        shares = [total * w / whole for w in weights]
        counts = [int(s) for s in shares]
        by_remainder = sorted(range(n), key=lambda i: counts[i] - shares[i])
        for i in by_remainder[: total - sum(counts)]:
            counts[i] += 1
    return [
        Usage(
            usage.prompt_tokens if i == 0 else 0,
            counts[i],
            usage.cached_tokens if i == 0 else 0,
        )
        for i in range(n)
    ]


def choice_text(content: str | None, tool_calls: Sequence[ToolCall]) -> str:
    """What a choice generated, to weigh its share of a call's output tokens."""
    return (content or "") + "".join(tc.name + tc.arguments for tc in tool_calls)


@dataclass
class _ToolCallParts:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)
    type: str = "function"


@dataclass
class _ChoiceParts:
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: dict[int, _ToolCallParts] = field(default_factory=dict)
    finish_reason: FinishReason | None = None
    logprobs: list[Any] = field(default_factory=list)
    """The `logprobs.content` entries of the deltas, in order."""
    has_logprobs: bool = False
    stop_sequence: str | None = None
    completion_tokens: int | None = None
    sampling_actions: Mapping[str, int] | None = None


class Assembler:
    """Collects deltas of `n` choices; `completions()` gives the finished choices.

    The call's usage, reported once at the end of a stream, is put on the first choice, as
    `Completion.usage` documents.
    """

    def __init__(self, n: int = 1) -> None:
        self._choices = [_ChoiceParts() for _ in range(n)]
        self.usage: Usage | None = None

    def add(self, delta: Delta) -> None:
        if delta.usage is not None:
            self.usage = delta.usage
        if (
            delta.content is None
            and delta.reasoning is None
            and not delta.tool_calls
            and (delta.finish_reason is None)
            and delta.logprobs is None
        ):
            return
        if not 0 <= delta.index < len(self._choices):
            # A list index would fail as an IndexError (a 500), or, negative, land on another
            # choice; a backend that streams a choice nobody asked for is failing.
            raise BackendError(
                f"the backend streamed choice {delta.index}; {len(self._choices)} were asked for"
            )
        choice = self._choices[delta.index]
        if delta.content:
            choice.content.append(delta.content)
        if delta.reasoning:
            choice.reasoning.append(delta.reasoning)
        for tc in delta.tool_calls:
            parts = choice.tool_calls.setdefault(tc.index, _ToolCallParts())
            parts.id = tc.id or parts.id
            parts.name += tc.name or ""
            parts.type = tc.type or parts.type
            if tc.arguments:
                parts.arguments.append(tc.arguments)
        if delta.logprobs is not None:
            choice.has_logprobs = True
            choice.logprobs.extend(delta.logprobs.get("content") or ())
        if delta.finish_reason is not None:
            choice.finish_reason = delta.finish_reason
            choice.stop_sequence = delta.stop_sequence
            choice.completion_tokens = delta.completion_tokens
            choice.sampling_actions = delta.sampling_actions

    def completions(self) -> list[Completion]:
        out = []
        for c in self._choices:
            tool_calls = tuple(
                ToolCall(id=p.id, name=p.name, arguments="".join(p.arguments), type=p.type)
                for _, p in sorted(c.tool_calls.items())
            )
            out.append(
                Completion(
                    content="".join(c.content) if c.content or not tool_calls else None,
                    finish_reason=c.finish_reason or "stop",
                    tool_calls=tool_calls,
                    reasoning="".join(c.reasoning) or None,
                    logprobs={"content": c.logprobs} if c.has_logprobs else None,
                    stop_sequence=c.stop_sequence,
                    sampling_actions=c.sampling_actions,
                )
            )
        usages = split_usage(
            self.usage or Usage(),
            [choice_text(c.content, c.tool_calls) for c in out],
            [c.completion_tokens for c in self._choices],
        )
        return [replace(c, usage=u) for c, u in zip(out, usages, strict=True)]
