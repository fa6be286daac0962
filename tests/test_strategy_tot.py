"""`tot`: tree of thoughts, a beam search over partial reasoning steps."""

from __future__ import annotations

import asyncio
import json

import pytest

from ponder.backends.base import Capabilities
from ponder.errors import BackendUnavailable
from ponder.strategies.tot import (
    FINAL_INSTRUCTIONS,
    NEXT_STEP_PROMPT,
    TOT_INSTRUCTIONS,
    VALUE_PROMPT,
    one_step,
    steps_text,
)
from ponder.testing import Call, Reply, ScriptedBackend
from ponder.types import Completion
from tests.conftest import (
    MODEL,
    assert_error,
    chat,
    conversation,
    logprobs_asked,
    rated_eight,
    scripted,
    sse_data,
    sse_events,
    stream_error,
    streamed_pieces,
    streamed_text,
    trace_steps,
    usage_for,
)

TOT = f"tot-{MODEL}"
ANSWER = "The answer is 42 because six times seven is forty two."
LETTERS = "abcdefgh"

CONVERSATION = conversation(
    "Be careful.", "I have a puzzle.", "Go ahead.", "What is six times seven?"
)
CLIENT_TURNS = [(m["role"], m["content"]) for m in CONVERSATION[1:]]


def kind(call: Call) -> str:
    if call.prompt == VALUE_PROMPT:
        return "score"
    if FINAL_INSTRUCTIONS in call.messages[0].text:
        return "final"
    return "expand"


def final_path(call: Call) -> str:
    """The steps the final call was given: its system prompt after the instructions."""
    return call.messages[0].text.split(FINAL_INSTRUCTIONS, 1)[1]


def last_step(steps: str) -> str:
    """The last step of a node's text "Step 1: ...\\nStep 2: ..."."""
    return steps.splitlines()[-1].split(": ", 1)[1]


class Tree:
    """A scripted model for tot. Proposed steps are named after their parent: the root's
    children are "a", "b", "c", ...; the children of "b" are "ba", "bb", ... (in the order the
    calls arrive). A step's score comes from `scores` (5 when not listed)."""

    def __init__(
        self,
        scores: dict[str, int | str] | None = None,
        fail: str | None = None,
    ) -> None:
        self.scores = scores or {}
        self.fail = fail
        self.children: dict[str, int] = {}
        self.replies: list[str] = []

    def parent(self, call: Call) -> str:
        if call.prompt == NEXT_STEP_PROMPT:
            return last_step(call.messages[-2].text)
        return ""

    def __call__(self, call: Call, index: int) -> Reply:
        k = kind(call)
        if k == "score":
            text = str(self.scores.get(last_step(call.messages[-2].text), 5))
        elif k == "final":
            text = ANSWER
        else:
            parent = self.parent(call)
            if parent == self.fail:
                return BackendUnavailable("down")
            count = self.children.get(parent, 0)
            self.children[parent] = count + 1
            text = parent + LETTERS[count]
        self.replies.append(text)
        return text


def calls_of(backend: ScriptedBackend, name: str) -> list[Call]:
    return [c for c in backend.calls if kind(c) == name]


# ---- the search ----------------------------------------------------------------------------


async def test_defaults_make_19_calls_and_answer_from_the_best_path() -> None:
    tree = Tree({"b": 9, "a": 7, "c": 2, "ac": 10, "bb": 8})
    backend = scripted(tree)
    response = await chat(backend, TOT, messages=CONVERSATION, ponder={"trace": True})
    assert response.status_code == 200
    body = response.json()
    assert body["choices"][0]["message"]["content"] == ANSWER
    # level 1: 3 + 3; level 2: 2 nodes * 3 + 6 scores; final: 1
    assert len(backend.calls) == 19
    assert response.headers["x-ponder-backend-calls"] == "19"
    assert [kind(c) for c in backend.calls] == (
        ["expand"] * 3 + ["score"] * 3 + ["expand"] * 6 + ["score"] * 6 + ["final"]
    )
    # the beam after level 1 is b then a: level 2 expands them and nothing else
    level2 = backend.calls[6:12]
    assert (
        sorted(c.messages[-2].text for c in level2)
        == [steps_text(["a"])] * 3 + [steps_text(["b"])] * 3
    )
    # "ac" (10) beats "bb" (8): the final answer is written from the path a -> ac
    final = backend.calls[-1]
    assert final_path(final) == steps_text(["a", "ac"])
    levels = trace_steps(body, "level")
    assert levels[0]["scores"] == [7, 9, 2]
    assert levels[0]["kept"] == [1, 0]
    assert trace_steps(body, "best_path")[0]["steps"] == ["a", "ac"]
    assert body["usage"] == usage_for(backend, tree.replies)


@pytest.mark.parametrize(
    ("options", "calls"),
    [
        ({"breadth": 2, "depth": 2, "beam": 1}, 2 + 2 + 2 + 2 + 1),
        ({"breadth": 2, "depth": 3, "beam": 2}, 2 + 2 + 4 + 4 + 4 + 4 + 1),
        ({"breadth": 1, "depth": 2, "beam": 3}, 1 + 1 + 1 + 1 + 1),
        ({"breadth": 4, "depth": 1, "beam": 2}, 4 + 4 + 1),
    ],
)
async def test_call_count_follows_breadth_depth_and_beam(
    options: dict[str, int], calls: int
) -> None:
    tree = Tree()
    backend = scripted(tree)
    response = await chat(backend, TOT, ponder={"tot": options})
    assert response.json()["choices"][0]["message"]["content"] == ANSWER
    assert len(backend.calls) == calls
    assert response.headers["x-ponder-backend-calls"] == str(calls)
    assert response.json()["usage"] == usage_for(backend, tree.replies)


async def test_native_n_expands_each_node_in_one_call() -> None:
    tree = Tree()
    backend = scripted(tree, capabilities=Capabilities(native_n=True))
    response = await chat(backend, TOT)
    assert response.json()["choices"][0]["message"]["content"] == ANSWER
    # level 1: 1 + 3; level 2: 2 + 6; final: 1
    assert len(backend.calls) == 13
    assert response.headers["x-ponder-backend-calls"] == "13"
    assert [c.n for c in calls_of(backend, "expand")] == [3, 3, 3]
    assert response.json()["usage"] == usage_for(backend, tree.replies)


async def test_the_beam_keeps_only_the_best_scored_node() -> None:
    tree = Tree({"b": 9, "a": 3, "c": 3, "bb": 8, "ba": 2, "bc": 4})
    backend = scripted(tree)
    response = await chat(
        backend, TOT, messages=CONVERSATION, ponder={"tot": {"breadth": 3, "depth": 2, "beam": 1}}
    )
    assert response.json()["choices"][0]["message"]["content"] == ANSWER
    assert len(backend.calls) == 3 + 3 + 3 + 3 + 1
    level2 = calls_of(backend, "expand")[3:]
    assert len(level2) == 3
    for call in level2:
        assert call.prompt == NEXT_STEP_PROMPT
        assert call.messages[-2].role == "assistant"
        assert call.messages[-2].text == steps_text(["b"])
        every = "\n".join(m.text for m in call.messages)
        assert "Step 1: a" not in every and "Step 1: c" not in every
    # level-2 scores rate the whole path, one child each
    level2_scores = calls_of(backend, "score")[3:]
    assert sorted(c.messages[-2].text for c in level2_scores) == [
        steps_text(["b", "ba"]),
        steps_text(["b", "bb"]),
        steps_text(["b", "bc"]),
    ]
    (final,) = calls_of(backend, "final")
    assert final_path(final) == steps_text(["b", "bb"])
    assert final_path(final) == "Step 1: b\nStep 2: bb"


async def test_ties_keep_the_earlier_children_and_unparseable_scores_count_as_1() -> None:
    tree = Tree({"a": "no idea", "b": "I cannot rate this", "c": "5", "d": "5"})
    backend = scripted(tree)
    response = await chat(
        backend, TOT, ponder={"tot": {"breadth": 4, "depth": 1, "beam": 2}, "trace": True}
    )
    (level,) = trace_steps(response.json(), "level")
    assert level["scores"] == [1, 1, 5, 5]
    assert level["kept"] == [2, 3]
    (final,) = calls_of(backend, "final")
    assert final_path(final) == steps_text(["c"])


async def test_prompts_keep_the_system_prompt_and_the_earlier_turns() -> None:
    tree = Tree({"a": 8})
    backend = scripted(tree)
    await chat(backend, TOT, messages=CONVERSATION)
    for call in calls_of(backend, "expand"):
        system, *rest = call.messages
        assert (system.role, system.text) == ("system", f"Be careful.\n\n{TOT_INSTRUCTIONS}")
        turns = [(m.role, m.text) for m in rest]
        assert turns[:3] == CLIENT_TURNS
        if call.prompt == NEXT_STEP_PROMPT:
            assert turns[3][0] == "assistant" and turns[4] == ("user", NEXT_STEP_PROMPT)
            assert len(turns) == 5
        else:
            assert len(turns) == 3  # the root: the client's conversation as it is
    (final,) = calls_of(backend, "final")  # the client's conversation, the path in its system
    system, *rest = final.messages
    assert system.text == f"Be careful.\n\n{FINAL_INSTRUCTIONS}{final_path(final)}"
    assert final_path(final).startswith("Step 1: ")
    # a path that ends "The answer is N." was copied, placeholder and all
    assert "the actual result in place of any placeholder (such as N)" in FINAL_INSTRUCTIONS
    assert [(m.role, m.text) for m in rest] == CLIENT_TURNS
    for call in calls_of(backend, "score"):
        turns = [(m.role, m.text) for m in call.messages]
        assert turns[0] == ("system", "Be careful.")
        assert turns[1:4] == CLIENT_TURNS
        assert turns[4][0] == "assistant" and turns[4][1].startswith("Step 1: ")
        assert turns[5][0] == "user" and len(turns) == 6


async def test_without_a_system_prompt_the_instructions_become_one() -> None:
    backend = scripted(Tree())
    await chat(backend, TOT, ponder={"tot": {"breadth": 1, "depth": 1}})
    expand, score, final = backend.calls
    assert [(m.role, m.text) for m in expand.messages] == [
        ("system", TOT_INSTRUCTIONS),
        ("user", "hello"),
    ]
    assert [(m.role, m.text) for m in score.messages] == [
        ("user", "hello"),
        ("assistant", "Step 1: a"),
        ("user", VALUE_PROMPT),
    ]
    assert [(m.role, m.text) for m in final.messages] == [
        ("system", FINAL_INSTRUCTIONS + "Step 1: a"),
        ("user", "hello"),
    ]


# ---- concurrency ---------------------------------------------------------------------------


async def wait_for_stage(backend: ScriptedBackend, total_calls: int, in_flight: int) -> None:
    """Wait until the backend has seen `total_calls` calls, `in_flight` of them held at once."""
    async with asyncio.timeout(5):
        # calls of the previous stage are still counted in flight right after a release, so
        # wait for this stage's calls to arrive first (the backend has no event to wait on)
        while len(backend.calls) < total_calls:  # noqa: ASYNC110
            await asyncio.sleep(0)
    await backend.wait_for_in_flight(in_flight)
    assert len(backend.calls) == total_calls
    assert backend.in_flight == in_flight


async def test_each_level_expands_and_scores_all_its_children_at_once() -> None:
    backend = scripted(Tree({"b": 9}))
    backend.hold()
    request = asyncio.create_task(chat(backend, TOT))
    stages = [("expand", 3), ("score", 3), ("expand", 6), ("score", 6), ("final", 1)]
    total = 0
    for name, width in stages:
        total += width
        await wait_for_stage(backend, total, width)
        assert [kind(c) for c in backend.calls[total - width : total]] == [name] * width
        backend.release()
        backend.hold()
    backend.release()
    response = await request
    assert response.json()["choices"][0]["message"]["content"] == ANSWER
    assert backend.max_in_flight == 6
    assert len(backend.calls) == 19


# ---- sampling ------------------------------------------------------------------------------


async def test_sampling_of_steps_scores_and_the_final_answer() -> None:
    backend = scripted(Tree())
    await chat(
        backend,
        TOT,
        max_tokens=50,
        stop=["END"],
        seed=7,
        ponder={"tot": {"thought_tokens": 64, "score_tokens": 4}},
    )
    for call in calls_of(backend, "expand"):
        s = call.sampling
        assert (s.temperature, s.max_tokens, s.stop, s.seed) == (0.7, 64, (), 7)
    for call in calls_of(backend, "score"):
        s = call.sampling
        assert (s.temperature, s.max_tokens, s.stop, s.seed) == (0.0, 4, (), 7)
    (final,) = calls_of(backend, "final")
    s = final.sampling
    assert (s.temperature, s.max_tokens, s.stop, s.seed) == (None, 50, ("END",), 7)


async def test_a_client_temperature_above_zero_is_kept_for_steps_and_the_answer() -> None:
    backend = scripted(Tree())
    await chat(backend, TOT, temperature=1.1, ponder={"tot": {"temperature": 0.3}})
    assert {c.sampling.temperature for c in calls_of(backend, "expand")} == {1.1}
    assert {c.sampling.max_tokens for c in calls_of(backend, "expand")} == {128}
    assert {c.sampling.temperature for c in calls_of(backend, "score")} == {0.0}
    assert {c.sampling.max_tokens for c in calls_of(backend, "score")} == {8}
    assert calls_of(backend, "final")[0].sampling.temperature == 1.1


async def test_a_client_temperature_of_zero_uses_the_configured_one_for_steps() -> None:
    backend = scripted(Tree())
    await chat(backend, TOT, temperature=0, ponder={"tot": {"temperature": 0.3}})
    assert {c.sampling.temperature for c in calls_of(backend, "expand")} == {0.3}
    assert calls_of(backend, "final")[0].sampling.temperature == 0


# ---- streaming -----------------------------------------------------------------------------


async def test_streams_levels_as_reasoning_and_the_answer_token_by_token() -> None:
    tree = Tree({"b": 9, "bc": 7})
    backend = scripted(tree)
    response = await chat(backend, TOT, stream=True, stream_options={"include_usage": True})
    assert response.status_code == 200
    assert streamed_text(response.text, "reasoning_content") == (
        "Level 1: best score 9: b\nLevel 2: best score 7: bc\n"
    )
    assert streamed_text(response.text) == ANSWER
    assert len(streamed_pieces(response.text)) == len(ANSWER.split())
    assert [c.stream for c in backend.calls] == [False] * 18 + [True]
    usage = sse_events(response.text)[-1]["usage"]
    assert usage == usage_for(backend, tree.replies)


async def test_the_reasoning_line_shows_the_first_80_characters_of_the_best_step() -> None:
    long_step = "x" * 100

    def reply(call: Call, index: int) -> str:
        return {"score": "6", "final": "done"}.get(kind(call), long_step)

    backend = scripted(reply)
    response = await chat(backend, TOT, stream=True, ponder={"tot": {"depth": 1}})
    assert streamed_text(response.text, "reasoning_content") == (
        f"Level 1: best score 6: {'x' * 80}\n"
    )


async def test_reasoning_can_be_turned_off() -> None:
    backend = scripted(Tree())
    response = await chat(backend, TOT, stream=True, ponder={"reasoning": False})
    assert streamed_text(response.text, "reasoning_content") == ""
    assert streamed_text(response.text) == ANSWER


# ---- failures, budget, options -------------------------------------------------------------


async def test_a_failure_mid_search_is_an_openai_shaped_503() -> None:
    backend = scripted(Tree({"b": 9}, fail="b"))
    response = await chat(backend, TOT)
    assert_error(response, 503, type="api_error", code="backend_unavailable", message="down")
    assert not calls_of(backend, "final")


async def test_a_failure_mid_search_in_a_stream_is_an_openai_shaped_error() -> None:
    backend = scripted(Tree({"b": 9}, fail="b"))
    response = await chat(backend, TOT, stream=True)
    # level 1's reasoning line went out before the failure: the stream ends with the error
    assert response.status_code == 200
    assert stream_error(response.text) == {
        "message": "down",
        "type": "api_error",
        "param": None,
        "code": "backend_unavailable",
    }
    reasoning = "".join(
        choice["delta"].get("reasoning_content") or ""
        for event in map(json.loads, sse_data(response.text)[:-1])
        for choice in event["choices"]
    )
    assert reasoning == "Level 1: best score 9: b\n"


async def test_a_budget_below_what_the_search_needs_is_a_400() -> None:
    backend = scripted(Tree())
    response = await chat(backend, TOT, ponder={"max_backend_calls": 18})
    assert_error(response, 400, code="budget_exceeded", param="ponder.max_backend_calls")
    assert len(backend.calls) == 18


async def test_a_budget_that_covers_the_search_is_enough() -> None:
    backend = scripted(Tree())
    response = await chat(backend, TOT, ponder={"max_backend_calls": 19})
    assert response.status_code == 200
    assert len(backend.calls) == 19


async def test_optillm_approach_selects_tot() -> None:
    backend = scripted(Tree())
    response = await chat(backend, MODEL, optillm_approach="tot")
    assert response.json()["choices"][0]["message"]["content"] == ANSWER
    assert len(backend.calls) == 19


async def test_request_n_runs_independent_searches() -> None:
    backend = scripted(Tree())
    response = await chat(backend, TOT, n=2, ponder={"tot": {"breadth": 1, "depth": 1}})
    body = response.json()
    assert [c["message"]["content"] for c in body["choices"]] == [ANSWER, ANSWER]
    assert len(backend.calls) == 2 * 3


@pytest.mark.parametrize(
    ("text", "finish", "step"),
    [
        ("Add 4 and 5 to get 9.", "stop", "Add 4 and 5 to get 9."),
        ("Step 1: Add 4 and 5.\nStep 2: Double it.\nThe answer is 18.", "stop", "Add 4 and 5."),
        (
            "**Step 3:** Subtract 2: 7 - 2 = 5.\n\n**Step 4:** Done.",
            "stop",
            "Subtract 2: 7 - 2 = 5.",
        ),
        ("First, 4 + 5 = 9. Then the th", "length", "First, 4 + 5 = 9."),
        ("A total of 4 pages\nand th", "length", "A total of 4 pages"),
        ("No sentence end at all", "length", "No sentence end at all"),
        (
            "Then 9 * 2 = 18.\nNext, mention step 2 in passing.",
            "stop",
            "Then 9 * 2 = 18.\nNext, mention step 2 in passing.",
        ),
    ],
)
def test_a_proposal_is_kept_as_one_step(text: str, finish: str, step: str) -> None:
    assert one_step(Completion(text, finish_reason=finish)) == step


async def test_labelled_and_cut_off_proposals_make_clean_paths_and_the_last_call_finishes() -> None:
    proposals = iter(
        [
            "Step 1: Count the boxes: 6.\nStep 2: Multiply by 4: 24.\nThe answer is 24.",
            "Step 1: Six boxes of four pencils.",
            Completion("Start with 6 * 4 = 24. Then subtract fi", finish_reason="length"),
        ]
    )

    def reply(call: Call, index: int) -> Reply:
        if call.prompt == VALUE_PROMPT:
            return "7"
        if kind(call) == "final":
            return "24 - 5 = 19. The answer is 19."
        return next(proposals)

    backend = scripted(reply)
    response = await chat(backend, TOT, ponder={"tot": {"depth": 1, "beam": 1}, "trace": True})
    (level,) = trace_steps(response.json(), "level")
    assert level["steps"] == [
        "Count the boxes: 6.",
        "Six boxes of four pencils.",
        "Start with 6 * 4 = 24.",
    ]
    final = backend.calls[-1]
    assert [(m.role, m.text) for m in final.messages] == [
        ("system", FINAL_INSTRUCTIONS + "Step 1: Count the boxes: 6."),
        ("user", "hello"),
    ]
    assert response.json()["choices"][0]["message"]["content"] == "24 - 5 = 19. The answer is 19."


@pytest.mark.parametrize("confidence", [True, False])
async def test_where_the_backend_has_logprobs_a_rating_is_its_expected_score(
    confidence: bool,
) -> None:
    """Both children are rated "8"; the model is surer of "b". With logprobs read, "b" leads
    the path; with `confidence` off, the tie goes to the earlier "a" and nothing asks for
    logprobs."""
    sureness = {"a": 0.6, "b": 0.95}
    proposals = iter("ab")

    def reply(call: Call, index: int) -> Reply:
        if kind(call) == "score":  # logprobs only when asked, as a backend gives them
            sure = sureness[last_step(call.messages[-2].text)]
            return rated_eight(call, sure)
        if kind(call) == "final":
            return ANSWER
        return next(proposals)

    backend = scripted(reply, capabilities=Capabilities(logprobs=True))
    options = {"breadth": 2, "depth": 1, "beam": 1, "confidence": confidence}
    response = await chat(backend, TOT, ponder={"tot": options, "trace": True})
    (level,) = trace_steps(response.json(), "level")
    scores = calls_of(backend, "score")
    assert len(scores) == 2
    if confidence:
        assert level["scores"] == pytest.approx([0.6 * 8 + 0.4 * 2, 0.95 * 8 + 0.05 * 2])
        assert logprobs_asked(scores) == {(True, 10)}
        assert final_path(calls_of(backend, "final")[0]) == steps_text(["b"])
    else:
        assert level["scores"] == [8.0, 8.0]
        assert logprobs_asked(scores) == {(False, None)}
        assert final_path(calls_of(backend, "final")[0]) == steps_text(["a"])
    # expansions and the answer never ask for logprobs the client did not
    assert not any(c.sampling.logprobs for c in backend.calls if kind(c) != "score")


async def test_a_backend_without_logprobs_is_not_asked_for_them() -> None:
    backend = scripted(Tree({"a": 9}))
    await chat(backend, TOT, ponder={"tot": {"breadth": 2, "depth": 1}})
    assert not any(c.sampling.logprobs for c in backend.calls)
