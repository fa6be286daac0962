"""Retries with backoff and fallback to further upstreams (`ponder.backends.resilience`): unit
tests over scripted failures, then through the server over a mocked HTTP upstream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence

import httpx
import pytest

from ponder.backends.base import Capabilities
from ponder.backends.openai_compat import OpenAICompatBackend, retry_after_s
from ponder.backends.resilience import ResilientBackend, RetryPolicy
from ponder.config import Settings
from ponder.errors import (
    BackendError,
    BackendUnavailable,
    InvalidRequest,
    UpstreamRateLimited,
)
from ponder.proxy import create_app
from ponder.testing import HandlerUpstream
from ponder.types import Completion, Delta, Message, Sampling, Usage
from tests.conftest import asgi_client, assert_error, sse_data, stream_error, user
from tests.test_metrics import parse, value

HI = [Message("user", "hi")]


class Flaky:
    """A backend whose calls fail with the scripted errors, in order, then succeed."""

    name = "flaky"
    capabilities = Capabilities(native_n=True)

    def __init__(self, failures: Sequence[BackendError], label: str = "ok") -> None:
        self.failures = list(failures)
        self.label = label
        self.calls = 0

    def _next(self) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)

    async def complete(
        self, model: str, messages: Sequence[Message], sampling: Sampling, n: int = 1
    ) -> list[Completion]:
        self._next()
        return [Completion(content=self.label, usage=Usage(1, 1))]

    async def stream(
        self, model: str, messages: Sequence[Message], sampling: Sampling, n: int = 1
    ) -> AsyncIterator[Delta]:
        self._next()
        yield Delta(content=self.label)
        yield Delta(finish_reason="stop")

    async def models(self) -> list[str]:
        self._next()
        return ["m"]

    def serves(self, model: str) -> bool:
        return True

    async def ready(self) -> bool:
        return True

    async def aclose(self) -> None:
        pass


def transient(retry_after: float | None = None) -> BackendError:
    return BackendUnavailable("upstream 503", retryable=True, retry_after=retry_after)


def resilient(
    *upstreams: Flaky, retries: int = 2, max_wait_s: float = 10.0
) -> tuple[ResilientBackend, list[float]]:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(0)  # let other calls run, as a real wait would

    backend = ResilientBackend(
        list(upstreams),
        RetryPolicy(retries=retries, backoff_s=0.5, max_wait_s=max_wait_s),
        sleep=sleep,
        jitter=lambda: 1.0,
    )
    return backend, waits


def complete(backend: ResilientBackend) -> list[Completion]:
    return asyncio.run(backend.complete("m", HI, Sampling()))


def test_transient_failures_are_retried_with_doubling_backoff() -> None:
    upstream = Flaky([transient(), transient()])
    backend, waits = resilient(upstream)
    assert complete(backend)[0].content == "ok"
    assert upstream.calls == 3
    assert waits == [0.5, 1.0]


def test_retries_are_bounded_and_the_last_error_is_raised() -> None:
    last = transient()
    upstream = Flaky([transient(), transient(), last, transient()])
    backend, waits = resilient(upstream)
    with pytest.raises(BackendUnavailable) as info:
        complete(backend)
    assert info.value is last
    assert upstream.calls == 3  # 1 + retries
    assert len(waits) == 2


def test_retry_after_is_honoured_within_the_cap_and_not_waited_beyond_it() -> None:
    upstream = Flaky([transient(retry_after=3.0)])
    backend, waits = resilient(upstream)
    complete(backend)
    assert waits == [3.0]

    too_long = UpstreamRateLimited("slow down", retryable=True, retry_after=60.0)
    upstream = Flaky([too_long])
    backend, waits = resilient(upstream, max_wait_s=10.0)
    with pytest.raises(UpstreamRateLimited) as info:
        complete(backend)
    assert upstream.calls == 1 and waits == []
    assert info.value.headers == {"Retry-After": "60"}


def test_permanent_failures_are_not_retried() -> None:
    for error in (InvalidRequest("bad"), BackendError("bad answer")):
        upstream = Flaky([error])  # type: ignore[list-item]
        backend, waits = resilient(upstream)
        with pytest.raises(type(error)):
            complete(backend)
        assert upstream.calls == 1 and waits == []


def test_falls_back_to_the_next_upstream_when_retries_are_spent() -> None:
    primary = Flaky([transient()] * 3, label="primary")
    fallback = Flaky([], label="fallback")
    backend, waits = resilient(primary, fallback)
    assert complete(backend)[0].content == "fallback"
    assert (primary.calls, fallback.calls) == (3, 1)
    assert waits == [0.5, 1.0]  # no wait before moving on


def test_each_upstream_gets_at_most_one_plus_retries_calls() -> None:
    upstreams = [Flaky([transient()] * 10) for _ in range(3)]
    backend, _ = resilient(*upstreams, retries=1)
    with pytest.raises(BackendUnavailable):
        complete(backend)
    assert [u.calls for u in upstreams] == [2, 2, 2]


def test_concurrent_calls_keep_their_own_count() -> None:
    upstream = Flaky([transient()] * 4)
    backend, _ = resilient(upstream, retries=2)

    async def both() -> list[list[Completion]]:
        return await asyncio.gather(
            backend.complete("m", HI, Sampling()), backend.complete("m", HI, Sampling())
        )

    assert [c[0].content for c in asyncio.run(both())] == ["ok", "ok"]
    assert upstream.calls == 6


class BreaksMidStream(Flaky):
    async def stream(
        self, model: str, messages: Sequence[Message], sampling: Sampling, n: int = 1
    ) -> AsyncIterator[Delta]:
        self.calls += 1
        yield Delta(content="half")
        raise transient()


def test_a_stream_is_retried_before_its_first_delta_only() -> None:
    async def drain(backend: ResilientBackend) -> list[Delta]:
        return [d async for d in backend.stream("m", HI, Sampling())]

    upstream = Flaky([transient()])
    backend, _ = resilient(upstream)
    deltas = asyncio.run(drain(backend))
    assert [d.content for d in deltas] == ["ok", None] and upstream.calls == 2

    broken, fallback = BreaksMidStream([]), Flaky([])
    backend, waits = resilient(broken, fallback)
    with pytest.raises(BackendUnavailable):
        asyncio.run(drain(backend))
    assert (broken.calls, fallback.calls, waits) == (1, 0, [])


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("3", 3.0), ("0.5", 0.5), ("-2", 0.0), ("soon", None), (None, None), ("", None)],
)
def test_retry_after_header_values(value: str | None, seconds: float | None) -> None:
    assert retry_after_s(value) == seconds


def test_retry_after_as_an_http_date() -> None:
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    later = retry_after_s("Fri, 01 Jan 2100 00:00:00 GMT")
    assert later is not None and later > 10**9


# ---- through the server, over a mocked HTTP upstream ----------------------------------------


class Upstream:
    """An HTTP upstream answering each request with the next scripted (status, body); once the
    script is spent, with an echo of the last user message."""

    def __init__(self, script: Sequence[tuple[int, object]] = (), *, retry_after: str = "0"):
        self.script = list(script)
        self.retry_after = retry_after
        self.requests: list[dict[str, object]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.requests.append(body)
        if self.script:
            status, payload = self.script.pop(0)
            headers = {"retry-after": self.retry_after} if status in (429, 503) else {}
            return httpx.Response(status, json=payload, headers=headers)
        text = f"echo: {body['messages'][-1]['content']}"
        if body.get("stream"):
            events = [
                {"choices": [{"index": 0, "delta": {"content": text}}]},
                {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            ]
            sse = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
            return httpx.Response(200, text=sse, headers={"content-type": "text/event-stream"})
        return httpx.Response(
            200,
            json={
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                    for i in range(int(body.get("n", 1)))
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
            },
        )


FAIL_500 = (500, {"error": {"message": "boom"}})
FAIL_429 = (429, {"error": {"message": "slow down"}})


def server(*upstreams: Upstream, retries: int = 2) -> Callable[..., object]:
    backend = ResilientBackend(
        [OpenAICompatBackend("http://up/v1", http=HandlerUpstream(u.handle)) for u in upstreams],
        RetryPolicy(retries=retries, backoff_s=0.0, max_wait_s=5.0),
    )
    app = create_app(Settings(), backend=backend)

    async def post(**body: object) -> httpx.Response:
        body.setdefault("messages", [user("hello")])
        async with asgi_client(app) as client:
            return await client.post("/v1/chat/completions", json={"model": "m", **body})

    return post


async def test_a_failing_upstream_costs_at_most_planned_calls_times_one_plus_retries() -> None:
    upstream = Upstream([FAIL_500] * 100)
    post = server(upstream, retries=2)
    response = await post(model="bon-m", ponder={"bon": {"candidates": 3}})  # type: ignore[operator]
    assert response.status_code == 502
    # bon plans one call for its 3 candidates (native n) and stops at the failure: 1 x (1 + 2)
    assert len(upstream.requests) == 3


async def test_a_429_is_retried_then_succeeds_and_the_answer_is_the_clients() -> None:
    upstream = Upstream([FAIL_429, FAIL_500])
    post = server(upstream)
    response = await post(messages=[user("question 17")])  # type: ignore[operator]
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "echo: question 17"
    assert response.headers["x-ponder-backend-calls"] == "1"  # the client's view: one call
    assert len(upstream.requests) == 3


async def test_an_upstream_429_that_persists_reaches_the_client_with_retry_after() -> None:
    upstream = Upstream([FAIL_429] * 10, retry_after="30")
    post = server(upstream)
    response = await post()  # type: ignore[operator]
    assert_error(response, 429, type="rate_limit_error", code="rate_limit_exceeded")
    assert response.headers["retry-after"] == "30"
    assert len(upstream.requests) == 1  # 30 s is beyond max_wait_s: not waited for


async def test_fallback_answers_when_the_primary_keeps_failing() -> None:
    primary, fallback = Upstream([FAIL_500] * 10), Upstream()
    post = server(primary, fallback, retries=1)
    response = await post(messages=[user("q")], stream=True)  # type: ignore[operator]
    assert response.status_code == 200
    assert "echo: q" in "".join(sse_data(response.text))
    assert sse_data(response.text)[-1] == "[DONE]"
    assert (len(primary.requests), len(fallback.requests)) == (2, 1)


async def test_no_fallback_once_the_stream_has_reached_the_client() -> None:
    half = "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": "Half"}}]})

    primary = Upstream()
    fallback = Upstream()

    def breaks(request: httpx.Request) -> httpx.Response:
        primary.requests.append(json.loads(request.content))
        return httpx.Response(
            200, text=half + "\n\n", headers={"content-type": "text/event-stream"}
        )

    backend = ResilientBackend(
        [
            OpenAICompatBackend("http://a/v1", http=HandlerUpstream(breaks)),
            OpenAICompatBackend("http://b/v1", http=HandlerUpstream(fallback.handle)),
        ],
        RetryPolicy(retries=2, backoff_s=0.0),
    )
    app = create_app(Settings(), backend=backend)
    async with asgi_client(app) as client:
        response = await client.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [user("q")], "stream": True},
        )
    assert stream_error(response.text)["code"] == "backend_error"
    assert "Half" in response.text
    assert (len(primary.requests), len(fallback.requests)) == (1, 0)


async def test_retries_and_fallbacks_are_counted_in_the_metrics() -> None:
    primary, fallback = Upstream([FAIL_500] * 10), Upstream()
    backend = ResilientBackend(
        [
            OpenAICompatBackend("http://a/v1", http=HandlerUpstream(primary.handle)),
            OpenAICompatBackend("http://b/v1", http=HandlerUpstream(fallback.handle)),
        ],
        RetryPolicy(retries=2, backoff_s=0.0),
    )
    app = create_app(Settings(), backend=backend)
    async with asgi_client(app) as client:
        body = {"model": "m", "messages": [user("q")]}
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
        samples = parse((await client.get("/metrics")).text)
    assert value(samples, "ponder_upstream_retries_total", event="retry") == 2.0
    assert value(samples, "ponder_upstream_retries_total", event="fallback") == 1.0
