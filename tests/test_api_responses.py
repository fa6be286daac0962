"""The official `openai` client's `responses` against a running Ponder server (ScriptedBackend
behind it): answers, streams, stored responses and their continuation, function calls, the
strategies' reasoning, tenants, background runs and errors."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from openai.types.responses import Response
from sqlalchemy.exc import OperationalError

from ponder.config import Settings
from ponder.errors import BackendTimeout
from ponder.proxy import create_app
from ponder.spl_store import ResponseRecord
from ponder.testing import Call, ScriptedBackend, running_server
from ponder.tokens import count_prompt_tokens, count_tokens
from ponder.types import Completion, Message, ToolCall
from tests.conftest import MODEL, scripted

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": False,
}
SC_REASONING = "".join(f"Sample {i}: 2\n" for i in range(1, 6)) + "Vote: 2 (5 of 5)\n"
"""What `sc` (5 samples) says while it works, when every sample answers "... 2+2?"."""


@pytest.fixture
def oai(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server, api_key="unused", max_retries=0)


def prompt_of(call: Call) -> list[tuple[str, str]]:
    return [(m.role, m.text) for m in call.messages]


def events_of(stream: Any) -> list[Any]:
    events = list(stream)
    numbers = [e.sequence_number for e in events]
    assert numbers == list(range(len(events))), "sequence numbers count up from 0"
    return events


def text_events(events: list[Any]) -> list[str]:
    return [
        "response.output_item.added",
        "response.content_part.added",
        *(e.type for e in events if e.type == "response.output_text.delta"),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]


def wait_for(oai: openai.OpenAI, rid: str, statuses: set[str], within_s: float = 10) -> Response:
    deadline = time.monotonic() + within_s
    while True:
        response = oai.responses.retrieve(rid)
        if response.status in statuses:
            return response
        assert time.monotonic() < deadline, f"still {response.status}"
        time.sleep(0.02)


# ---- answers -----------------------------------------------------------------------------


def test_plain_response(oai: openai.OpenAI, backend: ScriptedBackend) -> None:
    raw = oai.responses.with_raw_response.create(
        model=MODEL,
        input="What is 2+2?",
        instructions="Be brief.",
        temperature=0.3,
        max_output_tokens=20,
        metadata={"case": "plain"},
    )
    response = raw.parse()
    assert response.output_text == "reply 0: What is 2+2?"
    assert response.id == "resp_" + raw.headers["x-request-id"]
    assert raw.headers["x-ponder-backend-calls"] == "1"
    assert (response.object, response.status, response.model) == ("response", "completed", MODEL)
    assert (response.instructions, response.temperature, response.max_output_tokens) == (
        "Be brief.",
        0.3,
        20,
    )
    assert (response.store, response.background, response.metadata) == (
        True,
        False,
        {"case": "plain"},
    )
    (message,) = response.output
    assert message.type == "message" and message.status == "completed"
    assert [(c.type, c.annotations) for c in message.content] == [("output_text", [])]
    (call,) = backend.calls
    assert prompt_of(call) == [("system", "Be brief."), ("user", "What is 2+2?")]
    assert (call.sampling.temperature, call.sampling.max_tokens, call.n, call.stream) == (
        0.3,
        20,
        1,
        False,
    )
    usage = response.usage
    assert usage is not None
    assert usage.input_tokens == count_prompt_tokens(call.messages)
    assert usage.output_tokens == count_tokens("reply 0: What is 2+2?")
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.output_tokens_details.reasoning_tokens == 0
    assert usage.input_tokens_details.cached_tokens == 0


def test_streamed_response(oai: openai.OpenAI, backend: ScriptedBackend) -> None:
    events = events_of(oai.responses.create(model=MODEL, input="count to three", stream=True))
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        *text_events(events),
        "response.completed",
    ]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1, "the answer arrives token by token"
    assert "".join(deltas) == "reply 0: count to three"
    created, final = events[0].response, events[-1].response
    assert created.status == "in_progress" and created.output == []
    assert final.id == created.id and final.status == "completed"
    assert final.output_text == "reply 0: count to three"
    assert final.usage is not None
    assert final.usage.output_tokens == count_tokens("reply 0: count to three")
    (call,) = backend.calls
    assert call.stream and prompt_of(call) == [("user", "count to three")]


def test_the_stream_helper_assembles_the_response(oai: openai.OpenAI) -> None:
    with oai.responses.stream(model=MODEL, input="hello") as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(texts) == final.output_text == "reply 0: hello"


def test_a_cut_off_answer_is_incomplete() -> None:
    backend_reply = Completion("reply cut", "length")
    app_backend = scripted([backend_reply, backend_reply])
    with running_server(create_app(Settings(), backend=app_backend)) as url:
        oai = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        response = oai.responses.create(model=MODEL, input="go on", max_output_tokens=2)
        assert response.status == "incomplete"
        assert response.incomplete_details is not None
        assert response.incomplete_details.reason == "max_output_tokens"
        assert response.output[0].type == "message" and response.output[0].status == "incomplete"
        events = events_of(oai.responses.create(model=MODEL, input="again", stream=True))
        assert events[-1].type == "response.incomplete"
        assert events[-1].response.output_text == "reply cut"


# ---- stored responses and their continuation ---------------------------------------------


def test_previous_response_id_continues_without_its_instructions(
    oai: openai.OpenAI, backend: ScriptedBackend
) -> None:
    first = oai.responses.create(model=MODEL, input="My name is Ada.", instructions="Be kind.")
    second = oai.responses.create(
        model=MODEL, input="What is my name?", previous_response_id=first.id, instructions="Brief."
    )
    assert second.previous_response_id == first.id
    third = oai.responses.create(model=MODEL, input="Thanks.", previous_response_id=second.id)
    assert [prompt_of(c) for c in backend.calls] == [
        [("system", "Be kind."), ("user", "My name is Ada.")],
        [
            ("system", "Brief."),
            ("user", "My name is Ada."),
            ("assistant", "reply 0: My name is Ada."),
            ("user", "What is my name?"),
        ],
        [
            ("user", "My name is Ada."),
            ("assistant", "reply 0: My name is Ada."),
            ("user", "What is my name?"),
            ("assistant", "reply 0: What is my name?"),
            ("user", "Thanks."),
        ],
    ]
    assert third.output_text == "reply 0: Thanks."


def test_a_stored_response_is_read_and_deleted(oai: openai.OpenAI) -> None:
    created = oai.responses.create(model=MODEL, input="keep me")
    assert oai.responses.retrieve(created.id).to_dict() == created.to_dict()
    streamed = events_of(oai.responses.create(model=MODEL, input="me too", stream=True))[-1]
    assert oai.responses.retrieve(streamed.response.id).to_dict() == streamed.response.to_dict()
    oai.responses.delete(created.id)  # answers {"id", "object": "response", "deleted": true}
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError) as missing:
        oai.responses.create(model=MODEL, input="on", previous_response_id=created.id)
    assert missing.value.body == {
        "message": f"No response with id '{created.id}' is stored.",
        "type": "invalid_request_error",
        "param": "previous_response_id",
        "code": "not_found",
    }


def test_the_delete_answer(server: str, oai: openai.OpenAI) -> None:
    created = oai.responses.create(model=MODEL, input="bye")
    answer = httpx.delete(f"{server}/responses/{created.id}")
    assert answer.json() == {"id": created.id, "object": "response", "deleted": True}


def test_store_false_is_not_kept(oai: openai.OpenAI) -> None:
    response = oai.responses.create(model=MODEL, input="forget me", store=False)
    assert response.store is False and response.output_text == "reply 0: forget me"
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.create(model=MODEL, input="more", previous_response_id=response.id)


def test_an_answer_that_cannot_be_stored_still_goes_out(
    app: FastAPI,
    oai: openai.OpenAI,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(record: ResponseRecord) -> None:
        raise OperationalError("INSERT INTO responses", {}, Exception("disk I/O error"))

    monkeypatch.setattr(app.state.ponder.store, "save_response", broken)
    with caplog.at_level(logging.WARNING, logger="ponder.proxy.responses_api"):
        response = oai.responses.create(model=MODEL, input="precious")
        streamed = events_of(oai.responses.create(model=MODEL, input="also", stream=True))
    assert response.output_text == "reply 0: precious" and response.store is False
    assert streamed[-1].type == "response.completed" and streamed[-1].response.store is False
    assert [r.getMessage() for r in caplog.records] == [
        f"response {r.id} answered but not stored: the database failed (OperationalError)"
        for r in (response, streamed[-1].response)
    ]
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(response.id)


def test_a_response_is_seen_by_its_tenant_only() -> None:
    backend = scripted(lambda call, i: f"reply {i}: {call.prompt}")
    app = create_app(Settings(api_keys="team-a:key-a,team-b:key-b"), backend=backend)
    with running_server(app) as url:
        a = openai.OpenAI(base_url=url, api_key="key-a", max_retries=0)
        b = openai.OpenAI(base_url=url, api_key="key-b", max_retries=0)
        mine = a.responses.create(model=MODEL, input="secret")
        with pytest.raises(openai.NotFoundError):
            b.responses.retrieve(mine.id)
        with pytest.raises(openai.NotFoundError):
            b.responses.create(model=MODEL, input="tell", previous_response_id=mine.id)
        with pytest.raises(openai.NotFoundError):
            b.responses.delete(mine.id)
        assert a.responses.retrieve(mine.id).output_text == "reply 0: secret"
        record = app.state.ponder.store.get_response("team-a", mine.id)
        assert record is not None and record.tenant == "team-a"
        assert app.state.ponder.store.get_response("team-b", mine.id) is None


# ---- function calls ----------------------------------------------------------------------


def weather_backend() -> ScriptedBackend:
    """Asks for the weather in Paris, then answers with the tool's result."""

    def reply(call: Call, index: int) -> Completion | str:
        if call.messages[-1].role == "tool":
            return f"It is {call.messages[-1].text} in Paris."
        return Completion(
            None, "tool_calls", (ToolCall("call_1", "get_weather", '{"city":"Paris"}'),)
        )

    return scripted(reply)


@pytest.mark.parametrize("stream", [False, True])
def test_a_function_call_round_trip(stream: bool) -> None:
    backend = weather_backend()
    with running_server(create_app(Settings(), backend=backend)) as url:
        oai = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        fields: dict[str, Any] = {"model": MODEL, "input": "Weather in Paris?", "tools": [WEATHER]}
        if stream:
            events = events_of(oai.responses.create(**fields, stream=True))
            assert [e.type for e in events] == [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
            asked = events[-1].response
        else:
            asked = oai.responses.create(**fields)
        (item,) = asked.output
        assert item.type == "function_call" and item.status == "completed"
        assert (item.call_id, item.name, item.arguments) == (
            "call_1",
            "get_weather",
            '{"city":"Paris"}',
        )
        assert asked.output_text == "" and asked.tools[0].name == "get_weather"
        answered = oai.responses.create(
            model=MODEL,
            previous_response_id=asked.id,
            input=[{"type": "function_call_output", "call_id": "call_1", "output": "sunny"}],
            tools=[WEATHER],
        )
        assert answered.output_text == "It is sunny in Paris."
    first, second = backend.calls
    assert first.sampling.tools == (
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": WEATHER["parameters"],
                "strict": False,
            },
        },
    )
    assert list(second.messages) == [
        Message("user", "Weather in Paris?"),
        Message(
            "assistant", None, tool_calls=(ToolCall("call_1", "get_weather", '{"city":"Paris"}'),)
        ),
        Message("tool", "sunny", tool_call_id="call_1"),
    ]


# ---- the strategies' reasoning -----------------------------------------------------------


def test_a_strategy_streams_its_reasoning_before_the_answer(
    oai: openai.OpenAI, backend: ScriptedBackend
) -> None:
    events = events_of(oai.responses.create(model=f"sc-{MODEL}", input="What is 2+2?", stream=True))
    summary = [e.delta for e in events if e.type == "response.reasoning_summary_text.delta"]
    assert "".join(summary) == SC_REASONING
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        *["response.reasoning_summary_text.delta"] * len(summary),
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        *text_events(events),
        "response.completed",
    ]
    # sc returns the winning sample whole: its text is written out once, at the end
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == [
        "reply 0: What is 2+2?"
    ]
    final = events[-1].response
    reasoning, message = final.output
    assert reasoning.type == "reasoning" and reasoning.summary[0].text == SC_REASONING
    assert message.type == "message" and final.output_text == "reply 0: What is 2+2?"
    assert len(backend.calls) == 5 and all(c.prompt == "What is 2+2?" for c in backend.calls)
    usage = final.usage
    assert usage is not None
    assert usage.output_tokens == 5 * count_tokens("reply 0: What is 2+2?")
    assert usage.output_tokens_details.reasoning_tokens == 4 * count_tokens("reply 0: What is 2+2?")


def test_a_strategy_answers_with_a_reasoning_item(
    oai: openai.OpenAI, backend: ScriptedBackend
) -> None:
    response = oai.responses.create(model=f"sc-{MODEL}", input="What is 2+2?")
    reasoning, message = response.output
    assert reasoning.type == "reasoning"
    assert [(s.type, s.text) for s in reasoning.summary] == [("summary_text", SC_REASONING)]
    assert message.type == "message" and response.output_text == "reply 0: What is 2+2?"
    assert len(backend.calls) == 5
    assert response.usage is not None and response.usage.output_tokens_details.reasoning_tokens > 0
    quiet = oai.responses.create(
        model=f"sc-{MODEL}", input="What is 2+2?", extra_body={"ponder": {"reasoning": False}}
    )
    assert [item.type for item in quiet.output] == ["message"]


def test_side_by_side_strategies_answer_with_one_message_each(oai: openai.OpenAI) -> None:
    response = oai.responses.create(model=f"none|re2-{MODEL}", input="hi")
    assert [item.type for item in response.output] == ["message", "message"]
    events = events_of(oai.responses.create(model=f"none|re2-{MODEL}", input="hi", stream=True))
    final = events[-1].response
    assert [item.type for item in final.output] == ["message", "message"]
    assert final.output_text == response.output_text


# ---- background responses ----------------------------------------------------------------


def test_a_background_response_is_polled_until_done(
    oai: openai.OpenAI, backend: ScriptedBackend
) -> None:
    queued = oai.responses.create(model=MODEL, input="later", background=True)
    assert queued.status == "queued" and queued.background is True and queued.output == []
    done = wait_for(oai, queued.id, {"completed"})
    assert done.output_text == "reply 0: later"
    assert done.usage is not None and done.usage.output_tokens == count_tokens("reply 0: later")
    assert [prompt_of(c) for c in backend.calls] == [[("user", "later")]]
    assert oai.responses.cancel(done.id).status == "completed"  # too late: as it is


def test_a_background_response_is_cancelled(oai: openai.OpenAI, backend: ScriptedBackend) -> None:
    backend.hold()
    queued = oai.responses.create(model=MODEL, input="slow", background=True)
    wait_for(oai, queued.id, {"in_progress"})
    deadline = time.monotonic() + 5
    while backend.in_flight < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    cancelled = oai.responses.cancel(queued.id)
    assert cancelled.status == "cancelled" and cancelled.id == queued.id
    assert backend.in_flight == 0 and backend.cancelled == 1
    assert oai.responses.retrieve(queued.id).status == "cancelled"
    assert oai.responses.cancel(queued.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        oai.responses.create(model=MODEL, input="on", previous_response_id=queued.id)


def test_only_background_responses_can_be_cancelled(oai: openai.OpenAI) -> None:
    done = oai.responses.create(model=MODEL, input="now")
    with pytest.raises(openai.BadRequestError) as refused:
        oai.responses.cancel(done.id)
    assert "Only background responses" in refused.value.message
    with pytest.raises(openai.NotFoundError):
        oai.responses.cancel("resp_nosuch")


def test_a_failed_background_response_is_stored_failed() -> None:
    backend = scripted([BackendTimeout("too slow")])
    with running_server(create_app(Settings(), backend=backend)) as url:
        oai = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        queued = oai.responses.create(model=MODEL, input="x", background=True)
        failed = wait_for(oai, queued.id, {"failed"})
    assert failed.error is not None
    assert (failed.error.code, failed.error.message) == ("backend_timeout", "too slow")


def test_shutdown_cancels_background_responses() -> None:
    backend = scripted(lambda call, i: "never")
    app = create_app(Settings(), backend=backend)
    backend.hold()
    with running_server(app) as url:
        oai = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        queued = oai.responses.create(model=MODEL, input="x", background=True)
        wait_for(oai, queued.id, {"in_progress"})
    assert backend.cancelled == 1
    record = app.state.ponder.store.get_response("default", queued.id)
    assert record is not None and record.status == "cancelled"
    assert record.body["status"] == "cancelled"


# ---- errors ------------------------------------------------------------------------------


def test_an_unknown_model_is_a_404(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        oai.responses.create(model="nosuch", input="hi")
    assert missing.value.body is not None
    assert (missing.value.code, missing.value.param) == ("model_not_found", "model")


def test_bad_input_is_a_400_in_the_openai_shape(server: str, oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        oai.responses.create(model=MODEL, input="hi", tools=[{"type": "web_search"}])
    assert "'web_search'" in refused.value.message and refused.value.param == "tools"
    with pytest.raises(openai.BadRequestError) as refused:
        oai.responses.create(model=MODEL, input="hi", background=True, store=False)
    assert "background requires store" in refused.value.message
    answer = httpx.post(f"{server}/responses", json={"model": MODEL, "input": [{"role": "x"}]})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "input[0].role")
    # a field named like a union's tag ("text") is still named
    body = {"model": MODEL, "input": "hi", "text": {"format": {"type": "yaml"}}}
    answer = httpx.post(f"{server}/responses", json=body)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "text.format"


def test_a_failure_before_the_stream_starts_is_an_http_error() -> None:
    backend = scripted([BackendTimeout("too slow")])
    with running_server(create_app(Settings(), backend=backend)) as url:
        oai = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        with pytest.raises(openai.APIStatusError) as failed:
            list(oai.responses.create(model=MODEL, input="x", stream=True))
    assert failed.value.status_code == 504


def test_a_failure_after_the_stream_starts_is_an_error_event() -> None:
    backend = scripted(lambda call, i: BackendTimeout("too slow"))
    app = create_app(Settings(), backend=backend)
    with running_server(app) as url:
        oai = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        events = events_of(oai.responses.create(model=f"sc-{MODEL}", input="x", stream=True))
        metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "error",
        "response.failed",
    ]
    error, failed = events[2], events[3].response
    assert (error.code, error.message, error.param) == ("backend_timeout", "too slow", None)
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.code == "backend_timeout"
    assert 'ponder_errors_total{strategy="sc",type="backend_timeout"} 1.0' in metrics


def test_the_trace_is_given_when_asked(oai: openai.OpenAI) -> None:
    response = oai.responses.create(
        model=f"sc-{MODEL}", input="What is 2+2?", extra_body={"ponder": {"trace": True}}
    )
    (vote,) = [s for s in response.to_dict()["ponder"]["trace"] if s["step"] == "vote"]
    assert (vote["winner"], vote["samples"]) == ("2", 5)


def test_a_wrong_method_names_the_allowed_ones(server: str) -> None:
    answer = httpx.put(f"{server}/responses/resp_1")
    assert answer.status_code == 405 and answer.headers["allow"] == "DELETE, GET"
    assert httpx.get(f"{server}/responses").headers["allow"] == "POST"


def test_every_event_is_named_and_parses_as_json(server: str) -> None:
    """On the wire: `event: <type>` then `data: <json>` whose type is the same."""
    with httpx.stream(
        "POST", f"{server}/responses", json={"model": MODEL, "input": "hi", "stream": True}
    ) as answer:
        raw = answer.read().decode()
    blocks = [b for b in raw.split("\n\n") if b]
    for block in blocks:
        head, data = block.split("\n")
        assert head.startswith("event: ") and data.startswith("data: ")
        assert json.loads(data[6:])["type"] == head[7:]
