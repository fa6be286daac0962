"""Anthropic Messages API wire models <-> internal types.

Requests become the OpenAI-shaped internal `Message`s: the system prompt a system message, text
blocks text parts, image blocks `image_url` parts (a data URL for base64 data), an assistant's
`tool_use` blocks its `tool_calls`, and each `tool_result` block a `tool` message, placed before
the rest of its user turn (the results answer the previous turn's calls; an image in a result
goes into that rest, as tool messages carry text only). `thinking` blocks are dropped.

Answers: the strategy's working first as a `thinking` block, then the answer's text, then its
tool calls as `tool_use` blocks. Tool-call arguments that are not a JSON object (the model wrote
something else) are passed on whole as `{"arguments": "<what it wrote>"}` rather than failing
the request or dropping them: the client sees what was said, and a tool loop can answer it
with an error result so that the model tries again. Empty arguments are `{}`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ponder.protocol_messages import (
    AssistantTurn,
    Base64ImageSource,
    CountTokensRequest,
    ImageBlock,
    MessagesRequest,
    Prompt,
    SystemTurn,
    TextBlock,
    ThinkingDisabled,
    ToolChoiceAny,
    ToolChoiceAuto,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlock,
    ToolUseBlock,
    Turn,
)
from ponder.proxy.job import ChatRequest
from ponder.strategies.context import Step
from ponder.tokens import count_prompt_tokens, count_tokens
from ponder.types import (
    Completion,
    ContentPart,
    FinishReason,
    Message,
    Sampling,
    ToolCall,
    Usage,
)

TOOL_ERROR = "Error: "
"""What starts the text of a tool result the client marked `is_error`."""

STOP_REASONS: Mapping[FinishReason, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}


# ---- requests ----------------------------------------------------------------------------------


def _text(block: TextBlock) -> ContentPart:
    return {"type": "text", "text": block.text}


def _image(block: ImageBlock) -> ContentPart:
    source = block.source
    if isinstance(source, Base64ImageSource):
        url = f"data:{source.media_type};base64,{source.data}"
    else:
        url = source.url
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result(block: ToolResultBlock) -> tuple[Message, list[ContentPart]]:
    """The tool message for `block`, and the images in it (for the user turn that follows)."""
    content = block.content
    if content is None or isinstance(content, str):
        text, images = content or "", []
    else:
        text = "\n".join(p.text for p in content if isinstance(p, TextBlock))
        images = [_image(p) for p in content if isinstance(p, ImageBlock)]
    if block.is_error:
        text = TOOL_ERROR + text
    return Message("tool", text, tool_call_id=block.tool_use_id), images


def _user(content: str | Sequence[TextBlock | ImageBlock | ToolResultBlock]) -> list[Message]:
    if isinstance(content, str):
        return [Message("user", content)]
    out: list[Message] = []
    parts: list[ContentPart] = []
    images: list[ContentPart] = []
    for block in content:
        if isinstance(block, ToolResultBlock):
            message, more = _tool_result(block)
            out.append(message)
            images.extend(more)
        elif isinstance(block, ImageBlock):
            parts.append(_image(block))
        else:
            parts.append(_text(block))
    rest = [*images, *parts]
    if rest or not out:
        out.append(Message("user", tuple(rest)))
    return out


def _assistant(turn: AssistantTurn) -> Message:
    content = turn.content
    if isinstance(content, str):
        return Message("assistant", content)
    texts = [b.text for b in content if isinstance(b, TextBlock)]
    calls = tuple(
        ToolCall(b.id, b.name, json.dumps(b.input, separators=(",", ":")))
        for b in content
        if isinstance(b, ToolUseBlock)
    )
    text = "".join(texts) if texts or not calls else None
    return Message("assistant", text, tool_calls=calls)


def _system(content: str | Sequence[TextBlock]) -> Message:
    if isinstance(content, str):
        return Message("system", content)
    return Message("system", tuple(_text(b) for b in content))


def to_messages(request: Prompt) -> list[Message]:
    """The conversation as internal messages: the system prompt first, then every turn."""
    out = [] if request.system is None else [_system(request.system)]
    for turn in request.messages:
        out.extend(_turn(turn))
    return out


def _turn(turn: Turn) -> list[Message]:
    if isinstance(turn, AssistantTurn):
        return [_assistant(turn)]
    if isinstance(turn, SystemTurn):
        return [_system(turn.content)]
    return _user(turn.content)


def _tools(request: Prompt) -> tuple[dict[str, Any], ...]:
    """The client's tools as OpenAI function tools."""
    tools = []
    for tool in request.tools or ():
        function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
        if tool.description is not None:
            function["description"] = tool.description
        tools.append({"type": "function", "function": function})
    return tuple(tools)


def _tool_choice(request: Prompt) -> str | dict[str, Any] | None:
    choice = request.tool_choice
    if isinstance(choice, ToolChoiceAuto):
        return "auto"
    if isinstance(choice, ToolChoiceAny):
        return "required"
    if isinstance(choice, ToolChoiceTool):
        return {"type": "function", "function": {"name": choice.name}}
    if isinstance(choice, ToolChoiceNone):
        return "none"
    return None


def to_sampling(request: MessagesRequest) -> Sampling:
    """The request's generation settings. `top_k`, `metadata.user_id` (as `user`) and
    `disable_parallel_tool_use` (as `parallel_tool_calls: false`) go into `extra`; other
    fields the Messages API defines for its own models are not forwarded."""
    extra: dict[str, Any] = {}
    if request.top_k is not None:
        extra["top_k"] = request.top_k
    if request.metadata is not None and request.metadata.user_id is not None:
        extra["user"] = request.metadata.user_id
    if getattr(request.tool_choice, "disable_parallel_tool_use", None):
        extra["parallel_tool_calls"] = False
    return Sampling(
        temperature=request.temperature,
        top_p=request.top_p,
        max_tokens=request.max_tokens,
        stop=tuple(request.stop_sequences or ()),
        tools=_tools(request),
        tool_choice=_tool_choice(request),
        extra=extra,
    )


def _options(request: MessagesRequest) -> Mapping[str, Any] | None:
    """The `ponder` options; `thinking: {"type": "disabled"}` hides the strategy's working
    (as `ponder: {"reasoning": false}`) unless `ponder.reasoning` says otherwise."""
    if not isinstance(request.thinking, ThinkingDisabled):
        return request.ponder
    return {"reasoning": False, **(request.ponder or {})}


def chat_request(request: MessagesRequest) -> ChatRequest:
    """A Messages API request as `ChatService` takes it (one answer, working kept)."""
    return ChatRequest(
        model=request.model,
        messages=to_messages(request),
        sampling=to_sampling(request),
        approach=request.optillm_approach,
        ponder=_options(request),
        stream=bool(request.stream),
        keep_working=True,
    )


def count_request(request: CountTokensRequest) -> ChatRequest:
    """The request to count, as `ChatService.route` takes it."""
    return ChatRequest(
        model=request.model,
        messages=to_messages(request),
        sampling=Sampling(tools=_tools(request)),
        approach=request.optillm_approach,
    )


def input_tokens(request: ChatRequest) -> int:
    """Ponder's count of the prompt of one backend call: `count_prompt_tokens` (tiktoken
    cl100k_base, the count the scripted and `openai` backends charge when the upstream reports
    no usage) over the text of the messages, plus each tool's JSON. Images are not counted."""
    tools = sum(count_tokens(json.dumps(tool)) for tool in request.sampling.tools)
    return count_prompt_tokens(request.messages) + tools


# ---- answers -----------------------------------------------------------------------------------


def tool_input(arguments: str) -> dict[str, Any]:
    """A tool call's arguments as a `tool_use` block's `input` (see the module's note)."""
    if not arguments.strip():
        return {}
    try:
        value = json.loads(arguments)
    except ValueError:
        return {"arguments": arguments}
    return value if isinstance(value, dict) else {"arguments": arguments}


def tool_use_block(call: ToolCall) -> dict[str, Any]:
    return {
        "type": "tool_use",
        "id": call.id,
        "name": call.name,
        "input": tool_input(call.arguments),
    }


def thinking_block(text: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": text, "signature": ""}


def stop_reason(
    completion: Completion,
    finish: FinishReason | None = None,
    *,
    calls_tools: bool = False,
    stop_sequence: str | None = None,
) -> tuple[str, str | None]:
    """The answer's `stop_reason` and `stop_sequence`: `tool_use` whenever it calls tools
    (`calls_tools`: it did in the stream; a tool loop waits for that), `stop_sequence` when the
    backend said which of the client's stop strings ended it (`stop_sequence`: the stream's,
    else the completion's), else from the finish reason (`finish`: the stream's, else the
    completion's)."""
    if completion.tool_calls or calls_tools:
        return "tool_use", None
    reason = STOP_REASONS[finish or completion.finish_reason]
    matched = stop_sequence or completion.stop_sequence
    if reason == "end_turn" and matched:
        return "stop_sequence", matched
    return reason, None


def usage_body(usage: Usage, thinking_tokens: int) -> dict[str, Any]:
    """The request's whole cost: cache reads apart from the other input tokens, and the output
    tokens of every call but the answer's own as `thinking_tokens`."""
    return {
        "input_tokens": usage.prompt_tokens - usage.cached_tokens,
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "cache_creation_input_tokens": 0,
        "output_tokens_details": {"thinking_tokens": thinking_tokens},
    }


def working_text(working: Sequence[tuple[int, str]] | None, completion: Completion) -> str:
    """The thinking of choice 0: the strategy's working, then the backend's own reasoning."""
    texts = [text for index, text in working or () if index == 0]
    if completion.reasoning:
        if texts and not texts[-1].endswith("\n"):
            texts.append("\n")
        texts.append(completion.reasoning)
    return "".join(texts)


def message_body(
    *,
    message_id: str,
    model: str,
    completion: Completion,
    thinking: str,
    usage: Usage,
    thinking_tokens: int,
    trace: Sequence[Step] | None = None,
) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if thinking:
        content.append(thinking_block(thinking))
    if completion.content or not completion.tool_calls:
        content.append({"type": "text", "text": completion.content or ""})
    content.extend(tool_use_block(call) for call in completion.tool_calls)
    reason, matched = stop_reason(completion)
    body: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": matched,
        "usage": usage_body(usage, thinking_tokens),
    }
    if trace is not None:
        body["ponder"] = {"trace": [{"step": s.name, "at_s": s.at_s, **s.detail} for s in trace]}
    return body
