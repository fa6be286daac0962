"""`longcepo`, a plugin: an input beyond the context window is split into parts, all read at
once (bounded by the backend's concurrency) for notes on the question, the parts with nothing
relevant dropped, the notes combined (in rounds when they do not fit in one call), and the rest
of the route answers from them. An input that fits goes through untouched. On ScriptedBackend."""

from __future__ import annotations

import asyncio
import re

from ponder.errors import BackendError
from ponder.plugins.chunks import cut
from ponder.plugins.longcepo import (
    MAP_SYSTEM,
    NO_NOTES,
    REDUCE_SYSTEM,
    group,
    irrelevant,
    map_prompt,
    reduce_prompt,
)
from ponder.testing import Call, Reply
from ponder.tokens import count_prompt_tokens
from ponder.types import Message
from tests.conftest import (
    MODEL,
    assert_error,
    chat,
    conversation,
    sse_events,
    stream_error,
    streamed_text,
    trace_steps,
    usage_for,
    user,
)
from tests.long_document import (
    ANSWER,
    DOCUMENT,
    PARTS,
    QUESTION,
    SECTIONS,
    WINDOW,
    answered,
    part_of,
    windowed,
)

OPTIONS = {"chunk_tokens": 200, "overlap_tokens": 0, "notes_tokens": 64}
COMBINED = "Section 3 records 313 crates (line 3.13)."
NOTES_BLOCK = (
    "### Notes from the full input\n"
    "The input was too long to read at once. Ponder read all of it in parts and took these "
    "notes about the question; answer from them.\n\n{notes}\n### End of notes from the full input"
)


def is_map(call: Call) -> bool:
    return call.messages[0].text == MAP_SYSTEM.format(cap=64)


def is_reduce(call: Call) -> bool:
    return call.messages[0].text == REDUCE_SYSTEM.format(cap=64)


def reader(call: Call, index: int) -> Reply:
    """Parts 2 and 4 have nothing relevant; the others give "notes N"."""
    if is_map(call):
        number = part_of(call)
        return "NOTHING RELEVANT." if number in (2, 4) else f"notes {number}"
    return COMBINED if is_reduce(call) else ANSWER


async def test_parts_are_mapped_the_irrelevant_dropped_the_notes_reduced_then_answered() -> None:
    backend = windowed(reader)
    response = await chat(
        backend,
        f"longcepo-{MODEL}",
        messages=conversation("Be precise.", DOCUMENT),
        ponder={"longcepo": OPTIONS, "trace": True},
        temperature=0.6,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == ANSWER
    assert response.headers["x-ponder-backend-calls"] == "7"  # 5 maps + 1 reduce + 1 answer
    maps = [c for c in backend.calls if is_map(c)]
    assert sorted((list(c.messages) for c in maps), key=lambda m: m[1].text) == [
        map_prompt(QUESTION, part, number, 5, 64) for number, part in enumerate(PARTS, start=1)
    ]
    assert all(c.sampling.max_tokens == 64 and c.sampling.temperature == 0.0 for c in maps)
    assert maps[0].prompt == (
        f"Question: {QUESTION}\n\n--- Part 1 of 5 ---\n{SECTIONS[0]}\n--- End of part 1 ---\n\n"
        "Write your notes."
    )
    reduce, answer = backend.calls[5:]
    assert list(reduce.messages) == reduce_prompt(QUESTION, ["notes 1", "notes 3", "notes 5"], 64)
    assert reduce.prompt == (
        f"Question: {QUESTION}\n\n[Notes 1]\nnotes 1\n\n[Notes 2]\nnotes 3\n\n[Notes 3]\nnotes 5"
        "\n\nWrite the combined notes."
    )
    assert list(answer.messages) == [
        Message("system", "Be precise.\n\n" + NOTES_BLOCK.format(notes=COMBINED)),
        Message("user", QUESTION),
    ]
    assert answer.sampling.temperature == 0.6
    replies = ["notes 1", "NOTHING RELEVANT.", "notes 3", "NOTHING RELEVANT.", "notes 5"]
    assert body["usage"] == usage_for(backend, [*replies, COMBINED, ANSWER])
    (mapped,) = trace_steps(body, "longcepo_map")
    assert (mapped["parts"], mapped["relevant"]) == (5, [1, 3, 5])
    assert [s["groups"] for s in trace_steps(body, "longcepo_reduce")] == [1]


async def test_an_input_that_fits_goes_to_the_route_unchanged_with_no_extra_call() -> None:
    backend = windowed(["short"])
    response = await chat(backend, f"longcepo-{MODEL}", messages=[user("What is 2 + 2?")])
    assert response.json()["choices"][0]["message"]["content"] == "short"
    assert [c.prompt for c in backend.calls] == ["What is 2 + 2?"]
    assert response.headers["x-ponder-backend-calls"] == "1"


async def test_the_map_runs_all_at_once_within_the_backends_concurrency() -> None:
    for concurrency in (3, 16):
        backend = windowed(reader, concurrency=concurrency)
        backend.hold()
        request = asyncio.create_task(
            chat(
                backend,
                f"longcepo-{MODEL}",
                messages=[user(DOCUMENT)],
                ponder={"longcepo": OPTIONS},
            )
        )
        await backend.wait_for_in_flight(min(concurrency, 5))
        backend.release()
        response = await request
        assert response.status_code == 200, response.text
        assert backend.max_in_flight == min(concurrency, 5)
        assert len(backend.calls) == 7


async def test_notes_that_do_not_fit_one_call_are_combined_in_rounds() -> None:
    """A window of 370 tokens holds two notes per reduce call, not three: five notes take
    [1+2, 3+4, 5] then [12+34, 5] then [1234+5]: four reduce calls."""
    filler = " ".join(f"crate count {j} is fine." for j in range(8))
    sections = [
        f"Section {i}: " + " ".join(f"Line {i}.{j} records {j} crates." for j in range(10))
        for i in range(1, 6)
    ]

    def replies(call: Call, index: int) -> Reply:
        if is_map(call):
            return f"note {part_of(call)}: {filler}"
        if is_reduce(call):
            labels = re.findall(r"\]\n(?:note|merged) ([\d+]+)", call.prompt)
            return f"merged {'+'.join(labels)}: {filler}"
        return ANSWER

    backend = windowed(replies, window=370)
    response = await chat(
        backend,
        f"longcepo-{MODEL}",
        messages=[user("\n\n".join([*sections, QUESTION]))],
        ponder={"longcepo": {**OPTIONS, "chunk_tokens": 120}, "trace": True},
    )
    assert response.status_code == 200, response.text
    reduces = [c for c in backend.calls if is_reduce(c)]
    merged = [re.findall(r"\]\n(?:note|merged) ([\d+]+)", c.prompt) for c in reduces]
    assert merged == [["1", "2"], ["3", "4"], ["1+2", "3+4"], ["1+2+3+4", "5"]]
    assert all(count_prompt_tokens(c.messages) + 64 <= 370 for c in backend.calls[:-1])
    assert len(backend.calls) == 5 + 4 + 1
    rounds = trace_steps(response.json(), "longcepo_reduce")
    assert [(s["groups"], s["notes"]) for s in rounds] == [(3, 3), (2, 2), (1, 1)]
    assert backend.calls[-1].messages[0].text == NOTES_BLOCK.format(
        notes=cut(f"merged 1+2+3+4+5: {filler}", 64)  # combined notes stay within their cap
    )


async def test_with_nothing_relevant_anywhere_the_route_answers_from_that() -> None:
    backend = windowed(lambda call, i: "NOTHING RELEVANT" if is_map(call) else ANSWER)
    response = await chat(
        backend, f"longcepo-{MODEL}", messages=[user(DOCUMENT)], ponder={"longcepo": OPTIONS}
    )
    assert response.status_code == 200, response.text
    assert len(backend.calls) == 5 + 1  # no reduce
    assert backend.calls[-1].messages[0].text == NOTES_BLOCK.format(notes=NO_NOTES)


async def test_around_sc_every_sample_answers_from_the_notes() -> None:
    votes = iter(["The answer is 3.", "The answer is 3.", "The answer is 5."])

    def replies(call: Call, index: int) -> Reply:
        return reader(call, index) if is_map(call) or is_reduce(call) else next(votes)

    backend = windowed(replies)
    response = await chat(
        backend,
        f"longcepo&sc-{MODEL}",
        messages=[user(DOCUMENT)],
        ponder={"longcepo": OPTIONS, "sc": {"samples": 3}},
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "The answer is 3."
    assert len(backend.calls) == 5 + 1 + 3
    for call in backend.calls[6:]:
        assert call.messages[0].text == NOTES_BLOCK.format(notes=COMBINED)
        assert call.prompt == QUESTION


async def test_the_reading_streams_as_reasoning_then_the_answer() -> None:
    backend = windowed(reader)
    response = await chat(
        backend,
        f"longcepo-{MODEL}",
        messages=[user(DOCUMENT)],
        ponder={"longcepo": OPTIONS},
        stream=True,
        stream_options={"include_usage": True},
    )
    reasoning = streamed_text(response.text, "reasoning_content")
    assert reasoning.startswith(
        "The input is too long for one call: reading its 5 parts at once.\n"
    )
    assert "Part 2 of 5: nothing relevant.\n" in reasoning
    assert "Combined the notes into 1 (round 1).\n" in reasoning
    assert streamed_text(response.text) == ANSWER
    assert [c.stream for c in backend.calls] == [False] * 6 + [True]
    replies = ["notes 1", "NOTHING RELEVANT.", "notes 3", "NOTHING RELEVANT.", "notes 5"]
    assert sse_events(response.text)[-1]["usage"] == usage_for(
        backend, [*replies, COMBINED, ANSWER]
    )


async def test_a_backend_failure_in_the_map_fails_the_request_with_no_answer() -> None:
    def failing(call: Call, index: int) -> Reply:
        if is_map(call) and part_of(call) == 3:
            return BackendError("upstream broke")
        return reader(call, index)

    for stream in (False, True):
        backend = windowed(failing)
        response = await chat(
            backend,
            f"longcepo-{MODEL}",
            messages=[user(DOCUMENT)],
            ponder={"longcepo": OPTIONS},
            stream=stream,
        )
        if stream:
            assert stream_error(response.text) == {
                "message": "upstream broke",
                "type": "api_error",
                "param": None,
                "code": "backend_error",
            }
            assert answered(response.text) == ""
        else:
            assert_error(response, 502, type="api_error", code="backend_error")
        assert all(is_map(c) for c in backend.calls)  # no reduce, no answer


async def test_the_window_comes_from_the_backend_or_the_option_else_a_400() -> None:
    backend = windowed(reader, window=None)
    response = await chat(backend, f"longcepo-{MODEL}", messages=[user(DOCUMENT)])
    assert_error(
        response, 400, type="invalid_request_error", param="ponder.longcepo.context_window"
    )
    response = await chat(
        backend,
        f"longcepo-{MODEL}",
        messages=[user(DOCUMENT)],
        ponder={"longcepo": {**OPTIONS, "context_window": 256, "question": QUESTION * 8}},
    )
    assert_error(response, 400, param="ponder.longcepo.context_window")
    response = await chat(
        backend,
        f"longcepo-{MODEL}",
        messages=[user(DOCUMENT)],
        ponder={"longcepo": {**OPTIONS, "context_window": WINDOW}, "max_backend_calls": 5},
    )
    assert_error(response, 400, code="budget_exceeded", param="ponder.max_backend_calls")
    assert backend.calls == []
    response = await chat(
        backend,
        f"longcepo-{MODEL}",
        messages=[user(DOCUMENT)],
        ponder={"longcepo": {**OPTIONS, "context_window": WINDOW}},
    )
    assert response.status_code == 200 and len(backend.calls) == 7


async def test_notes_larger_than_the_window_holds_are_fitted_to_it() -> None:
    """`notes_tokens` is an upper bound: in a window that cannot combine two notes of 512
    tokens, the notes are capped lower, and every map and reduce call fits in the window."""
    window = 653

    def replies(call: Call, index: int) -> Reply:
        if call.messages[0].text.startswith("You read"):
            return f"notes {part_of(call)}"
        return COMBINED if call.messages[0].text.startswith("You combine") else ANSWER

    backend = windowed(replies, window=window)
    response = await chat(
        backend,
        f"longcepo-{MODEL}",
        messages=[user(DOCUMENT)],
        ponder={"longcepo": {"overlap_tokens": 0}, "trace": True},
        max_tokens=100,
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == ANSWER
    (step,) = trace_steps(response.json(), "longcepo_map")
    cap = step["notes_cap"]
    assert 32 <= cap < 512
    *helpers, answer = backend.calls
    maps = [c for c in helpers if c.messages[0].text == MAP_SYSTEM.format(cap=cap)]
    reduces = [c for c in helpers if c.messages[0].text == REDUCE_SYSTEM.format(cap=cap)]
    assert len(maps) == step["parts"] > 1 and len(reduces) >= 1
    assert len(maps) + len(reduces) == len(helpers)
    assert all(c.sampling.max_tokens == cap for c in helpers)
    # each call's prompt and its notes at the cap fit in the window (less its margin)
    assert all(count_prompt_tokens(c.messages) + cap <= window * 0.9 for c in helpers)
    assert answer.prompt == QUESTION


def test_irrelevant_replies_and_groups_of_notes() -> None:
    assert irrelevant("NOTHING RELEVANT") and irrelevant(" nothing relevant. ") and irrelevant("")
    assert not irrelevant("Nothing relevant here except line 3.")
    assert group(["a", "b", "c"], 10_000) == [["a", "b", "c"]]
    assert group(["a", "b", "c"], 16) == [["a", "b"], ["c"]]


def test_an_upstreams_window_comes_from_its_setting() -> None:
    """The `openai` backend knows no window unless PONDER_UPSTREAM_CONTEXT_WINDOW says it."""
    import httpx

    from ponder.config import Settings
    from ponder.proxy import create_app
    from ponder.testing import FakeUpstream, running_server

    fake = FakeUpstream()
    body = {"model": "longcepo-fake-model", "messages": [{"role": "user", "content": "hi"}]}
    with running_server(fake.app) as upstream:
        for window, status in ((None, 400), (4096, 200)):
            settings = Settings(backend="openai", base_url=upstream, upstream_context_window=window)
            with running_server(create_app(settings)) as url:
                response = httpx.post(f"{url}/chat/completions", json=body, timeout=30)
            assert response.status_code == status, response.text
    assert len(fake.requests) == 1  # the short input fits: passed on as it is, once
    assert fake.requests[0]["messages"] == body["messages"]
