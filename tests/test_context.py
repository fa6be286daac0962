"""RequestContext: metering, budget, deadline, the per-request limiter, sampling, reasoning."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import ClassVar

import httpx
import pytest

from ponder.backends.base import Capabilities
from ponder.config import Settings
from ponder.errors import BackendUnavailable, BudgetExceeded
from ponder.proxy import create_app
from ponder.strategies.base import StrategyConfig
from ponder.strategies.context import Budget, RequestContext
from ponder.strategies.none import PassThrough
from ponder.strategies.registry import Registry
from ponder.testing import ScriptedBackend, running_server
from ponder.tokens import count_prompt_tokens, count_tokens
from ponder.types import Completion, Delta, Message, Sampling
from tests.conftest import (
    MODEL,
    asgi_client,
    assert_error,
    finish_reasons,
    scripted,
    stream_choices,
    stream_error,
    streamed_text,
    user,
)

HELLO = [Message("user", "hello")]


def context(backend: ScriptedBackend, **more: object) -> RequestContext:
    return RequestContext(
        request_id="r",
        model=MODEL,
        backend=backend,
        sampling=Sampling(),
        **more,  # type: ignore[arg-type]
    )


class Fanout:
    """A toy strategy: `ponder.fanout.k` samples, then a streamed final call."""

    slug: ClassVar[str] = "fanout"
    aliases: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[StrategyConfig]] = StrategyConfig
    draws_n: ClassVar[bool] = False

    def __init__(self, config: StrategyConfig) -> None:
        self.config = config

    async def run(self, ctx: RequestContext, messages: Sequence[Message]) -> list[Completion]:
        samples = await ctx.sample(messages, 4)
        ctx.reason(f"got {len(samples)} samples\n")
        return await ctx.final(messages)


def app_client(backend: ScriptedBackend) -> httpx.AsyncClient:
    registry = Registry([PassThrough, Fanout])
    return asgi_client(create_app(Settings(), backend=backend, registry=registry))


async def toy_chat(backend: ScriptedBackend, **fields: object) -> httpx.Response:
    """POST one chat completion for `fanout-<MODEL>` ("hi") to an app with the toy strategies;
    `fields` are added to the request body, and may replace its model."""
    async with app_client(backend) as client:
        return await client.post(
            "/v1/chat/completions",
            json={"model": f"fanout-{MODEL}", "messages": [user("hi")], **fields},
        )


async def test_sample_runs_k_calls_at_once_and_meters_them() -> None:
    backend = scripted(lambda call, i: "four")
    backend.hold()
    ctx = context(backend)
    task = asyncio.create_task(ctx.sample(HELLO, 4))
    await backend.wait_for_in_flight(4)
    backend.release()
    samples = await task
    assert [s.content for s in samples] == ["four"] * 4
    assert ctx.meter.calls == 4
    assert ctx.meter.usage.prompt_tokens == 4 * count_prompt_tokens(HELLO)
    assert ctx.meter.usage.completion_tokens == 4 * count_tokens("four")


async def test_sample_uses_native_n_and_tops_up_a_short_answer() -> None:
    class Short(ScriptedBackend):
        async def complete(  # type: ignore[override]
            self, model: str, messages: Sequence[Message], sampling: Sampling, n: int = 1
        ) -> list[Completion]:
            return (await super().complete(model, messages, sampling, n))[:2]

    backend = Short(lambda call, i: "x", model_ids=(MODEL,))
    backend.capabilities = Capabilities(native_n=True)
    ctx = context(backend)
    assert len(await ctx.sample(HELLO, 5)) == 5
    assert [c.n for c in backend.calls] == [5, 3, 1]
    assert ctx.meter.calls == 3


async def test_sample_with_failures_tolerated_returns_the_survivors() -> None:
    replies: list[str | BackendUnavailable] = ["a", BackendUnavailable("down"), "c"]
    ctx = context(scripted(replies))
    survivors = await ctx.sample(HELLO, 3, tolerate_failures=True)
    assert sorted(s.content or "" for s in survivors) == ["a", "c"]
    assert ctx.trace[-1].name == "samples_failed"
    with pytest.raises(BackendUnavailable):
        await context(scripted([BackendUnavailable("down")] * 2)).sample(
            HELLO, 2, tolerate_failures=True
        )


async def test_sample_never_tolerates_a_bug_even_beside_survivors() -> None:
    def reply(call: object, index: int) -> str:
        if next(drawn) == 1:
            raise ValueError("a bug in the backend, not a failure of it")
        return "a"

    drawn = iter(range(3))
    ctx = context(scripted(reply))
    with pytest.raises(ValueError, match="a bug in the backend"):
        await ctx.sample(HELLO, 3, tolerate_failures=True)
    assert all(step.name != "samples_failed" for step in ctx.trace)


async def test_limiter_bounds_calls_in_flight_by_the_backend_capability() -> None:
    backend = scripted(lambda call, i: "x", latency_s=0.02)
    backend.capabilities = Capabilities(max_concurrency=2)
    ctx = context(backend)
    await ctx.sample(HELLO, 6)
    assert backend.max_in_flight == 2 and len(backend.calls) == 6


async def test_budget_stops_the_call_past_the_limit() -> None:
    backend = scripted(lambda call, i: "x")
    ctx = context(backend, budget=Budget(max_backend_calls=2))
    await ctx.complete(HELLO)
    await ctx.complete(HELLO)
    with pytest.raises(BudgetExceeded):
        await ctx.complete(HELLO)
    assert len(backend.calls) == 2


def test_a_client_budget_can_only_tighten_the_server_budget() -> None:
    server = Budget(max_backend_calls=10, deadline_s=60)
    assert server.tighter(Budget(3, None)) == Budget(3, 60)
    assert server.tighter(Budget(50, 5.0)) == Budget(10, 5.0)


async def test_budget_overrun_is_a_400_before_extra_calls() -> None:
    backend = scripted(lambda call, i: "x")
    response = await toy_chat(backend, ponder={"max_backend_calls": 3})
    assert_error(response, 400, code="budget_exceeded", param="ponder.max_backend_calls")
    assert len(backend.calls) == 3


async def test_server_budget_applies_without_a_client_budget() -> None:
    backend = scripted(lambda call, i: "x")
    registry = Registry([PassThrough, Fanout])
    app = create_app(Settings(max_backend_calls=4), backend=backend, registry=registry)
    async with asgi_client(app) as client:
        response = await client.post(
            "/v1/chat/completions", json={"model": f"fanout-{MODEL}", "messages": [user("hi")]}
        )
    assert response.json()["error"]["code"] == "budget_exceeded"
    assert len(backend.calls) == 4


async def test_deadline_cancels_calls_in_flight_and_answers_504() -> None:
    backend = scripted(lambda call, i: "x", latency_s=5)
    response = await toy_chat(backend, ponder={"deadline_s": 0.2})
    assert_error(response, 504, code="deadline_exceeded")
    assert backend.cancelled == 4 and backend.in_flight == 0


async def test_deadline_in_a_stream_is_an_in_band_error() -> None:
    backend = scripted(lambda call, i: "x", latency_s=5)
    response = await toy_chat(backend, stream=True, ponder={"deadline_s": 0.2})
    assert stream_error(response.text)["code"] == "deadline_exceeded"


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"max_backend_calls": 0}, "ponder.max_backend_calls"),
        ({"max_backend_calls": 2.5}, "ponder.max_backend_calls"),
        ({"deadline_s": -1}, "ponder.deadline_s"),
        ({"deadline_s": True}, "ponder.deadline_s"),
        ({"reasoning": "no"}, "ponder.reasoning"),
    ],
)
async def test_bad_request_limits_are_400s(options: dict[str, object], param: str) -> None:
    response = await toy_chat(scripted(), ponder=options)
    assert_error(response, 400, param=param)


async def test_reasoning_streams_before_the_answer_and_can_be_turned_off() -> None:
    backend = scripted(lambda call, i: "final words")
    on = await toy_chat(backend, stream=True)
    off = await toy_chat(backend, stream=True, ponder={"reasoning": False})
    assert streamed_text(on.text, "reasoning_content") == "got 4 samples\n"
    assert streamed_text(on.text) == "final words"
    kinds = [
        "reasoning" if c["delta"].get("reasoning_content") else "content"
        for c in stream_choices(on.text)
        if c["delta"].get("reasoning_content") or c["delta"].get("content")
    ]
    assert kinds == ["reasoning", "content", "content"]
    assert streamed_text(off.text, "reasoning_content") == ""
    assert streamed_text(off.text) == "final words"


async def test_pipeline_streams_the_first_answer_as_reasoning() -> None:
    backend = scripted(["first draft", "better answer"])
    response = await toy_chat(backend, model=f"none&none-{MODEL}", stream=True)
    assert streamed_text(response.text, "reasoning_content") == "first draft"
    assert streamed_text(response.text) == "better answer"
    assert finish_reasons(response.text) == ["stop"]


def test_emit_offsets_the_choice_index() -> None:
    seen: list[Delta] = []
    ctx = context(scripted(), sink=seen.append, choice_index=2)
    ctx.emit(Delta(content="a"))
    ctx.reason("why")
    assert [(d.index, d.content, d.reasoning) for d in seen] == [(2, "a", None), (2, None, "why")]


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_cancels_every_call_of_a_strategy_within_a_second(stream: bool) -> None:
    backend = scripted(latency_s=30.0)
    registry = Registry([PassThrough, Fanout])
    app = create_app(Settings(), backend=backend, registry=registry)
    body = {"model": f"fanout-{MODEL}", "messages": [user("hi")], "stream": stream}
    with running_server(app) as url:
        with httpx.Client(timeout=0.5) as http:
            deadline = time.monotonic() + 5
            with (
                contextlib.suppress(httpx.ReadTimeout),  # non-streamed: no headers before the end
                http.stream("POST", f"{url}/chat/completions", json=body) as response,
            ):
                while backend.in_flight < 4 and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert backend.in_flight == 4
                next(response.iter_lines())  # the role chunk came at once
        gone = time.monotonic()
        while backend.in_flight and time.monotonic() < gone + 1.0:
            time.sleep(0.01)
        assert backend.in_flight == 0 and backend.cancelled == 4
