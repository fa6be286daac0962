"""`leap`: worked examples found, attempted, mistakes turned into principles for the answer."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from ponder.errors import BackendUnavailable
from ponder.strategies.leap import (
    ATTEMPT_PROMPT,
    CONDENSE_PROMPT,
    EXTRACT_PROMPT,
    LESSONS_INTRO,
    PRINCIPLE_PROMPT,
    PRINCIPLES_INTRO,
    Example,
    asked_question,
    grounded,
    parse_examples,
)
from ponder.testing import Call, Reply, ScriptedBackend
from ponder.types import Completion, Message
from tests.conftest import (
    MODEL,
    assert_error,
    chat,
    conversation,
    scripted,
    stream_error,
    streamed_text,
    trace_steps,
    usage_for,
)

LEAP = f"leap-{MODEL}"
SYSTEM = "Solve the arithmetic problems."
Q1, A1 = "What is 12 + 7?", "12 + 7 = 19. The answer is 19."
Q2, A2 = "What is 6 x 7?", "6 x 7 = 42. The answer is 42."
Q3, A3 = "What is 30 / 5?", "30 / 5 = 6. The answer is 6."
REQUEST = "What is 9 x 8 - 5?"
CONVERSATION = conversation(SYSTEM, Q1, A1, Q2, A2, REQUEST)
CLIENT = [(m["role"], m["content"]) for m in CONVERSATION]
LISTED = f"Question: {Q1}\nAnswer: {A1}\n\nQuestion: {Q2}\nAnswer: {A2}"
ATTEMPTS = {
    Q1: "12 plus 7 is 19.\nAnswer: 19",
    Q2: "6 x 7 = 36.\nAnswer: 36",
    Q3: "30 / 5 = 5.\nAnswer: 5",
}
LESSON = "Mistake: 6 x 7 was taken as 36. Principle: check each product against a known fact."
CONDENSED = "1. Verify every multiplication.\n2. Recompute before answering."
ANSWER = "9 x 8 = 72, and 72 - 5 = 67. The answer is 67."


def kind(call: Call) -> str:
    if call.prompt.endswith(EXTRACT_PROMPT):
        return "extract"
    if call.prompt.endswith(ATTEMPT_PROMPT):
        return "attempt"
    if call.prompt.endswith(PRINCIPLE_PROMPT.split("{answer}")[1]):
        return "principle"
    if call.prompt.startswith(LESSONS_INTRO):
        return "condense"
    return "answer"


class Learner:
    """A scripted model for leap: lists `listed`, attempts each question as ATTEMPTS says, and
    learns LESSON from each mistake."""

    def __init__(
        self, *, listed: Reply = LISTED, condensed: Reply = CONDENSED, fail: str | None = None
    ) -> None:
        self.listed = listed
        self.condensed = condensed
        self.fail = fail
        self.replies: list[str] = []

    def __call__(self, call: Call, index: int) -> Reply:
        k = kind(call)
        if k == self.fail:
            return BackendUnavailable("down")
        reply: Reply
        if k == "extract":
            reply = self.listed
        elif k == "attempt":
            question = call.prompt.removesuffix(f"\n\n{ATTEMPT_PROMPT}")
            reply = {q.lower(): a for q, a in ATTEMPTS.items()}[question.lower()]
        elif k == "principle":
            reply = f"{LESSON} ({call.messages[0].text.split('?')[0]}?)"
        elif k == "condense":
            reply = self.condensed
        else:
            reply = ANSWER
        if isinstance(reply, str):
            self.replies.append(reply)
        elif isinstance(reply, Completion):
            self.replies.append(reply.content or "")
        return reply


def calls_of(backend: ScriptedBackend, name: str) -> list[Call]:
    return [c for c in backend.calls if kind(c) == name]


def turns(call: Call) -> list[tuple[str, str]]:
    return [(m.role, m.text) for m in call.messages]


def answer(response: httpx.Response) -> str:
    content: str = response.json()["choices"][0]["message"]["content"]
    return content


def taught(*principles: str) -> str:
    listed = "\n".join(f"{i}. {p}" for i, p in enumerate(principles, start=1))
    return f"{SYSTEM}\n\n{PRINCIPLES_INTRO}\n{listed}"


async def test_principles_from_a_mistake_go_into_the_system_prompt() -> None:
    learner = Learner()
    backend = scripted(learner)
    response = await chat(backend, LEAP, messages=CONVERSATION, ponder={"trace": True})
    assert response.status_code == 200
    body = response.json()
    assert answer(response) == ANSWER
    assert [kind(c) for c in backend.calls] == [
        "extract",
        "attempt",
        "attempt",
        "principle",
        "condense",
        "answer",
    ]
    assert response.headers["x-ponder-backend-calls"] == "6"
    assert body["usage"] == usage_for(backend, learner.replies)
    (examples,) = trace_steps(body, "examples")
    assert examples["examples"] == [{"question": Q1, "answer": A1}, {"question": Q2, "answer": A2}]
    assert trace_steps(body, "attempts")[0]["verdicts"] == ["right", "wrong"]
    assert trace_steps(body, "principles")[0]["principles"] == [
        "Verify every multiplication.",
        "Recompute before answering.",
    ]


async def test_the_prompts_of_every_call() -> None:
    backend = scripted(Learner())
    await chat(backend, LEAP, messages=CONVERSATION, stop=["END"], max_tokens=90, seed=4)
    (extract,) = calls_of(backend, "extract")
    assert turns(extract) == [*CLIENT[:-1], ("user", f"{REQUEST}\n\n{EXTRACT_PROMPT}")]
    assert [turns(c) for c in calls_of(backend, "attempt")] == [
        [("user", f"{Q1}\n\n{ATTEMPT_PROMPT}")],
        [("user", f"{Q2}\n\n{ATTEMPT_PROMPT}")],
    ]
    (principle,) = calls_of(backend, "principle")
    assert turns(principle) == [
        ("user", f"{Q2}\n\n{ATTEMPT_PROMPT}"),
        ("assistant", ATTEMPTS[Q2]),
        ("user", PRINCIPLE_PROMPT.format(answer=A2)),
    ]
    (condense,) = calls_of(backend, "condense")
    assert turns(condense) == [
        (
            "user",
            f"{LESSONS_INTRO}\n\n1. {LESSON} (What is 6 x 7?)\n\n{CONDENSE_PROMPT.format(count=5)}",
        )
    ]
    (final,) = calls_of(backend, "answer")
    assert turns(final) == [
        ("system", taught("Verify every multiplication.", "Recompute before answering.")),
        *CLIENT[1:],
    ]
    samplings = {
        name: [
            (c.sampling.temperature, c.sampling.max_tokens, c.sampling.stop, c.sampling.seed)
            for c in calls_of(backend, name)
        ]
        for name in ("extract", "attempt", "principle", "condense", "answer")
    }
    assert samplings == {
        "extract": [(0.0, 1024, (), 4)],
        "attempt": [(0.7, 512, (), 4)] * 2,
        "principle": [(0.0, 256, (), 4)],
        "condense": [(0.0, 512, (), 4)],
        "answer": [(None, 90, ("END",), 4)],
    }


async def test_without_worked_examples_it_is_a_plain_answer() -> None:
    for listed in ("NONE", "I see no examples here.", "", "[]"):
        learner = Learner(listed=listed)
        backend = scripted(learner)
        messages = conversation(SYSTEM, REQUEST)
        response = await chat(backend, LEAP, messages=messages, stream=True)
        assert streamed_text(response.text) == ANSWER
        assert streamed_text(response.text, "reasoning_content") == (
            "No worked examples found: answering directly\n"
        )
        assert [kind(c) for c in backend.calls] == ["extract", "answer"]
        (final,) = calls_of(backend, "answer")
        assert turns(final) == [(m["role"], m["content"]) for m in messages]
        assert final.stream


async def test_without_a_mistake_there_is_nothing_to_learn() -> None:
    listed = f"Question: {Q1}\nAnswer: {A1}"
    backend = scripted(Learner(listed=listed))
    response = await chat(backend, LEAP, messages=CONVERSATION, stream=True)
    assert streamed_text(response.text) == ANSWER
    assert streamed_text(response.text, "reasoning_content") == (
        "Worked examples found: 1\nExample 1: right (19; given 19)\n"
        "No mistakes to learn from: answering directly\n"
    )
    assert [kind(c) for c in backend.calls] == ["extract", "attempt", "answer"]
    assert turns(calls_of(backend, "answer")[0]) == CLIENT
    backend = scripted(Learner(listed=listed))
    response = await chat(backend, LEAP, messages=CONVERSATION)
    assert answer(response) == ANSWER
    assert response.headers["x-ponder-backend-calls"] == "3"


async def test_an_unfinished_attempt_is_neither_right_nor_wrong() -> None:
    def reply(call: Call, index: int) -> Reply:
        if kind(call) == "extract":
            return LISTED
        if kind(call) == "attempt":
            return Completion("6 x 7 = 4", finish_reason="length")
        return ANSWER

    backend = scripted(reply)
    response = await chat(backend, LEAP, messages=CONVERSATION, ponder={"trace": True})
    assert [kind(c) for c in backend.calls] == ["extract", "attempt", "attempt", "answer"]
    verdicts = trace_steps(response.json(), "attempts")[0]["verdicts"]
    assert verdicts == ["unfinished", "unfinished"]


async def test_examples_in_the_system_prompt_as_json_and_invented_ones_dropped() -> None:
    system = f"Examples:\nQ: {Q2}\nA: {A2}\nQ: {Q3}\nA: {A3}"
    messages = [{"role": "system", "content": system}, {"role": "user", "content": REQUEST}]
    listed = json.dumps(
        [
            {"question": Q2, "answer": A2},
            {"question": "What is 2 + 2?", "answer": "4"},  # not in the conversation
            {"question": REQUEST, "answer": "67"},  # the request itself, answered
            {"question": Q3.upper(), "answer": A3},  # case and spacing aside, it is there
        ]
    )
    backend = scripted(Learner(listed=f"```json\n{listed}\n```"))
    response = await chat(backend, LEAP, messages=messages, ponder={"trace": True})
    assert answer(response) == ANSWER
    (examples,) = trace_steps(response.json(), "examples")
    assert [e["question"] for e in examples["examples"]] == [Q2, Q3.upper()]
    assert examples["dropped"] == 2
    assert [kind(c) for c in backend.calls] == [
        "extract",
        *["attempt"] * 2,
        *["principle"] * 2,
        "condense",
        "answer",
    ]
    (final,) = calls_of(backend, "answer")
    assert final.messages[0].text.startswith(f"{system}\n\n{PRINCIPLES_INTRO}\n1. ")


async def test_an_unparseable_condensation_keeps_the_lessons_and_options_cap_them() -> None:
    listed = f"{LISTED}\n\nQuestion: {Q3}\nAnswer: {A3}"
    messages = conversation(SYSTEM, Q1, A1, Q2, A2, Q3, A3, REQUEST)
    backend = scripted(Learner(listed=listed, condensed=""))
    response = await chat(backend, LEAP, messages=messages, ponder={"leap": {"max_principles": 1}})
    assert answer(response) == ANSWER
    assert len(calls_of(backend, "principle")) == 2
    (final,) = calls_of(backend, "answer")
    assert final.messages[0].text == taught(f"{LESSON} (What is 6 x 7?)")
    backend = scripted(Learner(listed=listed))
    await chat(backend, LEAP, messages=messages, ponder={"leap": {"max_examples": 1}})
    assert [kind(c) for c in backend.calls] == ["extract", "attempt", "answer"]


async def test_attempts_and_lessons_each_run_at_once() -> None:
    listed = f"Question: {Q2}\nAnswer: {A2}\n\nQuestion: {Q3}\nAnswer: {A3}"
    messages = conversation(SYSTEM, Q2, A2, Q3, A3, REQUEST)
    backend = scripted(Learner(listed=listed))
    backend.hold()
    request = asyncio.create_task(chat(backend, LEAP, messages=messages))
    made = 0
    stages = (("extract", 1), ("attempt", 2), ("principle", 2), ("condense", 1), ("answer", 1))
    for stage, width in stages:
        made += width
        # wait_for_in_flight would count the last stage's calls, still leaving the gate
        async with asyncio.timeout(5):
            while len(backend.calls) < made or backend.in_flight < width:  # noqa: ASYNC110
                await asyncio.sleep(0)
        assert [kind(c) for c in backend.calls[-width:]] == [stage] * width
        assert (len(backend.calls), backend.in_flight) == (made, width)
        backend.release()
        backend.hold()
    backend.release()
    response = await request
    assert answer(response) == ANSWER
    assert backend.max_in_flight == 2


async def test_streams_the_working_as_reasoning_then_the_answer() -> None:
    learner = Learner()
    backend = scripted(learner)
    response = await chat(
        backend, LEAP, messages=CONVERSATION, stream=True, stream_options={"include_usage": True}
    )
    assert streamed_text(response.text, "reasoning_content") == (
        "Worked examples found: 2\n"
        "Example 1: right (19; given 19)\n"
        "Example 2: wrong (36; given 42)\n"
        f"Mistake: {LESSON} (What is 6 x 7?)\n"
        "Principle 1: Verify every multiplication.\n"
        "Principle 2: Recompute before answering.\n"
    )
    assert streamed_text(response.text) == ANSWER
    assert [c.stream for c in backend.calls] == [False] * 5 + [True]
    response = await chat(
        scripted(Learner()), LEAP, messages=CONVERSATION, stream=True, ponder={"reasoning": False}
    )
    assert streamed_text(response.text, "reasoning_content") == ""
    assert streamed_text(response.text) == ANSWER


@pytest.mark.parametrize("failing", ["extract", "attempt", "principle", "condense", "answer"])
async def test_a_failed_call_is_an_openai_shaped_503(failing: str) -> None:
    backend = scripted(Learner(fail=failing))
    response = await chat(backend, LEAP, messages=CONVERSATION)
    assert_error(
        response, 503, message="down", type="api_error", param=None, code="backend_unavailable"
    )


async def test_a_failed_lesson_in_a_stream_ends_it_with_the_error() -> None:
    backend = scripted(Learner(fail="principle"))
    response = await chat(backend, LEAP, messages=CONVERSATION, stream=True)
    assert response.status_code == 200
    assert "Example 2: wrong" in response.text
    assert stream_error(response.text)["code"] == "backend_unavailable"
    assert not calls_of(backend, "answer")


@pytest.mark.parametrize("limit", [1, 3, 5])
async def test_a_budget_below_what_leap_needs_is_a_400(limit: int) -> None:
    backend = scripted(Learner())
    response = await chat(backend, LEAP, messages=CONVERSATION, ponder={"max_backend_calls": limit})
    assert_error(response, 400, code="budget_exceeded", param="ponder.max_backend_calls")
    assert len(backend.calls) == limit


async def test_a_budget_that_covers_it_is_enough() -> None:
    backend = scripted(Learner())
    response = await chat(backend, LEAP, messages=CONVERSATION, ponder={"max_backend_calls": 6})
    assert answer(response) == ANSWER


async def test_optillm_approach_selects_it() -> None:
    backend = scripted(Learner())
    response = await chat(backend, MODEL, messages=CONVERSATION, optillm_approach="leap")
    assert answer(response) == ANSWER
    assert response.headers["x-ponder-backend-calls"] == "6"


async def test_a_client_temperature_drives_the_attempts() -> None:
    backend = scripted(Learner())
    await chat(backend, LEAP, messages=CONVERSATION, temperature=1.3)
    assert {c.sampling.temperature for c in calls_of(backend, "attempt")} == {1.3}
    assert calls_of(backend, "answer")[0].sampling.temperature == 1.3


async def test_request_n_runs_independently() -> None:
    backend = scripted(Learner())
    response = await chat(backend, LEAP, messages=CONVERSATION, n=2)
    assert [c["message"]["content"] for c in response.json()["choices"]] == [ANSWER] * 2
    assert len(backend.calls) == 12


def test_parsing_the_examples() -> None:
    blocks = (
        "**Question:** What is 1 + 1?\n**Answer:** 2\n"
        "Question: Name a colour.\nAnswer: Red,\nor blue."
    )
    assert parse_examples(blocks) == [
        Example("What is 1 + 1?", "2"),
        Example("Name a colour.", "Red,\nor blue."),
    ]
    assert parse_examples('[{"question": "Q?", "answer": 3}, {"question": "", "answer": "x"}]') == [
        Example("Q?", "3")
    ]
    # a list in an answer is not JSON examples
    assert parse_examples("Question: Sort 2, 1.\nAnswer: [1, 2]") == [
        Example("Sort 2, 1.", "[1, 2]")
    ]
    assert parse_examples("NONE") == []
    assert parse_examples(None) == []
    messages = [Message("system", "Q: What  is 1+1?\nA: It is 2."), Message("user", "And 2+2?")]
    assert grounded(
        [
            Example("what is 1+1?", "It is 2."),
            Example("What is 1+1?", "It is 3."),
            Example("And 2+2?", "2"),
        ],
        messages,
    ) == [Example("what is 1+1?", "It is 2.")]
    # the request's own question, with a number from the problem above it (the 1.5B, GSM8K)
    problem = (
        "She bought a package of spoons, got 5 more and used 3, leaving 12 spoons. How many "
        'spoons were in the package?\n\nEnd your reply with "The answer is N."'
    )
    asked = [*messages[:1], Message("user", problem)]
    assert grounded(
        [Example("How many spoons were in the package?", "12"), Example("What is 1+1?", "2")],
        asked,
    ) == [Example("What is 1+1?", "2")]
    # the request's last question, "answered" with the start of the format line after it
    # (item 110); a worked example before it in the same message still counts
    gas = (
        "Q: What is 2+2?\nA: 4\n\nGas is $3.00 a gallon, with $.20 back a gallon. If someone buys "
        '10 gallons, what do they pay?\n\nEnd your reply with "The answer is N."'
    )
    assert grounded(
        [
            Example("If someone buys 10 gallons, what do they pay?", "The answer is"),
            Example("What do they pay?", "The answer is"),
            Example("What is 2+2?", "4"),
        ],
        [Message("user", gas)],
    ) == [Example("What is 2+2?", "4")]
    assert asked_question(gas) == "If someone buys 10 gallons, what do they pay?"
    assert asked_question("Add 2 and 3.") == ""
