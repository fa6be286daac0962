"""`rto`: round-trip optimization: answer, restate the request, answer again, compare, reconcile."""

from __future__ import annotations

import asyncio

import pytest

from ponder.errors import BackendUnavailable
from ponder.strategies.rto import (
    ANSWERS_INTRO,
    JUDGE_PROMPT,
    RECONCILE_PROMPT,
    RESTATE_PROMPT,
    comparison,
    parse_verdict,
)
from ponder.strategies.showing import CUT_OFF_MARK
from ponder.testing import Call, Reply, ScriptedBackend
from ponder.types import Completion, ToolCall
from tests.conftest import (
    MODEL,
    assert_error,
    chat,
    conversation,
    scripted,
    sse_events,
    stream_error,
    streamed_text,
    trace_steps,
    usage_for,
)

RTO = f"rto-{MODEL}"
CONVERSATION = conversation(
    "Show your working, then the answer.",
    "I have a maths question.",
    "Go ahead.",
    "6 boxes hold 4 pencils each. I give away 5. How many are left?",
)
CLIENT = [(m["role"], m["content"]) for m in CONVERSATION]
REQUEST = CLIENT[-1][1]
FIRST = "6 * 4 = 24 pencils; 24 - 5 = 19. The answer is 19."
RESTATED = "There are 6 boxes of 4 pencils. 5 pencils are given away. How many pencils remain?"
SECOND_SAME = "24 pencils in all, 5 go: 19 remain."
SECOND_OTHER = "6 * 4 = 24, 24 + 5 = 29. The answer is 29."
FINAL = "6 * 4 = 24 and 24 - 5 = 19, so 19 pencils are left."


class RoundTripModel:
    """A scripted model for rto: one reply for each kind of call."""

    def __init__(
        self,
        first: Reply = FIRST,
        second: Reply = SECOND_SAME,
        restated: Reply = RESTATED,
        verdict: Reply = "SAME",
        final: Reply = FINAL,
        fail: str | None = None,
    ) -> None:
        self.by_kind = {
            "first": first,
            "restate": restated,
            "second": second,
            "judge": verdict,
            "reconcile": final,
        }
        self.fail = fail
        self.replies: list[str] = []

    def __call__(self, call: Call, index: int) -> Reply:
        k = call_kind(call)
        if k == self.fail:
            return BackendUnavailable("down")
        reply = self.by_kind[k]
        if isinstance(reply, str):
            self.replies.append(reply)
        elif isinstance(reply, Completion):
            self.replies.append(reply.content or "")
        return reply


def call_kind(call: Call) -> str:
    if call.prompt == RESTATE_PROMPT:
        return "restate"
    if call.prompt.endswith(JUDGE_PROMPT):
        return "judge"
    if call.prompt.endswith(RECONCILE_PROMPT):
        return "reconcile"
    restated = {RESTATED, "Write a short poem about the sea, in four lines."}
    return "second" if call.prompt in restated else "first"


def kinds(backend: ScriptedBackend) -> list[str]:
    return [call_kind(c) for c in backend.calls]


def calls_of(backend: ScriptedBackend, name: str) -> list[Call]:
    return [c for c in backend.calls if call_kind(c) == name]


def turns(call: Call) -> list[tuple[str, str]]:
    return [(m.role, m.text) for m in call.messages]


async def test_agreeing_answers_return_the_first_in_three_calls() -> None:
    model = RoundTripModel()
    backend = scripted(model)
    response = await chat(
        backend,
        RTO,
        messages=CONVERSATION,
        max_tokens=90,
        stop=["END"],
        seed=4,
        ponder={"trace": True},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["choices"][0]["message"]["content"] == FIRST
    assert len(backend.calls) == 3
    assert response.headers["x-ponder-backend-calls"] == "3"
    assert kinds(backend) == ["first", "restate", "second"]
    first, restate, second = backend.calls
    assert turns(first) == CLIENT
    assert turns(restate) == [*CLIENT, ("assistant", FIRST), ("user", RESTATE_PROMPT)]
    # the second answer sees the client's system prompt and the restated request, nothing else
    assert turns(second) == [CLIENT[0], ("user", RESTATED)]
    for call in (first, second):
        s = call.sampling
        assert (s.temperature, s.max_tokens, s.stop, s.seed) == (None, 90, ("END",), 4)
    s = restate.sampling
    assert (s.temperature, s.max_tokens, s.stop, s.seed) == (0.0, 512, (), 4)
    assert body["usage"] == usage_for(backend, model.replies, answer=FIRST)
    (step,) = trace_steps(body, "compare")
    assert (step["agree"], step["judged"], step["second"]) == (True, False, SECOND_SAME)
    assert trace_steps(body, "restated")[0]["request"] == RESTATED


async def test_different_numbers_are_reconciled_in_a_fourth_call() -> None:
    model = RoundTripModel(second=SECOND_OTHER)
    backend = scripted(model)
    response = await chat(backend, RTO, messages=CONVERSATION, temperature=0.5, max_tokens=90)
    body = response.json()
    assert body["choices"][0]["message"]["content"] == FINAL
    assert kinds(backend) == ["first", "restate", "second", "reconcile"]
    assert response.headers["x-ponder-backend-calls"] == "4"
    (reconcile,) = calls_of(backend, "reconcile")
    listed = f"Answer 1: {FIRST}\n\nAnswer 2: {SECOND_OTHER}"
    assert turns(reconcile) == [
        *CLIENT[:-1],
        ("user", f"{REQUEST}\n\n{ANSWERS_INTRO}\n\n{listed}\n\n{RECONCILE_PROMPT}"),
    ]
    assert (reconcile.sampling.temperature, reconcile.sampling.max_tokens) == (0.5, 90)
    assert body["usage"] == usage_for(backend, model.replies)


async def test_prose_answers_go_to_the_judge_which_can_find_them_the_same() -> None:
    poem = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "A sea poem?"}]
    first = "Waves roll in,\nsalt on the wind,\ngulls cry,\nthe tide sighs."
    second = "Grey waves rise,\nthe gulls cry,\nfoam on sand,\nthe sea is grand."
    model = RoundTripModel(
        first=first,
        restated="Write a short poem about the sea, in four lines.",
        second=second,
        verdict="Same.",
    )
    backend = scripted(model)
    response = await chat(backend, RTO, messages=poem, ponder={"trace": True})
    body = response.json()
    assert body["choices"][0]["message"]["content"] == first
    assert kinds(backend) == ["first", "restate", "second", "judge"]
    (judge,) = calls_of(backend, "judge")
    listed = f"Answer 1: {first}\n\nAnswer 2: {second}"
    assert turns(judge) == [
        ("system", "Be brief."),
        ("user", f"A sea poem?\n\n{ANSWERS_INTRO}\n\n{listed}\n\n{JUDGE_PROMPT}"),
    ]
    assert (judge.sampling.temperature, judge.sampling.max_tokens) == (0.0, 8)
    (step,) = trace_steps(body, "compare")
    assert (step["agree"], step["judged"]) == (True, True)
    assert body["usage"] == usage_for(backend, model.replies, answer=first)


async def test_a_judge_that_finds_them_different_leads_to_a_reconciliation() -> None:
    model = RoundTripModel(
        first="Use a list.", second="Use a dict.", verdict="DIFFERENT", final="Use a set."
    )
    backend = scripted(model)
    response = await chat(backend, RTO, messages=CONVERSATION)
    assert response.json()["choices"][0]["message"]["content"] == "Use a set."
    assert kinds(backend) == ["first", "restate", "second", "judge", "reconcile"]
    assert response.headers["x-ponder-backend-calls"] == "5"
    assert response.json()["usage"] == usage_for(backend, model.replies)


async def test_without_the_judge_prose_answers_are_reconciled() -> None:
    model = RoundTripModel(first="Use a list.", second="Use a dict.", final="Use a set.")
    backend = scripted(model)
    response = await chat(backend, RTO, ponder={"rto": {"judge": False, "restate_tokens": 30}})
    assert response.json()["choices"][0]["message"]["content"] == "Use a set."
    assert kinds(backend) == ["first", "restate", "second", "reconcile"]
    assert calls_of(backend, "restate")[0].sampling.max_tokens == 30


async def test_a_cut_off_answer_is_marked_and_reconciled_without_a_judge() -> None:
    cut = Completion("6 * 4 = 24, and then 24 - 5 =", finish_reason="length")
    backend = scripted(RoundTripModel(second=cut))
    response = await chat(backend, RTO, messages=CONVERSATION, max_tokens=12)
    assert response.json()["choices"][0]["message"]["content"] == FINAL
    assert kinds(backend) == ["first", "restate", "second", "reconcile"]
    (reconcile,) = calls_of(backend, "reconcile")
    assert f"Answer 1: {FIRST}\n\nAnswer 2{CUT_OFF_MARK}: {cut.content}" in reconcile.prompt


async def test_an_empty_restatement_or_a_tool_call_returns_the_first_answer() -> None:
    backend = scripted(RoundTripModel(restated="  "))
    response = await chat(backend, RTO, messages=CONVERSATION)
    assert response.json()["choices"][0]["message"]["content"] == FIRST
    assert kinds(backend) == ["first", "restate"]

    call = ToolCall(id="call_1", name="lookup", arguments='{"q": "pencils"}')
    backend = scripted(RoundTripModel(first=Completion(None, "tool_calls", (call,))))
    response = await chat(backend, RTO, messages=CONVERSATION)
    body = response.json()
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert body["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "lookup"
    assert len(backend.calls) == 1


async def test_a_conversation_without_a_system_prompt_sends_the_restatement_alone() -> None:
    backend = scripted(RoundTripModel())
    await chat(backend, RTO, messages=[{"role": "user", "content": REQUEST}])
    (second,) = calls_of(backend, "second")
    assert turns(second) == [("user", RESTATED)]


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("The answer is 19.", "so 19", True),
        ("The answer is $1,200.", "\\boxed{1200}", True),
        ("The answer is 19.", "The answer is 20.", False),
        ("(B) because ...", "The answer is C", False),
        ("Use a list.", "Use a dict.", None),
        ("The answer is 19.", "It is nineteen.", None),
        ("The answer is 19.", "", False),
    ],
)
def test_comparison(first: str, second: str, expected: bool | None) -> None:
    assert comparison(Completion(first), Completion(second)) is expected
    cut = Completion(first, finish_reason="length")
    assert comparison(cut, Completion(first)) is False


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SAME", True),
        ("same.", True),
        ("DIFFERENT", False),
        ("Different, not the same", False),
        ("They are the same, not different", True),
        ("sameness", False),
        ("", False),
        (None, False),
    ],
)
def test_parse_verdict(text: str | None, expected: bool) -> None:
    assert parse_verdict(text) is expected


async def test_streams_the_working_as_reasoning_and_the_reconciliation_as_content() -> None:
    model = RoundTripModel(second=SECOND_OTHER)
    backend = scripted(model)
    response = await chat(
        backend, RTO, messages=CONVERSATION, stream=True, stream_options={"include_usage": True}
    )
    assert response.status_code == 200
    assert streamed_text(response.text, "reasoning_content") == (
        f"First answer: {FIRST}\nRestated request: {RESTATED}\nSecond answer: {SECOND_OTHER}\n"
        "The answers disagree: reconciling them\n"
    )
    assert streamed_text(response.text) == FINAL
    assert [c.stream for c in backend.calls] == [False, False, False, True]
    assert sse_events(response.text)[-1]["usage"] == usage_for(backend, model.replies)


async def test_streams_agreeing_answers_as_the_first_one() -> None:
    backend = scripted(RoundTripModel(first="x " * 60 + "The answer is 19.", second="19"))
    response = await chat(backend, RTO, stream=True)
    reasoning = streamed_text(response.text, "reasoning_content")
    assert reasoning.startswith(f"First answer: {'x ' * 40}\n")
    assert reasoning.endswith("Second answer: 19\nThe answers agree: the first one stands\n")
    assert streamed_text(response.text) == "x " * 60 + "The answer is 19."
    assert not any(c.stream for c in backend.calls)

    backend = scripted(RoundTripModel(second=SECOND_OTHER))
    response = await chat(backend, RTO, stream=True, ponder={"reasoning": False})
    assert streamed_text(response.text, "reasoning_content") == ""
    assert streamed_text(response.text) == FINAL


@pytest.mark.parametrize("failing", ["first", "restate", "second", "judge", "reconcile"])
async def test_a_failed_call_is_an_openai_shaped_503(failing: str) -> None:
    model = RoundTripModel(first="Use a list.", second="Use a dict.", verdict="DIFFERENT")
    model.fail = failing
    backend = scripted(model)
    response = await chat(backend, RTO)
    assert_error(
        response, 503, message="down", type="api_error", param=None, code="backend_unavailable"
    )
    assert kinds(backend)[-1] == failing


async def test_a_failed_reconciliation_in_a_stream_ends_it_with_the_error() -> None:
    backend = scripted(RoundTripModel(second=SECOND_OTHER, fail="reconcile"))
    response = await chat(backend, RTO, stream=True)
    assert response.status_code == 200  # the working went out first
    assert stream_error(response.text)["code"] == "backend_unavailable"


async def test_one_round_trip_is_sequential_and_request_n_runs_them_at_once() -> None:
    backend = scripted(RoundTripModel(second=SECOND_OTHER))
    await chat(backend, RTO)
    assert backend.max_in_flight == 1  # each call needs the one before

    backend = scripted(RoundTripModel(second=SECOND_OTHER))
    backend.hold()
    request = asyncio.create_task(chat(backend, RTO, n=2))
    await backend.wait_for_in_flight(2)
    assert kinds(backend) == ["first", "first"]
    backend.release()
    response = await request
    body = response.json()
    assert [c["message"]["content"] for c in body["choices"]] == [FINAL, FINAL]
    assert len(backend.calls) == 8
    assert response.headers["x-ponder-backend-calls"] == "8"


@pytest.mark.parametrize("limit", [1, 2, 3])
async def test_a_budget_below_the_calls_needed_is_a_400(limit: int) -> None:
    backend = scripted(RoundTripModel(second=SECOND_OTHER))
    response = await chat(backend, RTO, ponder={"max_backend_calls": limit})
    assert_error(response, 400, code="budget_exceeded", param="ponder.max_backend_calls")
    assert len(backend.calls) == limit


async def test_a_budget_that_covers_the_calls_is_enough() -> None:
    backend = scripted(RoundTripModel(second=SECOND_OTHER))
    response = await chat(backend, RTO, ponder={"max_backend_calls": 4})
    assert response.json()["choices"][0]["message"]["content"] == FINAL


async def test_optillm_approach_selects_it() -> None:
    backend = scripted(RoundTripModel())
    response = await chat(backend, MODEL, optillm_approach="rto", messages=CONVERSATION)
    assert response.json()["choices"][0]["message"]["content"] == FIRST
    assert kinds(backend) == ["first", "restate", "second"]
