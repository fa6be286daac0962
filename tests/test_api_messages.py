"""The official `anthropic` client against a running Ponder server (ScriptedBackend behind it):
`POST /v1/messages` plain and streamed, tools, errors, and `count_tokens`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest
from fastapi import FastAPI

from ponder.config import Settings
from ponder.errors import BackendUnavailable
from ponder.proxy import create_app
from ponder.testing import Call, ScriptedBackend, running_server
from ponder.tokens import count_prompt_tokens, count_tokens
from ponder.types import Completion, Message, ToolCall
from tests.conftest import MODEL, scripted

SC = f"sc-{MODEL}"
SYSTEM = "Count carefully."
QUESTION = "I have 40 apples and buy 2 more. How many?"
SAMPLES = ["The answer is 42.", "Answer: 41", "So we get 42."]
THREE = {"ponder": {"sc": {"samples": 3}}, "top_k": 5}
"""Three samples; `top_k` (as `temperature` and `top_p`, the client has no argument for it)."""
WORKING = "Sample 1: 42\nSample 2: 41\nSample 3: 42\nVote: 42 (2 of 3)\n"

WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
CALL = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Oslo"}')


def root(server: str) -> str:
    """The server's root: the SDK adds `/v1/messages` itself."""
    return server.removesuffix("/v1")


def client_for(server: str, api_key: str = "unused") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=root(server), api_key=api_key, max_retries=0)


@pytest.fixture
def claude(server: str) -> anthropic.Anthropic:
    return client_for(server)


@pytest.fixture
def sc_backend() -> ScriptedBackend:
    return scripted(list(SAMPLES))


@pytest.fixture
def sc_server(sc_backend: ScriptedBackend) -> Iterator[str]:
    with running_server(create_app(Settings(), backend=sc_backend)) as url:
        yield url


def usage_of(backend: ScriptedBackend, replies: list[str]) -> tuple[int, int]:
    """(input, output) tokens the backend charged for every call: each call's prompt once,
    each reply's text."""
    prompt = sum(count_prompt_tokens(call.messages) for call in backend.calls)
    return prompt, sum(count_tokens(reply) for reply in replies)


def assert_sc_calls(backend: ScriptedBackend) -> None:
    assert len(backend.calls) == 3
    for call in backend.calls:
        assert [(m.role, m.text) for m in call.messages] == [
            ("system", SYSTEM),
            ("user", QUESTION),
        ]
        assert (call.sampling.max_tokens, call.sampling.stop) == (64, ("###",))
        assert call.sampling.temperature == 0.7  # sc's own: the client gave none
        assert call.sampling.extra == {"top_k": 5, "user": "u-1"}


# ---- answers -------------------------------------------------------------------------------


def test_a_strategy_route_answers_with_its_working_as_thinking(
    sc_server: str, sc_backend: ScriptedBackend
) -> None:
    raw = client_for(sc_server).messages.with_raw_response.create(
        model=SC,
        system=SYSTEM,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=64,
        stop_sequences=["###"],
        metadata={"user_id": "u-1"},
        extra_body=THREE,
    )
    message = raw.parse()
    assert message.model == SC
    assert message.id == f"msg_{raw.headers['x-request-id']}"
    assert raw.headers["x-ponder-backend-calls"] == "3"
    assert [block.type for block in message.content] == ["thinking", "text"]
    thinking, text = message.content
    assert thinking.type == "thinking" and text.type == "text"
    assert (thinking.thinking, thinking.signature) == (WORKING, "")
    assert text.text == "The answer is 42."  # the first sample that gave the winning answer
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    assert_sc_calls(sc_backend)
    prompt, output = usage_of(sc_backend, SAMPLES)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (prompt, output)
    assert message.usage.cache_read_input_tokens == 0
    assert message.usage.cache_creation_input_tokens == 0
    details = message.usage.output_tokens_details
    assert details is not None
    assert details.thinking_tokens == output - count_tokens("The answer is 42.")


def test_a_strategy_route_streams_its_working_then_the_answer(
    sc_server: str, sc_backend: ScriptedBackend
) -> None:
    with client_for(sc_server).messages.stream(
        model=SC,
        system=SYSTEM,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=64,
        stop_sequences=["###"],
        metadata={"user_id": "u-1"},
        extra_body=THREE,
    ) as stream:
        kinds = [_kind(e) for e in stream if e.type not in ("text", "thinking", "signature")]
        message = stream.get_final_message()
    assert kinds[0] == "message_start"
    assert kinds[1:3] == ["content_block_start:thinking", "content_block_delta:thinking_delta"]
    assert kinds[-8:] == [
        "content_block_delta:thinking_delta",
        "content_block_delta:signature_delta",
        "content_block_stop",
        "content_block_start:text",
        "content_block_delta:text_delta",  # the answer came whole: one delta
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert [block.type for block in message.content] == ["thinking", "text"]
    thinking, text = message.content
    assert thinking.type == "thinking" and text.type == "text"
    assert (thinking.thinking, thinking.signature) == (WORKING, "")
    assert text.text == "The answer is 42."
    assert message.stop_reason == "end_turn"
    assert_sc_calls(sc_backend)
    prompt, output = usage_of(sc_backend, SAMPLES)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (prompt, output)


def _kind(event: Any) -> str:
    if event.type == "content_block_start":
        return f"content_block_start:{event.content_block.type}"
    if event.type == "content_block_delta":
        return f"content_block_delta:{event.delta.type}"
    return str(event.type)


def test_a_plain_model_streams_token_by_token(
    claude: anthropic.Anthropic, backend: ScriptedBackend
) -> None:
    events = list(
        claude.messages.create(
            model=MODEL,
            max_tokens=20,
            extra_body={"temperature": 0.3},
            messages=[{"role": "user", "content": "count to three please"}],
            stream=True,
        )
    )
    pieces = [
        e.delta.text
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "text_delta"
    ]
    assert len(pieces) > 1, "tokens arrive as several deltas, not one blob"
    assert "".join(pieces) == "reply 0: count to three please"
    starts = [e for e in events if e.type == "content_block_start"]
    assert [s.content_block.type for s in starts] == ["text"]  # no working, no thinking
    (delta,) = [e for e in events if e.type == "message_delta"]
    assert delta.delta.stop_reason == "end_turn"
    assert delta.usage.output_tokens == count_tokens("reply 0: count to three please")
    (call,) = backend.calls
    assert delta.usage.input_tokens == count_prompt_tokens(call.messages)
    assert call.stream and (call.sampling.temperature, call.sampling.max_tokens) == (0.3, 20)
    assert events[-1].type == "message_stop"


def test_every_event_is_named_by_its_type(server: str, backend: ScriptedBackend) -> None:
    body = {
        "model": SC,
        "max_tokens": 10,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
        "ponder": {"sc": {"samples": 2}},
    }
    response = httpx.post(f"{server}/messages", json=body, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [e for e in response.text.split("\n\n") if e]
    for raw in events:
        name, data = raw.split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        assert json.loads(data.removeprefix("data: "))["type"] == name.removeprefix("event: ")
    assert events[-1].startswith("event: message_stop")
    assert len(backend.calls) == 2


# ---- tools ---------------------------------------------------------------------------------


def weather(call: Call, i: int) -> Completion:
    """Calls the weather tool, then answers from its result."""
    results = [m.text for m in call.messages if m.role == "tool"]
    if results:
        return Completion(f"got {results[-1]}")
    return Completion(None, "tool_calls", tool_calls=(CALL,))


@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_round_trip(stream: bool) -> None:
    backend = scripted(weather)
    question: dict[str, Any] = {"role": "user", "content": "Weather in Oslo?"}
    fields: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 50,
        "tools": [WEATHER],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    }
    with running_server(create_app(Settings(), backend=backend)) as url:
        claude = client_for(url)

        def ask(messages: list[dict[str, Any]]) -> anthropic.types.Message:
            if not stream:
                return claude.messages.create(messages=messages, **fields)
            with claude.messages.stream(messages=messages, **fields) as events:
                return events.get_final_message()

        first = ask([question])
        assert first.stop_reason == "tool_use"
        (use,) = first.content  # no text block: the answer is the call alone
        assert use.type == "tool_use"
        assert (use.id, use.name, use.input) == ("call_1", "get_weather", {"city": "Oslo"})

        result = {"type": "tool_result", "tool_use_id": use.id, "content": "Sunny"}
        history = [
            question,
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {"role": "user", "content": [result, {"type": "text", "text": "Thanks."}]},
        ]
        second = ask(history)
    (text,) = second.content
    assert text.type == "text" and text.text == "got Sunny"
    assert second.stop_reason == "end_turn"

    asked, answered = backend.calls
    assert asked.sampling.tools == (
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER["input_schema"],
                "description": "Weather for a city",
            },
        },
    )
    assert asked.sampling.tool_choice == "required"
    assert asked.sampling.extra == {"parallel_tool_calls": False}
    assert answered.messages == (
        Message("user", "Weather in Oslo?"),
        Message(
            "assistant", None, tool_calls=(ToolCall("call_1", "get_weather", '{"city":"Oslo"}'),)
        ),
        Message("tool", "Sunny", tool_call_id="call_1"),
        Message("user", ({"type": "text", "text": "Thanks."},)),
    )


# ---- errors --------------------------------------------------------------------------------


def test_an_unknown_model_is_not_found(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.messages.create(
            model="nosuch-model", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    body: Any = caught.value.body
    assert body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"
    assert "nosuch-model" in body["error"]["message"]


def test_bad_input_is_an_invalid_request(
    claude: anthropic.Anthropic, server: str, backend: ScriptedBackend
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(
            model=MODEL,
            max_tokens=5,
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"temperature": 5},
        )
    body: Any = caught.value.body
    assert body["error"]["type"] == "invalid_request_error"
    assert "temperature" in body["error"]["message"]

    response = httpx.post(
        f"{server}/messages",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 400
    assert response.json() == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "Invalid value for 'max_tokens': Field required",
        },
    }
    assert backend.calls == []


@pytest.fixture
def keyed_server() -> Iterator[str]:
    app: FastAPI = create_app(Settings(api_keys="k-right"), backend=scripted())
    with running_server(app) as url:
        yield url


def test_a_wrong_key_is_an_authentication_error(keyed_server: str) -> None:
    message = [{"role": "user", "content": "hi"}]
    with pytest.raises(anthropic.AuthenticationError) as caught:
        client_for(keyed_server, "k-wrong").messages.create(
            model=MODEL, max_tokens=5, messages=message
        )
    assert caught.value.status_code == 401
    body: Any = caught.value.body
    assert body["error"]["type"] == "authentication_error"
    answer = client_for(keyed_server, "k-right").messages.create(
        model=MODEL, max_tokens=5, messages=message
    )
    assert answer.content[0].type == "text"


def test_a_failure_after_the_stream_began_is_an_error_event() -> None:
    failure = BackendUnavailable("no upstream")
    backend = scripted([failure, failure])
    with running_server(create_app(Settings(), backend=backend)) as url:
        stream = client_for(url).messages.create(
            model=SC,
            max_tokens=5,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_body={"ponder": {"sc": {"samples": 2}}},
        )
        seen = []
        with pytest.raises(anthropic.APIStatusError) as caught:
            for event in stream:
                seen.append(event.type)
    assert seen == ["message_start"]
    body: Any = caught.value.body
    assert body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "no upstream"},
    }
    assert len(backend.calls) == 2


# ---- count_tokens --------------------------------------------------------------------------


def test_count_tokens_is_what_the_backend_charges(
    claude: anthropic.Anthropic, backend: ScriptedBackend
) -> None:
    messages: list[Any] = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "Let me see."},
        {"role": "user", "content": [{"type": "text", "text": "Please hurry."}]},
    ]
    counted = claude.messages.count_tokens(model=MODEL, system=SYSTEM, messages=messages)
    answer = claude.messages.create(model=MODEL, system=SYSTEM, messages=messages, max_tokens=9)
    assert counted.input_tokens == answer.usage.input_tokens
    (call,) = backend.calls
    assert counted.input_tokens == count_prompt_tokens(call.messages)

    with_tools = claude.messages.count_tokens(
        model=SC,
        system=SYSTEM,
        messages=messages,
        tools=[WEATHER],  # type: ignore[list-item]
    )
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": WEATHER["input_schema"],
            "description": "Weather for a city",
        },
    }
    assert with_tools.input_tokens == counted.input_tokens + count_tokens(json.dumps(tool))
    assert len(backend.calls) == 1  # counting calls no backend

    with pytest.raises(anthropic.NotFoundError):
        claude.messages.count_tokens(model="nosuch-model", messages=messages)
