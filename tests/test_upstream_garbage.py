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
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import anyio
import h11
import httpcore
import httpx
import pytest

from ponder.backends.assemble import Assembler
from ponder.backends.openai_compat import OpenAICompatBackend
from ponder.backends.resilience import ResilientBackend, RetryPolicy
from ponder.backends.wire import completions_of, deltas_of
from ponder.errors import BackendError, BackendUnavailable
from ponder.types import Completion, Delta, Message, Sampling, Usage

HI = [Message("user", "hi")]
SSE = {"content-type": "text/event-stream"}


def _answer(**choice: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"content": "a"}, **choice}]}


def _backend(handler: Any) -> OpenAICompatBackend:
    return OpenAICompatBackend("http://up/v1", transport=httpx.MockTransport(handler))


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


# ---- failures of the HTTP stack that httpx does not wrap -----------------------------------

UNWRAPPED: list[Exception] = [
    AttributeError("'NoneType' object has no attribute 'getpeername'"),
    ConnectionResetError(104, "Connection reset by peer"),
    httpx.StreamClosed(),
    anyio.BusyResourceError("reading from"),
    h11.LocalProtocolError("Can't send data when our state is ERROR"),
]


def _raising(error: Exception) -> Any:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    return handler


@pytest.mark.parametrize("error", UNWRAPPED, ids=lambda e: type(e).__name__)
async def test_unwrapped_transport_failures_are_retryable(error: Exception) -> None:
    backend = _backend(_raising(error))
    with pytest.raises(BackendUnavailable) as plain:
        await backend.complete("m", HI, Sampling())
    with pytest.raises(BackendUnavailable) as streamed:
        await _drain(backend)
    for info in (plain, streamed):
        assert info.value.retryable and info.value.status_code == 503
        assert info.value.__cause__ is error
        assert type(error).__name__ in info.value.message


class _BreaksAfter(httpx.AsyncByteStream):
    """A response body that fails with `error` after its first event."""

    def __init__(self, first: bytes, error: Exception) -> None:
        self.first, self.error = first, error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.first
        raise self.error


@pytest.mark.parametrize("error", UNWRAPPED, ids=lambda e: type(e).__name__)
async def test_unwrapped_failures_mid_stream_are_backend_errors(error: Exception) -> None:
    first = _events({"choices": [{"index": 0, "delta": {"content": "a"}}]})
    backend = _backend(lambda r: httpx.Response(200, stream=_BreaksAfter(first, error)))
    seen: list[str | None] = []
    with pytest.raises(BackendUnavailable) as info:
        async for delta in backend.stream("m", HI, Sampling()):
            seen.append(delta.content)
    assert seen == ["a"] and info.value.__cause__ is error


async def test_ponder_bugs_are_not_taken_for_broken_connections() -> None:
    """Only HTTP I/O is guarded: an error raised while Ponder reads the answer stays itself."""
    backend = _backend(lambda r: httpx.Response(200, json=_answer()))
    with pytest.raises(BackendError, match="1 choices, 2 were asked for"):
        await backend.complete("m", HI, Sampling(), 2)


# ---- the one seen in the wild: a connection reset as it opens, on uvloop --------------------


@contextlib.contextmanager
def _resetting_server() -> Iterator[tuple[int, threading.Event]]:
    """A server that resets every connection as soon as it accepts it (as an overloaded
    upstream or balancer may); the event is set once it has."""
    reset = threading.Event()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            reset.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], reset
    finally:
        stop.set()
        thread.join(5)
        listener.close()


class _SeesTheReset(httpcore.AnyIOBackend):
    """Connects, then hands the connection on only once the loop has seen the upstream reset
    it: the order of events that, by chance, an upstream resetting connections produces."""

    def __init__(self, reset: threading.Event) -> None:
        self.reset = reset

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await super().connect_tcp(host, port, timeout, local_address, socket_options)
        assert await asyncio.to_thread(self.reset.wait, 5)
        with contextlib.suppress(httpcore.ReadError):
            await stream.read(1, timeout=5)
        return stream


class _Transport(httpx.AsyncHTTPTransport):
    def __init__(self, network: httpcore.AsyncNetworkBackend) -> None:
        super().__init__()
        self._pool = httpcore.AsyncConnectionPool(network_backend=network)


def test_connection_reset_as_it_opens_on_uvloop_is_retryable() -> None:
    """Under uvloop, httpcore inspects the socket of a connection it has just opened; if the
    upstream reset it meanwhile, that socket is gone and httpcore fails with an AttributeError
    that httpx passes on unwrapped: a 500 in `ponder serve` before it became a BackendError."""
    uvloop = pytest.importorskip("uvloop")

    async def call(port: int, reset: threading.Event) -> None:
        reset.clear()
        backend = OpenAICompatBackend(
            f"http://127.0.0.1:{port}/v1", transport=_Transport(_SeesTheReset(reset))
        )
        try:
            await backend.complete("m", HI, Sampling())
        finally:
            await backend.aclose()

    with _resetting_server() as (port, reset), pytest.raises(BackendUnavailable) as info:
        uvloop.run(call(port, reset))
    assert info.value.retryable and info.value.status_code == 503


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
