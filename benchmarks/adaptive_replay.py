"""Replays adaptive `sc` on a recorded `sc` run: no model is run.

Each item's recorded samples (the tally of a `--trace` run of `sc`, plus its
cut-off samples, which have no answer) are drawn in random orders, and adaptive `sc`'s own rule
(`ponder.strategies.confidence`: waves as large as the fewest samples that could settle the vote,
stop once the leader's Beta posterior reaches `confidence`) decides after each wave whether to
stop. Samples are independent draws, so a random order of the recorded ones is what adaptive
sampling would have seen. A final tie goes to the greedy answer, with `none`'s recorded answer
(temperature 0, the same request) standing in for that call, as `tie_break: greedy` does.

Prints, per `confidence`, the expected accuracy, the mean samples drawn, and the output tokens
as a share of the recorded run's (each item's output scaled by the share of its samples drawn,
plus the greedy call's tokens on ties), averaged over `--orders` random orders per item.

    .venv/bin/python benchmarks/adaptive_replay.py [--sc RUN] [--none RUN] [--orders 2000]
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path

from arms import load_arm, recorded_answers, traces
from ponder.answers import majority_vote, same_answer
from ponder.strategies.confidence import majority_posterior, more_to_settle, top_two

CONFIDENCES = (0.7, 0.8, 0.85, 0.9, 0.95, 0.999)
"""0.999: no vote of 8 or fewer can reach it, so every sample is drawn (the recorded samples, with
ties to the greedy answer)."""
WAVE = 1
"""`sc`'s default `wave`."""


@dataclass(frozen=True)
class Recorded:
    expected: str
    answers: tuple[str | None, ...]
    """The recorded samples' answers (None: cut off before an answer)."""
    greedy: str | None
    """`none`'s answer on the item."""
    sample_tokens: int
    """The recorded samples' output tokens (the greedy call's taken out on a recorded tie)."""
    greedy_tokens: int


@dataclass(frozen=True)
class Outcome:
    correct: bool
    drawn: int
    tie: bool


def run_adaptive(
    answers: list[str | None], confidence: float, greedy: str | None, expected: str
) -> Outcome:
    """Adaptive `sc` over `answers` in the given order, as `SelfConsistency._adaptive` draws."""
    drawn: list[str | None] = []
    while len(drawn) < len(answers):
        vote = majority_vote(drawn)
        need = more_to_settle(*top_two(vote.tally, vote.winner), confidence)
        size = min(len(answers) - len(drawn), max(WAVE, need))
        drawn.extend(answers[len(drawn) : len(drawn) + size])
        vote = majority_vote(drawn)
        if (
            vote.winner is not None
            and majority_posterior(*top_two(vote.tally, vote.winner)) >= confidence
        ):
            break
    vote = majority_vote(drawn)
    tie = len(vote.leaders) > 1
    winner = greedy if tie and vote.decided_by(greedy) else vote.winner
    correct = winner is not None and same_answer(winner, expected)
    return Outcome(correct, len(drawn), tie)


def load(sc_run: Path, none_run: Path) -> dict[str, Recorded]:
    sc, none = load_arm(sc_run, "sc"), load_arm(none_run, "none")
    recorded = {}
    for t in traces(sc_run, "sc"):
        item_id = t["item_id"]
        if item_id not in sc.keys() & none.keys():
            continue
        answers = recorded_answers(t)
        tied = len(majority_vote(answers).leaders) > 1
        greedy_tokens = none[item_id].output_tokens
        recorded[item_id] = Recorded(
            t["expected"],
            tuple(answers),
            none[item_id].extracted,
            sc[item_id].output_tokens - (greedy_tokens if tied else 0),
            greedy_tokens,
        )
    return recorded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sc", type=Path, default=Path("benchmarks/runs/confidence-1.5b-sc8"))
    parser.add_argument("--none", type=Path, default=Path("benchmarks/runs/confidence-1.5b"))
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    recorded = load(args.sc, args.none)
    sc = load_arm(args.sc, "sc")
    n = len(recorded)
    base_output = sum(sc[i].output_tokens for i in recorded)
    print(f"{args.sc}: {n} items, {args.orders} random orders each")
    most = max(len(r.answers) for r in recorded.values())
    right = sum(sc[i].correct for i in recorded) / n
    print(f"recorded sc: {right:.1%}, {most} samples, ties as the run decided them")
    print("| confidence | Expected accuracy | Mean samples | Output tokens, share of sc's | Ties |")
    print("|---:|---:|---:|---:|---:|")
    for confidence in CONFIDENCES:
        rng = random.Random(args.seed)
        right = samples = tokens = ties = 0.0
        for r in recorded.values():
            for _ in range(args.orders):
                order = list(r.answers)
                rng.shuffle(order)
                o = run_adaptive(order, confidence, r.greedy, r.expected)
                right += o.correct
                samples += o.drawn
                tokens += r.sample_tokens * o.drawn / len(order) + (r.greedy_tokens if o.tie else 0)
                ties += o.tie
        runs = n * args.orders
        print(
            f"| {confidence:g} | {right / runs:.1%} | {samples / runs:.2f} | "
            f"{tokens / args.orders / base_output:.0%} | {ties / runs:.1%} |"
        )


if __name__ == "__main__":
    main()
