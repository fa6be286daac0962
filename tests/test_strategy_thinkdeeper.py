"""`thinkdeeper` (budget forcing): the model thinks between <think> and </think>; an early end
is replaced with "Wait" and the thinking goes on from there; at the cap the thinking is cut,
closed, and the answer written after it. Every call continues the answer written so far."""

from __future__ import annotations

import pytest

from ponder.backends.base import Capabilities
from ponder.strategies.common import with_system
from ponder.strategies.thinkdeeper import INSTRUCTIONS, _safe
from ponder.testing import Call
from ponder.tokens import count_tokens
from ponder.types import Completion, Message
from tests.conftest import (
    MODEL,
    assert_error,
    chat,
    conversation,
    scripted,
    streamed_text,
    trace_steps,
    usage_for,
)

THINK = f"thinkdeeper-{MODEL}"
CAN = Capabilities(continuation=True)
MESSAGES = conversation("Be brief.", "What is 2 + 2?")
CHAT = [Message("system", "Be brief."), Message("user", "What is 2 + 2?")]

START = "<think>\n"
THOUGHT_1 = "I add 2 and 2 to get 4."
THOUGHT_2 = ", let me check: 2 + 2 = 4 indeed."
ANSWER = "The answer is 4."
FORCED = START + THOUGHT_1 + "\nWait"
CLOSED = FORCED + THOUGHT_2 + "\n</think>\n\n"


def forced_once(call: Call, index: int) -> str:
    """The model closes its thinking after each thought."""
    return {START: THOUGHT_1, FORCED: THOUGHT_2, CLOSED: ANSWER}[call.prefix or ""]


def options(**knobs: object) -> dict[str, object]:
    return {"thinkdeeper": knobs, "trace": True}


async def test_an_early_end_of_thinking_becomes_wait_and_the_thinking_goes_on() -> None:
    t1, t2 = count_tokens(THOUGHT_1), count_tokens(THOUGHT_2)
    backend = scripted(forced_once, capabilities=CAN)
    response = await chat(
        backend,
        THINK,
        messages=MESSAGES,
        temperature=0.6,
        max_tokens=40,
        ponder=options(min_thinking_tokens=t1 + 1, max_thinking_tokens=500),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    message = body["choices"][0]["message"]
    assert message["content"] == ANSWER
    assert message["reasoning_content"] == THOUGHT_1 + "\nWait" + THOUGHT_2
    assert response.headers["x-ponder-backend-calls"] == "3"

    assert [c.prefix for c in backend.calls] == [START, FORCED, CLOSED]
    prompt = tuple(with_system(CHAT, INSTRUCTIONS))
    assert all(c.conversation == prompt for c in backend.calls)
    thinking, answer = backend.calls[:2], backend.calls[2]
    assert [(c.sampling.max_tokens, c.sampling.stop) for c in thinking] == [
        (500, ("</think>",)),
        (500 - t1, ("</think>",)),
    ]
    assert {c.sampling.temperature for c in backend.calls} == {0.6}
    assert (answer.sampling.max_tokens, answer.sampling.stop) == (40, ())
    # the thinking is reasoning; the answer's own tokens are the answer call's
    assert body["usage"] == usage_for(backend, [THOUGHT_1, THOUGHT_2, ANSWER])

    assert [s["closed"] for s in trace_steps(body, "thinking")] == [True, True]
    assert [s["at_tokens"] for s in trace_steps(body, "wait")] == [t1]
    (thought,) = trace_steps(body, "thought")
    assert (thought["tokens"], thought["waits"], thought["end"]) == (t1 + t2, 1, "closed")


async def test_a_minimum_above_the_cap_forces_thinking_up_to_the_cap_only() -> None:
    t1, t2 = count_tokens(THOUGHT_1), count_tokens(THOUGHT_2)
    backend = scripted(forced_once, capabilities=CAN)
    response = await chat(
        backend,
        THINK,
        messages=MESSAGES,
        ponder=options(min_thinking_tokens=10_000, max_thinking_tokens=t1 + t2),
    )
    body = response.json()
    assert body["choices"][0]["message"]["content"] == ANSWER
    assert [c.prefix for c in backend.calls] == [START, FORCED, CLOSED]  # no "Wait" at the cap
    (thought,) = trace_steps(body, "thought")
    assert (thought["tokens"], thought["waits"], thought["end"]) == (t1 + t2, 1, "closed")


async def test_waits_stop_at_max_waits() -> None:
    def hesitant(call: Call, index: int) -> str:
        prefix = call.prefix or ""
        if prefix.endswith("</think>\n\n"):
            return ANSWER
        return "Hmm." if prefix == START else " hmm."

    backend = scripted(hesitant, capabilities=CAN)
    response = await chat(
        backend,
        THINK,
        messages=MESSAGES,
        ponder=options(min_thinking_tokens=1000, max_thinking_tokens=2000, max_waits=2),
    )
    body = response.json()
    assert body["choices"][0]["message"]["content"] == ANSWER
    assert [c.prefix for c in backend.calls] == [
        START,
        START + "Hmm.\nWait",
        START + "Hmm.\nWait hmm.\nWait",
        START + "Hmm.\nWait hmm.\nWait hmm.\n</think>\n\n",
    ]
    (thought,) = trace_steps(body, "thought")
    assert (thought["waits"], thought["end"]) == (2, "closed")


async def test_thinking_long_enough_is_left_alone() -> None:
    backend = scripted([THOUGHT_1, ANSWER], capabilities=CAN)
    response = await chat(backend, THINK, messages=MESSAGES, ponder=options(min_thinking_tokens=0))
    assert response.json()["choices"][0]["message"]["content"] == ANSWER
    assert [c.prefix for c in backend.calls] == [START, START + THOUGHT_1 + "\n</think>\n\n"]


async def test_at_the_cap_the_thinking_is_cut_closed_and_answered_after() -> None:
    long = "Step one: 2. Step two: 2 more. Step three: count them all again"
    cap = count_tokens(long)
    backend = scripted([Completion(long, finish_reason="length"), ANSWER], capabilities=CAN)
    response = await chat(
        backend,
        THINK,
        messages=MESSAGES,
        max_tokens=30,
        ponder=options(min_thinking_tokens=cap, max_thinking_tokens=cap),
    )
    body = response.json()
    assert body["choices"][0]["message"]["content"] == ANSWER
    assert body["choices"][0]["message"]["reasoning_content"] == long
    thinking, answer = backend.calls
    assert (thinking.prefix, thinking.sampling.max_tokens) == (START, cap)
    assert answer.prefix == START + long + "\n</think>\n\n"
    assert answer.sampling.max_tokens == 30
    assert body["usage"] == usage_for(backend, [long, ANSWER])
    (thought,) = trace_steps(body, "thought")
    assert (thought["tokens"], thought["waits"], thought["end"]) == (cap, 0, "cut")


async def test_a_stretch_cut_short_of_the_cap_goes_on_to_the_cap() -> None:
    first, second = "Step one: 2.", " Step two: 2 more."
    cap = count_tokens(first) + count_tokens(second)
    backend = scripted(
        [
            Completion(first, finish_reason="length"),
            Completion(second, finish_reason="length"),
            ANSWER,
        ],
        capabilities=CAN,
    )
    await chat(
        backend,
        THINK,
        messages=MESSAGES,
        ponder=options(min_thinking_tokens=0, max_thinking_tokens=cap),
    )
    assert [(c.prefix, c.sampling.max_tokens) for c in backend.calls] == [
        (START, cap),
        (START + first, cap - count_tokens(first)),
        (START + first + second + "\n</think>\n\n", None),
    ]


async def test_a_closing_tag_in_the_text_ends_the_thinking_there() -> None:
    backend = scripted(["I think 4.</think>The answer is 4.", ANSWER], capabilities=CAN)
    response = await chat(backend, THINK, messages=MESSAGES, ponder=options(min_thinking_tokens=0))
    assert response.json()["choices"][0]["message"]["reasoning_content"] == "I think 4."
    assert backend.calls[1].prefix == START + "I think 4.\n</think>\n\n"


async def test_streams_the_thinking_as_reasoning_and_the_answer_as_content() -> None:
    t1 = count_tokens(THOUGHT_1)
    backend = scripted(forced_once, capabilities=CAN)
    response = await chat(
        backend,
        THINK,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        ponder=options(min_thinking_tokens=t1 + 1),
    )
    assert response.status_code == 200
    assert streamed_text(response.text) == ANSWER
    assert streamed_text(response.text, "reasoning_content") == THOUGHT_1 + "\nWait" + THOUGHT_2
    assert [c.stream for c in backend.calls] == [True, True, True]
    assert [c.prefix for c in backend.calls] == [START, FORCED, CLOSED]


async def test_a_streamed_closing_tag_is_never_shown() -> None:
    backend = scripted(["Fine.</think> extra", ANSWER], capabilities=CAN)
    response = await chat(
        backend, THINK, messages=MESSAGES, stream=True, ponder=options(min_thinking_tokens=0)
    )
    assert streamed_text(response.text, "reasoning_content") == "Fine."
    assert streamed_text(response.text) == ANSWER


def test_text_that_may_begin_the_closing_tag_is_held_back() -> None:
    assert _safe("abc") == 3
    assert _safe("abc<") == 3
    assert _safe("abc</thi") == 3
    assert _safe("abc</think>def") == 3
    assert _safe("a<b") == 3


async def test_a_model_that_thinks_natively_is_only_given_the_opening_tag() -> None:
    backend = scripted(
        [THOUGHT_1, ANSWER], capabilities=Capabilities(continuation=True, thinking=True)
    )
    await chat(backend, THINK, messages=MESSAGES, ponder=options(min_thinking_tokens=0))
    assert all(c.conversation == tuple(CHAT) for c in backend.calls)

    for instruct, system in ((True, f"Be brief.\n\n{INSTRUCTIONS}"), (False, "Be brief.")):
        backend = scripted([THOUGHT_1, ANSWER], capabilities=CAN)
        await chat(
            backend,
            THINK,
            messages=MESSAGES,
            ponder=options(min_thinking_tokens=0, instruct=instruct),
        )
        assert {c.conversation[0].text for c in backend.calls} == {system}


async def test_without_continuation_it_is_a_400_before_any_call() -> None:
    backend = scripted([THOUGHT_1], capabilities=Capabilities(logprobs=True))
    response = await chat(backend, THINK, messages=MESSAGES)
    assert_error(response, 400, code="unsupported_parameter")
    assert "continuation" in response.json()["error"]["message"]
    assert backend.calls == []


@pytest.mark.parametrize(
    "knobs",
    [
        {"max_thinking_tokens": 0},
        {"min_thinking_tokens": -1},
        {"wait": ""},
        {"max_waits": 65},
        {"budget": 3},
    ],
)
async def test_bad_options_are_400s(knobs: dict[str, object]) -> None:
    backend = scripted([THOUGHT_1], capabilities=CAN)
    response = await chat(backend, THINK, ponder={"thinkdeeper": knobs})
    assert response.status_code == 400
    assert backend.calls == []
