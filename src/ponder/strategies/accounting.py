"""What one request counts and keeps: its limits (`Budget`), what its backend calls cost
(`Meter`), the calls themselves for the conversation log (`CallRecord`), and its trace
(`Step`). `RequestContext` holds them; contexts of one request share them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ponder.types import Completion, Message, Usage


@dataclass(frozen=True, slots=True)
class Budget:
    """Limits of one request: backend calls, and seconds from start to answer."""

    max_backend_calls: int | None = None
    deadline_s: float | None = None

    def tighter(self, other: Budget) -> Budget:
        """The stricter of two budgets, limit by limit (a client may only lower the server's)."""
        return Budget(
            _min(self.max_backend_calls, other.max_backend_calls),
            _min(self.deadline_s, other.deadline_s),
        )


N = TypeVar("N", int, float)


def _min(a: N | None, b: N | None) -> N | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


@dataclass
class Meter:
    """Counts every backend call of one request and the tokens it cost."""

    calls: int = 0
    usage: Usage = field(default_factory=Usage)

    def record(self, usage: Usage) -> None:
        self.usage = self.usage + usage

    def reasoning_tokens(self, answer: Sequence[Completion]) -> int:
        """The output tokens of every call that is not the answer's own: everything counted
        here beyond what the `answer` choices say they cost (0 for a pass-through)."""
        own = sum(c.usage.completion_tokens for c in answer)
        return max(0, self.usage.completion_tokens - own)


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One backend call as the conversation log keeps it: what the backend was sent and what
    it answered, what it cost, and how long it took."""

    messages: tuple[Message, ...]
    choices: tuple[Completion, ...]
    usage: Usage
    started_s: float
    """Seconds from the request's start."""
    seconds: float
    streamed: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """One entry of a request's trace."""

    name: str
    detail: Mapping[str, Any]
    at_s: float
