"""The bench suites: where the problems come from and how an answer is scored.

Built in: `arith` (generated word problems, needs no files), `gsm8k` (GSM8K-format JSONL) and
`mcq` (multiple-choice JSONL). More come from installed packages that register a suite class
under the entry-point group `ponder.bench_suites`.

Scoring goes through `ponder.answers`, the extractor the `sc` strategy votes with, so that a
bench measures answers exactly as Ponder itself reads them.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

from ponder.answers import extract_answer, normalize_number, same_answer
from ponder.bench.types import Item, Suite
from ponder.errors import InvalidRequest

ENTRY_POINT_GROUP = "ponder.bench_suites"
DEFAULT_ARITH_LIMIT = 100

SYSTEM_PROMPT = "You are a helpful assistant."
MATH_INSTRUCTION = (
    "Solve the problem step by step. End your reply with "
    '"The answer is N." where N is the final number.'
)
MCQ_INSTRUCTION = (
    "Choose the one correct option. End your reply with "
    '"The answer is X." where X is the letter of your choice.'
)
LETTERS = string.ascii_uppercase[:10]
"""Choice letters A-J: the letters `extract_answer` recognizes."""


def math_messages(question: str) -> list[dict[str, Any]]:
    """The chat that asks a problem with a numeric answer."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"{question}\n\n{MATH_INSTRUCTION}"},
    ]


def score_number(item: Item, answer: str) -> tuple[str | None, bool]:
    """The numeric answer the reply commits to, and whether it equals the expected one."""
    return extract_answer(answer), same_answer(answer, item.expected)


# --- arith -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ArithProblem:
    """A generated problem with the arithmetic expression its answer comes from, so that the
    answer can be checked by an independent evaluation."""

    item: Item
    expression: str


_Template = Callable[[random.Random], tuple[str, str, int]]
"""Draws numbers and returns (question, expression, answer), the answer computed directly."""


def _shop(r: random.Random) -> tuple[str, str, int]:
    boxes, per, more = r.randint(3, 15), r.randint(4, 12), r.randint(1, 6)
    sold = r.randint(1, boxes * per)
    question = (
        f"A shop has {boxes} boxes of {per} pens. It sells {sold} pens and buys {more} more "
        "boxes. How many pens does it have now?"
    )
    return question, f"{boxes} * {per} - {sold} + {more} * {per}", boxes * per - sold + more * per


def _savings(r: random.Random) -> tuple[str, str, int]:
    start, weekly, weeks = r.randint(5, 200), r.randint(5, 40), r.randint(2, 10)
    spent = r.randint(0, start + weekly * weeks)
    question = (
        f"Mia has ${start}. She earns ${weekly} every week for {weeks} weeks, then spends "
        f"${spent} on a bike. How many dollars does she have left?"
    )
    return question, f"{start} + {weekly} * {weeks} - {spent}", start + weekly * weeks - spent


def _bus(r: random.Random) -> tuple[str, str, int]:
    start = r.randint(10, 60)
    off1 = r.randint(0, start)
    on1 = r.randint(0, 30)
    off2 = r.randint(0, start - off1 + on1)
    question = (
        f"A bus leaves with {start} passengers. At the first stop {off1} get off and {on1} get "
        f"on. At the second stop {off2} get off. How many passengers are on the bus now?"
    )
    return question, f"{start} - {off1} + {on1} - {off2}", start - off1 + on1 - off2


def _bakery(r: random.Random) -> tuple[str, str, int]:
    bag = r.randint(2, 6)
    per_tray = bag * r.randint(2, 6)
    trays = r.randint(2, 9)
    bags = trays * per_tray // bag
    sold = r.randint(0, bags)
    question = (
        f"A bakery bakes {trays} trays of {per_tray} cookies. It packs the cookies in bags of "
        f"{bag} and sells {sold} bags. How many bags are left?"
    )
    return question, f"{trays} * {per_tray} // {bag} - {sold}", bags - sold


def _farm(r: random.Random) -> tuple[str, str, int]:
    cows, hens, bought = r.randint(1, 20), r.randint(1, 30), r.randint(1, 15)
    question = (
        f"A farm has {cows} cows and {hens} chickens. The farmer buys {bought} more chickens. "
        "How many legs do all the animals have together?"
    )
    return question, f"{cows} * 4 + ({hens} + {bought}) * 2", cows * 4 + (hens + bought) * 2


def _fence(r: random.Random) -> tuple[str, str, int]:
    length, width, price = r.randint(3, 40), r.randint(2, 30), r.randint(2, 15)
    question = (
        f"A garden is {length} meters long and {width} meters wide. Fencing costs ${price} per "
        "meter. How many dollars does it cost to fence the whole garden?"
    )
    return question, f"2 * ({length} + {width}) * {price}", 2 * (length + width) * price


def _reading(r: random.Random) -> tuple[str, str, int]:
    per_day, days, weekend = r.randint(5, 30), r.randint(2, 7), r.randint(0, 40)
    pages = per_day * days + weekend + r.randint(0, 200)
    question = (
        f"A book has {pages} pages. Leo reads {per_day} pages a day for {days} days and "
        f"{weekend} pages on the weekend. How many pages does he still have to read?"
    )
    return question, f"{pages} - {per_day} * {days} - {weekend}", pages - per_day * days - weekend


def _factory(r: random.Random) -> tuple[str, str, int]:
    workers, rate, hours = r.randint(2, 12), r.randint(3, 20), r.randint(2, 8)
    bad = r.randint(0, workers * rate * hours)
    question = (
        f"In a workshop {workers} workers each make {rate} toys an hour for {hours} hours. "
        f"{bad} of the toys are broken and thrown away. How many toys are left?"
    )
    return question, f"{workers} * {rate} * {hours} - {bad}", workers * rate * hours - bad


def _pizza(r: random.Random) -> tuple[str, str, int]:
    friends, each = r.randint(2, 8), r.randint(2, 6)
    slices = r.choice([4, 6, 8, 12])
    pizzas = -(-friends * each // slices)  # enough pizzas for everyone
    question = (
        f"{friends} friends order {pizzas} pizzas cut into {slices} slices each. Every friend "
        f"eats {each} slices. How many slices are left over?"
    )
    return question, f"{pizzas} * {slices} - {friends} * {each}", pizzas * slices - friends * each


ARITH_TEMPLATES: tuple[_Template, ...] = (
    _shop,
    _savings,
    _bus,
    _bakery,
    _farm,
    _fence,
    _reading,
    _factory,
    _pizza,
)


class ArithSuite:
    """Generated multi-step word problems (2-4 operations) with exact non-negative integer
    answers. One `random.Random(seed)` draws the items in order, so a larger limit extends a
    smaller one and ids ("arith-<seed>-<index>") stay stable across resumed runs."""

    name: ClassVar[str] = "arith"
    needs_path: ClassVar[bool] = False

    def problems(self, limit: int | None, seed: int) -> list[ArithProblem]:
        count = DEFAULT_ARITH_LIMIT if limit is None else limit
        rng = random.Random(seed)
        out = []
        for index in range(count):
            question, expression, answer = rng.choice(ARITH_TEMPLATES)(rng)
            item = Item(id=f"arith-{seed}-{index}", question=question, expected=str(answer))
            out.append(ArithProblem(item, expression))
        return out

    def load(self, path: Path | None, limit: int | None, seed: int) -> list[Item]:
        return [problem.item for problem in self.problems(limit, seed)]

    def messages(self, item: Item) -> list[dict[str, Any]]:
        return math_messages(item.question)

    def score(self, item: Item, answer: str) -> tuple[str | None, bool]:
        return score_number(item, answer)


# --- JSONL files -----------------------------------------------------------------------------


def _require_path(suite: str, path: Path | None) -> Path:
    if path is None:
        raise InvalidRequest(f"The {suite} suite reads a JSONL file: give --path.", param="--path")
    return path


def _records(path: Path, limit: int | None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for the file's non-blank lines, the first `limit` of them.
    Lines past the limit are not read, so a bad line there does not stop a short run."""
    if limit is not None and limit <= 0:
        return
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise InvalidRequest(f"Cannot read {path}: {exc.strerror}.", param="--path") from exc
    taken = 0
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise _bad_line(path, number, f"not JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise _bad_line(path, number, "not a JSON object")
            yield number, record
            taken += 1
            if limit is not None and taken >= limit:
                return


def _bad_line(path: Path, number: int, why: str) -> InvalidRequest:
    return InvalidRequest(f"{path}, line {number}: {why}.", param="--path")


def _text_field(record: dict[str, Any], key: str, path: Path, number: int) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _bad_line(path, number, f'"{key}" must be a non-empty string')
    return value


class Gsm8kSuite:
    """GSM8K-format JSONL: {"question", "answer": "...#### 42"}. The expected answer is what
    follows the last "####", normalized ("1,200" -> "1200"). Items keep the file's order; the
    seed does not reorder them."""

    name: ClassVar[str] = "gsm8k"
    needs_path: ClassVar[bool] = True

    def load(self, path: Path | None, limit: int | None, seed: int) -> list[Item]:
        path = _require_path(self.name, path)
        items = []
        for number, record in _records(path, limit):
            question = _text_field(record, "question", path, number)
            answer = _text_field(record, "answer", path, number)
            if "####" not in answer:
                raise _bad_line(path, number, 'the "answer" has no "####" final answer')
            expected = normalize_number(answer.rsplit("####", 1)[1].strip())
            if not expected:
                raise _bad_line(path, number, 'nothing follows "####" in the "answer"')
            items.append(Item(id=f"gsm8k-{number}", question=question, expected=expected))
        return items

    def messages(self, item: Item) -> list[dict[str, Any]]:
        return math_messages(item.question)

    def score(self, item: Item, answer: str) -> tuple[str | None, bool]:
        return score_number(item, answer)


class McqSuite:
    """Multiple-choice JSONL: {"question", "choices": ["..", ..] or {"A": "..", ..},
    "answer": "B"}. Up to ten choices (A-J); items keep the file's order."""

    name: ClassVar[str] = "mcq"
    needs_path: ClassVar[bool] = True

    def load(self, path: Path | None, limit: int | None, seed: int) -> list[Item]:
        path = _require_path(self.name, path)
        items = []
        for number, record in _records(path, limit):
            question = _text_field(record, "question", path, number)
            choices = _choices(record.get("choices"), path, number)
            expected = _text_field(record, "answer", path, number).strip().upper()
            if expected not in LETTERS[: len(choices)]:
                raise _bad_line(
                    path, number, f'"answer" must be one of {", ".join(LETTERS[: len(choices)])}'
                )
            items.append(
                Item(id=f"mcq-{number}", question=question, expected=expected, choices=choices)
            )
        return items

    def messages(self, item: Item) -> list[dict[str, Any]]:
        options = "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(item.choices))
        return [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"{item.question}\n\n{options}\n\n{MCQ_INSTRUCTION}"},
        ]

    def score(self, item: Item, answer: str) -> tuple[str | None, bool]:
        letter = choice_letter(item, answer)
        return letter, letter is not None and letter == item.expected


def choice_letter(item: Item, answer: str) -> str | None:
    """The letter a reply chooses. `extract_answer` reads "The answer is B." as "B"; when it
    reads a phrase instead, a leading "(C)" / "C." in it, or the text of exactly one of the
    choices, still names the letter. Else the extracted key itself (scored wrong)."""
    key = extract_answer(answer)
    if key is None:
        return None
    letters = LETTERS[: len(item.choices)]
    if key in letters:
        return key
    lead = extract_answer(key.upper())
    if lead is not None and lead in letters:
        return lead
    matches = [letters[i] for i, text in enumerate(item.choices) if extract_answer(text) == key]
    return matches[0] if len(matches) == 1 else key


def _choices(raw: object, path: Path, number: int) -> tuple[str, ...]:
    if isinstance(raw, dict):
        keys = [str(k).strip().upper() for k in raw]
        if sorted(keys) != list(LETTERS[: len(keys)]):
            raise _bad_line(path, number, '"choices" keys must be the letters A, B, C, ... in turn')
        values = [raw[k] for k in sorted(raw, key=lambda k: str(k).strip().upper())]
    elif isinstance(raw, list):
        values = raw
    else:
        raise _bad_line(path, number, '"choices" must be a list or an object keyed by letter')
    if not 2 <= len(values) <= len(LETTERS):
        raise _bad_line(path, number, f'"choices" must have 2 to {len(LETTERS)} options')
    if not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in values):
        raise _bad_line(path, number, '"choices" must be strings')
    return tuple(str(v).strip() for v in values)


# --- registry --------------------------------------------------------------------------------

BUILTIN_SUITES: tuple[type[Suite], ...] = (ArithSuite, Gsm8kSuite, McqSuite)


def suites() -> dict[str, Suite]:
    """Every suite by name: the built-ins, then those registered under the entry-point group
    `ponder.bench_suites` (each a class built with no arguments, keyed by its `name`). Two
    suites with the same name are an error rather than one silently shadowing the other."""
    found: dict[str, Suite] = {}
    origin: dict[str, str] = {}
    for cls in BUILTIN_SUITES:
        found[cls.name] = cls()
        origin[cls.name] = "built in"
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        where = f"entry point {entry.name} ({entry.value})"
        try:
            loaded = entry.load()
        except (ImportError, AttributeError) as exc:
            raise InvalidRequest(
                f"Cannot load bench suite {where}: {exc}.", param="--suite"
            ) from exc
        name = getattr(loaded, "name", None)
        if not isinstance(loaded, type) or not isinstance(name, str) or not name:
            raise InvalidRequest(
                f"Bench suite {where} is not a suite class with a `name`.", param="--suite"
            )
        if name in found:
            raise InvalidRequest(
                f"Two bench suites are named {name!r}: {origin[name]} and {where}.",
                param="--suite",
            )
        found[name] = loaded()
        origin[name] = where
    return found


def get_suite(name: str) -> Suite:
    """The suite called `name`, or an error listing the names there are."""
    available = suites()
    suite = available.get(name)
    if suite is None:
        raise InvalidRequest(
            f"Unknown suite {name!r}; available: {', '.join(sorted(available))}.", param="--suite"
        )
    return suite
