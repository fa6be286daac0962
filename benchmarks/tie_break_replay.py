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

import json
import sys
from pathlib import Path
from typing import Any

from ponder.intervals import paired_difference_interval, wilson


def replay(run: Path) -> dict[str, Any]:
    items = {}
    for line in (run / "items.jsonl").open():
        r = json.loads(line)
        items[(r["approach"], r["item_id"])] = r
    rows = []
    for line in (run / "traces.jsonl").open():
        t = json.loads(line)
        if t["approach"] != "sc" or t["phase"] != "eval":
            continue
        none, sc = items.get(("none", t["item_id"])), items.get(("sc", t["item_id"]))
        if none is None or sc is None:
            continue
        (vote,) = [s for s in t["trace"] if s["step"] == "vote"]
        tally: dict[str, int] = vote["tally"]
        top = max(tally.values(), default=0)
        leaders = [a for a, c in tally.items() if c == top]
        tie = len(leaders) > 1
        greedy = none["extracted"]
        # the answers are extract_answer's keys, as the vote compares them
        decides = tie and greedy is not None and (top == 1 or greedy in leaders)
        replayed = none["correct"] if decides else sc["correct"]
        rows.append((bool(none["correct"]), bool(sc["correct"]), bool(replayed), tie, none))
    n = len(rows)
    ties = [r for r in rows if r[3]]
    report: dict[str, Any] = {"run": str(run), "items": n, "ties": len(ties)}
    for name, k in (("none", 0), ("sc_first", 1), ("sc_greedy_replay", 2)):
        right = sum(r[k] for r in rows)
        report[name] = (right / n, wilson(right, n))
    for base, k in (("none", 0), ("sc_first", 1)):
        both = sum(r[k] and r[2] for r in rows)
        only_base = sum(r[k] and not r[2] for r in rows)
        only_replay = sum(r[2] and not r[k] for r in rows)
        neither = n - both - only_base - only_replay
        low, high = paired_difference_interval(both, only_base, only_replay, neither)
        diff = (only_replay - only_base) / n
        report[f"replay_minus_{base}"] = (diff, (low, high), only_base, only_replay)
    report["greedy_tokens_per_item"] = sum(r[4]["completion_tokens"] for r in ties) / n
    return report


def main(argv: list[str]) -> None:
    for run in argv:
        r = replay(Path(run))
        print(f"{r['run']}: {r['items']} items, {r['ties']} ties")
        for name in ("none", "sc_first", "sc_greedy_replay"):
            acc, (lo, hi) = r[name]
            print(f"  {name:<17} {acc:6.1%} [{lo:.1%}, {hi:.1%}]")
        for name in ("replay_minus_none", "replay_minus_sc_first"):
            diff, (low, high), only_base, only_replay = r[name]
            counts = f"only the other right {only_base}, only the replay right {only_replay}"
            print(
                f"  {name:<22} {diff * 100:+.1f} [{low * 100:+.1f}, {high * 100:+.1f}] ({counts})"
            )
        print(f"  greedy tokens per item {r['greedy_tokens_per_item']:.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
