"""Every error leaves Ponder in the OpenAI shape: {"error": {message, type, param, code}}."""

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


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def param_of(loc: Sequence[str | int]) -> str | None:
    """('body', 'messages', 0, 'user', 'content') -> 'messages[0].content'."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _NOT_FIELDS or any(ch in part for ch in "[(,"):
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


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(PonderError)
    async def _ponder(_: Request, exc: PonderError) -> JSONResponse:
        if exc.status_code >= 500:
            log.warning("request failed: %s (%s)", exc.message, exc.code)
        return _json(exc.status_code, exc.to_dict(), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc)
        return _json(400, error_body(message, "invalid_request_error", param))

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return _json(
            exc.status_code, error_body(str(exc.detail), kind, None, code), dict(exc.headers or {})
        )
