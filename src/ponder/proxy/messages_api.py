"""The Anthropic Messages API front end: `POST /v1/messages` and `/v1/messages/count_tokens`.

A `Job`'s answer as a `message` object, or as the API's stream of events: `message_start`; the
strategy's working as a `thinking` block, the answer as a `text` block, each tool call as a
`tool_use` block, each block stopped before the next starts; `ping` as the keep-alive; then
`message_delta` (stop reason and usage) and `message_stop`. Errors on these paths are written
in the API's own shape by `ponder.proxy.errors`.
"""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from ponder.errors import PonderError
from ponder.fastjson import FastJSONResponse, dumps
from ponder.protocol_messages import (
    CountTokensRequest,
    MessagesError,
    MessagesRequest,
    MessagesResponse,
    TokenCount,
)
from ponder.proxy.convert_messages import (
    chat_request,
    count_request,
    input_tokens,
    message_body,
    stop_reason,
    thinking_block,
    tool_use_block,
    usage_body,
    working_text,
)
from ponder.proxy.errors import anthropic_error_body
from ponder.proxy.job import Job
from ponder.proxy.routes import ERROR_STATUSES, RETRY_AFTER, require_key, state_of
from ponder.strategies.context import Meter
from ponder.types import Completion, Delta, FinishReason, ToolCall, Usage

log = logging.getLogger(__name__)


def event(payload: dict[str, Any]) -> bytes:
    """One server-sent event, named by the payload's `type`."""
    return b"event: " + str(payload["type"]).encode() + b"\ndata: " + dumps(payload) + b"\n\n"


@dataclass
class _PendingCall:
    index: int
    id: str
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class MessageEvents:
    """The events of one streamed message (choice 0; the API has no `n`).

    Each tool call is held until it is complete and then written whole (one `input_json_delta`),
    so that the client parses the same JSON object a non-streamed answer gives."""

    message_id: str
    model: str
    meter: Meter
    _block: Literal["thinking", "text"] | None = None
    """The open thinking or text block."""
    _call: _PendingCall | None = None
    """The tool call being received."""
    _written: set[int] = field(default_factory=set)
    """The tool calls (by their stream index) written out."""
    _index: int = 0
    """The index of the next content block."""
    _thought: bool = False
    _spoke: bool = False
    _finish: FinishReason | None = None
    _stop_sequence: str | None = None

    def begin(self) -> bytes:
        message: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage_body(Usage(), 0),  # known at the end: sent with `message_delta`
        }
        return event({"type": "message_start", "message": message})

    def keepalive(self) -> bytes:
        return event({"type": "ping"})

    def delta(self, delta: Delta) -> bytes:
        if delta.index != 0 or self._finish is not None:
            return b""
        out: list[bytes] = []
        if delta.reasoning:
            out.append(self._write("thinking", delta.reasoning))
            self._thought = True
        if delta.content:
            out.append(self._write("text", delta.content))
            self._spoke = True
        for piece in delta.tool_calls:
            if piece.index in self._written:
                log.warning("dropped a piece of tool call %d that came after it", piece.index)
                continue
            if self._call is None or self._call.index != piece.index:
                out.append(self._close())
                self._call = _PendingCall(piece.index, piece.id or "")
            self._call.name += piece.name or ""
            self._call.arguments.append(piece.arguments or "")
            self._spoke = True
        if delta.finish_reason is not None:
            self._finish = delta.finish_reason
            self._stop_sequence = delta.stop_sequence
        return b"".join(out)

    async def finish(self, choices: list[Completion]) -> bytes:
        completion = choices[0] if choices else Completion("")
        out = []
        if not self._spoke:  # the answer came whole: written here, once
            if completion.reasoning and not self._thought:
                out.append(self._write("thinking", completion.reasoning))
            if completion.content or not completion.tool_calls:
                out.append(self._write("text", completion.content or ""))
            for i, call in enumerate(completion.tool_calls):
                out.append(self._close())
                self._call = _PendingCall(i, call.id, call.name, [call.arguments])
        out.append(self._close())
        reason, matched = stop_reason(
            completion,
            self._finish,
            calls_tools=bool(self._written),
            stop_sequence=self._stop_sequence,
        )
        usage = usage_body(self.meter.usage, self.meter.reasoning_tokens(choices[:1]))
        delta = {"stop_reason": reason, "stop_sequence": matched}
        calls = {"backend_calls": self.meter.calls}
        out.append(
            event({"type": "message_delta", "delta": delta, "usage": usage, "ponder": calls})
        )
        out.append(event({"type": "message_stop"}))
        return b"".join(out)

    def error(self, error: PonderError) -> bytes:
        return event(anthropic_error_body(error.status_code, error.message))

    def _write(self, kind: Literal["thinking", "text"], text: str) -> bytes:
        """`text` in a block of `kind`, opened (and the one before it stopped) if need be."""
        out = b""
        if self._block != kind:
            out = self._close()
            self._block = kind
            block = thinking_block("") if kind == "thinking" else {"type": "text", "text": ""}
            out += self._event("content_block_start", content_block=block)
        piece = (
            {"type": "thinking_delta", "thinking": text}
            if kind == "thinking"
            else {"type": "text_delta", "text": text}
        )
        return out + self._event("content_block_delta", delta=piece)

    def _close(self) -> bytes:
        """Stop the open block, or write the pending tool call whole; b"" if neither."""
        out = b""
        if self._block == "thinking":
            out = self._event(
                "content_block_delta", delta={"type": "signature_delta", "signature": ""}
            )
        elif self._block is None:
            if self._call is None:
                return b""
            call, self._call = self._call, None
            self._written.add(call.index)
            whole = tool_use_block(ToolCall(call.id, call.name, "".join(call.arguments)))
            partial = json.dumps(whole["input"], separators=(",", ":"))
            out = self._event("content_block_start", content_block={**whole, "input": {}})
            out += self._event(
                "content_block_delta", delta={"type": "input_json_delta", "partial_json": partial}
            )
        self._block = None
        out += self._event("content_block_stop")
        self._index += 1
        return out

    def _event(self, kind: str, **fields: Any) -> bytes:
        """A content block event of the current block."""
        return event({"type": kind, "index": self._index, **fields})


@dataclass(frozen=True)
class AnthropicMessages:
    model: str
    """The model name the client gave, echoed in the answer."""

    async def respond(self, job: Job, choices: list[Completion]) -> Response:
        ctx = job.ctx
        completion = choices[0]
        body = message_body(
            message_id=f"msg_{ctx.request_id}",
            model=self.model,
            completion=completion,
            thinking=working_text(ctx.working, completion),
            usage=ctx.meter.usage,
            thinking_tokens=ctx.meter.reasoning_tokens(choices[:1]),
            trace=ctx.trace if ctx.options.get("trace") else None,
        )
        return FastJSONResponse(body)

    def stream_format(self, job: Job) -> MessageEvents:
        return MessageEvents(f"msg_{job.ctx.request_id}", self.model, job.ctx.meter)


# ---- routes ------------------------------------------------------------------------------------


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` documenting errors in the Messages API's shape with these statuses
    (429 and 503 with their `Retry-After` header)."""
    responses: dict[int | str, dict[str, Any]] = {}
    for code in statuses:
        response: dict[str, Any] = {"model": MessagesError, "description": ERROR_STATUSES[code]}
        if code in (429, 503):
            response["headers"] = RETRY_AFTER
        responses[code] = response
    return responses


messages = APIRouter(
    prefix="/v1",
    dependencies=[Depends(require_key)],
    responses=error_responses(400, 401, 403, 404, 429, 502, 503, 504),
)


@messages.post(
    "/messages",
    response_model=MessagesResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def create_message(body: MessagesRequest, request: Request) -> Response:
    """The Anthropic Messages API: one answer, with the strategy's working as thinking."""
    return await state_of(request).chat.handle(
        chat_request(body),
        request.state.request_id,
        request.receive,
        AnthropicMessages(body.model),
        request.state.principal,
    )


@messages.post("/messages/count_tokens", response_model=TokenCount)
async def count_message_tokens(body: CountTokensRequest, request: Request) -> dict[str, int]:
    """The input tokens of one backend call with this prompt. The embedded and vLLM backends
    count exactly, with the model's own chat template and tokenizer (`prompt_tokens`).
    Elsewhere it is Ponder's estimate (`ponder.tokens.count_prompt_tokens`, tiktoken
    cl100k_base, over the messages' text, plus each tool's JSON), which is what the scripted
    backend and the `openai` backend charge when the upstream reports no usage of its own; an
    upstream that reports usage counts with its model's tokenizer, so it may charge a different
    number. A strategy route makes several calls."""
    chat = count_request(body)
    state = state_of(request)
    state.chat.route(chat)  # an unknown model is a 404, as for /v1/messages
    exact = getattr(state.backend, "prompt_tokens", None)
    if callable(exact):
        counted = exact(chat.messages, chat.sampling)
        return {"input_tokens": int(await counted if inspect.isawaitable(counted) else counted)}
    return {"input_tokens": input_tokens(chat)}
