"""Every strategy and plugin answers through all three front ends (Chat Completions, Anthropic
Messages, Responses), streamed and not, with the same answer and usage, and the backend sees
the same calls with the same messages for the same conversation: a strategy never knows which
front end called it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from ponder.backends.base import Capabilities
from ponder.config import Settings
from ponder.plugins.search_provider import SearxngProvider, WebSearch
from ponder.proxy import create_app
from ponder.spl_store import Lifecycle, Store
from ponder.strategies.registry import default_registry
from ponder.testing import Call, ScriptedBackend
from tests.conftest import MODEL, asgi_client, scripted
from tests.test_plugin_proxy import pool_of

SYSTEM = "Be brief."
TURNS = ["What is 6 * 7?", "Let me think.", "Answer please."]
# One reply every parser can read: a program that prints an answer, a pick, a rating, a
# verdict, a JSON object and a final answer.
REPLY = (
    '{"answer": 42}\n```python\nprint("The answer is 42.")\n```\n'
    "Selected: 1\nVERDICT: NO ISSUES\nRating: 8\nThe answer is 42."
)
OPTIONS: dict[str, dict[str, Any]] = {
    "memory": {"context_window": 4096},
    "compact": {"context_window": 4096},
    "longcepo": {"context_window": 4096},
}
# The plugins that need a service of the operator's; mcp starts a process per server, so its
# own tests cover it (it is refused the same way through every front end here).
UNSERVED = {"mcp"}
# The strategies that read the model's confidence, served by a backend that says it has it.
CAPABLE = Capabilities(logprobs=True, continuation=True, adaptive_sampling=True)
NEEDS_CAPABILITIES = {"deepconf", "cot_decoding", "thinkdeeper", "entropy_decoding"}

registry = default_registry(entry_points=False)
SLUGS = sorted(registry.slugs)


def reply(call: Call, index: int) -> str:
    return REPLY


def serving_app(backend: ScriptedBackend, tmp_path: Path) -> FastAPI:
    settings = Settings(
        enable_code_execution=True,
        code_timeout_s=10,
        code_memory_mb=256,
        enable_url_fetch=True,
        web_search_url="http://search.invalid",
    )
    store = Store(f"sqlite:///{tmp_path}/store.db", Lifecycle(explore=0.0))
    app = create_app(settings, backend=backend, store=store)
    service = app.state.ponder.chat
    nothing = httpx.MockTransport(lambda r: httpx.Response(200, json={"results": []}))
    search = WebSearch(SearxngProvider("http://search.invalid", timeout_s=5, transport=nothing))
    service.resources = {**service.resources, "web_search": search, "proxy": pool_of(backend)}
    return app


# ---- the same conversation, in each front end's words ---------------------------------------


def chat_body(model: str, ponder: dict[str, Any], stream: bool) -> dict[str, Any]:
    roles = ("user", "assistant", "user")
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": SYSTEM},
            *({"role": r, "content": t} for r, t in zip(roles, TURNS, strict=True)),
        ],
        "max_tokens": 64,
        "ponder": ponder,
        "stream": stream,
        **({"stream_options": {"include_usage": True}} if stream else {}),
    }


def messages_body(model: str, ponder: dict[str, Any], stream: bool) -> dict[str, Any]:
    roles = ("user", "assistant", "user")
    return {
        "model": model,
        "system": SYSTEM,
        "messages": [{"role": r, "content": t} for r, t in zip(roles, TURNS, strict=True)],
        "max_tokens": 64,
        "ponder": ponder,
        "stream": stream,
    }


def responses_body(model: str, ponder: dict[str, Any], stream: bool) -> dict[str, Any]:
    roles = ("user", "assistant", "user")
    return {
        "model": model,
        "instructions": SYSTEM,
        "input": [{"role": r, "content": t} for r, t in zip(roles, TURNS, strict=True)],
        "max_output_tokens": 64,
        "ponder": ponder,
        "stream": stream,
        "store": False,
    }


def sse_data(text: str) -> list[dict[str, Any]]:
    events = []
    for line in text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(json.loads(line.removeprefix("data: ")))
    return events


# Each front end's (answer, output tokens, prompt tokens, backend calls) from its answer or
# stream: the calls in the `x-ponder-backend-calls` header of an answer, in `ponder.backend_calls`
# on a stream's last event (its headers leave before the count is known).
Reading = tuple[str, int, int, int]


def header_calls(response: httpx.Response) -> int:
    return int(response.headers["x-ponder-backend-calls"])


def read_chat(response: httpx.Response, stream: bool) -> Reading:
    if not stream:
        body = response.json()
        usage = body["usage"]
        content = body["choices"][0]["message"]["content"] or ""
        return content, usage["completion_tokens"], usage["prompt_tokens"], header_calls(response)
    events = sse_data(response.text)
    text = "".join(
        e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices")
    )
    usage = events[-1]["usage"]
    calls = events[-1]["ponder"]["backend_calls"]
    return text, usage["completion_tokens"], usage["prompt_tokens"], calls


def read_messages(response: httpx.Response, stream: bool) -> Reading:
    if not stream:
        body = response.json()
        text = "".join(b["text"] for b in body["content"] if b["type"] == "text")
        usage = body["usage"]
        calls = header_calls(response)
    else:
        events = sse_data(response.text)
        text = "".join(
            e["delta"]["text"]
            for e in events
            if e["type"] == "content_block_delta" and e["delta"]["type"] == "text_delta"
        )
        (last,) = [e for e in events if e["type"] == "message_delta"]
        usage, calls = last["usage"], last["ponder"]["backend_calls"]
    prompt = usage["input_tokens"] + usage.get("cache_read_input_tokens", 0)
    return text, usage["output_tokens"], prompt, calls


def read_responses(response: httpx.Response, stream: bool) -> Reading:
    if stream:
        events = sse_data(response.text)
        text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        (last,) = [e for e in events if e["type"] == "response.completed"]
        body, calls = last["response"], last["ponder"]["backend_calls"]
    else:
        body = response.json()
        text, calls = None, header_calls(response)
    answer = "".join(
        part["text"]
        for item in body["output"]
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )
    assert text is None or text == answer
    usage = body["usage"]
    return answer, usage["output_tokens"], usage["input_tokens"], calls


FRONT_ENDS: dict[str, tuple[str, Callable[..., dict[str, Any]], Callable[..., Reading]]] = {
    "chat": ("/v1/chat/completions", chat_body, read_chat),
    "messages": ("/v1/messages", messages_body, read_messages),
    "responses": ("/v1/responses", responses_body, read_responses),
}


def conversation_of(call: Call) -> tuple[tuple[str, str], ...]:
    return tuple((m.role, m.text) for m in call.messages)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("slug", SLUGS)
async def test_every_route_answers_alike_through_every_front_end(
    slug: str, stream: bool, tmp_path: Path
) -> None:
    model = f"{slug}-{MODEL}"
    ponder = {slug: OPTIONS[slug]} if slug in OPTIONS else {}
    seen: dict[str, tuple[Reading, list[tuple[tuple[str, str], ...]]]] = {}
    for name, (path, body, read) in FRONT_ENDS.items():
        backend = scripted(reply)
        if slug in NEEDS_CAPABILITIES:
            backend = scripted(reply, capabilities=CAPABLE)
        (tmp_path / name).mkdir()
        app = serving_app(backend, tmp_path / name)
        async with asgi_client(app) as client:
            response = await client.post(path, json=body(model, ponder, stream))
        if slug in UNSERVED:
            assert response.status_code == 403, (name, response.text)
            assert "PONDER_MCP_CONFIG" in response.text
            assert backend.calls == []
            continue
        assert response.status_code == 200, (name, response.text)
        assert backend.calls, name
        calls = sorted(conversation_of(c) for c in backend.calls)
        reading = read(response, stream)
        assert reading[3] == len(backend.calls), f"{name}: reports other backend calls"
        seen[name] = (reading, calls)
    if slug in UNSERVED:
        return
    (chat_reading, chat_calls) = seen["chat"]
    assert chat_reading[0], "an answer"
    for name in ("messages", "responses"):
        reading, calls = seen[name]
        assert calls == chat_calls, f"{name}: the backend saw other calls"
        assert reading == chat_reading, f"{name}: another answer or usage"
