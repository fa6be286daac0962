"""Ponder under sustained load from many clients, against an upstream that keeps failing.

A `FaultyUpstream` fails a share of its calls at random, seeded: HTTP 500, 429 and 503,
connection resets, truncated answers and garbage. It and Ponder (`ponder serve`, `openai`
backend, its default limits and retries) each run in their own process, so neither competes
with the load generator for a GIL. Each of `--clients` keep-alive clients sends requests back
to back for `--duration` seconds, a share of them streamed, over the strategies none, re2 and
sc; every request carries its own token and every response is checked: a completion with the
client's own answer, or an OpenAI-shaped error; a stream ends with `[DONE]` or an in-band
error. Ponder's RSS is sampled every second; after the load, its `/metrics` must show no
request in flight and no more event-loop tasks than before the load. Writes summary.json and
summary.md to `--out`; exits 1 if any goal is missed: no garbled, misrouted or broken
response, RSS growth under 10% from the first quarter of the run to the last, nothing left in
flight. Ponder's own failures (HTTP 500) are counted, with its ERROR log lines, but are not a
goal: they are OpenAI-shaped.

    .venv/bin/python benchmarks/load.py                          # 200 clients, 2 minutes
    .venv/bin/python benchmarks/load.py --duration 10 --clients 20 --out /tmp/load
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from ponder.faults import FaultKind, FaultyUpstream, random_policy
from ponder.strategies.re2 import REREAD

MODEL = "fake-model"
KINDS: tuple[FaultKind, ...] = ("500", "429", "503", "reset", "truncate", "garbage")
TOKEN = re.compile(r"tok\d{4}x\d{7}")
DEFAULT_OUT = Path(__file__).parent / "runs" / "load"
RSS_GROWTH_LIMIT_PCT = 10.0
TASK_SLACK = 2
"""Event-loop tasks allowed above the count before the load (a scrape's own, timing)."""


@dataclass
class Tally:
    """What the clients saw."""

    statuses: Counter[str] = field(default_factory=Counter)
    in_band: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    by_kind: dict[str, list[float]] = field(default_factory=dict)
    """Latencies by strategy and mode ("sc/stream")."""
    ok: int = 0
    garbled: int = 0
    misrouted: int = 0
    broken: int = 0
    internal: int = 0
    """Answers that are Ponder's own failure (HTTP 500 or an in-band internal_error)."""
    examples: list[str] = field(default_factory=list)
    cpu_before: dict[str, float | None] = field(default_factory=dict)
    cpu_after: dict[str, float | None] = field(default_factory=dict)
    load_average: list[float] = field(default_factory=list)
    """The machine's 1-minute load average as the load began and ended (other work counts)."""

    def bad(self, kind: str, detail: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.examples) < 20:
            self.examples.append(f"{kind}: {detail[:400]}")


# ---- one request and its check ----------------------------------------------------------------


def expected(strategy: str, prompt: str) -> str:
    if strategy == "re2":
        return f"echo: {prompt}\n{REREAD}{prompt}"
    return f"echo: {prompt}"


def request_body(strategy: str, prompt: str, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL if strategy == "none" else f"{strategy}-{MODEL}",
        "messages": [{"role": "user", "content": prompt}],
        "stream": stream,
    }
    if strategy == "sc":
        body["ponder"] = {"sc": {"samples": 3}}
    return body


def is_error(value: Any) -> bool:
    """An OpenAI-shaped error object."""
    return (
        isinstance(value, dict)
        and set(value) == {"message", "type", "param", "code"}
        and isinstance(value["message"], str)
    )


def check_json(status: int, text: str, want: str) -> str | None:
    """None when the plain response is right, else what is wrong with it."""
    try:
        body = json.loads(text)
    except ValueError:
        return "not JSON"
    if status != 200:
        return None if is_error(body.get("error")) else "an error that is not OpenAI-shaped"
    choices = body.get("choices") or []
    if [c.get("message", {}).get("content") for c in choices] != [want]:
        return "wrong answer"
    return None


def check_stream(text: str, want: str, tally: Tally) -> str | None:
    """None when the event stream is well formed and, without an in-band error (counted in
    `tally`), says `want`."""
    data = []
    for line in text.split("\n"):
        if line.startswith("data: "):
            data.append(line[6:])
        elif line and not line.startswith(":"):
            return "a line that is not SSE"
    done = bool(data) and data[-1] == "[DONE]"
    try:
        events = [json.loads(d) for d in (data[:-1] if done else data)]
    except ValueError:
        return "an event that is not JSON"
    errors = [i for i, e in enumerate(events) if "error" in e]
    if errors:
        if errors != [len(events) - 1] or not is_error(events[-1]["error"]):
            return "an in-band error that is malformed or not last"
        tally.in_band[str(events[-1]["error"].get("code"))] += 1
        return None
    if not done:
        return "no [DONE] and no in-band error"
    content = "".join(c["delta"].get("content") or "" for e in events for c in e.get("choices", []))
    return None if content == want else "wrong answer"


async def one(
    client: httpx.AsyncClient, token: str, strategy: str, stream: bool, tally: Tally
) -> None:
    prompt = f"{token} what is 6 x 7?"
    want = expected(strategy, prompt)
    body = request_body(strategy, prompt, stream)
    started = time.perf_counter()
    try:
        if stream:
            async with client.stream("POST", "chat/completions", json=body) as response:
                text = (await response.aread()).decode()
        else:
            response = await client.post("chat/completions", json=body)
            text = response.text
    except httpx.HTTPError as exc:
        tally.bad("broken", f"{type(exc).__name__}: {exc}")
        return
    tally.latencies.append(seconds := time.perf_counter() - started)
    kind = f"{strategy}/{'stream' if stream else 'plain'}"
    tally.by_kind.setdefault(kind, []).append(seconds)
    tally.statuses[str(response.status_code)] += 1
    if set(TOKEN.findall(text)) - {token}:
        tally.bad("misrouted", f"{token} got {text}")
        return
    in_band = tally.in_band.total()
    if response.status_code == 200 and stream:
        problem = check_stream(text, want, tally)
    else:
        problem = check_json(response.status_code, text, want)
    if response.status_code == 500 or '"code":"internal_error"' in text:
        tally.bad("internal", f"{response.status_code} {text}")
    if problem is not None:
        tally.bad("garbled", f"{problem}: {response.status_code} {text}")
    elif response.status_code == 200 and tally.in_band.total() == in_band:
        tally.ok += 1


async def client_loop(
    url: str, number: int, until: float, stream_share: float, tally: Tally, seed: int
) -> None:
    """One keep-alive client sending back to back until `until`."""
    rng = np.random.default_rng([seed, number])
    strategies = ("none", "re2", "sc")
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=url + "/", limits=limits, timeout=120) as client:
        sequence = 0
        while time.monotonic() < until:
            sequence += 1
            token = f"tok{number:04d}x{sequence:07d}"
            strategy = strategies[int(rng.integers(len(strategies)))]
            await one(client, token, strategy, bool(rng.random() < stream_share), tally)


# ---- the servers ---------------------------------------------------------------------------------


@dataclass
class Upstream:
    """The faulty upstream's process, and what it counted once stopped."""

    proc: mp.process.BaseProcess
    conn: Connection
    url: str
    requests: int = 0
    faults: dict[str, int] = field(default_factory=dict)

    def stop(self) -> None:
        self.conn.send("stop")
        if self.conn.poll(15):
            self.requests, self.faults = self.conn.recv()
        self.proc.join(timeout=15)
        if self.proc.is_alive():
            self.proc.kill()


def serve_upstream(rate: float, seed: int, conn: Connection) -> None:
    """Child process: serve the faulty upstream until told to stop, then report its counts."""
    with FaultyUpstream(random_policy(rate, KINDS, seed), record=False) as upstream:
        conn.send(upstream.url)
        conn.recv()
        conn.send((upstream.requests, dict(upstream.faults)))


def start_upstream(rate: float, seed: int) -> Upstream:
    ctx = mp.get_context("spawn")
    mine, theirs = ctx.Pipe()
    proc = ctx.Process(target=serve_upstream, args=(rate, seed, theirs), name="upstream")
    proc.start()
    if not mine.poll(60):
        proc.kill()
        raise RuntimeError("the upstream did not start")
    return Upstream(proc, mine, mine.recv())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_ponder(upstream: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "PONDER_BACKEND": "openai",
        "PONDER_BASE_URL": upstream,
        "PONDER_LOG_LEVEL": "WARNING",
        "PONDER_PORT": str(port),
        "PONDER_DATABASE_URL": f"sqlite:///{workdir}/ponder.db",
    }
    log = (workdir / "ponder.log").open("wb")
    command = [sys.executable, "-m", "ponder.cli", "serve"]
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ponder exited with {proc.returncode}; see {workdir}/ponder.log")
        try:
            if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("ponder was not ready within 60 s")


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc), None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spent(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else round(after - before, 1)


def server_errors(log: Path, limit: int = 200) -> list[str]:
    """Ponder's log lines above WARNING, with their tracebacks (the rest is expected: each
    failed request is a warning)."""
    lines = log.read_text(errors="replace").splitlines()
    return [line for line in lines if not line.startswith(("WARNING ", "INFO "))][:limit]


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def gauges(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    found = {}
    for name in ("ponder_in_flight_requests", "ponder_event_loop_tasks"):
        match = re.search(rf"^{name} (\S+)$", text, re.M)
        found[name] = float(match.group(1)) if match else float("nan")
    return found


async def sample_rss(pid: int, until: float, samples: list[tuple[float, int]]) -> None:
    start = time.monotonic()
    while time.monotonic() < until:
        rss = rss_kib(pid)
        if rss is not None:
            samples.append((time.monotonic() - start, rss))
        await asyncio.sleep(1.0)


def cpu_of(pids: dict[str, int]) -> dict[str, float | None]:
    return {name: cpu_s(pid) for name, pid in pids.items()}


async def drive(
    args: argparse.Namespace, url: str, pids: dict[str, int]
) -> tuple[Tally, list[Any], float]:
    tally = Tally()
    samples: list[tuple[float, int]] = []
    pid = pids["ponder"]
    tally.cpu_before = cpu_of(pids)
    tally.load_average = [round(os.getloadavg()[0], 2)]
    started = time.monotonic()
    until = started + args.duration
    sampler = asyncio.create_task(sample_rss(pid, until, samples))
    await asyncio.gather(
        *(
            client_loop(url, i, until, args.stream_share, tally, args.seed)
            for i in range(args.clients)
        )
    )
    await sampler
    tally.cpu_after = cpu_of(pids)
    tally.load_average.append(round(os.getloadavg()[0], 2))
    return tally, samples, time.monotonic() - started


def settle(base: str, before: float, within_s: float = 15.0) -> dict[str, float]:
    """The gauges once nothing is in flight and the task count is back (or `within_s`)."""
    deadline = time.monotonic() + within_s
    while True:
        now = gauges(base)
        settled = now["ponder_in_flight_requests"] == 0
        if settled and now["ponder_event_loop_tasks"] <= before + TASK_SLACK:
            return now
        if time.monotonic() > deadline:
            return now
        time.sleep(0.5)


# ---- report --------------------------------------------------------------------------------------


def summarize(
    args: argparse.Namespace,
    tally: Tally,
    samples: list[tuple[float, int]],
    seconds: float,
    before: dict[str, float],
    after: dict[str, float],
    upstream: Upstream,
    server_errors: list[str],
) -> dict[str, Any]:
    requests = sum(tally.statuses.values()) + tally.broken
    lat = np.array(tally.latencies) * 1000 if tally.latencies else np.zeros(1)
    quarter = max(1, len(samples) // 4)
    first = float(np.mean([r for _, r in samples[:quarter]])) if samples else float("nan")
    last = float(np.mean([r for _, r in samples[-quarter:]])) if samples else float("nan")
    growth = (last - first) / first * 100 if samples else float("nan")
    goals = {
        "no_garbled_response": tally.garbled == 0 and tally.broken == 0,
        "no_misrouted_response": tally.misrouted == 0,
        f"rss_growth_under_{RSS_GROWTH_LIMIT_PCT:g}pct": bool(growth < RSS_GROWTH_LIMIT_PCT),
        "nothing_in_flight_after": after["ponder_in_flight_requests"] == 0,
        "event_loop_tasks_back_to_baseline": after["ponder_event_loop_tasks"]
        <= before["ponder_event_loop_tasks"] + TASK_SLACK,
    }
    return {
        "benchmark": "load",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_start_end": tally.load_average,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "fault_kinds": list(KINDS),
        "seconds": round(seconds, 1),
        "requests": requests,
        "by_status": dict(sorted(tally.statuses.items())),
        "in_band_errors": dict(sorted(tally.in_band.items())),
        "ok": tally.ok,
        "ok_rate": round(tally.ok / requests, 4) if requests else 0.0,
        "garbled": tally.garbled,
        "misrouted": tally.misrouted,
        "broken": tally.broken,
        "internal_errors": tally.internal,
        "latency_ms": {f"p{q}": round(float(np.percentile(lat, q)), 1) for q in (50, 95, 99)},
        "latency_ms_by_kind": {
            kind: {f"p{q}": round(float(np.percentile(v, q)) * 1000, 1) for q in (50, 99)}
            for kind, v in sorted(tally.by_kind.items())
        },
        "throughput_rps": round(requests / seconds, 1),
        "cpu_s": {k: spent(tally.cpu_before.get(k), v) for k, v in tally.cpu_after.items()},
        "upstream_calls": upstream.requests,
        "upstream_faults": dict(sorted(upstream.faults.items())),
        "rss_mib": {
            "first_quarter_mean": round(first / 1024, 1),
            "last_quarter_mean": round(last / 1024, 1),
            "growth_pct": round(growth, 2),
            "samples": len(samples),
        },
        "before_load": before,
        "after_load": after,
        "examples": tally.examples,
        "server_errors": server_errors,
        "goals": goals,
    }


def markdown(s: dict[str, Any]) -> str:
    rss = s["rss_mib"]
    lat = s["latency_ms"]
    rows = [
        ("clients", s["settings"]["clients"]),
        ("duration (s)", s["seconds"]),
        ("streamed share", s["settings"]["stream_share"]),
        ("upstream failure rate", f"{s['settings']['failure_rate']} ({', '.join(KINDS)})"),
        ("requests", s["requests"]),
        ("by status", ", ".join(f"{k}: {v}" for k, v in s["by_status"].items())),
        ("in-band errors", ", ".join(f"{k}: {v}" for k, v in s["in_band_errors"].items()) or "0"),
        ("ok rate", f"{s['ok_rate']:.2%}"),
        ("garbled / misrouted / broken", f"{s['garbled']} / {s['misrouted']} / {s['broken']}"),
        ("internal errors (HTTP 500, in-band internal_error)", s["internal_errors"]),
        ("latency p50 / p95 / p99 (ms)", f"{lat['p50']} / {lat['p95']} / {lat['p99']}"),
        ("throughput (req/s)", s["throughput_rps"]),
        ("machine: CPUs, load average at start / end",
         f"{s['cpu_count']}, {' / '.join(map(str, s['load_average_start_end']))}"),
        ("CPU s: Ponder / upstream / load generator",
         " / ".join(str(s["cpu_s"][k]) for k in ("ponder", "upstream", "load_generator"))),
        ("upstream calls (faults injected)",
         f"{s['upstream_calls']} ({sum(s['upstream_faults'].values())})"),
        ("RSS first / last quarter (MiB)",
         f"{rss['first_quarter_mean']} / {rss['last_quarter_mean']}"),
        ("RSS growth", f"{rss['growth_pct']}%"),
        ("in flight after", s["after_load"]["ponder_in_flight_requests"]),
        ("event-loop tasks before / after", f"{s['before_load']['ponder_event_loop_tasks']:g} / "
         f"{s['after_load']['ponder_event_loop_tasks']:g}"),
    ]  # fmt: skip
    lines = [f"# Ponder load run ({s['date']})", "", "| figure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "Goals:", ""]
    lines += [f"- {k}: {'met' if v else 'MISSED'}" for k, v in s["goals"].items()]
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--duration", type=float, default=120.0, help="seconds of load")
    p.add_argument("--stream-share", type=float, default=0.5, help="share of streamed requests")
    p.add_argument("--failure-rate", type=float, default=0.1, help="share of upstream calls failed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    upstream = start_upstream(args.failure_rate, args.seed)
    try:
        with tempfile.TemporaryDirectory() as work:
            proc, base = start_ponder(upstream.url, Path(work))
            pids = {"ponder": proc.pid, "load_generator": os.getpid()}
            assert upstream.proc.pid is not None
            pids["upstream"] = upstream.proc.pid
            try:
                before = gauges(base)
                tally, samples, seconds = asyncio.run(drive(args, base + "/v1", pids))
                after = settle(base, before["ponder_event_loop_tasks"])
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            errors = server_errors(Path(work) / "ponder.log")
    finally:
        upstream.stop()
    summary = summarize(args, tally, samples, seconds, before, after, upstream, errors)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "summary.md").write_text(md := markdown(summary))
    print(md)
    return 0 if all(summary["goals"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
