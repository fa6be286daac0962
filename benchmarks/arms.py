"""Arms of a comparison read from bench run directories: what `standings.py`,
`confidence_report.py` and the replays share (`traces` reads their requests' traces). An arm is
one approach's evaluated items in one run directory; two arms are compared item by item on the
items both answered, with Newcombe's paired 95% interval, as the bench's own report compares an
approach with `none`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

from ponder.answers import Vote, majority_vote
from ponder.intervals import paired_difference_interval, wilson

RUNS = Path(__file__).parent / "runs"
"""Where the bench's run directories are kept."""

LEGEND = "\n(a/b): items only the first arm got right / only the second; differences in points."
"""What the "(a/b)" after a paired difference means, printed under a table of them."""


def runs_parser(doc: str, default: Sequence[str]) -> argparse.ArgumentParser:
    """A command line of run directories' names under `RUNS` (`default` when none is given),
    described by the first paragraph of the script's `doc`."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", default=default, help="run directories' names")
    return parser


@dataclass(frozen=True)
class Item:
    correct: bool
    tokens: int
    """Prompt and output tokens, as the bench counts them."""
    output_tokens: int
    calls: int
    extracted: str | None
    """The answer the bench read from the reply (a key as `extract_answer` gives it)."""


Arm = dict[str, Item]
"""An arm's items by item id."""


def load_arm(run: Path, approach: str) -> Arm:
    """`approach`'s evaluated items in `run` (none when the run or the approach is missing);
    items that failed with an error are left out, as the bench's report leaves them out."""
    path = run / "items.jsonl"
    if not path.exists():
        return {}
    items = {}
    for line in path.open():
        r = json.loads(line)
        if r["approach"] != approach or r.get("phase", "eval") != "eval" or r.get("error"):
            continue
        prompt, output = int(r["prompt_tokens"]), int(r["completion_tokens"])
        items[r["item_id"]] = Item(
            bool(r["correct"]), prompt + output, output, r["backend_calls"], r["extracted"]
        )
    return items


def traces(run: Path, approach: str) -> Iterator[dict[str, Any]]:
    """`approach`'s evaluated requests' traces in `run` (none where the run kept none)."""
    path = run / "traces.jsonl"
    if not path.exists():
        return
    for line in path.open():
        t = json.loads(line)
        if t["approach"] == approach and t.get("phase", "eval") == "eval":
            yield t


def recorded_answers(trace: dict[str, Any]) -> list[str | None]:
    """The answers of an `sc` request's samples, from its traced vote: each answer as often as
    it was voted, in the order first given, then None for each sample cut off before one."""
    (vote,) = [s for s in trace["trace"] if s["step"] == "vote"]
    answers: list[str | None] = [a for a, c in vote["tally"].items() for _ in range(c)]
    return answers + [None] * (vote["samples"] - len(answers))


def recorded_vote(trace: dict[str, Any]) -> Vote:
    """An `sc` request's vote, rebuilt from its trace."""
    return majority_vote(recorded_answers(trace))


@dataclass(frozen=True)
class Comparison:
    items: int
    difference: float
    """b - a, in points."""
    low: float
    high: float
    only_a: int
    only_b: int
    token_share: float
    """b's tokens over a's, on the shared items."""
    output_share: float

    @property
    def span(self) -> str:
        """The difference and its interval, in points: "+3.3 [-12.0, +18.3]"."""
        return f"{self.difference:+.1f} [{self.low:+.1f}, {self.high:+.1f}]"

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return "helps"
        if self.high < 0:
            return "hurts"
        return "cannot be told apart"


def compare(a: Arm, b: Arm) -> Comparison:
    """b against a, on the items both answered."""
    shared = sorted(a.keys() & b.keys())
    both = sum(a[i].correct and b[i].correct for i in shared)
    only_a = sum(a[i].correct and not b[i].correct for i in shared)
    only_b = sum(b[i].correct and not a[i].correct for i in shared)
    neither = len(shared) - both - only_a - only_b
    low, high = paired_difference_interval(both, only_a, only_b, neither)
    n = max(len(shared), 1)
    tokens_a = sum(a[i].tokens for i in shared) or 1
    output_a = sum(a[i].output_tokens for i in shared) or 1
    return Comparison(
        items=len(shared),
        difference=(only_b - only_a) / n * 100,
        low=low * 100,
        high=high * 100,
        only_a=only_a,
        only_b=only_b,
        token_share=sum(b[i].tokens for i in shared) / tokens_a,
        output_share=sum(b[i].output_tokens for i in shared) / output_a,
    )


def paired(a: Arm, b: Arm) -> str:
    """b against a: the difference, its interval, and (only a right/only b right)."""
    c = compare(a, b)
    return f"{c.span} ({c.only_a}/{c.only_b})"


def accuracy(arm: Arm) -> tuple[float, float, float]:
    """Accuracy and its Wilson 95% interval, as fractions."""
    right = sum(i.correct for i in arm.values())
    low, high = wilson(right, len(arm))
    return right / len(arm), low, high


def summary_cells(arm: Arm) -> list[str]:
    """Items, accuracy (95% CI), mean tokens, mean output tokens, mean calls."""
    acc, low, high = accuracy(arm)
    rows = list(arm.values())
    return [
        str(len(rows)),
        f"{acc:.1%} [{low:.1%}, {high:.1%}]",
        f"{fmean(r.tokens for r in rows):.0f}",
        f"{fmean(r.output_tokens for r in rows):.0f}",
        f"{fmean(r.calls for r in rows):.2f}",
    ]


def row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def pick_against_vote(none: Arm, picks: Arm, voted: Arm, pick_label: str, vote_label: str) -> str:
    """A Markdown table of a strategy's own pick and a vote replayed over its candidates, each
    against `none`, then the vote against the pick."""
    lines = [
        row(["Choice", "Accuracy (95% CI)", "Against none (paired 95% CI)"]),
        row(["---", "---", "---"]),
    ]
    for label, chosen in ((pick_label, picks), (vote_label, voted)):
        cells = "{:.1%} [{:.1%}, {:.1%}]".format(*accuracy(chosen))
        lines.append(row([label, cells, paired(none, chosen)]))
    lines.append(f"\nthe vote against the pick: {paired(picks, voted)}")
    return "\n".join(lines)
