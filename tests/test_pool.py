"""The upstream pool (`ponder.backends.pool`, `ponder.backends.balance`): how calls are spread,
failover and cooldown on an injected clock, per-upstream caps under concurrency, retry rounds,
streams, model names and the active health check. Upstreams are ScriptedBackends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from ponder.backends.balance import Balancer, Choice
from ponder.backends.pool import Served, Upstream, UpstreamPool
from ponder.backends.resilience import RetryPolicy
from ponder.errors import BackendUnavailable, InvalidRequest, UpstreamRateLimited
from ponder.testing import Call, Reply, ScriptedBackend
from ponder.types import Delta, Message, Sampling

HI = [Message("user", "hi")]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def answering(name: str) -> ScriptedBackend:
    """An upstream that answers with its own name."""
    return ScriptedBackend(lambda call, i: name, name=name)


def failing(name: str, times: int = 10**6, error: Reply | None = None) -> ScriptedBackend:
    """An upstream whose first `times` calls fail with a 503 (or `error`), then answer."""

    def reply(call: Call, i: int) -> Reply:
        done = len(backend.calls)
        if done <= times:
            return error or BackendUnavailable(f"{name} is overloaded", retryable=True)
        return name

    backend = ScriptedBackend(reply, name=name)
    return backend


def pool_of(
    *backends: ScriptedBackend,
    choice: Choice = "round_robin",
    weights: Sequence[int] = (),
    caps: Sequence[int] = (),
    clock: Clock | None = None,
    retries: int = 0,
    health_check: bool = False,
    waits: list[float] | None = None,
) -> UpstreamPool:
    async def sleep(seconds: float) -> None:
        if waits is not None:
            waits.append(seconds)

    upstreams = [
        Upstream(
            b.name,
            b,
            weight=weights[i] if weights else 1,
            max_concurrency=caps[i] if caps else 16,
        )
        for i, b in enumerate(backends)
    ]
    return UpstreamPool(
        upstreams,
        choice=choice,
        cooldown_s=30.0,
        health_check=health_check,
        policy=RetryPolicy(retries=retries, backoff_s=0.5, max_wait_s=10.0),
        clock=clock or Clock(),
        sleep=sleep,
        jitter=lambda: 1.0,
    )


async def answers(pool: UpstreamPool, count: int) -> list[str | None]:
    """`count` calls one after another: who answered each."""
    return [(await pool.complete("m", HI, Sampling()))[0].content for _ in range(count)]


async def test_round_robin_gives_each_upstream_its_turn() -> None:
    backends = [answering(n) for n in "abc"]
    pool = pool_of(*backends)
    assert await answers(pool, 6) == ["a", "b", "c", "a", "b", "c"]
    assert [len(b.calls) for b in backends] == [2, 2, 2]


async def test_weighted_is_smooth_and_deterministic() -> None:
    a, b = answering("a"), answering("b")
    pool = pool_of(a, b, choice="weighted", weights=[3, 1])
    assert await answers(pool, 8) == ["a", "a", "b", "a"] * 2
    assert (len(a.calls), len(b.calls)) == (6, 2)

    balancer = Balancer([5, 1, 1])
    picks = [balancer.pick([0, 1, 2], "weighted") for _ in range(7)]
    assert picks == [0, 0, 1, 0, 2, 0, 0]  # interleaved, not five in a row


async def test_failover_keeps_to_the_first_upstream_while_it_is_up() -> None:
    a, b = answering("a"), answering("b")
    pool = pool_of(a, b, choice="failover")
    assert await answers(pool, 3) == ["a", "a", "a"]
    assert b.calls == []


async def test_a_503_moves_the_call_on_and_the_upstream_sits_out_its_cooldown() -> None:
    clock = Clock()
    a, b, c = answering("a"), failing("b", times=1), answering("c")
    heard: list[Served] = []
    pool = pool_of(a, b, c, clock=clock)
    client = pool.client(listener=heard.append)

    async def ask() -> str | None:
        return (await client.complete("m", HI, Sampling()))[0].content

    assert [await ask(), await ask()] == ["a", "c"]  # b failed, c answered the same call
    assert [(s.upstream, s.error) for s in heard] == [
        ("a", None),
        ("b", "backend_unavailable"),
        ("c", None),
    ]
    assert pool.is_down("b")
    assert [await ask() for _ in range(4)] == ["a", "c", "a", "c"]  # b is skipped
    assert len(b.calls) == 1

    clock.now += 29.9
    assert await ask() == "a" and pool.is_down("b")
    clock.now += 0.1  # the cooldown is over: b takes its turn again
    assert not pool.is_down("b")
    assert [await ask(), await ask()] == ["b", "c"]
    assert len(b.calls) == 2


async def test_a_longer_retry_after_extends_the_cooldown() -> None:
    clock = Clock()
    limited = UpstreamRateLimited("slow down", retryable=True, retry_after=120.0)
    a, b = failing("a", times=1, error=limited), answering("b")
    pool = pool_of(a, b, choice="failover", clock=clock)
    assert await answers(pool, 1) == ["b"]
    clock.now += 119
    assert await answers(pool, 1) == ["b"]
    clock.now += 1
    assert await answers(pool, 1) == ["a"]


async def test_when_every_upstream_is_down_the_first_to_go_down_is_tried() -> None:
    clock = Clock()
    a, b = failing("a", times=1), failing("b", times=1)
    pool = pool_of(a, b, choice="failover", clock=clock)
    with pytest.raises(BackendUnavailable):
        await answers(pool, 1)
    assert pool.is_down("a") and pool.is_down("b")

    clock.now += 1  # both still cooling down: a went down first, so a is tried, and is back
    assert await answers(pool, 1) == ["a"]
    assert (len(a.calls), len(b.calls)) == (2, 1)
    assert not pool.is_down("a") and pool.is_down("b")


async def test_exhaustion_says_how_many_upstreams_were_tried_after_the_retry_rounds() -> None:
    waits: list[float] = []
    backends = [failing(n) for n in "abc"]
    pool = pool_of(*backends, retries=2, waits=waits)
    with pytest.raises(BackendUnavailable) as info:
        await answers(pool, 1)
    # Round 1 tries all three; each retry round tries the one that went down first.
    assert [len(b.calls) for b in backends] == [2, 2, 1]
    assert waits == [0.5, 1.0]
    assert info.value.message == (
        "no upstream could answer: all 3 upstreams tried, 5 requests; "
        "the last error: b is overloaded"
    )
    assert info.value.status_code == 503


async def test_a_request_the_upstream_rejects_is_not_failed_over() -> None:
    a, b = (
        failing("a", error=InvalidRequest("bad temperature", param="temperature")),
        answering("b"),
    )
    pool = pool_of(a, b)
    with pytest.raises(InvalidRequest, match="bad temperature"):
        await answers(pool, 1)
    assert b.calls == []
    assert not pool.is_down("a")


async def test_each_upstream_keeps_to_its_concurrency_cap() -> None:
    a, b = answering("a"), answering("b")
    a.hold()
    b.hold()
    pool = pool_of(a, b, caps=[1, 2])
    assert pool.capabilities.max_concurrency == 3
    tasks = [asyncio.create_task(pool.complete("m", HI, Sampling())) for _ in range(7)]
    await a.wait_for_in_flight(1)
    await b.wait_for_in_flight(2)
    for _ in range(5):
        await asyncio.sleep(0)  # the other four wait for a slot, on neither upstream
    assert (a.in_flight, b.in_flight) == (1, 2)
    assert (pool.in_flight("a"), pool.in_flight("b")) == (1, 2)
    assert sum(not t.done() for t in tasks) == 7

    a.release()
    b.release()
    results = await asyncio.gather(*tasks)
    assert len(results) == 7
    assert (a.max_in_flight, b.max_in_flight) == (1, 2)
    assert len(a.calls) + len(b.calls) == 7
    assert (pool.in_flight("a"), pool.in_flight("b")) == (0, 0)


async def test_a_full_upstream_is_passed_over_for_the_next() -> None:
    a, b = answering("a"), answering("b")
    a.hold()
    pool = pool_of(a, b, choice="failover", caps=[1, 4])
    first = asyncio.create_task(pool.complete("m", HI, Sampling()))
    await a.wait_for_in_flight(1)
    assert await answers(pool, 3) == ["b", "b", "b"]  # a is full, b is next in order
    a.release()
    assert (await first)[0].content == "a"


async def test_client_model_names_map_to_each_upstreams_own() -> None:
    a, b = answering("a"), answering("b")
    pool = UpstreamPool(
        [Upstream("a", a, models={"m": "big-model"}), Upstream("b", b)], choice="round_robin"
    )
    await answers(pool, 2)
    assert [c.model for c in a.calls] == ["big-model"]
    assert [c.model for c in b.calls] == ["m"]  # no mapping: the client's name


async def drain(stream: AsyncIterator[Delta]) -> list[Delta]:
    return [delta async for delta in stream]


class BreaksMidStream(ScriptedBackend):
    async def stream(
        self, model: str, messages: Sequence[Message], sampling: Sampling, n: int = 1
    ) -> AsyncIterator[Delta]:
        self.calls.append(Call(model, tuple(messages), sampling, n, stream=True))
        yield Delta(content="half ")
        raise BackendUnavailable("connection broke", retryable=True)


async def test_a_stream_fails_over_before_its_first_delta_only() -> None:
    a, b = failing("a", times=1), answering("b")
    pool = pool_of(a, b, choice="failover")
    deltas = await drain(pool.stream("m", HI, Sampling()))
    assert "".join(d.content or "" for d in deltas) == "b"
    assert (len(a.calls), len(b.calls)) == (1, 1)

    broken, spare = BreaksMidStream(name="broken"), answering("spare")
    pool = pool_of(broken, spare, choice="failover")
    seen: list[Delta] = []
    with pytest.raises(BackendUnavailable, match="connection broke"):
        async for delta in pool.stream("m", HI, Sampling()):
            seen.append(delta)
    assert [d.content for d in seen] == ["half "]  # never followed by another upstream's text
    assert spare.calls == []
    assert pool.is_down("broken") and pool.in_flight("broken") == 0


async def test_a_stream_left_early_frees_its_slot() -> None:
    a = answering("a")
    a.replies = lambda call, i: "several words of text"
    pool = pool_of(a, caps=[1])
    stream = pool.stream("m", HI, Sampling())
    first = await anext(stream)
    assert first.content == "several " and pool.in_flight("a") == 1
    await stream.aclose()  # type: ignore[attr-defined]
    assert pool.in_flight("a") == 0


class Checked(ScriptedBackend):
    healthy: bool = False
    checks: int = 0

    async def ready(self) -> bool:
        self.checks += 1
        return self.healthy


async def test_the_health_check_keeps_a_failing_upstream_out_after_its_cooldown() -> None:
    clock = Clock()
    a = Checked(lambda call, i: BackendUnavailable("down", retryable=True), name="a")
    b = answering("b")
    pool = pool_of(a, b, choice="failover", clock=clock, health_check=True)
    assert await answers(pool, 1) == ["b"]
    clock.now += 30
    assert await answers(pool, 1) == ["b"]  # GET /models failed: a stays out, no call sent
    assert (a.checks, len(a.calls)) == (1, 1)
    assert pool.is_down("a") and pool.in_flight("a") == 0

    clock.now += 30
    a.healthy = True
    a.replies = lambda call, i: "a"
    assert await answers(pool, 2) == ["a", "a"]
    assert a.checks == 2  # checked once on its way back, not before every call
