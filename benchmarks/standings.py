"""Where each approach stands on GSM8K with Qwen2.5-Coder 1.5B: its latest complete
measurement (after the fixes made so far), each against `none` on the same items, in one table
and one accuracy-against-tokens plot. The runs are those `strategies.sh` and `confidence.sh`
made; `LATEST` lists, for each approach, the runs that measure it, newest first: the first that
holds all its items is shown, so a round still running leaves the one before it in place.

    .venv/bin/python benchmarks/standings.py            # table to stdout, plot to runs/
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NamedTuple

from arms import Arm, accuracy, compare, load_arm, row, summary_cells


class Standing(NamedTuple):
    label: str
    approach: str
    items: int
    """How many items a complete measurement has."""
    runs: tuple[str, ...]
    """The run directories (under runs/) that measure it, newest first."""


LATEST = [
    Standing("none", "none", 120, ("gsm8k-1.5b",)),
    Standing("sc", "sc", 120, ("gsm8k-1.5b",)),
    # spl300 tests on items 301-420 against its own `none`: its own section, not this table
    Standing("spl", "spl", 120, ("gsm8k-1.5b-spl2", "gsm8k-1.5b")),
    Standing("re2", "re2", 50, ("gsm8k-1.5b",)),
    Standing("bon", "bon", 50, ("gsm8k-1.5b-fixes5", "gsm8k-1.5b-fixes4", "gsm8k-1.5b")),
    Standing("tot", "tot", 50, ("gsm8k-1.5b-fixes5", "gsm8k-1.5b-fixes4", "gsm8k-1.5b")),
    Standing("cot_reflection", "cot_reflection", 50, ("gsm8k-1.5b-fixes4", "gsm8k-1.5b-fixes")),
    Standing("react", "react", 50, ("gsm8k-1.5b-fixes5", "gsm8k-1.5b-fixes4", "gsm8k-1.5b-fixes2")),
    Standing(
        "refine", "refine", 50, ("gsm8k-1.5b-fixes5", "gsm8k-1.5b-fixes4", "gsm8k-1.5b-fixes3")
    ),
    Standing("moa", "moa", 50, ("gsm8k-1.5b-fixes5", "gsm8k-1.5b-fixes4", "gsm8k-1.5b-fixes3")),
    # the confidence methods, on items 101-160
    Standing("sc, 8 samples", "sc", 60, ("confidence-1.5b-sc8",)),
    Standing("adaptive sc, at most 8", "sc", 60, ("confidence-1.5b-adaptive",)),
    Standing("deepconf", "deepconf", 60, ("confidence-1.5b",)),
    Standing("cot_decoding", "cot_decoding", 60, ("confidence-1.5b",)),
    # the approaches added for drop-in model names, on items 101-130
    *(
        Standing(a, a, 30, ("gsm8k-1.5b-more",))
        for a in (
            "majority_voting",
            "leap",
            "rto",
            "genselect",
            "deepthink",
            "mars",
            "plansearch",
            "mcts",
            "coc",
            "z3",
        )
    ),
]


def load(runs: Path) -> dict[str, tuple[str, Arm]]:
    """Each approach's latest complete measurement, by label: its run and its items (approaches
    with none yet are left out)."""
    found = {}
    for standing in LATEST:
        for run in standing.runs:
            arm = load_arm(runs / run, standing.approach)
            if len(arm) >= standing.items:
                found[standing.label] = (run, arm)
                break
    return found


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
            versus = f"{c.span} on {c.items}"
            verdict = c.verdict
        lines.append(row([approach, f"`{run}`", *summary_cells(arm), versus, verdict]))
    return "\n".join(lines) + "\n"


def plot(arms: dict[str, tuple[str, Arm]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    colours = plt.get_cmap("tab20").colors  # one each for up to 20 approaches
    for n, (approach, (_, arm)) in enumerate(arms.items()):
        acc, low, high = accuracy(arm)
        tokens = sum(i.tokens for i in arm.values()) / len(arm)
        errors = [[(acc - low) * 100], [(high - acc) * 100]]
        colour = colours[n % len(colours)]
        axes.errorbar([tokens], [acc * 100], yerr=errors, fmt="o", capsize=4, color=colour)
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
