"""How `mcts` chose: whether the model's values put right replies above wrong ones, what the
rollouts (a reply's revisions) were, and what a vote over the root's replies would have done.

`mcts` expands the root into candidate replies in its first simulation, rolls each forward a
turn and has the model rate the state reached; its trace keeps every reply, rollout and value,
and the root's mean values at the choice. This reads each reply's final answer and replays the
choice as a plurality vote over the root's replies (a tie goes to the earliest, as
`majority_vote` decides), with no model. It prints how the values ranked right against wrong
replies within the items where both were among the root's, how many rollouts stated no answer
(an apology, a request for the question again), and the pick and the vote against each other
and against `none` with Newcombe's paired 95% interval.

    .venv/bin/python benchmarks/mcts_values.py [RUN ...]
"""

from __future__ import annotations

from dataclasses import replace

from arms import LEGEND, RUNS, Arm, load_arm, pick_against_vote, runs_parser, traces
from ponder.answers import extract_answer, majority_vote, same_answer, states_answer

DEFAULT_RUNS = ("gsm8k-1.5b-more",)


def main() -> None:
    parser = runs_parser(__doc__, DEFAULT_RUNS)
    args = parser.parse_args()
    for name in args.runs:
        run = RUNS / name
        arm, none = load_arm(run, "mcts"), load_arm(run, "none")
        voted: Arm = {}
        mixed = above = pairs = some_right = chosen_right_when_some = 0
        rollouts = unanswered = 0
        for t in traces(run, "mcts"):
            item = t["item_id"]
            if item not in arm:
                continue
            steps = t["trace"]
            first = next(s for s in steps if s["step"] == "simulation")
            choice = next(s for s in steps if s["step"] == "choice")
            answers = [extract_answer(r) for r in first["replies"]]
            right = [same_answer(a, t["expected"]) for a in answers]
            means = choice["values"]
            if any(right):
                some_right += 1
                chosen_right_when_some += right[choice["chosen"] - 1]
            if any(right) and not all(right):
                mixed += 1
                for i, good in enumerate(right):
                    for j, bad in enumerate(right):
                        if good and not bad:
                            pairs += 1
                            above += means[i] > means[j]
            for s in steps:
                if s["step"] == "simulation":
                    for turns in s["rollouts"]:
                        rollouts += len(turns)
                        unanswered += sum(not states_answer(text) for text in turns)
            vote = majority_vote(answers).winner
            voted[item] = replace(
                arm[item], correct=same_answer(vote, t["expected"]), extracted=vote
            )
        picks = {k: v for k, v in arm.items() if k in voted}
        print(f"`{name}`: {len(voted)} items traced")
        print(
            f"a root reply was right in {some_right} items, the chosen one in "
            f"{chosen_right_when_some}; right and wrong replies both at the root in {mixed}: "
            f"the right one had the higher mean value in {above} of {pairs} pairs"
        )
        print(f"rollouts that state no answer: {unanswered} of {rollouts}\n")
        print(pick_against_vote(none, picks, voted, "the search's pick", "a vote over the root"))
    print(LEGEND)


if __name__ == "__main__":
    main()
