"""Long silent stretches of a stream carry `: keep-alive` comments, and the stream is intact."""

from __future__ import annotations

import json

from ponder.config import Settings
from ponder.proxy import create_app
from ponder.testing import ScriptedBackend
from tests.conftest import MODEL, asgi_client, scripted, sse_data, streamed_text, user

COMMENT = ": keep-alive"


async def stream(backend: ScriptedBackend, model: str, keepalive_s: float, **fields: object) -> str:
    app = create_app(Settings(stream_keepalive_s=keepalive_s), backend=backend)
    body = {"model": model, "messages": [user("2+2?")], "stream": True, **fields}
    async with asgi_client(app) as client:
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    return response.text


async def test_a_silent_strategy_sends_comments_until_its_answer() -> None:
    backend = scripted(lambda call, i: "4", latency_s=0.3)
    raw = await stream(backend, f"sc-{MODEL}", 0.05, ponder={"sc": {"samples": 2}})
    lines = [line for line in raw.split("\n") if line]
    first_comment = lines.index(COMMENT)
    # the role chunk came first, the comments while both samples were drawn, then the answer
    assert json.loads(lines[0][6:])["choices"][0]["delta"]["role"] == "assistant"
    assert lines.count(COMMENT) >= 3
    assert all(line.startswith("data: ") for line in lines[first_comment + lines.count(COMMENT) :])
    assert streamed_text(raw) == "4"
    assert sse_data(raw)[-1] == "[DONE]"


async def test_pass_through_starts_the_stream_when_the_first_token_is_slow() -> None:
    backend = scripted(["Four."], latency_s=0.3)
    raw = await stream(backend, MODEL, 0.05)
    lines = [line for line in raw.split("\n") if line]
    assert json.loads(lines[0][6:])["choices"][0]["delta"]["role"] == "assistant"
    assert lines[1] == COMMENT
    assert streamed_text(raw) == "Four."
    assert sse_data(raw)[-1] == "[DONE]"


async def test_no_comment_while_tokens_flow() -> None:
    raw = await stream(scripted(["Four and more words."]), MODEL, 5.0)
    assert COMMENT not in raw
    assert streamed_text(raw) == "Four and more words."
