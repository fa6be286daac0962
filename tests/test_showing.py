"""`showing`: how a strategy shows the model its own outputs and reads its judgement back."""

from __future__ import annotations

import pytest

from ponder.strategies.showing import (
    CUT_OFF_MARK,
    CUT_OFF_NOTE,
    after_request,
    best,
    listing,
    marked,
    numbered,
    parse_list,
    selection,
    verdict,
)
from ponder.types import Completion, Message


def cut(text: str) -> Completion:
    return Completion(text, finish_reason="length")


def test_after_request_adds_the_blocks_to_the_last_user_turn() -> None:
    conversation = [
        Message("system", "Be brief."),
        Message("user", "What is 2 + 2?"),
        Message("assistant", "4"),
        Message("user", "And 3 + 3?"),
    ]
    shown = after_request(conversation, "Draft 1: 6", "Check it.")
    assert shown == [*conversation[:3], Message("user", "And 3 + 3?\n\nDraft 1: 6\n\nCheck it.")]
    assert conversation[3] == Message("user", "And 3 + 3?")  # the conversation is not changed


def test_after_request_without_a_user_turn_adds_one() -> None:
    conversation = [Message("system", "Be brief.")]
    assert after_request(conversation, "A", "B") == [*conversation, Message("user", "A\n\nB")]
    assert after_request([], "A") == [Message("user", "A")]


def test_after_request_keeps_the_other_content_parts() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    request = Message("user", (image, {"type": "text", "text": "What is this?"}))
    (shown,) = after_request([request], "Draft 1: a cat", "Check it.")
    assert shown.content == (
        image,
        {"type": "text", "text": "What is this?\n\nDraft 1: a cat\n\nCheck it."},
    )


def test_numbered_marks_an_output_cut_off_at_the_token_limit() -> None:
    outputs = [Completion("It is 4."), cut("First 2 + 2"), Completion(None)]
    assert numbered("Draft", outputs) == (
        f"Draft 1: It is 4.\n\nDraft 2{CUT_OFF_MARK}: First 2 + 2\n\nDraft 3: "
    )
    assert numbered("Answer", []) == ""


def test_marked_notes_a_cut_off_output_before_its_text() -> None:
    assert marked(Completion("It is 4.")) == "It is 4."
    assert marked(Completion(None)) == ""
    assert marked(cut("First 2 + 2")) == f"{CUT_OFF_NOTE}\n\nFirst 2 + 2"


@pytest.mark.parametrize(
    ("text", "count", "expected"),
    [
        ("Selected: 2", 3, 1),
        ("Selected: candidate 3", 3, 2),
        ("**Selected:** Solution #1", 3, 0),
        ("selected 1, no wait.\nSelected: 2", 3, 1),  # the last one counts
        ("Selected: 4", 3, None),
        ("Selected: 0", 3, None),
        ("Selected:\n2", 3, None),  # the number is on the same line
        ("Unselected: 2", 3, None),
        ("The second one.", 3, None),
        ("", 3, None),
        (None, 3, None),
    ],
)
def test_selection(text: str | None, count: int, expected: int | None) -> None:
    assert selection(text, count) == expected


FIX_WORDS = ("NO ISSUES", "FIX")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Step 1 holds.\nVERDICT: NO ISSUES", "NO ISSUES"),
        ("**Verdict:** fix.", "FIX"),
        ("`VERDICT: NO ISSUES`", "NO ISSUES"),
        ('## VERDICT: "Fix"!', "FIX"),
        ("VERDICT: FIX\nOn second thought:\nVERDICT: NO ISSUES", "NO ISSUES"),  # the last wins
        ("VERDICT: FIX\nVERDICT: maybe", None),  # the last line names no word: no verdict
        ("I could say VERDICT: FIX, but no.", None),  # not at the start of the line
        ("No issues.", None),
        ("", None),
    ],
)
def test_verdict(text: str, expected: str | None) -> None:
    assert verdict(text, FIX_WORDS) == expected


def test_verdict_with_its_own_prefix_and_word_order() -> None:
    assert verdict("JUDGEMENT: same", ("SAME", "DIFFERENT"), prefix="JUDGEMENT:") == "SAME"
    assert verdict("VERDICT: same", ("SAME",), prefix="JUDGEMENT:") is None
    assert verdict("VERDICT: INCORRECT", ("INCORRECT", "CORRECT")) == "INCORRECT"
    assert verdict("VERDICT: CORRECT", ("INCORRECT", "CORRECT")) == "CORRECT"
    # the first word the line starts with wins: a longer word goes first
    assert verdict("VERDICT: NO ISSUES", ("NO", "NO ISSUES")) == "NO"
    assert verdict("VERDICT: NO ISSUES", ("NO ISSUES", "NO")) == "NO ISSUES"


def test_best_puts_finished_over_cut_off_then_score() -> None:
    candidates = [cut("The answer is 5."), Completion("The answer is 5."), Completion("It is 6.")]
    assert best(candidates, [9.0, 1.0, 0.0]) == 1
    assert best(candidates, [9.0, 1.0, 2.0]) == 2
    assert best([cut("a"), cut("b")], [1.0, 2.0]) == 1


def test_best_breaks_ties_by_shared_answer_then_order() -> None:
    candidates = [
        Completion("The answer is 3."),
        Completion("The answer is 4."),
        Completion("So it is 4. The answer is 4."),
    ]
    assert best(candidates, [0.0] * 3) == 1
    assert best(candidates, [5.0, 0.0, 0.0]) == 0
    assert best([Completion("The answer is 1."), Completion("The answer is 2.")], [0.0, 0.0]) == 0
    # a cut-off candidate shares no answer
    shared_with_cut = [
        Completion("The answer is 3."),
        cut("The answer is 4."),
        Completion("The answer is 4."),
    ]
    assert best(shared_with_cut, [0.0] * 3) == 0


def test_best_with_agreement_first_lets_the_score_choose_only_among_equal_support() -> None:
    lone, shared_low, shared_high = (
        Completion("The answer is 12."),
        Completion("So 15."),
        Completion("The answer is 15."),
    )
    trio = [lone, shared_low, shared_high]
    assert best(trio, [9.0, 5.0, 6.0]) == 0  # the rating first
    assert best(trio, [9.0, 5.0, 6.0], agreement_first=True) == 2
    apart = [Completion("It is 1."), Completion("It is 2."), Completion("It is 3.")]
    assert best(apart, [1.0, 7.0, 3.0], agreement_first=True) == 1
    cut = Completion("The answer is 15.", finish_reason="length")
    assert best([lone, cut, cut], [0.0, 9.0, 9.0], agreement_first=True) == 0  # finished first


def test_parse_list() -> None:
    assert parse_list("Ideas:\n1. a\n2) b c\n- d\n* e\n\u2022 f\n3: g\nnot an item") == [
        "a",
        "b c",
        "d",
        "e",
        "f",
        "g",
    ]
    assert parse_list("  just one idea  ") == ["just one idea"]
    assert parse_list("   ") == []
    assert parse_list(None) == []


def test_listing() -> None:
    assert listing(["a", "b c"]) == "1. a\n2. b c"
    assert listing([]) == ""
    assert parse_list(listing(["x", "y"])) == ["x", "y"]
