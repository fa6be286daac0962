"""The SQL store of system prompt learning (strategies, outcomes), episodic memory and stored
Responses API responses."""

from ponder.spl_store.problem_types import FALLBACK_TYPE, PROBLEM_TYPES
from ponder.spl_store.records import (
    Baseline,
    Draft,
    EpisodeRecord,
    EventRecord,
    ExampleRecord,
    ImportEntry,
    ImportResult,
    Lifecycle,
    OutcomeResult,
    Policy,
    ResponseRecord,
    ResponseStatus,
    Status,
    StrategyRecord,
    TenantSettings,
)
from ponder.spl_store.store import Store

__all__ = [
    "FALLBACK_TYPE",
    "PROBLEM_TYPES",
    "Baseline",
    "Draft",
    "EpisodeRecord",
    "EventRecord",
    "ExampleRecord",
    "ImportEntry",
    "ImportResult",
    "Lifecycle",
    "OutcomeResult",
    "Policy",
    "ResponseRecord",
    "ResponseStatus",
    "Status",
    "Store",
    "StrategyRecord",
    "TenantSettings",
]
