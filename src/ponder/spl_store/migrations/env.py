"""Alembic environment: `Store.open()` runs it with a connection it already holds.

To write a migration after changing `models.py`:
    alembic -c src/ponder/spl_store/migrations/alembic.ini revision --autogenerate -m "..."
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, engine_from_config, pool

from ponder.spl_store.models import Base

config = context.config
connection = config.attributes.get("connection")


def run(conn: Connection) -> None:
    context.configure(
        connection=conn,
        target_metadata=Base.metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    run(connection)
else:
    engine = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with engine.connect() as conn:
        run(conn)
