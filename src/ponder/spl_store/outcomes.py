"""The outcome methods of `Store` (a mixin: `Store` supplies the engine and the lifecycle):
a learning request is recorded, and its outcome, now or later, is applied to the strategies
it used."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from ponder.errors import InvalidRequest, NotFound
from ponder.spl_store import models as m
from ponder.spl_store import rows
from ponder.spl_store.db import read_session, write_session
from ponder.spl_store.records import SOURCE_RANK, Baseline, Lifecycle, OutcomeResult


class OutcomeMethods:
    """Learning requests and their outcomes."""

    lifecycle: Lifecycle

    @property
    def engine(self) -> Engine:
        """The store's engine (`Store.engine`)."""
        raise NotImplementedError

    def record_request(
        self,
        tenant: str,
        request_id: str,
        problem_type: str,
        query: str,
        answer: str,
        strategy_ids: Sequence[int],
        control: bool = False,
    ) -> None:
        """Remember a learning request so that its outcome, now or later, can be applied. A
        `control` request was answered with no strategies: its outcome counts for the baseline
        of its problem type."""
        rows.check_type(problem_type)
        if control and strategy_ids:
            raise InvalidRequest("a control request uses no strategies", param="strategy_ids")
        with write_session(self.engine, tenant) as s:
            s.add(
                m.SplRequest(
                    tenant=tenant,
                    request_id=request_id,
                    problem_type=problem_type,
                    query=query,
                    answer=answer,
                    strategy_ids=list(strategy_ids),
                    control=control,
                )
            )

    def record_outcome(
        self, tenant: str, request_id: str, correct: bool, source: str
    ) -> OutcomeResult:
        """Apply an outcome to the strategies a request used (or, for a control request, to
        its type's baseline): attempts and successes in SQL, then promotion and retirement,
        all in one transaction. A later, better signal (feedback over a judgement) corrects
        the successes; it never counts the attempt twice. `NotFound` for an unknown request."""
        if source not in SOURCE_RANK:
            raise InvalidRequest(f"unknown outcome source {source!r}", param="source")
        with write_session(self.engine, tenant) as s:
            result = apply_outcome(s, tenant, request_id, correct, source, self.lifecycle)
            if result is None:
                raise NotFound(
                    f"no learning request {request_id!r} for this tenant", param="request_id"
                )
            return result

    def feedback(self, tenant: str, request_id: str, correct: bool) -> Feedback:
        """A client's verdict on an earlier answer, applied to its SPL learning request (if
        any) and to its memory episodes (if any) in one transaction: both change or neither.
        `NotFound` when neither knows the request id."""
        with write_session(self.engine, tenant) as s:
            learned = apply_outcome(s, tenant, request_id, correct, "feedback", self.lifecycle)
            episodes = rows.episode_outcome(s, tenant, request_id, correct)
            if learned is None and episodes == 0:
                raise NotFound(
                    f"no request {request_id!r} of this tenant is known to SPL or memory",
                    param="request_id",
                )
            return Feedback(learned, episodes)

    def baselines(self, tenant: str) -> dict[str, Baseline]:
        """The tenant's control-arm counts by problem type."""
        with read_session(self.engine) as s:
            return rows.baselines_of(s, tenant)

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


@dataclass(frozen=True, slots=True)
class Feedback:
    """What feedback changed: the learning request's outcome (None when SPL does not know the
    request) and how many memory episodes took it."""

    learned: OutcomeResult | None
    episodes: int


def apply_outcome(
    s: Session, tenant: str, request_id: str, correct: bool, source: str, rules: Lifecycle
) -> OutcomeResult | None:
    """`record_outcome` inside the caller's transaction; None for an unknown request."""
    row = s.scalar(
        select(m.SplRequest).where(
            m.SplRequest.tenant == tenant, m.SplRequest.request_id == request_id
        )
    )
    if row is None:
        return None
    ids = tuple(row.strategy_ids)
    before, before_source = row.outcome, row.outcome_source
    if before is not None and (
        SOURCE_RANK[before_source or "judge"] > SOURCE_RANK[source] or before == correct
    ):
        return OutcomeResult(False, before, before_source, strategy_ids=ids)
    gained = int(correct) - int(bool(before))
    if row.control:
        rows.count_baseline(s, tenant, row.problem_type, int(before is None), gained)
    if ids:
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
            rows.event_row(s, tenant, strategy_id, request_id, kind, source=source)
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
    promoted, retired = rows.lifecycle(s, tenant, ids, rules)
    return OutcomeResult(True, correct, source, promoted, retired, ids)
