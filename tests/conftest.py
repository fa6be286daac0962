from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fastapi import FastAPI

from ponder.config import Settings
from ponder.proxy import create_app
from ponder.spl_store import Lifecycle, Store
from ponder.testing import Call, Reply, ScriptedBackend, running_server
from ponder.tokens import count_prompt_tokens, count_tokens
from ponder.types import Completion
from tests.services import RedisServer, fresh_database, postgres_server, redis_server

if TYPE_CHECKING:
    from ponder.backends.llamacpp import EmbeddedBackend

MODEL = "smollm2-135m"


@pytest.fixture(scope="session", autouse=True)
def _session_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Apps built by session- and module-scoped fixtures keep SPL and memory data in a
    temporary SQLite file, never in the user's data directory."""
    url = f"sqlite:///{tmp_path_factory.mktemp('store')}/ponder.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PONDER_DATABASE_URL", url)
        yield


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """A test that runs `ponder.cli.main` installs Ponder's log handler; it goes afterwards, so
    later tests' output is not written through it."""
    root = logging.getLogger()
    level = root.level
    yield
    for handler in [h for h in root.handlers if getattr(h, "ponder", False)]:
        root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture(autouse=True)
def _private_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's own apps get their own temporary SQLite file (created only if used)."""
    monkeypatch.setenv("PONDER_DATABASE_URL", f"sqlite:///{tmp_path}/ponder.db")


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A PostgreSQL server URL for the whole session (see tests/services.py)."""
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def redis() -> Iterator[RedisServer]:
    """A private Redis server for the whole session (see tests/services.py)."""
    with redis_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database on each real engine: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/ponder.db"
    return fresh_database(request.getfixturevalue("postgres"))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """An SPL and memory store in a fresh SQLite file, without a control arm (`explore` 0), so
    that every learning request uses strategies and the fixed rates decide; the control arm's
    own tests turn it on."""
    s = Store(f"sqlite:///{tmp_path}/store.db", Lifecycle(explore=0.0))
    yield s
    s.close()


def scripted(*args: object, **kwargs: object) -> ScriptedBackend:
    """A ScriptedBackend that serves the same model id as the embedded default."""
    kwargs.setdefault("model_ids", (MODEL,))
    return ScriptedBackend(*args, **kwargs)  # type: ignore[arg-type]


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def conversation(system: str, *turns: str) -> list[dict[str, str]]:
    """Request messages: a system prompt, then `turns` alternating user and assistant, the user
    first."""
    roles = ("user", "assistant")
    return [
        {"role": "system", "content": system},
        *({"role": roles[i % 2], "content": text} for i, text in enumerate(turns)),
    ]


@pytest.fixture(scope="session")
def embedded() -> Iterator[EmbeddedBackend]:
    """The real embedded model, loaded once for every integration test."""
    from ponder.backends.llamacpp import EmbeddedBackend

    backend = EmbeddedBackend(MODEL)
    yield backend
    asyncio.run(backend.aclose())


@pytest.fixture
def backend() -> ScriptedBackend:
    return scripted(lambda call, i: f"reply {i}: {call.prompt}")


@pytest.fixture
def app(backend: ScriptedBackend) -> FastAPI:
    return create_app(Settings(), backend=backend)


def asgi_client(app: FastAPI) -> httpx.AsyncClient:
    """An httpx client that calls `app` in-process, on the test's own event loop."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ponder")


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app) as c:
        yield c


@pytest.fixture
def server(app: FastAPI) -> Iterator[str]:
    with running_server(app) as base_url:
        yield base_url


async def chat(
    backend: ScriptedBackend,
    model: str,
    *,
    store: Store | None = None,
    settings: Settings | None = None,
    headers: Mapping[str, str] | None = None,
    **fields: object,
) -> httpx.Response:
    """POST one chat completion to a fresh app over `backend` (default registry, in-process),
    with `store` as its SPL and memory store when given. `messages` defaults to one user turn,
    "hello"."""
    fields.setdefault("messages", [user("hello")])
    app = create_app(settings or Settings(), backend=backend, store=store)
    async with asgi_client(app) as c:
        return await c.post(
            "/v1/chat/completions", json={"model": model, **fields}, headers=headers
        )


def chat_scope() -> dict[str, Any]:
    """The ASGI scope of `POST /v1/chat/completions` with a JSON body, for tests that drive the
    app's ASGI interface themselves (to pace or cut the client's side)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"host", b"ponder")],
        "client": ("127.0.0.1", 1),
        "server": ("ponder", 80),
    }


def usage_for(
    backend: ScriptedBackend, replies: Sequence[str], answer: str | None = None
) -> dict[str, Any]:
    """The usage a response should report when every call to `backend` was answered and
    `replies` are all the texts it answered with: prompt tokens counted once per backend call
    (as ScriptedBackend does, whatever its `n`), completion tokens once per reply, and as
    reasoning tokens every reply's but the one that produced the answer (`answer`, by default
    the last reply; "" when no reply is the answer's own)."""
    prompt = sum(count_prompt_tokens(call.messages) for call in backend.calls)
    completion = sum(count_tokens(reply) for reply in replies)
    own = count_tokens(replies[-1] if answer is None and replies else answer or "")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": completion - own},
    }


def trace_steps(body: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    """The entries of a response's `ponder.trace` whose step is `name`, in order."""
    return [step for step in body["ponder"]["trace"] if step["step"] == name]


def confident(text: str, probability: float) -> Completion:
    """A rating `text` the model gave with `probability`, the rest on "2" (which begins no
    longer number on a 0-10 scale), with its log-probabilities as a backend reports them
    (`logprobs.content`)."""
    top = [{"token": text, "logprob": math.log(probability)}]
    if probability < 1:
        top.append({"token": "2", "logprob": math.log(1 - probability)})
    entry = {"token": text, "logprob": math.log(probability), "top_logprobs": top}
    return Completion(text, logprobs={"content": [entry]})


def rated_eight(call: Call, sureness: float) -> Reply:
    """A judge's rating "8", by a model `sureness` sure of it: with its log-probabilities only
    when the call asks for them, as a backend gives them."""
    return confident("8", sureness) if call.sampling.logprobs else "8"


def expected_eights(sureness: Sequence[float]) -> list[float]:
    """The expected scores of `rated_eight` ratings read from their log-probabilities."""
    return [p * 8 + (1 - p) * 2 for p in sureness]


def logprobs_asked(calls: Sequence[Call]) -> set[tuple[bool, int | None]]:
    """What `calls` asked for: (logprobs, top_logprobs)."""
    return {(c.sampling.logprobs, c.sampling.top_logprobs) for c in calls}


def assert_error(response: httpx.Response, status: int, **expected: object) -> None:
    """`response` is an OpenAI-shaped error with HTTP `status` whose error fields named in
    `expected` have those values."""
    assert response.status_code == status
    error = response.json()["error"]
    assert {field: error[field] for field in expected} == expected


def sse_data(raw: str) -> list[str]:
    """The `data:` payloads of an SSE body, in order (`[DONE]` included when it came)."""
    return [line[6:] for line in raw.split("\n") if line.startswith("data: ")]


def sse_events(raw: str) -> list[dict[str, Any]]:
    """The JSON events of an SSE body, without the final `[DONE]`."""
    lines = sse_data(raw)
    assert lines and lines[-1] == "[DONE]", f"stream did not end with [DONE]: {lines[-1:]}"
    return [json.loads(line) for line in lines[:-1]]


def stream_error(raw: str) -> dict[str, Any]:
    """The in-band error that ends an SSE body whose request failed after the stream began (such
    a stream has no `[DONE]`)."""
    data = sse_data(raw)
    assert "[DONE]" not in data
    error: dict[str, Any] = json.loads(data[-1])["error"]
    return error


def stream_choices(raw: str) -> list[dict[str, Any]]:
    """Every choice entry of every chunk of an SSE body, in order."""
    return [choice for event in sse_events(raw) for choice in event.get("choices", [])]


def finish_reasons(raw: str) -> list[str]:
    """The finish reasons an SSE body sent, in order."""
    return [choice["finish_reason"] for choice in stream_choices(raw) if choice["finish_reason"]]


def streamed_pieces(raw: str, field: str = "content", index: int = 0) -> list[str]:
    """The non-empty `delta.<field>` pieces of choice `index` in an SSE body, in order."""
    return [
        choice["delta"][field]
        for choice in stream_choices(raw)
        if choice["index"] == index and choice["delta"].get(field)
    ]


def streamed_text(raw: str, field: str = "content", index: int = 0) -> str:
    """All `delta.<field>` text of choice `index` in an SSE body, joined."""
    return "".join(streamed_pieces(raw, field, index))


def reference_greedy(model_id: str, messages: list[dict[str, str]], max_tokens: int) -> str:
    """What llama.cpp's own single-sequence chat completion (the embedded backend before the
    batched engine) writes at temperature 0 for `messages`, with flash attention on as the
    engine has it (the kernel's rounding differs from the plain one's, and over a long answer
    greedy decoding can take another word: that is the kernel, not the batching)."""
    from llama_cpp import Llama

    from ponder import catalog

    llama = Llama(
        model_path=str(catalog.resolve(model_id).path),
        n_ctx=1024,
        n_threads=2,
        flash_attn=True,
        verbose=False,
    )
    try:
        reply: Any = llama.create_chat_completion(
            messages=messages,  # type: ignore[arg-type]
            temperature=0.0,
            max_tokens=max_tokens,
        )
        return str(reply["choices"][0]["message"]["content"])
    finally:
        llama.close()
