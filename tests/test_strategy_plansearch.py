"""`plansearch`: observations, combined observations, plans, a solution per plan, a selection."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from ponder.errors import BackendUnavailable
from ponder.strategies.plansearch import (
    COMBINE_PROMPT,
    OBSERVATIONS_INTRO,
    OBSERVE_PROMPT,
    PLAN_INTRO,
    PLAN_PROMPT,
    SELECT_PROMPT,
    SOLUTIONS_INTRO,
    SOLVE_PROMPT,
    subsets,
)
from ponder.strategies.showing import CUT_OFF_MARK, numbered, parse_list, selection
from ponder.testing import Call, Reply, ScriptedBackend
from ponder.types import Completion
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

PLANSEARCH = f"plansearch-{MODEL}"
OBSERVATIONS = [
    "Each box holds 4 apples.",
    "There are 3 boxes.",
    "Tom eats 2 apples.",
    "Apples are not shared.",
    "Boxes are full.",
]
CONVERSATION = conversation(
    "Answer briefly.",
    "I have a puzzle for you.",
    "Go ahead.",
    "Tom has 3 boxes of 4 apples and eats 2. How many are left?",
)
CLIENT = [(m["role"], m["content"]) for m in CONVERSATION]
REQUEST = CLIENT[-1][1]
LISTED = "\n".join(f"{i}. {o}" for i, o in enumerate(OBSERVATIONS[:3], start=1))
OBSERVE_TAIL = OBSERVE_PROMPT.split("{count}")[1]


def kind(call: Call) -> str:
    for name, prompt in (
        ("combine", COMBINE_PROMPT),
        ("plan", PLAN_PROMPT),
        ("solve", SOLVE_PROMPT),
        ("select", SELECT_PROMPT),
        ("observe", OBSERVE_TAIL),
    ):
        if call.prompt.endswith(prompt):
            return name
    raise AssertionError(f"unexpected call: {call.prompt!r}")


def numbers(call: Call) -> str:
    """Which of OBSERVATIONS the call's prompt shows, as "1+2"."""
    return "+".join(str(i) for i, o in enumerate(OBSERVATIONS, start=1) if o in call.prompt)


class Search:
    """A scripted model for plansearch. Combinations and plans name the observations they were
    shown; the solution to the plan shown is `solutions[plan]`, else an answer of its own."""

    def __init__(
        self,
        *,
        observed: Reply = LISTED,
        solutions: dict[str, Reply] | None = None,
        verdict: Reply = "Solution 1 forgets the eaten apples.\nSelected: 2",
        fail: str | None = None,
    ) -> None:
        self.observed = observed
        self.solutions = solutions or {
            "Plan from 1+2": "3 * 4 = 12 apples. The answer is 12.",
            "Plan from 1+3": "4 - 2 = 2. The answer is 2.",
            "Plan from 2+3": "12 - 2 = 10. The answer is 10.",
        }
        self.verdict = verdict
        self.fail = fail
        self.replies: list[str] = []

    def __call__(self, call: Call, index: int) -> Reply:
        k = kind(call)
        reply: Reply
        if k == self.fail:
            return BackendUnavailable("down")
        if k == "observe":
            reply = self.observed
        elif k == "combine":
            reply = f"Insight from {numbers(call)}."
        elif k == "plan":
            reply = f"Plan from {numbers(call)}: count, then subtract."
        elif k == "solve":
            plan = call.prompt.split(PLAN_INTRO)[1]
            reply = next((s for p, s in self.solutions.items() if p in plan), "An answer.")
        else:
            reply = self.verdict
        if isinstance(reply, Completion):
            self.replies.append(reply.content or "")
        elif isinstance(reply, str):
            self.replies.append(reply)
        return reply


def calls_of(backend: ScriptedBackend, name: str) -> list[Call]:
    return [c for c in backend.calls if kind(c) == name]


def answer(response: httpx.Response) -> str:
    content: str = response.json()["choices"][0]["message"]["content"]
    return content


async def test_the_selected_solution_is_the_answer_with_exact_calls_and_usage() -> None:
    search = Search()
    backend = scripted(search)
    response = await chat(backend, PLANSEARCH, messages=CONVERSATION, ponder={"trace": True})
    assert response.status_code == 200
    body = response.json()
    # the model selects solution 2, though the shared-answer fallback would pick solution 1
    assert answer(response) == "4 - 2 = 2. The answer is 2."
    assert len(backend.calls) == 11
    assert response.headers["x-ponder-backend-calls"] == "11"
    assert [kind(c) for c in backend.calls] == [
        "observe",
        *["combine"] * 3,
        *["plan"] * 3,
        *["solve"] * 3,
        "select",
    ]
    selected = search.solutions["Plan from 1+3"]  # solution 2
    assert body["usage"] == usage_for(backend, search.replies, answer=selected)
    assert trace_steps(body, "observations")[0]["observations"] == OBSERVATIONS[:3]
    assert trace_steps(body, "combined")[0]["notes"] == [
        [OBSERVATIONS[0], OBSERVATIONS[1], "Insight from 1+2."],
        [OBSERVATIONS[0], OBSERVATIONS[2], "Insight from 1+3."],
        [OBSERVATIONS[1], OBSERVATIONS[2], "Insight from 2+3."],
    ]
    (step,) = trace_steps(body, "selection")
    assert (step["selected"], step["chosen"]) == (1, 1)


async def test_prompts_keep_the_conversation_and_carry_the_material_after_the_request() -> None:
    backend = scripted(Search())
    await chat(backend, PLANSEARCH, messages=CONVERSATION)

    def turns(call: Call) -> list[tuple[str, str]]:
        return [(m.role, m.text) for m in call.messages]

    def last_turn(*blocks: str) -> list[tuple[str, str]]:
        return [*CLIENT[:-1], ("user", "\n\n".join((REQUEST, *blocks)))]

    (observe,) = calls_of(backend, "observe")
    assert turns(observe) == last_turn(OBSERVE_PROMPT.format(count=3))
    o = OBSERVATIONS
    pairs = [(0, 1), (0, 2), (1, 2)]
    for call, (a, b) in zip(calls_of(backend, "combine"), pairs, strict=True):
        listed = f"1. {o[a]}\n2. {o[b]}"
        assert turns(call) == last_turn(OBSERVATIONS_INTRO, listed, COMBINE_PROMPT)
    for call, (a, b) in zip(calls_of(backend, "plan"), pairs, strict=True):
        listed = f"1. {o[a]}\n2. {o[b]}\n3. Insight from {a + 1}+{b + 1}."
        assert turns(call) == last_turn(OBSERVATIONS_INTRO, listed, PLAN_PROMPT)
    plans = [f"Plan from {a + 1}+{b + 1}: count, then subtract." for a, b in pairs]
    for call, plan in zip(calls_of(backend, "solve"), plans, strict=True):
        assert turns(call) == last_turn(PLAN_INTRO, plan, SOLVE_PROMPT)
    (select,) = calls_of(backend, "select")
    solutions = [Completion(s) for s in Search().solutions.values()]
    assert turns(select) == last_turn(
        SOLUTIONS_INTRO.format(count=3), numbered("Solution", solutions), SELECT_PROMPT
    )
    assert numbered("Solution", solutions).startswith(f"Solution 1: {solutions[0].content}\n\n")


async def test_sampling_of_each_kind_of_call() -> None:
    backend = scripted(Search())
    await chat(
        backend,
        PLANSEARCH,
        max_tokens=80,
        stop=["END"],
        seed=5,
        ponder={"plansearch": {"observation_tokens": 100, "plan_tokens": 200}},
    )
    limits = {"observe": 100, "combine": 100, "plan": 200}
    for name, limit in limits.items():
        for call in calls_of(backend, name):
            s = call.sampling
            assert (s.temperature, s.max_tokens, s.stop, s.seed) == (0.7, limit, (), 5)
    for call in calls_of(backend, "solve"):
        s = call.sampling
        assert (s.temperature, s.max_tokens, s.stop, s.seed) == (None, 80, ("END",), 5)
    (select,) = calls_of(backend, "select")
    s = select.sampling
    assert (s.temperature, s.max_tokens, s.stop, s.seed) == (0.0, 512, (), 5)


async def test_a_client_temperature_drives_the_ideas_and_the_solutions() -> None:
    backend = scripted(Search())
    await chat(backend, PLANSEARCH, temperature=1.1, ponder={"plansearch": {"temperature": 0.3}})
    ideas = [*calls_of(backend, "observe"), *calls_of(backend, "combine")]
    assert {c.sampling.temperature for c in [*ideas, *calls_of(backend, "plan")]} == {1.1}
    assert {c.sampling.temperature for c in calls_of(backend, "solve")} == {1.1}
    backend = scripted(Search())
    await chat(backend, PLANSEARCH, temperature=0, ponder={"plansearch": {"temperature": 0.3}})
    assert {c.sampling.temperature for c in calls_of(backend, "plan")} == {0.3}
    assert {c.sampling.temperature for c in calls_of(backend, "solve")} == {0}


@pytest.mark.parametrize(
    "verdict",
    ["I cannot decide between them.", "Selected: 9", "Selected: 0", ""],
)
async def test_without_a_usable_selection_the_most_shared_answer_wins(verdict: str) -> None:
    solutions: dict[str, Reply] = {
        "Plan from 1+2": "It is 7. The answer is 7.",
        "Plan from 1+3": "12 - 2 = 10. The answer is 10.",
        "Plan from 2+3": "So 10 apples are left.",
    }
    backend = scripted(Search(solutions=solutions, verdict=verdict))
    response = await chat(backend, PLANSEARCH, ponder={"trace": True})
    assert answer(response) == "12 - 2 = 10. The answer is 10."
    (step,) = trace_steps(response.json(), "selection")
    assert (step["selected"], step["chosen"]) == (None, 1)


async def test_a_solution_stating_the_placeholder_is_not_shown_for_selection() -> None:
    # GSM8K item 107: a solution copied its plan, uncomputed, and ended with the request's form
    copied = "Multiply, then subtract. The answer is N."
    solutions: dict[str, Reply] = {
        "Plan from 1+2": copied,
        "Plan from 1+3": "4 - 2 = 2. The answer is 2.",
        "Plan from 2+3": "12 - 2 = 10. The answer is 10.",
    }
    backend = scripted(Search(solutions=solutions, verdict="Selected: 2"))
    response = await chat(backend, PLANSEARCH, ponder={"trace": True})
    (select,) = calls_of(backend, "select")
    assert copied not in select.prompt
    assert SOLUTIONS_INTRO.format(count=2) in select.prompt
    shown = [Completion(str(solutions[p])) for p in ("Plan from 1+3", "Plan from 2+3")]
    assert numbered("Solution", shown) in select.prompt
    # "Selected: 2" names the second solution shown: the third written
    assert answer(response) == "12 - 2 = 10. The answer is 10."
    (step,) = trace_steps(response.json(), "selection")
    assert (step["shown"], step["selected"], step["chosen"]) == ([2, 3], 2, 2)

    # one solution left: it is the answer, with no selection call
    solutions["Plan from 1+3"] = "Count them. The answer is $N$."
    backend = scripted(Search(solutions=solutions))
    response = await chat(backend, PLANSEARCH)
    assert answer(response) == "12 - 2 = 10. The answer is 10."
    assert len(backend.calls) == 10 and not calls_of(backend, "select")

    # every solution states it: all are shown, as before
    everyone = dict.fromkeys(solutions, copied)
    backend = scripted(Search(solutions=everyone, verdict="Selected: 3"))
    response = await chat(backend, PLANSEARCH)
    (select,) = calls_of(backend, "select")
    assert SOLUTIONS_INTRO.format(count=3) in select.prompt
    assert answer(response) == copied


async def test_with_no_usable_selection_and_no_shared_answer_the_first_wins() -> None:
    backend = scripted(Search(verdict="They all look fine."))
    response = await chat(backend, PLANSEARCH)
    assert answer(response) == "3 * 4 = 12 apples. The answer is 12."


async def test_a_cut_off_solution_is_marked_and_has_no_answer_to_share() -> None:
    cut = Completion("12 - 2 = 10, and then", finish_reason="length")
    solutions: dict[str, Reply] = {
        "Plan from 1+2": cut,
        "Plan from 1+3": "The answer is 7.",
        "Plan from 2+3": "The answer is 10.",
    }
    backend = scripted(Search(solutions=solutions, verdict="no idea"))
    response = await chat(backend, PLANSEARCH, max_tokens=10)
    assert answer(response) == "The answer is 7."  # the cut-off one does not share in 10
    (select,) = calls_of(backend, "select")
    assert f"Solution 1{CUT_OFF_MARK}: {cut.content}" in select.prompt


async def test_an_unnumbered_observation_reply_is_one_observation_and_one_plan() -> None:
    search = Search(observed="Think about how many apples there are in all.")
    backend = scripted(search)
    response = await chat(backend, PLANSEARCH, ponder={"trace": True})
    assert response.status_code == 200
    assert [kind(c) for c in backend.calls] == ["observe", "plan", "solve"]
    assert response.headers["x-ponder-backend-calls"] == "3"
    (plan,) = calls_of(backend, "plan")
    assert plan.prompt.endswith(
        f"{OBSERVATIONS_INTRO}\n\n1. Think about how many apples there are in all.\n\n{PLAN_PROMPT}"
    )
    assert answer(response) == "An answer."
    assert response.json()["usage"] == usage_for(backend, search.replies)


async def test_an_empty_observation_reply_still_plans_from_the_request() -> None:
    backend = scripted(Search(observed=""))
    response = await chat(backend, PLANSEARCH)
    assert [kind(c) for c in backend.calls] == ["observe", "plan", "solve"]
    (plan,) = calls_of(backend, "plan")
    assert plan.prompt == f"hello\n\n{PLAN_PROMPT}"
    assert response.status_code == 200


async def test_a_longer_list_is_cut_and_options_bound_the_plans() -> None:
    listed = "\n".join(f"- {o}" for o in OBSERVATIONS)
    backend = scripted(Search(observed=listed))
    response = await chat(backend, PLANSEARCH, ponder={"plansearch": {"plans": 4}})
    # 3 observations kept: 3 pairs and the triple make 4 plans
    assert [kind(c) for c in backend.calls] == [
        "observe",
        *["combine"] * 4,
        *["plan"] * 4,
        *["solve"] * 4,
        "select",
    ]
    assert response.headers["x-ponder-backend-calls"] == "14"
    combine = calls_of(backend, "combine")[3]
    assert [numbers(c) for c in calls_of(backend, "combine")] == ["1+2", "1+3", "2+3", "1+2+3"]
    assert OBSERVATIONS[3] not in combine.prompt
    backend = scripted(Search(observed=listed))
    response = await chat(
        backend, PLANSEARCH, ponder={"plansearch": {"observations": 2, "plans": 3}}
    )
    assert [kind(c) for c in backend.calls] == ["observe", "combine", "plan", "solve"]
    assert calls_of(backend, "observe")[0].prompt.endswith(OBSERVE_PROMPT.format(count=2))


async def test_each_stage_runs_its_calls_at_once() -> None:
    backend = scripted(Search())
    backend.hold()
    request = asyncio.create_task(chat(backend, PLANSEARCH))
    made = 0
    for stage, width in (("observe", 1), ("combine", 3), ("plan", 3), ("solve", 3), ("select", 1)):
        made += width
        # wait_for_in_flight would count the last stage's calls, still leaving the gate
        async with asyncio.timeout(5):
            while len(backend.calls) < made or backend.in_flight < width:  # noqa: ASYNC110
                await asyncio.sleep(0)
        # the whole stage waits at the gate together, and nothing of the next has started
        assert [kind(c) for c in backend.calls[-width:]] == [stage] * width
        assert (len(backend.calls), backend.in_flight) == (made, width)
        backend.release()
        backend.hold()  # before the next stage's calls start
    backend.release()
    response = await request
    assert answer(response) == "4 - 2 = 2. The answer is 2."
    assert backend.max_in_flight == 3
    assert len(backend.calls) == 11


async def test_streams_observations_and_plans_as_reasoning_then_the_answer() -> None:
    backend = scripted(Search())
    response = await chat(backend, PLANSEARCH, stream=True)
    assert response.status_code == 200
    o = OBSERVATIONS
    assert streamed_text(response.text, "reasoning_content") == (
        f"Observation 1: {o[0]}\nObservation 2: {o[1]}\nObservation 3: {o[2]}\n"
        "Combined observation 1: Insight from 1+2.\n"
        "Combined observation 2: Insight from 1+3.\n"
        "Combined observation 3: Insight from 2+3.\n"
        "Plan 1: Plan from 1+2: count, then subtract.\n"
        "Plan 2: Plan from 1+3: count, then subtract.\n"
        "Plan 3: Plan from 2+3: count, then subtract.\n"
        "Selected solution 2 (by the model)\n"
    )
    assert streamed_text(response.text) == "4 - 2 = 2. The answer is 2."
    assert not any(c.stream for c in backend.calls)  # the answer is a solution already written
    response = await chat(scripted(Search()), PLANSEARCH, stream=True, ponder={"reasoning": False})
    assert streamed_text(response.text, "reasoning_content") == ""
    assert streamed_text(response.text) == "4 - 2 = 2. The answer is 2."


@pytest.mark.parametrize("failing", ["observe", "combine", "plan", "solve", "select"])
async def test_a_failed_call_is_an_openai_shaped_503(failing: str) -> None:
    backend = scripted(Search(fail=failing))
    response = await chat(backend, PLANSEARCH)
    assert_error(
        response, 503, message="down", type="api_error", param=None, code="backend_unavailable"
    )


async def test_a_failed_plan_in_a_stream_ends_it_with_the_error() -> None:
    backend = scripted(Search(fail="plan"))
    response = await chat(backend, PLANSEARCH, stream=True)
    assert response.status_code == 200  # the observations went out first
    assert "Observation 1:" in response.text
    assert stream_error(response.text)["code"] == "backend_unavailable"
    assert not calls_of(backend, "solve")


@pytest.mark.parametrize("limit", [1, 4, 10])
async def test_a_budget_below_what_the_search_needs_is_a_400(limit: int) -> None:
    backend = scripted(Search())
    response = await chat(backend, PLANSEARCH, ponder={"max_backend_calls": limit})
    assert_error(response, 400, code="budget_exceeded", param="ponder.max_backend_calls")
    assert len(backend.calls) == limit


async def test_a_budget_that_covers_the_search_is_enough() -> None:
    response = await chat(scripted(Search()), PLANSEARCH, ponder={"max_backend_calls": 11})
    assert answer(response) == "4 - 2 = 2. The answer is 2."


async def test_optillm_approach_selects_it() -> None:
    backend = scripted(Search())
    response = await chat(backend, MODEL, optillm_approach="plansearch")
    assert answer(response) == "4 - 2 = 2. The answer is 2."
    assert response.headers["x-ponder-backend-calls"] == "11"


async def test_request_n_runs_independent_searches() -> None:
    backend = scripted(Search())
    response = await chat(backend, PLANSEARCH, n=2)
    assert [c["message"]["content"] for c in response.json()["choices"]] == [
        "4 - 2 = 2. The answer is 2."
    ] * 2
    assert len(backend.calls) == 22


def test_parsing_lists_selections_and_subsets() -> None:
    assert parse_list("Ideas:\n1. a\n2) b c\n- d\n* e\n\u2022 f\nnot an item") == [
        "a",
        "b c",
        "d",
        "e",
        "f",
    ]
    assert parse_list("  just one idea  ") == ["just one idea"]
    assert parse_list("   ") == []
    assert parse_list(None) == []
    assert selection("**Selected:** 2", 3) == 1
    assert selection("Selected: Solution 3", 3) == 2
    assert selection("selected 1, no wait.\nSelected: 2", 3) == 1
    assert selection("Selected: 4", 3) is None
    assert selection("The second one.", 3) is None
    assert subsets(0, 3) == [()]
    assert subsets(1, 3) == [(0,)]
    assert subsets(2, 3) == [(0, 1)]
    assert subsets(4, 8) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3), (0, 1, 2), (0, 1, 3)]
