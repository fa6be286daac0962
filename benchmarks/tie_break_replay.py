"""Replays `sc`'s greedy tie-break on recorded runs: no model is run.

For every item of a run directory that has both `none` and `sc` (run with `--trace`), the
recorded tally of `sc`'s samples is decided as `tie_break: greedy` would decide it, with `none`'s
recorded answer (temperature 0, the same request) standing in for the extra greedy call: it
wins if its answer is among the answers tied for the most votes, or if no answer had two
votes. Prints, per run, the accuracy of `none`, of `sc` as recorded (`tie_break: first`) and of
the replay, each replay's paired difference from both, and the greedy calls and tokens the
ties would have cost (the `none` call's tokens on those items).

    .venv/bin/python benchmarks/tie_break_replay.py benchmarks/runs/gsm8k-1.5b ...
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

from arms import Arm, accuracy, compare, load_arm, recorded_vote, traces


@dataclass(frozen=True)
class Replay:
    none: Arm
    sc_first: Arm
    """`sc` as recorded."""
    sc_greedy: Arm
    """`sc` with its ties decided by `none`'s answer."""
    ties: int
    greedy_output_tokens: int
    """What the ties' greedy calls would have generated (`none`'s output on those items)."""


def replay(run: Path) -> Replay:
    none, sc = load_arm(run, "none"), load_arm(run, "sc")
    sc_first: Arm = {}
    sc_greedy: Arm = {}
    ties = greedy_tokens = 0
    for t in traces(run, "sc"):
        item_id = t["item_id"]
        if item_id not in none.keys() & sc.keys():
            continue
        vote = recorded_vote(t)
        # the answers are extract_answer's keys, as the vote compares them
        tie = len(vote.leaders) > 1
        decides = tie and vote.decided_by(none[item_id].extracted)
        if tie:
            ties += 1
            greedy_tokens += none[item_id].output_tokens
        sc_first[item_id] = sc[item_id]
        sc_greedy[item_id] = (
            replace(sc[item_id], correct=none[item_id].correct) if decides else sc[item_id]
        )
    shared_none = {i: none[i] for i in sc_first}
    return Replay(shared_none, sc_first, sc_greedy, ties, greedy_tokens)


def main(argv: list[str]) -> None:
    for run in argv:
        r = replay(Path(run))
        n = len(r.sc_first)
        print(f"{run}: {n} items, {r.ties} ties")
        for name, arm in (
            ("none", r.none),
            ("sc_first", r.sc_first),
            ("sc_greedy_replay", r.sc_greedy),
        ):
            acc, lo, hi = accuracy(arm)
            print(f"  {name:<17} {acc:6.1%} [{lo:.1%}, {hi:.1%}]")
        for name, base in (("replay_minus_none", r.none), ("replay_minus_sc_first", r.sc_first)):
            c = compare(base, r.sc_greedy)
            counts = f"only the other right {c.only_a}, only the replay right {c.only_b}"
            print(f"  {name:<22} {c.span} ({counts})")
        print(f"  greedy tokens per item {r.greedy_output_tokens / n:.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
