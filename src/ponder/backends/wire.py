"""Internal types <-> OpenAI-format dicts, for backends that speak that format to their engine."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from ponder.errors import Unsupported
from ponder.types import (
    Completion,
    Delta,
    FinishReason,
    Message,
    Sampling,
    ToolCall,
    ToolCallDelta,
    Usage,
)

_FINISH: frozenset[str] = frozenset({"stop", "length", "tool_calls", "content_filter"})


def message_dict(m: Message, *, text_only: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role}
    if text_only or isinstance(m.content, str) or m.content is None:
        out["content"] = m.text if text_only else m.content
    else:
        out["content"] = [dict(p) for p in m.content]
    if m.name is not None:
        out["name"] = m.name
    if m.tool_calls:
        out["tool_calls"] = [
            {"id": tc.id, "type": tc.type, "function": {"name": tc.name, "arguments": tc.arguments}}
            for tc in m.tool_calls
        ]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out


def sampling_body(s: Sampling) -> dict[str, Any]:
    """The request fields for `s`: extra fields first, so typed fields win."""
    body: dict[str, Any] = dict(s.extra)
    optional = {
        "temperature": s.temperature,
        "top_p": s.top_p,
        s.max_tokens_field: s.max_tokens,
        "seed": s.seed,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "top_logprobs": s.top_logprobs,
        "tool_choice": s.tool_choice,
        "response_format": s.response_format,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if s.stop:
        body["stop"] = list(s.stop)
    if s.logprobs:
        body["logprobs"] = True
    if s.tools:
        body["tools"] = list(s.tools)
    return body


def finish_reason(value: object) -> FinishReason:
    if value == "function_call":
        return "tool_calls"
    return cast(FinishReason, value) if isinstance(value, str) and value in _FINISH else "stop"


def _dicts(value: object) -> list[dict[str, Any]]:
    """The objects in a JSON list; anything else in an upstream answer counts as absent."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def usage_of(data: Mapping[str, Any] | None) -> Usage | None:
    if not data:
        return None
    return Usage(int(data.get("prompt_tokens") or 0), int(data.get("completion_tokens") or 0))


def completions_of(body: Mapping[str, Any]) -> list[Completion]:
    """Choices of a chat.completion body, in index order; the call's usage on the first."""
    choices = sorted(_dicts(body.get("choices")), key=lambda c: c.get("index", 0))
    usage = usage_of(body.get("usage")) or Usage()
    out = []
    for i, choice in enumerate(choices):
        msg = choice.get("message") or {}
        tool_calls = tuple(
            ToolCall(
                id=tc.get("id", ""),
                name=(tc.get("function") or {}).get("name", ""),
                arguments=(tc.get("function") or {}).get("arguments", ""),
                type=tc.get("type", "function"),
            )
            for tc in _dicts(msg.get("tool_calls"))
        )
        out.append(
            Completion(
                content=msg.get("content"),
                finish_reason=finish_reason(choice.get("finish_reason")),
                tool_calls=tool_calls,
                usage=usage if i == 0 else Usage(),
                logprobs=choice.get("logprobs"),
                reasoning=msg.get("reasoning_content") or msg.get("reasoning"),
            )
        )
    return out


def deltas_of(chunk: Mapping[str, Any]) -> list[Delta]:
    """The deltas in one chat.completion.chunk."""
    out = []
    for choice in _dicts(chunk.get("choices")):
        d = choice.get("delta") or {}
        tool_calls = tuple(
            ToolCallDelta(
                index=tc.get("index", 0),
                id=tc.get("id"),
                name=(tc.get("function") or {}).get("name"),
                arguments=(tc.get("function") or {}).get("arguments"),
                type=tc.get("type"),
            )
            for tc in _dicts(d.get("tool_calls"))
        )
        reason = choice.get("finish_reason")
        out.append(
            Delta(
                index=choice.get("index", 0),
                content=d.get("content"),
                reasoning=d.get("reasoning_content") or d.get("reasoning"),
                tool_calls=tool_calls,
                finish_reason=finish_reason(reason) if reason else None,
                logprobs=choice.get("logprobs"),
            )
        )
    usage = usage_of(chunk.get("usage"))
    if usage is not None:
        out.append(Delta(usage=usage))
    return out


def messages_body(messages: Sequence[Message]) -> list[dict[str, Any]]:
    return [message_dict(m) for m in messages]


def text_chat(messages: Sequence[Message], backend: str) -> list[dict[str, Any]]:
    """Messages as a plain chat template reads them: text only, tool traffic as text, and
    `developer` as `system`. Raises Unsupported for image, audio or file parts."""
    out = []
    for m in messages:
        if m.has_non_text_parts:
            raise Unsupported(f"the {backend} backend reads text only", param="messages")
        if m.role == "tool":
            out.append({"role": "user", "content": f"[tool result {m.tool_call_id}]\n{m.text}"})
            continue
        d: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role}
        d["content"] = m.text
        if m.tool_calls:
            calls = "; ".join(f"{tc.name}({tc.arguments})" for tc in m.tool_calls)
            d["content"] = f"{m.text}\n[called tools: {calls}]".strip()
        if m.name is not None:
            d["name"] = m.name
        out.append(d)
    return out
