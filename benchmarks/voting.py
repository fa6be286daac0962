"""When does voting pay? Single-sample accuracy against temperature, and majority-vote accuracy
against the number of samples, on GSM8K with the embedded model.

For each temperature, every item is asked once with `n = --samples` (one engine call: the
samples share their prompt's prefill) and each sample's answer, finish reason and tokens are
kept in `samples.jsonl` (resumable: a rerun asks only what is missing). The report then needs
no more model time: for k = 1..samples, the accuracy of a plurality vote over k samples is
the exact average over every k-subset of an item's samples (ties go to the answer seen first,
as `sc` breaks them), with samples cut off at `max_tokens` not voting, as `sc` does. It is
compared, item by item, with the greedy answer (temperature 0) of a `ponder bench` run on
the same items (`--greedy`, its `items.jsonl`), with a paired bootstrap interval.

    .venv/bin/python benchmarks/voting.py --model qwen2.5-coder-1.5b --skip 100 --limit 40 \\
        --temperatures 0.3,0.7 --greedy benchmarks/runs/gsm8k-1.5b/items.jsonl \\
        --out benchmarks/runs/voting-1.5b
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

from ponder import catalog
from ponder.answers import extract_answer
from ponder.bench.suites import get_suite
from ponder.bench.types import Item
from ponder.types import Message, Sampling

SAMPLES_FILE = "samples.jsonl"
REPORT_FILE = "voting.md"
REPORT_JSON = "voting.json"
BOOTSTRAP = 2000


# ---- asking -----------------------------------------------------------------------------------


def load_items(path: Path, skip: int, limit: int) -> list[Item]:
    return get_suite("gsm8k").load(path, skip + limit, 0)[skip:]


def done_keys(path: Path) -> set[tuple[float, str]]:
    if not path.exists():
        return set()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(row["temperature"], row["item_id"]) for row in rows}


async def ask_all(args: argparse.Namespace, items: Sequence[Item]) -> None:
    from ponder.backends.llamacpp import EmbeddedBackend

    suite = get_suite("gsm8k")
    resolved = catalog.resolve(args.model)
    out = args.out / SAMPLES_FILE
    done = done_keys(out)
    todo = [(t, item) for t in args.temperatures for item in items if (t, item.id) not in done]
    if not todo:
        return
    backend = EmbeddedBackend(resolved.path, model_id=resolved.model_id)
    gate = asyncio.Semaphore(args.concurrency)
    try:
        with out.open("a", encoding="utf-8") as handle:

            async def one(temperature: float, item: Item) -> None:
                messages = [Message(m["role"], m["content"]) for m in suite.messages(item)]
                sampling = Sampling(
                    temperature=temperature, max_tokens=args.max_tokens, seed=args.seed
                )
                async with gate:
                    started = time.perf_counter()
                    choices = await backend.complete(
                        resolved.model_id, messages, sampling, n=args.samples
                    )
                    latency = time.perf_counter() - started
                row = {
                    "temperature": temperature,
                    "item_id": item.id,
                    "expected": item.expected,
                    "latency_s": round(latency, 2),
                    "prompt_tokens": sum(c.usage.prompt_tokens for c in choices),
                    "samples": [
                        {
                            "answer": extract_answer(c.content),
                            "correct": suite.score(item, c.content or "")[1],
                            "finish_reason": c.finish_reason,
                            "completion_tokens": c.usage.completion_tokens,
                        }
                        for c in choices
                    ],
                }
                handle.write(json.dumps(row) + "\n")
                handle.flush()
                right = sum(s["correct"] for s in row["samples"])
                print(f"T={temperature} {item.id}: {right}/{args.samples} right, {latency:.0f} s")

            async with asyncio.TaskGroup() as group:
                for temperature, item in todo:
                    group.create_task(one(temperature, item))
    finally:
        await backend.aclose()


# ---- the arithmetic of voting -----------------------------------------------------------------


def vote_accuracy(samples: Sequence[dict[str, Any]], k: int, cut_offs_vote: bool) -> float:
    """The chance that a plurality vote over k of these samples (every k-subset, equally
    likely, in drawn order) picks a right answer. A subset where no sample has an answer
    returns its first sample, scored as the client would get it."""
    wins = 0
    subsets = list(itertools.combinations(range(len(samples)), k))
    for subset in subsets:
        chosen = [samples[i] for i in subset]
        keys = [
            s["answer"] if cut_offs_vote or s["finish_reason"] != "length" else None for s in chosen
        ]
        tally = Counter(key for key in keys if key is not None)
        if not tally:
            wins += chosen[0]["correct"]
            continue
        winner = max(tally, key=lambda key: (tally[key], -keys.index(key)))
        wins += chosen[keys.index(winner)]["correct"]
    return wins / len(subsets)


def bootstrap(values: Sequence[float], seed: int = 0) -> tuple[float, float]:
    """A 95% percentile-bootstrap interval of the mean of `values` (resampling items)."""
    rng = random.Random(seed)
    means = sorted(fmean(rng.choices(values, k=len(values))) for _ in range(BOOTSTRAP))
    return means[int(0.025 * BOOTSTRAP)], means[int(0.975 * BOOTSTRAP) - 1]


def read_greedy(path: Path | None) -> dict[str, bool]:
    if path is None or not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {
        row["item_id"]: row["correct"]
        for row in rows
        if row["approach"] == "none" and row["phase"] == "eval"
    }


def report(args: argparse.Namespace, items: Sequence[Item]) -> dict[str, Any]:
    rows = [json.loads(line) for line in (args.out / SAMPLES_FILE).read_text().splitlines()]
    wanted = {item.id for item in items}
    greedy = read_greedy(args.greedy)
    result: dict[str, Any] = {"model": args.model, "samples": args.samples, "temperatures": []}
    for temperature in args.temperatures:
        mine = [r for r in rows if r["temperature"] == temperature and r["item_id"] in wanted]
        if not mine:
            continue
        paired = [r for r in mine if r["item_id"] in greedy]
        entry: dict[str, Any] = {
            "temperature": temperature,
            "items": len(mine),
            "mean_completion_tokens": fmean(
                s["completion_tokens"] for r in mine for s in r["samples"]
            ),
            "cut_off_share": fmean(
                s["finish_reason"] == "length" for r in mine for s in r["samples"]
            ),
            "greedy_items": len(paired),
            "greedy_accuracy": fmean(greedy[r["item_id"]] for r in paired) if paired else None,
            "k": [],
        }
        for k in range(1, args.samples + 1):
            voted = {
                r["item_id"]: vote_accuracy(r["samples"], k, cut_offs_vote=False) for r in mine
            }
            per_item = list(voted.values())
            old = [vote_accuracy(r["samples"], k, cut_offs_vote=True) for r in mine]
            low, high = bootstrap(per_item)
            row: dict[str, Any] = {
                "k": k,
                "accuracy": fmean(per_item),
                "ci_low": low,
                "ci_high": high,
                "accuracy_cut_offs_voting": fmean(old),
            }
            if paired:
                diffs = [voted[r["item_id"]] - greedy[r["item_id"]] for r in paired]
                row["vs_greedy"] = fmean(diffs)
                row["vs_greedy_ci"] = bootstrap(diffs)
            entry["k"].append(row)
        result["temperatures"].append(entry)
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# Voting on {result['model']}: accuracy against temperature and samples",
        "",
        "| T | items | k | vote accuracy (95% CI) | cut-offs voting | vs greedy (paired 95% CI) |",
        "|---|---:|---:|---|---:|---|",
    ]
    for entry in result["temperatures"]:
        for row in entry["k"]:
            vs = ""
            if "vs_greedy" in row:
                low, high = row["vs_greedy_ci"]
                vs = f"{row['vs_greedy'] * 100:+.1f} [{low * 100:+.1f}, {high * 100:+.1f}]"
            lines.append(
                f"| {entry['temperature']} | {entry['items']} | {row['k']} | "
                f"{row['accuracy'] * 100:.1f} [{row['ci_low'] * 100:.1f}, "
                f"{row['ci_high'] * 100:.1f}] | "
                f"{row['accuracy_cut_offs_voting'] * 100:.1f} | {vs} |"
            )
    lines.append("")
    for entry in result["temperatures"]:
        greedy = entry["greedy_accuracy"]
        lines.append(
            f"- T={entry['temperature']}: {entry['mean_completion_tokens']:.0f} tokens per "
            f"sample, {entry['cut_off_share'] * 100:.1f}% of samples cut off; greedy on the "
            f"same {entry['greedy_items']} items: "
            + (f"{greedy * 100:.1f}%" if greedy is not None else "not measured")
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--path", type=Path, default=Path("../shared/data/gsm8k/test.jsonl"))
    parser.add_argument("--skip", type=int, default=100, help="items to pass over first")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--temperatures", default="0.3,0.7")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--concurrency", type=int, default=1, help="items at once")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--greedy", type=Path, help="a bench run's items.jsonl with none")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/voting"))
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    args.temperatures = [float(t) for t in args.temperatures.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    items = load_items(args.path, args.skip, args.limit)
    if not args.report_only:
        asyncio.run(ask_all(args, items))
    result = report(args, items)
    (args.out / REPORT_JSON).write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (args.out / REPORT_FILE).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
