"""`Store`: the one way into the SPL and memory database.

Every method takes the tenant and touches only that tenant's rows. Methods are synchronous
(SQLAlchemy sessions); async code calls them through `asyncio.to_thread`. The database is
opened, and migrated to the newest schema, on first use.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, delete, func, select, text, update
from sqlalchemy.orm import Session

from ponder.config import Settings
from ponder.errors import Conflict, InvalidRequest, NotFound
from ponder.spl_store import models as m
from ponder.spl_store.db import default_url, lock_key, make_engine, read_session, write_session
from ponder.spl_store.problem_types import PROBLEM_TYPES
from ponder.spl_store.records import (
    SOURCE_RANK,
    EpisodeRecord,
    EventRecord,
    ExampleRecord,
    Lifecycle,
    OutcomeResult,
    Policy,
    Status,
    StrategyRecord,
    TenantSettings,
)

MIGRATIONS = "ponder.spl_store:migrations"
MAX_TEXT = 4000
STATUSES: tuple[Status, ...] = ("candidate", "active", "retired")


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


class Store:
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
                promote_after=settings.spl_promote_after,
                retire_after=settings.spl_retire_after,
                retire_rate=settings.spl_retire_rate,
                max_per_type=settings.spl_max_per_type,
            ),
            Policy(
                client_learning=settings.spl_client_learning,
                memory_max_episodes=settings.memory_max_episodes,
                memory_max_age=dt.timedelta(days=settings.memory_max_age_days),
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

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    # ---- tenants ---------------------------------------------------------------------------

    def tenant(self, name: str) -> TenantSettings:
        with read_session(self.engine) as s:
            row = s.get(m.Tenant, name)
            return _tenant(row) if row else TenantSettings(name)

    def tenants(self) -> list[TenantSettings]:
        with read_session(self.engine) as s:
            return [_tenant(t) for t in s.scalars(select(m.Tenant).order_by(m.Tenant.name))]

    def configure_tenant(
        self, name: str, *, learning: bool | None = None, review: bool | None = None
    ) -> TenantSettings:
        with write_session(self.engine, name) as s:
            row = _tenant_row(s, name)
            if learning is not None:
                row.learning = learning
            if review is not None:
                row.review = review
            row.updated_at = m.utcnow()
            return _tenant(row)

    def seed(self, tenant: str, drafts: Sequence[Draft]) -> int:
        """Add `drafts` as active starter strategies, once per tenant; returns how many."""
        with write_session(self.engine, tenant) as s:
            row = _tenant_row(s, tenant)
            if row.seeded_at is not None:
                return 0
            row.seeded_at = m.utcnow()
            for draft in drafts:
                self._insert(s, tenant, draft, origin="starter", kind="created")
            return len(drafts)

    # ---- classification cache --------------------------------------------------------------

    def cached_type(self, tenant: str, query: str) -> str | None:
        with read_session(self.engine) as s:
            return s.scalar(
                select(m.Classification.problem_type).where(
                    m.Classification.tenant == tenant,
                    m.Classification.query_hash == query_hash(query),
                )
            )

    def cache_type(self, tenant: str, query: str, problem_type: str) -> None:
        check_type(problem_type)
        digest = query_hash(query)
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
            rows = s.scalars(query.order_by(m.Strategy.problem_type, m.Strategy.id))
            return [_strategy(r) for r in rows]

    def strategy(self, tenant: str, strategy_id: int) -> StrategyRecord:
        with read_session(self.engine) as s:
            return _strategy(_strategy_row(s, tenant, strategy_id))

    def events(
        self, tenant: str, strategy_id: int | None = None, limit: int = 1000
    ) -> list[EventRecord]:
        query = select(m.LearningEvent).where(m.LearningEvent.tenant == tenant)
        if strategy_id is not None:
            query = query.where(m.LearningEvent.strategy_id == strategy_id)
        with read_session(self.engine) as s:
            rows = s.scalars(query.order_by(m.LearningEvent.id.desc()).limit(limit))
            return [_event(r) for r in rows]

    def examples(self, tenant: str, strategy_id: int, limit: int = 20) -> list[ExampleRecord]:
        query = (
            select(m.StrategyExample)
            .where(m.StrategyExample.tenant == tenant, m.StrategyExample.strategy_id == strategy_id)
            .order_by(m.StrategyExample.id.desc())
            .limit(limit)
        )
        with read_session(self.engine) as s:
            return [_example(r) for r in s.scalars(query)]

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
        check_type(draft.problem_type)
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
            row = self._insert(
                s, tenant, draft, origin=origin, request_id=request_id, **(detail or {})
            )
            if row.status == "active":
                self._cap_active(s, tenant, row.problem_type)
            return _strategy(row)

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
        new_text = clean_text(new_text)
        with write_session(self.engine, tenant) as s:
            _edit_text(
                s, tenant, strategy_id, new_text, expected_version, kind, request_id, detail or {}
            )
            return _strategy(_strategy_row(s, tenant, strategy_id, fresh=True))

    def set_status(
        self, tenant: str, strategy_id: int, status: Status, *, kind: str, **detail: Any
    ) -> StrategyRecord:
        """An operator's or the learner's decision (approve, retire, ...), with its event."""
        if status not in STATUSES:
            raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}", param="status")
        with write_session(self.engine, tenant) as s:
            self._set_status(s, tenant, strategy_id, status, kind, detail)
            return _strategy(_strategy_row(s, tenant, strategy_id, fresh=True))

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
                    out[row.strategy_id].append(_event(row))
        return out

    def import_strategies(self, tenant: str, entries: Sequence[ImportEntry]) -> ImportResult:
        """Apply an edited export in ONE write transaction: all of it or, on any error
        (`Conflict`, `NotFound`, `InvalidRequest`), none of it.

        An entry whose id is one of the tenant's strategies changes its text (a versioned edit,
        event "edited") and its status when they differ, and only if the entry's `version` is
        the stored one, so that a change made since the export is never overwritten. Any other
        entry is added with origin "imported" and its counters. Imported candidates are not
        held back by `max_candidates_per_type`: an operator chose them."""
        added: list[int] = []
        updated: list[int] = []
        unchanged: list[int] = []
        touched: set[str] = set()
        with write_session(self.engine, tenant) as s:
            for entry in entries:
                if entry.status not in STATUSES:
                    raise InvalidRequest(
                        f"status must be one of {', '.join(STATUSES)}", param="status"
                    )
                current = None
                if entry.id is not None:
                    current = s.scalar(
                        select(m.Strategy).where(
                            m.Strategy.id == entry.id, m.Strategy.tenant == tenant
                        )
                    )
                if current is None:
                    draft = Draft(
                        entry.problem_type,
                        entry.text,
                        entry.status,
                        entry.attempts,
                        entry.successes,
                    )
                    row = self._insert(s, tenant, draft, origin="imported", kind="imported")
                    added.append(row.id)
                    touched.add(row.problem_type)
                    continue
                text_changed = clean_text(entry.text) != current.text
                status_changed = entry.status != current.status
                if entry.problem_type != current.problem_type:
                    raise InvalidRequest(
                        f"strategy {current.id}: its problem type is {current.problem_type!r}; "
                        "a strategy's problem type cannot be changed (add a new one instead)",
                        param="problem_type",
                    )
                if not (text_changed or status_changed):
                    unchanged.append(current.id)
                    continue
                if entry.version != current.version:
                    given = "no version" if entry.version is None else f"version {entry.version}"
                    raise Conflict(
                        f"strategy {current.id} is at version {current.version}, but the file "
                        f"has {given}: it changed since the export; export again and reapply "
                        "the edit",
                        param="version",
                    )
                if text_changed:
                    _edit_text(
                        s,
                        tenant,
                        current.id,
                        clean_text(entry.text),
                        current.version,
                        "edited",
                        None,
                        {"source": "import"},
                    )
                if status_changed:
                    self._set_status(
                        s,
                        tenant,
                        current.id,
                        entry.status,
                        STATUS_KINDS[entry.status],
                        {"source": "import"},
                    )
                updated.append(current.id)
                touched.add(current.problem_type)
            capped = [r for t in sorted(touched) for r in self._cap_active(s, tenant, t)]
        return ImportResult(tuple(added), tuple(updated), tuple(unchanged), tuple(capped))

    # ---- outcomes --------------------------------------------------------------------------

    def record_request(
        self,
        tenant: str,
        request_id: str,
        problem_type: str,
        query: str,
        answer: str,
        strategy_ids: Sequence[int],
    ) -> None:
        """Remember a learning request so that its outcome, now or later, can be applied."""
        check_type(problem_type)
        with write_session(self.engine, tenant) as s:
            s.add(
                m.SplRequest(
                    tenant=tenant,
                    request_id=request_id,
                    problem_type=problem_type,
                    query=query,
                    answer=answer,
                    strategy_ids=list(strategy_ids),
                )
            )

    def record_outcome(
        self, tenant: str, request_id: str, correct: bool, source: str
    ) -> OutcomeResult:
        """Apply an outcome to the strategies a request used: attempts and successes in SQL,
        then promotion and retirement, all in one transaction. A later, better signal
        (feedback over a judgement) corrects the successes; it never counts the attempt twice."""
        if source not in SOURCE_RANK:
            raise InvalidRequest(f"unknown outcome source {source!r}", param="source")
        with write_session(self.engine, tenant) as s:
            row = s.scalar(
                select(m.SplRequest).where(
                    m.SplRequest.tenant == tenant, m.SplRequest.request_id == request_id
                )
            )
            if row is None:
                raise NotFound(
                    f"no learning request {request_id!r} for this tenant", param="request_id"
                )
            ids = tuple(row.strategy_ids)
            before, before_source = row.outcome, row.outcome_source
            if before is not None and (
                SOURCE_RANK[before_source or "judge"] > SOURCE_RANK[source] or before == correct
            ):
                return OutcomeResult(False, before, before_source, strategy_ids=ids)
            if ids:
                gained = int(correct) - int(bool(before))
                values: dict[str, Any] = {
                    "successes": m.Strategy.successes + gained,
                    "updated_at": m.utcnow(),
                }
                if before is None:
                    values["attempts"] = m.Strategy.attempts + 1
                s.execute(
                    update(m.Strategy)
                    .where(m.Strategy.tenant == tenant, m.Strategy.id.in_(ids))
                    .values(**values)
                )
                kind = "success" if correct else "failure"
                for strategy_id in ids:
                    _event_row(s, tenant, strategy_id, request_id, kind, source=source)
                    if before is None:
                        s.add(
                            m.StrategyExample(
                                tenant=tenant,
                                strategy_id=strategy_id,
                                request_id=request_id,
                                query=row.query,
                                answer=row.answer,
                                correct=correct,
                            )
                        )
                if before is not None:
                    s.execute(
                        update(m.StrategyExample)
                        .where(
                            m.StrategyExample.tenant == tenant,
                            m.StrategyExample.request_id == request_id,
                        )
                        .values(correct=correct)
                    )
            row.outcome, row.outcome_source = correct, source
            promoted, retired = self._lifecycle(s, tenant, ids)
            return OutcomeResult(True, correct, source, promoted, retired, ids)

    def request_outcome(self, tenant: str, request_id: str) -> tuple[bool | None, str | None]:
        with read_session(self.engine) as s:
            row = s.execute(
                select(m.SplRequest.outcome, m.SplRequest.outcome_source).where(
                    m.SplRequest.tenant == tenant, m.SplRequest.request_id == request_id
                )
            ).first()
            if row is None:
                raise NotFound(f"no learning request {request_id!r}", param="request_id")
            return row[0], row[1]

    # ---- memory episodes -------------------------------------------------------------------

    def add_episode(
        self,
        tenant: str,
        conversation: str,
        request_id: str,
        question: str,
        answer: str,
        vector: bytes,
        *,
        max_episodes: int,
        max_age: dt.timedelta,
    ) -> int:
        """Store an exchange, then drop the tenant's episodes past the age limit and the oldest
        beyond the size cap. Returns the new episode's id."""
        with write_session(self.engine, tenant) as s:
            row = m.Episode(
                tenant=tenant,
                conversation=conversation,
                request_id=request_id,
                question=question,
                answer=answer,
                vector=vector,
            )
            s.add(row)
            s.flush()
            mine = m.Episode.tenant == tenant
            s.execute(delete(m.Episode).where(mine, m.Episode.created_at < m.utcnow() - max_age))
            keep = (
                select(m.Episode.id).where(mine).order_by(m.Episode.id.desc()).limit(max_episodes)
            )
            s.execute(delete(m.Episode).where(mine, m.Episode.id.not_in(keep.scalar_subquery())))
            return row.id

    def episodes(
        self, tenant: str, conversation: str | None = None, limit: int | None = None
    ) -> list[EpisodeRecord]:
        """Newest first."""
        query = select(m.Episode).where(m.Episode.tenant == tenant)
        if conversation is not None:
            query = query.where(m.Episode.conversation == conversation)
        query = query.order_by(m.Episode.id.desc())
        if limit is not None:
            query = query.limit(limit)
        with read_session(self.engine) as s:
            return [_episode(r) for r in s.scalars(query)]

    def clear_episodes(self, tenant: str, conversation: str | None = None) -> int:
        where = [m.Episode.tenant == tenant]
        if conversation is not None:
            where.append(m.Episode.conversation == conversation)
        with write_session(self.engine, tenant) as s:
            return int(s.execute(delete(m.Episode).where(*where)).rowcount)  # type: ignore[attr-defined]

    def episode_outcome(self, tenant: str, request_id: str, correct: bool) -> int:
        """Record feedback on a remembered exchange; returns how many episodes it matched."""
        with write_session(self.engine, tenant) as s:
            done = s.execute(
                update(m.Episode)
                .where(m.Episode.tenant == tenant, m.Episode.request_id == request_id)
                .values(outcome=correct)
            )
            return int(done.rowcount)  # type: ignore[attr-defined]

    # ---- internals -------------------------------------------------------------------------

    def _insert(
        self,
        s: Session,
        tenant: str,
        draft: Draft,
        *,
        origin: str,
        request_id: str | None = None,
        kind: str = "created",
        **detail: Any,
    ) -> m.Strategy:
        check_type(draft.problem_type)
        if draft.status not in STATUSES:
            raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}", param="status")
        row = m.Strategy(
            tenant=tenant,
            problem_type=draft.problem_type,
            text=clean_text(draft.text),
            status=draft.status,
            origin=origin,
            version=1,
            attempts=draft.attempts,
            successes=draft.successes,
        )
        s.add(row)
        s.flush()  # the database gives the id
        _event_row(
            s, tenant, row.id, request_id, kind, status=draft.status, origin=origin, **detail
        )
        return row

    def _set_status(
        self,
        s: Session,
        tenant: str,
        strategy_id: int,
        status: Status,
        kind: str,
        detail: dict[str, Any],
    ) -> None:
        row = _strategy_row(s, tenant, strategy_id)
        if row.status != status:
            before = row.status
            row.status = status
            row.updated_at = m.utcnow()
            _event_row(s, tenant, strategy_id, None, kind, before=before, **detail)
            if status == "active":
                self._cap_active(s, tenant, row.problem_type)

    def _lifecycle(
        self, s: Session, tenant: str, ids: Sequence[int]
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Promote and retire among `ids` (after their counters changed), then cap each type."""
        if not ids:
            return (), ()
        rules = self.lifecycle
        review = bool(s.scalar(select(m.Tenant.review).where(m.Tenant.name == tenant)))
        promoted: list[int] = []
        retired: list[int] = []
        rows = s.scalars(
            select(m.Strategy)
            .where(m.Strategy.tenant == tenant, m.Strategy.id.in_(ids))
            .execution_options(populate_existing=True)
        ).all()
        for row in rows:
            rate = row.successes / row.attempts if row.attempts else 0.0
            if (
                row.status != "retired"
                and row.attempts >= rules.retire_after
                and rate < rules.retire_rate
            ):
                _set(s, row, "retired", "retired", reason="low success rate", rate=round(rate, 3))
                retired.append(row.id)
            elif (
                row.status == "candidate"
                and not review
                and row.successes >= rules.promote_after
                and rate >= rules.promote_rate
            ):
                _set(s, row, "active", "promoted", rate=round(rate, 3))
                promoted.append(row.id)
        for problem_type in sorted({r.problem_type for r in rows}):
            retired.extend(self._cap_active(s, tenant, problem_type))
        return tuple(promoted), tuple(retired)

    def _cap_active(self, s: Session, tenant: str, problem_type: str) -> list[int]:
        """Retire the weakest active strategies of a type beyond `max_per_type`."""
        active = s.scalars(
            select(m.Strategy)
            .where(
                m.Strategy.tenant == tenant,
                m.Strategy.problem_type == problem_type,
                m.Strategy.status == "active",
            )
            .execution_options(populate_existing=True)
        ).all()
        ranked = sorted(active, key=lambda r: (-(r.successes + 1) / (r.attempts + 2), r.id))
        over = ranked[self.lifecycle.max_per_type :]
        for row in over:
            _set(s, row, "retired", "retired", reason="over max_per_type")
        return [r.id for r in over]


# ---- module helpers ------------------------------------------------------------------------


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (a no-op when it is there)."""
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    with engine.execution_options(ponder_write=True).begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key("migrations")})
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def query_hash(query: str) -> str:
    """Identical queries up to whitespace and case share a hash."""
    return hashlib.sha256(" ".join(query.lower().split()).encode()).hexdigest()


def check_type(problem_type: str) -> None:
    if problem_type not in PROBLEM_TYPES:
        raise InvalidRequest(
            f"unknown problem type {problem_type!r}; one of: {', '.join(PROBLEM_TYPES)}",
            param="problem_type",
        )


def clean_text(value: str) -> str:
    value = value.strip()
    if not value:
        raise InvalidRequest("a strategy's text must not be empty", param="text")
    if len(value) > MAX_TEXT:
        raise InvalidRequest(f"a strategy's text is limited to {MAX_TEXT} characters", param="text")
    return value


def _tenant_row(s: Session, name: str) -> m.Tenant:
    row = s.get(m.Tenant, name)
    if row is None:
        row = m.Tenant(name=name, learning=False, review=False, updated_at=m.utcnow())
        s.add(row)
        s.flush()
    return row


def _strategy_row(s: Session, tenant: str, strategy_id: int, fresh: bool = False) -> m.Strategy:
    query = select(m.Strategy).where(m.Strategy.id == strategy_id, m.Strategy.tenant == tenant)
    if fresh:
        query = query.execution_options(populate_existing=True)
    row = s.scalar(query)
    if row is None:
        raise NotFound(f"no strategy {strategy_id} for this tenant", param="id")
    return row


def _edit_text(
    s: Session,
    tenant: str,
    strategy_id: int,
    new_text: str,
    expected_version: int,
    kind: str,
    request_id: str | None,
    detail: dict[str, Any],
) -> None:
    """The versioned text update: `Conflict` when the row is no longer at `expected_version`."""
    done = s.execute(
        update(m.Strategy)
        .where(
            m.Strategy.id == strategy_id,
            m.Strategy.tenant == tenant,
            m.Strategy.version == expected_version,
        )
        .values(text=new_text, version=m.Strategy.version + 1, updated_at=m.utcnow())
    )
    if done.rowcount == 0:  # type: ignore[attr-defined]
        current = _strategy_row(s, tenant, strategy_id)  # NotFound if it is not there
        raise Conflict(
            f"strategy {strategy_id} is at version {current.version}, "
            f"not {expected_version}: reload it and apply the change again",
            param="version",
        )
    _event_row(s, tenant, strategy_id, request_id, kind, version=expected_version + 1, **detail)


def _set(s: Session, row: m.Strategy, status: Status, kind: str, **detail: Any) -> None:
    before = row.status
    row.status = status
    row.updated_at = m.utcnow()
    _event_row(s, row.tenant, row.id, None, kind, before=before, **detail)


def _event_row(
    s: Session,
    tenant: str,
    strategy_id: int | None,
    request_id: str | None,
    kind: str,
    **detail: Any,
) -> None:
    s.add(
        m.LearningEvent(
            tenant=tenant, strategy_id=strategy_id, request_id=request_id, kind=kind, detail=detail
        )
    )


def _tenant(row: m.Tenant) -> TenantSettings:
    return TenantSettings(row.name, row.learning, row.review, row.seeded_at is not None)


def _strategy(row: m.Strategy) -> StrategyRecord:
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
    )


def _event(row: m.LearningEvent) -> EventRecord:
    return EventRecord(
        row.id,
        row.tenant,
        row.strategy_id,
        row.request_id,
        row.kind,
        dict(row.detail),
        row.created_at,
    )


def _example(row: m.StrategyExample) -> ExampleRecord:
    return ExampleRecord(
        row.id, row.strategy_id, row.request_id, row.query, row.answer, row.correct, row.created_at
    )


def _episode(row: m.Episode) -> EpisodeRecord:
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
