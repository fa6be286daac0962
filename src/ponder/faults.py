"""A fake OpenAI-compatible upstream that fails on purpose, for fault-injection tests and the
load benchmark.

`FaultyUpstream` is a raw asyncio HTTP/1.1 server, not an ASGI app: only raw sockets can reset
a connection, lie about a Content-Length or hold a request without ever answering, as real
upstreams do on a bad day. It serves `GET /v1/models` and `POST /v1/chat/completions` (plain
and streamed, `n`, `stream_options.include_usage`), answering every choice with "echo: " + the
last user message, so each client can check it got its own answer. A policy
`(body, request_number) -> Fault | None` picks each chat request's fault (`marker_policy`:
"[fault:reset]" in the message; `random_policy`: seeded, at a rate). Every chat request is
recorded: body, fault, when it started and ended, and when its client closed the connection.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal, get_args

FaultKind = Literal[
    "500", "429", "503", "reset", "truncate", "stall", "slow", "garbage", "echo_key"
]
FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)
# The plain error faults: status, message, type, code, extra headers.
ERRORS: dict[str, tuple[int, str, str, str | None, dict[str, str]]] = {
    "500": (500, "The server had an error processing your request.", "server_error", None, {}),
    "429": (429, "Rate limit reached.", "requests", "rate_limit_exceeded", {"Retry-After": "0"}),
    "503": (503, "The engine is currently overloaded.", "server_error", "overloaded", {}),
}


@dataclass(frozen=True)
class Fault:
    """How one request goes wrong.

    500/429/503: a JSON error with that status (429 with `Retry-After: 0`). reset: the
    connection is reset (RST) before any response. truncate: a stream sends `chunks` events
    and closes without finishing; a plain answer promises more bytes than it sends. stall: no
    response at all, until the client goes. slow: a stream with `interval_s` between events.
    garbage: a 200 with malformed JSON (a malformed event after `chunks` events in a stream).
    echo_key: an error with HTTP `status` whose message quotes the presented API key, as real
    providers do.
    """

    kind: FaultKind
    status: int = 401
    interval_s: float = 0.05
    chunks: int = 2


Policy = Callable[[dict[str, Any], int], Fault | None]
_MARKER = re.compile(r"\[fault:([a-z0-9_]+)(?::([0-9.]+))?\]")


def last_user_text(body: Mapping[str, Any]) -> str:
    """The text of the request's last user message ("" without one)."""
    users = [m for m in body.get("messages") or [] if m.get("role") == "user"]
    content = users[-1].get("content") if users else ""
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def marker_policy(body: dict[str, Any], number: int) -> Fault | None:
    """The fault a "[fault:KIND]" marker in the last user message names. An argument sets
    the status of echo_key ("[fault:echo_key:500]") or the interval of slow ("[fault:slow:0.1]")."""
    found = _MARKER.search(last_user_text(body))
    if found is None or found.group(1) not in FAULT_KINDS:
        return None
    kind: FaultKind = found.group(1)  # type: ignore[assignment]
    arg = found.group(2)
    if arg and kind == "echo_key":
        return Fault(kind, status=int(float(arg)))
    if arg and kind == "slow":
        return Fault(kind, interval_s=float(arg))
    return Fault(kind)


def random_policy(rate: float, kinds: Sequence[FaultKind], seed: int = 0) -> Policy:
    """Each request fails with probability `rate`, with a kind drawn uniformly from `kinds`;
    the same seed gives the same faults to the same request numbers."""

    def policy(body: dict[str, Any], number: int) -> Fault | None:
        rng = random.Random(seed * 1_000_003 + number)
        return Fault(rng.choice(kinds)) if rng.random() < rate else None

    return policy


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


class _Closed(Exception):
    """The connection is over: the client went away, or a fault closed it."""


@dataclass(eq=False)
class _Conn:
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
            raise _Closed
        if status is not None and self.record is not None:
            self.record.status = status
        self.writer.write(data)
        try:
            await self.writer.drain()
        except ConnectionError:
            self.gone()
            raise _Closed from None

    async def send(self, status: int, value: object, headers: Mapping[str, str] = {}) -> None:
        """A JSON answer (`value` already serialized when it is bytes)."""
        payload = value if isinstance(value, bytes) else json.dumps(value).encode()
        base = {"Content-Type": "application/json", "Content-Length": str(len(payload))}
        base["Connection"] = "keep-alive" if self.keep_alive else "close"
        await self.write(_head(status, {**base, **headers}) + payload, status)

    async def error(self, status: int, message: str, type_: str, code: str | None) -> None:
        await self.send(status, _error(message, type_, code))


@dataclass
class FaultyUpstream:
    """The misbehaving upstream, served on its own thread and event loop while in a `with`
    block (or between `start()` and `stop()`). `url` is its base URL (".../v1")."""

    policy: Policy | None = None
    api_key: str | None = None
    """When set, requests must present `Authorization: Bearer <api_key>` (401 otherwise)."""
    model_ids: tuple[str, ...] = ("fake-model",)
    record: bool = True
    """Keep every request's record (off for long load runs: only the counters are kept)."""
    url: str = ""
    requests: int = 0
    """Chat requests received so far."""
    in_flight: int = 0
    """Chat requests open now."""
    faults: dict[str, int] = field(default_factory=dict)
    """How many times each fault kind was injected."""
    _records: list[UpstreamRecord] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _thread: threading.Thread | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    _open: dict[_Conn, asyncio.Task[Any]] = field(default_factory=dict)

    # ---- running it ------------------------------------------------------------------------

    def start(self) -> str:
        """Serve on a free port of 127.0.0.1 from a background thread; returns `url`."""
        ready = threading.Event()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._main(ready)), name="faulty-upstream", daemon=True
        )
        self._thread.start()
        while not ready.wait(0.05):
            if not self._thread.is_alive():
                raise RuntimeError("the faulty upstream did not start")
        return self.url

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FaultyUpstream:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- observing it (from any thread) ----------------------------------------------------

    @property
    def records(self) -> list[UpstreamRecord]:
        """The chat requests so far, in arrival order (a copy of the list)."""
        with self._changed:
            return list(self._records)

    def wait(self, until: Callable[[FaultyUpstream], bool], within_s: float = 5.0) -> None:
        """Block until `until(self)` holds (checked whenever a request starts or ends);
        TimeoutError if it does not within `within_s`."""
        with self._changed:
            if not self._changed.wait_for(lambda: until(self), within_s):
                raise TimeoutError(f"not yet, with {self.in_flight} requests in flight")

    def wait_in_flight(self, count: int, within_s: float = 5.0) -> None:
        """Block until at least `count` chat requests are open at once (with `count` 0: until
        none is)."""
        self.wait(lambda u: u.in_flight >= count if count else u.in_flight == 0, within_s)

    async def until_in_flight(self, count: int, within_s: float = 5.0) -> None:
        """`wait_in_flight` for async code: the caller's event loop keeps running."""
        await asyncio.to_thread(self.wait_in_flight, count, within_s)

    # ---- serving -------------------------------------------------------------------------

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(
            self._connection, "127.0.0.1", 0, limit=1 << 22, backlog=4096
        )
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
        ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for conn in list(self._open):  # their tasks then see the connection gone
                conn.writer.transport.abort()
            if self._open:
                await asyncio.wait(list(self._open.values()), timeout=5)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One keep-alive connection: requests one after another until either side closes."""
        conn = _Conn(reader, writer)
        task = asyncio.current_task()
        assert task is not None
        self._open[conn] = task
        try:
            while conn.keep_alive and (request := await _read_request(reader)) is not None:
                conn.keep_alive = request[2].get("connection", "").lower() != "close"
                try:
                    await self._answer(conn, *request)
                finally:
                    self._finish(conn)
        except (_Closed, ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # the client went, a fault closed the connection, or a request was malformed
        finally:
            del self._open[conn]
            if not writer.is_closing():
                writer.close()

    def _begin(self, conn: _Conn, body: dict[str, Any]) -> Fault | None:
        """Count and record a chat request; the policy picks its fault."""
        with self._changed:
            self.requests += 1
            self.in_flight += 1
            fault = self.policy(body, self.requests) if self.policy is not None else None
            if fault is not None:
                self.faults[fault.kind] = self.faults.get(fault.kind, 0) + 1
            conn.record = UpstreamRecord(self.requests, body, fault, time.monotonic())
            if self.record:
                self._records.append(conn.record)
            self._changed.notify_all()
        return fault

    def _finish(self, conn: _Conn) -> None:
        record, conn.record = conn.record, None
        if record is not None:
            with self._changed:
                record.ended_at = time.monotonic()
                self.in_flight -= 1
                self._changed.notify_all()

    async def _answer(
        self, conn: _Conn, method: str, path: str, headers: dict[str, str], raw: bytes
    ) -> None:
        key = headers.get("authorization", "").removeprefix("Bearer ").strip()
        route = (method, path.rstrip("/"))
        if self.api_key is not None and key != self.api_key:
            await conn.error(401, "Incorrect API key provided.", "invalid_request_error", None)
        elif route == ("GET", "/v1/models"):
            data = [{"id": m, "object": "model", "owned_by": "fake"} for m in self.model_ids]
            await conn.send(200, {"object": "list", "data": data})
        elif route != ("POST", "/v1/chat/completions"):
            await conn.error(404, "no such route", "invalid_request_error", "not_found")
        else:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("the body is not a JSON object")
            await self._chat(conn, body, self._begin(conn, body), key)

    async def _chat(self, conn: _Conn, body: dict[str, Any], fault: Fault | None, key: str) -> None:
        kind = fault.kind if fault is not None else None
        if body.get("model") not in self.model_ids:
            await conn.error(404, "no such model", "invalid_request_error", "model_not_found")
        elif kind in ERRORS:
            status, message, type_, code, headers = ERRORS[kind]
            await conn.send(status, _error(message, type_, code), headers)
        elif kind == "echo_key" and fault is not None:
            message = f"Incorrect API key provided: {key}. Find your API key in your settings."
            await conn.error(fault.status, message, "invalid_request_error", "invalid_api_key")
        elif kind == "reset":  # SO_LINGER 0: closing sends RST instead of FIN
            sock = conn.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.writer.transport.abort()
            raise _Closed
        elif kind == "stall":
            await conn.until_gone(None)
            raise _Closed
        else:
            texts = ["echo: " + last_user_text(body)] * max(1, int(body.get("n") or 1))
            if body.get("stream"):
                await _stream(conn, body, texts, fault)
            else:
                await _complete(conn, body, texts, fault)


# ---- HTTP/1.1 by hand ------------------------------------------------------------------------


async def _read_request(
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


def _error(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _pieces(text: str) -> list[str]:
    return re.findall(r"\S+\s*|\s+", text)


async def _complete(
    conn: _Conn, body: dict[str, Any], texts: list[str], fault: Fault | None
) -> None:
    kind = fault.kind if fault is not None else None
    wait = fault.interval_s * sum(len(_pieces(t)) + 2 for t in texts) if fault else 0.0
    if kind == "slow" and await conn.until_gone(wait):  # as long as streaming it would take
        raise _Closed
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
        raise _Closed
    else:
        await conn.send(200, payload)


async def _stream(conn: _Conn, body: dict[str, Any], texts: list[str], fault: Fault | None) -> None:
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
            raise _Closed
        await conn.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
    if not chunked:
        conn.writer.close()
        raise _Closed
    await conn.write(b"0\r\n\r\n")
