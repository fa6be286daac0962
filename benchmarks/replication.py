"""How far `none` agrees with itself: the same greedy request, asked again in another run.

`refine`'s first call (its draft) is exactly `none`'s request: the client's conversation and
sampling (temperature 0, `max_tokens` 512). Its traced draft is therefore `none` asked a second
time, at another moment, beside other requests in the engine's batch. Where the two differ, the
only cause is the engine's arithmetic: llama.cpp's results for a token depend on what else is
in its batch (the kernels chosen for the batch's size, the order of their sums) and on whether
its prompt's cells came from the prefix cache, so a near tie between two tokens can fall either
way and the rest of the answer follows. No model is run.

For each run directory with traced `refine` drafts, prints the items, how many drafts differ
from `none`'s reply in text and in the answer read from it, the accuracy of each, and the
draft against `none` with Newcombe's paired 95% interval: the spread a comparison with `none`
shows for an approach that changes nothing.

    .venv/bin/python benchmarks/replication.py [--none RUN] [RUN ...]
"""

from __future__ import annotations

import json
from pathlib import Path

from arms import RUNS, Arm, Item, compare, load_arm, row, runs_parser, traces
from ponder.answers import extract_answer, same_answer

DEFAULT_RUNS = ("gsm8k-1.5b", "gsm8k-1.5b-fixes3", "gsm8k-1.5b-fixes4")


def drafts(run: Path) -> dict[str, tuple[str, str]]:
    """Each traced `refine` item's draft and expected answer, by item id."""
    out = {}
    for r in traces(run, "refine"):
        steps = [s for s in r["trace"] if s["step"] == "draft"]
        if steps:
            out[r["item_id"]] = (steps[0]["answer"] or "", str(r["expected"]))
    return out


def draft_arm(found: dict[str, tuple[str, str]]) -> Arm:
    """The drafts as an arm (their tokens are not traced: 0)."""
    return {
        item: Item(same_answer(text, expected), 0, 0, 1, extract_answer(text))
        for item, (text, expected) in found.items()
    }


def main() -> None:
    parser = runs_parser(__doc__, DEFAULT_RUNS)
    parser.add_argument("--none", default="gsm8k-1.5b", help="the run that measured `none`")
    args = parser.parse_args()
    none_run = RUNS / args.none
    none = load_arm(none_run, "none")
    records = [json.loads(line) for line in (none_run / "items.jsonl").open()]
    replies = {r["item_id"]: r["answer"] for r in records if r["approach"] == "none"}
    print(
        row(
            [
                "Run",
                "Items",
                "Text differs",
                "Answer differs",
                "none right",
                "draft right",
                "Draft against none (paired 95% CI)",
            ]
        )
    )
    print(row(["---"] + ["---:"] * 5 + ["---"]))
    for name in args.runs:
        found = {k: v for k, v in drafts(RUNS / name).items() if k in none}
        if not found:
            continue
        arm = draft_arm(found)
        c = compare(none, arm)
        text_differs = sum(found[i][0] != replies[i] for i in found)
        answer_differs = sum(arm[i].extracted != none[i].extracted for i in found)
        print(
            row(
                [
                    f"`{name}`",
                    str(c.items),
                    str(text_differs),
                    str(answer_differs),
                    str(sum(none[i].correct for i in found)),
                    str(sum(arm[i].correct for i in found)),
                    f"{c.span} ({c.only_a} only none, {c.only_b} only the draft)",
                ]
            )
        )


if __name__ == "__main__":
    main()
