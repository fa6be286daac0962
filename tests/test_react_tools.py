"""The built-in tools of `react`: a calculator that never evaluates code, and a search over the
conversation."""

from __future__ import annotations

import asyncio
import time

import pytest

from ponder.strategies.tools import (
    BUILTIN_TOOLS,
    MAX_EXPRESSION_CHARS,
    NO_MATCH,
    calculate,
    search_context,
)
from ponder.types import Message


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("2 + 3 * 4", "14"),
        ("(2 + 3) * 4", "20"),
        ("2 ** 10", "1024"),
        ("2 ** 3 ** 2", "512"),
        ("-3 ** 2", "-9"),
        ("+5 - -2", "7"),
        ("7 // 2", "3"),
        ("7 % 3", "1"),
        ("10 / 4", "2.5"),
        ("1 / 3", "0.333333333333"),
        ("0.1 + 0.2", "0.3"),
        ("2^10", "1024"),
        ("sqrt(16) + abs(-3)", "7"),
        ("round(2.567, 2)", "2.57"),
        ("min(4, 2, 8) + max(1, 9)", "11"),
        ("log(100, 10)", "2"),
        ("sin(pi / 2) + cos(0)", "2"),
        ("round(e, 3)", "2.718"),
        ("`12 * 12`", "144"),
        ("123456789 * 987654321", "121932631112635269"),
    ],
)
def test_calculator_evaluates_arithmetic(expression: str, value: str) -> None:
    assert calculate(expression) == value


@pytest.mark.parametrize("expression", ["1 / 0", "5 // 0", "5 % 0", "0 ** -1"])
def test_division_by_zero_is_an_error_text(expression: str) -> None:
    assert calculate(expression) == "Error: division by zero"


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ("__import__('os')", "Error: unknown function '__import__'"),
        ("open('x')", "Error: unknown function 'open'"),
        ("eval('1')", "Error: unknown function 'eval'"),
        ("().__class__", "Error: unsupported expression (Attribute)"),
        ("(1).__class__.__bases__", "Error: unsupported expression (Attribute)"),
        ("math.sqrt(4)", "Error: unknown function 'math.sqrt'"),
        ("os", "Error: unknown name 'os'"),
        ("[1, 2][0]", "Error: unsupported expression (Subscript)"),
        ("lambda: 1", "Error: unsupported expression (Lambda)"),
        ("True + 1", "Error: unsupported value True"),
        ("sqrt(x=4)", "Error: functions take plain positional arguments only"),
        ("1 if 2 else 3", "Error: unsupported expression (IfExp)"),
        ("import os", "Error: not a valid arithmetic expression"),
        ("", "Error: empty expression"),
    ],
)
def test_anything_but_arithmetic_is_rejected(expression: str, error: str) -> None:
    assert calculate(expression) == error


@pytest.mark.parametrize(
    "expression",
    [
        "2 ** 1001",
        "2 ** -1001",
        "10 ** 10 ** 10",
        "99 ** 999",
        "9 ** 999 * 9 ** 999",
        "(10 ** 500) ** 3",
        "10 ** 600 * 10 ** 600",
        "round(10 ** 300, -10 ** 100)",
    ],
)
def test_huge_numbers_are_refused_quickly(expression: str) -> None:
    started = time.monotonic()
    result = calculate(expression)
    assert result.startswith("Error:"), result
    assert time.monotonic() - started < 0.5


def test_numbers_near_the_limit_still_work() -> None:
    assert calculate("2 ** 1000") == str(2**1000)
    assert calculate("10 ** 900 + 1") == str(10**900 + 1)


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ("sqrt(-1)", "Error: math domain error"),
        ("(-8) ** 0.5", "Error: result is not a real number"),
        ("1e308 * 10", "Error: result is not a finite number"),
        ("exp(1000)", "Error: result too large"),
        ("10 ** 400 / 3", "Error: result too large"),
        ("min()", "Error: min expected at least 1 argument, got 0"),
        ("round(1, 2.5)", "Error: round() needs a whole number of digits"),
    ],
)
def test_math_errors_are_returned_as_text(expression: str, error: str) -> None:
    assert calculate(expression) == error


def test_long_and_deeply_nested_inputs_are_rejected() -> None:
    long = "1+" * MAX_EXPRESSION_CHARS + "1"
    assert calculate(long) == (
        f"Error: expression too long (more than {MAX_EXPRESSION_CHARS} characters)"
    )
    assert calculate("(" * 240 + "1" + ")" * 240).startswith("Error:")
    assert calculate("-" * 450 + "1") == "1"


CONVERSATION = [
    Message("system", "You are the assistant of Acme Corp. Office hours are 9 to 5."),
    Message(
        "user",
        "Notes from Monday. The budget review moved to Thursday at 3pm. "
        "Alice owns the slides. The cafeteria is closed for repairs.",
    ),
    Message("assistant", "Noted."),
    Message("tool", "Weather in Paris: 18C and sunny.", tool_call_id="call_1"),
    Message("user", "When is the budget review?"),
]


def test_search_context_finds_the_sentence_of_an_earlier_message() -> None:
    result = search_context("budget review day", CONVERSATION)
    first = result.split("\n")[0]
    assert first == "[user] The budget review moved to Thursday at 3pm."
    assert "cafeteria" not in result


def test_search_context_returns_at_most_three_snippets_best_first() -> None:
    result = search_context("Paris weather slides office", CONVERSATION)
    lines = result.split("\n")
    assert len(lines) == 3
    assert "[tool] Weather in Paris: 18C and sunny." in lines
    assert "[user] Alice owns the slides." in lines
    assert result == search_context("weather Paris slides office", CONVERSATION)


def test_search_context_without_a_match() -> None:
    assert search_context("quantum chromodynamics", CONVERSATION) == NO_MATCH
    assert search_context("the of and", CONVERSATION) == NO_MATCH
    assert search_context("budget", []) == NO_MATCH


def test_builtin_tools_have_names_descriptions_and_run() -> None:
    assert sorted(BUILTIN_TOOLS) == ["calculator", "search_context"]
    for name, tool in BUILTIN_TOOLS.items():
        assert tool.name == name
        assert f"{name}[" in tool.description
    assert asyncio.run(BUILTIN_TOOLS["calculator"].run("6 * 7", CONVERSATION)) == "42"
    found = asyncio.run(BUILTIN_TOOLS["search_context"].run("budget review", CONVERSATION))
    assert "Thursday" in found
