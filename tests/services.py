"""Real services for tests: a throwaway PostgreSQL server, and whether Chromium is installed.

PostgreSQL: `PONDER_TEST_POSTGRES_URL` (a server URL whose user may create databases) is used
when set; otherwise a private cluster is started from the installed server binaries (Debian's
`postgresql` package) in a temporary directory, on a free port, and stopped at the end. Tests
that need a service skip when it is missing, unless `PONDER_REQUIRE_SERVICES=1` (set by
`.ci/run`), where a missing service fails them instead.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def require(what: str) -> None:
    """Skip (or, under PONDER_REQUIRE_SERVICES=1, fail) because `what` is missing."""
    if os.environ.get("PONDER_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{what} is required (PONDER_REQUIRE_SERVICES=1) but missing")
    pytest.skip(f"{what} is not installed")


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        require("Chromium (Debian package chromium)")
        raise AssertionError("unreachable")
    return path


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yields a server URL (`postgresql://user@host:port`) whose user may create databases."""
    url = os.environ.get("PONDER_TEST_POSTGRES_URL")
    if url:
        yield url.rstrip("/")
        return
    bindir = _pg_bin()
    if bindir is None:
        require("PostgreSQL (Debian package postgresql)")
        return
    root = Path(tempfile.mkdtemp(prefix="ponder-pg-"))
    data, port = root / "data", _free_port()
    # initdb refuses to run as root: then the cluster belongs to the `postgres` system user
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if prefix:
        shutil.chown(root, "postgres")
    run = [*prefix]
    subprocess.run(
        [*run, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "ponder"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=200"
    subprocess.run(
        [
            *run,
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(root / "log"),
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://ponder@127.0.0.1:{port}"
    finally:
        subprocess.run(
            [*run, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def fresh_database(server: str) -> str:
    """Create an empty database on `server`; returns its SQLAlchemy URL."""
    import psycopg

    name = f"ponder_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://{server.removeprefix('postgresql://')}/{name}"
