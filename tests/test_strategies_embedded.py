"""Every strategy through the official `openai` client, against the running server on the
real embedded model (SmolLM2-135M), streamed and not.

The model is small and its answers are often wrong; these tests check the plumbing a user
relies on: an answer, honest usage, the number of backend calls, live reasoning, the stream's
shape. What the strategies buy in accuracy is measured by the benchmarks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from ponder.backends.llamacpp import EmbeddedBackend
from ponder.config import Settings
from ponder.proxy import create_app
from ponder.sandbox.code import z3_location
from ponder.testing import running_server
from tests.conftest import MODEL as DEFAULT_MODEL_ID

pytestmark = pytest.mark.integration

MESSAGES: list[Any] = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Tom has 3 apples and buys 2 more. How many apples does he have?"},
]

# slug -> (small options so the test stays quick, fewest and most backend calls). The embedded
# engine draws a call's samples natively (`n`), so independent samples are one call.
CASES: dict[str, tuple[dict[str, Any], int, int]] = {
    "re2": ({}, 1, 1),
    "cot_reflection": ({}, 1, 1),
    # the 3 samples in one call, and a greedy call when their answers tie
    "sc": ({"samples": 3}, 1, 2),
    "majority_voting": ({"samples": 3}, 1, 2),
    "bon": ({"candidates": 2, "score_tokens": 4}, 3, 3),  # candidates in one call, 2 scores
    "moa": ({"drafts": 2, "critique_tokens": 48}, 3, 3),  # drafts, critique, synthesis
    "genselect": ({"candidates": 2, "compare_tokens": 48}, 2, 2),  # candidates, selection
    # answer, restatement, second answer; a judge and a reconciliation where needed
    "rto": ({"restate_tokens": 48, "judge_tokens": 4}, 2, 5),
    # per round: helpful and sneaky solutions (one call each), 4 verifier calls
    "pvg": ({"rounds": 2, "solutions": 2, "score_tokens": 4}, 12, 12),
    # per attempt: plan, executions (one call), refinement; then 2 ratings
    "cepo": ({"attempts": 2, "executions": 2, "plan_tokens": 32, "score_tokens": 4}, 8, 8),
    # 2 agents, both passes of a solution in one call; failures improved and checked again
    "mars": ({"agents": 2, "verify_tokens": 48}, 4, 8),
    # select, adapt, implement, the chains in one call, and a greedy call if they disagree
    "deepthink": ({"chains": 2, "plan_tokens": 48}, 4, 5),
    # observations; combinations, plans and solutions of up to 2 subsets; a selection when 2
    "plansearch": (
        {
            "observations": 3,
            "plans": 2,
            "observation_tokens": 32,
            "plan_tokens": 32,
            "select_tokens": 32,
        },
        3,
        8,
    ),
    # extraction and the answer; with an example found, its attempt, a lesson, a condensation
    "leap": (
        {
            "max_examples": 1,
            "max_principles": 2,
            "extract_tokens": 64,
            "attempt_tokens": 32,
            "principle_tokens": 32,
            "condense_tokens": 32,
        },
        2,
        5,
    ),
    # the program, a fix, then the answer (from the output, or alone when none ran)
    "z3": ({"code_tokens": 64}, 2, 3),
    # per rollout an expansion of 3 or 4 calls (none when it re-scores an answer), a check per
    # complete trajectory, the final call
    "rstar": ({"rollouts": 2, "max_depth": 2, "step_tokens": 32, "answer_tokens": 48}, 8, 25),
    "tot": ({"breadth": 2, "depth": 1, "beam": 1, "thought_tokens": 32}, 4, 4),
    # one simulation: the replies in one call, a rollout and a rating of each
    "mcts": ({"simulations": 1, "actions": 2, "value_tokens": 4}, 5, 5),
    "refine": ({"rounds": 1, "critique_tokens": 48}, 2, 3),
    "react": ({"max_steps": 2, "step_tokens": 48}, 1, 3),
    # classification (cached after the first request) and the answer
    "spl": ({}, 1, 2),
    "mem": ({}, 1, 1),
    # the program and the answer; a simulation of its run when it fails
    "coc": ({"fix_attempts": 0, "code_tokens": 64, "simulate_tokens": 48}, 2, 3),
    # the probe of the first tokens, then the 3 paths (one batch)
    "cot_decoding": ({"k": 3}, 4, 4),
    # thinking (once more after a Wait when it ends early), then the answer
    "thinkdeeper": ({"min_thinking_tokens": 16, "max_thinking_tokens": 48, "max_waits": 1}, 2, 3),
    # the rating, then one answer or the vote's samples (one call)
    "autothink": ({"samples": [1, 2, 2], "thinking_tokens": [32, 48, 48]}, 2, 2),
    # the warmup traces in one call, then a streamed trace at a time until the vote settles
    "deepconf": ({"samples": 4, "warmup": 2}, 1, 3),
    "entropy_decoding": ({}, 1, 1),
}


# z3 runs only where its sandbox can: z3-solver installed and Landlock in the kernel
SLUGS = [
    pytest.param(
        slug,
        marks=pytest.mark.skipif(
            slug == "z3" and z3_location() is None, reason="no z3 sandbox on this machine"
        ),
    )
    for slug in sorted(CASES)
]


@pytest.fixture(scope="module")
def oai(embedded: EmbeddedBackend) -> Iterator[openai.OpenAI]:
    settings = Settings(enable_code_execution=True, code_timeout_s=10, code_memory_mb=256)
    with running_server(create_app(settings, backend=embedded)) as url:
        yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=300)


def request(slug: str) -> dict[str, Any]:
    options, _, _ = CASES[slug]
    return {
        "model": f"{slug}-{DEFAULT_MODEL_ID}",
        "messages": MESSAGES,
        "max_tokens": 48,
        "seed": 7,
        "extra_body": {"ponder": {slug: options}},
    }


@pytest.mark.parametrize("slug", SLUGS)
def test_strategy_answers_with_honest_usage(oai: openai.OpenAI, slug: str) -> None:
    _, fewest, most = CASES[slug]
    raw = oai.chat.completions.with_raw_response.create(**request(slug))
    completion = raw.parse()
    calls = int(raw.headers["x-ponder-backend-calls"])
    assert fewest <= calls <= most
    choice = completion.choices[0]
    assert choice.message.content and choice.message.content.strip()
    assert completion.model == f"{slug}-{DEFAULT_MODEL_ID}"
    usage = completion.usage
    assert usage is not None
    # every call sends at least the system prompt and the question (> 20 tokens with the
    # chat template) and generates at least one token
    assert usage.prompt_tokens >= 20 * calls
    assert usage.completion_tokens >= calls
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@pytest.mark.parametrize("slug", SLUGS)
def test_strategy_streams(oai: openai.OpenAI, slug: str) -> None:
    chunks = list(
        oai.chat.completions.create(
            **request(slug), stream=True, stream_options={"include_usage": True}
        )
    )
    first = chunks[0].choices[0].delta
    assert first.role == "assistant"
    content = "".join(
        c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].delta
    )
    reasoning = "".join(
        getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices
    )
    assert content.strip()
    # re2 and entropy_decoding (one call, its choices made token by token) have no working
    # to show; cot_reflection's working is what the model writes inside <thinking> tags, which
    # the 135M model rarely does
    if slug not in ("re2", "cot_reflection", "entropy_decoding"):
        assert reasoning.strip(), f"{slug} streamed no reasoning"
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert len(finishes) == 1
    (usage_chunk,) = [c for c in chunks if c.usage is not None]
    assert usage_chunk.usage is not None and usage_chunk.usage.completion_tokens > 0
