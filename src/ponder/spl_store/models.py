"""SQLAlchemy models of the SPL, memory and stored-response store. Every row belongs to a
tenant (except the shared problem types).

Change a model only together with a new migration in `migrations/versions/`; a test checks
that the migrations build exactly these tables.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


TENANT = String(64)
STATUS = ("candidate", "active", "retired")


class Base(DeclarativeBase):
    pass


class ProblemType(Base):
    """Reference data (the fixed classification set), shared by every tenant."""

    __tablename__ = "problem_types"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    description: Mapped[str] = mapped_column(Text)


class Tenant(Base):
    """A tenant's SPL settings. A tenant without a row has learning off."""

    __tablename__ = "tenants"

    name: Mapped[str] = mapped_column(TENANT, primary_key=True)
    learning: Mapped[bool] = mapped_column(Boolean, default=False)
    review: Mapped[bool] = mapped_column(Boolean, default=False)
    seeded_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Strategy(Base):
    __tablename__ = "strategies"
    __table_args__ = (
        Index("ix_strategies_tenant_type_status", "tenant", "problem_type", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(TENANT)
    problem_type: Mapped[str] = mapped_column(ForeignKey("problem_types.name"))
    text: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    origin: Mapped[str] = mapped_column(String(16))
    """starter, learned, imported, refined or merged"""
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("strategies.id", ondelete="SET NULL"), index=True
    )
    """The strategy this one's text was refined or merged from (retired when it was)."""
    version: Mapped[int] = mapped_column(Integer, default=1)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    successes: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class StrategyExample(Base):
    """A query a strategy was applied to, and how it went: material for refinement."""

    __tablename__ = "strategy_examples"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(TENANT)
    strategy_id: Mapped[int] = mapped_column(
        ForeignKey("strategies.id", ondelete="CASCADE"), index=True
    )
    request_id: Mapped[str] = mapped_column(String(128))
    query: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    correct: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SplRequest(Base):
    """One learning request: which strategies it used, and its outcome once known."""

    __tablename__ = "spl_requests"
    __table_args__ = (UniqueConstraint("tenant", "request_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(TENANT)
    request_id: Mapped[str] = mapped_column(String(128))
    problem_type: Mapped[str] = mapped_column(ForeignKey("problem_types.name"))
    query: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    strategy_ids: Mapped[list[int]] = mapped_column(JSON)
    outcome: Mapped[bool | None] = mapped_column(Boolean)
    outcome_source: Mapped[str | None] = mapped_column(String(16))
    """ground_truth, feedback or judge"""
    control: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """In the control arm: answered with no strategies, so its outcome counts for the
    baseline of its problem type."""
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SplBaseline(Base):
    """How a tenant's problems of one type go with no strategies: the control arm's outcomes,
    which every strategy of the type is compared with."""

    __tablename__ = "spl_baselines"

    tenant: Mapped[str] = mapped_column(TENANT, primary_key=True)
    problem_type: Mapped[str] = mapped_column(ForeignKey("problem_types.name"), primary_key=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    successes: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Classification(Base):
    """Cache: a query's problem type, so an identical query is classified once."""

    __tablename__ = "classifications"
    __table_args__ = (UniqueConstraint("tenant", "query_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(TENANT)
    query_hash: Mapped[str] = mapped_column(String(64))
    problem_type: Mapped[str] = mapped_column(ForeignKey("problem_types.name"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LearningEvent(Base):
    """Every change to a strategy: created, success, failure, refined, merged, promoted,
    approved, retired, imported."""

    __tablename__ = "learning_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(TENANT, index=True)
    strategy_id: Mapped[int | None] = mapped_column(
        ForeignKey("strategies.id", ondelete="CASCADE"), index=True
    )
    request_id: Mapped[str | None] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Episode(Base):
    """One exchange remembered by `mem-`: question, answer, outcome and its text vector."""

    __tablename__ = "episodes"
    __table_args__ = (Index("ix_episodes_tenant_conversation", "tenant", "conversation"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(TENANT)
    conversation: Mapped[str] = mapped_column(String(128))
    request_id: Mapped[str] = mapped_column(String(128))
    question: Mapped[str] = mapped_column(Text)
    answer: Mapped[str] = mapped_column(Text)
    outcome: Mapped[bool | None] = mapped_column(Boolean)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )


class StoredResponse(Base):
    """A Responses API response kept for retrieval and for continuing from it
    (`previous_response_id`). Its id is unique within its tenant only."""

    __tablename__ = "responses"
    __table_args__ = (Index("ix_responses_tenant_created_at", "tenant", "created_at"),)

    tenant: Mapped[str] = mapped_column(TENANT, primary_key=True)
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    model: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16))
    """completed, incomplete, failed, cancelled, in_progress or queued"""
    previous_id: Mapped[str | None] = mapped_column(String(128))
    """The response this one continued."""
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    """The public Response object."""
    conversation: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    """The conversation up to and including this response's output, as the front end encodes
    it: what a response continuing from this one starts with."""
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
