"""`expected_score` and `read_score`: a judge's rating read from its log-probabilities."""

from __future__ import annotations

import math
from typing import Any

import pytest

from ponder.strategies.common import expected_score, rating_sampling, read_score
from ponder.types import Completion, Sampling


def token(text: str, alternatives: dict[str, float] | None = None) -> dict[str, Any]:
    """A logprobs entry: `text` drawn, `alternatives` the probabilities of the top tokens."""
    top = alternatives or {text: 1.0}
    return {
        "token": text,
        "logprob": math.log(top.get(text, 1e-9)),
        "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in top.items()],
    }


def rating(*entries: dict[str, Any]) -> Completion:
    return Completion("".join(e["token"] for e in entries), logprobs={"content": list(entries)})


def test_the_expected_value_weighs_every_number_by_its_probability() -> None:
    sure = rating(token("8", {"8": 0.9, "7": 0.1}))
    unsure = rating(token("8", {"8": 0.5, "3": 0.5}))
    assert expected_score(sure, 1, 10) == pytest.approx(7.9)
    assert expected_score(unsure, 1, 10) == pytest.approx(5.5)
    assert read_score(sure, 1, 10) == pytest.approx(7.9)  # the written number says 8 to both


def test_tokens_that_are_not_numbers_in_range_do_not_count() -> None:
    r = rating(token("6", {"6": 0.5, "Score": 0.3, "0": 0.2}))
    assert expected_score(r, 1, 10) == pytest.approx(6.0)  # "0" is out of 1..10


def test_a_drawn_one_followed_by_zero_is_ten_with_that_zeros_probability() -> None:
    ten = rating(token("1", {"1": 0.8, "9": 0.2}), token("0", {"0": 0.75, ".": 0.25}))
    # 10 with 0.8 * 0.75, 1 with 0.8 * 0.25, 9 with 0.2
    assert expected_score(ten, 1, 10) == pytest.approx(0.6 * 10 + 0.2 * 1 + 0.2 * 9)
    assert expected_score(ten, 0, 5) == pytest.approx((0.8 * 1 + 0.2 * 0) / 0.8)  # 10, 9 too big


def test_an_undrawn_one_that_may_begin_a_ten_is_left_out() -> None:
    nine = rating(token("9", {"9": 0.6, "1": 0.4}))
    assert expected_score(nine, 0, 10) == 9.0  # not 5.8: the "1" may be a 10
    assert expected_score(nine, 0, 5) == 1.0  # on 0..5 the "1" is a 1, and 9 is out of range
    assert expected_score(rating(token("4", {"4": 0.6, "1": 0.4})), 0, 5) == pytest.approx(2.8)
    assert expected_score(rating(token("9", {"9": 0.5, "0": 0.5})), 0, 10) == 4.5


def test_leading_spaces_are_skipped_and_a_whole_number_token_is_read_whole() -> None:
    assert expected_score(rating(token(" "), token("10", {"10": 0.5, "9": 0.5})), 0, 10) == 9.5


@pytest.mark.parametrize(
    "r",
    [
        Completion("8"),  # no log-probabilities
        rating(token("Score"), token(":"), token(" 8")),  # does not start with a number
        rating(),
    ],
)
def test_without_readable_log_probabilities_the_written_number_is_read(r: Completion) -> None:
    assert expected_score(r, 1, 10) is None
    assert read_score(r, 1, 10) == (8.0 if "8" in (r.content or "") else None)


def test_rating_sampling_asks_for_log_probabilities_only_where_told() -> None:
    base = Sampling(max_tokens=8, temperature=0.0)
    assert rating_sampling(base, False) == base
    asked = rating_sampling(base, True)
    assert (asked.logprobs, asked.top_logprobs, asked.max_tokens) == (True, 10, 8)
