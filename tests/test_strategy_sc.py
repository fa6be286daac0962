"""`sc`: self-consistency, a plurality vote over concurrently drawn samples."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections import Counter

import pytest

from ponder.answers import extract_answer
from ponder.backends.base import Capabilities
from ponder.errors import BackendUnavailable
from ponder.strategies.confidence import majority_posterior, more_to_settle
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


# ---- ties: the greedy answer decides ---------------------------------------------------------

GREEDY_WORDS = "At temperature 0, the answer is {}."


def tied(samples: list[str], greedy: str | Exception) -> ScriptedBackend:
    """Samples (at 0.7) answer `samples` in turn; the call at temperature 0 answers `greedy`."""
    drawn = iter(samples)

    def reply(call: Call, index: int) -> Reply:
        if call.sampling.temperature == 0.0:
            return greedy if isinstance(greedy, Exception) else GREEDY_WORDS.format(greedy)
        return f"Working it out, the answer is {next(drawn)}."

    return scripted(reply)


@pytest.mark.parametrize(
    ("samples", "greedy", "answer", "decided"),
    [
        (["1", "2", "3", "4", "5"], "3", "3", True),  # all differ; greedy is among them
        (["1", "2", "3", "4", "5"], "9", "9", True),  # all differ: no vote says more than it
        (["1", "2", "2", "1", "5"], "2", "2", True),  # 2-2 tie; greedy picks its side
        (["1", "2", "2", "1", "5"], "5", "1", False),  # greedy outside the tie: the first stays
    ],
)
async def test_a_tie_is_decided_by_one_greedy_answer(
    samples: list[str], greedy: str, answer: str, decided: bool
) -> None:
    backend = tied(samples, greedy)
    response = await chat(backend, SC, ponder={"trace": True})
    assert response.status_code == 200
    body = response.json()
    content = body["choices"][0]["message"]["content"]
    assert extract_answer(content) == answer
    assert (content == GREEDY_WORDS.format(greedy)) is decided  # greedy's own reply, whole
    temperatures = [c.sampling.temperature for c in backend.calls]
    assert temperatures == [0.7] * 5 + [0.0]  # the extra call only after the vote
    assert response.headers["x-ponder-backend-calls"] == "6"
    (tie,) = trace_steps(body, "tie_break")
    assert (tie["greedy"], tie["decided"]) == (greedy, decided)
    top = max(Counter(samples).values())
    assert tie["leaders"] == [a for a in dict.fromkeys(samples) if samples.count(a) == top]
    texts = [f"Working it out, the answer is {a}." for a in samples] + [GREEDY_WORDS.format(greedy)]
    assert body["usage"] == usage_for(backend, texts, answer=content)


async def test_a_clear_winner_needs_no_greedy_call() -> None:
    backend = tied(["4", "4", "3", "4", "1"], "3")
    response = await chat(backend, SC)
    assert extract_answer(response.json()["choices"][0]["message"]["content"]) == "4"
    assert [c.sampling.temperature for c in backend.calls] == [0.7] * 5


async def test_tie_break_first_keeps_the_first_tied_answer_without_a_call() -> None:
    backend = tied(["1", "2", "3", "4", "5"], "3")
    response = await chat(backend, SC, ponder={"sc": {"tie_break": "first"}})
    assert extract_answer(response.json()["choices"][0]["message"]["content"]) == "1"
    assert len(backend.calls) == 5


async def test_a_failed_greedy_call_leaves_the_votes_answer() -> None:
    backend = tied(["1", "2", "2", "1", "5"], BackendUnavailable("down", retryable=False))
    response = await chat(backend, SC, ponder={"trace": True})
    assert response.status_code == 200
    body = response.json()
    assert extract_answer(body["choices"][0]["message"]["content"]) == "1"
    (tie,) = trace_steps(body, "tie_break")
    assert tie["leaders"] == ["1", "2"] and "down" in tie["error"]


async def test_a_cut_off_greedy_answer_does_not_decide() -> None:
    def reply(call: Call, index: int) -> Reply:
        if call.sampling.temperature == 0.0:
            return Completion("Working it out, the answer is 3", finish_reason="length")
        return f"Working it out, the answer is {index + 1 if call.n > 1 else len(backend.calls)}."

    backend = scripted(reply)
    response = await chat(backend, SC)
    assert response.status_code == 200
    assert extract_answer(response.json()["choices"][0]["message"]["content"]) == "1"
    assert len(backend.calls) == 6


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
    """Plain plurality (`tie_break: first`), the vote the theory above describes."""
    backend = noisy_oracle()
    strategy = SelfConsistency(SelfConsistencyConfig(samples=samples, tie_break="first"))
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


async def test_a_sample_that_states_a_placeholder_does_not_vote() -> None:
    """The 1.5B copied a GSM8K request's format, "The answer is N.", in place of its result;
    "n" then took votes (and two such samples would have won here)."""
    replies: list[Reply] = [
        "5 boxes of 4: 20 pens.\n\nThe answer is N.",
        "5 * 4 = 20. The answer is 20.",
        "4 + 4 = 8.\nThe answer is N.",
        "5 * 3 = 15. The answer is 15.",
        "Each of 5 boxes holds 4. The answer is <answer>.",
        "Greedy: 5 * 4 = 20. The answer is 20.",  # the tie-break's answer
    ]
    backend = scripted(replies)
    body = (await chat(backend, SC, ponder={"trace": True})).json()
    (vote,) = trace_steps(body, "vote")
    assert vote["tally"] == {"20": 1, "15": 1}
    # a tie of 20 and 15: one greedy call decides, and its reply is the answer
    assert len(backend.calls) == 6
    assert body["choices"][0]["message"]["content"] == replies[5]


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


# ---- adaptive: waves until the vote is settled ---------------------------------------------


def beta_posterior(leader: int, runner_up: int, steps: int = 20000) -> float:
    """P(x > 1/2) for x ~ Beta(leader + 1, runner_up + 1), by the midpoint rule over the
    density: the stopping rule computed independently of the strategy's exact sum."""
    a, b = leader + 1, runner_up + 1
    log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    width = 0.5 / steps
    xs = (0.5 + (i + 0.5) * width for i in range(steps))
    return (
        sum(math.exp(log_norm + (a - 1) * math.log(x) + (b - 1) * math.log1p(-x)) for x in xs)
        * width
    )


def settles_after(leader: int, runner_up: int, confidence: float = 0.95) -> int:
    """How many more votes for the leader the rule needs before it stops (the smallest wave
    that can settle the vote)."""
    more = 0
    while beta_posterior(leader + more, runner_up) < confidence:
        more += 1
    return more


ADAPTIVE = {"sc": {"adaptive": True, "samples": 8, "confidence": 0.95}}
"""At 0.95, the most the rule's arithmetic below is worked out for."""


def test_the_exact_posterior_is_the_beta_integral() -> None:
    for leader in range(9):
        for runner_up in range(leader + 1):
            assert majority_posterior(leader, runner_up) == pytest.approx(
                beta_posterior(leader, runner_up), abs=1e-7
            )
    # unanimous votes: 1 - 2^-(a+1), so at 0.95 four are needed (0.969; three give 0.9375)
    assert [majority_posterior(a, 0) for a in (3, 4)] == [0.9375, 0.96875]
    assert more_to_settle(0, 0, 0.95) == settles_after(0, 0) == 4
    assert more_to_settle(2, 2, 0.95) == settles_after(2, 2)


async def test_adaptive_unanimous_answers_stop_after_the_first_wave_the_rule_allows() -> None:
    first = settles_after(0, 0)  # the smallest unanimous vote whose posterior reaches 0.95
    replies = [f"Sample {i}: the answer is 42." for i in range(8)]
    backend = scripted(list(replies), capabilities=Capabilities(native_n=True))
    response = await chat(backend, SC, ponder={**ADAPTIVE, "trace": True})
    body = response.json()
    assert body["choices"][0]["message"]["content"] == replies[0]
    assert [c.n for c in backend.calls] == [first] == [4]
    assert response.headers["x-ponder-backend-calls"] == "1"
    assert body["usage"] == usage_for(backend, replies[:first], answer=replies[0])
    (wave,) = trace_steps(body, "wave")
    assert (wave["drawn"], wave["tally"], wave["settled"]) == (first, {"42": first}, True)
    assert wave["posterior"] == pytest.approx(beta_posterior(first, 0), abs=1e-6)
    (vote,) = trace_steps(body, "vote")
    assert (vote["drawn"], vote["samples"], vote["waves"], vote["winner"]) == (first, 8, 1, "42")


async def test_adaptive_waves_are_drawn_at_once_without_native_n() -> None:
    backend = scripted(lambda call, i: "The answer is 42.", latency_s=0.05)
    response = await chat(backend, SC, ponder=ADAPTIVE)
    assert response.status_code == 200
    first = settles_after(0, 0)
    assert [c.n for c in backend.calls] == [1] * first
    assert backend.max_in_flight == first
    assert response.headers["x-ponder-backend-calls"] == str(first)


async def test_adaptive_split_answers_go_on_to_the_most_samples() -> None:
    replies = [f"Sample {i}: the answer is {41 + i % 2}." for i in range(8)]
    greedy = "Greedy: the answer is 42."
    backend = scripted([*replies, greedy], capabilities=Capabilities(native_n=True))
    response = await chat(backend, SC, ponder={**ADAPTIVE, "trace": True})
    body = response.json()
    # 2 to 2 after the first wave; settling needs more than the 4 samples left, so all are drawn
    assert settles_after(2, 2) > 8 - settles_after(0, 0)
    assert [(c.n, c.sampling.temperature) for c in backend.calls] == [(4, 0.7), (4, 0.7), (1, 0)]
    assert body["choices"][0]["message"]["content"] == greedy  # 4 to 4: greedy decides
    assert body["usage"] == usage_for(backend, [*replies, greedy], answer=greedy)
    waves = trace_steps(body, "wave")
    assert [(w["drawn"], w["tally"], w["settled"]) for w in waves] == [
        (4, {"41": 2, "42": 2}, False),
        (4, {"41": 4, "42": 4}, False),
    ]
    (vote,) = trace_steps(body, "vote")
    assert (vote["drawn"], vote["survivors"], vote["waves"]) == (8, 8, 2)


async def test_adaptive_a_later_wave_is_as_large_as_can_settle_the_vote() -> None:
    answers = ["42", "42", "41", "42", "42", "42", "42", "7"]
    replies = [f"Sample {i}: the answer is {a}." for i, a in enumerate(answers)]
    backend = scripted(list(replies), capabilities=Capabilities(native_n=True))
    response = await chat(
        backend, SC, stream=True, stream_options={"include_usage": True}, ponder=ADAPTIVE
    )
    second = settles_after(3, 1)  # 3 to 1 after the first wave
    assert second == 3
    assert beta_posterior(3 + second, 1) >= 0.95
    assert [c.n for c in backend.calls] == [4, second]
    assert streamed_text(response.text) == replies[0]
    assert streamed_text(response.text, "reasoning_content") == (
        "Sample 1: 42\nSample 2: 42\nSample 3: 41\nSample 4: 42\n"
        "Wave 1: 42 leads 3 to 1; P(it wins) = 0.812\n"
        "Sample 5: 42\nSample 6: 42\nSample 7: 42\n"
        "Wave 2: 42 leads 6 to 1; P(it wins) = 0.965 >= 0.95: stop\n"
        "Vote: 42 (6 of 7)\n"
    )
    usage = sse_events(response.text)[-1]["usage"]
    assert usage == usage_for(backend, replies[:7], answer=replies[0])


async def test_adaptive_samples_cut_off_at_max_tokens_do_not_vote() -> None:
    replies: list[Reply] = [
        "The answer is 42.",
        Completion("First, 6 * 7 = 4", finish_reason="length"),
        "The answer is 42.",
        "The answer is 42.",
        "So 42.",
    ]
    backend = scripted(replies, capabilities=Capabilities(native_n=True))
    response = await chat(backend, SC, max_tokens=8, ponder={**ADAPTIVE, "trace": True})
    body = response.json()
    # 3 votes after the first wave (the cut-off sample has none): one more settles it
    assert settles_after(3, 0) == 1
    assert [c.n for c in backend.calls] == [4, 1]
    waves = trace_steps(body, "wave")
    assert [w["tally"] for w in waves] == [{"42": 3}, {"42": 4}]
    (vote,) = trace_steps(body, "vote")
    assert (vote["cut_off"], vote["drawn"]) == (1, 5)
    texts = [r if isinstance(r, str) else r.content or "" for r in replies]
    assert body["usage"] == usage_for(backend, texts, answer=texts[0])


async def test_adaptive_a_wave_the_budget_refuses_ends_the_sampling() -> None:
    answers = itertools.cycle(["41", "42"])
    backend = scripted(lambda call, i: f"The answer is {next(answers)}.")
    adaptive = {"sc": {"adaptive": True, "samples": 16, "confidence": 0.95}}
    response = await chat(backend, SC, ponder={**adaptive, "max_backend_calls": 5, "trace": True})
    assert response.status_code == 200
    body = response.json()
    # a wave of 4 (2 to 2), one of 6 of which the budget lets 1 through (3 to 2), then one of
    # 5 that it refuses whole: the vote runs over the 5 samples that came
    assert (settles_after(2, 2), settles_after(3, 2)) == (6, 5)
    assert len(backend.calls) == 5
    assert body["choices"][0]["message"]["content"] == "The answer is 41."
    assert [w["drawn"] for w in trace_steps(body, "wave")] == [4, 6]
    (failed,) = trace_steps(body, "wave_failed")
    assert (failed["wave"], failed["drawn"]) == (3, 5)
    (vote,) = trace_steps(body, "vote")
    assert (vote["tally"], vote["survivors"], vote["drawn"]) == ({"41": 3, "42": 2}, 5, 10)


async def test_adaptive_every_call_failing_is_the_error() -> None:
    backend = scripted(lambda call, i: BackendUnavailable("down"))
    response = await chat(backend, SC, ponder=ADAPTIVE)
    assert_error(response, 503, code="backend_unavailable")
    assert len(backend.calls) == 4


async def test_a_larger_wave_and_a_lower_confidence_are_honoured() -> None:
    backend = scripted(lambda call, i: "42", capabilities=Capabilities(native_n=True))
    await chat(backend, SC, ponder={"sc": {"adaptive": True, "samples": 8, "wave": 6}})
    assert [c.n for c in backend.calls] == [6]
    backend = scripted(lambda call, i: "42", capabilities=Capabilities(native_n=True))
    await chat(backend, SC, ponder={"sc": {"adaptive": True, "confidence": 0.8}})
    assert settles_after(0, 0, 0.8) == 2
    assert [c.n for c in backend.calls] == [2]
    # the default, 0.9: three unanimous samples settle it (0.9375), two do not (0.875)
    backend = scripted(lambda call, i: "42", capabilities=Capabilities(native_n=True))
    await chat(backend, SC, ponder={"sc": {"adaptive": True, "samples": 8}})
    assert settles_after(0, 0, 0.9) == 3
    assert [c.n for c in backend.calls] == [3]
    # adaptive off (the default): every sample at once, as before
    backend = scripted(lambda call, i: "42", capabilities=Capabilities(native_n=True))
    await chat(backend, SC, ponder={"sc": {"adaptive": False, "samples": 8}})
    assert [c.n for c in backend.calls] == [8]


async def test_bad_adaptive_options_are_400s() -> None:
    for field, value in (("confidence", 0.4), ("confidence", 1.0), ("wave", 0), ("adaptive", "y")):
        backend = scripted()
        response = await chat(backend, SC, ponder={"sc": {field: value}})
        assert_error(response, 400, param=f"ponder.sc.{field}")
        assert backend.calls == []
