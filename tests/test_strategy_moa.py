"""`moa`: mixture of agents: drafts, one critique of them all, one synthesis."""

from __future__ import annotations

import asyncio

import pytest

from ponder.backends.base import Capabilities
from ponder.errors import BackendUnavailable
from ponder.strategies.moa import CRITIQUE_PROMPT, DRAFTS_INTRO, REVIEW_INTRO, SYNTHESIS_PROMPT
from ponder.strategies.showing import CUT_OFF_MARK, numbered
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
    streamed_pieces,
    streamed_text,
    trace_steps,
    usage_for,
)

MOA = f"moa-{MODEL}"
DRAFTS = [
    "Paris is the capital of France.",
    "The capital is Paris, on the Seine.",
    "I believe it is Lyon.",
    "Paris.",
    "France's capital city is Paris.",
    "Marseille, probably.",
    "It is Paris, home of the Louvre.",
    "Paris, of course.",
]
CRITIQUE = "Draft 1 is right and short. Draft 2 adds a useful detail. Draft 3 is wrong."
ANSWER = "The capital of France is Paris, which lies on the Seine."

CONVERSATION = conversation(
    "Answer in one sentence.",
    "I am studying geography.",
    "Great, ask away.",
    "What is the capital of France?",
)
CLIENT = [
    ("system", "Answer in one sentence."),
    *[(m["role"], m["content"]) for m in CONVERSATION[1:]],
]


def kind(call: Call) -> str:
    if call.prompt.endswith(CRITIQUE_PROMPT):
        return "critique"
    if call.prompt.endswith(SYNTHESIS_PROMPT):
        return "synthesis"
    return "draft"


def finished(*texts: str) -> list[Completion]:
    return [Completion(text) for text in texts]


class Mixture:
    """A scripted model for moa: drafts from DRAFTS in the order they are asked for."""

    def __init__(self, fail: str | None = None) -> None:
        self.fail = fail
        self.drafts = 0
        self.replies: list[str] = []

    def __call__(self, call: Call, index: int) -> Reply:
        k = kind(call)
        if k == self.fail:
            return BackendUnavailable("down")
        if k == "critique":
            text = CRITIQUE
        elif k == "synthesis":
            text = ANSWER
        else:
            text = DRAFTS[self.drafts]
            self.drafts += 1
        self.replies.append(text)
        return text


def calls_of(backend: ScriptedBackend, name: str) -> list[Call]:
    return [c for c in backend.calls if kind(c) == name]


async def test_the_answer_is_the_synthesis_of_drafts_and_critique() -> None:
    mixture = Mixture()
    backend = scripted(mixture)
    response = await chat(backend, MOA, messages=CONVERSATION, ponder={"trace": True})
    assert response.status_code == 200
    body = response.json()
    assert body["choices"][0]["message"]["content"] == ANSWER
    assert len(backend.calls) == 5
    assert response.headers["x-ponder-backend-calls"] == "5"
    assert [kind(c) for c in backend.calls] == ["draft"] * 3 + ["critique", "synthesis"]
    assert trace_steps(body, "drafts")[0]["drafts"] == DRAFTS[:3]
    assert trace_steps(body, "critique")[0]["critique"] == CRITIQUE
    assert body["usage"] == usage_for(backend, mixture.replies)


async def test_prompts_keep_the_conversation_and_carry_drafts_and_critique() -> None:
    backend = scripted(Mixture())
    await chat(backend, MOA, messages=CONVERSATION)
    for call in calls_of(backend, "draft"):
        assert [(m.role, m.text) for m in call.messages] == CLIENT
    listed = numbered("Draft", finished(*DRAFTS[:3]))
    assert listed == "\n\n".join(f"Draft {i}: {d}" for i, d in enumerate(DRAFTS[:3], start=1))
    request = CLIENT[-1][1]
    intro = DRAFTS_INTRO.format(count=3)
    # the drafts go in the last user turn, after the request: every earlier turn is kept as is
    (critique,) = calls_of(backend, "critique")
    assert [(m.role, m.text) for m in critique.messages] == [
        *CLIENT[:-1],
        ("user", f"{request}\n\n{intro}\n\n{listed}\n\n{CRITIQUE_PROMPT}"),
    ]
    (synthesis,) = calls_of(backend, "synthesis")
    assert [(m.role, m.text) for m in synthesis.messages] == [
        *CLIENT[:-1],
        (
            "user",
            f"{request}\n\n{intro}\n\n{listed}\n\n{REVIEW_INTRO}\n\n{CRITIQUE}\n\n"
            f"{SYNTHESIS_PROMPT}",
        ),
    ]


async def test_a_draft_cut_off_at_the_token_limit_is_marked_for_the_critique() -> None:
    drafts: list[Reply] = [Completion("Step 1: 12 * 4 = 48", finish_reason="length"), "70"]

    def reply(call: Call, index: int) -> Reply:
        if kind(call) == "draft":
            return drafts.pop(0)
        return CRITIQUE if kind(call) == "critique" else ANSWER

    backend = scripted(reply)
    response = await chat(backend, MOA, ponder={"moa": {"drafts": 2}, "trace": True})
    assert response.json()["choices"][0]["message"]["content"] == ANSWER
    (critique,) = calls_of(backend, "critique")
    # (shown after the draft that has an answer)
    assert f"Draft 1: 70\n\nDraft 2{CUT_OFF_MARK}: Step 1: 12 * 4 = 48" in critique.prompt
    (step,) = trace_steps(response.json(), "drafts")
    assert (step["drafts"], step["cut_off"]) == (["70", "Step 1: 12 * 4 = 48"], [2])


async def test_a_conversation_without_a_user_turn_gets_the_drafts_in_one_of_its_own() -> None:
    backend = scripted(Mixture())
    system_only = [{"role": "system", "content": "Write a haiku about the sea."}]
    response = await chat(backend, MOA, messages=system_only)
    assert response.status_code == 200
    (critique,) = calls_of(backend, "critique")
    assert [m.role for m in critique.messages] == ["system", "user"]
    assert critique.prompt.startswith(DRAFTS_INTRO.format(count=3))


async def test_the_number_of_drafts_is_configurable() -> None:
    mixture = Mixture()
    backend = scripted(mixture)
    response = await chat(backend, MOA, ponder={"moa": {"drafts": 5}})
    assert len(backend.calls) == 7
    assert response.headers["x-ponder-backend-calls"] == "7"
    (critique,) = calls_of(backend, "critique")
    assert numbered("Draft", finished(*DRAFTS[:5])) in critique.prompt
    assert response.json()["usage"] == usage_for(backend, mixture.replies)


async def test_native_n_draws_the_drafts_in_one_call() -> None:
    mixture = Mixture()
    backend = scripted(mixture, capabilities=Capabilities(native_n=True))
    response = await chat(backend, MOA)
    assert response.json()["choices"][0]["message"]["content"] == ANSWER
    assert len(backend.calls) == 3
    assert response.headers["x-ponder-backend-calls"] == "3"
    assert [c.n for c in backend.calls] == [3, 1, 1]
    (critique,) = calls_of(backend, "critique")
    assert numbered("Draft", finished(*DRAFTS[:3])) in critique.prompt
    assert response.json()["usage"] == usage_for(backend, mixture.replies)


async def test_the_drafts_are_in_flight_at_once() -> None:
    backend = scripted(Mixture())
    backend.hold()
    request = asyncio.create_task(chat(backend, MOA, ponder={"moa": {"drafts": 4}}))
    await backend.wait_for_in_flight(4)
    assert [kind(c) for c in backend.calls] == ["draft"] * 4
    backend.release()
    response = await request
    assert response.json()["choices"][0]["message"]["content"] == ANSWER
    assert backend.max_in_flight == 4
    assert len(backend.calls) == 6


async def test_sampling_of_drafts_critique_and_synthesis() -> None:
    backend = scripted(Mixture())
    await chat(
        backend,
        MOA,
        max_tokens=60,
        stop=["END"],
        seed=3,
        ponder={"moa": {"critique_tokens": 100}},
    )
    for call in calls_of(backend, "draft"):
        s = call.sampling
        assert (s.temperature, s.max_tokens, s.stop, s.seed) == (0.7, 60, ("END",), 3)
    (critique,) = calls_of(backend, "critique")
    s = critique.sampling
    assert (s.temperature, s.max_tokens, s.stop, s.seed) == (0.0, 100, (), 3)
    (synthesis,) = calls_of(backend, "synthesis")
    s = synthesis.sampling
    assert (s.temperature, s.max_tokens, s.stop, s.seed) == (None, 60, ("END",), 3)


async def test_a_client_temperature_above_zero_is_kept() -> None:
    backend = scripted(Mixture())
    await chat(backend, MOA, temperature=1.2, ponder={"moa": {"temperature": 0.4}})
    assert {c.sampling.temperature for c in calls_of(backend, "draft")} == {1.2}
    assert calls_of(backend, "critique")[0].sampling.temperature == 0.0
    assert calls_of(backend, "critique")[0].sampling.max_tokens == 512
    assert calls_of(backend, "synthesis")[0].sampling.temperature == 1.2


async def test_a_client_temperature_of_zero_uses_the_configured_one_for_drafts() -> None:
    backend = scripted(Mixture())
    await chat(backend, MOA, temperature=0, ponder={"moa": {"temperature": 0.4}})
    assert {c.sampling.temperature for c in calls_of(backend, "draft")} == {0.4}
    assert calls_of(backend, "synthesis")[0].sampling.temperature == 0


async def test_streams_drafts_and_critique_as_reasoning_and_the_synthesis_as_content() -> None:
    mixture = Mixture()
    backend = scripted(mixture)
    response = await chat(backend, MOA, stream=True, stream_options={"include_usage": True})
    assert response.status_code == 200
    assert streamed_text(response.text, "reasoning_content") == (
        f"Draft 1: {DRAFTS[0]}\nDraft 2: {DRAFTS[1]}\nDraft 3: {DRAFTS[2]}\nCritique: {CRITIQUE}\n"
    )
    assert streamed_text(response.text) == ANSWER
    assert len(streamed_pieces(response.text)) == len(ANSWER.split())
    assert [c.stream for c in backend.calls] == [False] * 4 + [True]
    assert sse_events(response.text)[-1]["usage"] == usage_for(backend, mixture.replies)


async def test_reasoning_lines_are_cut_to_one_short_line() -> None:
    long_draft = "word " * 40
    long_critique = "c" * 300

    def reply(call: Call, index: int) -> str:
        return {"critique": long_critique, "synthesis": "done"}.get(kind(call), long_draft)

    response = await chat(scripted(reply), MOA, stream=True, ponder={"moa": {"drafts": 2}})
    short = " ".join(long_draft.split())[:80]
    assert streamed_text(response.text, "reasoning_content") == (
        f"Draft 1: {short}\nDraft 2: {short}\nCritique: {'c' * 200}\n"
    )


async def test_reasoning_can_be_turned_off() -> None:
    backend = scripted(Mixture())
    response = await chat(backend, MOA, stream=True, ponder={"reasoning": False})
    assert streamed_text(response.text, "reasoning_content") == ""
    assert streamed_text(response.text) == ANSWER


@pytest.mark.parametrize("failing", ["draft", "critique", "synthesis"])
async def test_a_failed_call_is_an_openai_shaped_503(failing: str) -> None:
    backend = scripted(Mixture(fail=failing))
    response = await chat(backend, MOA)
    assert response.status_code == 503
    assert response.json()["error"] == {
        "message": "down",
        "type": "api_error",
        "param": None,
        "code": "backend_unavailable",
    }


async def test_a_failed_critique_in_a_stream_ends_it_with_the_error() -> None:
    backend = scripted(Mixture(fail="critique"))
    response = await chat(backend, MOA, stream=True)
    assert response.status_code == 200  # the drafts' reasoning lines went out first
    assert stream_error(response.text)["code"] == "backend_unavailable"
    assert not calls_of(backend, "synthesis")


@pytest.mark.parametrize("limit", [1, 3, 4])
async def test_a_budget_below_what_the_mixture_needs_is_a_400(limit: int) -> None:
    backend = scripted(Mixture())
    response = await chat(backend, MOA, ponder={"max_backend_calls": limit})
    assert_error(response, 400, code="budget_exceeded", param="ponder.max_backend_calls")
    assert len(backend.calls) == limit


async def test_a_budget_that_covers_the_mixture_is_enough() -> None:
    backend = scripted(Mixture())
    response = await chat(backend, MOA, ponder={"max_backend_calls": 5})
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == ANSWER


async def test_optillm_approach_moa_selects_the_mixture() -> None:
    backend = scripted(Mixture())
    response = await chat(backend, MODEL, optillm_approach="moa")
    assert response.json()["choices"][0]["message"]["content"] == ANSWER
    assert [kind(c) for c in backend.calls] == ["draft"] * 3 + ["critique", "synthesis"]
    assert response.headers["x-ponder-backend-calls"] == "5"


async def test_request_n_runs_independent_mixtures() -> None:
    backend = scripted(Mixture())
    response = await chat(backend, MOA, n=2, ponder={"moa": {"drafts": 2}})
    body = response.json()
    assert [c["message"]["content"] for c in body["choices"]] == [ANSWER, ANSWER]
    assert len(backend.calls) == 2 * 4


async def test_drafts_whose_answer_most_drafts_share_are_shown_first() -> None:
    """The synthesis tends to follow the first draft: the drafts that agree come first, a
    draft cut off before its answer last, the rest in the order drawn."""
    drafts: list[Reply] = [
        "6 * 7 = 40, so the answer is 40.",
        Completion("First, 6 * 7 = 4", finish_reason="length"),
        "6 * 7 = 42. The answer is 42.",
        "The answer is 42.",
    ]
    replies = iter(drafts)

    def model(call: Call, index: int) -> Reply:
        return {"critique": CRITIQUE, "synthesis": ANSWER}.get(kind(call)) or next(replies)

    backend = scripted(model)
    response = await chat(backend, MOA, ponder={"moa": {"drafts": 4}, "trace": True})
    assert response.status_code == 200, response.text
    shown = [drafts[i] for i in (2, 3, 0, 1)]
    listed = numbered("Draft", [d if isinstance(d, Completion) else Completion(d) for d in shown])
    (critique,) = calls_of(backend, "critique")
    assert listed in critique.prompt
    (synthesis,) = calls_of(backend, "synthesis")
    assert listed in synthesis.prompt
    assert trace_steps(response.json(), "drafts")[0]["drafts"][:2] == [
        "6 * 7 = 42. The answer is 42.",
        "The answer is 42.",
    ]
