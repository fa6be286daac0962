"""SPL against a baseline: the control arm's counts per tenant and problem type, the request
flag that puts a request in it, and the parent of a refined or merged strategy.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "spl_baselines",
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("problem_type", sa.String(length=32), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("successes", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["problem_type"], ["problem_types.name"]),
        sa.PrimaryKeyConstraint("tenant", "problem_type"),
    )
    with op.batch_alter_table("spl_requests", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("control", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    with op.batch_alter_table("strategies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_strategies_parent_id"), ["parent_id"], unique=False)
        batch_op.create_foreign_key(
            "fk_strategies_parent_id", "strategies", ["parent_id"], ["id"], ondelete="SET NULL"
        )


def downgrade() -> None:
    with op.batch_alter_table("strategies", schema=None) as batch_op:
        batch_op.drop_constraint("fk_strategies_parent_id", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_strategies_parent_id"))
        batch_op.drop_column("parent_id")
    with op.batch_alter_table("spl_requests", schema=None) as batch_op:
        batch_op.drop_column("control")
    op.drop_table("spl_baselines")
