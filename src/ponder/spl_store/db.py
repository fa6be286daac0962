"""Engines and transactions.

SQLite (the default, a file under the user's data directory) runs in WAL mode with a busy
timeout, and every write transaction starts with `BEGIN IMMEDIATE`, so concurrent writers queue
for the lock instead of failing halfway. On PostgreSQL a write transaction takes a
per-tenant advisory lock, which serializes one tenant's lifecycle decisions (promote, retire,
cap) without blocking other tenants. Counters are always updated in SQL (`x = x + 1`).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

BUSY_TIMEOUT_MS = 30_000
MIGRATIONS = "ponder.spl_store:migrations"
WRITE = "ponder_write"


def default_url() -> str:
    """`sqlite:///<user data dir>/ponder/ponder.db`."""
    from platformdirs import user_data_dir

    path = Path(user_data_dir("ponder", appauthor=False)) / "ponder.db"
    return f"sqlite:///{path}"


def make_engine(url: str) -> Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    database = url.split("///", 1)[-1] if "///" in url else ""
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        pool_size=10,
        max_overflow=20,
    )
    _sqlite_transactions(engine)
    return engine


def _sqlite_transactions(engine: Engine) -> None:
    """Let SQLAlchemy, not the sqlite3 module, say when transactions begin: `BEGIN IMMEDIATE`
    for writes, a plain (deferred) `BEGIN` for reads."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver issues no BEGIN of its own
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


@contextmanager
def write_session(engine: Engine, tenant: str | None = None) -> Iterator[Session]:
    """One write transaction, committed on success and rolled back on error."""
    bound = engine.execution_options(**{WRITE: True})
    with Session(bound, expire_on_commit=False) as session, session.begin():
        if tenant is not None and engine.dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(tenant)})
        yield session


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


def lock_key(tenant: str) -> int:
    """A stable 63-bit advisory lock key for a tenant."""
    return zlib.crc32(f"ponder-tenant:{tenant}".encode())


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (a no-op when it is there)."""
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    with engine.execution_options(ponder_write=True).begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key("migrations")})
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
