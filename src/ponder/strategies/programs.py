"""What the strategies that have the model write programs (`coc`, `z3`) share: reading the
program out of a reply, showing it back to the model, and telling a run that worked from one
that did not.

A run's observation is the sandbox tool's text (`ponder.sandbox.code`): what the program
printed, or "Error: ..." with the reason. A run that printed nothing counts as failed: the
program was asked to print its result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ponder.errors import PermissionDenied
from ponder.sandbox.code import NO_OUTPUT
from ponder.strategies.context import RequestContext
from ponder.strategies.tools import OPTIONAL_TOOLS, Tool

PYTHON = "python"

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON = ("python", "py", "python3")


@dataclass(frozen=True, slots=True)
class Attempt:
    """One program and what its run gave."""

    code: str
    observation: str

    @property
    def failed(self) -> bool:
        return self.observation.startswith("Error:") or self.observation == NO_OUTPUT


def extract_code(text: str | None) -> str:
    """The program in a reply: its first ```python block (or ```py), else its first fenced
    block of any kind, else the whole reply. A block cut off before its closing fence runs to
    the end of the reply."""
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text or "")]
    chosen = next((code for lang, code in blocks if lang in _PYTHON), None)
    if chosen is None:
        chosen = blocks[0][1] if blocks else text or ""
    return chosen.strip("\n").rstrip()


def python_blocks(text: str | None) -> list[str]:
    """Every ```python (or ```py, or untagged) fenced block of `text` that holds code, in
    order. A block cut off before its closing fence runs to the end of the text."""
    found = (
        m.group(2).strip("\n").rstrip()
        for m in _FENCE.finditer(text or "")
        if m.group(1).lower() in (*_PYTHON, "")
    )
    return [code for code in found if code.strip()]


def fenced(code: str) -> str:
    """A program as the model is shown it: in a ```python fence."""
    return f"```python\n{code}\n```"


def code_runner(ctx: RequestContext, slug: str) -> Tool:
    """The server's `python` sandbox tool; a strategy that runs model-written code is refused
    (403, before any call) on a server that does not run it."""
    tool = ctx.tools.get(PYTHON)
    if tool is None:
        raise PermissionDenied(
            f"the {slug} strategy runs model-written code, which this server does not do (an "
            f"operator turns it on with {OPTIONAL_TOOLS[PYTHON]}=true)",
            param="model",
        )
    return tool
