"""Continuation on the real embedded model (SmolLM2-135M): the chat rendered with its generation
prompt, then the prefix's tokens; greedy decoding goes on from there as it would have, the
next-token candidates are the greedy answer's, log-probabilities come streamed and not, the
prompt's cells are reused, and `thinkdeeper` runs end to end."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from typing import Any

import pytest

from ponder.backends.assemble import Assembler
from ponder.backends.llamacpp import EmbeddedBackend
from ponder.config import Settings
from ponder.proxy import create_app
from ponder.strategies.context import RequestContext
from ponder.strategies.thinkdeeper import ThinkDeeper, ThinkDeeperConfig
from ponder.types import Message, Sampling
from tests.conftest import MODEL, asgi_client

pytestmark = pytest.mark.integration

CHAT = [
    Message("system", "You are a helpful assistant."),
    Message("user", "Name three colors of the rainbow."),
]
GREEDY = Sampling(temperature=0, max_tokens=16, logprobs=True, top_logprobs=3)


@pytest.fixture(scope="module")
def backend() -> Iterator[EmbeddedBackend]:
    backend = EmbeddedBackend(MODEL, sequences=4, n_ctx=1024)
    yield backend
    asyncio.run(backend.aclose())


def context(backend: EmbeddedBackend, **more: Any) -> RequestContext:
    more.setdefault("sampling", GREEDY)
    return RequestContext(request_id="r", model=MODEL, backend=backend, **more)


def tokens(entries: list[dict[str, Any]]) -> list[str]:
    return [str(e["token"]) for e in entries]


async def test_the_embedded_backend_declares_continuation(backend: EmbeddedBackend) -> None:
    caps = backend.capabilities
    assert caps.continuation and caps.logprobs
    assert not caps.thinking  # SmolLM2's template has no <think> format


async def test_a_continuation_goes_on_as_greedy_decoding_would_have(
    backend: EmbeddedBackend,
) -> None:
    ctx = context(backend)
    (whole,) = await ctx.complete(CHAT)
    entries = (whole.logprobs or {})["content"]
    assert whole.finish_reason == "length" and len(entries) == 16
    cut = 5
    prefix = "".join(tokens(entries[:cut]))
    (rest,) = await ctx.continue_from(CHAT, prefix, GREEDY.with_(max_tokens=16 - cut))
    assert prefix + (rest.content or "") == whole.content
    assert tokens((rest.logprobs or {})["content"]) == tokens(entries[cut:])
    # the prompt is the chat's and the prefix's tokens; all but the last came from the cache
    assert rest.usage.prompt_tokens == whole.usage.prompt_tokens + cut
    assert rest.usage.cached_tokens == rest.usage.prompt_tokens - 1
    assert rest.usage.completion_tokens == 16 - cut


async def test_next_tokens_are_the_greedy_answers_first_candidates(
    backend: EmbeddedBackend,
) -> None:
    ctx = context(backend)
    (whole,) = await ctx.complete(CHAT)
    first = (whole.logprobs or {})["content"][0]
    got = await ctx.next_tokens(CHAT, "", 3)
    assert [t for t, _ in got] == [a["token"] for a in first["top_logprobs"]]
    assert [lp for _, lp in got] == pytest.approx([a["logprob"] for a in first["top_logprobs"]])
    assert got[0][0] == first["token"]
    # after a prefix: the candidates for the token that follows it
    second = (whole.logprobs or {})["content"][1]
    after = await ctx.next_tokens(CHAT, first["token"], 2)
    assert [t for t, _ in after] == [a["token"] for a in second["top_logprobs"][:2]]
    assert sum(math.exp(lp) for _, lp in got) <= 1 + 1e-9


async def test_streamed_continuations_carry_the_same_log_probabilities(
    backend: EmbeddedBackend,
) -> None:
    ctx = context(backend)
    (plain,) = await ctx.continue_from(CHAT, "Red,")
    assembler = Assembler()
    async for delta in ctx.stream_from(CHAT, "Red,"):
        assembler.add(delta)
    (streamed,) = assembler.completions()
    assert streamed.content == plain.content
    plain_entries = (plain.logprobs or {})["content"]
    streamed_entries = (streamed.logprobs or {})["content"]
    assert tokens(streamed_entries) == tokens(plain_entries)
    assert all(len(e["top_logprobs"]) == 3 for e in streamed_entries)
    assert "".join(tokens(plain_entries)) == plain.content


async def test_a_client_may_ask_for_a_continuation_as_vllms_server_takes_it(
    backend: EmbeddedBackend,
) -> None:
    ctx = context(backend)
    (expected,) = await ctx.continue_from(
        CHAT, "The three colors are", GREEDY.with_(logprobs=False)
    )
    body = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Name three colors of the rainbow."},
            {"role": "assistant", "content": "The three colors are"},
        ],
        "temperature": 0,
        "max_tokens": 16,
        "continue_final_message": True,
        "add_generation_prompt": False,
    }
    async with asgi_client(create_app(Settings(), backend=backend)) as client:
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == expected.content


async def test_thinkdeeper_forces_a_wait_and_answers_after_the_thinking(
    backend: EmbeddedBackend,
) -> None:
    sent: list[Any] = []
    ctx = context(backend, sampling=Sampling(temperature=0, max_tokens=24), sink=sent.append)
    strategy = ThinkDeeper(
        ThinkDeeperConfig(min_thinking_tokens=40, max_thinking_tokens=60, max_waits=2)
    )
    (answer,) = await strategy.run(ctx, [Message("user", "What is 2 + 3?")])
    (thought,) = [s.detail for s in ctx.trace if s.name == "thought"]
    assert thought["tokens"] <= 60
    assert thought["waits"] >= 1 or thought["tokens"] >= 40
    assert ctx.meter.calls == len([s for s in ctx.trace if s.name == "thinking"]) + 1
    assert answer.reasoning and answer.content is not None
    reasoning = "".join(d.reasoning or "" for d in sent)
    content = "".join(d.content or "" for d in sent)
    assert reasoning.strip() == answer.reasoning
    assert content == answer.content
