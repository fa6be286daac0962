"""Conversions between internal types and OpenAI-format dicts."""

from __future__ import annotations

import pytest

from ponder.backends.assemble import Assembler
from ponder.backends.wire import deltas_of, sampling_body, text_chat
from ponder.errors import Unsupported
from ponder.types import Delta, Message, Sampling, ToolCall, ToolCallDelta, Usage


def test_text_chat_maps_roles_and_tool_traffic_to_text() -> None:
    call = ToolCall(id="c1", name="calc", arguments='{"x": 2}')
    messages = [
        Message("developer", "Be brief."),
        Message("system", "Sys."),
        Message("user", ({"type": "text", "text": "2+"}, {"type": "text", "text": "2?"})),
        Message("assistant", None, tool_calls=(call,)),
        Message("tool", "4", tool_call_id="c1"),
        Message("assistant", "It is 4.", name="bot"),
    ]
    assert text_chat(messages, "vllm") == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Sys."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": '[called tools: calc({"x": 2})]'},
        {"role": "user", "content": "[tool result c1]\n4"},
        {"role": "assistant", "content": "It is 4.", "name": "bot"},
    ]


def test_text_chat_refuses_images() -> None:
    image = {"type": "image_url", "image_url": {"url": "http://x/y.png"}}
    message = Message("user", ({"type": "text", "text": "what is it?"}, image))
    with pytest.raises(Unsupported) as err:
        text_chat([message], "embedded")
    assert err.value.param == "messages"


def test_sampling_body_forwards_extra_and_the_clients_max_tokens_name() -> None:
    s = Sampling(
        temperature=0.1,
        max_tokens=9,
        max_tokens_field="max_completion_tokens",
        stop=("x",),
        extra={"user": "u", "temperature": 2},
    )
    assert sampling_body(s) == {
        "user": "u",
        "temperature": 0.1,
        "max_completion_tokens": 9,
        "stop": ["x"],
    }


def test_streamed_tool_call_fragments_assemble_into_one_call() -> None:
    chunks = [
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "c1",
                                "type": "function",
                                "function": {"name": "get", "arguments": ""},
                            }
                        ]
                    },
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a": '}}]},
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]},
                    "finish_reason": "tool_calls",
                }
            ]
        },
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7}},
    ]
    assembler = Assembler(1)
    for chunk in chunks:
        for delta in deltas_of(chunk):
            assembler.add(delta)
    (completion,) = assembler.completions()
    assert completion.tool_calls == (ToolCall("c1", "get", '{"a": 1}'),)
    assert completion.content is None and completion.finish_reason == "tool_calls"
    assert completion.usage == Usage(5, 7)


def test_assembler_keeps_choices_apart() -> None:
    assembler = Assembler(2)
    for delta in [
        Delta(index=1, content="b"),
        Delta(index=0, content="a"),
        Delta(index=0, tool_calls=(ToolCallDelta(0, "t", "f", "{}"),)),
        Delta(index=1, content="b", finish_reason="length"),
        Delta(usage=Usage(1, 2)),
    ]:
        assembler.add(delta)
    first, second = assembler.completions()
    # the call's 2 output tokens shared by what each choice wrote ("a" and a call; "bb")
    assert (first.content, first.finish_reason, first.usage) == ("a", "stop", Usage(1, 1))
    assert (second.content, second.finish_reason, second.usage) == ("bb", "length", Usage(0, 1))


def test_assembler_joins_each_choices_logprobs_in_order() -> None:
    def entry(token: str) -> dict[str, object]:
        return {"token": token, "logprob": -0.5, "bytes": list(token.encode()), "top_logprobs": []}

    assembler = Assembler(2)
    for delta in [
        Delta(index=0, content="a", logprobs={"content": [entry("a")]}),
        Delta(index=1, content="x"),
        Delta(index=0, content="bc", logprobs={"content": [entry("b"), entry("c")]}),
        Delta(index=0, finish_reason="stop", logprobs={"content": [entry("!")]}),
        Delta(index=1, finish_reason="stop"),
    ]:
        assembler.add(delta)
    first, second = assembler.completions()
    assert first.logprobs == {"content": [entry("a"), entry("b"), entry("c"), entry("!")]}
    assert second.logprobs is None  # none asked for, or none sent: not an empty list
