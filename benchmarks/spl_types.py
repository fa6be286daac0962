"""How SPL's classifier spreads real problems over its problem types, on the embedded model.

SPL keeps strategies per problem type, so a classifier that sends everything to `general`
leaves it one undifferentiated pile. This asks the classifier's own prompt (one call per
problem, temperature 0, as `spl` does) for GSM8K items and `arith` problems and counts the
types, with the raw replies of the first few for reading.

    .venv/bin/python benchmarks/spl_types.py --model qwen2.5-coder-1.5b --limit 50 \\
        --out benchmarks/runs/spl-types-1.5b.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

from ponder import catalog
from ponder.bench.suites import get_suite
from ponder.spl.classify import CLASSIFY_MAX_TOKENS, classification_messages, parse_type
from ponder.types import Sampling

SHOWN_REPLIES = 8


async def classify_all(args: argparse.Namespace) -> dict[str, Any]:
    from ponder.backends.llamacpp import EmbeddedBackend

    resolved = catalog.resolve(args.model)
    backend = EmbeddedBackend(resolved.path, model_id=resolved.model_id)
    sampling = Sampling(temperature=0.0, max_tokens=CLASSIFY_MAX_TOKENS, seed=0)
    suites = {
        "gsm8k": get_suite("gsm8k").load(args.path, args.limit, 0),
        "arith": get_suite("arith").load(None, args.limit, 0),
    }
    gate = asyncio.Semaphore(8)
    result: dict[str, Any] = {"model": resolved.model_id, "suites": {}}
    try:
        for name, items in suites.items():

            async def one(question: str) -> str:
                async with gate:
                    (reply,) = await backend.complete(
                        resolved.model_id, classification_messages(question), sampling
                    )
                return reply.content or ""

            replies = await asyncio.gather(*(one(item.question) for item in items))
            types = Counter(parse_type(reply) for reply in replies)
            result["suites"][name] = {
                "items": len(items),
                "types": dict(types.most_common()),
                "replies": replies[:SHOWN_REPLIES],
            }
            print(name, dict(types.most_common()))
    finally:
        await backend.aclose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    parser.add_argument("--path", type=Path, default=Path("../shared/data/gsm8k/test.jsonl"))
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = asyncio.run(classify_all(args))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
