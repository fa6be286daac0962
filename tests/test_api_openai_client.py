"""The official `openai` client against a running Ponder server (ScriptedBackend behind it)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from ponder.config import Settings
from ponder.proxy import create_app
from ponder.testing import ScriptedBackend, running_server
from ponder.tokens import count_tokens
from ponder.types import Completion, ToolCall
from tests.conftest import MODEL, scripted

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


@pytest.fixture
def oai(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server, api_key="unused", max_retries=0)


def test_plain_completion(oai: openai.OpenAI, backend: ScriptedBackend) -> None:
    response = oai.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[SYSTEM, {"role": "user", "content": "What is 2+2?"}],
        temperature=0.3,
        max_tokens=20,
    )
    completion = response.parse()
    assert completion.choices[0].message.content == "reply 0: What is 2+2?"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == MODEL
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert response.headers["x-request-id"] in completion.id
    assert response.headers["x-ponder-backend-calls"] == "1"
    # exactly one backend call, with the client's messages and sampling
    (call,) = backend.calls
    assert [m.role for m in call.messages] == ["system", "user"]
    assert call.messages[1].text == "What is 2+2?"
    assert (call.sampling.temperature, call.sampling.max_tokens, call.n) == (0.3, 20, 1)
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.prompt_tokens + usage.completion_tokens == usage.total_tokens
    # a pass-through: every output token is the answer's own, and nothing came from a cache
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0


def test_streamed_with_usage(oai: openai.OpenAI, backend: ScriptedBackend) -> None:
    stream = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "count to three please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) > 1, "tokens arrive as several deltas, not one blob"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "reply 0: count to three please"
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["stop"]
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and usage_chunks[0].choices == []
    assert chunks[-1] is usage_chunks[0]
    usage = usage_chunks[0].usage
    assert usage is not None
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.completion_tokens == count_tokens(text)
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0
    assert len(backend.calls) == 1 and backend.calls[0].stream


@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_tokens_are_every_call_but_the_answers_own(stream: bool) -> None:
    """sc draws three samples and answers with one: the other two are its reasoning."""
    replies = ["It is 4.", "Four: 4.", "I say 5."]
    backend = scripted(replies)
    request: dict[str, Any] = {
        "model": f"sc-{MODEL}",
        "messages": [{"role": "user", "content": "2+2?"}],
        "extra_body": {"ponder": {"sc": {"samples": 3}}},
    }
    with running_server(create_app(Settings(), backend=backend)) as url:
        oai = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        if stream:
            chunks = list(
                oai.chat.completions.create(
                    **request, stream=True, stream_options={"include_usage": True}
                )
            )
            usage = chunks[-1].usage
            answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            completion = oai.chat.completions.create(**request)
            usage = completion.usage
            answer = completion.choices[0].message.content or ""
    assert answer == "It is 4."
    assert len(backend.calls) == 3
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens == sum(count_tokens(r) for r in replies)
    reasoning = count_tokens("Four: 4.") + count_tokens("I say 5.")
    assert usage.completion_tokens_details.reasoning_tokens == reasoning


def test_stream_without_usage_has_no_usage_chunk(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


def test_n_three_choices_in_one_backend_call(oai: openai.OpenAI, backend: ScriptedBackend) -> None:
    completion = oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "pick"}], n=3
    )
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert [c.message.content for c in completion.choices] == [f"reply {i}: pick" for i in range(3)]
    assert len(backend.calls) == 1 and backend.calls[0].n == 3
    assert completion.usage is not None
    assert completion.usage.completion_tokens == sum(
        count_tokens(f"reply {i}: pick") for i in range(3)
    )


def test_n_three_streamed(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "pick"}], n=3, stream=True
        )
    )
    texts = {i: "" for i in range(3)}
    finishes: dict[int, list[str]] = {i: [] for i in range(3)}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index].append(choice.finish_reason)
    assert texts == {i: f"reply {i}: pick" for i in range(3)}
    assert finishes == {i: ["stop"] for i in range(3)}


def test_models_list(oai: openai.OpenAI) -> None:
    ids = [m.id for m in oai.models.list()]
    assert ids[0] == MODEL
    assert f"none-{MODEL}" in ids


def test_unknown_strategy_is_not_found(oai: openai.OpenAI, backend: ScriptedBackend) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        oai.chat.completions.create(
            model=f"nosuchstrategy-{MODEL}", messages=[{"role": "user", "content": "hi"}]
        )
    body = info.value.body
    assert isinstance(body, dict)
    assert body["code"] == "model_not_found" and body["param"] == "model"
    assert backend.calls == []


def test_temperature_out_of_range_is_bad_request(
    oai: openai.OpenAI, backend: ScriptedBackend
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], temperature=7
        )
    assert info.value.status_code == 400
    body = info.value.body
    assert isinstance(body, dict)
    assert body["type"] == "invalid_request_error" and body["param"] == "temperature"
    assert backend.calls == []


def test_empty_messages_is_bad_request(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(model=MODEL, messages=[])
    body = info.value.body
    assert isinstance(body, dict) and body["param"] == "messages"


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CALL = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Oslo"}')


@pytest.fixture
def tool_backend() -> ScriptedBackend:
    def reply(call: object, i: int) -> Completion:
        return Completion(content=None, tool_calls=(CALL,), finish_reason="tool_calls")

    return scripted(reply)


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_pass_through(stream: bool, tool_backend: ScriptedBackend) -> None:
    from ponder.config import Settings
    from ponder.proxy import create_app
    from ponder.testing import running_server

    history = [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "content": "city is required"},
    ]
    with running_server(create_app(Settings(), backend=tool_backend)) as url:
        oai = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        if stream:
            calls: dict[int, dict[str, str]] = {}
            finish = []
            for chunk in oai.chat.completions.create(
                model=MODEL, messages=history, tools=[WEATHER_TOOL], tool_choice="auto", stream=True
            ):
                for choice in chunk.choices:
                    for tc in choice.delta.tool_calls or ():
                        entry = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                        entry["id"] += tc.id or ""
                        entry["name"] += (tc.function.name or "") if tc.function else ""
                        entry["arguments"] += (tc.function.arguments or "") if tc.function else ""
                    if choice.finish_reason:
                        finish.append(choice.finish_reason)
            assert calls == {
                0: {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Oslo"}'}
            }
            assert finish == ["tool_calls"]
        else:
            completion = oai.chat.completions.create(
                model=MODEL, messages=history, tools=[WEATHER_TOOL], tool_choice="auto"
            )
            choice = completion.choices[0]
            assert choice.finish_reason == "tool_calls"
            assert choice.message.content is None
            (tc,) = choice.message.tool_calls or []
            assert (tc.id, tc.function.name, json.loads(tc.function.arguments)) == (
                "call_1",
                "get_weather",
                {"city": "Oslo"},
            )
    (call,) = tool_backend.calls
    assert call.sampling.tools[0]["function"]["name"] == "get_weather"
    assert call.sampling.tool_choice == "auto"
    assert call.messages[1].tool_calls[0].id == "call_0"
    assert (call.messages[2].role, call.messages[2].tool_call_id) == ("tool", "call_0")


def test_every_response_has_a_request_id(server: str) -> None:
    with httpx.Client() as http:
        for response in (
            http.get(f"{server}/models"),
            http.post(f"{server}/chat/completions", json={"model": MODEL, "messages": []}),
            http.get(server.removesuffix("/v1") + "/nowhere"),
        ):
            assert len(response.headers["x-request-id"]) >= 16
        echoed = http.get(f"{server}/models", headers={"x-request-id": "my-trace-42"})
        assert echoed.headers["x-request-id"] == "my-trace-42"
