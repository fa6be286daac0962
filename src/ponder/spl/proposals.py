"""Whether a strategy the model proposed is one SPL can use: prose of a general method, not
one problem's solution (an answer, its numbers, its people, its calculations), and, for a
rewrite, different from the text it rewrites."""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_STRATEGY_CHARS = 1000
MIN_STRATEGY_CHARS = 20
MIN_DISTINCT_WORDS = 3
MIN_DISTINCT_LINES = 0.7
"""Share of a strategy's lines that must differ from each other."""

_WORD = re.compile(r"[^\W\d_]{2,}")
_NOT_WORD = re.compile(r"[\d\W_]+")
_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
_STATES_ANSWER = re.compile(
    r"\b(?:correct|final|original|right|wrong)\s+answer\s+(?:is|was|=)"
    r"|\banswer\s+is\b[^\n]*\d|\\boxed\{",
    re.IGNORECASE,
)
_CALCULATION = re.compile(r"\d\s*(?:[-+*/\u00d7\u00f7x]|\\times|\\div|\\cdot)\s*\d[^\n=]*=\s*\$?\d")
"""A worked calculation ("5 \\times 5 = 25"): a solution of one problem, not a method."""
_STEP = re.compile(r"\s*[*_]*\d{1,2}[.)]\s")
"""A line that starts a numbered step ("1. ", "**2) ")."""
_CAPITALIZED = re.compile(r"\b[A-Z][a-z]{2,}\b")
_CONTENT_WORD = re.compile(r"[a-z]{4,}")
"""A word of four letters or more (lower-cased text): what a strategy and a problem share when
the strategy is that problem's plan ("the total number of roses", "the cost of the first glass")."""
SHARED_WORDS = 0.2
"""A strategy that takes more than this share of its distinct words of four letters or more
from the problem it was written for (and at least MIN_SHARED of them) is that problem's plan.
The starter strategies share at most 0.22 with any of GSM8K's first 100 problems, 0.05 with a
typical one; the 12 strategies the 1.5B wrote in two SPL runs shared 0.23 to 0.82 with their
own problem (`benchmarks/RESULTS.md`)."""
MIN_SHARED = 3
_SENTENCE_END = ".!?:"
_LABEL = re.compile(
    r"^[\s*#_]*(?:(?:improved|merged|combined|new|general)\s+)?strategy[\s*_]*:[\s*_]*",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Lesson:
    """What one learning request saw and produced."""

    request_id: str
    problem_type: str
    query: str
    answer: str
    truth: str | None
    used: tuple[int, ...]


def clean_strategy(reply: str | None) -> str | None:
    """A model's strategy text without a leading "Strategy:" label, its numbered steps only
    when it has them (`steps_only`), cut to `MAX_STRATEGY_CHARS` (at a line end where there is
    one); None when it is too short or not prose (a weak model may answer with a run of step
    numbers or one word repeated)."""
    text = steps_only(_LABEL.sub("", (reply or "").strip(), count=1).strip())
    if len(text) > MAX_STRATEGY_CHARS:
        cut = text[:MAX_STRATEGY_CHARS]
        line_end = cut.rfind("\n")
        text = (cut[:line_end] if line_end >= MAX_STRATEGY_CHARS // 2 else cut).strip()
    return text if len(text) >= MIN_STRATEGY_CHARS and _is_prose(text) else None


def steps_only(text: str) -> str:
    """The numbered steps of a reply that has at least two: from the first step to the end of
    the paragraph of the last one. What a weak model writes around the steps it was asked for
    (an introduction to one problem, a comment on what the new steps fix) is not part of the
    strategy. A reply without numbered steps is kept as it is."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if _STEP.match(line)]
    if len(starts) < 2:
        return text
    end = starts[-1] + 1
    while end < len(lines) and lines[end].strip():
        end += 1
    return "\n".join(lines[starts[0] : end]).strip()


def _is_prose(text: str) -> bool:
    """At least `MIN_DISTINCT_WORDS` different words, letters for most of the text, and no
    line said over and over (numbers aside)."""
    words = {w.lower() for w in _WORD.findall(text)}
    visible = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in visible)
    # lines compared without their numbers: "2 to 6 steps", "3 to 6 steps" is one line repeated
    lines = [_NOT_WORD.sub(" ", line).strip().lower() for line in text.splitlines()]
    lines = [line for line in lines if line]
    return (
        len(words) >= MIN_DISTINCT_WORDS
        and letters >= 0.5 * len(visible)
        and len(set(lines)) >= MIN_DISTINCT_LINES * len(lines)
    )


def specific_to(text: str, lesson: Lesson) -> str | None:
    """Why `text` is about this one problem rather than a general method, or None: it states
    an answer, works out a calculation, repeats the correct answer or a number of two or more
    digits from the problem (a strategy that leaks an answer would mislead every later
    problem), names the problem's people or things, or is made of the problem's own words
    (`SHARED_WORDS`)."""
    if _STATES_ANSWER.search(text):
        return "it states an answer instead of a method"
    if _CALCULATION.search(text):
        return "it works out this problem's calculations instead of describing a method"
    numbers = _numbers(text)
    copied = {n for n in _numbers(lesson.query) if len(n.replace(".", "")) >= 2}
    if lesson.truth is not None:
        copied |= _numbers(lesson.truth)
    if numbers & copied:
        return "it repeats numbers of this problem"
    names = _names_inside_sentences(text) & set(_CAPITALIZED.findall(lesson.query))
    if names:
        return f"it names this problem's people or things ({', '.join(sorted(names))})"
    words = content_words(text)
    shared = words & content_words(lesson.query)
    if len(shared) >= MIN_SHARED and len(shared) > SHARED_WORDS * len(words):
        return (
            f"it is this problem's plan, not a method: {len(shared)} of its {len(words)} words "
            f"are the problem's ({', '.join(sorted(shared)[:6])})"
        )
    return None


def content_words(text: str) -> set[str]:
    """The distinct words of four letters or more in `text`, lower-cased."""
    return set(_CONTENT_WORD.findall(text.lower()))


def _names_inside_sentences(text: str) -> set[str]:
    """Capitalized words inside a sentence ("the eggs Janet lays"): names of people, places
    and things. A word that starts the text, a line, a step or a sentence is not counted."""
    names = set()
    for match in _CAPITALIZED.finditer(text):
        before = text[: match.start()].rstrip(" \t*_\"'(")
        if before and before[-1] not in _SENTENCE_END and before[-1] != "\n":
            names.add(match.group())
    return names


def same_words(a: str, b: str) -> bool:
    """Whether two strategies say the same words, whatever their markdown, case and spacing
    (a weak model asked to improve a strategy may only put its lines in bold)."""
    return _WORD.findall(a.lower()) == _WORD.findall(b.lower())


def _numbers(text: str) -> set[str]:
    return {n.replace(",", "").rstrip(".") for n in _NUMBER.findall(text)}
