"""`BodyLimitMiddleware`: a request body larger than the server takes is refused before it is
read whole, so a client cannot make the process hold it.

A `Content-Length` beyond the limit is answered at once with a 413, and the body is never
read. A body sent without one (chunked) is counted as it arrives: once past the limit, the app
is told the client went away (so it stops reading and drops what it read) and the 413 is sent
instead of whatever the app would have answered. Either way at most the limit (plus one chunk)
is ever held, and the 413 is in the shape of the API that was called.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ponder.errors import PayloadTooLarge
from ponder.proxy.errors import ERROR_CODE_HEADER, shaped


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, send)
            return
        seen = 0
        refused = started = False

        async def counted() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    refused = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if refused and not started:
                return  # the app's answer to a body it could not read: the 413 goes instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not refused:
                raise
        if refused and not started:
            await self._refuse(scope, send)

    def _error(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"the request body is larger than this server takes ({self.max_bytes} bytes, "
            "PONDER_MAX_BODY_BYTES)"
        )

    async def _refuse(self, scope: Scope, send: Send) -> None:
        error = self._error()
        body = shaped(scope.get("path", ""), error.status_code, error.to_dict(), error.message)
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": error.status_code,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close"),
                    (ERROR_CODE_HEADER.encode(), str(error.code).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
