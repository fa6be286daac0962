"""benchmarks/load.py runs end to end: a 5-second load with 10 clients against the failing
upstream, through Ponder in its own process, and the summary it writes holds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_short_load_run_writes_a_sound_summary(tmp_path: Path) -> None:
    command = [sys.executable, "benchmarks/load.py", "--duration", "5", "--clients", "10"]
    done = subprocess.run(
        [*command, "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (tmp_path / "summary.md").read_text().startswith("# Ponder load run")
    assert summary["requests"] > 20
    assert summary["requests"] == sum(summary["by_status"].values()) + summary["broken"]
    assert summary["upstream_calls"] >= summary["requests"]
    assert sum(summary["upstream_faults"].values()) > 0  # the upstream did fail
    assert (summary["garbled"], summary["misrouted"], summary["broken"]) == (0, 0, 0)
    assert 0.5 < summary["ok_rate"] <= 1
    latency = summary["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    assert summary["rss_mib"]["samples"] >= 4 and summary["rss_mib"]["first_quarter_mean"] > 0
    assert summary["after_load"]["ponder_in_flight_requests"] == 0
    goals = summary["goals"]
    assert set(goals) >= {"no_garbled_response", "no_misrouted_response"}
    # five seconds are mostly warm-up, so memory growth is not judged on them
    missed = {k for k, met in goals.items() if not met and not k.startswith("rss_growth")}
    assert not missed, (missed, done.stdout, done.stderr)
    assert done.returncode == (0 if all(goals.values()) else 1)
