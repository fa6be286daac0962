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
from pathlib import Path

from arms import Arm, compare, load_arm, row, summary_cells

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


def load(runs: Path) -> dict[str, Arm]:
    """Each arm's evaluated items (arms not run yet are left out)."""
    arms = {label: load_arm(runs / directory, approach) for label, directory, approach in ARMS}
    return {label: arm for label, arm in arms.items() if arm}


def render(arms: dict[str, Arm]) -> str:
    lines = [
        "| Approach | Items | Accuracy (95% CI) | Mean tokens | Mean output tokens | Mean calls |",
        "|---|---:|---|---:|---:|---:|",
        *(row([label, *summary_cells(arm)]) for label, arm in arms.items()),
        "",
        "| Approach | Against | Items | Difference (paired 95% CI) | Tokens, share of the other's "
        "| Output tokens, share |",
        "|---|---|---:|---|---:|---:|",
    ]
    goals = []
    for label, arm in arms.items():
        for other in ("none", BASELINE):
            if other == label or other not in arms or (other == BASELINE and label == "none"):
                continue
            c = compare(arms[other], arm)
            lines.append(
                row([label, other, str(c.items), c.span, f"{c.token_share:.0%}",
                     f"{c.output_share:.0%}"])
            )  # fmt: skip
            if other == BASELINE and label in CHALLENGERS:
                same = c.low <= 0 <= c.high
                met = same and c.token_share <= TOKEN_SHARE
                goals.append(
                    f"- {label}: accuracy {'within' if same else 'outside'} the interval of "
                    f"`sc` with 8 samples, at {c.token_share:.0%} of its tokens "
                    f"({c.output_share:.0%} of its output tokens): goal "
                    f"{'met' if met else 'missed'}."
                )
    if goals:
        goal = f"Goal: the same accuracy at no more than {TOKEN_SHARE:.0%} of the tokens."
        lines += ["", goal, *goals]
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
