"""The outcome methods of `Store` (a mixin: `Store` supplies the engine and the lifecycle):
a learning request is recorded, and its outcome, now or later, is applied to the strategies
it used."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, select, update

from ponder.errors import InvalidRequest, NotFound
from ponder.spl_store import models as m
from ponder.spl_store import rows
from ponder.spl_store.db import read_session, write_session
from ponder.spl_store.records import SOURCE_RANK, Lifecycle, OutcomeResult


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
    ) -> None:
        """Remember a learning request so that its outcome, now or later, can be applied."""
        rows.check_type(problem_type)
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
            promoted, retired = rows.lifecycle(s, tenant, ids, self.lifecycle)
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
