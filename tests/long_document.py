"""What the tests of the long-input plugins (`memory`, `longcepo`) share: a document of five
ledger sections too long for their window, its question, and a backend that reports a window."""

from __future__ import annotations

import json

from ponder.backends.base import Capabilities
from ponder.testing import Call, ScriptedBackend
from tests.conftest import scripted, sse_data

WINDOW = 1000
QUESTION = "Which section records 313 crates?"
SECTIONS = [
    f"Section {i}: "
    + " ".join(f"Ledger line {i}.{j} records {i * 100 + j} crates." for j in range(14))
    for i in range(1, 6)
]
DOCUMENT = "\n\n".join([*SECTIONS, QUESTION])
PARTS = [*SECTIONS[:4], f"{SECTIONS[4]}\n\n{QUESTION}"]
"""The document in parts of at most 200 tokens: one section each (158 tokens apiece), the
question with the last."""
ANSWER = "Section 3."


def windowed(
    replies: object, window: int | None = WINDOW, concurrency: int = 16
) -> ScriptedBackend:
    """A scripted backend that reports `window` as its context window (None: reports none)."""
    caps = Capabilities(context_window=window, max_concurrency=concurrency)
    return scripted(replies, capabilities=caps)


def part_of(call: Call) -> int:
    """The number of the part a reading call carries."""
    return int(call.prompt.split("--- Part ")[1].split(" ")[0])


def answered(raw: str) -> str:
    """The answer text a stream that ended in an error had sent before it."""
    events = [json.loads(data) for data in sse_data(raw)[:-1]]
    deltas = [choice["delta"] for event in events for choice in event.get("choices", [])]
    return "".join(delta.get("content") or "" for delta in deltas)
