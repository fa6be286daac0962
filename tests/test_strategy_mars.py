"""`mars`: agents at several temperatures, two verification passes each, improvement of what
failed, a vote among the verified solutions."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping

import pytest

from ponder.backends.base import Capabilities
from ponder.errors import BackendUnavailable
from ponder.strategies.mars import (
    IMPROVE_PROMPT,
    ISSUES_INTRO,
    SOLUTION_INTRO,
    VERDICT,
    VERDICTS,
    VERIFY_PROMPT,
)
from ponder.strategies.showing import verdict
from ponder.testing import Call, Reply, ScriptedBackend
from ponder.types import Completion
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

MARS = f"mars-{MODEL}"
CORRECT = "Every step holds.\nVERDICT: CORRECT"
WRONG = "Step 2 adds 3 instead of 2.\nVERDICT: INCORRECT"
TEMPERATURES = (0.3, 0.65, 1.0)

CONVERSATION = conversation(
    "Show your working.",
    "I have some apples.",
    "How many?",
    "Tom has 40 apples and buys 2 more. How many does he have?",
)
CLIENT = [(m["role"], m["content"]) for m in CONVERSATION]
REQUEST = CLIENT[-1][1]


def kind(call: Call) -> str:
    if call.prompt.endswith(VERIFY_PROMPT):
        return "verify"
    if call.prompt.endswith(IMPROVE_PROMPT):
        return "improve"
    return "agent"


def solution_in(call: Call) -> str:
    """The solution a verification or improvement call shows the model."""
    after = call.prompt.split(f"{SOLUTION_INTRO}\n\n", 1)[1]
    return after.split(f"\n\n{VERIFY_PROMPT}")[0].split(f"\n\n{ISSUES_INTRO}")[0]


class Agents:
    """A scripted model for mars: each agent's solution by its temperature, the reviews of each
    solution in the order its passes come (the last one repeated), and the improvement of each
    solution."""

    def __init__(
        self,
        solutions: Mapping[float, Reply],
        reviews: Mapping[str, list[str]] | None = None,
        improved: Mapping[str, str] | None = None,
        fail: str | None = None,
    ) -> None:
        self.solutions = solutions
        self.reviews = reviews or {}
        self.improved = improved or {}
        self.fail = fail
        self.checked: Counter[str] = Counter()
        self.replies: list[str] = []

    def __call__(self, call: Call, index: int) -> Reply:
        k = kind(call)
        if k == self.fail:
            return BackendUnavailable("down")
        reply: Reply
        if k == "agent":
            assert call.sampling.temperature is not None
            reply = self.solutions[call.sampling.temperature]
        elif k == "verify":
            solution = solution_in(call)
            said = self.reviews.get(solution, [CORRECT])
            reply = said[min(self.checked[solution], len(said) - 1)]
            self.checked[solution] += 1
        else:
            reply = self.improved[solution_in(call)]
        self.replies.append(reply if isinstance(reply, str) else reply.content or "")
        return reply


AGREE = {
    0.3: "40 + 2 = 42. The answer is 42.",
    0.65: "40 + 3 = 43. The answer is 43.",
    1.0: "He has \\boxed{42} apples.",
}


def calls_of(backend: ScriptedBackend, name: str) -> list[Call]:
    return [c for c in backend.calls if kind(c) == name]


def content(body: Mapping[str, object]) -> str:
    choices = body["choices"]
    assert isinstance(choices, list)
    return str(choices[0]["message"]["content"])


async def test_all_verified_the_majority_answer_wins_with_exact_calls_and_usage() -> None:
    model = Agents(AGREE)
    backend = scripted(model)
    response = await chat(backend, MARS, messages=CONVERSATION, ponder={"trace": True})
    assert response.status_code == 200
    body = response.json()
    assert content(body) == AGREE[0.3]
    assert len(backend.calls) == 9
    assert response.headers["x-ponder-backend-calls"] == "9"
    assert [kind(c) for c in backend.calls] == ["agent"] * 3 + ["verify"] * 6
    assert Counter(solution_in(c) for c in calls_of(backend, "verify")) == {
        s: 2 for s in AGREE.values()
    }
    (vote,) = trace_steps(body, "vote")
    assert (vote["verified"], vote["tally"], vote["chosen"]) == ([1, 2, 3], {"42": 2, "43": 1}, 1)
    (check,) = trace_steps(body, "verification")
    assert check["verdicts"] == [["CORRECT", "CORRECT"]] * 3
    assert not trace_steps(body, "improvement")
    assert body["usage"] == usage_for(backend, model.replies, answer=AGREE[0.3])


async def test_prompts_keep_the_conversation_and_carry_the_solution_and_issues() -> None:
    wrong = AGREE[0.65]
    model = Agents(
        AGREE, reviews={wrong: [CORRECT, WRONG]}, improved={wrong: "40 + 2 = 42. Answer: 42"}
    )
    backend = scripted(model)
    response = await chat(
        backend, MARS, messages=CONVERSATION, max_tokens=300, stop=["END"], seed=5
    )
    assert response.status_code == 200
    agents = calls_of(backend, "agent")
    assert sorted(c.sampling.temperature or 0 for c in agents) == list(TEMPERATURES)
    for call in agents:
        assert [(m.role, m.text) for m in call.messages] == CLIENT
        s = call.sampling
        assert (s.max_tokens, s.stop, s.seed, call.n) == (300, ("END",), 5, 1)
    for call in calls_of(backend, "verify"):
        solution = solution_in(call)
        assert [(m.role, m.text) for m in call.messages] == [
            *CLIENT[:-1],
            ("user", f"{REQUEST}\n\n{SOLUTION_INTRO}\n\n{solution}\n\n{VERIFY_PROMPT}"),
        ]
        s = call.sampling
        assert (s.temperature, s.max_tokens, s.stop, s.seed) == (0.7, 512, (), 5)
    (improve,) = calls_of(backend, "improve")
    # only the pass that failed is shown as the issues
    assert [(m.role, m.text) for m in improve.messages] == [
        *CLIENT[:-1],
        (
            "user",
            f"{REQUEST}\n\n{SOLUTION_INTRO}\n\n{wrong}\n\n{ISSUES_INTRO}\n\n{WRONG}\n\n"
            f"{IMPROVE_PROMPT}",
        ),
    ]
    s = improve.sampling
    assert (s.temperature, s.max_tokens, s.stop, s.seed) == (0.65, 300, ("END",), 5)


async def test_a_failed_solution_is_improved_and_verified_again() -> None:
    wrong = AGREE[0.65]
    better = "Tom has 40 + 2 = 42 apples. The answer is 42."
    model = Agents(AGREE, reviews={wrong: [WRONG, CORRECT]}, improved={wrong: better})
    backend = scripted(model)
    response = await chat(backend, MARS, ponder={"trace": True})
    body = response.json()
    assert content(body) == AGREE[0.3]
    assert len(backend.calls) == 12
    assert response.headers["x-ponder-backend-calls"] == "12"
    kinds = [kind(c) for c in backend.calls]
    assert kinds == ["agent"] * 3 + ["verify"] * 6 + ["improve"] + ["verify"] * 2
    assert [solution_in(c) for c in backend.calls[-2:]] == [better, better]
    (improvement,) = trace_steps(body, "improvement")
    assert improvement == {**improvement, "round": 1, "improved": [2], "solutions": [better]}
    rechecks = trace_steps(body, "verification")
    assert [(c["round"], c["solutions"]) for c in rechecks] == [(0, [1, 2, 3]), (1, [2])]
    assert rechecks[1]["verdicts"] == [["CORRECT", "CORRECT"]]
    (vote,) = trace_steps(body, "vote")
    assert (vote["verified"], vote["tally"]) == ([1, 2, 3], {"42": 3})
    assert vote["answers"] == ["42", "42", "42"]
    assert body["usage"] == usage_for(backend, model.replies, answer=AGREE[0.3])


async def test_only_verified_solutions_vote_when_there_are_any() -> None:
    solutions = {0.3: "The answer is 41.", 0.65: "The answer is 42.", 1.0: "So 42."}
    wrong = {s: [WRONG] for s in list(solutions.values())[1:]}
    model = Agents(
        solutions,
        reviews={**wrong, "Still 42.": [WRONG], "Again 42.": [CORRECT, WRONG]},
        improved={solutions[0.65]: "Still 42.", solutions[1.0]: "Again 42."},
    )
    backend = scripted(model)
    response = await chat(backend, MARS, ponder={"trace": True})
    body = response.json()
    # 42 is the majority of all three, but only the first solution passed both checks
    assert content(body) == "The answer is 41."
    assert len(backend.calls) == 3 + 6 + 2 + 4
    (vote,) = trace_steps(body, "vote")
    assert (vote["verified"], vote["tally"], vote["chosen"]) == ([1], {"41": 1}, 1)


async def test_a_tie_among_the_verified_goes_to_the_answer_more_solutions_give() -> None:
    # item 113 of the GSM8K run: 24, 6, 24, with the first 24 not verified
    solutions = {0.3: "The answer is 24.", 0.65: "The answer is 6.", 1.0: "So 24."}
    model = Agents(solutions, reviews={solutions[0.3]: [CORRECT, "Looks fine."]})
    backend = scripted(model)
    response = await chat(backend, MARS, ponder={"trace": True})
    body = response.json()
    assert content(body) == "So 24."
    assert len(backend.calls) == 9
    (vote,) = trace_steps(body, "vote")
    assert (vote["verified"], vote["tally"], vote["winner"], vote["chosen"]) == (
        [2, 3],
        {"6": 1, "24": 1},
        "24",
        3,
    )
    # with no other solution to decide it, the tie still goes to the earlier
    even = {0.3: "The answer is 5.", 0.65: "The answer is 6.", 1.0: "So 24."}
    model = Agents(even, reviews={even[0.3]: [CORRECT, "Looks fine."]})
    body = (await chat(scripted(model), MARS, ponder={"trace": True})).json()
    assert content(body) == "The answer is 6."
    (vote,) = trace_steps(body, "vote")
    assert (vote["winner"], vote["chosen"]) == ("6", 2)


async def test_with_nothing_verified_all_solutions_vote() -> None:
    model = Agents(AGREE, reviews={s: [WRONG] for s in AGREE.values()})
    backend = scripted(model)
    response = await chat(backend, MARS, ponder={"mars": {"rounds": 0}, "trace": True})
    body = response.json()
    assert content(body) == AGREE[0.3]
    assert len(backend.calls) == 9
    assert not calls_of(backend, "improve")
    (vote,) = trace_steps(body, "vote")
    assert (vote["verified"], vote["tally"], vote["winner"]) == ([], {"42": 2, "43": 1}, "42")


async def test_each_round_improves_what_still_fails() -> None:
    wrong = AGREE[0.65]
    model = Agents(
        AGREE,
        reviews={wrong: [WRONG], "try 2": [WRONG], "try 3": [CORRECT]},
        improved={wrong: "try 2", "try 2": "try 3"},
    )
    backend = scripted(model)
    response = await chat(backend, MARS, ponder={"mars": {"rounds": 3}, "trace": True})
    body = response.json()
    assert len(backend.calls) == 9 + 3 + 3  # the third round is not needed
    assert [i["improved"] for i in trace_steps(body, "improvement")] == [[2], [2]]
    (vote,) = trace_steps(body, "vote")
    assert vote["verified"] == [1, 2, 3]
    # 42 wins the vote, and the first solution gave it
    assert body["usage"] == usage_for(backend, model.replies, answer=AGREE[0.3])


async def test_a_review_without_a_verdict_line_neither_verifies_nor_asks_for_a_fix() -> None:
    """The 1.5B often approves in its own words and leaves the verdict line out: such a pass
    keeps its solution out of the verified vote, but is no reason to rewrite it."""
    vague = "Every step holds. The answer is 42."
    reviews = {AGREE[1.0]: [vague, CORRECT]}
    backend = scripted(Agents(AGREE, reviews=reviews))
    body = (await chat(backend, MARS, ponder={"trace": True})).json()
    assert len(backend.calls) == 9 and not calls_of(backend, "improve")
    (check,) = trace_steps(body, "verification")
    assert check["verdicts"] == [["CORRECT", "CORRECT"]] * 2 + [[None, "CORRECT"]]
    (vote,) = trace_steps(body, "vote")
    assert (vote["verified"], vote["tally"]) == ([1, 2], {"42": 1, "43": 1})
    assert content(body) == AGREE[0.3]

    streamed = await chat(scripted(Agents(AGREE, reviews=reviews)), MARS, stream=True)
    reasoning = streamed_text(streamed.text, "reasoning_content")
    assert "Check 3: no verdict, CORRECT\n" in reasoning


async def test_only_the_passes_that_said_incorrect_are_the_issues() -> None:
    wrong = AGREE[0.65]
    better = "Tom has 40 + 2 = 42 apples. The answer is 42."
    vague = "Step 1 holds."
    model = Agents(AGREE, reviews={wrong: [vague, WRONG, CORRECT]}, improved={wrong: better})
    backend = scripted(model)
    response = await chat(backend, MARS)
    assert content(response.json()) == AGREE[0.3]
    (improve,) = calls_of(backend, "improve")
    assert f"{ISSUES_INTRO}\n\n{WRONG}\n\n{IMPROVE_PROMPT}" in improve.prompt
    assert vague not in improve.prompt


async def test_solutions_without_an_answer_return_the_first_as_it_is() -> None:
    cut = {t: Completion(f"Step {t}: 40 + 2", finish_reason="length") for t in TEMPERATURES}
    model = Agents(cut)
    backend = scripted(model)
    response = await chat(backend, MARS, max_tokens=8, ponder={"trace": True})
    body = response.json()
    assert content(body) == "Step 0.3: 40 + 2"
    assert body["choices"][0]["finish_reason"] == "length"
    (vote,) = trace_steps(body, "vote")
    assert (vote["winner"], vote["tally"], vote["chosen"]) == (None, {}, 1)


@pytest.mark.parametrize(
    ("review", "said"),
    [
        ("ok\nVERDICT: CORRECT", "CORRECT"),
        ("**Verdict:** incorrect.", "INCORRECT"),
        ("VERDICT: CORRECT\nthen\n`VERDICT: INCORRECT`", "INCORRECT"),
        ("VERDICT: maybe", None),
        ("It is correct.", None),
        ("", None),
    ],
)
def test_verdict_lines(review: str, said: str | None) -> None:
    assert verdict(review, VERDICTS, VERDICT) == said


async def test_agents_then_passes_then_improvements_are_in_flight_at_once() -> None:
    wrong = {AGREE[0.3]: [WRONG, CORRECT], AGREE[1.0]: [CORRECT, WRONG]}
    model = Agents(AGREE, reviews=wrong, improved={s: "The answer is 42." for s in wrong})
    improving = 0
    both_improving = asyncio.Event()
    open_gate = asyncio.Event()

    async def reply(call: Call, index: int) -> Reply:
        nonlocal improving
        if kind(call) == "improve":
            improving += 1
            if improving == 2:
                both_improving.set()
            await open_gate.wait()  # no improvement may finish before both have started
        return model(call, index)

    backend = scripted(reply)
    backend.hold()
    request = asyncio.create_task(chat(backend, MARS))
    await backend.wait_for_in_flight(3)
    assert [kind(c) for c in backend.calls] == ["agent"] * 3
    backend.release()
    backend.hold()
    await backend.wait_for_in_flight(6)
    assert [kind(c) for c in backend.calls[3:]] == ["verify"] * 6
    backend.release()
    async with asyncio.timeout(5):
        await both_improving.wait()
    assert backend.in_flight == 2
    assert [kind(c) for c in backend.calls[9:]] == ["improve"] * 2
    open_gate.set()
    response = await request
    assert response.status_code == 200
    assert backend.max_in_flight == 6
    assert len(backend.calls) == 9 + 2 + 4


async def test_native_n_draws_both_passes_in_one_call() -> None:
    model = Agents(AGREE)
    backend = scripted(model, capabilities=Capabilities(native_n=True))
    response = await chat(backend, MARS)
    assert content(response.json()) == AGREE[0.3]
    assert [c.n for c in backend.calls] == [1, 1, 1, 2, 2, 2]
    assert response.headers["x-ponder-backend-calls"] == "6"
    assert response.json()["usage"] == usage_for(backend, model.replies, answer=AGREE[0.3])


async def test_streams_the_working_as_reasoning_and_the_chosen_solution_as_content() -> None:
    wrong = AGREE[0.65]
    model = Agents(AGREE, reviews={wrong: [WRONG]}, improved={wrong: "The answer is 42."})
    backend = scripted(model)
    response = await chat(backend, MARS, stream=True, stream_options={"include_usage": True})
    assert response.status_code == 200
    assert streamed_text(response.text, "reasoning_content") == (
        f"Agent 1 (temperature 0.3): {AGREE[0.3]}\n"
        f"Agent 2 (temperature 0.65): {AGREE[0.65]}\n"
        f"Agent 3 (temperature 1): {AGREE[1.0]}\n"
        "Check 1: CORRECT, CORRECT\nCheck 2: INCORRECT, INCORRECT\nCheck 3: CORRECT, CORRECT\n"
        "Improved 2: The answer is 42.\nCheck 2: CORRECT, CORRECT\n"
        "Vote among verified solutions: 42 (3 of 3)\n"
    )
    assert streamed_text(response.text) == AGREE[0.3]
    assert not any(c.stream for c in backend.calls)
    usage = usage_for(backend, model.replies, answer=AGREE[0.3])
    assert sse_events(response.text)[-1]["usage"] == usage


@pytest.mark.parametrize("failing", ["agent", "verify", "improve"])
async def test_a_failed_call_is_an_openai_shaped_503(failing: str) -> None:
    wrong = AGREE[0.65]
    model = Agents(AGREE, reviews={wrong: [WRONG]}, improved={wrong: "42"}, fail=failing)
    response = await chat(scripted(model), MARS)
    assert_error(response, 503, type="api_error", code="backend_unavailable", message="down")


async def test_a_failed_improvement_in_a_stream_ends_it_with_the_error() -> None:
    wrong = AGREE[0.65]
    model = Agents(AGREE, reviews={wrong: [WRONG]}, improved={wrong: "42"}, fail="improve")
    backend = scripted(model)
    response = await chat(backend, MARS, stream=True)
    assert response.status_code == 200  # the agents' reasoning lines went out first
    assert '"reasoning_content":"Check 2: INCORRECT, INCORRECT\\n"' in response.text
    assert stream_error(response.text)["code"] == "backend_unavailable"


@pytest.mark.parametrize("limit", [2, 8, 11])
async def test_a_budget_below_what_mars_needs_is_a_400(limit: int) -> None:
    wrong = AGREE[0.65]
    backend = scripted(Agents(AGREE, reviews={wrong: [WRONG]}, improved={wrong: "42"}))
    response = await chat(backend, MARS, ponder={"max_backend_calls": limit})
    assert_error(response, 400, code="budget_exceeded", param="ponder.max_backend_calls")
    assert len(backend.calls) == limit


async def test_a_budget_that_covers_mars_is_enough() -> None:
    wrong = AGREE[0.65]
    backend = scripted(Agents(AGREE, reviews={wrong: [WRONG]}, improved={wrong: "42"}))
    response = await chat(backend, MARS, ponder={"max_backend_calls": 12})
    assert response.status_code == 200
    assert len(backend.calls) == 12


async def test_options_set_agents_and_temperatures() -> None:
    solutions = {0.2: "The answer is 5.", 0.4: "The answer is 6.", 0.6: "6", 0.8: "5", 1.0: "6"}
    backend = scripted(Agents(solutions))
    response = await chat(
        backend,
        MARS,
        ponder={
            "mars": {
                "agents": 5,
                "min_temperature": 0.2,
                "max_temperature": 1.0,
                "verify_temperature": 0.1,
                "verify_tokens": 64,
            }
        },
    )
    assert content(response.json()) == "The answer is 6."
    assert len(backend.calls) == 15
    temperatures = sorted(c.sampling.temperature or 0 for c in calls_of(backend, "agent"))
    assert temperatures == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert {
        (c.sampling.temperature, c.sampling.max_tokens) for c in calls_of(backend, "verify")
    } == {(0.1, 64)}


async def test_optillm_approach_mars_selects_it() -> None:
    backend = scripted(Agents(AGREE))
    response = await chat(backend, MODEL, optillm_approach="mars")
    assert content(response.json()) == AGREE[0.3]
    assert response.headers["x-ponder-backend-calls"] == "9"
    assert [kind(c) for c in backend.calls] == ["agent"] * 3 + ["verify"] * 6
