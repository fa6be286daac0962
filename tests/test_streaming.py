"""SSE behaviour: in-band errors, early errors as HTTP statuses, cancellation on disconnect."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import httpx
import pytest

from ponder.config import Settings
from ponder.errors import BackendUnavailable
from ponder.proxy import create_app
from ponder.testing import ScriptedBackend, running_server
from ponder.types import Delta, Message, Sampling, Usage
from tests.conftest import MODEL, asgi_client, scripted, sse_data, user


@dataclass
class TokenBackend(ScriptedBackend):
    """Streams `tokens` one by one, `delay_s` apart; fails after `fail_after` tokens if set."""

    tokens: int = 5
    delay_s: float = 0.0
    fail_after: int | None = None
    model_ids: tuple[str, ...] = (MODEL,)
    produced: int = 0
    closed: bool = False
    finished: bool = False

    async def stream(
        self, model: str, messages: Sequence[Message], sampling: Sampling, n: int = 1
    ) -> AsyncIterator[Delta]:
        try:
            for i in range(self.tokens):
                if self.fail_after is not None and i == self.fail_after:
                    raise BackendUnavailable("upstream went away")
                await asyncio.sleep(self.delay_s)
                self.produced += 1
                yield Delta(content=f"t{i} ")
            yield Delta(finish_reason="stop")
            yield Delta(usage=Usage(3, self.tokens))
            self.finished = True
        finally:
            self.closed = True


def stream_body(**more: object) -> dict[str, object]:
    return {"model": MODEL, "messages": [user("go")], "stream": True, **more}


async def post_stream(backend: TokenBackend) -> httpx.Response:
    async with asgi_client(create_app(Settings(), backend=backend)) as c:
        return await c.post("/v1/chat/completions", json=stream_body())


async def test_error_after_first_token_is_sent_in_band() -> None:
    response = await post_stream(TokenBackend(tokens=5, fail_after=2))
    assert response.status_code == 200
    data = sse_data(response.text)
    assert json.loads(data[0])["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    contents = [json.loads(d)["choices"][0]["delta"].get("content") for d in data[1:-1]]
    assert contents == ["t0 ", "t1 "]
    error = json.loads(data[-1])["error"]
    assert error == {
        "message": "upstream went away",
        "type": "api_error",
        "param": None,
        "code": "backend_unavailable",
    }
    assert "[DONE]" not in data


async def test_error_before_first_token_is_an_http_status() -> None:
    response = await post_stream(TokenBackend(tokens=5, fail_after=0))
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "backend_unavailable"


async def test_one_finish_reason_per_choice_and_done_last(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/chat/completions",
        json=stream_body(n=2, stream_options={"include_usage": True}),
    )
    data = sse_data(response.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    finishes = [
        (ch["index"], ch["finish_reason"])
        for c in chunks
        for ch in c["choices"]
        if ch["finish_reason"]
    ]
    assert sorted(finishes) == [(0, "stop"), (1, "stop")]
    assert [c for c in chunks if c["usage"] is not None] == [chunks[-1]]
    assert chunks[-1]["choices"] == []
    assert len({c["id"] for c in chunks}) == 1


def test_disconnect_cancels_the_backend_stream() -> None:
    backend = TokenBackend(tokens=200, delay_s=0.02)
    with running_server(create_app(Settings(), backend=backend)) as url:
        with (
            httpx.Client() as http,
            http.stream("POST", f"{url}/chat/completions", json=stream_body()) as response,
        ):
            lines = response.iter_lines()
            while "t2" not in next(lines):
                pass
        deadline = time.monotonic() + 1.0
        while not backend.closed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert backend.closed, "the backend stream was not closed within 1 s of the disconnect"
        assert not backend.finished
        produced = backend.produced
        time.sleep(0.2)
        assert backend.produced == produced < 50


@pytest.mark.parametrize("stream", [False, True])
async def test_unknown_model_fails_before_streaming(
    client: httpx.AsyncClient, stream: bool
) -> None:
    response = await client.post(
        "/v1/chat/completions", json={"model": "nope", "messages": [user("x")], "stream": stream}
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


async def test_backend_failure_non_streamed_is_openai_shaped() -> None:
    backend = scripted([BackendUnavailable("no upstream")])
    app = create_app(Settings(), backend=backend)
    async with asgi_client(app) as c:
        response = await c.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": [user("x")]}
        )
    assert response.status_code == 503
    assert response.json() == {
        "error": {
            "message": "no upstream",
            "type": "api_error",
            "param": None,
            "code": "backend_unavailable",
        }
    }
    assert response.headers["x-request-id"]


def test_disconnect_cancels_a_non_streamed_request() -> None:
    backend = scripted(latency_s=30.0)
    with running_server(create_app(Settings(), backend=backend)) as url:
        with pytest.raises(httpx.ReadTimeout), httpx.Client(timeout=0.5) as http:
            http.post(f"{url}/chat/completions", json={"model": MODEL, "messages": [user("x")]})
        deadline = time.monotonic() + 1.0
        while backend.cancelled == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert backend.cancelled == 1, "the backend call was not cancelled within 1 s"
        assert backend.in_flight == 0
