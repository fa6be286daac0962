"""The Anthropic Messages API front end's conversions: requests to internal messages and
sampling, answers to blocks and events, and its errors and schema through the app."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import httpx
import jsonschema_rs
import pytest
from fastapi import FastAPI

from ponder.config import Settings
from ponder.protocol_messages import MessagesRequest
from ponder.proxy import create_app
from ponder.proxy.convert_messages import (
    chat_request,
    stop_reason,
    tool_input,
    usage_body,
    working_text,
)
from ponder.proxy.errors import anthropic_error_body
from ponder.proxy.messages_api import MessageEvents, event
from ponder.proxy.metrics import _in_band_code
from ponder.strategies.context import Meter
from ponder.testing import ScriptedBackend
from ponder.types import Completion, Delta, Message, ToolCall, ToolCallDelta, Usage
from tests.conftest import MODEL, asgi_client, scripted

HI = [{"role": "user", "content": "hi"}]
TOOL = {"name": "look", "input_schema": {"type": "object"}}
PNG = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}


def request(**fields: Any) -> MessagesRequest:
    body = {"model": MODEL, "max_tokens": 16, "messages": HI, **fields}
    return MessagesRequest.model_validate(body)


def text(value: str) -> dict[str, str]:
    return {"type": "text", "text": value}


# ---- requests ------------------------------------------------------------------------------


def test_the_system_prompt_comes_first_as_a_string_or_text_parts() -> None:
    assert chat_request(request(system="Be brief.")).messages == [
        Message("system", "Be brief."),
        Message("user", "hi"),
    ]
    blocks = [{**text("Be brief."), "cache_control": {"type": "ephemeral"}}, text(" Be kind.")]
    assert chat_request(request(system=blocks)).messages[0] == Message(
        "system", (text("Be brief."), text(" Be kind."))
    )


def test_images_become_image_url_parts() -> None:
    turn = {
        "role": "user",
        "content": [
            text("What is this?"),
            {"type": "image", "source": PNG},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
        ],
    }
    (message,) = chat_request(request(messages=[turn])).messages
    assert message == Message(
        "user",
        (
            text("What is this?"),
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
        ),
    )


def test_tool_uses_become_tool_calls_and_results_tool_messages_before_the_rest() -> None:
    messages = [
        {"role": "user", "content": "Weather in Oslo and Rome?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Two cities.", "signature": "sig"},
                text("Checking."),
                {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Oslo"}},
                {"type": "redacted_thinking", "data": "xyz"},
                {"type": "tool_use", "id": "t2", "name": "weather", "input": {"city": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                text("Here you are."),
                {
                    "type": "tool_result",
                    "tool_use_id": "t1",
                    "content": [text("Sunny"), {"type": "image", "source": PNG}, text("12 C")],
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "t2",
                    "content": "timeout",
                    "is_error": True,
                },
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t3", "name": "n", "input": {}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t3"}]},
    ]
    assert chat_request(request(messages=messages)).messages == [
        Message("user", "Weather in Oslo and Rome?"),
        Message(
            "assistant",
            "Checking.",  # the thinking blocks are dropped
            tool_calls=(
                ToolCall("t1", "weather", '{"city":"Oslo"}'),
                ToolCall("t2", "weather", '{"city":"Rome"}'),
            ),
        ),
        Message("tool", "Sunny\n12 C", tool_call_id="t1"),
        Message("tool", "Error: timeout", tool_call_id="t2"),
        Message(
            "user",
            (
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                text("Here you are."),
            ),
        ),
        Message("assistant", None, tool_calls=(ToolCall("t3", "n", "{}"),)),
        Message("tool", "", tool_call_id="t3"),  # a turn of results alone: no user message
    ]


def test_system_turns_are_kept_in_place() -> None:
    messages = [*HI, {"role": "system", "content": [text("Now in French.")]}]
    assert chat_request(request(messages=messages)).messages == [
        Message("user", "hi"),
        Message("system", (text("Now in French."),)),
    ]


@pytest.mark.parametrize(
    ("choice", "expected", "extra"),
    [
        ({"type": "auto"}, "auto", {}),
        ({"type": "any"}, "required", {}),
        ({"type": "tool", "name": "look"}, {"type": "function", "function": {"name": "look"}}, {}),
        ({"type": "none"}, "none", {}),
        (
            {"type": "auto", "disable_parallel_tool_use": True},
            "auto",
            {"parallel_tool_calls": False},
        ),
        ({"type": "any", "disable_parallel_tool_use": False}, "required", {}),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: object, extra: dict[str, Any]) -> None:
    sampling = chat_request(request(tools=[TOOL], tool_choice=choice)).sampling
    assert sampling.tool_choice == expected
    assert sampling.extra == extra
    assert sampling.tools == (
        {"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}},
    )


def test_sampling_fields_and_what_is_not_forwarded() -> None:
    converted = chat_request(
        request(
            max_tokens=99,
            temperature=0.5,
            top_p=0.9,
            top_k=40,
            stop_sequences=["END", "STOP"],
            metadata={"user_id": "u-7"},
            service_tier="auto",  # a field for the API's own models: accepted, not forwarded
            stream=True,
        )
    )
    sampling = converted.sampling
    assert (sampling.max_tokens, sampling.max_tokens_field) == (99, "max_tokens")
    assert (sampling.temperature, sampling.top_p, sampling.stop) == (0.5, 0.9, ("END", "STOP"))
    assert sampling.extra == {"top_k": 40, "user": "u-7"}
    assert (sampling.tools, sampling.tool_choice) == ((), None)
    assert converted.stream and converted.keep_working and converted.n == 1


@pytest.mark.parametrize(
    ("fields", "ponder"),
    [
        ({}, None),
        ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, None),
        ({"thinking": {"type": "disabled"}}, {"reasoning": False}),
        (
            {"thinking": {"type": "disabled"}, "ponder": {"reasoning": True, "trace": True}},
            {"reasoning": True, "trace": True},
        ),
        ({"ponder": {"sc": {"samples": 2}}}, {"sc": {"samples": 2}}),
    ],
)
def test_thinking_disabled_hides_the_working(
    fields: dict[str, Any], ponder: dict[str, Any] | None
) -> None:
    assert chat_request(request(**fields)).ponder == ponder


# ---- answers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ('{"city": "Oslo"}', {"city": "Oslo"}),
        ("", {}),
        ("  ", {}),
        ("[1, 2]", {"arguments": "[1, 2]"}),
        ('{"city": "Os', {"arguments": '{"city": "Os'}),
    ],
)
def test_tool_input_is_always_an_object(arguments: str, expected: dict[str, Any]) -> None:
    assert tool_input(arguments) == expected


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (Completion("a"), ("end_turn", None)),
        (Completion("a", "length"), ("max_tokens", None)),
        (Completion("a", "content_filter"), ("refusal", None)),
        (Completion("a", stop_sequence="###"), ("stop_sequence", "###")),
        (Completion("a", "length", stop_sequence="###"), ("max_tokens", None)),
        (
            Completion(None, "tool_calls", tool_calls=(ToolCall("c", "f", "{}"),)),
            ("tool_use", None),
        ),
        (Completion(None, "stop", tool_calls=(ToolCall("c", "f", "{}"),)), ("tool_use", None)),
    ],
)
def test_stop_reasons(completion: Completion, expected: tuple[str, str | None]) -> None:
    assert stop_reason(completion) == expected


def test_cache_reads_are_counted_apart() -> None:
    assert usage_body(Usage(100, 20, 30), 5) == {
        "input_tokens": 70,
        "output_tokens": 20,
        "cache_read_input_tokens": 30,
        "cache_creation_input_tokens": 0,
        "output_tokens_details": {"thinking_tokens": 5},
    }


def test_the_thinking_is_the_working_of_the_first_choice_then_the_reasoning() -> None:
    working = [(0, "Step 1.\n"), (1, "other choice\n"), (0, "Step 2.")]
    assert working_text(working, Completion("a")) == "Step 1.\nStep 2."
    assert working_text(working, Completion("a", reasoning="Mine.")) == "Step 1.\nStep 2.\nMine."
    assert working_text(None, Completion("a", reasoning="Mine.")) == "Mine."
    assert working_text([], Completion("a")) == ""


# ---- stream events -------------------------------------------------------------------------


def events_of(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for chunk in raw.decode().split("\n\n"):
        if chunk:
            name, data = chunk.split("\n")
            payload = json.loads(data.removeprefix("data: "))
            assert name == f"event: {payload['type']}"
            out.append(payload)
    return out


def summary(events: list[dict[str, Any]]) -> list[str]:
    """Each event as `type[:block or delta type]`."""
    out = []
    for e in events:
        inner = e.get("content_block") or e.get("delta") or {}
        kind = inner.get("type") if e["type"].startswith("content_block") else None
        out.append(f"{e['type']}:{kind}" if kind else e["type"])
    return out


async def test_an_answer_that_came_whole_is_written_once_by_finish() -> None:
    meter = Meter(calls=2, usage=Usage(30, 12, 10))
    fmt = MessageEvents("msg_1", "sc-m", meter)
    answer = Completion("42", usage=Usage(15, 2))
    raw = fmt.begin() + fmt.delta(Delta(reasoning="Sample 1: 42\n")) + fmt.keepalive()
    raw += await fmt.finish([answer])
    events = events_of(raw)
    assert summary(events) == [
        "message_start",
        "content_block_start:thinking",
        "content_block_delta:thinking_delta",
        "ping",
        "content_block_delta:signature_delta",
        "content_block_stop",
        "content_block_start:text",
        "content_block_delta:text_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert [e.get("index") for e in events[1:9] if e["type"] != "ping"] == [0, 0, 0, 0, 1, 1, 1]
    assert events[7]["delta"]["text"] == "42"
    assert events[-2]["usage"] == {
        "input_tokens": 20,
        "output_tokens": 12,
        "cache_read_input_tokens": 10,
        "cache_creation_input_tokens": 0,
        "output_tokens_details": {"thinking_tokens": 10},
    }


async def test_a_streamed_answer_is_not_written_again_and_tool_calls_come_whole() -> None:
    fmt = MessageEvents("msg_1", "m", Meter())
    raw = fmt.begin()
    raw += fmt.delta(Delta(content="Let me "))
    raw += fmt.delta(Delta(content="look."))
    raw += fmt.delta(Delta(tool_calls=(ToolCallDelta(0, "c1", "look", '{"q": '),)))
    raw += fmt.delta(Delta(tool_calls=(ToolCallDelta(0, None, None, '"x"}'),)))
    raw += fmt.delta(Delta(tool_calls=(ToolCallDelta(1, "c2", "other", "oops"),)))
    raw += fmt.delta(Delta(finish_reason="tool_calls"))
    raw += fmt.delta(Delta(content="after the end"))
    whole = Completion(
        "Let me look.", "tool_calls", tool_calls=(ToolCall("c1", "look", '{"q": "x"}'),)
    )
    raw += await fmt.finish([whole])
    events = events_of(raw)
    assert summary(events) == [
        "message_start",
        "content_block_start:text",
        "content_block_delta:text_delta",
        "content_block_delta:text_delta",
        "content_block_stop",
        "content_block_start:tool_use",
        "content_block_delta:input_json_delta",
        "content_block_stop",
        "content_block_start:tool_use",
        "content_block_delta:input_json_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[5]["content_block"] == {
        "type": "tool_use",
        "id": "c1",
        "name": "look",
        "input": {},
    }
    assert json.loads(events[6]["delta"]["partial_json"]) == {"q": "x"}
    assert json.loads(events[9]["delta"]["partial_json"]) == {"arguments": "oops"}
    assert [e["index"] for e in events[5:11]] == [1, 1, 1, 2, 2, 2]
    assert events[-2]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}


async def test_a_whole_answer_with_reasoning_and_tool_calls() -> None:
    fmt = MessageEvents("msg_1", "m", Meter())
    call = ToolCall("c1", "look", "{}")
    answer = Completion(None, "tool_calls", tool_calls=(call,), reasoning="I should look.")
    events = events_of(fmt.begin() + await fmt.finish([answer]))
    assert summary(events)[1:-2] == [
        "content_block_start:thinking",
        "content_block_delta:thinking_delta",
        "content_block_delta:signature_delta",
        "content_block_stop",
        "content_block_start:tool_use",  # no text block: the answer is the call alone
        "content_block_delta:input_json_delta",
        "content_block_stop",
    ]


def test_an_error_event_is_counted_by_the_metrics() -> None:
    error = event(anthropic_error_body(503, "no upstream"))
    assert error.startswith(b'event: error\ndata: {"type":"error"')
    assert _in_band_code(b'event: ping\ndata: {"type":"ping"}\n\n' + error) == "overloaded_error"
    quoted = event({"type": "content_block_delta", "delta": {"text": 'data: {"type":"error"'}})
    assert _in_band_code(quoted) is None


# ---- through the app -----------------------------------------------------------------------


async def post(app: FastAPI, body: dict[str, Any], path: str = "/v1/messages") -> httpx.Response:
    async with asgi_client(app) as client:
        return await client.post(path, json=body)


def anthropic_error(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == kind
    assert set(body["error"]) == {"type", "message"}
    message: str = body["error"]["message"]
    return message


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "16"}, "max_tokens"),
        ({"temperature": 1.5}, "temperature"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "document"}]}]}, "content[0]"),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "a"}]}]},
            "content[0]",
        ),
        ({"tool_choice": {"type": "any"}}, "tool_choice requires tools"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0]"),
        ({"thinking": {"type": "enabled", "budget_tokens": 10}}, "budget_tokens"),
        ({"model": f"sc|re2-{MODEL}"}, "side by side"),
        ({"optillm_approach": "sc|re2"}, "side by side"),
    ],
)
async def test_bad_input_is_a_400_in_the_api_shape(
    app: FastAPI, fields: dict[str, Any], param: str
) -> None:
    body = {"model": MODEL, "max_tokens": 16, "messages": HI, **fields}
    body = {k: v for k, v in body.items() if v is not None}
    message = anthropic_error(await post(app, body), 400, "invalid_request_error")
    assert param in message


@pytest.mark.parametrize(
    "fields",
    [
        {"model": f"sc|re2-{MODEL}"},
        {"messages": []},
        {"tool_choice": {"type": "any"}},
        {"system": 7},
    ],
)
async def test_count_tokens_refuses_what_messages_refuse(
    app: FastAPI, fields: dict[str, Any]
) -> None:
    body = {"model": MODEL, "messages": HI, **fields}
    path = "/v1/messages/count_tokens"
    anthropic_error(await post(app, body, path), 400, "invalid_request_error")


async def test_count_tokens_of_an_unknown_model_is_a_404(app: FastAPI) -> None:
    body = {"model": "nosuch-model", "messages": HI}
    path = "/v1/messages/count_tokens"
    anthropic_error(await post(app, body, path), 404, "not_found_error")


async def test_thinking_disabled_sends_no_thinking_block() -> None:
    backend = scripted(["Answer: 42", "Answer: 42"])
    body = {
        "model": f"sc-{MODEL}",
        "max_tokens": 16,
        "messages": HI,
        "thinking": {"type": "disabled"},
        "ponder": {"sc": {"samples": 2}, "trace": True},
    }
    response = await post(create_app(Settings(), backend=backend), body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["content"] == [{"type": "text", "text": "Answer: 42"}]
    (vote,) = [s for s in answer["ponder"]["trace"] if s["step"] == "vote"]
    assert vote["tally"] == {"42": 2}
    assert len(backend.calls) == 2


async def test_the_backends_reasoning_and_cache_reads_reach_the_answer() -> None:
    reply = Completion("Paris.", reasoning="The capital.", usage=Usage(50, 3, 20))
    backend = scripted([reply])
    body = {"model": MODEL, "max_tokens": 16, "messages": HI}
    response = await post(create_app(Settings(), backend=backend), body)
    answer = response.json()
    assert answer["content"] == [
        {"type": "thinking", "thinking": "The capital.", "signature": ""},
        {"type": "text", "text": "Paris."},
    ]
    assert answer["usage"] == {
        "input_tokens": 30,
        "output_tokens": 3,
        "cache_read_input_tokens": 20,
        "cache_creation_input_tokens": 0,
        "output_tokens_details": {"thinking_tokens": 0},
    }


# ---- the schema states the server's rules --------------------------------------------------


class AnyModel(ScriptedBackend):
    """Serves every model name, as the remote `openai` backend does."""

    def serves(self, model: str) -> bool:
        return True


@cache
def _validator(app_schema: str, name: str) -> Any:
    components = json.loads(app_schema)["components"]
    return jsonschema_rs.validator_for(
        {"$ref": f"#/components/schemas/{name}", "components": components}
    )


TOOLS = {"tools": [TOOL]}
RESULT = {"type": "tool_result", "tool_use_id": "t1", "content": "done"}


@pytest.mark.parametrize(
    ("fields", "valid"),
    [
        ({}, True),
        ({"max_tokens": 16.0}, True),
        ({"max_tokens": 16.5}, False),
        ({"temperature": 1}, True),
        ({"temperature": 1.01}, False),
        ({"top_k": 0}, True),
        ({"top_k": -1}, False),
        ({"tool_choice": {"type": "auto"}}, False),
        ({"tool_choice": {"type": "auto"}, "tools": []}, False),
        ({"tool_choice": {"type": "none"}}, True),
        ({"tool_choice": {"type": "auto"}, **TOOLS}, True),
        ({"tool_choice": {"type": "tool", "name": "look"}, **TOOLS}, True),
        ({"model": f"sc&re2-{MODEL}"}, True),
        ({"model": f"sc|re2-{MODEL}"}, False),
        ({"model": f"sc|re2-{MODEL}", "optillm_approach": "sc"}, True),
        ({"model": f"sc|re2-{MODEL}", "optillm_approach": ""}, False),
        ({"optillm_approach": "sc&re2"}, True),
        ({"optillm_approach": "sc|re2"}, False),
        ({"optillm_approach": "self_consistency"}, True),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024.0}}, True),
        ({"thinking": {"type": "enabled", "budget_tokens": 1023}}, False),
        ({"thinking": {"type": "adaptive"}}, True),
        ({"ponder": {"sc": {"samples": 0}}}, False),
        ({"ponder": {"nosuch": {}}}, False),
        ({"stream": 1}, False),
        ({"system": [{"type": "text", "text": "x"}]}, True),
        ({"system": [{"type": "image", "source": PNG}]}, False),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": PNG}]}]}, True),
        ({"messages": [*HI, {"role": "assistant", "content": "prefill"}]}, True),
        ({"messages": [{"role": "assistant", "content": "prefill"}]}, False),
        ({"messages": [{"role": "user", "content": []}]}, False),
        ({"messages": [{"role": "user", "content": [RESULT]}]}, False),
        ({"messages": [{"role": "user", "content": [RESULT, text("and?")]}]}, True),
        (
            {"messages": [{"role": "assistant", "content": [{"type": "image", "source": PNG}]}]},
            False,
        ),
        ({"metadata": {"user_id": 7}}, False),
        ({"unknown_field": {"kept": True}}, True),
    ],
)
async def test_the_schema_and_the_server_agree(fields: dict[str, Any], valid: bool) -> None:
    """As the fuzz test finds them: every request the schema allows is answered, every one it
    forbids is a 400 (on a backend that serves every model name)."""
    app = create_app(Settings(), backend=AnyModel(lambda call, i: "4"))
    body = {"model": MODEL, "max_tokens": 16, "messages": HI, **fields}
    validator = _validator(json.dumps(app.openapi()), "MessagesRequest")
    assert validator.is_valid(body) is valid
    response = await post(app, body)
    assert response.status_code == (200 if valid else 400), response.text
