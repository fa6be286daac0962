"""`entropy_decoding`: one call that asks the backend to choose every token by the
entropix-style adaptive rule; only a backend that can (the embedded engine) serves it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import ValidationError

from ponder.backends.base import ADAPTIVE_SAMPLING, AdaptiveSettings, Capabilities
from ponder.config import Settings
from ponder.proxy import create_app
from ponder.strategies.entropy_decoding import EntropyDecodingConfig
from ponder.testing import Call
from ponder.types import Completion
from tests.conftest import (
    MODEL,
    asgi_client,
    assert_error,
    chat,
    scripted,
    sse_events,
    streamed_pieces,
    trace_steps,
    user,
)

if TYPE_CHECKING:
    from ponder.backends.llamacpp import EmbeddedBackend

ENTROPY = f"entropy_decoding-{MODEL}"
CAN = Capabilities(adaptive_sampling=True)
DEFAULTS = {
    "entropy_threshold": 1.0,
    "varentropy_threshold": 2.0,
    "explore_temperature": 1.0,
    "branch_top_k": 5,
    "branch_temperature": 0.7,
    "resample_temperature": 1.3,
    "resample_top_p": 0.9,
}


def test_the_options_are_the_engines_settings() -> None:
    assert EntropyDecodingConfig().model_dump() == AdaptiveSettings().model_dump() == DEFAULTS
    with pytest.raises(ValidationError):  # the engine's bounds hold for the options too
        EntropyDecodingConfig(resample_top_p=1.5)


async def test_one_call_carries_the_rule_and_the_request() -> None:
    backend = scripted(["It is 4."], capabilities=CAN)
    response = await chat(
        backend, ENTROPY, max_tokens=32, seed=3, logit_bias={"7": -100}, ponder={"trace": True}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "It is 4."
    (call,) = backend.calls
    assert call.n == 1 and call.messages[-1].content == "hello"
    assert call.sampling.extra[ADAPTIVE_SAMPLING] == DEFAULTS
    # what the request asked for travels with it
    assert call.sampling.max_tokens == 32 and call.sampling.seed == 3
    assert call.sampling.extra["logit_bias"] == {"7": -100}
    (step,) = trace_steps(body, "adaptive_sampling")
    assert {k: step[k] for k in DEFAULTS} == DEFAULTS


async def test_options_and_n_go_in_the_one_call() -> None:
    backend = scripted(["a", "b"], capabilities=CAN)
    options = {"entropy_threshold": 0.5, "branch_top_k": 3, "resample_top_p": 0.5}
    response = await chat(backend, ENTROPY, n=2, ponder={"entropy_decoding": options})
    assert response.status_code == 200, response.text
    assert [c["message"]["content"] for c in response.json()["choices"]] == ["a", "b"]
    (call,) = backend.calls
    assert call.n == 2
    assert call.sampling.extra[ADAPTIVE_SAMPLING] == {**DEFAULTS, **options}


async def test_the_action_counts_the_backend_reports_are_traced() -> None:
    counts = {"argmax": 5, "explore": 1, "branch": 2, "resample": 0}

    def reply(call: Call, index: int) -> Completion:
        return Completion("Four apples.", sampling_actions=counts)

    backend = scripted(reply, capabilities=CAN)
    response = await chat(backend, ENTROPY, ponder={"trace": True})
    assert response.status_code == 200, response.text
    (step,) = trace_steps(response.json(), "actions")
    assert step["choice"] == 0 and {k: step[k] for k in counts} == counts


async def test_a_backend_without_adaptive_sampling_is_a_400() -> None:
    backend = scripted(["x"], capabilities=Capabilities(logprobs=True, continuation=True))
    response = await chat(backend, ENTROPY)
    assert_error(response, 400, code="unsupported_parameter")
    assert "a backend with adaptive_sampling," in response.json()["error"]["message"]
    assert backend.calls == []


@pytest.mark.parametrize(
    "options",
    [
        {"entropy_threshold": -1},
        {"branch_top_k": 0},
        {"resample_top_p": 0},
        {"explore_temperature": 0},
        {"temperature": 1},
    ],
)
async def test_bad_options_are_400s(options: dict[str, object]) -> None:
    backend = scripted(["x"], capabilities=CAN)
    response = await chat(backend, ENTROPY, ponder={"entropy_decoding": options})
    assert response.status_code == 400
    assert backend.calls == []


# ---- on the embedded model -----------------------------------------------------------------

QUESTION = [
    {"role": "system", "content": "You are a helpful assistant."},
    user("Write one sentence about the sea."),
]
ALWAYS_SURE = {"entropy_threshold": 20, "varentropy_threshold": 100}
NEVER_SURE = {"entropy_threshold": 0, "varentropy_threshold": 0}


@pytest.fixture(scope="module")
def engine_backend() -> Iterator[EmbeddedBackend]:
    from ponder.backends.llamacpp import EmbeddedBackend

    backend = EmbeddedBackend(MODEL, sequences=4, n_ctx=1024)
    yield backend
    asyncio.run(backend.aclose())


async def ask(backend: EmbeddedBackend, **body: Any) -> dict[str, Any]:
    body.setdefault("messages", QUESTION)
    body.setdefault("max_tokens", 32)
    async with asgi_client(create_app(Settings(), backend=backend)) as client:
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def entropy(options: dict[str, Any], **body: Any) -> dict[str, Any]:
    return {"model": ENTROPY, "ponder": {"entropy_decoding": options, "trace": True}, **body}


def content(body: dict[str, Any]) -> str:
    text = body["choices"][0]["message"]["content"]
    assert isinstance(text, str)
    return text


@pytest.mark.integration
async def test_a_rule_that_is_always_sure_writes_the_greedy_answer(
    engine_backend: EmbeddedBackend,
) -> None:
    greedy = await ask(engine_backend, model=MODEL, temperature=0)
    adaptive = await ask(engine_backend, **entropy(ALWAYS_SURE, temperature=0.9, seed=1))
    assert content(greedy).strip()
    assert content(adaptive) == content(greedy)
    (actions,) = trace_steps(adaptive, "actions")
    assert actions["argmax"] == adaptive["usage"]["completion_tokens"]
    assert actions["explore"] == actions["branch"] == actions["resample"] == 0


@pytest.mark.integration
async def test_a_rule_that_is_never_sure_samples_by_seed(engine_backend: EmbeddedBackend) -> None:
    answers = [await ask(engine_backend, **entropy(NEVER_SURE, seed=seed)) for seed in (1, 2, 3)]
    texts = [content(a) for a in answers]
    assert all(t.strip() for t in texts), texts
    assert len(set(texts)) >= 2, texts
    for answer in answers:
        (actions,) = trace_steps(answer, "actions")
        assert actions["resample"] == answer["usage"]["completion_tokens"]
        assert actions["argmax"] == 0
    # a seed gives the same answer again
    again = await ask(engine_backend, **entropy(NEVER_SURE, seed=1))
    assert content(again) == texts[0]


@pytest.mark.integration
async def test_the_logit_bias_still_shapes_what_the_rule_reads(
    engine_backend: EmbeddedBackend,
) -> None:
    greedy = content(await ask(engine_backend, model=MODEL, temperature=0))
    first = engine_backend._model.tokenize(greedy, add_special=False)[0]
    ban = {str(first): -100}
    banned_greedy = content(await ask(engine_backend, model=MODEL, temperature=0, logit_bias=ban))
    banned = content(await ask(engine_backend, **entropy(ALWAYS_SURE, logit_bias=ban)))
    assert banned == banned_greedy != greedy


@pytest.mark.integration
async def test_the_answer_streams_token_by_token(engine_backend: EmbeddedBackend) -> None:
    body = entropy(NEVER_SURE, seed=4, max_tokens=32)
    whole = content(await ask(engine_backend, **body))
    async with asgi_client(create_app(Settings(), backend=engine_backend)) as client:
        response = await client.post(
            "/v1/chat/completions", json={**body, "messages": QUESTION, "stream": True}
        )
    assert response.status_code == 200, response.text
    sse_events(response.text)  # a well-formed stream that ends with [DONE]
    pieces = streamed_pieces(response.text)
    assert len(pieces) > 3
    assert "".join(pieces) == whole


@pytest.mark.integration
async def test_adaptive_and_ordinary_sequences_share_a_batch(
    engine_backend: EmbeddedBackend,
) -> None:
    """An adaptive request decoding beside an ordinary one changes neither: each keeps the
    answer it gives alone."""
    greedy_alone = content(await ask(engine_backend, model=MODEL, temperature=0))
    sampled_alone = content(await ask(engine_backend, **entropy(NEVER_SURE, seed=9)))
    before = engine_backend.engine_stats()
    greedy, sampled = await asyncio.gather(
        ask(engine_backend, model=MODEL, temperature=0),
        ask(engine_backend, **entropy(NEVER_SURE, seed=9)),
    )
    after = engine_backend.engine_stats()
    assert before is not None and after is not None
    assert after.batch_sequences[2] > before.batch_sequences[2]
    assert content(sampled) == sampled_alone
    assert content(greedy) == greedy_alone


@pytest.mark.integration
async def test_the_output_grammar_still_holds_while_the_rule_samples(
    engine_backend: EmbeddedBackend,
) -> None:
    body = entropy(NEVER_SURE, seed=5, max_tokens=24, response_format={"type": "json_object"})
    text = content(await ask(engine_backend, **body))
    assert text.lstrip().startswith("{"), text
