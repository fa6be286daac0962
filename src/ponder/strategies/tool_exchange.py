"""The client's tool exchanges as ReAct text, for backends that take neither `tool` messages nor
`tool_calls`: a tool call becomes "Action: name[arguments]" and its result "Observation: ...".
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from ponder.types import Message, Role


def tool_arguments(text: str) -> str:
    """The arguments of a client tool call as a JSON object: the model's JSON when it wrote an
    object, else its text wrapped as {"input": text}."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        value = None
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    return json.dumps({"input": text}, ensure_ascii=False)


def _turn_start(messages: Sequence[Message]) -> int:
    """Where the model's part of the current turn starts: after the last user (or system)
    message."""
    cut = len(messages)
    while cut > 0 and messages[cut - 1].role in ("assistant", "tool"):
        cut -= 1
    return cut


def split_scratchpad(messages: Sequence[Message]) -> tuple[list[Message], list[Message]]:
    """The conversation to send, and the scratchpad rebuilt (as `exchange_turns`) from the tool
    exchange that follows the last user (or system) message, if there is one. Earlier tool
    exchanges become plain assistant turns: the backend never receives `tool` messages or
    `tool_calls`."""
    cut = _turn_start(messages)
    tail = messages[cut:]
    if not _has_tool_traffic(tail):
        return _without_tool_traffic(messages), []
    return _without_tool_traffic(messages[:cut]), exchange_turns(tail)


def answered_calls(messages: Sequence[Message]) -> dict[tuple[str, str], str]:
    """The client's results of this turn's tool calls, by (name, arguments as tool_arguments()
    writes them): a model that repeats a call gets the result again instead of sending the
    client round the same loop."""
    tail = messages[_turn_start(messages) :]
    results = {m.tool_call_id: m.text for m in tail if m.role == "tool"}
    return {
        (call.name, tool_arguments(call.arguments)): results[call.id]
        for m in tail
        for call in m.tool_calls
        if call.id in results
    }


def action_line(name: str, tool_input: str) -> str:
    """A tool call in ReAct's words: "Action: name[input]"."""
    return f"Action: {name}[{tool_input}]"


def observation_line(result: str) -> str:
    """A tool's result in ReAct's words: "Observation: result"."""
    return f"Observation: {result}"


def exchange_turns(messages: Sequence[Message]) -> list[Message]:
    """Assistant and tool messages as ReAct turns: a tool call becomes an assistant turn
    "Action: name[arguments]" (after the text the model wrote with it), its result a user turn
    "Observation: content"; turns of the same role in a row are joined by a newline."""
    results = {m.tool_call_id: m.text for m in messages if m.role == "tool"}
    used: set[str | None] = set()
    turns: list[Message] = []
    for m in messages:
        if m.role == "assistant":
            text = m.text.strip()
            for call in m.tool_calls:
                action = action_line(call.name, call.arguments)
                _add_turn(turns, "assistant", f"{text}\n{action}" if text else action)
                text = ""
                if call.id in results and call.id not in used:  # its result, right after it
                    used.add(call.id)
                    _add_turn(turns, "user", observation_line(results[call.id]))
            if text:
                _add_turn(turns, "assistant", text)
        elif m.tool_call_id is None or m.tool_call_id not in used:
            used.add(m.tool_call_id)
            _add_turn(turns, "user", observation_line(m.text))
    return turns


def render_exchange(messages: Sequence[Message]) -> str:
    """Assistant and tool messages as one scratchpad text: `exchange_turns`, one per line."""
    return "\n".join(turn.text for turn in exchange_turns(messages))


def _add_turn(turns: list[Message], role: Role, text: str) -> None:
    if turns and turns[-1].role == role:
        turns[-1] = Message(role, f"{turns[-1].text}\n{text}")
    else:
        turns.append(Message(role, text))


def _has_tool_traffic(messages: Sequence[Message]) -> bool:
    return any(m.role == "tool" or m.tool_calls for m in messages)


def _without_tool_traffic(messages: Sequence[Message]) -> list[Message]:
    """Each run of assistant/tool messages that holds a tool exchange becomes one assistant
    turn of text; everything else is kept as it is."""
    out: list[Message] = []
    i = 0
    while i < len(messages):
        if messages[i].role not in ("assistant", "tool"):
            out.append(messages[i])
            i += 1
            continue
        j = i
        while j < len(messages) and messages[j].role in ("assistant", "tool"):
            j += 1
        run = messages[i:j]
        if _has_tool_traffic(run):
            out.append(Message("assistant", render_exchange(run)))
        else:
            out.extend(run)
        i = j
    return out
