"""Built-in tools of the `react` strategy. They run inside Ponder, on the strategy's side, so
they must be safe with any input a model may write.

- `calculator`: arithmetic, evaluated by walking the `ast` of the expression (never `eval`):
  numbers, `+ - * / // % **`, unary signs, parentheses, a few math functions and constants.
  Exponents and results are bounded so that no input can make it run long or eat memory.
- `search_context`: finds the sentences of the client's conversation (system prompt, earlier
  turns, documents, tool results) that share the most words with a query.

A tool never raises on bad input: it returns the problem as text starting with "Error:", which
the model reads as its observation.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from ponder.types import Message

MAX_EXPRESSION_CHARS = 500
MAX_EXPONENT = 1000
MAX_RESULT_DIGITS = 1000
_MAX_INT_BITS = int(MAX_RESULT_DIGITS * math.log2(10))
_TOO_LARGE = f"result too large (more than about {MAX_RESULT_DIGITS} digits)"

MAX_QUERY_CHARS = 500
SNIPPETS = 3
MAX_SNIPPET_CHARS = 300
NO_MATCH = "No match"


class Tool(Protocol):
    """A tool the model can call as `Action: name[input]`."""

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    async def run(self, text: str, context: Sequence[Message]) -> str:
        """The observation for `text`; `context` is the client's conversation."""
        ...


# ---- calculator --------------------------------------------------------------------------


class CalculatorError(ValueError):
    """An expression the calculator refuses; the message is shown to the model."""


Number = int | float


def _round(value: Number, digits: Number | None) -> Number:
    if digits is None:
        return round(value)
    if isinstance(digits, float):
        raise CalculatorError("round() needs a whole number of digits")
    if abs(digits) > MAX_RESULT_DIGITS:  # a huge negative one would compute 10 ** -digits
        raise CalculatorError(f"round() takes at most {MAX_RESULT_DIGITS} digits")
    return round(value, digits)


_FUNCTIONS: Mapping[str, Callable[..., Number]] = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": lambda value, digits=None: _round(value, digits),
    "min": min,
    "max": max,
    "log": math.log,
    "exp": math.exp,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "floor": math.floor,
    "ceil": math.ceil,
}
_CONSTANTS: Mapping[str, float] = {"pi": math.pi, "e": math.e}

_BINARY: Mapping[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
# What models write for operators Python spells differently.
_SPELLINGS = (("^", "**"), ("\u00d7", "*"), ("\u00f7", "/"), ("\u2212", "-"))


def calculate(expression: str) -> str:
    """The value of an arithmetic `expression` as text, or "Error: ..." (never raises)."""
    text = expression.strip().strip("`'\"").strip().rstrip("=").strip()
    if not text:
        return "Error: empty expression"
    if len(text) > MAX_EXPRESSION_CHARS:
        return f"Error: expression too long (more than {MAX_EXPRESSION_CHARS} characters)"
    for written, python in _SPELLINGS:
        text = text.replace(written, python)
    try:
        tree = ast.parse(text, mode="eval")
        value = _evaluate(tree.body)
    except SyntaxError:
        return "Error: not a valid arithmetic expression"
    except ZeroDivisionError:
        return "Error: division by zero"
    except RecursionError:
        return "Error: expression nested too deeply"
    except OverflowError:
        return "Error: result too large"
    except CalculatorError as exc:
        return f"Error: {exc}"
    except (ValueError, TypeError) as exc:  # math domain errors, wrong argument counts
        return f"Error: {exc}"
    return _format(value)


def _evaluate(node: ast.expr) -> Number:
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CalculatorError(f"unsupported value {value!r}")
        return _checked(value)
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise CalculatorError(f"unknown name {node.id!r}")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        operand = _evaluate(node.operand)
        return operand if isinstance(node.op, ast.UAdd) else -operand
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            return _checked(_power(left, right))
        operation = _BINARY.get(type(node.op))
        if operation is None:
            raise CalculatorError(f"unsupported operator {type(node.op).__name__}")
        return _checked(operation(left, right))
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise CalculatorError(f"unknown function {name!r}")
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise CalculatorError("functions take plain positional arguments only")
        args = [_evaluate(a) for a in node.args]
        return _checked(_FUNCTIONS[node.func.id](*args))
    raise CalculatorError(f"unsupported expression ({type(node).__name__})")


def _power(base: Number, exponent: Number) -> Number:
    if abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"exponent larger than {MAX_EXPONENT}")
    exact = isinstance(base, int) and isinstance(exponent, int) and exponent > 0
    if exact and abs(base) > 1 and exponent * math.log2(abs(base)) > _MAX_INT_BITS + 1:
        raise CalculatorError(_TOO_LARGE)  # refused before computing it
    value: object = base**exponent
    if not isinstance(value, int | float):  # a negative base to a fractional power
        raise CalculatorError("result is not a real number")
    return value


def _checked(value: object) -> Number:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CalculatorError("result is not a number")
    if isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
        raise CalculatorError(_TOO_LARGE)
    return value


def _format(value: Number) -> str:
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        return "Error: result is not a finite number"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.12g}"


class Calculator:
    name = "calculator"
    description = (
        "evaluates an arithmetic expression, e.g. calculator[(17 + 5) * 3 / sqrt(16)]. "
        "Knows + - * / // % ** and parentheses, sqrt, abs, round, min, max, log, exp, "
        "sin, cos, tan, floor, ceil, pi and e."
    )

    async def run(self, text: str, context: Sequence[Message]) -> str:
        return calculate(text)


# ---- search over the conversation ---------------------------------------------------------

_WORD = re.compile(r"[^\W_]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_COMMON_WORDS = (
    "a an and are as at be by did do does for from had has have how i in is it its me my "
    "of on or our so that the their them then there these they this to was we were what "
    "when where which who whom why will with you your"
)
_STOPWORDS = frozenset(_COMMON_WORDS.split())


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS}


def search_context(query: str, messages: Sequence[Message]) -> str:
    """The sentences of `messages` that best match `query` (at most three, best first), each
    labelled with the role of its message, or "No match"."""
    wanted = _words(query[:MAX_QUERY_CHARS])
    if not wanted:
        return NO_MATCH
    snippets: list[tuple[str, str, set[str]]] = []
    seen: set[str] = set()
    for message in messages:
        for piece in _SENTENCE_END.split(message.text):
            sentence = " ".join(piece.split())
            if sentence and sentence not in seen:
                seen.add(sentence)
                snippets.append((message.role, sentence, _words(sentence)))
    if not snippets:
        return NO_MATCH
    # Rarer words weigh more: inverse document frequency over the sentences.
    frequency = Counter(w for _, _, words in snippets for w in words & wanted)
    weight = {w: math.log(1 + len(snippets) / frequency[w]) for w in frequency}
    scores = [sum(weight[w] for w in words & wanted) for _, _, words in snippets]
    ranked = sorted((i for i, score in enumerate(scores) if score > 0), key=lambda i: -scores[i])
    if not ranked:
        return NO_MATCH
    lines = []
    for i in ranked[:SNIPPETS]:
        role, sentence, _ = snippets[i]
        if len(sentence) > MAX_SNIPPET_CHARS:
            sentence = sentence[: MAX_SNIPPET_CHARS - 3] + "..."
        lines.append(f"[{role}] {sentence}")
    return "\n".join(lines)


class SearchContext:
    name = "search_context"
    description = (
        "finds the sentences of this conversation (instructions, earlier messages, documents, "
        "tool results) that best match a few keywords, e.g. search_context[meeting date]."
    )

    async def run(self, text: str, context: Sequence[Message]) -> str:
        return search_context(text, context)


BUILTIN_TOOLS: Mapping[str, Tool] = {tool.name: tool for tool in (Calculator(), SearchContext())}
"""The tools every server offers."""

OPTIONAL_TOOLS: Mapping[str, str] = {
    "python": "PONDER_ENABLE_CODE_EXECUTION",
    "fetch_url": "PONDER_ENABLE_URL_FETCH",
    "web_search": "PONDER_WEB_SEARCH_URL",
}
"""Tools that run model-written code or reach the network: off unless the operator turns
them on with the setting named here (`ponder.strategies.toolbox.server_tools`)."""
