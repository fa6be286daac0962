"""The model's ReAct steps: a step parsed into its thought and its action or final answer, and
written back into the scratchpad."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ponder.strategies.tool_exchange import action_line

_ACTION = re.compile(r"\bAction\s*:\s*([A-Za-z0-9_.\-]+)\s*(\[|\n\s*Action\s+Input\s*:)", re.I)
_FINAL = re.compile(r"\bFinal\s+Answer\s*:", re.I)
_THOUGHT_LABEL = re.compile(r"^\s*Thought\s*:\s*", re.I)


@dataclass(frozen=True, slots=True)
class ParsedStep:
    """One step of the model: a thought, then an action or a final answer (or neither)."""

    thought: str
    action: str | None = None
    input: str = ""
    final: str | None = None


def render_action(step: ParsedStep, action: str) -> str:
    thought = f"Thought: {step.thought}\n" if step.thought else ""
    return thought + action_line(action, step.input)


def render_final(step: ParsedStep, answer: str) -> str:
    thought = f"Thought: {step.thought}\n" if step.thought and step.final is not None else ""
    return f"{thought}Final Answer: {answer}"


def parse_step(text: str) -> ParsedStep:
    """The first Action or Final Answer of `text`, whichever comes first; neither gives a step
    with only a thought (the text without its "Thought:" label)."""
    action = _ACTION.search(text)
    final = _FINAL.search(text)
    if action is not None and (final is None or action.start() < final.start()):
        if action.group(2) == "[":
            tool_input = _bracketed(text, action.end())
        else:  # "Action: name" then "Action Input: ..."
            tool_input = text[action.end() :]
        return ParsedStep(_thought(text[: action.start()]), action.group(1), tool_input.strip())
    if final is not None:
        return ParsedStep(_thought(text[: final.start()]), final=text[final.end() :].strip())
    return ParsedStep(_thought(text))


def _thought(text: str) -> str:
    return _THOUGHT_LABEL.sub("", text.strip(), count=1).strip()


def _bracketed(text: str, start: int) -> str:
    """The text from `start` (just after "[") to its matching "]", brackets inside JSON strings
    ignored; without one, up to the last "]", else to the end of the line."""
    depth, quoted, escaped = 1, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if quoted:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth == 0:
                return text[start:i]
    end = text.rfind("]", start)
    if end >= 0:
        return text[start:end]
    return text[start:].split("\n", 1)[0]
