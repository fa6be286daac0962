"""Row-level operations shared by `Store`'s methods. Each runs inside the caller's
transaction (`Session`), so one method can combine several atomically (an import, an outcome
with its promotions)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ponder.errors import Conflict, InvalidRequest, NotFound
from ponder.spl_store import models as m
from ponder.spl_store.decisions import decide
from ponder.spl_store.problem_types import PROBLEM_TYPES
from ponder.spl_store.records import (
    STATUS_KINDS,
    Baseline,
    Draft,
    ImportEntry,
    ImportResult,
    Lifecycle,
    Status,
)

MAX_TEXT = 4000
STATUSES: tuple[Status, ...] = ("candidate", "active", "retired")


def check_status(status: str) -> Status:
    """`status`, typed, if it is one; else a 400 naming `status`."""
    if status not in STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}", param="status")
    return status


def insert_strategy(
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
    check_status(draft.status)
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
    event_row(s, tenant, row.id, request_id, kind, status=draft.status, origin=origin, **detail)
    return row


def set_status(
    s: Session,
    tenant: str,
    strategy_id: int,
    status: Status,
    kind: str,
    detail: dict[str, Any],
    max_per_type: int,
) -> None:
    """Change a strategy's status with its event; a new active one may retire the weakest."""
    row = strategy_row(s, tenant, strategy_id)
    if row.status != status:
        before = row.status
        row.status = status
        row.updated_at = m.utcnow()
        event_row(s, tenant, strategy_id, None, kind, before=before, **detail)
        if status == "active":
            cap_active(s, tenant, row.problem_type, max_per_type)


def lifecycle(
    s: Session, tenant: str, ids: Sequence[int], rules: Lifecycle
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Promote and retire among `ids` (after their counters changed) by comparing each with
    its type's baseline (`decisions.decide`), then cap each type."""
    if not ids:
        return (), ()
    review = bool(s.scalar(select(m.Tenant.review).where(m.Tenant.name == tenant)))
    promoted: list[int] = []
    retired: list[int] = []
    rows = s.scalars(
        select(m.Strategy)
        .where(m.Strategy.tenant == tenant, m.Strategy.id.in_(ids))
        .execution_options(populate_existing=True)
    ).all()
    baselines = baselines_of(s, tenant, {r.problem_type for r in rows})
    for row in rows:
        decision, reason, comparison = decide(
            row.status, row.successes, row.attempts, baselines.get(row.problem_type), rules, review
        )
        if decision == "keep":
            continue
        detail: dict[str, Any] = {"reason": reason, "rate": round(row.successes / row.attempts, 3)}
        if comparison.lift is not None:
            detail["lift"] = round(comparison.lift, 3)
            detail["bound"] = [round(comparison.low or 0.0, 3), round(comparison.high or 0.0, 3)]
        if decision == "retire":
            set_row_status(s, row, "retired", "retired", **detail)
            retired.append(row.id)
        else:
            set_row_status(s, row, "active", "promoted", **detail)
            promoted.append(row.id)
    for problem_type in sorted({r.problem_type for r in rows}):
        retired.extend(cap_active(s, tenant, problem_type, rules.max_per_type))
    return tuple(promoted), tuple(retired)


def baselines_of(
    s: Session, tenant: str, types: Iterable[str] | None = None
) -> dict[str, Baseline]:
    """The tenant's baselines by problem type (of `types`, or all)."""
    query = select(m.SplBaseline).where(m.SplBaseline.tenant == tenant)
    if types is not None:
        query = query.where(m.SplBaseline.problem_type.in_(list(types)))
    return {
        b.problem_type: Baseline(b.problem_type, b.attempts, b.successes) for b in s.scalars(query)
    }


def count_baseline(
    s: Session, tenant: str, problem_type: str, attempts: int, successes: int
) -> None:
    """Add to a type's control-arm counts (creating its row on the first outcome)."""
    row = s.get(m.SplBaseline, (tenant, problem_type), populate_existing=True)
    if row is None:
        row = m.SplBaseline(tenant=tenant, problem_type=problem_type, attempts=0, successes=0)
        s.add(row)
    row.attempts += attempts
    row.successes += successes
    row.updated_at = m.utcnow()


def episode_outcome(s: Session, tenant: str, request_id: str, correct: bool) -> int:
    """Set the outcome of the tenant's episodes of one request; how many there were."""
    done = s.execute(
        update(m.Episode)
        .where(m.Episode.tenant == tenant, m.Episode.request_id == request_id)
        .values(outcome=correct)
    )
    return int(done.rowcount)  # type: ignore[attr-defined]


def cap_active(s: Session, tenant: str, problem_type: str, max_per_type: int) -> list[int]:
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
    over = ranked[max_per_type:]
    for row in over:
        set_row_status(s, row, "retired", "retired", reason="over max_per_type")
    return [r.id for r in over]


def apply_import(
    s: Session, tenant: str, entries: Sequence[ImportEntry], max_per_type: int
) -> ImportResult:
    """The body of `Store.import_strategies`, inside its transaction."""
    added: list[int] = []
    updated: list[int] = []
    unchanged: list[int] = []
    touched: set[str] = set()
    for entry in entries:
        check_status(entry.status)
        current = None
        if entry.id is not None:
            current = s.scalar(
                select(m.Strategy).where(m.Strategy.id == entry.id, m.Strategy.tenant == tenant)
            )
        if current is None:
            draft = Draft(
                entry.problem_type,
                entry.text,
                entry.status,
                entry.attempts,
                entry.successes,
            )
            row = insert_strategy(s, tenant, draft, origin="imported", kind="imported")
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
            edit_text(
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
            set_status(
                s,
                tenant,
                current.id,
                entry.status,
                STATUS_KINDS[entry.status],
                {"source": "import"},
                max_per_type,
            )
        updated.append(current.id)
        touched.add(current.problem_type)
    capped = [r for t in sorted(touched) for r in cap_active(s, tenant, t, max_per_type)]
    return ImportResult(tuple(added), tuple(updated), tuple(unchanged), tuple(capped))


def query_hash(query: str) -> str:
    """Identical queries up to whitespace and case share a hash."""
    return hashlib.sha256(" ".join(query.lower().split()).encode()).hexdigest()


def check_type(problem_type: str) -> None:
    if problem_type not in PROBLEM_TYPES:
        raise InvalidRequest(
            f"unknown problem type {problem_type!r}; one of: {', '.join(PROBLEM_TYPES)}",
            param="problem_type",
        )


def text_problem(value: str) -> str | None:
    """What is wrong with a strategy's (stripped) text, or None: the one rule the store and
    the import file share."""
    if not value:
        return "must not be empty"
    if len(value) > MAX_TEXT:
        return f"is limited to {MAX_TEXT} characters"
    return None


def clean_text(value: str) -> str:
    value = value.strip()
    problem = text_problem(value)
    if problem is not None:
        raise InvalidRequest(f"a strategy's text {problem}", param="text")
    return value


def tenant_row(s: Session, name: str) -> m.Tenant:
    row = s.get(m.Tenant, name)
    if row is None:
        row = m.Tenant(name=name, learning=False, review=False, updated_at=m.utcnow())
        s.add(row)
        s.flush()
    return row


def strategy_row(s: Session, tenant: str, strategy_id: int, fresh: bool = False) -> m.Strategy:
    query = select(m.Strategy).where(m.Strategy.id == strategy_id, m.Strategy.tenant == tenant)
    if fresh:
        query = query.execution_options(populate_existing=True)
    row = s.scalar(query)
    if row is None:
        raise NotFound(f"no strategy {strategy_id} for this tenant", param="id")
    return row


def bump_version(
    s: Session,
    tenant: str,
    strategy_id: int,
    expected_version: int,
    *,
    live: bool = False,
    **values: Any,
) -> m.Strategy:
    """Move a strategy still at `expected_version` (and, with `live`, not retired) to the next
    version, setting `values`; `Conflict` when someone changed it meanwhile."""
    where = [
        m.Strategy.id == strategy_id,
        m.Strategy.tenant == tenant,
        m.Strategy.version == expected_version,
    ]
    if live:
        where.append(m.Strategy.status != "retired")
    done = s.execute(
        update(m.Strategy)
        .where(*where)
        .values(version=m.Strategy.version + 1, updated_at=m.utcnow(), **values)
    )
    current = strategy_row(s, tenant, strategy_id, fresh=True)  # NotFound if it is not there
    if done.rowcount == 0:  # type: ignore[attr-defined]
        state = " (retired)" if live and current.status == "retired" else ""
        raise Conflict(
            f"strategy {strategy_id} is at version {current.version}{state}, "
            f"not {expected_version}: reload it and apply the change again",
            param="version",
        )
    return current


def edit_text(
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
    bump_version(s, tenant, strategy_id, expected_version, text=new_text)
    event_row(s, tenant, strategy_id, request_id, kind, version=expected_version + 1, **detail)


def supersede(
    s: Session,
    tenant: str,
    parent_id: int,
    new_text: str,
    expected_version: int,
    kind: str,
    request_id: str | None,
    detail: dict[str, Any],
) -> m.Strategy:
    """Replace a strategy by a new one with `new_text` (refined or merged from it): the new
    one takes the parent's type and status, starts its own counters and links to its parent;
    the parent is retired. `Conflict` when the parent is no longer at `expected_version` or
    was retired meanwhile: someone else changed it, and nothing is overwritten."""
    parent = bump_version(s, tenant, parent_id, expected_version, live=True)
    draft = Draft(parent.problem_type, new_text, status=parent.status)  # type: ignore[arg-type]
    child = insert_strategy(
        s, tenant, draft, origin=kind, request_id=request_id, kind=kind, parent=parent_id, **detail
    )
    child.parent_id = parent_id
    before, parent.status = parent.status, "retired"
    event_row(s, tenant, parent_id, request_id, "superseded", before=before, by=child.id)
    return child


def set_row_status(s: Session, row: m.Strategy, status: Status, kind: str, **detail: Any) -> None:
    before = row.status
    row.status = status
    row.updated_at = m.utcnow()
    event_row(s, row.tenant, row.id, None, kind, before=before, **detail)


def event_row(
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
