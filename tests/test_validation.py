"""Every bad request is a 400 in the OpenAI error shape with the offending `param`; never a 422."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ponder.testing import ScriptedBackend
from tests.conftest import MODEL

OK_MESSAGES = [{"role": "user", "content": "hi"}]


def body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": OK_MESSAGES, **fields}


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        (body(temperature=7), "temperature"),
        (body(temperature=-0.1), "temperature"),
        (body(top_p=1.5), "top_p"),
        (body(n=0), "n"),
        (body(n=129), "n"),
        (body(max_tokens=0), "max_tokens"),
        (body(max_completion_tokens=-1), "max_completion_tokens"),
        (body(presence_penalty=3), "presence_penalty"),
        (body(top_logprobs=21, logprobs=True), "top_logprobs"),
        (body(stop=["a", "b", "c", "d", "e"]), "stop"),
        (body(messages=[]), "messages"),
        ({"messages": OK_MESSAGES}, "model"),
        (body(model=""), "model"),
        ({"model": MODEL}, "messages"),
        (body(messages=[{"role": "wizard", "content": "hi"}]), "messages[0]"),
        (body(messages=[{"role": "user"}]), "messages[0].content"),
        (body(messages=[{"role": "tool", "content": "42"}]), "messages[0].tool_call_id"),
        (body(messages=[{"role": "assistant"}]), "messages[0]"),
        (
            body(messages=[{"role": "user", "content": [{"type": "video", "url": "x"}]}]),
            "messages[0].content",
        ),
        (
            body(tools=[{"type": "function", "function": {"name": "bad name!"}}]),
            "tools[0].function.name",
        ),
        (body(tool_choice="auto"), None),
        (body(response_format={"type": "yaml"}), "response_format.type"),
        (body(stream_options={"include_usage": True}), None),
        (body(ponder={"nosuch": {}}), "ponder.nosuch"),
        (body(ponder={"none": {"knob": 1}}), "ponder.none.knob"),
        (body(ponder={"trace": "yes"}), "ponder.trace"),
        # JSON types are strict, as with OpenAI: no string for a number, no number for a boolean
        (body(n="2"), "n"),
        (body(n=2.5), "n"),
        (body(temperature="0.5"), "temperature"),
        (body(stream=1), "stream"),
        (body(logprobs="true"), "logprobs"),
        (body(messages=[{"role": "user", "content": "hi", "name": 7}]), "messages[0].name"),
        (body(ponder={"max_backend_calls": 2.5}), "ponder.max_backend_calls"),
        # a strategy's options are checked even when the model runs another strategy
        (body(ponder={"sc": {"samples": 0}}), "ponder.sc.samples"),
        (body(ponder={"sc": {"samples": "3"}}), "ponder.sc.samples"),
        (body(ponder={"self_consistency": {"temperature": True}}), "ponder.sc.temperature"),
    ],
)
async def test_bad_requests_are_400_with_param(
    client: httpx.AsyncClient, backend: ScriptedBackend, payload: dict[str, Any], param: str | None
) -> None:
    response = await client.post("/v1/chat/completions", json=payload)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]
    assert backend.calls == []


async def test_invalid_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "The request body is not valid JSON."


async def test_every_field_and_role_is_accepted(
    client: httpx.AsyncClient, backend: ScriptedBackend
) -> None:
    payload = body(
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "system", "content": [{"type": "text", "text": "Use English."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is "},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "text", "text": "this?"},
                ],
                "name": "ann",
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "look", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "a cat"}]},
        ],
        n=2,
        temperature=0.2,
        top_p=0.9,
        max_tokens=50,
        stop="END",
        seed=3,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        logit_bias={"1": 2},
        logprobs=True,
        top_logprobs=2,
        tools=[
            {"type": "function", "function": {"name": "look", "parameters": {"type": "object"}}}
        ],
        tool_choice={"type": "function", "function": {"name": "look"}},
        parallel_tool_calls=False,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
        user="u",
        metadata={"k": "v"},
        store=False,
        reasoning_effort="low",
        service_tier="auto",
        some_future_field={"nested": True},
    )
    response = await client.post("/v1/chat/completions", json=payload)
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"]) == 2
    (call,) = backend.calls
    roles = [m.role for m in call.messages]
    assert roles == ["developer", "system", "user", "assistant", "tool"]
    assert call.messages[2].text == "What is this?"
    assert call.messages[2].has_non_text_parts and call.messages[2].name == "ann"
    assert call.messages[4].text == "a cat"
    s = call.sampling
    assert (s.temperature, s.top_p, s.max_tokens, s.stop, s.seed) == (0.2, 0.9, 50, ("END",), 3)
    assert (s.presence_penalty, s.frequency_penalty, s.logprobs, s.top_logprobs) == (
        0.5,
        -0.5,
        True,
        2,
    )
    assert s.tool_choice == {"type": "function", "function": {"name": "look"}}
    assert s.response_format is not None and s.response_format["type"] == "json_schema"
    assert s.extra == {
        "logit_bias": {"1": 2},
        "parallel_tool_calls": False,
        "user": "u",
        "metadata": {"k": "v"},
        "store": False,
        "reasoning_effort": "low",
        "service_tier": "auto",
        "some_future_field": {"nested": True},
    }


async def test_a_whole_number_written_with_a_point_is_an_integer(
    client: httpx.AsyncClient, backend: ScriptedBackend
) -> None:
    """JSON Schema counts 2.0 as an integer, so the integer fields and knobs take it."""
    payload = body(
        model=f"sc-{MODEL}",
        n=2.0,
        max_tokens=5.0,
        top_logprobs=1.0,
        logprobs=True,
        ponder={"max_backend_calls": 4.0, "sc": {"samples": 2.0}},
    )
    response = await client.post("/v1/chat/completions", json=payload)
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"]) == 2
    assert len(backend.calls) == 4  # 2 choices of 2 samples each
    assert {(c.sampling.max_tokens, c.sampling.top_logprobs) for c in backend.calls} == {(5, 1)}


async def test_unknown_route_and_method_are_openai_shaped(client: httpx.AsyncClient) -> None:
    missing = await client.post("/v1/completions", json={"model": "m", "prompt": "hi"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    message = missing.json()["error"]["message"]
    assert message.startswith("Ponder has no endpoint POST /v1/completions: it serves POST")
    assert "/v1/chat/completions" in message
    wrong = await client.get("/v1/chat/completions")
    assert wrong.status_code == 405 and wrong.json()["error"]["type"] == "invalid_request_error"
