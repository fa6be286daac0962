"""Whatever the upstream sends, and however its connection breaks, the `openai` backend fails
with a BackendError (a 502/503, retried where trying again may help), never with an exception
that reaches the client as a 500 `internal_error`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import httpx
import pytest

from ponder.backends.assemble import Assembler
from ponder.backends.openai_compat import OpenAICompatBackend
from ponder.backends.resilience import ResilientBackend, RetryPolicy
from ponder.backends.upstream_http import upstream_errors
from ponder.backends.wire import completions_of, deltas_of
from ponder.errors import BackendError, BackendTimeout, BackendUnavailable
from ponder.testing import HandlerUpstream
from ponder.types import Completion, Delta, Message, Sampling, Usage

HI = [Message("user", "hi")]
SSE = {"content-type": "text/event-stream"}


def _answer(**choice: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"content": "a"}, **choice}]}


def _backend(handler: Any) -> OpenAICompatBackend:
    return OpenAICompatBackend("http://up/v1", http=HandlerUpstream(handler))


async def _drain(backend: Any, n: int = 1) -> list[Completion]:
    """A streamed call, assembled as `ctx.final` does."""
    assembler = Assembler(n)
    async for delta in backend.stream("m", HI, Sampling(), n):
        assembler.add(delta)
    return assembler.completions()


def _events(*chunks: object) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)


async def test_the_upstreams_cached_prompt_tokens_are_passed_on() -> None:
    usage = {
        "prompt_tokens": 40,
        "completion_tokens": 2,
        "prompt_tokens_details": {"cached_tokens": 32},
    }
    backend = _backend(lambda r: httpx.Response(200, json=_answer() | {"usage": usage}))
    (choice,) = await backend.complete("m", HI, Sampling())
    assert choice.usage == Usage(40, 2, cached_tokens=32)
    # an upstream without the details: nothing cached that Ponder knows of
    backend = _backend(
        lambda r: httpx.Response(200, json=_answer() | {"usage": {"prompt_tokens": 40}})
    )
    (choice,) = await backend.complete("m", HI, Sampling())
    assert choice.usage == Usage(40, 0, cached_tokens=0)


async def test_a_servers_stop_reason_says_which_stop_string_ended_the_choice() -> None:
    """Servers that report `stop_reason` (a string for a stop string, a number for a stop
    token) let the Messages API answer `stop_reason: stop_sequence`."""
    said = _answer(finish_reason="stop", stop_reason="###")
    token = _answer(finish_reason="stop", stop_reason=151645)
    backend = _backend(lambda r: httpx.Response(200, json=said))
    (choice,) = await backend.complete("m", HI, Sampling(stop=("###",)))
    assert choice.stop_sequence == "###"
    backend = _backend(lambda r: httpx.Response(200, json=token))
    (choice,) = await backend.complete("m", HI, Sampling())
    assert choice.stop_sequence is None
    chunks = [
        {"choices": [{"index": 0, "delta": {"content": "a"}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "###"}]},
    ]
    backend = _backend(lambda r: httpx.Response(200, content=_events(*chunks), headers=SSE))
    (choice,) = await _drain(backend)
    assert (choice.content, choice.stop_sequence) == ("a", "###")


# ---- answers that parse as JSON but are not shaped like one --------------------------------


@pytest.mark.parametrize(
    ("body", "what"),
    [
        ({"choices": [{"index": 0, "message": "a"}]}, "message is not an object"),
        (_answer() | {"usage": [3, 4]}, "usage is not an object"),
        (_answer() | {"usage": {"prompt_tokens": "3"}}, "prompt_tokens is not a token count"),
        (_answer() | {"usage": {"completion_tokens": -1}}, "completion_tokens is not a token"),
        (
            {"choices": [{"index": "1", "message": {}}, {"index": 0, "message": {}}]},
            "index is not an index",
        ),
        (_answer(message={"content": 5}), "content is not a string"),
        (_answer(message={"content": "a", "reasoning_content": ["r"]}), "reasoning_content"),
        (_answer(message={"tool_calls": [{"function": "f"}]}), "function is not an object"),
        (
            _answer(message={"tool_calls": [{"function": {"arguments": {"x": 1}}}]}),
            "arguments is not a string",
        ),
        (_answer(logprobs="none"), "logprobs is not an object"),
        (
            _answer() | {"usage": {"prompt_tokens_details": {"cached_tokens": "all"}}},
            "cached_tokens is not a token count",
        ),
    ],
)
async def test_misshapen_answers_are_retryable_backend_errors(
    body: dict[str, Any], what: str
) -> None:
    backend = _backend(lambda r: httpx.Response(200, json=body))
    with pytest.raises(BackendError, match=what) as info:
        await backend.complete("m", HI, Sampling(), len(body["choices"]))
    assert info.value.retryable and info.value.status_code == 502
    assert "malformed answer" in info.value.message


@pytest.mark.parametrize(
    ("chunk", "what"),
    [
        ({"choices": [{"index": 0, "delta": "a"}]}, "delta is not an object"),
        ({"choices": [{"index": 1, "delta": {"content": "a"}}]}, "streamed choice 1; 1 were"),
        ({"choices": [{"index": -1, "delta": {"content": "a"}}]}, "index is not an index"),
        ({"choices": [{"index": True, "delta": {"content": "a"}}]}, "index is not an index"),
        ({"choices": [{"index": [0], "delta": {"content": "a"}}]}, "index is not an index"),
        ({"choices": [{"index": 0, "delta": {"content": 7}}]}, "content is not a string"),
        ({"choices": [], "usage": "many"}, "usage is not an object"),
        (
            {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": 1}]}}]},
            "function is not an object",
        ),
        (
            {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": "a"}]}}]},
            "tool_calls\\[\\].index is not an index",
        ),
    ],
)
async def test_misshapen_stream_chunks_are_retryable_backend_errors(
    chunk: dict[str, Any], what: str
) -> None:
    content = _events(chunk) + b"data: [DONE]\n\n"
    backend = _backend(lambda r: httpx.Response(200, content=content, headers=SSE))
    with pytest.raises(BackendError, match=what) as info:
        await _drain(backend)
    assert info.value.retryable and info.value.status_code == 502


async def test_a_misshapen_answer_is_tried_again() -> None:
    """Through the retrying backend: one garbled answer costs one more upstream call."""
    bodies = iter([_answer(message="garbled"), _answer(message={"content": "fine"})])
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, json=next(bodies))

    backend = ResilientBackend([_backend(handler)], RetryPolicy(retries=2, backoff_s=0))
    (choice,) = await backend.complete("m", HI, Sampling())
    assert choice.content == "fine" and len(calls) == 2


async def test_choices_keep_their_index_order_and_usage() -> None:
    """The strict reading still takes every well-formed answer (index absent reads as 0)."""
    body = {
        "choices": [
            {"index": 1, "message": {"content": "b"}, "finish_reason": "length"},
            {"message": {"content": "a", "reasoning": "r"}, "logprobs": None},
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4.0},
    }
    backend = _backend(lambda r: httpx.Response(200, json=body))
    first, second = await backend.complete("m", HI, Sampling(), 2)
    # the call's 4 output tokens shared by the two one-letter choices
    assert (first.content, first.reasoning, first.usage) == ("a", "r", Usage(3, 2))
    assert (second.content, second.finish_reason, second.usage) == ("b", "length", Usage(0, 2))


def test_assembler_refuses_a_choice_nobody_asked_for() -> None:
    assembler = Assembler(2)
    for index in (2, -1):
        with pytest.raises(BackendError, match=f"streamed choice {index}; 2 were asked for"):
            assembler.add(Delta(index=index, content="x"))
    assembler.add(Delta(index=1, content="y"))
    assert [c.content for c in assembler.completions()] == ["", "y"]


# ---- failures of the network and the HTTP stack --------------------------------------------

BROKEN: list[Exception] = [
    aiohttp.ServerDisconnectedError(),
    aiohttp.ClientPayloadError("Response payload is not completed"),
    aiohttp.ClientOSError(104, "Connection reset by peer"),
    ConnectionResetError(104, "Connection reset by peer"),
    AttributeError("'NoneType' object has no attribute 'getpeername'"),  # not aiohttp's own
    RuntimeError("Transport is closed"),
]


@pytest.mark.parametrize("error", BROKEN, ids=lambda e: type(e).__name__)
def test_broken_connections_are_retryable(error: Exception) -> None:
    with pytest.raises(BackendUnavailable) as info, upstream_errors():
        raise error
    assert info.value.retryable and info.value.status_code == 503
    assert info.value.__cause__ is error
    assert type(error).__name__ in info.value.message


def test_a_read_timeout_is_not_retried_and_a_connect_timeout_is() -> None:
    with pytest.raises(BackendTimeout) as read, upstream_errors():
        raise aiohttp.SocketTimeoutError("Timeout on reading data from socket")
    with pytest.raises(BackendTimeout) as connect, upstream_errors():
        raise aiohttp.ConnectionTimeoutError("Connection timeout")
    assert (read.value.retryable, connect.value.retryable) == (False, True)


async def test_ponder_bugs_are_not_taken_for_broken_connections() -> None:
    """Only HTTP I/O is guarded: an error raised while Ponder reads the answer stays itself."""
    backend = _backend(lambda r: httpx.Response(200, json=_answer()))
    with pytest.raises(BackendError, match="1 choices, 2 were asked for"):
        await backend.complete("m", HI, Sampling(), 2)


# ---- real connections that break -----------------------------------------------------------


@contextlib.contextmanager
def _server(answer: Callable[[socket.socket], None]) -> Iterator[int]:
    """A server that reads each request's head, then lets `answer` write to the connection,
    then resets it (no orderly close: as an overloaded upstream or balancer may)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            with contextlib.suppress(OSError):
                answer(conn)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def _nothing(conn: socket.socket) -> None:
    pass


def _one_event_then_reset(conn: socket.socket) -> None:
    conn.recv(65536)
    event = _events({"choices": [{"index": 0, "delta": {"content": "a"}}]})
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    conn.sendall(head + f"{len(event):x}\r\n".encode() + event + b"\r\n")
    time.sleep(0.2)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_connection_reset_as_it_opens_is_retryable(loop: str) -> None:
    """Under uvloop, which `ponder serve` runs on, as under asyncio."""
    run = pytest.importorskip("uvloop").run if loop == "uvloop" else asyncio.run

    async def call(port: int) -> None:
        backend = OpenAICompatBackend(f"http://127.0.0.1:{port}/v1")
        try:
            await backend.complete("m", HI, Sampling())
        finally:
            await backend.aclose()

    with _server(_nothing) as port, pytest.raises(BackendUnavailable) as info:
        run(call(port))
    assert info.value.retryable and info.value.status_code == 503


async def test_a_connection_reset_mid_stream_is_a_backend_error_after_what_came() -> None:
    seen: list[str | None] = []
    with _server(_one_event_then_reset) as port:
        backend = OpenAICompatBackend(f"http://127.0.0.1:{port}/v1")
        try:
            with pytest.raises(BackendUnavailable) as info:
                async for delta in backend.stream("m", HI, Sampling()):
                    seen.append(delta.content)
        finally:
            await backend.aclose()
    assert seen == ["a"] and info.value.retryable


def test_content_as_a_list_of_text_parts_is_joined() -> None:
    body = {
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Hello, "},
                        {"type": "text", "text": "you"},
                    ],
                },
                "finish_reason": "stop",
            }
        ]
    }
    assert [c.content for c in completions_of(body)] == ["Hello, you"]
    chunk = {"choices": [{"index": 0, "delta": {"content": [{"type": "text", "text": "Hi"}]}}]}
    assert [d.content for d in deltas_of(chunk)] == ["Hi"]
