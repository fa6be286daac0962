"""The comparison `confidence.sh` is for: adaptive `sc` and `deepconf` against `sc` with 8
samples, and every approach against `none`, item by item on the items each pair shares.

The bench's own report compares each approach with `none` only; this one also compares with
`sc` at 8 samples (in its own run directory), and checks the goal: the same accuracy as `sc`
with 8 samples (a paired 95% interval of the difference that includes 0) at no more than 60%
of its tokens. Tokens are given both as the bench counts them (prompt and output) and as
output alone, since an approach that makes one call per trace sends the prompt each time.

    .venv/bin/python benchmarks/confidence_report.py [--runs benchmarks/runs] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean

from ponder.intervals import paired_difference_interval, wilson

# (label, run directory under --runs, approach in it)
ARMS = [
    ("none", "confidence-1.5b", "none"),
    ("sc, 8 samples", "confidence-1.5b-sc8", "sc"),
    ("adaptive sc, at most 8", "confidence-1.5b-adaptive", "sc"),
    ("deepconf, at most 8", "confidence-1.5b", "deepconf"),
    ("cot_decoding", "confidence-1.5b", "cot_decoding"),
]
BASELINE = "sc, 8 samples"
CHALLENGERS = ("adaptive sc, at most 8", "deepconf, at most 8")
TOKEN_SHARE = 0.6


@dataclass(frozen=True)
class Item:
    correct: bool
    tokens: int
    output_tokens: int
    calls: int


def load(runs: Path) -> dict[str, dict[str, Item]]:
    """Each arm's evaluated items by item id (arms not run yet are left out)."""
    arms: dict[str, dict[str, Item]] = {}
    for label, directory, approach in ARMS:
        path = runs / directory / "items.jsonl"
        if not path.exists():
            continue
        items = {}
        for line in path.open():
            r = json.loads(line)
            if r["approach"] != approach or r.get("phase", "eval") != "eval" or r.get("error"):
                continue
            tokens = int(r["prompt_tokens"]) + int(r["completion_tokens"])
            items[r["item_id"]] = Item(
                bool(r["correct"]), tokens, int(r["completion_tokens"]), int(r["backend_calls"])
            )
        if items:
            arms[label] = items
    return arms


def compare(a: dict[str, Item], b: dict[str, Item]) -> tuple[int, float, float, float]:
    """On the items both answered: (items, b - a in points, interval low, high)."""
    shared = sorted(a.keys() & b.keys())
    both = sum(a[i].correct and b[i].correct for i in shared)
    only_a = sum(a[i].correct and not b[i].correct for i in shared)
    only_b = sum(b[i].correct and not a[i].correct for i in shared)
    neither = len(shared) - both - only_a - only_b
    low, high = paired_difference_interval(both, only_a, only_b, neither)
    diff = (only_b - only_a) / len(shared) if shared else 0.0
    return len(shared), diff * 100, low * 100, high * 100


def render(arms: dict[str, dict[str, Item]]) -> str:
    lines = [
        "| Approach | Items | Accuracy (95% CI) | Mean tokens | Mean output tokens | Mean calls |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for label, items in arms.items():
        rows = list(items.values())
        right = sum(r.correct for r in rows)
        low, high = wilson(right, len(rows))
        lines.append(
            f"| {label} | {len(rows)} | {right / len(rows):.1%} [{low:.1%}, {high:.1%}] "
            f"| {fmean(r.tokens for r in rows):.0f} | {fmean(r.output_tokens for r in rows):.0f} "
            f"| {fmean(r.calls for r in rows):.2f} |"
        )
    lines += [
        "",
        "| Approach | Against | Items | Difference (paired 95% CI) | Tokens, share of the other's "
        "| Output tokens, share |",
        "|---|---|---:|---|---:|---:|",
    ]
    goals = []
    for label, items in arms.items():
        for other in ("none", BASELINE):
            if other == label or other not in arms or (other == BASELINE and label == "none"):
                continue
            base = arms[other]
            n, diff, low, high = compare(base, items)
            shared = base.keys() & items.keys()
            share = sum(items[i].tokens for i in shared) / sum(base[i].tokens for i in shared)
            out_share = sum(items[i].output_tokens for i in shared) / sum(
                base[i].output_tokens for i in shared
            )
            lines.append(
                f"| {label} | {other} | {n} | {diff:+.1f} [{low:+.1f}, {high:+.1f}] "
                f"| {share:.0%} | {out_share:.0%} |"
            )
            if other == BASELINE and label in CHALLENGERS:
                same = low <= 0 <= high
                cheap = share <= TOKEN_SHARE
                goals.append(
                    f"- {label}: accuracy {'within' if same else 'outside'} the interval of "
                    f"`sc` with 8 samples, at {share:.0%} of its tokens ({out_share:.0%} of its "
                    f"output tokens): goal {'met' if same and cheap else 'missed'}."
                )
    if goals:
        lines += [
            "",
            f"Goal: the same accuracy at no more than {TOKEN_SHARE:.0%} of the tokens.",
            *goals,
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, default=Path(__file__).parent / "runs")
    p.add_argument("--out", type=Path, help="also write the tables here")
    args = p.parse_args()
    text = render(load(args.runs))
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
