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

from ponder.answers import extract_answer, states_placeholder
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

RatingConfidence = Annotated[
    bool,
    Field(
        description="Where the backend reports log-probabilities, a rating is the expected "
        "score under them rather than the number written",
    ),
]
"""The type of the `confidence` knob of a strategy whose model-written ratings may be read
from log-probabilities."""


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


RATING_ALTERNATIVES = 10
"""How many alternatives a rating call asks for at each token, where the backend reports
log-probabilities."""


def rating_sampling(sampling: Sampling, logprobs: bool) -> Sampling:
    """A rating call's sampling, asking for log-probabilities where the backend has them
    (`Capabilities.logprobs`), for `read_score`."""
    if not logprobs:
        return sampling
    return sampling.with_(logprobs=True, top_logprobs=RATING_ALTERNATIVES)


def read_score(rating: Completion, low: float, high: float) -> float | None:
    """A rating's score: its expected value under the model's own probabilities where the
    rating carries log-probabilities (`expected_score`), else the number it wrote
    (`parse_score`)."""
    expected = expected_score(rating, low, high)
    return expected if expected is not None else parse_score(rating.content, low, high)


def expected_score(rating: Completion, low: float, high: float) -> float | None:
    """The expected value of the number a rating starts with, from the log-probabilities of its
    first token: each alternative that is a number in [low, high] weighs by its probability.
    A judge that writes "8" for nearly everything is still 60% sure of one answer and 95% of
    another, and this tells them apart. Where numbers are written a digit at a time, a "1" the
    rating drew followed by "0" is a 10 with the probability of that "0"; an alternative "1"
    the rating did not draw, on a scale that reaches 10, is left out, since it may be a 1 or
    the start of a 10 (counted as 1, a 9 drawn with 40% on "1" read as 5.8). None without
    log-probabilities, or when the rating does not start with a number: the number written
    is read then, so one comparison may mix the two readings."""
    entries = [e for e in (rating.logprobs or {}).get("content") or () if str(e.get("token", ""))]
    start = next((i for i, e in enumerate(entries) if str(e["token"]).strip()), None)
    if start is None or not str(entries[start]["token"]).strip().isdigit():
        return None
    first = entries[start]
    drawn = str(first["token"]).strip()
    after = entries[start + 1] if start + 1 < len(entries) else None
    weights: dict[float, float] = {}
    for alternative in first.get("top_logprobs") or [first]:
        token = str(alternative["token"]).strip()
        if not token.isdigit():
            continue
        p = math.exp(float(alternative["logprob"]))
        value = float(token)
        may_go_on = value > 0 and value * 10 <= high
        if token == drawn and after is not None and may_go_on:
            # the tokens after a drawn digit say whether the number goes on
            going_on = {
                str(a["token"]).strip(): math.exp(float(a["logprob"]))
                for a in after.get("top_logprobs") or [after]
            }
            for digit, q in going_on.items():
                if digit.isdigit() and len(digit) == 1 and low <= value * 10 + int(digit) <= high:
                    longer = value * 10 + int(digit)
                    weights[longer] = weights.get(longer, 0.0) + p * q
                    p -= p * q
        elif token != drawn and may_go_on:
            continue  # a digit that may begin a longer number: what follows it is unknown
        if low <= value <= high:
            weights[value] = weights.get(value, 0.0) + p
    total = sum(weights.values())
    if total <= 0:
        return None
    return sum(value * p for value, p in weights.items()) / total


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
    last number is a step of the working, not a result), and for one whose stated answer is a
    placeholder ("The answer is N.": on GSM8K the 1.5B copied the request's format so, and "n"
    took votes in `majority_voting`)."""
    if cut_off(sample) or states_placeholder(sample.content):
        return None
    return extract_answer(sample.content)


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
