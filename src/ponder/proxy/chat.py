"""`ChatService`: one request of any front end, resolved, run and answered.

Every front end (Chat Completions, Anthropic Messages, Responses) turns its wire request into a
`ChatRequest` of internal types (`ponder.proxy.job`) and hands it over with a `FrontEnd`, which
writes the answer in its own shape (JSON, or SSE through `StreamFormat`). Strategies never learn
which one called.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from fastapi.responses import StreamingResponse
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ponder.backends.base import Backend
from ponder.config import Settings
from ponder.errors import (
    ClientDisconnected,
    InvalidRequest,
    Overloaded,
    PermissionDenied,
    UnknownModel,
)
from ponder.keys import ANONYMOUS, Principal
from ponder.logs import secrets_of
from ponder.proxy import metrics
from ponder.proxy.conversation_log import ConversationLog
from ponder.proxy.job import ChatRequest, Job
from ponder.proxy.limits import Admission
from ponder.proxy.streaming import KEEPALIVE_S, StreamFormat, events, sse_stream
from ponder.spl_store import Store
from ponder.strategies.context import Budget, RequestContext
from ponder.strategies.engine import Engine
from ponder.strategies.resolve import Route, approach_in_prompt, resolve
from ponder.strategies.toolbox import server_tools
from ponder.strategies.tools import BUILTIN_TOOLS, Tool
from ponder.tracing import Tracing
from ponder.types import Completion

T = TypeVar("T")

# Keys of the `ponder` body field that are not strategy slugs, and the type each must have.
FLAGS = frozenset({"trace", "reasoning"})
LIMITS = frozenset({"max_backend_calls", "deadline_s"})

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class FrontEnd(Protocol):
    """How one API answers: the whole answer as a response, or a stream's format."""

    async def respond(self, job: Job, choices: list[Completion]) -> Response: ...

    def stream_format(self, job: Job) -> StreamFormat: ...


@dataclass
class ChatService:
    backend: Backend
    engine: Engine
    budget: Budget = field(default_factory=Budget)
    """The server's limits; a request may ask for tighter ones."""
    store: Store | None = None
    """The SPL and memory store (opened on first use)."""
    keepalive_s: float = KEEPALIVE_S
    """Seconds of silence after which a stream sends a keep-alive comment."""
    tools: Mapping[str, Tool] = field(default_factory=lambda: dict(BUILTIN_TOOLS))
    """The tools strategies may use (the optional ones only where the settings turn them on)."""
    admission: Admission | None = None
    """The cap on concurrent requests (None: no cap)."""
    resources: Mapping[str, object] = field(default_factory=dict)
    """What the server lends its plugins (`ponder.plugins.resources`)."""
    max_messages: int = 1024
    """Most messages one request may carry."""
    max_tools: int = 128
    """Most tools one request may offer."""
    conversation_log: ConversationLog | None = None
    """Where each request's calls and answer are written (None: nowhere)."""
    tracing: Tracing | None = None
    """OpenTelemetry spans for each route run and backend call (None: off)."""

    @classmethod
    def for_settings(
        cls,
        settings: Settings,
        backend: Backend,
        engine: Engine,
        store: Store | None = None,
        resources: Mapping[str, object] | None = None,
        tracing: Tracing | None = None,
    ) -> ChatService:
        """The service with the server's limits from `settings`."""
        return cls(
            backend,
            engine,
            Budget(settings.max_backend_calls, settings.deadline_s),
            store,
            settings.stream_keepalive_s,
            server_tools(settings),
            Admission(
                settings.max_concurrent_requests,
                settings.max_queued_requests,
                settings.queue_timeout_s,
            ),
            resources if resources is not None else {},
            settings.max_messages,
            settings.max_tools,
            None
            if settings.conversation_log is None
            else ConversationLog(
                settings.conversation_log,
                secrets_of(settings),
                max_bytes=settings.conversation_log_max_bytes,
                keep_days=settings.conversation_log_keep_days,
            ),
            tracing,
        )

    def route(self, request: ChatRequest) -> Route:
        registry = self.engine.registry
        route = resolve(
            request.model,
            registry.canonical,
            request.approach,
            registry.is_plugin,
            request.approach_param,
        )
        if not self.backend.serves(route.model):
            hint = ""
            prefix, sep, _ = request.model.partition("-")
            if sep and prefix not in self.engine.registry:
                hint = f" (and {prefix!r} is not a known strategy)"
            raise UnknownModel(
                f"The model '{route.model}' does not exist{hint}. GET /v1/models lists them.",
                param="model",
            )
        return route

    def options(self, request: ChatRequest, route: Route) -> Mapping[str, Any]:
        """The `ponder` body field, checked, with strategy aliases turned into their slugs."""
        options: dict[str, Any] = {}
        for key, value in (request.ponder or {}).items():
            param = f"ponder.{key}"
            if key in FLAGS:
                if not isinstance(value, bool):
                    raise InvalidRequest(f"{param} must be a boolean", param=param)
                options[key] = value
                continue
            if key in LIMITS:
                if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                    raise InvalidRequest(f"{param} must be a positive number", param=param)
                if key == "max_backend_calls":
                    if isinstance(value, float) and not value.is_integer():  # 4.0 is one
                        raise InvalidRequest(f"{param} must be an integer", param=param)
                    value = int(value)
                options[key] = value
                continue
            slug = self.engine.registry.canonical(key)
            if slug is None:
                raise InvalidRequest(f"unknown option {param}", param=param)
            if not isinstance(value, dict):
                raise InvalidRequest(f"{param} must be an object", param=param)
            if slug in options:
                raise InvalidRequest(f"options for '{slug}' are given twice", param=param)
            if slug not in (*route.slugs, *route.plugins):  # the route's own: when built
                self.engine.registry.config(slug, value)
            options[slug] = value
        return options

    def prepare(
        self, request: ChatRequest, request_id: str, principal: Principal = ANONYMOUS
    ) -> Job:
        """Validate and resolve everything before the first backend call."""
        messages, tagged = approach_in_prompt(request.messages)
        if tagged is not None:  # the conversation names the approach: it decides
            request = replace(
                request, messages=messages, approach=tagged, approach_param="messages"
            )
        if len(request.messages) > self.max_messages:
            raise InvalidRequest(
                f"the request has {len(request.messages)} messages; this server takes at most "
                f"{self.max_messages} (PONDER_MAX_MESSAGES)",
                param="messages",
            )
        if len(request.sampling.tools) > self.max_tools:
            raise InvalidRequest(
                f"the request offers {len(request.sampling.tools)} tools; this server takes at "
                f"most {self.max_tools} (PONDER_MAX_TOOLS)",
                param="tools",
            )
        route = self.route(request)
        refused = [s for s in (*route.plugins, *route.slugs) if not principal.may_run(s)]
        if refused:
            raise PermissionDenied(
                f"this key may not use the strategy '{refused[0]}'", param="model"
            )
        options = self.options(request, route)
        return Job(
            route=route,
            strategies=self.engine.build(route, options),
            plugins=self.engine.build_plugins(route, options),
            engine=self.engine,
            request=request,
            ctx=RequestContext(
                request_id=request_id,
                model=route.model,
                backend=self.backend,
                sampling=request.sampling,
                n=request.n,
                options=options,
                budget=self.budget.tighter(
                    Budget(options.get("max_backend_calls"), options.get("deadline_s"))
                ),
                tenant=principal.tenant,
                may_learn=principal.learning,
                store=self.store,
                tools=self.tools,
                resources=self.resources,
                working=[] if request.keep_working and not request.stream else None,
                calls=[] if self.conversation_log is not None else None,
                tracing=self.tracing,
            ),
            log=self.conversation_log,
        )

    async def handle(
        self,
        request: ChatRequest,
        request_id: str,
        receive: Receive,
        front: FrontEnd,
        principal: Principal = ANONYMOUS,
    ) -> Response:
        """Answer `request` for `principal` as `front` writes it. `receive` is the ASGI
        channel: a client that disconnects before the answer is ready (or while it waits for a
        slot) cancels the run and every backend call in it."""
        job = self.prepare(request, request_id, principal)
        if self.admission is None:
            return await self._answer(job, receive, front)
        admission = self.admission
        try:
            await cancel_on_disconnect(admission.acquire(), receive)
        except Overloaded:
            metrics.note_rejected("overload")
            raise
        try:
            response = await self._answer(job, receive, front)
        except BaseException:
            admission.release()
            raise
        if isinstance(response, StreamingResponse):
            return _Holding(response, admission.release)  # until the stream ends or breaks
        admission.release()
        return response

    async def _answer(self, job: Job, receive: Receive, front: FrontEnd) -> Response:
        ctx = job.ctx
        metrics.note_job(job.route, ctx.meter)  # read when the last byte is sent
        if not job.request.stream:
            choices = await cancel_on_disconnect(job.run(None), receive)
            response = await front.respond(job, choices)
            response.headers["x-ponder-backend-calls"] = str(ctx.meter.calls)
            return response
        chunks = sse_stream(
            events(
                job.run,
                hold_until_first_token=job.route.slugs == ("none",),
                keepalive_s=self.keepalive_s,
            ),
            front.stream_format(job),
        )
        try:
            # An early failure raises here, before any byte is sent; a client that goes while
            # a held stream waits for its first token cancels it.
            first = await cancel_on_disconnect(_first(chunks), receive)
        except BaseException:
            await chunks.aclose()
            raise
        return StreamingResponse(
            _prepend(first, chunks), media_type="text/event-stream", headers=SSE_HEADERS
        )


class _Holding(Response):
    """A response that calls `release` once it is done being sent, however that ends: the
    stream finished, the client went, or sending failed."""

    def __init__(self, response: Response, release: Callable[[], None]) -> None:
        self._response = response
        self._release = release
        self.status_code = response.status_code
        self.media_type = response.media_type
        self.background = response.background  # FastAPI may set it; passed on when sent
        self.raw_headers = response.raw_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._response.background = self.background
        try:
            await self._response(scope, receive, send)
        finally:
            self._release()


async def cancel_on_disconnect(work: Coroutine[Any, Any, T], receive: Receive) -> T:
    """Run `work`; if the client disconnects first, cancel it and raise ClientDisconnected."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            # Wait until the work has unwound (its backend calls closed), so that nothing
            # of it still runs when the caller cleans up after it.
            await asyncio.wait((task,))
    if task.cancelled():
        raise ClientDisconnected("the client closed the connection")
    return task.result()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _first(chunks: AsyncGenerator[bytes, None]) -> bytes:
    return await anext(chunks)


async def _prepend(first: bytes, rest: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
    try:
        yield first
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()
