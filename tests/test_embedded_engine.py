"""The batched engine on the real embedded model (SmolLM2-135M, for speed): shared decode
steps, distinct samples, greedy text as llama.cpp's own chat completion gives it, stop strings,
cancellation that gives every sequence and KV cell back, and a queue beyond free sequences."""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from ponder.backends import build_backend
from ponder.backends.llamacpp import EmbeddedBackend
from ponder.config import Settings
from ponder.proxy import create_app
from ponder.testing import running_server
from ponder.types import Message, Sampling
from tests.conftest import MODEL, reference_greedy, sse_events

pytestmark = pytest.mark.integration

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


def ask(text: str) -> list[dict[str, str]]:
    return [SYSTEM, {"role": "user", "content": text}]


@pytest.fixture(scope="module")
def engine_backend() -> Iterator[EmbeddedBackend]:
    """An engine of its own, so that its counters count only this module's requests."""
    backend = EmbeddedBackend(MODEL, sequences=4, n_ctx=1024)
    yield backend
    asyncio.run(backend.aclose())


@pytest.fixture(scope="module")
def base_url(engine_backend: EmbeddedBackend) -> Iterator[str]:
    with running_server(create_app(Settings(), backend=engine_backend)) as url:
        yield url


@pytest.fixture
async def http(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
        yield client


async def chat(http: httpx.AsyncClient, **body: object) -> dict[str, object]:
    body.setdefault("model", MODEL)
    response = await http.post("/chat/completions", json=body)
    assert response.status_code == 200, response.text
    data: dict[str, object] = response.json()
    return data


def idle(backend: EmbeddedBackend, timeout: float = 30) -> None:
    """Waits until the engine has no live sequence and has read llama.cpp's own counts."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = backend.engine_stats()
        assert stats is not None
        if (
            stats.free_sequences == stats.sequences
            and stats.waiting == 0
            and (stats.kv_positions == stats.kv_tokens)
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"the engine did not go idle: {backend.engine_stats()}")


async def batch_histogram(http: httpx.AsyncClient) -> dict[str, float]:
    root = str(http.base_url).rstrip("/").removesuffix("/v1")
    text = (await http.get(root + "/metrics")).text
    return {
        le: float(v)
        for le, v in re.findall(
            r'^ponder_embedded_batch_sequences_bucket\{le="([^"]+)"\} (\S+)$', text, re.M
        )
    }


async def test_n_samples_at_temperature_are_distinct(http: httpx.AsyncClient) -> None:
    data = await chat(
        http,
        messages=ask("Write a short poem about the sea."),
        n=4,
        temperature=1.0,
        max_tokens=24,
        seed=7,
    )
    choices = data["choices"]
    assert isinstance(choices, list)
    texts = [c["message"]["content"] for c in choices]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    assert all(texts) and len(set(texts)) == 4, texts
    usage = data["usage"]
    assert isinstance(usage, dict)
    assert usage["completion_tokens"] <= 4 * 24


async def test_greedy_text_is_llama_cpps_own_chat_completion(http: httpx.AsyncClient) -> None:
    """A lone sequence at temperature 0 writes what llama.cpp's single-sequence chat completion
    (the engine before batching) writes for the same chat."""
    messages = ask("Name three colors.")
    want = reference_greedy(MODEL, messages, 40)
    data = await chat(http, messages=messages, temperature=0, max_tokens=40)
    choices = data["choices"]
    assert isinstance(choices, list)
    assert choices[0]["message"]["content"] == want


async def test_concurrent_requests_share_decode_steps(http: httpx.AsyncClient) -> None:
    before = await batch_histogram(http)
    prompts = ["Count from one to twenty in words.", "Write a long story about a fox."]
    answers = await asyncio.gather(
        *(chat(http, messages=ask(p), temperature=0, max_tokens=32) for p in prompts)
    )
    after = await batch_histogram(http)
    tokens = [a["usage"]["completion_tokens"] for a in answers]  # type: ignore[index]
    steps = after["+Inf"] - before["+Inf"]
    shared = steps - (after["1"] - before["1"])
    # one after the other, the two would take sum(tokens) steps; together, about the longer
    # one's (a few more if the second request arrived a few steps late)
    assert steps < sum(tokens) - min(tokens) / 2, (steps, tokens)
    assert shared >= min(tokens) - 6, (shared, tokens)


async def test_a_stop_string_ends_the_sequence_and_is_not_returned(
    http: httpx.AsyncClient,
) -> None:
    messages = ask("Count from one to ten in words, separated by commas.")
    free = await chat(http, messages=messages, temperature=0, max_tokens=48)
    free_choices = free["choices"]
    assert isinstance(free_choices, list)
    text = free_choices[0]["message"]["content"]
    words = re.findall(r"[A-Za-z]{4,}", text)
    assert len(words) >= 3, text
    stop = words[2]
    stopped = await chat(http, messages=messages, temperature=0, max_tokens=48, stop=[stop])
    choices = stopped["choices"]
    assert isinstance(choices, list)
    assert choices[0]["message"]["content"] == text[: text.index(stop)]
    assert choices[0]["finish_reason"] == "stop"
    usage, free_usage = stopped["usage"], free["usage"]
    assert isinstance(usage, dict) and isinstance(free_usage, dict)
    assert usage["completion_tokens"] < free_usage["completion_tokens"]


async def test_logprobs_give_every_token_its_log_probability_and_alternatives(
    http: httpx.AsyncClient,
) -> None:
    messages = ask("Name three colors.")
    body = {"messages": messages, "temperature": 0, "max_tokens": 16, "logprobs": True}
    data = await chat(http, **body, top_logprobs=3)
    choices, usage = data["choices"], data["usage"]
    assert isinstance(choices, list) and isinstance(usage, dict)
    (choice,) = choices
    entries = choice["logprobs"]["content"]
    assert choice["finish_reason"] == "length"  # 16 tokens, none of them the end
    assert len(entries) == usage["completion_tokens"] == 16
    assert "".join(e["token"] for e in entries) == choice["message"]["content"]
    for e in entries:
        top = e["top_logprobs"]
        assert len(top) == 3 and e["logprob"] <= 0
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert sum(math.exp(t["logprob"]) for t in top) <= 1 + 1e-9
        # greedy: the drawn token is the most likely one
        assert (top[0]["token"], top[0]["logprob"]) == (e["token"], e["logprob"])
        assert bytes(e["bytes"]).decode("utf-8", "replace") == e["token"]

    plain = await chat(http, messages=messages, temperature=0, max_tokens=16)
    assert plain["choices"][0]["logprobs"] is None  # type: ignore[index]

    response = await http.post("/chat/completions", json={**body, "model": MODEL, "stream": True})
    streamed = [
        entry
        for event in sse_events(response.text)
        for c in event.get("choices", [])
        for entry in (c.get("logprobs") or {}).get("content", [])
    ]
    assert [(e["token"], e["top_logprobs"]) for e in streamed] == [
        (e["token"], []) for e in entries
    ]  # no top_logprobs asked for: the drawn tokens alone


async def test_completion_tokens_never_exceed_max_tokens(http: httpx.AsyncClient) -> None:
    for seed in range(4):
        data = await chat(
            http,
            messages=ask("Reply with ten different emoji and nothing else."),
            max_tokens=5,
            temperature=1.0,
            seed=seed,
        )
        usage = data["usage"]
        assert isinstance(usage, dict)
        assert usage["completion_tokens"] <= 5
        choices = data["choices"]
        assert isinstance(choices, list)
        assert "\ufffd" not in (choices[0]["message"]["content"] or "")


async def test_a_shared_system_prompt_is_evaluated_once(
    http: httpx.AsyncClient, engine_backend: EmbeddedBackend
) -> None:
    system = {"role": "system", "content": "You are a patient tutor. " * 30}
    first = engine_backend.engine_stats()
    await chat(http, messages=[system, {"role": "user", "content": "Hi."}], max_tokens=4)
    middle = engine_backend.engine_stats()
    second = await chat(
        http, messages=[system, {"role": "user", "content": "Hello!"}], max_tokens=4
    )
    last = engine_backend.engine_stats()
    assert first is not None and middle is not None and last is not None
    evaluated = last.prompt_tokens - middle.prompt_tokens
    reused = last.prompt_tokens_reused - middle.prompt_tokens_reused
    assert reused > 150  # the system prompt's ~180 tokens came from the cache
    assert evaluated < 20
    assert middle.prompt_tokens - first.prompt_tokens > 150
    # the answer says so: the cached prompt tokens are the ones the engine reused
    usage = second["usage"]
    assert isinstance(usage, dict)
    assert usage["prompt_tokens_details"] == {"cached_tokens": reused}
    assert usage["prompt_tokens"] == reused + evaluated


async def test_cancelled_streams_give_back_every_sequence_and_cell(
    http: httpx.AsyncClient, engine_backend: EmbeddedBackend
) -> None:
    idle(engine_backend)
    start = engine_backend.engine_stats()
    assert start is not None

    async def cancelled(i: int) -> None:
        body = {
            "model": MODEL,
            "messages": ask(f"Tell me a long story number {i}."),
            "max_tokens": 200,
            "stream": True,
            "seed": i,
        }
        async with http.stream("POST", "/chat/completions", json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if '"content"' in line:
                    break  # leave after the first token

    for wave in range(10):
        await asyncio.gather(*(cancelled(wave * 10 + i) for i in range(10)))
    idle(engine_backend)
    end = engine_backend.engine_stats()
    assert end is not None
    assert end.free_sequences == start.free_sequences == end.sequences
    assert end.kv_cells_live == start.kv_cells_live == 0
    assert end.kv_positions == end.kv_tokens  # llama.cpp holds exactly what the engine thinks
    assert all(n <= engine_backend.ctx_per_sequence for n in end.kv_tokens)
    engine_backend.clear_cache()
    idle(engine_backend)
    cleared = engine_backend.engine_stats()
    assert cleared is not None
    assert cleared.kv_positions == cleared.kv_tokens == (0,) * cleared.sequences


async def test_a_prompt_longer_than_the_context_is_a_400_naming_the_limit(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post(
        "/chat/completions",
        json={"model": MODEL, "messages": ask("word " * 2000), "max_tokens": 4},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "1024" in error["message"]


def test_requests_beyond_the_free_sequences_wait_their_turn() -> None:
    backend = EmbeddedBackend(MODEL, sequences=2, n_ctx=512)
    try:
        with running_server(create_app(Settings(), backend=backend)) as url:

            async def main() -> list[dict[str, object]]:
                async with httpx.AsyncClient(base_url=url, timeout=120) as http:
                    return await asyncio.gather(
                        *(
                            chat(http, messages=ask(f"Say {i}."), max_tokens=8, n=2, seed=i)
                            for i in range(5)
                        )
                    )

            answers = asyncio.run(main())
        assert all(len(a["choices"]) == 2 for a in answers)  # type: ignore[arg-type]
        stats = backend.engine_stats()
        assert stats is not None
        assert len(stats.batch_sequences) == 3  # never more than 2 at once
        assert stats.batch_sequences[2] > 0
    finally:
        asyncio.run(backend.aclose())


async def test_logit_bias_forces_and_bans_tokens(http: httpx.AsyncClient) -> None:
    from llama_cpp import Llama

    from ponder import catalog

    vocab = Llama(model_path=str(catalog.resolve(MODEL).path), vocab_only=True, verbose=False)
    (yes,) = vocab.tokenize(b" yes", add_bos=False)
    forced = await chat(
        http, messages=ask("Name a fruit."), max_tokens=6, temperature=0,
        logit_bias={str(yes): 100},
    )  # fmt: skip
    choices = forced["choices"]
    assert isinstance(choices, list)
    assert choices[0]["message"]["content"] == " yes" * 6
    free = await chat(http, messages=ask("Name a fruit."), max_tokens=6, temperature=0)
    free_choices = free["choices"]
    assert isinstance(free_choices, list)
    first = vocab.tokenize(free_choices[0]["message"]["content"].encode(), add_bos=False)[0]
    banned = await chat(
        http, messages=ask("Name a fruit."), max_tokens=6, temperature=0,
        logit_bias={str(first): -100},
    )  # fmt: skip
    banned_choices = banned["choices"]
    assert isinstance(banned_choices, list)
    content = banned_choices[0]["message"]["content"]
    assert vocab.tokenize(content.encode(), add_bos=False)[0] != first


async def test_a_logit_bias_for_no_token_of_the_model_is_a_400(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/chat/completions",
        json={"model": MODEL, "messages": ask("Hi"), "logit_bias": {"99999999": 5}},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "logit_bias"


def test_one_sequence_without_the_prefix_cache_repeats_greedy_replies() -> None:
    """PONDER_EMBEDDED_SEQUENCES=1 and PONDER_EMBEDDED_PREFIX_CACHE=false: every prompt is
    evaluated whole, alone in its batch, so a greedy request asked alone and asked again among
    others (which wait their turn) gets the same text, and no prompt token comes from the cache."""
    settings = Settings(
        model=MODEL, embedded_sequences=1, embedded_prefix_cache=False, embedded_ctx=1024
    )
    backend = build_backend(settings)
    assert isinstance(backend, EmbeddedBackend)
    greedy = Sampling(temperature=0.0, max_tokens=48)
    question = [Message("system", SYSTEM["content"]), Message("user", "Why is the sky blue?")]
    others = [
        [Message("system", SYSTEM["content"]), Message("user", f"Count from {i} to {i + 9}.")]
        for i in (1, 20)
    ]

    async def replies() -> tuple[str | None, str | None]:
        (alone,) = await backend.complete(MODEL, question, greedy)
        *_, (again,) = await asyncio.gather(
            *(backend.complete(MODEL, messages, greedy) for messages in [*others, question])
        )
        return alone.content, again.content

    try:
        alone, again = asyncio.run(replies())
        assert alone and again == alone
        stats = backend.engine_stats()
        assert stats is not None and stats.sequences == 1
        assert stats.prompt_tokens_reused == 0 and stats.prompt_tokens > 0
    finally:
        asyncio.run(backend.aclose())
