"""The memory-episode methods of `Store` (a mixin: `Store` supplies the engine)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Engine, delete, select

from ponder.spl_store import copies, rows
from ponder.spl_store import models as m
from ponder.spl_store.db import read_session, write_session
from ponder.spl_store.records import EpisodeRecord


class EpisodeMethods:
    """Exchanges remembered by `mem-`, per tenant and conversation."""

    @property
    def engine(self) -> Engine:
        """The store's engine (`Store.engine`)."""
        raise NotImplementedError

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
            return [copies.to_episode(r) for r in s.scalars(query)]

    def clear_episodes(self, tenant: str, conversation: str | None = None) -> int:
        where = [m.Episode.tenant == tenant]
        if conversation is not None:
            where.append(m.Episode.conversation == conversation)
        with write_session(self.engine, tenant) as s:
            return int(s.execute(delete(m.Episode).where(*where)).rowcount)  # type: ignore[attr-defined]

    def episode_outcome(self, tenant: str, request_id: str, correct: bool) -> int:
        """Record feedback on a remembered exchange; returns how many episodes it matched."""
        with write_session(self.engine, tenant) as s:
            return rows.episode_outcome(s, tenant, request_id, correct)
