"""Tool calls taken out of generated text, as the text streams.

Models trained on the Hermes/Qwen format write `<tool_call>\n{"name": ..., "arguments": {...}}
\n</tool_call>`. Small models often drop the tags and answer with the bare JSON object, or with
it in a ```json fence; when the tools offered are known, such an answer is read as a call too.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Collection

from ponder.types import Delta, ToolCall, tool_call_deltas

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
_FENCED = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def _new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def parse_tool_call(body: str) -> ToolCall | None:
    """The call in the text between the tags, or None when it is not one: not a JSON object,
    no name, or arguments that are not an object (or a JSON string of one)."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        return None
    arguments = data.get("arguments", data.get("parameters"))
    if arguments is None:
        arguments = {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(
        id=_new_call_id(), name=name.strip(), arguments=json.dumps(arguments, ensure_ascii=False)
    )


def _partial_tag(text: str, tag: str) -> int:
    """The length of the longest end of `text` that begins `tag` (a tag cut by a chunk)."""
    for k in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-k:]):
            return k
    return 0


class ToolCallParser:
    """Takes `<tool_call>{json}</tool_call>` blocks out of a generation as it streams.

    `feed` returns the text that is surely content (outside every block); it holds back what
    may still turn out to be part of a block: a cut opening tag, the whitespace before it, an
    open block. Whitespace around a parsed call is dropped. A block that is not a call (bad
    JSON, no name) or is never closed stays in the content, verbatim.
    """

    def __init__(self, names: Collection[str] = ()) -> None:
        """`names`: the tools offered. With them, an answer that opens with `{`, `[` or a code
        fence is held back whole and read as a bare call if it is one to an offered tool."""
        self._names = frozenset(names)
        self._bare: str | None = "" if self._names else None
        """The answer so far while it may be a bare call; None once it cannot be."""
        self._buf = ""
        self._in_call = False
        self._gap = ""
        """Whitespace before the open block: dropped if it parses, kept if not."""
        self._strip = False
        """A call just ended: drop the whitespace that follows it."""
        self._calls: list[ToolCall] = []

    def feed(self, text: str) -> str:
        if self._bare is not None:
            self._bare += text
            head = self._bare.lstrip()[:3]
            if not head or head[0] in "{[" or "```".startswith(head):
                return ""  # undecided: it may be a bare call
            text, self._bare = self._bare, None
        return self._feed(text)

    def _feed(self, text: str) -> str:
        self._buf += text
        out: list[str] = []
        while True:
            if self._in_call:
                end = self._buf.find(TOOL_CALL_CLOSE)
                if end < 0:
                    break
                body = self._buf[:end]
                self._buf = self._buf[end + len(TOOL_CALL_CLOSE) :]
                call = parse_tool_call(body)
                if call is None:
                    out.append(self._gap + TOOL_CALL_OPEN + body + TOOL_CALL_CLOSE)
                else:
                    self._calls.append(call)
                    self._strip = True
                self._gap = ""
                self._in_call = False
                continue
            if self._strip:
                self._buf = self._buf.lstrip()
                if not self._buf:
                    break
                self._strip = False
            start = self._buf.find(TOOL_CALL_OPEN)
            if start >= 0:
                before = self._buf[:start]
                content = before.rstrip()
                out.append(content)
                self._gap = before[len(content) :]
                self._buf = self._buf[start + len(TOOL_CALL_OPEN) :]
                self._in_call = True
                continue
            held = len(self._buf) - _partial_tag(self._buf, TOOL_CALL_OPEN)
            while held > 0 and self._buf[held - 1].isspace():
                held -= 1
            out.append(self._buf[:held])
            self._buf = self._buf[held:]
            break
        return "".join(out)

    def finish(self) -> tuple[str, tuple[ToolCall, ...]]:
        """The content still held back, and every call parsed."""
        if self._bare is not None:
            held, self._bare = self._bare, None
            calls = bare_calls(held, self._names)
            if calls:
                return "", calls
            content = self._feed(held)
            rest, calls = self.finish()
            return content + rest, calls
        rest = self._gap + TOOL_CALL_OPEN + self._buf if self._in_call else self._buf
        self._buf, self._gap, self._in_call = "", "", False
        return rest, tuple(self._calls)


def bare_calls(text: str, names: Collection[str]) -> tuple[ToolCall, ...]:
    """The calls in an answer that is only a JSON call object (or a list of them), bare or in
    a code fence, each to one of the tools `names`; () when it is anything else."""
    text = text.strip()
    fenced = _FENCED.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        data = json.loads(text)
    except ValueError:
        return ()
    items = data if isinstance(data, list) else [data]
    if not items or not all(isinstance(i, dict) and i.get("name") in names for i in items):
        return ()
    calls = [parse_tool_call(json.dumps(i)) for i in items]
    return tuple(c for c in calls if c is not None) if all(calls) else ()


def split_calls(text: str, names: Collection[str]) -> tuple[str, tuple[ToolCall, ...]]:
    """A whole answer's content and the calls in it (see `ToolCallParser`)."""
    parser = ToolCallParser(names)
    content = parser.feed(text)
    rest, calls = parser.finish()
    return content + rest, calls


def closing_deltas(parser: ToolCallParser, index: int) -> tuple[list[Delta], bool]:
    """When choice `index` ends: the deltas of what its parser held back (content, then the
    calls), and whether the choice called a tool (its finish reason is then `tool_calls`)."""
    rest, calls = parser.finish()
    deltas = [Delta(index=index, content=rest)] if rest else []
    if calls:
        deltas.append(Delta(index=index, tool_calls=tool_call_deltas(calls)))
    return deltas, bool(calls)
