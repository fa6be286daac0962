"""Cancellation: when a client goes, every upstream call made for it closes within 1 s, and no
new one starts.

The upstream is a `FaultyUpstream` whose calls stall (no answer ever), so each call is open
until someone closes it; the upstream records when its client (Ponder) closed each connection.
The routes fan out: `sc` with 5 samples and n=3 (three votes), side by side (`sc|re2`), and a
pipeline (`sc&re2`, whose second stage must never start).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ponder.config import Settings
from ponder.faults import FaultyUpstream, UpstreamRecord, marker_policy
from ponder.proxy import create_app
from ponder.testing import running_server

MODEL = "fake-model"
SAMPLES = 5
STALL = "What is 6 x 7? [fault:stall]"


@pytest.fixture
def upstream() -> Iterator[FaultyUpstream]:
    with FaultyUpstream(marker_policy) as fake:
        yield fake


def app_for(upstream: FaultyUpstream, retries: int, **settings: Any) -> FastAPI:
    settings = {"upstream_backoff_s": 0.01, **settings}
    return create_app(
        Settings(backend="openai", base_url=upstream.url, upstream_retries=retries, **settings)
    )


def sc_calls(app: FastAPI, votes: int) -> int:
    """Upstream calls `votes` sc votes make: one each where the backend draws n natively."""
    native: bool = app.state.ponder.backend.capabilities.native_n
    return votes * (1 if native else SAMPLES)


def body(model: str, stream: bool, n: int = 1) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": STALL}],
        "n": n,
        "stream": stream,
        "ponder": {"sc": {"samples": SAMPLES}},
    }


async def call(client: httpx.AsyncClient, payload: dict[str, Any]) -> httpx.Response:
    """The request, read to its end (a streamed one chunk by chunk, as it comes)."""
    async with client.stream("POST", "chat/completions", json=payload) as response:
        async for _ in response.aiter_raw():
            pass
        return response


async def disconnect_while_stalled(
    url: str, upstream: FaultyUpstream, payload: dict[str, Any], calls: int
) -> float:
    """Send `payload`, wait until the upstream holds `calls` calls, then drop the connection
    (the request task is cancelled: httpx closes its socket). Returns when that happened."""
    async with httpx.AsyncClient(base_url=url + "/", timeout=60) as client:
        task = asyncio.create_task(call(client, payload))
        await upstream.until_in_flight(calls, within_s=10)
        assert upstream.in_flight == calls  # and no more
        disconnected = time.monotonic()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return disconnected


async def assert_all_closed_within_1s(upstream: FaultyUpstream, since: float) -> None:
    """Every upstream call closed within 1 s of `since`, and no new call starts a second on."""
    calls = await all_closed(upstream)
    lags = [lag(r, since) for r in calls]
    assert all(x <= 1.0 for x in lags), f"calls closed {lags} s after the disconnect"
    await asyncio.sleep(1.0)
    assert upstream.requests == len(calls), "an upstream call started after the disconnect"
    assert upstream.in_flight == 0


async def all_closed(upstream: FaultyUpstream, within_s: float = 2.0) -> list[UpstreamRecord]:
    """The upstream's calls, once each is closed (or `within_s` has passed)."""
    calls = upstream.records
    deadline = time.monotonic() + within_s
    while any(r.closed_at is None for r in calls) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)  # the records change on the upstream's thread
    return calls


def lag(record: UpstreamRecord, since: float) -> float:
    return float("inf") if record.closed_at is None else round(record.closed_at - since, 3)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(
    ("model", "n", "votes", "retries"),
    [
        (f"sc-{MODEL}", 3, 3, 0),
        (f"sc-{MODEL}", 3, 3, 2),
        (f"sc|re2-{MODEL}", 1, 1, 2),
        (f"sc&re2-{MODEL}", 2, 2, 2),
    ],
    ids=["sc-n3-retries0", "sc-n3-retries2", "parallel", "pipeline"],
)
async def test_a_disconnect_closes_every_upstream_call_within_1s(
    upstream: FaultyUpstream, model: str, n: int, votes: int, retries: int, stream: bool
) -> None:
    app = app_for(upstream, retries)
    calls = sc_calls(app, votes) + (1 if "|" in model else 0)  # parallel: re2's own call
    with running_server(app) as url:
        since = await disconnect_while_stalled(url, upstream, body(model, stream, n), calls)
        await assert_all_closed_within_1s(upstream, since)
    assert len(upstream.records) == calls
    # the pipeline's second stage never ran: every call was a first-stage call
    assert all(r.body["messages"][-1]["content"].startswith(STALL) for r in upstream.records)


async def test_a_disconnect_closes_a_plain_stream_before_its_first_token(
    upstream: FaultyUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    """A plain model streams nothing until the upstream's first token, or the first
    keep-alive (so that an early failure can still be an HTTP status); a client that goes
    meanwhile cancels the call too, cleanly (nothing logged as an error)."""
    app = app_for(upstream, 2, stream_keepalive_s=2.5)  # (the default is 15 s)
    with running_server(app) as url:
        since = await disconnect_while_stalled(url, upstream, body(MODEL, True), 1)
        await assert_all_closed_within_1s(upstream, since)
        await asyncio.sleep(0.2)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_disconnect_during_a_retry_wait_starts_no_new_call(
    upstream: FaultyUpstream,
) -> None:
    """The upstream fails with a 503; while Ponder waits to retry, the client goes: the retry
    never happens."""
    app = app_for(upstream, 2, upstream_backoff_s=1.0, upstream_max_retry_wait_s=2.0)
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "hi [fault:503]"}]}
    with running_server(app) as url:
        async with httpx.AsyncClient(base_url=url + "/", timeout=60) as client:
            task = asyncio.create_task(call(client, payload))
            # the first call failed and Ponder waits (0.5 s at least) before its retry
            await asyncio.to_thread(upstream.wait, lambda u: u.requests and not u.in_flight)
            await asyncio.sleep(0.05)
            assert upstream.requests == 1
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.sleep(2.5)  # past the longest backoff
    assert upstream.requests == 1
    assert upstream.in_flight == 0


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_the_deadline_closes_every_upstream_call(
    upstream: FaultyUpstream, stream: bool
) -> None:
    app = app_for(upstream, 2, deadline_s=1.0)
    calls = sc_calls(app, 3)
    with running_server(app) as url:
        async with httpx.AsyncClient(base_url=url + "/", timeout=30) as client:
            started = time.monotonic()
            response = await client.post("chat/completions", json=body(f"sc-{MODEL}", stream, 3))
            answered = time.monotonic()
        records = await all_closed(upstream)
        assert len(records) == calls
        assert all(lag(r, answered) <= 1.0 for r in records), [lag(r, answered) for r in records]
    assert 1.0 <= answered - started < 3.0
    if stream:  # the stream had started (sc streams its working): the error comes in-band
        assert response.status_code == 200
        last = [line for line in response.text.split("\n") if line.startswith("data: ")][-1]
        error = json.loads(last.removeprefix("data: "))["error"]
    else:
        assert response.status_code == 504
        error = response.json()["error"]
    assert error["code"] == "deadline_exceeded"
    assert upstream.in_flight == 0
