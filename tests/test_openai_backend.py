"""The `openai` backend relays to any OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from ponder.backends.base import CLIENT_KEY
from ponder.backends.openai_compat import OpenAICompatBackend
from ponder.config import Settings
from ponder.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    InvalidRequest,
    RateLimited,
    UnknownModel,
)
from ponder.proxy import create_app
from ponder.strategies.registry import default_registry
from ponder.testing import FakeUpstream, HandlerUpstream, running_server
from ponder.tokens import count_tokens
from ponder.types import Message, Sampling
from tests.services import ponder_process

HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def upstream() -> Iterator[tuple[FakeUpstream, str]]:
    fake = FakeUpstream()
    with running_server(fake.app) as url:
        yield fake, url


@pytest.fixture
def via_ponder(upstream: tuple[FakeUpstream, str]) -> Iterator[openai.OpenAI]:
    _, url = upstream
    app = create_app(Settings(backend="openai", base_url=url, upstream_api_key="sk-upstream"))
    with running_server(app) as ponder_url:
        yield openai.OpenAI(base_url=ponder_url, api_key="unused", max_retries=0)


def test_relays_plain_request_with_usage_and_fields(
    upstream: tuple[FakeUpstream, str], via_ponder: openai.OpenAI
) -> None:
    fake, _ = upstream
    completion = via_ponder.chat.completions.create(
        model="fake-model",
        messages=[{"role": "system", "content": "Be brief."}, *HELLO],
        temperature=0.5,
        max_completion_tokens=32,
        stop=["\n\n"],
        seed=7,
        logit_bias={"50256": -100},
        user="u-1",
        extra_body={"top_k": 20},
    )
    assert completion.choices[0].message.content == "echo 0: hello there"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == count_tokens("echo 0: hello there")
    assert completion.usage.prompt_tokens == count_tokens("Be brief.") + count_tokens("hello there")
    (sent,) = fake.requests
    assert sent["model"] == "fake-model"
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, *HELLO]
    assert sent["temperature"] == 0.5 and sent["max_completion_tokens"] == 32
    assert "max_tokens" not in sent
    assert (sent["stop"], sent["seed"], sent["user"], sent["top_k"]) == (["\n\n"], 7, "u-1", 20)
    assert sent["logit_bias"] == {"50256": -100}
    assert "ponder" not in sent and "n" not in sent and "stream" not in sent


def test_relays_n(upstream: tuple[FakeUpstream, str], via_ponder: openai.OpenAI) -> None:
    fake, _ = upstream
    completion = via_ponder.chat.completions.create(model="fake-model", messages=HELLO, n=3)
    assert [c.message.content for c in completion.choices] == [
        f"echo {i}: hello there" for i in range(3)
    ]
    assert [r["n"] for r in fake.requests] == [3], "one upstream call with native n"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == sum(
        count_tokens(f"echo {i}: hello there") for i in range(3)
    )


def test_relays_stream_with_usage_and_n(
    upstream: tuple[FakeUpstream, str], via_ponder: openai.OpenAI
) -> None:
    fake, _ = upstream
    texts = {0: "", 1: ""}
    usage_chunks = []
    for chunk in via_ponder.chat.completions.create(
        model="fake-model",
        messages=HELLO,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    ):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
        if chunk.usage is not None:
            usage_chunks.append(chunk.usage)
    assert texts == {0: "echo 0: hello there", 1: "echo 1: hello there"}
    (usage,) = usage_chunks
    assert usage.completion_tokens == 2 * count_tokens("echo 0: hello there")
    (sent,) = fake.requests
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


def test_unknown_upstream_model_is_404(via_ponder: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        via_ponder.chat.completions.create(model="no-such-model", messages=HELLO)


def test_models_lists_upstream_models_with_prefixes(via_ponder: openai.OpenAI) -> None:
    slugs = default_registry(entry_points=False).slugs
    assert [m.id for m in via_ponder.models.list()] == [
        "fake-model",
        *(f"{slug}-fake-model" for slug in slugs),
    ]


def test_upstream_key_is_sent_and_never_returned(upstream: tuple[FakeUpstream, str]) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization", ""))
        assert request.headers["user-agent"].startswith("ponder/")
        return httpx.Response(401, json={"error": {"message": "bad key sk-secret-123"}})

    backend = OpenAICompatBackend(
        "http://up/v1", api_key="sk-secret-123", http=HandlerUpstream(handler)
    )
    with pytest.raises(BackendError) as info:
        _complete(backend)
    assert seen == ["Bearer sk-secret-123"]
    assert "sk-secret" not in info.value.message and info.value.status_code == 502
    assert info.value.message.endswith("check PONDER_UPSTREAM_API_KEY")


def _complete(backend: OpenAICompatBackend) -> object:
    import asyncio

    async def call() -> object:
        try:
            return await backend.complete("m", [Message("user", "hi")], Sampling(), 1)
        finally:
            await backend.aclose()

    return asyncio.run(call())


@pytest.mark.parametrize(
    ("status", "error", "http_status"),
    [
        (400, InvalidRequest, 400),
        (404, UnknownModel, 404),
        (429, RateLimited, 429),
        (500, BackendError, 502),
        (503, BackendUnavailable, 503),
        (504, BackendTimeout, 504),
    ],
)
def test_upstream_status_mapping(status: int, error: type[Exception], http_status: int) -> None:
    backend = OpenAICompatBackend(
        "http://up/v1",
        http=HandlerUpstream(
            lambda r: httpx.Response(
                status, json={"error": {"message": f"upstream says {status}", "param": "x"}}
            )
        ),
    )
    with pytest.raises(error) as info:
        _complete(backend)
    assert info.value.status_code == http_status
    assert f"upstream says {status}" in str(info.value)


def test_connection_refused_is_503() -> None:
    port = _free_port()
    with pytest.raises(BackendUnavailable):
        _complete(OpenAICompatBackend(f"http://127.0.0.1:{port}/v1", connect_timeout_s=2))


def test_read_timeout_is_504() -> None:
    """An upstream that accepts the request and never answers: the wait for its answer is
    bounded by the timeout, and is not retried (the upstream was reached)."""
    with _silent_server() as port, pytest.raises(BackendTimeout) as info:
        _complete(OpenAICompatBackend(f"http://127.0.0.1:{port}/v1", timeout_s=0.3))
    assert not info.value.retryable and info.value.status_code == 504


@contextlib.contextmanager
def _silent_server() -> Iterator[int]:
    """A port that accepts connections and reads requests, and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ponder_serve_cli_relays_to_upstream(upstream: tuple[FakeUpstream, str]) -> None:
    """`ponder serve --backend openai --base-url ...` as a real process."""
    _, url = upstream
    env = {"PONDER_UPSTREAM_API_KEY": "sk-upstream"}
    with ponder_process(env, "--backend", "openai", "--base-url", url) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        completion = client.chat.completions.create(model="fake-model", messages=HELLO, n=2)
        assert len(completion.choices) == 2
        assert completion.usage is not None and completion.usage.total_tokens > 0
        streamed = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(model="fake-model", messages=HELLO, stream=True)
            if c.choices
        )
        assert streamed == "echo 0: hello there"
    assert base.output and "sk-upstream" not in base.output


async def test_keep_alive_connections_are_reused(upstream: tuple[FakeUpstream, str]) -> None:
    """Requests in a row share one connection (one client port at the upstream); concurrent
    ones each get their own, and come back to the pool for the next ones."""
    import asyncio

    fake, url = upstream
    backend = OpenAICompatBackend(url)
    hello = [Message("user", "hello")]
    try:
        for _ in range(3):
            await backend.complete("fake-model", hello, Sampling())
        assert len(set(fake.ports)) == 1
        await asyncio.gather(*(backend.complete("fake-model", hello, Sampling()) for _ in range(4)))
        assert len(set(fake.ports)) == 4
        await asyncio.gather(*(backend.complete("fake-model", hello, Sampling()) for _ in range(4)))
        assert len(set(fake.ports)) == 4
    finally:
        await backend.aclose()


@pytest.mark.parametrize(
    "payload",
    [b"<html>oops</html>", b"[1, 2]", b'{"choices": "nope"}', b'{"object": "chat.completion"}'],
)
def test_malformed_upstream_answers_are_502(payload: bytes) -> None:
    backend = OpenAICompatBackend(
        "http://up/v1",
        http=HandlerUpstream(lambda r: httpx.Response(200, content=payload)),
    )
    with pytest.raises(BackendError) as info:
        _complete(backend)
    assert info.value.status_code == 502


@pytest.mark.parametrize(
    ("events", "message"),
    [
        (b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n\n', "ended before"),
        (b"data: not-json\n\n", "malformed JSON"),
        (b"data: [1]\n\n", "not an object"),
        (b'data: {"error": {"message": "overloaded"}}\n\n', "overloaded"),
    ],
)
def test_broken_upstream_streams_raise_backend_errors(events: bytes, message: str) -> None:
    import asyncio

    backend = OpenAICompatBackend(
        "http://up/v1",
        http=HandlerUpstream(
            lambda r: httpx.Response(
                200, content=events, headers={"content-type": "text/event-stream"}
            )
        ),
    )

    async def drain() -> None:
        async for _ in backend.stream("m", [Message("user", "hi")], Sampling()):
            pass

    with pytest.raises(BackendError, match=message):
        asyncio.run(drain())


def test_ponder_serve_with_workers_answers_from_several_processes(
    upstream: tuple[FakeUpstream, str],
) -> None:
    """`ponder serve --workers 2` on the openai backend: two server processes share the port,
    each answering with the settings the flags gave."""
    _, url = upstream
    port = _free_port()
    command = [sys.executable, "-m", "ponder.cli", "serve", "--backend", "openai"]
    command += ["--base-url", url, "--port", str(port), "--workers", "2"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, "ponder serve exited"
            assert time.monotonic() < deadline, "ponder serve did not become ready"
            time.sleep(0.2)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) >= 2  # the workers (uvicorn may add a helper process)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        for _ in range(4):
            completion = client.chat.completions.create(model="fake-model", messages=HELLO)
            assert completion.choices[0].message.content == "echo 0: hello there"
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def test_the_embedded_engine_refuses_several_workers() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ponder.cli", "serve", "--workers", "2", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "the embedded engine runs in one process" in done.stderr


def test_a_clients_own_key_goes_to_the_upstream_where_the_server_passes_keys_on(
    upstream: tuple[FakeUpstream, str],
) -> None:
    fake, url = upstream
    settings = Settings(
        backend="openai", base_url=url, upstream_api_key="sk-server", upstream_key_from_client=True
    )
    with running_server(create_app(settings)) as ponder_url:
        client = openai.OpenAI(base_url=ponder_url, api_key="sk-client-1", max_retries=0)
        client.chat.completions.create(model="bon-fake-model", messages=HELLO)  # 4 calls at once
        bon = len(fake.keys)
        assert list(client.chat.completions.create(model="fake-model", messages=HELLO, stream=True))
        claude = anthropic.Anthropic(
            base_url=ponder_url.removesuffix("/v1"), api_key="sk-client-2", max_retries=0
        )
        claude.messages.create(model="fake-model", max_tokens=16, messages=HELLO)
        keyless = httpx.post(
            f"{ponder_url}/chat/completions", json={"model": "fake-model", "messages": HELLO}
        )
        assert keyless.status_code == 200
    assert bon == 4  # the candidates in one call of n=3, then 3 ratings
    assert fake.keys == [
        *["Bearer sk-client-1"] * (bon + 1),
        "Bearer sk-client-2",  # the Anthropic SDK's x-api-key
        "Bearer sk-server",  # a client without a key: the server's own
    ]


def test_an_upstream_refusing_a_clients_key_names_it_and_never_returns_it() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        key = request.headers["authorization"]
        return httpx.Response(401, json={"error": {"message": f"bad key {key}"}})

    backend = OpenAICompatBackend(
        "http://up/v1", api_key="sk-server", http=HandlerUpstream(refuse), key_from_client=True
    )

    async def call() -> None:
        CLIENT_KEY.set("sk-client-secret-9")
        try:
            await backend.complete("m", [Message("user", "hi")], Sampling(), 1)
        finally:
            await backend.aclose()

    with pytest.raises(BackendError) as info:
        asyncio.run(call())
    assert "sk-client-secret" not in info.value.message
    assert info.value.message.endswith("check the key your request sent")


def test_passing_keys_on_is_refused_beside_ponders_own_keys_and_off_the_openai_backend() -> None:
    with pytest.raises(ValueError, match="cannot be used with Ponder's own API keys"):
        create_app(
            Settings(
                backend="openai",
                base_url="http://up/v1",
                api_keys="tenant-a:k-1",
                upstream_key_from_client=True,
            )
        )
    with pytest.raises(ValueError, match="needs the openai backend"):
        create_app(Settings(backend="vllm", model="m", upstream_key_from_client=True))
