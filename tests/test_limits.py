"""Admission control: the cap on concurrent chat requests with its bounded queue (503), and the
per-key rate limits (429), both with `Retry-After` and without any backend call."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from ponder.config import Settings
from ponder.errors import Overloaded, RateLimited
from ponder.keys import KeyEntry, KeysFile, Principal, digest, write_keys_file
from ponder.proxy import create_app
from ponder.proxy.limits import Admission, RateLimiter
from tests.conftest import MODEL, asgi_client, assert_error, chat_scope, scripted, sse_data, user
from tests.test_metrics import parse, value

BODY = {"model": MODEL, "messages": [user("hi")]}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_gives_its_burst_then_one_request_per_interval() -> None:
    clock = Clock()
    limiter = RateLimiter(default_per_minute=3, clock=clock)
    key = Principal("a")
    for _ in range(3):
        limiter.check(key)
    with pytest.raises(RateLimited) as info:
        limiter.check(key)
    assert info.value.retry_after == pytest.approx(20.0)
    assert info.value.headers == {"Retry-After": "20"}
    clock.now += 19.9
    with pytest.raises(RateLimited):
        limiter.check(key)
    clock.now += 0.2
    limiter.check(key)  # one token came back after 20 s


def test_keys_have_their_own_buckets_and_limits() -> None:
    clock = Clock()
    limiter = RateLimiter(default_per_minute=1, clock=clock)
    limiter.check(Principal("a"))
    limiter.check(Principal("b"))  # another key, another bucket
    with pytest.raises(RateLimited):
        limiter.check(Principal("a"))
    generous = Principal("c", rate_limit_per_minute=100)
    for _ in range(100):
        limiter.check(generous)
    unlimited = Principal("d", rate_limit_per_minute=0)
    for _ in range(1000):
        limiter.check(unlimited)


async def test_admission_caps_running_requests_and_bounds_its_queue() -> None:
    admission = Admission(limit=2, max_queued=1, timeout_s=5.0)
    await admission.acquire()
    await admission.acquire()
    queued = asyncio.create_task(admission.acquire())
    await asyncio.sleep(0)
    assert (admission.running, admission.waiting) == (2, 1)
    with pytest.raises(Overloaded) as info:
        await admission.acquire()  # the queue is full: refused at once
    assert info.value.status_code == 503 and info.value.headers == {"Retry-After": "1"}
    admission.release()
    await queued
    assert (admission.running, admission.waiting) == (2, 0)


async def test_a_request_waits_at_most_the_queue_timeout() -> None:
    admission = Admission(limit=1, max_queued=5, timeout_s=0.05)
    await admission.acquire()
    with pytest.raises(Overloaded, match=r"within 0\.05 s"):
        await admission.acquire()
    assert admission.waiting == 0


async def test_a_cancelled_waiter_takes_no_slot() -> None:
    admission = Admission(limit=1, max_queued=5, timeout_s=5.0)
    await admission.acquire()
    waiter = asyncio.create_task(admission.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    admission.release()
    assert (admission.running, admission.waiting) == (0, 0)
    await asyncio.wait_for(admission.acquire(), 1)  # the slot is free


def keys(tmp_path: Path, **limits: int | None) -> Path:
    path = tmp_path / "keys.yaml"
    entries = [
        KeyEntry(name=name, sha256=digest(f"pk-{name}-0123456789"), rate_limit_per_minute=limit)
        for name, limit in limits.items()
    ]
    write_keys_file(path, KeysFile(keys=entries))
    return path


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer pk-{name}-0123456789"}


async def test_over_its_rate_a_key_gets_429_with_retry_after_and_no_backend_call(
    tmp_path: Path,
) -> None:
    backend = scripted(lambda call, i: "ok")
    settings = Settings(keys_file=keys(tmp_path, slow=2, other=None), rate_limit_per_minute=100)
    app = create_app(settings, backend=backend)
    async with asgi_client(app) as c:
        statuses = []
        for _ in range(3):
            r = await c.post("/v1/chat/completions", json=BODY, headers=bearer("slow"))
            statuses.append(r.status_code)
        other = await c.post("/v1/chat/completions", json=BODY, headers=bearer("other"))
        scrape = await c.get("/metrics", headers=bearer("slow"))  # not counted against it
    assert statuses == [200, 200, 429]
    assert_error(r, 429, type="rate_limit_error", code="rate_limit_exceeded")
    assert int(r.headers["retry-after"]) == 30
    assert other.status_code == 200
    assert len(backend.calls) == 3
    samples = parse(scrape.text)
    assert value(samples, "ponder_rejected_requests_total", reason="rate_limit") == 1.0


async def test_over_the_cap_requests_queue_then_overflow_with_503_at_once() -> None:
    backend = scripted(lambda call, i: "ok")
    settings = Settings(max_concurrent_requests=2, max_queued_requests=1, queue_timeout_s=30)
    app = create_app(settings, backend=backend)
    backend.hold()
    async with asgi_client(app) as c:
        running = [asyncio.create_task(c.post("/v1/chat/completions", json=BODY)) for _ in range(2)]
        await backend.wait_for_in_flight(2)
        queued = asyncio.create_task(c.post("/v1/chat/completions", json=BODY))
        for _ in range(1000):  # until the third request is in the queue
            if app.state.ponder.chat.admission.waiting:
                break
            await asyncio.sleep(0.001)
        # The backend is still held: this answer can only come from the admission check.
        refused = await asyncio.wait_for(c.post("/v1/chat/completions", json=BODY), 2)
        assert len(backend.calls) == 2  # the queued request has not started
        backend.release()
        answered = await asyncio.gather(*running, queued)
        scrape = await c.get("/metrics")
    assert_error(refused, 503, type="server_error", code="server_overloaded")
    assert refused.headers["retry-after"] == "1"
    assert [r.status_code for r in answered] == [200, 200, 200]
    assert len(backend.calls) == 3
    assert value(parse(scrape.text), "ponder_rejected_requests_total", reason="overload") == 1.0
    assert app.state.ponder.chat.admission.running == 0


def streamed_request() -> Callable[[], Awaitable[dict[str, object]]]:
    """An ASGI `receive` whose client sends a streamed chat request, then stays connected."""
    received: list[bool] = []

    async def receive() -> dict[str, object]:
        if not received:
            received.append(True)
            body = json.dumps({**BODY, "stream": True}).encode()
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return receive


async def test_a_stream_holds_its_slot_until_it_ends() -> None:
    backend = scripted(lambda call, i: "streamed words")
    settings = Settings(max_concurrent_requests=1, max_queued_requests=0)
    app = create_app(settings, backend=backend)
    admission = app.state.ponder.chat.admission
    first_chunk, go_on = asyncio.Event(), asyncio.Event()
    sent: list[bytes] = []
    receive = streamed_request()

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.body":
            sent.append(message.get("body", b""))  # type: ignore[arg-type]
            if len(sent) == 1:
                first_chunk.set()
                await go_on.wait()  # the client is slow to read the rest

    scope = chat_scope()
    streaming = asyncio.create_task(app(scope, receive, send))  # type: ignore[arg-type]
    await asyncio.wait_for(first_chunk.wait(), 5)
    async with asgi_client(app) as c:
        assert admission.running == 1
        refused = await c.post("/v1/chat/completions", json=BODY)
        go_on.set()
        await asyncio.wait_for(streaming, 5)
        assert admission.running == 0
        after = await c.post("/v1/chat/completions", json=BODY)
    assert sse_data(b"".join(sent).decode())[-1] == "[DONE]"
    assert refused.status_code == 503
    assert after.status_code == 200


async def test_unauthenticated_requests_take_no_queue_place(tmp_path: Path) -> None:
    backend = scripted(lambda call, i: "ok")
    settings = Settings(keys_file=keys(tmp_path, a=None), max_concurrent_requests=1)
    settings = settings.model_copy(update={"max_queued_requests": 0})
    app = create_app(settings, backend=backend)
    backend.hold()
    async with asgi_client(app) as c:
        first = asyncio.create_task(c.post("/v1/chat/completions", json=BODY, headers=bearer("a")))
        await backend.wait_for_in_flight(1)
        stranger = await c.post(
            "/v1/chat/completions", json=BODY, headers={"Authorization": "Bearer nope"}
        )
        backend.release()
        assert (await first).status_code == 200
    assert stranger.status_code == 401


async def test_a_bad_request_is_answered_400_even_when_full() -> None:
    backend = scripted(lambda call, i: "ok")
    settings = Settings(max_concurrent_requests=1, max_queued_requests=0)
    app = create_app(settings, backend=backend)
    backend.hold()
    async with asgi_client(app) as c:
        first = asyncio.create_task(c.post("/v1/chat/completions", json=BODY))
        await backend.wait_for_in_flight(1)
        bad = await c.post("/v1/chat/completions", json={**BODY, "model": "nope-nope"})
        backend.release()
        await first
    assert bad.status_code == 404


@pytest.mark.parametrize("spec_version", ["2.0", "2.4"])
async def test_a_stream_whose_client_breaks_gives_its_slot_back(spec_version: str) -> None:
    """However the server reports a broken client (ASGI 2.4: `send` raises OSError), the slot
    comes back."""
    backend = scripted(lambda call, i: "several streamed words here")
    app = create_app(Settings(max_concurrent_requests=1), backend=backend)
    admission = app.state.ponder.chat.admission
    receive = streamed_request()

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.body" and admission.running:
            raise OSError("connection reset by peer")

    scope = {**chat_scope(), "asgi": {"version": "3.0", "spec_version": spec_version}}
    with contextlib.suppress(Exception):
        await asyncio.wait_for(app(scope, receive, send), 5)  # type: ignore[arg-type]
    assert admission.running == 0
    async with asgi_client(app) as c:
        assert (await c.post("/v1/chat/completions", json=BODY)).status_code == 200
