"""Whether greedy decoding on the embedded engine gives the same reply to the same request.

For each GSM8K question, the same request (temperature 0) is asked three ways on one engine:
alone; alone again, when its prompt's cells come from the prefix cache; and beside other
questions in the same batch. Prints, for the second and third, where the reply's text first
differs from the first's (`same` when it does not). This is what `replication.py` reads in the
recorded runs, made on purpose, with no other request in the engine.

    .venv/bin/python benchmarks/determinism.py [--model qwen2.5-coder-0.5b] [--questions 3]
        [--sequences 8] [--threads 2] [--max-tokens 200] [--no-prefix-cache]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from ponder.backends.llamacpp.backend import EmbeddedBackend
from ponder.bench.suites import math_messages
from ponder.types import Message, Sampling

GSM8K = Path(__file__).parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"
FIRST = 100
"""Questions from item 101 on, the test split of the other benchmarks."""


def first_difference(a: str, b: str) -> str:
    at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    if at is None and len(a) == len(b):
        return "same"
    return f"char {at if at is not None else min(len(a), len(b))}"


async def reply(backend: EmbeddedBackend, question: str, sampling: Sampling) -> str:
    messages = [Message(m["role"], m["content"]) for m in math_messages(question)]
    (choice,) = await backend.complete(backend.model_id, messages, sampling)
    return choice.content or ""


async def run(args: argparse.Namespace) -> None:
    questions = [json.loads(line)["question"] for line in GSM8K.open()]
    questions = questions[FIRST : FIRST + args.questions + args.sequences]
    backend = EmbeddedBackend(
        args.model,
        sequences=args.sequences,
        n_threads=args.threads,
        prefix_cache=not args.no_prefix_cache,
    )
    sampling = Sampling(temperature=0.0, max_tokens=args.max_tokens)
    label = "Again" if args.no_prefix_cache else "Again, prompt cached"
    print(f"| Question | {label} | Beside others |")
    print("| ---: | --- | --- |")
    others = questions[args.questions + 1 : args.questions + args.sequences]  # sequences - 1
    try:
        for i, question in enumerate(questions[: args.questions]):
            first = await reply(backend, question, sampling)
            again = await reply(backend, question, sampling)
            *_, beside = await asyncio.gather(
                *(reply(backend, q, sampling) for q in [*others, question])
            )
            row = [str(FIRST + i + 1), first_difference(first, again)]
            print("| " + " | ".join([*row, first_difference(first, beside)]) + " |", flush=True)
    finally:
        await backend.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--questions", type=int, default=3)
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--no-prefix-cache", action="store_true")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
