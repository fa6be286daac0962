"""What the store hands out: frozen copies of rows, safe to use after their session ended."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["candidate", "active", "retired"]
OutcomeSource = Literal["ground_truth", "feedback", "judge"]

# Which outcome signal may replace which: ground truth is never overridden, a judgement is.
SOURCE_RANK: dict[str, int] = {"judge": 0, "feedback": 1, "ground_truth": 2}


@dataclass(frozen=True, slots=True)
class StrategyRecord:
    id: int
    tenant: str
    problem_type: str
    text: str
    status: Status
    origin: str
    version: int
    attempts: int
    successes: int
    created_at: dt.datetime
    updated_at: dt.datetime

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.attempts if self.attempts else None

    @property
    def smoothed_rate(self) -> float:
        """Laplace-smoothed success rate: 0.5 for an untried strategy."""
        return (self.successes + 1) / (self.attempts + 2)


@dataclass(frozen=True, slots=True)
class EventRecord:
    id: int
    tenant: str
    strategy_id: int | None
    request_id: str | None
    kind: str
    detail: dict[str, Any]
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class ExampleRecord:
    id: int
    strategy_id: int
    request_id: str
    query: str
    answer: str
    correct: bool
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class EpisodeRecord:
    id: int
    tenant: str
    conversation: str
    request_id: str
    question: str
    answer: str
    outcome: bool | None
    vector: bytes
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class TenantSettings:
    name: str
    learning: bool = False
    review: bool = False
    seeded: bool = False
    """Whether the starter strategies have been given to this tenant."""


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """When strategies change status. Promotion and retirement are decided in the same write
    transaction as the outcome that triggers them."""

    promote_after: int = 3
    """A candidate becomes active after this many successes..."""
    promote_rate: float = 0.5
    """...if its success rate is at least this (with `review`, it waits for an operator)."""
    retire_after: int = 10
    """A strategy with this many attempts..."""
    retire_rate: float = 0.3
    """...and a success rate below this is retired."""
    max_per_type: int = 5
    """At most this many active strategies per problem type; the weakest beyond it retire."""
    max_candidates_per_type: int = 3
    """At most this many candidates per problem type wait for promotion at once."""


@dataclass(frozen=True, slots=True)
class Policy:
    """What the server allows, beyond the lifecycle rules."""

    client_learning: bool = False
    """Whether a client may turn on SPL learning for one request (`ponder.spl.learn`)."""
    memory_max_episodes: int = 1000
    """Episodes kept per tenant; the oldest beyond it are dropped."""
    memory_max_age: dt.timedelta = dt.timedelta(days=90)
    """Episodes older than this are dropped."""


@dataclass(frozen=True, slots=True)
class OutcomeResult:
    """What recording an outcome changed."""

    applied: bool
    """False when a better signal had already decided the outcome (e.g. feedback after ground
    truth), or it was the same outcome again."""
    outcome: bool | None
    source: str | None
    promoted: tuple[int, ...] = ()
    retired: tuple[int, ...] = ()
    strategy_ids: tuple[int, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class Draft:
    """A strategy to add: its problem type and text (and, for imports, its counters)."""

    problem_type: str
    text: str
    status: Status = "candidate"
    attempts: int = 0
    successes: int = 0


@dataclass(frozen=True, slots=True)
class ImportEntry:
    """One strategy of an imported file: `id` and `version` as exported (None for a new one)."""

    problem_type: str
    text: str
    status: Status = "candidate"
    attempts: int = 0
    successes: int = 0
    id: int | None = None
    version: int | None = None


@dataclass(frozen=True, slots=True)
class ImportResult:
    """The ids an import added, updated and left unchanged, and any active strategies it
    retired because a type then had more than `max_per_type`."""

    added: tuple[int, ...]
    updated: tuple[int, ...]
    unchanged: tuple[int, ...]
    capped: tuple[int, ...] = ()


STATUS_KINDS: dict[str, str] = {"active": "approved", "retired": "retired", "candidate": "reopened"}
"""The event an operator's status change records."""
