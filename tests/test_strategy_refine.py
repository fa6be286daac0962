"""`refine`: self-refine, draft -> (critique -> revision) x rounds, stopping when a critique
finds nothing to fix."""

from __future__ import annotations

from typing import Any

import pytest

from ponder.errors import BackendUnavailable
from ponder.strategies.common import preview
from ponder.strategies.refine import CRITIQUE_PROMPT, NO_ISSUES, REVISE_PROMPT, needs_fix
from ponder.types import Completion
from tests.conftest import (
    MODEL,
    assert_error,
    chat,
    conversation,
    finish_reasons,
    scripted,
    sse_events,
    streamed_pieces,
    streamed_text,
    trace_steps,
    usage_for,
)

REFINE = f"refine-{MODEL}"

CONVERSATION = conversation(
    "Be precise.", "I have 3 apples.", "Noted.", "I eat one and buy five. How many now?"
)
TURNS = [(m["role"], m["content"]) for m in CONVERSATION]

DRAFT = "You have 8 apples."
CRITIQUE_1 = "You forgot the apple that was eaten: 3 - 1 + 5.\nVERDICT: FIX"
REVISION_1 = "3 - 1 + 5 = 7, so you have 7 apples."
CRITIQUE_2 = "Say the final number on its own line.\nVERDICT: FIX"
REVISION_2 = "3 - 1 + 5 = 7.\nYou have 7 apples now."
FULL = [DRAFT, CRITIQUE_1, REVISION_1, CRITIQUE_2, REVISION_2]


def turns(call_messages: Any) -> list[tuple[str, str]]:
    return [(m.role, m.text) for m in call_messages]


async def test_two_rounds_draft_critique_revise_with_the_conversation_kept() -> None:
    backend = scripted(list(FULL))
    response = await chat(backend, REFINE, messages=CONVERSATION, ponder={"trace": True})
    assert response.status_code == 200
    body = response.json()
    assert body["choices"][0]["message"]["content"] == REVISION_2
    assert len(backend.calls) == 5
    assert response.headers["x-ponder-backend-calls"] == "5"
    draft, critique1, revise1, critique2, revise2 = backend.calls
    assert turns(draft.messages) == TURNS
    assert turns(critique1.messages) == [
        *TURNS,
        ("assistant", DRAFT),
        ("user", CRITIQUE_PROMPT),
    ]
    assert turns(revise1.messages) == [
        *TURNS,
        ("assistant", DRAFT),
        ("user", REVISE_PROMPT.format(critique=CRITIQUE_1)),
    ]
    assert CRITIQUE_1 in revise1.prompt
    assert turns(critique2.messages) == [
        *TURNS,
        ("assistant", REVISION_1),
        ("user", CRITIQUE_PROMPT),
    ]
    assert turns(revise2.messages) == [
        *TURNS,
        ("assistant", REVISION_1),
        ("user", REVISE_PROMPT.format(critique=CRITIQUE_2)),
    ]
    assert NO_ISSUES in CRITIQUE_PROMPT
    assert body["usage"] == usage_for(backend, FULL)
    steps = [(s["step"], s.get("round")) for s in body["ponder"]["trace"]]
    assert steps == [
        ("draft", None),
        ("critique", 1),
        ("revision", 1),
        ("critique", 2),
        ("revision", 2),
    ]


async def test_a_critique_with_nothing_to_fix_stops_at_once_with_the_draft() -> None:
    backend = scripted([DRAFT, "no issues."])
    response = await chat(backend, REFINE, messages=CONVERSATION, ponder={"trace": True})
    body = response.json()
    assert body["choices"][0]["message"]["content"] == DRAFT
    assert len(backend.calls) == 2
    assert response.headers["x-ponder-backend-calls"] == "2"
    assert turns(backend.calls[1].messages)[-1] == ("user", CRITIQUE_PROMPT)
    (critique,) = trace_steps(body, "critique")
    assert (critique["verdict"], critique["revise"]) == (None, False)
    assert body["usage"] == usage_for(backend, [DRAFT, "no issues."], answer=DRAFT)


CHECK = "Step 1 says 3 - 1 = 2: it holds.\nStep 2 says 2 + 5 = 8: 2 + 5 is 7, so it is wrong."


@pytest.mark.parametrize(
    ("critique", "fix"),
    [
        (f"{CHECK}\n- Step 2: use 7.\nVERDICT: FIX", True),
        (f"{CHECK}\n**Verdict:** fix.", True),
        ("Step 1 holds. Step 2 holds.\nVERDICT: NO ISSUES", False),
        ("Step 1 holds.\n`VERDICT: NO ISSUES`", False),
        # the last verdict line rules, not one quoted earlier
        ("I could write VERDICT: NO ISSUES, but step 2 is wrong.\nVERDICT: FIX", True),
        ("VERDICT: FIX, I thought, but it holds.\nVERDICT: NO ISSUES", False),
        # no verdict line, whatever the critique says: no revision (the 1.5B approves in its
        # own words, and its revisions of such critiques only ever made answers worse)
        ("NO ISSUES", False),
        ("Step 1 holds. Step 2 holds.\n\nThe answer is \\(\\boxed{7}\\).", False),
        ("There are no issues with the units, but step 2 adds wrongly.", False),
        (CHECK, False),
        ("VERDICT: maybe", False),
    ],
)
def test_only_a_fix_verdict_asks_for_a_revision(critique: str, fix: bool) -> None:
    assert needs_fix(critique) is fix


async def test_a_critique_without_a_verdict_keeps_the_draft() -> None:
    backend = scripted([DRAFT, CHECK])
    response = await chat(backend, REFINE, messages=CONVERSATION, ponder={"trace": True})
    body = response.json()
    assert body["choices"][0]["message"]["content"] == DRAFT
    assert len(backend.calls) == 2
    (step,) = trace_steps(body, "critique")
    assert (step["critique"], step["verdict"], step["revise"]) == (CHECK, None, False)


async def test_a_check_that_ends_with_no_issues_keeps_the_draft() -> None:
    critique = f"Step 1 says 3 - 1 + 5 = 8: 3 - 1 + 5 is 7... {DRAFT}\nVERDICT: {NO_ISSUES}"
    backend = scripted([DRAFT, critique])
    response = await chat(backend, REFINE, messages=CONVERSATION, ponder={"trace": True})
    body = response.json()
    assert body["choices"][0]["message"]["content"] == DRAFT
    assert len(backend.calls) == 2
    (step,) = trace_steps(body, "critique")
    assert (step["critique"], step["verdict"], step["revise"]) == (critique, NO_ISSUES, False)


async def test_a_check_that_ends_with_fix_sends_the_whole_check_to_the_revision() -> None:
    critique = f"{CHECK}\n- Step 2: 2 + 5 is 7.\nVERDICT: FIX"
    backend = scripted([DRAFT, critique, REVISION_1])
    response = await chat(backend, REFINE, messages=CONVERSATION, ponder={"refine": {"rounds": 1}})
    assert response.json()["choices"][0]["message"]["content"] == REVISION_1
    assert len(backend.calls) == 3
    assert turns(backend.calls[2].messages)[-1] == (
        "user",
        REVISE_PROMPT.format(critique=critique),
    )


async def test_a_critique_cut_off_before_its_verdict_keeps_the_draft() -> None:
    backend = scripted([DRAFT, Completion(CHECK, finish_reason="length")])
    response = await chat(backend, REFINE, messages=CONVERSATION, ponder={"trace": True})
    body = response.json()
    assert body["choices"][0]["message"]["content"] == DRAFT
    assert len(backend.calls) == 2
    (step,) = trace_steps(body, "critique")
    assert (step["verdict"], step["revise"]) == (None, False)


async def test_a_clean_critique_in_round_two_keeps_the_first_revision() -> None:
    replies = [DRAFT, CRITIQUE_1, REVISION_1, NO_ISSUES]
    backend = scripted(list(replies))
    response = await chat(backend, REFINE, messages=CONVERSATION)
    body = response.json()
    assert body["choices"][0]["message"]["content"] == REVISION_1
    assert len(backend.calls) == 4
    assert response.headers["x-ponder-backend-calls"] == "4"
    assert turns(backend.calls[3].messages)[-2:] == [
        ("assistant", REVISION_1),
        ("user", CRITIQUE_PROMPT),
    ]
    assert body["usage"] == usage_for(backend, replies, answer=REVISION_1)


async def test_rounds_option_sets_the_number_of_calls() -> None:
    replies = [DRAFT, CRITIQUE_1, REVISION_1]
    backend = scripted(list(replies))
    response = await chat(backend, REFINE, ponder={"refine": {"rounds": 1}})
    assert response.json()["choices"][0]["message"]["content"] == REVISION_1
    assert len(backend.calls) == 3
    assert response.headers["x-ponder-backend-calls"] == "3"


async def test_answers_use_the_client_sampling_and_critiques_their_own() -> None:
    backend = scripted(list(FULL))
    await chat(
        backend,
        REFINE,
        temperature=0.6,
        max_tokens=300,
        stop=["END"],
        seed=7,
        ponder={"refine": {"critique_tokens": 99}},
    )
    draft, critique1, revise1, critique2, revise2 = backend.calls
    for call in (draft, revise1, revise2):
        s = call.sampling
        assert (s.temperature, s.max_tokens, s.stop, s.seed) == (0.6, 300, ("END",), 7)
    for call in (critique1, critique2):
        s = call.sampling
        assert (s.temperature, s.max_tokens, s.stop, s.seed) == (0.0, 99, (), 7)


async def test_critique_temperature_option() -> None:
    backend = scripted(list(FULL))
    await chat(backend, REFINE, ponder={"refine": {"temperature": 0.4}})
    assert [c.sampling.temperature for c in backend.calls] == [None, 0.4, None, 0.4, None]
    assert backend.calls[1].sampling.max_tokens == 512


async def test_streams_reasoning_then_the_last_revision_token_by_token() -> None:
    backend = scripted(list(FULL))
    response = await chat(
        backend,
        REFINE,
        messages=CONVERSATION,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert response.status_code == 200
    reasoning = streamed_text(response.text, "reasoning_content")
    assert reasoning == (
        f"Draft: {DRAFT}\n"
        f"Critique 1: {preview(CRITIQUE_1, 200)}\n"  # on one line
        "Revision 1\n"
        f"Critique 2: {preview(CRITIQUE_2, 200)}\n"
        "Revision 2\n"
    )
    assert streamed_text(response.text) == REVISION_2
    assert len(streamed_pieces(response.text)) > 3  # word by word, not in one piece
    assert [c.stream for c in backend.calls] == [False, False, False, False, True]
    assert finish_reasons(response.text) == ["stop"]
    (usage,) = [e["usage"] for e in sse_events(response.text) if e.get("usage")]
    assert usage == usage_for(backend, FULL)


async def test_streamed_early_stop_sends_the_answer_as_content() -> None:
    backend = scripted([DRAFT, NO_ISSUES])
    response = await chat(backend, REFINE, stream=True)
    assert streamed_text(response.text) == DRAFT
    assert streamed_text(response.text, "reasoning_content") == (
        f"Draft: {DRAFT}\nCritique 1: {NO_ISSUES}\n"
    )
    assert finish_reasons(response.text) == ["stop"]


async def test_reasoning_off_streams_only_the_answer() -> None:
    backend = scripted(list(FULL))
    response = await chat(backend, REFINE, stream=True, ponder={"reasoning": False})
    assert streamed_text(response.text, "reasoning_content") == ""
    assert streamed_text(response.text) == REVISION_2


async def test_long_lines_are_cut_in_the_reasoning() -> None:
    long_draft = "word " * 100
    backend = scripted([long_draft, NO_ISSUES])
    response = await chat(backend, REFINE, stream=True)
    first_line = streamed_text(response.text, "reasoning_content").split("\n")[0]
    assert first_line == "Draft: " + long_draft[:200]


async def test_a_failed_critique_is_an_openai_error() -> None:
    backend = scripted([DRAFT, BackendUnavailable("down")])
    response = await chat(backend, REFINE)
    assert_error(response, 503, code="backend_unavailable", message="down")
    assert len(backend.calls) == 2


async def test_budget_below_the_calls_needed_is_a_400() -> None:
    backend = scripted(list(FULL))
    response = await chat(backend, REFINE, ponder={"max_backend_calls": 2})
    assert_error(response, 400, code="budget_exceeded")
    assert len(backend.calls) == 2


async def test_bad_rounds_is_a_400_naming_the_field() -> None:
    backend = scripted()
    response = await chat(backend, REFINE, ponder={"refine": {"rounds": 6}})
    assert_error(response, 400, param="ponder.refine.rounds")
    assert backend.calls == []


async def test_optillm_alias_selects_refine() -> None:
    for fields in (
        {"model": MODEL, "optillm_approach": "self_refine"},
        {"model": f"self_refine-{MODEL}"},
    ):
        backend = scripted([DRAFT, NO_ISSUES])
        model = str(fields.pop("model"))
        response = await chat(backend, model, **fields)
        assert response.json()["choices"][0]["message"]["content"] == DRAFT
        assert len(backend.calls) == 2
