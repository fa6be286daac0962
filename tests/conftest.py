from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import httpx
import pytest
from fastapi import FastAPI

from ponder.config import Settings
from ponder.proxy import create_app
from ponder.testing import ScriptedBackend, running_server

if TYPE_CHECKING:
    from ponder.backends.llamacpp import EmbeddedBackend

MODEL = "smollm2-135m"


def scripted(*args: object, **kwargs: object) -> ScriptedBackend:
    """A ScriptedBackend that serves the same model id as the embedded default."""
    kwargs.setdefault("model_ids", (MODEL,))
    return ScriptedBackend(*args, **kwargs)  # type: ignore[arg-type]


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


@pytest.fixture(scope="session")
def embedded() -> Iterator[EmbeddedBackend]:
    """The real embedded model, loaded once for every integration test."""
    from ponder.backends.llamacpp import EmbeddedBackend

    backend = EmbeddedBackend()
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


async def chat(backend: ScriptedBackend, model: str, **fields: object) -> httpx.Response:
    """POST one chat completion to a fresh app over `backend` (default registry, in-process).
    `messages` defaults to one user turn, "hello"."""
    fields.setdefault("messages", [user("hello")])
    async with asgi_client(create_app(Settings(), backend=backend)) as c:
        return await c.post("/v1/chat/completions", json={"model": model, **fields})


def sse_events(raw: str) -> list[dict[str, object]]:
    """The JSON events of an SSE body, without the final `[DONE]`."""
    import json

    lines = [line[6:] for line in raw.split("\n") if line.startswith("data: ")]
    assert lines and lines[-1] == "[DONE]", f"stream did not end with [DONE]: {lines[-1:]}"
    return [json.loads(line) for line in lines[:-1]]


def streamed_text(raw: str, field: str = "content", index: int = 0) -> str:
    """All `delta.<field>` text of choice `index` in an SSE body, joined."""
    out = []
    for event in sse_events(raw):
        for choice in event.get("choices", []):  # type: ignore[attr-defined]
            if choice["index"] == index:
                out.append(choice["delta"].get(field) or "")
    return "".join(out)
