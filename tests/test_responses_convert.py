"""Responses API requests into internal types, stored conversations, and the refusals of what
Ponder cannot do (400s in the OpenAI shape)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ponder.protocol_responses import ResponseRequest
from ponder.proxy.convert_responses import (
    MAX_ID,
    ItemIds,
    chat_request,
    decode_message,
    encode_message,
    output_items,
    output_messages,
    response_id,
    to_messages,
    to_sampling,
)
from ponder.types import Completion, Message, ToolCall
from tests.conftest import MODEL, assert_error

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def request(**fields: Any) -> ResponseRequest:
    fields.setdefault("input", "hello")
    return ResponseRequest.model_validate({"model": "m", **fields})


def test_a_string_input_is_one_user_message() -> None:
    assert to_messages(request(input="What is 2+2?")) == [Message("user", "What is 2+2?")]


def test_instructions_come_first_then_earlier_turns_then_the_input() -> None:
    earlier = [Message("user", "hi"), Message("assistant", "hello")]
    messages = to_messages(request(input="and now?", instructions="Be brief."), earlier)
    assert messages == [
        Message("system", "Be brief."),
        *earlier,
        Message("user", "and now?"),
    ]


def test_message_items_of_every_role_and_their_parts() -> None:
    items = [
        {"role": "developer", "content": "Answer in French."},
        {"role": "system", "content": [{"type": "input_text", "text": "Be kind."}]},
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "What is this?"},
                {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
            ],
        },
        {  # an output message passed back, with its id and status
            "type": "message",
            "id": "msg_1",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Un chat.", "annotations": []}],
        },
    ]
    assert to_messages(request(input=items)) == [
        Message("developer", "Answer in French."),
        Message("system", ({"type": "text", "text": "Be kind."},)),
        Message(
            "user",
            (
                {"type": "text", "text": "What is this?"},
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"},
                },
            ),
        ),
        Message("assistant", ({"type": "text", "text": "Un chat."},)),
    ]


def test_function_calls_of_one_turn_become_one_assistant_message() -> None:
    items = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": '{"a":1}'},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {
            "type": "function_call_output",
            "call_id": "c2",
            "output": [{"type": "input_text", "text": "rain"}],
        },
    ]
    assert to_messages(request(input=items)) == [
        Message("user", "Weather in Paris and Rome?"),
        Message(
            "assistant",
            None,
            tool_calls=(
                ToolCall("c1", "get_weather", "{}"),
                ToolCall("c2", "get_weather", '{"a":1}'),
            ),
        ),
        Message("tool", "sunny", tool_call_id="c1"),
        Message("tool", ({"type": "text", "text": "rain"},), tool_call_id="c2"),
    ]


def test_an_assistant_text_and_the_calls_after_it_are_one_turn() -> None:
    items = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Let me look."},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": "{}"},
    ]
    assert to_messages(request(input=items)) == [
        Message("user", "Weather?"),
        Message("assistant", "Let me look.", tool_calls=(ToolCall("c1", "get_weather", "{}"),)),
        Message("tool", "sunny", tool_call_id="c1"),
        Message("assistant", None, tool_calls=(ToolCall("c2", "get_weather", "{}"),)),
    ]


def test_sampling_takes_the_chat_shape() -> None:
    sampling = to_sampling(
        request(
            temperature=0.3,
            top_p=0.9,
            max_output_tokens=50.0,  # a whole number as JSON Schema counts it
            tools=[WEATHER],
            tool_choice={"type": "function", "name": "get_weather"},
            parallel_tool_calls=False,
            reasoning={"effort": "low", "summary": "auto"},
            user="u-1",
            text={
                "format": {
                    "type": "json_schema",
                    "name": "answer",
                    "schema": {"type": "object"},
                    "strict": True,
                }
            },
            include=["reasoning.encrypted_content"],  # a Responses field: not forwarded
        )
    )
    assert (sampling.temperature, sampling.top_p, sampling.max_tokens) == (0.3, 0.9, 50)
    assert sampling.tools == (
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": WEATHER["parameters"],
            },
        },
    )
    assert sampling.tool_choice == {"type": "function", "function": {"name": "get_weather"}}
    assert sampling.response_format == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
    }
    assert sampling.extra == {
        "user": "u-1",
        "reasoning_effort": "low",
        "parallel_tool_calls": False,
    }


def test_json_object_and_plain_text_formats() -> None:
    assert to_sampling(request(text={"format": {"type": "json_object"}})).response_format == {
        "type": "json_object"
    }
    assert to_sampling(request(text={"format": {"type": "text"}})).response_format is None
    # tool_choice "auto" without tools is harmless and not forwarded
    assert to_sampling(request(tool_choice="auto")).tool_choice is None


def test_the_chat_request_keeps_the_working_and_ponder_options() -> None:
    chat = chat_request(
        request(stream=True, optillm_approach="sc", ponder={"sc": {"samples": 3}}),
        [Message("user", "before")],
    )
    assert chat.keep_working and chat.stream and chat.n == 1
    assert (chat.approach, chat.ponder) == ("sc", {"sc": {"samples": 3}})
    assert chat.messages == [Message("user", "before"), Message("user", "hello")]


@pytest.mark.parametrize(
    "message",
    [
        Message("user", "plain"),
        Message("system", ({"type": "text", "text": "parts"},), name="boss"),
        Message(
            "user",
            (
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "high"}},
            ),
        ),
        Message("assistant", None, tool_calls=(ToolCall("c1", "f", '{"x": "ü"}'),)),
        Message("assistant", "both", tool_calls=(ToolCall("c1", "f", "{}"),)),
        Message("tool", "42", tool_call_id="c1"),
    ],
)
def test_a_stored_message_reads_back_equal(message: Message) -> None:
    import json

    stored = json.loads(json.dumps(encode_message(message)))  # as the database keeps it
    assert decode_message(stored) == message


def test_an_output_becomes_the_assistant_turn() -> None:
    ids = ItemIds("r1")
    choice = Completion("Let me look.", "tool_calls", (ToolCall("c1", "get_weather", "{}"),))
    output = output_items(ids, [choice], [(0, "thinking\n")])
    assert [item["type"] for item in output] == ["reasoning", "message", "function_call"]
    assert [item["id"] for item in output] == ["rs_r1_0", "msg_r1_1", "fc_r1_2"]
    assert output_messages(output) == [
        Message("assistant", "Let me look.", tool_calls=(ToolCall("c1", "get_weather", "{}"),))
    ]


def test_output_reasoning_is_the_working_of_its_choice_or_the_completions_own() -> None:
    ids = ItemIds("r")
    working = [(0, "Sample 1: 4\n"), (1, "other choice\n"), (0, "Vote: 4\n")]
    (reasoning, message) = output_items(ids, [Completion("4", reasoning="native")], working)
    assert reasoning["summary"] == [{"type": "summary_text", "text": "Sample 1: 4\nVote: 4\n"}]
    assert message["content"] == [{"type": "output_text", "text": "4", "annotations": []}]
    (native, _) = output_items(ids, [Completion("4", reasoning="native")], [])
    assert native["summary"] == [{"type": "summary_text", "text": "native"}]
    (cut,) = output_items(ids, [Completion("4 and", "length")], None)
    assert cut["status"] == "incomplete"


def test_response_ids_fit_the_store() -> None:
    assert response_id("abc") == "resp_abc"
    long = response_id("x" * 128)  # the longest x-request-id the server takes
    assert long.startswith("resp_") and len(long) <= MAX_ID
    assert long != response_id("x" * 127 + "y")


# ---- refusals, in the OpenAI error shape --------------------------------------------------


async def post(client: httpx.AsyncClient, **fields: Any) -> httpx.Response:
    fields.setdefault("input", "hello")
    return await client.post("/v1/responses", json={"model": MODEL, **fields})


async def test_hosted_tools_are_refused_by_name(client: httpx.AsyncClient) -> None:
    response = await post(client, tools=[WEATHER, {"type": "web_search"}])
    assert_error(response, 400, type="invalid_request_error", param="tools")
    assert "'web_search'" in response.json()["error"]["message"]


async def test_images_by_file_id_are_refused(client: httpx.AsyncClient) -> None:
    image = {"type": "input_image", "image_url": "https://x/y.png", "file_id": "file-1"}
    items = [{"role": "user", "content": [image]}]
    response = await post(client, input=items)
    assert_error(response, 400, type="invalid_request_error", param="input[0].content[0].file_id")
    assert "file_id" in response.json()["error"]["message"]


async def test_files_and_unknown_items_are_refused(client: httpx.AsyncClient) -> None:
    part = {"type": "input_file", "file_id": "file-1"}
    response = await post(client, input=[{"role": "user", "content": [part]}])
    assert_error(response, 400, type="invalid_request_error")
    assert "input_file is not supported" in response.json()["error"]["message"]
    response = await post(client, input=[{"type": "web_search_call", "id": "ws_1"}])
    assert_error(response, 400, type="invalid_request_error")
    assert "input item's type" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"background": True, "store": False}, "background requires store"),
        ({"background": True, "stream": True}, "cannot be streamed"),
        ({"tool_choice": "required"}, "tool_choice requires tools"),
        ({"input": []}, "at least 1 item"),
        ({"input": 5}, "Invalid value for 'input'"),
        ({"conversation": "conv_1"}, "not supported"),
        ({"max_output_tokens": 0}, "greater than or equal to 1"),
    ],
)
async def test_requests_ponder_cannot_serve_are_400s(
    client: httpx.AsyncClient, fields: dict[str, Any], message: str
) -> None:
    response = await post(client, **fields)
    assert_error(response, 400, type="invalid_request_error")
    assert message in response.json()["error"]["message"]
