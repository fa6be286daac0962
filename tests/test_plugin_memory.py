"""`memory`, a plugin: an input too long for the context window is read in parts, each part
rewriting a bounded memory (condensed, then cut, past its cap); the rest of the route answers
from the memory and the question. An input that fits goes through untouched. On
ScriptedBackend, with the window given by the backend's capabilities or the option."""

from __future__ import annotations

import itertools

from ponder.errors import BackendError
from ponder.plugins.chunks import cut, split
from ponder.plugins.memory import CONDENSE_SYSTEM, UPDATE_SYSTEM, condense_prompt, update_prompt
from ponder.testing import Call, Reply
from ponder.tokens import count_prompt_tokens, count_tokens
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

OPTIONS = {"chunk_tokens": 200, "overlap_tokens": 0, "memory_tokens": 64}
NOTES_BLOCK = (
    "### Memory of the full input\n"
    "The input was too long to read at once. Ponder read all of it in parts and kept these "
    "notes about the question; answer from them.\n\n{notes}\n### End of memory of the full input"
)


def is_update(call: Call) -> bool:
    return call.messages[0].text == UPDATE_SYSTEM.format(cap=64)


def is_condense(call: Call) -> bool:
    return call.messages[0].text.startswith(CONDENSE_SYSTEM[:30])


def reader(call: Call, index: int) -> Reply:
    """Memory after part N is "memory N"; anything else is answered ANSWER."""
    if is_update(call):
        return f"memory {part_of(call)}"
    return ANSWER


async def test_a_long_input_is_read_part_by_part_and_answered_from_the_memory() -> None:
    backend = windowed(reader)
    response = await chat(
        backend,
        f"memory-{MODEL}",
        messages=conversation("Be precise.", DOCUMENT),
        ponder={"memory": OPTIONS, "trace": True},
        temperature=0.7,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == ANSWER
    assert response.headers["x-ponder-backend-calls"] == "6"  # 5 parts + 1 answer
    *updates, answer = backend.calls
    memories = ["", "memory 1", "memory 2", "memory 3", "memory 4"]
    for number, (call, part, memory) in enumerate(zip(updates, PARTS, memories, strict=True), 1):
        assert list(call.messages) == update_prompt(QUESTION, memory, part, number, 5, 64)
        assert call.sampling.max_tokens == 64 and call.sampling.temperature == 0.0
    assert updates[0].prompt == (
        f"Question: {QUESTION}\n\nMemory so far:\n(empty)\n\n"
        f"--- Part 1 of 5 ---\n{SECTIONS[0]}\n--- End of part 1 ---\n\nWrite the updated memory."
    )
    assert list(answer.messages) == [
        Message("system", "Be precise.\n\n" + NOTES_BLOCK.format(notes="memory 5")),
        Message("user", QUESTION),
    ]
    assert answer.sampling.temperature == 0.7  # the client's own, for the answer
    replies = [f"memory {i}" for i in range(1, 6)] + [ANSWER]
    assert body["usage"] == usage_for(backend, replies)
    steps = trace_steps(body, "memory_update")
    assert [s["part"] for s in steps] == [1, 2, 3, 4, 5]
    assert trace_steps(body, "memory")[0]["parts"] == 5


async def test_an_input_that_fits_goes_to_the_route_unchanged_with_no_extra_call() -> None:
    backend = windowed(["short answer"])
    messages = conversation("Be precise.", "Hi", "Hello!", "What is 2 + 2?")
    response = await chat(backend, f"memory-{MODEL}", messages=messages)
    assert response.json()["choices"][0]["message"]["content"] == "short answer"
    (call,) = backend.calls
    assert [(m.role, m.text) for m in call.messages] == [
        (m["role"], m["content"]) for m in messages
    ]
    assert response.headers["x-ponder-backend-calls"] == "1"


async def test_the_memory_never_grows_past_its_cap() -> None:
    """An update over the cap is condensed by one more call; a condensed memory still over it
    is cut. Every update call sees a memory within the cap."""
    long = " ".join(f"fact{i}" for i in range(200))
    condensed = iter(["brief memory", long])

    def verbose(call: Call, index: int) -> Reply:
        if is_update(call):
            return long
        if is_condense(call):
            return next(condensed)
        return ANSWER

    backend = windowed(verbose)
    response = await chat(
        backend,
        f"memory-{MODEL}",
        messages=[user("\n\n".join([SECTIONS[0], SECTIONS[1], QUESTION]))],
        ponder={"memory": OPTIONS, "trace": True},
        max_tokens=700,
    )
    assert response.status_code == 200, response.text
    update1, condense1, update2, _condense2, answer = backend.calls
    assert list(condense1.messages) == condense_prompt(QUESTION, cut(long, 128), 64)
    assert "Memory so far:\nbrief memory\n\n" in update2.prompt
    bounded = cut(long, 64)
    assert count_tokens(bounded) <= 64 < count_tokens(long)
    assert answer.messages[0].text == NOTES_BLOCK.format(notes=bounded)
    steps = trace_steps(response.json(), "memory_update")
    assert [(s["condensed"], s["cut"]) for s in steps] == [(True, False), (True, True)]
    assert all(s["tokens"] <= 64 for s in steps)
    assert update1.sampling.max_tokens == 64


async def test_around_sc_every_sample_answers_from_the_memory_and_the_vote_wins() -> None:
    votes = iter(["The answer is 3.", "The answer is 3.", "The answer is 4."])

    def replies(call: Call, index: int) -> Reply:
        return reader(call, index) if is_update(call) else next(votes)

    backend = windowed(replies)
    response = await chat(
        backend,
        f"memory&sc-{MODEL}",
        messages=[user(DOCUMENT)],
        ponder={"memory": OPTIONS, "sc": {"samples": 3}, "trace": True},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "The answer is 3."
    assert len(backend.calls) == 5 + 3
    for call in backend.calls[5:]:
        assert call.messages[0].text == NOTES_BLOCK.format(notes="memory 5")
        assert call.prompt == QUESTION
    steps = [s["step"] for s in body["ponder"]["trace"]]
    assert steps[:6] == ["memory_update"] * 5 + ["memory"]
    assert len(steps) > 6  # then sc's own


async def test_the_reading_streams_as_reasoning_then_the_answer() -> None:
    backend = windowed(reader)
    response = await chat(
        backend,
        f"memory-{MODEL}",
        messages=[user(DOCUMENT)],
        ponder={"memory": OPTIONS},
        stream=True,
        stream_options={"include_usage": True},
    )
    reasoning = streamed_text(response.text, "reasoning_content")
    assert reasoning.startswith("The input is too long for one call: reading it in 5 parts.\n")
    assert "Read part 5 of 5; the memory holds" in reasoning
    assert streamed_text(response.text) == ANSWER
    assert [c.stream for c in backend.calls] == [False] * 5 + [True]
    replies = [f"memory {i}" for i in range(1, 6)] + [ANSWER]
    assert sse_events(response.text)[-1]["usage"] == usage_for(backend, replies)


async def test_a_backend_failure_while_reading_fails_the_request_with_no_answer() -> None:
    def failing(call: Call, index: int) -> Reply:
        if is_update(call) and "--- Part 3 of" in call.prompt:
            return BackendError("upstream broke")
        return reader(call, index)

    backend = windowed(failing)
    response = await chat(
        backend, f"memory-{MODEL}", messages=[user(DOCUMENT)], ponder={"memory": OPTIONS}
    )
    assert_error(response, 502, type="api_error", code="backend_error", message="upstream broke")
    assert len(backend.calls) == 3  # parts 1-3; no answer

    backend = windowed(failing)
    response = await chat(
        backend,
        f"memory-{MODEL}",
        messages=[user(DOCUMENT)],
        ponder={"memory": OPTIONS},
        stream=True,
    )
    assert stream_error(response.text)["code"] == "backend_error"
    assert answered(response.text) == ""
    assert len(backend.calls) == 3


async def test_a_long_conversation_is_read_as_its_transcript() -> None:
    backend = windowed(reader)
    messages = conversation("Be precise.", SECTIONS[0], "Noted.", SECTIONS[1], "Noted.", QUESTION)
    response = await chat(
        backend,
        f"memory-{MODEL}",
        messages=messages,
        ponder={"memory": OPTIONS},
        max_tokens=600,
    )
    assert response.status_code == 200, response.text
    first, second, answer = backend.calls
    assert f"--- Part 1 of 2 ---\nuser: {SECTIONS[0]}\n\nassistant: Noted.\n---" in first.prompt
    assert f"user: {SECTIONS[1]}\n\nassistant: Noted.\n\nuser: {QUESTION}\n---" in second.prompt
    assert "Be precise." not in first.prompt  # the system prompt is kept for the answer
    assert answer.messages[0].text.startswith("Be precise.\n\n### Memory of the full input")
    assert answer.prompt == QUESTION


async def test_the_window_comes_from_the_backend_or_the_option_else_a_400() -> None:
    backend = windowed(reader, window=None)
    response = await chat(backend, f"memory-{MODEL}", messages=[user(DOCUMENT)])
    assert_error(response, 400, type="invalid_request_error", param="ponder.memory.context_window")
    assert backend.calls == []

    response = await chat(
        backend,
        f"memory-{MODEL}",
        messages=[user(DOCUMENT)],
        ponder={"memory": {**OPTIONS, "context_window": WINDOW}},
    )
    assert response.status_code == 200 and len(backend.calls) == 6

    roomy = windowed(["whole"], window=100_000)
    response = await chat(roomy, f"memory-{MODEL}", messages=[user(DOCUMENT)])
    assert [c.prompt for c in roomy.calls] == [DOCUMENT]  # fits the backend's own window


async def test_bad_options_and_a_short_budget_are_refused_before_any_call() -> None:
    backend = windowed(reader)
    for options, param in [
        ({**OPTIONS, "context_window": 300}, "ponder.memory.context_window"),
        ({**OPTIONS, "memory_tokens": 1}, "ponder.memory.memory_tokens"),
    ]:
        response = await chat(
            backend, f"memory-{MODEL}", messages=[user(DOCUMENT)], ponder={"memory": options}
        )
        assert_error(response, 400, param=param)
    response = await chat(
        backend,
        f"memory-{MODEL}",
        messages=[user(DOCUMENT)],
        ponder={"memory": OPTIONS, "max_backend_calls": 5},
    )
    assert_error(response, 400, code="budget_exceeded", param="ponder.max_backend_calls")
    assert backend.calls == []


async def test_options_beyond_the_window_are_fitted_to_it() -> None:
    """Token options are upper bounds: a memory, parts and an overlap larger than the window
    holds are cut down to what it holds, and every call fits in it."""
    backend = windowed(
        lambda call, i: "memory" if call.messages[0].text.startswith("You") else ANSWER
    )
    big = {"chunk_tokens": 5000, "overlap_tokens": 4096, "memory_tokens": 8192}
    response = await chat(
        backend,
        f"memory-{MODEL}",
        messages=[user(DOCUMENT)],
        ponder={"memory": big, "trace": True},
        max_tokens=100,
    )
    assert response.status_code == 200, response.text
    (step,) = trace_steps(response.json(), "memory")
    cap, size, overlap = step["memory_cap"], step["chunk_tokens"], step["overlap_tokens"]
    assert 32 <= cap < 8192 and 64 <= size < 5000 and 0 < overlap < size / 2
    *updates, answer = backend.calls
    assert len(updates) == step["parts"] > 1 and answer.prompt == QUESTION
    for call in updates:
        assert call.messages[0].text == UPDATE_SYSTEM.format(cap=cap)
        assert call.sampling.max_tokens == cap
        # the prompt (the memory in it at its cap) and the memory written fit in the window
        assert count_prompt_tokens(call.messages) + 2 * cap <= WINDOW * 0.9


def test_parts_stay_within_their_tokens_and_overlap() -> None:
    parts = split(DOCUMENT, 100, 30)
    assert all(count_tokens(p) <= 100 for p in parts)
    assert len(parts) == 10  # each section in two parts
    for before, after in itertools.pairwise(parts):
        if not after.startswith("Section"):  # a part within a section begins inside the last
            assert after.split(". ")[0] in before
    assert parts[0].startswith("Section 1:") and parts[-1].endswith(QUESTION)
    assert cut(DOCUMENT, 20) == parts[0][: len(cut(DOCUMENT, 20))]
    assert count_tokens(cut(DOCUMENT, 20)) <= 20


async def test_every_call_fits_the_window_when_a_large_cap_leaves_small_parts() -> None:
    """A memory cap that leaves parts smaller than itself: an update reply counted over the cap
    (a backend's tokenizer may count differently) is condensed from as much of it as the
    window holds beside the condensed reply, not from twice the cap."""
    long = " ".join(f"fact{i}" for i in range(600))

    def verbose(call: Call, index: int) -> Reply:
        return ANSWER if call.messages[0].text.startswith("### Memory") else long

    backend = windowed(verbose)
    response = await chat(
        backend,
        f"memory-{MODEL}",
        messages=[user("\n\n".join([*SECTIONS, *SECTIONS, QUESTION]))],
        ponder={"memory": {"memory_tokens": 330}, "trace": True},
        max_tokens=64,
    )
    assert response.status_code == 200, response.text
    assert any(s["condensed"] for s in trace_steps(response.json(), "memory_update"))
    (memory,) = trace_steps(response.json(), "memory")
    assert memory["memory_cap"] == 330 and memory["chunk_tokens"] < 330
    for call in backend.calls:
        assert count_prompt_tokens(call.messages) + (call.sampling.max_tokens or 0) <= WINDOW
