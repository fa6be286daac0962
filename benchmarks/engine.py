"""The embedded engine on a real model: throughput under concurrency, `sc`, time to first token,
and what the prefix cache saves.

The backend is built in this process (`EmbeddedBackend`); the `sc` and TTFT parts go through a
Ponder server (`create_app` + `running_server`) on a background thread. Run it once on the old
backend (`--label before`) and once on the new one (`--label after`) and compare the JSON files
under `benchmarks/results/`.

    .venv/bin/python benchmarks/engine.py --model qwen2.5-coder-1.5b --label after
    .venv/bin/python benchmarks/engine.py --model /tmp/models/x.gguf --tokens 16 --levels 1,2
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib
import inspect
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from ponder.backends.llamacpp import EmbeddedBackend
from ponder.config import Settings
from ponder.proxy import create_app
from ponder.serving import running_server
from ponder.types import Message, Sampling

log = logging.getLogger("engine")

RESULTS = Path(__file__).parent / "results"
TOPICS = [
    "a lighthouse keeper who finds a message in a bottle",
    "a robot learning to paint in an abandoned city",
    "two rival chefs stranded on a desert island",
    "a girl who can talk to the wind",
    "the last train across a frozen continent",
    "a detective cat solving a theft in a bakery",
    "an astronaut growing a garden on Mars",
    "a village where it never stops raining",
]
SC_PROMPT = (
    "A farmer has 3 fields. The first yields 124 kg of wheat, the second 38 kg more than the "
    "first, and the third half as much as the first two together. He sells the wheat at 2.5 "
    "dollars per kg but keeps 15% of it for seed. How many dollars does he earn? Reason step by "
    "step, explaining every calculation in detail, then give the final answer as '#### <number>'."
)


def story(i: int) -> list[Message]:
    topic = TOPICS[i % len(TOPICS)]
    text = f"Write a detailed, long story of at least 400 words about {topic}."
    return [Message(role="user", content=text)]


def resolve_model(value: str) -> tuple[Path, str]:
    """A GGUF path, or a catalog id where `ponder.catalog` exists."""
    path = Path(value).expanduser()
    if path.is_file():
        return path, path.stem.lower()
    try:
        catalog = importlib.import_module("ponder.catalog")
    except ModuleNotFoundError as exc:
        if exc.name not in ("ponder.catalog", "ponder"):
            raise
        raise SystemExit(f"{value}: no such file (and no ponder.catalog to resolve ids)") from None
    entry = catalog.resolve(value)
    return Path(entry.path), str(entry.model_id)


def end_tokens(path: Path) -> dict[str, float]:
    """A `logit_bias` that bans the model's end-of-turn tokens, so that every throughput request
    generates exactly `--tokens` (a story that ends early would leave its batch emptier)."""
    from llama_cpp import Llama

    vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)
    ids = {vocab.token_eos()}
    for text in ("<|im_end|>", "<|endoftext|>", "<|end|>", "<|eot_id|>"):
        tokens = vocab.tokenize(text.encode(), add_bos=False, special=True)
        if len(tokens) == 1:
            ids.add(tokens[0])
    return {str(t): -100.0 for t in sorted(ids) if t >= 0}


def build_backend(path: Path, model_id: str, args: argparse.Namespace) -> EmbeddedBackend:
    kwargs: dict[str, Any] = {"model_id": model_id, "n_threads": args.threads, "n_ctx": args.ctx}
    if "sequences" in inspect.signature(EmbeddedBackend).parameters:
        kwargs["sequences"] = args.sequences
    log.info("EmbeddedBackend(%s, %s)", path, kwargs)
    return EmbeddedBackend(path, **kwargs)


# ---- 1. aggregate decode throughput -----------------------------------------------------------


async def measure_tps(
    backend: EmbeddedBackend, model_id: str, args: argparse.Namespace
) -> list[dict[str, Any]]:
    t0 = time.perf_counter()
    await backend.complete(model_id, story(0), Sampling(max_tokens=8, temperature=0.7, seed=0))
    log.info("warm-up: %.2f s", time.perf_counter() - t0)
    rows = []
    for c in args.levels:

        async def one(i: int) -> tuple[int, int, float]:
            sampling = Sampling(
                max_tokens=args.tokens,
                temperature=0.7,
                seed=args.seed + i,
                extra={"logit_bias": args.no_end},
            )
            start = time.perf_counter()
            [done] = await backend.complete(model_id, story(i), sampling, n=1)
            elapsed = time.perf_counter() - start
            return done.usage.prompt_tokens, done.usage.completion_tokens, elapsed

        start = time.perf_counter()
        out = await asyncio.gather(*(one(i) for i in range(c)))
        wall = time.perf_counter() - start
        completion = sum(o[1] for o in out)
        row = {"concurrency": c, "wall_s": round(wall, 3), "completion_tokens": completion,
               "tokens_per_s": round(completion / wall, 2),
               "prompt_tokens": [o[0] for o in out],
               "completion_tokens_each": [o[1] for o in out],
               "latency_s": [round(o[2], 3) for o in out]}  # fmt: skip
        log.info("tps %s", row)
        rows.append(row)
    return rows


# ---- 2. sc against one call, 3. TTFT: through the server --------------------------------------


async def measure_sc(base: str, model_id: str, args: argparse.Namespace) -> dict[str, Any]:
    """One call, then `sc` with 5 samples, `--repeats` times in turn; the ratio of the medians
    (a single run's wall time varies by 10-20% here)."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base, api_key="unused", timeout=600, max_retries=0)
    messages: Any = [{"role": "user", "content": SC_PROMPT}]
    out: dict[str, Any] = {"prompt": SC_PROMPT, "max_tokens": 200, "samples": 5}
    runs: dict[str, list[dict[str, Any]]] = {"single": [], "sc": []}
    for repeat in range(args.repeats):
        for name, model, extra in (
            ("single", model_id, None),
            ("sc", f"sc-{model_id}", {"ponder": {"sc": {"samples": 5}}}),
        ):
            start = time.perf_counter()
            response = await client.chat.completions.create(
                model=model, messages=messages, max_tokens=200, temperature=0.7,
                seed=args.seed + repeat, extra_body=extra,
            )  # fmt: skip
            wall = time.perf_counter() - start
            usage = response.usage
            run = {"wall_s": round(wall, 3),
                   "prompt_tokens": usage.prompt_tokens if usage else None,
                   "completion_tokens": usage.completion_tokens if usage else None}  # fmt: skip
            log.info("%s: %s", name, run)
            runs[name].append(run)
    await client.close()
    for name, each in runs.items():
        tokens = [r["completion_tokens"] for r in each if r["completion_tokens"] is not None]
        out[name] = {
            "wall_s": round(statistics.median(r["wall_s"] for r in each), 3),
            "completion_tokens": round(statistics.median(tokens)) if tokens else None,
            "runs": each,
        }
    out["ratio"] = round(out["sc"]["wall_s"] / out["single"]["wall_s"], 2)
    if out["sc"]["completion_tokens"] is not None:
        out["sc_tokens_per_sample"] = round(out["sc"]["completion_tokens"] / 5, 1)
    return out


async def measure_ttft(base: str, model_id: str, args: argparse.Namespace) -> dict[str, Any]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base, api_key="unused", timeout=600, max_retries=0)

    async def one(i: int) -> dict[str, Any]:
        start = time.perf_counter()
        first: float | None = None
        tokens = None
        messages: Any = [{"role": "user", "content": story(i)[0].content}]
        stream = await client.chat.completions.create(
            model=model_id, messages=messages,
            max_tokens=args.tokens, temperature=0.7, seed=args.seed + i, stream=True,
            stream_options={"include_usage": True}, logit_bias=args.no_end,
        )  # fmt: skip
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - start
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        total = time.perf_counter() - start
        return {"ttft_s": round(first if first is not None else total, 3),
                "total_s": round(total, 3), "completion_tokens": tokens}  # fmt: skip

    start = time.perf_counter()
    each = await asyncio.gather(*(one(i) for i in range(8)))
    wall = time.perf_counter() - start
    await client.close()
    ttft = [e["ttft_s"] for e in each]
    out = {"concurrency": 8, "wall_s": round(wall, 3),
           "ttft_p50_s": round(statistics.median(ttft), 3), "ttft_max_s": max(ttft),
           "ttft_mean_s": round(statistics.fmean(ttft), 3),
           "requests": each}  # fmt: skip
    log.info("ttft %s", {k: v for k, v in out.items() if k != "requests"})
    return out


# ---- 4. the prefix cache: a long shared system prompt -----------------------------------------

PREFIX_SYSTEM = (
    "You are a careful assistant for a bakery. Answer questions about orders, opening hours, "
    "ingredients and allergies. Be brief and exact; when unsure, say so. " * 12
)
PREFIX_QUESTIONS = [
    "When do you open on Sundays?",
    "Is the rye bread free of nuts?",
    "Can I order a cake for 20 people?",
    "Do you deliver to the station?",
    "What is in the croissants?",
]


async def measure_prefix(backend: EmbeddedBackend, model_id: str) -> dict[str, Any]:
    """Time to the first token of requests sharing a long system prompt, each after the first
    one: with the prefix cache, and with it emptied before every request."""
    if not hasattr(backend, "clear_cache"):
        return {}
    out: dict[str, Any] = {}
    for mode in ("cache", "no_cache"):
        backend.clear_cache()
        times, evaluated, reused = [], 0, 0
        for i, question in enumerate(PREFIX_QUESTIONS):
            if mode == "no_cache":
                backend.clear_cache()
            before = backend.engine_stats()
            messages = [Message("system", PREFIX_SYSTEM), Message("user", question)]
            start = time.perf_counter()
            await backend.complete(model_id, messages, Sampling(max_tokens=1, temperature=0))
            elapsed = time.perf_counter() - start
            after = backend.engine_stats()
            if i == 0 or before is None or after is None:
                continue  # the first request fills the cache in both modes
            times.append(elapsed)
            evaluated += after.prompt_tokens - before.prompt_tokens
            reused += after.prompt_tokens_reused - before.prompt_tokens_reused
        out[mode] = {
            "requests": len(times),
            "mean_first_token_s": round(statistics.fmean(times), 3),
            "prompt_tokens_evaluated": evaluated,
            "prompt_tokens_reused": reused,
        }
        log.info("prefix %s: %s", mode, out[mode])
    out["speedup"] = round(
        out["no_cache"]["mean_first_token_s"] / out["cache"]["mean_first_token_s"], 2
    )
    return out


# ---- report --------------------------------------------------------------------------------------


def table(report: dict[str, Any]) -> str:
    threads = report["settings"]["threads"]
    lines = [f"## {report['model_id']} ({report['label']}, {threads} threads)"]
    if rows := report.get("tps"):
        lines += ["", "| concurrency | tokens/s | completion tokens | wall s | prompt tokens |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for r in rows:
            prompts = ", ".join(map(str, r["prompt_tokens"]))
            lines.append(f"| {r['concurrency']} | {r['tokens_per_s']:.1f} | "
                         f"{r['completion_tokens']} | {r['wall_s']:.1f} | {prompts} |")  # fmt: skip
    if sc := report.get("sc"):
        one, five = sc["single"], sc["sc"]
        lines += ["", "| call | wall s | completion tokens |", "|---|---|---|",
                  f"| single | {one['wall_s']:.1f} | {one['completion_tokens']} |",
                  f"| sc (5 samples) | {five['wall_s']:.1f} | {five['completion_tokens']} "
                  f"({sc.get('sc_tokens_per_sample')} per sample) |",
                  f"| ratio sc/single (medians of {len(one.get('runs', [1]))}) | "
                  f"{sc['ratio']:.2f} | |"]  # fmt: skip
    if tt := report.get("ttft"):
        lines += ["", "| streamed requests | TTFT p50 s | TTFT max s | TTFT mean s | wall s |",
                  "|---|---|---|---|---|",
                  f"| 8 | {tt['ttft_p50_s']:.2f} | {tt['ttft_max_s']:.2f} | "
                  f"{tt['ttft_mean_s']:.2f} | {tt['wall_s']:.1f} |"]  # fmt: skip
    if px := report.get("prefix"):
        on, off = px["cache"], px["no_cache"]
        lines += ["", "| shared system prompt | first token s | prompt tokens evaluated | reused |",
                  "|---|---|---|---|",
                  f"| prefix cache | {on['mean_first_token_s']:.2f} | "
                  f"{on['prompt_tokens_evaluated']} | {on['prompt_tokens_reused']} |",
                  f"| emptied before each | {off['mean_first_token_s']:.2f} | "
                  f"{off['prompt_tokens_evaluated']} | {off['prompt_tokens_reused']} |",
                  f"| speedup | {px['speedup']:.1f}x | | |"]  # fmt: skip
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="The embedded engine on a real model.")
    p.add_argument("--model", required=True, help="a GGUF path, or a catalog id")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--sequences", type=int, default=8, help="passed where the backend takes it")
    p.add_argument("--ctx", type=int, default=4096)
    p.add_argument("--tokens", type=int, default=96, help="max_tokens of the tps and TTFT calls")
    p.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8])
    parts = {"tps", "sc", "ttft", "prefix"}
    p.add_argument("--only", type=lambda s: set(s.split(",")), default=parts)
    p.add_argument("--label", default="before")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--repeats", type=int, default=3, help="runs of the sc comparison (median)")
    args = p.parse_args(argv)
    if unknown := args.only - parts:
        p.error(f"--only: unknown part(s) {sorted(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for name in ("httpx", "httpx2"):
        logging.getLogger(name).setLevel(logging.WARNING)
    path, model_id = resolve_model(args.model)
    args.no_end = end_tokens(path)  # honoured by the batched engine; the old one ignored it
    backend = build_backend(path, model_id, args)
    report: dict[str, Any] = {
        "benchmark": "engine", "label": args.label, "model_id": model_id, "model_path": str(path),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0], "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "ponder": str(Path(inspect.getfile(EmbeddedBackend))),
        "capabilities": str(backend.capabilities),
        "settings": {k: sorted(v) if isinstance(v, set) else v for k, v in vars(args).items()},
    }  # fmt: skip
    try:
        if "tps" in args.only:
            report["tps"] = asyncio.run(measure_tps(backend, model_id, args))
        if "prefix" in args.only:
            report["prefix"] = asyncio.run(measure_prefix(backend, model_id))
        if args.only & {"sc", "ttft"}:
            with running_server(create_app(Settings(), backend=backend)) as base:
                if "sc" in args.only:
                    report["sc"] = asyncio.run(measure_sc(base, model_id, args))
                if "ttft" in args.only:
                    report["ttft"] = asyncio.run(measure_ttft(base, model_id, args))
    finally:
        asyncio.run(backend.aclose())
    print(table(report))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"engine-{model_id}-{args.label}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
