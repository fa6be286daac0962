"""`cot_reflection`: one generation with <thinking>, <reflection> and <output> sections; the
client gets the output as the answer and the rest as reasoning."""

from __future__ import annotations

import pytest

from ponder.errors import BackendUnavailable
from ponder.strategies.cot_reflection import INSTRUCTIONS, Piece, TagSplitter
from ponder.testing import Call
from ponder.types import Completion
from tests.conftest import (
    MODEL,
    assert_error,
    chat,
    conversation,
    finish_reasons,
    scripted,
    sse_events,
    stream_choices,
    stream_error,
    streamed_pieces,
    streamed_text,
    trace_steps,
    usage_for,
)

COT = f"cot_reflection-{MODEL}"

THINKING = "Three apples, one eaten: 2 left.\nFive more: 2 + 5 = 7."
REFLECTION = "Checked: 3 - 1 + 5 = 7, nothing missed."
ANSWER = "You have 7 apples."
REPLY = (
    f"<thinking>\n{THINKING}\n</thinking>\n"
    f"<reflection>\n{REFLECTION}\n</reflection>\n"
    f"<output>\n{ANSWER}\n</output>"
)
REASONING = f"{THINKING}\n\n{REFLECTION}"

CONVERSATION = conversation(
    "Be precise.", "I have 3 apples.", "Noted.", "I eat one and buy five. How many now?"
)


def split(text: str, size: int) -> tuple[str, str, str, list[Piece]]:
    """Feed `text` in pieces of `size` characters: (answer, output, reasoning, pieces)."""
    splitter = TagSplitter()
    pieces: list[Piece] = []
    for i in range(0, len(text), size):
        pieces += splitter.feed(text[i : i + size])
    pieces += splitter.finish()
    return splitter.answer(), splitter.output, splitter.reasoning, pieces


def joined(pieces: list[Piece], kind: str) -> str:
    return "".join(p.text for p in pieces if p.kind == kind)


# ---- the parser ---------------------------------------------------------------------------

PARSE_CASES = [
    # (text, answer, reasoning)
    (REPLY, ANSWER, REASONING),
    ("<THINKING>a < b</Thinking><Output> b > a </OUTPUT> trailing", "b > a", "a < b"),
    ("<thinking>x<reflection>y</reflection>z</thinking><output>42</output>", "42", "x\n\ny\n\nz"),
    ("<thinking>plan</thinking>\nJust the answer.", "Just the answer.", "plan"),
    (
        "<thinking>plan</thinking><output>\n  line one\n\n  line two  \n",
        "line one\n\n  line two",
        "plan",
    ),
    ("no tags at all <b>bold</b> <outp", "no tags at all <b>bold</b> <outp", ""),
    ("<thinking>only thoughts</thinking>", "only thoughts", "only thoughts"),
    (
        "<thinking>\n3 * 10 = 30.\nThe answer is 30.",
        "3 * 10 = 30.\nThe answer is 30.",
        "3 * 10 = 30.\nThe answer is 30.",
    ),
    ("<thinking></thinking>", "<thinking></thinking>", ""),
    ("<output>first</output><output>second</output><thinking>late</thinking>", "first", ""),
    ("<thinking>unclosed thought <output>7</output>", "7", "unclosed thought"),
    ("<output>a <thinking> inside</output>", "a <thinking> inside", ""),
    # the tags written back to back, each section's content after them (a 1.5B model did so)
    (
        "Inside <thinking></thinking>\n5 + 15 = 20\n\nInside <reflection></reflection>\n"
        "Checked.\n\nInside <output>\n</output>\nThe answer is 20.",
        "The answer is 20.",
        "5 + 15 = 20\n\nInside\n\nChecked.\n\nInside",
    ),
    ("<thinking>x<reflection>y</reflection></thinking> Then 7.", "Then 7.", "x\n\ny"),
    ("", "", ""),
]


@pytest.mark.parametrize(("text", "answer", "reasoning"), PARSE_CASES)
def test_parse_is_the_same_however_the_text_is_cut(text: str, answer: str, reasoning: str) -> None:
    whole = split(text, max(1, len(text)))
    assert whole[0] == answer
    assert whole[2] == reasoning
    for size in range(1, len(text) + 1):
        got = split(text, size)
        assert got[:3] == whole[:3], size
        # what was streamed is exactly what was parsed
        assert joined(got[3], "output") == got[1]
        assert joined(got[3], "reasoning") == got[2]


def test_tags_split_across_pieces_are_recognized() -> None:
    splitter = TagSplitter()
    assert splitter.feed("<thin") == []
    assert splitter.feed("king>step ") == [Piece("reasoning", "step")]
    assert splitter.feed("one</thinking><out") == [Piece("reasoning", " one")]
    assert splitter.feed("put>Par") == [Piece("output", "Par")]
    assert splitter.feed("is</outp") == [Piece("output", "is")]
    assert splitter.feed("ut> bye") == []
    assert splitter.finish() == []
    assert splitter.answer() == "Paris"


def test_no_output_section_falls_back_to_the_text_outside_the_reasoning() -> None:
    splitter = TagSplitter()
    splitter.feed("<thinking>hmm</thinking>\n The answer is 7. \n<reflection>ok</reflection>")
    splitter.finish()
    assert splitter.output == ""
    assert splitter.answer() == "The answer is 7."
    assert splitter.reasoning == "hmm\n\nok"


def test_an_unclosed_output_runs_to_the_end() -> None:
    splitter = TagSplitter()
    splitter.feed("<thinking>t</thinking><output>The answer\nis 7 <")
    splitter.finish()
    assert splitter.answer() == "The answer\nis 7 <"


# ---- through the API ----------------------------------------------------------------------


async def test_one_call_with_instructions_after_the_system_prompt() -> None:
    backend = scripted([REPLY])
    response = await chat(
        backend, COT, messages=CONVERSATION, temperature=0.2, max_tokens=500, ponder={"trace": True}
    )
    assert response.status_code == 200
    body = response.json()
    message = body["choices"][0]["message"]
    assert message["content"] == ANSWER
    assert message["reasoning_content"] == REASONING
    assert body["choices"][0]["finish_reason"] == "stop"
    (call,) = backend.calls
    assert response.headers["x-ponder-backend-calls"] == "1"
    assert [(m.role, m.text) for m in call.messages] == [
        ("system", f"Be precise.\n\n{INSTRUCTIONS}"),
        *[(m["role"], m["content"]) for m in CONVERSATION[1:]],
    ]
    assert (call.sampling.temperature, call.sampling.max_tokens) == (0.2, 500)
    assert not call.stream
    assert body["usage"] == usage_for(backend, [REPLY])
    (step,) = trace_steps(body, "cot_reflection")
    assert step["tagged_output"] is True


async def test_without_a_system_prompt_the_instructions_become_one() -> None:
    backend = scripted([REPLY])
    await chat(backend, COT)
    (call,) = backend.calls
    assert [(m.role, m.text) for m in call.messages] == [
        ("system", INSTRUCTIONS),
        ("user", "hello"),
    ]


async def test_keep_reasoning_false_returns_only_the_answer() -> None:
    backend = scripted([REPLY])
    response = await chat(backend, COT, ponder={"cot_reflection": {"keep_reasoning": False}})
    message = response.json()["choices"][0]["message"]
    assert message["content"] == ANSWER
    assert "reasoning_content" not in message

    backend = scripted([REPLY])
    response = await chat(
        backend, COT, stream=True, ponder={"cot_reflection": {"keep_reasoning": False}}
    )
    assert streamed_text(response.text) == ANSWER
    assert streamed_text(response.text, "reasoning_content") == ""


async def test_finish_reason_of_the_generation_is_kept() -> None:
    backend = scripted([Completion("<thinking>long</thinking><output>cut", finish_reason="length")])
    body = (await chat(backend, COT)).json()
    assert body["choices"][0]["message"]["content"] == "cut"
    assert body["choices"][0]["finish_reason"] == "length"

    backend = scripted([Completion("<thinking>long</thinking><output>cut", finish_reason="length")])
    response = await chat(backend, COT, stream=True)
    assert finish_reasons(response.text) == ["length"]


async def test_streams_thinking_as_reasoning_and_only_the_output_as_content() -> None:
    reply = (
        f"<thinking>\n{THINKING}\n</thinking>\n<reflection>\n{REFLECTION}\n</reflection>\n"
        "<output>\nYou have seven apples left after all that.\n</output>"
    )
    backend = scripted([reply])
    response = await chat(
        backend, COT, messages=CONVERSATION, stream=True, stream_options={"include_usage": True}
    )
    assert response.status_code == 200
    assert streamed_text(response.text) == "You have seven apples left after all that."
    assert streamed_text(response.text, "reasoning_content") == REASONING
    events = sse_events(response.text)
    choices = stream_choices(response.text)
    assert len(streamed_pieces(response.text)) > 3  # streamed word by word
    reasoning_at = [i for i, c in enumerate(choices) if c["delta"].get("reasoning_content")]
    content_at = [i for i, c in enumerate(choices) if c["delta"].get("content")]
    assert max(reasoning_at) < min(content_at)
    finish_at = [i for i, c in enumerate(choices) if c["finish_reason"]]
    assert finish_at == [len(choices) - 1]
    assert choices[-1]["finish_reason"] == "stop"
    (call,) = backend.calls
    assert call.stream
    (usage,) = [e["usage"] for e in events if e.get("usage")]
    assert usage == usage_for(backend, [reply])


async def test_streamed_reply_without_an_output_section_sends_the_fallback_as_content() -> None:
    backend = scripted(["<thinking>plan it</thinking>\nSeven apples."])
    response = await chat(backend, COT, stream=True)
    assert streamed_text(response.text) == "Seven apples."
    assert streamed_text(response.text, "reasoning_content") == "plan it"


async def test_a_reply_that_never_leaves_its_thinking_answers_with_it_without_the_tag() -> None:
    """The 1.5B's usual reply on GSM8K (28 of 50): `<thinking>`, the solution, and nothing else."""
    reply = "<thinking>\nEach of 6 boxes holds 4: 6 * 4 = 24.\nThe answer is 24."
    body = (await chat(scripted([reply]), COT)).json()
    message = body["choices"][0]["message"]
    assert message["content"] == "Each of 6 boxes holds 4: 6 * 4 = 24.\nThe answer is 24."
    assert message["reasoning_content"] == message["content"]
    response = await chat(scripted([reply]), COT, stream=True)
    assert streamed_text(response.text) == message["content"]
    assert streamed_text(response.text, "reasoning_content") == message["content"]


async def test_reasoning_off_streams_only_the_answer() -> None:
    backend = scripted([REPLY])
    response = await chat(backend, COT, stream=True, ponder={"reasoning": False})
    assert streamed_text(response.text) == ANSWER
    assert streamed_text(response.text, "reasoning_content") == ""


async def test_each_of_n_choices_is_parsed_on_its_own() -> None:
    def reply(call: Call, i: int) -> str:
        return f"<thinking>t</thinking><output>{len(backend.calls)}</output>"

    backend = scripted(reply)
    response = await chat(backend, COT, n=2)
    contents = sorted(c["message"]["content"] for c in response.json()["choices"])
    assert contents == ["1", "2"]
    assert len(backend.calls) == 2


async def test_a_failed_generation_is_an_openai_error() -> None:
    backend = scripted([BackendUnavailable("down")])
    response = await chat(backend, COT)
    assert_error(response, 503, code="backend_unavailable")

    # streamed: the stream has started, so the error comes in-band, OpenAI-shaped
    backend = scripted([BackendUnavailable("down")])
    response = await chat(backend, COT, stream=True)
    assert stream_error(response.text)["code"] == "backend_unavailable"


async def test_a_budget_of_one_call_is_enough() -> None:
    backend = scripted([REPLY])
    response = await chat(backend, COT, ponder={"max_backend_calls": 1})
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == ANSWER
    assert len(backend.calls) == 1


async def test_bad_option_is_a_400_naming_the_field() -> None:
    response = await chat(scripted(), COT, ponder={"cot_reflection": {"keep_reasoning": "maybe"}})
    assert_error(response, 400, param="ponder.cot_reflection.keep_reasoning")


async def test_optillm_approach_selects_it() -> None:
    backend = scripted([REPLY])
    response = await chat(backend, MODEL, optillm_approach="cot_reflection")
    assert response.json()["choices"][0]["message"]["content"] == ANSWER
    assert backend.calls[0].messages[0].text == INSTRUCTIONS
