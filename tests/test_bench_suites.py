"""Bench suites: the loaders, the prompts, the scoring and the plug-in registry."""

from __future__ import annotations

import ast
import json
import operator
import re
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import pytest

from ponder.bench.suites import (
    ARITH_TEMPLATES,
    ENTRY_POINT_GROUP,
    MATH_INSTRUCTION,
    MCQ_INSTRUCTION,
    SYSTEM_PROMPT,
    ArithSuite,
    Gsm8kSuite,
    McqSuite,
    get_suite,
    suites,
)
from ponder.bench.types import Item
from ponder.errors import InvalidRequest

_OPS: dict[type[ast.operator], Any] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
}


def evaluate(expression: str) -> int:
    """An independent evaluation of a generated expression: integer literals and + - * // only,
    and a floor division must be exact (the word problems never round)."""

    def walk(node: ast.expr) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.FloorDiv):
                assert left % right == 0, expression
            result: int = _OPS[type(node.op)](left, right)
            return result
        raise AssertionError(f"unexpected node in {expression!r}: {ast.dump(node)}")

    return walk(ast.parse(expression, mode="eval").body)


def write_jsonl(path: Path, lines: list[object]) -> Path:
    path.write_text(
        "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    )
    return path


# --- arith -----------------------------------------------------------------------------------


def test_arith_is_deterministic_per_seed_and_prefix_stable() -> None:
    suite = ArithSuite()
    first = suite.load(None, 20, 7)
    assert first == suite.load(None, 20, 7)
    assert [item.id for item in first] == [f"arith-7-{i}" for i in range(20)]
    assert suite.load(None, 5, 7) == first[:5]  # a resumed, longer run keeps the same items
    other = suite.load(None, 20, 8)
    assert [i.question for i in other] != [i.question for i in first]
    assert len(suite.load(None, None, 0)) == 100
    assert suite.load(None, 0, 0) == []


def test_arith_answers_match_an_independent_evaluation() -> None:
    problems = ArithSuite().problems(300, 3)
    shapes = set()
    for problem in problems:
        item = problem.item
        value = evaluate(problem.expression)
        assert item.expected == str(value) and value >= 0, problem
        # The expression is built from the question's own numbers.
        assert set(re.findall(r"\d+", item.question)) <= set(
            re.findall(r"\d+", problem.expression)
        ), problem
        steps = len(re.findall(r"//|[-+*]", problem.expression))
        assert 2 <= steps <= 4, problem
        assert item.choices == ()
        shapes.add(re.sub(r"\d+", "#", item.question))
    assert len(shapes) == len(ARITH_TEMPLATES) >= 6


def test_math_prompt_is_the_system_prompt_and_the_instructed_question() -> None:
    item = ArithSuite().load(None, 1, 0)[0]
    assert ArithSuite().messages(item) == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": f"{item.question}\n\n{MATH_INSTRUCTION}"},
    ]
    assert SYSTEM_PROMPT == "You are a helpful assistant."
    assert '"The answer is N."' in MATH_INSTRUCTION


@pytest.mark.parametrize(
    ("reply", "extracted", "correct"),
    [
        ("12 * 100 = 1200. The answer is 1,200.", "1200", True),
        ("So \\boxed{1200}", "1200", True),
        ("work...\n#### 1200", "1200", True),
        ("The answer is 1199.", "1199", False),
        ("The answer is 1200.5.", "1200.5", False),
        ("I cannot tell.", "i cannot tell", False),
        ("", None, False),
    ],
)
def test_math_scoring(reply: str, extracted: str | None, correct: bool) -> None:
    item = Item(id="x", question="q", expected="1200")
    assert ArithSuite().score(item, reply) == (extracted, correct)
    assert Gsm8kSuite().score(item, reply) == (extracted, correct)


# --- gsm8k -----------------------------------------------------------------------------------


def test_gsm8k_reads_the_final_answer_and_line_numbers(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "g.jsonl",
        [
            {"question": "How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
            "",
            {"question": "How much?", "answer": "It costs\n#### 1,200"},
            {"question": "Pay?", "answer": "#### $35.00"},
        ],
    )
    items = Gsm8kSuite().load(path, None, 0)
    assert items == [
        Item(id="gsm8k-1", question="How many?", expected="7"),
        Item(id="gsm8k-3", question="How much?", expected="1200"),
        Item(id="gsm8k-4", question="Pay?", expected="35"),
    ]
    assert Gsm8kSuite().load(path, 2, 0) == items[:2]
    assert Gsm8kSuite().score(items[1], "The answer is $1,200.") == ("1200", True)


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ({"answer": "#### 3"}, '"question" must be a non-empty string'),
        ({"question": "q", "answer": "three"}, 'no "####"'),
        ({"question": "q", "answer": "####  "}, 'nothing follows "####"'),
    ],
)
def test_gsm8k_bad_line_names_the_line(tmp_path: Path, line: object, why: str) -> None:
    good = {"question": "q", "answer": "#### 1"}
    path = write_jsonl(tmp_path / "g.jsonl", [good, good, line])
    with pytest.raises(InvalidRequest) as caught:
        Gsm8kSuite().load(path, None, 0)
    assert caught.value.param == "--path"
    assert f"{path}, line 3: " in caught.value.message
    assert why in caught.value.message
    # A bad line past the limit is never read.
    assert len(Gsm8kSuite().load(path, 2, 0)) == 2


def test_file_suites_need_a_readable_path(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest) as caught:
        Gsm8kSuite().load(None, 10, 0)
    assert caught.value.param == "--path" and "give --path" in caught.value.message
    with pytest.raises(InvalidRequest) as missing:
        McqSuite().load(tmp_path / "absent.jsonl", 10, 0)
    assert missing.value.param == "--path" and "absent.jsonl" in missing.value.message
    assert Gsm8kSuite.needs_path and McqSuite.needs_path and not ArithSuite.needs_path


# --- mcq -------------------------------------------------------------------------------------


def test_mcq_reads_both_choice_formats_and_builds_the_prompt(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {"question": "Capital of France?", "choices": ["Rome", "Paris", "Oslo"], "answer": "B"},
            {"question": "2 + 2?", "choices": {"B": 4, "A": "3", "C": "5", "D": 6}, "answer": "b"},
        ],
    )
    first, second = McqSuite().load(path, None, 0)
    assert first == Item("mcq-1", "Capital of France?", "B", ("Rome", "Paris", "Oslo"))
    assert second == Item("mcq-2", "2 + 2?", "B", ("3", "4", "5", "6"))
    assert McqSuite().messages(first) == [
        {"role": "system", "content": "You are a helpful assistant."},
        {
            "role": "user",
            "content": f"Capital of France?\n\nA. Rome\nB. Paris\nC. Oslo\n\n{MCQ_INSTRUCTION}",
        },
    ]
    assert "letter" in MCQ_INSTRUCTION


@pytest.mark.parametrize(
    ("reply", "extracted", "correct"),
    [
        ("Paris is the capital. The answer is B.", "B", True),
        ("Answer: (B)", "B", True),
        ("B) Paris", "B", True),
        ("The answer is (B) Paris.", "B", True),
        ("The answer is Paris.", "B", True),  # the text of exactly one choice
        ("The answer is A.", "A", False),
        ("The answer is Berlin.", "berlin", False),
        ("", None, False),
    ],
)
def test_mcq_scoring(reply: str, extracted: str | None, correct: bool) -> None:
    item = Item("mcq-1", "Capital of France?", "B", ("Rome", "Paris", "Oslo"))
    assert McqSuite().score(item, reply) == (extracted, correct)


@pytest.mark.parametrize(
    ("record", "why"),
    [
        ({"question": "q", "choices": ["a", "b"], "answer": "C"}, '"answer" must be one of A, B'),
        ({"question": "q", "choices": {"A": "a", "C": "c"}, "answer": "A"}, "keys must be"),
        ({"question": "q", "choices": ["only"], "answer": "A"}, "2 to 10 options"),
        ({"question": "q", "choices": "a, b", "answer": "A"}, "must be a list"),
        ({"question": "q", "choices": ["a", None], "answer": "A"}, "must be strings"),
    ],
)
def test_mcq_bad_line_names_the_line(tmp_path: Path, record: object, why: str) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [record])
    with pytest.raises(InvalidRequest) as caught:
        McqSuite().load(path, None, 0)
    assert f"{path}, line 1: " in caught.value.message and why in caught.value.message


# --- registry --------------------------------------------------------------------------------


class ToySuite:
    """A third-party suite, as an installed package would register it."""

    name: ClassVar[str] = "toy"
    needs_path: ClassVar[bool] = False

    def load(self, path: Path | None, limit: int | None, seed: int) -> list[Item]:
        return [Item(id="toy-0", question="1 + 1?", expected="2")]

    def messages(self, item: Item) -> list[dict[str, Any]]:
        return [{"role": "user", "content": item.question}]

    def score(self, item: Item, answer: str) -> tuple[str | None, bool]:
        return answer, answer == item.expected


class ArithClash(ToySuite):
    name: ClassVar[str] = "arith"


def plug_in(monkeypatch: pytest.MonkeyPatch, *targets: tuple[str, str]) -> None:
    entries = [metadata.EntryPoint(name, value, ENTRY_POINT_GROUP) for name, value in targets]

    def entry_points(**select: str) -> list[metadata.EntryPoint]:
        return entries if select == {"group": ENTRY_POINT_GROUP} else []

    monkeypatch.setattr(metadata, "entry_points", entry_points)


def test_builtin_suites_and_unknown_name() -> None:
    found = suites()
    assert list(found)[:3] == ["arith", "gsm8k", "mcq"]
    assert isinstance(get_suite("gsm8k"), Gsm8kSuite)
    with pytest.raises(InvalidRequest) as caught:
        get_suite("nope")
    assert caught.value.param == "--suite"
    assert "'nope'" in caught.value.message and "arith, gsm8k, mcq" in caught.value.message


def test_entry_point_adds_a_suite(monkeypatch: pytest.MonkeyPatch) -> None:
    plug_in(monkeypatch, ("toy", "tests.test_bench_suites:ToySuite"))
    assert list(suites()) == ["arith", "gsm8k", "mcq", "toy"]
    toy = get_suite("toy")
    assert isinstance(toy, ToySuite)
    assert toy.load(None, None, 0)[0].id == "toy-0"


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        ([("arith", "tests.test_bench_suites:ArithClash")], "Two bench suites are named 'arith'"),
        (
            [("toy", "tests.test_bench_suites:ToySuite")] * 2,
            "Two bench suites are named 'toy'",
        ),
        ([("gone", "tests.no_such_module:Suite")], "Cannot load bench suite entry point gone"),
        ([("fn", "tests.test_bench_suites:evaluate")], "is not a suite class"),
    ],
)
def test_bad_plug_ins_are_errors_at_load(
    monkeypatch: pytest.MonkeyPatch, targets: list[tuple[str, str]], message: str
) -> None:
    plug_in(monkeypatch, *targets)
    with pytest.raises(InvalidRequest) as caught:
        get_suite("arith")
    assert message in caught.value.message and caught.value.param == "--suite"
