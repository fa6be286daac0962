"""`react`: Thought/Action/Observation steps with built-in tools and the client's tools, in text
only (no backend call carries `tools`)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.chat import ChatCompletion

from ponder.errors import BackendUnavailable
from ponder.strategies.react import (
    CONTINUE,
    CUT_STEP,
    FORCE_FINAL,
    GOING_ROUND,
    NO_TOOLS,
    OBSERVATION_STOP,
    REACT_INSTRUCTIONS,
    REPEATED_CALL,
    SAME_STEP,
    SHAPE_FINAL,
    SHORT_STEP,
    UNFORMATTED_STEP,
    step_sampling,
)
from ponder.strategies.react_steps import ParsedStep, parse_step
from ponder.strategies.tool_exchange import split_scratchpad, tool_arguments
from ponder.strategies.tools import BUILTIN_TOOLS
from ponder.testing import ScriptedBackend
from ponder.types import Completion, Message, Sampling, ToolCall
from tests.conftest import (
    MODEL,
    assert_error,
    chat,
    finish_reasons,
    scripted,
    sse_events,
    stream_choices,
    streamed_text,
    trace_steps,
    usage_for,
    user,
)

REACT = f"react-{MODEL}"

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": WEATHER_PARAMETERS,
    },
}
CALL_WEATHER = 'Thought: I need the weather.\nAction: get_weather[{"city": "Paris"}]'


def weather_call(call_id: str, arguments: str, content: str | None = None) -> dict[str, Any]:
    """A request's assistant turn that called the client's get_weather tool with `arguments`."""
    return {
        "role": "assistant",
        "content": content,
        "tool_calls": [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": "get_weather", "arguments": arguments},
            }
        ],
    }


def assert_no_tool_traffic(backend: ScriptedBackend) -> None:
    for call in backend.calls:
        assert call.sampling.tools == ()
        assert call.sampling.tool_choice is None
        assert all(m.role != "tool" and not m.tool_calls for m in call.messages)


async def test_calculator_observation_reaches_the_next_step_then_the_final_answer() -> None:
    replies = [
        "Thought: I should compute it.\nAction: calculator[17 * 23 + 4]",
        "Thought: I have the result.\nFinal Answer: 395",
    ]
    backend = scripted(replies)
    messages = [{"role": "system", "content": "Be terse."}, user("What is 17 * 23 + 4?")]
    response = await chat(
        backend,
        REACT,
        messages=messages,
        temperature=0.2,
        stop=["END"],
        max_tokens=50,
        ponder={"trace": True},
    )
    body = response.json()
    assert response.status_code == 200
    assert body["choices"][0]["message"]["content"] == "395"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert len(backend.calls) == 2
    assert response.headers["x-ponder-backend-calls"] == "2"

    first, second = backend.calls
    assert [m.role for m in first.messages] == ["system", "user"]
    system = first.messages[0].text
    assert system.startswith("Be terse.\n\n" + REACT_INSTRUCTIONS)
    assert f"- calculator: {BUILTIN_TOOLS['calculator'].description}" in system
    assert "search_context" not in system  # one short question: nothing to search
    assert first.prompt == "What is 17 * 23 + 4?"

    assert [m.role for m in second.messages] == ["system", "user", "assistant", "user"]
    assert second.messages[:2] == first.messages
    assert (
        second.messages[2].text == "Thought: I should compute it.\nAction: calculator[17 * 23 + 4]"
    )
    assert second.prompt == f"Observation: 395\n\n{CONTINUE}"

    assert_no_tool_traffic(backend)
    for call in backend.calls:
        assert call.sampling.stop == (OBSERVATION_STOP, "END")
        assert call.sampling.max_tokens == 256
        assert call.sampling.temperature == 0.2
        assert not call.stream
    assert body["usage"] == usage_for(backend, replies)

    trace = trace_steps(body, "react_step")
    assert [(s["number"], s.get("action"), s.get("observation")) for s in trace] == [
        (1, "calculator", "395"),
        (2, None, None),
    ]
    assert trace[0]["input"] == "17 * 23 + 4"
    assert trace[0]["thought"] == "I should compute it."
    assert trace[1]["final_answer"] == "395"


async def test_search_context_reads_the_conversation_and_step_tokens_option() -> None:
    replies = [
        "Action: search_context[budget review]",
        "Final Answer: Thursday at 3pm.",
    ]
    backend = scripted(replies)
    messages = [
        user("Notes: the budget review moved to Thursday at 3pm. The cafeteria is closed."),
        {"role": "assistant", "content": "Noted."},
        user("When is the budget review?"),
    ]
    response = await chat(backend, REACT, messages=messages, ponder={"react": {"step_tokens": 64}})
    assert response.json()["choices"][0]["message"]["content"] == "Thursday at 3pm."
    second = backend.calls[1]
    assert second.messages[-2].text == "Action: search_context[budget review]"
    assert second.prompt == (
        "Observation: [user] Notes: the budget review moved to Thursday at 3pm.\n"
        f"[user] When is the budget review?\n\n{CONTINUE}"
    )
    assert [c.sampling.max_tokens for c in backend.calls] == [64, 64]


SEARCH_LINE = f"- search_context: {BUILTIN_TOOLS['search_context'].description}"


@pytest.mark.parametrize(
    ("messages", "options", "offered"),
    [
        ([user("What is 2 + 2?")], {}, False),
        ([user("Summarize this report.\n" + "The plant ran at full load. " * 80)], {}, True),
        ([user("It is 4."), {"role": "assistant", "content": "Noted."}, user("What?")], {}, True),
        ([user("What is 2 + 2?")], {"tools": ["calculator", "search_context"]}, True),
    ],
)
async def test_search_context_is_offered_where_there_is_something_to_search(
    messages: list[dict[str, Any]], options: dict[str, Any], offered: bool
) -> None:
    backend = scripted(["Final Answer: 4"])
    response = await chat(backend, REACT, messages=messages, ponder={"react": options})
    assert response.status_code == 200
    system = backend.calls[0].messages[0].text
    assert (SEARCH_LINE in system) is offered
    assert f"- calculator: {BUILTIN_TOOLS['calculator'].description}" in system


async def test_client_tool_call_then_its_result_continues_the_loop() -> None:
    backend = scripted([CALL_WEATHER])
    question = user("What is the weather in Paris?")
    response = await chat(backend, REACT, messages=[question], tools=[WEATHER_TOOL])
    assert response.status_code == 200
    completion = ChatCompletion.model_validate(response.json())
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    (tool_call,) = choice.message.tool_calls
    assert tool_call.type == "function"
    assert tool_call.function.name == "get_weather"
    assert json.loads(tool_call.function.arguments) == {"city": "Paris"}
    assert tool_call.id.startswith("call_")
    assert response.headers["x-ponder-backend-calls"] == "1"
    (call,) = backend.calls
    assert_no_tool_traffic(backend)
    system = call.messages[0].text
    assert "- get_weather: Current weather of a city." in system
    assert json.dumps(WEATHER_PARAMETERS) in system
    assert response.json()["usage"] == usage_for(backend, [CALL_WEATHER])

    replies = ["Thought: I know it now.\nFinal Answer: 18C and sunny in Paris."]
    backend = scripted(replies)
    followup = [
        {"role": "system", "content": "You are a weather bot."},
        question,
        weather_call(tool_call.id, tool_call.function.arguments),
        {"role": "tool", "tool_call_id": tool_call.id, "content": "18C sunny"},
    ]
    response = await chat(backend, REACT, messages=followup, tools=[WEATHER_TOOL])
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "18C and sunny in Paris."
    assert body["choices"][0]["finish_reason"] == "stop"
    assert "tool_calls" not in body["choices"][0]["message"]
    (call,) = backend.calls
    assert_no_tool_traffic(backend)
    assert [m.role for m in call.messages] == ["system", "user", "assistant", "user"]
    assert call.messages[0].text.startswith("You are a weather bot.\n\n" + REACT_INSTRUCTIONS)
    assert call.messages[1].text == "What is the weather in Paris?"
    assert call.messages[2].text == f"Action: get_weather[{tool_call.function.arguments}]"
    assert call.prompt == f"Observation: 18C sunny\n\n{CONTINUE}"
    assert body["usage"] == usage_for(backend, replies)


async def test_a_repeated_client_tool_call_gets_the_earlier_result() -> None:
    replies = [
        'Action: get_weather[{"city":"Paris"}]',
        "Final Answer: 18C and sunny.",
    ]
    backend = scripted(replies)
    messages = [
        user("Weather in Paris?"),
        weather_call("call_1", '{"city": "Paris"}'),
        {"role": "tool", "tool_call_id": "call_1", "content": "18C sunny"},
    ]
    response = await chat(backend, REACT, messages=messages, tools=[WEATHER_TOOL])
    body = response.json()
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"]["content"] == "18C and sunny."
    assert len(backend.calls) == 2
    assert [(m.role, m.text) for m in backend.calls[1].messages[-4:]] == [
        ("assistant", 'Action: get_weather[{"city": "Paris"}]'),
        ("user", "Observation: 18C sunny"),
        ("assistant", 'Action: get_weather[{"city":"Paris"}]'),
        ("user", f"Observation: {REPEATED_CALL}18C sunny\n\n{CONTINUE}"),
    ]
    assert body["usage"] == usage_for(backend, replies)


async def test_a_repeated_builtin_call_is_not_run_again() -> None:
    replies = [
        "Thought: weekly sheets.\nAction: calculator[2 * 30]",
        "Thought: weekly sheets again.\nAction: calculator[2 * 30]",
        "Thought: a month is four weeks.\nAction: calculator[60 * 4]",
        "Final Answer: 240",
    ]
    backend = scripted(replies)
    response = await chat(
        backend, REACT, messages=[user("2 pads a week, 30 sheets a pad: sheets a month?")]
    )
    assert response.json()["choices"][0]["message"]["content"] == "240"
    assert len(backend.calls) == 4
    observations = [m.text for m in backend.calls[3].messages if m.role == "user"][1:]
    assert observations == [
        "Observation: 60",
        f"Observation: {REPEATED_CALL}60",
        f"Observation: 240\n\n{CONTINUE}",
    ]


async def test_a_built_in_call_made_a_third_time_ends_the_steps() -> None:
    stuck = "Thought: five glasses a week.\nAction: calculator[5]"
    backend = scripted([stuck, stuck, stuck, "The answer is 26."])
    response = await chat(
        backend, REACT, messages=[user("Glasses of water a week?")], ponder={"trace": True}
    )
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "The answer is 26."
    assert len(backend.calls) == 4  # not max_steps (5) and a final call
    assert backend.calls[3].prompt == f"Observation: {REPEATED_CALL}5\n\n{FORCE_FINAL}"
    steps = trace_steps(body, "react_step")
    assert [s.get("repeated", False) for s in steps] == [False, False, True]

    response = await chat(scripted([stuck, stuck, stuck, "26"]), REACT, stream=True)
    assert GOING_ROUND in streamed_text(response.text, "reasoning_content")


async def test_earlier_turn_tool_exchanges_become_assistant_text() -> None:
    backend = scripted(["Final Answer: Yes, take a jacket."])
    call_id = "call_abc"
    messages = [
        user("Weather in Paris?"),
        weather_call(call_id, '{"city": "Paris"}', content="Let me check."),
        {"role": "tool", "tool_call_id": call_id, "content": "12C windy"},
        {"role": "assistant", "content": "It is 12C and windy."},
        user("Do I need a jacket?"),
    ]
    response = await chat(backend, REACT, messages=messages, tools=[WEATHER_TOOL])
    assert response.json()["choices"][0]["message"]["content"] == "Yes, take a jacket."
    (call,) = backend.calls
    assert_no_tool_traffic(backend)
    assert [m.role for m in call.messages] == ["system", "user", "assistant", "user"]
    assert call.messages[2].text == (
        "Let me check.\n"
        'Action: get_weather[{"city": "Paris"}]\n'
        "Observation: 12C windy\n"
        "It is 12C and windy."
    )
    assert call.prompt == "Do I need a jacket?"


async def test_streamed_client_tool_call() -> None:
    backend = scripted([CALL_WEATHER])
    response = await chat(backend, REACT, tools=[WEATHER_TOOL], stream=True)
    assert response.status_code == 200
    deltas = [c["delta"] for c in stream_choices(response.text)]  # ends with [DONE]
    calls = [tc for d in deltas for tc in d.get("tool_calls", [])]
    assert len(calls) == 1
    assert calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert calls[0]["id"].startswith("call_")
    assert finish_reasons(response.text) == ["tool_calls"]
    assert streamed_text(response.text) == ""
    assert streamed_text(response.text, "reasoning_content") == (
        'Thought: I need the weather.\nAction: get_weather[{"city": "Paris"}]\n'
    )
    assert len(backend.calls) == 1


async def test_max_steps_then_one_streamed_call_for_the_answer() -> None:
    replies = [
        "Thought: first part.\nAction: calculator[6 * 7]",
        "Thought: second part.\nAction: calculator[42 / 2]",
        "The answer is 21.",
    ]
    backend = scripted(replies)
    response = await chat(
        backend,
        REACT,
        messages=[user("Half of six sevens?")],
        stream=True,
        stream_options={"include_usage": True},
        stop=["END"],
        max_tokens=40,
        ponder={"react": {"max_steps": 2}},
    )
    assert streamed_text(response.text) == "The answer is 21."
    assert streamed_text(response.text, "reasoning_content") == (
        "Thought: first part.\nAction: calculator[6 * 7]\nObservation: 42\n"
        "Thought: second part.\nAction: calculator[42 / 2]\nObservation: 21\n"
        "No final answer after the last step: asking for it.\n"
    )
    assert len(backend.calls) == 3
    steps, final = backend.calls[:2], backend.calls[2]
    assert [c.stream for c in backend.calls] == [False, False, True]
    assert [(m.role, m.text) for m in final.messages] == [
        ("user", "Half of six sevens?"),
        ("assistant", "Thought: first part.\nAction: calculator[6 * 7]"),
        ("user", "Observation: 42"),
        ("assistant", "Thought: second part.\nAction: calculator[42 / 2]"),
        ("user", f"Observation: 21\n\n{FORCE_FINAL}"),
    ]
    assert (final.sampling.stop, final.sampling.max_tokens) == (("END",), 40)
    assert [c.sampling.max_tokens for c in steps] == [256, 256]
    assert_no_tool_traffic(backend)
    usage = sse_events(response.text)[-1]["usage"]
    assert usage == usage_for(backend, replies)


async def test_final_answer_of_a_step_is_streamed_once_and_reasoning_can_be_off() -> None:
    reply = "Thought: easy.\nFinal Answer: Paris"
    response = await chat(scripted([reply]), REACT, stream=True)
    assert streamed_text(response.text) == "Paris"
    assert streamed_text(response.text, "reasoning_content") == "Thought: easy.\n"

    response = await chat(scripted([reply]), REACT, stream=True, ponder={"reasoning": False})
    assert streamed_text(response.text) == "Paris"
    assert streamed_text(response.text, "reasoning_content") == ""


async def test_response_format_answer_is_rewritten_by_one_call_with_the_clients_sampling() -> None:
    replies = ['Thought: simple.\nFinal Answer: {"capital": "Paris"}', '{"capital": "Paris"}']
    backend = scripted(replies)
    response = await chat(
        backend,
        REACT,
        messages=[user("Capital of France, as JSON?")],
        response_format={"type": "json_object"},
        max_tokens=30,
    )
    body = response.json()
    assert body["choices"][0]["message"]["content"] == '{"capital": "Paris"}'
    assert response.headers["x-ponder-backend-calls"] == "2"
    step, final = backend.calls
    assert step.sampling.response_format is None
    assert (step.sampling.max_tokens, step.sampling.stop) == (256, (OBSERVATION_STOP,))
    assert final.sampling.response_format == {"type": "json_object"}
    assert (final.sampling.max_tokens, final.sampling.stop) == (30, ())
    assert [m.role for m in final.messages] == ["user", "assistant", "user"]
    assert final.messages[1].text == 'Thought: simple.\nFinal Answer: {"capital": "Paris"}'
    assert final.prompt == SHAPE_FINAL
    assert_no_tool_traffic(backend)
    assert body["usage"] == usage_for(backend, replies)


async def test_unknown_tool_gets_an_error_observation_listing_the_tools() -> None:
    replies = ["Action: calculator[1 + 1]", "Final Answer: 2"]
    backend = scripted(replies)
    response = await chat(backend, REACT, ponder={"react": {"tools": ["search_context"]}})
    assert response.json()["choices"][0]["message"]["content"] == "2"
    assert len(backend.calls) == 2
    assert "- calculator:" not in backend.calls[0].messages[0].text
    assert backend.calls[1].messages[-2].text == "Action: calculator[1 + 1]"
    assert backend.calls[1].prompt == (
        "Observation: Error: there is no tool 'calculator'. The tools are: search_context.\n\n"
        + CONTINUE
    )

    backend = scripted(replies)
    response = await chat(backend, REACT, ponder={"react": {"tools": []}})
    assert response.json()["choices"][0]["message"]["content"] == "2"
    assert backend.calls[0].messages[0].text == f"{REACT_INSTRUCTIONS}\n\n{NO_TOOLS}"
    assert backend.calls[1].prompt.startswith(
        "Observation: Error: there is no tool 'calculator'; no tools are available. "
        "Write your Final Answer.\n\n"
    )


async def test_a_step_without_action_or_final_answer_that_states_one_is_the_answer() -> None:
    backend = scripted(["Thought: It is the capital, so the answer is Paris."])
    response = await chat(backend, REACT)
    content = response.json()["choices"][0]["message"]["content"]
    assert content == "It is the capital, so the answer is Paris."
    assert len(backend.calls) == 1

    response = await chat(scripted(["The answer is Paris."]), REACT, stream=True)
    assert streamed_text(response.text) == "The answer is Paris."
    assert streamed_text(response.text, "reasoning_content") == UNFORMATTED_STEP


async def test_a_step_that_stops_short_of_an_answer_goes_on_once() -> None:
    plan = "Thought: Tom pays for 4 washes a month.\nStep 1: Calculate the monthly cost."
    backend = scripted([plan, "Thought: 4 * 15 = 60 a month, 720 a year.\nFinal Answer: 720"])
    response = await chat(backend, REACT, ponder={"trace": True})
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "720"
    assert len(backend.calls) == 2
    assert [(m.role, m.text) for m in backend.calls[1].messages[-2:]] == [
        ("assistant", plan),
        ("user", CONTINUE),
    ]
    first, second = trace_steps(body, "react_step")
    assert first["stated_no_answer"] is True and "final_answer" not in first
    assert second["final_answer"] == "720"

    # a model that answers in plain text is asked once, and its next step is the answer
    backend = scripted(["Paris, of course.", "It is Paris.", "never asked"])
    response = await chat(backend, REACT, stream=True)
    assert len(backend.calls) == 2
    assert streamed_text(response.text) == "It is Paris."
    assert streamed_text(response.text, "reasoning_content") == (
        f"Thought: Paris, of course.\n{SHORT_STEP}{UNFORMATTED_STEP}"
    )


async def test_a_step_cut_off_before_its_action_goes_on_in_the_next_step() -> None:
    cut = Completion("Thought: 6 boxes of 4 pencils is 6 * 4, which", finish_reason="length")
    backend = scripted([cut, "is 24, less 5 given away.\nFinal Answer: 19"])
    response = await chat(backend, REACT, ponder={"trace": True}, stream=False)
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "19"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert len(backend.calls) == 2
    assert [(m.role, m.text) for m in backend.calls[1].messages[-2:]] == [
        ("assistant", "Thought: 6 boxes of 4 pencils is 6 * 4, which"),
        ("user", CONTINUE),
    ]
    first, _ = trace_steps(body, "react_step")
    assert first["cut_off"] is True and "final_answer" not in first

    response = await chat(scripted([cut, "Final Answer: 19"]), REACT, stream=True)
    assert streamed_text(response.text, "reasoning_content").startswith(
        f"Thought: 6 boxes of 4 pencils is 6 * 4, which\n{CUT_STEP}"
    )


async def test_an_unfinished_step_repeated_word_for_word_ends_the_steps() -> None:
    first = Completion("Thought: 20 feet take 16 seconds, so", finish_reason="length")
    again = Completion("Thought: 64 seconds is 80 feet, and", finish_reason="length")
    backend = scripted([first, again, again, "16 liters", "never asked"])
    response = await chat(backend, REACT, ponder={"trace": True})
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "16 liters"
    assert len(backend.calls) == 4
    assert [(m.role, m.text) for m in backend.calls[3].messages[-3:]] == [
        ("assistant", "Thought: 20 feet take 16 seconds, so"),
        ("assistant", "Thought: 64 seconds is 80 feet, and"),
        ("user", FORCE_FINAL),
    ]
    steps = trace_steps(body, "react_step")
    assert [s.get("repeated", False) for s in steps] == [False, False, True]

    response = await chat(scripted([first, again, again, "16 liters"]), REACT, stream=True)
    assert SAME_STEP in streamed_text(response.text, "reasoning_content")


async def test_tool_choice_none_hides_the_client_tools() -> None:
    backend = scripted(["Action: get_weather[Paris]", "Final Answer: no idea"])
    response = await chat(backend, REACT, tools=[WEATHER_TOOL], tool_choice="none")
    assert response.json()["choices"][0]["message"]["content"] == "no idea"
    assert "get_weather" not in backend.calls[0].messages[0].text
    assert backend.calls[1].prompt.startswith("Observation: Error: there is no tool 'get_weather'")


async def test_failure_mid_loop_is_an_openai_shaped_503() -> None:
    backend = scripted(["Action: calculator[2 + 2]", BackendUnavailable("down")])
    response = await chat(backend, REACT)
    assert_error(response, 503, message="down", code="backend_unavailable")
    assert len(backend.calls) == 2


async def test_budget_below_the_steps_needed() -> None:
    backend = scripted(["Action: calculator[2 + 2]", "Final Answer: 4"])
    response = await chat(backend, REACT, ponder={"max_backend_calls": 1})
    assert_error(response, 400, code="budget_exceeded")
    assert len(backend.calls) == 1


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"max_steps": 0}, "ponder.react.max_steps"),
        ({"max_steps": 21}, "ponder.react.max_steps"),
        ({"step_tokens": 0}, "ponder.react.step_tokens"),
        ({"tools": ["shell"]}, "ponder.react.tools"),
        ({"tools": "calculator"}, "ponder.react.tools"),
        ({"steps": 3}, "ponder.react.steps"),
    ],
)
async def test_bad_option_is_a_400_naming_the_field(options: dict[str, Any], param: str) -> None:
    backend = scripted()
    response = await chat(backend, REACT, ponder={"react": options})
    assert_error(response, 400, param=param)
    assert backend.calls == []


@pytest.mark.parametrize(
    ("text", "step"),
    [
        (
            'Thought: look it up\nAction: get_weather[{"city": "Rome [IT]"}]\nObservation: x',
            ParsedStep("look it up", "get_weather", '{"city": "Rome [IT]"}'),
        ),
        (
            "Thought: add\nAction: calculator\nAction Input: 2 + 2",
            ParsedStep("add", "calculator", "2 + 2"),
        ),
        (
            "Action: calculator[1 + 1]\nFinal Answer: 2",
            ParsedStep("", "calculator", "1 + 1"),
        ),
        ("thought: done\nfinal answer: 7", ParsedStep("done", final="7")),
        ("Action: calculator[2 * (3 + 4)", ParsedStep("", "calculator", "2 * (3 + 4)")),
        ("Just 7.", ParsedStep("Just 7.")),
        ("Transaction: refund[12]", ParsedStep("Transaction: refund[12]")),
    ],
)
def test_parse_step(text: str, step: ParsedStep) -> None:
    assert parse_step(text) == step


def test_tool_arguments_are_always_a_json_object() -> None:
    assert json.loads(tool_arguments('{"city": "Paris"}')) == {"city": "Paris"}
    assert json.loads(tool_arguments("Paris")) == {"input": "Paris"}
    assert json.loads(tool_arguments('["Paris"]')) == {"input": '["Paris"]'}


def test_parallel_tool_calls_are_paired_with_their_results() -> None:
    calls = (
        ToolCall("call_a", "get_weather", '{"city": "Paris"}'),
        ToolCall("call_b", "get_weather", '{"city": "Rome"}'),
    )
    messages = [
        Message("system", "Be brief."),
        Message("user", "Paris or Rome, which is warmer?"),
        Message("assistant", None, tool_calls=calls),
        Message("tool", "25C", tool_call_id="call_b"),
        Message("tool", "18C", tool_call_id="call_a"),
    ]
    conversation, scratchpad = split_scratchpad(messages)
    assert conversation == messages[:2]
    assert [(m.role, m.text) for m in scratchpad] == [
        ("assistant", 'Action: get_weather[{"city": "Paris"}]'),
        ("user", "Observation: 18C"),
        ("assistant", 'Action: get_weather[{"city": "Rome"}]'),
        ("user", "Observation: 25C"),
    ]
    assert split_scratchpad(messages[:2]) == (messages[:2], [])


def test_step_sampling_keeps_at_most_four_stop_sequences_with_ours_first() -> None:
    stops = step_sampling(Sampling(stop=("a", "b", "c", "d")), 64).stop
    assert stops == (OBSERVATION_STOP, "a", "b", "c")
