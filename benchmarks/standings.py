"""Where each approach stands on GSM8K with Qwen2.5-Coder 1.5B: its latest measurement (after
the fixes made so far), each against `none` on the same items, in one table and one
accuracy-against-tokens plot. The runs are those `strategies.sh` made; `LATEST` says which run
holds each approach's latest measurement, and moves as new rounds land.

    .venv/bin/python benchmarks/standings.py            # table to stdout, plot to runs/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from arms import Arm, accuracy, compare, load_arm, row, summary_cells

# approach -> the run directory (under runs/) with its latest measurement
LATEST = {
    "none": "gsm8k-1.5b",
    "sc": "gsm8k-1.5b",
    "spl": "gsm8k-1.5b",
    "re2": "gsm8k-1.5b",
    "bon": "gsm8k-1.5b",
    "tot": "gsm8k-1.5b",
    "cot_reflection": "gsm8k-1.5b-fixes",
    "react": "gsm8k-1.5b-fixes2",
    "refine": "gsm8k-1.5b-fixes3",
    "moa": "gsm8k-1.5b-fixes3",
}


def load(runs: Path) -> dict[str, tuple[str, Arm]]:
    arms = {a: (run, load_arm(runs / run, a)) for a, run in LATEST.items()}
    return {a: (run, arm) for a, (run, arm) in arms.items() if arm}


def render(arms: dict[str, tuple[str, Arm]]) -> str:
    none = arms["none"][1]
    lines = [
        "| Approach | Run | Items | Accuracy (95% CI) | Mean tokens | Mean output tokens "
        "| Mean calls | Against none (paired 95% CI) | Verdict |",
        "|---|---|---:|---|---:|---:|---:|---|---|",
    ]
    for approach, (run, arm) in arms.items():
        if approach == "none":
            versus, verdict = "", ""
        else:
            c = compare(none, arm)
            versus = f"{c.difference:+.1f} [{c.low:+.1f}, {c.high:+.1f}] on {c.items}"
            verdict = c.verdict
        lines.append(row([approach, f"`{run}`", *summary_cells(arm), versus, verdict]))
    return "\n".join(lines) + "\n"


def plot(arms: dict[str, tuple[str, Arm]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for approach, (_, arm) in arms.items():
        acc, low, high = accuracy(arm)
        tokens = sum(i.tokens for i in arm.values()) / len(arm)
        errors = [[(acc - low) * 100], [(high - acc) * 100]]
        axes.errorbar([tokens], [acc * 100], yerr=errors, fmt="o", capsize=4)
        label = f"{approach} ({len(arm)})"
        axes.annotate(label, (tokens, acc * 100), textcoords="offset points", xytext=(6, 6))
    axes.set_xlabel("Mean tokens per item (prompt and output, every call)")
    axes.set_ylabel("Accuracy (%), Wilson 95% CI")
    axes.set_title("GSM8K, Qwen2.5-Coder 1.5B: each approach's latest run (items in brackets)")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, default=Path(__file__).parent / "runs")
    p.add_argument("--plot", type=Path, help="default: RUNS/standings-1.5b.png")
    args = p.parse_args()
    arms = load(args.runs)
    print(render(arms), end="")
    plot(arms, args.plot or args.runs / "standings-1.5b.png")


if __name__ == "__main__":
    main()
