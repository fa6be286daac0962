"""`autothink`: one rating call sets the number of samples and their token budget."""

from __future__ import annotations

import pytest

from ponder.strategies.autothink import RATE_PROMPT, read_difficulty
from tests.conftest import (
    MODEL,
    assert_error,
    chat,
    scripted,
    sse_events,
    streamed_text,
    trace_steps,
    usage_for,
    user,
)

AUTO = f"autothink-{MODEL}"
QUESTION = "A train leaves at 9 and arrives at 11:30. How long is the trip?"


@pytest.mark.parametrize(
    ("text", "level"),
    [
        ("EASY", "easy"),
        ("Hard.", "hard"),
        ("It is medium, not hard", "medium"),
        ("difficult", None),
        ("", None),
        ("uneasy", None),  # a word, not a part of one
    ],
)
def test_the_rating_is_the_first_of_the_three_words(text: str, level: str | None) -> None:
    assert read_difficulty(text) == level


async def test_an_easy_question_costs_one_short_answer() -> None:
    replies = ["EASY", "It takes 2.5 hours."]
    backend = scripted(list(replies))
    response = await chat(
        backend, AUTO, messages=[user(QUESTION)], max_tokens=300, ponder={"trace": True}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "It takes 2.5 hours."
    rating, answer = backend.calls
    assert rating.prompt == RATE_PROMPT.format(question=QUESTION)
    assert (rating.sampling.max_tokens, rating.sampling.temperature) == (4, 0.0)
    assert answer.messages[-1].text == QUESTION and answer.n == 1
    assert answer.sampling.max_tokens == 256  # the easy budget, under the client's 300
    (step,) = trace_steps(body, "autothink")
    assert (step["difficulty"], step["samples"], step["understood"]) == ("easy", 1, True)
    assert body["usage"] == usage_for(backend, replies)


async def test_a_hard_question_gets_the_vote_and_the_long_budget() -> None:
    samples = ["So 2.5 hours.", "The answer is 2.5", "I get 3 hours.", "2.5", "It is 2.5."]
    backend = scripted(["HARD", *samples])
    response = await chat(backend, AUTO, messages=[user(QUESTION)], ponder={"trace": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "So 2.5 hours."
    assert len(backend.calls) == 1 + 5
    assert {c.sampling.max_tokens for c in backend.calls[1:]} == {1024}
    assert {c.sampling.temperature for c in backend.calls[1:]} == {0.7}
    (vote,) = trace_steps(body, "vote")
    assert (vote["winner"], vote["samples"]) == ("2.5", 5)
    assert body["usage"] == usage_for(backend, ["HARD", *samples], answer=samples[0])


async def test_an_unclear_rating_counts_as_medium_and_the_options_set_the_tiers() -> None:
    samples = ["4", "4"]
    backend = scripted(["I cannot say.", *samples])
    options = {"samples": [1, 2, 3], "thinking_tokens": [64, 128, 512]}
    response = await chat(
        backend,
        AUTO,
        messages=[user("2+2?")],
        max_tokens=100,
        ponder={"autothink": options, "trace": True},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    (step,) = trace_steps(body, "autothink")
    assert (step["difficulty"], step["understood"], step["samples"]) == ("medium", False, 2)
    assert [c.sampling.max_tokens for c in backend.calls] == [4, 100, 100]  # capped by 100


async def test_the_working_streams_before_the_answer() -> None:
    backend = scripted(["easy", "It takes two and a half hours."])
    response = await chat(backend, AUTO, messages=[user(QUESTION)], stream=True)
    assert response.status_code == 200
    events = sse_events(response.text)
    assert streamed_text(response.text, "reasoning_content").startswith(
        "Difficulty: easy: 1 sample"
    )
    assert streamed_text(response.text) == "It takes two and a half hours."
    assert events  # the stream ended with its [DONE]


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"samples": [0, 1, 2]}, "ponder.autothink.samples.0"),
        ({"thinking_tokens": [64, 8, 64]}, "ponder.autothink.thinking_tokens.1"),
        ({"samples": [1, 2]}, "ponder.autothink.samples.2"),  # the hard tier is missing
    ],
)
async def test_out_of_range_tiers_are_a_400_naming_the_tier(
    options: dict[str, object], param: str
) -> None:
    backend = scripted(["easy"])
    response = await chat(backend, AUTO, ponder={"autothink": options})
    assert_error(response, 400, param=param)
    assert backend.calls == []
