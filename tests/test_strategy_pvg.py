"""`pvg`: prover-verifier game: helpful and sneaky solutions, a verifier's rating of each,
the helpful prover improving on the best one, the best helpful solution returned."""

from __future__ import annotations

import asyncio

import pytest

from ponder.backends.base import Capabilities
from ponder.errors import BackendUnavailable
from ponder.strategies.pvg import (
    EARLIER_INTRO,
    HELPFUL_INSTRUCTIONS,
    IMPROVE_PROMPT,
    SNEAKY_INSTRUCTIONS,
    SOLUTION_INTRO,
    VERIFY_PROMPT,
)
from ponder.strategies.showing import CUT_OFF_NOTE
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

PVG = f"pvg-{MODEL}"
SYSTEM = "Answer briefly."
CONVERSATION = conversation(SYSTEM, "I have a maths question.", "Go ahead.", "What is 6 x 7?")
CLIENT = [(m["role"], m["content"]) for m in CONVERSATION]
REQUEST = CLIENT[-1][1]


def kind(call: Call) -> str:
    if call.prompt.endswith(VERIFY_PROMPT):
        return "verify"
    if SNEAKY_INSTRUCTIONS in call.messages[0].text:
        return "sneaky"
    if call.prompt.endswith(IMPROVE_PROMPT):
        return "improve"
    return "helpful"


def verified(call: Call) -> str:
    """The solution a verifier call shows."""
    text = call.prompt.split(f"\n\n{SOLUTION_INTRO}\n\n", 1)[1]
    return text.removesuffix(f"\n\n{VERIFY_PROMPT}")


class Game:
    """A scripted model for pvg: helpful solutions "helpful 1", "helpful 2", ... in the order
    they are asked for (improved ones included), sneaky ones "sneaky 1", ...; the verifier
    rates a solution from `scores` (by its text), else "5"."""

    def __init__(
        self,
        scores: dict[str, Reply] | None = None,
        solutions: dict[str, Reply] | None = None,
        fail: str | None = None,
    ) -> None:
        self.scores = scores or {}
        self.solutions = solutions or {}
        self.fail = fail
        self.counts = {"helpful": 0, "sneaky": 0}
        self.replies: list[str] = []

    def __call__(self, call: Call, index: int) -> Reply:
        k = kind(call)
        if k == self.fail:
            return BackendUnavailable("down")
        reply: Reply
        if k == "verify":
            reply = self.scores.get(verified(call), "5")
        else:
            side = "sneaky" if k == "sneaky" else "helpful"
            self.counts[side] += 1
            name = f"{side} {self.counts[side]}"
            reply = self.solutions.get(name, name)
        text = reply.content if isinstance(reply, Completion) else reply
        if isinstance(text, str):
            self.replies.append(text)
        return reply


def calls_of(backend: ScriptedBackend, name: str) -> list[Call]:
    return [c for c in backend.calls if kind(c) == name]


def turns(call: Call) -> list[tuple[str, str]]:
    return [(m.role, m.text) for m in call.messages]


async def test_the_best_rated_helpful_solution_wins_with_exact_calls_and_usage() -> None:
    game = Game(scores={"helpful 2": "8", "helpful 5": "9/10", "sneaky 1": "10"})
    backend = scripted(game)
    response = await chat(backend, PVG, messages=CONVERSATION, ponder={"trace": True})
    assert response.status_code == 200
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "helpful 5"
    assert len(backend.calls) == 24
    assert response.headers["x-ponder-backend-calls"] == "24"
    assert [kind(c) for c in backend.calls] == (
        ["helpful"] * 3 + ["sneaky"] * 3 + ["verify"] * 6
    ) + (["improve"] * 3 + ["sneaky"] * 3 + ["verify"] * 6)
    assert body["usage"] == usage_for(backend, game.replies, answer="helpful 5")
    first, second = trace_steps(body, "round")
    assert first["helpful"] == ["helpful 1", "helpful 2", "helpful 3"]
    assert first["helpful_scores"] == [5.0, 8.0, 5.0]
    assert first["sneaky_scores"] == [10.0, 5.0, 5.0]
    assert second["helpful"] == ["helpful 4", "helpful 5", "helpful 6"]
    assert second["helpful_scores"] == [5.0, 9.0, 5.0]
    (chosen,) = trace_steps(body, "best")
    assert (chosen["best"], chosen["scores"]) == (4, [5.0, 8.0, 5.0, 5.0, 9.0, 5.0])
    assert chosen["answers"] == ["1", "2", "3", "4", "5", "6"]


async def test_prompts_keep_the_conversation_and_put_solutions_after_the_request() -> None:
    backend = scripted(Game(scores={"helpful 3": "7"}))
    await chat(backend, PVG, messages=CONVERSATION)
    helpful_system = ("system", f"{SYSTEM}\n\n{HELPFUL_INSTRUCTIONS}")
    for call in calls_of(backend, "helpful"):
        assert turns(call) == [helpful_system, *CLIENT[1:]]
    for call in calls_of(backend, "sneaky"):
        assert turns(call) == [("system", f"{SYSTEM}\n\n{SNEAKY_INSTRUCTIONS}"), *CLIENT[1:]]
    # the second round's helpful prover improves on the best-rated solution of the first
    for call in calls_of(backend, "improve"):
        assert turns(call) == [
            helpful_system,
            *CLIENT[1:-1],
            ("user", f"{REQUEST}\n\n{EARLIER_INTRO}\n\nhelpful 3\n\n{IMPROVE_PROMPT}"),
        ]
    # the verifier sees the client's own conversation, the solution after the request
    verifies = calls_of(backend, "verify")
    assert sorted(verified(c) for c in verifies) == sorted(
        [f"helpful {i}" for i in range(1, 7)] + [f"sneaky {i}" for i in range(1, 7)]
    )
    for call in verifies:
        assert turns(call) == [
            *CLIENT[:-1],
            ("user", f"{REQUEST}\n\n{SOLUTION_INTRO}\n\n{verified(call)}\n\n{VERIFY_PROMPT}"),
        ]


async def test_sampling_of_solutions_and_verifier() -> None:
    backend = scripted(Game())
    await chat(backend, PVG, max_tokens=60, stop=["END"], seed=3, ponder={"pvg": {"rounds": 1}})
    for call in calls_of(backend, "helpful") + calls_of(backend, "sneaky"):
        s = call.sampling
        assert (s.temperature, s.max_tokens, s.stop, s.seed) == (0.7, 60, ("END",), 3)
    for call in calls_of(backend, "verify"):
        s = call.sampling
        assert (s.temperature, s.max_tokens, s.stop, s.seed) == (0.0, 8, (), 3)
    backend = scripted(Game())
    await chat(backend, PVG, temperature=1.1, ponder={"pvg": {"rounds": 1, "score_tokens": 3}})
    assert {c.sampling.temperature for c in calls_of(backend, "helpful")} == {1.1}
    assert {c.sampling.max_tokens for c in calls_of(backend, "verify")} == {3}


async def test_ties_go_to_the_shared_answer_then_the_earliest() -> None:
    solutions: dict[str, Reply] = {
        "helpful 1": "6 x 7 = 43",
        "helpful 2": "Six sevens: 42.",
        "helpful 3": "The answer is 42.",
    }
    backend = scripted(Game(solutions=solutions))  # every rating is 5
    response = await chat(backend, PVG, ponder={"pvg": {"rounds": 1}})
    assert response.json()["choices"][0]["message"]["content"] == "Six sevens: 42."
    backend = scripted(Game(scores={"helpful 2": "7", "helpful 3": "7"}))
    response = await chat(backend, PVG, ponder={"pvg": {"rounds": 1}})
    assert response.json()["choices"][0]["message"]["content"] == "helpful 2"


async def test_a_solution_cut_off_at_max_tokens_is_marked_and_loses_to_a_finished_one() -> None:
    cut = Completion("6 x 7: first 6 x 5 = 30, then", finish_reason="length")
    game = Game(solutions={"helpful 1": cut}, scores={cut.content or "": "10"})
    backend = scripted(game)
    response = await chat(backend, PVG, max_tokens=12, ponder={"pvg": {"rounds": 2}})
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "helpful 2"
    assert body["choices"][0]["finish_reason"] == "stop"
    marked = f"{CUT_OFF_NOTE}\n\n{cut.content}"
    assert marked in [verified(c) for c in calls_of(backend, "verify")]
    # the best so far is a finished solution, so round 2 improves on that one
    assert all("helpful 2" in c.prompt for c in calls_of(backend, "improve"))


async def test_sneaky_solutions_are_never_returned() -> None:
    backend = scripted(Game(scores={"sneaky 2": "10", "sneaky 5": "10", "helpful 1": "1"}))
    response = await chat(backend, PVG)
    assert response.json()["choices"][0]["message"]["content"] == "helpful 2"


async def test_helpful_and_sneaky_run_at_once_then_every_verifier_at_once() -> None:
    verifying = 0
    all_verifying = asyncio.Event()
    gate = asyncio.Event()
    game = Game()

    async def reply(call: Call, index: int) -> Reply:
        nonlocal verifying
        if kind(call) == "verify":
            verifying += 1
            if verifying == 6:
                all_verifying.set()
            await gate.wait()  # no verifier call may finish before all six have started
        return game(call, index)

    backend = scripted(reply)
    backend.hold()
    task = asyncio.create_task(chat(backend, PVG, ponder={"pvg": {"rounds": 1}}))
    await backend.wait_for_in_flight(6)
    assert sorted(kind(c) for c in backend.calls) == ["helpful"] * 3 + ["sneaky"] * 3
    backend.release()
    async with asyncio.timeout(5):
        await all_verifying.wait()
    assert backend.in_flight == 6
    gate.set()
    response = await task
    assert response.status_code == 200
    assert backend.max_in_flight == 6
    assert len(backend.calls) == 12


async def test_native_n_draws_each_side_in_one_call() -> None:
    game = Game(scores={"helpful 1": "9"})
    backend = scripted(game, capabilities=Capabilities(native_n=True))
    response = await chat(backend, PVG)
    assert response.json()["choices"][0]["message"]["content"] == "helpful 1"
    assert len(backend.calls) == 16
    assert response.headers["x-ponder-backend-calls"] == "16"
    assert [c.n for c in backend.calls] == ([3, 3] + [1] * 6) * 2
    assert response.json()["usage"] == usage_for(backend, game.replies, answer="helpful 1")


async def test_options_change_rounds_and_solutions() -> None:
    backend = scripted(Game())
    response = await chat(backend, PVG, ponder={"pvg": {"rounds": 3, "solutions": 2}})
    assert response.status_code == 200
    assert len(backend.calls) == 3 * (2 + 2 + 4)
    assert len(calls_of(backend, "improve")) == 4


async def test_streams_ratings_as_reasoning_then_the_chosen_solution() -> None:
    backend = scripted(Game(scores={"helpful 2": "8"}))
    response = await chat(backend, PVG, stream=True, ponder={"pvg": {"rounds": 2, "solutions": 2}})
    assert response.status_code == 200
    assert streamed_text(response.text, "reasoning_content") == (
        "Helpful 1 scored 5: helpful 1\nHelpful 2 scored 8: helpful 2\n"
        "Sneaky 1 scored 5\nSneaky 2 scored 5\n"
        "Round 2 improves on helpful solution 2\n"
        "Helpful 3 scored 5: helpful 3\nHelpful 4 scored 5: helpful 4\n"
        "Sneaky 3 scored 5\nSneaky 4 scored 5\n"
        "Chose helpful solution 2 (scored 8)\n"
    )
    assert streamed_text(response.text) == "helpful 2"
    response = await chat(scripted(Game()), PVG, stream=True, ponder={"reasoning": False})
    assert streamed_text(response.text, "reasoning_content") == ""
    assert streamed_text(response.text) == "helpful 1"


@pytest.mark.parametrize("failing", ["helpful", "sneaky", "verify", "improve"])
async def test_a_failed_call_is_an_openai_shaped_503(failing: str) -> None:
    backend = scripted(Game(fail=failing))
    response = await chat(backend, PVG)
    assert_error(
        response, 503, message="down", type="api_error", param=None, code="backend_unavailable"
    )


async def test_a_failure_in_the_second_round_ends_the_stream_with_the_error() -> None:
    backend = scripted(Game(fail="improve"))
    response = await chat(backend, PVG, stream=True)
    assert response.status_code == 200  # the first round's reasoning went out first
    assert "Helpful 1 scored 5" in response.text
    assert stream_error(response.text)["code"] == "backend_unavailable"
    assert "helpful 4" not in response.text  # nothing of round 2 went out


@pytest.mark.parametrize("limit", [1, 5, 12, 23])
async def test_a_budget_below_the_calls_needed_is_a_400(limit: int) -> None:
    backend = scripted(Game())
    response = await chat(backend, PVG, ponder={"max_backend_calls": limit})
    assert_error(response, 400, code="budget_exceeded", param="ponder.max_backend_calls")
    assert len(backend.calls) == limit


async def test_a_budget_that_covers_the_game_is_enough() -> None:
    response = await chat(scripted(Game()), PVG, ponder={"max_backend_calls": 24})
    assert response.status_code == 200


async def test_optillm_approach_selects_it() -> None:
    backend = scripted(Game(scores={"helpful 6": "9"}))
    response = await chat(backend, MODEL, optillm_approach="pvg")
    assert response.json()["choices"][0]["message"]["content"] == "helpful 6"
    assert response.headers["x-ponder-backend-calls"] == "24"


async def test_request_n_runs_independent_games() -> None:
    backend = scripted(Game(scores={"helpful 1": "9", "helpful 2": "9"}))
    response = await chat(backend, PVG, n=2, ponder={"pvg": {"rounds": 1, "solutions": 1}})
    choices = response.json()["choices"]
    assert len(backend.calls) == 2 * 4
    assert sorted(c["message"]["content"] for c in choices) == ["helpful 1", "helpful 2"]


@pytest.mark.parametrize("confidence", [True, False])
async def test_where_the_backend_has_logprobs_a_rating_is_its_expected_score(
    confidence: bool,
) -> None:
    """Every solution is rated "8"; the verifier is surest of helpful 3. With logprobs read,
    helpful 3 is returned; with `confidence` off, the tie goes to the earliest (no answer is
    shared) and nothing asks for logprobs."""
    sureness = {"helpful 1": 0.6, "helpful 2": 0.7, "helpful 3": 0.95}
    sureness |= {"sneaky 1": 0.9, "sneaky 2": 0.5, "sneaky 3": 0.8}
    game = Game()

    def reply(call: Call, index: int) -> Reply:
        if kind(call) == "verify":  # logprobs only when asked, as a backend gives them
            sure = sureness[verified(call)]
            return rated_eight(call, sure)
        return game(call, index)

    backend = scripted(reply, capabilities=Capabilities(logprobs=True))
    options = {"rounds": 1, "confidence": confidence}
    response = await chat(backend, PVG, ponder={"pvg": options, "trace": True})
    body = response.json()
    (played,) = trace_steps(body, "round")
    verifies = calls_of(backend, "verify")
    assert len(verifies) == 6
    if confidence:
        expected = expected_eights((0.6, 0.7, 0.95))
        assert played["helpful_scores"] == pytest.approx(expected)
        assert played["sneaky_scores"] == pytest.approx(expected_eights((0.9, 0.5, 0.8)))
        asked = logprobs_asked(verifies)
        assert asked == {(True, 10)}
        assert body["choices"][0]["message"]["content"] == "helpful 3"
    else:
        assert (played["helpful_scores"], played["sneaky_scores"]) == ([8.0] * 3, [8.0] * 3)
        asked = logprobs_asked(verifies)
        assert asked == {(False, None)}
        assert body["choices"][0]["message"]["content"] == "helpful 1"
    # the provers never ask for logprobs the client did not
    assert not any(c.sampling.logprobs for c in backend.calls if kind(c) != "verify")


async def test_a_backend_without_logprobs_is_not_asked_for_them() -> None:
    backend = scripted(Game(scores={"helpful 5": "9"}))
    response = await chat(backend, PVG)
    assert response.json()["choices"][0]["message"]["content"] == "helpful 5"
    assert not any(c.sampling.logprobs for c in backend.calls)
