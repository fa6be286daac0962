"""The MCP sessions a server lends its `mcp` plugin: one per server of the operator's file
(PONDER_MCP_CONFIG), over stdio or streamable HTTP, through the official `mcp` SDK.

A session starts on the first request that needs its server and then serves every request;
its tools are listed once, when it starts. The hub is closed with the app (`aclose`).

Each session runs in a task of its own, which enters the SDK's client and leaves it (the SDK's
task groups must be left by the task that entered them); requests call tools on it
concurrently. A server that fails to start, or dies, fails the requests that need it with a
502 naming it, and only those; it is tried again `restart_after_s` after the failure.

Tools are offered to models as `<server>__<tool>` (characters outside `A-Za-z0-9_-` become
`_`, 64 at most, a suffix when two would clash), so two servers' tools never share a name.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
import mcp_types
from mcp import Client, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from ponder import __version__
from ponder.config import Settings
from ponder.errors import BackendError
from ponder.plugins.mcp_config import SETTING, McpFile, ServerEntry, load_mcp_file

log = logging.getLogger(__name__)

MAX_TOOL_PAGES = 20
"""Most pages of a server's tool listing read (a listing that never ends cannot hang a start)."""
MAX_NAME = 64
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


@dataclass(frozen=True, slots=True)
class McpTool:
    """A tool of an MCP server, as a model is offered it."""

    name: str
    """The name the model calls it by: `<server>__<tool>`, made safe."""
    server: str
    tool: str
    """Its own name on its server."""
    description: str
    parameters: Mapping[str, Any]

    def function(self) -> dict[str, Any]:
        """The tool as an OpenAI-style function tool."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": dict(self.parameters),
            },
        }


@dataclass(frozen=True, slots=True)
class ToolResult:
    text: str
    error: bool = False


class McpHub:
    """The sessions of the operator's MCP servers, by name."""

    def __init__(
        self,
        config: McpFile,
        *,
        env: Mapping[str, str] | None = None,
        http_transports: Mapping[str, httpx2.AsyncBaseTransport] | None = None,
    ) -> None:
        """`http_transports` stand in for the network in tests, by server name."""
        env = os.environ if env is None else env
        self._servers = {
            entry.name: _Session(entry, config, env, (http_transports or {}).get(entry.name))
            for entry in config.servers
        }

    @classmethod
    def from_settings(cls, settings: Settings) -> McpHub:
        """The hub of the settings' server file (checked now: a bad file stops the server)."""
        if settings.mcp_config is None:
            raise ValueError(f"{SETTING} is not set")
        return cls(load_mcp_file(settings.mcp_config))

    @property
    def names(self) -> tuple[str, ...]:
        """The servers' names, in the file's order."""
        return tuple(self._servers)

    @property
    def running(self) -> tuple[str, ...]:
        """The servers whose session is up now."""
        return tuple(name for name, s in self._servers.items() if s.up)

    async def tools(self, servers: Sequence[str]) -> list[McpTool]:
        """The tools of `servers` (names of this hub), starting any not running yet."""
        sessions = [self._servers[name] for name in servers]
        # every start runs to its end (a server that fails does not leave another half-started)
        outcomes = await asyncio.gather(*(s.tools() for s in sessions), return_exceptions=True)
        listings: list[list[mcp_types.Tool]] = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            listings.append(outcome)
        flat = [
            (s.entry.name, tool)
            for s, tools in zip(sessions, listings, strict=True)
            for tool in tools
        ]
        names = exposed_names([(server, tool.name) for server, tool in flat])
        return [
            McpTool(
                name=name,
                server=server,
                tool=tool.name,
                description=(tool.description or tool.title or "").strip(),
                parameters=tool.input_schema,
            )
            for name, (server, tool) in zip(names, flat, strict=True)
        ]

    async def call(self, tool: McpTool, arguments: dict[str, Any]) -> ToolResult:
        """The tool's result; a failure of the tool is a result too (`error`), a server that
        is down or dies is a BackendError."""
        return await self._servers[tool.server].call(tool.tool, arguments)

    async def aclose(self) -> None:
        await asyncio.gather(*(s.aclose() for s in self._servers.values()))


class _StartFailed(Exception):
    def __init__(self, how: str) -> None:
        super().__init__(how)
        self.how = how


class _Session:
    """One server's session, started on demand, and started again after a failure."""

    def __init__(
        self,
        entry: ServerEntry,
        config: McpFile,
        env: Mapping[str, str],
        http_transport: httpx2.AsyncBaseTransport | None,
    ) -> None:
        self.entry = entry
        self._config = config
        self._env = env
        self._http_transport = http_transport
        self._lock = asyncio.Lock()
        self._client: Client | None = None
        self._tools: list[mcp_types.Tool] = []
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._failure: tuple[float, str] | None = None
        """When the server last failed, and how (for the requests that need it meanwhile)."""

    @property
    def up(self) -> bool:
        return self._client is not None

    async def tools(self) -> list[mcp_types.Tool]:
        await self._client_or_start()
        return self._tools

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        client = await self._client_or_start()
        try:
            result = await client.call_tool(name, arguments)
        except MCPError as exc:
            if exc.code == mcp_types.CONNECTION_CLOSED:
                raise self._lost(client, "closed its connection") from None
            return ToolResult(f"Error: {exc.error.message}", error=True)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError) as exc:
            raise self._lost(client, f"failed ({type(exc).__name__})") from None
        except httpx2.HTTPError as exc:
            raise self._lost(client, f"failed ({type(exc).__name__})") from None
        except TimeoutError:
            return ToolResult("Error: the tool did not answer in time", error=True)
        except ValidationError:
            return ToolResult("Error: the tool's server sent an invalid result", error=True)
        return ToolResult(result_text(result), error=result.is_error)

    async def aclose(self) -> None:
        self._stop.set()
        if self._task is not None:
            with suppress(asyncio.CancelledError):
                await self._task
        self._client = None

    # ---- starting and stopping --------------------------------------------------------------

    async def _client_or_start(self) -> Client:
        async with self._lock:
            if self._client is not None:
                return self._client
            if self._failure is not None:
                at, why = self._failure
                wait = at + self._config.restart_after_s - time.monotonic()
                if wait > 0:
                    raise self._unavailable(why, retry_after=wait)
            await self._finish_previous()
            try:
                return await self._start()
            except _StartFailed as failed:
                self._failure = (time.monotonic(), failed.how)
                raise self._unavailable(failed.how, self._config.restart_after_s) from None

    async def _start(self) -> Client:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[tuple[Client, list[mcp_types.Tool]]] = loop.create_future()
        self._stop = asyncio.Event()
        task = loop.create_task(self._run(ready, self._stop), name=f"mcp:{self.entry.name}")
        self._task = task
        try:
            async with asyncio.timeout(self._config.start_timeout_s):
                client, tools = await asyncio.shield(ready)
        except TimeoutError:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
            timeout = self._config.start_timeout_s
            raise _StartFailed(f"did not start within {timeout:g} s") from None
        except Exception as exc:  # the SDK's and the OS's failures: any means "did not start"
            log.warning("MCP server %r did not start", self.entry.name, exc_info=True)
            raise _StartFailed(f"could not start ({type(_leaf(exc)).__name__})") from None
        self._client, self._tools, self._failure = client, tools, None
        log.info("MCP server %r started with %d tools", self.entry.name, len(tools))
        return client

    async def _run(
        self,
        ready: asyncio.Future[tuple[Client, list[mcp_types.Tool]]],
        stop: asyncio.Event,
    ) -> None:
        """The session's life: enter the client, list the tools, wait for `stop`, leave."""
        try:
            async with AsyncExitStack() as stack:
                client = await stack.enter_async_context(
                    Client(
                        await self._transport(stack),
                        read_timeout_seconds=self._config.call_timeout_s,
                        client_info=mcp_types.Implementation(name="ponder", version=__version__),
                    )
                )
                tools = await _list_tools(client)
                ready.set_result((client, tools))
                await stop.wait()
        except Exception as exc:  # noqa: BLE001 -- the task's end: its failure goes to the starter
            if not ready.done():
                ready.set_exception(exc)
            else:
                log.warning("MCP server %r: its session ended: %r", self.entry.name, exc)
        finally:
            if not ready.done():
                ready.cancel()
            elif not stop.is_set():  # it ended on its own: the next request starts it again
                self._client = None
                self._failure = (time.monotonic(), "ended its session")

    async def _transport(self, stack: AsyncExitStack) -> Any:
        entry = self.entry
        if entry.command is not None:
            return stdio_client(
                StdioServerParameters(
                    command=entry.command, args=list(entry.args), env=entry.env, cwd=entry.cwd
                )
            )
        assert entry.url is not None
        headers = {**entry.headers}
        headers.update({h: self._env.get(v, "") for h, v in entry.headers_env.items()})
        http = await stack.enter_async_context(
            httpx2.AsyncClient(
                headers=headers,
                timeout=httpx2.Timeout(self._config.call_timeout_s),
                transport=self._http_transport,
            )
        )
        return streamable_http_client(entry.url, http_client=http)

    async def _finish_previous(self) -> None:
        """Wait for the task of a session that was lost to leave it (and end its process)."""
        if self._task is not None and not self._task.done():
            self._stop.set()
            with suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    def _lost(self, client: Client, how: str) -> BackendError:
        if self._client is client:
            self._client = None
            self._failure = (time.monotonic(), how)
            self._stop.set()
            log.warning("MCP server %r %s", self.entry.name, how)
        return self._unavailable(how, retry_after=self._config.restart_after_s)

    def _unavailable(self, how: str, retry_after: float | None = None) -> BackendError:
        return BackendError(
            f"the MCP server {self.entry.name!r} {how}; the tools of the other servers can "
            "still be used (choose them with ponder.mcp.servers)",
            retry_after=retry_after or None,
        )


async def _list_tools(client: Client) -> list[mcp_types.Tool]:
    tools: list[mcp_types.Tool] = []
    cursor: str | None = None
    for _ in range(MAX_TOOL_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


def _leaf(exc: BaseException) -> BaseException:
    """The first failure inside exception groups (the SDK's task groups wrap them)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def exposed_names(pairs: Sequence[tuple[str, str]]) -> list[str]:
    """The names models call the (server, tool) pairs by: distinct, safe, 64 characters at
    most."""
    taken: set[str] = set()
    names = []
    for server, tool in pairs:
        base = "".join(c if c in _SAFE else "_" for c in f"{server}__{tool}")[:MAX_NAME]
        name, number = base, 2
        while name in taken:
            suffix = f"_{number}"
            name, number = base[: MAX_NAME - len(suffix)] + suffix, number + 1
        taken.add(name)
        names.append(name)
    return names


def result_text(result: mcp_types.CallToolResult) -> str:
    """A tool's result as text: its text blocks, a line for each block that is not text, or
    else its structured content as JSON."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        elif isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
            parts.append(f"[{block.type} ({block.mime_type}) not shown]")
        elif isinstance(block, mcp_types.ResourceLink):
            parts.append(f"[resource: {block.uri}]")
        elif isinstance(block, mcp_types.EmbeddedResource):
            resource = block.resource
            if isinstance(resource, mcp_types.TextResourceContents):
                parts.append(resource.text)
            else:
                parts.append(f"[binary resource {resource.uri} not shown]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)
