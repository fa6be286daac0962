"""`compact`, a plugin: past a share of the context window, the older turns of a conversation
become a structured brief (one backend call) in a system message labelled as a summary, the
recent turns and the system prompt stay verbatim, and a tool call is never parted from its
result; below it, the conversation goes through untouched. On ScriptedBackend."""

from __future__ import annotations

from typing import Any

from ponder.backends.base import Capabilities
from ponder.errors import BackendError
from ponder.plugins.chunks import cut
from ponder.plugins.compact import BRIEF_SYSTEM, brief_prompt, recent, split_turns
from ponder.testing import Call, Reply, ScriptedBackend
from ponder.tokens import count_prompt_tokens, count_tokens
from ponder.types import Message, ToolCall
from tests.conftest import (
    MODEL,
    assert_error,
    chat,
    scripted,
    sse_events,
    streamed_text,
    trace_steps,
    usage_for,
)

WINDOW = 1000
SYSTEM = "You are a careful travel agent."
CITIES = ["Lyon", "Porto", "Ghent", "Turin", "Split"]
ASKS = [
    f"Day {i}: I want to visit {c}. "
    + " ".join(f"Note {j}: keep the {c} budget under {100 * i + j} euros." for j in range(4))
    for i, c in enumerate(CITIES, start=1)
]
REPLIES = [
    f"For {c}, book the {c} river hotel. "
    + " ".join(f"Tip {j}: the {c} museum pass costs {10 * i + j} euros." for j in range(4))
    for i, c in enumerate(CITIES, start=1)
]
QUESTION = "Which city had the cheapest museum pass?"
OPTIONS = {"keep_turns": 2, "brief_tokens": 64, "threshold": 0.6}
BRIEF = "## Goals\nA five-city trip.\n## Facts and decisions\nLyon passes cost 10 euros."
ANSWER = "Lyon."


def messages() -> list[dict[str, Any]]:
    """The system prompt, five exchanges, then the question: about 690 tokens."""
    turns: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
    for ask, reply in zip(ASKS, REPLIES, strict=True):
        turns += [{"role": "user", "content": ask}, {"role": "assistant", "content": reply}]
    return [*turns, {"role": "user", "content": QUESTION}]


def summary(count: int, brief: str) -> str:
    return (
        "### Summary of earlier turns\n"
        f"Ponder summarised the {count} earliest turns of this conversation to fit the model's "
        f"context; the recent turns follow as they were.\n\n{brief}\n### End of summary"
    )


def is_brief(call: Call) -> bool:
    return call.messages[0].text.startswith(BRIEF_SYSTEM[:40])


def briefer(call: Call, index: int) -> Reply:
    return BRIEF if is_brief(call) else ANSWER


def windowed(replies: object, window: int | None = WINDOW) -> ScriptedBackend:
    return scripted(replies, capabilities=Capabilities(context_window=window))


def earlier_transcript(count: int) -> str:
    return "\n\n".join(
        f"user: {ask}\n\nassistant: {reply}"
        for ask, reply in list(zip(ASKS, REPLIES, strict=True))[:count]
    )


async def test_past_the_threshold_older_turns_become_a_brief_and_recent_turns_stay() -> None:
    backend = windowed(briefer)
    response = await chat(
        backend,
        f"compact-{MODEL}",
        messages=messages(),
        ponder={"compact": OPTIONS, "trace": True},
        temperature=0.4,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == ANSWER
    assert response.headers["x-ponder-backend-calls"] == "2"
    brief_call, answer = backend.calls
    assert list(brief_call.messages) == brief_prompt("", earlier_transcript(4), 1, 1, 64)
    assert brief_call.prompt == (
        f"--- Earlier turns ---\n{earlier_transcript(4)}\n--- End of earlier turns ---\n\n"
        "Write the brief."
    )
    assert brief_call.sampling.max_tokens == 64 and brief_call.sampling.temperature == 0.0
    assert list(answer.messages) == [
        Message("system", SYSTEM),
        Message("system", summary(4, BRIEF)),
        Message("user", ASKS[4]),
        Message("assistant", REPLIES[4]),
        Message("user", QUESTION),
    ]
    assert answer.sampling.temperature == 0.4
    assert body["usage"] == usage_for(backend, [BRIEF, ANSWER])
    (step,) = trace_steps(body, "compact")
    assert step["compacted"] is True
    assert (step["summarised_turns"], step["kept_turns"], step["limit"]) == (4, 2, 600)
    assert step["compacted_tokens"] < step["prompt_tokens"]


async def test_below_the_threshold_the_conversation_is_unchanged_with_no_extra_call() -> None:
    backend = windowed([ANSWER])
    response = await chat(
        backend,
        f"compact-{MODEL}",
        messages=messages(),
        ponder={"compact": {**OPTIONS, "threshold": 0.95}},
    )
    assert response.status_code == 200, response.text
    (call,) = backend.calls
    assert [(m.role, m.text) for m in call.messages] == [
        (m["role"], m["content"]) for m in messages()
    ]
    assert response.headers["x-ponder-backend-calls"] == "1"


async def test_a_tool_call_and_its_result_stay_together_and_system_messages_verbatim() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "fx", "arguments": "{}"}}
    tool_turn: list[dict[str, Any]] = [
        {"role": "user", "content": "Convert 10 EUR to CHF."},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "1 EUR = 0.94 CHF"},
        {"role": "assistant", "content": "That is 9.40 CHF."},
    ]
    convo = messages()
    mid_system = {"role": "system", "content": "From now on, answer in French."}
    convo = [*convo[:3], mid_system, *convo[3:-1], *tool_turn, *convo[-1:]]
    backend = windowed(briefer, window=2000)
    response = await chat(
        backend,
        f"compact-{MODEL}",
        messages=convo,
        ponder={"compact": {**OPTIONS, "keep_turns": 1, "threshold": 0.3}},
    )
    assert response.status_code == 200, response.text
    brief_call, answer = backend.calls
    assert brief_call.prompt.endswith(
        "user: Convert 10 EUR to CHF.\n\nassistant:\n[calls fx (call_1) with {}]\n\n"
        "tool result (call_1): 1 EUR = 0.94 CHF\n\nassistant: That is 9.40 CHF.\n"
        "--- End of earlier turns ---\n\nWrite the brief."
    )
    assert "answer in French" not in brief_call.prompt
    assert [(m.role, m.text) for m in answer.messages] == [
        ("system", SYSTEM),
        ("system", "From now on, answer in French."),
        ("system", summary(6, BRIEF)),
        ("user", QUESTION),
    ]

    # keeping two turns keeps the whole tool exchange, call and result together
    backend = windowed(briefer, window=2000)
    response = await chat(
        backend,
        f"compact-{MODEL}",
        messages=convo,
        ponder={"compact": {**OPTIONS, "threshold": 0.3}},
    )
    _, answer = backend.calls
    assert [m.role for m in answer.messages] == [
        "system",
        "system",
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]
    assert answer.messages[4].tool_calls == (ToolCall("call_1", "fx", "{}"),)
    assert answer.messages[5].tool_call_id == "call_1"


async def test_around_sc_every_sample_sees_the_compacted_conversation() -> None:
    votes = iter(["The answer is 1.", "The answer is 1.", "The answer is 2."])

    def replies(call: Call, index: int) -> Reply:
        return BRIEF if is_brief(call) else next(votes)

    backend = windowed(replies)
    response = await chat(
        backend,
        f"compact&sc-{MODEL}",
        messages=messages(),
        ponder={"compact": OPTIONS, "sc": {"samples": 3}, "trace": True},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "The answer is 1."
    assert len(backend.calls) == 1 + 3
    for call in backend.calls[1:]:
        assert call.messages[1].text == summary(4, BRIEF)
        assert len(call.messages) == 5
    assert body["usage"] == usage_for(
        backend, [BRIEF, *["The answer is 1."] * 2, "The answer is 2."]
    )
    assert body["ponder"]["trace"][0]["step"] == "compact"


async def test_the_compaction_streams_as_reasoning_then_the_answer() -> None:
    backend = windowed(briefer)
    response = await chat(
        backend,
        f"compact-{MODEL}",
        messages=messages(),
        ponder={"compact": OPTIONS},
        stream=True,
        stream_options={"include_usage": True},
    )
    reasoning = streamed_text(response.text, "reasoning_content")
    assert reasoning.startswith("Summarised 4 earlier turns into a brief of ")
    assert streamed_text(response.text) == ANSWER
    assert [c.stream for c in backend.calls] == [False, True]
    assert sse_events(response.text)[-1]["usage"] == usage_for(backend, [BRIEF, ANSWER])


async def test_a_brief_over_its_cap_is_cut_and_a_long_past_is_briefed_in_parts() -> None:
    long = " ".join(f"point{i}" for i in range(300))
    backend = windowed(lambda call, i: long if is_brief(call) else ANSWER)
    response = await chat(
        backend,
        f"compact-{MODEL}",
        messages=messages(),
        ponder={"compact": {**OPTIONS, "brief_tokens": 200}},
    )
    assert response.status_code == 200, response.text
    first, second, answer = backend.calls  # the earlier turns do not fit in one brief call
    assert first.prompt.startswith("--- Earlier turns, part 1 of 2 ---\nuser: Day 1")
    bounded = cut(long, 200)
    assert count_tokens(bounded) <= 200
    assert second.prompt.startswith(
        f"The brief so far, of the turns before these; update it:\n{bounded}\n\n"
        "--- Earlier turns, part 2 of 2 ---\n"
    )
    assert answer.messages[1].text == summary(4, bounded)


async def test_a_brief_cap_larger_than_the_window_holds_is_fitted_to_it() -> None:
    """`brief_tokens` is an upper bound: in a window of 1000 tokens a brief of 8192 cannot be
    carried in and written again beside the turns, so it is capped lower, and every brief call
    fits in the window."""
    long = " ".join(f"point{i}" for i in range(3000))
    backend = windowed(lambda call, i: long if is_brief(call) else ANSWER)
    response = await chat(
        backend,
        f"compact-{MODEL}",
        messages=messages(),
        ponder={"compact": {**OPTIONS, "brief_tokens": 8192}},
    )
    assert response.status_code == 200, response.text
    *briefs, answer = backend.calls
    caps = {int(c.messages[0].text.split("At most ")[1].split(" ")[0]) for c in briefs}
    assert len(caps) == 1 and 32 <= (cap := caps.pop()) < 8192
    assert all(is_brief(c) and c.sampling.max_tokens == cap for c in briefs)
    assert all(count_prompt_tokens(c.messages) + cap <= WINDOW * 0.9 for c in briefs)
    assert answer.messages[1].text == summary(4, cut(long, cap))


async def test_a_failed_brief_call_fails_the_request_with_no_answer() -> None:
    failing = windowed(lambda call, i: BackendError("down") if is_brief(call) else ANSWER)
    response = await chat(
        failing, f"compact-{MODEL}", messages=messages(), ponder={"compact": OPTIONS}
    )
    assert_error(response, 502, type="api_error", code="backend_error", message="down")
    assert len(failing.calls) == 1

    failing = windowed(lambda call, i: BackendError("down") if is_brief(call) else ANSWER)
    response = await chat(
        failing,
        f"compact-{MODEL}",
        messages=messages(),
        ponder={"compact": OPTIONS},
        stream=True,
    )
    # the brief is the first thing the request does: nothing streamed yet, a plain error
    assert_error(response, 502, type="api_error", code="backend_error", message="down")
    assert len(failing.calls) == 1


async def test_the_window_comes_from_the_backend_or_the_option_else_a_400() -> None:
    backend = windowed(briefer, window=None)
    response = await chat(backend, f"compact-{MODEL}", messages=messages())
    assert_error(response, 400, type="invalid_request_error", param="ponder.compact.context_window")
    assert backend.calls == []
    response = await chat(
        backend,
        f"compact-{MODEL}",
        messages=messages(),
        ponder={"compact": {**OPTIONS, "context_window": WINDOW}},
    )
    assert response.status_code == 200 and len(backend.calls) == 2
    bad = await chat(backend, f"compact-{MODEL}", ponder={"compact": {"threshold": 1.5}})
    assert_error(bad, 400, param="ponder.compact.threshold")


def test_turns_start_at_user_messages_and_the_recent_ones_are_kept_within_tokens() -> None:
    system = Message("system", "s")
    hello = Message("assistant", "Welcome!")
    ask, call = (
        Message("user", "q1"),
        Message("assistant", None, tool_calls=(ToolCall("c", "f", "{}"),)),
    )
    result, ask2 = Message("tool", "r", tool_call_id="c"), Message("user", "q2")
    head, turns = split_turns([system, hello, ask, call, result, ask2])
    assert head == [system]
    assert turns == [[hello], [ask, call, result], [ask2]]
    assert recent(turns, 5, 10_000) == turns
    assert recent(turns, 2, 10_000) == turns[1:]
    assert recent(turns, 5, 1) == turns[2:]  # the last turn always, even over the tokens
