"""Rating first or agreement first: how `bon`, `cepo` and `pvg` would have chosen in the other
order.

Each of them ends by choosing one of its candidates with `showing.choose`, whose trace step
keeps every candidate's final answer, whether it was cut off at `max_tokens`, its rating, and
the choice. `bon` puts the answer most candidates share before the rating (its judge alone
chose worse than one sample on the 1.5B); `cepo` and `pvg` put the rating first, as their
sources do. This replays each traced choice in both orders with `showing.ranked_best`, with no
model, so both orders are compared on the same candidates and the same items: each order's
accuracy, the one against the other, and each against `none`, with Newcombe's paired 95%
interval. Tokens and calls are the run's own (both orders cost the same). It also checks that
the replay in the approach's own order makes the choice the run made.

    .venv/bin/python benchmarks/selection_replay.py [RUN ...]
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from arms import LEGEND, RUNS, Arm, accuracy, load_arm, paired, row, runs_parser, traces
from ponder.answers import same_answer
from ponder.strategies.showing import ranked_best

DEFAULT_RUNS = ("gsm8k-1.5b-fixes5", "gsm8k-0.5b-more")
STEPS = {"bon": "scores", "cepo": "scores", "pvg": "best"}
"""Each approach's `choose` step."""
AGREEMENT_FIRST = {"bon": True, "cepo": False, "pvg": False}
"""The order each approach chooses in."""


def choices(run: Path, approach: str) -> dict[str, tuple[dict[str, Any], str]]:
    """Each traced item's `choose` step and expected answer, by item id (items whose trace
    keeps no candidate answers, from before `choose`, are left out)."""
    out = {}
    for t in traces(run, approach):
        steps = [s for s in t["trace"] if s["step"] == STEPS[approach] and "answers" in s]
        if steps:
            out[t["item_id"]] = (steps[-1], str(t["expected"]))
    return out


def again(step: dict[str, Any], agreement_first: bool) -> int:
    """The candidate a traced `choose` step would choose in the given order."""
    answers = step["answers"]
    cut = [i in step["cut_off"] for i in range(1, len(answers) + 1)]
    return ranked_best(answers, cut, step["scores"], agreement_first=agreement_first)


def replayed(arm: Arm, found: dict[str, tuple[dict[str, Any], str]], first: bool) -> Arm:
    """`arm`'s items with the choice made again, agreement first or rating first."""
    out = {}
    for item, (step, expected) in found.items():
        chosen = step["answers"][again(step, first)]
        out[item] = replace(arm[item], correct=same_answer(chosen, expected), extracted=chosen)
    return out


def main() -> None:
    parser = runs_parser(__doc__, DEFAULT_RUNS)
    args = parser.parse_args()
    header = [
        "Run",
        "Approach",
        "Items",
        "Orders differ",
        "Own order replays the choice",
        "Rating first",
        "Agreement first",
        "Agreement against rating",
        "Rating first against none",
        "Agreement first against none",
    ]
    print(row(header))
    print(row(["---", "---"] + ["---:"] * 3 + ["---"] * 5))
    for name in args.runs:
        run = RUNS / name
        none = load_arm(run, "none")
        for approach in STEPS:
            arm = load_arm(run, approach)
            found = {k: v for k, v in choices(run, approach).items() if k in arm}
            if not found:
                continue
            rating, agreement = replayed(arm, found, False), replayed(arm, found, True)
            own = AGREEMENT_FIRST[approach]
            recorded = sum(again(step, own) == step["best"] for step, _ in found.values())
            differ = sum(rating[i].extracted != agreement[i].extracted for i in rating)
            cells = [
                f"`{name}`",
                approach,
                str(len(rating)),
                str(differ),
                f"{recorded}/{len(found)}",
                "{:.1%} [{:.1%}, {:.1%}]".format(*accuracy(rating)),
                "{:.1%} [{:.1%}, {:.1%}]".format(*accuracy(agreement)),
                paired(rating, agreement),
                paired(none, rating) if none else "",
                paired(none, agreement) if none else "",
            ]
            print(row(cells))
    print(LEGEND)


if __name__ == "__main__":
    main()
