"""Log lines: JSON with the request id, and no secret anywhere, at DEBUG, whatever happens."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from ponder.config import Settings
from ponder.errors import BackendUnavailable
from ponder.logs import MASK, configure
from ponder.proxy import create_app
from ponder.testing import FakeUpstream, running_server
from tests.conftest import MODEL, asgi_client, scripted, user

API_KEY = "canary-api-key-7f3a9c"
UPSTREAM_KEY = "canary-upstream-key-51d0e2"
WRONG_KEY = "canary-wrong-key-c08b44"
CANARIES = (API_KEY, UPSTREAM_KEY, WRONG_KEY)


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Every log record, at DEBUG, as JSON lines in a buffer; the root logger is restored."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buffer = io.StringIO()
    configure(
        Settings(
            api_keys=[f"team:{API_KEY}"],
            upstream_api_key=UPSTREAM_KEY,
            log_level="DEBUG",
            log_format="json",
        ),
        buffer,
    )
    yield buffer
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def records(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


async def test_a_record_carries_the_request_id_of_its_request(captured: io.StringIO) -> None:
    backend = scripted([BackendUnavailable("the engine is down")])
    app = create_app(Settings(), backend=backend)
    async with asgi_client(app) as c:
        response = await c.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [user("hi")]},
            headers={"x-request-id": "req-abc-123"},
        )
    assert response.status_code == 503
    (failed,) = [r for r in records(captured) if r["message"].startswith("request failed")]
    assert failed["request_id"] == "req-abc-123"
    assert failed["level"] == "WARNING" and failed["logger"] == "ponder.proxy.errors"
    assert set(failed) == {"ts", "level", "logger", "message", "request_id"}


def test_a_secret_in_a_message_or_an_exception_is_masked(captured: io.StringIO) -> None:
    log = logging.getLogger("ponder.test")
    log.error("calling upstream with %s", UPSTREAM_KEY)
    try:
        raise RuntimeError(f"bad key {API_KEY}")
    except RuntimeError:
        log.exception("failed")
    lines = captured.getvalue()
    assert UPSTREAM_KEY not in lines and API_KEY not in lines
    message, failure = records(captured)
    assert message["message"] == f"calling upstream with {MASK}"
    assert f"RuntimeError: bad key {MASK}" in failure["exception"]


def test_no_key_appears_in_any_log_line(captured: io.StringIO) -> None:
    """Requests with wrong and right keys, through the openai backend with an upstream key,
    plain and streamed, failing and not: the canaries are nowhere in the DEBUG log."""
    fake = FakeUpstream()
    with running_server(fake.app) as upstream_url:
        settings = Settings(
            api_keys=[f"team:{API_KEY}"],
            upstream_api_key=UPSTREAM_KEY,
            backend="openai",
            base_url=upstream_url,
        )
        with running_server(create_app(settings)) as url:
            wrong = openai.OpenAI(base_url=url, api_key=WRONG_KEY, max_retries=0)
            with pytest.raises(openai.AuthenticationError):
                wrong.models.list()
            right = openai.OpenAI(base_url=url, api_key=API_KEY, max_retries=0)
            messages: Any = [user("hello")]
            assert right.chat.completions.create(model="fake-model", messages=messages)
            stream = right.chat.completions.create(
                model="fake-model", messages=messages, stream=True
            )
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            with pytest.raises(openai.NotFoundError):
                right.chat.completions.create(model="no-such-model", messages=messages)
            assert httpx.get(f"{url.removesuffix('/v1')}/metrics", timeout=10).status_code == 401
    assert fake.requests  # the upstream was really called, with the upstream key
    lines = captured.getvalue()
    assert len(lines.splitlines()) >= 5  # there is a log to scan: uvicorn's, httpx's, ours
    for canary in CANARIES:
        assert canary not in lines
