"""Every error leaves Ponder in the shape of the API that was called.

The OpenAI APIs (Chat Completions, Responses, and everything else under `/v1`) answer
`{"error": {message, type, param, code}}`; the Anthropic Messages API (`/v1/messages`) answers
`{"type": "error", "error": {type, message}}` with Anthropic's error types. The status codes are
the same for both.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ponder.errors import PonderError

log = logging.getLogger(__name__)

# Names pydantic puts into an error location that are not fields: union members and tags.
_NOT_FIELDS = frozenset(
    {"str", "int", "float", "bool", "list", "dict", "none", "literal"}
    | {"system", "developer", "user", "assistant", "tool"}
    | {"text", "image_url", "input_audio", "file", "refusal"}
)


ERROR_CODE_HEADER = "x-ponder-error-code"
"""Ponder's code for an error (`budget_exceeded`, `model_not_found`, ...), sent with every
error that has one: the Anthropic shape has no field for it."""

MESSAGES_PREFIX = "/v1/messages"
"""Paths answered in the Anthropic shape."""

ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}
"""Anthropic's error type for a status; every other status is an `api_error`."""


def anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": ANTHROPIC_TYPES.get(status, "api_error"), "message": message},
    }


def shaped(path: str, status: int, openai_body: dict[str, Any], message: str) -> dict[str, Any]:
    """`openai_body` as the API at `path` writes an error with this status and message."""
    if path == MESSAGES_PREFIX or path.startswith(MESSAGES_PREFIX + "/"):
        return anthropic_error_body(status, message)
    return openai_body


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def param_of(loc: Sequence[str | int]) -> str | None:
    """('body', 'messages', 0, 'user', 'content') -> 'messages[0].content'. A request's own
    fields come first and are never union tags, so the first name is kept whatever it is (the
    Responses API has a field called `text`)."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif out and (part in _NOT_FIELDS or any(ch in part for ch in "[(,")):
            continue
        else:
            out += f".{part}" if out else part
    return out or None


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "Invalid request body.", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "The request body is not valid JSON.", None
    if first.get("type") == "missing" and tuple(first.get("loc", ())) == ("body",):
        return "The request needs a JSON body.", None
    param = param_of(first.get("loc", ()))
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    where = f"Invalid value for '{param}': " if param else "Invalid request: "
    return where + msg, param


def _json(
    request: Request,
    status: int,
    body: dict[str, Any],
    message: str,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    shape = shaped(request.url.path, status, body, message)
    return JSONResponse(shape, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(PonderError)
    async def _ponder(request: Request, exc: PonderError) -> JSONResponse:
        if exc.status_code >= 500:
            log.warning("request failed: %s (%s)", exc.message, exc.code)
        headers = exc.headers
        if exc.code is not None:  # Ponder's own code, also where the body's shape has none
            headers = {**headers, ERROR_CODE_HEADER: exc.code}
        return _json(request, exc.status_code, exc.to_dict(), exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc)
        return _json(request, 400, error_body(message, "invalid_request_error", param), message)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":  # no route has this path
            message = (
                f"Ponder has no endpoint {request.method} {request.url.path}: it serves "
                "POST /v1/chat/completions, /v1/messages and /v1/responses; GET /v1/models "
                "lists the models and /docs the whole API."
            )
        body = error_body(message, kind, None, code)
        return _json(request, exc.status_code, body, message, dict(exc.headers or {}))
