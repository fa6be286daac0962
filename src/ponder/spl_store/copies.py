"""A row's frozen copy: the record the store hands out for each kind of row, safe to use after
its session ended."""

from __future__ import annotations

import datetime as dt
from typing import cast

from ponder.spl_store import models as m
from ponder.spl_store.records import (
    EpisodeRecord,
    EventRecord,
    ExampleRecord,
    ResponseRecord,
    ResponseStatus,
    StrategyRecord,
    TenantSettings,
)


def to_tenant(row: m.Tenant) -> TenantSettings:
    return TenantSettings(row.name, row.learning, row.review, row.seeded_at is not None)


def to_strategy(row: m.Strategy) -> StrategyRecord:
    return StrategyRecord(
        id=row.id,
        tenant=row.tenant,
        problem_type=row.problem_type,
        text=row.text,
        status=row.status,  # type: ignore[arg-type]
        origin=row.origin,
        version=row.version,
        attempts=row.attempts,
        successes=row.successes,
        created_at=row.created_at,
        updated_at=row.updated_at,
        parent_id=row.parent_id,
    )


def to_event(row: m.LearningEvent) -> EventRecord:
    return EventRecord(
        row.id,
        row.tenant,
        row.strategy_id,
        row.request_id,
        row.kind,
        dict(row.detail),
        row.created_at,
    )


def to_example(row: m.StrategyExample) -> ExampleRecord:
    return ExampleRecord(
        row.id, row.strategy_id, row.request_id, row.query, row.answer, row.correct, row.created_at
    )


def to_episode(row: m.Episode) -> EpisodeRecord:
    return EpisodeRecord(
        row.id,
        row.tenant,
        row.conversation,
        row.request_id,
        row.question,
        row.answer,
        row.outcome,
        row.vector,
        row.created_at,
    )


def utc(value: dt.datetime) -> dt.datetime:
    """`value` in UTC; a naive value (SQLite returns those) is taken to be UTC already."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def to_response(row: m.StoredResponse) -> ResponseRecord:
    return ResponseRecord(
        id=row.id,
        tenant=row.tenant,
        model=row.model,
        status=cast(ResponseStatus, row.status),
        previous_id=row.previous_id,
        body=dict(row.body),
        conversation=[dict(item) for item in row.conversation],
        created_at=utc(row.created_at),
    )
