"""`Store`: the one way into the SPL, memory and stored-response database.

Every method takes the tenant and touches only that tenant's rows. Methods are synchronous
(SQLAlchemy sessions); async code calls them through `asyncio.to_thread`. The database is
opened, and migrated to the newest schema, on first use. The outcome, memory-episode and
stored-response methods are in `outcomes.py`, `episodes.py` and `responses.py`.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from alembic.util import CommandError
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from ponder.config import Settings
from ponder.errors import StoreUnavailable
from ponder.spl_store import copies, rows
from ponder.spl_store import models as m
from ponder.spl_store.db import default_url, make_engine, migrate, read_session, write_session
from ponder.spl_store.episodes import EpisodeMethods
from ponder.spl_store.outcomes import OutcomeMethods
from ponder.spl_store.records import (
    Draft,
    EventRecord,
    ExampleRecord,
    ImportEntry,
    ImportResult,
    Lifecycle,
    Policy,
    Status,
    StrategyRecord,
    TenantSettings,
)
from ponder.spl_store.responses import ResponseMethods


class Store(OutcomeMethods, EpisodeMethods, ResponseMethods):
    def __init__(
        self,
        url: str | None = None,
        lifecycle: Lifecycle | None = None,
        policy: Policy | None = None,
    ) -> None:
        self.url = url or default_url()
        self.lifecycle = lifecycle or Lifecycle()
        self.policy = policy or Policy()
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    @classmethod
    def for_settings(cls, settings: Settings) -> Store:
        return cls(
            settings.database_url,
            Lifecycle(
                explore=settings.spl_explore,
                confidence=settings.spl_confidence,
                min_baseline=settings.spl_min_baseline,
                promote_after=settings.spl_promote_after,
                retire_after=settings.spl_retire_after,
                retire_rate=settings.spl_retire_rate,
                max_per_type=settings.spl_max_per_type,
            ),
            Policy(
                client_learning=settings.spl_client_learning,
                memory_max_episodes=settings.memory_max_episodes,
                memory_max_age=dt.timedelta(days=settings.memory_max_age_days),
                responses_max_age=dt.timedelta(days=settings.responses_max_age_days),
            ),
        )

    # ---- opening --------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The engine, created and migrated on first use."""
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    engine = make_engine(self.url)
                    migrate(engine)
                    self._engine = engine
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def ping(self) -> None:
        """Raise `StoreUnavailable` unless the database answers (opening it on first use)."""
        try:
            with read_session(self.engine) as s:
                s.execute(select(1))
        except (SQLAlchemyError, OSError, CommandError) as exc:
            raise StoreUnavailable(f"the database is not answering ({type(exc).__name__})") from exc

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    # ---- tenants ---------------------------------------------------------------------------

    def tenant(self, name: str) -> TenantSettings:
        with read_session(self.engine) as s:
            row = s.get(m.Tenant, name)
            return copies.to_tenant(row) if row else TenantSettings(name)

    def tenants(self) -> list[TenantSettings]:
        with read_session(self.engine) as s:
            return [
                copies.to_tenant(t) for t in s.scalars(select(m.Tenant).order_by(m.Tenant.name))
            ]

    def configure_tenant(
        self, name: str, *, learning: bool | None = None, review: bool | None = None
    ) -> TenantSettings:
        with write_session(self.engine, name) as s:
            row = rows.tenant_row(s, name)
            if learning is not None:
                row.learning = learning
            if review is not None:
                row.review = review
            row.updated_at = m.utcnow()
            return copies.to_tenant(row)

    def seed(self, tenant: str, drafts: Sequence[Draft]) -> int:
        """Add `drafts` as active starter strategies, once per tenant; returns how many."""
        with write_session(self.engine, tenant) as s:
            row = rows.tenant_row(s, tenant)
            if row.seeded_at is not None:
                return 0
            row.seeded_at = m.utcnow()
            for draft in drafts:
                rows.insert_strategy(s, tenant, draft, origin="starter", kind="created")
            return len(drafts)

    # ---- classification cache --------------------------------------------------------------

    def cached_type(self, tenant: str, query: str) -> str | None:
        with read_session(self.engine) as s:
            return s.scalar(
                select(m.Classification.problem_type).where(
                    m.Classification.tenant == tenant,
                    m.Classification.query_hash == rows.query_hash(query),
                )
            )

    def cache_type(self, tenant: str, query: str, problem_type: str) -> None:
        rows.check_type(problem_type)
        digest = rows.query_hash(query)
        with write_session(self.engine, tenant) as s:
            exists = s.scalar(
                select(m.Classification.id).where(
                    m.Classification.tenant == tenant, m.Classification.query_hash == digest
                )
            )
            if exists is None:
                s.add(m.Classification(tenant=tenant, query_hash=digest, problem_type=problem_type))

    # ---- strategies ------------------------------------------------------------------------

    def strategies(
        self,
        tenant: str,
        problem_type: str | None = None,
        statuses: Iterable[Status] | None = None,
    ) -> list[StrategyRecord]:
        query = select(m.Strategy).where(m.Strategy.tenant == tenant)
        if problem_type is not None:
            query = query.where(m.Strategy.problem_type == problem_type)
        if statuses is not None:
            query = query.where(m.Strategy.status.in_(list(statuses)))
        with read_session(self.engine) as s:
            found = s.scalars(query.order_by(m.Strategy.problem_type, m.Strategy.id))
            return [copies.to_strategy(r) for r in found]

    def strategy(self, tenant: str, strategy_id: int) -> StrategyRecord:
        with read_session(self.engine) as s:
            return copies.to_strategy(rows.strategy_row(s, tenant, strategy_id))

    def events(
        self, tenant: str, strategy_id: int | None = None, limit: int = 1000
    ) -> list[EventRecord]:
        query = select(m.LearningEvent).where(m.LearningEvent.tenant == tenant)
        if strategy_id is not None:
            query = query.where(m.LearningEvent.strategy_id == strategy_id)
        with read_session(self.engine) as s:
            found = s.scalars(query.order_by(m.LearningEvent.id.desc()).limit(limit))
            return [copies.to_event(r) for r in found]

    def examples(self, tenant: str, strategy_id: int, limit: int = 20) -> list[ExampleRecord]:
        query = (
            select(m.StrategyExample)
            .where(m.StrategyExample.tenant == tenant, m.StrategyExample.strategy_id == strategy_id)
            .order_by(m.StrategyExample.id.desc())
            .limit(limit)
        )
        with read_session(self.engine) as s:
            return [copies.to_example(r) for r in s.scalars(query)]

    def add_strategy(
        self,
        tenant: str,
        draft: Draft,
        *,
        origin: str = "learned",
        request_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> StrategyRecord | None:
        """Insert a strategy. A new candidate is refused (None) when its type already has
        `max_candidates_per_type` candidates waiting."""
        rows.check_type(draft.problem_type)
        with write_session(self.engine, tenant) as s:
            if draft.status == "candidate":
                waiting = s.scalar(
                    select(func.count())
                    .select_from(m.Strategy)
                    .where(
                        m.Strategy.tenant == tenant,
                        m.Strategy.problem_type == draft.problem_type,
                        m.Strategy.status == "candidate",
                    )
                )
                if (waiting or 0) >= self.lifecycle.max_candidates_per_type:
                    return None
            row = rows.insert_strategy(
                s, tenant, draft, origin=origin, request_id=request_id, **(detail or {})
            )
            if row.status == "active":
                rows.cap_active(s, tenant, row.problem_type, self.lifecycle.max_per_type)
            return copies.to_strategy(row)

    def edit_text(
        self,
        tenant: str,
        strategy_id: int,
        new_text: str,
        *,
        expected_version: int,
        kind: str = "refined",
        request_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> StrategyRecord:
        """Replace a strategy's text if it is still at `expected_version`; otherwise someone
        changed it meanwhile and `Conflict` is raised (nothing is overwritten)."""
        new_text = rows.clean_text(new_text)
        with write_session(self.engine, tenant) as s:
            rows.edit_text(
                s, tenant, strategy_id, new_text, expected_version, kind, request_id, detail or {}
            )
            return copies.to_strategy(rows.strategy_row(s, tenant, strategy_id, fresh=True))

    def supersede(
        self,
        tenant: str,
        parent_id: int,
        new_text: str,
        *,
        expected_version: int,
        kind: str,
        request_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> StrategyRecord:
        """A refinement or merge of a strategy still at `expected_version`: a new strategy
        with its own counters, linked to the parent, which retires (`rows.supersede`)."""
        new_text = rows.clean_text(new_text)
        with write_session(self.engine, tenant) as s:
            child = rows.supersede(
                s, tenant, parent_id, new_text, expected_version, kind, request_id, detail or {}
            )
            return copies.to_strategy(child)

    def set_status(
        self, tenant: str, strategy_id: int, status: Status, *, kind: str, **detail: Any
    ) -> StrategyRecord:
        """An operator's or the learner's decision (approve, retire, ...), with its event."""
        rows.check_status(status)
        with write_session(self.engine, tenant) as s:
            rows.set_status(
                s, tenant, strategy_id, status, kind, detail, self.lifecycle.max_per_type
            )
            return copies.to_strategy(rows.strategy_row(s, tenant, strategy_id, fresh=True))

    def note(
        self,
        tenant: str,
        kind: str,
        *,
        request_id: str | None = None,
        strategy_id: int | None = None,
        **detail: Any,
    ) -> None:
        """Record a learning event that changed no strategy (e.g. a proposal that was rejected),
        so the history shows it. A `strategy_id` must be one of the tenant's strategies."""
        with write_session(self.engine, tenant) as s:
            if strategy_id is not None:
                rows.strategy_row(s, tenant, strategy_id)
            rows.event_row(s, tenant, strategy_id, request_id, kind, **detail)

    def history(
        self, tenant: str, strategy_ids: Sequence[int], per_strategy: int = 50
    ) -> dict[int, list[EventRecord]]:
        """The newest `per_strategy` events of each of `strategy_ids`, newest first, in one
        query (a page showing many strategies' histories needs no query per strategy)."""
        if not strategy_ids:
            return {}
        rank = (
            func.row_number()
            .over(partition_by=m.LearningEvent.strategy_id, order_by=m.LearningEvent.id.desc())
            .label("rank")
        )
        ranked = (
            select(m.LearningEvent.id, rank)
            .where(
                m.LearningEvent.tenant == tenant,
                m.LearningEvent.strategy_id.in_(list(strategy_ids)),
            )
            .subquery()
        )
        query = (
            select(m.LearningEvent)
            .join(ranked, ranked.c.id == m.LearningEvent.id)
            .where(ranked.c.rank <= per_strategy)
            .order_by(m.LearningEvent.id.desc())
        )
        out: dict[int, list[EventRecord]] = {i: [] for i in strategy_ids}
        with read_session(self.engine) as s:
            for row in s.scalars(query):
                if row.strategy_id is not None:
                    out[row.strategy_id].append(copies.to_event(row))
        return out

    def import_strategies(self, tenant: str, entries: Sequence[ImportEntry]) -> ImportResult:
        """Apply an edited export in ONE write transaction: all of it or, on any error
        (`Conflict`, `NotFound`, `InvalidRequest`), none of it.

        An entry whose id is one of the tenant's strategies changes its text (a versioned edit,
        event "edited") and its status when they differ, and only if the entry's `version` is
        the stored one, so that a change made since the export is never overwritten. Any other
        entry is added with origin "imported" and its counters. Imported candidates are not
        held back by `max_candidates_per_type`: an operator chose them."""
        with write_session(self.engine, tenant) as s:
            return rows.apply_import(s, tenant, entries, self.lifecycle.max_per_type)
