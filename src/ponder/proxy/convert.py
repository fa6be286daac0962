"""OpenAI wire models <-> internal types. The only place the two meet."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from ponder.fastjson import dumps
from ponder.protocol import AssistantMessage, ChatCompletionRequest, ChatMessage, ToolMessage
from ponder.strategies.context import Step
from ponder.types import Completion, Delta, Message, Sampling, ToolCall, Usage

# Typed request fields that Sampling has no slot for: forwarded verbatim in `Sampling.extra`,
# together with every unknown field the client sent.
_FORWARDED = (
    "logit_bias",
    "parallel_tool_calls",
    "user",
    "metadata",
    "store",
    "reasoning_effort",
    "service_tier",
)


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(exclude_none=True)


def to_message(m: ChatMessage) -> Message:
    content = m.content
    parts = tuple(_dump(p) for p in content) if isinstance(content, list) else content
    if isinstance(m, AssistantMessage):
        calls = tuple(
            ToolCall(id=tc.id, name=tc.function.name, arguments=tc.function.arguments)
            for tc in m.tool_calls or ()
        )
        return Message("assistant", parts, name=m.name, tool_calls=calls)
    if isinstance(m, ToolMessage):
        return Message("tool", parts, tool_call_id=m.tool_call_id)
    return Message(m.role, parts, name=m.name)


def to_messages(request: ChatCompletionRequest) -> list[Message]:
    return [to_message(m) for m in request.messages]


def to_sampling(request: ChatCompletionRequest) -> Sampling:
    extra = {k: v for k in _FORWARDED if (v := getattr(request, k)) is not None}
    extra.update(request.model_extra or {})
    stop = request.stop
    max_tokens = request.max_completion_tokens or request.max_tokens
    tool_choice = request.tool_choice
    return Sampling(
        temperature=request.temperature,
        top_p=request.top_p,
        max_tokens=max_tokens,
        max_tokens_field=(
            "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
        ),
        stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
        seed=request.seed,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        logprobs=bool(request.logprobs),
        top_logprobs=request.top_logprobs,
        tools=tuple(_dump(t) for t in request.tools or ()),
        tool_choice=_dump(tool_choice) if isinstance(tool_choice, BaseModel) else tool_choice,
        response_format=_dump(request.response_format) if request.response_format else None,
        extra=extra,
    )


def usage_dict(usage: Usage, reasoning_tokens: int = 0) -> dict[str, Any]:
    """The Chat Completions `usage`: the request's whole cost, with the output tokens of every
    call but the answer's own as `reasoning_tokens` (`Meter.reasoning_tokens`)."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
    }


def _tool_calls(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    return [
        {"id": c.id, "type": c.type, "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]


def completion_body(
    *,
    completion_id: str,
    created: int,
    model: str,
    choices: Sequence[Completion],
    usage: Usage,
    reasoning_tokens: int = 0,
    trace: Sequence[Step] | None = None,
) -> dict[str, Any]:
    out_choices = []
    for i, c in enumerate(choices):
        message: dict[str, Any] = {"role": "assistant", "content": c.content, "refusal": None}
        if c.tool_calls:
            message["tool_calls"] = _tool_calls(c.tool_calls)
        if c.reasoning:
            message["reasoning_content"] = c.reasoning
        out_choices.append(
            {
                "index": i,
                "message": message,
                "logprobs": c.logprobs,
                "finish_reason": c.finish_reason,
            }
        )
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": out_choices,
        "usage": usage_dict(usage, reasoning_tokens),
    }
    if trace is not None:
        body["ponder"] = {"trace": [{"step": s.name, "at_s": s.at_s, **s.detail} for s in trace]}
    return body


def delta_dict(delta: Delta) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if delta.content is not None:
        d["content"] = delta.content
    if delta.reasoning is not None:
        d["reasoning_content"] = delta.reasoning
    if delta.tool_calls:
        calls = []
        for tc in delta.tool_calls:
            call: dict[str, Any] = {"index": tc.index}
            if tc.id is not None:
                call["id"] = tc.id
                call["type"] = tc.type or "function"
            fn = {
                k: v for k, v in (("name", tc.name), ("arguments", tc.arguments)) if v is not None
            }
            call["function"] = fn
            calls.append(call)
        d["tool_calls"] = calls
    return d


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + dumps(payload) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
