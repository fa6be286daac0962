"""`sc`: self-consistency, a plurality vote over concurrently drawn samples."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter

from ponder.answers import extract_answer
from ponder.backends.base import Capabilities
from ponder.errors import BackendUnavailable
from ponder.strategies.context import RequestContext
from ponder.strategies.sc import SelfConsistency, SelfConsistencyConfig
from ponder.testing import Call, Reply, ScriptedBackend
from ponder.tokens import count_prompt_tokens, count_tokens
from ponder.types import Completion, Message, Sampling
from tests.conftest import (
    MODEL,
    assert_error,
    chat,
    conversation,
    finish_reasons,
    scripted,
    sse_events,
    streamed_text,
    trace_steps,
    usage_for,
)

SC = f"sc-{MODEL}"

REPLIES = [
    "I think the answer is 41.",
    "Adding them up, the answer is 42.",
    "So we get \\boxed{42}.",
    "Answer: 41",
    "It is 42 apples.",
]


async def test_majority_answer_wins_and_its_first_sample_is_returned_whole() -> None:
    backend = scripted(list(REPLIES))
    messages = conversation(
        "Count carefully.", "I have 40 apples.", "Okay.", "I buy 2 more. How many?"
    )
    response = await chat(
        backend, SC, messages=messages, max_tokens=50, stop=["###"], ponder={"trace": True}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "Adding them up, the answer is 42."
    assert len(backend.calls) == 5
    assert response.headers["x-ponder-backend-calls"] == "5"
    for call in backend.calls:
        # the client's conversation, unchanged
        assert [(m.role, m.text) for m in call.messages] == [
            (m["role"], m["content"]) for m in messages
        ]
        assert call.n == 1
        assert call.sampling.temperature == 0.7  # the client gave none
        assert (call.sampling.max_tokens, call.sampling.stop) == (50, ("###",))
    # the answer is the first sample that gave the majority answer
    assert body["usage"] == usage_for(backend, REPLIES, answer=REPLIES[1])
    (vote,) = trace_steps(body, "vote")
    assert vote["tally"] == {"41": 2, "42": 3}
    assert (vote["winner"], vote["samples"], vote["survivors"]) == ("42", 5, 5)


async def test_the_five_samples_are_in_flight_at_once() -> None:
    backend = scripted(list(REPLIES))
    backend.hold()
    task = asyncio.create_task(chat(backend, SC))
    await backend.wait_for_in_flight(5)
    backend.release()
    response = await task
    assert response.status_code == 200
    assert extract_answer(response.json()["choices"][0]["message"]["content"]) == "42"
    assert backend.max_in_flight == 5
    assert len(backend.calls) == 5


async def test_client_temperature_is_kept_and_zero_is_replaced() -> None:
    backend = scripted(lambda call, i: "42")
    await chat(backend, SC, temperature=0.9)
    assert [c.sampling.temperature for c in backend.calls] == [0.9] * 5
    backend = scripted(lambda call, i: "42")
    await chat(backend, SC, temperature=0, ponder={"sc": {"temperature": 1.1, "samples": 3}})
    assert [c.sampling.temperature for c in backend.calls] == [1.1] * 3


async def test_native_n_backend_draws_all_samples_in_one_call() -> None:
    backend = scripted(list(REPLIES), capabilities=Capabilities(native_n=True))
    response = await chat(backend, SC)
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "Adding them up, the answer is 42."
    (call,) = backend.calls
    assert call.n == 5
    assert response.headers["x-ponder-backend-calls"] == "1"
    # the one prompt counted once; the answer is the first majority sample
    assert body["usage"] == usage_for(backend, REPLIES, answer=REPLIES[1])


# ---- statistics: the vote beats a single sample by as much as theory says ------------------

P_CORRECT = 0.6
CORRECT = "7"
WRONG = ("1", "2", "3")


def noisy_oracle() -> ScriptedBackend:
    """Problem j's i-th sample is right with probability 0.6, else one of three wrong answers,
    from a generator seeded with (j, i): the same draws whatever the order of the problems."""
    drawn: Counter[int] = Counter()

    def reply(call: Call, index: int) -> str:
        j = int(call.prompt.removeprefix("Problem "))
        i = drawn[j]
        drawn[j] += 1
        rng = random.Random(j * 1000 + i)
        answer = CORRECT if rng.random() < P_CORRECT else rng.choice(WRONG)
        return f"Working it out, the answer is {answer}."

    return scripted(reply)


def plurality_accuracy(samples: int) -> float:
    """Exact probability that a plurality vote (ties to the answer seen first) over `samples`
    independent draws picks the correct answer: a sum over every sequence of outcomes."""
    outcomes = (CORRECT, *WRONG)
    p = {CORRECT: P_CORRECT, **{w: (1 - P_CORRECT) / len(WRONG) for w in WRONG}}
    total = 0.0
    for sequence in itertools.product(outcomes, repeat=samples):
        counts: dict[str, int] = {}
        for answer in sequence:
            counts[answer] = counts.get(answer, 0) + 1
        top = max(counts.values())
        winner = next(a for a in sequence if counts[a] == top)
        if winner == CORRECT:
            probability = 1.0
            for answer in sequence:
                probability *= p[answer]
            total += probability
    return total


async def measured_accuracy(samples: int, problems: int) -> float:
    backend = noisy_oracle()
    strategy = SelfConsistency(SelfConsistencyConfig(samples=samples))
    right = 0
    for j in range(problems):
        ctx = RequestContext(request_id="t", model=MODEL, backend=backend, sampling=Sampling())
        (answer,) = await strategy.run(ctx, [Message("user", f"Problem {j}")])
        right += extract_answer(answer.content) == CORRECT
    assert len(backend.calls) == samples * problems
    return right / problems


async def test_vote_accuracy_matches_the_exact_theory_and_beats_one_sample() -> None:
    problems = 1000
    theory = plurality_accuracy(5)
    assert abs(plurality_accuracy(1) - P_CORRECT) < 1e-12  # the enumeration itself is sound
    assert 0.80 < theory < 0.82  # 0.81056: 5 votes lift 0.6 by about 0.21
    single = await measured_accuracy(1, problems)
    voted = await measured_accuracy(5, problems)
    assert abs(single - P_CORRECT) <= 0.04
    assert abs(voted - theory) <= 0.04
    assert voted >= single + (theory - P_CORRECT) - 0.06


# ---- wall time: the samples overlap --------------------------------------------------------


async def test_five_samples_take_about_as_long_as_one_call() -> None:
    single_backend = scripted(lambda call, i: "42", latency_s=0.2)
    start = time.perf_counter()
    assert (await chat(single_backend, MODEL)).status_code == 200
    single = time.perf_counter() - start

    backend = scripted(lambda call, i: "42", latency_s=0.2)
    start = time.perf_counter()
    response = await chat(backend, SC)
    voted = time.perf_counter() - start
    assert response.status_code == 200
    assert len(backend.calls) == 5
    assert single >= 0.2
    assert voted / single <= 1.5, (voted, single)


# ---- failures and budget -------------------------------------------------------------------


async def test_failed_samples_are_dropped_and_the_survivors_vote() -> None:
    replies: list[str | BackendUnavailable] = [
        "The answer is 41.",
        BackendUnavailable("down"),
        "The answer is 42.",
        BackendUnavailable("down"),
        "I get 42.",
    ]
    backend = scripted(replies)
    response = await chat(backend, SC, ponder={"trace": True})
    assert response.status_code == 200
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "The answer is 42."
    assert len(backend.calls) == 5
    assert response.headers["x-ponder-backend-calls"] == "5"
    (vote,) = trace_steps(body, "vote")
    assert vote["tally"] == {"41": 1, "42": 2}
    assert (vote["survivors"], vote["samples"]) == (3, 5)
    (failed,) = trace_steps(body, "samples_failed")
    assert failed["count"] == 2
    survived = [r for r in replies if isinstance(r, str)]
    assert body["usage"]["prompt_tokens"] == 3 * count_prompt_tokens(backend.calls[0].messages)
    assert body["usage"]["completion_tokens"] == sum(count_tokens(r) for r in survived)


async def test_all_samples_failing_is_an_openai_shaped_503() -> None:
    backend = scripted(lambda call, i: BackendUnavailable("down"))
    response = await chat(backend, SC)
    assert_error(response, 503, type="api_error", code="backend_unavailable", message="down")
    assert len(backend.calls) == 5


async def test_a_call_budget_below_the_samples_votes_over_what_it_allows() -> None:
    backend = scripted(lambda call, i: "The answer is 42.")
    response = await chat(backend, SC, ponder={"max_backend_calls": 3, "trace": True})
    assert response.status_code == 200
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "The answer is 42."
    assert len(backend.calls) == 3
    assert response.headers["x-ponder-backend-calls"] == "3"
    (vote,) = trace_steps(body, "vote")
    assert (vote["tally"], vote["survivors"]) == ({"42": 3}, 3)


async def test_a_sample_cut_off_at_max_tokens_does_not_vote() -> None:
    """A sample that ran out of tokens stopped mid-working: its last number is a step, not an
    answer. Here two cut-off samples agree on such a step ("5") and would outvote the one
    finished answer; they must not vote."""
    replies: list[Reply] = [
        Completion("Each box holds 5", finish_reason="length"),
        Completion("First, 3 + 2 = 5", finish_reason="length"),
        "3 + 2 = 5 boxes, 5 * 4 = 20 pens. The answer is 20.",
        Completion("There are 4 pens in each of 5", finish_reason="length"),
        Completion("", finish_reason="length"),
    ]
    backend = scripted(replies)
    response = await chat(backend, SC, max_tokens=8, ponder={"trace": True})
    assert response.status_code == 200
    body = response.json()
    assert body["choices"][0]["message"]["content"] == replies[2]
    assert body["choices"][0]["finish_reason"] == "stop"
    (vote,) = trace_steps(body, "vote")
    assert vote["tally"] == {"20": 1}
    assert (vote["winner"], vote["cut_off"], vote["survivors"]) == ("20", 4, 5)


async def test_when_every_sample_is_cut_off_the_first_is_returned_as_it_is() -> None:
    replies = [Completion(f"Step {i}: 7 * 6 = 4", finish_reason="length") for i in range(5)]
    backend = scripted(replies)
    response = await chat(backend, SC, max_tokens=8, ponder={"trace": True})
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "Step 0: 7 * 6 = 4"
    assert body["choices"][0]["finish_reason"] == "length"
    (vote,) = trace_steps(body, "vote")
    assert (vote["winner"], vote["tally"], vote["cut_off"]) == (None, {}, 5)


# ---- streaming -----------------------------------------------------------------------------


async def test_streams_the_samples_as_reasoning_then_the_winner() -> None:
    backend = scripted(list(REPLIES))
    response = await chat(backend, SC, stream=True, stream_options={"include_usage": True})
    assert response.status_code == 200
    events = sse_events(response.text)
    assert events[0]["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
    assert streamed_text(response.text, "reasoning_content") == (
        "Sample 1: 41\nSample 2: 42\nSample 3: 42\nSample 4: 41\nSample 5: 42\nVote: 42 (3 of 5)\n"
    )
    assert streamed_text(response.text) == "Adding them up, the answer is 42."
    assert finish_reasons(response.text) == ["stop"]
    usage = events[-1]["usage"]
    assert events[-1]["choices"] == []
    assert usage == usage_for(backend, REPLIES, answer=REPLIES[1])
    assert len(backend.calls) == 5


async def test_reasoning_can_be_turned_off_in_a_stream() -> None:
    backend = scripted(list(REPLIES))
    response = await chat(backend, SC, stream=True, ponder={"reasoning": False})
    assert streamed_text(response.text, "reasoning_content") == ""
    assert streamed_text(response.text) == "Adding them up, the answer is 42."
    assert len(backend.calls) == 5


# ---- aliases, n, options -------------------------------------------------------------------


async def test_aliases_select_the_same_strategy() -> None:
    for model, fields in (
        (MODEL, {"optillm_approach": "self_consistency"}),
        (f"self_consistency-{MODEL}", {}),
    ):
        backend = scripted(list(REPLIES))
        response = await chat(backend, model, **fields)
        assert response.json()["choices"][0]["message"]["content"] == REPLIES[1], model
        assert len(backend.calls) == 5
        assert response.headers["x-ponder-backend-calls"] == "5"


async def test_options_under_an_alias_reach_the_strategy() -> None:
    backend = scripted(lambda call, i: "42")
    response = await chat(backend, SC, ponder={"self_consistency": {"samples": 3}})
    assert response.status_code == 200
    assert len(backend.calls) == 3


async def test_majority_voting_is_the_same_vote_with_six_samples_at_0_6() -> None:
    for fields in ({"model": f"majority_voting-{MODEL}"}, {"optillm_approach": "majority_voting"}):
        replies = [
            "The answer is 7.",
            "Yes, 42.",
            "The answer is 7.",
            "42",
            "42",
            "The answer is 42",
        ]
        backend = scripted(list(replies))
        response = await chat(backend, **{"model": MODEL, **fields}, ponder={"trace": True})
        body = response.json()
        assert body["choices"][0]["message"]["content"] == "Yes, 42."
        assert len(backend.calls) == 6
        assert response.headers["x-ponder-backend-calls"] == "6"
        assert {c.sampling.temperature for c in backend.calls} == {0.6}
        (vote,) = trace_steps(body, "vote")
        assert vote["tally"] == {"7": 2, "42": 4}
        assert body["usage"] == usage_for(backend, replies, answer=replies[1])


async def test_majority_voting_options_are_its_own() -> None:
    backend = scripted(lambda call, i: "42")
    response = await chat(
        backend, f"majority_voting-{MODEL}", ponder={"majority_voting": {"samples": 3}}
    )
    assert len(backend.calls) == 3
    response = await chat(
        backend, f"majority_voting-{MODEL}", ponder={"majority_voting": {"samples": 65}}
    )
    assert_error(response, 400, param="ponder.majority_voting.samples")


async def test_request_n_runs_independent_votes() -> None:
    draws = itertools.count()
    backend = scripted(lambda call, i: f"Draw {next(draws)}.\nThe answer is 42.")
    response = await chat(backend, SC, n=2, ponder={"trace": True})
    body = response.json()
    assert len(backend.calls) == 10
    assert response.headers["x-ponder-backend-calls"] == "10"
    choices = body["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    contents = [c["message"]["content"] for c in choices]
    assert all(extract_answer(c) == "42" for c in contents)
    assert contents[0] != contents[1]  # each vote returns its own first sample
    votes = trace_steps(body, "vote")
    assert [(v["tally"], v["survivors"]) for v in votes] == [({"42": 5}, 5)] * 2


async def test_bad_options_are_400s_naming_the_field() -> None:
    for field, value in (("samples", 0), ("samples", 65), ("temperature", 0), ("temperature", 3)):
        backend = scripted()
        response = await chat(backend, SC, ponder={"sc": {field: value}})
        assert_error(response, 400, param=f"ponder.sc.{field}")
        assert backend.calls == []
