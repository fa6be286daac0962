"""Final-answer extraction and comparison, shared by the `sc` strategy and the benchmarks.

`extract_answer(text)` finds the answer a response commits to and returns a normalized key,
so that "The answer is $1,200." and "\\boxed{1200}" compare equal. In order of preference:

1. the last `\\boxed{...}` (braces balanced);
2. the last `#### ...` line (GSM8K style);
3. the last "answer is ..." / "Answer: ..." / "final answer ..." phrase;
4. a multiple-choice letter, written alone or as "(B)" / "B)" / "B." at the start;
5. the last number in the text;
6. else the whole text, lower-cased with whitespace and end punctuation normalized, and a lone
   yes or no word ("yep", "true", "incorrect"...) read as "yes" or "no".

Within 1-3, a phrase containing a number yields its last number; a lone letter A-J yields the
letter; anything else yields its normalized text.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

_NUMBER = re.compile(r"-?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?")
_HASHES = re.compile(r"####\s*([^\n]+)")
_ANSWER_PHRASE = re.compile(
    r"(?:final answer|answer is|answer:|answer =)\s*(?:is\s*)?:?\s*([^\n]+)", re.IGNORECASE
)
_LETTER_ALONE = re.compile(r"^\(?([A-J])\)?[.:)]?$")
_LETTER_LEAD = re.compile(r"^\(?([A-J])[).:]\s")
_FRAC = re.compile(r"\\d?frac\{\s*(-?\d+)\s*\}\{\s*(\d+)\s*\}")
_END_PUNCT = ".,;:!?\"'` *"
_PLACEHOLDER = re.compile(r"\$?N\$?|<[^<>\n]*>|\[[^\[\]\n]*\]")


def extract_answer(text: str | None) -> str | None:
    """The normalized final answer in `text`, or None when there is no text at all."""
    if text is None or not text.strip():
        return None
    stated = _stated(text)
    if stated is not None:
        return _normalize(stated)
    lead = _LETTER_LEAD.match(text.strip())
    return lead.group(1) if lead else _normalize(text)


def states_answer(text: str) -> bool:
    """Whether `text` states its answer in so many words or marks (1-3 above: a `\\boxed{}`, a
    `####` line, an "answer is" phrase), rather than leaving it to be read off its end."""
    return _stated(text) is not None


def states_placeholder(text: str | None) -> bool:
    """Whether the answer `text` states (1-3 above) is a placeholder copied from a format it was
    shown, not a result: a lone "N" ("The answer is N.", from a request that ends `where N is
    the final number`), or words in angle or square brackets ("The answer is <answer>.")."""
    stated = _stated(text or "")
    return stated is not None and _PLACEHOLDER.fullmatch(stated.strip(_END_PUNCT)) is not None


def _stated(text: str) -> str | None:
    for candidate in (_last_boxed(text), _last(_HASHES, text), _last(_ANSWER_PHRASE, text)):
        if candidate is not None and candidate.strip(_END_PUNCT + " "):
            return candidate
    return None


def normalize_number(raw: str) -> str:
    """'$1,200.50' -> '1200.5', '3.0' -> '3', '-7' -> '-7', '3/4' stays '3/4'."""
    cleaned = raw.replace("$", "").replace(",", "").replace(" ", "")
    if "/" in cleaned:
        return cleaned
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return cleaned
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def same_answer(a: str | None, b: str | None) -> bool:
    """Whether two answers (raw text or keys) mean the same final answer."""
    ka, kb = extract_answer(a), extract_answer(b)
    return ka is not None and ka == kb


@dataclass(frozen=True, slots=True)
class Vote:
    winner: str | None
    """The winning answer key (None when no sample had an answer)."""
    count: int
    """How many samples gave the winner."""
    first: int
    """Index of the first sample that gave the winner: the response to return."""
    tally: dict[str, int]

    @property
    def leaders(self) -> list[str]:
        """The answers with the most votes: more than one is a tie."""
        return [answer for answer, count in self.tally.items() if count == self.count]

    def decided_by(self, greedy: str | None) -> bool:
        """Whether a greedy answer decides this vote's tie (`sc`'s `tie_break: greedy`): it is
        one of the tied answers, or no answer had two votes."""
        return greedy is not None and (greedy in self.leaders or self.count == 1)


def majority_vote(answers: Sequence[str | None]) -> Vote:
    """Plurality vote over answer keys; samples without an answer do not vote. A tie goes to
    the answer that appeared first."""
    tally = Counter(a for a in answers if a is not None)
    if not tally:
        return Vote(None, 0, 0, {})
    winner, count = max(tally.items(), key=lambda kv: (kv[1], -answers.index(kv[0])))
    return Vote(winner, count, answers.index(winner), dict(tally))


def _normalize(candidate: str) -> str:
    phrase = _FRAC.sub(r"\1/\2", candidate).strip().strip(_END_PUNCT)
    letter = _LETTER_ALONE.match(phrase)
    if letter:
        return letter.group(1)
    numbers = _NUMBER.findall(phrase)
    if numbers:
        return normalize_number(numbers[-1])
    return _normalize_text(phrase)


_YES = frozenset({"yes", "yeah", "yep", "true", "correct", "right"})
_NO = frozenset({"no", "nope", "false", "incorrect", "wrong"})


def _normalize_text(text: str) -> str:
    words = " ".join(text.lower().split()).strip(_END_PUNCT)
    if words in _YES:
        return "yes"
    if words in _NO:
        return "no"
    return words


def _last(pattern: re.Pattern[str], text: str) -> str | None:
    found = pattern.findall(text)
    return found[-1] if found else None


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    begin = i
    while i < len(text):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:i]
        i += 1
    return None
