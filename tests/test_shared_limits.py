"""Rate limits and the concurrency cap shared by replicas through a real Redis server: two apps
on one Redis are two replicas. And what a Redis that fails or hangs does to a request."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
from fastapi import FastAPI

from ponder.config import Settings
from ponder.errors import LimitsUnavailable, Overloaded, RateLimited
from ponder.keys import Principal
from ponder.proxy import create_app
from ponder.proxy.shared_limits import RedisLimits, SharedAdmission, SharedRateLimiter
from ponder.testing import ScriptedBackend
from tests.conftest import MODEL, asgi_client, assert_error, scripted, user
from tests.services import RedisServer, redis_server
from tests.test_limits import bearer, keys
from tests.test_metrics import parse, value

BODY = {"model": MODEL, "messages": [user("hi")]}
CHAT = "/v1/chat/completions"


@pytest.fixture
def redis_url(redis: RedisServer) -> str:
    """The session's Redis server, emptied for this test."""
    with redis_sync.Redis.from_url(redis.url) as client:
        client.flushall()
    return redis.url


def replica(url: str, backend: ScriptedBackend, **settings: Any) -> FastAPI:
    return create_app(Settings(redis_url=url, **settings), backend=backend)


async def leases_back(url: str) -> None:
    """Wait until every concurrency lease is back (they go back in the background)."""
    with redis_sync.Redis.from_url(url) as client:
        for _ in range(500):
            if client.zcard("ponder:inflight") == 0:
                return
            await asyncio.sleep(0.01)
    raise AssertionError("a lease was never given back")


async def close(*apps: FastAPI) -> None:
    for app in apps:
        await app.state.ponder.shared_limits.aclose()


async def test_two_replicas_share_one_keys_rate_not_twice_it(
    redis_url: str, tmp_path: Path
) -> None:
    backends = [scripted(lambda call, i: "ok") for _ in range(2)]
    path = keys(tmp_path, slow=3, other=None)
    apps = [replica(redis_url, b, keys_file=path) for b in backends]
    statuses, refused = [], []
    async with asgi_client(apps[0]) as a, asgi_client(apps[1]) as b:
        for i in range(8):  # alternately to each replica
            r = await (a, b)[i % 2].post(CHAT, json=BODY, headers=bearer("slow"))
            statuses.append(r.status_code)
            if r.status_code == 429:
                refused.append(r)
        other = await b.post(CHAT, json=BODY, headers=bearer("other"))  # no limit of its own
        scrape = await b.get("/metrics", headers=bearer("slow"))
    await close(*apps)
    assert statuses == [200, 200, 200, 429, 429, 429, 429, 429]
    assert_error(refused[0], 429, type="rate_limit_error", code="rate_limit_exceeded")
    assert {r.headers["retry-after"] for r in refused} == {"20"}  # 60 s / 3 requests
    assert other.status_code == 200
    assert sum(len(backend.calls) for backend in backends) == 4
    samples = parse(scrape.text)
    assert (
        value(samples, "ponder_rejected_requests_total", reason="rate_limit") == 3.0
    )  # b refused 3 of 5
    assert value(samples, "ponder_limit_backend_errors_total") == 0.0


async def test_the_bucket_is_atomic_under_concurrent_checks_from_two_replicas(
    redis_url: str,
) -> None:
    replicas = [RedisLimits(redis_url, timeout_s=10.0) for _ in range(2)]
    limiters = [SharedRateLimiter(r) for r in replicas]
    key = Principal("burst", rate_limit_per_minute=10)
    results = await asyncio.gather(
        *(limiters[i % 2].take(key) for i in range(50)), return_exceptions=True
    )
    for r in replicas:
        await r.aclose()
    assert results.count(None) == 10
    refusals = [r for r in results if r is not None]
    assert len(refusals) == 40
    assert all(isinstance(r, RateLimited) for r in refusals)
    assert all(r.headers["Retry-After"] in {"6", "5"} for r in refusals)  # type: ignore[union-attr]


async def test_with_redis_gone_open_lets_requests_through_and_counts_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = scripted(lambda call, i: "ok")
    with redis_server() as server:
        app = replica(server.url, backend, rate_limit_per_minute=100, redis_timeout_s=1.0)
        async with asgi_client(app) as c:
            before = await c.post(CHAT, json=BODY)
            await leases_back(server.url)
            server.stop()
            with caplog.at_level(logging.WARNING, "ponder.proxy.shared_limits"):
                after = [await c.post(CHAT, json=BODY) for _ in range(2)]
            scrape = await c.get("/metrics")
    await close(app)
    assert before.status_code == 200
    assert [r.status_code for r in after] == [200, 200]
    assert len(backend.calls) == 3
    # two requests, each with a failed rate limit call and a failed concurrency cap call
    assert value(parse(scrape.text), "ponder_limit_backend_errors_total") == 4.0
    warnings = [r for r in caplog.records if r.name == "ponder.proxy.shared_limits"]
    assert len(warnings) == 1  # at most one a minute
    assert "letting requests through" in warnings[0].getMessage()


async def test_with_redis_gone_closed_answers_503_without_a_backend_call() -> None:
    backend = scripted(lambda call, i: "ok")
    with redis_server() as server:
        app = replica(
            server.url, backend, rate_limit_per_minute=100, limits_on_redis_error="closed"
        )
        server.stop()
        async with asgi_client(app) as c:
            r = await c.post(CHAT, json=BODY)
            scrape = await c.get("/metrics")
    await close(app)
    assert_error(r, 503, type="api_error", code="limits_unavailable")
    assert "Redis" in r.json()["error"]["message"]
    assert r.headers["retry-after"] == "1"
    assert backend.calls == []
    assert value(parse(scrape.text), "ponder_limit_backend_errors_total") == 1.0


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung Redis)."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for s in accepted:
        s.close()
    listener.close()


@pytest.mark.parametrize(("policy", "status"), [("open", 200), ("closed", 503)])
async def test_a_hung_redis_holds_a_request_no_longer_than_the_timeout(
    silent_port: int, policy: str, status: int
) -> None:
    backend = scripted(lambda call, i: "ok")
    url = f"redis://127.0.0.1:{silent_port}/0"
    app = replica(
        url,
        backend,
        rate_limit_per_minute=100,
        redis_timeout_s=0.2,
        limits_on_redis_error=policy,
    )
    async with asgi_client(app) as c:
        started = time.monotonic()
        r = await asyncio.wait_for(c.post(CHAT, json=BODY), 10)
        elapsed = time.monotonic() - started
    await close(app)
    assert r.status_code == status
    # open: the rate limit call and the concurrency cap call each wait 0.2 s; closed: one
    assert elapsed < 0.2 * (2 if policy == "open" else 1) + 0.6


async def test_the_concurrency_cap_holds_across_replicas(redis_url: str) -> None:
    backends = [scripted(lambda call, i: "ok") for _ in range(2)]
    apps = [replica(redis_url, b, max_concurrent_requests=1, queue_timeout_s=0.3) for b in backends]
    backends[0].hold()
    async with asgi_client(apps[0]) as a, asgi_client(apps[1]) as b:
        running = asyncio.create_task(a.post(CHAT, json=BODY))
        await backends[0].wait_for_in_flight(1)
        refused = await b.post(CHAT, json=BODY)  # replica b has a free slot of its own
        backends[0].release()
        assert (await running).status_code == 200
        await leases_back(redis_url)
        admitted = await b.post(CHAT, json=BODY)
    await close(*apps)
    assert_error(refused, 503, type="server_error", code="server_overloaded")
    assert "shared limit of 1" in refused.json()["error"]["message"]
    assert refused.headers["retry-after"] == "1"
    assert backends[1].calls and len(backends[1].calls) == 1
    assert admitted.status_code == 200


async def test_a_crashed_replicas_leases_expire(redis_url: str) -> None:
    crashed, alive = RedisLimits(redis_url, 5.0), RedisLimits(redis_url, 5.0)
    gone = SharedAdmission(crashed, limit=1, max_queued=0, timeout_s=0.1, lease_s=0.3)
    await gone.acquire()  # never released: the replica crashed
    other = SharedAdmission(alive, limit=1, max_queued=0, timeout_s=0.1, lease_s=0.3)
    with pytest.raises(Overloaded):
        await other.acquire()
    await asyncio.sleep(0.3)
    await asyncio.wait_for(other.acquire(), 1)  # the lease expired
    other.release()
    for r in (crashed, alive):
        await r.aclose()


async def test_closed_refuses_a_slot_when_redis_fails(redis_url: str) -> None:
    broken = RedisLimits("redis://127.0.0.1:1/0", 0.2, on_error="closed")
    admission = SharedAdmission(broken, limit=2, max_queued=0, timeout_s=1.0, lease_s=10)
    with pytest.raises(LimitsUnavailable):
        await admission.acquire()
    assert admission.running == 0  # the local slot went back
    await broken.aclose()
