"""The Responses API's stream: typed server-sent events (`event: <type>` and its JSON), each
with the next `sequence_number`.

`response.created` and `response.in_progress` open it. Each choice's output comes as items:
its reasoning (the strategy's working) as a `reasoning` item with one summary part, its text as
a `message` item with one `output_text` part, its function calls as `function_call` items;
each item is added, grows by deltas, and is done. What a strategy returns whole rather than
token by token is written out at the end, once. `response.completed` (or
`response.incomplete`, when cut off at `max_output_tokens`) closes the stream with the whole
response; a failure after the start is an `error` event, then `response.failed`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ponder.errors import PonderError
from ponder.fastjson import dumps
from ponder.proxy.convert_responses import (
    ItemIds,
    function_call_item,
    message_item,
    reasoning_item,
)
from ponder.proxy.streaming import KEEPALIVE
from ponder.types import Completion, Delta, ToolCallDelta, tool_call_deltas


class Snapshot(Protocol):
    """The Response object with this status and output (and error) so far."""

    def __call__(
        self,
        status: str,
        output: list[dict[str, Any]],
        *,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]: ...


Complete = Callable[[Sequence[Completion], list[dict[str, Any]]], Awaitable[dict[str, Any]]]
"""The finished Response object for these choices and output items (stored when asked)."""


def event(type_: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + type_.encode() + b"\ndata: " + dumps({"type": type_, **payload}) + b"\n\n"


@dataclass
class _Item:
    """An output item being streamed."""

    index: int
    id: str
    text: str = ""
    call_id: str = ""
    name: str = ""


@dataclass
class ResponsesEvents:
    """The events of one streamed response (a `StreamFormat`)."""

    ids: ItemIds
    snapshot: Snapshot
    complete: Complete
    calls: Callable[[], int] = lambda: 0
    """The backend calls the answer took: on the closing event, as `ponder.backend_calls`."""
    _sequence: int = 0
    _output: list[dict[str, Any]] = field(default_factory=list)
    """The output items by output index: as added, replaced by the whole item when done."""
    _reasoning: dict[int, _Item] = field(default_factory=dict)
    _message: dict[int, _Item] = field(default_factory=dict)
    _calls: dict[tuple[int, int], _Item] = field(default_factory=dict)
    """Open function call items by (choice, tool call index)."""
    _said: dict[int, set[str]] = field(default_factory=dict)
    """Per choice, what it streamed: "reasoning", "text", "tools"."""
    _finished: set[int] = field(default_factory=set)

    def _event(self, type_: str, **payload: Any) -> bytes:
        out = event(type_, {"sequence_number": self._sequence, **payload})
        self._sequence += 1
        return out

    def _new(self, kind: str) -> _Item:
        """The next output item, of this kind."""
        index = len(self._output)
        return _Item(index, self.ids(kind, index))

    def _add(self, item: dict[str, Any]) -> bytes:
        self._output.append(item)
        index = len(self._output) - 1
        return self._event("response.output_item.added", output_index=index, item=item)

    def _done(self, item: _Item, whole: dict[str, Any]) -> bytes:
        self._output[item.index] = whole
        return self._event("response.output_item.done", output_index=item.index, item=whole)

    # ---- StreamFormat --------------------------------------------------------------------

    def begin(self) -> bytes:
        body = self.snapshot("in_progress", [])
        return self._event("response.created", response=body) + self._event(
            "response.in_progress", response=body
        )

    def keepalive(self) -> bytes:
        return KEEPALIVE

    def delta(self, delta: Delta) -> bytes:
        choice = delta.index
        if choice in self._finished:
            return b""
        out: list[bytes] = []
        said = self._said.setdefault(choice, set())
        if delta.reasoning:
            said.add("reasoning")
            out += self.reasoning(choice, delta.reasoning)
        if delta.content:
            said.add("text")
            out += self.text(choice, delta.content)
        if delta.tool_calls:
            said.add("tools")
            for call in delta.tool_calls:
                out += self.tool_call(choice, call)
        if delta.finish_reason is not None:
            self._finished.add(choice)
        return b"".join(out)

    async def finish(self, choices: list[Completion]) -> bytes:
        out: list[bytes] = []
        for choice, completion in enumerate(choices):
            said = self._said.get(choice, set())
            if "reasoning" not in said and completion.reasoning:
                out += self.reasoning(choice, completion.reasoning)
            out += self.close_reasoning(choice)
            if "text" not in said and completion.content:
                out += self.text(choice, completion.content)
            out += self.close_message(choice, cut_off=completion.finish_reason == "length")
            if "tools" not in said:
                for call in tool_call_deltas(completion.tool_calls):
                    out += self.tool_call(choice, call)
        out += self.close_all()
        body = await self.complete(choices, list(self._output))
        closing = "response.incomplete" if body["status"] == "incomplete" else "response.completed"
        out.append(self._event(closing, response=body, ponder={"backend_calls": self.calls()}))
        return b"".join(out)

    def error(self, error: PonderError) -> bytes:
        code = error.code or error.type
        failed = self.snapshot(
            "failed", list(self._output), error={"code": code, "message": error.message}
        )
        return self._event(
            "error", code=code, message=error.message, param=error.param
        ) + self._event("response.failed", response=failed)

    # ---- items ---------------------------------------------------------------------------

    def reasoning(self, choice: int, text: str) -> list[bytes]:
        out = self.close_message(choice)
        item = self._reasoning.get(choice)
        if item is None:
            item = self._reasoning[choice] = _Item(
                len(self._output), self.ids("rs", len(self._output))
            )
            out.append(self._add(reasoning_item(item.id, "")))
            out.append(
                self._event(
                    "response.reasoning_summary_part.added",
                    item_id=item.id,
                    output_index=item.index,
                    summary_index=0,
                    part={"type": "summary_text", "text": ""},
                )
            )
        item.text += text
        out.append(
            self._event(
                "response.reasoning_summary_text.delta",
                item_id=item.id,
                output_index=item.index,
                summary_index=0,
                delta=text,
            )
        )
        return out

    def close_reasoning(self, choice: int) -> list[bytes]:
        item = self._reasoning.pop(choice, None)
        if item is None:
            return []
        where = {"item_id": item.id, "output_index": item.index, "summary_index": 0}
        return [
            self._event("response.reasoning_summary_text.done", **where, text=item.text),
            self._event(
                "response.reasoning_summary_part.done",
                **where,
                part={"type": "summary_text", "text": item.text},
            ),
            self._done(item, reasoning_item(item.id, item.text)),
        ]

    def text(self, choice: int, text: str) -> list[bytes]:
        out = self.close_reasoning(choice)
        item = self._message.get(choice)
        if item is None:
            item = self._message[choice] = _Item(
                len(self._output), self.ids("msg", len(self._output))
            )
            added = message_item(item.id, "", "in_progress")
            added["content"] = []
            out.append(self._add(added))
            out.append(
                self._event(
                    "response.content_part.added",
                    item_id=item.id,
                    output_index=item.index,
                    content_index=0,
                    part=_text_part(""),
                )
            )
        item.text += text
        out.append(
            self._event(
                "response.output_text.delta",
                item_id=item.id,
                output_index=item.index,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return out

    def close_message(self, choice: int, *, cut_off: bool = False) -> list[bytes]:
        item = self._message.pop(choice, None)
        if item is None:
            return []
        where = {"item_id": item.id, "output_index": item.index, "content_index": 0}
        status = "incomplete" if cut_off else "completed"
        return [
            self._event("response.output_text.done", **where, text=item.text, logprobs=[]),
            self._event("response.content_part.done", **where, part=_text_part(item.text)),
            self._done(item, message_item(item.id, item.text, status)),
        ]

    def tool_call(self, choice: int, call: ToolCallDelta) -> list[bytes]:
        out = self.close_reasoning(choice) + self.close_message(choice)
        item = self._calls.get((choice, call.index))
        if item is None:
            index = len(self._output)
            item = _Item(index, self.ids("fc", index), call_id=call.id or self.ids("call", index))
            item.name = call.name or ""
            self._calls[(choice, call.index)] = item
            out.append(
                self._add(function_call_item(item.id, item.call_id, item.name, "", "in_progress"))
            )
        elif call.name and not item.name:
            item.name = call.name
        if call.arguments:
            item.text += call.arguments
            out.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item.id,
                    output_index=item.index,
                    delta=call.arguments,
                )
            )
        return out

    def close_all(self) -> list[bytes]:
        """Close every item still open, in output order."""
        out: list[bytes] = []
        for choice in sorted(self._reasoning):
            out += self.close_reasoning(choice)
        for choice in sorted(self._message):
            out += self.close_message(choice)
        for key in sorted(self._calls, key=lambda k: self._calls[k].index):
            item = self._calls.pop(key)
            out.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item.id,
                    output_index=item.index,
                    arguments=item.text,
                )
            )
            whole = function_call_item(item.id, item.call_id, item.name, item.text)
            out.append(self._done(item, whole))
        return out


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": []}
