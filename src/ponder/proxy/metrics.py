"""Prometheus metrics, served at GET /metrics in the text exposition format.

Every app owns its own `CollectorRegistry` (never the process-wide default), so several apps
in one process, and tests, never share counters. `MetricsMiddleware` measures every HTTP
request from its first to its last byte: a streamed answer is finished when its stream ends,
and one that ends early because the client went away is counted with status "499". The chat
route tells the middleware which strategy runs and hands over its meter via `note_job()`, so
backend calls and tokens are read when the request is over.

Label values come only from bounded sets: route templates, strategy slugs from the registry's
resolution, HTTP statuses and error codes. Keys, tenants, request ids and unknown model names
never become labels.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import re
import time
from dataclasses import dataclass, field

from fastapi import Request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ponder.proxy.errors import ERROR_CODE_HEADER
from ponder.strategies.context import Meter
from ponder.strategies.resolve import Route

METRICS_PATH = "/metrics"
NONE = "-"
"""The label value for "no strategy" (requests other than chat, or failed before resolving)
and for anything that is not one of the bounded values."""

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
CALLS_BUCKETS = (0, 1, 2, 3, 4, 5, 8, 10, 16, 24, 32, 50, 64, 100)
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)

MAX_COMPOSED = 3
"""A composed route ("sc&refine", "sc|tot") is labelled by its slugs up to this many; longer
ones only by their mode, so a client cannot mint unbounded label values."""

ROUTE_NAMES = {
    "/v1/chat/completions": "chat",
    "/v1/models": "models",
    "/v1/ponder/feedback": "feedback",
    "/v1/ponder/spl/strategies": "spl_strategies",
    METRICS_PATH: "metrics",
}
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_MAX_ERROR_BODY = 65536
_ERROR_CODE_HEADER = ERROR_CODE_HEADER.encode()

_IN_BAND_ERRORS = (b'data: {"error"', b'data: {"type":"error"')
"""How an in-band error event's data starts: OpenAI's shape, and the Messages API's."""


class PonderMetrics:
    """The metrics of one app, in the app's own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "ponder_requests", "HTTP requests answered", ("route", "strategy", "status"), registry=r
        )
        self.errors = Counter(
            "ponder_errors",
            "OpenAI-shaped errors sent, in HTTP responses or in-band in streams, by code",
            ("strategy", "type"),
            registry=r,
        )
        self.in_flight = Gauge(
            "ponder_in_flight_requests", "Requests being answered (scrapes excluded)", registry=r
        )
        self.duration = Histogram(
            "ponder_request_duration_seconds",
            "Time from a request's arrival to its last byte",
            ("route", "strategy"),
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.backend_calls = Histogram(
            "ponder_backend_calls_per_request",
            "Backend calls one chat request made",
            ("strategy",),
            buckets=CALLS_BUCKETS,
            registry=r,
        )
        self.tokens = Histogram(
            "ponder_tokens_per_request",
            "Tokens one chat request cost, as reported in its usage",
            ("strategy", "kind"),
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.upstream_retries = Counter(
            "ponder_upstream_retries",
            "Upstream calls tried again after a transient failure (event: retry, fallback)",
            ("event",),
            registry=r,
        )
        self.rejected = Counter(
            "ponder_rejected_requests",
            "Requests refused before any work (reason: auth, rate_limit, overload)",
            ("reason",),
            registry=r,
        )
        self.limit_backend_errors = Counter(
            "ponder_limit_backend_errors",
            "Calls to Redis of the shared limits that failed or timed out",
            registry=r,
        )
        self.loop_tasks = Gauge(
            "ponder_event_loop_tasks",
            "Tasks on the serving event loop when scraped (a leak shows as growth at rest)",
            registry=r,
        )
        self.loop_tasks.set_function(_loop_tasks)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def finish(self, record: RequestRecord, route: str, status: int, seconds: float) -> None:
        """Record one finished request."""
        strategy = record.strategy
        self.requests.labels(route, strategy, str(status)).inc()
        self.duration.labels(route, strategy).observe(seconds)
        for code in record.errors:
            self.errors.labels(strategy, code).inc()
        if status == 401:
            self.rejected.labels("auth").inc()
        elif record.rejected is not None:
            self.rejected.labels(record.rejected).inc()
        if record.meter is not None:
            usage = record.meter.usage
            self.backend_calls.labels(strategy).observe(record.meter.calls)
            self.tokens.labels(strategy, "prompt").observe(usage.prompt_tokens)
            self.tokens.labels(strategy, "completion").observe(usage.completion_tokens)


def _loop_tasks() -> float:
    """How many tasks the running event loop has: read at scrape time, on the loop that serves
    the scrape (NaN when the metrics are read outside an event loop)."""
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:
        return float("nan")


@dataclass
class RequestRecord:
    """What one request tells the middleware while it runs."""

    strategy: str = NONE
    meter: Meter | None = None
    errors: list[str] = field(default_factory=list)
    rejected: str | None = None
    """Why the request was refused before any work, if it was ("rate_limit", "overload")."""


_current: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar(
    "ponder_request_record", default=None
)


def strategy_label(route: Route) -> str:
    """The bounded label for a resolved route: "sc", "none", "sc&refine", "sc|tot"."""
    if len(route.slugs) == 1:
        return route.slugs[0]
    if len(route.slugs) > MAX_COMPOSED:
        return route.mode
    return ("&" if route.mode == "pipeline" else "|").join(route.slugs)


def note_job(route: Route, meter: Meter) -> None:
    """Called by the chat route once a request is resolved: its strategy becomes the request's
    label and `meter` is read when the request finishes. A no-op outside a measured request."""
    record = _current.get()
    if record is not None:
        record.strategy = strategy_label(route)
        record.meter = meter


def note_rejected(reason: str) -> None:
    """Called where a request is refused before any work: counted under `reason`."""
    record = _current.get()
    if record is not None:
        record.rejected = reason


def route_name(scope: Scope) -> str:
    """A bounded name for the matched route ("chat", "models", "health/live"); unmatched
    paths are all "-"."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return NONE
    return ROUTE_NAMES.get(path) or path.removeprefix("/v1").strip("/") or NONE


def _error_code(payload: bytes) -> str | None:
    """The code (or else the type) of an OpenAI-shaped error body, or of the Responses API's
    `error` event (`{"type": "error", "code": ...}`); None if it is neither."""
    try:
        data = json.loads(payload)
        error = data.get("error")
    except (ValueError, AttributeError):
        return None
    if not isinstance(error, dict):
        if data.get("type") != "error":
            return None
        error = {"code": data.get("code"), "type": "error"}
    code = error.get("code") or error.get("type")
    if not isinstance(code, str):
        return None
    return code if _CODE.match(code) else NONE


def _in_band_code(chunk: bytes) -> str | None:
    """The code of an in-band error event in a piece of an SSE stream. JSON escapes quotes in
    strings, so `data: {"error"` (or the Messages API's `data: {"type":"error"`) at a line
    start cannot come from generated text."""
    for marker in _IN_BAND_ERRORS:
        at = chunk.find(marker)
        if at >= 0 and (at == 0 or chunk[at - 1 : at] == b"\n"):
            return _error_code(chunk[at + len(b"data: ") :].split(b"\n", 1)[0])
    return None


class MetricsMiddleware:
    """Pure ASGI middleware that measures every HTTP request into `metrics`."""

    def __init__(self, app: ASGIApp, metrics: PonderMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = RequestRecord()
        token = _current.set(record)
        counted = scope.get("path") != METRICS_PATH  # a scrape does not measure itself
        started_at = time.perf_counter()
        status: int | None = None
        complete = False
        error_body = bytearray()
        header_code: list[str] = []

        async def measured_send(message: Message) -> None:
            nonlocal status, complete
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for name, value in message.get("headers", ()):
                    if name == _ERROR_CODE_HEADER:  # Ponder's code, whatever the body's shape
                        header_code.append(value.decode("latin-1"))
            elif message["type"] == "http.response.body":
                body: bytes = message.get("body", b"")
                if status is not None and status >= 400:
                    if len(error_body) < _MAX_ERROR_BODY:
                        error_body.extend(body)
                elif (code := _in_band_code(body)) is not None:
                    record.errors.append(code)
                if not message.get("more_body", False):
                    complete = True
            await send(message)

        if counted:
            self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, measured_send)
        finally:
            _current.reset(token)
            if counted:
                self.metrics.in_flight.dec()
            if status is None:
                status = 500  # the app raised before answering
            elif not complete:
                status = 499  # the client went away before the last byte
                record.errors.append("client_closed_request")
            if header_code:
                record.errors.append(header_code[0] if _CODE.match(header_code[0]) else NONE)
            elif error_body:
                code = _error_code(bytes(error_body))
                if code is not None:
                    record.errors.append(code)
            self.metrics.finish(record, route_name(scope), status, time.perf_counter() - started_at)


async def metrics_endpoint(request: Request) -> Response:
    """GET /metrics: the app's metrics in the Prometheus text format."""
    metrics: PonderMetrics = request.app.state.metrics
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
