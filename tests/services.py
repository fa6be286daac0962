"""Real services for tests: a throwaway PostgreSQL server, a throwaway Redis server, and
whether Chromium is installed.

PostgreSQL: `PONDER_TEST_POSTGRES_URL` (a server URL whose user may create databases) is used
when set; otherwise a private cluster is started from the installed server binaries (Debian's
`postgresql` package) in a temporary directory, on a free port, and stopped at the end.
Redis: a private `redis-server` (Debian's `redis-server` package) on a free port in a temporary
directory, without persistence, stopped at the end. Tests that need a service skip when it is
missing, unless `PONDER_REQUIRE_SERVICES=1` (set by
`.ci/run`), where a missing service fails them instead.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
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


class RedisServer:
    """A private redis-server on a free port; `stop()` ends it (a Redis that went away)."""

    def __init__(self, binary: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ponder-redis-"))
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.root),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self.answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def answers(self) -> bool:
        """Whether the server answers PING."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for the block, stopped at its end (skips when not installed)."""
    binary = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if binary is None:
        require("Redis (Debian package redis-server)")
        raise AssertionError("unreachable")
    server = RedisServer(binary)
    try:
        yield server
    finally:
        server.stop()


class PonderProcess(str):
    """A running `ponder serve`'s base URL; `output` is what it printed, once it has stopped."""

    output: str = ""


@contextmanager
def ponder_process(
    env: dict[str, str], *args: str, within_s: float = 60.0
) -> Iterator[PonderProcess]:
    """`ponder serve ARGS` as a process of its own, with `env` over this one's environment, on a
    free port; yields its base URL once `/health/ready` answers 200, and stops it at the end."""
    import httpx

    port = _free_port()
    command = [sys.executable, "-m", "ponder.cli", "serve", "--port", str(port), *args]
    proc = subprocess.Popen(
        command, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    base = PonderProcess(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + within_s
        while True:
            try:
                if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                output = proc.communicate()[0].decode(errors="replace")
                raise AssertionError(f"ponder serve exited ({proc.returncode}):\n{output}")
            assert time.monotonic() < deadline, f"ponder serve was not ready in {within_s} s"
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            output = proc.communicate(timeout=15)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            output = proc.communicate()[0]
        base.output = output.decode(errors="replace")
