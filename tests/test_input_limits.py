"""Limits on input: a body past `PONDER_MAX_BODY_BYTES` is refused with a 413 before it is
read whole (in the shape of the API that was called), and requests with more messages or tools
than the server takes are a 400 naming the field."""

from __future__ import annotations

import json
import select
import socket
from typing import Any

import pytest
from starlette.types import Message

from ponder.config import Settings
from ponder.proxy import create_app
from ponder.testing import running_server
from tests.conftest import MODEL, asgi_client, assert_error, chat, chat_scope, scripted, user

LIMIT = 4096


def limited_app(**settings: Any) -> Any:
    return create_app(Settings(max_body_bytes=LIMIT, **settings), backend=scripted())


def big_chat() -> dict[str, Any]:
    return {"model": MODEL, "messages": [user("x" * (2 * LIMIT))]}


async def test_a_declared_length_past_the_limit_is_a_413_and_nothing_runs() -> None:
    app = limited_app()
    backend = app.state.ponder.backend
    async with asgi_client(app) as client:
        response = await client.post("/v1/chat/completions", json=big_chat())
        small = await client.post(
            "/v1/chat/completions", json=big_chat() | {"messages": [user("hi")]}
        )
    assert_error(response, 413, type="invalid_request_error", code="request_too_large")
    assert "PONDER_MAX_BODY_BYTES" in response.json()["error"]["message"]
    assert response.headers["x-ponder-error-code"] == "request_too_large"
    assert response.headers["x-request-id"]
    assert small.status_code == 200 and len(backend.calls) == 1  # only the small one ran


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/v1/messages", "anthropic"),
        ("/v1/messages/count_tokens", "anthropic"),
        ("/v1/responses", "openai"),
    ],
)
async def test_the_413_takes_the_shape_of_the_api_called(path: str, shape: str) -> None:
    async with asgi_client(limited_app()) as client:
        response = await client.post(path, content=b"{" + b" " * (2 * LIMIT) + b"}")
    assert response.status_code == 413
    body = response.json()
    if shape == "anthropic":
        assert body["type"] == "error" and body["error"]["type"] == "request_too_large"
    else:
        assert body["error"]["code"] == "request_too_large"


async def test_a_body_without_a_length_is_cut_off_as_it_arrives() -> None:
    """Sent in chunks with no Content-Length: the app stops reading past the limit, so at most
    the limit and one chunk are ever taken from the client."""
    app = limited_app()
    chunk = b" " * 1024
    sent: list[Message] = []
    taken = 0

    async def receive() -> Message:
        nonlocal taken
        taken += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": taken < 50 * LIMIT}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = chat_scope()
    scope["headers"] = [(b"content-type", b"application/json")]  # no content-length
    await app(scope, receive, send)
    start, body = sent[0], sent[-1]
    assert start["status"] == 413
    assert json.loads(body["body"])["error"]["code"] == "request_too_large"
    assert taken <= LIMIT + len(chunk)
    assert app.state.ponder.backend.calls == []


async def test_more_messages_than_the_server_takes_is_a_400_naming_them() -> None:
    backend = scripted()
    settings = Settings(max_messages=3, max_tools=2)
    many = [user(str(i)) for i in range(4)]
    response = await chat(backend, MODEL, settings=settings, messages=many)
    assert_error(response, 400, param="messages")
    assert "at most 3 (PONDER_MAX_MESSAGES)" in response.json()["error"]["message"]
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    response = await chat(backend, MODEL, settings=settings, tools=[tool] * 3)
    assert_error(response, 400, param="tools")
    assert backend.calls == []
    ok = await chat(backend, MODEL, settings=settings, messages=many[:3], tools=[tool] * 2)
    assert ok.status_code == 200


async def test_the_message_cap_holds_in_the_anthropic_shape_too() -> None:
    app = create_app(Settings(max_messages=2), backend=scripted())
    body = {
        "model": MODEL,
        "max_tokens": 8,
        "messages": [user("a"), {"role": "assistant", "content": "b"}, user("c")],
    }
    async with asgi_client(app) as client:
        response = await client.post("/v1/messages", json=body)
    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert "PONDER_MAX_MESSAGES" in error["error"]["message"]


def rss_bytes() -> int:
    """This process's resident memory (Linux)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
def test_a_100_mb_body_is_refused_without_the_server_holding_it(chunked: bool) -> None:
    """Through a real uvicorn server: 100 MB sent (or announced) against the default 8 MiB
    limit. The answer is a 413 and the process grows by less than 10 MB."""
    app = create_app(Settings(), backend=scripted())
    total, piece = 100 * 1024 * 1024, b"x" * 65536
    with running_server(app) as url:
        host, port = url.removeprefix("http://").removesuffix("/v1").split(":")
        before = rss_bytes()
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            length = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % total
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: ponder\r\n"
                b"Content-Type: application/json\r\n" + length + b"\r\n\r\n"
            )
            sent = 0
            try:
                while sent < total:
                    frame = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
                    sock.sendall(frame)
                    sent += len(piece)
                    if select.select([sock], [], [], 0)[0]:
                        break  # the server has answered
            except (BrokenPipeError, ConnectionResetError):
                pass  # it answered and closed before taking the rest
            reply = sock.recv(65536)
        grown = rss_bytes() - before
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"request_too_large" in reply
    assert sent < total  # the server did not wait for the whole body
    assert grown < 10 * 1024 * 1024, f"the process grew by {grown / 1e6:.1f} MB"
