"""What Ponder adds over calling an upstream directly.

A zero-latency `FakeUpstream` and a Ponder proxy in front of it each run in their own process
(uvicorn); `wrk` (Debian: `apt-get install wrk`) drives both at fixed connection counts, and
the report compares latency percentiles, throughput and each server's CPU time per request
(from /proc). Nothing here is random, so there is no seed to fix. Exits 1 when a goal is
missed.

    .venv/bin/python benchmarks/overhead.py [--duration 10] [--stream] [--out PATH]
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import importlib.util
import json
import logging
import multiprocessing as mp
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger("overhead")

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}
DEFAULT_OUT = Path(__file__).parent / "results" / "overhead.json"


@dataclass
class Result:
    target: str
    mode: str
    concurrency: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    cpu_ms_per_request: dict[str, float | None]  # per server process


@dataclass
class Server:
    name: str
    proc: BaseProcess
    base: str  # http://127.0.0.1:PORT/v1


# ---- servers (each in its own process) -------------------------------------------------------


def _serve(kind: str, upstream: str, profile: str | None, port_to: Connection) -> None:
    """Child process: bind a free port, report it, serve until SIGTERM."""
    import uvicorn

    app: Any
    if kind == "upstream":
        from ponder.testing import FakeUpstream

        app = FakeUpstream(record=False).app
    else:
        from ponder.config import Settings
        from ponder.proxy import create_app
        from ponder.serving import frozen

        app = frozen(create_app(Settings(backend="openai", base_url=upstream)))
    # Bound here, so no other process can take the port meanwhile. IPPROTO_TCP matters: asyncio
    # sets TCP_NODELAY only on sockets whose proto says TCP (else Nagle adds 40 ms stalls).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port_to.send(sock.getsockname()[1])
    port_to.close()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it: exit instead of dying by it,
    # so the `finally` below runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    try:
        server.run(sockets=[sock])
    finally:
        if prof and profile:
            prof.disable()
            prof.dump_stats(profile)


def _start(kind: str, upstream: str = "", profile: str | None = None) -> Server:
    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_serve, args=(kind, upstream, profile, send), name=kind)
    proc.start()
    try:
        if not receive.poll(60):
            raise RuntimeError(f"{kind} did not report its port (exit code {proc.exitcode})")
        port = receive.recv()
    except BaseException:  # Ctrl-C included: do not leave the child behind
        _stop([Server(kind, proc, "")])
        raise
    log.info("%s: pid %s, port %s", kind, proc.pid, port)
    return Server(kind, proc, f"http://127.0.0.1:{port}/v1")


def _wait_ready(server: Server, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not server.proc.is_alive():
            raise RuntimeError(f"{server.name} exited with code {server.proc.exitcode}")
        try:
            if httpx.get(f"{server.base}/models", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} did not answer GET {server.base}/models in {within_s} s")


def _stop(servers: list[Server]) -> None:
    for s in servers:
        if s.proc.is_alive():
            s.proc.terminate()
    for s in servers:
        s.proc.join(timeout=10)
        if s.proc.is_alive():
            log.warning("%s ignored SIGTERM; killing it", s.name)
            s.proc.kill()
            s.proc.join()


def _cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (Linux /proc), or None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- load generator (wrk) ----------------------------------------------------------------------

# wrk POSTs the body on every request and, when done, prints one JSON line with its counts and
# latency percentiles (microseconds), so nothing here parses its human-readable report.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("PONDER_WRK_BODY")
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nWRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "errors": %d, '
    .. '"non_2xx": %d, "p50_us": %d, "p99_us": %d, "mean_us": %f}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


def _wrk(url: str, body: dict[str, Any], connections: int, seconds: float) -> dict[str, Any]:
    """Runs wrk against `url` and returns its summary; raises if any request failed."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(WRK_SCRIPT)
        script.flush()
        # One wrk thread: the two cores are for the servers, and one thread drives 32
        # connections of a local server without being the bottleneck.
        cmd = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", script.name,
               "--timeout", "10s", url]  # fmt: skip
        env = {**os.environ, "PONDER_WRK_BODY": json.dumps(body)}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    line = next((x for x in out.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    summary: dict[str, Any] = json.loads(line.removeprefix("WRK_JSON "))
    if summary["errors"] or summary["non_2xx"] or not summary["requests"]:
        raise RuntimeError(f"wrk saw failed requests against {url}: {summary}")
    return summary


def _per_ms(before: float | None, after: float | None, n: int) -> float | None:
    return None if before is None or after is None else round((after - before) / n * 1000, 3)


def _pct(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile, in ms."""
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return round(sorted_values[rank - 1] * 1000, 3)


def _measure(targets: dict[str, str], servers: list[Server], args: Any) -> list[Result]:
    """Each cell (mode, connections, target) is measured `args.repeat` times and its median
    run by throughput kept: on a shared 2-core machine one run can be far off."""
    results: list[Result] = []
    for mode in ("json", "stream") if args.stream else ("json",):
        body = {**BODY, "stream": True} if mode == "stream" else BODY
        for concurrency in args.concurrency:
            for target, base in targets.items():
                url = f"{base}/chat/completions"
                _check(url, body)
                _wrk(url, body, concurrency, args.warmup)
                runs = sorted(
                    (_run(target, mode, url, body, concurrency, servers, args.duration)
                     for _ in range(args.repeat)),
                    key=lambda r: r.rps,
                )  # fmt: skip
                median = runs[len(runs) // 2]
                log.info("%s (median of %d by req/s: %s)", median, len(runs),
                         [r.rps for r in runs])  # fmt: skip
                results.append(median)
    return results


def _run(
    target: str,
    mode: str,
    url: str,
    body: dict[str, Any],
    concurrency: int,
    servers: list[Server],
    seconds: float,
) -> Result:
    cpu0 = {s.name: _cpu_s(s.proc.pid) for s in servers}
    summary = _wrk(url, body, concurrency, seconds)
    cpu1 = {s.name: _cpu_s(s.proc.pid) for s in servers}
    n, wall = summary["requests"], summary["duration_us"] / 1e6
    cpu = {k: _per_ms(cpu0[k], cpu1[k], n) for k in cpu0}
    return Result(target, mode, concurrency, n, round(wall, 3), round(n / wall, 1),
                  round(summary["p50_us"] / 1000, 3), round(summary["p99_us"] / 1000, 3),
                  round(summary["mean_us"] / 1000, 3), cpu)  # fmt: skip


def _check(url: str, body: dict[str, Any]) -> None:
    """One request by hand before the load: wrk counts statuses, not what the answer says."""
    response = httpx.post(url, json=body, timeout=30)
    raw = response.content
    if body.get("stream"):
        ok = b'"choices"' in raw and raw.endswith(b"[DONE]\n\n")
    else:
        ok = bool(response.json().get("choices"))
    if response.status_code != 200 or not ok:
        raise RuntimeError(f"bad response from {url}: {response.status_code} {raw[:300]!r}")


# ---- report ------------------------------------------------------------------------------------


def _added(results: list[Result]) -> list[dict[str, Any]]:
    by = {(r.target, r.mode, r.concurrency): r for r in results}
    rows = []
    for (target, mode, c), p in by.items():
        if target == "ponder" and (d := by.get(("direct", mode, c))) is not None:
            rows.append({"mode": mode, "concurrency": c, "ponder_rps": p.rps, "direct_rps": d.rps,
                         "p50_added_ms": round(p.p50_ms - d.p50_ms, 3),
                         "p99_added_ms": round(p.p99_ms - d.p99_ms, 3),
                         "ponder_cpu_ms": p.cpu_ms_per_request.get("ponder")})  # fmt: skip
    return rows


def _table(results: list[Result], added: list[dict[str, Any]]) -> str:
    head = f"{'target':<8} {'mode':<6} {'conc':>4} {'requests':>8} {'req/s':>8} {'p50 ms':>8}"
    lines = [f"{head} {'p99 ms':>8}"]
    lines += [f"{r.target:<8} {r.mode:<6} {r.concurrency:>4} {r.requests:>8} {r.rps:>8.1f} "
              f"{r.p50_ms:>8.2f} {r.p99_ms:>8.2f}" for r in results]  # fmt: skip
    lines += ["", "added by Ponder:", f"{'mode':<6} {'conc':>4} {'p50 +ms':>8} {'p99 +ms':>8} "
              f"{'ponder req/s':>12} {'ponder CPU ms/req':>17}"]  # fmt: skip
    for a in added:
        cpu = a["ponder_cpu_ms"]
        lines.append(f"{a['mode']:<6} {a['concurrency']:>4} {a['p50_added_ms']:>8.2f} "
                     f"{a['p99_added_ms']:>8.2f} {a['ponder_rps']:>12.1f} "
                     f"{'n/a' if cpu is None else f'{cpu:.3f}':>17}")  # fmt: skip
    return "\n".join(lines)


def _goals(added: list[dict[str, Any]], args: Any) -> dict[str, bool]:
    rows = {a["concurrency"]: a for a in added if a["mode"] == "json"}
    low, high = rows[min(rows)], rows[max(rows)]
    c_low, c_high, cpu = low["concurrency"], high["concurrency"], high["ponder_cpu_ms"]
    return {
        f"p50_added_under_{args.goal_p50_ms}ms_at_c{c_low}": low["p50_added_ms"] < args.goal_p50_ms,
        f"at_least_{args.goal_rps}_rps_at_c{c_high}": high["ponder_rps"] >= args.goal_rps,
        f"cpu_at_most_{args.goal_cpu_ms}ms_at_c{c_high}": cpu is not None
        and cpu <= args.goal_cpu_ms,
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="What Ponder adds over calling an upstream directly.")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each")
    p.add_argument("--repeat", type=int, default=3, help="runs per cell; the median is kept")
    p.add_argument("--stream", action="store_true", help="also measure streamed requests")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--profile", metavar="PATH", help="run Ponder under cProfile; stats to PATH")
    p.add_argument("--goal-p50-ms", type=float, default=2.0)
    p.add_argument("--goal-rps", type=float, default=1000.0)
    p.add_argument("--goal-cpu-ms", type=float, default=0.7, help="Ponder CPU ms per request")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    servers: list[Server] = []
    try:
        servers.append(upstream := _start("upstream"))
        servers.append(ponder := _start("ponder", upstream.base, args.profile))
        for s in servers:
            _wait_ready(s)
        targets = {"direct": upstream.base, "ponder": ponder.base}
        results = _measure(targets, servers, args)
    finally:
        _stop(servers)
    added = _added(results)
    goals = _goals(added, args)
    print(_table(results, added))
    print("\ngoals: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in goals.items()))
    report = {
        "benchmark": "overhead", "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0], "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "uvicorn_loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "uvicorn_http": "httptools" if importlib.util.find_spec("httptools") else "h11",
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "request": BODY, "results": [asdict(r) for r in results], "added_by_ponder": added,
        "goals": goals,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log.info("wrote %s", args.out)
    return 0 if all(goals.values()) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the servers were already stopped in main()'s finally
        sys.exit(130)
