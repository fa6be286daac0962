"""HTTP routes. Thin: validation is pydantic's, the work is ChatService's."""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from ponder.backends.base import CLIENT_KEY
from ponder.errors import AuthenticationError, BackendUnavailable, RateLimited, StoreUnavailable
from ponder.keys import Keyring, Principal
from ponder.protocol import ChatCompletion, ChatCompletionRequest, ErrorResponse, ModelList
from ponder.proxy import metrics
from ponder.proxy.chat_api import ChatCompletions, chat_request
from ponder.proxy.state import AppState

READY_TIMEOUT_S = 5.0

ERROR_STATUSES = {
    400: "Invalid request",
    401: "Missing or wrong API key",
    403: "Not allowed for this key",
    404: "Unknown model, strategy or request",
    409: "Changed meanwhile (version conflict)",
    429: "Rate limited (this key's requests per minute, or the backend's limit)",
    502: "Backend failure",
    503: "Backend or database unavailable, or the server is at its cap of requests",
    504: "Backend timeout, or the request's deadline passed",
}

RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds after which the same request may succeed",
        "required": False,
        "schema": {"type": "integer", "minimum": 1},
    }
}
"""Sent with a 429 or 503 where Ponder knows when to try again."""


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` documenting OpenAI-shaped errors with these statuses (429 and 503
    with their `Retry-After` header)."""
    responses: dict[int | str, dict[str, Any]] = {}
    for code in statuses:
        response: dict[str, Any] = {"model": ErrorResponse, "description": ERROR_STATUSES[code]}
        if code in (429, 503):
            response["headers"] = RETRY_AFTER
        responses[code] = response
    return responses


def state_of(request: Request) -> AppState:
    state: AppState = request.app.state.ponder
    return state


def presented_secret(authorization: str, *, basic: bool = False) -> str | None:
    """The key an `Authorization` header presents: `Bearer KEY`, or, with `basic`, the
    password of HTTP Basic auth (which browsers send); None when it presents none."""
    scheme, _, credentials = authorization.partition(" ")
    scheme, credentials = scheme.lower(), credentials.strip()
    if scheme == "bearer":
        return credentials
    if scheme == "basic" and basic:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, sep, password = decoded.partition(":")
        return password if sep else None
    return None


def principal_for(keyring: Keyring, authorization: str, *, basic: bool = False) -> Principal | None:
    """The caller behind the key an `Authorization` header presents (`presented_secret`); the
    anonymous caller when no keys are configured; None when no configured key matches."""
    if keyring.open:
        return keyring.authenticate("")
    secret = presented_secret(authorization, basic=basic)
    return None if secret is None else keyring.authenticate(secret)


def presented_key(request: Request) -> str:
    """The `Authorization` header, or an `x-api-key` header (as the Anthropic SDK sends the
    key) as a Bearer one."""
    authorization = request.headers.get("authorization", "")
    if not authorization and (key := request.headers.get("x-api-key")):
        return f"Bearer {key}"
    return authorization


async def authenticate(request: Request) -> Principal:
    """Check the API key (when keys are configured); sets `request.state.principal`."""
    principal = principal_for(state_of(request).keyring, presented_key(request))
    if principal is None:
        raise AuthenticationError(
            "Missing or incorrect API key in 'Authorization: Bearer ...' or 'x-api-key'."
        )
    request.state.principal = principal
    return principal


async def require_key(request: Request) -> None:
    """`authenticate`, then take one request from the key's rate limit (429 beyond it). Where
    the server passes clients' keys on to the upstream, the key this client presents is the
    one every backend call of this request sends (`CLIENT_KEY`)."""
    principal = await authenticate(request)
    if state_of(request).settings.upstream_key_from_client:
        scheme, _, key = presented_key(request).partition(" ")
        if scheme.lower() == "bearer" and key.strip():
            CLIENT_KEY.set(key.strip())
    try:
        await state_of(request).rate_limiter.take(principal)
    except RateLimited:
        metrics.note_rejected("rate_limit")
        raise


v1 = APIRouter(
    prefix="/v1",
    dependencies=[Depends(require_key)],
    responses=error_responses(400, 401, 403, 404, 429, 502, 503, 504),
)
health = APIRouter(prefix="/health")


@v1.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await state_of(request).chat.handle(
        chat_request(body),
        request.state.request_id,
        request.receive,
        ChatCompletions(body.model, include_usage),
        request.state.principal,
    )


@v1.get("/models", response_model=ModelList)
async def list_models(request: Request) -> dict[str, Any]:
    state = state_of(request)
    base = await state.backend.models()
    created = int(state.started)
    ids = [*base, *(f"{slug}-{m}" for slug in state.engine.registry.slugs for m in base)]
    return {
        "object": "list",
        "data": [
            {"id": i, "object": "model", "created": created, "owned_by": "ponder"} for i in ids
        ],
    }


@health.get("/live")
@health.get("", summary="Live (the path other proxies' health checks use)")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@health.get("/ready", responses={503: {"model": ErrorResponse}})
async def ready(request: Request) -> Response:
    """Ready when the backend answers and the SPL and memory database does."""
    state = state_of(request)
    backend = state.backend
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            ok = await backend.ready()
    except TimeoutError:
        ok = False
    if not ok:
        raise BackendUnavailable(f"backend '{backend.name}' is not answering")
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await asyncio.to_thread(state.store.ping)
    except TimeoutError:
        raise StoreUnavailable("the database is not answering (timeout)") from None
    return JSONResponse({"status": "ready", "backend": backend.name, "database": "ok"})
