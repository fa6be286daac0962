"""Initial schema: problem types (seeded), tenants, strategies, their examples and learning
events, SPL requests, the classification cache and memory episodes.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# The problem types as this revision knows them (migrations are frozen: never import models).
PROBLEM_TYPES = [
    ("arithmetic", "calculations with numbers: sums, products, percentages, unit conversions"),
    ("algebra", "equations, unknowns, expressions and functions"),
    ("geometry", "shapes, angles, areas, volumes and coordinates"),
    ("word_problem", "a story with quantities that has to be turned into arithmetic"),
    ("probability_statistics", "chances, counting, averages and data"),
    ("logic", "deduction, puzzles, riddles and consistency of statements"),
    ("coding", "writing or explaining code in a programming language"),
    ("debugging", "finding and fixing the fault in code or a system"),
    ("algorithm_design", "designing an algorithm or data structure and its complexity"),
    ("planning", "steps, schedules and resources to reach a goal"),
    ("writing", "composing stories, letters, essays or other prose"),
    ("summarization", "condensing a text into its main points"),
    ("translation", "rendering text in another language"),
    ("factual_qa", "questions about facts, definitions and knowledge"),
    ("analysis", "comparing options, explaining causes, giving advice or opinions"),
    ("general", "anything else"),
]


def upgrade() -> None:
    op.create_table(
        "episodes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("conversation", sa.String(length=128), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("question", sa.Text(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("outcome", sa.Boolean(), nullable=True),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("episodes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_episodes_created_at"), ["created_at"], unique=False)
        batch_op.create_index(
            "ix_episodes_tenant_conversation", ["tenant", "conversation"], unique=False
        )

    op.create_table(
        "problem_types",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    problem_types = sa.table(
        "problem_types", sa.column("name", sa.String), sa.column("description", sa.Text)
    )
    op.bulk_insert(problem_types, [{"name": n, "description": d} for n, d in PROBLEM_TYPES])
    op.create_table(
        "tenants",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("learning", sa.Boolean(), nullable=False),
        sa.Column("review", sa.Boolean(), nullable=False),
        sa.Column("seeded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "classifications",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("query_hash", sa.String(length=64), nullable=False),
        sa.Column("problem_type", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["problem_type"],
            ["problem_types.name"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant", "query_hash"),
    )
    op.create_table(
        "spl_requests",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("problem_type", sa.String(length=32), nullable=False),
        sa.Column("query", sa.Text(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("strategy_ids", sa.JSON(), nullable=False),
        sa.Column("outcome", sa.Boolean(), nullable=True),
        sa.Column("outcome_source", sa.String(length=16), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["problem_type"],
            ["problem_types.name"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant", "request_id"),
    )
    op.create_table(
        "strategies",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("problem_type", sa.String(length=32), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("successes", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["problem_type"],
            ["problem_types.name"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("strategies", schema=None) as batch_op:
        batch_op.create_index(
            "ix_strategies_tenant_type_status", ["tenant", "problem_type", "status"], unique=False
        )

    op.create_table(
        "learning_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("strategy_id", sa.Integer(), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["strategy_id"], ["strategies.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("learning_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_learning_events_strategy_id"), ["strategy_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_learning_events_tenant"), ["tenant"], unique=False)

    op.create_table(
        "strategy_examples",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("strategy_id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("query", sa.Text(), nullable=False),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("correct", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["strategy_id"], ["strategies.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("strategy_examples", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_strategy_examples_strategy_id"), ["strategy_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("strategy_examples", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_strategy_examples_strategy_id"))

    op.drop_table("strategy_examples")
    with op.batch_alter_table("learning_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_learning_events_tenant"))
        batch_op.drop_index(batch_op.f("ix_learning_events_strategy_id"))

    op.drop_table("learning_events")
    with op.batch_alter_table("strategies", schema=None) as batch_op:
        batch_op.drop_index("ix_strategies_tenant_type_status")

    op.drop_table("strategies")
    op.drop_table("spl_requests")
    op.drop_table("classifications")
    op.drop_table("tenants")
    op.drop_table("problem_types")
    with op.batch_alter_table("episodes", schema=None) as batch_op:
        batch_op.drop_index("ix_episodes_tenant_conversation")
        batch_op.drop_index(batch_op.f("ix_episodes_created_at"))

    op.drop_table("episodes")
