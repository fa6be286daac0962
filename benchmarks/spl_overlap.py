"""How much of each SPL strategy is its problem's own words: no model is run.

For every strategy SPL learned in a bench run's store (`ponder.db` in the run directory, made
with `--spl-train`), the share of its distinct words of four letters or more that are words of
the training problem it was written for (its "created" event names the bench request, and so
the item); for the starter strategies of the types GSM8K lands in, the same share against each
of the training problems. `spl.proposals.SHARED_WORDS` refuses a proposal over it.

    .venv/bin/python benchmarks/spl_overlap.py benchmarks/runs/gsm8k-1.5b ...
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from statistics import median

from ponder.spl.proposals import content_words
from ponder.spl_store import Store

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"
TRAIN = 100
STARTER_TYPES = ("arithmetic", "word_problem", "algebra", "general")
_ITEM = re.compile(r"-gsm8k-(\d+)$")


def shared(text: str, problem: str) -> float:
    words = content_words(text)
    return len(words & content_words(problem)) / max(1, len(words))


def main(runs: list[str]) -> None:
    with GSM8K.open() as f:
        problems = [json.loads(line)["question"] for _, line in zip(range(TRAIN), f, strict=False)]
    for run in runs:
        store = Store(f"sqlite:///{Path(run) / 'ponder.db'}")
        strategies = {s.id: s for s in store.strategies("default")}
        print(f"{run}:")
        for event in store.events("default", limit=100_000):
            strategy = strategies.get(event.strategy_id or -1)
            match = _ITEM.search(event.request_id or "")
            if event.kind != "created" or strategy is None or strategy.origin != "learned":
                continue
            if match is None:
                continue
            item = int(match.group(1))
            own = shared(strategy.text, problems[item - 1])
            first = strategy.text.splitlines()[0][:60]
            print(f"  learned #{strategy.id} from item {item}: {own:.2f} shared  {first!r}")
        for s in strategies.values():
            if s.origin == "starter" and s.problem_type in STARTER_TYPES:
                shares = [shared(s.text, p) for p in problems]
                first = s.text.splitlines()[0][:50]
                print(
                    f"  starter #{s.id} ({s.problem_type}): median {median(shares):.2f}, "
                    f"most {max(shares):.2f}  {first!r}"
                )
        store.close()


if __name__ == "__main__":
    main(sys.argv[1:])
