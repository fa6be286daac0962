"""Final-answer extraction and the vote, shared by `sc` and the benchmarks."""

from __future__ import annotations

import pytest

from ponder.answers import (
    extract_answer,
    majority_vote,
    normalize_number,
    same_answer,
    states_answer,
    states_placeholder,
)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("The answer is $1,200.", "1200"),
        ("So the final answer is 42 apples.", "42"),
        ("Answer: 7", "7"),
        ("It costs 5 dollars. So the answer is: 18", "18"),
        ("work...\n#### 72", "72"),
        ("#### 72\nThe answer is 5", "72"),  # GSM8K's marker beats a later phrase
        (r"Thus \boxed{\frac{1}{2}}.", "1/2"),
        (r"\boxed{\dfrac{3}{4}} and the answer is 9", "3/4"),  # boxed first
        (r"\boxed{12}", "12"),
        ("Answer: (B)", "B"),
        ("B) because the sky is blue", "B"),
        ("(C)", "C"),
        ("I think 3 + 4 = 7", "7"),
        ("-3.0", "-3"),
        ("Paris.", "paris"),
        ("The final answer is  Paris ", "paris"),
        ("Yep.", "yes"),
        ("The answer is: True", "yes"),
        ("Answer: incorrect", "no"),
        ("Nope!", "no"),
        ("Yes, because it rains", "yes, because it rains"),  # only a lone word is read
        ("", None),
        ("   ", None),
        (None, None),
    ],
)
def test_extract_answer(text: str | None, key: str | None) -> None:
    assert extract_answer(text) == key


@pytest.mark.parametrize(
    ("raw", "normal"),
    [("$1,200.50", "1200.5"), ("3.0", "3"), ("-7", "-7"), ("3/4", "3/4"), ("0.250", "0.25")],
)
def test_normalize_number(raw: str, normal: str) -> None:
    assert normalize_number(raw) == normal


@pytest.mark.parametrize(
    ("text", "states"),
    [
        ("so 4 * 15 = 60.\nThe answer is 60.", True),
        ("Total: \\boxed{720}", True),
        ("48 + 22 = 70\n#### 70", True),
        ("Final answer: Paris", True),
        ("Step 1: Calculate the monthly cost of 4 washes.", False),
        ("Mark completed 75 questions in 8 hours.", False),
        ("The answer is", False),
        ("", False),
    ],
)
def test_states_answer_only_for_an_answer_said_in_words_or_marks(text: str, states: bool) -> None:
    assert states_answer(text) is states


@pytest.mark.parametrize(
    ("text", "placeholder"),
    [
        ("$30 - $2 = $28.\n\nThe answer is N.", True),
        ("So it is \\boxed{N}", True),
        ("The answer is $N$.", True),
        ("Adding them: 7. The answer is <answer>.", True),
        ("Answer: [the final number]", True),
        ("The answer is 28.", False),
        ("The answer is N = 28.", False),
        ("The answer is n.", False),
        ("The answer is B.", False),
        ("N is 28, and nothing is stated", False),
        ("", False),
    ],
)
def test_states_placeholder_only_for_a_format_copied_in_place_of_the_answer(
    text: str, placeholder: bool
) -> None:
    assert states_placeholder(text) is placeholder


def test_same_answer_compares_keys_not_text() -> None:
    assert same_answer("The answer is $1,200.", r"\boxed{1200}")
    assert not same_answer("The answer is 12", "The answer is 13")
    assert not same_answer("", "")


def test_vote_is_a_plurality_with_ties_to_the_first_seen_and_blanks_not_voting() -> None:
    vote = majority_vote(["5", None, "4", "4", "5", "6"])
    assert (vote.winner, vote.count, vote.first) == ("5", 2, 0)
    assert vote.tally == {"5": 2, "4": 2, "6": 1}
    assert majority_vote([None, "4", "5", "5"]).first == 2
    assert majority_vote([None, None]).winner is None
