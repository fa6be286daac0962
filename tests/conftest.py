from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from fastapi import FastAPI

from ponder.config import Settings
from ponder.proxy import create_app
from ponder.testing import ScriptedBackend, running_server

MODEL = "smollm2-135m"


def scripted(*args: object, **kwargs: object) -> ScriptedBackend:
    """A ScriptedBackend that serves the same model id as the embedded default."""
    kwargs.setdefault("model_ids", (MODEL,))
    return ScriptedBackend(*args, **kwargs)  # type: ignore[arg-type]


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


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
