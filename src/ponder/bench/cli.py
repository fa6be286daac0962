"""`ponder bench`: run a suite through approaches and report accuracy, tokens, calls and time.

Errors are `PonderError`s; `ponder.cli.main` prints them as `ponder: ...` and exits 1. An
interrupted run (Ctrl-C) keeps what it finished: the same command resumes it.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ponder.errors import InvalidRequest, Unsupported

if TYPE_CHECKING:
    from ponder.bench.runner import BenchConfig

INTERRUPTED = 130
QUIET_LOGGERS = ("httpx", "httpx2")
"""The HTTP clients the `openai` package logs each request through (by version)."""
EXTRA = ("openai", "tqdm", "matplotlib")
"""What the `bench` extra installs; checked before a run, so a missing one does not surface
only when the report is drawn at the end."""


def add_parser(sub: Any) -> None:
    """Register `bench` on the root parser's subcommands. Its destinations start with `bench_`
    where a name would collide with the server flags `ponder.cli.settings_from` reads."""
    p = sub.add_parser("bench", help="measure what each strategy buys on a problem suite")
    p.add_argument("--suite", default="arith", help="arith, gsm8k, mcq or a plug-in (%(default)s)")
    p.add_argument("--path", type=Path, help="the suite's JSONL file (gsm8k, mcq)")
    p.add_argument("--limit", type=int, help="most items to evaluate (arith default: 100)")
    p.add_argument(
        "--approaches",
        help="comma-separated strategy routes; none is the model itself (default: none, and "
        "spl with --spl-train)",
    )
    p.add_argument(
        "--model", dest="bench_model", metavar="MODEL", help="default: the endpoint's first model"
    )
    p.add_argument(
        "--base-url",
        dest="bench_base_url",
        metavar="URL",
        help="an OpenAI-compatible endpoint (Ponder or not); default: Ponder in-process",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("OPENAI_API_KEY") or "unused",
        help="the endpoint's key (default: OPENAI_API_KEY)",
    )
    p.add_argument("--concurrency", type=int, default=8, help="requests at once (%(default)s)")
    p.add_argument("--seed", type=int, default=0, help="item draw and sampling seed (%(default)s)")
    p.add_argument("--out", type=Path, help="run directory (default: results/<suite>-<time>)")
    p.add_argument("--max-tokens", type=int, default=256, help="per reply (%(default)s)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument(
        "--spl-train",
        type=int,
        default=0,
        metavar="N",
        help="learn with spl on the first N items (one at a time, with the ground truth), "
        "then evaluate the approaches on the rest; skipped when spl is not among them",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds per request (Ponder served in-process ends one at 90%% of it)",
    )
    p.add_argument(
        "--ponder",
        dest="bench_ponder",
        metavar="JSON",
        help='the `ponder` options every request sends, e.g. \'{"sc": {"samples": 8}}\' '
        "(kept in meta.json: a resumed run must give the same)",
    )
    p.add_argument(
        "--trace",
        action="store_true",
        help="keep each request's strategy trace in traces.jsonl (a Ponder endpoint only)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="draw the report of the run in --out again from its files, asking nothing",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from(args: argparse.Namespace) -> BenchConfig:
    from ponder.bench.runner import BenchConfig

    return BenchConfig(
        suite=args.suite,
        path=args.path,
        limit=args.limit,
        approaches=None
        if args.approaches is None
        else [a.strip() for a in args.approaches.split(",") if a.strip()],
        model=args.bench_model,
        base_url=args.bench_base_url,
        api_key=args.api_key,
        concurrency=args.concurrency,
        seed=args.seed,
        out=args.out,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        spl_train=args.spl_train,
        timeout=args.timeout,
        trace=args.trace,
        ponder=ponder_options(args.bench_ponder),
    )


def ponder_options(text: str | None) -> dict[str, Any] | None:
    """`--ponder`: a JSON object, or a 400-style error naming the flag."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"--ponder is not valid JSON: {exc.msg}", param="--ponder") from None
    if not isinstance(value, dict):
        raise InvalidRequest("--ponder must be a JSON object", param="--ponder")
    return value


def require_extra() -> None:
    missing = [name for name in EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise Unsupported(
            f"ponder bench needs {', '.join(missing)}: pip install 'ponder[bench]'",
            param="bench",
        )


def run(args: argparse.Namespace) -> int:
    """`ponder bench`: run or resume, then print the summary and where the run is."""
    require_extra()
    from ponder.bench import report, runner

    config = config_from(args)
    if args.report_only:
        if args.out is None:
            raise InvalidRequest("--report-only needs the run's --out.", param="--out")
        runner.report_only(args.out)
        print((args.out / report.SUMMARY_MD).read_text(encoding="utf-8"))
        return 0
    # One INFO line per HTTP request would bury the progress bars.
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        asyncio.run(runner.run(config, progress=not args.no_progress))
    except KeyboardInterrupt:
        print(
            f"\nponder: interrupted; the same command resumes the run in {config.out_dir}",
            file=sys.stderr,
        )
        return INTERRUPTED
    # summary.md: the table, and on a --spl-train run the difference SPL made
    print((config.out_dir / report.SUMMARY_MD).read_text(encoding="utf-8"))
    print(f"Results: {config.out_dir}")
    return 0
