"""Responses API wire models <-> internal types.

A request becomes a `ChatRequest`: `instructions` a system message first, then the stored
conversation of `previous_response_id` (its instructions are not carried over), then the input
items as messages (function calls of one turn merged into one assistant message, their outputs
tool messages, reasoning items dropped). An answer becomes the Response object, its output
items built by `OutputItems`. A stored conversation is the messages as JSON objects
(`encode_message`), read back exactly by `decode_message`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from ponder.errors import InvalidRequest
from ponder.protocol_responses import (
    ContentPart,
    FunctionCallItem,
    FunctionCallOutputItem,
    InputImage,
    InputText,
    MessageItem,
    OutputText,
    Refusal,
    ResponseRequest,
    TextFormatJsonObject,
    TextFormatJsonSchema,
    ToolOutputPart,
)
from ponder.proxy.job import ChatRequest
from ponder.strategies.context import Step
from ponder.types import Completion, Message, Sampling, ToolCall, Usage
from ponder.types import ContentPart as Part

RESPONSE_PREFIX = "resp_"
MAX_ID = 128
"""The longest response id the store keeps."""


def response_id(request_id: str) -> str:
    """`resp_<request id>`; a request id too long for that is replaced by its digest."""
    rid = request_id if len(RESPONSE_PREFIX) + len(request_id) <= MAX_ID else _digest(request_id)
    return RESPONSE_PREFIX + rid


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:48]


# ---- request -----------------------------------------------------------------------------


def _part(part: ContentPart | ToolOutputPart) -> Part:
    if isinstance(part, InputText | OutputText):
        return {"type": "text", "text": part.text}
    if isinstance(part, InputImage):
        image: dict[str, Any] = {"url": part.image_url}
        if part.detail is not None:
            image["detail"] = part.detail
        return {"type": "image_url", "image_url": image}
    assert isinstance(part, Refusal)
    return {"type": "refusal", "refusal": part.refusal}


def _content(content: str | Sequence[ContentPart | ToolOutputPart]) -> str | tuple[Part, ...]:
    return content if isinstance(content, str) else tuple(_part(p) for p in content)


def input_messages(request: ResponseRequest) -> list[Message]:
    """The request's input as messages (without instructions or earlier turns)."""
    if isinstance(request.input, str):
        return [Message("user", request.input)]
    out: list[Message] = []
    turn = False  # whether out[-1] is an assistant turn that function calls join
    for item in request.input:
        if isinstance(item, MessageItem):
            out.append(Message(item.role, _content(item.content)))
            turn = item.role == "assistant"
        elif isinstance(item, FunctionCallItem):
            call = ToolCall(id=item.call_id, name=item.name, arguments=item.arguments)
            if turn:
                last = out[-1]
                out[-1] = Message("assistant", last.content, tool_calls=(*last.tool_calls, call))
            else:
                out.append(Message("assistant", None, tool_calls=(call,)))
                turn = True
        elif isinstance(item, FunctionCallOutputItem):
            out.append(Message("tool", _content(item.output), tool_call_id=item.call_id))
            turn = False
        # a reasoning item is dropped, and does not end a turn
    return out


def to_messages(request: ResponseRequest, previous: Sequence[Message] = ()) -> list[Message]:
    """Instructions, the earlier turns, then the input."""
    system = [Message("system", request.instructions)] if request.instructions else []
    return [*system, *previous, *input_messages(request)]


def _tool(tool: BaseModel) -> dict[str, Any]:
    """A Responses function tool in the Chat Completions shape Sampling keeps."""
    function = tool.model_dump(exclude_none=True, exclude={"type"})
    return {"type": "function", "function": function}


def to_sampling(request: ResponseRequest) -> Sampling:
    extra: dict[str, Any] = {}
    if request.user is not None:
        extra["user"] = request.user
    if request.reasoning is not None and request.reasoning.effort is not None:
        extra["reasoning_effort"] = request.reasoning.effort
    tools = tuple(_tool(t) for t in request.tools or ())
    tool_choice: str | dict[str, Any] | None = None
    if tools:
        if request.parallel_tool_calls is not None:
            extra["parallel_tool_calls"] = request.parallel_tool_calls
        choice = request.tool_choice
        tool_choice = (
            {"type": "function", "function": {"name": choice.name}}
            if isinstance(choice, BaseModel)
            else choice
        )
    return Sampling(
        temperature=request.temperature,
        top_p=request.top_p,
        max_tokens=request.max_output_tokens,
        tools=tools,
        tool_choice=tool_choice,
        response_format=_response_format(request),
        extra=extra,
    )


def _response_format(request: ResponseRequest) -> dict[str, Any] | None:
    fmt = request.text.format if request.text is not None else None
    if isinstance(fmt, TextFormatJsonObject):
        return {"type": "json_object"}
    if isinstance(fmt, TextFormatJsonSchema):
        schema = fmt.model_dump(exclude_none=True, exclude={"type"}, by_alias=True)
        return {"type": "json_schema", "json_schema": schema}
    return None


def chat_request(request: ResponseRequest, previous: Sequence[Message] = ()) -> ChatRequest:
    """A Responses request as `ChatService` takes it, after the earlier turns `previous`."""
    return ChatRequest(
        model=request.model,
        messages=to_messages(request, previous),
        sampling=to_sampling(request),
        approach=request.optillm_approach,
        ponder=request.ponder,
        stream=bool(request.stream),
        keep_working=True,
    )


# ---- stored conversations ------------------------------------------------------------------


def encode_message(message: Message) -> dict[str, Any]:
    """A message as a JSON object that `decode_message` reads back equal."""
    out: dict[str, Any] = {"role": message.role}
    content = message.content
    out["content"] = [dict(p) for p in content] if isinstance(content, tuple) else content
    if message.name is not None:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "name": c.name, "arguments": c.arguments, "type": c.type}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def decode_message(data: Mapping[str, Any]) -> Message:
    """The message `encode_message` wrote (a stored row that is not one is a server fault)."""
    try:
        content = data.get("content")
        return Message(
            data["role"],
            tuple(dict(p) for p in content) if isinstance(content, list) else content,
            name=data.get("name"),
            tool_calls=tuple(ToolCall(**c) for c in data.get("tool_calls", ())),
            tool_call_id=data.get("tool_call_id"),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a stored message: {exc}") from exc


def output_messages(output: Sequence[Mapping[str, Any]]) -> list[Message]:
    """A response's output as the assistant turn(s) of the conversation: the text of a message
    item and the function calls after it make one message; reasoning is left out."""
    out: list[Message] = []
    turn = False
    for item in output:
        if item["type"] == "message":
            text = "".join(p["text"] for p in item["content"] if p["type"] == "output_text")
            out.append(Message("assistant", text))
            turn = True
        elif item["type"] == "function_call":
            call = ToolCall(id=item["call_id"], name=item["name"], arguments=item["arguments"])
            if turn:
                last = out[-1]
                out[-1] = Message("assistant", last.content, tool_calls=(*last.tool_calls, call))
            else:
                out.append(Message("assistant", None, tool_calls=(call,)))
                turn = True
    return out


def previous_messages(conversation: Sequence[Mapping[str, Any]]) -> list[Message]:
    return [decode_message(m) for m in conversation]


# ---- the answer --------------------------------------------------------------------------


def usage_body(usage: Usage, reasoning_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def trace_body(trace: Sequence[Step]) -> list[dict[str, Any]]:
    """The strategy's steps, as `ponder.trace` (with `ponder: {"trace": true}`)."""
    return [{"step": s.name, "at_s": s.at_s, **s.detail} for s in trace]


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    summary = [{"type": "summary_text", "text": text}] if text else []
    return {"type": "reasoning", "id": item_id, "summary": summary}


def function_call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str = "completed"
) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


class ItemIds:
    """Ids of one response's output items: `<kind>_<request id>_<output index>`."""

    def __init__(self, request_id: str) -> None:
        self.base = request_id if len(request_id) <= 64 else _digest(request_id)

    def __call__(self, kind: str, index: int) -> str:
        return f"{kind}_{self.base}_{index}"


def output_items(
    ids: ItemIds, choices: Sequence[Completion], working: Sequence[tuple[int, str]] | None
) -> list[dict[str, Any]]:
    """The output of a whole answer: per choice, its reasoning (the strategy's working, else
    the completion's own), its text, then its function calls."""
    out: list[dict[str, Any]] = []
    for index, choice in enumerate(choices):
        shown = "".join(text for i, text in working or () if i == index) or choice.reasoning
        if shown:
            out.append(reasoning_item(ids("rs", len(out)), shown))
        if choice.content:
            status = "incomplete" if choice.finish_reason == "length" else "completed"
            out.append(message_item(ids("msg", len(out)), choice.content, status))
        for call in choice.tool_calls:
            call_id = call.id or ids("call", len(out))
            out.append(function_call_item(ids("fc", len(out)), call_id, call.name, call.arguments))
    return out


def finished_status(choices: Sequence[Completion]) -> str:
    """`incomplete` when an answer was cut off at max_output_tokens, else `completed`."""
    return "incomplete" if any(c.finish_reason == "length" for c in choices) else "completed"


def response_body(
    request: ResponseRequest,
    rid: str,
    created_at: int,
    *,
    status: str,
    output: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    completed_at: int | None = None,
    stored: bool | None = None,
) -> dict[str, Any]:
    """The Response object, echoing the request's settings as the API does."""
    reasoning = request.reasoning
    text = request.text
    choice = request.tool_choice
    return {
        "id": response_id(rid),
        "object": "response",
        "created_at": created_at,
        "completed_at": completed_at,
        "status": status,
        "background": bool(request.background),
        "error": error,
        "incomplete_details": ({"reason": "max_output_tokens"} if status == "incomplete" else None),
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "model": request.model,
        "output": output or [],
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "previous_response_id": request.previous_response_id,
        "reasoning": {
            "effort": reasoning.effort if reasoning else None,
            "summary": reasoning.summary if reasoning else None,
        },
        "store": request.store is not False if stored is None else stored,
        "temperature": request.temperature,
        "text": (
            text.model_dump(exclude_none=True, by_alias=True)
            if text is not None and text.format is not None
            else {"format": {"type": "text"}}
        ),
        "tool_choice": (
            choice.model_dump(exclude_none=True)
            if isinstance(choice, BaseModel)
            else choice or "auto"
        ),
        "tools": [t.model_dump(by_alias=True) for t in request.tools or ()],
        "top_p": request.top_p,
        "truncation": "disabled",
        "usage": usage,
        "user": request.user,
        "metadata": request.metadata or {},
    }


CONTINUABLE = ("completed", "incomplete")


def check_continuable(status: str, previous_id: str) -> None:
    """Only a response that gave an answer can be continued."""
    if status not in CONTINUABLE:
        raise InvalidRequest(
            f"the response '{previous_id}' cannot be continued: its status is {status}",
            param="previous_response_id",
        )
