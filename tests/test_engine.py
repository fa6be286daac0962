"""Registry, per-request options, request-level n, and composition (`a&b`, `a|b`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import ClassVar

import httpx
import pytest

from ponder.config import Settings
from ponder.proxy import create_app
from ponder.strategies.base import StrategyConfig
from ponder.strategies.context import RequestContext
from ponder.strategies.engine import PIPE_PROMPT
from ponder.strategies.none import PassThrough
from ponder.strategies.registry import DuplicateStrategy, Registry
from ponder.testing import ScriptedBackend
from ponder.tokens import count_prompt_tokens, count_tokens
from ponder.types import Completion, Message
from tests.conftest import MODEL, asgi_client, scripted, user


class ShoutConfig(StrategyConfig):
    marks: int = 1


class Shout:
    """A toy strategy: one sub-call, answer upper-cased with `marks` exclamation marks."""

    slug: ClassVar[str] = "shout"
    aliases: ClassVar[tuple[str, ...]] = ("yell",)
    Config: ClassVar[type[StrategyConfig]] = ShoutConfig
    draws_n: ClassVar[bool] = False

    def __init__(self, config: StrategyConfig) -> None:
        assert isinstance(config, ShoutConfig)
        self.config = config

    async def run(self, ctx: RequestContext, messages: Sequence[Message]) -> list[Completion]:
        (draft,) = await ctx.complete(messages)
        ctx.step("draft", text=draft.content)
        return [Completion(content=(draft.content or "").upper() + "!" * self.config.marks)]


def app_with(backend: ScriptedBackend) -> httpx.AsyncClient:
    app = create_app(Settings(), backend=backend, registry=Registry([PassThrough, Shout]))
    return asgi_client(app)


async def post(client: httpx.AsyncClient, **fields: object) -> httpx.Response:
    return await client.post("/v1/chat/completions", json={"messages": [user("hello")], **fields})


async def test_strategy_options_reach_the_strategy_and_trace_is_returned() -> None:
    backend = scripted(["quiet words"])
    async with app_with(backend) as client:
        response = await post(
            client, model=f"yell-{MODEL}", ponder={"yell": {"marks": 3}, "trace": True}
        )
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "QUIET WORDS!!!"
    assert body["ponder"]["trace"][0]["step"] == "draft"
    assert body["ponder"]["trace"][0]["text"] == "quiet words"
    assert response.headers["x-ponder-backend-calls"] == "1"


async def test_request_n_runs_strategy_n_times_concurrently() -> None:
    backend = scripted(lambda call, i: "x")
    backend.hold()
    async with app_with(backend) as client:
        request = asyncio.create_task(post(client, model=f"shout-{MODEL}", n=3))
        await backend.wait_for_in_flight(3)
        backend.release()
        response = await request
    body = response.json()
    assert [c["message"]["content"] for c in body["choices"]] == ["X!", "X!", "X!"]
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert backend.max_in_flight == 3 and len(backend.calls) == 3
    assert response.headers["x-ponder-backend-calls"] == "3"
    usage = body["usage"]
    assert usage["prompt_tokens"] == 3 * count_prompt_tokens([Message("user", "hello")])
    assert usage["completion_tokens"] == 3 * count_tokens("x")


async def test_parallel_composition_returns_one_choice_per_branch() -> None:
    backend = scripted(lambda call, i: "draft")
    async with app_with(backend) as client:
        response = await post(client, model=f"none|shout-{MODEL}")
    contents = [c["message"]["content"] for c in response.json()["choices"]]
    assert contents == ["draft", "DRAFT!"]
    assert len(backend.calls) == 2


async def test_pipeline_feeds_the_first_answer_to_the_second() -> None:
    backend = scripted(["first answer", "reviewed answer"])
    async with app_with(backend) as client:
        response = await post(client, model=f"shout&none-{MODEL}")
    assert response.json()["choices"][0]["message"]["content"] == "reviewed answer"
    first, second = backend.calls
    assert [m.text for m in first.messages] == ["hello"]
    assert [(m.role, m.text) for m in second.messages] == [
        ("user", "hello"),
        ("assistant", "FIRST ANSWER!"),
        ("user", PIPE_PROMPT),
    ]
    assert response.headers["x-ponder-backend-calls"] == "2"


async def test_optillm_approach_field_selects_the_strategy() -> None:
    backend = scripted(["abc"])
    async with app_with(backend) as client:
        response = await post(client, model=MODEL, optillm_approach="shout")
    assert response.json()["choices"][0]["message"]["content"] == "ABC!"


async def test_streaming_a_strategy_sends_role_then_answer() -> None:
    backend = scripted(["abc"])
    async with app_with(backend) as client:
        response = await post(client, model=f"shout-{MODEL}", stream=True)
    lines = [line for line in response.text.split("\n") if line.startswith("data: ")]
    assert '"role":"assistant"' in lines[0]
    assert '"content":"ABC!"' in lines[1] and '"finish_reason":"stop"' in lines[1]
    assert lines[-1] == "data: [DONE]"


def test_duplicate_slugs_fail_at_start_up() -> None:
    with pytest.raises(DuplicateStrategy):
        Registry([PassThrough, Shout, Shout])

    class Clash(Shout):
        slug = "other"
        aliases = ("none",)

    with pytest.raises(DuplicateStrategy):
        Registry([PassThrough, Clash])


async def test_models_list_has_every_registered_prefix() -> None:
    async with app_with(scripted()) as client:
        ids = [m["id"] for m in (await client.get("/v1/models")).json()["data"]]
    assert ids == [MODEL, f"none-{MODEL}", f"shout-{MODEL}"]


async def test_options_given_under_slug_and_alias_are_refused() -> None:
    async with app_with(scripted()) as client:
        response = await post(
            client, model=f"shout-{MODEL}", ponder={"shout": {"marks": 1}, "yell": {"marks": 2}}
        )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "ponder.yell"
