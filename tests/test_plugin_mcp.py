"""`mcp`, a plugin: the tools of the operator's MCP servers are offered to the model, Ponder
calls them in a bounded loop, and the rest of the route answers with their results
(`mcp-model`, `mcp&sc-model`). The servers are real MCP servers over stdio
(tests/mcp_fake_server.py, started once per module for most tests); the model is a
ScriptedBackend that asks for tools."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
import pytest_asyncio
from fastapi import FastAPI
from mcp.server.mcpserver import MCPServer
from starlette.types import Receive, Scope, Send

from ponder.backends.base import Capabilities
from ponder.config import Settings
from ponder.errors import BackendError
from ponder.plugins.mcp import CUT, NO_MORE_CALLS, RESULTS_HEADER
from ponder.plugins.mcp_config import McpFile, load_mcp_file
from ponder.plugins.mcp_hub import McpHub, exposed_names
from ponder.plugins.resources import close_resources
from ponder.proxy import create_app
from ponder.strategies.react import CONTINUE
from ponder.testing import Call, Reply, ScriptedBackend
from ponder.types import Completion, Message, ToolCall
from tests.conftest import (
    MODEL,
    asgi_client,
    assert_error,
    chat,
    scripted,
    sse_events,
    streamed_text,
    trace_steps,
    usage_for,
    user,
)

module_loop = pytest.mark.asyncio(loop_scope="module")
"""The loop of the module's servers (`hub`): every test that uses them runs on it."""

SERVER = str(Path(__file__).with_name("mcp_fake_server.py"))
QUESTION = "What is 2 + 3?"
ADD_SCHEMA = {
    "type": "object",
    "properties": {"a": {"title": "A", "type": "integer"}, "b": {"title": "B", "type": "integer"}},
    "required": ["a", "b"],
    "title": "addArguments",
}
LOOKUP_SCHEMA = {
    "type": "object",
    "properties": {"key": {"title": "Key", "type": "string"}},
    "required": ["key"],
    "title": "lookupArguments",
}


def fake(name: str, *args: str) -> dict[str, Any]:
    return {"name": name, "command": sys.executable, "args": [SERVER, *args]}


def hub_of(*servers: dict[str, Any], **timing: float) -> McpHub:
    return McpHub(McpFile.model_validate({"servers": list(servers), **timing}))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub() -> AsyncIterator[McpHub]:
    """Two servers with the same tools, started on the first request that needs them."""
    servers = hub_of(fake("calc"), fake("spare"))
    yield servers
    await servers.aclose()


def function(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": schema},
    }


def offered(*servers: str) -> tuple[dict[str, Any], ...]:
    """The tools the model is offered for `servers`, in order."""
    return tuple(
        f
        for s in servers
        for f in (
            function(f"{s}__add", "Add two integers.", ADD_SCHEMA),
            function(f"{s}__lookup", "Look up a fact by its key.", LOOKUP_SCHEMA),
        )
    )


def asks(*calls: tuple[str, dict[str, Any]], content: str | None = None) -> Completion:
    """A model's round that calls tools."""
    return Completion(
        content=content,
        finish_reason="tool_calls",
        tool_calls=tuple(
            ToolCall(f"call_{i}", name, json.dumps(arguments))
            for i, (name, arguments) in enumerate(calls)
        ),
    )


def tooled(replies: list[Reply]) -> ScriptedBackend:
    """A backend that understands `tools`, answering `replies` in order."""
    return scripted(replies, capabilities=Capabilities(tools=True))


def result_block(number: int, source: str, text: str) -> str:
    return (
        f"<<<BEGIN UNTRUSTED TOOL RESULT {number}: {source}>>>\n{text}\n"
        f"<<<END UNTRUSTED TOOL RESULT {number}>>>"
    )


def mcp_app(backend: ScriptedBackend, hub: McpHub) -> FastAPI:
    """An app over `backend` whose mcp plugin is lent `hub` (as PONDER_MCP_CONFIG would)."""
    app = create_app(Settings(), backend=backend)
    chat_service = app.state.ponder.chat
    chat_service.resources = {**chat_service.resources, "mcp": hub}
    return app


async def post(app: FastAPI, model: str, **fields: object) -> httpx.Response:
    fields.setdefault("messages", [user(QUESTION)])
    async with asgi_client(app) as client:
        return await client.post("/v1/chat/completions", json={"model": model, **fields})


def texts(replies: list[Reply]) -> list[str]:
    return [r.content or "" if isinstance(r, Completion) else str(r) for r in replies]


# ---- off by default, and the operator's servers only -------------------------------------------


@module_loop
async def test_the_plugin_is_off_until_the_operator_lists_servers() -> None:
    backend = scripted(["never"])
    response = await chat(backend, f"mcp-{MODEL}")
    assert_error(response, 403, type="permission_error", code="permission_denied", param="model")
    assert "PONDER_MCP_CONFIG" in response.json()["error"]["message"]
    assert backend.calls == []


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"servers": [{"name": "x", "command": "/bin/sh"}]}, "ponder.mcp.servers.0"),
        ({"command": "/bin/sh", "args": ["-c", "id"]}, "ponder.mcp.command"),
        ({"url": "http://evil.test/mcp"}, "ponder.mcp.url"),
    ],
)
@module_loop
async def test_a_client_cannot_name_a_command_or_a_url(
    hub: McpHub, options: dict[str, Any], param: str
) -> None:
    backend = tooled(["never"])
    response = await post(mcp_app(backend, hub), f"mcp-{MODEL}", ponder={"mcp": options})
    assert_error(response, 400, type="invalid_request_error", param=param)
    assert backend.calls == []
    assert hub.names == ("calc", "spare")


@module_loop
async def test_an_unknown_server_name_is_a_400_listing_the_servers(hub: McpHub) -> None:
    backend = tooled(["never"])
    response = await post(
        mcp_app(backend, hub), f"mcp-{MODEL}", ponder={"mcp": {"servers": ["calc", "nope"]}}
    )
    assert_error(response, 400, type="invalid_request_error", param="ponder.mcp.servers")
    assert response.json()["error"]["message"] == (
        "no MCP server called 'nope' on this server; its servers: calc, spare"
    )
    assert backend.calls == []


@module_loop
async def test_a_request_with_its_own_tools_is_refused(hub: McpHub) -> None:
    backend = tooled(["never"])
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    response = await post(mcp_app(backend, hub), f"mcp-{MODEL}", tools=tools)
    assert_error(response, 400, code="unsupported_parameter", param="tools")
    assert backend.calls == []


# ---- the loop -------------------------------------------------------------------------------


@module_loop
async def test_the_model_calls_a_tool_and_the_route_answers_with_its_result(hub: McpHub) -> None:
    replies: list[Reply] = [asks(("calc__add", {"a": 2, "b": 3})), "It is 5.", "2 + 3 = 5"]
    backend = tooled(replies)
    response = await post(mcp_app(backend, hub), f"mcp-{MODEL}", ponder={"trace": True})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "2 + 3 = 5"
    assert response.headers["x-ponder-backend-calls"] == "3"
    assert len(backend.calls) == 3
    first, second, final = backend.calls
    # round 1: the question, every tool of both servers, namespaced
    assert first.messages == (Message("user", QUESTION),)
    assert first.sampling.tools == offered("calc", "spare")
    assert (first.sampling.tool_choice, first.sampling.max_tokens) == ("auto", 512)
    # round 2: the call, and its result as a tool message marked as the tool's output
    block = result_block(1, 'calc__add {"a": 2, "b": 3}', "5")
    assert second.messages == (
        Message("user", QUESTION),
        Message(
            "assistant", None, tool_calls=(ToolCall("call_0", "calc__add", '{"a": 2, "b": 3}'),)
        ),
        Message("tool", block, name="calc__add", tool_call_id="call_0"),
    )
    # the answer: the rest of the route (none), on the question with the results, no tools
    assert final.messages == (Message("user", f"{QUESTION}\n\n{RESULTS_HEADER}\n\n{block}"),)
    assert final.sampling.tools == ()
    assert body["usage"] == usage_for(backend, texts(replies))
    (call,) = trace_steps(body, "mcp_call")
    assert (call["tool"], call["server"], call["arguments"], call["result"]) == (
        "calc__add",
        "calc",
        '{"a": 2, "b": 3}',
        "5",
    )
    assert call["error"] is False
    (rounds,) = trace_steps(body, "mcp_rounds")
    assert (rounds["rounds"], rounds["calls"], rounds["stopped"]) == (2, 1, "answered")


@module_loop
async def test_a_model_that_calls_no_tool_costs_one_round(hub: McpHub) -> None:
    backend = tooled(["5, no tools needed", "5"])
    response = await post(mcp_app(backend, hub), f"mcp-{MODEL}")
    assert response.json()["choices"][0]["message"]["content"] == "5"
    assert [c.messages for c in backend.calls] == [(Message("user", QUESTION),)] * 2


@module_loop
async def test_one_round_calls_several_tools_and_only_the_chosen_servers(hub: McpHub) -> None:
    replies: list[Reply] = [
        asks(("spare__lookup", {"key": "capital_of_france"}), ("spare__add", {"a": 40, "b": 2})),
        "done",
        "Paris, 42",
    ]
    backend = tooled(replies)
    response = await post(
        mcp_app(backend, hub), f"mcp-{MODEL}", ponder={"mcp": {"servers": ["spare"]}}
    )
    assert response.status_code == 200, response.text
    assert backend.calls[0].sampling.tools == offered("spare")
    tool_messages = [m for m in backend.calls[1].messages if m.role == "tool"]
    assert [(m.tool_call_id, m.text) for m in tool_messages] == [
        ("call_0", result_block(1, 'spare__lookup {"key": "capital_of_france"}', "Paris")),
        ("call_1", result_block(2, 'spare__add {"a": 40, "b": 2}', "42")),
    ]


@module_loop
async def test_a_tool_that_raises_is_an_observation_not_a_failure(hub: McpHub) -> None:
    replies: list[Reply] = [asks(("calc__lookup", {"key": "boom"})), "It failed.", "Unknown."]
    backend = tooled(replies)
    response = await post(mcp_app(backend, hub), f"mcp-{MODEL}", ponder={"trace": True})

    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "Unknown."
    tool = backend.calls[1].messages[-1]
    error = result_block(1, 'calc__lookup {"key": "boom"}', "Error executing tool lookup")
    assert (tool.role, tool.text) == ("tool", error)
    assert "broken" not in tool.text  # the server keeps its exception to itself
    (call,) = trace_steps(response.json(), "mcp_call")
    assert call["error"] is True


@module_loop
async def test_unknown_tools_and_bad_arguments_go_back_to_the_model(hub: McpHub) -> None:
    bad = Completion(
        content=None,
        finish_reason="tool_calls",
        tool_calls=(
            ToolCall("c1", "calc__nope", "{}"),
            ToolCall("c2", "calc__add", "[1, 2]"),
        ),
    )
    backend = tooled([bad, "ok", "final"])
    response = await post(mcp_app(backend, hub), f"mcp-{MODEL}")
    assert response.status_code == 200, response.text
    observations = [m.text for m in backend.calls[1].messages if m.role == "tool"]
    assert observations == [
        "Error: there is no tool 'calc__nope'. The tools are: calc__add, calc__lookup, "
        "spare__add, spare__lookup.",
        "Error: the arguments of a call must be a JSON object",
    ]
    # nothing was called: the answer is on the question as the client sent it
    assert backend.calls[2].messages == (Message("user", QUESTION),)


@module_loop
async def test_the_loop_is_bounded_by_max_rounds_and_max_calls(hub: McpHub) -> None:
    def reply(call: Call, index: int) -> Reply:
        if call.sampling.tools:  # a round: the model never stops asking
            return asks(("calc__add", {"a": 1, "b": 1}), ("calc__add", {"a": 2, "b": 2}))
        return "out of patience"

    backend = tooled(reply)  # type: ignore[arg-type]
    options = {"mcp": {"max_rounds": 2, "max_calls": 3}, "trace": True}
    response = await post(mcp_app(backend, hub), f"mcp-{MODEL}", ponder=options)

    assert response.status_code == 200, response.text
    assert response.headers["x-ponder-backend-calls"] == "3"  # 2 rounds, then the answer
    round_two = [m.text for m in backend.calls[1].messages if m.role == "tool"]
    assert len(round_two) == 2
    final = backend.calls[2].messages[-1].text
    assert final.count("<<<BEGIN UNTRUSTED TOOL RESULT") == 3  # the calls made, in order
    refused = NO_MORE_CALLS.format(limit=3)
    (step,) = [s for s in trace_steps(response.json(), "mcp_call") if "refused" in s]
    assert step["refused"] == refused
    (rounds,) = trace_steps(response.json(), "mcp_rounds")
    assert (rounds["rounds"], rounds["calls"], rounds["stopped"]) == (2, 3, "max_rounds")


@module_loop
async def test_a_long_result_is_cut_to_max_result_chars(hub: McpHub) -> None:
    replies: list[Reply] = [asks(("calc__lookup", {"key": "long"})), "ok", "done"]
    backend = tooled(replies)
    options = {"mcp": {"max_result_chars": 100}}
    await post(mcp_app(backend, hub), f"mcp-{MODEL}", ponder=options)
    tool = backend.calls[1].messages[-1]
    expected = ("0123456789" * 10) + CUT
    assert tool.text == result_block(1, 'calc__lookup {"key": "long"}', expected)


@module_loop
async def test_backends_without_tools_get_react_steps(hub: McpHub) -> None:
    replies: list[Reply] = [
        'Thought: add them\nAction: calc__add[{"a": 2, "b": 3}]',
        "Thought: known\nFinal Answer: 5",
        "The answer is 5",
    ]
    backend = scripted(replies)  # no `tools` capability
    response = await post(
        mcp_app(backend, hub), f"mcp-{MODEL}", ponder={"mcp": {"servers": ["calc"]}}
    )
    assert response.json()["choices"][0]["message"]["content"] == "The answer is 5"
    first, second, final = backend.calls
    assert first.sampling.tools == second.sampling.tools == ()
    system = first.messages[0]
    assert system.role == "system"
    assert "- calc__add: Add two integers. Its input is a JSON object" in system.text
    assert "spare__add" not in system.text
    block = result_block(1, 'calc__add {"a": 2, "b": 3}', "5")
    assert second.messages[1:] == (
        Message("user", QUESTION),
        Message("assistant", 'Thought: add them\nAction: calc__add[{"a": 2, "b": 3}]'),
        Message("user", f"Observation: {block}\n\n{CONTINUE}"),
    )
    assert final.messages == (Message("user", f"{QUESTION}\n\n{RESULTS_HEADER}\n\n{block}"),)


# ---- composition, streaming, failures -----------------------------------------------------------


@module_loop
async def test_mcp_sc_votes_over_samples_that_all_see_the_results(hub: McpHub) -> None:
    samples = iter(["The answer is 5", "The answer is 6", "The answer is 5"])

    def reply(call: Call, index: int) -> Reply:
        if call.sampling.tools:
            tools_done = any(m.role == "tool" for m in call.messages)
            return "enough" if tools_done else asks(("calc__add", {"a": 2, "b": 3}))
        return next(samples)

    backend = tooled(reply)  # type: ignore[arg-type]
    response = await post(
        mcp_app(backend, hub),
        f"mcp&sc-{MODEL}",
        temperature=0.5,
        ponder={"sc": {"samples": 3}},
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "The answer is 5"
    assert response.headers["x-ponder-backend-calls"] == "5"  # 2 rounds, 3 samples
    rounds, drawn = backend.calls[:2], backend.calls[2:]
    assert all(c.sampling.tools == offered("calc", "spare") for c in rounds)
    block = result_block(1, 'calc__add {"a": 2, "b": 3}', "5")
    asked = (Message("user", f"{QUESTION}\n\n{RESULTS_HEADER}\n\n{block}"),)
    assert [(c.messages, c.sampling.tools) for c in drawn] == [(asked, ())] * 3


@module_loop
async def test_the_tool_work_streams_as_reasoning_then_the_answer(hub: McpHub) -> None:
    replies: list[Reply] = [asks(("calc__add", {"a": 2, "b": 3})), "It is 5.", "2 + 3 = 5"]
    backend = tooled(replies)
    response = await post(
        mcp_app(backend, hub), f"mcp-{MODEL}", stream=True, stream_options={"include_usage": True}
    )
    assert response.status_code == 200
    reasoning = streamed_text(response.text, "reasoning_content")
    assert 'Calling calc__add {"a": 2, "b": 3}\n' in reasoning
    assert "calc__add: 5\n" in reasoning
    assert streamed_text(response.text) == "2 + 3 = 5"
    assert [c.stream for c in backend.calls] == [False, False, True]
    assert sse_events(response.text)[-1]["usage"] == usage_for(backend, texts(replies))


@module_loop
async def test_a_backend_failing_in_the_middle_is_an_api_error(hub: McpHub) -> None:
    replies: list[Reply] = [
        asks(("calc__add", {"a": 2, "b": 3})),
        BackendError("the upstream fell over"),
    ]
    backend = tooled(replies)
    response = await post(mcp_app(backend, hub), f"mcp-{MODEL}")
    assert_error(response, 502, type="api_error", code="backend_error")
    assert len(backend.calls) == 2


@module_loop
async def test_a_server_that_fails_or_dies_fails_only_requests_that_need_it() -> None:
    servers = hub_of(
        fake("mortal", "--mortal"),
        {"name": "broken", "command": "/nonexistent/ponder-mcp-server"},
        restart_after_s=0,
    )
    try:
        backend = tooled(["never"])
        app = mcp_app(backend, servers)
        response = await post(app, f"mcp-{MODEL}")  # all servers: broken among them
        assert_error(response, 502, type="api_error", code="backend_error")
        assert response.json()["error"]["message"] == (
            "the MCP server 'broken' could not start (FileNotFoundError); the tools of the "
            "other servers can still be used (choose them with ponder.mcp.servers)"
        )
        assert backend.calls == []
        assert servers.running == ("mortal",)  # started by the same request, and still up

        died = tooled([asks(("mortal__die", {}))])
        only_mortal = {"mcp": {"servers": ["mortal"]}}
        response = await post(mcp_app(died, servers), f"mcp-{MODEL}", ponder=only_mortal)
        assert_error(response, 502, type="api_error", code="backend_error")
        assert response.json()["error"]["message"].startswith(
            "the MCP server 'mortal' closed its connection"
        )
        assert "mortal" not in servers.running

        # started again for the next request that needs it
        again = tooled([asks(("mortal__add", {"a": 1, "b": 2})), "3", "3"])
        response = await post(mcp_app(again, servers), f"mcp-{MODEL}", ponder=only_mortal)
        assert response.status_code == 200, response.text
        assert servers.running == ("mortal",)
    finally:
        await close_resources({"mcp": servers})
    assert not servers.running  # closed with the app


@module_loop
async def test_a_failed_server_is_not_tried_again_before_restart_after_s() -> None:
    servers = hub_of({"name": "broken", "command": "/nonexistent/ponder-mcp"}, restart_after_s=60)
    backend = tooled(["never"])
    first = await post(mcp_app(backend, servers), f"mcp-{MODEL}")
    second = await post(mcp_app(backend, servers), f"mcp-{MODEL}")
    assert first.json() == second.json()
    assert_error(second, 502, type="api_error", code="backend_error")
    assert 55 <= int(second.headers["retry-after"]) <= 60
    assert backend.calls == []


def web_server() -> MCPServer:
    """An MCP server with one tool, `echo`, built without keeping the logging it sets up."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    server = MCPServer("web", log_level="CRITICAL")
    root.handlers[:], root.level = handlers, level

    @server.tool()
    def echo(text: str) -> str:
        """Say the text back."""
        return text

    return server


@module_loop
async def test_a_streamable_http_server_is_sent_its_headers() -> None:
    app = web_server().streamable_http_app(stateless_http=True, json_response=True)
    seen: list[dict[bytes, bytes]] = []

    async def recording(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(dict(scope["headers"]))
        await app(scope, receive, send)

    config = McpFile.model_validate(
        {
            "servers": [
                {
                    "name": "web",
                    "url": "http://127.0.0.1:8000/mcp",
                    "headers": {"X-Team": "ml"},
                    "headers_env": {"Authorization": "WEB_MCP_AUTH"},
                }
            ]
        }
    )
    backend = tooled([asks(("web__echo", {"text": "hi"})), "ok", "hi"])
    async with app.router.lifespan_context(app):
        servers = McpHub(
            config,
            env={"WEB_MCP_AUTH": "Bearer s3cret"},
            http_transports={"web": httpx2.ASGITransport(app=recording)},
        )
        try:
            response = await post(mcp_app(backend, servers), f"mcp-{MODEL}", ponder={"trace": True})
        finally:
            await servers.aclose()

    assert response.status_code == 200, response.text
    assert backend.calls[0].sampling.tools == (
        function(
            "web__echo",
            "Say the text back.",
            {
                "type": "object",
                "properties": {"text": {"title": "Text", "type": "string"}},
                "required": ["text"],
                "title": "echoArguments",
            },
        ),
    )
    tool = backend.calls[1].messages[-1]
    assert tool.text == result_block(1, 'web__echo {"text": "hi"}', "hi")
    assert seen and {(h[b"authorization"], h[b"x-team"]) for h in seen} == {
        (b"Bearer s3cret", b"ml")
    }
    assert "s3cret" not in response.text


# ---- the operator's file ----------------------------------------------------------------------


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps(data))
    return path


def test_the_file_builds_the_hub_of_the_app(tmp_path: Path) -> None:
    path = write(tmp_path, {"servers": [fake("calc")]})
    app = create_app(Settings(mcp_config=path), backend=scripted(["x"]))
    hub = app.state.ponder.resources["mcp"]
    assert isinstance(hub, McpHub)
    assert (hub.names, hub.running) == (("calc",), ())  # started on first use


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ({"name": "a"}, "give either `command` (stdio) or `url` (streamable HTTP)"),
        ({"name": "a", "command": "x", "url": "http://h/mcp"}, "give either"),
        ({"name": "a b", "command": "x"}, "servers.0.name"),
        ({"name": "a", "url": "ftp://h/mcp"}, "must be an http:// or https:// URL"),
        ({"name": "a", "url": "http://u:sekrit@h/mcp"}, "credentials are not written"),
        (
            {"name": "a", "url": "http://h/mcp", "headers_env": {"Authorization": "NOPE_X"}},
            "NOPE_X",
        ),
        ({"name": "a", "command": "x", "shell": True}, "servers.0.shell"),
    ],
)
def test_a_bad_file_is_refused_naming_the_field(
    tmp_path: Path, server: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match="PONDER_MCP_CONFIG") as caught:
        load_mcp_file(write(tmp_path, {"servers": [server]}), env={})
    assert message in str(caught.value)
    assert "sekrit" not in str(caught.value)


def test_two_servers_may_not_share_a_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="two servers are both called 'a'"):
        load_mcp_file(write(tmp_path, {"servers": [fake("a"), fake("a")]}))


def test_tool_names_are_namespaced_safe_and_distinct() -> None:
    names = exposed_names([("a", "x.y"), ("a", "x_y"), ("b", "x.y"), ("s", "t" * 80)])
    assert names == ["a__x_y", "a__x_y_2", "b__x_y", ("s__" + "t" * 80)[:64]]
