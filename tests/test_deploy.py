"""deploy/compose.yaml: two replicas on one PostgreSQL and one Redis behind a balancer, with
health checks. Checked with `docker compose config` where Docker exists; everywhere, its
topology is read here (and tests/test_replicas.py runs the same topology in-process)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ponder.config import Settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def test_two_replicas_share_the_database_and_redis_and_wait_for_them() -> None:
    services = compose()["services"]
    replicas = [services[name] for name in ("ponder-1", "ponder-2")]
    assert replicas[0] == replicas[1]  # one definition, two processes
    env = replicas[0]["environment"]
    assert env["PONDER_BACKEND"] == "openai"
    assert env["PONDER_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in env["PONDER_DATABASE_URL"]
    assert env["PONDER_REDIS_URL"] == "redis://redis:6379/0"
    assert "PONDER_API_KEYS" in env  # replicas listen beyond loopback: keys are required
    needs = replicas[0]["depends_on"]
    assert {name: needs[name]["condition"] for name in needs} == {
        "postgres": "service_healthy",
        "redis": "service_healthy",
    }
    assert "/health/ready" in " ".join(replicas[0]["healthcheck"]["test"])
    for name in ("postgres", "redis", "balancer"):
        assert services[name]["healthcheck"]["test"]


def test_the_balancer_spreads_over_both_replicas_and_streams_unbuffered() -> None:
    conf = (DEPLOY / "nginx.conf").read_text()
    assert re.findall(r"server (ponder-\d):8000", conf) == ["ponder-1", "ponder-2"]
    assert "proxy_buffering off;" in conf
    size = re.search(r"client_max_body_size (\d+)m;", conf)
    assert size is not None
    assert int(size.group(1)) * 1024 * 1024 == Settings().max_body_bytes
    balancer = compose()["services"]["balancer"]
    assert balancer["depends_on"] == {
        "ponder-1": {"condition": "service_healthy"},
        "ponder-2": {"condition": "service_healthy"},
    }


DOCKER = shutil.which("docker")


def has_compose() -> bool:
    if DOCKER is None:
        return False
    try:
        version = subprocess.run([DOCKER, "compose", "version"], capture_output=True, timeout=30)
    except OSError:
        return False
    return version.returncode == 0


@pytest.mark.skipif(not has_compose(), reason="no Docker Compose on this machine")
def test_docker_compose_accepts_the_file() -> None:
    env = {**os.environ, "UPSTREAM_URL": "http://upstream/v1", "PONDER_API_KEYS": "team:k"}
    done = subprocess.run(
        [str(DOCKER), "compose", "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
