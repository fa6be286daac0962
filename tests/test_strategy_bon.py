"""`bon`: best-of-n, candidates sampled at once, scored at once, the best one returned."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest

from ponder.backends.base import Capabilities
from ponder.errors import BackendUnavailable
from ponder.strategies.bon import SCORE_PROMPT
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
    streamed_text,
    trace_steps,
    usage_for,
)

BON = f"bon-{MODEL}"

CANDIDATES = ["Paris, probably.", "The capital of France is Paris.", "Lyon."]
SCORES = {CANDIDATES[0]: "6", CANDIDATES[1]: "9/10", CANDIDATES[2]: "no idea"}


def judge(
    candidates: list[str], scores: Mapping[str, Reply]
) -> tuple[Callable[[Call, int], Reply], list[str]]:
    """A reply function: the candidates in order, then each score call's score of the candidate
    it shows. Also returns the list of every text replied, for usage checks."""
    replied: list[str] = []
    drawn = iter(candidates)

    def reply(call: Call, index: int) -> Reply:
        if call.prompt == SCORE_PROMPT:
            answer: Reply = scores[call.messages[-2].text]
        else:
            answer = next(drawn)
        if isinstance(answer, str):
            replied.append(answer)
        return answer

    return reply, replied


def score_calls(backend: ScriptedBackend) -> list[Call]:
    return [c for c in backend.calls if c.prompt == SCORE_PROMPT]


async def test_best_scored_candidate_wins_with_exact_calls_prompts_and_usage() -> None:
    reply, replied = judge(CANDIDATES, SCORES)
    backend = scripted(reply)
    messages = conversation("Answer in one sentence.", "Hi", "Hello!", "Capital of France?")
    response = await chat(
        backend, BON, messages=messages, max_tokens=40, stop=["\n\n"], ponder={"trace": True}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["choices"][0]["message"]["content"] == CANDIDATES[1]
    assert len(backend.calls) == 6
    assert response.headers["x-ponder-backend-calls"] == "6"
    client_turns = [(m["role"], m["content"]) for m in messages]
    drafts = backend.calls[:3]
    for call in drafts:
        assert [(m.role, m.text) for m in call.messages] == client_turns
        assert call.n == 1
        assert call.sampling.temperature == 0.7  # the client gave none
        assert (call.sampling.max_tokens, call.sampling.stop) == (40, ("\n\n",))
    scored = score_calls(backend)
    assert backend.calls[3:] == scored
    assert sorted(c.messages[-2].text for c in scored) == sorted(CANDIDATES)
    for call in scored:
        assert [(m.role, m.text) for m in call.messages] == [
            *client_turns,
            ("assistant", call.messages[-2].text),
            ("user", SCORE_PROMPT),
        ]
        assert call.sampling.temperature == 0.0
        assert call.sampling.max_tokens == 8
        assert call.sampling.stop == ()
    assert body["usage"] == usage_for(backend, replied, answer=CANDIDATES[1])
    steps = {s["step"]: s for s in body["ponder"]["trace"]}
    assert steps["scores"]["scores"] == [6.0, 9.0, 0.0]
    assert steps["scores"]["best"] == 1


async def test_a_tie_goes_to_the_answer_most_candidates_share() -> None:
    candidates = ["Each box holds 4, so 12.", "3 boxes of 5: 15.", "The answer is 15."]
    reply, _ = judge(candidates, {c: "10" for c in candidates})
    backend = scripted(reply)
    response = await chat(backend, BON, ponder={"trace": True})
    body = response.json()
    assert body["choices"][0]["message"]["content"] == candidates[1]
    assert len(backend.calls) == 6
    steps = {s["step"]: s for s in body["ponder"]["trace"]}
    assert (steps["scores"]["scores"], steps["scores"]["best"]) == ([10.0, 10.0, 10.0], 1)


async def test_a_shared_answer_beats_a_higher_rating_and_the_rating_chooses_within_it() -> None:
    """On the 1.5B the judge chose worse than the candidates' agreement (44% against 60%)."""
    candidates = ["Each box holds 4, so 12.", "3 boxes of 5: 15.", "The answer is 15."]
    scores = {candidates[0]: "9", candidates[1]: "5", candidates[2]: "6"}
    reply, _ = judge(candidates, scores)
    backend = scripted(reply)
    body = (await chat(backend, BON, ponder={"trace": True})).json()
    assert body["choices"][0]["message"]["content"] == candidates[2]
    steps = {s["step"]: s for s in body["ponder"]["trace"]}
    assert (steps["scores"]["scores"], steps["scores"]["best"]) == ([9.0, 5.0, 6.0], 2)
    # what the choice was made from, for a replay in the rating's order
    assert (steps["scores"]["answers"], steps["scores"]["cut_off"]) == (["12", "15", "15"], [])


async def test_a_candidate_cut_off_at_max_tokens_loses_to_a_finished_one() -> None:
    cut = Completion("First 6 * 7 = 42, then 42 + 8 = 50, and", finish_reason="length")
    candidates: list[Reply] = [cut, "It is 48.", "It is 49."]
    drawn = iter(candidates)

    def reply(call: Call, index: int) -> Reply:
        if call.prompt == SCORE_PROMPT:
            return "10" if call.messages[-2].text == cut.content else "3"
        return next(drawn)

    backend = scripted(reply)
    response = await chat(backend, BON, max_tokens=16, ponder={"trace": True})
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "It is 48."
    assert body["choices"][0]["finish_reason"] == "stop"
    assert len(backend.calls) == 6
    (scores,) = trace_steps(body, "scores")
    assert (scores["answers"], scores["cut_off"], scores["best"]) == ([None, "48", "49"], [1], 1)


async def test_ties_go_to_the_first_and_unparseable_scores_count_as_zero() -> None:
    reply, _ = judge(CANDIDATES, {CANDIDATES[0]: "x", CANDIDATES[1]: "7", CANDIDATES[2]: "7."})
    backend = scripted(reply)
    response = await chat(backend, BON)
    assert response.json()["choices"][0]["message"]["content"] == CANDIDATES[1]
    reply, _ = judge(CANDIDATES, {c: "cannot say" for c in CANDIDATES})
    response = await chat(scripted(reply), BON)
    assert response.json()["choices"][0]["message"]["content"] == CANDIDATES[0]


async def test_client_temperature_and_options() -> None:
    candidates = [f"answer {i}" for i in range(5)]
    reply, _ = judge(candidates, {c: str(i) for i, c in enumerate(candidates)})
    backend = scripted(reply)
    response = await chat(
        backend,
        BON,
        temperature=0.9,
        ponder={"bon": {"candidates": 5, "score_tokens": 3, "temperature": 1.2}},
    )
    assert response.json()["choices"][0]["message"]["content"] == "answer 4"
    assert len(backend.calls) == 10
    assert [c.sampling.temperature for c in backend.calls[:5]] == [0.9] * 5
    assert [(c.sampling.temperature, c.sampling.max_tokens) for c in score_calls(backend)] == [
        (0.0, 3)
    ] * 5


async def test_candidates_run_at_once_then_scores_run_at_once() -> None:
    drawn = iter(CANDIDATES)
    scoring = 0
    all_scoring = asyncio.Event()
    open_gate = asyncio.Event()

    async def reply(call: Call, index: int) -> Reply:
        nonlocal scoring
        if call.prompt != SCORE_PROMPT:
            return next(drawn)
        scoring += 1
        if scoring == 3:
            all_scoring.set()
        await open_gate.wait()  # no score call may finish before all three have started
        return SCORES[call.messages[-2].text]

    backend = scripted(reply)
    backend.hold()
    task = asyncio.create_task(chat(backend, BON))
    await backend.wait_for_in_flight(3)
    assert len(backend.calls) == 3
    backend.release()
    async with asyncio.timeout(5):
        await all_scoring.wait()
    assert len(score_calls(backend)) == 3
    assert backend.in_flight == 3
    open_gate.set()
    response = await task
    assert response.json()["choices"][0]["message"]["content"] == CANDIDATES[1]
    assert backend.max_in_flight == 3
    assert len(backend.calls) == 6


async def test_native_n_backend_draws_the_candidates_in_one_call() -> None:
    replied: list[str] = []
    drawn = iter(CANDIDATES)

    def reply(call: Call, index: int) -> str:
        text = SCORES[call.messages[-2].text] if call.prompt == SCORE_PROMPT else next(drawn)
        replied.append(text)
        return text

    backend = scripted(reply, capabilities=Capabilities(native_n=True))
    response = await chat(backend, BON)
    body = response.json()
    assert body["choices"][0]["message"]["content"] == CANDIDATES[1]
    assert len(backend.calls) == 4
    assert response.headers["x-ponder-backend-calls"] == "4"
    assert [c.n for c in backend.calls] == [3, 1, 1, 1]
    assert body["usage"] == usage_for(backend, replied, answer=CANDIDATES[1])


async def test_a_failing_score_call_is_an_openai_shaped_error() -> None:
    reply, _ = judge(CANDIDATES, {**SCORES, CANDIDATES[2]: BackendUnavailable("scorer down")})
    backend = scripted(reply)
    response = await chat(backend, BON)
    assert_error(response, 503, type="api_error", code="backend_unavailable", message="scorer down")


async def test_a_budget_below_the_calls_needed_is_a_400() -> None:
    for limit in (2, 5):
        reply, _ = judge(CANDIDATES, SCORES)
        backend = scripted(reply)
        response = await chat(backend, BON, ponder={"max_backend_calls": limit})
        assert_error(response, 400, code="budget_exceeded", param="ponder.max_backend_calls")
        assert len(backend.calls) == limit


async def test_streams_the_scores_as_reasoning_then_the_best_candidate() -> None:
    reply, _ = judge(CANDIDATES, SCORES)
    backend = scripted(reply)
    response = await chat(backend, BON, stream=True)
    assert response.status_code == 200
    assert streamed_text(response.text, "reasoning_content") == (
        "Candidate 1 scored 6\nCandidate 2 scored 9\nCandidate 3 scored 0\n"
    )
    assert streamed_text(response.text) == CANDIDATES[1]

    reply, _ = judge(CANDIDATES, SCORES)
    response = await chat(scripted(reply), BON, stream=True, ponder={"reasoning": False})
    assert streamed_text(response.text, "reasoning_content") == ""
    assert streamed_text(response.text) == CANDIDATES[1]


async def test_request_n_runs_independent_selections() -> None:
    candidates = [f"answer {i}" for i in range(6)]
    reply, _ = judge(candidates, {c: str(i) for i, c in enumerate(candidates)})
    backend = scripted(reply)
    response = await chat(backend, BON, n=2)
    choices = response.json()["choices"]
    assert len(backend.calls) == 12
    assert len(choices) == 2
    assert {c["message"]["content"] for c in choices} <= set(candidates)
    assert choices[0]["message"]["content"] != choices[1]["message"]["content"]


async def test_optillm_approach_selects_it() -> None:
    reply, _ = judge(CANDIDATES, SCORES)
    backend = scripted(reply)
    response = await chat(backend, MODEL, optillm_approach="bon")
    assert response.json()["choices"][0]["message"]["content"] == CANDIDATES[1]
    assert len(backend.calls) == 6


async def test_bad_options_are_400s_naming_the_field() -> None:
    for field, value in (
        ("candidates", 1),
        ("candidates", 17),
        ("score_tokens", 0),
        ("temperature", 0),
        ("confidence", "maybe"),
    ):
        backend = scripted()
        response = await chat(backend, BON, ponder={"bon": {field: value}})
        assert_error(response, 400, param=f"ponder.bon.{field}")
        assert backend.calls == []


@pytest.mark.parametrize("confidence", [True, False])
async def test_where_the_backend_has_logprobs_a_rating_is_its_expected_score(
    confidence: bool,
) -> None:
    """Every candidate is rated "8"; the model is surest of the last. With logprobs read, the
    last is returned; with `confidence` off, the tie goes to the first (no answer is shared)
    and nothing asks for logprobs."""
    candidates = ["It is 41.", "It is 42.", "It is 43."]
    sureness = dict(zip(candidates, (0.6, 0.7, 0.95), strict=True))
    drawn = iter(candidates)

    def reply(call: Call, index: int) -> Reply:
        if call.prompt == SCORE_PROMPT:  # logprobs only when asked, as a backend gives them
            sure = sureness[call.messages[-2].text]
            return rated_eight(call, sure)
        return next(drawn)

    backend = scripted(reply, capabilities=Capabilities(logprobs=True))
    response = await chat(backend, BON, ponder={"bon": {"confidence": confidence}, "trace": True})
    steps = {s["step"]: s for s in response.json()["ponder"]["trace"]}
    scored = score_calls(backend)
    assert len(scored) == 3
    content = response.json()["choices"][0]["message"]["content"]
    if confidence:
        expected = expected_eights((0.6, 0.7, 0.95))
        assert steps["scores"]["scores"] == pytest.approx(expected)
        assert logprobs_asked(scored) == {(True, 10)}
        assert content == candidates[2]
    else:
        assert steps["scores"]["scores"] == [8.0, 8.0, 8.0]
        assert logprobs_asked(scored) == {(False, None)}
        assert content == candidates[0]
    # the candidates never ask for logprobs the client did not
    assert not any(c.sampling.logprobs for c in backend.calls if c.prompt != SCORE_PROMPT)


async def test_a_backend_without_logprobs_is_not_asked_for_them() -> None:
    reply, _ = judge(CANDIDATES, SCORES)
    backend = scripted(reply)
    response = await chat(backend, BON)
    assert response.json()["choices"][0]["message"]["content"] == CANDIDATES[1]
    assert not any(c.sampling.logprobs for c in backend.calls)
