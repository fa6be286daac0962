"""`cepo`: plan, execute the plan several times at once, compare and refine; several attempts
at once, each refined answer rated, the best returned."""

from __future__ import annotations

import asyncio

import pytest

from ponder.backends.base import Capabilities
from ponder.errors import BackendUnavailable
from ponder.strategies.cepo import (
    ANSWER_INTRO,
    EXECUTE_PROMPT,
    EXECUTIONS_INTRO,
    MARKER,
    PLAN_INTRO,
    PLAN_PROMPT,
    RATE_PROMPT,
    REFINE_PROMPT,
    split_refinement,
)
from ponder.strategies.showing import CUT_OFF_MARK, CUT_OFF_NOTE
from ponder.testing import Call, Reply, ScriptedBackend
from ponder.types import Completion
from tests.conftest import (
    MODEL,
    assert_error,
    chat,
    conversation,
    expected_eights,
    logprobs_asked,
    rated_eight,
    scripted,
    stream_error,
    streamed_text,
    trace_steps,
    usage_for,
)

CEPO = f"cepo-{MODEL}"
CONVERSATION = conversation("Answer briefly.", "A maths question.", "Go ahead.", "What is 6 x 7?")
CLIENT = [(m["role"], m["content"]) for m in CONVERSATION]
REQUEST = CLIENT[-1][1]

KINDS = {PLAN_PROMPT: "plan", EXECUTE_PROMPT: "execute", REFINE_PROMPT: "refine"}


def kind(call: Call) -> str:
    for prompt, name in KINDS.items():
        if call.prompt.endswith(prompt):
            return name
    assert call.prompt.endswith(RATE_PROMPT), call.prompt
    return "rate"


def plan_of(call: Call) -> str:
    """The plan an execution or refinement call carries."""
    return call.prompt.split(f"\n\n{PLAN_INTRO}\n\n", 1)[1].split("\n\n", 1)[0]


def rated(call: Call) -> str:
    """The answer a rating call shows."""
    return call.prompt.split(f"\n\n{ANSWER_INTRO}\n\n", 1)[1].removesuffix(f"\n\n{RATE_PROMPT}")


def review(plan: str) -> str:
    return f"The executions of {plan} agree."


def refinement(number: int) -> str:
    """The refinement of plan `number` that `Planner` writes: its review, the marker and its
    answer."""
    return f"{review(f'plan {number}')}\n{MARKER}\nanswer {number}"


class Planner:
    """A scripted model for cepo: plans "plan 1", "plan 2", ... in the order asked for;
    executions "plan k, execution j"; a refinement of plan k is its review, the marker line and
    "answer k" (or `answers[k]`); a rating is `scores[answer]`, else "5"."""

    def __init__(
        self,
        scores: dict[str, Reply] | None = None,
        answers: dict[int, Reply] | None = None,
        executions: dict[str, Reply] | None = None,
        fail: str | None = None,
    ) -> None:
        self.scores = scores or {}
        self.answers = answers or {}
        self.executions = executions or {}
        self.fail = fail
        self.plans = 0
        self.executed: dict[str, int] = {}
        self.replies: list[str] = []

    def __call__(self, call: Call, index: int) -> Reply:
        k = kind(call)
        if k == self.fail:
            return BackendUnavailable("down")
        reply: Reply
        if k == "plan":
            self.plans += 1
            reply = f"plan {self.plans}"
        elif k == "execute":
            plan = plan_of(call)
            self.executed[plan] = self.executed.get(plan, 0) + 1
            name = f"{plan}, execution {self.executed[plan]}"
            reply = self.executions.get(name, name)
        elif k == "refine":
            plan = plan_of(call)
            number = int(plan.split()[-1])
            reply = self.answers.get(number, refinement(number))
        else:
            reply = self.scores.get(rated(call), "5")
        text = reply.content if isinstance(reply, Completion) else reply
        if isinstance(text, str):
            self.replies.append(text)
        return reply


def calls_of(backend: ScriptedBackend, name: str) -> list[Call]:
    return [c for c in backend.calls if kind(c) == name]


def turns(call: Call) -> list[tuple[str, str]]:
    return [(m.role, m.text) for m in call.messages]


def asking(*blocks: str) -> list[tuple[str, str]]:
    """The client's conversation with `blocks` after the request in its last user turn."""
    return [*CLIENT[:-1], ("user", "\n\n".join((REQUEST, *blocks)))]


async def test_the_best_rated_refined_answer_wins_with_exact_calls_and_usage() -> None:
    planner = Planner(scores={"answer 1": "4", "answer 2": "9/10", "answer 3": "7"})
    backend = scripted(planner)
    response = await chat(backend, CEPO, messages=CONVERSATION, ponder={"trace": True})
    assert response.status_code == 200
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "answer 2"
    assert len(backend.calls) == 18
    assert response.headers["x-ponder-backend-calls"] == "18"
    counts = {name: len(calls_of(backend, name)) for name in ("plan", "execute", "refine")}
    assert counts == {"plan": 3, "execute": 9, "refine": 3}
    assert [kind(c) for c in backend.calls[-3:]] == ["rate"] * 3
    # the answer is the refinement call that wrote it, its review included
    assert body["usage"] == usage_for(backend, planner.replies, answer=refinement(2))
    attempts = sorted(trace_steps(body, "attempt"), key=lambda s: s["attempt"])
    assert [s["plan"] for s in attempts] == ["plan 1", "plan 2", "plan 3"]
    assert attempts[1]["executions"] == [f"plan 2, execution {j}" for j in (1, 2, 3)]
    assert attempts[1]["review"] == review("plan 2")
    assert attempts[1]["answer"] == "answer 2"
    (scores,) = trace_steps(body, "scores")
    assert (scores["scores"], scores["best"]) == ([4.0, 9.0, 7.0], 1)
    assert (scores["answers"], scores["cut_off"]) == (["1", "2", "3"], [])


async def test_prompts_keep_the_conversation_and_put_the_material_after_the_request() -> None:
    backend = scripted(Planner())
    await chat(backend, CEPO, messages=CONVERSATION, ponder={"cepo": {"executions": 2}})
    for call in calls_of(backend, "plan"):
        assert turns(call) == asking(PLAN_PROMPT)
    for call in calls_of(backend, "execute"):
        assert turns(call) == asking(PLAN_INTRO, plan_of(call), EXECUTE_PROMPT)
    refines = calls_of(backend, "refine")
    assert sorted(plan_of(c) for c in refines) == ["plan 1", "plan 2", "plan 3"]
    for call in refines:
        plan = plan_of(call)
        executions = f"Execution 1: {plan}, execution 1\n\nExecution 2: {plan}, execution 2"
        intro = EXECUTIONS_INTRO.format(count=2)
        assert turns(call) == asking(PLAN_INTRO, plan, intro, executions, REFINE_PROMPT)
    rates = calls_of(backend, "rate")
    assert sorted(rated(c) for c in rates) == ["answer 1", "answer 2", "answer 3"]
    for call in rates:
        assert turns(call) == asking(ANSWER_INTRO, rated(call), RATE_PROMPT)


async def test_sampling_of_each_kind_of_call() -> None:
    backend = scripted(Planner())
    await chat(backend, CEPO, max_tokens=60, stop=["END"], seed=3)
    expected = {
        "plan": (0.7, 256, (), 3),
        "execute": (0.7, 60, ("END",), 3),
        "refine": (None, 60, ("END",), 3),
        "rate": (0.0, 8, (), 3),
    }
    for name, settings in expected.items():
        for call in calls_of(backend, name):
            s = call.sampling
            assert (s.temperature, s.max_tokens, s.stop, s.seed) == settings, name
    backend = scripted(Planner())
    options = {"plan_tokens": 100, "score_tokens": 3, "temperature": 0.4}
    await chat(backend, CEPO, temperature=1.1, ponder={"cepo": options})
    for name, settings in {"plan": (1.1, 100), "execute": (1.1, None), "rate": (0.0, 3)}.items():
        assert {
            (c.sampling.temperature, c.sampling.max_tokens) for c in calls_of(backend, name)
        } == {settings}
    backend = scripted(Planner())
    await chat(backend, CEPO, temperature=0, ponder={"cepo": {"temperature": 0.4}})
    assert {c.sampling.temperature for c in calls_of(backend, "plan")} == {0.4}
    assert {c.sampling.temperature for c in calls_of(backend, "execute")} == {0.4}
    assert {c.sampling.temperature for c in calls_of(backend, "refine")} == {0}


def test_the_answer_follows_the_last_marker_line() -> None:
    assert split_refinement(f"They agree.\n{MARKER}\n42") == ("They agree.", "42")
    assert split_refinement(f"One.\n{MARKER} 41\nTwo.\n**Refined answer:** 42") == (
        f"One.\n{MARKER} 41\nTwo.",
        "42",
    )
    assert split_refinement(f"## {MARKER}\nIt is 42.") == ("", "It is 42.")
    assert split_refinement("It is 42.") == ("", "It is 42.")
    assert split_refinement(f"All agree on 42.\n{MARKER}  \n") == ("", "All agree on 42.")
    # the marker counts only at the start of a line, or as the phrase that ends one
    assert split_refinement(f"I write {MARKER} 42") == ("", f"I write {MARKER} 42")
    assert split_refinement("Both agree.\n\nTherefore, the Refined ANSWER is:\n\nIt is 42.") == (
        "Both agree.",
        "It is 42.",
    )
    assert split_refinement("Two disagree.\nThe refined answer:\n42") == (
        "Two disagree.",
        "42",
    )
    assert split_refinement("The refined answer is 42.") == ("", "The refined answer is 42.")


async def test_ties_go_to_the_shared_answer_then_the_earliest() -> None:
    answers: dict[int, Reply] = {1: "It is 43.", 2: "6 x 7 = 42", 3: "The answer is 42."}
    response = await chat(scripted(Planner(answers=answers)), CEPO)  # every rating is 5
    assert response.json()["choices"][0]["message"]["content"] == "6 x 7 = 42"
    planner = Planner(scores={"answer 2": "8", "answer 3": "8"})
    response = await chat(scripted(planner), CEPO)
    assert response.json()["choices"][0]["message"]["content"] == "answer 2"


async def test_cut_off_material_is_marked_and_a_cut_off_answer_loses() -> None:
    cut_answer = Completion(f"Review.\n{MARKER}\nFirst 6 x 5 = 30, then", finish_reason="length")
    cut_execution = Completion("6 x 7: first", finish_reason="length")
    planner = Planner(
        answers={1: cut_answer},
        executions={"plan 2, execution 1": cut_execution},
        scores={"answer 3": "2"},
    )
    backend = scripted(planner)
    response = await chat(backend, CEPO, max_tokens=12)
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "answer 2"
    assert body["choices"][0]["finish_reason"] == "stop"
    (refine,) = [c for c in calls_of(backend, "refine") if plan_of(c) == "plan 2"]
    assert f"Execution 1{CUT_OFF_MARK}: 6 x 7: first" in refine.prompt
    marked = f"{CUT_OFF_NOTE}\n\nFirst 6 x 5 = 30, then"
    assert marked in [rated(c) for c in calls_of(backend, "rate")]


async def test_plans_then_executions_then_ratings_run_at_once() -> None:
    started = {"execute": 0, "rate": 0}
    everyone = {"execute": asyncio.Event(), "rate": asyncio.Event()}
    gates = {"execute": asyncio.Event(), "rate": asyncio.Event()}
    expected = {"execute": 9, "rate": 3}
    planner = Planner()

    async def reply(call: Call, index: int) -> Reply:
        k = kind(call)
        if k in started:
            started[k] += 1
            if started[k] == expected[k]:
                everyone[k].set()
            await gates[k].wait()  # none of this kind finishes before all have started
        return planner(call, index)

    backend = scripted(reply)
    backend.hold()
    task = asyncio.create_task(chat(backend, CEPO))
    await backend.wait_for_in_flight(3)
    assert [kind(c) for c in backend.calls] == ["plan"] * 3
    backend.release()
    for k in ("execute", "rate"):
        async with asyncio.timeout(5):
            await everyone[k].wait()
        assert backend.in_flight == expected[k]
        assert [kind(c) for c in backend.calls[-expected[k] :]] == [k] * expected[k]
        gates[k].set()
    response = await task
    assert response.status_code == 200
    assert backend.max_in_flight == 9
    assert len(backend.calls) == 18


async def test_native_n_draws_each_plans_executions_in_one_call() -> None:
    planner = Planner(scores={"answer 3": "9"})
    backend = scripted(planner, capabilities=Capabilities(native_n=True))
    response = await chat(backend, CEPO)
    assert response.json()["choices"][0]["message"]["content"] == "answer 3"
    assert len(backend.calls) == 12
    assert response.headers["x-ponder-backend-calls"] == "12"
    assert [c.n for c in calls_of(backend, "execute")] == [3, 3, 3]
    assert [c.n for c in backend.calls if kind(c) != "execute"] == [1] * 9
    assert response.json()["usage"] == usage_for(backend, planner.replies, answer=refinement(3))


async def test_a_single_attempt_is_returned_without_a_rating() -> None:
    backend = scripted(Planner())
    options = {"attempts": 1, "executions": 4}
    response = await chat(backend, CEPO, ponder={"cepo": options})
    assert response.json()["choices"][0]["message"]["content"] == "answer 1"
    assert [kind(c) for c in backend.calls] == ["plan"] + ["execute"] * 4 + ["refine"]


async def test_streams_the_working_as_reasoning_then_the_chosen_answer() -> None:
    backend = scripted(Planner())
    response = await chat(backend, CEPO, stream=True, ponder={"cepo": {"attempts": 1}})
    assert response.status_code == 200
    assert streamed_text(response.text, "reasoning_content") == (
        "Attempt 1 plan: plan 1\n"
        "Attempt 1 execution 1: plan 1, execution 1\n"
        "Attempt 1 execution 2: plan 1, execution 2\n"
        "Attempt 1 execution 3: plan 1, execution 3\n"
        f"Attempt 1 review: {review('plan 1')}\n"
        "Attempt 1 answer: answer 1\n"
    )
    assert streamed_text(response.text) == "answer 1"
    backend = scripted(Planner(scores={"answer 2": "6"}))
    response = await chat(backend, CEPO, stream=True)
    lines = streamed_text(response.text, "reasoning_content").splitlines()
    assert len(lines) == 3 * 6 + 3
    assert lines[-3:] == ["Attempt 1 rated 5", "Attempt 2 rated 6", "Attempt 3 rated 5"]
    assert streamed_text(response.text) == "answer 2"
    response = await chat(scripted(Planner()), CEPO, stream=True, ponder={"reasoning": False})
    assert streamed_text(response.text, "reasoning_content") == ""
    assert streamed_text(response.text) == "answer 1"


@pytest.mark.parametrize("failing", ["plan", "execute", "refine", "rate"])
async def test_a_failed_call_is_an_openai_shaped_503(failing: str) -> None:
    backend = scripted(Planner(fail=failing))
    response = await chat(backend, CEPO)
    assert_error(
        response, 503, message="down", type="api_error", param=None, code="backend_unavailable"
    )


async def test_a_failed_rating_in_a_stream_ends_it_with_the_error() -> None:
    backend = scripted(Planner(fail="rate"))
    response = await chat(backend, CEPO, stream=True)
    assert response.status_code == 200  # the attempts' reasoning lines went out first
    assert "Attempt 3 answer: answer 3" in response.text
    assert stream_error(response.text)["code"] == "backend_unavailable"


@pytest.mark.parametrize("limit", [1, 4, 15, 17])
async def test_a_budget_below_the_calls_needed_is_a_400(limit: int) -> None:
    backend = scripted(Planner())
    response = await chat(backend, CEPO, ponder={"max_backend_calls": limit})
    assert_error(response, 400, code="budget_exceeded", param="ponder.max_backend_calls")
    assert len(backend.calls) == limit


async def test_a_budget_that_covers_the_attempts_is_enough() -> None:
    response = await chat(scripted(Planner()), CEPO, ponder={"max_backend_calls": 18})
    assert response.status_code == 200


async def test_optillm_approach_selects_it() -> None:
    backend = scripted(Planner(scores={"answer 3": "9"}))
    response = await chat(backend, MODEL, optillm_approach="cepo")
    assert response.json()["choices"][0]["message"]["content"] == "answer 3"
    assert response.headers["x-ponder-backend-calls"] == "18"


async def test_request_n_runs_independent_selections() -> None:
    backend = scripted(Planner())
    options = {"attempts": 2, "executions": 2}
    response = await chat(backend, CEPO, n=2, ponder={"cepo": options})
    choices = [c["message"]["content"] for c in response.json()["choices"]]
    assert len(backend.calls) == 2 * (2 * 4 + 2)
    assert len(choices) == 2 and choices[0] != choices[1]
    assert set(choices) <= {f"answer {k}" for k in range(1, 5)}


@pytest.mark.parametrize("confidence", [True, False])
async def test_where_the_backend_has_logprobs_a_rating_is_its_expected_score(
    confidence: bool,
) -> None:
    """Every answer is rated "8"; the model is surest of answer 3. With logprobs read, answer 3
    is returned; with `confidence` off, the tie goes to the earliest (no answer is shared) and
    nothing asks for logprobs."""
    sureness = {"answer 1": 0.6, "answer 2": 0.7, "answer 3": 0.95}
    planner = Planner()

    def reply(call: Call, index: int) -> Reply:
        if kind(call) == "rate":  # logprobs only when asked, as a backend gives them
            sure = sureness[rated(call)]
            return rated_eight(call, sure)
        return planner(call, index)

    backend = scripted(reply, capabilities=Capabilities(logprobs=True))
    response = await chat(backend, CEPO, ponder={"cepo": {"confidence": confidence}, "trace": True})
    body = response.json()
    (scores,) = trace_steps(body, "scores")
    rates = calls_of(backend, "rate")
    assert len(rates) == 3
    if confidence:
        expected = expected_eights((0.6, 0.7, 0.95))
        assert scores["scores"] == pytest.approx(expected)
        assert scores["best"] == 2
        assert logprobs_asked(rates) == {(True, 10)}
        assert body["choices"][0]["message"]["content"] == "answer 3"
    else:
        assert (scores["scores"], scores["best"]) == ([8.0, 8.0, 8.0], 0)
        assert logprobs_asked(rates) == {(False, None)}
        assert body["choices"][0]["message"]["content"] == "answer 1"
    # plans, executions and refinements never ask for logprobs the client did not
    assert not any(c.sampling.logprobs for c in backend.calls if kind(c) != "rate")


async def test_a_backend_without_logprobs_is_not_asked_for_them() -> None:
    backend = scripted(Planner(scores={"answer 2": "9"}))
    response = await chat(backend, CEPO)
    assert response.json()["choices"][0]["message"]["content"] == "answer 2"
    assert not any(c.sampling.logprobs for c in backend.calls)
