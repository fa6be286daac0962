"""Fake OpenAI-compatible upstreams, for testing the `openai` backend and for benchmarks
(`ponder.testing` gives them to users' tests): `FakeUpstream`, a small real server, and
`HandlerUpstream`, a transport that answers from a function with no network at all."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from ponder.backends.upstream_http import HTTPReply
from ponder.tokens import count_tokens

if TYPE_CHECKING:
    import httpx


def words(text: str) -> list[str]:
    """`text` in word-sized stream pieces (each word with its trailing space)."""
    return re.findall(r"\S+\s*|\s+", text)


class FakeUpstream:
    """A small OpenAI-compatible server, for testing the `openai` backend and for benchmarks.

    It answers `reply(body, choice_index)` (default: echo the last user message), honours
    `n`, `stream` and `stream_options.include_usage`, and keeps every request body it got, its
    `Authorization` header (`keys`), and the client port each came from (`ports`: one per
    connection).
    """

    def __init__(
        self,
        reply: Callable[[dict[str, Any], int], str] | None = None,
        *,
        model_ids: tuple[str, ...] = ("fake-model",),
        record: bool = True,
    ) -> None:
        from starlette.applications import Starlette
        from starlette.routing import Route

        self.reply = reply or _echo
        self.model_ids = model_ids
        self.record = record
        self.requests: list[dict[str, Any]] = []
        self.keys: list[str | None] = []
        """The `Authorization` header of each request, beside `requests`."""
        self.ports: list[int] = []
        self.app = Starlette(
            routes=[
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
            ]
        )

    async def _models(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.model_ids
        ]
        return JSONResponse({"object": "list", "data": data})

    async def _chat(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, StreamingResponse

        body = await request.json()
        if self.record:
            self.requests.append(body)
            self.keys.append(request.headers.get("authorization"))
            self.ports.append(request.client.port if request.client else 0)
        if body.get("model") not in self.model_ids:
            error = {
                "message": "no such model",
                "type": "invalid_request_error",
                "code": "model_not_found",
            }
            return JSONResponse({"error": error}, status_code=404)
        n = int(body.get("n", 1))
        texts = [self.reply(body, i) for i in range(n)]
        prompt = sum(count_tokens(str(m.get("content") or "")) for m in body["messages"])
        completion = sum(count_tokens(t) for t in texts)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        head = {"id": "chatcmpl-fake", "created": 0, "model": body["model"]}
        if not body.get("stream"):
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": t},
                    "finish_reason": "stop",
                }
                for i, t in enumerate(texts)
            ]
            return JSONResponse(
                {**head, "object": "chat.completion", "choices": choices, "usage": usage}
            )

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events() -> AsyncIterator[bytes]:
            def chunk(choices: list[dict[str, Any]], **more: Any) -> bytes:
                payload = {**head, "object": "chat.completion.chunk", "choices": choices, **more}
                return f"data: {json.dumps(payload)}\n\n".encode()

            for i, text in enumerate(texts):
                yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}}])
                for piece in words(text):
                    yield chunk([{"index": i, "delta": {"content": piece}, "finish_reason": None}])
                yield chunk([{"index": i, "delta": {}, "finish_reason": "stop"}])
            if include_usage:
                yield chunk([], usage=usage)
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")


def _echo(body: dict[str, Any], index: int) -> str:
    users = [m for m in body.get("messages", []) if m.get("role") == "user"]
    text = users[-1].get("content") if users else ""
    return f"echo {index}: {text if isinstance(text, str) else ''}"


Handler = Callable[["httpx.Request"], "httpx.Response | Awaitable[httpx.Response]"]


class HandlerUpstream:
    """An upstream for `OpenAICompatBackend(http=...)` answered by a function, with no network:
    `handler` gets each request as an `httpx.Request` (method, URL under `base_url`, headers,
    body) and returns an `httpx.Response`, or an awaitable of one. What the network itself does
    (connections refused, reset, stalled) is tested against real servers (`FakeUpstream`,
    `ponder.faults.FaultyUpstream`)."""

    def __init__(self, handler: Handler, base_url: str = "http://up/v1/") -> None:
        self.handler = handler
        self.base_url = base_url.rstrip("/") + "/"

    async def request(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str]
    ) -> HTTPReply:
        response = await self._call(method, path, body, headers)
        return HTTPReply(response.status_code, response.headers, await response.aread())

    @asynccontextmanager
    async def stream(
        self, path: str, body: bytes, headers: Mapping[str, str]
    ) -> AsyncIterator[_HandlerStream]:
        response = await self._call("POST", path, body, headers)
        try:
            yield _HandlerStream(response)
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        pass

    async def _call(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str]
    ) -> httpx.Response:
        import httpx

        request = httpx.Request(method, self.base_url + path, headers=headers, content=body)
        response = self.handler(request)
        if inspect.isawaitable(response):
            response = await response
        return response


class _HandlerStream:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.status = response.status_code
        self.headers = response.headers

    async def read(self) -> bytes:
        return await self.response.aread()

    async def lines(self) -> AsyncIterator[bytes]:
        pending = b""
        async for chunk in self.response.aiter_bytes():
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for line in complete:
                yield line + b"\n"
        if pending:
            yield pending
