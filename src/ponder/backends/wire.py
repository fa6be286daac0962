"""Internal types <-> OpenAI-format dicts, for backends that speak that format to their engine."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, cast

from ponder.backends.assemble import choice_text, split_usage
from ponder.errors import BackendError, Unsupported
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


def _garbled(what: str) -> BackendError:
    """An answer that is JSON, but not in the shape of one: the upstream garbled it (a cut or
    mangled body can still parse), so the same call may well succeed if tried again."""
    return BackendError(f"the upstream sent a malformed answer: {what}", retryable=True)


def _object(value: object, what: str) -> Mapping[str, Any]:
    """A JSON object field; absent (null) reads as empty."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _garbled(f"{what} is not an object")
    return value


def _str(value: object, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise _garbled(f"{what} is not a string")


def _content(value: object, what: str) -> str | None:
    """Text content: a string, or a list of content parts (some servers answer so), whose
    text parts are joined."""
    if isinstance(value, list):
        parts = [_object(part, what + "[]") for part in value]
        return "".join(_str(part.get("text"), what + "[].text") or "" for part in parts)
    return _str(value, what)


def _index(value: object, what: str) -> int:
    """A choice's or tool call's index; absent reads as 0 (single-choice upstreams omit it)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _garbled(f"{what} is not an index")
    return value


def _tokens(value: object, what: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise _garbled(f"{what} is not a token count")
    return int(value)


def usage_of(data: object) -> Usage | None:
    usage = _object(data, "usage")
    if not usage:
        return None
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
    return Usage(
        _tokens(usage.get("prompt_tokens"), "usage.prompt_tokens"),
        _tokens(usage.get("completion_tokens"), "usage.completion_tokens"),
        _tokens(cached, "usage.prompt_tokens_details.cached_tokens"),
    )


def _logprobs(value: object) -> Mapping[str, Any] | None:
    return _object(value, "logprobs") if value is not None else None


def _tool_call(tc: Mapping[str, Any]) -> tuple[str | None, str | None, str | None, str | None]:
    """id, name, arguments and type of one tool call (or tool call delta)."""
    function = _object(tc.get("function"), "tool_calls[].function")
    return (
        _str(tc.get("id"), "tool_calls[].id"),
        _str(function.get("name"), "tool_calls[].function.name"),
        _str(function.get("arguments"), "tool_calls[].function.arguments"),
        _str(tc.get("type"), "tool_calls[].type"),
    )


def completions_of(body: Mapping[str, Any]) -> list[Completion]:
    """Choices of a chat.completion body, in index order; the call's usage on the first.
    Raises a retryable BackendError for a body that is not shaped like one."""
    choices = sorted(
        _dicts(body.get("choices")), key=lambda c: _index(c.get("index"), "choices[].index")
    )
    usage = usage_of(body.get("usage")) or Usage()
    out: list[Completion] = []
    for choice in choices:
        msg = _object(choice.get("message"), "choices[].message")
        tool_calls = []
        for tc in _dicts(msg.get("tool_calls")):
            id_, name, arguments, type_ = _tool_call(tc)
            tool_calls.append(ToolCall(id_ or "", name or "", arguments or "", type_ or "function"))
        out.append(
            Completion(
                content=_content(msg.get("content"), "message.content"),
                finish_reason=finish_reason(choice.get("finish_reason")),
                tool_calls=tuple(tool_calls),
                logprobs=_logprobs(choice.get("logprobs")),
                reasoning=_reasoning(msg),
                stop_sequence=_stop_sequence(choice),
            )
        )
    shares = split_usage(usage, [choice_text(c.content, c.tool_calls) for c in out])
    return [replace(c, usage=u) for c, u in zip(out, shares, strict=True)]


def _stop_sequence(choice: Mapping[str, Any]) -> str | None:
    """The stop string that ended a choice, where the server says (as `stop_reason`, a string
    for a stop string, a number for a stop token)."""
    value = choice.get("stop_reason")
    return value if isinstance(value, str) and choice.get("finish_reason") == "stop" else None


def _reasoning(fields: Mapping[str, Any]) -> str | None:
    """Reasoning text, under either name servers use for it."""
    return _str(fields.get("reasoning_content"), "reasoning_content") or _str(
        fields.get("reasoning"), "reasoning"
    )


def deltas_of(chunk: Mapping[str, Any]) -> list[Delta]:
    """The deltas in one chat.completion.chunk. Raises a retryable BackendError for a chunk that
    is not shaped like one."""
    out = []
    for choice in _dicts(chunk.get("choices")):
        d = _object(choice.get("delta"), "choices[].delta")
        tool_calls = []
        for tc in _dicts(d.get("tool_calls")):
            id_, name, arguments, type_ = _tool_call(tc)
            index = _index(tc.get("index"), "tool_calls[].index")
            tool_calls.append(ToolCallDelta(index, id_, name, arguments, type_))
        reason = choice.get("finish_reason")
        out.append(
            Delta(
                index=_index(choice.get("index"), "choices[].index"),
                content=_content(d.get("content"), "delta.content"),
                reasoning=_reasoning(d),
                tool_calls=tuple(tool_calls),
                finish_reason=finish_reason(reason) if reason else None,
                logprobs=_logprobs(choice.get("logprobs")),
                stop_sequence=_stop_sequence(choice) if reason else None,
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
