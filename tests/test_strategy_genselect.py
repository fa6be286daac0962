"""`genselect`: candidates sampled at once, the model compares them and selects one."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from ponder.backends.base import Capabilities
from ponder.errors import BackendUnavailable
from ponder.strategies.genselect import CANDIDATES_INTRO, SELECT_PROMPT
from ponder.strategies.showing import CUT_OFF_MARK, numbered, selection
from ponder.testing import Call, Reply, ScriptedBackend
from ponder.types import Completion
from tests.conftest import (
    MODEL,
    assert_error,
    chat,
    conversation,
    scripted,
    sse_data,
    stream_error,
    streamed_text,
    trace_steps,
    usage_for,
)

GENSELECT = f"genselect-{MODEL}"
CANDIDATES = [
    "6 boxes of 4 is 24, minus 5 is 19. The answer is 19.",
    "6 * 4 = 24 and 24 - 5 = 20. The answer is 20.",
    "Each box holds 4, so 24 pencils, 5 given away: 19 left. The answer is 19.",
    "24 + 5 = 29. The answer is 29.",
    "Six boxes, four each: 24. Take away 5: 19.",
    "The answer is 21.",
]
SELECTION = "Candidate 2 subtracts wrongly; 4 adds instead of subtracting. Selected: 3"

CONVERSATION = conversation(
    "Show your working, then the answer.",
    "I have a maths question.",
    "Go ahead.",
    "6 boxes hold 4 pencils each. I give away 5. How many are left?",
)
CLIENT = [(m["role"], m["content"]) for m in CONVERSATION]


def is_selection(call: Call) -> bool:
    return call.prompt.endswith(SELECT_PROMPT)


class Selector:
    """A scripted model for genselect: candidates from `candidates` in the order they are asked
    for, and `selections` in turn for the selection calls."""

    def __init__(
        self,
        candidates: list[Reply] | None = None,
        selections: list[Reply] | None = None,
        fail: str | None = None,
    ) -> None:
        self.candidates = list(CANDIDATES if candidates is None else candidates)
        self.selections = list([SELECTION] if selections is None else selections)
        self.fail = fail
        self.replies: list[str] = []

    def __call__(self, call: Call, index: int) -> Reply:
        kind = "selection" if is_selection(call) else "candidate"
        if kind == self.fail:
            return BackendUnavailable("down")
        reply = self.selections.pop(0) if kind == "selection" else self.candidates.pop(0)
        if isinstance(reply, str):
            self.replies.append(reply)
        elif isinstance(reply, Completion) and reply.content:
            self.replies.append(reply.content)
        return reply


def selection_calls(backend: ScriptedBackend) -> list[Call]:
    return [c for c in backend.calls if is_selection(c)]


def content(response_json: dict[str, object]) -> object:
    choices = response_json["choices"]
    assert isinstance(choices, list)
    return choices[0]["message"]["content"]


async def test_the_selected_candidate_is_returned_with_exact_calls_prompts_and_usage() -> None:
    selector = Selector()
    backend = scripted(selector)
    response = await chat(
        backend,
        GENSELECT,
        messages=CONVERSATION,
        max_tokens=80,
        stop=["END"],
        seed=5,
        ponder={"trace": True},
    )
    assert response.status_code == 200
    body = response.json()
    assert content(body) == CANDIDATES[2]
    assert len(backend.calls) == 5
    assert response.headers["x-ponder-backend-calls"] == "5"
    assert [is_selection(c) for c in backend.calls] == [False] * 4 + [True]
    for call in backend.calls[:4]:
        assert [(m.role, m.text) for m in call.messages] == CLIENT
        s = call.sampling
        assert (s.temperature, s.max_tokens, s.stop, s.seed) == (0.7, 80, ("END",), 5)
    (select_call,) = selection_calls(backend)
    listed = "\n\n".join(f"Candidate {i}: {c}" for i, c in enumerate(CANDIDATES[:4], start=1))
    assert [(m.role, m.text) for m in select_call.messages] == [
        *CLIENT[:-1],
        (
            "user",
            f"{CLIENT[-1][1]}\n\n{CANDIDATES_INTRO.format(count=4)}\n\n{listed}\n\n{SELECT_PROMPT}",
        ),
    ]
    s = select_call.sampling
    assert (s.temperature, s.max_tokens, s.stop, s.seed) == (0.3, 1024, (), 5)
    assert body["usage"] == usage_for(backend, selector.replies, answer=CANDIDATES[2])
    (step,) = trace_steps(body, "selection")
    assert (step["picks"], step["chosen"], step["fallback"]) == ([3], 3, False)
    assert trace_steps(body, "candidates")[0]["candidates"] == CANDIDATES[:4]


async def test_a_candidate_cut_off_at_the_token_limit_is_marked() -> None:
    cut = Completion("6 * 4 = 24, then 24 -", finish_reason="length")
    selector = Selector(candidates=[cut, CANDIDATES[0]], selections=["Selected: 2"])
    backend = scripted(selector)
    response = await chat(backend, GENSELECT, ponder={"genselect": {"candidates": 2}})
    assert content(response.json()) == CANDIDATES[0]
    (select_call,) = selection_calls(backend)
    assert (
        f"Candidate 1{CUT_OFF_MARK}: 6 * 4 = 24, then 24 -\n\nCandidate 2: " in select_call.prompt
    )
    assert numbered("Candidate", [cut, Completion("x")]) == (
        f"Candidate 1{CUT_OFF_MARK}: {cut.content}\n\nCandidate 2: x"
    )


@pytest.mark.parametrize(
    ("text", "count", "expected"),
    [
        ("Selected: 2", 4, 1),
        ("**Selected:** Candidate #4", 4, 3),
        ("I first selected 1.\nOn reflection, Selected: 3", 4, 2),
        ("selected candidate 1", 2, 0),
        ("Selected: 5", 4, None),
        ("Selected: 0", 4, None),
        ("Candidate 2 is best.", 4, None),
        ("Selected:\n2", 4, None),
        ("", 4, None),
        (None, 4, None),
    ],
)
def test_selection(text: str | None, count: int, expected: int | None) -> None:
    assert selection(text, count) == expected


async def test_an_unparseable_selection_falls_back_to_the_most_shared_answer() -> None:
    # candidates 1 and 3 say 19; 2 and 4 say 20 and 29: the first of the 19s is returned
    selector = Selector(selections=["They all look fine to me."])
    backend = scripted(selector)
    response = await chat(backend, GENSELECT, ponder={"trace": True})
    body = response.json()
    assert content(body) == CANDIDATES[0]
    assert len(backend.calls) == 5
    (step,) = trace_steps(body, "selection")
    assert (step["picks"], step["chosen"], step["fallback"]) == ([None], 1, True)


async def test_a_selection_out_of_range_falls_back_past_a_cut_off_first_candidate() -> None:
    cut = Completion("The answer is 19 because", finish_reason="length")
    candidates: list[Reply] = [cut, "The answer is 20.", "So 19.", "The answer is 19."]
    backend = scripted(Selector(candidates=candidates, selections=["Selected: 7"]))
    response = await chat(backend, GENSELECT)
    assert content(response.json()) == "So 19."
    # no shared answer at all: the first candidate that finished
    candidates = ["The answer is 1.", "The answer is 2.", "The answer is 3.", "The answer is 4."]
    backend = scripted(Selector(candidates=list(candidates), selections=["Selected: 9"]))
    response = await chat(backend, GENSELECT)
    assert content(response.json()) == candidates[0]


async def test_several_selections_run_at_once_and_the_most_picked_wins() -> None:
    selector = Selector(selections=["Selected: 2", "Selected: 4", "no pick", "Selected: 4"])
    selecting = 0
    all_selecting = asyncio.Event()
    open_gate = asyncio.Event()

    async def reply(call: Call, index: int) -> Reply:
        nonlocal selecting
        if is_selection(call):
            selecting += 1
            if selecting == 4:
                all_selecting.set()
            await open_gate.wait()  # no selection may finish before all four have started
        return selector(call, index)

    backend = scripted(reply)
    backend.hold()
    request = asyncio.create_task(
        chat(
            backend,
            GENSELECT,
            ponder={"genselect": {"selections": 4, "rotate": False}, "trace": True},
        )
    )
    await backend.wait_for_in_flight(4)
    assert [is_selection(c) for c in backend.calls] == [False] * 4
    backend.release()
    async with asyncio.timeout(5):
        await all_selecting.wait()
    assert [is_selection(c) for c in backend.calls] == [False] * 4 + [True] * 4
    assert backend.in_flight == 4
    open_gate.set()
    response = await request
    body = response.json()
    assert content(body) == CANDIDATES[3]
    assert len(backend.calls) == 8
    assert backend.max_in_flight == 4
    (step,) = trace_steps(body, "selection")
    assert (step["picks"], step["chosen"]) == ([2, 4, None, 4], 4)
    assert step["orders"] == [[1, 2, 3, 4]] * 4
    assert len({c.prompt for c in selection_calls(backend)}) == 1
    assert body["usage"] == usage_for(backend, selector.replies, answer=CANDIDATES[3])


def shown_as(call: Call, candidate: str) -> int:
    """The number `candidate` goes by in a selection call's prompt."""
    (number,) = re.findall(rf"Candidate (\d+): {re.escape(candidate)}", call.prompt)
    return int(number)


async def test_several_selections_see_the_candidates_rotated_and_picks_map_back() -> None:
    # A model that judges by content picks the same candidate under any number it is shown as.
    replies: list[str] = []
    drawn = iter(CANDIDATES)

    def reply(call: Call, index: int) -> Reply:
        text = f"Selected: {shown_as(call, CANDIDATES[2])}" if is_selection(call) else next(drawn)
        replies.append(text)
        return text

    backend = scripted(reply)
    response = await chat(
        backend,
        GENSELECT,
        messages=CONVERSATION,
        ponder={"genselect": {"selections": 4}, "trace": True},
    )
    body = response.json()
    assert content(body) == CANDIDATES[2]
    calls = selection_calls(backend)
    assert len(backend.calls) == 8 and len(calls) == 4
    orders = [[1, 2, 3, 4], [2, 3, 4, 1], [3, 4, 1, 2], [4, 1, 2, 3]]
    intro = CANDIDATES_INTRO.format(count=4)
    # Each prompt shows the same four candidates in its own order: each one once in each place.
    prompts = []
    for order in orders:
        listed = "\n\n".join(f"Candidate {n}: {CANDIDATES[i - 1]}" for n, i in enumerate(order, 1))
        prompts.append(
            [*CLIENT[:-1], ("user", f"{CLIENT[-1][1]}\n\n{intro}\n\n{listed}\n\n{SELECT_PROMPT}")]
        )
    assert sorted([(m.role, m.text) for m in c.messages] for c in calls) == sorted(prompts)
    (step,) = trace_steps(body, "selection")
    assert sorted(step["orders"]) == orders
    assert (step["picks"], step["chosen"]) == ([3, 3, 3, 3], 3)
    assert body["usage"] == usage_for(backend, replies, answer=CANDIDATES[2])

    # A model that picks by place names a different candidate in each order.
    backend = scripted(Selector(selections=["Selected: 4"] * 4))
    response = await chat(
        backend, GENSELECT, stream=True, ponder={"genselect": {"selections": 4}, "trace": True}
    )
    reasoning = streamed_text(response.text, "reasoning_content")
    for candidate, place in ((4, 4), (1, 4), (2, 4), (3, 4)):
        label = f"candidate {candidate}" + (f", shown as {place}" if candidate != place else "")
        assert f"Selection ({label}): Selected: 4\n" in reasoning


async def test_a_tie_between_picks_goes_to_the_pick_made_first() -> None:
    selector = Selector(selections=["Selected: 3", "Selected: 1"])
    response = await chat(scripted(selector), GENSELECT, ponder={"genselect": {"selections": 2}})
    assert content(response.json()) == CANDIDATES[2]


async def test_native_n_draws_candidates_and_selections_in_one_call_each() -> None:
    selector = Selector(selections=["Selected: 1", "Selected: 2", "Selected: 2"])
    backend = scripted(selector, capabilities=Capabilities(native_n=True))
    response = await chat(
        backend, GENSELECT, ponder={"genselect": {"selections": 3, "rotate": False}}
    )
    assert content(response.json()) == CANDIDATES[1]
    assert [(is_selection(c), c.n) for c in backend.calls] == [(False, 4), (True, 3)]
    assert response.headers["x-ponder-backend-calls"] == "2"
    assert response.json()["usage"] == usage_for(backend, selector.replies, answer=CANDIDATES[1])


async def test_native_n_draws_rotated_selections_in_one_call_each() -> None:
    selector = Selector(selections=["Selected: 1", "Selected: 1", "Selected: 3"])
    backend = scripted(selector, capabilities=Capabilities(native_n=True))
    response = await chat(backend, GENSELECT, ponder={"genselect": {"selections": 3}})
    assert [(is_selection(c), c.n) for c in backend.calls] == [(False, 4)] + [(True, 1)] * 3
    assert len({c.prompt for c in selection_calls(backend)}) == 3
    assert response.headers["x-ponder-backend-calls"] == "4"
    assert response.json()["usage"] == usage_for(backend, selector.replies, answer=CANDIDATES[0])


async def test_options_and_client_temperature() -> None:
    selector = Selector(selections=["Selected: 6"])
    backend = scripted(selector)
    response = await chat(
        backend,
        GENSELECT,
        temperature=1.1,
        ponder={
            "genselect": {
                "candidates": 6,
                "temperature": 0.2,
                "compare_tokens": 64,
                "compare_temperature": 0,
            }
        },
    )
    assert content(response.json()) == CANDIDATES[5]
    assert len(backend.calls) == 7
    assert {c.sampling.temperature for c in backend.calls[:6]} == {1.1}
    (select_call,) = selection_calls(backend)
    assert (select_call.sampling.temperature, select_call.sampling.max_tokens) == (0.0, 64)


async def test_streams_candidates_and_selection_as_reasoning_then_the_choice() -> None:
    backend = scripted(Selector(selections=["x" * 300 + " Selected: 2"]))
    response = await chat(backend, GENSELECT, stream=True)
    assert response.status_code == 200
    lines = [f"Candidate {i}: {c[:80]}\n" for i, c in enumerate(CANDIDATES[:4], start=1)]
    assert streamed_text(response.text, "reasoning_content") == (
        "".join(lines) + f"Selection (candidate 2): {'x' * 200}\n"
    )
    assert streamed_text(response.text) == CANDIDATES[1]
    assert not any(c.stream for c in backend.calls)

    backend = scripted(Selector(selections=["none"]))
    response = await chat(backend, GENSELECT, stream=True)
    assert streamed_text(response.text, "reasoning_content").endswith(
        "Selection (no valid candidate): none\nNo valid selection: falling back to candidate 1\n"
    )
    response = await chat(scripted(Selector()), GENSELECT, stream=True, ponder={"reasoning": False})
    assert streamed_text(response.text, "reasoning_content") == ""
    assert streamed_text(response.text) == CANDIDATES[2]


@pytest.mark.parametrize("failing", ["candidate", "selection"])
async def test_a_failed_call_is_an_openai_shaped_503(failing: str) -> None:
    backend = scripted(Selector(fail=failing))
    response = await chat(backend, GENSELECT)
    assert_error(
        response, 503, message="down", type="api_error", param=None, code="backend_unavailable"
    )


async def test_a_failed_selection_in_a_stream_ends_it_with_the_error() -> None:
    backend = scripted(Selector(fail="selection"))
    response = await chat(backend, GENSELECT, stream=True)
    assert response.status_code == 200  # the candidates' reasoning lines went out first
    assert stream_error(response.text)["code"] == "backend_unavailable"
    deltas = [
        choice["delta"]
        for data in sse_data(response.text)[:-1]
        for choice in json.loads(data)["choices"]
    ]
    assert "Candidate 1: " in "".join(d.get("reasoning_content") or "" for d in deltas)
    assert not any(d.get("content") for d in deltas)


@pytest.mark.parametrize("limit", [1, 4])
async def test_a_budget_below_the_calls_needed_is_a_400(limit: int) -> None:
    backend = scripted(Selector())
    response = await chat(backend, GENSELECT, ponder={"max_backend_calls": limit})
    assert_error(response, 400, code="budget_exceeded", param="ponder.max_backend_calls")
    assert len(backend.calls) == limit


async def test_a_budget_that_covers_the_calls_is_enough() -> None:
    backend = scripted(Selector())
    response = await chat(backend, GENSELECT, ponder={"max_backend_calls": 5})
    assert content(response.json()) == CANDIDATES[2]


async def test_optillm_approach_selects_it() -> None:
    backend = scripted(Selector())
    response = await chat(backend, MODEL, optillm_approach="genselect")
    assert content(response.json()) == CANDIDATES[2]
    assert response.headers["x-ponder-backend-calls"] == "5"


async def test_request_n_runs_independent_selections() -> None:
    selector = Selector(selections=["Selected: 1", "Selected: 2"])
    backend = scripted(selector)
    response = await chat(backend, GENSELECT, n=2, ponder={"genselect": {"candidates": 2}})
    choices = response.json()["choices"]
    assert len(backend.calls) == 6
    assert len(choices) == 2
    assert {c["message"]["content"] for c in choices} <= set(CANDIDATES[:4])
