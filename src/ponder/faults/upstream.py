"""`FaultyUpstream`: the server, on its own thread and event loop, and what it records."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ponder.faults.policy import ERRORS, Fault, Policy, last_user_text
from ponder.faults.wire import (
    Closed,
    Conn,
    UpstreamRecord,
    complete,
    error_body,
    read_request,
    stream,
)


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
    _open: dict[Conn, asyncio.Task[Any]] = field(default_factory=dict)

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
        conn = Conn(reader, writer)
        task = asyncio.current_task()
        assert task is not None
        self._open[conn] = task
        try:
            while conn.keep_alive and (request := await read_request(reader)) is not None:
                conn.keep_alive = request[2].get("connection", "").lower() != "close"
                try:
                    await self._answer(conn, *request)
                finally:
                    self._finish(conn)
        except (Closed, ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # the client went, a fault closed the connection, or a request was malformed
        finally:
            del self._open[conn]
            if not writer.is_closing():
                writer.close()

    def _begin(self, conn: Conn, body: dict[str, Any]) -> Fault | None:
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

    def _finish(self, conn: Conn) -> None:
        record, conn.record = conn.record, None
        if record is not None:
            with self._changed:
                record.ended_at = time.monotonic()
                self.in_flight -= 1
                self._changed.notify_all()

    async def _answer(
        self, conn: Conn, method: str, path: str, headers: dict[str, str], raw: bytes
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

    async def _chat(self, conn: Conn, body: dict[str, Any], fault: Fault | None, key: str) -> None:
        kind = fault.kind if fault is not None else None
        if body.get("model") not in self.model_ids:
            await conn.error(404, "no such model", "invalid_request_error", "model_not_found")
        elif kind in ERRORS:
            status, message, type_, code, headers = ERRORS[kind]
            await conn.send(status, error_body(message, type_, code), headers)
        elif kind == "echo_key" and fault is not None:
            message = f"Incorrect API key provided: {key}. Find your API key in your settings."
            await conn.error(fault.status, message, "invalid_request_error", "invalid_api_key")
        elif kind == "reset":  # SO_LINGER 0: closing sends RST instead of FIN
            sock = conn.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.writer.transport.abort()
            raise Closed
        elif kind == "stall":
            await conn.until_gone(None)
            raise Closed
        else:
            texts = ["echo: " + last_user_text(body)] * max(1, int(body.get("n") or 1))
            if body.get("stream"):
                await stream(conn, body, texts, fault)
            else:
                await complete(conn, body, texts, fault)
