"""The values the bench passes around: items of a suite, and one approach's result on one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol


@dataclass(frozen=True, slots=True)
class Item:
    """One problem: a stable id (resuming matches on it), the question, the expected answer,
    and for multiple choice the options in order (A, B, C, ...)."""

    id: str
    question: str
    expected: str
    choices: tuple[str, ...] = ()


class Suite(Protocol):
    """A loader and a scorer. Third-party suites register under the entry-point group
    `ponder.bench_suites` (a class with these members, built with no arguments)."""

    name: ClassVar[str]
    needs_path: ClassVar[bool]

    def load(self, path: Path | None, limit: int | None, seed: int) -> list[Item]:
        """The suite's items, at most `limit`; the same `seed` gives the same items."""
        ...

    def messages(self, item: Item) -> list[dict[str, Any]]:
        """The chat messages that ask `item`."""
        ...

    def score(self, item: Item, answer: str) -> tuple[str | None, bool]:
        """The answer extracted from the model's reply, and whether it is correct."""
        ...


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One approach on one item: one line of the run's `items.jsonl`."""

    approach: str
    item_id: str
    question: str
    expected: str
    answer: str
    extracted: str | None
    correct: bool
    prompt_tokens: int
    completion_tokens: int
    backend_calls: int | None
    """From Ponder's `x-ponder-backend-calls`; None from an upstream that is not Ponder."""
    latency_s: float
    error: str | None = None
    """The request failed (an OpenAI-shaped error's message): scored as wrong."""
    phase: str = "eval"
    """"eval", or "train" for the SPL learning requests of `--spl-train`."""
    code: str | None = None
    """The commit of the Ponder source that answered, for an in-process run from a git
    checkout ("+changes" after it when that source differed from the commit); else None. A
    run resumed over several sessions may span commits: each item says its own."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Summary:
    """One approach over a run's eval items."""

    approach: str
    items: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    """Wilson 95% interval of the accuracy."""
    mean_tokens: float
    mean_backend_calls: float | None
    mean_latency_s: float
    p50_latency_s: float
    p95_latency_s: float
    errors: int


Results = Sequence[ItemResult]
