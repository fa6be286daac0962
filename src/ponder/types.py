"""Internal value types shared by backends, strategies and the proxy.

These are plain frozen dataclasses. The OpenAI wire models live in `ponder.protocol`; only
`ponder.proxy` converts between the two.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Role = Literal["system", "developer", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]

# A content part as the OpenAI API defines it ({"type": "text", "text": ...}, image_url, ...).
ContentPart = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str
    type: str = "function"


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str | tuple[ContentPart, ...] | None = None
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None

    @property
    def text(self) -> str:
        """The message's text; text parts are joined, other parts (images, audio) are skipped."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")

    @property
    def has_non_text_parts(self) -> bool:
        return isinstance(self.content, tuple) and any(
            p.get("type") != "text" for p in self.content
        )


@dataclass(frozen=True, slots=True)
class Sampling:
    """Generation settings of one backend call.

    `extra` holds every other request field (logit_bias, user, reasoning_effort, ...): remote
    backends forward it verbatim, local engines ignore what they cannot honour.
    """

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    """Which request field carried the limit, so remote backends forward the same one."""
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: tuple[Mapping[str, Any], ...] = ()
    tool_choice: str | Mapping[str, Any] | None = None
    response_format: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def with_(self, **changes: Any) -> Sampling:
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    """Of the prompt tokens, those the backend served from its cache (0 where it cannot say)."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
        )


@dataclass(frozen=True, slots=True)
class Completion:
    """One generated choice.

    `usage` is what producing this choice cost. When a backend draws several choices from one
    prompt in a single call, the prompt tokens are counted once, on the first choice, and each
    choice has its own output tokens (`split_usage`), so that summing the choices' usage gives
    the call's usage.
    """

    content: str | None
    finish_reason: FinishReason = "stop"
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = Usage()
    logprobs: Mapping[str, Any] | None = None
    reasoning: str | None = None
    stop_sequence: str | None = None
    """The client's stop string that ended this choice, where the backend says which."""
    sampling_actions: Mapping[str, int] | None = None
    """Where the backend chose tokens by adaptive sampling: how many each action chose."""


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str | None = None
    type: str | None = None


def tool_call_deltas(calls: tuple[ToolCall, ...]) -> tuple[ToolCallDelta, ...]:
    """Whole tool calls as the stream deltas that carry them in one piece each."""
    return tuple(
        ToolCallDelta(i, tc.id, tc.name, tc.arguments, tc.type) for i, tc in enumerate(calls)
    )


@dataclass(frozen=True, slots=True)
class Delta:
    """One streamed increment of choice `index`.

    A backend stream ends with one delta per choice carrying `finish_reason`, and may end with a
    delta carrying the whole call's `usage` (index and text empty).
    """

    index: int = 0
    content: str | None = None
    reasoning: str | None = None
    tool_calls: tuple[ToolCallDelta, ...] = ()
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    logprobs: Mapping[str, Any] | None = None
    stop_sequence: str | None = None
    """With `finish_reason`: the stop string that ended the choice, where known."""
    completion_tokens: int | None = None
    """With `finish_reason`: the choice's own output tokens, where the backend counts them."""
    sampling_actions: Mapping[str, int] | None = None
    """With `finish_reason`: adaptive sampling's count of tokens by action, where used."""
