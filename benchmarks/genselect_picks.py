"""How `genselect` picked: where the pick stood among the candidates, how often it was the
answer most candidates share, and whether that answer would have done better.

`genselect` samples candidates and has the model compare them and name one (`Selected: N`).
Its trace keeps every candidate and the pick, so this reads each candidate's final answer and
replays the choice as a plurality vote over the same candidates (a tie goes to the earliest,
as `majority_vote` decides), with no model. It prints the picks by position, the items where
the candidates disagreed and where some were right, and the pick and the vote against each
other and against `none` with Newcombe's paired 95% interval.

    .venv/bin/python benchmarks/genselect_picks.py [RUN ...]
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from arms import LEGEND, RUNS, Arm, load_arm, pick_against_vote, runs_parser, traces
from ponder.answers import extract_answer, majority_vote, same_answer

DEFAULT_RUNS = ("gsm8k-1.5b-more",)


def main() -> None:
    parser = runs_parser(__doc__, DEFAULT_RUNS)
    args = parser.parse_args()
    for name in args.runs:
        run = RUNS / name
        arm, none = load_arm(run, "genselect"), load_arm(run, "none")
        positions: Counter[str] = Counter()
        voted: Arm = {}
        disagreed = some_right = pick_is_vote = fallbacks = 0
        for t in traces(run, "genselect"):
            item = t["item_id"]
            if item not in arm:
                continue
            steps = {s["step"]: s for s in t["trace"]}
            answers = [extract_answer(c) for c in steps["candidates"]["candidates"]]
            picked = steps["selection"]
            fallbacks += bool(picked["fallback"])
            # where each pick stood in the order its selection was shown (traces before
            # `rotate` have no orders: the candidates' own)
            orders = picked.get("orders") or [list(range(1, len(answers) + 1))] * len(
                picked["picks"]
            )
            for pick, order in zip(picked["picks"], orders, strict=True):
                if pick is not None:
                    positions[f"{order.index(pick) + 1} of {len(answers)}"] += 1
            vote = majority_vote(answers).winner
            right = [same_answer(a, t["expected"]) for a in answers]
            disagreed += len(set(answers)) > 1
            some_right += any(right) and not all(right)
            pick_is_vote += same_answer(answers[picked["chosen"] - 1], vote)
            voted[item] = replace(
                arm[item], correct=same_answer(vote, t["expected"]), extracted=vote
            )
        picks = {k: v for k, v in arm.items() if k in voted}
        print(
            f"`{name}`: {len(voted)} items traced; the model named no valid candidate in "
            f"{fallbacks} (the fallback chose)"
        )
        print("picks by position: " + ", ".join(f"{k}: {v}" for k, v in sorted(positions.items())))
        print(
            f"candidates disagreed in {disagreed}, some right and some wrong in "
            f"{some_right}; the pick was the vote's answer in {pick_is_vote}\n"
        )
        print(
            pick_against_vote(none, picks, voted, "the model's pick", "a vote over the candidates")
        )
    print(LEGEND)


if __name__ == "__main__":
    main()
