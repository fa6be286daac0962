"""Qwen2.5-Coder-0.5B on the embedded engine, through the official `openai` client: a plain
answer, a stream, `n=3`, and a tool call round trip rendered by the model's own template."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import openai
import pytest

from ponder.backends.llamacpp import EmbeddedBackend
from ponder.config import Settings
from ponder.proxy import create_app
from ponder.testing import running_server
from tests.conftest import reference_greedy

pytestmark = pytest.mark.integration

QWEN = "qwen2.5-coder-0.5b"
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def oai() -> Iterator[openai.OpenAI]:
    backend = EmbeddedBackend(QWEN, sequences=4, n_ctx=2048)
    try:
        with running_server(create_app(Settings(), backend=backend)) as url:
            yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=300)
    finally:
        asyncio.run(backend.aclose())


def test_models_lists_the_catalog_id(oai: openai.OpenAI) -> None:
    assert QWEN in [m.id for m in oai.models.list().data]


def test_a_plain_answer(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model=QWEN,
        messages=[SYSTEM, {"role": "user", "content": "What is the capital of France? One word."}],
        max_tokens=16,
        temperature=0,
    )
    assert "paris" in (completion.choices[0].message.content or "").lower()
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 16


def test_greedy_text_is_llama_cpps_own_chat_completion(oai: openai.OpenAI) -> None:
    messages = [SYSTEM, {"role": "user", "content": "Explain what a hash table is."}]
    want = reference_greedy(QWEN, messages, 48)
    completion = oai.chat.completions.create(
        model=QWEN,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=48,
        temperature=0,
    )
    assert completion.choices[0].message.content == want


def test_a_stream(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model=QWEN,
            messages=[SYSTEM, {"role": "user", "content": "Count from 1 to 5."}],
            max_tokens=40,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) >= 5
    text = "".join(pieces)
    assert all(str(i) in text for i in range(1, 6))
    (last,) = [c for c in chunks if c.usage is not None]
    assert last.usage is not None and last.usage.completion_tokens <= 40


def test_n_three(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model=QWEN,
        messages=[SYSTEM, {"role": "user", "content": "Write a one-line slogan for a bakery."}],
        max_tokens=24,
        n=3,
        temperature=1.0,
        seed=3,
    )
    assert [c.index for c in completion.choices] == [0, 1, 2]
    texts = [c.message.content for c in completion.choices]
    assert all(texts) and len(set(texts)) == 3


def test_a_tool_call_round_trip(oai: openai.OpenAI) -> None:
    messages: list[dict[str, object]] = [
        SYSTEM,
        {"role": "user", "content": "What is the weather in Paris right now?"},
    ]
    first = oai.chat.completions.create(
        model=QWEN,
        messages=messages,
        tools=[WEATHER],
        temperature=0,
        max_tokens=64,  # type: ignore[arg-type,list-item]
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments)["city"].lower() == "paris"  # type: ignore[union-attr]
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append(
        {
            "role": "tool",
            "tool_call_id": call.id,
            "content": '{"temperature_c": 18, "sky": "sunny"}',
        }
    )
    second = oai.chat.completions.create(
        model=QWEN,
        messages=messages,
        tools=[WEATHER],
        temperature=0,
        max_tokens=64,  # type: ignore[arg-type,list-item]
    )
    answer = second.choices[0]
    assert answer.finish_reason == "stop"
    assert "18" in (answer.message.content or "")


def test_a_streamed_tool_call(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model=QWEN,
            messages=[SYSTEM, {"role": "user", "content": "What's the weather in Oslo?"}],
            tools=[WEATHER],  # type: ignore[list-item]
            temperature=0,
            max_tokens=64,
            stream=True,
        )
    )
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls and calls[0].function is not None
    assert calls[0].function.name == "get_weather"
    arguments = "".join(tc.function.arguments or "" for tc in calls if tc.function)
    assert json.loads(arguments)["city"].lower() == "oslo"
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["tool_calls"]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "<tool_call>" not in text
