"""`create_app()`: the one way to build a Ponder server."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI

from ponder import __version__
from ponder.backends import build_backend
from ponder.backends.base import Backend
from ponder.backends.resilience import ResilientBackend
from ponder.config import Settings
from ponder.keys import Keyring
from ponder.plugins.resources import close_resources
from ponder.proxy import errors
from ponder.proxy.body_limit import BodyLimitMiddleware
from ponder.proxy.knowledge import knowledge
from ponder.proxy.messages_api import messages
from ponder.proxy.metrics import METRICS_PATH, MetricsMiddleware, PonderMetrics, metrics_endpoint
from ponder.proxy.middleware import RequestIdMiddleware
from ponder.proxy.responses_api import cancel_background, responses
from ponder.proxy.routes import authenticate, health, v1
from ponder.proxy.state import AppState
from ponder.proxy.tracing_middleware import TracingMiddleware
from ponder.proxy.ui import ui
from ponder.spl_store import Store
from ponder.strategies.engine import Engine
from ponder.strategies.registry import Registry, default_registry
from ponder.tracing import Tracing, from_environment

# Ponder traces requests itself (`ponder.tracing`: its spans follow the GenAI conventions and
# carry the strategy's steps). FastAPI's own telemetry, where the installed version has it,
# would add a second server span to each request and costs a check of the global providers on
# every request even when off, so it is turned off.
_NO_FRAMEWORK_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


def create_app(
    settings: Settings | None = None,
    backend: Backend | None = None,
    registry: Registry | None = None,
    store: Store | None = None,
    tracing: Tracing | None = None,
) -> FastAPI:
    """Build the app. Without `backend`, the one `settings` names is built (and closed with the
    app); a given backend stays the caller's to close. Without `store`, the SPL and memory
    store at `settings.database_url` is used (opened on first use, closed with the app).
    Without `tracing`, spans go to `OTEL_EXPORTER_OTLP_ENDPOINT` when it is set."""
    settings = settings or Settings()
    engine = Engine(registry or default_registry())
    keyring = Keyring.from_settings(settings).with_canonical_strategies(engine.registry.canonical)
    if settings.upstream_key_from_client and not keyring.open:
        raise ValueError(
            "PONDER_UPSTREAM_KEY_FROM_CLIENT sends the upstream the key each client presents, "
            "so it cannot be used with Ponder's own API keys (PONDER_API_KEYS, "
            "PONDER_KEYS_FILE): those are what clients present"
        )
    state = AppState(
        settings=settings,
        backend=backend or build_backend(settings),
        engine=engine,
        owns_backend=backend is None,
        store=store or Store.for_settings(settings),
        keyring=keyring,
        tracing=tracing or from_environment(settings.trace_content),
    )
    owns_store = store is None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await cancel_background(state)  # before the store closes: they are stored cancelled
        await close_resources(state.resources)
        if owns_store:
            state.store.close()
        if state.owns_backend:
            await state.backend.aclose()
        if state.shared_limits is not None:
            await state.shared_limits.aclose()
        if state.tracing is not None and state.tracing.provider is not None:
            state.tracing.provider.shutdown()  # exports what is left

    app = FastAPI(
        title="Ponder",
        version=__version__,
        summary="OpenAI-compatible proxy that makes chat models reason better",
        lifespan=lifespan,
        **_NO_FRAMEWORK_TELEMETRY,
    )
    app.state.ponder = state
    errors.install(app)
    app.include_router(v1)
    app.include_router(messages)
    app.include_router(responses)
    app.include_router(knowledge)
    app.include_router(ui)
    app.include_router(health)
    app.state.metrics = metrics = PonderMetrics()  # this app's own registry
    if isinstance(state.backend, ResilientBackend) and state.backend.on_retry is None:
        state.backend.on_retry = lambda event: metrics.upstream_retries.labels(event).inc()
    if state.shared_limits is not None:
        state.shared_limits.count_error = metrics.limit_backend_errors.inc
    engine_stats = getattr(state.backend, "engine_stats", None)
    if callable(engine_stats):  # the embedded engine's own counters
        from ponder.proxy.engine_metrics import EngineCollector

        metrics.registry.register(EngineCollector(engine_stats))
    app.add_api_route(
        METRICS_PATH,
        metrics_endpoint,
        dependencies=[Depends(authenticate)],
        include_in_schema=False,
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # sees the last-resort 500
    if state.tracing is not None:  # outermost: the request's span covers everything
        app.add_middleware(TracingMiddleware, tracing=state.tracing)
    _describe_api(app, keyed=not keyring.open)
    return app


def _describe_api(app: FastAPI, *, keyed: bool) -> None:
    """The OpenAPI schema as the API behaves: no 422 (invalid input is a 400, documented per
    route), and, when keys are configured, Bearer auth on every `/v1` operation."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()  # cached on the app; completed here in place
        components = schema.setdefault("components", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.get("schemas", {}).pop(name, None)
        if keyed:
            components["securitySchemes"] = {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "A Ponder API key"}
            }
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
                if keyed and path.startswith("/v1/"):
                    operation["security"] = [{"apiKey": []}]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
