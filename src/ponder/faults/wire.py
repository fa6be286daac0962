"""The upstream's side of a connection, HTTP/1.1 by hand: reading requests, and answering
them plainly or with a fault."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from ponder.faults.policy import Fault


@dataclass
class UpstreamRecord:
    """One chat request the upstream received. Times are `time.monotonic()` seconds."""

    number: int
    body: dict[str, Any]
    fault: Fault | None
    started_at: float
    ended_at: float | None = None
    """When the upstream was done with it: answered, failed, or saw the client go."""
    closed_at: float | None = None
    """When the client closed the connection while the request was still open."""
    status: int | None = None
    """The HTTP status sent; None when no response was (reset, stall)."""


class Closed(Exception):
    """The connection is over: the client went away, or a fault closed it."""


@dataclass(eq=False)
class Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    record: UpstreamRecord | None = None
    keep_alive: bool = True

    def gone(self) -> bool:
        """Whether the client closed or reset the connection; when it did during a request,
        the request's `closed_at` says when this was first seen."""
        r = self.reader
        if not (r.at_eof() or r.exception() is not None or self.writer.is_closing()):
            return False
        if self.record is not None and self.record.closed_at is None:
            self.record.closed_at = time.monotonic()
        return True

    async def until_gone(self, within_s: float | None) -> bool:
        """Wait up to `within_s` (None: for ever) for the client to close; True if it did.
        A client sends nothing while its request is open, so reading here loses nothing."""
        try:
            async with asyncio.timeout(within_s):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        return self.gone()

    async def write(self, data: bytes, status: int | None = None) -> None:
        """Send `data` (a response's head when `status` is given, which is then recorded)."""
        if self.gone():
            raise Closed
        if status is not None and self.record is not None:
            self.record.status = status
        self.writer.write(data)
        try:
            await self.writer.drain()
        except ConnectionError:
            self.gone()
            raise Closed from None

    async def send(self, status: int, value: object, headers: Mapping[str, str] = {}) -> None:
        """A JSON answer (`value` already serialized when it is bytes)."""
        payload = value if isinstance(value, bytes) else json.dumps(value).encode()
        base = {"Content-Type": "application/json", "Content-Length": str(len(payload))}
        base["Connection"] = "keep-alive" if self.keep_alive else "close"
        await self.write(_head(status, {**base, **headers}) + payload, status)

    async def error(self, status: int, message: str, type_: str, code: str | None) -> None:
        await self.send(status, error_body(message, type_, code))


# ---- HTTP/1.1 by hand ------------------------------------------------------------------------


async def read_request(
    reader: asyncio.StreamReader,
) -> tuple[str, str, dict[str, str], bytes] | None:
    """The next request on the connection; None when the client closed it between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise
        return None
    line, *lines = head.decode("latin-1").split("\r\n")
    method, path, _ = line.split(" ", 2)
    fields = (h.partition(":") for h in lines)
    headers = {name.strip().lower(): value.strip() for name, sep, value in fields if sep}
    length = int(headers.get("content-length") or 0)
    return method, path, headers, await reader.readexactly(length) if length else b""


def _head(status: int, headers: Mapping[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _usage(body: Mapping[str, Any], texts: Sequence[str]) -> dict[str, int]:
    """Word counts stand in for tokens: cheap, and the same for the same text."""
    asked = sum(len(str(m.get("content") or "").split()) for m in body.get("messages") or [])
    said = sum(len(t.split()) for t in texts)
    return {"prompt_tokens": asked, "completion_tokens": said, "total_tokens": asked + said}


def error_body(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _pieces(text: str) -> list[str]:
    return re.findall(r"\S+\s*|\s+", text)


async def complete(conn: Conn, body: dict[str, Any], texts: list[str], fault: Fault | None) -> None:
    kind = fault.kind if fault is not None else None
    wait = fault.interval_s * sum(len(_pieces(t)) + 2 for t in texts) if fault else 0.0
    if kind == "slow" and await conn.until_gone(wait):  # as long as streaming it would take
        raise Closed
    choices = [
        {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
        for i, t in enumerate(texts)
    ]
    payload = json.dumps(
        {"id": "chatcmpl-up", "object": "chat.completion", "created": 0, "model": body["model"]}
        | {"choices": choices, "usage": _usage(body, texts)}
    ).encode()
    if kind == "garbage":
        await conn.send(200, payload[: len(payload) // 2])  # valid HTTP, broken JSON
    elif kind == "truncate":  # the Content-Length promises more than ever comes
        head = {"Content-Type": "application/json", "Content-Length": str(len(payload))}
        await conn.write(_head(200, head) + payload[: len(payload) // 2], 200)
        conn.writer.close()
        raise Closed
    else:
        await conn.send(200, payload)


async def stream(conn: Conn, body: dict[str, Any], texts: list[str], fault: Fault | None) -> None:
    """SSE, chunked; close-delimited for `truncate`, whose end then looks like a clean EOF."""
    kind = fault.kind if fault is not None else None
    head = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 0}

    def event(choices: list[dict[str, Any]], **more: Any) -> bytes:
        chunk = {**head, "model": body["model"], "choices": choices, **more}
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    events = []
    for i, text in enumerate(texts):
        events.append(event([{"index": i, "delta": {"role": "assistant", "content": ""}}]))
        for piece in _pieces(text):
            events.append(event([{"index": i, "delta": {"content": piece}, "finish_reason": None}]))
        events.append(event([{"index": i, "delta": {}, "finish_reason": "stop"}]))
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append(event([], usage=_usage(body, texts)))
    events.append(b"data: [DONE]\n\n")
    chunks = fault.chunks if fault is not None else 0
    if kind == "garbage":
        events[chunks:] = [b'data: {"id": "chatcmpl-up", "choices": [{"ind\n\n']
    elif kind == "truncate":
        events = events[:chunks]
    chunked = kind != "truncate"
    framing = {"Transfer-Encoding": "chunked"} if chunked else {"Connection": "close"}
    await conn.write(_head(200, {"Content-Type": "text/event-stream", **framing}), 200)
    interval = fault.interval_s if kind == "slow" and fault is not None else 0.0
    for data in events:
        if interval and await conn.until_gone(interval):
            raise Closed
        await conn.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
    if not chunked:
        conn.writer.close()
        raise Closed
    await conn.write(b"0\r\n\r\n")
