"""`TracingMiddleware`: the span of each HTTP request (a child of the caller's `traceparent`),
current while the app serves it, so that the route's and the backend calls' spans hang under
it; it ends when the last byte is sent, a stream's included."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ponder.tracing import Tracing


class TracingMiddleware:
    def __init__(self, app: ASGIApp, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        method, path = scope["method"], scope["path"]
        attributes = {"http.request.method": method, "url.path": path}
        with self.tracing.request(f"{method} {path}", headers, attributes) as span:

            async def traced_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        from opentelemetry.trace import Status, StatusCode

                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            await self.app(scope, receive, traced_send)
