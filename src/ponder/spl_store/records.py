"""What the store hands out: frozen copies of rows, safe to use after their session ended."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["candidate", "active", "retired"]
OutcomeSource = Literal["ground_truth", "feedback", "judge"]
ResponseStatus = Literal["completed", "incomplete", "failed", "cancelled", "in_progress", "queued"]

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
    parent_id: int | None = None
    """The strategy this text was refined or merged from."""

    @property
    def success_rate(self) -> float | None:
        return self.successes / self.attempts if self.attempts else None

    @property
    def smoothed_rate(self) -> float:
        """Laplace-smoothed success rate: 0.5 for an untried strategy."""
        return (self.successes + 1) / (self.attempts + 2)


@dataclass(frozen=True, slots=True)
class Baseline:
    """The control arm of one problem type: how its problems went with no strategies."""

    problem_type: str
    attempts: int = 0
    successes: int = 0

    @property
    def rate(self) -> float | None:
        return self.successes / self.attempts if self.attempts else None


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
class ResponseRecord:
    """A stored Responses API response."""

    id: str
    tenant: str
    model: str
    status: ResponseStatus
    previous_id: str | None
    """The response this one continued."""
    body: dict[str, Any]
    """The public Response object."""
    conversation: list[dict[str, Any]]
    """The conversation up to and including this response's output, as the front end encodes
    it."""
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
    transaction as the outcome that triggers them, by comparing a strategy with its type's
    baseline (`ponder.spl_store.decisions`)."""

    explore: float = 0.2
    """Share of learning requests answered with no strategies: the control arm that measures
    the baseline. 0 turns it off, and decisions fall back to the fixed rates below."""
    min_baseline: int = 10
    """Control outcomes a type needs before its strategies are judged against them (5 let a
    learning run promote noise: baselines of 1 of 5 and 2 of 6 made one-problem solutions look
    better)."""
    confidence: float = 0.8
    """Confidence of the interval of (strategy rate - baseline rate) that decisions read: a
    strategy is promoted when all of it is above 0, retired when all of it is below."""
    promote_after: int = 3
    """A candidate needs at least this many successes before it is promoted..."""
    promote_rate: float = 0.5
    """...and, without a control arm, a success rate of at least this (with `review`, it
    waits for an operator)."""
    retire_after: int = 10
    """A strategy needs this many attempts before it is retired for doing worse than the
    baseline; a candidate not promoted after twice as many ends its trial."""
    retire_rate: float = 0.3
    """Without a control arm, a success rate below this retires a strategy."""
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
    responses_max_age: dt.timedelta = dt.timedelta(days=30)
    """Stored responses (Responses API) older than this are dropped."""


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
