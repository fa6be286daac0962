"""The real embedded model (SmolLM2-135M through llama.cpp) behind the running server."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from ponder import catalog
from ponder.backends.llamacpp import EmbeddedBackend
from ponder.config import Settings
from ponder.proxy import create_app
from ponder.testing import running_server
from tests.conftest import MODEL as DEFAULT_MODEL_ID

pytestmark = pytest.mark.integration

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
QUESTION = {"role": "user", "content": "Name three colors."}


@pytest.fixture(scope="module")
def oai(embedded: EmbeddedBackend) -> Iterator[openai.OpenAI]:
    with running_server(create_app(Settings(), backend=embedded)) as url:
        yield openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)


def test_non_streamed(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model=DEFAULT_MODEL_ID, messages=[SYSTEM, QUESTION], max_tokens=40, seed=1
    )
    choice = completion.choices[0]
    assert choice.message.content and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens > 10  # chat template + system prompt + question
    assert 0 < usage.completion_tokens <= 40
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_max_tokens_is_honoured(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model=DEFAULT_MODEL_ID,
        messages=[SYSTEM, {"role": "user", "content": "Write a long story about a dragon."}],
        max_tokens=8,
        seed=2,
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 8


def test_streamed_token_by_token(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model=DEFAULT_MODEL_ID,
            messages=[SYSTEM, QUESTION],
            max_tokens=30,
            seed=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) >= 3, "the answer arrives in several token deltas"
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert len(finishes) == 1
    (usage_chunk,) = [c for c in chunks if c.usage is not None]
    assert usage_chunk.usage is not None and usage_chunk.choices == []
    assert 0 < usage_chunk.usage.completion_tokens <= 30


def test_n_two_samples(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model=DEFAULT_MODEL_ID,
        messages=[SYSTEM, QUESTION],
        max_tokens=20,
        n=2,
        temperature=1.0,
    )
    assert [c.index for c in completion.choices] == [0, 1]
    assert all(c.message.content for c in completion.choices)
    assert completion.usage is not None and completion.usage.completion_tokens > 0


def test_same_seed_same_answer(oai: openai.OpenAI) -> None:
    def ask() -> str | None:
        return (
            oai.chat.completions.create(
                model=DEFAULT_MODEL_ID,
                messages=[SYSTEM, QUESTION],
                max_tokens=20,
                seed=11,
                temperature=0.9,
            )
            .choices[0]
            .message.content
        )

    assert ask() == ask()


def test_concurrent_requests_are_safe(oai: openai.OpenAI) -> None:
    def ask(i: int) -> int:
        completion = oai.chat.completions.create(
            model=DEFAULT_MODEL_ID,
            messages=[SYSTEM, {"role": "user", "content": f"Say the number {i}."}],
            max_tokens=12,
            seed=i,
        )
        assert completion.choices[0].message.content is not None
        assert completion.usage is not None
        return completion.usage.completion_tokens

    with ThreadPoolExecutor(4) as pool:
        counts = list(pool.map(ask, range(4)))
    assert all(0 < c <= 12 for c in counts)


def test_tools_are_refused_clearly(oai: openai.OpenAI) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(
            model=DEFAULT_MODEL_ID,
            messages=[QUESTION],
            tools=[tool],  # type: ignore[list-item]
        )
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "tools"


def test_ponder_ask_answers_in_the_terminal() -> None:
    """A newcomer's first question, on the default model (the best one installed)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ponder.cli",
            "ask",
            "What is 17 * 23?",
            "--max-tokens",
            "128",
            "--temperature",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    if catalog.default_spec().id == "qwen2.5-coder-1.5b":
        assert "391" in result.stdout, result.stdout
    else:  # a smaller model may get it wrong, but it answers
        assert result.stdout.strip()


def test_json_schema_response_format_constrains_the_output(oai: openai.OpenAI) -> None:
    import json

    schema = {
        "type": "object",
        "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]}},
        "required": ["color"],
    }
    completion = oai.chat.completions.create(
        model=DEFAULT_MODEL_ID,
        messages=[SYSTEM, {"role": "user", "content": "Give me a color as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
        max_tokens=40,
        seed=5,
    )
    content = completion.choices[0].message.content
    assert content is not None
    assert json.loads(content)["color"] in {"red", "green", "blue"}


def test_the_openai_client_reads_the_logprobs(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model=DEFAULT_MODEL_ID,
        messages=[SYSTEM, QUESTION],
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    choice = completion.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    tokens = choice.logprobs.content
    assert "".join(t.token for t in tokens) == choice.message.content
    for t in tokens:
        assert len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob
        assert (t.top_logprobs[0].token, t.top_logprobs[0].logprob) == (t.token, t.logprob)
