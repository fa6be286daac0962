"""Helpers every strategy uses: building conversations without flattening them, and the
sampling settings of a strategy's own helper calls (critiques, scores, plans).

Conventions:

- The client's conversation is kept as it is: system prompt, earlier turns, content parts.
  A strategy adds turns after it (`followup`), adds its instructions after the client's system
  prompt (`with_system`), or rewrites the text of the last user turn (`rewrite_last_user`).
- Calls that produce an answer the client may see use the client's sampling (`ctx.sampling`):
  temperature, stop, max_tokens, seed, tools. Helper calls whose output only the strategy reads
  use `helper_sampling()`: the client's seed, but the strategy's own temperature and token
  limit, and no stop sequences, tools or response format that would break the strategy's parsing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Annotated

from pydantic import Field

from ponder.answers import extract_answer
from ponder.types import Completion, ContentPart, Message, Sampling

_FIRST_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_STEP_LABEL = re.compile(r"^\s*\**\s*step\s*\d+\s*[:.)]\**\s*", re.IGNORECASE)

SampleTemperature = Annotated[
    float,
    Field(
        gt=0,
        le=2,
        description="Temperature of the strategy's samples when the client gave none or 0 "
        "(independent samples must be able to differ)",
    ),
]
"""The type of a strategy Config's `temperature` knob for its samples."""


def varied(sampling: Sampling, temperature: float) -> Sampling:
    """The client's sampling, with `temperature` when the client's would give identical
    samples (none given, or 0)."""
    return sampling if sampling.temperature else sampling.with_(temperature=temperature)


def preview(text: str | None, limit: int) -> str:
    """`text` on one line, cut to `limit` characters: for reasoning lines."""
    return " ".join((text or "").split())[:limit]


def last_user_index(messages: Sequence[Message]) -> int:
    """Index of the last user message (-1 when there is none)."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].role == "user":
            return i
    return -1


def last_user_text(messages: Sequence[Message]) -> str:
    i = last_user_index(messages)
    return messages[i].text if i >= 0 else ""


def followup(messages: Sequence[Message], answer: str, request: str) -> list[Message]:
    """The conversation, the model's `answer` as an assistant turn, then a new user `request`."""
    return [*messages, Message("assistant", answer), Message("user", request)]


def with_system(messages: Sequence[Message], instructions: str) -> list[Message]:
    """Add `instructions` after the client's system prompt (or as the system prompt)."""
    if messages and messages[0].role in ("system", "developer"):
        first = messages[0]
        text = f"{first.text}\n\n{instructions}" if first.text else instructions
        return [Message(first.role, text, name=first.name), *messages[1:]]
    return [Message("system", instructions), *messages]


def rewrite_last_user(messages: Sequence[Message], rewrite: Callable[[str], str]) -> list[Message]:
    """The conversation with the last user turn's text replaced by `rewrite(text)`. Non-text
    parts (images, audio) are kept; the text parts are merged into one, where the first was."""
    i = last_user_index(messages)
    if i < 0:
        return list(messages)
    m = messages[i]
    new_text = rewrite(m.text)
    if isinstance(m.content, tuple):
        parts: list[ContentPart] = []
        placed = False
        for part in m.content:
            if part.get("type") != "text":
                parts.append(part)
            elif not placed:
                parts.append({"type": "text", "text": new_text})
                placed = True
        if not placed:
            parts.append({"type": "text", "text": new_text})
        content: str | tuple[ContentPart, ...] = tuple(parts)
    else:
        content = new_text
    return [*messages[:i], Message("user", content, name=m.name), *messages[i + 1 :]]


def text_sampling(sampling: Sampling, max_tokens: int) -> Sampling:
    """The client's sampling for a call whose text the strategy parses: `max_tokens`, and no
    tools, tool choice, response format or logprobs that would change what comes back."""
    return sampling.with_(
        max_tokens=max_tokens,
        logprobs=False,
        top_logprobs=None,
        tools=(),
        tool_choice=None,
        response_format=None,
    )


def helper_sampling(sampling: Sampling, max_tokens: int, temperature: float = 0.0) -> Sampling:
    """Sampling for a helper call whose output only the strategy reads: `text_sampling` at
    the strategy's temperature, without the client's top_p and stop sequences."""
    return text_sampling(sampling, max_tokens).with_(temperature=temperature, top_p=None, stop=())


def parse_score(text: str | None, low: float, high: float) -> float | None:
    """The first number in `text`, clamped to [low, high]; None when there is none."""
    match = _FIRST_NUMBER.search(text or "")
    if match is None:
        return None
    return min(high, max(low, float(match.group())))


def cut_off(sample: Completion) -> bool:
    """Whether the sample stopped at `max_tokens` rather than finishing its answer."""
    return sample.finish_reason == "length"


def voice(sample: Completion) -> str | None:
    """The final answer a sample stands for: None for a sample cut off before it finished (its
    last number is a step of the working, not a result)."""
    return None if cut_off(sample) else extract_answer(sample.content)


def uct(mean: float, visits: int, parent_visits: int, exploration: float) -> float:
    """The UCT score of a tree search's node: its mean value plus `exploration` times
    sqrt(ln(parent visits) / visits); infinite for a node never visited, so it comes first."""
    if visits == 0:
        return math.inf
    return mean + exploration * math.sqrt(math.log(max(parent_visits, 1)) / visits)


def without_step_label(text: str) -> str:
    """A reasoning step without the "Step N:" label the model may have written before it (a
    strategy that numbers the steps itself would show "Step 2: Step 2: ...")."""
    return _STEP_LABEL.sub("", text, count=1)
